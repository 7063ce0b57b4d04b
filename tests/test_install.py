"""A researcher's first hour: tbot installed from a wheel works from any folder on its shipped defaults, `tbot config` says
where everything is, JupyterLab starts on the notebooks, and `make test` leaves `make`'s install stamp alone."""
import json, os, re, shutil, socket, subprocess, sys, time, tomllib, urllib.request
from pathlib import Path
import pytest
from conftest import ROOT, SHARED
from tbot.config import SHIPPED

BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())

def clean_env(**extra):
    "The environment without any TBOT_* setting, as on a new user's machine."
    return {**{k: v for k, v in os.environ.items() if not k.startswith('TBOT_')}, **extra}

def run(cmd, cwd, env=None, timeout=600):
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)

def out_json(p):
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)

def pin(req:str): return re.split(r'==', req)[0].lower().replace('_', '-'), req.split('==')[1]

# ---------------------------------------------------------------------------------------------------------------- packaging

def test_the_package_ships_what_config_looks_for():
    st = PYPROJECT['tool']['setuptools']
    for inside, source in SHIPPED.items():
        pkg = 'tbot.' + inside.split('/')[0]
        assert pkg in st['packages'], pkg
        folder = Path(st['package-dir'][pkg]) / '/'.join(inside.split('/')[1:])
        assert (ROOT / folder).resolve() == (ROOT / source).resolve(), (pkg, folder, source)
        assert (ROOT / source).exists()
    assert st['package-data']['tbot.defaults'] == ['settings.ini']

def test_every_direct_dependency_is_pinned_as_in_constraints():
    cons = dict(pin(l) for l in (ROOT / 'constraints.txt').read_text().split() if '==' in l)
    deps = PYPROJECT['project']['dependencies'] + PYPROJECT['project']['optional-dependencies']['test']
    assert any(d.startswith('jupyterlab==') for d in deps)
    for d in deps:
        name, version = pin(d)
        assert cons.get(name) == version, (d, cons.get(name))

@pytest.mark.alone  # nbdev-export rewrites tbot/*.py: no other test (of another xdist worker) may import tbot meanwhile
def test_nbdev_export_leaves_pyproject_and_the_install_stamp_alone():
    "`make test` runs nbdev-export; a rewritten pyproject.toml (even unchanged) made the next `make` reinstall everything."
    files = [ROOT / 'pyproject.toml', ROOT / 'tbot' / '__init__.py']
    before = [(f.read_bytes(), f.stat().st_mtime_ns) for f in files]
    stamp_fresh = run(['make', '-q', f'VENV={sys.prefix}', f'{sys.prefix}/.installed'], ROOT).returncode == 0
    p = run([BIN / 'nbdev-export'], ROOT)
    assert p.returncode == 0, p.stderr[-2000:]
    assert (files[0].read_bytes(), files[0].stat().st_mtime_ns) == before[0], 'nbdev-export rewrote pyproject.toml'
    assert files[1].read_bytes() == before[1][0]
    if stamp_fresh:  # a venv that `make` installed: it must still be up to date
        assert run(['make', '-q', f'VENV={sys.prefix}', f'{sys.prefix}/.installed'], ROOT).returncode == 0

# ---------------------------------------------------------------------------------------------------------------- settings

def test_outside_any_project_tbot_uses_its_defaults_and_the_working_folder(tmp_path):
    p = run([BIN / 'tbot', 'config', '--json'], tmp_path)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info['settings'] is None
    assert Path(info['defaults']).read_text() == (ROOT / 'settings.ini').read_text()
    assert Path(info['data_dir']) == tmp_path / 'data' and Path(info['ledger']) == tmp_path / 'data' / 'ledger.sqlite'
    assert Path(info['reports_dir']) == tmp_path / 'reports'
    assert (Path(info['runs_dir']) / 'backtest.ipynb').is_file()
    v = run([BIN / 'tbot', '--version'], tmp_path).stdout.splitlines()
    assert v[0].startswith('tbot ') and v[1].startswith('settings: none found')

def test_a_settings_file_overrides_the_defaults_key_by_key(tmp_path):
    (tmp_path / 'settings.ini').write_text('[paths]\ndata_dir = store\n[schedule]\nmine = every 1h | backtest |\n')
    sub = tmp_path / 'deeper'; sub.mkdir()
    info = out_json(run([BIN / 'tbot', 'config', '--json'], sub))
    assert info['settings'] == str(tmp_path / 'settings.ini') and Path(info['data_dir']) == tmp_path / 'store'
    jobs = out_json(run([BIN / 'tbot', 'schedule', '--list', '--json'], sub))
    assert [j['job'] for j in jobs] == ['mine']
    other = tmp_path / 'other.ini'; other.write_text('[paths]\nreports_dir = /tmp/elsewhere\n')
    info = out_json(run([BIN / 'tbot', 'config', '--json'], sub, clean_env(TBOT_SETTINGS=str(other))))
    assert info['settings'] == str(other) and info['reports_dir'] == '/tmp/elsewhere' and 'TBOT_SETTINGS' in info['overrides']
    (tmp_path / 'settings.ini').write_text('[paths\n')
    p = run([BIN / 'tbot', 'config'], sub)
    assert p.returncode == 2 and p.stderr.count('\n') == 1 and 'settings.ini' in p.stderr and 'Traceback' not in p.stderr

