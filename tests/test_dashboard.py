"""The dashboard's logic on real paper-trading ledgers (short replays of the shared Binance candles): the state equals
`tbot paper status --json`, every panel draws, the empty and halted states say what to do, the ledger is never written,
the page follows a running trader; `tbot dashboard` refuses bad input in one line, and its server answers only with the token."""
import hashlib, json, os, re, signal, socket, sqlite3, subprocess, time, urllib.error, urllib.request
from pathlib import Path
import pandas as pd, pytest
from conftest import TBOT, tbot, one_line_error
from tbot import panels   # the panels the page draws (banner, attribution, risk, ...); the state and the page are tbot.dashboard's
from tbot.data import Series, read_candle_file, write_series

SYMS = ('BTC/USDT', 'ETH/USDT')
HALT = {'TBOT_RISK_PORTFOLIO_STOP': '0.01', 'TBOT_RISK_CPPI_MULTIPLIER': '0', 'TBOT_RISK_TIPP': '0'}   # a 1% stop, no risk budget: it fires

def write_store(d:Path, shared:Path)->Path:
    "A short history (2021-09 .. 2022-06) of the shared 1h candles: a replay on it takes seconds."
    for sym in SYMS:
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-1h.feather").loc['2021-09-01':'2022-06-30 23:00'], Series('binance', sym, '1h'), d)
    return d

def env_for(d:Path, **extra)->dict: return {'TBOT_DATA_DIR': str(d), 'TBOT_REPORTS_DIR': str(d.parent / 'reports'), **extra}

def snapshot(d:Path)->dict:
    "Bytes and mtime of every file in the folder of the ledger (the WAL index `-shm` by bytes only: every WAL reader maps it)."
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), None if p.name.endswith('-shm') else p.stat().st_mtime_ns)
            for p in sorted(d.iterdir()) if p.is_file()}

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

@pytest.fixture(scope='module')
def store(tmp_path_factory, shared)->Path: return write_store(tmp_path_factory.mktemp('dash') / 'data', shared)

@pytest.fixture(scope='module')
def replay(store)->Path:
    "Ten days of May 2022 replayed to the end (the trader then stops: the page says stale)."
    led = store / 'ledger.sqlite'
    tbot('paper', 'start', '--replay', '2022-05-01:2022-05-10', '--ledger', led, env=env_for(store))
    return led

@pytest.fixture(scope='module')
def halted(store)->Path:
    led = store / 'halted.sqlite'
    out = tbot('paper', 'start', '--replay', '2022-05-01:2022-05-20', '--ledger', led, env=env_for(store, **HALT)).stdout
    assert out.startswith('HALTED'), out
    return led

@pytest.fixture
def dash(store, monkeypatch):
    monkeypatch.setenv('TBOT_DATA_DIR', str(store))
    import tbot.dashboard as D
    return D

def hooks(html:str)->dict: return dict(re.findall(r"id='(tbot-[a-z-]+)' data-value='([^']*)'", html))

