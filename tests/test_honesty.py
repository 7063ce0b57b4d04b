"""The research core keeps its promises: a report's sample label matches what was computed, the agent's walk-forward is recorded,
a rerun is not new evidence, a halt is the first thing every summary says, and bad input is one line. Real BTC/ETH candles."""
import json, sqlite3
from pathlib import Path
import pandas as pd, pytest
import conftest
from conftest import ROOT
from tbot import data, ledger, portfolio
from tbot.console import jsonable
from tbot.ledger import Ledger, performance_records

SYMBOLS = ('BTC/USDT', 'ETH/USDT')

def tbot(*args, check=True, timeout=900, env=None):
    "`tbot` run from the checkout, as a user would."
    return conftest.tbot(*args, check=check, timeout=timeout, cwd=ROOT, env=env)

def one_line_error(p):
    return conftest.one_line_error(p, 'tbot: error:')

@pytest.fixture
def store_2021(store, shared):
    "The store holding the real BTC and ETH 1h candles of 2021 (the portfolio stop fires in March)."
    for s in SYMBOLS:
        df = data.read_candle_file(shared / f"{s.replace('/', '_')}-1h.feather").loc['2021-01-01':'2021-12-31']
        data.write_series(df, data.Series('binance', s, '1h'), store)
    return store

def n_trades(*filters):
    o = json.loads(tbot('ledger', '--metric', 'n_trades', '--json', *filters).stdout)
    return {(r['strategy'], g): c['n_trades'] for r in o['rows'] for g, c in r.items() if g != 'strategy'}

# --- 1. a report labelled out-of-sample holds the agent's walk-forward, not its in-sample run ---

@pytest.mark.slow
def test_agent_walk_forward_report_is_the_walk_forward(store, shared):
    for s in SYMBOLS:
        df = data.read_candle_file(shared / f"{s.replace('/', '_')}-1h.feather").loc['2021-01-01':'2022-12-31']
        data.write_series(df, data.Series('binance', s, '1h'), store)
    args = ['-p', 'strategy', 'agent', '-p', 'symbols', ','.join(SYMBOLS), '-p', 'start', '2021-01-01', '-p', 'end', '2022-12-31',
            '-p', 'wf_train', '365D', '-p', 'wf_test', '90D']
    p = tbot('report', 'backtest', *args, '-p', 'walk_forward', 'true', '--json')
    run = Path(json.loads(p.stdout)['folder'])
    metrics = json.loads((run / 'metrics.json').read_text()); manifest = json.loads((run / 'manifest.json').read_text())
    candles = {s: data.load(s, '1h', None, '2021-01-01', '2022-12-31') for s in SYMBOLS}
    wf = portfolio.walk_forward_agent(candles, '365D', '90D', anchored=False)
    assert metrics['headline']['sample'] == manifest['assumptions']['sample'] == 'out-of-sample'
    assert metrics['stats'] == jsonable(dict(wf['result'].stats))                       # the figures are the walk-forward's
    assert metrics['walk_forward']['best_single'] == jsonable(wf['best_single']) and len(metrics['walk_forward']['folds']) == len(wf['folds'])
    assert metrics['stats']['start'] == wf['folds'][0]['test_start']                   # only bars after the first training window
    insample = portfolio.backtest_agent(candles)
    assert metrics['stats']['total_return'] != insample.stats['total_return']          # the check can fail: the in-sample run differs
    index = (run.parent / 'index.html').read_text()
    assert 'out-of-sample' in index and manifest['title'] in index.replace('&#x27;', "'")
    if wf['result'].halt:                                                              # and a halt leads the summary and the title
        assert manifest['summary'].startswith('**HALTED') and 'HALTED' in manifest['title'] and metrics['headline']['halted_at'] == wf['result'].halt['time']

# --- 2 and 3. the agent's walk-forward is recorded; a rerun is not new evidence ---

@pytest.mark.slow
def test_walk_forward_is_recorded_and_reruns_count_once(store_2021):
    tbot('agent', 'backtest')
    first = n_trades()
    assert sum(first.values()) > 100
    tbot('agent', 'backtest')                                                          # the same run again
    assert n_trades() == first
    runs = json.loads(tbot('ledger', 'runs', '--json').stdout)
    assert [r['repeated_by'] for r in runs] == [2, None]
    assert runs[0]['symbols'] == 'BTC/USDT,ETH/USDT' and runs[0]['timeframe'] == '1h'
    assert 'BTC/USDT,ETH/USDT' in tbot('ledger', 'runs').stdout
    tbot('agent', 'backtest', '--fees', '0.002')                                      # other costs: other evidence
    more = n_trades()
    assert sum(more.values()) > sum(first.values())
    wf = tbot('agent', 'backtest', '--walk-forward', '--train', '180D', '--test', '90D')  # recorded, not refused
    assert 'OUT-OF-SAMPLE' in wf.stdout
    runs = json.loads(tbot('ledger', 'runs', '--kind', 'agent_walkforward', '--json').stdout)
    assert len(runs) == 1 and runs[0]['sample'] == 'out-of-sample'
    every, ins, oos = n_trades(), n_trades('--sample', 'in-sample'), n_trades('--sample', 'out-of-sample')
    assert ins == more and sum(oos.values()) > 0
    assert sum(every.values()) < sum(ins.values()) + sum(oos.values())  # the walk-forward's test windows re-measure bars the in-sample runs measured: once

