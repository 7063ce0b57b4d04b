"""Crash safety of the paper trader: `kill -9` at 50 random moments of a replay, restarting it each time, many of the kills inside
a bar's transaction; at the end no fill is lost or doubled and the record (bars, fills, orders, decisions, risk events, equity)
equals an uninterrupted run's on a second ledger, exactly.

Each `tbot paper start` is the real console command in a process of its own (tests/forked.py), forked from a server that has
imported the libraries and replayed a few days once on a throwaway ledger, so that a restart skips Python's start and numba's
cache loading (~1-2 s each, 50 times on two cores). Whether a kill landed inside a bar transaction is read exactly: the trader is
frozen (SIGSTOP) before the SIGKILL and /proc/locks says whether it holds SQLite's WAL write lock (byte 120 of the -shm file)."""
import os, random, signal, sqlite3, time
from pathlib import Path
import pytest
from forked import PRELOAD, Forker
from tbot.data import Series, read_candle_file, write_series

pytestmark = pytest.mark.slow

KILLS, SEED = 50, 20240511
HISTORY = ('2021-11-01', '2022-06-30 23:00')    # a short stored history: each restart plans fast
REPLAY = '2022-04-10:2022-05-20'                  # ~980 bars over the LUNA crash (fills, the daily limit, the stop)
TX_DELAY = '0.004'                                # seconds each bar's transaction stays open (TBOT_TEST_TX_DELAY)
WARMUP = '''
import os
from tbot import paper
paper.start(os.environ['TBOT_WARMUP_LEDGER'], '2022-03-01:2022-03-03'); paper.status(os.environ['TBOT_WARMUP_LEDGER'])
'''

def count(ledger:Path)->int:
    "Bars committed so far (0 while there is no ledger or no table yet)."
    if not ledger.exists(): return 0
    try:
        con = sqlite3.connect(f'file:{ledger}?mode=ro', uri=True, timeout=5)
        try: return con.execute('SELECT COUNT(*) FROM bars').fetchone()[0]
        finally: con.close()
    except sqlite3.OperationalError: return 0

def in_write_transaction(pid:int, shm:Path)->bool:
    "Whether `pid` holds the WAL write lock of the ledger (an open write transaction)."
    try: ino = os.stat(shm).st_ino
    except FileNotFoundError: return False
    for line in Path('/proc/locks').read_text().splitlines():
        f = line.split()
        if f[1] == '->': f = f[:1] + f[2:]   # a blocked waiter
        if len(f) >= 8 and f[1] == 'POSIX' and f[3] == 'WRITE' and f[4] == str(pid) and f[5].endswith(f':{ino}') and f[6] == '120':
            return True
    return False

def alive_for(fk:Forker, seconds:float, err:Path):
    "Wait `seconds`, failing at once if the trader ends by itself meanwhile (the replay must not end, nor the trader fail)."
    code = fk.wait(timeout=seconds)
    assert code is None, f'the trader ended by itself (exit {code}) before it was killed:\n{err.read_text()}'

def record(ledger:Path)->dict:
    "Everything of the account a restart must reproduce; the wall-clock columns (lag, done, event `at`) and the process events left out."
    con = sqlite3.connect(f'file:{ledger}?mode=ro', uri=True)
    try:
        q = lambda sql: con.execute(sql).fetchall()
        return {'account': q('SELECT id, mode, start, init_cash, config FROM accounts'),
                'bars': q('SELECT account, time, n, equity, status, risk, prices, targets, regimes, split, strategies FROM bars ORDER BY time'),
                'orders': q('SELECT * FROM orders ORDER BY bar, id'),
                'fills': q('SELECT * FROM fills ORDER BY seq'),
                'trade_decisions': q('SELECT * FROM trade_decisions ORDER BY id'),
                'risk_events': q("SELECT kind, time, detail, data FROM events WHERE kind NOT IN ('started', 'stopped', 'finished', 'recovered') ORDER BY id")}
    finally: con.close()

@pytest.fixture(scope='module')
def store(tmp_path_factory, shared)->Path:
    d = tmp_path_factory.mktemp('crash') / 'data'
    for sym in ('BTC/USDT', 'ETH/USDT'):
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-1h.feather").loc[HISTORY[0]:HISTORY[1]], Series('binance', sym, '1h'), d)
    return d

