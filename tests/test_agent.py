"""The master agent on real BTC/ETH candles: decide/backtest parity, no future in learning, the portfolio stop, exchange rules, CLI."""
import json
import numpy as np, pandas as pd, pytest
from conftest import tbot, one_line_error
from tbot import agent, backtest, data, ledger, risk, timeframes, portfolio
from tbot.config import TbotError

@pytest.fixture(scope='module')
def candles(shared):
    return {s: data.read_candle_file(shared / f"{s.replace('/', '_')}-1h.feather") for s in ('BTC/USDT', 'ETH/USDT')}

def cut(candles, start, end):
    return {s: df.loc[start:end] for s, df in candles.items()}

@pytest.mark.slow
def test_bar_by_bar_decide_equals_the_vectorized_plan(candles):
    hist = cut(candles, '2021-09-01', '2022-01-31')
    full = agent.plan(hist)
    T = len(full.index)
    names = full.policy.bot_names
    replayed = 0
    for t in range(T - 120, T):          # the last 120 bars, each decided from only the history up to it
        d = agent.decide({s: df.iloc[:t + 1] for s, df in hist.items()})
        assert d['time'] == str(full.index[t])
        assert d['targets'] == {s: float(full.target[s].iloc[t]) for s in full.symbols}
        assert d['split'] == dict(zip(names, map(float, full.split.iloc[t])))
        for b, bot in enumerate(names):
            for s, sym in enumerate(full.symbols):
                assert d['bots'][bot][sym]['strategy'] == full.strategy_at(t, b, s)
                assert d['bots'][bot][sym]['weight'] == float(full.weights[(bot, sym)].iloc[t])
        replayed += 1
    assert replayed == 120
    # and the decisions did change over the replay: the test is not comparing constants
    assert full.target.iloc[T - 120:].nunique().max() > 1 or len(set(map(tuple, full.choice[T - 120:].reshape(120, -1)))) > 1

def test_learning_sees_no_future(candles):
    hist = cut(candles, '2021-06-01', '2022-06-30')
    base = agent.plan(hist)
    t = len(base.index) // 2
    rng = np.random.default_rng(0)
    future = {}
    for s, df in hist.items():   # scramble every candle after bar t: a different future
        f = df.copy(); k = rng.lognormal(0, 0.05, len(df) - t - 1)
        f.iloc[t + 1:, :4] = f.iloc[t + 1:, :4].to_numpy() * k[:, None]
        future[s] = f
    other = agent.plan(future)
    np.testing.assert_array_equal(base.choice[:t + 1], other.choice[:t + 1])
    np.testing.assert_array_equal(base.score[:t + 1], other.score[:t + 1])
    pd.testing.assert_frame_equal(base.target.iloc[:t + 1], other.target.iloc[:t + 1])
    assert not np.array_equal(base.choice[t + 1:], other.choice[t + 1:]) or not base.target.iloc[t + 1:].equals(other.target.iloc[t + 1:])

def test_shadow_records_and_scores_use_only_closed_bars(candles):
    "The shadow returns, the ledger records made from them and the chosen scores are the same from a plan made at a bar's close as from one that saw months more."
    hist = cut(candles, '2022-01-01', '2022-08-31')
    full = agent.plan(hist)
    t = int(full.index.searchsorted(pd.Timestamp('2022-06-30 23:00', tz='UTC')))
    part = agent.plan({s: df.iloc[:t + 1] for s, df in hist.items()})
    assert part.index[-1] == full.index[t] and set(part.shadow) == set(full.shadow)
    for k, v in part.shadow.items(): np.testing.assert_array_equal(v, full.shadow[k][:t + 1])
    np.testing.assert_array_equal(part.score, full.score[:t + 1])
    closed = pd.Timestamp('2022-07-01', tz='UTC')                   # every monthly record that had ended by the cut's close
    keys = ['strategy', 'symbol', 'regime', 'period_start']
    a, whole = (portfolio.shadow_performance(x, '1h', period='M') for x in (part, full))
    done = lambda x: x[x.period_end <= closed].sort_values(keys).reset_index(drop=True)
    still_open = lambda x: x[x.period_end > closed].sort_values(keys).reset_index(drop=True)
    a, b = done(a), done(whole)
    assert len(a) > 20 and (a.n_trades > 0).any()
    pd.testing.assert_frame_equal(a, b)
    late = {s: df.copy() for s, df in hist.items()}                 # a different future: the closed records stay, the open ones move
    for df in late.values(): df.iloc[t + 1:, :4] *= 1.1
    c = portfolio.shadow_performance(agent.plan(late), '1h', period='M')
    pd.testing.assert_frame_equal(done(c), b)
    assert len(still_open(whole)) and not still_open(c).equals(still_open(whole))

