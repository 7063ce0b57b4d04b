"""The live trader over a replayed month (April 2022) on the fake Binance, with more than 1,000 injected faults: lost answers,
503 with -1007 (placed or not), not-found right after placing, partial fills, LOT_SIZE and NOTIONAL rejections, -1021 clock skew,
418 and 429 with Retry-After, 500s, dropped connections and timeouts on every endpoint; then a balance changed behind tbot's back.
Across all of them: no order sent twice, no fill lost, no crash, the ledger's balance equals the exchange's, and every halt is
explained."""
import collections, os, random, re
from pathlib import Path
import pandas as pd
import pytest
from fake_binance import FakeBinance, shared_candles
from tbot.broker import LiveBroker
from tbot.config import TbotError
from tbot.exchange import Exchange, connect

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]   # ~10 min on a quiet machine: 720 bars, each planned on the history so far

SEED, MONTH = 20260430, ('2022-04-01', '2022-04-30')
READS = ['/api/v3/klines', '/api/v3/account', '/api/v3/openOrders', '/api/v3/myTrades', '/api/v3/time']
READ_FAULTS = ['429', '418', '500', '503', '1007', 'skew', 'drop', 'timeout', 'malformed']
SEND_FAULTS = ['timeout', 'accepted_1007', '503_1007', 'partial', 'partial', 'lot_size', 'notional', 'skew', '418', '500', 'drop', 'notfound']  # one queue: POST and GET /api/v3/order

def run_month(tmp:Path, fake:FakeBinance, rng:random.Random, halts:list, before_last):
    from tbot.agent import load_policy
    from tbot.data import Series, read_candle_file, write_series
    from tbot.feed import ReplayFeed
    from tbot.trader import Trader, account_config, trading_keys
    for sym in ('BTC/USDT', 'ETH/USDT'):
        write_series(read_candle_file(Path(__file__).parents[2] / 'shared' / 'data' / 'binance' / f"{sym.replace('/', '_')}-1h.feather").loc['2022-02-01':'2022-05-31'],
                     Series('binance', sym, '1h'))
    pol = load_policy(); keys = trading_keys(pol, '1h', False)
    cfg = account_config('live', pol, '1h', False, 1000, MONTH[0], {'start': MONTH[0], 'end': MONTH[1]})
    ex = Exchange(connect(urls=fake.url, timeout=0.25, rateLimit=1, apiKey='test-key', secret='test-secret', credentials=False), retries=4, delay=0.01)
    clock = [0.0]
    feed = ReplayFeed(keys, *MONTH, speed=1.0, monotonic=lambda: clock[0])
    broker = LiveBroker(ex, recv_window=300, settle_wait=0.15, max_unknown=3)
    tr = Trader(feed, cfg, tmp / 'live.sqlite', pol, broker=broker)
    fake.set_now(pd.Timestamp(MONTH[0], tz='UTC') + pd.Timedelta(seconds=1)); tr.open()
    while not feed.done:
        clock[0] += 3600; upto = feed.update()
        fake.set_now(upto + pd.Timedelta(seconds=1))
        for p in READS:   # at most one fault queued per endpoint: the retry policy gets past each one
            if rng.random() < 0.3 and not fake._queues.get(p): fake.inject(rng.choice(READ_FAULTS), path=p)
        if rng.random() < 0.8 and not fake._queues.get('/api/v3/order'): fake.inject(rng.choice(SEND_FAULTS), path='/api/v3/order')
        if upto >= feed.last: before_last(tr); tr.process(upto); break
        tr.process(upto)
        if broker.halted:   # explained, then lifted by a human; a disagreement would be a lost or invented fill: never expected here
            halts.append((upto, broker.halted))
            assert 'unknown outcome' in broker.halted and 'disagree' not in broker.halted, broker.halted
            broker.resume(tr, 'the fault test')
    return tr

