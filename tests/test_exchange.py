"""The exchange layer against ccxt's real `binance` class and a fake Binance spot server on 127.0.0.1 (no mocks of ccxt):
markets, closed candles only, the retry policy fault by fault, orders never resent, no network, and a randomized run of
hundreds of injected faults that must end where a fault-free run ends."""
import random, socket, time
import pandas as pd, pytest
from fake_binance import FakeBinance, FAULTS, shared_candles, fake_binance  # noqa: F401  (fake_binance is a fixture)
from tbot.config import TbotError
from tbot.exchange import (Exchange, ExchangeBanned, ExchangeFailed, OrderOutcomeUnknown, OrderRejected, connect)

UTC = lambda s: pd.Timestamp(s, tz='UTC')

@pytest.fixture(autouse=True)
def keys(monkeypatch):
    monkeypatch.setenv('TBOT_BINANCE_API_KEY', 'test-key'); monkeypatch.setenv('TBOT_BINANCE_API_SECRET', 'test-secret')

@pytest.fixture(scope='module')
def q2():
    return shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-04-01', '2022-06-30')

def exchange(fake, timeout=2.0, **kw):
    "An Exchange on ccxt's binance class, pointed at the fake, with tiny backoff delays."
    kw.setdefault('retries', 5); kw.setdefault('delay', 0.001)
    return Exchange(connect(urls=fake.url, timeout=timeout, rateLimit=1), **kw)

def kinds(ex): return [e['kind'] for e in ex.events if e['kind'] != 'clock']

def test_markets_with_precision_and_limits(fake_binance):
    ex = exchange(fake_binance)
    m = ex.markets()
    assert list(m) == ['BTC/USDT', 'ETH/USDT']
    btc, eth = m['BTC/USDT'], m['ETH/USDT']
    assert (btc.id, btc.base, btc.quote, btc.amount_step, btc.price_tick, btc.min_qty, btc.max_qty, btc.min_notional) == \
           ('BTCUSDT', 'BTC', 'USDT', 1e-05, 0.01, 1e-05, 9000.0, 5.0)
    assert (eth.amount_step, btc.market_max_qty, btc.bid_up, btc.ask_down) == (0.0001, 100.0, 5.0, 0.2)
    assert eth.floor_amount(1.23456789) == 1.2345 and btc.round_price(29999.999) == 30000.0
    assert [r[1] for r in fake_binance.requests] == ['/api/v3/exchangeInfo']   # spot only: no margin, no currencies
    ex.markets()
    assert len(fake_binance.requests) == 1                                       # loaded once
    with pytest.raises(TbotError, match="binance has no symbol 'DOGE/USDT'"): ex.market('DOGE/USDT')
    assert ex.grid('BTC/USDT', '1h') == (3_600_000, 0) and ex.grid('BTC/USDT', '1w') == (604_800_000, 4 * 86_400_000)
    with pytest.raises(TbotError, match="binance has no timeframe '7m'"): ex.closed_candles('BTC/USDT', '7m')

@pytest.mark.parametrize('now, last', [('2022-05-09 12:30', '2022-05-09 11:00'), ('2022-05-09 12:00:00.5', '2022-05-09 11:00'),
                                       ('2022-05-09 11:59:59.2', '2022-05-09 10:00'), ('2022-05-10 00:01', '2022-05-09 23:00')])