def test_state_equals_paper_status_and_every_panel_draws(replay, store, dash):
    st = dash.dashboard_state(replay)
    o = json.loads(tbot('paper', 'status', '--json', '--ledger', replay, env=env_for(store)).stdout)
    assert st['status'] == 'stale' and not st['running']            # the replay finished: no trader
    h = hooks(panels.banner(st))
    assert h['tbot-status'] == 'stale' and h['tbot-running'] == '0' and int(h['tbot-version']) == st['version'] > 0
    for k, key in (('tbot-equity', 'equity'), ('tbot-buy-and-hold', 'buy_and_hold'), ('tbot-floor', 'floor')): assert float(h[k]) == o[key], k
    assert int(h['tbot-fills']) == o['fills'] > 0 and int(h['tbot-bars']) == o['bars'] == 240 and h['tbot-last-bar'] == o['last_bar']
    out = dash.draw_all(st)
    assert set(out) == {n for _, ns in dash.TABS for n in ns}
    assert not [n for n, v in out.items() if 'could not be drawn' in str(v)]
    fig = out['performance_figure']
    assert [t['name'] for t in fig['data']] == ['paper equity', 'buy-and-hold', 'floor (portfolio stop)', 'drawdown']
    assert len(fig['data'][0]['y']) == o['bars'] and fig['data'][0]['y'][-1] == o['equity'] and fig['data'][1]['y'][-1] == o['buy_and_hold']
    assert f"<td style='padding:2px 8px'>{o['bars']}</td>" in out['performance_table']   # the Performance tab counts the banner's bars
    json.dumps(fig, allow_nan=False)                                 # plain json: what the browser gets
    assert 'slippage 0.050%' in out['performance_table'] and 'PAPER' in out['performance_table']     # the assumptions beside the figures
    at = panels.attribution(st)                                      # by market: exact, sums to the equity change
    assert at['symbol'].sum() == pytest.approx(o['equity'] - o['init_cash'], abs=1e-6) == at['regime'].sum()
    assert all(s in out['regimes_table'] for s in SYMS) and 'regime=' in out['decisions_table']
    assert 'binance BTC/USDT 1h' in out['data_panel'] and 'NOT RUNNING' in out['health_panel'] and 'settings hash' in out['deployment_panel']
    assert 'ACTIVE' in out['risk_panel'] and 'HALTED' not in panels.banner(st)

def test_empty_states_say_how_to_start(tmp_path, dash):
    for led in (tmp_path / 'none.sqlite', tmp_path / 'research.sqlite'):
        if led.name == 'research.sqlite':
            from tbot.ledger import connect
            connect(led).close()                                     # a ledger with research tables but no paper account
        st = dash.dashboard_state(led)
        assert st['status'] == 'empty', st
        b = panels.banner(st)
        assert hooks(b)['tbot-status'] == 'empty' and f'tbot paper start --replay' in b and f'--ledger {led}' in b and 'make dashboard' in b
        assert not [n for n, v in dash.draw_all(st).items() if 'could not be drawn' in str(v)]
    assert not (tmp_path / 'none.sqlite').exists()

def test_halted_is_first_and_says_how_to_reset(halted, dash):
    st = dash.dashboard_state(halted)
    assert st['status'] == 'halted'                                 # a halt outranks stale
    b = panels.banner(st)
    assert b.index('HALTED') < b.index('STALE') < b.index('tbot-equity')
    assert f'tbot paper reset-stop --by NAME --reason TEXT --ledger {halted}' in b and 'portfolio stop' in b
    r = panels.risk_panel(st)
    assert r.index('HALTED') < r.index('Limits') and 'reset-stop' in r and "halted" in r

def test_the_dashboard_never_writes_the_ledger(replay, halted, dash):
    before = snapshot(replay.parent)
    for led in (replay, halted):
        st = dash.dashboard_state(led); dash.draw_all(st); panels.research_matrix(led); dash.pulse(led)
        b = dash.Board(led); b.timer.tick += 1; b.tabs.selected_index = 3   # Performance: drawn when chosen, after a first tick
        fig = b.parts['performance_figure'].get_state()['outputs'][0]['data']['application/vnd.plotly.v1+json']
        assert len(fig['data']) == 4                                 # the traces reach the browser
    assert snapshot(replay.parent) == before

