"""Benchmark: backtests and sweeps of the EMA crossover on BTC/USDT 1h (73,265 bars).  Prints figures; asserts nothing about time.

References measured in the same run:
  (a) one warm backtest with stats   vs backtesting.py (FractionalBacktest, same strategy, fees and fills)
  (b) a sweep of 1,500 fast/slow combinations   vs vectorbt used naively (Portfolio.from_signals + .stats() per combination)
                                                 and a hand-written numba loop with fees (final equity only, both cores)
  peak RSS of the process during the sweep."""
import resource, time, warnings
from pathlib import Path
import numpy as np
from numba import njit, prange
from tbot.data import read_candle_file
from tbot import indicators as ind
from tbot.backtest import backtest
from tbot.sweep import sweep

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'binance'
btc = read_candle_file(SHARED / 'BTC_USDT-1h.feather')
FEES, SLIP = 0.001, 0.0005
GRID = {'fast': list(range(2, 62, 2)), 'slow': list(range(20, 520, 10))}  # 30 x 50 = 1,500
COMBOS = [(f, s) for f in GRID['fast'] for s in GRID['slow']]

def best(fn, n=7):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)

def rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

# ---- (a) one warm backtest with stats
backtest(btc, 'ema_cross')
ours_a = best(lambda: backtest(btc, 'ema_cross', {'fast': 12, 'slow': 26}, fees=FEES, slippage=SLIP).stats, 15)

from backtesting import Strategy
from backtesting.lib import FractionalBacktest
class EmaCross(Strategy):
    def init(self):
        self.f = self.I(lambda x: ind.ema(np.asarray(x, dtype='float64'), 12), self.data.Close)
        self.s = self.I(lambda x: ind.ema(np.asarray(x, dtype='float64'), 26), self.data.Close)
    def next(self):
        f, s = self.f, self.s
        if not self.position and f[-1] > s[-1] and f[-2] <= s[-2]: self.buy()
        elif self.position and f[-1] < s[-1] and f[-2] >= s[-2]: self.position.close()
data = btc.rename(columns=str.capitalize); data.index = data.index.tz_localize(None)
def run_bt():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return FractionalBacktest(data, EmaCross, cash=1000, commission=FEES, fractional_unit=1e-12).run()
run_bt()
ref_a = best(run_bt, 3)

# ---- (b) sweep of 1,500 combinations
rss_before = rss_mb()
sweep(btc.iloc[:5000], 'ema_cross', {'fast': [5, 10], 'slow': [20, 40]}, progress=False)  # load the cached kernels
t = time.perf_counter(); table = sweep(btc, 'ema_cross', GRID, fees=FEES, slippage=SLIP, progress=False); ours_b = time.perf_counter() - t
t = time.perf_counter(); sweep(btc, 'ema_cross', GRID, fees=FEES, slippage=SLIP, progress=False); ours_b = min(ours_b, time.perf_counter() - t)
rss_sweep = rss_mb()

import vectorbt as vbt
O, C = btc.open.to_numpy(), btc.close.to_numpy()
def naive(k=8):
    for f, s in COMBOS[:k]:
        ef, es = ind.ema(C, f), ind.ema(C, s)
        with np.errstate(invalid='ignore'):
            en = np.r_[False, (ef[1:] > es[1:]) & (ef[:-1] <= es[:-1])]; ex = np.r_[False, (ef[1:] < es[1:]) & (ef[:-1] >= es[:-1])]
        pf = vbt.Portfolio.from_signals(C, np.r_[False, en[:-1]], np.r_[False, ex[:-1]], price=O, fees=FEES, slippage=SLIP, init_cash=1000, freq='1h')
        pf.stats()
naive(1)
ref_naive = best(lambda: naive(8), 2) / 8 * len(COMBOS)

@njit(cache=True, parallel=True)
def hand_loop(open_, close, lines, fi, si, fees, slip):
    "The practical floor: crossover, next-open fills with fees and slippage, final equity only."
    out = np.empty(len(fi))
    for j in prange(len(fi)):
        f = lines[:, fi[j]]; s = lines[:, si[j]]
        cash = 1000.0; pos = 0.0
        for i in range(2, len(close)):
            if pos == 0.0:
                if f[i-1] > s[i-1] and f[i-2] <= s[i-2]:
                    pos = cash / (1 + fees) / (open_[i] * (1 + slip)); cash = 0.0
            elif f[i-1] < s[i-1] and f[i-2] >= s[i-2]:
                cash = pos * open_[i] * (1 - slip) * (1 - fees); pos = 0.0
        out[j] = cash + pos * close[-1]
    return out
def hand():
    spans = sorted(set(GRID['fast']) | set(GRID['slow'])); at = {w: i for i, w in enumerate(spans)}
    lines = np.empty((len(C), len(spans)), order='F')
    for i, w in enumerate(spans): lines[:, i] = ind.ema(C, w)
    return hand_loop(O, C, lines, np.array([at[f] for f, _ in COMBOS]), np.array([at[s] for _, s in COMBOS]), FEES, SLIP)
hand()
ref_hand = best(hand, 3)
check = hand()
row = table[(table.fast == 12) & (table.slow == 100)].iloc[0]
assert abs(check[COMBOS.index((12, 100))] / row.final_equity - 1) < 1e-9, "the hand loop and the sweep disagree"

n = len(COMBOS)
print(f"BTC/USDT 1h, {len(btc):,} bars, EMA crossover, fees {FEES:.2%}, slippage {SLIP:.2%}, next-open fills")
print(f"(a) one warm backtest with stats:  {ours_a*1e3:8.1f} ms   backtesting.py: {ref_a*1e3:8.1f} ms   ({ref_a/ours_a:.0f}x faster)")
print(f"(b) sweep of {n:,} combinations:   {n/ours_b:8.0f} combos/s ({ours_b:.2f} s)")
print(f"    vectorbt used naively:          {n/ref_naive:8.1f} combos/s   (sweep is {ref_naive/ours_b:.0f}x faster)")
print(f"    hand-written numba loop:        {n/ref_hand:8.0f} combos/s   (final equity only; sweep at {ref_hand/ours_b:.2f}x of it)")
print(f"peak RSS: {rss_before:.0f} MB before the sweep, {rss_sweep:.0f} MB after it (bound 1.5 GiB)")
