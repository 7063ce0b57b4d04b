"""Every `tbot` command refuses bad input the same way: one line on stderr, a non-zero exit, no traceback, and nothing
written. Each case runs the real console command on its own copy of a small store of real candles (with a ledger and a
reports folder), and the copy is hashed before and after. The cases run in parallel; only the selected ones run.
Each command is forked from a server that has imported pandas & co once (tests/forked.py): a process of its own that imports
tbot and runs the console command's `main`, without the 1-2 s of Python and library start that 100 commands would cost."""
import hashlib, os, queue, shutil, sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
import pytest
from forked import Forker
from tbot.data import Series, read_candle_file, write_series
from tbot.ledger import Ledger

pytestmark = pytest.mark.slow  # ~100 commands
WORKERS = 3
ROOT = Path(__file__).resolve().parents[1]
NOWHERE = Path('/nonexistent')
BAD_SCHEDULE = 'BAD_SCHEDULE'  # env marker: TBOT_SETTINGS points at a settings file with a job that runs every 1e20 days

@dataclass
class Case:
    id:str         # the test id
    args:list      # the command line after `tbot`
    env:dict|None = None  # extra environment

    def __repr__(self): return self.id

BAD_DATES = {'month13': '2022-13-45', 'word': 'yesterday', 'feb30': '2022-02-30'}
WF = ['walkforward', '--strategy', 'ema_cross', '--grid', 'fast=5,12', '--grid', 'slow=48,96']
SWEEP = ['sweep', '--strategy', 'ema_cross', '--grid', 'fast=5,12', '--grid', 'slow=48,96']
BT = ['backtest', '--strategy', 'ema_cross']

