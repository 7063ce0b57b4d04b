"""Benchmark: the paper trader on BTC+ETH 1h, the default agent (3 bots), the whole stored history behind it (2018 on).  Prints figures;
asserts nothing about time.  Writes only inside a temp dir (the store, the ledgers).  `--profile`: also cProfile the replay year.

  (1) decision latency: `Trader.process(upto)` called once per bar close, one bar at a time, on the store's last bars (8+ years behind),
      from the call to the bar's commit; median, p99, and the share spent in `tbot.timeframes.plan` against the rest.
  (2) replay speed: a year of 1h bars (8,760, BTC+ETH) through `Trader.run` with a `ReplayFeed` at speed 0 (what `tbot paper start
      --replay ... --speed 0` does), against `backtest_agent` over the same candles in the same process; and what a naive replan of
      the whole history on every bar would cost.
  (3) restart after a one-day outage: a new Trader on the same ledger with the feed 24 bars ahead, from `open()` to the 24th bar
      committed; and `tbot paper start` as a subprocess doing the same (Python start, imports, store read, plan, bars, status)."""
import atexit, cProfile, io, os, pstats, shutil, sqlite3, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data' / 'binance'
TMP = Path(tempfile.mkdtemp(prefix='tbot-bench-trader-'))
atexit.register(shutil.rmtree, TMP, True)   # nothing is left behind, even on a failure
os.environ['TBOT_DATA_DIR'] = str(TMP / 'data'); os.environ['TBOT_REPORTS_DIR'] = str(TMP / 'reports')
os.environ.pop('TBOT_TEST_TX_DELAY', None)
PROFILE = '--profile' in sys.argv

import tbot.trader as tr
from tbot.data import Series, read_candle_file, write_series
from tbot.feed import ReplayFeed
from tbot.ledger import utc_text
from tbot.paper import parity
from tbot.portfolio import backtest_agent, load_data, policy_for
from tbot.timeframes import plan
from tbot.trader import Trader, account_config, paper_settings, trading_keys

SYMS, TF, H = ['BTC/USDT', 'ETH/USDT'], '1h', pd.Timedelta('1h')
for s in SYMS: write_series(read_candle_file(SHARED / f"{s.replace('/', '_')}-1h.feather"), Series('binance', s, TF))
POL = policy_for(SYMS); KEYS = trading_keys(POL, TF, False); PS = paper_settings()
IDX = load_data(SYMS, TF)[SYMS[0]].index                     # the stored bars both symbols share
LAST = IDX[-1]

def trader(ledger, start, end, resume=None)->Trader:
    "A paper trader on a replay of [start, end] at speed 0, opened (as `tbot.paper.start` builds it)."
    feed = ReplayFeed(KEYS, start, end, 0, resume=resume)
    cfg = account_config('paper', POL, TF, False, PS['init_cash'], start, {'start': utc_text(start), 'end': utc_text(end)})
    return Trader(feed, cfg, ledger, POL).open()

def bars(ledger)->pd.DataFrame:
    with sqlite3.connect(ledger) as con: return pd.read_sql('SELECT time, lag FROM bars ORDER BY time', con)

# ---- timers around the trader's pieces (wrapping the names it calls; nothing in tbot is edited)
T = {k: [] for k in ('plan', 'batch', 'bar')}
def timed(key, fn):
    def w(*a, **k):
        t = time.perf_counter()
        try: return fn(*a, **k)
        finally: T[key].append(time.perf_counter() - t)
    return w
tr.plan = timed('plan', tr.plan)               # `_batch` calls tbot.trader.plan: the agent's whole plan on the history so far
Trader._batch = timed('batch', Trader._batch)  # history + plan + lining up prices/targets/strategies/decisions for the new bars
Trader._bar = timed('bar', Trader._bar)        # one bar: the kernel's step (fills, stop) and the ledger transaction
def reset(): [v.clear() for v in T.values()]

data_all = load_data(SYMS, TF)
plan(data_all, POL)                                          # warm: numba kernels, imports
def secs(fn)->float:
    t = time.perf_counter(); fn(); return time.perf_counter() - t
t_plan_full = min(secs(lambda: plan(data_all, POL)) for _ in range(3))

# ---- (1) decision latency: one process() per bar close, on the store's last N_LAT bars
N_LAT = 150
lat_start = IDX[-N_LAT]
led1 = TMP / 'latency.sqlite'
t1 = trader(led1, lat_start, LAST)
t1.feed.update()                                             # speed 0: every stored bar of the period is handed out; we step `upto` by hand
reset(); wall = []
for close in IDX[-N_LAT:] + H:
    t = time.perf_counter(); n = t1.process(close); wall.append(time.perf_counter() - t)
    assert n == 1, (close, n)
