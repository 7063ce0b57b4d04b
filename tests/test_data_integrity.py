"""The store keeps its promises: imports merge, bad prices and future candles stay out, kill -9 leaves no corrupt file and no debris."""
import json, os, random, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np, pandas as pd, pyarrow as pa, pyarrow.feather as pf, pyarrow.parquet as pq, pytest
from binance_stub import BinanceStub
from forked import Forker
from tbot import data

TBOT = str(Path(sys.executable).parent / 'tbot')
TESTS = str(Path(__file__).parent)

def tbot(*args, check=True, env=None):
    p = subprocess.run([TBOT, *args], capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})})
    if check: assert p.returncode == 0, p.stderr
    return p

def one_line_error(p):
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr.count('\n') == 1 and p.stderr.startswith('tbot: error: ') and 'Traceback' not in p.stderr, p.stderr
    return p.stderr

def parquet_files(d): return sorted(Path(d).rglob('*.parquet')) if Path(d).exists() else []
def debris(d): return sorted(Path(d).rglob('.*.tmp')) if Path(d).exists() else []

@pytest.fixture(scope='module')
def btc1h(shared): return data.read_candle_file(shared / 'BTC_USDT-1h.feather')

@pytest.fixture
def btc_store(store, btc1h):
    "The store holding the full real BTC/USDT 1h history (73,265 candles)."
    data.write_series(btc1h, data.Series('binance', 'BTC/USDT', '1h'), store)
    return store

def freqtrade_folder(tmp_path, name, df, fname='BTC_USDT-1h.feather'):
    "A freqtrade data folder holding `df` as one feather file (date as a column, like freqtrade writes it)."
    d = tmp_path / name / 'binance'; d.mkdir(parents=True)
    df.rename_axis('date').reset_index().to_feather(d / fname)
    return d

# --- 1. an import merges ---

def test_a_short_import_merges_and_never_shortens_the_store(btc_store, btc1h, tmp_path):
    rows = json.loads(tbot('data', 'import', str(freqtrade_folder(tmp_path, 'short', btc1h.iloc[-500:])), '--json').stdout)
    assert [(r['rows'], r['added'], r['stored']) for r in rows] == [(500, 0, 73265)]
    pd.testing.assert_frame_equal(data.load('BTC/USDT', '1h', 'binance', data_dir=btc_store), btc1h, check_freq=False, check_exact=True)

def test_an_import_extends_a_store_that_holds_the_start(store, btc1h, tmp_path):
    tbot('data', 'import', str(freqtrade_folder(tmp_path, 'start', btc1h.iloc[:40_000])))
    rows = json.loads(tbot('data', 'import', str(freqtrade_folder(tmp_path, 'rest', btc1h.iloc[39_000:])), '--json').stdout)
    assert [(r['added'], r['stored']) for r in rows] == [(73265 - 40_000, 73265)]
    pd.testing.assert_frame_equal(data.load('BTC/USDT', '1h', 'binance', data_dir=store), btc1h, check_freq=False, check_exact=True)

def test_an_import_that_disagrees_with_the_store_is_refused_and_writes_nothing(btc_store, shared, btc1h, tmp_path):
    before = {p: p.read_bytes() for p in parquet_files(btc_store)}
    other = btc1h.iloc[-500:].copy(); other.iloc[100:, other.columns.get_loc('volume')] += 1
    src = freqtrade_folder(tmp_path, 'other', other)
    (src / 'ETH_USDT-1h.feather').write_bytes((shared / 'ETH_USDT-1h.feather').read_bytes())  # a good file beside it
    err = one_line_error(tbot('data', 'import', str(src), check=False))
    assert 'BTC_USDT-1h.feather: 400 bars disagree' in err and f'first {btc1h.index[-400]}' in err, err
    assert {p: p.read_bytes() for p in parquet_files(btc_store)} == before

# --- 2. bad prices and impossible times stay out ---

