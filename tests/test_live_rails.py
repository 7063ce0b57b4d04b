"""`tbot live`'s rails end to end, as a user runs them, against a fake Binance on 127.0.0.1 that ccxt's real `binance` class talks
to (no network, no mock of ccxt): live trading is refused (one line, exit 2, nothing written, no order) when it is not switched on
in the settings file, without keys, with the clock off, with a key that cannot trade, with a test order refused, with the kill
switch set or another trader on the ledger; a key that can withdraw passes with a warning; `--testnet` goes through ccxt's sandbox
URLs; `tbot live halt` records its request in the ledger and `status` says it first; and a scan of every artefact of a live session
(stdout, stderr, the ledger, the data and reports folders, the settings) finds neither the key nor the secret nor a signature."""
import hashlib, json, os, re, sqlite3, subprocess
from pathlib import Path
import pytest
from conftest import one_line_error
from forked import Forker
from tbot.params import find_secrets, secret_in
from fake_binance import shared_candles
from fake_binance_rails import FakeBinanceRails, RESTRICTIONS

KEY, SECRET = 'Zq7LIVEKEYxxRmTuvWpqGhJk', 'Wp3LIVESECRETyyNoPQrsTuVwXz'  # distinctive, no run of hex digits: any 8 characters of either are found

@pytest.fixture(scope='module')
def candles():
    return shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2024-01-01', '2024-01-31')

@pytest.fixture
def home(tmp_path):
    "A user's folder: a settings file with live trading switched on, an empty data folder and reports folder."
    (tmp_path / 'settings.ini').write_text('[live]\nenabled = true\n')
    return tmp_path

@pytest.fixture(scope='module', autouse=True)
def forker(tmp_path_factory):
    "Commands run as processes forked from a server that has imported the libraries once (tests/forked.py): ~2 s less each."
    global FORKER, OUT
    OUT = tmp_path_factory.mktemp('live_outputs')
    with Forker() as fk:
        FORKER = fk; yield fk

def run(home:Path, *args, fake=None, keys=True, settings='settings.ini', **env)->subprocess.CompletedProcess:
    "`tbot *args` in its own process, in an environment with no TBOT_ variable but these (a developer's own keys never leak in)."
    base = {k: v for k, v in os.environ.items() if not k.startswith('TBOT_')}
    base.update(TBOT_SETTINGS=str(home / settings), TBOT_DATA_DIR=str(home / 'data'), TBOT_REPORTS_DIR=str(home / 'reports'),
                TBOT_EXCHANGE_RETRIES='1', TBOT_EXCHANGE_TIMEOUT='3')
    if fake is not None: base['TBOT_EXCHANGE_URL'] = fake.url
    if keys: base.update(TBOT_BINANCE_API_KEY=KEY, TBOT_BINANCE_API_SECRET=SECRET)
    base.update(env)
    out, err = OUT / 'stdout', OUT / 'stderr'
    FORKER.start(list(map(str, args)), env=base, cwd=home, stdout=out, stderr=err)
    rc = FORKER.wait(timeout=120)
    if rc is None: FORKER.kill(); FORKER.wait(); raise AssertionError(f"tbot {' '.join(map(str, args))} still ran after 120 s")
    return subprocess.CompletedProcess(['tbot', *map(str, args)], rc, out.read_text(errors='replace'), err.read_text(errors='replace'))

def fake_for(candles, **kw)->FakeBinanceRails:
    "A fake Binance on the machine's clock, whose key is KEY/SECRET."
    return FakeBinanceRails(candles, api_key=KEY, api_secret=SECRET, **kw)

def files(d:Path)->dict:
    "Hash of every file under `d`: to show that a refused command wrote nothing."
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob('*')) if p.is_file()}

def placed(fake)->list:
    "Every order request that could reach a book (a test order cannot)."
    return [r for r in fake.requests if r[1] == '/api/v3/order' and r[0] == 'POST']

