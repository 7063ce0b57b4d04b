"""`tbot report`: papermill runs of the run notebooks on real data, their artefacts, failures, secrets and batches on Dask."""
import csv, hashlib, json, os, re, signal, socket, subprocess, sys, time
from pathlib import Path
import nbformat, pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import ROOT, TBOT, one_line_error, tbot as run_tbot
RUN_DIR = re.compile(r'^\d{8}T\d{6}Z-')

def tbot(*args, env=None, timeout=300):
    "`tbot *args` in the checkout, whatever its exit code."
    return run_tbot(*args, env=env, timeout=timeout, cwd=ROOT, check=False)

def published(reports): return sorted(d for d in Path(reports).iterdir() if d.is_dir() and RUN_DIR.match(d.name)) if Path(reports).exists() else []

def sha256(path): return hashlib.sha256(Path(path).read_bytes()).hexdigest()

def tiny_notebook(path, body=''):
    "A minimal run notebook: parameters x, fail, leak; records a metric; `body` runs before recording."
    cells = [new_code_cell("x = 1        # a number\nfail = False # raise in the second cell\nleak = False # print a credential assembled at run time\nsleep = 0.0  # seconds to wait first\noutput_dir = ''", metadata={'tags': ['parameters']}),
             new_code_cell("import os, time\nfrom tbot import runkit\ntime.sleep(sleep)\nif fail: raise ValueError('boom on purpose')\n"
                           "if leak: print('sk-li' + 've-A1B2' + 'C3D4E5')\n" + body +  # no 8 characters in a row of it in the source
                           "\nrunkit.record(output_dir, title=f'tiny {x}', metrics={'headline': {'x': x, 'kernel_sees_secret': any('SECRET' in k for k in os.environ)}})")]
    nb = new_notebook(cells=cells, metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}})
    nbformat.write(nb, str(path))
    return str(path)

@pytest.fixture
def btc_2023(store, shared):
    "The store holding the real BTC/USDT 1h candles of 2023 (imported from the shared folder, then sliced)."
    from tbot import data
    df = data.read_candle_file(shared / 'BTC_USDT-1h.feather').loc['2023']
    return data.write_series(df, data.Series('binance', 'BTC/USDT', '1h'))

def test_list_and_a_missing_name(store):
    rows = json.loads(tbot('report', '--list', '--json').stdout)
    assert {'backtest', 'walkforward', 'data_refresh'} <= {r['notebook'] for r in rows}
    assert {'symbols', 'strategy', 'fees'} <= {r['parameter'] for r in rows if r['notebook'] == 'backtest'}
    assert all(r['parameter'] != 'output_dir' for r in rows)  # set by the runner, never by the user
    one_line_error(tbot('report'), 'give a run notebook NAME')
    one_line_error(tbot('report', 'backtest', '-p', 'fees'), "bad -p 'fees' (expected KEY=VALUE)")
    assert not Path(os.environ['TBOT_REPORTS_DIR']).exists()  # refused before anything was written

@pytest.mark.slow
def test_data_refresh_report_artefacts_manifest_and_index(btc_2023, store):
    p = tbot('report', 'data_refresh', '-p', 'symbols=BTC/USDT', '-p', 'timeframes=1h', '-p', 'fetch=false', '--json')
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    reports = Path(os.environ['TBOT_REPORTS_DIR'])
    [run] = published(reports)
    assert res['status'] == 'ok' and Path(res['folder']) == run and run.name.endswith('-data_refresh')
    assert sorted(f.name for f in run.iterdir()) == ['data_refresh.html', 'data_refresh.ipynb', 'manifest.json', 'metrics.json']
    m = json.loads((run / 'manifest.json').read_text())
    [d] = m['data']
    assert d['sha256'] == sha256(btc_2023) and d['rows'] == 8759 and d['first'].startswith('2023-01-01') and d['last'].startswith('2023-12-31 23')
    assert m['gaps'] == {'binance BTC/USDT 1h': 1} and d['missing_bars'] == 1
    assert m['parameters'] == {'symbols': 'BTC/USDT', 'timeframes': '1h', 'fetch': False}
    assert m['status'] == 'ok' and m['tbot_version'] and re.fullmatch(r'[0-9a-f]{40}(\+dirty)?|unknown', m['git_commit'])
    assert m['files']['data_refresh.ipynb'] == sha256(run / 'data_refresh.ipynb')
    assert json.loads((run / 'metrics.json').read_text())['headline']['BTC/USDT 1h rows'] == 8759
    page = (run / 'data_refresh.html').read_text()
    assert 'runkit.record(' not in page and 'import pandas' not in page       # no input cells
    assert 'missing_bars' in page and re.findall(r'<script[^>]+src=', page) == []  # outputs kept, nothing fetched from the web
    executed = nbformat.read(str(run / 'data_refresh.ipynb'), as_version=4)
    assert any('injected-parameters' in c.metadata.get('tags', []) for c in executed.cells)
    index = (reports / 'index.html').read_text()
    assert f'{run.name}/data_refresh.html' in index and '8,759' in index
    assert not list(reports.glob('.running-*'))
    mask = os.umask(0o022); os.umask(mask)
    for f in [reports / 'index.html', *run.iterdir()]:  # readable by the web server like any file the user writes
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, (f.name, oct(f.stat().st_mode))

