"""docker-compose.yml as Docker Compose reads it, and each service's command and healthcheck run in this venv as its container
would run them (there is no Docker engine here): the image's entrypoint `tbot`, the compose environment, the one volume as a temp
folder, short replays instead of live candles, a local webhook, and no network (the exchange URL is a closed local port)."""
import http.server, json, os, re, shlex, shutil, signal, socket, subprocess, threading, time, urllib.error, urllib.request
from pathlib import Path
import pytest, yaml
from conftest import ROOT, TBOT

COMPOSE = yaml.safe_load((ROOT / 'docker-compose.yml').read_text())
SERVICES = COMPOSE['services']
VOLUME = '/var/lib/tbot'       # where the one volume is mounted in every container
BIN = Path(TBOT).parent

def interpolate(text:str, env:dict)->str:
    "Compose's ${VAR}, ${VAR:-default} and ${VAR-default}."
    def sub(m):
        name, op, default = m.group(1), m.group(2), m.group(3) or ''
        v = env.get(name)
        if op == ':-': return v if v else default
        if op == '-': return default if v is None else v
        return v or ''
    return re.sub(r'\$\{(\w+)(?:(:?-)([^}]*))?\}', sub, text)

def argv(svc:dict, env:dict, state:Path)->list:
    "The container's process: the entrypoint (the image's `tbot` unless the service sets one), then the command."
    entry = svc.get('entrypoint', ['tbot'])
    cmd = svc.get('command', [])
    cmd = shlex.split(interpolate(cmd, env)) if isinstance(cmd, str) else [interpolate(c, env) for c in cmd]
    return [a.replace(VOLUME, str(state)) for a in [*entry, *cmd]]

def container_env(svc:dict, state:Path, extra:dict)->dict:
    "The container's environment: ours (for the venv), .env's stand-ins in `extra`, the service's own, the volume at `state`."
    env = {**os.environ, **extra, 'PATH': f"{BIN}:{os.environ['PATH']}"}
    env.update({k: interpolate(str(v), env).replace(VOLUME, str(state)) for k, v in svc.get('environment', {}).items()})
    return env

def healthcheck(svc:dict, env:dict, state:Path, cwd=ROOT)->subprocess.CompletedProcess:
    "Run the service's healthcheck once, as Docker does (CMD: the argv; CMD-SHELL: through sh -c)."
    kind, *rest = svc['healthcheck']['test']
    args = [a.replace(VOLUME, str(state)) for a in rest]
    if kind == 'CMD-SHELL': args = ['sh', '-c', args[0]]
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120)

def until_healthy(svc, env, state, proc, cwd=ROOT, tries=180)->subprocess.CompletedProcess:
    for _ in range(tries):
        h = healthcheck(svc, env, state, cwd)
        if h.returncode == 0: return h
        assert proc.poll() is None, f"the service exited {proc.returncode}: {Path(proc.err).read_text()[-2000:]}"
        time.sleep(1)
    raise AssertionError(f"never healthy: {h.stdout}{h.stderr}")

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

# --- the file itself -----------------------------------------------------------------------------------------------------------