def test_kill_9_at_50_random_moments_changes_nothing(store, tmp_path, monkeypatch):
    t0 = time.monotonic()
    env = {**os.environ, 'TBOT_DATA_DIR': str(store), 'TBOT_REPORTS_DIR': str(tmp_path / 'reports'), 'TBOT_TEST_TX_DELAY': TX_DELAY}
    (tmp_path / 'paper_warmup.py').write_text(WARMUP)
    for k, v in (('TBOT_DATA_DIR', str(store)), ('TBOT_REPORTS_DIR', str(tmp_path / 'reports')),
                 ('TBOT_WARMUP_LEDGER', str(tmp_path / 'warmup.sqlite')), ('PYTHONPATH', f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")):
        monkeypatch.setenv(k, v)
    crashed, reference = tmp_path / 'crashed.sqlite', tmp_path / 'reference.sqlite'
    shm = Path(f'{crashed}-shm')
    out, err = tmp_path / 'out', tmp_path / 'err'
    rng = random.Random(SEED)
    with Forker(PRELOAD + ['paper_warmup']) as fk:
        # the uninterrupted run
        fk.start(['paper', 'start', '--replay', REPLAY, '--ledger', reference], {**env, 'TBOT_TEST_TX_DELAY': '0'}, tmp_path, out, err)
        assert fk.wait(timeout=300) == 0, err.read_text()
        assert (tmp_path / 'warmup.sqlite').exists(), 'the warm-up replay did not run in the fork server'
        N = count(reference)
        assert N > 900
        t_ref = time.monotonic() - t0
        # the killed runs: each kill at a random bar of the run (sorted, so they spread over it), at a random moment of that bar's
        # cycle; every fifth kill instead at a random moment after the start (start-up, ledger open, the plan, or a bar)
        targets = sorted(rng.sample(range(1, N - 20), KILLS))
        inside = outside = early = 0
        for i, target in enumerate(targets):
            have = count(crashed)
            fk.start(['paper', 'start', '--replay', REPLAY, '--ledger', crashed], env, tmp_path, out, err)
            if i % 5 == 4:
                alive_for(fk, rng.uniform(0.0, 1.0), err)
            else:
                target, end = max(target, have + 1), time.monotonic() + 120
                while count(crashed) < target:
                    assert time.monotonic() < end, f'no progress towards bar {target} (at {count(crashed)})'
                    alive_for(fk, 0.001, err)
                alive_for(fk, rng.uniform(0, 0.006), err)
            os.kill(fk.pid, signal.SIGSTOP)                                   # freeze it where it is, look, then kill -9
            if in_write_transaction(fk.pid, shm): inside += 1
            elif count(crashed) == have: early += 1
            else: outside += 1
            fk.kill()
            assert fk.wait(timeout=60) == -signal.SIGKILL
            assert 'Traceback' not in err.read_text()
        before_last = count(crashed)
        fk.start(['paper', 'start', '--replay', REPLAY, '--ledger', crashed], env, tmp_path, out, err)
        assert fk.wait(timeout=300) == 0, err.read_text()
    took = time.monotonic() - t0
    print(f'\n{KILLS} kills: {inside} inside a bar transaction, {outside} between bars, {early} before the first bar of their run; '
          f'{before_last}/{N} bars done before the last start; reference run {t_ref:.1f} s, all {took:.1f} s')
    assert before_last > 0.8 * N, 'the kills should spread over the whole replay'
    assert inside >= 10 and outside + early >= 3, (inside, outside, early)
    # no lost or doubled fill, and the record equals the uninterrupted run's exactly
    a, b = record(crashed), record(reference)
    assert len(a['bars']) == N and len(a['fills']) == len(b['fills']) > 20
    assert [f[2] for f in a['fills']] == list(range(len(a['fills'])))      # seq contiguous: none lost, none twice
    assert len({f[0] for f in a['fills']}) == len(a['fills'])
    for k in b: assert a[k] == b[k], f'{k} differs after the kills'
    assert a['bars'][-1][3] == b['bars'][-1][3]                               # the final equity
    con = sqlite3.connect(f'file:{crashed}?mode=ro', uri=True)
    kinds = [k for (k,) in con.execute('SELECT kind FROM events ORDER BY id')]
    con.close()
    assert KILLS + 1 - early <= kinds.count('started') <= KILLS + 1 and kinds[-1] == 'finished' and 'error' not in kinds  # a kill at start-up may precede 'started'
    assert took < 170, f'the crash test took {took:.0f} s'
