"""The soak test: a replay trader over a year of 1h candles (2022, real BTC/USDT and ETH/USDT), paced to last at least
TBOT_SOAK_MINUTES (20) of wall time, beside the scheduler (a tiny job every 2 minutes) and the dashboard's kernel side (a
`Board` ticking every second, as the browser's timer would, switching tabs). Every ~30 s: the RSS of each process (psutil),
`health_report` (the trader, its heartbeat, the stop, the scheduler, the disk) must be healthy (RSS is sampled from the
scheduler's first finished run on: loading papermill then is a step, not a leak); a few times `tbot health`
itself and `PRAGMA integrity_check`. At the end: memory flat (each process's last-quarter median RSS within 10% + 30 MB of its
first-quarter median), the ledger intact with 8760 bars and no duplicate, every scheduled run ok, and the dashboard's banner and
figures equal to `tbot paper status --json`. It mostly waits: the trader looks every `--tick 10` s and plans once a look; the CPU
seconds of each process are printed (run with -s) and written to <tmp>/soak.json.

It runs beside the rest of the suite: `make test` starts it in the background first and checks its result at the end
(see the Makefile); `-m "not slow"` leaves it out."""
import json, os, shutil, signal, sqlite3, statistics, subprocess, sys, textwrap, time
from pathlib import Path
import psutil, pytest
from conftest import ROOT, TBOT, tbot
from tbot.data import Series, read_candle_file, write_series

MINUTES = float(os.environ.get('TBOT_SOAK_MINUTES', 20))
SAMPLE = float(os.environ.get('TBOT_SOAK_SAMPLE', 30))
YEAR = ('2022-01-01', '2022-12-31')
CHECKS = ['trader', 'heartbeat', 'stop', 'schedule', 'disk']   # cpu and memory are the shared machine's, not tbot's

DRIVER = textwrap.dedent('''
    import json, re, sys, time
    from pathlib import Path
    from tbot.dashboard import Board, FIGURE_GAP
    led, out, stop = map(Path, sys.argv[1:4])
    b, i = Board(led), 0
    while not stop.exists():                       # the browser's timer: a tick a second; a reader moving through the tabs
        b.timer.tick += 1; i += 1
        if i % 15 == 0: b.tabs.selected_index = (b.tabs.selected_index + 1) % len(b.tabs.children)
        time.sleep(1)
    b.tabs.selected_index = 3; b.timer.tick += 1; time.sleep(FIGURE_GAP + 0.5); b.timer.tick += 1   # Performance, its figure redrawn
    fig = b.parts['performance_figure'].outputs[0]['data']['application/vnd.plotly.v1+json']
    hooks = dict(re.findall(r"id='(tbot-[a-z-]+)' data-value='([^']*)'", b.top.value))
    json.dump({'paper': b.state['paper'], 'hooks': hooks, 'equity_y': fig['data'][0]['y'][-1], 'bh_y': fig['data'][1]['y'][-1],
               'points': len(fig['data'][0]['y']), 'ticks': i, 'draws': b.draws}, open(out, 'w'), default=str)
''')

def tiny_notebook(path:Path)->Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    cells = [new_code_cell("x = 1\noutput_dir = ''", metadata={'tags': ['parameters']}),
             new_code_cell("from tbot import runkit\nrunkit.record(output_dir, title=f'soak {x}', metrics={'headline': {'x': x}})")]
    nbformat.write(new_notebook(cells=cells, metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}), str(path))
    return path

def rss_mb(p:psutil.Process)->float: return p.memory_info().rss / 2**20

def cpu_s(p:psutil.Process)->float:
    t = p.cpu_times(); return t.user + t.system + t.children_user + t.children_system

