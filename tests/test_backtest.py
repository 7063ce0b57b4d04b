"""The backtest engine on real data: the cross-check against backtesting.py, the sweep kernel against vectorbt,
Dask, the overfitting statistics against independent implementations, and the CLI."""
import itertools, json, os, stat, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest
from scipy.stats import rankdata
from tbot.config import TbotError
from tbot.data import read_candle_file, write_series, Series
from tbot import indicators as ind
from tbot.config import costs
from tbot.backtest import STATS, backtest
from tbot.sweep import expand_grid, grid_stats, sweep
from tbot.walkforward import deflated_sharpe, pbo
from conftest import tbot, one_line_error

@pytest.fixture(scope='module')
def btc(shared): return read_candle_file(shared / 'BTC_USDT-1h.feather')

# ---------------------------------------------------------------- backtesting.py cross-check
def _bt_run(df, strat_cls, unit):
    from backtesting.lib import FractionalBacktest
    data = df.rename(columns=str.capitalize); data.index = data.index.tz_localize(None)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        # all-in (default size), commission on both fills, no spread, orders fill at the next bar's open
        bt = FractionalBacktest(data, strat_cls, cash=1000, commission=0.001, spread=0.0, trade_on_close=False,
                                exclusive_orders=False, finalize_trades=False, fractional_unit=unit)
        return bt.run()

def _ema_cross_bt(fast, slow):
    from backtesting import Strategy
    class EmaCross(Strategy):
        def init(self):
            c = lambda x: np.asarray(x, dtype='float64')
            self.f = self.I(lambda x: ind.ema(c(x), fast), self.data.Close)
            self.s = self.I(lambda x: ind.ema(c(x), slow), self.data.Close)
        def next(self):
            f, s = self.f, self.s
            if not self.position and f[-1] > s[-1] and f[-2] <= s[-2]: self.buy()
            elif self.position and f[-1] < s[-1] and f[-2] >= s[-2]: self.position.close()
    return EmaCross

def _rsi_bt(n, lower, upper):
    from backtesting import Strategy
    class RsiReversion(Strategy):
        def init(self): self.r = self.I(lambda x: ind.rsi(np.asarray(x, dtype='float64'), n), self.data.Close)
        def next(self):
            if not self.position and self.r[-1] < lower: self.buy()
            elif self.position and self.r[-1] > upper: self.position.close()
    return RsiReversion

CASES = [('ema_cross', {'fast': 12, 'slow': 26}, _ema_cross_bt), ('rsi_reversion', {'n': 14, 'lower': 30.0, 'upper': 70.0}, _rsi_bt)]

@pytest.mark.parametrize('name,params,make', CASES, ids=[c[0] for c in CASES])
def test_cross_check_backtesting_py(btc, name, params, make):
    "Same trades (times and prices) and final equity as backtesting.py: long-only, next-open fills, no stops, no slippage."
    ours = backtest(btc, name, params, fees=0.001, slippage=0.0, init_cash=1000, fill='next_open')
    mine = ours.trades[ours.trades.status == 'closed']  # backtesting.py lists closed trades; an open one is in both equities
    theirs = _bt_run(btc, make(*params.values()), 1e-12)  # 1e-12 BTC units: whole-unit rounding is negligible
    t = theirs['_trades']
    assert len(t) == len(mine) > 100
    np.testing.assert_array_equal(t.EntryTime.values, mine.entry_time.dt.tz_localize(None).values)
    np.testing.assert_array_equal(t.ExitTime.values, mine.exit_time.dt.tz_localize(None).values)
    np.testing.assert_allclose(t.EntryPrice.values, mine.entry_price.values, rtol=1e-12)
    np.testing.assert_allclose(t.ExitPrice.values, mine.exit_price.values, rtol=1e-12)
    np.testing.assert_allclose(t.PnL.values, mine.pnl.values, rtol=1e-6, atol=1e-9)
    assert abs(theirs['Equity Final [$]'] / ours.stats['final_equity'] - 1) < 1e-6
    assert abs(theirs['# Trades'] - ours.stats['trades']) == 0

def test_cross_check_whole_satoshis(btc):
    """With backtesting.py's default unit (whole satoshis) the trades are the same and the final equity differs by
    about 2e-7: it buys floor(cash / (price * (1 + fee))) satoshis and keeps the remainder in cash; vectorbt buys the exact fraction."""
    ours = backtest(btc, 'ema_cross', {'fast': 12, 'slow': 26}, fees=0.001, slippage=0.0)
    theirs = _bt_run(btc, _ema_cross_bt(12, 26), 1e-8)
    assert len(theirs['_trades']) == ours.stats['trades']
    rel = abs(theirs['Equity Final [$]'] / ours.stats['final_equity'] - 1)
    assert 1e-9 < rel < 1e-6