# ---------------------------------------------------------------------------------------------------------------- JupyterLab

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.mark.slow
def test_make_lab_serves_the_notebooks(tmp_path):
    port, token = free_port(), 'tbot-test-token'
    args = f'--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --IdentityProvider.token={token} --ServerApp.port_retries=0'
    env = clean_env(JUPYTER_RUNTIME_DIR=str(tmp_path / 'rt'), JUPYTER_CONFIG_DIR=str(tmp_path / 'cfg'), JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / 'ws'))
    stamp = f'{sys.prefix}/.installed'   # -o: never reinstall from inside a test
    lab = subprocess.Popen(['make', '-s', f'VENV={sys.prefix}', '-o', stamp, 'lab', f'LAB_ARGS={args}'], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        names, deadline = None, time.time() + 120
        while time.time() < deadline and lab.poll() is None:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/contents?token={token}', timeout=5) as r:
                    names = {c['name'] for c in json.load(r)['content']}
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/lab?token={token}', timeout=5) as r:
                    assert r.status == 200 and 'JupyterLab' in r.read().decode()
                break
            except OSError: time.sleep(1)
        assert names is not None, f'JupyterLab did not answer on port {port} (exit code {lab.poll()})'
        assert {'00_config.ipynb', '99_cli.ipynb', 'runs'} <= names
    finally:
        if lab.poll() is None: os.killpg(lab.pid, 15)
        lab.wait(timeout=30)

# ---------------------------------------------------------------------------------------------------------------- the wheel

@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    "tbot built as a wheel and installed, offline, into a fresh venv whose dependencies come from this venv."
    tmp = tmp_path_factory.mktemp('wheel')
    src = tmp / 'src'
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns('.venv', '.git', 'data', 'reports', 'build', 'dist', '*.egg-info',
                                                             '__pycache__', '.ipynb_checkpoints', '.pytest_cache', '_docs', '_proc'))
    p = run([sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-index', '--no-deps', '--no-build-isolation', '-w', tmp / 'dist', src], tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    wheel, = (tmp / 'dist').glob('tbot-*.whl')
    venv = tmp / 'venv'
    assert run([sys.executable, '-m', 'venv', '--without-pip', venv], tmp).returncode == 0
    site, = venv.glob('lib/python3*/site-packages')
    mine, = Path(sys.prefix).glob('lib/python3*/site-packages')
    (site / 'deps.pth').write_text(f'{mine}\n')   # a plain path: this venv's .pth files (its editable tbot) are not run
    p = run([sys.executable, '-m', 'pip', '--python', venv / 'bin' / 'python', 'install', '--quiet', '--no-index', '--no-deps', wheel], tmp)
    assert p.returncode == 0, p.stderr[-3000:]
    home = tmp / 'home'; home.mkdir()
    def tbot(*args, timeout=600):
        # JUPYTER_PATH: nbconvert's templates are data files of this venv, which a real install would have put in its own
        return run([venv / 'bin' / 'tbot', *args], home, clean_env(MPLCONFIGDIR=str(tmp / 'mpl'), JUPYTER_PATH=f'{sys.prefix}/share/jupyter'),
                   timeout=timeout)
    tbot.venv, tbot.site, tbot.home = venv, site, home
    return tbot

@pytest.mark.slow
def test_the_installed_package_is_the_wheel_with_its_defaults(installed):
    p = run([installed.venv / 'bin' / 'python', '-c', 'import tbot; print(tbot.__file__)'], installed.home)
    assert Path(p.stdout.strip()).is_relative_to(installed.site), p.stdout + p.stderr
    v = installed('--version')
    assert v.returncode == 0 and 'settings: none found' in v.stdout, v.stdout + v.stderr
    info = out_json(installed('config', '--json'))
    assert info['settings'] is None
    assert Path(info['defaults']) == installed.site / 'tbot' / 'defaults' / 'settings.ini'
    assert Path(info['defaults']).read_text() == (ROOT / 'settings.ini').read_text()
    assert Path(info['runs_dir']) == installed.site / 'tbot' / 'runs'
    assert sorted(p.name for p in Path(info['runs_dir']).glob('*.ipynb')) == sorted(p.name for p in (ROOT / 'nbs' / 'runs').glob('*.ipynb'))
    assert Path(info['data_dir']) == installed.home / 'data' and Path(info['reports_dir']) == installed.home / 'reports'
    assert 'data_dir' in installed('config').stdout

@pytest.mark.slow
def test_the_readme_commands_work_from_an_empty_folder(installed):
    steps = [('data', 'import', SHARED), ('data', 'list'), ('strategies',),
             ('backtest', '--strategy', 'ema_cross', '--symbol', 'BTC/USDT', '--timeframe', '1h'),
             ('agent', 'backtest', '--start', '2025-01-01')]
    out = {}
    for args in steps:
        p = installed(*args)
        assert p.returncode == 0 and 'Traceback' not in p.stderr, (args, p.stderr[-2000:])
        assert 'is missing' not in p.stderr
        out[args] = p.stdout
    assert 'BTC/USDT' in out[('data', 'list')]                    # the list after the import
    assert (installed.home / 'data' / 'binance' / 'BTC_USDT-1h.parquet').is_file()
    p = installed('report', 'backtest', '-p', 'symbols=BTC/USDT', '-p', 'start=2025-01-01', '-p', 'end=2025-03-31', '--json')
    assert p.returncode == 0, p.stderr[-3000:]
    runs = [d for d in (installed.home / 'reports').iterdir() if d.is_dir() and d.name.endswith('-backtest')]
    assert len(runs) == 1 and (runs[0] / 'manifest.json').is_file()
