"""`tbot paper` end to end, as a user runs it, on the shared real Binance candles: parity with the backtest over the LUNA crash
(with the 5% stop live, checked against an independent `backtest_agent` run and the ledger's own tables), bots on their own
timeframes (1h + 5m), resume without a bar twice, the human reset of a halt, status, and bad input (one line, exit 2, nothing
written). Every command is the real console command in its own process; the ledger is read with sqlite3."""
import hashlib, json, os, re, shutil, signal, sqlite3, subprocess, time
from pathlib import Path
import pandas as pd, pytest
from conftest import ROOT, TBOT, tbot, one_line_error
from tbot.data import Series, read_candle_file, write_series
from tbot.ledger import utc_text

SYMS = ('BTC/USDT', 'ETH/USDT')
LUNA = ('2022-04-01', '2022-07-15')             # three and a half months of 2022 over the LUNA crash (May-June)
H = pd.Timedelta('1h')

# --- helpers ------------------------------------------------------------------------------------------------------------------

def write_store(d:Path, shared:Path, tfs=('1h',), a=None, b=None)->Path:
    "A candle store in `d` holding the shared BTC/ETH candles of `tfs`, cut to [a, b] when given."
    for sym in SYMS:
        for tf in tfs:
            write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-{tf}.feather").loc[a:b], Series('binance', sym, tf), d)
    return d

# The risk budget (CPPI) and the entry filter keep the agent off its floor; to exercise the 5% stop and the daily limit as the
# last line, some tests turn them off (the kernel is the same either way; other tests trade with them on).
NO_BUDGET = {'TBOT_RISK_CPPI_MULTIPLIER': '0', 'TBOT_ALLOCATION_ENTRY_TRADES': '0'}

def env_for(d:Path, **extra)->dict:
    "The environment of a user whose store (and ledger) is `d`."
    return {'TBOT_DATA_DIR': str(d), 'TBOT_REPORTS_DIR': str(d.parent / 'reports'), **extra}

def copy_store(src:Path, dst:Path)->Path:
    "A fresh data folder holding a copy of `src`'s candles (no ledger)."
    shutil.copytree(src / 'binance', dst / 'binance'); return dst

def rows(ledger:Path, sql:str, *params)->list:
    con = sqlite3.connect(f'file:{ledger}?mode=ro', uri=True)
    try: return con.execute(sql, params).fetchall()
    finally: con.close()

def dump(ledger:Path)->dict:
    "Every row of every table of a ledger, to compare a ledger before and after."
    con = sqlite3.connect(f'file:{ledger}?mode=ro', uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: con.execute(f'SELECT * FROM "{t}"').fetchall() for t in tables}
    finally: con.close()

def files(d:Path)->dict:
    "Hash of every file under `d` (the store and any ledger), to prove a refused command wrote nothing."
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob('*')) if p.is_file()}

def ledgers(d:Path)->list:
    return sorted(p.name for p in d.iterdir() if p.name.startswith('ledger'))

def events(ledger:Path)->list:
    return rows(ledger, 'SELECT kind, time, detail, data, applied FROM events ORDER BY id')

def parity_json(env)->dict:
    p = tbot('paper', 'parity', '--json', env=env, check=False)
    assert p.returncode in (0, 1), p.stderr
    o = json.loads(p.stdout)
    assert (p.returncode == 0) == o['ok'], (p.returncode, o)
    return o

def status_json(env)->dict: return json.loads(tbot('paper', 'status', '--json', env=env).stdout)

def store_index(d:Path, a, b)->pd.DatetimeIndex:
    "The bar times of BTC/USDT and ETH/USDT 1h both hold in [a, b]."
    from tbot.data import load
    ix = [load(s, '1h', 'binance', data_dir=d).index for s in SYMS]
    ix = ix[0].intersection(ix[1])
    return ix[(ix >= pd.Timestamp(a, tz='UTC')) & (ix <= pd.Timestamp(b, tz='UTC'))]

# --- stores shared by the tests of this module (read only; each test copies what it writes to) -------------------------------