t1.close()
wall = np.array(wall); lag = bars(led1).lag.to_numpy(); tp, tb, tbar = (np.array(T[k]) for k in ('plan', 'batch', 'bar'))
assert len(lag) == len(wall) == len(tp) == N_LAT

# ---- (2) replay of a year at speed 0, against backtest_agent on the same candles
N_YEAR = 8760
y0, y1 = IDX[-N_YEAR], LAST
led2 = TMP / 'year.sqlite'
reset()
t = time.perf_counter()
t2 = trader(led2, y0, y1); t_open2 = time.perf_counter() - t
how = t2.run(); t2.close()
t_year = time.perf_counter() - t
nb = len(bars(led2)); assert how == 'finished' and nb == N_YEAR, (how, nb)
yr_plan, yr_batch, yr_bar = sum(T['plan']), sum(T['batch']), sum(T['bar']); yr_plans = len(T['plan'])

def bt():
    d = load_data(SYMS, TF, end=y1)
    return backtest_agent(d, POL, None, None, None, PS['init_cash'], start=y0, sample='paper')
bt()
t_bt = min(secs(bt) for _ in range(2))
t = time.perf_counter(); par = parity(led2); t_par = time.perf_counter() - t

prof = None
if PROFILE:
    led2p = TMP / 'year-profile.sqlite'
    pr = cProfile.Profile(); pr.enable()
    tp_ = trader(led2p, y0, y1); tp_.run(); tp_.close()
    pr.disable()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats('cumulative').print_stats(12); prof = s.getvalue()

# ---- (3) restart after a one-day outage: run to 24 bars before the end, stop, open a new trader with the feed 24 bars ahead
r0 = IDX[-24 * 8]                                            # a week of trading before the outage
led3 = TMP / 'restart.sqlite'
t3 = trader(led3, r0, IDX[-25]); t3.run(); t3.close()
shutil.copy(led3, TMP / 'restart-cli.sqlite')
prev = pd.Timestamp(bars(led3).time.iloc[-1]); assert prev == IDX[-25]
reset()
t = time.perf_counter()
feed = ReplayFeed(KEYS, r0, LAST, 0, resume=prev + H); t_feed = time.perf_counter() - t
cfg = account_config('paper', POL, TF, False, PS['init_cash'], r0, {'start': utc_text(r0), 'end': utc_text(LAST)})
t = time.perf_counter()
t3 = Trader(feed, cfg, led3, POL).open(); t_open3 = time.perf_counter() - t
how = t3.run(); t3.close(); t_catch = time.perf_counter() - t
b3 = bars(led3); assert how == 'finished' and pd.Timestamp(b3.time.iloc[-1]) == LAST and len(b3) == 24 * 8, (how, len(b3))
with sqlite3.connect(led3) as con: rec = con.execute("SELECT detail FROM events WHERE kind = 'recovered'").fetchall()
assert rec, 'no recovered event'

env = {**os.environ}
tbot_exe = str(Path(sys.executable).parent / 'tbot')
t = time.perf_counter()
subprocess.run([sys.executable, '-c', 'import tbot.cli, tbot.paper'], check=True, env=env); t_import = time.perf_counter() - t
t = time.perf_counter()
p = subprocess.run([tbot_exe, 'paper', 'start', '--replay', f"{r0:%Y-%m-%dT%H:%M}..{LAST:%Y-%m-%dT%H:%M}", '--ledger', str(TMP / 'restart-cli.sqlite')],
                   capture_output=True, text=True, env=env)
t_cli = time.perf_counter() - t
assert p.returncode == 0, p.stderr
assert len(bars(TMP / 'restart-cli.sqlite')) == 24 * 8

# ---- the figures
ms = lambda x: f"{x * 1e3:8.1f} ms"
q = lambda a, k: float(np.percentile(a, k))
rest = wall - tp
print(f"paper trader, BTC+ETH 1h, default agent ({len(POL.bots)} bots: {', '.join(POL.bot_names)}), store {IDX[0]:%Y-%m-%d}..{LAST:%Y-%m-%d %H:%M} "
      f"({len(IDX):,} bars x 2); fees {tr.costs().fees:.2%}, slippage {tr.costs().slippage:.2%}, next-open fills; paper, in-sample replay")
