"""The live broker against the fake Binance (ccxt's own binance class on 127.0.0.1): property tests of the orders it plans,
Binance's duplicate-client-id rule, and `kill -9` between the intent and the send, and between the send and the answer."""
import os, signal, sqlite3, subprocess, sys, time, types
from pathlib import Path
import numpy as np, pandas as pd
import pytest
from hypothesis import given, settings as hsettings, strategies as st, HealthCheck
from fake_binance import FakeBinance, shared_candles
from tbot.broker import LiveBroker, plan_order
from tbot.config import TbotError
from tbot.exchange import Exchange, Market, OrderRejected, connect
from tbot.risk import stop_state
from tbot.trader import order_id

HERE = Path(__file__).parent

@pytest.fixture(scope='module')
def fake():
    with FakeBinance(shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-04-01', '2022-04-30'), now='2022-04-10 12:00:01',
                     balances={'USDT': 1000.0}, fee_asset='quote', slippage=0.0005) as f:
        yield f

def exchange(fake, timeout=2.0):
    return Exchange(connect(urls=fake.url, timeout=timeout, rateLimit=1, apiKey='test-key', secret='test-secret', credentials=False), retries=3, delay=0.01)

@pytest.fixture(scope='module')
def markets(fake):
    return exchange(fake).client.load_markets()

# --- every planned order passes the filters; sells never exceed the free balance ---------------------------------------------
@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(symbol=st.sampled_from(['BTC/USDT', 'ETH/USDT']), side=st.sampled_from(['buy', 'sell']),
       amount=st.floats(1e-9, 50, allow_nan=False), ref=st.floats(50, 200_000, allow_nan=False),
       slippage=st.floats(0, 0.02), free=st.one_of(st.none(), st.floats(0, 100)), fee=st.sampled_from([0.0, 0.001, 0.00075]))
def test_every_planned_order_passes_the_filters(fake, markets, symbol, side, amount, ref, slippage, free, fee):
    m = markets[symbol]
    o = plan_order(m, side, amount, ref, slippage, free=free, fee=fee)
    if 'dust' in o:
        assert o['reason']; return
    assert Market.from_ccxt(m).problems(side, o['amount'], o['price'], avg_price=ref, market=False) == []
    assert fake.check_filters(m['id'], side.upper(), 'LIMIT', o['amount'], o['price'], ref) is None
    assert o['amount'] <= amount + 1e-12
    if side == 'sell' and free is not None: assert o['amount'] <= free
    if side == 'buy' and free is not None: assert o['amount'] * o['price'] * (1 + fee) <= free + 1e-9
    cap = ref * (1 + slippage) if side == 'buy' else ref * (1 - slippage)
    tick = m['precision']['price']
    assert (o['price'] >= cap - 1e-9 if side == 'buy' else o['price'] <= cap + 1e-9) and abs(o['price'] - cap) <= tick + 1e-9

def broker_state(fake, cash, btc, eth, last):
    "A trader's state as the broker reads it (book, positions, stop, rules), without a ledger."
    cfg = {'fees': 0.001, 'slippage': 0.0005, 'rebalance_band': 0.02}
    tr = types.SimpleNamespace(config=cfg, symbols=['BTC/USDT', 'ETH/USDT'], account=1, book=np.array([cash, 0.0]), pos=np.array([btc, eth]),
                               last=np.array(last), s=stop_state(cash + btc * last[0] + eth * last[1], 0.05, 0.03),
                               rules=(np.array([5.0, 5.0]), np.array([1e-5, 1e-4])))
    b = LiveBroker(exchange(fake), max_unknown=3)
    b.ex.markets()
    b.free = {'USDT': cash, 'BTC': btc, 'ETH': eth}
    return b, tr

@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cash=st.floats(0, 5000), btc=st.floats(0, 0.2), eth=st.floats(0, 2), w_btc=st.floats(0, 0.5), w_eth=st.floats(0, 0.5),
       move=st.floats(0.8, 1.2))