def make_live_account(home:Path)->Path:
    "A ledger holding a live account, as the live trader leaves it (one row: the trader is the broker's)."
    from tbot.ledger import connect
    led = home / 'data' / 'ledger.sqlite'
    con = connect(led)
    con.execute("INSERT INTO accounts (mode, created, version, start, init_cash, config) VALUES "
                "('live', '2024-01-01T00:00:00.000000Z', 'test', '2024-01-01T00:00:00.000000Z', 100, '{}')")
    con.close()
    return led

# --- refusals ---------------------------------------------------------------------------------------------------------------

def test_off_by_default(home, candles):
    (home / 'off.ini').write_text('[exchange]\nquote = USDT\n')   # no [live]: tbot's defaults, enabled = false
    with fake_for(candles) as fake:
        for env in ({}, {'TBOT_LIVE_ENABLED': 'true'}):
            before = files(home)
            line = one_line_error(run(home, 'live', 'start', fake=fake, settings='off.ini', **env), 'live trading is off: set [live] enabled = true')
            assert ('TBOT_LIVE_ENABLED does not count' in line) == bool(env)
            assert files(home) == before and not (home / 'data').exists()
        assert fake.requests == []   # refused before the exchange is asked anything
        p = run(home, 'live', 'status', settings='off.ini')
        assert p.returncode == 0 and p.stdout.startswith('live trading is OFF'), p.stdout

def test_refused_without_keys(home, candles):
    with fake_for(candles) as fake:
        one_line_error(run(home, 'live', 'start', fake=fake, keys=False), 'no API keys: set TBOT_BINANCE_API_KEY and TBOT_BINANCE_API_SECRET')
        assert fake.requests == [] and not (home / 'data').exists()
        p = run(home, 'live', 'preflight', fake=fake, keys=False)
        assert p.returncode == 1 and p.stdout.startswith('PREFLIGHT FAILED: keys'), p.stdout
        assert 'FAIL  keys: no API key and secret' in p.stdout
        # from the git-ignored .env next to the settings file
        (home / '.env').write_text(f'TBOT_BINANCE_API_KEY={KEY}\nTBOT_BINANCE_API_SECRET="{SECRET}"\n')
        p = run(home, 'live', 'preflight', fake=fake, keys=False)
        assert p.returncode == 0 and 'ok    keys: API key and secret from .env (never shown)' in p.stdout, p.stdout

def test_refused_when_the_clock_is_off(home, candles):
    with fake_for(candles, skew=3.0) as fake:   # the exchange's clock is 3 s ahead of ours; the limit is 500 ms
        p = run(home, 'live', 'preflight', fake=fake)
        assert p.returncode == 1 and p.stdout.startswith('PREFLIGHT FAILED: clock'), p.stdout
        assert re.search(r'FAIL  clock: our clock is (29|30)\d\d ms behind', p.stdout), p.stdout
        before = files(home)
        one_line_error(run(home, 'live', 'start', fake=fake), 'live trading refused: the preflight failed (clock: our clock is')
        assert files(home) == before and placed(fake) == []

def test_a_key_that_can_withdraw_passes_with_a_warning(home, candles):
    with fake_for(candles, can_withdraw=True) as fake:
        p = run(home, 'live', 'preflight', fake=fake)
        assert p.returncode == 0 and p.stdout.startswith('PREFLIGHT PASSED (1 warning)'), p.stdout
        assert 'WARN  permissions: the key can trade, and CAN WITHDRAW' in p.stdout
        assert [l.split()[0] for l in p.stdout.splitlines()[1:]] == ['ok', 'ok', 'WARN', 'ok', 'ok']
        o = json.loads(run(home, 'live', 'preflight', '--json', fake=fake).stdout)
        assert (o['ok'], o['warnings'], [c['name'] for c in o['checks']]) == (True, 1, ['keys', 'clock', 'permissions', 'balances', 'test order'])
        assert any(r[1] == RESTRICTIONS for r in fake.requests) and any(r[1] == '/api/v3/order/test' for r in fake.requests)
        assert placed(fake) == [] and fake.orders == {}
        # with every rail passed, `tbot live start` trades: tests/test_live_session.py runs a whole session

