"""Notifications end to end: a local webhook on 127.0.0.1 (apprise's json://) receives what `tbot notify` sends: a test message,
the trader's events from a real replay ledger, the alarm when the trader is killed and its end when it runs again, and a failed
scheduled run. A restart of the watcher neither loses nor repeats a message; a dead webhook is retried, then dropped with a record;
no secret (a webhook token, an exchange key) appears in any message or record."""
import http.server, json, os, shutil, signal, socket, subprocess, threading, time
from pathlib import Path
import pytest
from conftest import TBOT, tbot, one_line_error, wait_for

TOKEN = 'hooktoken-7f3a9c2e5b1d'                      # the webhook's secret path
KEY, SECRET = 'apikey-5e8d2c7a9f41b6', 'apisecret-3c9e1a7d5b2f80'

class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers['Content-Length'])).decode()
        self.server.raw.append(body)
        if self.server.fail > 0: self.server.fail -= 1; self.send_response(500); self.end_headers(); return
        self.server.got.append(json.loads(body)); self.send_response(200); self.end_headers()
    def log_message(self, *a): pass

@pytest.fixture
def hook():
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Hook); srv.got, srv.raw, srv.fail = [], [], 0
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    srv.url = f'json://127.0.0.1:{srv.server_port}/{TOKEN}'
    yield srv
    srv.shutdown()

@pytest.fixture(scope='module')
def candles(tmp_path_factory, shared):
    from tbot.data import Series, read_candle_file, write_series
    d = tmp_path_factory.mktemp('n') / 'data'
    for sym in ('BTC/USDT', 'ETH/USDT'):
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-1h.feather"), Series('binance', sym, '1h'), d)
    return d

def env_for(d:Path, url:str, **extra)->dict:
    return {'TBOT_DATA_DIR': str(d), 'TBOT_REPORTS_DIR': str(d.parent / 'reports'), 'TBOT_NOTIFY_URLS': url,
            'TBOT_BINANCE_API_KEY': KEY, 'TBOT_BINANCE_API_SECRET': SECRET, 'TBOT_NOTIFY_RETRY_DELAY': '0.05', **extra}

def no_secret(hook, d:Path):
    "No message and no record holds any part of a secret (8 characters in a row)."
    records = (d.parent / 'reports' / 'notify' / 'log.jsonl')
    texts = [json.dumps({k: v for k, v in g.items()}) for g in hook.got] + (records.read_text().splitlines() if records.exists() else [])
    for s in (TOKEN, KEY, SECRET):
        for i in range(len(s) - 7):
            assert not any(s[i:i+8] in t for t in texts), f"part of a secret in {s[:4]}..."

def titles(hook)->list: return [g['title'] for g in hook.got]

def test_test_message(tmp_path, hook):
    d = tmp_path / 'data'
    p = tbot('notify', 'test', env=env_for(d, hook.url))
    assert p.stdout.strip() == 'delivered' and titles(hook) == ['tbot: test message'] and hook.got[0]['type'] == 'info'
    no_secret(hook, d)
    one_line_error(tbot('notify', 'test', env=env_for(d, ''), check=False), 'TBOT_NOTIFY_URLS')

def test_dead_webhook_dropped_with_record(tmp_path, hook):
    "A webhook that fails every try: three tries, then dropped, recorded without the URL; the command says it was not delivered."
    d = tmp_path / 'data'; hook.fail = 100
    p = tbot('notify', 'test', env=env_for(d, hook.url), check=False)
    assert p.returncode == 1 and p.stdout.startswith('NOT delivered') and len(hook.raw) == 3 and not hook.got
    rec = [json.loads(l) for l in (tmp_path / 'reports' / 'notify' / 'log.jsonl').read_text().splitlines()]
    assert [(r['status'], r['tries']) for r in rec] == [('dropped', 3)]
    no_secret(hook, d)

