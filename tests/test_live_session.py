"""`tbot live start` as a person runs it, end to end, against the fake Binance of `fake_binance_rails.py` on 127.0.0.1 (ccxt's
own `binance` class, no mock, no network), on the machine's clock: every rail passes, the live trader trades bar by bar within
its caps, a second `tbot live start` is refused while it runs, `tbot live halt` makes it sell everything and halt, SIGTERM stops
it cleanly with the halt as the first line of its status; then the exchange's balances equal the ledger's baseline plus its fills,
no client order id was sent twice, and no artefact holds the key, the secret or a request signature.

The candles are the real 1m BTC/USDT and ETH/USDT candles of November 2021, moved in time so that the machine's minute is a bar
in which the agent holds a position: bars close every minute of wall time, and the preflight sees an exchange clock that agrees
with ours."""
import collections, json, os, re, signal, subprocess
import pandas as pd
import pytest
from conftest import SHARED, TBOT, one_line_error, wait_for
from conftest import try_rows as rows
from fake_binance_rails import FakeBinanceRails
from tbot.data import Series, read_candle_file, write_series
from tbot.params import find_secrets, secret_in

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]   # bars close once a minute of wall time: ~4 min, mostly waiting

KEY, SECRET = 'Zq7SESSIONKEYxRmTuvWpqGhJk', 'Wp3SESSIONSECRETyNoPQrsTuVwXz'
SYMS, CUT, AHEAD = ('BTC/USDT', 'ETH/USDT'), 5625, 30   # the agent holds a position from bar 5620 for 954 bars: it buys at once
M = pd.Timedelta('1min')

def minute_candles(now:pd.Timestamp)->dict:
    "The real 1m candles of November 2021, moved in time so that the bar CUT is the one open `now`; and 1h ones for the preflight's price."
    frames = {s: read_candle_file(SHARED / f"{s.replace('/', '_')}-1m.json") for s in SYMS}
    idx = frames[SYMS[0]].index.intersection(frames[SYMS[1]].index)
    out, shift = {}, now - idx[CUT]   # one shift for every candle: nothing reordered, no gap made
    for s, df in frames.items():
        df = df.loc[idx].iloc[:CUT + 1 + AHEAD]
        out[(s.replace('/', ''), '1m')] = df.set_axis(df.index + shift)
        h = read_candle_file(SHARED / f"{s.replace('/', '_')}-1h.feather").iloc[-100:]
        out[(s.replace('/', ''), '1h')] = h.set_axis(h.index + (now.floor('h') - h.index[-1]))
    return out

@pytest.fixture
def session(tmp_path):
    "A person's folder with live trading switched on and a store of 1m candles, and the fake exchange serving the same candles."
    now = pd.Timestamp.now(tz='UTC').floor('min')
    candles = minute_candles(now)
    (tmp_path / 'settings.ini').write_text('[live]\nenabled = true\ninit_cash = 500\nmax_order = 150\nmax_bar = 250\nmax_day = 2000\n'
                                           '[paper]\npoll = 2\nsettle = 1\n')
    for s in SYMS: write_series(candles[(s.replace('/', ''), '1m')].loc[:now - M], Series('binance', s, '1m'), tmp_path / 'data')
    env = {k: v for k, v in os.environ.items() if not k.startswith('TBOT_')}
    env.update(TBOT_SETTINGS=str(tmp_path / 'settings.ini'), TBOT_DATA_DIR=str(tmp_path / 'data'), TBOT_REPORTS_DIR=str(tmp_path / 'reports'),
               TBOT_BINANCE_API_KEY=KEY, TBOT_BINANCE_API_SECRET=SECRET, TBOT_EXCHANGE_RETRIES='3', TBOT_EXCHANGE_TIMEOUT='5',
               TBOT_ALLOCATION_ENTRY_TRADES='0')   # the bots enter without a record of 30 shadow trades: there is no time for one here
    with FakeBinanceRails(candles, api_key=KEY, api_secret=SECRET, balances={'USDT': 1000.0, 'BNB': 0.5}, fee_asset='received') as fake:
        env['TBOT_EXCHANGE_URL'] = fake.url
        yield tmp_path, env, fake