@pytest.fixture(scope='module')
def full_1h(tmp_path_factory, shared)->Path:
    "The shared BTC/ETH 1h candles, the whole 8 years."
    return write_store(tmp_path_factory.mktemp('full') / 'data', shared)

@pytest.fixture(scope='module')
def short_1h(tmp_path_factory, shared)->Path:
    "A short history (2021-09 .. 2022-06) of the shared 1h candles: restarts are fast on it."
    return write_store(tmp_path_factory.mktemp('short') / 'data', shared, a='2021-09-01', b='2022-06-30 23:00')

@pytest.fixture(scope='module')
def luna(full_1h)->dict:
    "One replay over the LUNA crash with the 5% stop and the 3% daily limit as the only protection (budget off)."
    env = env_for(full_1h, **NO_BUDGET)
    t = time.monotonic()
    p = tbot('paper', 'start', '--replay', f'{LUNA[0]}:{LUNA[1]}', env=env)
    return {'env': env, 'ledger': full_1h / 'ledger.sqlite', 'out': p.stdout, 'seconds': time.monotonic() - t}

# --- parity over the LUNA crash -----------------------------------------------------------------------------------------------

def test_luna_crash_replay_equals_the_backtest(luna, monkeypatch):
    env, ledger = luna['env'], luna['ledger']
    o = parity_json(env)
    assert o['ok'] and o['first_difference'] is None and o['note'] is None
    assert o['fills'] == o['backtest_fills'] > 10 and o['max_equity_difference'] <= 1e-9
    # an independent backtest, not the parity command's: the same candles (up to the last bar), the replay's start
    for k, v in {'TBOT_DATA_DIR': env['TBOT_DATA_DIR'], **NO_BUDGET}.items(): monkeypatch.setenv(k, v)
    from tbot.portfolio import backtest_agent, load_data
    bars = pd.DataFrame(rows(ledger, 'SELECT time, n, equity, status FROM bars ORDER BY time'), columns=['time', 'n', 'equity', 'status'])
    last = pd.Timestamp(bars.time.iloc[-1])
    assert last == pd.Timestamp(f'{LUNA[1]} 23:00', tz='UTC') and pd.Timestamp(bars.time.iloc[0]) == pd.Timestamp(LUNA[0], tz='UTC')
    r = backtest_agent(load_data(list(SYMS), '1h', 'binance', end=last), start=LUNA[0])
    sim = r.simulation
    assert list(bars.time) == [utc_text(t) for t in sim.equity.index]           # every bar, once, in order
    assert list(bars.n) == list(range(len(bars)))
    assert (bars.equity - sim.equity.to_numpy()).abs().max() <= 1e-9
    assert list(bars.status) == list(sim.status.astype(str))
    mine = rows(ledger, 'SELECT time, symbol, units, price, fee FROM fills ORDER BY seq')
    theirs = [(utc_text(f.time), f.symbol, f.units, f.price, f.fee) for f in sim.fills.itertuples()]
    assert mine == theirs                                                        # bit for bit
    assert [s for (s,) in rows(ledger, 'SELECT seq FROM fills ORDER BY seq')] == list(range(len(mine)))
    # whatever the backtest's risk layer did is in the record, and nothing else
    assert len(sim.events) > 0, 'the LUNA crash should fire the stop or the daily limit'
    recorded = [(k, t) for k, t, *_ in events(ledger) if k in ('paused', 'resumed', 'halted')]
    assert recorded == [(e.event, utc_text(e.time)) for e in sim.events.itertuples()]
    if r.stats['halted_at'] is not None:                                       # a halt is the first thing a summary says
        assert ('halted', utc_text(pd.Timestamp(r.stats['halted_at']))) in recorded
        first = tbot('paper', 'status', env=env).stdout.splitlines()[0]
        assert first.startswith('HALTED since ' + pd.Timestamp(r.stats['halted_at']).strftime('%Y-%m-%d %H:%M')), first
        assert re.match(r'(finished: )?HALTED', luna['out']), luna['out']                  # the start's own summary too
        assert 'PARITY OK' in tbot('paper', 'parity', env=env).stdout

