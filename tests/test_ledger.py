"""The ledger under concurrent writers and a killed writer (real processes), schema migration, past-only reads on real data,
and `tbot ledger` end to end."""
import json, os, signal, sqlite3, subprocess, sys, time
from pathlib import Path
import numpy as np, pandas as pd, pytest
from tbot.config import TbotError
from tbot import data, ledger
from tbot.ledger import Ledger, performance_records
from tbot.risk import simulate_exposure

from conftest import one_line_error, tbot

def regimes_of(df):
    "A toy causal labeller: 30-day trend, else 1-day volatility (the real one is tbot.regime)."
    trend = df.close.pct_change(720); vol = np.log(df.close).diff().rolling(24).std()
    lab = np.where(trend > 0.1, 'bull', np.where(trend < -0.1, 'bear', np.where(vol > vol.rolling(720).median() * 1.5, 'volatile', 'sideways')))
    return pd.Series(pd.Categorical(np.where(trend.isna(), None, lab), categories=data.REGIMES), df.index)

def toy_run(df, exposure):
    "Equity and closed trades of a long/flat exposure on real prices (fees 0.1%, slippage 0.05%, next-open fills)."
    sim = simulate_exposure(df, exposure, init_cash=1000, fees=0.001, slippage=0.0005, stop=0, daily_loss_limit=0)
    held = sim.units.iloc[:, 0] > 0
    entries = held.index[held & ~held.shift(fill_value=False)]; exits = held.index[~held & held.shift(fill_value=False)]
    entries = entries[:len(exits)]
    ret = df.open[exits].to_numpy() / df.open[entries].to_numpy() * (1 - 0.0015) ** 2 - 1
    return sim.equity, pd.DataFrame({'entry_time': entries, 'exit_time': exits, 'side': 'long', 'trade_return': ret, 'pnl': ret * 1000})

@pytest.fixture(scope='module')
def eth(shared): return data.read_candle_file(shared / 'ETH_USDT-1h.feather').loc['2020':'2022']

# A writer process: writes `n` runs of real-data frames, each run in one transaction; prints its run ids.
WRITER = r'''
import sys, numpy as np, pandas as pd
from tbot import data
from tbot.ledger import Ledger
path, n, tag, rows = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
btc = data.read_candle_file(sys.argv[5]).iloc[:rows]
r = btc.close.pct_change().fillna(0)
trades = pd.DataFrame({'entry_time': btc.index[:-1:2][:300], 'exit_time': btc.index[1::2][:300], 'symbol': 'BTC/USDT',
                       'trade_return': r.iloc[1::2].to_numpy()[:300], 'strategy': tag})
equity = (1000 * (1 + r).cumprod()).rename('portfolio')
led = Ledger(path, timeout=60)
for i in range(n):
    rid = led.write_run('backtest', {'writer': tag, 'i': i}, trades=trades, equity=equity, name=f'{tag}-{i}', sample='in-sample')
    print(rid, flush=True)
'''

def spawn(path, n, tag, rows, shared):
    return subprocess.Popen([sys.executable, '-c', WRITER, str(path), str(n), tag, str(rows), str(shared / 'BTC_USDT-1h.feather')],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def check_intact(path, n_equity):
    con = sqlite3.connect(path)
    assert con.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'
    assert con.execute('PRAGMA foreign_key_check').fetchall() == []
    per_run = con.execute('SELECT r.id, (SELECT COUNT(*) FROM trades t WHERE t.run_id = r.id), '
                          '(SELECT COUNT(*) FROM equity e WHERE e.run_id = r.id) FROM runs r').fetchall()
    con.close()
    for rid, nt, ne in per_run: assert (nt, ne) == (300, n_equity), f'run {rid} is incomplete: {nt} trades, {ne} equity rows'
    return len(per_run)

def test_three_writer_processes_at_once_lose_and_corrupt_nothing(tmp_path, shared):
    path = tmp_path / 'ledger.sqlite'
    Ledger(path).close()
    procs = [spawn(path, 12, f'w{k}', 2000, shared) for k in range(3)]
    reads = 0
    with Ledger(path) as reader:                                             # a reader alongside, as the dashboard would be
        while any(p.poll() is None for p in procs):
            reader.runs(); reader.regime_matrix(); reads += 1
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs): assert p.returncode == 0, err
    ids = [int(x) for out, _ in outs for x in out.split()]
    assert sorted(ids) == list(range(1, 37)) and reads > 0                 # every run got its own id
    assert check_intact(path, 2000) == 36
    with Ledger(path) as led:
        runs = led.runs()
        assert sorted(runs.name) == sorted(f'w{k}-{i}' for k in range(3) for i in range(12))
        assert (led.trades(runs.id.iloc[-1]).strategy == runs.params.iloc[-1]['writer']).all()
        assert led.con.execute('PRAGMA journal_mode').fetchone()[0] == 'wal'