def test_refused_when_the_key_cannot_trade(home, candles):
    with fake_for(candles, can_trade=False) as fake:
        p = run(home, 'live', 'preflight', fake=fake)
        assert p.returncode == 1 and 'FAIL  permissions: the key cannot trade spot' in p.stdout, p.stdout
        one_line_error(run(home, 'live', 'start', fake=fake), 'the preflight failed (permissions: the key cannot trade spot')

def test_refused_when_the_test_order_is_rejected(home, candles):
    with fake_for(candles, test_order_error=(400, -2010, 'This action is disabled on this account.')) as fake:
        p = run(home, 'live', 'preflight', fake=fake)
        assert p.returncode == 1 and p.stdout.startswith('PREFLIGHT FAILED: test order'), p.stdout
        assert 'FAIL  test order: refused by /api/v3/order/test' in p.stdout and 'This action is disabled' in p.stdout
        one_line_error(run(home, 'live', 'start', fake=fake), 'the preflight failed (test order: refused by /api/v3/order/test')
        assert placed(fake) == []

def test_testnet_goes_through_the_sandbox(home, candles):
    with fake_for(candles) as fake:   # the spot testnet has no /sapi: the account says what the key may do
        p = run(home, 'live', 'preflight', '--testnet', fake=fake)
        assert p.returncode == 0 and '(testnet)' in p.stdout.splitlines()[0], p.stdout
        assert 'WARN  permissions: the testnet account can trade, and CAN WITHDRAW' in p.stdout
        assert not any(r[1].startswith('/sapi') for r in fake.requests)

# --- the kill switch and the ledger ------------------------------------------------------------------------------------------

def test_kill_switch_file_and_halt(home, candles):
    with fake_for(candles) as fake:
        (home / 'data').mkdir()
        one_line_error(run(home, 'live', 'halt', '--by', 'alice', '--reason', 'test'), 'no live account in')
        assert files(home / 'data') == {}
        (home / 'data' / 'KILL').write_text('bob: exchange maintenance\n')
        one_line_error(run(home, 'live', 'start', fake=fake), 'the kill switch is set: the kill file')
        p = run(home, 'live', 'status')
        assert p.stdout.startswith('HALT REQUESTED (kill switch): the kill file') and 'bob: exchange maintenance' in p.stdout.splitlines()[0], p.stdout
        (home / 'data' / 'KILL').unlink()
        led = make_live_account(home)
        p = run(home, 'live', 'halt', '--by', 'alice', '--reason', 'the bot misbehaves')
        assert p.returncode == 0 and p.stdout.startswith('halt recorded (by alice)'), p.stderr
        con = sqlite3.connect(led)
        rows = con.execute('SELECT account, kind, detail, data, applied, time FROM events').fetchall(); con.close()
        assert rows == [(1, 'kill', 'halt requested by alice: the bot misbehaves', '{"by": "alice", "reason": "the bot misbehaves"}', None, None)]
        p = run(home, 'live', 'status')
        assert re.fullmatch(r'HALT REQUESTED \(kill switch\): halt requested by alice: the bot misbehaves at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d UTC', p.stdout.splitlines()[0]), p.stdout
        o = json.loads(run(home, 'live', 'status', '--json').stdout)
        assert o['halt'].startswith('halt requested by alice') and o['account'] == 1
        before = files(home)
        one_line_error(run(home, 'live', 'start', fake=fake), 'the kill switch is set: halt requested by alice')
        assert files(home) == before and fake.requests == []

def test_one_trader_per_ledger(home, candles):
    from tbot.trader import TraderLock
    led = make_live_account(home)
    with fake_for(candles) as fake, TraderLock(led):
        one_line_error(run(home, 'live', 'start', fake=fake), f'another trader is running on {led} (pid {os.getpid()})')
        assert fake.requests == []