print(f"one plan of the whole history ({len(IDX):,} bars x 2), warm: {t_plan_full:.2f} s")
print(f"(1) decision latency, {N_LAT} bars {IDX[-N_LAT]:%Y-%m-%d %H:%M}..{LAST:%Y-%m-%d %H:%M}, one process() per bar close (8+ years behind each):")
print(f"    call to commit:           median {ms(q(wall, 50))}   p99 {ms(q(wall, 99))}   max {ms(wall.max())}   (goal p99 < 1 s)")
print(f"    recorded `lag` (bars):    median {ms(q(lag, 50))}   p99 {ms(q(lag, 99))}   (taken before the bar's transaction)")
print(f"    of which plan():          median {ms(q(tp, 50))}   p99 {ms(q(tp, 99))}   share of the total {tp.sum() / wall.sum():6.1%}")
print(f"    rest of _batch (history, frames, strategies, decision log): median {ms(q(tb - tp, 50))}   share {(tb - tp).sum() / wall.sum():6.1%}")
print(f"    _bar (kernel step + ledger transaction): median {ms(q(tbar, 50))}   p99 {ms(q(tbar, 99))}   share {tbar.sum() / wall.sum():6.1%}")
print(f"(2) replay of {N_YEAR:,} bars {y0:%Y-%m-%d %H:%M}..{y1:%Y-%m-%d %H:%M} at speed 0 (Trader.run + ReplayFeed, {len(IDX) - N_YEAR:,} bars behind):")
print(f"    trader:                 {t_year:7.2f} s   {N_YEAR / t_year:8.0f} bars/s   (goal < 10 s; feed+open {t_open2:.2f} s, {yr_plans} plan(s) {yr_plan:.2f} s, "
      f"rest of batch {yr_batch - yr_plan:.2f} s, {N_YEAR:,} bar transactions {yr_bar:.2f} s = {yr_bar / N_YEAR * 1e3:.2f} ms/bar)")
print(f"    backtest_agent:         {t_bt:7.2f} s   {N_YEAR / t_bt:8.0f} bars/s   (load_data(end=last bar) + whole backtest, start= replay start; "
      f"trader/backtest {t_year / t_bt:.1f}x)")
print(f"    parity of the trader's record against that backtest: {'OK' if par['ok'] else 'BROKEN'} ({par['fills']} fills, max equity difference "
      f"{par['max_equity_difference']}) in {t_par:.1f} s")
print(f"    naive replan every bar: {t_plan_full * N_YEAR:7.0f} s = {t_plan_full * N_YEAR / 60:.0f} min ({t_plan_full:.2f} s x {N_YEAR:,}), "
      f"{t_plan_full * N_YEAR / t_year:.0f}x the batched run")
print(f"(3) restart after a one-day outage (24 bars missed, {len(IDX) - 24:,} bars behind):")
print(f"    in process: feed (store read) {ms(t_feed)}, Trader.open() {ms(t_open3)}, open() to the 24th bar committed {ms(t_catch)} "
      f"(of which plan {ms(sum(T['plan']))}, 24 bars {ms(sum(T['bar']))})")
print(f"    `tbot paper start` as a subprocess, start to exit (incl. the final status): {t_cli:6.2f} s; of which Python + `import tbot.cli, tbot.paper` alone {t_import:.2f} s")
print(f"    recorded: {rec[-1][0]}")
print()
print(f"{'figure':<52}{'value':>14}{'goal':>10}")
for k, v, g in [('decision latency p50 (call to commit)', ms(q(wall, 50)), ''), ('decision latency p99 (call to commit)', ms(q(wall, 99)), '< 1 s'),
                ('  plan() share of it', f"{tp.sum() / wall.sum():.1%}", ''),
                ('  kernel + ledger tx per bar p50', ms(q(tbar, 50)), ''),
                (f'replay {N_YEAR:,} bars, trader', f"{t_year:.2f} s", '< 10 s'), ('replay bars/s, trader', f"{N_YEAR / t_year:,.0f}", ''),
                ('backtest_agent, same candles', f"{t_bt:.2f} s", ''), ('trader / backtest', f"{t_year / t_bt:.1f}x", ''),
                ('naive replan per bar, estimated', f"{t_plan_full * N_YEAR / 60:.0f} min", ''),
                ('restart: open() to 24 missed bars committed', f"{t_catch:.2f} s", ''), ('restart: `tbot paper start` subprocess', f"{t_cli:.2f} s", ''),
                ('  of which python + imports', f"{t_import:.2f} s", '')]:
    print(f"{k:<52}{v.strip():>14}{g:>10}")
if prof: print('\ncProfile of the replay year (top entries by cumulative time):\n' + prof)