def _cases()->list[Case]:
    c = []
    add = lambda id, *args, env=None: c.append(Case(id, list(args), env))
    # data
    add('data-import-missing-folder', 'data', 'import', '/nonexistent/binance')
    add('data-import-a-file', 'data', 'import', '/etc/passwd')
    add('data-list-store-is-a-file', 'data', 'list', env={'TBOT_DATA_DIR': '/etc/passwd'})
    add('data-check-timeframe-7h', 'data', 'check', 'BTC/USDT', '7h')
    add('data-check-unknown-symbol', 'data', 'check', 'XRP/USDT', '1h')
    for k, d in BAD_DATES.items(): add(f'data-fetch-since-{k}', 'data', 'fetch', '--since', d)
    add('data-fetch-timeframe-7h', 'data', 'fetch', '--timeframes', '7h')
    add('data-fetch-unknown-exchange', 'data', 'fetch', '--exchange', 'nope')
    add('data-synth-bars-negative', 'data', 'synth', '--bars', '-5')
    add('data-synth-seed-negative', 'data', 'synth', '--seed', '-1')
    add('data-synth-timeframe-7h', 'data', 'synth', '--timeframe', '7h')
    # regime
    add('regime-timeframe-7h', 'regime', 'BTC/USDT', '7h')
    add('regime-unknown-symbol', 'regime', 'XRP/USDT', '1h')
    add('regime-out-missing-folder', 'regime', 'BTC/USDT', '1h', '--out', '/nonexistent/x.csv')
    add('regime-store-is-a-file', 'regime', 'BTC/USDT', '1h', env={'TBOT_DATA_DIR': '/etc/passwd'})
    add('regime-evaluate-seeds-backwards', 'regime', 'evaluate', '--seeds', '5-1')
    add('regime-evaluate-seeds-word', 'regime', 'evaluate', '--seeds', 'abc')
    add('regime-evaluate-bars-negative', 'regime', 'evaluate', '--bars', '-5')
    # strategies
    add('strategies-unknown-family', 'strategies', '--family', 'nope')
    add('strategies-unknown-option', 'strategies', '--bogus')
    # backtest
    for k, d in BAD_DATES.items():
        add(f'backtest-start-{k}', *BT, '--start', d)
        add(f'backtest-end-{k}', *BT, '--end', d)
    add('backtest-start-after-end', *BT, '--start', '2023-01-01', '--end', '2022-01-01')
    add('backtest-period-outside-data', *BT, '--start', '2030-01-01')
    add('backtest-params-nan', *BT, '--params', 'fast=nan')
    add('backtest-params-inf', *BT, '--params', 'fast=inf')
    add('backtest-params-word', *BT, '--params', 'fast=abc')
    add('backtest-params-not-whole', *BT, '--params', 'fast=3.5')
    add('backtest-params-unknown-name', *BT, '--params', 'fats=5')
    add('backtest-params-out-of-range', *BT, '--params', 'fast=1')
    add('backtest-init-cash-inf', *BT, '--init-cash', 'inf')
    add('backtest-init-cash-zero', *BT, '--init-cash', '0')
    add('backtest-fees-negative', *BT, '--fees', '-0.001')
    add('backtest-fees-nan', *BT, '--fees', 'nan')
    add('backtest-slippage-negative', *BT, '--slippage', '-0.001')
    add('backtest-slippage-inf', *BT, '--slippage', 'inf')
    add('backtest-unknown-strategy', 'backtest', '--strategy', 'ema_crss')
    add('backtest-unknown-symbol', *BT, '--symbol', 'XRP/USDT')
    add('backtest-timeframe-7h', *BT, '--timeframe', '7h')
    add('backtest-store-is-a-file', *BT, env={'TBOT_DATA_DIR': '/etc/passwd'})
    add('backtest-pair-without-ref', 'backtest', '--strategy', 'pair_zscore')
    # sweep
    for k, d in BAD_DATES.items(): add(f'sweep-start-{k}', *SWEEP, '--start', d)
    add('sweep-start-after-end', *SWEEP, '--start', '2023-01-01', '--end', '2022-01-01')
    add('sweep-heatmap-one-parameter', 'sweep', '--strategy', 'ema_cross', '--grid', 'fast=5,12', '--heatmap', 'h.html')
    add('sweep-heatmap-missing-folder', *SWEEP, '--heatmap', '/nonexistent/h.html')
    add('sweep-memory-negative', *SWEEP, '--memory', '-1')
    add('sweep-memory-zero', *SWEEP, '--memory', '0')
    add('sweep-top-negative', *SWEEP, '--top', '-1')
    add('sweep-grid-nan', 'sweep', '--strategy', 'ema_cross', '--grid', 'fast=5,nan')
    add('sweep-grid-unknown-name', 'sweep', '--strategy', 'ema_cross', '--grid', 'fats=5,12')
    add('sweep-grid-huge', 'sweep', '--strategy', 'ema_cross', '--grid', 'fast=2:500:0.00001')
    add('sweep-unknown-sort', *SWEEP, '--sort', 'luck')
    add('sweep-fees-negative', *SWEEP, '--fees', '-0.001')
    # walkforward
    for k, d in BAD_DATES.items(): add(f'walkforward-end-{k}', *WF, '--end', d)
    add('walkforward-start-after-end', *WF, '--start', '2023-01-01', '--end', '2022-01-01')
    add('walkforward-blocks-odd', *WF, '--blocks', '3')
    add('walkforward-blocks-huge', *WF, '--blocks', '100')
    add('walkforward-train-word', *WF, '--train', 'abc')
    add('walkforward-train-zero', *WF, '--train', '0D')
    add('walkforward-test-negative', *WF, '--test', '-5D')
    add('walkforward-unknown-metric', *WF, '--metric', 'luck')
    add('walkforward-params-inf', 'walkforward', '--strategy', 'ema_cross', '--grid', 'fast=5,inf')
    # agent
    for k, d in BAD_DATES.items():
        add(f'agent-backtest-start-{k}', 'agent', 'backtest', '--start', d)
        add(f'agent-backtest-end-{k}', 'agent', 'backtest', '--end', d)
        add(f'agent-explain-at-{k}', 'agent', 'explain', '--at', d)
    add('agent-backtest-start-after-end', 'agent', 'backtest', '--start', '2023-01-01', '--end', '2022-01-01')
    add('agent-backtest-walk-forward-train-word', 'agent', 'backtest', '--walk-forward', '--train', 'abc')
    add('agent-backtest-walk-forward-train-zero', 'agent', 'backtest', '--walk-forward', '--train', '0D')
    add('agent-backtest-fees-negative', 'agent', 'backtest', '--fees', '-0.001')
    add('agent-backtest-init-cash-inf', 'agent', 'backtest', '--init-cash', 'inf')
    add('agent-backtest-unknown-symbol', 'agent', 'backtest', '--symbols', 'XRP/USDT')
    add('agent-backtest-timeframe-7h', 'agent', 'backtest', '--timeframe', '7h')
    add('agent-backtest-store-is-a-file', 'agent', 'backtest', env={'TBOT_DATA_DIR': '/etc/passwd'})
    add('agent-explain-at-after-data', 'agent', 'explain', '--at', '2030-01-01')
    # ledger
    add('ledger-missing-file', 'ledger', 'matrix', '--ledger', '/nonexistent/l.sqlite')
    add('ledger-runs-missing-file', 'ledger', 'runs', '--ledger', '/nonexistent/l.sqlite')
    add('ledger-runs-unknown-kind', 'ledger', 'runs', '--kind', 'foo')
    add('ledger-as-of-bad-date', 'ledger', 'matrix', '--as-of', '2022-13-45')
    add('ledger-store-is-a-file', 'ledger', 'runs', env={'TBOT_DATA_DIR': '/etc/passwd'})
    # report
    add('report-unknown-strategy', 'report', 'backtest', '-p', 'strategy=ema_crss')
    add('report-fees-negative', 'report', 'backtest', '-p', 'fees=-0.001')
    add('report-unknown-symbol', 'report', 'backtest', '-p', 'symbols=XRP/USDT')
    add('report-timeframe-7h', 'report', 'backtest', '-p', 'timeframe=7h')
    add('report-timeout-negative', 'report', 'backtest', '--timeout', '-1')
    add('report-start-bad-date', 'report', 'backtest', '-p', 'start=2022-13-45')
    add('report-unknown-notebook', 'report', 'nope')
    # schedule
    add('schedule-list-huge-interval', 'schedule', '--list', env={'TBOT_SETTINGS': BAD_SCHEDULE})
    add('schedule-once-huge-interval', 'schedule', '--once', 'huge', env={'TBOT_SETTINGS': BAD_SCHEDULE})
    add('schedule-run-huge-interval', 'schedule', '--max-runs', '1', env={'TBOT_SETTINGS': BAD_SCHEDULE})
    add('schedule-once-unknown-job', 'schedule', '--once', 'nope')
    add('schedule-max-runs-negative', 'schedule', '--max-runs', '-1')
    # run
    add('run-store-is-a-file', 'run', '--offline', env={'TBOT_DATA_DIR': '/etc/passwd'})
    add('run-unknown-option', 'run', '--bogus')
    # paper
    for k, d in BAD_DATES.items(): add(f'paper-start-replay-{k}', 'paper', 'start', '--replay', d)
    add('paper-start-replay-end-before-start', 'paper', 'start', '--replay', '2022-06-01:2022-05-01')
    add('paper-start-replay-after-data', 'paper', 'start', '--replay', '2030-01-01:2030-02-01')
    add('paper-start-unknown-symbol', 'paper', 'start', '--replay', '2022-05-01:2022-05-02', '--symbols', 'XRP/USDT')
    add('paper-start-speed-negative', 'paper', 'start', '--replay', '2022-05-01:2022-05-02', '--speed', '-1')
    add('paper-start-store-is-a-file', 'paper', 'start', '--replay', '2022-05-01', env={'TBOT_DATA_DIR': '/etc/passwd'})
    add('paper-status-missing-ledger', 'paper', 'status', '--ledger', '/nonexistent/l.sqlite')
    add('paper-start-tick-negative', 'paper', 'start', '--replay', '2022-05-01:2022-05-02', '--speed', '3600', '--tick', '-1')
    add('paper-status-all-missing-ledger', 'paper', 'status', '--all', '--ledger', '/nonexistent/l.sqlite')
    add('paper-parity-missing-ledger', 'paper', 'parity', '--ledger', '/nonexistent/l.sqlite')
    add('paper-reset-stop-missing-ledger', 'paper', 'reset-stop', '--by', 'alice', '--reason', 'x', '--ledger', '/nonexistent/l.sqlite')
    add('paper-reset-stop-without-by', 'paper', 'reset-stop', '--reason', 'x')
    # dashboard: refused before voila starts
    add('dashboard-port-word', 'dashboard', '--no-browser', '--port', 'http')
    add('dashboard-port-too-big', 'dashboard', '--no-browser', '--port', '70000')
    add('dashboard-ip-not-an-address', 'dashboard', '--no-browser', '--ip', 'my-laptop')
    add('dashboard-cull-idle-zero', 'dashboard', '--no-browser', '--cull-idle', '0')
    add('dashboard-ledger-is-a-folder', 'dashboard', '--no-browser', '--ledger', '/tmp')
    add('dashboard-unknown-option', 'dashboard', '--bogus')
    # live (off in the shipped settings; no case reaches an exchange)
    add('live-start-switched-off', 'live', 'start')
    add('live-start-enabled-by-env-only', 'live', 'start', env={'TBOT_LIVE_ENABLED': 'true'})
    add('live-start-cap-not-a-number', 'live', 'start', env={'TBOT_LIVE_MAX_DAY': 'lots'})
    add('live-preflight-testnet-not-a-flag', 'live', 'preflight', env={'TBOT_LIVE_TESTNET': 'maybe'})
    add('live-halt-without-reason', 'live', 'halt', '--by', 'alice')
    add('live-halt-no-live-account', 'live', 'halt', '--by', 'alice', '--reason', 'x')
    add('live-status-unknown-option', 'live', 'status', '--bogus')
    add('live-start-bad-timeframe', 'live', 'start', '--timeframe', '7x', env={'TBOT_LIVE_ENABLED': 'true'})
    add('live-resume-without-by', 'live', 'resume', '--reason', 'x')
    add('live-resume-no-live-account', 'live', 'resume', '--by', 'alice', '--reason', 'x')
    # health, notify, logs
    add('health-unknown-check', 'health', '--only', 'pulse')
    add('health-empty-only', 'health', '--only', ',')
    add('health-negative-threshold', 'health', env={'TBOT_HEALTH_LAG_BARS': '-1'})
    add('health-ping-and-no-ping', 'health', '--ping', '--no-ping')
    add('notify-test-without-urls', 'notify', 'test', env={'TBOT_NOTIFY_URLS': ''})
    add('notify-watch-interval-zero', 'notify', 'watch', '--interval', '0')
    add('notify-bad-tries', 'notify', 'watch', '--once', env={'TBOT_NOTIFY_TRIES': '-1'})
    add('logs-lines-negative', 'logs', '-n', '-3')
    add('logs-missing-file', 'logs', '--file', '/nonexistent/tbot.jsonl')
    # config, and no command at all
    add('config-unknown-option', 'config', '--bogus')
    add('config-settings-missing', 'config', env={'TBOT_SETTINGS': '/nonexistent/settings.ini'})
    add('unknown-command', 'nope')
    return c