# --- 4. a halt is the first thing every summary says ---

NO_BUDGET = {'TBOT_RISK_CPPI_MULTIPLIER': '0', 'TBOT_ALLOCATION_ENTRY_TRADES': '0'}   # the risk budget keeps the agent off its stop

@pytest.mark.slow
def test_a_halt_leads_the_backtest_and_explain_shows_nothing_held(store_2021):
    "How a halt is told: the agent without its risk budget (as it was) reaches the 5% stop in 2021."
    o = json.loads(tbot('agent', 'backtest', '--no-ledger', '--json', env=NO_BUDGET).stdout)
    assert list(o)[0] == 'halted' and o['halted'] is not None
    halted = pd.Timestamp(o['halted']['time'])
    assert halted < pd.Timestamp('2021-10-15', tz='UTC') and o['stats']['halted_at'] == o['halted']['time']
    text = tbot('agent', 'backtest', '--no-ledger', env=NO_BUDGET).stdout
    assert text.startswith(f"HALTED: the portfolio stop fired on {halted:%Y-%m-%d %H:%M} UTC") and 'held only cash' in text.splitlines()[0]
    e = json.loads(tbot('agent', 'explain', '--at', '2021-10-15', '--json', env=NO_BUDGET).stdout)
    assert e['halted']['time'] == o['halted']['time'] and set(e['targets'].values()) == {0.0}
    assert all(d['weight'] == 0 for x in e['bots'].values() for d in x.values())
    assert tbot('agent', 'explain', '--at', '2021-10-15', env=NO_BUDGET).stdout.startswith('HALTED since')
    before = json.loads(tbot('agent', 'explain', '--at', str(halted - pd.Timedelta('2D'))[:16], '--json', env=NO_BUDGET).stdout)
    assert before['halted'] is None                                                    # not halted before the stop fired

def test_capital_per_bot_is_zero_after_the_halt(shared, monkeypatch):
    for k, v in NO_BUDGET.items(): monkeypatch.setenv(k, v)   # the agent as it was: the stop fires in H1 2021
    hist = {s: data.read_candle_file(shared / f"{s.replace('/', '_')}-1h.feather").loc['2021-01-01':'2021-06-30'] for s in SYMBOLS}
    r = portfolio.backtest_agent(hist)
    assert r.halt is not None
    after = r.capital.index >= r.halt['time']
    assert after.sum() > 100 and (r.capital[after] == 0).all().all() and (r.capital[~after].sum(axis=1) > 0).all()
    assert r.halt['text'].startswith('HALTED') and r.summary()['halted'] == r.halt and list(r.summary())[0] == 'halted'
    assert 'cash (halted)' in [t.name for t in r.plot().data]

# --- 5. bad input for the agent commands: one line, before any work ---

@pytest.mark.parametrize('args', [
    ['backtest', '--start', '2022-13-45'], ['backtest', '--start', 'yesterday'], ['backtest', '--end', '2022-02-30'],
    ['explain', '--at', '2022-02-30'], ['explain', '--at', 'soon'], ['backtest', '--walk-forward', '--train', 'abc'],
    ['backtest', '--walk-forward', '--train', '0D'], ['backtest', '--walk-forward', '--test=-90D'],
    ['backtest', '--start', '2022-06-01', '--end', '2022-01-01'], ['backtest', '--init-cash', 'inf'], ['backtest', '--init-cash', '0'],
    ['backtest', '--fees', 'nan'], ['backtest', '--slippage', '-0.1'], ['explain', '--at', '2021-01-01', '--start', '2021-06-01']])
def test_bad_agent_input_is_one_line(store, args):
    one_line_error(tbot('agent', *args, check=False, timeout=120))

def test_explain_after_the_data_says_where_it_ends(store_2021):
    err = one_line_error(tbot('agent', 'explain', '--at', '2030-01-01', check=False))
    assert 'the candles end at 2022-01-01 00:00' in err

# --- 6. the ledger: one rule for times, runs named by market, unknown kinds and missing files refused ---