def test_services_volume_healthchecks_restart():
    assert set(SERVICES) == {'trader', 'trader2', 'scheduler', 'notify', 'dashboard'}
    assert SERVICES['trader2']['profiles'] == ['second'] and all('profiles' not in s for n, s in SERVICES.items() if n != 'trader2')
    assert list(COMPOSE['volumes']) == ['tbot-state']
    for name, s in SERVICES.items():
        assert s['volumes'] == [f'tbot-state:{VOLUME}'], name                      # one volume: the store, the ledgers, the reports
        assert s['environment']['TBOT_DATA_DIR'] == f'{VOLUME}/data' and s['environment']['TBOT_REPORTS_DIR'] == f'{VOLUME}/reports'
        assert s['restart'] == 'unless-stopped', name
        test = ' '.join(s['healthcheck']['test'])
        assert 'tbot health' in test and '--only' in test, name
        assert s['image'] == '${TBOT_IMAGE:-tbot:latest}' and s['build']['context'] == '.'
        assert s['build']['args'] == {'TBOT_IMAGE': '${TBOT_IMAGE:-tbot:latest}', 'TBOT_COMMIT': '${TBOT_COMMIT:-unknown}'}   # the image knows what it is
        assert s['environment']['TBOT_IMAGE'] == '${TBOT_IMAGE:-tbot:latest}'   # every start records the tag (deployment history)
    assert SERVICES['trader2']['environment']['TBOT_SETTINGS'] == 'deploy/eth-5m.ini' and (ROOT / 'deploy' / 'eth-5m.ini').is_file()   # its own settings
    docker = (ROOT / 'Dockerfile').read_text()
    assert 'ARG TBOT_COMMIT' in docker and 'ARG TBOT_IMAGE' in docker
    assert all(p.startswith('127.0.0.1:') for p in SERVICES['dashboard']['ports'])   # the dashboard is for this machine only
    assert all('ports' not in s for n, s in SERVICES.items() if n != 'dashboard')

def test_env_example_holds_no_secret():
    "Every secret of .env.example is empty, and .env itself is git-ignored."
    lines = [l for l in (ROOT / '.env.example').read_text().splitlines() if l.strip() and not l.startswith('#')]
    kv = dict(l.split('=', 1) for l in lines)
    for k in ('TBOT_NOTIFY_URLS', 'TBOT_BINANCE_API_KEY', 'TBOT_BINANCE_API_SECRET'): assert kv[k] == '', k
    assert not any(re.search(r'(KEY|SECRET|TOKEN|PASSWORD|URLS)$', k) and v for k, v in kv.items())
    assert subprocess.run(['git', 'check-ignore', '-q', '.env'], cwd=ROOT).returncode == 0
    for n in ('TBOT_TRADER_ARGS', 'TBOT_IMAGE'): assert n in kv    # what docker-compose.yml interpolates
    used = set(re.findall(r'\$\{(\w+)', (ROOT / 'docker-compose.yml').read_text()))
    assert used <= set(kv), used - set(kv)

def test_interpolation():
    env = {'A': 'x', 'E': ''}
    assert [interpolate(t, env) for t in ('${A}', '${B:-d}', '${E:-d}', '${E-d}', 'p ${B:-}')] == ['x', 'd', 'd', '', 'p ']
    assert argv(SERVICES['trader'], {'TBOT_TRADER_ARGS': '--replay 2022-05-01 --speed 60'}, Path('/s')) == \
        ['tbot', 'paper', 'start', '--replay', '2022-05-01', '--speed', '60']
    assert argv(SERVICES['trader2'], {}, Path('/s'))[:5] == ['tbot', 'paper', 'start', '--ledger', '/s/data/eth-5m/ledger.sqlite']

# --- the services, run -----------------------------------------------------------------------------------------------------------

class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.server.got.append(json.loads(self.rfile.read(int(self.headers['Content-Length'])))); self.send_response(200); self.end_headers()
    def log_message(self, *a): pass