def spoiled(btc1h, case):
    "The last 500 real hours with one bad bar at 2026-05-16 00:00 (or a bad timestamp), as a pyarrow table."
    df = btc1h.iloc[-500:].rename_axis('date').reset_index()
    at = len(df) - 19
    if case in ('nan_close', 'zero_open', 'negative_close', 'inf_high', 'high_below_low', 'negative_volume'):
        col, v = {'nan_close': ('close', np.nan), 'zero_open': ('open', 0.), 'negative_close': ('close', -5.), 'inf_high': ('high', np.inf),
                  'high_below_low': ('high', df.low[at] - 1), 'negative_volume': ('volume', -1.)}[case]
        df.loc[at, col] = v
        return pa.Table.from_pandas(df, preserve_index=False)
    if case == 'null_close':
        t = pa.Table.from_pandas(df, preserve_index=False)
        close = t['close'].to_pylist(); close[at] = None
        return t.set_column(t.schema.get_field_index('close'), 'close', pa.array(close, pa.float64()))
    if case in ('year_2200', 'year_2300'):                               # whole seconds, as pandas cannot hold 2300 in ns
        dates = df.date.dt.tz_localize(None).to_numpy().astype('datetime64[s]'); dates[-1] = np.datetime64(f'{case[-4:]}-01-01', 's')
        t = pa.Table.from_pandas(df.drop(columns='date'), preserve_index=False)
        return t.add_column(0, 'date', pa.array(dates, pa.timestamp('s', tz='UTC')))
    raise ValueError(case)

@pytest.mark.parametrize('case,says', [
    ('nan_close', 'missing or infinite'), ('null_close', 'missing or infinite'), ('inf_high', 'missing or infinite'),
    ('zero_open', 'zero or negative'), ('negative_close', 'zero or negative'), ('negative_volume', 'negative volume'),
    ('high_below_low', 'do not contain the open and close'), ('year_2200', 'in the future'), ('year_2300', 'in the future')])
def test_bad_prices_and_future_candles_are_refused_with_the_file_and_the_bar(btc_store, btc1h, tmp_path, case, says):
    before = {p: p.read_bytes() for p in parquet_files(btc_store)}
    src = tmp_path / 'bad' / 'binance'; src.mkdir(parents=True)
    pf.write_feather(spoiled(btc1h, case), src / 'BTC_USDT-1h.feather')
    err = one_line_error(tbot('data', 'import', str(src), check=False))
    bar = '2200-01-01 00:00:00+00:00' if case == 'year_2200' else '2300-01-01 00:00:00+00:00' if case == 'year_2300' else '2026-05-16 00:00:00+00:00'
    assert 'BTC_USDT-1h.feather' in err and says in err and bar in err, err
    assert {p: p.read_bytes() for p in parquet_files(btc_store)} == before

def test_a_json_file_dated_past_2262_is_one_line(store, shared, tmp_path):
    src = tmp_path / 'binance'; src.mkdir()
    rows = json.loads((shared / 'BTC_USDT-1m.json').read_text())[:500]
    rows[-1][0] = 10**13 * 3                                             # the year 2920
    (src / 'BTC_USDT-1m.json').write_text(json.dumps(rows))
    err = one_line_error(tbot('data', 'import', str(src), check=False))
    assert 'BTC_USDT-1m.json' in err and 'in the future' in err and '2920' in err, err
    assert parquet_files(store) == []

def test_check_counts_bad_bars_a_store_already_holds(store, btc1h):
    "A store written before prices were checked: `data check` counts each bad bar, an infinite high included."
    df = btc1h.iloc[:1000].copy()
    df.iloc[10, 1] = np.inf; df.iloc[20, 3] = np.nan; df.iloc[30, 0] = 0; df.iloc[40, 3] = -df.iloc[40, 3]; df.iloc[50, 1] = df.iloc[50, 2] - 1
    t = pa.Table.from_pandas(df, preserve_index=True)
    t = t.replace_schema_metadata({**t.schema.metadata, b'tbot': json.dumps({'exchange': 'binance', 'symbol': 'BTC/USDT', 'timeframe': '1h', 'synthetic': False}).encode()})
    (store / 'binance').mkdir(parents=True); pq.write_table(t, store / 'binance' / 'BTC_USDT-1h.parquet')
    q = json.loads(tbot('data', 'check', 'BTC/USDT', '1h', '--json').stdout)
    assert (q['ohlc_violations'], q['non_finite'], q['non_positive']) == (5, 2, 2), q