@pytest.mark.parametrize('args, env, contains', [
    (['halt', '--by', 'alice'], {}, 'the following arguments are required: --reason'),
    (['halt', '--by', 'alice', '--reason', '  '], {}, '--reason must say why'),
    (['start', '--bogus'], {}, 'unrecognized arguments: --bogus'),
    (['start'], {'TBOT_LIVE_MAX_DAY': 'lots'}, "settings [live] max_day: 'lots' is not a number"),
    (['start'], {'TBOT_LIVE_MAX_ORDER': '0'}, "settings [live] max_order: '0' must be greater than 0"),
    (['status'], {'TBOT_LIVE_TESTNET': 'maybe'}, "settings [live] testnet = 'maybe' is not true or false"),
    (['preflight'], {'TBOT_LIVE_RECV_WINDOW': '90000'}, "settings [live] recv_window: '90000' must be at most 60000"),
    (['preflight', '--symbol', 'DOGE/USDT'], {}, "binance has no symbol 'DOGE/USDT'"),
    (['start'], {'TBOT_EXCHANGE_ID': 'kraken'}, 'live trading is built for Binance spot only'),
], ids=['halt-no-reason', 'halt-blank-reason', 'unknown-option', 'cap-not-a-number', 'cap-zero', 'testnet-not-a-flag',
        'recv-window-too-long', 'unknown-symbol', 'not-binance'])
def test_bad_input_is_one_line(home, candles, args, env, contains):
    with fake_for(candles) as fake:
        before = files(home)
        one_line_error(run(home, 'live', *args, fake=fake, **env), contains)
        assert files(home) == before and placed(fake) == []

# --- secrets ----------------------------------------------------------------------------------------------------------------

@pytest.mark.slow   # ~20 commands, some waiting out timeouts: ~2 min on 2 busy cores
def test_no_secret_in_any_artefact(home, candles):
    "Every live command, passing and failing (faults whose ccxt texts carry signed URLs), then grep everything it left behind."
    out = []
    with fake_for(candles, can_withdraw=True) as fake:
        cmds = [('live', 'preflight'), ('live', 'preflight', '--json'), ('live', 'start'), ('live', 'status'), ('live', 'status', '--json')]
        for c in cmds: out.append(run(home, *c, fake=fake))
        for fault, path in (('500', RESTRICTIONS), ('500', '/api/v3/account'), ('timeout', '/api/v3/order/test'), ('drop', '/api/v3/account'),
                            ('skew', RESTRICTIONS), ('503', '/api/v3/order/test')):
            fake.inject(fault, path=path)
            out.append(p := run(home, 'live', 'preflight', fake=fake, TBOT_EXCHANGE_TIMEOUT='1'))
            assert p.returncode == 1 and 'PREFLIGHT FAILED' in p.stdout, (fault, p.stdout, p.stderr)
            fake.inject(fault, path=path)
            out.append(p := run(home, 'live', 'start', fake=fake, TBOT_EXCHANGE_TIMEOUT='1'))
            one_line_error(p, 'the preflight failed')
        make_live_account(home)
        out += [run(home, 'live', 'halt', '--by', 'alice', '--reason', 'scan'), run(home, 'live', 'status'), run(home, 'live', 'start', fake=fake)]
        out.append(run(home, 'live', 'start', fake=fake, TBOT_DEBUG='1'))
    assert sum('signature=***' in p.stdout for p in out) >= 2   # the fault texts did carry signed URLs, scrubbed
    # any 8 characters in a row of the key or the secret, raw or JSON/HTML-escaped (tbot.params' scan of report folders)
    secrets = {'TBOT_BINANCE_API_KEY': KEY, 'TBOT_BINANCE_API_SECRET': SECRET}
    for i, p in enumerate(out):
        assert secret_in(p.stdout + p.stderr, secrets) is None, f"a secret in the output of command {i}: {p.args}"
        assert not re.search(r'signature=[0-9a-f]{8}', p.stdout + p.stderr), f"a request signature in the output of {p.args}"
    scanned = [f for f in sorted(home.rglob('*')) if f.is_file()]
    assert {'ledger.sqlite', 'settings.ini'} <= {f.name for f in scanned}   # the scan sees the ledger and the settings
    assert find_secrets(home, secrets) == []
    for f in scanned: assert not re.search(rb'signature=[0-9a-f]{8}', f.read_bytes()), f"a request signature in {f}"