def test_portfolio_stop_through_the_2022_bear_market(candles, monkeypatch):
    "With the risk budget the stop does not fire in 2022; without it (the agent as it was) 2022 takes the agent to its floor, and the stop holds."
    hist = cut(candles, '2021-09-01', '2022-12-31')
    assert portfolio.backtest_agent(hist, start='2022-01-01').stats['halted_at'] is None
    monkeypatch.setenv('TBOT_RISK_CPPI_MULTIPLIER', '0'); monkeypatch.setenv('TBOT_ALLOCATION_ENTRY_TRADES', '0')
    r = portfolio.backtest_agent(hist, start='2022-01-01')
    eq, units, fills = r.equity, r.simulation.units, r.simulation.fills
    halted = r.stats['halted_at']
    assert halted is not None                                       # 2022 takes the agent to its floor
    h = eq.index.get_loc(pd.Timestamp(halted))
    o = pd.DataFrame({s: df.loc[eq.index, 'open'] for s, df in hist.items()})
    c = pd.DataFrame({s: df.loc[eq.index, 'close'] for s, df in hist.items()})
    gap = (units.shift(1).fillna(0) * (c.shift(1) - o).clip(lower=0)).sum(axis=1)   # what a gap at the open could cost
    costs = 1000 * (0.001 + 0.0005)
    assert (eq >= 950 - gap - costs - 1e-6).all()                  # no bar ends below the floor by more than its gap
    assert (units.iloc[h:] == 0).all().all() and (fills.time <= eq.index[h]).all()  # flat and halted afterwards
    assert (eq.iloc[h:] == eq.iloc[h]).all()
    assert r.decisions.kind.iloc[-1] == 'risk' and 'halted' in r.decisions.reason.iloc[-1]

