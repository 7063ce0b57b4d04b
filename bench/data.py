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

# Fetch: the whole BTC/USDT 5m history through ccxt's binance class and the exchange layer, from the fake Binance on 127.0.0.1.
import sys
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from fake_binance import FakeBinance
from tbot.exchange import Exchange, connect
from tbot.fetch import fetch
btc5m = data.read_candle_file(SHARED / 'BTC_USDT-5m.feather')
store = Path(tempfile.mkdtemp())
with FakeBinance({('BTCUSDT', '5m'): btc5m}) as fake:
    t = time.perf_counter()
    fetch(['BTC/USDT'], ['5m'], since=btc5m.index[0], data_dir=store, progress=False,
          ex=Exchange(connect(urls=fake.url, timeout=10, rateLimit=1, credentials=False)))
    t_fetch = time.perf_counter() - t
assert len(data.load('BTC/USDT', '5m', 'binance', data_dir=store)) == len(btc5m)
print(f"fetch BTC/USDT 5m ({len(btc5m):,} rows, pages of 1000, local fake): {t_fetch:6.2f} s")
shutil.rmtree(store)
