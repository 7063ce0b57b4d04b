"""The fetch path through ccxt's own HTTP, parsing and paging code, against recorded Binance answers on 127.0.0.1."""
import os, subprocess, sys, time
import numpy as np, pandas as pd, pytest
from binance_stub import BinanceStub, point_at
from tbot.config import TbotError
from tbot import data

TBOT = str(__import__('pathlib').Path(sys.executable).parent / 'tbot')  # the installed console command

@pytest.fixture(scope='module')
def btc5m(shared):
    df = data.read_candle_file(shared / 'BTC_USDT-5m.feather')
    return df.loc['2023-01-01':'2023-01-03 23:55']  # 864 real candles

def client(stub, timeout=2.0):
    return point_at(data.make_exchange('binance', timeout=timeout), stub.url)

def run_fetch(stub, store, **kw):
    kw.setdefault('retries', 4); kw.setdefault('delay', 0.01)
    return data.fetch(['BTC/USDT'], ['5m'], since='2023-01-01', data_dir=store, client=client(stub, kw.pop('timeout', 2.0)),
                      progress=False, **kw)

def test_pages_through_history_and_stores_exactly_the_candles(btc5m, store):
    with BinanceStub({('BTCUSDT', '5m'): btc5m}, max_limit=100) as stub:
        res = run_fetch(stub, store)
    got = data.load('BTC/USDT', '5m', 'binance', data_dir=store)
    pd.testing.assert_frame_equal(got, btc5m, check_freq=False)
    assert res[0]['added'] == 864
    starts = [int(r.split('startTime=')[1].split('&')[0]) for r in stub.klines_requests()]
    assert len(starts) == 10 and starts == sorted(starts)             # 9 full pages of 100, then an empty one
    assert np.all(np.diff(starts[:9]) == 100 * 300_000)             # each page starts where the last ended

def test_resumes_from_the_last_stored_candle_after_an_interruption(btc5m, store):
    with BinanceStub({('BTCUSDT', '5m'): btc5m}, max_limit=100) as stub:
        stub.faults = [None, None, None] + ['500'] * 10               # three good pages, then the exchange stays down
        with pytest.raises(TbotError, match='gave up after 4 attempts'):
            run_fetch(stub, store)
        part = data.load('BTC/USDT', '5m', 'binance', data_dir=store)
        assert len(part) == 300                                       # what was fetched before the failure is kept
        stub.faults, stub.requests = [], []
        res = run_fetch(stub, store)
    first = stub.klines_requests()[0]
    assert f"startTime={int(part.index[-1].value // 1e6) + 300_000}" in first
    assert res[0]['added'] == 564
    pd.testing.assert_frame_equal(data.load('BTC/USDT', '5m', 'binance', data_dir=store), btc5m, check_freq=False)

@pytest.mark.parametrize('faults', [['429'], ['500'], ['503'], ['429', '503', '500'], ['timeout'], ['drop'], ['malformed']])
def test_retries_transient_failures(btc5m, store, faults):
    sleeps = []
    with BinanceStub({('BTCUSDT', '5m'): btc5m}, max_limit=500) as stub:
        stub.faults = list(faults)
        run_fetch(stub, store, timeout=0.5, sleep=sleeps.append)
    assert len(data.load('BTC/USDT', '5m', 'binance', data_dir=store)) == 864
    assert sleeps == [0.01 * 2 ** i for i in range(len(faults))]      # exponential backoff

def test_malformed_answers_that_persist_fail_with_one_line(btc5m, store):
    with BinanceStub({('BTCUSDT', '5m'): btc5m}) as stub:
        stub.faults = ['malformed'] * 4
        with pytest.raises(TbotError) as e: run_fetch(stub, store)
    msg = str(e.value)
    assert '\n' not in msg and 'gave up after 4 attempts' in msg and '_Malformed' in msg
    assert not (store / 'binance' / 'BTC_USDT-5m.parquet').exists()  # nothing half-written

def test_never_stores_the_still_open_candle(btc5m, store):
    with BinanceStub({('BTCUSDT', '5m'): btc5m}, open_candle={('BTCUSDT', '5m'): True}) as stub:
        run_fetch(stub, store)
        served_open = any(True for _ in stub.klines_requests())
    got = data.load('BTC/USDT', '5m', 'binance', data_dir=store)
    assert served_open and got.index[-1] == btc5m.index[-1]
    assert got.index.max() < pd.Timestamp.now(tz='UTC') - pd.Timedelta('1D')

def test_unknown_symbol_and_timeframe_are_one_line_errors(btc5m, store):
    with BinanceStub({('BTCUSDT', '5m'): btc5m}) as stub:
        with pytest.raises(TbotError, match="binance has no symbol 'DOGE/USDT'"):
            data.fetch(['DOGE/USDT'], ['5m'], data_dir=store, client=client(stub), progress=False)
        with pytest.raises(TbotError, match="binance has no timeframe '7m'"):
            data.fetch(['BTC/USDT'], ['7m'], data_dir=store, client=client(stub), progress=False)

def test_no_network_fails_within_seconds_with_one_line(store, tmp_path):
    # Nothing leaves the machine: every request goes to a proxy on a closed local port, as with no network.
    env = {**os.environ, 'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', 'NO_PROXY': ''}
    t0 = time.time()
    p = subprocess.run([TBOT, 'data', 'fetch', '--symbols', 'BTC/USDT', '--timeframes', '1h'],
                       capture_output=True, text=True, env=env, timeout=60)
    assert time.time() - t0 < 20
    assert p.returncode == 2
    assert p.stderr.count('\n') == 1 and 'cannot reach the exchange' in p.stderr and 'Traceback' not in p.stderr
    assert not store.exists() or not any(store.rglob('*.parquet'))
