"""Benchmark: import, then load, the 73k-row BTC/USDT 1h series.  Prints figures; asserts nothing about time.

Reference in the same run: pandas reading the freqtrade feather file directly."""
import tempfile, time, shutil
from pathlib import Path
import pandas as pd
from tbot import data

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'binance'

def best(fn, n=7):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return min(ts)

store = Path(tempfile.mkdtemp())
t = time.perf_counter(); data.import_dir(SHARED, data_dir=store); t_import = time.perf_counter() - t
load = best(lambda: data.load('BTC/USDT', '1h', 'binance', data_dir=store))
load_slice = best(lambda: data.load('BTC/USDT', '1h', 'binance', start='2024-01-01', end='2024-12-31', data_dir=store))
ref = best(lambda: pd.read_feather(SHARED / 'BTC_USDT-1h.feather').set_index('date'))
check = best(lambda: data.quality_report(data.load('BTC/USDT', '1h', 'binance', data_dir=store), '1h'))
print(f"import shared folder (6 files, 442k rows): {t_import*1000:8.1f} ms")
print(f"load BTC/USDT 1h (73,265 rows):           {load*1000:8.1f} ms   (pandas read_feather of the raw file: {ref*1000:.1f} ms, ratio {load/ref:.2f}x)")
print(f"load one year slice:                      {load_slice*1000:8.1f} ms")
print(f"load + quality report:                    {check*1000:8.1f} ms")
shutil.rmtree(store)