@pytest.mark.slow
def test_a_failing_notebook_fails_the_command_and_publishes_nothing(store, tmp_path):
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    p = tbot('report', nb, '-p', 'fail=true')
    assert p.returncode == 1 and 'FAILED' in p.stderr and 'boom on purpose' in p.stderr and 'Traceback' not in p.stderr, p.stderr
    reports = Path(os.environ['TBOT_REPORTS_DIR'])
    assert published(reports) == [] and not list(reports.glob('.running-*'))
    [failed] = list((reports / 'failed').iterdir())
    assert sorted(f.name for f in failed.iterdir()) == ['FAILED.txt', 'kernel-stderr.txt', 'tiny.ipynb']
    assert 'ValueError' in (failed / 'FAILED.txt').read_text()
    kept = nbformat.read(str(failed / 'tiny.ipynb'), as_version=4)
    assert any(o.get('ename') == 'ValueError' for c in kept.cells if c.cell_type == 'code' for o in c.outputs)
    assert not list(reports.rglob('metrics.json')) and not list(reports.rglob('manifest.json'))
    assert 'Failed runs' in (reports / 'index.html').read_text()

def test_secrets_are_refused_as_parameters(store, tmp_path):
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    for name in ('api_key', 'secret', 'binance_password', 'params.token'):
        p = tbot('report', nb, '-p', f'{name}=whatever')
        one_line_error(p, 'looks like a credential')
    p = tbot('report', nb, '-p', 'x=my-very-secret-value', env={'TBOT_BINANCE_API_SECRET': 'my-very-secret-value'})
    assert 'my-very-secret-value' not in one_line_error(p, 'TBOT_BINANCE_API_SECRET')
    p = tbot('report', nb, '-p', 'nope=1')
    one_line_error(p, "no parameter 'nope'")
    assert not Path(os.environ['TBOT_REPORTS_DIR']).exists()

@pytest.mark.slow
def test_a_secret_in_the_output_is_never_published(store, tmp_path):
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    env = {'TBOT_BINANCE_API_SECRET': 'sk-live-A1B2C3D4E5'}
    ok = tbot('report', nb, '--json', env=env)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)['headline']['kernel_sees_secret'] is False  # the kernel runs without the credentials
    p = tbot('report', nb, '-p', 'leak=true', env=env)
    assert p.returncode == 1 and 'TBOT_BINANCE_API_SECRET' in p.stderr and 'sk-live' not in p.stderr and 'Traceback' not in p.stderr, p.stderr
    reports = Path(os.environ['TBOT_REPORTS_DIR'])
    assert len(published(reports)) == 1
    [failed] = list((reports / 'failed').iterdir())
    assert [f.name for f in failed.iterdir()] == ['FAILED.txt']
    assert not [f for f in reports.rglob('*') if f.is_file() and b'sk-live-A1B2C3D4E5' in f.read_bytes()]

@pytest.mark.slow
def test_a_batch_on_a_local_cluster_reports_a_failed_run_and_finishes_the_rest(btc_2023, store):
    # slow=2000 needs more bars of warm-up than January and February hold: that run fails in its kernel, the slow=26 run still publishes
    p = tbot('report', 'backtest', '-p', 'symbols=BTC/USDT', '-p', 'start=2023-01-01', '-p', 'end=2023-02-28',
             '--grid', 'params.slow=26,2000', '--json', timeout=600)
    assert p.returncode == 1, p.stderr
    assert 'Traceback' not in p.stderr and 'CommClosedError' not in p.stderr, p.stderr  # the cluster shuts down quietly
    res = json.loads(p.stdout)
    assert (res['ok'], res['failed']) == (1, 1)
    by = {r['label']: r for r in res['runs']}
    assert by['params.slow=26']['status'] == 'ok' and 'total_return' in by['params.slow=26']['headline']
    assert by['params.slow=2000']['status'] == 'failed' and 'warm-up' in by['params.slow=2000']['error']
    reports = Path(os.environ['TBOT_REPORTS_DIR'])
    [run] = published(reports)
    assert json.loads((run / 'manifest.json').read_text())['parameters']['params'] == {'slow': 26}
    rows = list(csv.DictReader(open(res['csv'])))
    assert [(r['run'], r['status']) for r in rows] == [('params.slow=26', 'ok'), ('params.slow=2000', 'failed')]
    assert Path(res['summary']).name in (reports / 'index.html').read_text()
    assert not list(reports.glob('.running-*'))