def check_month(tr, fake, halts):
    "Before the last bar: what a month of faults must leave."
    con = tr.con
    faults = collections.Counter(f for _, f in fake.served_faults)
    posts = [q['newClientOrderId'] for m, p, q in fake.requests if m == 'POST' and p == '/api/v3/order']
    states = collections.Counter(s for (s,) in con.execute('SELECT state FROM live_orders'))
    print(f"\n{len(fake.served_faults)} faults served: {dict(faults)}\n{len(posts)} sends; order states {dict(states)}; halts {len(halts)}")
    assert len(fake.served_faults) >= 1000
    assert faults['timeout'] and faults['accepted_1007'] and faults['503_1007'] and faults['partial'] and faults['lot_size'] and faults['notional']
    # no duplicate order: each client id sent once, and the exchange holds at most one order per client id
    assert len(posts) == len(set(posts)) > 20
    ids = [o['clientOrderId'] for o in fake.orders.values()]
    assert len(ids) == len(set(ids))
    # nothing left unknown; every order the exchange has is in the ledger, with exactly the amount it filled
    assert states['unknown'] == states['sending'] == states['planned'] == 0
    ledger = {r[0]: r[1:] for r in con.execute('SELECT exchange_id, filled, id FROM live_orders WHERE exchange_id IS NOT NULL')}
    filled = collections.Counter()
    for t in fake.trades: filled[str(t['orderId'])] += float(t['qty'])
    for o in fake.orders.values():
        assert str(o['orderId']) in ledger, f"order {o['clientOrderId']} is on the exchange but not in the ledger"
        assert abs(ledger[str(o['orderId'])][0] - filled[str(o['orderId'])]) < 1e-12
    assert con.execute('SELECT COUNT(*) FROM fills').fetchone()[0] == sum(1 for o in fake.orders.values() if float(o['executedQty']) > 0)
    assert states['settled'] > 0 and states['rejected'] > 0 and con.execute("SELECT COUNT(*) FROM live_orders WHERE state = 'expired' AND filled > 0").fetchone()[0] > 0
    # the final balance is the exchange's, asset by asset
    exp = tr.broker.expected(tr)
    for a in ('USDT', 'BTC', 'ETH'): assert abs(exp.get(a, 0.0) - fake.balances.get(a, 0.0)) < 1e-6, (a, exp.get(a), fake.balances.get(a))
    assert tr.broker.reconcile(tr) == []
    # every halt is explained, in the ledger too
    recorded = con.execute("SELECT detail FROM events WHERE kind = 'live_halt'").fetchall()
    assert len(recorded) == len(halts) and all('unknown outcome' in d for (d,) in recorded)

    fake._queues.clear()
    fake.adjust('USDT', -5.0)   # a balance changed behind tbot's back, before the last bar

def test_a_month_of_faults_sends_nothing_twice_loses_no_fill_and_ends_on_the_exchange_balance(tmp_path, monkeypatch):
    monkeypatch.setenv('TBOT_DATA_DIR', str(tmp_path / 'data'))
    rng, halts = random.Random(SEED), []
    with FakeBinance(shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-03-25', '2022-05-05'), balances={'USDT': 1000.0},
                     fee_asset='quote', slippage=0.0005, slow=0.4, retry_after=0) as fake:
        tr = run_month(tmp_path, fake, rng, halts, lambda tr: check_month(tr, fake, halts))   # no crash: the month ran to its end
        # the balance changed behind tbot's back: found at the last bar, named to the cent, trading halted; a restart refuses
        con = tr.con
        assert tr.broker.halted and "USDT: the exchange holds" in tr.broker.halted, tr.broker.halted
        assert abs(float(re.search(r'USDT: .*? \(off by ([-+0-9.]+)\)', tr.broker.halted).group(1)) + 5.0) < 1e-6   # to the cent, and closer
        assert 'disagree' in con.execute("SELECT detail FROM events WHERE kind = 'live_halt' ORDER BY id DESC LIMIT 1").fetchone()[0]
        tr.close()
        with pytest.raises(TbotError, match=r'disagree, not trading: USDT: the exchange holds .*\(off by -(5\.0000|4\.9999)'): tr.open()