def test_the_page_follows_a_running_trader(store, tmp_path, dash):
    d = tmp_path / 'data'; d.mkdir()
    for p in (store / 'binance').rglob('*'):
        if p.is_file(): (d / p.relative_to(store)).parent.mkdir(parents=True, exist_ok=True); (d / p.relative_to(store)).write_bytes(p.read_bytes())
    led = d / 'ledger.sqlite'
    board = dash.Board(led)
    assert board.refresh() is False and board.state['status'] == 'empty'   # no ledger yet: drawn once (empty), nothing new
    proc = subprocess.Popen([TBOT, 'paper', 'start', '--replay', '2022-05-01:2022-06-30', '--speed', '7200', '--ledger', str(led)],
                            env={**os.environ, **env_for(d)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t = time.monotonic()
        while dash.ledger_version(led) < 5 and time.monotonic() - t < 120: time.sleep(0.5)
        p1 = dash.pulse(led)
        assert p1['running'] == proc.pid and not p1['stale'] and p1['heartbeat_age'] < 10
        st = dash.dashboard_state(led)
        assert st['status'] == 'active' and hooks(panels.banner(st))['tbot-running'] == '1'
        seen = set()
        for _ in range(12):                                          # while the trader writes: one snapshot per read
            board.refresh(); s = board.state; h = hooks(board.top.value)
            n = len(s['record']['bars']); seen.add(n)
            assert int(h['tbot-bars']) == s['paper']['bars'] == n == s['record']['bars'].n.iloc[-1] + 1   # the banner counts the bars the tabs draw
            assert int(h['tbot-version']) == s['version'] == n + int(s['record']['events'].id.max())
            assert float(h['tbot-equity']) == s['record']['bars'].equity.iloc[-1] and int(h['tbot-fills']) == len(s['record']['fills'])
            time.sleep(0.25)
        assert len(seen) > 3, seen                                   # the page followed new bars
        assert dash.pulse(led)['version'] > p1['version']
    finally:
        proc.send_signal(signal.SIGTERM); proc.wait(60)
    p2 = dash.pulse(led)
    assert p2['running'] is None and p2['stale'] and dash.dashboard_state(led)['status'] == 'stale'
    assert board.refresh() is True and board.state['status'] == 'stale'
    full = dash.dashboard_state(led)                                 # what the page built a few rows at a time equals one whole read
    for k in ('bars', 'fills', 'decisions', 'events'): pd.testing.assert_frame_equal(board.state['record'][k], full['record'][k])
    assert {k: v for k, v in board.state['paper'].items() if k != 'lag_seconds'} == {k: v for k, v in full['paper'].items() if k != 'lag_seconds'}

@pytest.mark.parametrize('args,msg', [(['--port', '99999'], '--port'), (['--port', 'abc'], '--port'), (['--ip', 'nowhere'], '--ip'),
                                      (['--cull-idle', '0'], '--cull-idle'), (['--bogus'], 'unrecognized')])
def test_bad_input_is_one_line(args, msg, tmp_path):
    one_line_error(tbot('dashboard', '--no-browser', *args, env=env_for(tmp_path / 'data'), check=False), msg)
    assert not (tmp_path / 'data').exists()

def test_busy_port_and_folder_ledger_are_refused(tmp_path):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(); port = s.getsockname()[1]
        one_line_error(tbot('dashboard', '--no-browser', '--port', port, env=env_for(tmp_path), check=False), 'cannot listen')
    one_line_error(tbot('dashboard', '--no-browser', '--port', free_port(), '--ledger', tmp_path, env=env_for(tmp_path), check=False), 'is a folder')

@pytest.mark.slow
def test_server_answers_only_with_the_token(replay, store):
    port = free_port()
    proc = subprocess.Popen([TBOT, 'dashboard', '--no-browser', '--port', str(port), '--ledger', str(replay)], env={**os.environ, **env_for(store)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r'http://\S+', line).group(0)
        assert url.startswith(f'http://127.0.0.1:{port}/?token=') and len(url.split('token=')[1]) >= 30
        page = urllib.request.urlopen(url, timeout=300).read().decode()
        assert 'There was an error when executing cell' not in page and 'Traceback' not in page and 'TBOT_DASHBOARD_LEDGER' not in page  # no sources
        for bare in (f'http://127.0.0.1:{port}/', f'http://127.0.0.1:{port}/?token=wrong'):
            try: r = urllib.request.urlopen(bare, timeout=60); assert '/login' in r.url, r.url   # redirected to the login form
            except urllib.error.HTTPError as e: assert e.code in (401, 403), e.code
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    with pytest.raises(OSError): socket.create_connection(('127.0.0.1', port), timeout=2)   # voila went with it
