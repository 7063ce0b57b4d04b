"""`tbot health` end to end, as Docker's healthcheck runs it: on a real replay ledger (finished, running, killed), a halted and a
live-looking copy of it, an exchange that refuses or never answers (said fast, never hung), the scheduler, and bad input.
Every command is the real console command in its own process."""
import json, os, shutil, signal, socket, sqlite3, subprocess, time
from pathlib import Path
import pytest
from conftest import TBOT, tbot, one_line_error

def env_for(d:Path, **extra)->dict:
    return {'TBOT_DATA_DIR': str(d), 'TBOT_REPORTS_DIR': str(d.parent / 'reports'), **extra}

def health(env, *args)->tuple[int, dict]:
    p = tbot('health', '--json', *args, env=env, check=False, timeout=60)
    assert p.returncode in (0, 1), p.stderr
    return p.returncode, json.loads(p.stdout)

def check(r:dict, name:str)->dict: return next(c for c in r['checks'] if c['check'] == name)

@pytest.fixture(scope='module')
def replayed(tmp_path_factory, shared):
    "A store of the real BTC/ETH 1h candles and a ledger of a finished three-day replay (May 2022)."
    from tbot.data import Series, read_candle_file, write_series
    d = tmp_path_factory.mktemp('h') / 'data'
    for sym in ('BTC/USDT', 'ETH/USDT'):
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-1h.feather"), Series('binance', sym, '1h'), d)
    tbot('paper', 'start', '--replay', '2022-05-01:2022-05-03', env=env_for(d))
    return d

def test_finished_replay(replayed):
    "No trader runs: unhealthy, the trader named first, exit 1; a container asking only about its disk is healthy."
    code, r = health(env_for(replayed))
    assert code == 1 and not r['healthy'] and r['problems'][0].startswith('trader: not running')
    assert r['trader']['last_bar'].startswith('2022-05-03 23:00') and r['trader']['live'] is False and r['trader']['status'] == 'active'
    assert check(r, 'stop')['ok'] is True and not any(c['check'] == 'lag' for c in r['checks'])   # a replay has no market to lag
    assert {s['symbol'] for s in r['series']} == {'BTC/USDT', 'ETH/USDT'} and check(r, 'data')['ok'] is None   # a replay: not required
    assert r['system']['ledger_mb'] > 0 and r['system']['store_mb'] > 1 and r['exchange']['pinged'] is False
    code, r = health(env_for(replayed), '--only', 'disk,stop')
    assert code == 0 and r['healthy'] and not r['problems']
    text = tbot('health', '--only', 'disk', env=env_for(replayed)).stdout
    assert text.startswith('HEALTHY') and 'FAIL trader' in text and '(not counted)' in text

def test_halted_is_said_first(replayed, tmp_path):
    "A ledger whose last bar is halted: the halt is the first problem, with its reason."
    d = tmp_path / 'data'; shutil.copytree(replayed, d)
    con = sqlite3.connect(d / 'ledger.sqlite')
    with con:
        t = con.execute('SELECT MAX(time) FROM bars').fetchone()[0]
        con.execute("UPDATE bars SET status = 'halted' WHERE time = ?", (t,))
        con.execute("INSERT INTO events (account, at, time, kind, detail) VALUES (1, ?, ?, 'halted', 'equity 940.00 fell below the floor 950.00')", (t, t))
    con.close()
    code, r = health(env_for(d))
    assert code == 1 and r['problems'][0] == 'stop: HALTED: equity 940.00 fell below the floor 950.00 (a human reset is needed)'
    assert r['trader']['halted']['reason'].startswith('equity 940.00')
    code, r = health(env_for(d, TBOT_HEALTH_HALT_UNHEALTHY='false'), '--only', 'stop')
    assert code == 0 and check(r, 'stop')['ok'] is None

