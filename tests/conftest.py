"""Shared test harness: the `tbot` command as a user runs it, the shared real candles, one-line-error checks, temp stores.

    from conftest import TBOT, SHARED, ROOT, tbot, one_line_error
    p = tbot('regime', 'BTC/USDT', '1h', '--json')            # asserts exit 0 (check=True), returns CompletedProcess
    one_line_error(tbot('regime', 'DOGE/USDT', '1h', check=False), 'no DOGE/USDT')
"""
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]                      # the checkout
SHARED = ROOT.parent / 'shared' / 'data' / 'binance'             # the real Binance candles (freqtrade format), read-only
TBOT = str(Path(sys.executable).parent / 'tbot')                 # the installed console command of this venv
sys.path.insert(0, str(Path(__file__).parent))

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