def test_closed_candles_never_include_the_open_one(q2, now, last):
    with FakeBinance(q2, now=now) as fake:
        ex = exchange(fake)
        got = ex.closed_candles('BTC/USDT', '1h', since='2022-05-09')
        served = ex.client.fetch_ohlcv('BTC/USDT', '1h', since=int(UTC('2022-05-09').value // 10**6))
        p = ex.new_closed_candles('ETH/USDT', '1h', after='2022-05-08')
    assert got.index[-1] == UTC(last) == p.candles.index[-1]
    assert pd.Timestamp(served[-1][0], unit='ms', tz='UTC') == UTC(last) + pd.Timedelta('1h')  # the exchange did serve the open one
    pd.testing.assert_frame_equal(got, q2[('BTCUSDT', '1h')].loc['2022-05-09':last], check_freq=False)
    pd.testing.assert_frame_equal(p.candles, q2[('ETHUSDT', '1h')].loc['2022-05-08 01:00':last], check_freq=False)

def test_closed_is_judged_by_the_exchange_clock_not_ours(q2):
    # The machine's clock is years ahead of the fake's; with a further 40 min of skew, our clock would call 12:00 closed.
    with FakeBinance(q2, now='2022-05-09 12:30', skew=0) as fake:
        ex = exchange(fake, resync_every=0)
        fake.skew = -40 * 60                                   # the exchange now reads 11:50
        assert ex.closed_candles('BTC/USDT', '1h', limit=5).index[-1] == UTC('2022-05-09 10:00')

BACKOFF = ['timeout', '500', '503', '1007', 'drop', 'malformed']

@pytest.mark.parametrize('fault', BACKOFF + ['429', '418', 'skew'])
def test_each_fault_is_retried_as_the_policy_says(q2, fault):
    with FakeBinance(q2, now='2022-05-09 12:30', retry_after=0, slow=0.5) as fake:
        ex = exchange(fake, timeout=0.3)
        clean = ex.new_closed_candles('BTC/USDT', '1h', after='2022-05-08').candles
        ex.events.clear()
        fake.inject(fault)
        got = ex.new_closed_candles('BTC/USDT', '1h', after='2022-05-08').candles
    pd.testing.assert_frame_equal(got, clean)
    expect = {'429': ['pause'], '418': ['pause'], 'skew': ['resync']}.get(fault, ['retry'])
    assert kinds(ex) == expect

def test_persistent_failures_give_up_in_one_line(q2):
    with FakeBinance(q2, now='2022-05-09 12:30') as fake:
        ex = exchange(fake, retries=3)
        ex.markets(); ex.sync_clock()
        fake.inject('500', '503', '500')
        with pytest.raises(ExchangeFailed) as e: ex.closed_candles('BTC/USDT', '1h')
        assert len(fake.calls()) == 3
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('binance BTC/USDT 1h candles: gave up after 3 attempts (ExchangeNotAvailable')
    assert [ev['wait'] for ev in ex.events if ev['kind'] == 'retry'] == [0.001, 0.002]   # exponential backoff

def test_a_pause_honours_retry_after_and_holds_back_every_request(q2):
    with FakeBinance(q2, now='2022-05-09 12:30', retry_after=1) as fake:
        ex = exchange(fake, retries=1)
        ex.markets(); ex.sync_clock()
        fake.inject('429')
        t0 = time.monotonic()
        with pytest.raises(ExchangeFailed, match='DDoSProtection'): ex.closed_candles('BTC/USDT', '1h')
        assert time.monotonic() - t0 < 0.5                    # refused at once: out of attempts
        ex.call(ex.client.fetch_time, what='time')              # a different request still waits out the pause
        waited = time.monotonic() - t0
        assert 1.0 <= waited < 2.0
        pauses = [e for e in ex.events if e['kind'] == 'pause']
        assert len(pauses) == 1 and pauses[0]['wait'] == 1.0

def test_a_long_ban_is_an_error_and_nothing_is_sent(q2):
    with FakeBinance(q2, now='2022-05-09 12:30', retry_after=3600) as fake:
        ex = exchange(fake, max_pause=60)
        ex.markets()
        fake.inject('418', path='/api/v3/time')
        with pytest.raises(ExchangeBanned, match='asked to stay away 3600 s'): ex.sync_clock()
        n = len(fake.requests)
        with pytest.raises(ExchangeBanned): ex.closed_candles('BTC/USDT', '1h')
        assert len(fake.requests) == n

def test_refused_errors_are_not_retried(q2):
    with FakeBinance(q2, now='2022-05-09 12:30') as fake:
        ex = exchange(fake)
        ex.markets()
        with pytest.raises(ExchangeFailed, match='BadSymbol'): ex.call(ex.client.fetch_ohlcv, 'DOGE/USDT', '1h', what='klines')
        fake.api_key = 'revoked'
        with pytest.raises(ExchangeFailed, match='AuthenticationError') as e: ex.balance()
        assert len([r for r in fake.requests if r[1] == '/api/v3/account']) == 1
        assert 'test-secret' not in str(e.value)
    assert kinds(ex) == []

def test_a_clock_error_resyncs_once(q2):
    with FakeBinance(q2, now='2022-05-09 12:30') as fake:
        ex = exchange(fake, resync_every=3600)
        ex.markets(); ex.sync_clock()
        fake.skew = -5                                          # the exchange's clock jumps back: our signed requests are 'ahead'
        assert ex.balance()['USDT']['total'] == 10_000.0
        assert kinds(ex) == ['resync']
        fake.inject('skew', 'skew', path='/api/v3/account')
        with pytest.raises(ExchangeFailed, match='still refuses our clock'): ex.balance()

@pytest.mark.parametrize('fault, outcome', [('timeout', OrderOutcomeUnknown), ('500', OrderOutcomeUnknown), ('503', OrderOutcomeUnknown),
                                            ('1007', OrderOutcomeUnknown), ('drop', OrderOutcomeUnknown), ('malformed', OrderOutcomeUnknown),
                                            ('429', OrderRejected), ('418', OrderRejected), ('skew', OrderRejected)])
def test_create_order_is_never_retried(q2, fault, outcome):
    with FakeBinance(q2, now='2022-05-09 12:30', retry_after=0, slow=0.5) as fake:
        ex = exchange(fake, timeout=0.3)
        ex.markets(); ex.sync_clock()
        fake.inject(fault, path='/api/v3/order')
        with pytest.raises(outcome) as e: ex.create_order('BTC/USDT', 'buy', 0.01, f'id-{fault}')
        time.sleep(0.3 if fault == 'timeout' else 0)
        posts = [q for m, p, q in fake.requests if m == 'POST']
        assert len(posts) == 1 and posts[0]['newClientOrderId'] == f'id-{fault}'
        found = ex.fetch_order(f'id-{fault}', 'BTC/USDT')
    assert '\n' not in str(e.value)
    # only the lost-reply fault lets the order through; the others never reached the book, and none was sent twice
    assert (found is not None) == (fault == 'timeout')
    assert ('unknown' if outcome is OrderOutcomeUnknown else 'rejected') in kinds(ex)

def test_orders_fill_and_are_found_by_client_id(q2):
    with FakeBinance(q2, now='2022-05-09 12:30', balances={'USDT': 1000.0}) as fake:
        ex = exchange(fake)
        o = ex.create_order('ETH/USDT', 'buy', 0.1, 'b1-eth-2022050911-buy')
        assert (o['status'], o['filled'], o['average']) == ('closed', 0.1, q2[('ETHUSDT', '1h')].close['2022-05-09 11:00'])
        assert ex.fetch_order('b1-eth-2022050911-buy', 'ETH/USDT')['status'] == 'closed'
        assert len(ex.my_trades('ETH/USDT')) == 1
        with pytest.raises(OrderRejected, match='InsufficientFunds'): ex.create_order('ETH/USDT', 'buy', 10, 'too-big')
        with pytest.raises(OrderRejected, match='NOTIONAL'): ex.create_order('ETH/USDT', 'buy', 0.001, 'too-small')
        assert ex.balance()['ETH']['total'] == pytest.approx(0.1 * 0.999)

def test_no_network_fails_fast_with_one_line():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]   # closed once the block ends
    ex = Exchange(connect(urls=f'http://127.0.0.1:{port}', timeout=1), retries=5, delay=0.01)
    t0 = time.monotonic()
    with pytest.raises(ExchangeFailed) as e: ex.new_closed_candles('BTC/USDT', '1h', after='2022-05-09')
    assert time.monotonic() - t0 < 2
    msg = str(e.value)
    assert '\n' not in msg and 'cannot reach the exchange (no network?)' in msg

def test_a_gap_is_reported_not_filled_and_a_late_candle_comes_next_poll(q2):
    with FakeBinance(q2, now='2022-05-09 12:30', max_limit=7) as fake:
        ex = exchange(fake)
        fake.missing |= {'2022-05-09 02:00', '2022-05-09 03:00', '2022-05-08 20:00'}
        p = ex.new_closed_candles('BTC/USDT', '1h', after='2022-05-08 12:00')
        assert p.gaps == [(UTC('2022-05-08 20:00'), 1), (UTC('2022-05-09 02:00'), 2)]
        assert len(p.candles) == 23 - 3 and p.candles.index.is_monotonic_increasing and p.late == 0
        assert [e['kind'] for e in ex.events if e['kind'] in ('gap', 'late')] == ['gap', 'gap']
        fake.missing.clear()
        fake.inject('late', 'late')
        p = ex.new_closed_candles('BTC/USDT', '1h', after='2022-05-09 05:00')
        assert (p.candles.index[-1], p.late) == (UTC('2022-05-09 10:00'), 1)
        p = ex.new_closed_candles('BTC/USDT', '1h', after='2022-05-09 10:00')
        assert (list(p.candles.index), p.late) == ([UTC('2022-05-09 11:00')], 0)

def test_the_feed_sees_each_candle_once_as_the_clock_moves(q2):
    with FakeBinance(q2, now='2022-05-09 12:30') as fake:
        ex = exchange(fake, resync_every=0)
        held, seen = UTC('2022-05-09 11:00'), []
        for now in ['2022-05-09 12:59:59.5', '2022-05-09 13:00:00.2', '2022-05-09 13:20', '2022-05-09 15:05']:
            fake.set_now(now)
            p = ex.new_closed_candles('BTC/USDT', '1h', after=held)
            seen += list(p.candles.index)
            if len(p.candles): held = p.candles.index[-1]
    assert seen == [UTC('2022-05-09 12:00'), UTC('2022-05-09 13:00'), UTC('2022-05-09 14:00')]

@pytest.mark.slow
def test_hundreds_of_random_faults_end_where_a_fault_free_run_ends(q2):
    rng = random.Random(11)
    plan = [rng.choice(FAULTS) if rng.random() < 0.45 else None for _ in range(600)]
    n_faults = sum(f is not None for f in plan)
    assert n_faults >= 200
    with FakeBinance(q2, now='2022-05-09 12:30', max_limit=60, retry_after=0, slow=0.25) as fake:
        ex = exchange(fake, timeout=0.15, retries=4)
        truth = ex.new_closed_candles('BTC/USDT', '1h', since='2022-04-20').candles
        assert len(truth) == 19 * 24 + 12 and truth.index[-1] == UTC('2022-05-09 11:00')
        fake.inject(*plan, path='*')
        walks = gave_up = 0
        while fake.pending_faults():
            held, parts = None, []
            while held is None or held < truth.index[-1]:   # a feed polling until it has caught up
                try: p = ex.new_closed_candles('BTC/USDT', '1h', since='2022-04-20', after=held)
                except ExchangeFailed: gave_up += 1; continue
                assert p.gaps == []                         # a transient fault never looks like a gap in the exchange's data
                if len(p.candles): parts.append(p.candles); held = p.candles.index[-1]
            pd.testing.assert_frame_equal(pd.concat(parts), truth)   # every candle once, checked, in order, equal to the real ones
            walks += 1
    served = [f for p, f in fake.served_faults if f is not None]
    assert len(served) >= 200 and walks >= 5
    assert set(served) == set(FAULTS)
    assert {'retry', 'pause', 'resync'} <= {e['kind'] for e in ex.events}