def test_status_json_after_the_replay(luna):
    env, ledger = luna['env'], luna['ledger']
    o = status_json(env)
    (eq, risk), = rows(ledger, 'SELECT equity, risk FROM bars ORDER BY time DESC LIMIT 1')
    assert o['mode'] == 'paper' and not o['running'] and o['symbols'] == list(SYMS) and o['init_cash'] == 1000
    assert o['equity'] == eq and o['floor'] == json.loads(risk)[1] == 950.0   # the 95% floor of the 1,000 start
    assert o['fills'] == rows(ledger, 'SELECT COUNT(*) FROM fills')[0][0] > 0
    assert o['bars'] == rows(ledger, 'SELECT COUNT(*) FROM bars')[0][0] == len(pd.date_range(LUNA[0], f'{LUNA[1]} 23:00', freq='h'))
    assert o['last_bar'].startswith('2022-07-15 23:00')
    # buy-and-hold of BTC+ETH over the LUNA crash lost far more than the agent, which the stop held near its floor
    assert isinstance(o['buy_and_hold'], float) and 0 < o['buy_and_hold'] < 700 < o['equity']
    assert 'fees' in o['costs'] and 'slippage' in o['costs'] and o['fees_paid'] > 0
    assert set(o['strategies']) == {'core', 'scalping', 'risk'} and all(set(v) <= set(SYMS) for v in o['strategies'].values())
    assert o['decisions'] and all(isinstance(d, str) and re.match(r'\d{4}-\d\d-\d\d \d\d:\d\d ', d) for d in o['decisions'])
    if o['status'] == 'halted':
        assert o['halted']['text'].startswith('HALTED') and o['decisions'][-1].endswith(o['halted']['reason'])
        assert o['units'] == {s: 0.0 for s in SYMS} and o['cash'] == o['equity']  # flat when halted
    assert o['cash'] + sum(u * o['prices'][s] for s, u in o['units'].items()) == pytest.approx(o['equity'], abs=1e-9)

# --- the human reset of a halt ------------------------------------------------------------------------------------------------

def test_reset_stop_flow(luna, tmp_path):
    src = Path(luna['env']['TBOT_DATA_DIR'])
    d = copy_store(src, tmp_path / 'data'); shutil.copy(luna['ledger'], d / 'ledger.sqlite')
    env, ledger = env_for(d, **NO_BUDGET), d / 'ledger.sqlite'
    assert rows(ledger, 'SELECT status FROM bars ORDER BY time DESC LIMIT 1') == [('halted',)], 'the LUNA replay should halt'
    # a changed setting on the same account is refused in one line, and nothing is written
    before = dump(ledger)
    one_line_error(tbot('paper', 'start', '--replay', f'{LUNA[0]}:2022-08-15', env={**env, 'TBOT_RISK_PORTFOLIO_STOP': '0.02'}, check=False),
                   'portfolio_stop')
    assert dump(ledger) == before
    # bad --by / --reason
    one_line_error(tbot('paper', 'reset-stop', '--by', ' ', '--reason', 'test', env=env, check=False), '--by')
    assert dump(ledger) == before
    # halted: the reset is recorded, not yet applied
    p = tbot('paper', 'reset-stop', '--by', 'alice', '--reason', 'test', env=env)
    assert 'reset recorded' in p.stdout
    (kind, t, detail, data, applied), = [e for e in events(ledger) if e[0] == 'reset']
    assert t is None and applied is None and json.loads(data) == {'by': 'alice', 'reason': 'test'} and 'alice' in detail
    assert 'a reset is recorded' in tbot('paper', 'status', env=env).stdout.splitlines()[0]
    # the next replay applies it at its first bar; trading resumes with the floor re-based on the equity then
    tbot('paper', 'start', '--replay', f'{LUNA[0]}:2022-08-15', env=env)
    (_, _, _, _, applied), = [e for e in events(ledger) if e[0] == 'reset']
    assert applied == utc_text(pd.Timestamp('2022-07-16', tz='UTC'))            # the first bar after the reset
    after = rows(ledger, "SELECT time, status, equity, risk FROM bars WHERE time >= ? ORDER BY time", applied)
    assert after[0][1] != 'halted'
    halted_eq = rows(ledger, "SELECT equity FROM bars WHERE time < ? ORDER BY time DESC LIMIT 1", applied)[0][0]
    assert json.loads(after[0][3])[1] == pytest.approx(0.95 * halted_eq)          # the new floor: 95% of the equity at the reset
    assert rows(ledger, 'SELECT COUNT(*) FROM fills WHERE time >= ?', applied)[0][0] > 0, 'trading should resume after the reset'
    assert rows(ledger, 'SELECT COUNT(*) FROM trade_decisions WHERE time >= ?', applied)[0][0] > 0
    o = parity_json(env)
    assert o['ok'] and 'compared up to the human reset' in o['note'] and o['compared'].endswith('2022-07-15 23:00:00+00:00'), o
    # not halted now: a reset is refused in one line and nothing is written
    assert rows(ledger, 'SELECT status FROM bars ORDER BY time DESC LIMIT 1') == [('active',)]
    before = dump(ledger)
    one_line_error(tbot('paper', 'reset-stop', '--by', 'alice', '--reason', 'test', env=env, check=False), 'not halted')
    assert dump(ledger) == before