@pytest.mark.slow
def test_watch_events_alarms_and_restart(candles, tmp_path, hook):
    "The watcher tells a replay's start and end, the trader down, a failed scheduled run; a second turn and a restart repeat nothing."
    d = tmp_path / 'data'; shutil.copytree(candles, d)
    env = env_for(d, hook.url, TBOT_NOTIFY_SUMMARY_HOUR='')
    tbot('paper', 'start', '--replay', '2022-05-01:2022-05-03', env=env)
    log = tmp_path / 'reports' / 'schedule' / 'log.jsonl'; log.parent.mkdir(parents=True)
    now = time.strftime('%Y-%m-%dT%H:%M:%S+00:00', time.gmtime())
    log.write_text(json.dumps({'job': 'backtest_nightly', 'how': 'schedule', 'started': now, 'finished': now, 'status': 'failed',
                               'folder': None, 'error': f'boom with {KEY}'}) + '\n')
    p = tbot('notify', 'watch', '--once', '--json', env=env)
    assert [m['kind'] for m in json.loads(p.stdout)] == ['started', 'finished', 'schedule', 'trader_down']
    assert titles(hook)[:2] == ['tbot ledger: trader started', 'tbot ledger: trader finished its replay']
    assert 'tbot: scheduled run backtest_nightly failed' in titles(hook) and 'tbot ledger: trader down' in titles(hook)
    n = len(hook.got)
    assert json.loads(tbot('notify', 'watch', '--once', '--json', env=env).stdout) == [] and len(hook.got) == n
    # the trader runs again (a longer replay, killed while it runs): its start is told once, and the alarm's end
    tr = subprocess.Popen([TBOT, 'paper', 'start', '--replay', '2022-05-01:2022-05-31', '--speed', '3600'], env={**os.environ, **env},
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: tbot('health', '--only', 'trader', env=env, check=False).returncode == 0, 120, 'the trader healthy again', proc=tr)
        kinds = [m['kind'] for m in json.loads(tbot('notify', 'watch', '--once', '--json', env=env).stdout)]
        assert 'started' in kinds and 'trader_down' in kinds   # the alarm ended: told as over
        assert any(t == 'tbot ledger: trader down is over' for t in titles(hook))
        tr.send_signal(signal.SIGKILL); tr.wait(30)
    finally:
        if tr.poll() is None: tr.kill(); tr.wait()
    kinds = [m['kind'] for m in json.loads(tbot('notify', 'watch', '--once', '--json', env=env).stdout)]
    assert kinds.count('started') == 0 and 'trader_down' in kinds   # killed: no goodbye in the ledger, the health alarm says it
    assert titles(hook).count('tbot ledger: trader started') == 2
    no_secret(hook, d)

def test_watch_without_urls_records(candles, tmp_path):
    "No URL set: the watcher still runs (a deployment without notifications does not restart in a loop) and records each message."
    d = tmp_path / 'data'; shutil.copytree(candles, d)
    env = env_for(d, '', TBOT_NOTIFY_SUMMARY_HOUR='')
    tbot('paper', 'start', '--replay', '2022-05-01:2022-05-02', env=env)
    p = tbot('notify', 'watch', '--once', env=env)
    assert 'no TBOT_NOTIFY_URLS set' in p.stderr
    rec = [json.loads(l) for l in (tmp_path / 'reports' / 'notify' / 'log.jsonl').read_text().splitlines()]
    assert {r['status'] for r in rec} == {'dropped'} and {r['kind'] for r in rec} >= {'started', 'finished'}

def test_logs_show_and_follow(tmp_path, hook):
    "`tbot logs` shows the notifier's outcomes as JSON lines without any secret; `-f` follows new lines."
    d = tmp_path / 'data'; env = env_for(d, hook.url)
    tbot('notify', 'test', env=env)
    lines = tbot('logs', '--json', env=env).stdout.splitlines()
    rec = [json.loads(l) for l in lines]
    assert [(r['logger'], r['level'], r['msg'], r['kind']) for r in rec] == [('tbot.notify', 'INFO', 'sent: tbot: test message', 'test')]
    assert 'tbot.notify: sent: tbot: test message' in tbot('logs', env=env).stdout
    f = subprocess.Popen([TBOT, 'logs', '-f', '-n', '1', '--json'], env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(f.stdout.readline()) == rec[-1]    # the last line: it is following now
        tbot('notify', 'test', env=env)
        new = json.loads(f.stdout.readline())
        assert new['msg'] == 'sent: tbot: test message' and new['at'] > rec[-1]['at']
    finally: f.terminate(); f.wait(30)
    no_secret(hook, d)
    log = tmp_path / 'reports' / 'logs' / 'tbot.jsonl'
    assert TOKEN[:8] not in log.read_text() and KEY[:8] not in log.read_text()
    one_line_error(tbot('logs', '--file', str(tmp_path / 'none.jsonl'), env=env, check=False), 'no log at')
