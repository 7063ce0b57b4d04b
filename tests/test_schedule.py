"""`tbot schedule`: jobs from settings.ini on a fast trigger, the scheduler and job locks, `--once`, and the missed-run policy."""
import json, os, re, subprocess, sys, time
from datetime import datetime, timedelta, timezone
from pathlib import Path
import nbformat, pytest
from nbformat.v4 import new_code_cell, new_notebook

TBOT = str(Path(sys.executable).parent / 'tbot')
ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = re.compile(r'^\d{8}T\d{6}Z-')

def tbot(*args, timeout=120):
    return subprocess.run([TBOT, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)

def tiny_notebook(path):
    "A run notebook that only records its parameter."
    cells = [new_code_cell("x = 1  # a number\noutput_dir = ''", metadata={'tags': ['parameters']}),
             new_code_cell("from tbot import reports\nreports.record(output_dir, title=f'tiny {x}', metrics={'headline': {'x': x}})")]
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
    for line in ['w = 0 4 * * 0 | tiny', 'w = hourly | backtest', 'w = * * * * * | nope', 'w = * * * * * | backtest | nope=1', 'w-x = * * * * * | backtest']:
        sched(line)
        p = tbot('schedule', '--list')
        assert p.returncode == 2 and p.stderr.count('\n') == 1 and 'Traceback' not in p.stderr, (line, p.stderr)

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
        assert second.returncode == 2 and 'another tbot schedule is running' in second.stderr and f'pid {first.pid}' in second.stderr, second.stderr
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None: first.kill()
    assert first.returncode == 0, err
    entries = [json.loads(l) for l in out.splitlines()]
    assert [(e['job'], e['how'], e['status']) for e in entries] == [('tiny', 'schedule', 'ok')] * 2
    runs = published(reports)
    assert len(runs) == 2 and all(r.name.endswith('-tiny-tiny') for r in runs)
    assert {str(r) for r in runs} == {e['folder'] for e in entries}
    assert json.loads((runs[0] / 'manifest.json').read_text())['parameters'] == {'x': 7}
    assert [e['status'] for e in log(reports)] == ['ok', 'ok']

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
        assert p.returncode == 2 and 'already running' in p.stderr and f'pid {os.getpid()}' in p.stderr, p.stderr
    finally: held.release()
    assert [e['status'] for e in log(reports)] == ['ok', 'skipped']
    assert len(published(reports)) == 1
    p = tbot('schedule', '--once', 'nope')
    assert p.returncode == 2 and 'no job' in p.stderr

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