CASES = _cases()
assert len({c.id for c in CASES}) == len(CASES)

# ---------------------------------------------------------------- the world each case runs in
@pytest.fixture(scope='session')
def template(tmp_path_factory, shared):
    "A small store of real candles (BTC and ETH, 1h for 2022-2023, 5m for June 2023), a ledger with one run, a reports folder."
    root = tmp_path_factory.mktemp('bad_input_template')
    store, reports, work = root / 'data', root / 'reports', root / 'work'
    for sym in ('BTC/USDT', 'ETH/USDT'):
        f = sym.replace('/', '_')
        write_series(read_candle_file(shared / f'{f}-1h.feather')['2022-01-01':'2023-12-31'], Series('binance', sym, '1h'), store)
        write_series(read_candle_file(shared / f'{f}-5m.feather')['2023-06-01':'2023-06-30'], Series('binance', sym, '5m'), store)
    btc = read_candle_file(shared / 'BTC_USDT-1h.feather')['2023-01-01':'2023-01-31']
    with Ledger(store / 'ledger.sqlite') as led:
        led.write_run('backtest', {'strategy': 'hold'}, equity=(1000 * btc.close / btc.close.iloc[0]).rename('portfolio'),
                      name='seed', sample='in-sample', assumptions={'fees': 0.001, 'slippage': 0.0005})
    (reports / 'earlier-run').mkdir(parents=True); (reports / 'earlier-run' / 'report.html').write_text('<html></html>')
    work.mkdir()
    (root / 'bad_schedule.ini').write_text('[schedule]\nhuge = every 99999999999999999999d | backtest |\n')
    assert sorted(p.name for p in store.iterdir()) == ['binance', 'ledger.sqlite'], 'the ledger left WAL files behind'
    return root

