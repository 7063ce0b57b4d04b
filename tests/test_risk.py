"""Risk: the portfolio stop on real and constructed markets, the bar-by-bar loop against the vectorized path, exchange rounding
against ccxt's own code on Binance's recorded markets, and settings."""
import subprocess, sys
import numpy as np, pandas as pd, pytest
from binance_stub import BinanceStub, point_at
from tbot.config import TbotError
from tbot import data, exchange, risk
from tbot.risk import (simulate_exposure, round_order, market_rules, RECORDED_MARKETS, order_for_target,
                       apply_limits)

@pytest.fixture(scope='module')
def btc(shared): return data.read_candle_file(shared / 'BTC_USDT-1h.feather')

@pytest.fixture(scope='module')
def eth(shared): return data.read_candle_file(shared / 'ETH_USDT-1h.feather')

@pytest.fixture(scope='module')
def binance():
    "A ccxt binance exchange whose markets ccxt parsed from the recorded exchangeInfo, served on 127.0.0.1."
    with BinanceStub({}) as stub:
        ex = point_at(exchange.connect('binance', timeout=2, credentials=False), stub.url)
        ex.load_markets()
    return ex

# --- exchange realities ---------------------------------------------------------------------------------------------------

def test_market_rules_read_from_ccxt_equal_the_recorded_ones(binance):
    assert binance.precisionMode == risk.TICK_SIZE
    for sym in ('BTC/USDT', 'ETH/USDT'):
        assert market_rules(binance.markets[sym], binance.precisionMode) == RECORDED_MARKETS[sym]

def test_rounding_agrees_with_ccxt_amount_and_price_to_precision(binance, btc, eth):
    rng = np.random.default_rng(0)
    for sym, prices in (('BTC/USDT', btc.close), ('ETH/USDT', eth.close)):
        m = binance.markets[sym]
        px = prices.sample(1500, random_state=1).to_numpy() * (1 + rng.normal(0, 1e-4, 1500))   # real prices, off the tick
        notional = np.exp(rng.uniform(np.log(1), np.log(50_000), 1500))                         # 1 to 50,000 USDT
        for p, n in zip(px, notional):
            amount = n / p
            if amount < 10 * m['precision']['amount']: continue  # ccxt refuses amounts that truncate to nothing
            o = round_order(m, 'buy', amount, p, 'limit')
            assert o.amount == float(binance.amount_to_precision(sym, amount)), (sym, amount)
            assert o.price == float(binance.price_to_precision(sym, p)), (sym, p)
            assert o.ok == (o.amount * o.price >= 5.0 and o.amount <= 9000), (o, n)

def test_orders_below_minimum_are_refused_with_a_reason_and_bad_orders_are_errors(binance):
    m = binance.markets['ETH/USDT']
    o = order_for_target(m, equity=1000., held=0.0, target=0.004, price=2000.)    # 4 USDT
    assert not o.ok and 'minimum notional 5' in o.reason
    o = order_for_target(m, equity=1000., held=0.1, target=0.3, price=2000.)      # buy 0.05 ETH
    assert o.ok and (o.side, o.amount, o.price) == ('buy', 0.05, 2000.0)
    assert order_for_target(m, 1000., 0.15, 0.3, 2000.) is None                   # already there
    for bad in (dict(amount=float('nan')), dict(amount=-1.0), dict(price=0.0)):
        kw = {'amount': 0.1, 'price': 2000.0, **bad}
        with pytest.raises(TbotError): round_order(m, 'buy', kw['amount'], kw['price'])
    with pytest.raises(TbotError, match='side'): round_order(m, 'hold', 0.1, 2000.)

# --- the portfolio stop ---------------------------------------------------------------------------------------------------

def _always_long(df, **kw):
    return simulate_exposure(df, pd.Series(1.0, df.index), init_cash=1000, fees=0.001, slippage=0.0005, **kw)

def test_portfolio_stop_through_2022_never_ends_a_bar_below_the_floor_by_more_than_the_gap(btc):
    df = btc.loc['2022']
    sim = _always_long(df, stop=0.05, daily_loss_limit=0)
    halt = pd.Timestamp(sim.stats['halted_at'])
    held_in = sim.units.iloc[:, 0].shift().fillna(0)
    gap = (held_in * (df.close.shift() - df.open).clip(lower=0)).fillna(0)
    costs = held_in * df.open * 0.0015 * 1.01
    # each bar: at the close, equity is above the floor, or below it by no more than that bar's gap and the exit's costs
    assert (sim.equity >= 950 - gap - costs).loc[:halt].all()
    assert (sim.equity.loc[halt:] == sim.equity.loc[halt]).all()             # then flat: it cannot fall further
    assert (sim.status.loc[halt:] == 'halted').all() and (sim.units.loc[halt:] == 0).all().all()
    assert 0.945 < sim.stats['min_equity'] < 0.95
    assert df.close.min() / df.close.iloc[0] < 0.4                            # buy-and-hold fell more than 60%