# --- bots on their own timeframes ---------------------------------------------------------------------------------------------

def test_bots_on_their_own_timeframes_equal_the_backtest(tmp_path, shared):
    d = write_store(tmp_path / 'data', shared, tfs=('1h', '5m'))               # 5m: 2023 only
    env = env_for(d)
    tbot('paper', 'start', '--bot-timeframes', '--replay', '2023-03-01:2023-03-10', env=env)
    ledger = d / 'ledger.sqlite'
    times = pd.to_datetime([t for (t,) in rows(ledger, 'SELECT time FROM bars ORDER BY time')], utc=True)
    assert times[0] == pd.Timestamp('2023-03-01', tz='UTC') and times[-1] == pd.Timestamp('2023-03-10 23:55', tz='UTC')
    assert (times.to_series().diff().dropna() == pd.Timedelta('5min')).all()    # the finest grid, every bar once
    o = parity_json(env)
    assert o['ok'] and o['fills'] == o['backtest_fills'] > 0 and o['max_equity_difference'] <= 1e-9, o
    cfg = json.loads(rows(ledger, 'SELECT config FROM accounts')[0][0])
    assert cfg['bot_timeframes'] and {tf for _, tf in cfg['keys']} == {'1h', '5m'}

# --- resume -------------------------------------------------------------------------------------------------------------------

def test_a_replay_started_again_with_a_later_end_resumes(short_1h, tmp_path):
    d = copy_store(short_1h, tmp_path / 'data'); env, ledger = env_for(d), d / 'ledger.sqlite'
    tbot('paper', 'start', '--replay', '2022-03-01:2022-03-20', env=env)
    bars1 = rows(ledger, 'SELECT * FROM bars ORDER BY time'); fills1 = rows(ledger, 'SELECT * FROM fills ORDER BY seq')
    assert bars1[-1][1].startswith('2022-03-20T23:00')
    tbot('paper', 'start', '--replay', '2022-03-01:2022-04-10', env=env)
    bars2 = rows(ledger, 'SELECT * FROM bars ORDER BY time'); fills2 = rows(ledger, 'SELECT * FROM fills ORDER BY seq')
    assert bars2[:len(bars1)] == bars1 and fills2[:len(fills1)] == fills1      # the first run's record is untouched
    assert [b[1] for b in bars2] == [utc_text(t) for t in store_index(d, '2022-03-01', '2022-04-10 23:00')]  # contiguous, none twice
    assert [b[2] for b in bars2] == list(range(len(bars2)))
    assert [f[2] for f in fills2] == list(range(len(fills2))) and len(fills2) > len(fills1)
    o = parity_json(env)
    assert o['ok'] and o['bars'] == len(bars2) and o['max_equity_difference'] <= 1e-9, o
    # the same END again: nothing new to do, exit 0
    before = dump(ledger)
    t = time.monotonic()
    tbot('paper', 'start', '--replay', '2022-03-01:2022-04-10', env=env)
    took = time.monotonic() - t
    after = dump(ledger)
    assert {k: v for k, v in after.items() if k != 'events'} == {k: v for k, v in before.items() if k != 'events'}
    assert [e[0] for e in events(ledger)][len(before['events']):] == ['started', 'finished']
    assert took < 30, f'a replay with nothing new took {took:.1f} s'
    # another START on the same account is refused (the record rests on it), nothing written
    before = dump(ledger)
    one_line_error(tbot('paper', 'start', '--replay', '2022-03-05:2022-04-20', env=env, check=False), 'replay start')
    assert dump(ledger) == before