def test_planning_again_from_the_same_state_gives_the_same_orders_and_ids(fake, cash, btc, eth, w_btc, w_eth, move):
    b, tr = broker_state(fake, cash, round(btc, 5), round(eth, 4), [40000.0, 3000.0])
    prices = np.array([40000.0 * move, 3000.0 / move])
    bar = '2022-04-10T11:00:00.000000Z'
    first = b.plan_rebalance(tr, np.array([w_btc, w_eth]), bar, 19092, prices)
    again = b.plan_rebalance(tr, np.array([w_btc, w_eth]), bar, 19092, prices)
    assert first == again
    ids = [o['id'] for o in first[0]]
    assert len(set(ids)) == len(ids) and all(len(i) <= 32 and i.isalnum() for i in ids)
    assert ids == [order_id(1, 'agent', o['symbol'], bar, 'rebalance') for o in first[0]]
    for o in first[0]:   # every order passes the filters and sells stay within the free balance
        assert fake.check_filters(o['symbol'].replace('/', ''), o['side'].upper(), 'LIMIT', o['amount'], o['price'], prices[tr.symbols.index(o['symbol'])]) is None
        if o['side'] == 'sell': assert o['amount'] <= b.free[o['symbol'].split('/')[0]]

# --- Binance's duplicate-client-id rule, as the fake keeps it -------------------------------------------------------------------
def test_a_client_id_is_refused_while_its_order_is_open_and_accepted_after_it_fills(fake):
    ex = exchange(fake)
    fake.fill_price['BTCUSDT'] = 40000.0
    try:
        ex.create_order('BTC/USDT', 'buy', 0.001, 'dup-1', 'limit', 30000.0)                      # rests (GTC, below the price)
        with pytest.raises(OrderRejected, match='Duplicate order'): ex.create_order('BTC/USDT', 'buy', 0.001, 'dup-1', 'limit', 30000.0)
        ex.cancel_order('dup-1', 'BTC/USDT')
        o = ex.create_order('BTC/USDT', 'buy', 0.001, 'dup-2', 'limit', 40010.0, {'timeInForce': 'IOC'})
        assert o['status'] == 'closed'
        assert ex.create_order('BTC/USDT', 'sell', 0.001, 'dup-2', 'limit', 39990.0, {'timeInForce': 'IOC'})['status'] == 'closed'  # filled: the id may come again
        fake.liquidity = 0.5
        o = ex.create_order('BTC/USDT', 'buy', 0.001, 'part-1', 'limit', 40010.0, {'timeInForce': 'IOC'})
        assert (o['status'], o['filled']) == ('expired', 0.0005)                                  # a partial IOC fill ends EXPIRED
        fake.liquidity = None
        with pytest.raises(OrderRejected, match='PERCENT_PRICE_BY_SIDE'): ex.create_order('BTC/USDT', 'buy', 0.001, 'pp', 'limit', 300000.0, {'timeInForce': 'IOC'})
    finally:
        fake.fill_price.pop('BTCUSDT', None); fake.liquidity = None

@pytest.mark.parametrize('fee_asset, paid', [('base', 'BTC'), ('quote', 'USDT'), ('BNB', 'BNB')])
def test_fees_are_recorded_in_the_asset_paid(tmp_path, fee_asset, paid):
    with FakeBinance(shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-04-01', '2022-04-30'), now='2022-04-10 12:00:01',
                     balances={'USDT': 1000.0, 'BNB': 1.0}, fee_asset=fee_asset, slippage=0.0005) as f:
        tr = open_trader(f, tmp_path / 'l.sqlite', tmp_path)
        try:
            assert tr.broker.submit(tr, 'BTC/USDT', 'buy', 0.002, 45000.0, '2022-04-10T11:00:00.000000Z', 'rebalance') == 'filled'
            assert tr.con.execute('SELECT fee_asset FROM fills').fetchone()[0] == paid
            assert tr.broker.reconcile(tr) == []   # the ledger's balance of every asset, fees included, is the exchange's
        finally: tr.close()