@pytest.mark.slow
def test_services_start_and_healthchecks(tmp_path, shared):
    "Every service starts from its compose command; each healthcheck passes while it runs and fails once the trader is stopped."
    from tbot.data import Series, read_candle_file, write_series
    state = tmp_path / 'state'
    for sym, tf in (('BTC/USDT', '1h'), ('ETH/USDT', '1h'), ('BTC/USDT', '5m'), ('ETH/USDT', '5m')):
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-{tf}.feather"), Series('binance', sym, tf), state / 'data')
    hook = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Hook); hook.got = []
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    port = free_port()
    dotenv = {'TBOT_TRADER_ARGS': '--replay 2022-03-01:2022-03-31 --speed 3600', 'TBOT_TRADER2_ARGS': '--replay 2023-03-01:2023-03-05 --speed 300',
              'TBOT_EXCHANGE_URL': f'http://127.0.0.1:{free_port()}', 'TBOT_NOTIFY_URLS': f'json://127.0.0.1:{hook.server_port}/hooktoken-a1b2c3d4e5',
              'TBOT_NOTIFY_INTERVAL': '1', 'TBOT_NOTIFY_SUMMARY_HOUR': '', 'TBOT_DASHBOARD_TOKEN': 'dashtoken-f6e5d4c3b2a1'}
    app = ROOT
    procs, envs = {}, {}
    try:
        for name in ('trader', 'trader2', 'scheduler', 'notify', 'dashboard'):
            svc = SERVICES[name]
            envs[name] = container_env(svc, state, dotenv)
            args = argv(svc, envs[name], state)
            if name == 'dashboard':
                args = [a.replace('8866', str(port)) for a in args]; svc = {**svc, 'healthcheck': {'test': [t.replace('8866', str(port)) for t in svc['healthcheck']['test']]}}
            procs[name] = (subprocess.Popen(args, env=envs[name], cwd=app if name == 'dashboard' else ROOT, stdout=open(tmp_path / f'{name}.out', 'w'),
                                            stderr=open(tmp_path / f'{name}.err', 'w')), svc)
            procs[name][0].err = tmp_path / f'{name}.err'
        for name, (p, svc) in procs.items():
            h = until_healthy(svc, envs[name], state, p, cwd=app if name == 'dashboard' else ROOT)
            if name.startswith('trader'): assert h.stdout.startswith('HEALTHY'), h.stdout
        assert (state / 'data' / 'ledger.sqlite').is_file() and (state / 'data' / 'eth-5m' / 'ledger.sqlite').is_file()
        # the dashboard: its page opens with the token of .env, which it never prints
        said = (tmp_path / 'dashboard.out').read_text() + (tmp_path / 'dashboard.err').read_text()
        assert f'http://0.0.0.0:{port}/?token=<TBOT_DASHBOARD_TOKEN>' in said and 'dashtoken' not in said, said
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/?token=dashtoken-f6e5d4c3b2a1', timeout=120) as r:
            page = r.read().decode()
            assert r.status == 200 and '/login' not in r.geturl() and 'trading, as it happens' in page, (r.geturl(), page[:300])
        with urllib.request.urlopen(f'http://127.0.0.1:{port}/?token=wrong', timeout=60) as r:   # sent to the login page
            assert '/login' in r.geturl() and 'trading, as it happens' not in r.read().decode(), r.geturl()
        fleet = json.loads(subprocess.run([TBOT, 'paper', 'status', '--all', '--json'], env=envs['notify'], cwd=ROOT, capture_output=True, text=True, timeout=120).stdout)
        assert {(r['ledger'], r['timeframe'], tuple(r['symbols'])) for r in fleet} == {(str(state / 'data' / 'ledger.sqlite'), '1h', ('BTC/USDT', 'ETH/USDT')),
                                                                                (str(state / 'data' / 'eth-5m' / 'ledger.sqlite'), '5m', ('ETH/USDT',))}
        for _ in range(60):                                    # the watcher told the trader's start
            if any(g['title'] == 'tbot ledger: trader started' for g in hook.got): break
            time.sleep(1)
        assert any(g['title'] == 'tbot ledger: trader started' for g in hook.got), [g['title'] for g in hook.got]
        # docker stop: SIGTERM; the trader finishes its bar and exits 0, and its healthcheck now fails
        p, svc = procs.pop('trader'); p.send_signal(signal.SIGTERM); assert p.wait(120) == 0
        h = healthcheck(svc, envs['trader'], state)
        assert h.returncode == 1 and h.stdout.startswith('UNHEALTHY: trader: not running'), h.stdout
        for _ in range(60):
            if any(g['title'] == 'tbot ledger: trader stopped' for g in hook.got): break
            time.sleep(1)
        assert any(g['title'] == 'tbot ledger: trader stopped' for g in hook.got)
        assert not any('hooktoken' in json.dumps(g) for g in hook.got)
    finally:
        for p, _ in procs.values():
            if p.poll() is None: p.send_signal(signal.SIGTERM)
        for p, _ in procs.values():
            try: p.wait(60)
            except subprocess.TimeoutExpired: p.kill(); p.wait()
        hook.shutdown()