def test_live_account_lag_and_stale(replayed, tmp_path):
    "The same ledger as if its candles were live: years behind the market, and its series stale; the exchange is pinged."
    d = tmp_path / 'data'; shutil.copytree(replayed, d)
    con = sqlite3.connect(d / 'ledger.sqlite')
    with con:
        cfg = json.loads(con.execute('SELECT config FROM accounts').fetchone()[0]); cfg['replay'] = None
        con.execute('UPDATE accounts SET config = ?', (json.dumps(cfg),))
    con.close()
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]   # nothing listens there
    code, r = health(env_for(d, TBOT_EXCHANGE_URL=f'http://127.0.0.1:{port}'))
    assert code == 1 and r['trader']['live'] is True and r['trader']['lag_bars'] > 20_000 and check(r, 'lag')['ok'] is False
    assert check(r, 'data')['ok'] is False and 'stale: BTC/USDT 1h' in check(r, 'data')['detail']
    assert r['exchange']['pinged'] and r['exchange']['reachable'] is False and check(r, 'exchange')['detail'].startswith('unreachable')

def test_exchange_that_never_answers(replayed):
    "An exchange that takes the connection and never answers: the ping gives up after its timeout and says unreachable."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen()
        env = env_for(replayed, TBOT_EXCHANGE_URL=f'http://127.0.0.1:{s.getsockname()[1]}', TBOT_HEALTH_PING_TIMEOUT='1')
        code, r = health(env, '--ping', '--only', 'exchange')
    assert code == 1 and r['exchange']['reachable'] is False and r['problems'][0].startswith('exchange: unreachable')

@pytest.mark.slow
def test_running_then_killed(replayed, tmp_path):
    "A replay trader running: healthy heartbeat; killed with SIGKILL (no goodbye in the ledger): unhealthy at once."
    d = tmp_path / 'data'; shutil.copytree(replayed / 'binance', d / 'binance')
    env = {**os.environ, **env_for(d)}
    tr = subprocess.Popen([TBOT, 'paper', 'start', '--replay', '2022-03-01:2022-03-31', '--speed', '3600'], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        only = ('--only', 'trader,heartbeat,stop,disk')
        for _ in range(120):
            code, r = health(env_for(d), *only)
            if code == 0: break
            assert tr.poll() is None, tr.stderr.read()
            time.sleep(1)
        assert code == 0 and r['trader']['running'] == tr.pid and r['trader']['heartbeat_age'] <= 300 and r['system']['trader_rss_mb'] > 10
        tr.send_signal(signal.SIGKILL); tr.wait(30)
        code, r = health(env_for(d), *only)
        assert code == 1 and r['problems'][0].startswith('trader: not running')
    finally:
        if tr.poll() is None: tr.kill(); tr.wait()

@pytest.mark.slow
def test_scheduler_running(tmp_path):
    "The scheduler's own healthcheck: healthy while `tbot schedule` holds its lock, unhealthy once it is gone."
    d = tmp_path / 'data'
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    env = env_for(d, TBOT_EXCHANGE_URL=f'http://127.0.0.1:{port}')   # a job that fires meanwhile never reaches the network
    code, r = health(env, '--only', 'schedule')
    assert code == 1 and check(r, 'schedule')['detail'].startswith('no scheduler is running')
    sc = subprocess.Popen([TBOT, 'schedule'], env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            code, r = health(env, '--only', 'schedule')
            if code == 0: break
            time.sleep(1)
        assert code == 0 and r['schedule']['running'] and {j['job'] for j in r['schedule']['jobs']} >= {'data_refresh', 'backtest_nightly'}
    finally:
        sc.terminate(); sc.wait(60)
    assert health(env, '--only', 'schedule')[0] == 1

def test_bad_input(tmp_path):
    "A check that does not exist, an empty --only and a negative threshold: one line, exit 2."
    env = env_for(tmp_path / 'data')
    one_line_error(tbot('health', '--only', 'pulse', env=env, check=False), "no health check 'pulse'")
    one_line_error(tbot('health', '--only', ',', env=env, check=False), 'at least one')
    one_line_error(tbot('health', env={**env, 'TBOT_HEALTH_LAG_BARS': '-1'}, check=False), 'must not be negative')
    one_line_error(tbot('health', env={**env, 'TBOT_HEALTH_PING': 'often'}, check=False), 'auto, always or never')
    assert not (tmp_path / 'data').exists()