@pytest.fixture
def toy_ledger(tmp_path, shared):
    eth = data.read_candle_file(shared / 'ETH_USDT-1h.feather').loc['2021':'2022']
    eq = 1000 * eth.close / eth.close.iloc[0]
    reg = pd.Series(pd.Categorical(['bull'] * len(eth), categories=data.REGIMES), eth.index)
    tr = pd.DataFrame({'entry_time': eth.index[:-1:500], 'exit_time': eth.index[1::500][:len(eth.index[:-1:500])]})
    tr['trade_return'] = (eth.close[tr.exit_time].to_numpy() / eth.close[tr.entry_time].to_numpy() - 1)
    perf = performance_records(eq, tr, reg, 'hold', {}, 'ETH/USDT', '1h', sample='in-sample')
    path = tmp_path / 'ledger.sqlite'
    with Ledger(path) as led:
        for _ in range(2): led.write_run('backtest', {'symbol': 'ETH/USDT', 'timeframe': '1h'}, performance=perf, data={'ETH/USDT 1h': eth}, sample='in-sample')
        led.write_run('backtest', {'symbol': 'ETH/USDT', 'timeframe': '1h', 'fees': 0.002}, performance=perf, sample='in-sample')
    return path, perf

def test_ledger_reads_naive_times_as_utc_and_counts_evidence_once(toy_ledger):
    path, perf = toy_ledger
    with Ledger(path) as led:
        a = led.scores(as_of='2022-06-18'); b = led.scores(as_of=pd.Timestamp('2022-06-18', tz='UTC'))
        pd.testing.assert_frame_equal(a, b)
        assert a.n_trades.sum() == perf[perf.period_end < pd.Timestamp('2022-06-18', tz='UTC')].n_trades.sum()   # three runs, each record once
        assert len(led.performance()) == len(perf) and len(led.performance(repeats=True)) == 3 * len(perf)
        assert led.regime_matrix(metric='n_trades').loc['hold', 'bull'] == perf[perf.regime == 'bull'].n_trades.sum()
        assert ledger.aggregate(pd.concat([perf, perf]), as_of='2022-06-18').n_trades.sum() == a.n_trades.sum()
        rb = led.runs().repeated_by
        assert rb.iloc[0] == 2 and rb.iloc[1:].isna().all()
    o = json.loads(tbot('ledger', '--ledger', str(path), '--metric', 'n_trades', '--json', '--as-of', '2022-06-18').stdout)
    assert sum(c['n_trades'] for g, c in o['rows'][0].items() if g != 'strategy') == a.n_trades.sum() and o['repeats'] == 1

def test_ledger_cli_names_runs_and_refuses_what_it_cannot_read(toy_ledger, tmp_path):
    path, _ = toy_ledger
    text = tbot('ledger', 'runs', '--ledger', str(path)).stdout
    assert 'symbols' in text and 'ETH/USDT' in text and '1h' in text
    err = one_line_error(tbot('ledger', 'runs', '--kind', 'foo', '--ledger', str(path), check=False))
    assert 'agent_walkforward' in err and 'backtest' in err
    missing = tmp_path / 'nowhere' / 'l.sqlite'
    for cmd in (['ledger'], ['ledger', 'runs']):
        assert str(missing) in one_line_error(tbot(*cmd, '--ledger', str(missing), check=False))
    assert not missing.parent.exists()                                                 # reading created nothing
    with pytest.raises(Exception, match='no ledger at'): Ledger(missing, create=False)
    one_line_error(tbot('ledger', '--ledger', str(path), '--as-of', '2022-02-30', check=False))

def test_an_old_ledger_takes_the_walk_forward_kind_and_keeps_its_rows(tmp_path, toy_ledger):
    old, perf = toy_ledger
    path = tmp_path / 'v2.sqlite'
    con = ledger.connect(path, upto=2)
    con.execute("INSERT INTO runs (kind, created, version) VALUES ('agent', '2024-01-01T00:00:00.000000Z', '0.0.1')")
    con.execute("INSERT INTO trades (run_id, symbol, trade_return) VALUES (1, 'BTC/USDT', 0.01)")
    con.execute("INSERT INTO equity VALUES (1, 'total', '2024-01-01T00:00:00.000000Z', 1000)")
    con.execute("INSERT INTO decisions (run_id, time, reason) VALUES (1, '2024-01-01T00:00:00.000000Z', 'why')")
    con.close()
    con = sqlite3.connect(path)                                                        # before: the walk-forward kind is refused
    with pytest.raises(sqlite3.IntegrityError): con.execute("INSERT INTO runs (kind, created, version) VALUES ('agent_walkforward', 'x', 'y')")
    con.close()
    with Ledger(path) as led:
        assert led.con.execute('SELECT MAX(version) FROM schema_version').fetchone()[0] == ledger.SCHEMA_VERSION
        assert len(led.trades(1)) == 1 and len(led.equity(1)) == 1 and len(led.decisions(1)) == 1   # nothing cascaded away
        rid = led.write_run('agent_walkforward', {}, performance=perf, sample='out-of-sample')
        assert led.runs().kind.tolist() == ['agent', 'agent_walkforward'] and len(led.performance(run_ids=[rid])) == len(perf)
        assert led.con.execute('PRAGMA foreign_keys').fetchone()[0] == 1
        led.con.execute('DELETE FROM runs WHERE id = 1')                               # and the references still cascade
        assert len(led.trades(1)) == 0 and led.con.execute('PRAGMA foreign_key_check').fetchall() == []
