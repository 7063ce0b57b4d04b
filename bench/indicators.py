"""Benchmark: tbot.indicators on the 73k-bar BTC/USDT 1h series.  Prints figures; asserts nothing about time.

References in the same run: TA-Lib (C) where it has the indicator, and the plain pandas equivalent."""
import time
from pathlib import Path
import numpy as np, pandas as pd
from tbot import indicators as ind
from tbot.data import read_candle_file

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'binance'
btc = read_candle_file(SHARED / 'BTC_USDT-1h.feather')
c, h, l = btc.close, btc.high, btc.low

def best(fn, n=7):
    fn(); ts = []  # the first call pays numba's (cached) load
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)

try: import talib
except ImportError: talib = None
ca, ha, la = c.to_numpy(), h.to_numpy(), l.to_numpy()

def pd_rsi(x, n=14):
    d = x.diff(); g = d.clip(lower=0).ewm(alpha=1/n, adjust=False).mean(); s = (-d.clip(upper=0)).ewm(alpha=1/n, adjust=False).mean()
    return 100 * g / (g + s)
def pd_atr(n=14):
    tr = pd.concat([h - l, (h - c.shift()).abs(), (l - c.shift()).abs()], axis=1).max(axis=1)
    return tr.ewm(alpha=1/n, adjust=False).mean()

rows = [
    ('ema(close, 50)', lambda: ind.ema(c, 50), lambda: talib.EMA(ca, 50), lambda: c.ewm(span=50, adjust=False).mean()),
    ('rsi(close, 14)', lambda: ind.rsi(c), lambda: talib.RSI(ca, 14), lambda: pd_rsi(c)),
    ('atr(h, l, c, 14)', lambda: ind.atr(h, l, c), lambda: talib.ATR(ha, la, ca, 14), pd_atr),
    ('bbands(close, 20)', lambda: ind.bbands(c), lambda: talib.BBANDS(ca, 20), lambda: (c.rolling(20).mean(), c.rolling(20).std(ddof=0))),
    ('adx(h, l, c, 14)', lambda: ind.adx(h, l, c), lambda: (talib.ADX(ha, la, ca, 14), talib.PLUS_DI(ha, la, ca, 14), talib.MINUS_DI(ha, la, ca, 14)), None),
    ('macd(close)', lambda: ind.macd(c), lambda: talib.MACD(ca), None),
    ('donchian(h, l, 55)', lambda: ind.donchian(h, l, 55), None, lambda: (h.rolling(55).max(), l.rolling(55).min())),
    ('realized_vol(close, 720)', lambda: ind.realized_vol(c, 720), None, lambda: np.log(c).diff().rolling(720).std()),
]
print(f"{'indicator (73,265 bars)':28s} {'tbot':>9s} {'TA-Lib':>9s} {'pandas':>9s}")
for name, ours, tl, ref in rows:
    t = best(ours); t_tl = best(tl) if tl and talib else float('nan'); t_pd = best(ref) if ref else float('nan')
    print(f"{name:28s} {t*1e3:7.2f}ms {t_tl*1e3:7.2f}ms {t_pd*1e3:7.2f}ms")
windows = list(range(5, 505, 5))
t = best(lambda: ind.ema(c, windows), 3)
t_pd = best(lambda: pd.concat({w: c.ewm(span=w, adjust=False).mean() for w in windows}, axis=1), 3)
print(f"sweep: ema over 100 windows      {t*1e3:7.1f}ms   (pandas ewm loop: {t_pd*1e3:.1f} ms, ratio {t_pd/t:.1f}x)")
