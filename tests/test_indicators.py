"""tbot.indicators against TA-Lib (a test-only dependency) on the shared real BTC and ETH 1h series, plus shapes and bad input."""
import numpy as np, pandas as pd, pytest
import talib
from tbot import indicators as ind
from tbot.config import TbotError
from tbot.data import read_candle_file

RTOL = 1e-9

@pytest.fixture(scope='module', params=['BTC', 'ETH'])
def candles(request, shared):
    return read_candle_file(shared / f'{request.param}_USDT-1h.feather')

ZERO_CROSSING = ('MACD', 'ROC')  # oscillate around 0, where a pointwise relative error is meaningless

def rel_err(name, ours, ref, warm):
    """Largest relative difference after warm-up; ours must be NaN before it and nowhere after.
    Series that cross zero are compared relative to their typical size (median |value|) near zero.
    Why they need it: the TA-Lib wheel is built with fused multiply-add, so its EMAs differ from a plain
    `(x - prev) * k + prev` in the last bit (1e-16 relative); MACD subtracts two EMAs of ~1e4, so where it
    crosses zero that last bit is a large fraction of a tiny value."""
    ours, ref = np.asarray(ours, dtype=float), np.asarray(ref, dtype=float)
    assert np.isnan(ours[:warm]).all(), f'{name}: a value before the warm-up ends'
    assert not np.isnan(ours[warm:]).any() and not np.isnan(ref[warm:]).any(), f'{name}: NaN after warm-up'
    a, b = ours[warm:], ref[warm:]
    scale = np.maximum(np.abs(b), np.median(np.abs(b))) if name.startswith(ZERO_CROSSING) else np.abs(b)
    with np.errstate(divide='ignore', invalid='ignore'):
        return float(np.max(np.where(a == b, 0.0, np.abs(a - b) / scale)))  # 0 == 0 is no error

def cases(c):
    o, h, l, cl = (c[k].to_numpy() for k in ('open', 'high', 'low', 'close'))
    out = []
    for n in (5, 20, 200):
        out.append((f'SMA {n}', ind.sma(cl, n), talib.SMA(cl, n), n - 1))
        out.append((f'EMA {n}', ind.ema(cl, n), talib.EMA(cl, n), n - 1))
    for n in (2, 14, 50):
        out.append((f'RSI {n}', ind.rsi(cl, n), talib.RSI(cl, n), n))
        out.append((f'ATR {n}', ind.atr(h, l, cl, n), talib.ATR(h, l, cl, n), n))
        a, p, m = ind.adx(h, l, cl, n)
        out += [(f'ADX {n}', a, talib.ADX(h, l, cl, n), 2 * n - 1),
                (f'PLUS_DI {n}', p, talib.PLUS_DI(h, l, cl, n), n), (f'MINUS_DI {n}', m, talib.MINUS_DI(h, l, cl, n), n)]
    for n, k in ((20, 2.0), (50, 2.5)):
        mid, up, lo, _, _ = ind.bbands(cl, n, k)
        tu, tm, tl = talib.BBANDS(cl, n, k, k, 0)
        out += [(f'BBANDS upper {n}', up, tu, n - 1), (f'BBANDS mid {n}', mid, tm, n - 1), (f'BBANDS lower {n}', lo, tl, n - 1)]
    for f, s, g in ((12, 26, 9), (5, 35, 5)):
        m, sg, hs = ind.macd(cl, f, s, g)
        tm, ts, th = talib.MACD(cl, f, s, g)
        w = s + g - 2
        out += [(f'MACD {f},{s},{g}', np.where(np.arange(len(m)) >= w, m, np.nan), tm, w),
                (f'MACD signal {f},{s},{g}', sg, ts, w), (f'MACD hist {f},{s},{g}', hs, th, w)]
    for n in (1, 24):
        out.append((f'ROCP {n}', ind.roc(cl, n), talib.ROCP(cl, n), n))
        out.append((f'ROC {n}', ind.roc(cl, n) * 100, talib.ROC(cl, n), n))
    return out

def test_every_indicator_matches_talib(candles):
    errors = {name: rel_err(name, ours, ref, warm) for name, ours, ref, warm in cases(candles)}
    bad = {k: v for k, v in errors.items() if not v < RTOL}
    assert not bad, bad
    print('max relative error vs TA-Lib:', max(errors.values()))

def test_macd_line_starts_before_talib_reports_it(candles):
    "Our MACD line is valid from bar slow-1; TA-Lib hides it until the signal exists. Where both exist they agree."
    cl = candles.close.to_numpy()
    m = ind.macd(cl)[0]
    assert np.isnan(m[:25]).all() and not np.isnan(m[25:]).any()
    ref_fast = talib.EMA(cl[14:], 12)  # TA-Lib seeds MACD's fast EMA on bars 14..25
    np.testing.assert_allclose(m[25:60], (ref_fast[11:] - talib.EMA(cl, 26)[25:])[:35], rtol=1e-12)

