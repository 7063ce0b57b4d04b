"""Papermill overhead: one backtest report (`tbot.reports.run_report('backtest', ...)`) against the same backtest called directly.

On the shared BTC/USDT 1h series (73k bars), EMA crossover 12/26, default fees. Prints the direct call (warm), the report's
wall time split into notebook execution and publishing (HTML export, hashes, manifest, index), and a minimal notebook's
papermill run (kernel start and teardown: the fixed cost of any report)."""
import json, os, shutil, statistics, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / 'shared' / 'data' / 'binance'
tmp = Path(tempfile.mkdtemp(prefix='tbot-bench-reports-'))
os.environ['TBOT_DATA_DIR'] = str(tmp / 'data'); os.environ['TBOT_REPORTS_DIR'] = str(tmp / 'reports')
os.chdir(ROOT)

from tbot import data, reports
from tbot import backtest as bt
import nbformat
from nbformat.v4 import new_code_cell, new_notebook

df = data.read_candle_file(SHARED / 'BTC_USDT-1h.feather')
data.write_series(df, data.Series('binance', 'BTC/USDT', '1h'))
params = {'symbols': 'BTC/USDT', 'timeframe': '1h', 'strategy': 'ema_cross', 'params': {'fast': 12, 'slow': 26}}

def direct():
    d = data.load('BTC/USDT', '1h')
    return bt.backtest(d, 'ema_cross', {'fast': 12, 'slow': 26})
direct()  # warm: numba caches loaded, imports done
t_direct = statistics.median([(lambda t: (direct(), time.perf_counter() - t)[1])(time.perf_counter()) for _ in range(5)])

# the same backtest in a fresh process, as a script would run it: imports (vectorbt, numba caches) included
import subprocess
cold_code = ("from tbot import data, backtest as bt; r = bt.backtest(data.load('BTC/USDT', '1h'), 'ema_cross', {'fast': 12, 'slow': 26}); "
             "print(r.stats['total_return'])")
t0 = time.perf_counter(); subprocess.run([sys.executable, '-c', cold_code], check=True, capture_output=True); t_cold = time.perf_counter() - t0

tiny = tmp / 'tiny.ipynb'
nbformat.write(new_notebook(cells=[new_code_cell("output_dir = ''", metadata={'tags': ['parameters']}),
                                   new_code_cell("from tbot import runkit\nrunkit.record(output_dir, metrics={'headline': {'ok': True}})")],
                            metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}), str(tiny))
assert reports.run_report(str(tiny))['status'] == 'ok'  # warm the parent process (papermill, nbformat, nbconvert imports)
t0 = time.perf_counter(); reports.run_report(str(tiny)); t_tiny = time.perf_counter() - t0

runs = []
for _ in range(2):
    t0 = time.perf_counter(); res = reports.run_report('backtest', params); wall = time.perf_counter() - t0
    assert res['status'] == 'ok', res
    m = json.loads((Path(res['folder']) / 'manifest.json').read_text())
    runs.append((wall, m['seconds'], sum(f.stat().st_size for f in Path(res['folder']).iterdir())))
wall, executing, size = min(runs)
metrics = json.loads((Path(res['folder']) / 'metrics.json').read_text())
assert abs(metrics['stats']['total_return'] - direct().stats['total_return']) < 1e-12  # the report computed the same backtest

print(f"BTC/USDT 1h, {len(df):,} bars, ema_cross 12/26, fees 0.1%, slippage 0.05%, next-open fills")
print(f"direct tbot.backtest.backtest (warm, load included): {t_direct * 1000:8.1f} ms")
print(f"direct, in a fresh python process (imports included): {t_cold:8.2f} s")
print(f"backtest report through papermill (wall):          {wall:8.2f} s  = {wall / t_direct:,.0f} x the direct call")
print(f"  executing the notebook (kernel start, imports, regimes, charts): {executing:.2f} s")
print(f"  publishing (HTML export, hashes, manifest, secret scan, index): {wall - executing:.2f} s")
print(f"  artefacts: {size / 1e6:.1f} MB (HTML with plotly.js embedded once, executed .ipynb, metrics, manifest)")
print(f"minimal notebook through papermill (the fixed cost of any report): {t_tiny:.2f} s")
print(f"papermill overhead of one report: {wall - t_cold:.2f} s over a fresh-process script, {wall - t_direct:.2f} s over a warm call")
shutil.rmtree(tmp, ignore_errors=True)