@pytest.mark.slow
@pytest.mark.timeout(int(MINUTES * 60) + 900)   # the run itself, then the checks (pyproject's 600 s is for ordinary tests)
def test_soak(tmp_path, shared, monkeypatch):
    data, reports = tmp_path / 'data', tmp_path / 'reports'
    for sym in ('BTC/USDT', 'ETH/USDT'):   # the year and the history the agent needs before it
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-1h.feather").loc['2021-06-01':'2022-12-31 23:00'], Series('binance', sym, '1h'), data)
    ini = tmp_path / 'settings.ini'
    ini.write_text(f"[paper]\ninit_cash = 1000\n\n[schedule]\nsoak = every 2m | {tiny_notebook(tmp_path / 'tiny.ipynb')} | x=3\ncatch_up = false\n")
    # its processes import tbot from a copy (and run outside the checkout): `make test` runs the soak beside test_install, whose
    # nbdev-export rewrites tbot/*.py
    shutil.copytree(ROOT / 'tbot', tmp_path / 'pkg' / 'tbot')   # __pycache__ too: numba's cached kernels (by source stamp) are not compiled again
    shutil.copy(ROOT / 'settings.ini', tmp_path / 'pkg' / 'settings.ini')   # tbot's defaults, beside the package as in a checkout
    env = {**os.environ, 'TBOT_DATA_DIR': str(data), 'TBOT_REPORTS_DIR': str(reports), 'TBOT_SETTINGS': str(ini),
           'PYTHONPATH': os.pathsep.join([str(tmp_path / 'pkg'), *filter(None, [os.environ.get('PYTHONPATH')])])}
    for k in ('TBOT_DATA_DIR', 'TBOT_REPORTS_DIR', 'TBOT_SETTINGS'): monkeypatch.setenv(k, env[k])
    probe = subprocess.run([sys.executable, '-c', 'import tbot; print(tbot.__file__)'], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert probe.stdout.strip() == str(tmp_path / 'pkg' / 'tbot' / '__init__.py'), probe   # the copy, not the checkout
    from tbot.health import health_report
    led, stop_file, dash_out = data / 'ledger.sqlite', tmp_path / 'stop-dashboard', tmp_path / 'dashboard.json'
    wall = MINUTES * 60 + 30
    speed = 365 * 86400 / wall
    err = {n: open(tmp_path / f'{n}.err', 'w') for n in ('trader', 'scheduler', 'dashboard')}
    procs = {'trader': subprocess.Popen([TBOT, 'paper', 'start', '--replay', ':'.join(YEAR), '--speed', f'{speed:.3f}', '--tick', '10', '--ledger', str(led)],
                                        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err['trader']),
             'scheduler': subprocess.Popen([TBOT, 'schedule'], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err['scheduler'])}
    ps = {n: psutil.Process(p.pid) for n, p in procs.items()}
    rss, health, cli_checks, integrity, cpu = {n: [] for n in ('trader', 'scheduler', 'dashboard')}, [], [], [], {}
    t0, me = time.monotonic(), cpu_s(psutil.Process())
    try:
        while not led.exists() or sqlite3.connect(f'file:{led}?mode=ro', uri=True).execute("SELECT COUNT(*) FROM sqlite_master WHERE name = 'bars'").fetchone()[0] == 0:
            assert procs['trader'].poll() is None, (tmp_path / 'trader.err').read_text()
            time.sleep(1)
        procs['dashboard'] = subprocess.Popen([sys.executable, '-c', DRIVER, str(led), str(dash_out), str(stop_file)], env=env, cwd=tmp_path,
                                              stdout=subprocess.DEVNULL, stderr=err['dashboard'])
        ps['dashboard'] = psutil.Process(procs['dashboard'].pid)
        n, warm, schedule_log = 0, False, reports / 'schedule' / 'log.jsonl'
        while procs['trader'].poll() is None:
            time.sleep(SAMPLE if n else 5)
            if procs['trader'].poll() is not None: break
            n += 1
            warm = warm or '"status": "ok"' in (schedule_log.read_text() if schedule_log.exists() else '')
            for k, p in ps.items():
                assert procs[k].poll() is None, f"{k} exited {procs[k].returncode}: {(tmp_path / f'{k}.err').read_text()[-2000:]}"
                if warm: rss[k].append(rss_mb(p))   # from the first scheduled run on: its imports (papermill) are a step, not a leak
                cpu[k] = round(cpu_s(p), 1)         # the trader's last reading before it ends
            r = health_report(led, only=CHECKS, ping=False)
            health.append((round(time.monotonic() - t0), r['healthy'], r['problems']))
            if n % 10 == 5:   # now and then: the command itself, and the ledger's integrity while the trader writes
                h = subprocess.run([TBOT, 'health', '--ledger', str(led), '--no-ping', '--only', ','.join(CHECKS)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
                cli_checks.append((h.returncode, h.stdout.splitlines()[0] if h.stdout else h.stderr))
                con = sqlite3.connect(f'file:{led}?mode=ro', uri=True)
                integrity.append(con.execute('PRAGMA integrity_check').fetchone()[0]); con.close()
        took = time.monotonic() - t0
        assert procs['trader'].wait() == 0, (tmp_path / 'trader.err').read_text()[-2000:]
        cpu.update({k: round(cpu_s(p), 1) for k, p in ps.items() if k != 'trader'})
        cpu['this test (health, samples)'] = round(cpu_s(psutil.Process()) - me, 1)
        stop_file.touch()
        assert procs['dashboard'].wait(120) == 0, (tmp_path / 'dashboard.err').read_text()[-2000:]
    finally:
        for k, p in procs.items():
            if p.poll() is None: p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try: p.wait(120)
            except subprocess.TimeoutExpired: p.kill(); p.wait()
    trader_err = (tmp_path / 'trader.err').read_text().splitlines()   # nothing expected
    status = json.loads(tbot('paper', 'status', '--json', '--ledger', led, env=env).stdout)
    dash = json.loads(dash_out.read_text())
    summary = {'minutes': round(took / 60, 1), 'samples': len(health), 'rss_samples': len(rss['trader']), 'rss_mb': {k: [round(min(v)), round(statistics.median(v)), round(max(v))] for k, v in rss.items()},
               'cpu_seconds': cpu, 'health': [h[:2] for h in health if not h[1]], 'cli_health': cli_checks, 'integrity': integrity,
               'scheduled_runs': None, 'dashboard_ticks': dash['ticks'], 'dashboard_draws': dash['draws']}
    log = [json.loads(l) for l in (reports / 'schedule' / 'log.jsonl').read_text().splitlines()]
    summary['scheduled_runs'] = {s: sum(1 for e in log if e['status'] == s) for s in {e['status'] for e in log}}
    (tmp_path / 'soak.json').write_text(json.dumps(summary, indent=1))
    print('\nsoak:', json.dumps(summary))
    # it lasted, it stayed healthy, it stayed small
    assert took >= MINUTES * 60 and len(rss['trader']) >= 4, (took, len(rss['trader']))
    assert health and all(ok for _, ok, _ in health), [h for h in health if not h[1]]
    assert cli_checks and all(rc == 0 and line.startswith('HEALTHY') for rc, line in cli_checks), cli_checks
    for k, v in rss.items():
        q = max(1, len(v) // 4)
        first, last = statistics.median(v[:q]), statistics.median(v[-q:])
        assert last <= first * 1.10 + 30, f"{k}: RSS grew from {first:.0f} MB to {last:.0f} MB: {v}"
    # the ledger: intact, every bar of the year once
    con = sqlite3.connect(f'file:{led}?mode=ro', uri=True)
    assert con.execute('PRAGMA integrity_check').fetchone()[0] == 'ok' and set(integrity) == {'ok'}
    n_bars, distinct, first_bar, last_bar = con.execute('SELECT COUNT(*), COUNT(DISTINCT time), MIN(time), MAX(time) FROM bars').fetchone()
    con.close()
    assert n_bars == distinct == 8760 and first_bar.startswith('2022-01-01T00:00') and last_bar.startswith('2022-12-31T23:00')
    # the scheduler ran its job every 2 minutes, every run ok
    assert summary['scheduled_runs'].get('ok', 0) >= MINUTES / 2 - 2 and set(summary['scheduled_runs']) == {'ok'}, summary['scheduled_runs']
    # the dashboard's page says what `tbot paper status` says
    for k in ('bars', 'fills', 'equity', 'buy_and_hold', 'last_bar', 'status', 'halted'): assert dash['paper'][k] == status[k], k
    assert float(dash['hooks']['tbot-equity']) == status['equity'] and float(dash['hooks']['tbot-buy-and-hold']) == status['buy_and_hold']
    assert int(dash['hooks']['tbot-bars']) == status['bars'] == 8760 and dash['equity_y'] == status['equity'] and dash['bh_y'] == status['buy_and_hold']
    assert not trader_err, trader_err
