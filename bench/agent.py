"""Benchmark: a whole master-agent backtest on BTC+ETH 1h, 2018-2026 (73k bars x 2 markets), warm.  Prints figures; asserts nothing.

Reference in the same run: vectorbt used naively on the agent's own targets (Portfolio.from_orders, target percent, cash sharing),
which prices the portfolio only, without regimes, strategies, learning or the stop."""
import time
from pathlib import Path
import pandas as pd
import vectorbt as vbt
from tbot.data import read_candle_file
from tbot import agent, portfolio

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'binance'
data = {s: read_candle_file(SHARED / f"{s.replace('/', '_')}-1h.feather") for s in ('BTC/USDT', 'ETH/USDT')}

def best(fn, n=3):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); out = fn(); ts.append(time.perf_counter() - t)
    return min(ts), out

t0 = time.perf_counter(); portfolio.backtest_agent(data); first = time.perf_counter() - t0
t_plan, p = best(lambda: agent.plan(data))
t_bt, r = best(lambda: portfolio.backtest_agent(data, p=p))
t_all, _ = best(lambda: portfolio.backtest_agent(data))
close = pd.DataFrame({s: d['close'] for s, d in data.items()}); opn = pd.DataFrame({s: d['open'] for s, d in data.items()})
size = p.target.shift(1)
t_vbt, pf = best(lambda: vbt.Portfolio.from_orders(close, size=size, size_type='targetpercent', price=opn, fees=0.001, slippage=0.0005,
                                                   group_by=True, cash_sharing=True, call_seq='auto', init_cash=1000, freq='1h').stats())
print(f"whole agent backtest, BTC+ETH 1h 2018-2026 ({len(p.index):,} bars x 2): {t_all:6.2f} s warm (target: 3 s); first call in this process {first:.1f} s")
print(f"  of which the plan (regimes, every candidate, learning, sizing):  {t_plan:6.2f} s")
print(f"  of which the portfolio, trades, attribution and decision log:   {t_bt:6.2f} s")
print(f"vectorbt naive from_orders + stats on the same targets:            {t_vbt:6.2f} s   (ratio agent/vectorbt-portfolio-only {t_all / t_vbt:.1f}x)")

t = time.perf_counter(); wf = portfolio.walk_forward_agent(data); t_wf = time.perf_counter() - t
print(f"walk-forward of the agent, same candles ({len(wf['folds'])} folds, 1y anchored train, 180d tests): {t_wf:6.2f} s "
      f"({t_wf / t_all:.1f}x one whole backtest)")