def test_resume_where_the_first_new_bar_fills_the_last_decision(full_1h, tmp_path):
    d = copy_store(full_1h, tmp_path / 'data'); env, ledger = env_for(d), d / 'ledger.sqlite'
    tbot('paper', 'start', '--replay', '2022-04-01:2022-04-01 00:00', env=env)  # one bar: its decision fills at the next open
    assert rows(ledger, 'SELECT COUNT(*) FROM bars')[0][0] == 1
    tbot('paper', 'start', '--replay', '2022-04-01:2022-04-02', env=env)
    assert rows(ledger, "SELECT COUNT(*) FROM fills WHERE time = '2022-04-01T01:00:00.000000Z'")[0][0] > 0
    assert rows(ledger, "SELECT bar FROM orders ORDER BY bar LIMIT 1") == [('2022-04-01T00:00:00.000000Z',)]
    o = parity_json(env)
    assert o['ok'], o

# --- one trader per ledger; stop and SIGTERM ---------------------------------------------------------------------------------

def wait_running(env, proc, timeout=120)->int:
    "Wait until `tbot paper status` says the trader runs and has committed a bar; its pid."
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f'the trader ended early: {proc.returncode}\n{proc.stderr.read()}'
        p = tbot('paper', 'status', '--json', env=env, check=False)
        if p.returncode == 0 and json.loads(p.stdout)['running'] and json.loads(p.stdout)['bars']: return json.loads(p.stdout)['running']
        time.sleep(0.3)
    raise AssertionError('the trader never showed as running')