def test_portfolio_stop_on_a_constructed_crash(candles):
    hist = cut(candles, '2021-09-01', '2021-12-31')
    p = agent.plan(hist)
    inv = np.flatnonzero((p.target.sum(axis=1) > 0.2).to_numpy())
    i = int(inv[inv > len(p.index) // 2][0]) + 2                    # a bar where the agent holds more than 20%
    crashed = {}
    for s, df in hist.items():
        f = df.copy(); f.iloc[i:, :4] = f.iloc[i:, :4].to_numpy() * 0.6   # a 40% gap down at bar i's open
        crashed[s] = f
    r = portfolio.backtest_agent(crashed, p=p, start=hist['BTC/USDT'].index[len(p.index) // 2])
    t = r.equity.index.get_loc(hist['BTC/USDT'].index[i])
    assert r.stats['halted_at'] == str(hist['BTC/USDT'].index[i])
    before = r.equity.iloc[t - 1]; held = r.simulation.units.iloc[t - 1]
    gap_loss = sum(held[s] * (hist[s].close.iloc[i - 1] - crashed[s].open.iloc[i]) for s in hist)
    assert gap_loss > 0 and r.equity.iloc[t] >= before - gap_loss - 1000 * 0.0015 - 1e-6   # loses the gap and one exit's costs, no more
    assert (r.simulation.units.iloc[t:] == 0).all().all()

def test_fills_respect_binance_amount_steps_and_minimum_notional(candles):
    r = portfolio.backtest_agent(cut(candles, '2021-01-01', '2021-06-30'), start='2021-03-01')
    f = r.simulation.fills
    assert len(f) > 10
    for sym, g in f.groupby('symbol'):
        step = risk.RECORDED_MARKETS[sym].amount_step
        assert np.allclose(g.units / step, np.round(g.units / step), atol=1e-6)
    opening = f[f.units > 0]
    assert (opening.units * opening.price >= 5.0).all()

def test_policy_errors_are_one_line(monkeypatch):
    monkeypatch.setenv('TBOT_ALLOCATION_BEAR_SPLIT', '0.5,0.5')
    with pytest.raises(TbotError, match='expected 3 shares'): agent.load_policy()
    monkeypatch.setenv('TBOT_ALLOCATION_BEAR_SPLIT', '0.2,0.0,0.8')
    monkeypatch.setenv('TBOT_BOTS_CORE_STRATEGIES', 'ema_cross,nope')
    with pytest.raises(TbotError, match='nope'): agent.plan({'BTC/USDT': pd.DataFrame(), 'ETH/USDT': pd.DataFrame()})

@pytest.fixture
def sliced_store(store, candles):
    for s, df in candles.items():
        data.write_series(df.loc['2021-06-01':'2022-12-31'], data.Series('binance', s, '1h'), store)
    return store

@pytest.mark.slow
def test_cli_backtest_json_puts_agent_and_buy_and_hold_side_by_side(sliced_store):
    p = tbot('agent', 'backtest', '--symbols', 'BTC/USDT,ETH/USDT', '--timeframe', '1h', '--start', '2022-01-01', '--json')
    out = json.loads(p.stdout)
    for side in ('stats', 'benchmark'):
        assert {'total_return', 'sharpe', 'max_drawdown', 'min_equity', 'fees_paid'} <= set(out[side])
    assert out['stats']['min_equity'] >= 0.95 * (1 - 0.0015) - 1e-9
    assert out['benchmark']['min_equity'] < 0.5                     # buy-and-hold through 2022 lost more than half
    a = out['assumptions']
    assert (a['fees'], a['slippage'], a['fill'], a['sample'], a['synthetic']) == (0.001, 0.0005, 'next_open', 'in-sample', False)
    assert out['ledger_run'] >= 1 and (sliced_store / 'ledger.sqlite').exists()
    assert 'ema_cross' in tbot('ledger', '--json', timeout=120).stdout

@pytest.mark.slow
def test_cli_explain_shows_what_the_agent_saw(sliced_store):
    p = tbot('agent', 'explain', '--at', '2022-06-18', '--json')
    out = json.loads(p.stdout)
    assert out['time'] == '2022-06-18 00:00:00+00:00'
    assert set(out['regimes']) == {'BTC/USDT', 'ETH/USDT'} and set(out['bots']) == {'core', 'scalping', 'risk'}
    assert abs(sum(out['split'].values()) - 1) < 1e-9
    one_line_error(tbot('agent', 'explain', '--at', '2001-01-01', check=False), 'no BTC/USDT 1h candles at or before 2001-01-01')

# --- bots on their own timeframes: core and risk on 1h, scalping on 5m (real candles of 2023) ---

@pytest.fixture(scope='module')
def multi(shared, candles):
    five = {s: data.read_candle_file(shared / f"{s.replace('/', '_')}-5m.feather").loc['2023-01-01':'2023-04-30'] for s in candles}
    return {**{(s, '1h'): df.loc['2023-01-01':'2023-04-30'] for s, df in candles.items()}, **{(s, '5m'): df for s, df in five.items()}}

@pytest.fixture(scope='module')
def multi_plan(multi):
    return timeframes.plan(multi)

@pytest.mark.slow
def test_each_bot_decides_on_its_own_timeframe_and_nothing_sees_an_unclosed_hour(multi, multi_plan):
    p = multi_plan
    assert p.timeframe == '5m' and p.index.equals(multi[('BTC/USDT', '5m')].index)
    rng = np.random.default_rng(7)
    cuts = list(p.index[rng.choice(np.arange(12 * 24 * 40, len(p.index)), 6, replace=False)]) + [pd.Timestamp('2023-03-15 10:25', tz='UTC')]
    for at in cuts:
        hist = timeframes.cut(multi, at, p.policy)
        assert hist[('BTC/USDT', '1h')].index[-1] + pd.Timedelta('1h') <= at + pd.Timedelta('5m')   # only closed hours
        d = timeframes.decide(hist)
        t = p.index.get_loc(at)
        assert d['time'] == str(at)
        assert d['targets'] == {s: float(p.target[s].iloc[t]) for s in p.symbols}
        for b, bot in enumerate(p.policy.bot_names):
            for s, sym in enumerate(p.symbols):
                assert d['bots'][bot][sym]['strategy'] == p.strategy_at(t, b, s)
    # changing every candle after the cut changes no decision up to it
    at = pd.Timestamp('2023-03-15 10:25', tz='UTC'); t = p.index.get_loc(at)
    scrambled = {k: df.assign(close=np.where(df.index + data.timeframe_delta(k[1]) > at + pd.Timedelta('5m'), df.close * 1.3, df.close))
                 for k, df in multi.items()}
    q = timeframes.plan(scrambled)
    assert np.array_equal(q.choice[:t + 1], p.choice[:t + 1]) and q.target.iloc[:t + 1].equals(p.target.iloc[:t + 1])
    assert not q.target.iloc[t + 1:].equals(p.target.iloc[t + 1:])   # the test could fail: the future did change the plan

@pytest.mark.slow
def test_hourly_bots_trade_only_when_the_hour_closes(multi_plan):
    w = multi_plan.weights
    moved = lambda bots: w[[c for c in w.columns if c[0] in bots]].diff().abs().sum(axis=1) > 0
    assert moved(['core', 'risk']).sum() > 10 and set(w.index[moved(['core', 'risk'])].minute) == {55}
    assert len(set(w.index[moved(['scalping'])].minute)) > 6

@pytest.mark.slow
def test_multi_timeframe_backtest_is_one_portfolio_with_attribution_and_ledger(multi, multi_plan, tmp_path):
    r = portfolio.backtest_agent(multi, p=multi_plan)
    assert r.assumptions['timeframe'] == '5m' and r.assumptions['bot_timeframes'] == {'core': '1h', 'scalping': '5m', 'risk': '1h'}
    assert abs(sum(r.attribution['bot']) - (r.equity.iloc[-1] - 1000)) < 1e-6
    assert r.stats['min_equity'] >= 0.95 * (1 - 0.0015) - 1e-9
    led = ledger.Ledger(tmp_path / 'ledger.sqlite')
    run = portfolio.record(r, multi, led)
    perf = led.performance(run_ids=[run])
    assert set(perf.timeframe) == {'1h', '5m'} and set(perf[perf.timeframe == '5m'].strategy) <= {'scalp_micro_trend', 'scalp_range_zscore', 'pair_zscore'}

def test_multi_timeframe_refuses_what_is_missing(multi):
    with pytest.raises(TbotError, match='no ETH/USDT 5m candles'):
        timeframes.plan({k: v for k, v in multi.items() if k != ('ETH/USDT', '5m')})
    with pytest.raises(TbotError, match='tbot.timeframes.plan'): agent.plan(multi)   # the policy's plan takes one timeframe, and says where to go

@pytest.mark.slow
def test_multi_timeframe_walk_forward_is_out_of_sample_on_the_fine_bars(multi):
    wf = portfolio.walk_forward_agent(multi, train='60D', test='30D')
    assert wf['sample'] == 'out-of-sample' and len(wf['folds']) == 2
    assert wf['single_equity'].index.equals(wf['result'].equity.index) and wf['result'].assumptions['timeframe'] == '5m'
    assert wf['result'].equity.index[0] == pd.Timestamp(wf['folds'][0]['test_start'])
    assert wf['agent']['min_equity'] >= 0.95 * (1 - 0.0015) - 1e-9
    assert wf['agent']['fees_paid'] == pytest.approx(wf['result'].simulation.fills.fee.sum(), rel=1e-12)   # every fill's fee, no more
    assert wf['agent']['fees_paid'] == pytest.approx(wf['result'].stats['fees_paid'], rel=1e-12) and wf['agent']['fees_paid'] > 1
    assert 0 < wf['best_single']['fees_paid'] < 0.001 * 2 * 1000 * 100   # paid, and below 100 full round trips of the whole capital

@pytest.fixture(scope='module')
def plan_2021_2022(candles):
    "The agent's plan on the real candles of 2021-2022, made once for the tests below (none of them changes it)."
    hist = cut(candles, '2021-01-01', '2022-12-31')
    return hist, agent.plan(hist)

@pytest.mark.parametrize('name', ['ema_cross', 'donchian_breakout', 'vol_target'])
def test_single_strategy_runs_of_the_walk_forward_carry_their_fees(plan_2021_2022, name):
    "The fee series the walk-forward scales per fold adds up to the single backtest's fees, stops and rebalances included."
    hist, p = plan_2021_2022
    run = portfolio.single_run(hist['BTC/USDT'], None, p, name, 0.001, 0.0005, 1000)
    ref = backtest.backtest(hist['BTC/USDT'], name, fees=0.001, slippage=0.0005, init_cash=1000)
    assert run.fees.is_monotonic_increasing and abs(run.fees.iloc[-1] / ref.stats['fees_paid'] - 1) < 1e-12
    assert np.array_equal(run.equity.to_numpy(), ref.equity.to_numpy())

@pytest.mark.slow
def test_cli_runs_each_bot_on_its_own_timeframe(store, multi):
    for (s, tf), df in multi.items(): data.write_series(df, data.Series('binance', s, tf), store)
    p = tbot('agent', 'backtest', '--bot-timeframes', '--json', '--no-ledger')
    a = json.loads(p.stdout)['assumptions']
    assert a['timeframe'] == '5m' and a['bot_timeframes'] == {'core': '1h', 'scalping': '5m', 'risk': '1h'}
    assert a['start'].startswith('2023-01-01') and a['end'].startswith('2023-04-30 23:55')
    assert 'core 1h, scalping 5m, risk 1h' in tbot('agent', 'backtest', '--bot-timeframes', '--no-ledger').stdout
    wf = tbot('agent', 'backtest', '--bot-timeframes', '--walk-forward', '--train', '60D', '--test', '30D', '--no-ledger')
    assert wf.stdout.startswith('OUT-OF-SAMPLE') or wf.stdout.startswith('HALTED')
    assert 'OUT-OF-SAMPLE walk-forward BTC/USDT, ETH/USDT core 1h, scalping 5m, risk 1h' in wf.stdout
    one_line_error(tbot('agent', 'backtest', '--bot-timeframes', '--symbols', 'BTC/USDT,SOL/USDT', check=False), 'SOL/USDT')

def test_portfolio_equals_vectorbt_from_orders_with_cash_sharing(plan_2021_2022):
    "With the stop, daily limit, exchange rules and band off, the agent's portfolio is vectorbt's from_orders on the same targets."
    import vectorbt as vbt
    hist, p = plan_2021_2022
    tgt = p.target
    sim = risk.simulate_exposure(hist, tgt, 1000, 0.001, 0.0005, stop=0.0, daily_loss_limit=0.0)
    close = pd.DataFrame({s: d['close'] for s, d in hist.items()}); opn = pd.DataFrame({s: d['open'] for s, d in hist.items()})
    pf = vbt.Portfolio.from_orders(close, size=tgt.shift(1), size_type='targetpercent', price=opn, fees=0.001, slippage=0.0005,
                                   group_by=True, cash_sharing=True, call_seq='auto', init_cash=1000, freq='1h')
    assert len(sim.fills) > 1000 and tgt.nunique().max() > 5
    assert (sim.equity / pf.value() - 1).abs().max() < 1e-7
    assert abs(sim.fees_paid / pf.orders.fees.sum() - 1) < 1e-6
