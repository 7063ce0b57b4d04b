"""`tbot schedule`: jobs from settings.ini on a fast trigger, the scheduler and job locks, `--once`, and the missed-run policy."""
import json, os, re, signal, subprocess, sys, time
from datetime import datetime, timedelta, timezone
from pathlib import Path
import nbformat, pytest
from nbformat.v4 import new_code_cell, new_notebook

from conftest import ROOT, TBOT, one_line_error, tbot as run_tbot
RUN_DIR = re.compile(r'^\d{8}T\d{6}Z-')

def tbot(*args, timeout=120):
    "`tbot *args` in the checkout, whatever its exit code."
    return run_tbot(*args, timeout=timeout, cwd=ROOT, check=False)

def tiny_notebook(path):
    "A run notebook that only records its parameter."
    cells = [new_code_cell("x = 1  # a number\nsleep = 0.0  # seconds to wait first\noutput_dir = ''", metadata={'tags': ['parameters']}),
             new_code_cell("import time\nfrom tbot import runkit\ntime.sleep(sleep)\nrunkit.record(output_dir, title=f'tiny {x}', metrics={'headline': {'x': x}})")]
    nbformat.write(new_notebook(cells=cells, metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}), str(path))
    return path

@pytest.fixture
def sched(store, tmp_path, monkeypatch):
    "A settings file with its own [schedule] (set through TBOT_SETTINGS), a tiny run notebook, and the reports folder."
    nb = tiny_notebook(tmp_path / 'tiny.ipynb')
    def write(jobs:str, extra:str=''):
        path = tmp_path / 'settings.ini'
        path.write_text(f"[schedule]\n{jobs}\n{extra}\n")
        monkeypatch.setenv('TBOT_SETTINGS', str(path))
        return Path(os.environ['TBOT_REPORTS_DIR'])
    write.nb = nb
    return write

def published(reports): return sorted(d for d in reports.iterdir() if d.is_dir() and RUN_DIR.match(d.name)) if reports.exists() else []

def log(reports): return [json.loads(l) for l in (reports / 'schedule' / 'log.jsonl').read_text().splitlines()]

def test_the_shipped_schedule_lists_its_jobs():
    rows = json.loads(tbot('schedule', '--list', '--json').stdout)
    jobs = {r['job']: r for r in rows}
    assert {'data_refresh', 'backtest_nightly', 'walkforward_weekly'} <= set(jobs)
    assert datetime.fromisoformat(jobs['walkforward_weekly']['next_run']).strftime('%a') == 'Sun'

def test_bad_jobs_are_one_line_errors(sched):
    for line in ['w = 0 4 * * 0 | tiny', 'w = hourly | backtest', 'w = * * * * * | nope', 'w = * * * * * | backtest | nope=1', 'w-x = * * * * * | backtest',
                 'w = every 99999999999999999999d | backtest', 'w = every 400d | backtest', 'w = * * * * * | backtest | fees=-1',
                 'w = * * * * * | backtest | strategy=ema_crss', 'w = * * * * * | data_refresh | fetch=flase']:
        sched(line)
        assert not one_line_error(tbot('schedule', '--list')).endswith('(see --help)'), line  # the job is wrong, not the command line