def tree(*roots:Path)->dict:
    "Every file (content hash) and folder under `roots`."
    out = {}
    for r in roots:
        for p in sorted(r.rglob('*')):
            out[str(p.relative_to(r.parent))] = 'dir' if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out

@dataclass
class Outcome:
    rc:int; stdout:str; stderr:str; before:dict; after:dict; created_nowhere:bool

def run_case(case:Case, template:Path, base:Path, fk:Forker)->Outcome:
    "Run one case on its own copy of the template world, as a command forked by `fk`."
    root = base / case.id
    shutil.copytree(template, root)
    dirs = [root / 'data', root / 'reports', root / 'work']
    env = {k: v for k, v in os.environ.items() if not k.startswith('TBOT_')}
    env.update(TBOT_DATA_DIR=str(root / 'data'), TBOT_REPORTS_DIR=str(root / 'reports'), TBOT_SETTINGS=str(ROOT / 'settings.ini'),
               TBOT_EXCHANGE_TIMEOUT='2', TBOT_EXCHANGE_RETRIES='1')  # should a case reach the network anyway, fail soon
    for k, v in (case.env or {}).items(): env[k] = str(root / 'bad_schedule.ini') if v == BAD_SCHEDULE else v
    nowhere = NOWHERE.exists()
    before = tree(*dirs)
    out, err = base / f'{case.id}.stdout', base / f'{case.id}.stderr'
    fk.start(case.args, env=env, cwd=root / 'work', stdout=out, stderr=err)
    rc = fk.wait(timeout=90)
    if rc is None: fk.kill(); fk.wait()                    # (None: it started the work instead of refusing)
    out, err = out.read_text(errors='replace'), err.read_text(errors='replace')
    if rc is None: err = f'timed out after 90 s (it started the work instead of refusing)\n{err}'
    return Outcome(rc, out, err, before, tree(*dirs), NOWHERE.exists() and not nowhere)