def trader(env, *args)->subprocess.Popen:
    return subprocess.Popen([TBOT, 'paper', 'start', *args], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def test_one_trader_per_ledger_and_a_clean_stop(short_1h, tmp_path):
    d = copy_store(short_1h, tmp_path / 'data'); env, ledger = env_for(d), d / 'ledger.sqlite'
    slow = ('--replay', '2022-03-01:2022-06-30', '--speed', '7200')             # two hours of market a second: runs for minutes
    first = trader(env, *slow)
    try:
        pid = wait_running(env, first)
        assert pid == first.pid
        started = [e[0] for e in events(ledger)].count('started')
        line = one_line_error(tbot('paper', 'start', *slow, env=env, check=False), 'another trader is running')
        assert str(pid) in line
        assert [e[0] for e in events(ledger)].count('started') == started == 1    # the refused one wrote nothing
        assert first.poll() is None
        p = tbot('paper', 'stop', env=env)
        assert 'stopped' in p.stdout and str(pid) in p.stdout
        assert first.wait(timeout=60) == 0, first.stderr.read()
        assert 'Traceback' not in first.stderr.read()
    finally:
        if first.poll() is None: first.kill(); first.wait()
    assert events(ledger)[-1][0] == 'stopped'
    assert not status_json(env)['running']
    n = rows(ledger, 'SELECT COUNT(*) FROM bars')[0][0]
    assert n > 0
    # started again, it resumes; SIGTERM stops it cleanly too
    second = trader(env, *slow)
    try:
        wait_running(env, second)
        t0 = rows(ledger, 'SELECT COUNT(*) FROM bars')[0][0]
        end = time.monotonic() + 60
        while rows(ledger, 'SELECT COUNT(*) FROM bars')[0][0] == t0 and time.monotonic() < end: time.sleep(0.2)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0, second.stderr.read()
        out = second.stdout.read()
        assert 'stopped' in out.lower() and 'Traceback' not in second.stderr.read(), out
    finally:
        if second.poll() is None: second.kill(); second.wait()
    ev = [e[0] for e in events(ledger)]
    assert ev[-1] == 'stopped' and ev.count('stopped') == 2 and ev.count('started') == 2
    times = [t for (t,) in rows(ledger, 'SELECT time FROM bars ORDER BY time')]
    assert len(times) > n and times == [utc_text(t) for t in store_index(d, '2022-03-01', times[-1])]
    o = parity_json(env)
    assert o['ok'], o

# --- bad input: one line, exit 2, nothing written ----------------------------------------------------------------------------

def settings_without_paper(tmp_path)->Path:
    text = (ROOT / 'settings.ini').read_text()
    out = re.sub(r'(?ms)^\[paper\].*?(?=^\[)', '', text)
    assert '[paper]' not in out and '[risk]' in out
    p = tmp_path / 'settings.ini'; p.write_text(out); return p

BAD = {  # id: (args after `paper start`, what the line says, extra env)
    'replay-unparseable': (['--replay', 'nonsense'], '--replay start', {}),
    'replay-month-13': (['--replay', '2022-13-01:2022-14-01'], '--replay', {}),
    'replay-end-before-start': (['--replay', '2022-05-01:2022-04-01'], 'before', {}),
    'replay-after-the-store': (['--replay', '2030-01-01:2030-02-01'], 'stored', {}),
    'replay-before-the-store': (['--replay', '2015-01-01:2015-02-01'], 'stored', {}),
    'unknown-symbol': (['--replay', '2022-03-01:2022-03-05', '--symbols', 'DOGE/USDT'], 'DOGE/USDT', {}),
    'one-unknown-symbol': (['--replay', '2022-03-01:2022-03-05', '--symbols', 'BTC/USDT,DOGE/USDT'], 'DOGE/USDT', {}),
    'negative-speed': (['--replay', '2022-03-01:2022-03-05', '--speed', '-1'], '--speed', {}),
    'settings-without-paper': (['--replay', '2022-03-01:2022-03-05'], '[paper]', {'TBOT_SETTINGS': None}),
}

@pytest.fixture(scope='module')
def small_ledger(short_1h, tmp_path_factory)->Path:
    "A data folder with the short store and a ledger of a few replayed days."
    d = copy_store(short_1h, tmp_path_factory.mktemp('small') / 'data')
    tbot('paper', 'start', '--replay', '2022-03-01:2022-03-03', env=env_for(d))
    return d

@pytest.mark.parametrize('case', list(BAD))
def test_bad_input_is_one_line_and_writes_nothing(case, short_1h, small_ledger, tmp_path):
    args, says, extra = BAD[case]
    if 'TBOT_SETTINGS' in extra: extra = {'TBOT_SETTINGS': str(settings_without_paper(tmp_path))}
    # on a fresh store: no ledger appears
    d = copy_store(short_1h, tmp_path / 'fresh'); before = files(d)
    one_line_error(tbot('paper', 'start', *args, env=env_for(d, **extra), check=False), says)
    assert files(d) == before and ledgers(d) == []
    # on a store with a ledger: the ledger is unchanged, row for row
    d = tmp_path / 'used'; shutil.copytree(small_ledger, d)
    rec, before = dump(d / 'ledger.sqlite'), files(d)
    one_line_error(tbot('paper', 'start', *args, env=env_for(d, **extra), check=False), says)
    assert dump(d / 'ledger.sqlite') == rec and files(d) == before

def test_a_replay_with_too_little_history_writes_nothing(short_1h, tmp_path):
    d = copy_store(short_1h, tmp_path / 'data')                               # the store starts 2021-09-01
    one_line_error(tbot('paper', 'start', '--replay', '2021-09-02:2021-09-20', env=env_for(d), check=False))
    assert ledgers(d) == []

def test_commands_on_a_missing_ledger_are_one_line(short_1h, tmp_path):
    d = copy_store(short_1h, tmp_path / 'data'); env = env_for(d)
    for cmd in (['status'], ['parity'], ['reset-stop', '--by', 'alice', '--reason', 'test']):
        one_line_error(tbot('paper', *cmd, env=env, check=False), 'no ledger')
    assert ledgers(d) == []
    assert 'no paper trader is running' in tbot('paper', 'stop', env=env).stdout