@pytest.mark.slow
def test_scheduler_runs_a_fast_job_and_a_second_scheduler_is_refused(sched):
    reports = sched(f"tiny = every 2s | {sched.nb} | x=7")
    first = subprocess.Popen([TBOT, 'schedule', '--max-runs', '2', '--json'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lock = reports / 'schedule' / 'scheduler.lock'
        for _ in range(100):
            if lock.exists() and 'pid' in lock.read_text(): break
            time.sleep(0.1)
        second = tbot('schedule')
        assert f'pid {first.pid}' in one_line_error(second, 'another tbot schedule is running')
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None: first.kill()
    assert first.returncode == 0, err
    entries = [json.loads(l) for l in out.splitlines()]
    runs = [e for e in entries if e['status'] != 'skipped']  # fires due while a run still went are skipped, and logged
    assert [(e['job'], e['how'], e['status']) for e in runs] == [('tiny', 'schedule', 'ok')] * 2
    entries = runs
    runs = published(reports)
    assert len(runs) == 2 and all(r.name.endswith('-tiny-tiny') for r in runs)
    assert {str(r) for r in runs} == {e['folder'] for e in entries}
    assert json.loads((runs[0] / 'manifest.json').read_text())['parameters'] == {'x': 7}
    assert [e['status'] for e in log(reports) if e['status'] != 'skipped'] == ['ok', 'ok']

@pytest.mark.slow
def test_once_runs_a_job_now_and_respects_the_job_lock(sched):
    from tbot.schedule import FileLock
    reports = sched(f"tiny = 0 3 * * * | {sched.nb} | x=3")
    p = tbot('schedule', '--once', 'tiny', '--json')
    assert p.returncode == 0, p.stderr
    entry = json.loads(p.stdout)
    assert entry['status'] == 'ok' and entry['how'] == 'once' and json.loads((Path(entry['folder']) / 'metrics.json').read_text())['headline'] == {'x': 3}
    held = FileLock(reports / 'schedule' / 'locks' / 'tiny.lock')
    assert held.acquire()
    try:
        p = tbot('schedule', '--once', 'tiny')
        assert f'pid {os.getpid()}' in one_line_error(p, 'already running')
    finally: held.release()
    assert [e['status'] for e in log(reports)] == ['ok', 'skipped']
    assert len(published(reports)) == 1
    p = tbot('schedule', '--once', 'nope')
    one_line_error(p, "no job 'nope'")

@pytest.mark.slow
def test_a_run_missed_while_no_scheduler_ran_is_made_up_once_at_start(sched):
    reports = sched(f"nightly = 0 3 * * * | {sched.nb}\nweekly = 0 3 * * sun | {sched.nb}", 'catch_up = true')
    two_days_ago = (datetime.now(timezone.utc) - timedelta(days=2)).isoformat()
    (reports / 'schedule').mkdir(parents=True)
    # nightly last ran two days ago (it missed at least one 03:00); weekly has never run (it waits for its first Sunday)
    (reports / 'schedule' / 'log.jsonl').write_text(json.dumps({'job': 'nightly', 'how': 'schedule', 'status': 'ok', 'started': two_days_ago}) + '\n')
    p = tbot('schedule', '--max-runs', '1', '--json')
    assert p.returncode == 0, p.stderr
    entries = [json.loads(l) for l in p.stdout.splitlines()]
    assert [(e['job'], e['how'], e['status']) for e in entries] == [('nightly', 'catch-up', 'ok')]
    assert 'nightly: a run was missed' in p.stderr


def test_once_says_why_a_run_failed(sched, btc_2023_store):
    "A job whose series is not in the store fails before a kernel starts; --once exits 1 and says why on stderr."
    reports = sched("refresh = 0 * * * * | data_refresh | symbols=XRP/USDT; timeframes=1h; fetch=false")
    p = tbot('schedule', '--once', 'refresh')
    assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stderr
    assert 'tbot schedule: FAILED: no XRP/USDT 1h candles for binance' in p.stderr, p.stderr
    assert 'no XRP/USDT 1h candles' in p.stdout  # the run's own line says it too, not just "failed"
    [entry] = log(reports)
    assert entry['status'] == 'failed' and entry['error'].startswith('no XRP/USDT 1h candles')

@pytest.fixture
def btc_2023_store(store, shared):
    from tbot import data
    return data.write_series(data.read_candle_file(shared / 'BTC_USDT-1h.feather').loc['2023'], data.Series('binance', 'BTC/USDT', '1h'))

def _wait_for(cond, seconds=120):
    for _ in range(int(seconds * 10)):
        if cond(): return True
        time.sleep(0.1)
    return False

@pytest.mark.slow
def test_a_run_killed_with_the_scheduler_is_logged_as_killed_at_the_next_start(sched):
    reports = sched(f"tiny = every 1s | {sched.nb} | sleep=120", 'catch_up = true')
    first = subprocess.Popen([TBOT, 'schedule'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert _wait_for(lambda: list(reports.glob('.running-*/kernel-stderr.txt'))), 'the run never started'
    finally:
        os.killpg(first.pid, signal.SIGKILL); first.wait()  # kill -9 of the scheduler mid-job: the dying process logs nothing
    runs = lambda: [e for e in log(reports) if e['status'] != 'skipped'] if (reports / 'schedule' / 'log.jsonl').exists() else []
    assert runs() == []
    sched(f"tiny = every 30s | {sched.nb} | x=5", 'catch_up = true')
    p = tbot('schedule', '--max-runs', '1', '--json')  # the scheduler lock and the job lock were released by the kill
    assert p.returncode == 0 and 'Traceback' not in p.stderr, p.stderr
    entries = [json.loads(l) for l in p.stdout.splitlines()]
    assert [(e['job'], e['status']) for e in entries] == [('tiny', 'killed'), ('tiny', 'ok')]
    assert f"pid {first.pid}" in entries[0]['error']
    assert [e['status'] for e in runs()] == ['killed', 'ok']
    assert not list(reports.glob('.running-*'))  # the killed run's folder went to failed/, marked killed
    [killed] = list((reports / 'failed').iterdir())
    assert (killed / 'FAILED.txt').read_text().startswith('killed')

@pytest.mark.slow
def test_a_run_due_while_the_previous_still_runs_is_logged_as_skipped(sched):
    reports = sched(f"tiny = every 1s | {sched.nb} | sleep=4")
    p = tbot('schedule', '--max-runs', '1', '--json')
    assert p.returncode == 0 and 'Traceback' not in p.stderr, p.stderr
    entries = log(reports)
    assert [e['status'] for e in entries if e['status'] != 'skipped'] == ['ok']
    skipped = [e for e in entries if e['status'] == 'skipped']
    assert skipped and all('previous run is still going' in e['error'] for e in skipped)
    assert 'maximum number of running instances' not in p.stderr  # said once, by tbot, not again by APScheduler
