"""Benchmark: rules regime detection over the 73k-bar BTC/USDT 1h series (target < 100 ms warm).  Prints figures; asserts nothing.

Reference in the same run: the same rules written in plain pandas (rolling/ewm features, a Python loop for the state machine)."""
import time
from pathlib import Path
import numpy as np, pandas as pd
from tbot import regime
from tbot.data import read_candle_file

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'binance'
btc = read_candle_file(SHARED / 'BTC_USDT-1h.feather')

def best(fn, n=7):
    fn(); ts = []  # the first call loads numba's cache
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)

def pandas_rules(df, p=regime.rules_params()):
    "The same decision in plain pandas + Python (reference only)."
    c = df.close; lc = np.log(c); r = lc.diff()
    rv = lambda n: r.rolling(n).std()
    drifts = [(lc - lc.shift(w)) / (rv(w) * np.sqrt(w)) for w in p['trend_windows']]
    n = p['slow']; e = c.ewm(span=n, adjust=False).mean()
    gap = np.log(c / e) / (rv(n) * np.sqrt(n / 2)); slope = np.log(e / e.shift(48)) / (rv(n) * np.sqrt(48)) * 3
    up, dn = df.high.diff(), -df.low.diff()
    pdm = up.where((up > dn) & (up > 0), 0.0); mdm = dn.where((dn > up) & (dn > 0), 0.0)
    tr = pd.concat([df.high - df.low, (df.high - c.shift()).abs(), (df.low - c.shift()).abs()], axis=1).max(axis=1)
    a = 1 / p['adx_n']; atr_ = tr.ewm(alpha=a, adjust=False).mean()
    di = (100 * pdm.ewm(alpha=a, adjust=False).mean() / atr_ - 100 * mdm.ewm(alpha=a, adjust=False).mean() / atr_) / 10
    T = (sum(drifts) + gap + slope + di) / (len(drifts) + 3)
    lrv = np.log(rv(p['vol_window'])); V = lrv - lrv.ewm(span=p['history'], min_periods=p['min_history']).mean().shift(1)
    lv = np.log(df.volume.ewm(span=p['vol_window']).mean())
    floor = lambda x: x.rolling(p['history'], min_periods=p['min_history']).quantile(p['floor']).shift(1)
    A = ((lrv - floor(lrv)) + (lv - floor(lv))) / 2
    s, age, out = -1, 0, []
    for t_, v_, a_ in zip(T.to_numpy(), V.to_numpy(), A.to_numpy()):
        if np.isnan(t_) or np.isnan(v_) or np.isnan(a_): out.append(-1); continue
        hi = v_ > (p['volatile_exit'] if s == 3 else p['volatile_enter'])
        thr = p['trend_strong'] if hi else (p['trend_active'] if a_ > p['active'] else p['trend_quiet'])
        cand = 0 if t_ > (thr - p['hysteresis'] if s == 0 else thr) else 1 if t_ < -(thr - p['hysteresis'] if s == 1 else thr) else 3 if hi else 2
        if s == -1 or (cand != s and age >= p['min_dwell']): s, age = cand, 0
        else: age += 1
        out.append(s)
    return out

check = np.array(pandas_rules(btc)); mine = regime.detect(btc, 'rules').cat.codes.to_numpy()
print(f"reference agrees with tbot on {np.mean(check == mine):.4%} of bars")

ours = best(lambda: regime.detect(btc, 'rules'))
feats = best(lambda: regime.rules_features(btc, regime.rules_params()))
ref = best(lambda: pandas_rules(btc), 3)
print(f"rules detect, BTC/USDT 1h ({len(btc):,} bars): {ours*1e3:7.1f} ms  (target < 100 ms; of which features {feats*1e3:.1f} ms)")
print(f"plain pandas + Python loop reference:       {ref*1e3:7.1f} ms  ratio {ref/ours:.1f}x")
t = time.perf_counter(); regime.similar_windows(btc, len(btc) - 1, window=168, k=5); print(f"similar_windows(168 bars, k=5) over the full history: {(time.perf_counter()-t)*1e3:.1f} ms (first call)")
print(f"similar_windows warm: {best(lambda: regime.similar_windows(btc, len(btc) - 1, window=168, k=5), 3)*1e3:.1f} ms")
t = time.perf_counter(); regime.detect(btc['2024':], 'hmm'); el = time.perf_counter() - t
print(f"hmm detect, BTC/USDT 1h 2024- ({len(btc['2024':]):,} bars, refit every 720 bars): {el:.1f} s")
