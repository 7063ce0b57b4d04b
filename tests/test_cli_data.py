"""`tbot data` and `tbot run` end to end on the shared real files, as a user runs them."""
import json, shutil, subprocess, sys, textwrap
from pathlib import Path
import pandas as pd, pytest
from conftest import tbot, one_line_error

def files(d): return sorted(str(p.relative_to(d)) for p in Path(d).rglob('*') if p.is_file()) if Path(d).exists() else []

def test_every_subcommand_has_help_naming_its_options():
    expect = {(): ['fetch', 'import', 'list', 'check', 'synth'], ('fetch',): ['--exchange', '--symbols', '--timeframes', '--since', '--json'],
              ('import',): ['dir', '--exchange', '--json'], ('list',): ['--json'], ('check',): ['symbol', 'timeframe', '--exchange'],
              ('synth',): ['--symbol', '--timeframe', '--bars', '--seed']}
    for sub, words in expect.items():
        p = tbot('data', *sub, '--help')
        assert p.stdout.startswith(f"usage: tbot data {' '.join(sub)}".rstrip()) and p.stderr == ''
        assert all(w in p.stdout for w in words), (sub, p.stdout)
    assert '--offline' in tbot('run', '--help').stdout
    assert 'fetch, import, list, check and synthesise candles' in tbot('--help').stdout

def test_import_list_check_load_the_shared_real_files(store, shared):
    imp = json.loads(tbot('data', 'import', str(shared), '--json').stdout)
    assert {(r['symbol'], r['timeframe']) for r in imp} == {(s, t) for s in ('BTC/USDT', 'ETH/USDT') for t in ('1h', '5m', '1m')}
    inv = {(r['symbol'], r['timeframe']): r for r in json.loads(tbot('data', 'list', '--json').stdout)}
    assert inv[('BTC/USDT', '1h')]['rows'] == 73265 and inv[('ETH/USDT', '1m')]['rows'] == 43200
    assert inv[('BTC/USDT', '5m')]['missing_bars'] == 16 and inv[('BTC/USDT', '1m')]['missing_bars'] == 0
    q = json.loads(tbot('data', 'check', 'BTC/USDT', '1h', '--json').stdout)
    assert (q['rows'], q['gap_count'], q['missing_bars'], q['duplicates'], q['ohlc_violations'], q['zero_volume']) == (73265, 27, 122, 0, 0, 3)
    assert q['largest_gap'] == {'start': '2018-02-08 00:00:00+00:00', 'end': '2018-02-09 10:00:00+00:00', 'missing': 33}
    assert q['first'] == '2018-01-01 00:00:00+00:00' and q['last'] == '2026-05-16 18:00:00+00:00'
    text = tbot('data', 'check', 'ETH/USDT', '5m').stdout
    assert 'gap_count' in text and 'largest_gap' in text
    from tbot.data import load
    raw = pd.read_feather(shared / 'ETH_USDT-5m.feather').set_index('date')
    got = load('ETH/USDT', '5m', 'binance', data_dir=store)
    assert (got.to_numpy() == raw[got.columns].to_numpy()).all() and (got.index == raw.index).all()

def test_import_takes_the_exchange_from_the_folder_name_or_the_flag(store, shared, tmp_path):
    src = tmp_path / 'user_data' / 'mydata'; src.mkdir(parents=True)
    shutil.copy(shared / 'BTC_USDT-1m.json', src / 'XRP_USDT_USDT-1m-futures.json')
    shutil.copy(shared / 'BTC_USDT-1m.json', src / 'XRP_USDT-1m.json')
    err = one_line_error(tbot('data', 'import', str(src), check=False))
    assert 'not a ccxt exchange id' in err and files(store) == []
    rows = json.loads(tbot('data', 'import', str(src), '--exchange', 'bybit', '--json').stdout)
    assert {r['symbol'] for r in rows} == {'XRP/USDT', 'XRP/USDT:USDT'}             # futures kept distinct from spot
    assert files(store) == ['bybit/XRP_USDT-1m.parquet', 'bybit/XRP_USDT_USDT-1m-futures.parquet']

