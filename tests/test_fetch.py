"""`tbot data fetch` on the exchange layer: ccxt's own `binance` class (HTTP, parsing, paging, error mapping) against the fake
Binance spot server of `fake_binance.py` on 127.0.0.1, serving the shared real candles. No mocks of ccxt, no network."""
import os, time
import numpy as np, pandas as pd, pytest
from conftest import tbot, one_line_error
from fake_binance import FakeBinance
from tbot.config import TbotError
from tbot import data
from tbot.exchange import Exchange, connect
from tbot.fetch import fetch

END = '2023-01-04 00:02'   # the fake's clock: the last of the 864 candles (23:55) has just closed

@pytest.fixture(scope='module')
def btc5m(shared):
    df = data.read_candle_file(shared / 'BTC_USDT-5m.feather')
    return df.loc['2023-01-01':'2023-01-03 23:55']  # 864 real candles

def exchange(fake, timeout=2.0, **kw):
    "An `Exchange` on ccxt's binance class, pointed at the fake, with tiny backoff delays."
    kw.setdefault('retries', 4); kw.setdefault('delay', 0.01)
    return Exchange(connect(urls=fake.url, timeout=timeout, rateLimit=1, credentials=False), **kw)

def run_fetch(fake, store, timeout=2.0, **kw):
    ex = exchange(fake, timeout, **kw)
    return fetch(['BTC/USDT'], ['5m'], since='2023-01-01', data_dir=store, ex=ex, progress=False), ex

def stored(store): return data.load('BTC/USDT', '5m', 'binance', data_dir=store)

def test_pages_through_history_and_stores_exactly_the_candles(btc5m, store):
    with FakeBinance({('BTCUSDT', '5m'): btc5m}, now=END, max_limit=100) as fake:
        res, _ = run_fetch(fake, store)
    pd.testing.assert_frame_equal(stored(store), btc5m, check_freq=False)
    assert (res[0]['added'], res[0]['rows'], res[0]['missing']) == (864, 864, 0)
    starts = [int(q['startTime']) for q in fake.calls()]
    assert len(starts) == 9 and np.all(np.diff(starts) == 100 * 300_000)   # 9 pages of 100, each where the last ended

def test_resumes_from_the_last_stored_candle_after_an_interruption(btc5m, store):
    with FakeBinance({('BTCUSDT', '5m'): btc5m}, now=END, max_limit=100) as fake:
        fake.faults = [None, None, None] + ['500'] * 10                    # three good pages, then the exchange stays down
        with pytest.raises(TbotError, match='gave up after 4 attempts'):
            run_fetch(fake, store)
        part = stored(store)
        assert len(part) == 300                                           # what was fetched before the failure is kept
        fake.faults, fake.requests = [], []
        res, _ = run_fetch(fake, store)
    assert fake.calls()[0]['startTime'] == str(int(part.index[-1].value // 10**6) + 300_000)
    assert res[0]['added'] == 564
    pd.testing.assert_frame_equal(stored(store), btc5m, check_freq=False)

@pytest.mark.parametrize('faults', [['429'], ['418'], ['500'], ['503'], ['1007'], ['429', '503', '500'], ['timeout'], ['drop'], ['malformed']])
def test_transient_failures_are_retried_as_the_policy_says(btc5m, store, faults):
    sleeps = []
    with FakeBinance({('BTCUSDT', '5m'): btc5m}, now=END, max_limit=500, retry_after=0, slow=0.6) as fake:
        fake.faults = list(faults)
        _, ex = run_fetch(fake, store, timeout=0.3, sleep=sleeps.append)
    pd.testing.assert_frame_equal(stored(store), btc5m, check_freq=False)
    kinds = [e['kind'] for e in ex.events if e['kind'] in ('retry', 'pause')]
    assert kinds == ['pause' if f in ('429', '418') else 'retry' for f in faults]
    assert sleeps == [0.01 * 2 ** i for i, k in enumerate(kinds) if k == 'retry']   # exponential backoff; a 429 waits its Retry-After (0)

def test_malformed_answers_that_persist_fail_with_one_line(btc5m, store):
    with FakeBinance({('BTCUSDT', '5m'): btc5m}, now=END) as fake:
        fake.faults = ['malformed'] * 4
        with pytest.raises(TbotError) as e: run_fetch(fake, store)
    msg = str(e.value)
    assert '\n' not in msg and 'gave up after 4 attempts' in msg and 'Malformed' in msg
    assert not (store / 'binance' / 'BTC_USDT-5m.parquet').exists()      # nothing half-written

def test_never_stores_the_still_open_candle(btc5m, store):
    with FakeBinance({('BTCUSDT', '5m'): btc5m}, now='2023-01-03 12:02') as fake:
        _, ex = run_fetch(fake, store)
        served = ex.client.fetch_ohlcv('BTC/USDT', '5m', since=int(pd.Timestamp('2023-01-03 11:00', tz='UTC').value // 10**6))
    assert pd.Timestamp(served[-1][0], unit='ms', tz='UTC') == pd.Timestamp('2023-01-03 12:00', tz='UTC')   # the exchange served it
    pd.testing.assert_frame_equal(stored(store), btc5m.loc[:'2023-01-03 11:55'], check_freq=False)

def test_a_candle_the_exchange_lacks_is_counted_not_invented(btc5m, store):
    with FakeBinance({('BTCUSDT', '5m'): btc5m}, now=END, max_limit=100) as fake:
        fake.missing.add('2023-01-02 10:00')
        res, ex = run_fetch(fake, store)
    assert (res[0]['rows'], res[0]['missing']) == (863, 1) and [e['kind'] for e in ex.events].count('gap') == 1
    pd.testing.assert_frame_equal(stored(store), btc5m.drop(pd.Timestamp('2023-01-02 10:00', tz='UTC')), check_freq=False)

def test_unknown_symbol_and_timeframe_are_one_line_errors_before_any_write(btc5m, store):
    with FakeBinance({('BTCUSDT', '5m'): btc5m}, now=END) as fake:
        with pytest.raises(TbotError, match="binance has no symbol 'DOGE/USDT'"):
            fetch(['BTC/USDT', 'DOGE/USDT'], ['5m'], data_dir=store, ex=exchange(fake), progress=False)
        with pytest.raises(TbotError, match="binance has no timeframe '7m'"):
            fetch(['BTC/USDT'], ['5m', '7m'], data_dir=store, ex=exchange(fake), progress=False)
        assert fake.calls() == []                                          # no candle asked for
    assert not store.exists()

def test_no_network_fails_within_seconds_with_one_line(store):
    # Nothing leaves the machine: every request goes to a proxy on a closed local port, as with no network.
    env = {'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', 'NO_PROXY': ''}
    t0 = time.time()
    p = tbot('data', 'fetch', '--symbols', 'BTC/USDT', '--timeframes', '1h', env=env, check=False, timeout=60)
    assert time.time() - t0 < 20
    one_line_error(p, 'cannot reach the exchange')
    assert not store.exists() or not any(store.rglob('*.parquet'))

@pytest.mark.parametrize('since, says', [('2999-01-01', 'is in the future'), ('01/13/2022x', 'is not a date')])
def test_a_bad_since_is_one_line_before_any_request(store, since, says):
    one_line_error(tbot('data', 'fetch', '--since', since, check=False), says)
    assert not store.exists()