# --- 3. bad options are one line, before any work ---

@pytest.mark.parametrize('args,says', [
    (['data', 'synth', '--bars', '-5'], '--bars'), (['data', 'synth', '--bars', 'many'], 'not a number'),
    (['data', 'synth', '--bars', '2.5'], 'whole number'), (['data', 'synth', '--seed', '-1'], '--seed'),
    (['data', 'synth', '--bars', '3000000'], 'past 2262'), (['data', 'synth', '--timeframe', '7x'], 'unknown timeframe'),
    (['data', 'synth', '--symbol', 'SYN'], 'bad symbol'),
    (['data', 'fetch', '--since', 'yesterday'], '--since'), (['data', 'fetch', '--since', '2999-01-01'], 'in the future'),
    (['data', 'fetch', '--symbols', 'BTCUSDT'], 'bad symbol'), (['data', 'fetch', '--timeframes', '1x'], 'unknown timeframe')])
def test_bad_options_are_one_line_and_write_nothing(store, args, says):
    env = {'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', 'NO_PROXY': ''}  # refused before any request
    err = one_line_error(tbot(*args, check=False, env=env))
    assert says in err and 'cannot reach' not in err, err
    assert not store.exists() or not any(store.rglob('*'))

@pytest.mark.parametrize('args', [['data', 'list'], ['data', 'check', 'BTC/USDT', '1h'], ['data', 'import', 'SHARED'], ['data', 'synth'],
                                  ['data', 'fetch', '--symbols', 'BTC/USDT', '--timeframes', '1h']])
def test_a_store_setting_that_is_a_file_is_named(tmp_path, shared, args):
    f = tmp_path / 'passwd'; f.write_text('root:x:0:0:root:/root:/bin/bash\n')
    env = {'TBOT_DATA_DIR': str(f), 'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', 'NO_PROXY': ''}
    err = one_line_error(tbot(*[str(shared) if a == 'SHARED' else a for a in args], check=False, env=env))
    assert f'the store {f} is a file, not a folder' in err, err
    assert f.read_text().startswith('root:')

# --- 4. kill -9: no corrupt file, no debris ---

DIE_MID_WRITE = textwrap.dedent('''
    import os, sys, pyarrow.parquet as pq
    from tbot import data
    def dying_write(table, f, **kw):
        f.write(b'PAR1' + b'x' * 100_000); f.flush(); os.kill(os.getpid(), 9)   # killed half-way through the write
    pq.write_table = dying_write
    data.write_series(data.load(sys.argv[1], '1h', sys.argv[2]).iloc[:10], data.Series(sys.argv[2], sys.argv[1], '1h'))
''')

def test_debris_of_a_killed_writer_is_removed_at_the_next_start_and_a_live_writers_file_is_kept(btc_store, shared, tmp_path):
    store = btc_store
    data.write_series(data.read_candle_file(shared / 'ETH_USDT-1h.feather'), data.Series('binance', 'ETH/USDT', '1h'), store)
    data.store_synthetic(n=5000, data_dir=store)
    src = tmp_path / 'binance'; src.mkdir(); (src / 'BTC_USDT-1h.feather').write_bytes((shared / 'BTC_USDT-1h.feather').read_bytes())
    for sym, ex in [('BTC/USDT', 'binance'), ('ETH/USDT', 'binance'), ('SYN/USDT', 'synthetic')]:
        p = subprocess.run([sys.executable, '-c', DIE_MID_WRITE, sym, ex], capture_output=True, text=True, timeout=120)
        assert p.returncode == -9, p.stderr
    left = debris(store)
    assert len(left) == 3
    live = subprocess.Popen(['sleep', '60'])                      # stands in for a writer that is still at work
    try:
        mine = store / 'binance' / f'.BTC_USDT-1h.parquet.{live.pid}.abcd1234.tmp'; mine.write_bytes(b'PAR1 still writing')
        p = tbot('data', 'import', str(src))
        assert p.stderr == f'tbot: removed 2 temporary files left in {store / "binance"} by interrupted writes\n', p.stderr
        assert debris(store) == [mine, *[d for d in left if d.parent.name == 'synthetic']]
        p = tbot('data', 'synth', '--bars', '5000')
        assert p.stderr == f'tbot: removed 1 temporary file left in {store / "synthetic"} by interrupted writes\n', p.stderr
        assert debris(store) == [mine]
        assert tbot('data', 'import', str(src)).stderr == ''           # nothing more to say
    finally:
        live.kill(); live.wait()
    assert len(data.load('BTC/USDT', '1h', 'binance', data_dir=store)) == 73265

