"""Benchmark: the live trader (tbot.broker.LiveBroker) on the fake Binance (ccxt's own binance class over HTTP on 127.0.0.1), BTC+ETH 1h,
the default agent, no faults, filling at the paper model's price.  Prints figures; asserts nothing about time.  Writes only in a temp dir.

  (1) time from a bar's close to its orders acknowledged: `Trader.process(upto)` called as the bar closes, to the last order's answer
      recorded in the ledger (bars that sent orders), median and p99; beside it the bar's plan (tbot.timeframes.plan) as the reference,
      and bars without orders (reconcile + mark + commit).
  (2) a forced rebalance every bar (targets flip between 0.45/0.45 and 0/0) through the same broker path, for many more samples.
  (3) requests per bar and their Binance request weight against the 6,000-per-minute budget (all of a bar's requests fall within
      the minute after its close)."""
import atexit, os, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data' / 'binance'
TMP = Path(tempfile.mkdtemp(prefix='tbot-bench-live-'))
atexit.register(shutil.rmtree, TMP, True)
os.environ['TBOT_DATA_DIR'] = str(TMP / 'data')
sys.path.insert(0, str(ROOT / 'tests'))

from fake_binance import FakeBinance, shared_candles
import tbot.timeframes, tbot.trader
from tbot.agent import load_policy
from tbot.broker import LiveBroker
from tbot.data import Series, read_candle_file, write_series
from tbot.exchange import Exchange, connect
from tbot.feed import ReplayFeed
from tbot.trader import Trader, account_config, trading_keys

# Binance spot request weights (rest-api.md, 2026-07) of what the live loop calls
WEIGHT = {('GET', '/api/v3/klines'): 2, ('GET', '/api/v3/account'): 20, ('GET', '/api/v3/openOrders'): 6, ('GET', '/api/v3/myTrades'): 20,
          ('GET', '/api/v3/time'): 1, ('POST', '/api/v3/order'): 1, ('GET', '/api/v3/order'): 4, ('DELETE', '/api/v3/order'): 1,
          ('GET', '/api/v3/exchangeInfo'): 20, ('GET', '/api/v3/ping'): 1}
BUDGET = 6000   # REQUEST_WEIGHT per minute

START, END = '2022-04-01', '2022-04-14'
for s in ('BTC/USDT', 'ETH/USDT'):
    write_series(read_candle_file(SHARED / f"{s.replace('/', '_')}-1h.feather").loc['2022-02-01':'2022-05-31'], Series('binance', s, '1h'))
POL = load_policy(); KEYS = trading_keys(POL, '1h', False)

plan_s = []
_plan = tbot.trader.plan
def timed_plan(*a, **k):
    t = time.perf_counter(); out = _plan(*a, **k); plan_s.append(time.perf_counter() - t); return out
tbot.trader.plan = timed_plan

def q(x, p): return float(np.percentile(x, p)) * 1000 if len(x) else float('nan')

with FakeBinance(shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-03-25', '2022-05-05'), balances={'USDT': 1000.0}, fee_asset='quote', slippage=0.0005) as fake:
    ex = Exchange(connect(urls=fake.url, timeout=2, rateLimit=1, apiKey='test-key', secret='test-secret', credentials=False), retries=3, delay=0.01)
    broker = LiveBroker(ex)
    acks = []
    _submit = broker.submit
    def timed_submit(*a, **k):
        out = _submit(*a, **k); acks.append(time.perf_counter()); return out
    broker.submit = timed_submit
    clock = [0.0]
    feed = ReplayFeed(KEYS, START, END, speed=1.0, monotonic=lambda: clock[0])
    cfg = account_config('live', POL, '1h', False, 1000, START, {'start': START, 'end': END})
    tr = Trader(feed, cfg, TMP / 'live.sqlite', POL, broker=broker)
    fake.set_now(pd.Timestamp(START, tz='UTC') + pd.Timedelta(seconds=1)); tr.open()
    with_orders, without, reqs, weights = [], [], [], []
    while not feed.done:
        clock[0] += 3600; upto = feed.update()
        fake.set_now(upto + pd.Timedelta(seconds=1))
        n0, a0, p0 = len(fake.requests), len(acks), len(plan_s)
        t0 = time.perf_counter(); tr.process(upto); t1 = time.perf_counter()
        new = fake.requests[n0:]
        reqs.append(len(new)); weights.append(sum(WEIGHT.get((m, p), 1) for m, p, _ in new))
        if len(acks) > a0: with_orders.append(acks[-1] - t0)
        else: without.append(t1 - t0)
    # (2) a forced rebalance on every bar: the broker's own path (price now, plan, send, record), targets flipping
    forced, freqs, fweights = [], [], []
    b = tr._batch(feed.complete) or None
    for i in range(120):
        target = np.array([0.45, 0.45]) if i % 2 == 0 else np.array([0.0, 0.0])
        n0 = len(fake.requests)
        t0 = time.perf_counter()
        diffs = broker.reconcile(tr)
        prices = np.array([broker.price_now(s) for s in tr.symbols])
        orders, dust = broker.plan_rebalance(tr, target, f'2030-01-01T{i // 60:02d}:{i % 60:02d}:00.000000Z', 21915, prices)
        for o in orders: broker.submit(tr, o['symbol'], o['side'], o['amount'], o['price'], f'2030-01-01T{i // 60:02d}:{i % 60:02d}:00.000000Z', 'rebalance')
        if orders: forced.append(time.perf_counter() - t0)
        new = fake.requests[n0:]
        freqs.append(len(new)); fweights.append(sum(WEIGHT.get((m, p), 1) for m, p, _ in new))
        assert not diffs, diffs
    tr.close()

print(f"live trader on the fake Binance, {START} to {END} ({len(reqs)} bars, BTC+ETH 1h, default agent; no faults; fills at the paper model's price)")
print(f"(1) bar close -> orders acknowledged, bars with orders (n={len(with_orders)}): median {q(with_orders, 50):.0f} ms, p99 {q(with_orders, 99):.0f} ms")
print(f"    bars without orders (n={len(without)}): median {q(without, 50):.0f} ms, p99 {q(without, 99):.0f} ms")
print(f"    reference: the plan per bar, median {q(plan_s, 50):.0f} ms = {np.median(plan_s) / np.median(with_orders or [np.nan]):.0%} of a bar with orders")
print(f"(2) forced rebalance every bar (reconcile + price + plan + send + record; n={len(forced)}): median {q(forced, 50):.0f} ms, p99 {q(forced, 99):.0f} ms")
print(f"(3) requests per bar: median {np.median(reqs):.0f}, max {max(reqs)}; request weight per bar: median {np.median(weights):.0f}, max {max(weights)} "
      f"= {max(weights) / BUDGET:.1%} of Binance's {BUDGET}/minute budget at worst")
print(f"    forced rebalance: requests per bar median {np.median(freqs):.0f}, weight median {np.median(fweights):.0f}, max {max(fweights)} = {max(fweights) / BUDGET:.1%} of the budget")