def test_an_order_answered_open_is_cancelled_and_recorded_once_at_its_end(tmp_path):
    "An IOC the exchange answers as NEW (still on the book) is not left 'acknowledged': it is cancelled, read again and settled, its symbol free."
    with FakeBinance(shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-04-01', '2022-04-30'), now='2022-04-10 12:00:01',
                     balances={'USDT': 1000.0}, fee_asset='quote', slippage=0.0005) as f:
        tr = open_trader(f, tmp_path / 'l.sqlite', tmp_path)
        try:
            f.inject('rests', path='/api/v3/order')
            assert tr.broker.submit(tr, 'BTC/USDT', 'buy', 0.002, 45000.0, '2022-04-10T11:00:00.000000Z', 'rebalance') == 'settled'
            state, detail = tr.con.execute('SELECT state, detail FROM live_orders').fetchone()
            assert state == 'settled' and 'found canceled, filled 0.0' in detail, detail
            assert [o['status'] for o in f.orders.values()] == ['CANCELED']   # nothing left on the book
            assert tr.con.execute('SELECT COUNT(*) FROM fills').fetchone()[0] == 0 and tr.broker.frozen(tr) == set()
            assert tr.broker.reconcile(tr) == []
        finally: tr.close()

def test_an_empty_price_answer_is_a_failed_request_not_a_crash(tmp_path):
    "No candle in the answer for the price now: retried, then a TbotError (which the trader waits out), never an IndexError that ends it."
    with FakeBinance(shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-04-01', '2022-04-30'), now='2022-04-10 12:00:01',
                     balances={'USDT': 1000.0}, fee_asset='quote', slippage=0.0005) as f:
        tr = open_trader(f, tmp_path / 'l.sqlite', tmp_path)
        try:
            f.inject(*['empty'] * 20, path='/api/v3/klines')
            with pytest.raises(TbotError, match='BTC/USDT price'): tr.broker.price_now('BTC/USDT')
            with f.lock: f._queues.clear()   # the exchange answers again
            assert tr.broker.price_now('BTC/USDT') > 0
        finally: tr.close()

# --- kill -9 between the intent and the send, and between the send and the answer ---------------------------------------------
CHILD = '''
import os, signal, sys, threading, time
sys.path.insert(0, {tests!r})
from tbot.broker import LiveBroker
from tbot.exchange import Exchange, connect
from tbot.trader import Trader, account_config, trading_keys
from tbot.agent import load_policy
from tbot.feed import ReplayFeed
pol = load_policy(); keys = trading_keys(pol, '1h', False)
cfg = account_config('live', pol, '1h', False, 500, '2022-04-10', {{'start': '2022-04-10', 'end': '2022-04-11'}})
ex = Exchange(connect(urls={url!r}, timeout=2, rateLimit=1, apiKey='test-key', secret='test-secret', credentials=False), retries=3, delay=0.01)
b = LiveBroker(ex, recv_window=500, settle_wait=0.2)
tr = Trader(ReplayFeed(keys, '2022-04-10', '2022-04-11'), cfg, {ledger!r}, pol, broker=b).open()
def die(state, oid):
    if state == {at!r}:
        if {delay}: threading.Timer({delay}, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
        else: os.kill(os.getpid(), signal.SIGKILL)
b.on_state = die
b.submit(tr, 'BTC/USDT', 'buy', 0.002, 45000.0, '2022-04-10T11:00:00.000000Z', 'rebalance')
time.sleep(5)
'''

def store_candles(d:Path):
    from tbot.data import Series, read_candle_file, write_series
    for sym in ('BTC/USDT', 'ETH/USDT'):
        write_series(read_candle_file(HERE.parent.parent / 'shared' / 'data' / 'binance' / f"{sym.replace('/', '_')}-1h.feather").loc['2022-01-01':'2022-04-30'],
                     Series('binance', sym, '1h'), d)

def open_trader(fake, ledger, tmp):
    from tbot.agent import load_policy
    from tbot.feed import ReplayFeed
    from tbot.trader import Trader, account_config, trading_keys
    os.environ['TBOT_DATA_DIR'] = str(tmp / 'data')
    if not (tmp / 'data').exists(): store_candles(tmp / 'data')
    pol = load_policy(); keys = trading_keys(pol, '1h', False)
    cfg = account_config('live', pol, '1h', False, 500, '2022-04-10', {'start': '2022-04-10', 'end': '2022-04-11'})
    return Trader(ReplayFeed(keys, '2022-04-10', '2022-04-11'), cfg, ledger, pol, broker=LiveBroker(exchange(fake), recv_window=500, settle_wait=0.2)).open()