def test_fetch_cleans_its_folder_before_writing(store, shared, capfd):
    btc5m = data.read_candle_file(shared / 'BTC_USDT-5m.feather').loc['2023-01-01':'2023-01-01 23:55']
    (store / 'binance').mkdir(parents=True)
    dead = subprocess.Popen(['true']); dead.wait()
    (store / 'binance' / f'.BTC_USDT-5m.parquet.{dead.pid}.abcd1234.tmp').write_bytes(b'PAR1 half')
    from fake_binance import FakeBinance
    from tbot.exchange import Exchange, connect
    from tbot.fetch import fetch
    with FakeBinance({('BTCUSDT', '5m'): btc5m}) as fake:
        fetch(['BTC/USDT'], ['5m'], since='2023-01-01', data_dir=store, progress=False,
              ex=Exchange(connect(urls=fake.url, timeout=2, credentials=False), retries=2, delay=0.01))
    assert 'removed 1 temporary file' in capfd.readouterr().err and debris(store) == []

def kill_at_random(cmd, folder, rng, window):
    "Start `cmd`; kill -9 it at a random moment within `window` seconds, or (every other time) just as it writes a store file."
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mid_write = rng.random() < 0.5
    deadline = time.time() + (120 if mid_write else rng.uniform(0.2, window))
    while p.poll() is None and time.time() < deadline:
        if mid_write and any(f'.{p.pid}.' in d.name for d in debris(folder)):
            time.sleep(rng.uniform(0, 0.005)); break
        time.sleep(0.002)
    killed = p.poll() is None
    if killed: p.send_signal(signal.SIGKILL)
    p.wait(timeout=60)
    return killed, sum(f'.{p.pid}.' in d.name for d in debris(folder))  # killed, and the temporary files it left

def kill_forked_at_random(fk, args, folder, rng, window):
    "`kill_at_random` for `tbot *args` forked by `fk` (a `forked.Forker`): SIGKILL at a random moment within `window` seconds, or (every other time) just as it writes a store file."
    pid = fk.start(args, env=dict(os.environ), cwd=folder.parent, stdout=os.devnull, stderr=os.devnull)
    mid_write = rng.random() < 0.5
    deadline = time.time() + (120 if mid_write else rng.uniform(0, window))
    while (code := fk.wait(0)) is None and time.time() < deadline:
        if mid_write and any(f'.{pid}.' in d.name for d in debris(folder)):
            time.sleep(rng.uniform(0, 0.005)); break
        time.sleep(0.002)
    if code is None: fk.kill(); code = fk.wait(60)                # SIGKILL: no handler, no cleanup, no flush
    assert code in (0, -signal.SIGKILL), code                      # killed, or it finished the import without error
    return code == -signal.SIGKILL, sum(f'.{pid}.' in d.name for d in debris(folder))  # killed, and the temporary files it left