# ---------------------------------------------------------------- sweep kernel = vectorbt
@pytest.mark.parametrize('fill', ['next_open', 'close'])
def test_sweep_kernel_equals_vectorbt(btc, fill):
    table = sweep(btc, 'ema_cross', {'fast': [3, 12, 50], 'slow': [20, 200]}, fees=0.00075, slippage=0.001, fill=fill, progress=False)
    for _, row in table.iterrows():
        ref = backtest(btc, 'ema_cross', {'fast': row.fast, 'slow': row.slow}, fees=0.00075, slippage=0.001, fill=fill).stats
        for k in STATS: assert row[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12, nan_ok=True), (row.fast, row.slow, k)

def test_sweep_rejects_bad_grid(btc):
    with pytest.raises(TbotError, match='out of range'): sweep(btc, 'ema_cross', {'fast': [1, 5]}, progress=False)
    with pytest.raises(TbotError, match="unknown parameter"): sweep(btc, 'ema_cross', {'fst': [5]}, progress=False)
    with pytest.raises(TbotError, match='too little data'): sweep(btc.iloc[:300], 'ema_cross', {'slow': [100, 400]}, progress=False)

def test_sweep_on_dask_local_cluster(btc):
    from distributed import Client, LocalCluster
    df = btc['2023-01-01':]
    grid = {'fast': [5, 10, 20], 'slow': [30, 60, 120]}
    local = sweep(df, 'ema_cross', grid, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        remote = sweep(df, 'ema_cross', grid, client=client, memory=len(df) * 32 * 2, progress=False)  # 2 combos per task
        assert len(client.scheduler_info()['workers']) == 2
    pd.testing.assert_frame_equal(local, remote)

# ---------------------------------------------------------------- DSR and PBO
def test_deflated_sharpe_paper_example():
    "Bailey & Lopez de Prado (2014), numerical example: SR0 = 0.1132 per day, DSR = 0.9004."
    d = deflated_sharpe(2.5 / np.sqrt(250), 1250, 100, 0.5 / 250, skew=-3, kurtosis=10)
    assert d['sr0'] == pytest.approx(0.1132, abs=1e-4) and d['dsr'] == pytest.approx(0.9004, abs=1e-3)
    assert deflated_sharpe(0.0, 1000, 1, 0.0)['dsr'] == pytest.approx(0.5)

def _pbo_literal(returns, S):
    "CSCV as the paper describes it, written independently: concatenate the chosen blocks, NumPy Sharpe, SciPy ranks."
    T, N = returns.shape
    blocks = np.array_split(np.arange(T), S)
    def sharpe(rows):
        r = returns[rows]; sd = r.std(axis=0, ddof=1)
        return np.where(sd > 0, r.mean(axis=0) / np.where(sd > 0, sd, 1), 0.0)
    logits = []
    for c in itertools.combinations(range(S), S // 2):
        train = np.concatenate([blocks[i] for i in c]); test = np.concatenate([blocks[i] for i in range(S) if i not in c])
        best = np.argmax(sharpe(train))
        w = rankdata(sharpe(test))[best] / (N + 1)
        logits.append(np.log(w / (1 - w)))
    return np.mean(np.array(logits) <= 0), np.array(logits)

def test_pbo_matches_literal_implementation():
    rng = np.random.default_rng(42)
    r = rng.standard_t(4, (2003, 25)) * 0.01 + rng.normal(0, 0.0005, 25)  # fat tails, small true differences, uneven blocks
    ref_pbo, ref_logits = _pbo_literal(r, 10)
    ours = pbo(r, 10)
    assert ours['pbo'] == ref_pbo
    np.testing.assert_allclose(ours['logits'], ref_logits, rtol=1e-9)

def test_pbo_from_sweep_blocks_equals_returns(btc):
    "The kernel's per-block sums give the same PBO as the full returns matrix of the vectorbt backtests."
    df = btc['2022-01-01':'2023-12-31']
    combos = expand_grid('ema_cross', {'fast': [5, 12, 30], 'slow': [50, 100, 200]})
    _, blocks = grid_stats(df, 'ema_cross', combos, costs(), progress=False, n_blocks=8)
    rets = []
    for c in combos:
        eq = backtest(df, 'ema_cross', c).equity.to_numpy()
        rets.append(np.diff(np.r_[1000.0, eq]) / np.r_[1000.0, eq[:-1]])
    full = pbo(np.column_stack(rets), 8)
    kern = pbo(block_sums=(blocks[0, :, 0], blocks[:, :, 1], blocks[:, :, 2]))
    assert kern['pbo'] == full['pbo']
    np.testing.assert_allclose(kern['logits'], full['logits'], rtol=1e-6)

# ---------------------------------------------------------------- CLI
@pytest.fixture
def btc_store(store, btc):
    write_series(btc['2021-01-01':'2023-12-31'], Series('binance', 'BTC/USDT', '1h'), store)
    return store

def _tbot(*args, **kw): return tbot(*args, check=False, timeout=300, **kw)

def test_cli_backtest_json_and_errors(btc_store, btc):
    out = _tbot('backtest', '--strategy', 'ema_cross', '--symbol', 'BTC/USDT', '--timeframe', '1h', '--params', 'fast=10,slow=40',
                '--start', '2022-01-01', '--end', '2022-12-31', '--fees', '0.00075', '--json')
    assert out.returncode == 0, out.stderr
    o = json.loads(out.stdout)
    # a bare --end date includes that whole day, as pandas' own date slicing does
    ref = backtest(btc.loc['2022-01-01':'2022-12-31'], 'ema_cross', {'fast': 10, 'slow': 40}, fees=0.00075)
    assert o['stats']['end'] == '2022-12-31 23:00:00+00:00'
    assert o['stats']['final_equity'] == pytest.approx(ref.stats['final_equity'], rel=1e-12)
    assert o['assumptions']['fees'] == 0.00075 and o['assumptions']['sample'] == 'in-sample' and o['benchmark']['trades'] == 0
    for args, msg in [(['--strategy', 'nope'], "unknown strategy 'nope'"), (['--strategy', 'ema_cross', '--params', 'fast=1'], 'out of range'),
                      (['--strategy', 'ema_cross', '--params', 'slow=2000', '--start', '2023-12-01'], 'too little data')]:
        bad = _tbot('backtest', '--symbol', 'BTC/USDT', *args)
        assert bad.returncode == 2 and msg in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr

def test_cli_params_one_syntax_and_the_old_one_deprecated(btc_store):
    "`-p KEY=VALUE` (repeated) and the old `--params k=v,k=v` give the same backtest; only the old one prints a deprecation line."
    args = ['backtest', '--strategy', 'ema_cross', '--start', '2022-01-01', '--end', '2022-06-30', '--json']
    new, old = _tbot(*args, '-p', 'fast=10', '-p', 'slow=40'), _tbot(*args, '--params', 'fast=10,slow=40')
    assert new.returncode == 0 and old.returncode == 0, new.stderr + old.stderr
    assert json.loads(new.stdout) == json.loads(old.stdout) and json.loads(new.stdout)['assumptions']['params'] == {'fast': 10, 'slow': 40}
    assert new.stderr == '' and old.stderr.startswith('tbot: note: --params k=v,k=v is deprecated') and old.stderr.count('\n') == 1

BAD = [  # (command line after `tbot`, what the one line must say)
    (['backtest', '--strategy', 'ema_cross', '--start', '2022-13-45'], "--start: '2022-13-45' is not a date"),
    (['backtest', '--strategy', 'ema_cross', '--start', 'yesterday'], "--start: 'yesterday' is not a date"),
    (['backtest', '--strategy', 'ema_cross', '--end', '2022-02-30'], "--end: '2022-02-30' is not a date"),
    (['backtest', '--strategy', 'ema_cross', '--start', '2023-01-01', '--end', '2022-01-01'], '--start 2023-01-01 00:00 is after --end 2022-01-01 23:59'),
    (['backtest', '--strategy', 'ema_cross', '--start', '2030-01-01'], 'no BTC/USDT 1h candles in 2030-01-01 00:00 .. the end (the store has 2021-01-01 00:00 .. 2023-12-31 23:00)'),
    (['backtest', '--strategy', 'ema_cross', '--params', 'fast=nan'], "--params fast: 'nan' must be a finite number"),
    (['backtest', '--strategy', 'ema_cross', '--params', 'fast=inf'], "--params fast: 'inf' must be a finite number"),
    (['backtest', '--strategy', 'ema_cross', '--params', 'fast=abc'], "ema_cross: parameter fast='abc' is not a number"),
    (['backtest', '--strategy', 'ema_cross', '-p', 'fast=nan'], "-p fast: 'nan' must be a finite number"),
    (['backtest', '--strategy', 'ema_cross', '-p', 'fast'], "bad -p 'fast' (expected KEY=VALUE)"),
    (['backtest', '--strategy', 'ema_cross', '-p', 'fast=5', '--params', 'fast=6'], 'parameter fast is given twice'),
    (['backtest', '--strategy', 'ema_cross', '--params', 'fats=5'], "ema_cross: unknown parameter 'fats'"),
    (['backtest', '--strategy', 'ema_cross', '--params', 'fast=5.5'], 'fast=5.5 must be a whole number'),
    (['backtest', '--strategy', 'ema_cross', '--init-cash', 'inf'], '--init-cash: inf must be a finite number'),
    (['backtest', '--strategy', 'ema_cross', '--fees', '-0.001'], 'fees: -0.001 must be at least 0'),
    (['backtest', '--strategy', 'ema_cross', '--fees', 'nan'], 'fees: nan must be a finite number'),
    (['backtest', '--strategy', 'ema_cross', '--slippage', 'inf'], 'slippage: inf must be a finite number'),
    (['backtest', '--strategy', 'ema_cross', '--slippage', '-0.0001'], 'slippage: -0.0001 must be at least 0'),
    (['sweep', '--strategy', 'ema_cross', '--grid', 'fast=5,10', '--start', '2022-13-45'], "--start: '2022-13-45' is not a date"),
    (['sweep', '--strategy', 'ema_cross', '--grid', 'fast=5,10', '--heatmap', 'h.html'], '--heatmap needs a grid of two parameters'),
    (['sweep', '--strategy', 'ema_cross', '--grid', 'fast=5,10', '--memory', '-1'], "--memory: '-1' must be greater than 0"),
    (['sweep', '--strategy', 'ema_cross', '--grid', 'fast=5,10', '--memory', '0'], "--memory: '0' must be greater than 0"),
    (['sweep', '--strategy', 'ema_cross', '--grid', 'fast=5,10', '--top', '-1'], '--top: -1 must be at least 1'),
    (['sweep', '--strategy', 'ema_cross', '--grid', 'fast=5,nan'], "--grid fast: 'nan' must be a finite number"),
    (['walkforward', '--strategy', 'ema_cross', '--grid', 'fast=5,10', '--blocks', '3'], '--blocks: 3 must be even'),
    (['walkforward', '--strategy', 'ema_cross', '--grid', 'fast=5,10', '--train', 'abc'], "--train: 'abc' is not a duration"),
    (['walkforward', '--strategy', 'ema_cross', '--grid', 'fast=5,10', '--train', '0D'], "--train: '0D' must be a positive duration"),
    (['walkforward', '--strategy', 'ema_cross', '--grid', 'fast=5,10', '--end', 'yesterday'], "--end: 'yesterday' is not a date"),
]

@pytest.mark.parametrize('args,msg', BAD, ids=[' '.join(a[:1] + a[3:]) for a, _ in BAD])
def test_cli_bad_input_is_one_line_before_any_work(btc_store, tmp_path, args, msg):
    "Each refusal is one line (no traceback, no progress bar: nothing was computed), exit 2, and writes no file."
    files = lambda: sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob('*'))
    before = files()
    one_line_error(_tbot(*args, cwd=tmp_path), msg)
    assert files() == before  # no heatmap, no reports folder, the store untouched

@pytest.mark.slow
def test_cli_sweep_and_walkforward(btc_store, tmp_path):
    out = _tbot('sweep', '--strategy', 'ema_cross', '--symbol', 'BTC/USDT', '--grid', 'fast=5:20:5', '--grid', 'slow=50,100',
                '--heatmap', str(tmp_path / 'h.html'), '--json')
    assert out.returncode == 0, out.stderr
    o = json.loads(out.stdout); rows = o['rows']
    assert len(rows) == 8 and {r['fast'] for r in rows} == {5, 10, 15, 20} and (tmp_path / 'h.html').stat().st_size > 1000
    assert (o['assumptions']['symbol'], o['assumptions']['timeframe']) == ('BTC/USDT', '1h')
    umask = os.umask(0o022); os.umask(umask)
    assert stat.S_IMODE((tmp_path / 'h.html').stat().st_mode) == 0o666 & ~umask  # readable by others, like any file the user writes
    human = _tbot('walkforward', '--strategy', 'ema_cross', '--symbol', 'BTC/USDT', '--grid', 'fast=5,12', '--grid', 'slow=48,96',
                  '--train', '180D', '--test', '90D', '--blocks', '4')
    assert human.returncode == 0, human.stderr
    assert 'out_of_sample' in human.stdout and 'buy_and_hold' in human.stdout and 'deflated Sharpe ratio' in human.stdout