def test_indicators_without_talib_equivalent_match_pandas(candles):
    c = candles
    lr = np.log(c.close).diff()
    np.testing.assert_allclose(ind.realized_vol(c.close, 24).iloc[24:], lr.rolling(24).std().iloc[24:], rtol=1e-9)
    np.testing.assert_allclose(ind.realized_vol(c.close, 720).iloc[720:], lr.rolling(720).std().iloc[720:], rtol=1e-9)
    dc = ind.donchian(c.high, c.low, 20)
    assert (dc['upper'].iloc[19:] == c.high.rolling(20).max().iloc[19:]).all()
    assert (dc['lower'].iloc[19:] == c.low.rolling(20).min().iloc[19:]).all()
    ref = (c.volume - c.volume.rolling(48).mean().shift(1)) / c.volume.rolling(48).std().shift(1)
    np.testing.assert_allclose(ind.volume_zscore(c.volume, 48).iloc[49:], ref.iloc[49:], rtol=1e-7, atol=1e-9)
    e = ind.ema(c.close, 100)
    np.testing.assert_allclose(ind.ema_slope(c.close, 100, 6).iloc[105:], np.log(e / e.shift(6)).iloc[105:], rtol=1e-9, atol=1e-15)

def test_bandwidth_and_pct_b_are_exact(candles):
    bb = ind.bbands(candles.close, 20)
    w = np.lib.stride_tricks.sliding_window_view(candles.close.to_numpy(), 20)
    exact_std = w.std(axis=1)  # two-pass population std of every window
    np.testing.assert_allclose(bb['bandwidth'].iloc[19:], 4 * exact_std / w.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(bb['pct_b'].iloc[19:], (candles.close.iloc[19:] - bb['lower'].iloc[19:]) / (4 * exact_std), rtol=1e-7)

def test_causal_prefix_gives_the_same_values(candles):
    "Truncating the input never changes earlier values: no indicator looks ahead."
    c = candles
    cut = 40_000
    full = {'rsi': ind.rsi(c.close), 'atr': ind.atr(c.high, c.low, c.close), 'adx': ind.adx(c.high, c.low, c.close),
            'macd': ind.macd(c.close), 'bb': ind.bbands(c.close), 'dc': ind.donchian(c.high, c.low), 'vz': ind.volume_zscore(c.volume)}
    t = c.iloc[:cut]
    part = {'rsi': ind.rsi(t.close), 'atr': ind.atr(t.high, t.low, t.close), 'adx': ind.adx(t.high, t.low, t.close),
            'macd': ind.macd(t.close), 'bb': ind.bbands(t.close), 'dc': ind.donchian(t.high, t.low), 'vz': ind.volume_zscore(t.volume)}
    for k in full: pd.testing.assert_frame_equal(pd.DataFrame(full[k]).iloc[:cut], pd.DataFrame(part[k]))

def test_grid_of_windows_equals_single_calls(candles):
    g = ind.atr(candles.high, candles.low, candles.close, [7, 14, 28])
    assert g.columns.tolist() == [7, 14, 28]
    pd.testing.assert_series_equal(g[14], ind.atr(candles.high, candles.low, candles.close, 14), check_names=False)
    m = ind.macd(candles.close, fast=[8, 12], slow=[26, 30])
    assert m['hist'].columns.tolist() == [(8, 26), (8, 30), (12, 26), (12, 30)]
    pd.testing.assert_series_equal(m['hist'][(12, 30)], ind.macd(candles.close, 12, 30)['hist'], check_names=False)

def test_bad_input_is_one_clear_error(shared):
    c = read_candle_file(shared / 'BTC_USDT-1h.feather').close
    for call, msg in [(lambda: ind.sma(c, -3), 'n must be'), (lambda: ind.ema(c, 2.5), 'n must be'), (lambda: ind.rsi(c, []), 'empty'),
                      (lambda: ind.atr(c, c, c.iloc[5:]), 'same index'), (lambda: ind.sma(['a', 'b'], 2), 'non-numeric'),
                      (lambda: ind.bbands(c, 20, k=0), 'k must be'), (lambda: ind.macd(c, 30, 20), 'shorter'),
                      (lambda: ind.realized_vol(c, 1), '>= 2')]:
        with pytest.raises(TbotError, match=msg): call()

def test_the_api_runs_the_kernels_of_indicators_nb(candles):
    from tbot import indicators_nb as nb
    c, h, l = (candles[k].to_numpy() for k in ('close', 'high', 'low'))
    np.testing.assert_array_equal(ind.rsi(c, 14), nb.rsi_nb(c, 14)[0])
    np.testing.assert_array_equal(ind.adx(h, l, c, 14)[0], nb.adx_nb(h, l, c, 14)[0])
    assert all(k.endswith('_nb') and getattr(nb, k).__doc__ for k in nb.__all__)  # public kernels, each with a docstring