@pytest.mark.parametrize('case', ['truncated', 'name_disagrees', 'off_grid', 'duplicates', 'unsorted', 'not_json'])
def test_bad_files_get_one_line_and_write_nothing(store, shared, tmp_path, case):
    src = tmp_path / 'binance'; src.mkdir()
    shutil.copy(shared / 'ETH_USDT-1h.feather', src / 'ETH_USDT-1h.feather')  # a good file beside the bad one
    rows = json.loads((shared / 'BTC_USDT-1m.json').read_text())[:500]
    name = 'BTC_USDT-1m.json'
    if case == 'truncated': body = json.dumps(rows)[:-40]
    elif case == 'name_disagrees': name, body = 'BTC_USDT-5m.json', json.dumps(rows)
    elif case == 'off_grid': body = json.dumps([[r[0] + 7000] + r[1:] for r in rows])
    elif case == 'duplicates': body = json.dumps(rows[:100] + rows[99:])
    elif case == 'unsorted': body = json.dumps(rows[:10] + rows[11:12] + rows[10:11] + rows[12:])
    elif case == 'not_json': body = 'date,open,high\n1,2,3\n'
    (src / name).write_text(body)
    err = one_line_error(tbot('data', 'import', str(src), check=False))
    assert name in err
    assert files(store) == []                                     # the good file was not imported either

def test_unknown_inputs_are_one_line_errors(store, shared):
    tbot('data', 'import', str(shared))
    assert 'unknown timeframe' in one_line_error(tbot('data', 'check', 'BTC/USDT', '2x', check=False))
    assert 'no DOGE/USDT 1h candles' in one_line_error(tbot('data', 'check', 'DOGE/USDT', '1h', check=False))
    assert 'bad symbol' in one_line_error(tbot('data', 'check', 'BTCUSDT', '1h', check=False))
    assert 'unknown exchange' in one_line_error(tbot('data', 'fetch', '--exchange', 'nope', check=False))
    assert 'unknown command' in one_line_error(tbot('dta', check=False))

def test_a_crash_mid_write_leaves_the_previous_file_intact(store, shared):
    tbot('data', 'import', str(shared))
    target = store / 'binance' / 'BTC_USDT-1h.parquet'
    before = target.read_bytes()
    crash = textwrap.dedent('''
        import os, pyarrow.parquet as pq
        from tbot import data
        def dying_write(table, f, **kw):
            f.write(b'PAR1' + b'x' * 100_000); f.flush(); os._exit(9)   # the process dies half-way through the write
        pq.write_table = dying_write
        df = data.load('BTC/USDT', '1h', 'binance')
        data.write_series(df.iloc[:10], data.Series('binance', 'BTC/USDT', '1h'))
    ''')
    p = subprocess.run([sys.executable, '-c', crash], capture_output=True, text=True, timeout=120)
    assert p.returncode == 9
    assert target.read_bytes() == before
    from tbot.data import load
    assert len(load('BTC/USDT', '1h', 'binance', data_dir=store)) == 73265

@pytest.mark.slow
def test_run_on_an_empty_store_without_network_publishes_a_loudly_synthetic_report(store):
    env = {'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9', 'NO_PROXY': ''}
    p = tbot('run', env=env)
    lines = p.stdout.splitlines()
    assert 'fetch failed' in p.stdout and 'SYNTHETIC' in lines[-1]
    assert files(store) == ['synthetic/BTC_USDT-1h.parquet', 'synthetic/ETH_USDT-1h.parquet']
    out = json.loads(tbot('run', '--json', env=env).stdout)         # the second run reuses the synthetic store
    assert out['synthetic'] and 'SYNTHETIC' in out['title'] and 'synthetic' in out['summary'].lower()
    assert Path(out['html']).is_file() and Path(out['index']).is_file()

@pytest.mark.slow
def test_run_reports_on_real_candles_in_the_store(store, shared):
    from tbot import data
    for s in ('BTC/USDT', 'ETH/USDT'):
        df = data.read_candle_file(shared / f"{s.replace('/', '_')}-1h.feather").loc['2022-06-01':'2023-06-30']
        data.write_series(df, data.Series('binance', s, '1h'), store)
    out = json.loads(tbot('run', '--json').stdout)
    assert not out['synthetic'] and 'SYNTHETIC' not in out['title']
    m = json.loads((Path(out['report']) / 'manifest.json').read_text())
    assert m['status'] == 'ok'