def tbot(env, *args, cwd=None)->subprocess.CompletedProcess:
    return subprocess.run([TBOT, *args], env=env, capture_output=True, text=True, timeout=180, cwd=cwd)

def test_a_live_session_trades_within_its_caps_halts_on_request_and_ends_on_the_exchange_balance(session, monkeypatch):
    home, env, fake = session
    ledger = home / 'data' / 'ledger.sqlite'
    proc = subprocess.Popen([TBOT, 'live', 'start', '--timeframe', '1m'], env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: rows(ledger, "SELECT 1 FROM events WHERE kind = 'started'"), 120, 'the live trader to start', proc, ledger)
        wait_for(lambda: rows(ledger, 'SELECT 1 FROM fills') and len(rows(ledger, 'SELECT 1 FROM bars')) >= 2, 240, 'a fill', proc, ledger)
        again = tbot(env, 'live', 'start', '--timeframe', '1m', cwd=home)   # one process places orders on one account
        one_line_error(again, f'another trader is running on {ledger} (pid {proc.pid})')
        st = json.loads(tbot(env, 'live', 'status', '--json').stdout)
        assert (st['running'], st['risk']['state'], st['halted']) == (proc.pid, 'active', None), st
        h = tbot(env, 'live', 'halt', '--by', 'alice', '--reason', 'the session test is over')
        assert h.returncode == 0 and h.stdout.startswith('halt recorded (by alice)'), h.stderr
        wait_for(lambda: rows(ledger, "SELECT 1 FROM events WHERE kind = 'live_halt'"), 300, 'the halt', proc, ledger)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None: proc.kill(); proc.wait()
    assert proc.returncode == 0 and 'Traceback' not in err, err
    assert out.startswith('PREFLIGHT PASSED'), out
    status = out[out.index('\nHALTED'):].splitlines()[1:] if '\nHALTED' in out else out.splitlines()
    assert status[0].startswith('HALTED since ') and 'kill switch: halt requested by alice: the session test is over' in status[0], out
    kinds = [k for (k,) in rows(ledger, 'SELECT kind FROM events ORDER BY id')]
    assert kinds[:2] == ['baseline', 'started'] and kinds[-1] == 'stopped' and 'error' not in kinds, kinds
    assert kinds.index('live_reducing') < kinds.index('live_halt'), kinds
    # the orders: each client id sent once; every buy within the caps; after the halt request, only sells
    posts = [q['newClientOrderId'] for m, p, q in fake.requests if m == 'POST' and p == '/api/v3/order']
    assert posts and len(posts) == len(set(posts)), collections.Counter(posts).most_common(3)
    fills = rows(ledger, 'SELECT o.intent, f.symbol, f.units, f.price, f.fee, f.fee_asset FROM fills f JOIN orders o ON o.id = f.order_id ORDER BY f.seq')
    assert all(u * p <= 150 for _, _, u, p, *_ in fills if u > 0), fills
    kill_fills = [f for f in fills if f[0] == 'kill']
    assert kill_fills and all(u < 0 for _, _, u, *_ in kill_fills), fills
    # the exchange's balances are the ledger's baseline plus its fills, to the lot step; nothing is left to sell
    exp = dict(json.loads(rows(ledger, "SELECT data FROM events WHERE kind = 'baseline'")[0][0])['balances'])
    for _, sym, units, price, fee, asset in fills:
        b, q = sym.split('/')
        exp[b] = exp.get(b, 0.0) + units; exp[q] = exp.get(q, 0.0) - units * price; exp[asset or q] -= fee
    for a in ('USDT', 'BTC', 'ETH'):
        assert abs(fake.balances.get(a, 0.0) - exp.get(a, 0.0)) <= 1e-6, (a, fake.balances, exp)
    assert fake.balances.get('BTC', 0.0) * fake.last_close('BTCUSDT') < 5 and fake.balances.get('ETH', 0.0) * fake.last_close('ETHUSDT') < 5, fake.balances
    # no secret anywhere: the output, the ledger, the store, the reports, the settings
    secrets = {'TBOT_BINANCE_API_KEY': KEY, 'TBOT_BINANCE_API_SECRET': SECRET}
    assert secret_in(out + err, secrets) is None and not re.search(r'signature=[0-9a-f]{8}', out + err)
    assert find_secrets(home, secrets) == []
    for f in (p for p in home.rglob('*') if p.is_file()): assert not re.search(rb'signature=[0-9a-f]{8}', f.read_bytes()), f
    # the dashboard shows the live account as it is: LIVE, halted first, and how to lift it
    from tbot import dashboard, panels
    for k in ('TBOT_SETTINGS', 'TBOT_DATA_DIR', 'TBOT_REPORTS_DIR'): monkeypatch.setenv(k, env[k])   # this process reads what the trader wrote
    st = dashboard.dashboard_state(ledger)
    assert (st['status'], st['config']['mode'], st['paper']['mode']) == ('halted', 'live', 'live'), st.get('why')
    b = panels.banner(st)
    assert b.index('HALTED') < b.index('LIVE</b>') and 'kill switch: halt requested by alice' in b and f'tbot live resume --by NAME --reason TEXT --ledger {ledger}' in b
    drawn = dashboard.draw_all(st)
    assert any('LIVE trading with real money on binance' in str(v) for v in drawn.values()) and not any('PAPER trading' in str(v) for v in drawn.values())
    assert not [n for n, v in drawn.items() if 'could not be drawn' in str(v)]
    assert 'inf%' not in drawn['risk_panel'] and 'risk budget (cushion cap)' in drawn['risk_panel']   # the live broker records the budget's cap too
    assert f'tbot live resume --by NAME --reason TEXT --ledger {ledger}' in drawn['risk_panel'] and 'live_halt' in drawn['risk_panel'], drawn['risk_panel']
    # the fleet tools on a live ledger (issue 14): status --all lists it LIVE and halted first; health names the live halt;
    # the watcher tells the live risk events; the deployment history has the live start
    fleet = json.loads(tbot(env, 'paper', 'status', '--all', '--json').stdout)
    assert [(r['mode'], bool(r['halted'])) for r in fleet] == [('live', True)], fleet
    line = tbot(env, 'paper', 'status', '--all').stdout.splitlines()[1]
    assert line.startswith('HALTED since ') and ' live BTC/USDT,ETH/USDT 1m ' in line and "(LIVE: the exchange's fills and fees" in line, line
    h = tbot(env, 'health', '--no-ping', '--json')
    rep = json.loads(h.stdout)
    assert h.returncode == 1 and rep['problems'][0].startswith('stop: LIVE HALTED: kill switch'), rep['problems']
    from tbot import notify, deploy
    msgs = [m for e in notify.new_events(ledger, {}, pd.Timestamp.now(tz='UTC'), 3600) if (m := notify.event_message(e[3], e[4], e[2], 'ledger'))]
    titles = [m['title'] for m in msgs]
    assert titles[0] == 'tbot ledger: trader started' and titles[-1] == 'tbot ledger: trader stopped', titles
    assert [t for t in titles if 'LIVE' in t] == ['tbot ledger: LIVE REDUCING: kill switch: halt requested by alice: the session test is over',
                                                 'tbot ledger: LIVE HALTED: kill switch: halt requested by alice: the session test is over'], titles
    assert secret_in('\n'.join(f"{m['title']} {m['body']}" for m in msgs), secrets) is None
    dep = deploy.deployments(ledger)
    assert [(d['mode'], d['ended']['kind']) for d in dep] == [('live', 'stopped')] and len(dep[0]['settings_hash']) == 64, dep