def test_dotenv_is_git_ignored():
    "The keys' one file outside the environment can never be committed."
    from conftest import ROOT
    p = subprocess.run(['git', 'check-ignore', '-q', '.env'], cwd=ROOT)
    assert p.returncode == 0, '.env is not git-ignored'

# --- the pure rails, over many random cases ---------------------------------------------------------------------------------

def test_caps_hold_over_random_plans():
    "Exits always pass; what passes never exceeds a cap; a refused buy would have broken one; nothing is dropped or reordered."
    import random
    from tbot.live import caps
    rng = random.Random(13)
    for _ in range(2000):
        mo, mb, md = rng.choice([10, 50, 100]), rng.choice([50, 100, 200]), rng.choice([100, 300, 1000])
        sb = rng.uniform(0, mb); sd = sb + rng.uniform(0, md - sb) if md > sb else sb
        orders = [{'symbol': rng.choice(['BTC/USDT', 'ETH/USDT']), 'side': rng.choice(['buy', 'buy', 'sell']),
                   'amount': rng.uniform(0.0001, 0.01), 'price': rng.uniform(1000, 60000), 'n': i} for i in range(rng.randint(0, 8))]
        r = caps(orders, sb, sd, mo, mb, md)
        refused = [o for o, _ in r['refused']]
        assert sorted(o['n'] for o in r['passed'] + refused) == list(range(len(orders)))
        assert [o['n'] for o in r['passed']] == sorted(o['n'] for o in r['passed'])   # in the order given
        assert all(o['side'] == 'buy' for o in refused)                                # exits always pass
        bought = [o['amount'] * o['price'] for o in r['passed'] if o['side'] == 'buy']
        assert all(b <= mo for b in bought)
        assert r['spent_bar'] == pytest.approx(sb + sum(bought)) and r['spent_day'] == pytest.approx(sd + sum(bought))
        assert (not bought) or (r['spent_bar'] <= mb + 1e-9 and r['spent_day'] <= md + 1e-9)
        bar, day = sb, sd   # replay: each refused buy broke a cap at its turn
        for o in orders:
            if o['side'] == 'sell': continue
            c = o['amount'] * o['price']
            if o in refused: assert c > mo or bar + c > mb or day + c > md
            else: bar += c; day += c

def test_risk_states_over_random_walks():
    "Only a reset with nothing asking to halt lifts a state; drift or N unknowns always halt; a kill or stop never leaves it active."
    import random
    from tbot.live import RiskState, allows, risk_step
    rng = random.Random(7)
    for _ in range(300):
        r = RiskState()
        for _ in range(40):
            w = dict(flat=rng.random() < 0.4, kill=rng.choice([None] * 5 + ['alice: x']), unknowns=rng.choice([0, 0, 1, 2, 3, 4]),
                     drift=rng.choice([None] * 8 + ['BTC differs']), stop=rng.choice([None] * 8 + ['floor']), reset=rng.choice([None] * 4 + ['bob']))
            n = risk_step(r, max_unknown=3, **w)
            hard, soft = bool(w['drift']) or w['unknowns'] >= 3, bool(w['kill'] or w['stop'])
            if hard: assert n.state == 'halted' and not allows(n, True)
            if soft: assert n.state != 'active' and not allows(n, False)
            if r.state != 'active' and n.state == 'active': assert w['reset'] and not hard and not soft
            if r.state == 'halted': assert n.state in ('halted', 'active')     # never back to reducing
            if n.state == 'reducing': assert allows(n, True) and not allows(n, False)
            r = n