def test_stop_holds_for_every_start_month_2018_to_2025(btc):
    worst = []
    for start in pd.date_range('2018-01-01', '2025-06-01', freq='QS', tz='UTC'):
        df = btc.loc[start:start + pd.Timedelta(days=365)]
        sim = _always_long(df, stop=0.05, daily_loss_limit=0)
        worst.append(sim.stats['min_equity'])
        if sim.stats['halted_at']:
            assert (sim.status.loc[sim.stats['halted_at']:] == 'halted').all()
    assert min(worst) > 0.945                                                 # 1h BTC rarely gaps: out near the floor

def test_constructed_crash_on_two_symbols_exits_at_the_gap(btc, eth):
    idx = btc.loc['2023-03-01':'2023-03-05'].index
    b, e = btc.loc[idx].copy(), eth.loc[idx].copy()
    i = 50
    b.iloc[i:, :4] *= 0.8; e.iloc[i:, :4] *= 0.7                               # a gap down on both at bar 50
    target = pd.DataFrame({'BTC/USDT': 0.5, 'ETH/USDT': 0.5}, idx)
    sim = simulate_exposure({'BTC/USDT': b, 'ETH/USDT': e}, target, init_cash=1000, fees=0.001, slippage=0.0005,
                            stop=0.05, daily_loss_limit=0)
    assert sim.stats['halted_at'] == str(idx[i])
    u = sim.units.iloc[i - 1]
    gap = u['BTC/USDT'] * (b.close.iloc[i-1] - b.open.iloc[i]) + u['ETH/USDT'] * (e.close.iloc[i-1] - e.open.iloc[i])
    costs = (u['BTC/USDT'] * b.open.iloc[i] + u['ETH/USDT'] * e.open.iloc[i]) * 0.0015 * 1.01
    assert sim.equity.iloc[i-1] > 950 and sim.equity.iloc[i] >= 950 - gap - costs
    assert sim.equity.iloc[i] < 800                                            # the gap is lost: a stop cannot undo it
    assert (sim.units.iloc[i:] == 0).all().all()

def test_short_into_a_spike_exits_at_the_floor_price(btc):
    df = btc.loc['2023-06-01':'2023-06-04'].copy()
    i = 40
    df.iloc[i, df.columns.get_loc('high')] *= 1.3                              # a 30% spike inside one bar
    sim = simulate_exposure(df, pd.Series(-1.0, df.index), init_cash=1000, fees=0.001, slippage=0.0005, stop=0.05, daily_loss_limit=0)
    assert sim.stats['halted_at'] == str(df.index[i])
    assert abs(sim.stats['min_equity'] - 0.95 * (1 - 0.0015)) < 3e-4

# The bar-by-bar face of the stop is the paper trader, which calls the backtest's own kernel (`risk.step_nb`):
# tests/test_paper.py checks it against the backtest fill for fill, and a halt across restarts and its human reset.

def test_settings_drive_the_stop_and_bad_values_are_one_line_errors(monkeypatch):
    assert risk.risk_config().portfolio_stop == 0.05                          # settings.ini: portfolio_stop = 0.05
    monkeypatch.setenv('TBOT_RISK_PORTFOLIO_STOP', '0.1')
    assert risk.risk_config().portfolio_stop == 0.1
    monkeypatch.setenv('TBOT_RISK_PORTFOLIO_STOP', 'ten percent')
    with pytest.raises(TbotError, match='not a number'): risk.risk_config()
    monkeypatch.setenv('TBOT_RISK_PORTFOLIO_STOP', '1.5')
    with pytest.raises(TbotError, match=r'portfolio_stop = 1.5 must be in \[0, 1\)'): risk.risk_config()
    monkeypatch.delenv('TBOT_RISK_PORTFOLIO_STOP')
    monkeypatch.setenv('TBOT_RISK_KELLY', 'true')
    assert risk.risk_config().kelly is True

def test_bad_targets_are_refused(btc):
    df = btc.loc['2024-01-01':'2024-01-03']
    t = pd.Series(1.0, df.index); t.iloc[3] = np.nan
    with pytest.raises(TbotError, match='NaN'): simulate_exposure(df, t)
    with pytest.raises(TbotError, match='do not match'):
        simulate_exposure({'BTC/USDT': df}, pd.DataFrame({'ETH/USDT': 1.0}, df.index))
    with pytest.raises(TbotError, match=r'\(bot, symbol\)'): apply_limits(pd.DataFrame({'a': [1.0]}))