@pytest.mark.slow
def test_50_kills_during_import_leave_no_corrupt_file_and_no_debris(store, shared, tmp_path):
    "50 `tbot data import` processes killed -9 at random moments, half of them as they write; the store stays whole and clean."
    # Each is forked from a server that has imported pandas, pyarrow & co (tests/forked.py): a kill costs the import's work, not
    # Python's start; each is still a process of its own that imports tbot, runs the console command's `main`, and dies of a real SIGKILL.
    src = tmp_path / 'binance'; src.mkdir()
    for f in ('BTC_USDT-1h.feather', 'ETH_USDT-1h.feather', 'ETH_USDT-5m.feather'): (src / f).write_bytes((shared / f).read_bytes())
    full = {f: data.read_candle_file(src / f) for f in sorted(os.listdir(src))}
    series = {f: data.Series('binance', *data.parse_filename(f)[:2]) for f in full}
    start = {f: df.iloc[:len(df) // 2] for f, df in full.items()}
    for f, df in start.items(): data.write_series(df, series[f], store)
    half = {f: s.path(store).read_bytes() for f, s in series.items()}         # the store holding half of each series
    def restart():                                                            # every import starts from half of each series
        for f, s in series.items(): s.path(store).write_bytes(half[f])
    cmd = ('data', 'import', str(src))
    with Forker() as fk:                                                      # each command forked from a server that imported pandas & co
        fk.start(['--version'], dict(os.environ), tmp_path, os.devnull, os.devnull); assert fk.wait(300) == 0   # the server is up
        t = time.time(); fk.start(cmd, dict(os.environ), tmp_path, os.devnull, os.devnull)
        assert fk.wait(300) == 0; window = time.time() - t                    # how long one import takes here
        assert all(len(data.read_series(s.path(store))) == len(full[f]) for f, s in series.items())
        rng, kills, mid = random.Random(9), 0, 0
        for i in range(100):                                                  # 50 tries, and more while fewer than 40 kills landed: a kill
            if i >= 50 and kills >= 40 and mid >= 15: break                   # misses when the import ends sooner than `window` measured
            restart()
            killed, left = kill_forked_at_random(fk, cmd, store, rng, window)
            kills += killed; mid += left > 0
            for f, s in series.items():
                got = data.read_series(s.path(store))                          # readable: never a half-written file
                assert len(got) in (len(start[f]), len(full[f])), (i, f, len(got))
                pd.testing.assert_frame_equal(got, full[f].iloc[:len(got)], check_freq=False, check_exact=True)  # exact: no 1e-5 tolerance, and ms, not s (the default boxes every timestamp)
    assert kills >= 40 and mid >= 15, (kills, mid)                          # most kills landed, many mid-write
    p = tbot('data', 'import', str(src))                                     # the console command itself, as a user runs it
    assert 'removed' in p.stderr and debris(store) == []
    for f, s in series.items(): pd.testing.assert_frame_equal(data.read_series(s.path(store)), full[f], check_freq=False, check_exact=True)

FETCH = textwrap.dedent('''
    import sys; sys.path.insert(0, sys.argv[1])
    from tbot.exchange import Exchange, connect
    from tbot.fetch import fetch
    ex = Exchange(connect(urls=sys.argv[2], timeout=5, credentials=False), retries=2, delay=0.01)
    fetch(['BTC/USDT'], ['5m'], since='2023-01-01', data_dir=sys.argv[3], ex=ex, progress=False, flush_every=int(sys.argv[4]))
''')

@pytest.mark.slow
def test_30_kills_during_fetch_leave_no_corrupt_file_and_resume_to_the_source(store, shared):
    btc5m = data.read_candle_file(shared / 'BTC_USDT-5m.feather')      # 104,816 real candles: 1,049 pages of 100, more than 30 short runs fetch
    path = store / 'binance' / 'BTC_USDT-5m.parquet'
    rng, kills, mid = random.Random(30), 0, 0
    from fake_binance import FakeBinance                                # the exchange layer's fake: /time, exchangeInfo, klines
    with FakeBinance({('BTCUSDT', '5m'): btc5m}, max_limit=100) as stub:
        cmd = [sys.executable, '-c', FETCH, TESTS, stub.url, str(store)]
        for i in range(30):
            killed, left = kill_at_random(cmd + ['1'], store, rng, 5.0)     # a save after every page
            kills += killed; mid += left > 0
            if path.exists():
                got = data.read_series(path)
                pd.testing.assert_frame_equal(got, btc5m.iloc[:len(got)], check_freq=False)   # a whole prefix of the source
        assert kills == 30 and mid >= 3, (kills, mid)
        assert len(data.read_series(path)) < len(btc5m)                     # the kills stopped it short of the end ...
        p = subprocess.run(cmd + ['100'], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
    pd.testing.assert_frame_equal(data.read_series(path), btc5m, check_freq=False)   # ... and the resumed fetch ends equal to the source
    assert debris(store) == []