def test_a_batch_with_one_bad_combination_is_refused_whole(btc_2023, store):
    "XRP/USDT is not in the store: the batch stops before a cluster starts, and nothing is written."
    p = tbot('report', 'data_refresh', '-p', 'timeframes=1h', '-p', 'fetch=false', '--grid', 'symbols=BTC/USDT,XRP/USDT')
    one_line_error(p, 'symbols=XRP/USDT: no XRP/USDT 1h candles')
    assert not Path(os.environ['TBOT_REPORTS_DIR']).exists()

@pytest.mark.parametrize('args, says', [
    (['-p', 'strategy=ema_crss'], "-p strategy: unknown strategy 'ema_crss'"),
    (['-p', 'fees=-0.001'], '-p fees: -0.001 must be at least 0'),
    (['-p', 'symbols=XRP/USDT'], 'no XRP/USDT 1h candles for binance'),
    (['-p', 'timeframe=7h'], 'no BTC/USDT 7h candles for binance'),
    (['-p', 'start=2023-02-30'], "-p start: '2023-02-30' is not a date"),
    (['-p', 'end=yesterday-ish'], "-p end: 'yesterday-ish' is not a date"),
    (['-p', 'start=2023-06-01', '-p', 'end=2023-05-01'], 'is after'),
    (['-p', 'start=2024-06-01'], 'no BTC/USDT 1h candles between 2024-06-01 00:00 and the end'),
    (['-p', 'params.fast=1'], 'fast=1 is out of range'),
    (['-p', 'walk_forward=yes'], "-p walk_forward: 'yes' is not true or false"),
    (['--timeout', '-1'], '--timeout: -1.0 must be greater than 0'),
])
def test_bad_values_are_refused_before_a_kernel_starts(btc_2023, store, args, says):
    p = tbot('report', 'backtest', '-p', 'symbols=BTC/USDT', *args) if not any(x.startswith('symbols=') for x in args) else tbot('report', 'backtest', *args)
    assert one_line_error(p, says).startswith('tbot: error: ')
    assert not Path(os.environ['TBOT_REPORTS_DIR']).exists()  # no kernel, no reports/failed entry, no index

def test_a_piece_of_a_secret_is_refused_and_the_error_never_shows_it(store, tmp_path):
    key = 'FAKEk3y0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQR'
    env = {'TBOT_BINANCE_API_KEY': key}
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    for args in (['-p', 'x=' + json.dumps(key[:12])], ['-p', 'x=' + json.dumps('note ' + key[30:40])], ['-p', key[5:15] + '=1'], ['--grid', f'x={key[:9]},2']):
        p = tbot('report', nb, *args, env=env)
        one_line_error(p, 'TBOT_BINANCE_API_KEY')
        assert not any(key[i:i + 8] in p.stderr for i in range(len(key) - 7)), p.stderr
    p = tbot('report', 'backtest', '-p', 'end=' + key[:12], env=env)  # the case that was published: the date check must not echo it
    assert key[:8] not in one_line_error(p), p.stderr
    assert not Path(os.environ['TBOT_REPORTS_DIR']).exists()

@pytest.mark.slow
def test_a_run_that_prints_part_of_a_secret_is_withheld_everywhere(store, tmp_path):
    secret = 'sk-live-A1B2C3D4E5F6G7H8J9'  # the notebook prints its first 18 characters, never the whole value
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    p = tbot('report', nb, '-p', 'leak=true', env={'TBOT_BINANCE_API_SECRET': secret})
    assert p.returncode == 1 and 'TBOT_BINANCE_API_SECRET' in p.stderr and 'sk-live' not in p.stderr and 'Traceback' not in p.stderr, p.stderr
    reports = Path(os.environ['TBOT_REPORTS_DIR'])
    assert published(reports) == []
    [failed] = list((reports / 'failed').iterdir())
    assert [f.name for f in failed.iterdir()] == ['FAILED.txt']
    assert not [f for f in reports.rglob('*') if f.is_file() and b'A1B2C3D4' in f.read_bytes()]  # not in FAILED.txt, the index or anywhere