@pytest.fixture(scope='session')
def outcomes(request, template, tmp_path_factory):
    "The outcome of every selected case, run in parallel."
    chosen = {it.callspec.params['case'].id for it in request.session.items   # this file's cases (test_paper.py has a test of the same name)
              if it.path == Path(__file__) and getattr(it, 'originalname', None) == 'test_bad_input_is_one_line_and_writes_nothing'}
    todo = [c for c in CASES if c.id in chosen]
    base, nowhere = tmp_path_factory.mktemp('bad_input_cases'), NOWHERE.exists()
    def tidy():  # a case that created /nonexistent fails for it; remove it so that it leaves no trace and misleads no other case
        if NOWHERE.is_dir() and not nowhere: shutil.rmtree(NOWHERE)
    elsewhere = lambda c: any(str(x).startswith(str(NOWHERE)) for x in c.args)
    servers = queue.Queue()
    def run(c):
        fk = servers.get()
        try: return run_case(c, template, base, fk)
        finally: servers.put(fk)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for fk in pool.map(lambda _: Forker(), range(WORKERS)): servers.put(fk)
        try:
            out = dict(zip([c.id for c in todo if not elsewhere(c)], pool.map(run, [c for c in todo if not elsewhere(c)])))
            for c in filter(elsewhere, todo):  # one at a time
                try: out[c.id] = run(c)
                finally: tidy()
        finally:
            while not servers.empty(): servers.get().close()
    return out

@pytest.mark.parametrize('case', CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case, outcomes):
    o = outcomes[case.id]
    said = f"tbot {' '.join(case.args)}\nexit {o.rc}\nstderr:\n{o.stderr[-3000:]}\nstdout:\n{o.stdout[-1000:]}"
    assert 'Traceback' not in o.stderr and 'internal error' not in o.stderr, said
    assert o.rc not in (0, None), said
    lines = o.stderr.splitlines()
    assert len(lines) == 1 and 'error' in lines[0], said
    changed = sorted(k for k in o.before.keys() | o.after.keys() if o.before.get(k) != o.after.get(k))
    assert not changed, f"{said}\nchanged: {changed}"
    assert not o.created_nowhere, f"{said}\n{NOWHERE} was created"

def test_every_command_has_cases():
    "A new command joins this file with its own bad input."
    from tbot.cli import available_commands
    assert set(available_commands()) <= {c.args[0] for c in CASES}