def test_a_writer_killed_mid_write_leaves_whole_runs_only(tmp_path, shared):
    path = tmp_path / 'ledger.sqlite'
    Ledger(path).close()
    p = spawn(path, 1000, 'victim', 30000, shared)                            # big runs: a kill lands mid-transaction
    seen = []
    while len(seen) < 3:
        line = p.stdout.readline()
        assert line, p.stderr.read()
        seen.append(time.time())
    time.sleep((seen[2] - seen[1]) / 2)                                       # half way through writing the fourth run
    p.send_signal(signal.SIGKILL); p.wait(timeout=30); p.stdout.close(); p.stderr.close()
    n = check_intact(path, 30000)
    assert n >= 3
    with Ledger(path, timeout=5) as led:                                     # no lock left behind: the next writer writes
        rid = led.write_run('backtest', {}, name='after the crash')
        assert rid == n + 1 and len(led.runs()) == n + 1

def test_an_old_ledger_is_migrated_and_keeps_its_data(tmp_path):
    path = tmp_path / 'ledger.sqlite'
    con = ledger.connect(path, upto=1)
    con.execute("INSERT INTO runs (kind, created, version) VALUES ('backtest', '2024-01-01T00:00:00.000000Z', '0.0.1')"); con.close()
    with Ledger(path) as led:
        assert led.con.execute('SELECT MAX(version) FROM schema_version').fetchone()[0] == ledger.SCHEMA_VERSION
        assert led.runs().version.tolist() == ['0.0.1']
        names = {r[0] for r in led.con.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert 'performance_by_end' in names

@pytest.mark.parametrize('cut', ['2021-03-15', '2021-11-01', '2022-05-09 13:00', '2022-06-18'])
def test_scores_as_of_a_moment_equal_those_of_a_run_that_stopped_then(tmp_path, eth, cut):
    "What `scores(as_of=t)` offers the agent could have been computed with data up to t only."
    cut = pd.Timestamp(cut, tz='UTC')
    exposure = (eth.close > eth.close.shift(24)).astype(float)
    regimes = regimes_of(eth)
    with Ledger(tmp_path / 'ledger.sqlite') as led:
        eq, tr = toy_run(eth, exposure)
        full = led.write_run('backtest', performance=performance_records(eq, tr, regimes, 'mom', {}, 'ETH/USDT', '1h'))
        past = eth.loc[:cut - pd.Timedelta('1h')]
        eq, tr = toy_run(past, exposure.loc[past.index])
        early = led.write_run('backtest', performance=performance_records(eq, tr, regimes.loc[past.index], 'mom', {}, 'ETH/USDT', '1h'))
        a = led.scores(as_of=cut, run_ids=[full]); b = led.scores(as_of=cut, run_ids=[early])
        assert len(a) >= 3 and (led.performance(as_of=cut).period_end < cut).all()
        pd.testing.assert_frame_equal(a, b, rtol=1e-9)
        later = led.scores(as_of=cut + pd.Timedelta(days=62), run_ids=[full])
        assert later.n_bars.sum() > a.n_bars.sum()                            # and the future does arrive, later

def test_bad_frames_are_refused_and_write_nothing(tmp_path, eth):
    with Ledger(tmp_path / 'ledger.sqlite') as led:
        eq = pd.Series(1000.0, eth.index[:10])
        with pytest.raises(TbotError, match='NaN'): led.write_run('backtest', equity=eq.where(eq.index != eq.index[3]))
        with pytest.raises(TbotError, match='does not know'): led.write_run('backtest', trades=pd.DataFrame({'colour': ['red']}))
        with pytest.raises(TbotError, match='no timezone'):
            led.write_run('backtest', trades=pd.DataFrame({'entry_time': [pd.Timestamp('2024-01-01')], 'trade_return': [0.1]}))
        with pytest.raises(TbotError, match='nothing was written'): led.write_run('backtest', sample='in the future')
        assert len(led.runs()) == 0
        with pytest.raises(TbotError, match='lack columns'):
            performance_records(eq, pd.DataFrame({'exit_time': []}), regimes_of(eth).iloc[:10], 'x')

def test_tbot_ledger_end_to_end(store, eth):
    assert 'holds no performance records' in tbot('ledger').stdout          # an empty store: a message, no file created
    assert not (store / 'ledger.sqlite').exists()
    regimes = regimes_of(eth)
    with Ledger() as led:                                                    # the default place: <data_dir>/ledger.sqlite
        assert led.path == store / 'ledger.sqlite'
        for name, expo in [('momentum', (eth.close > eth.close.shift(24)).astype(float)), ('hold', pd.Series(1.0, eth.index))]:
            eq, tr = toy_run(eth, expo)
            led.write_run('backtest', {'strategy': name}, equity=eq, trades=tr.assign(strategy=name), sample='in-sample',
                          performance=performance_records(eq, tr, regimes, name, {}, 'ETH/USDT', '1h', sample='in-sample'),
                          assumptions={'fees': 0.001, 'slippage': 0.0005, 'fill': 'next_open'})
    o = json.loads(tbot('ledger', '--json').stdout)
    assert o['metric'] == 'sharpe' and {r['strategy'] for r in o['rows']} == {'momentum', 'hold'}
    cell = next(r for r in o['rows'] if r['strategy'] == 'hold')['bear']
    eq, _ = toy_run(eth, pd.Series(1.0, eth.index))
    r = eq.pct_change()[(regimes.astype(object).shift(1) == 'bear').to_numpy()]   # bars begun under a known bear label
    assert cell['sharpe'] == pytest.approx(r.mean() / r.std(ddof=0) * np.sqrt(365 * 24), rel=1e-9)
    assert cell['n_trades'] == 0                                              # holding: one trade, never closed
    text = tbot('ledger', 'matrix', '--metric', 'total_return').stdout
    assert 'momentum' in text and 'bull' in text and 'fees, slippage' in text
    early = json.loads(tbot('ledger', '--as-of', '2020-06-01', '--json').stdout)
    assert all(c['n_trades'] <= 300 for r in early['rows'] for k, c in r.items() if k != 'strategy')
    runs = json.loads(tbot('ledger', 'runs', '--json').stdout); mtime = (store / 'ledger.sqlite').stat().st_mtime
    assert [r['assumptions']['fees'] for r in runs] == [0.001, 0.001]
    assert all(c in tbot('ledger', '--help').stdout for c in ('matrix', 'runs'))
    assert all(o in tbot('ledger', 'matrix', '--help').stdout for o in ('--metric', '--as-of', '--sample', '--ledger'))
    assert '--kind' in tbot('ledger', 'runs', '--help').stdout and '--metric' not in tbot('ledger', 'runs', '--help').stdout
    one_line_error(tbot('ledger', '--as-of', 'someday', check=False), '--as-of')
    one_line_error(tbot('ledger', '--metric', 'luck', check=False), 'luck')
    assert (store / 'ledger.sqlite').stat().st_mtime == mtime                 # refused commands wrote nothing
