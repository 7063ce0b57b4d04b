"""Fault drills, each end to end through the `tbot` command as it runs in production:
(a) the trader is killed (SIGKILL): `tbot health` goes unhealthy and the notify watcher sends the alarm to a local webhook; started
    again, it recovers: healthy, the alarm's end is told, no bar twice, the record equal to the backtest (parity);
(b) the disk fills under the ledger (a small tmpfs as root; else RLIMIT_FSIZE in the trader's process): the trader stops in one
    line, nothing is corrupted (PRAGMA integrity_check, the committed bars equal to the backtest), `tbot health` says the disk is
    full; with space again it resumes where it stopped;
(c) the exchange (tests/fake_binance.py on 127.0.0.1) stops answering a live-candle paper trader: `tbot health` says unreachable,
    the watcher's notification fires, and no bar is traded while the candles cannot be had."""
import http.server, json, os, signal, subprocess, threading, time
from pathlib import Path
import pandas as pd, pytest
from conftest import TBOT, tbot, one_line_error, wait_for
from conftest import try_rows as rows
from tbot.data import Series, read_candle_file, write_series

SYMS = ('BTC/USDT', 'ETH/USDT')
TOKEN = 'drilltoken-4b9e2f7a1c'

class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.server.got.append(json.loads(self.rfile.read(int(self.headers['Content-Length'])))); self.send_response(200); self.end_headers()
    def log_message(self, *a): pass

@pytest.fixture
def hook():
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Hook); srv.got = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f'json://127.0.0.1:{srv.server_port}/{TOKEN}'
    yield srv
    srv.shutdown()

def titles(hook)->list: return [g['title'] for g in hook.got]

def write_store(d:Path, shared:Path)->Path:
    "A short history (2021-09 .. 2022-06) of the shared 1h candles: a replay on it takes seconds."
    for sym in SYMS:
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-1h.feather").loc['2021-09-01':'2022-06-30 23:00'], Series('binance', sym, '1h'), d)
    return d

def env_for(d:Path, **extra)->dict: return {**os.environ, 'TBOT_DATA_DIR': str(d), 'TBOT_REPORTS_DIR': str(d.parent / 'reports'), **extra}

def n_bars(led:Path)->int: return (rows(led, 'SELECT COUNT(*) FROM bars') or [(0,)])[0][0]

def health(env, led, *only)->subprocess.CompletedProcess:
    return subprocess.run([TBOT, 'health', '--ledger', str(led), '--no-ping', '--only', ','.join(only)], env=env, capture_output=True, text=True, timeout=120)

def one_bar_each(led:Path):
    "Every bar once, hour after hour, from the first to the last."
    t = [pd.Timestamp(x) for (x,) in rows(led, 'SELECT time FROM bars ORDER BY time')]
    assert len(t) == len(set(t)) > 0 and all(b - a == pd.Timedelta('1h') for a, b in zip(t, t[1:])), 'a bar twice or a hole'
    return t

