"""Shared test harness: the `tbot` command as a user runs it, the shared real candles, one-line-error checks, temp stores.

    from conftest import TBOT, SHARED, ROOT, tbot, one_line_error
    p = tbot('regime', 'BTC/USDT', '1h', '--json')            # asserts exit 0 (check=True), returns CompletedProcess
    one_line_error(tbot('regime', 'DOGE/USDT', '1h', check=False), 'no DOGE/USDT')
"""
import fcntl, os, sqlite3, subprocess, sys, tempfile, time
from contextlib import contextmanager
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]                      # the checkout
SHARED = ROOT.parent / 'shared' / 'data' / 'binance'             # the real Binance candles (freqtrade format), read-only
TBOT = str(Path(sys.executable).parent / 'tbot')                 # the installed console command of this venv
sys.path.insert(0, str(Path(__file__).parent))

# --- waiting on a trader that runs in another process ---
def try_rows(ledger:Path, sql:str, *args)->list:
    "Rows read-only, or [] while the ledger or its tables do not exist yet."
    if not Path(ledger).exists(): return []
    try:
        con = sqlite3.connect(f'file:{ledger}?mode=ro', uri=True, timeout=30)
        try: return con.execute(sql, args).fetchall()
        finally: con.close()
    except sqlite3.OperationalError: return []

def wait_for(cond, secs:float, what:str, proc=None, ledger=None, every:float=0.2):
    "Wait until `cond()` is truthy and return it; on a timeout or a dead `proc`, fail saying what the ledger's trader recorded."
    end, said = time.monotonic() + secs, lambda: '' if ledger is None else f"\nevents: {try_rows(ledger, 'SELECT kind, time, detail FROM events ORDER BY id')[-12:]}\nbars: {try_rows(ledger, 'SELECT time, equity, targets FROM bars ORDER BY time')[-5:]}"
    while time.monotonic() < end:
        v = cond()
        if v: return v
        if proc is not None and proc.poll() is not None: raise AssertionError(f"the process died while waiting for {what}: {proc.stderr.read()[-2000:] if proc.stderr else ''}{said()}")
        time.sleep(every)
    raise AssertionError(f"timed out after {secs} s waiting for {what}{said()}")

# --- running on several cores (pytest-xdist, `make test`: -n 2) ---
# Every test works in its own temp folders, on free ports. The one shared thing is the checkout: a test marked `alone` rewrites
# files of it (nbdev-export regenerates tbot/*.py, truncating each file first), so it runs while no test of another worker runs:
# each test holds a shared lock on the checkout through its setup, call and teardown (module fixtures included), an `alone` test
# an exclusive one. A turnstile lock lets a waiting `alone` test in before the next test of the other worker.

def pytest_configure(config):
    config.addinivalue_line('markers', 'alone: rewrites files of the checkout; under xdist no other test runs meanwhile')
    config.addinivalue_line('markers', 'browser: drives the dashboard in headless Debian chromium (/usr/bin/chromium) through Playwright')

@contextmanager
def checkout_lock(config, exclusive:bool):
    "Hold the checkout shared (or `exclusive`) among the xdist workers of this run; nothing to hold without xdist."
    if not hasattr(config, 'workerinput'): yield; return
    if config.option.basetemp: base = Path(config.option.basetemp).parent  # the run's temp folder, common to its workers
    else: base = Path(tempfile.gettempdir()) / f"tbot-tests-{config.workerinput['testrunuid']}"; base.mkdir(exist_ok=True)
    with open(base / 'checkout.turnstile', 'a') as gate, open(base / 'checkout.lock', 'a') as lock:
        fcntl.flock(gate, fcntl.LOCK_EX)
        if not exclusive: fcntl.flock(gate, fcntl.LOCK_UN)
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if exclusive: fcntl.flock(gate, fcntl.LOCK_UN)
        try: yield
        finally: fcntl.flock(lock, fcntl.LOCK_UN)

@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    with checkout_lock(item.config, item.get_closest_marker('alone') is not None): return (yield)

# With --dist loadfile each file is one unit of work, handed out in collection order to whichever worker is free: the longest
# files go first so that no worker is left alone with one at the end (seconds measured on 2 cores: live_faults ~700, honesty ~400, install ~330,
# reports ~250, paper ~200, cli_data ~180, data_integrity ~160, compose ~160, health ~155, schedule ~140, agent ~130, notify ~120, drills ~90;
# the rest under 60). Files keep their own order.
LONGEST_FIRST = ['test_live_faults.py', 'test_honesty.py', 'test_install.py', 'test_reports.py', 'test_paper.py', 'test_cli_data.py', 'test_data_integrity.py',
                 'test_compose.py', 'test_health.py', 'test_schedule.py', 'test_agent.py', 'test_notify.py', 'test_drills.py', 'test_paper_faults.py',
                 'test_paper_crash.py', 'test_live_session.py']

def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda it: LONGEST_FIRST.index(it.path.name) if it.path.name in LONGEST_FIRST else len(LONGEST_FIRST))

def tbot(*args, env=None, check=True, cwd=None, timeout=600, input=None) -> subprocess.CompletedProcess:
    "Run `tbot *args` as a user would (the current environment plus `env`); with `check`, assert it exited 0."
    p = subprocess.run([TBOT, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd, input=input,
                       env={**os.environ, **(env or {})})
    if check: assert p.returncode == 0, f"tbot {' '.join(map(str, args))} exited {p.returncode}:\n{p.stderr}"
    return p

def one_line_error(p:subprocess.CompletedProcess, contains:str|None=None, code:int|None=2) -> str:
    "Assert `p` failed (exit `code`, or any non-zero with None) with exactly one stderr line and no traceback; return the line."
    assert p.returncode != 0 if code is None else p.returncode == code, f"exit {p.returncode}, stderr:\n{p.stderr}"
    assert 'Traceback' not in p.stderr and p.stderr.endswith('\n') and p.stderr.count('\n') == 1, f"not one line:\n{p.stderr}"
    assert p.stderr.startswith('tbot'), p.stderr
    assert 'internal error' not in p.stderr, f"a bug, not a refusal: {p.stderr}"
    if contains is not None: assert contains in p.stderr, f"{contains!r} not in {p.stderr!r}"
    return p.stderr.rstrip('\n')

@pytest.fixture
def store(tmp_path, monkeypatch):
    "An empty candle store and reports folder, set through the environment as a user would."
    d = tmp_path / 'data'; r = tmp_path / 'reports'
    monkeypatch.setenv('TBOT_DATA_DIR', str(d)); monkeypatch.setenv('TBOT_REPORTS_DIR', str(r))
    return d

@pytest.fixture(scope='session')
def shared():
    assert SHARED.is_dir(), f"the shared real data is missing at {SHARED}"
    return SHARED

@pytest.fixture
def real_store(store, shared):
    "The temp `store` holding the shared real BTC/USDT and ETH/USDT 1h candles (written directly, no CLI run)."
    from tbot.data import Series, read_candle_file, write_series
    for sym in ('BTC/USDT', 'ETH/USDT'):
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-1h.feather"), Series('binance', sym, '1h'))
    return store
