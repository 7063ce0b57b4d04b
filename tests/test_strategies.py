"The strategy library on real data: registry, causality (no lookahead), parameter checks, and `tbot strategies`."
import json, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
from tbot.config import TbotError
from tbot.data import read_candle_file
from tbot.strategies import STRATEGIES, FAMILIES, Param, Signals, get_strategy, pair_frame, strategy

TBOT = Path(sys.executable).parent / 'tbot'

@pytest.fixture(scope='module')
def frames(shared):
    btc = read_candle_file(shared / 'BTC_USDT-1h.feather')['2021-06-01':'2022-06-30']
    eth = read_candle_file(shared / 'ETH_USDT-1h.feather')['2021-06-01':'2022-06-30']
    b5 = read_candle_file(shared / 'BTC_USDT-5m.feather')['2023-05-01':'2023-06-15']
    return {'1h': btc, '5m': b5, 'spread': pair_frame(eth, btc), 'a': pair_frame(eth, btc, 'a')}

def _data(s, frames):
    if s.family == 'stat_arb': return frames['spread' if s.name.endswith('_ls') else 'a']
    return frames['5m'] if s.family == 'scalping' else frames['1h']

def test_registry_covers_every_family():
    assert {s.family for s in STRATEGIES.values()} == set(FAMILIES)
    for name in ['ema_cross', 'momentum', 'rsi_reversion', 'bollinger_reversion', 'donchian_breakout', 'defensive',
                 'scalp_micro_trend', 'scalp_range_zscore', 'pair_zscore', 'pair_zscore_ls', 'vol_target']:
        s = STRATEGIES[name]
        assert s.check() == s.defaults()
        for k, p in s.params.items(): assert p.low <= p.default <= p.high, (name, k)

@pytest.mark.parametrize('name', sorted(STRATEGIES))
def test_no_lookahead(name, frames):
    "The exposure decided on a bar never changes when later bars are added (or altered)."
    s = get_strategy(name)
    df = _data(s, frames)
    full = s.exposure(df)
    assert full.between(-1, 1).all() and full.index.equals(df.index)
    assert (full != 0).any(), f"{name} never takes a position on real data with its defaults"
    cut = len(df) * 2 // 3
    head = s.exposure(df.iloc[:cut])
    pd.testing.assert_series_equal(head, full.iloc[:cut])
    future = df.copy(); future.iloc[cut:, :4] *= 1.5  # a different future
    pd.testing.assert_series_equal(s.exposure(future).iloc[:cut], head)

def test_bad_parameters(frames):
    s = get_strategy('ema_cross')
    with pytest.raises(TbotError, match="unknown parameter 'fats'"): s.signals(frames['1h'], fats=3)
    with pytest.raises(TbotError, match='out of range'): s.signals(frames['1h'], slow=1)
    with pytest.raises(TbotError, match='whole number'): s.signals(frames['1h'], fast=2.5)
    with pytest.raises(TbotError, match=r"fast=nan is not finite"): s.signals(frames['1h'], fast=float('nan'))
    with pytest.raises(TbotError, match=r"fast=inf is not finite"): s.signals(frames['1h'], fast=float('inf'))
    with pytest.raises(TbotError, match=r"slow='abc' is not a number"): s.signals(frames['1h'], slow='abc')
    with pytest.raises(TbotError, match=r"slow=\[5\] is not a number"): s.signals(frames['1h'], slow=[5])
    with pytest.raises(TbotError, match='too little data'): s.signals(frames['1h'].iloc[:100], slow=200)
    with pytest.raises(TbotError, match="unknown strategy"): get_strategy('ema_crossover')
    with pytest.raises(TbotError, match='missing prices'):
        bad = frames['1h'].copy(); bad.iloc[500, 3] = np.nan; s.signals(bad)

def test_user_strategy_registers_and_runs(frames):
    @strategy('test_close_above_open', 'trend', warmup=lambda p: 1, n=Param(1, 1, 10))
    def up(df, n):
        "Long after a green bar."
        g = df.close > df.open
        return Signals(entries=g, exits=~g)
    try:
        assert STRATEGIES['test_close_above_open'].exposure(frames['1h']).mean() > 0.3
        with pytest.raises(TbotError, match='already registered'):
            strategy('test_close_above_open', 'trend', warmup=lambda p: 1)(up.fn)
    finally: del STRATEGIES['test_close_above_open']

def test_cli_strategies_lists_params():
    out = subprocess.run([str(TBOT), 'strategies', '--json'], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {r['name']: r for r in json.loads(out.stdout)}
    assert rows['ema_cross']['params']['fast'] == {'default': 12, 'low': 2, 'high': 500, 'doc': 'fast EMA span'}
    human = subprocess.run([str(TBOT), 'strategies', '--family', 'stat_arb'], capture_output=True, text=True, timeout=120)
    assert human.returncode == 0 and 'pair_zscore_ls' in human.stdout and 'ema_cross' not in human.stdout

@pytest.mark.parametrize('args', [['--family', 'nope'], ['--bogus'], ['extra']])
def test_cli_strategies_bad_input_is_one_line(args):
    out = subprocess.run([str(TBOT), 'strategies', *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1 and 'error' in out.stderr and out.stdout == '', out.stderr