# --- (a) the trader is killed ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_kill_the_trader_alarm_then_recovery(tmp_path, shared, hook):
    d = write_store(tmp_path / 'data', shared); led = d / 'ledger.sqlite'
    env = env_for(d, TBOT_NOTIFY_URLS=hook.url, TBOT_NOTIFY_INTERVAL='1', TBOT_NOTIFY_RETRY_DELAY='0.05', TBOT_NOTIFY_SUMMARY_HOUR='')
    start = [TBOT, 'paper', 'start', '--replay', '2022-05-01:2022-06-30', '--speed', '3600', '--ledger', str(led)]
    procs = [subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)]
    watcher = None
    try:
        wait_for(lambda: n_bars(led) >= 3, 120, 'the first bars')
        watcher = subprocess.Popen([TBOT, 'notify', 'watch', '--ledger', str(led)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: health(env, led, 'trader', 'heartbeat', 'stop').returncode == 0, 60, 'a healthy trader')
        wait_for(lambda: 'tbot ledger: trader started' in titles(hook), 60, 'the start told')
        procs[0].send_signal(signal.SIGKILL); procs[0].wait(30)           # kill -9: no goodbye in the ledger
        killed_at = n_bars(led)
        h = health(env, led, 'trader', 'heartbeat', 'stop')
        assert h.returncode == 1 and h.stdout.startswith('UNHEALTHY: trader: not running'), h.stdout
        wait_for(lambda: 'tbot ledger: trader down' in titles(hook), 60, 'the alarm at the webhook')
        assert titles(hook).count('tbot ledger: trader down') == 1
        procs.append(subprocess.Popen(start, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))   # restart it
        wait_for(lambda: health(env, led, 'trader', 'heartbeat', 'stop').returncode == 0, 60, 'healthy again')
        wait_for(lambda: 'tbot ledger: trader down is over' in titles(hook), 60, 'the recovery told')
        wait_for(lambda: n_bars(led) >= killed_at + 5, 60, 'new bars after the restart')
        told = titles(hook)
        procs[1].send_signal(signal.SIGTERM); assert procs[1].wait(60) == 0, procs[1].stderr.read()
        wait_for(lambda: 'tbot ledger: trader stopped' in titles(hook), 60, 'the stop told')
    finally:
        for p in procs + [watcher]:
            if p is not None and p.poll() is None: p.send_signal(signal.SIGTERM)
        for p in procs + [watcher]:
            if p is not None:
                try: p.wait(60)
                except subprocess.TimeoutExpired: p.kill(); p.wait()
    assert told[:2] == ['tbot ledger: trader started', 'tbot ledger: trader down'] and sorted(told[2:]) == ['tbot ledger: trader down is over', 'tbot ledger: trader started'], told   # nothing twice
    t = one_bar_each(led)
    assert t[0] == pd.Timestamp('2022-05-01', tz='UTC') and len(t) > killed_at
    o = json.loads(tbot('paper', 'parity', '--json', '--ledger', led, env=env).stdout)
    assert o['ok'] and o['bars'] == len(t), o                                # the kill changed nothing the trader decided
    dep = __import__('tbot.deploy', fromlist=['deployments']).deployments(led)
    assert [r['ended'] and r['ended']['kind'] for r in dep] == [None, 'stopped']   # the killed run never said goodbye
    assert not any(TOKEN[:8] in json.dumps(g) for g in hook.got)

# --- (b) the disk fills ---------------------------------------------------------------------------------------------------------

def small_fs(where:Path, mb:int)->bool:
    "Mount a tmpfs of `mb` MB at `where` (root only); False when this machine does not allow it."
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0: return False
    return subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={mb}m', 'tmpfs', str(where)], capture_output=True).returncode == 0

def fill(where:Path)->Path:
    "Fill the filesystem of `where` to the last byte (unbuffered writes until none fits)."
    f = where / 'filler'
    fd = os.open(f, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (2**20, 65536, 4096, 512, 1):
            while True:
                try:
                    if os.write(fd, b'\0' * size) < size: break
                except OSError: break
    finally: os.close(fd)
    return f

@pytest.mark.slow
def test_disk_full_fails_cleanly_and_is_reported(tmp_path, shared):
    mnt = tmp_path / 'small'
    tmpfs = not os.environ.get('TBOT_DRILL_RLIMIT') and small_fs(mnt, 48)   # TBOT_DRILL_RLIMIT=1: the fallback, even as root
    try:
        d = write_store(mnt / 'data', shared); led = d / 'ledger.sqlite'
        env = env_for(d, TBOT_HEALTH_DISK_FREE_MIN_MB='5')
        start = [TBOT, 'paper', 'start', '--replay', '2022-05-01:2022-06-30', '--speed', '7200', '--ledger', str(led)]
        p = subprocess.Popen(start, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: n_bars(led) >= 24, 120, 'a day of bars')
            assert health(env, led, 'trader', 'stop', 'disk').returncode == 0
            if tmpfs: filler = fill(mnt)
            else:   # no mount here: the trader's files may not grow any more (RLIMIT_FSIZE: EFBIG, as a full disk's ENOSPC)
                import psutil
                size = max(f.stat().st_size for f in d.glob('ledger.sqlite*'))
                psutil.Process(p.pid).rlimit(psutil.RLIMIT_FSIZE, (size, size))
            out, err = p.communicate(timeout=180)                           # it stops at its next bar
        finally:
            if p.poll() is None: p.kill(); p.wait()
        assert p.returncode == 2, (p.returncode, err)
        one_line_error(subprocess.CompletedProcess(start, p.returncode, out, err), 'disk is full' if tmpfs else 'ledger')
        assert 'the last committed bar' in err
        # nothing corrupted: the file checks out, every committed bar once and equal to the backtest over the same candles
        assert rows(led, 'PRAGMA integrity_check') == [('ok',)]
        t = one_bar_each(led)
        if tmpfs:
            h = health(env, led, 'trader', 'stop', 'disk')
            assert h.returncode == 1 and 'disk:' in h.stdout.splitlines()[0] and 'MB free' in h.stdout.splitlines()[0], h.stdout
            filler.unlink()                                                  # space again
        o = json.loads(tbot('paper', 'parity', '--json', '--ledger', led, env=env).stdout)
        assert o['ok'] and o['bars'] == len(t), o
        # it resumes where it stopped, at full speed to the end of the replay
        r = subprocess.run([TBOT, 'paper', 'start', '--replay', '2022-05-01:2022-05-10', '--ledger', str(led)], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert len(one_bar_each(led)) == max(len(t), 10 * 24) and rows(led, 'PRAGMA integrity_check') == [('ok',)]
    finally:
        if tmpfs: subprocess.run(['umount', '-l', str(mnt)])

# --- (c) the exchange stops answering -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_exchange_unreachable_reported_notified_and_nothing_traded(tmp_path, hook):
    from fake_binance import FakeBinance, shared_candles
    H, T0 = pd.Timedelta('1h'), pd.Timestamp('2022-05-05', tz='UTC')
    real = shared_candles(SYMS, ('1h',), pd.Timestamp('2021-11-01', tz='UTC'), T0 + 48 * H)
    d = tmp_path / 'data'; led = d / 'ledger.sqlite'
    for sym in SYMS: write_series(real[(sym.replace('/', ''), '1h')].loc[:T0 - H], Series('binance', sym, '1h'), d)
    fake = FakeBinance(real, now=T0 + pd.Timedelta('20s'), slow=3.0).__enter__()   # a hung request answers after 3 s: past the 1 s timeout
    env = env_for(d, TBOT_EXCHANGE_URL=fake.url, TBOT_PAPER_POLL='0.2', TBOT_PAPER_SETTLE='0', TBOT_EXCHANGE_RETRY_DELAY='0.01',
                  TBOT_EXCHANGE_RETRIES='2', TBOT_EXCHANGE_TIMEOUT='1', TBOT_NOTIFY_URLS=hook.url, TBOT_NOTIFY_RETRY_DELAY='0.05',
                  TBOT_NOTIFY_SUMMARY_HOUR='', TBOT_NOTIFY_UNREACHABLE_MINUTES='0', TBOT_HEALTH_PING_TIMEOUT='1')
    p = subprocess.Popen([TBOT, 'paper', 'start', '--ledger', str(led)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: rows(led, "SELECT 1 FROM events WHERE kind = 'started'") if led.exists() else [], 60, 'the trader to start')
        first = pd.Timestamp(rows(led, 'SELECT start FROM accounts')[0][0]).ceil('h')
        for k in (1, 2):                                                     # two bars close and are traded
            fake.set_now(first + k * H + pd.Timedelta('1s'))
            wait_for(lambda: n_bars(led) == k, 30, f'bar {k}')
        h = subprocess.run([TBOT, 'health', '--ledger', str(led), '--ping', '--only', 'trader,exchange'], env=env, capture_output=True, text=True, timeout=60)
        assert h.returncode == 0 and 'reachable' in h.stdout, h.stdout
        fake.set_now(first + 3 * H - pd.Timedelta('2s'))                     # the next bar closes in 2 s ...
        time.sleep(0.5)
        fake.inject(*['timeout'] * 100000, path='*')                         # ... and the exchange stops answering (every request hangs)
        stored = {s: len(pd.read_parquet(next((d / 'binance').glob(f"{s.replace('/', '_')}-1h.*")))) for s in SYMS}
        wait_for(lambda: rows(led, "SELECT 1 FROM events WHERE kind IN ('error', 'pause') AND at > (SELECT MAX(done) FROM bars)"), 60, 'failed requests recorded')
        time.sleep(5)
        assert n_bars(led) == 2 and p.poll() is None                         # no bar on stale candles, and the trader waits on
        h = subprocess.run([TBOT, 'health', '--ledger', str(led), '--ping', '--only', 'trader,exchange'], env=env, capture_output=True, text=True, timeout=60)
        assert h.returncode == 1 and h.stdout.startswith('UNHEALTHY: exchange: unreachable'), h.stdout
        w = subprocess.run([TBOT, 'notify', 'watch', '--ledger', str(led), '--once', '--json'], env=env, capture_output=True, text=True, timeout=120)
        assert w.returncode == 0, w.stderr
        assert 'exchange_unreachable' in [m['kind'] for m in json.loads(w.stdout)]
        assert 'tbot ledger: exchange unreachable' in titles(hook)
        assert n_bars(led) == 2 and {s: len(pd.read_parquet(next((d / 'binance').glob(f"{s.replace('/', '_')}-1h.*")))) for s in SYMS} == stored
    finally:
        if p.poll() is None: p.send_signal(signal.SIGTERM)
        try: p.wait(60)
        except subprocess.TimeoutExpired: p.kill(); p.wait()
        fake.stop()
    assert p.returncode == 0, p.stderr.read()
    assert [k for (k,) in rows(led, 'SELECT kind FROM events ORDER BY id')][-1] == 'stopped'
    assert not any(TOKEN[:8] in json.dumps(g) for g in hook.got)