def _wait_for(cond, seconds=120):
    for _ in range(int(seconds * 10)):
        if cond(): return True
        time.sleep(0.1)
    return False

@pytest.mark.slow
def test_a_run_killed_with_sigkill_is_cleaned_up_by_the_next_run(store, tmp_path):
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    reports = Path(os.environ['TBOT_REPORTS_DIR'])
    victim = subprocess.Popen([TBOT, 'report', nb, '-p', 'sleep=120'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert _wait_for(lambda: list(reports.glob('.running-*/kernel-stderr.txt'))), 'the run never started'
        [debris] = list(reports.glob('.running-*'))
        assert debris.name.startswith(f'.running-{victim.pid}@')  # the owner's pid is in the name
    finally:
        os.killpg(victim.pid, signal.SIGKILL); victim.wait()  # kill -9: the process and its kernel, no cleanup
    assert debris.is_dir() and published(reports) == []        # never half-published
    p = tbot('report', nb, '-p', 'x', '2', '--json')  # the old `-p KEY VALUE` still works, with a deprecation note
    assert p.returncode == 0 and 'deprecated' in p.stderr and "use -p KEY=VALUE" in p.stderr, p.stderr
    assert json.loads(p.stdout)['headline']['x'] == 2
    assert '1 run(s) killed mid-run moved to' in p.stderr and 'Traceback' not in p.stderr, p.stderr
    assert not list(reports.glob('.running-*')) and len(published(reports)) == 1
    [killed] = list((reports / 'failed').iterdir())
    assert (killed / 'FAILED.txt').read_text().startswith(f"killed: the run's process (pid {victim.pid}) died")
    assert 'killed: ' in (reports / 'index.html').read_text()

@pytest.mark.slow
def test_sigterm_keeps_the_run_in_failed_marked_terminated(store, tmp_path):
    import psutil
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    reports = Path(os.environ['TBOT_REPORTS_DIR'])
    run = subprocess.Popen([TBOT, 'report', nb, '-p', 'sleep=120'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: list(reports.glob('.running-*/kernel-stderr.txt'))), 'the run never started'
        kernels = psutil.Process(run.pid).children(recursive=True)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None: run.kill()
    assert run.returncode == 143 and 'terminated' in err and 'Traceback' not in err, err
    assert not list(reports.glob('.running-*')) and published(reports) == []
    [failed] = list((reports / 'failed').iterdir())
    assert (failed / 'FAILED.txt').read_text().startswith('terminated (SIGTERM)')
    assert str(failed) in err
    psutil.wait_procs(kernels, timeout=30)
    assert not [k for k in kernels if k.is_running() and k.status() != psutil.STATUS_ZOMBIE]  # the kernel went too

@pytest.mark.slow
def test_walkforward_splits_init_cash_across_symbols_like_the_backtest(store, shared):
    from tbot.walkforward import walk_forward
    from tbot import data
    from tbot.console import jsonable
    for s in ('BTC/USDT', 'ETH/USDT'):
        data.write_series(data.read_candle_file(shared / f"{s.replace('/', '_')}-1h.feather").loc['2023'], data.Series('binance', s, '1h'))
    grid = {'fast': [12, 24], 'slow': [48]}
    p = tbot('report', 'walkforward', '-p', 'symbols=BTC/USDT,ETH/USDT', '-p', 'init_cash=1000', '-p', 'grid=' + json.dumps(grid),
             '-p', 'train=120D', '-p', 'test=60D', '--json', timeout=600)
    assert p.returncode == 0, p.stderr
    run = Path(json.loads(p.stdout)['folder'])
    m = json.loads((run / 'metrics.json').read_text())
    direct = walk_forward(data.load('ETH/USDT', '1h'), 'ema_cross', grid, train='120D', test='60D', init_cash=500)
    assert m['per_symbol']['ETH/USDT']['out_of_sample'] == jsonable(dict(direct.oos.stats))  # each symbol trades half of 1000
    assert m['assumptions']['init_cash'] == 1000 and m['assumptions']['init_cash_per_symbol'] == 500

def test_bad_grid_is_one_line(store):
    for grid in ('symbols', 'symbols=', 'nope=1,2'):
        one_line_error(tbot('report', 'data_refresh', '--grid', grid), '--grid' if grid != 'nope=1,2' else "has no parameter 'nope'")

@pytest.mark.slow
def test_backtest_report_metrics_equal_a_direct_backtest(btc_2023, store):
    from tbot import backtest as bt
    from tbot import data
    from tbot.console import jsonable
    p = tbot('report', 'backtest', '-p', 'symbols=BTC/USDT', '-p', 'start=2023-01-01', '-p', 'end=2023-06-30 23:00',
             '-p', 'strategy=ema_cross', '-p', 'params.fast=12', '-p', 'params.slow=48', '-p', 'fees=0.00075', '--json')
    assert p.returncode == 0, p.stderr
    run = Path(json.loads(p.stdout)['folder'])
    metrics = json.loads((run / 'metrics.json').read_text())
    df = data.load('BTC/USDT', '1h', start='2023-01-01', end='2023-06-30 23:00')
    direct = bt.backtest(df, 'ema_cross', {'fast': 12, 'slow': 48}, fees=0.00075, slippage=0.0005, init_cash=1000, fill='next_open')
    assert metrics['stats'] == jsonable(dict(direct.stats))
    assert metrics['benchmark'] == jsonable(dict(direct.benchmark.stats))
    m = json.loads((run / 'manifest.json').read_text())
    assert m['assumptions']['fees'] == 0.00075 and m['assumptions']['fill'] == 'next_open' and m['assumptions']['sample'] == 'in-sample'
    assert m['data'][0]['sha256'] == sha256(btc_2023) and m['data'][0]['rows'] == len(df)
    page = (run / 'backtest.html').read_text()
    assert page.count('plotly.js v') == 1 and re.findall(r'<script[^>]+src=', page) == []  # plotly embedded once, works offline
    assert 'in-sample' in page and 'buy-and-hold' in page

@pytest.mark.slow
def test_main_job_on_an_empty_store_offline_is_labelled_synthetic(store):
    from tbot.mainjob import main_job
    folder = main_job(offline=True, say=lambda m: None)
    m = json.loads((folder / 'manifest.json').read_text())
    assert m['synthetic'] is True and m['title'].startswith('SYNTHETIC') and 'SYNTHETIC' in m['summary']
    assert m['data'][0]['exchange'] == 'synthetic'
    assert 'SYNTHETIC' in (folder / 'backtest.html').read_text()

@pytest.mark.slow
def test_agent_report_with_bots_on_their_own_timeframes(store, shared):
    "The agent's report with core and risk on 1h and scalping on 5m: every data file in the manifest, metrics equal a direct call."
    from tbot import data, portfolio
    from tbot.console import jsonable
    files = {}
    for s in ('BTC/USDT', 'ETH/USDT'):
        for tf in ('1h', '5m'):
            df = data.read_candle_file(shared / f"{s.replace('/', '_')}-{tf}.feather").loc['2023-01-01':'2023-03-31']
            files[(s, tf)] = data.write_series(df, data.Series('binance', s, tf))
    p = tbot('report', 'backtest', '-p', 'strategy=agent', '-p', 'bot_timeframes=true', '-p', 'symbols=BTC/USDT,ETH/USDT', '--json', timeout=600)
    assert p.returncode == 0, p.stderr
    run = Path(json.loads(p.stdout)['folder'])
    m = json.loads((run / 'manifest.json').read_text())
    assert {(d['symbol'], d['timeframe']) for d in m['data']} == set(files)
    assert {d['sha256'] for d in m['data']} == {sha256(f) for f in files.values()}
    assert m['assumptions']['timeframe'] == 'core 1h, scalping 5m, risk 1h' and m['assumptions']['bot_timeframes'] == {'core': '1h', 'scalping': '5m', 'risk': '1h'}
    direct = portfolio.backtest_agent({k: data.load(*k) for k in files})
    metrics = json.loads((run / 'metrics.json').read_text())
    assert metrics['stats'] == jsonable(dict(direct.stats))
    assert 'core 1h, scalping 5m, risk 1h' in m['summary']
    page = '\n'.join(f.read_text() for f in run.glob('*.html'))   # the fair benchmarks and the trading costs stand beside the agent
    assert 'buy &amp; hold, same budget (risk-matched)' in page and "mix of the bots' strategies" in page and 'fees_to_gross' in page
    bad = tbot('report', 'backtest', '-p', 'strategy=ema_cross', '-p', 'bot_timeframes=true', '-p', 'symbols=BTC/USDT')
    one_line_error(bad, "for strategy 'agent' only")