@pytest.mark.parametrize('at, delay, fault', [('planned', 0, None), ('sending', 0.3, 'timeout')])
def test_kill_9_between_intent_send_and_answer_sends_once_and_loses_no_fill(tmp_path, monkeypatch, at, delay, fault):
    monkeypatch.setenv('TBOT_DATA_DIR', str(tmp_path / 'data')); store_candles(tmp_path / 'data')
    with FakeBinance(shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-04-01', '2022-04-30'), now='2022-04-10 12:00:01',
                     balances={'USDT': 1000.0}, fee_asset='quote', slippage=0.0005, slow=1.0) as f:
        if fault: f.inject(fault, path='/api/v3/order')
        ledger = tmp_path / 'live.sqlite'
        code = CHILD.format(tests=str(HERE), url=f.url, ledger=str(ledger), at=at, delay=delay)
        p = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120, env={**os.environ})
        assert p.returncode == -signal.SIGKILL, p.stderr
        time.sleep(1.0)   # the lost answer's server side has finished
        oid = order_id(1, 'agent', 'BTC/USDT', '2022-04-10T11:00:00.000000Z', 'rebalance')
        con = sqlite3.connect(ledger)
        assert con.execute('SELECT state FROM live_orders WHERE id = ?', (oid,)).fetchone()[0] == ('planned' if at == 'planned' else 'sending')
        con.close()
        tr = open_trader(f, ledger, tmp_path)   # the restart: finishes what the kill left before anything else
        try:
            posts = [q for m, p_, q in f.requests if m == 'POST' and p_ == '/api/v3/order']
            state, filled, detail = tr.con.execute('SELECT state, filled, detail FROM live_orders WHERE id = ?', (oid,)).fetchone()
            if at == 'planned':   # never sent: recorded so, and nothing on the exchange
                assert posts == [] and state == 'cancelled' and 'never sent' in detail
                assert tr.con.execute('SELECT COUNT(*) FROM fills').fetchone()[0] == 0
            else:                 # sent once, its answer lost with the process: found by client id, the fill recorded once
                assert [q['newClientOrderId'] for q in posts] == [oid]
                assert state == 'settled' and filled == 0.002 and 'found closed' in detail
                assert tr.con.execute('SELECT COUNT(*), SUM(units) FROM fills').fetchone() == (1, 0.002)
            assert tr.broker.reconcile(tr) == []
            assert tr.broker.submit(tr, 'BTC/USDT', 'buy', 0.002, 45000.0, '2022-04-10T11:00:00.000000Z', 'rebalance') == state   # never sent again
            assert len([1 for m, p_, q in f.requests if m == 'POST' and p_ == '/api/v3/order']) == len(posts)
        finally: tr.close()


# --- the portfolio stop in live: checked on the close, flattened through the exchange --------------------------------------------
def test_the_stop_fires_at_the_close_and_flattens_through_the_exchange(tmp_path, monkeypatch):
    from tbot.risk import HALTED
    monkeypatch.setenv('TBOT_DATA_DIR', str(tmp_path / 'data'))
    with FakeBinance(shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-04-01', '2022-04-30'), now='2022-04-10 12:00:01',
                     balances={'USDT': 1000.0}, fee_asset='quote', slippage=0.0005) as f:
        tr = open_trader(f, tmp_path / 'l.sqlite', tmp_path)
        try:
            assert tr.broker.submit(tr, 'BTC/USDT', 'buy', 0.01, 45000.0, '2022-04-10T11:00:00.000000Z', 'rebalance') == 'filled'
            tr.s = stop_state(2000.0, 0.05, 0.0)   # a floor of 1,900: this account (500 of capital) is far below it
            close = f.last_close('BTCUSDT')
            bar = types.SimpleNamespace(day=np.array([19092]), c=np.array([[close, 3000.0]]), times=['2022-04-10T12:00:00.000000Z'])
            n, eq, st, frac, fired, resumed, orders, fills = tr.broker.step(tr, bar, 0, None)
            assert (st, fired, frac) == (HALTED, HALTED, -1.0)   # -1: at the close (the stop's reason says so)
            stop = tr.con.execute("SELECT side, state, filled FROM live_orders WHERE id = ?",
                                  (order_id(tr.account, 'agent', 'BTC/USDT', '2022-04-10T12:00:00.000000Z', 'stop'),)).fetchone()
            assert stop == ('sell', 'filled', 0.01) and tr.pos[0] == 0
            assert tr.broker.reconcile(tr) == []
        finally: tr.close()
