"""Several traders on one machine: `tbot paper status --all` finds every trader's ledger under the data folder (recursively) plus
`--ledger` ones, one line each with the halt first, halted traders first; `--json` gives what `tbot paper status` gives for each.
The second trader is docker-compose.yml's: ETH/USDT on 5m with its own settings file (deploy/eth-5m.ini) and ledger."""
import hashlib, json, os, signal, subprocess, time
from pathlib import Path
import pytest
from conftest import ROOT, TBOT, tbot, one_line_error
from tbot.data import Series, read_candle_file, write_series

HALT = {'TBOT_RISK_PORTFOLIO_STOP': '0.01', 'TBOT_RISK_CPPI_MULTIPLIER': '0', 'TBOT_RISK_TIPP': '0'}   # a 1% stop, no risk budget: it fires

def snapshot(d:Path)->dict:
    "Every file's bytes, but the WAL index (-shm) and an empty -wal: SQLite makes both for any reader of a WAL database."
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob('*'))
            if p.is_file() and not p.name.endswith('-shm') and not (p.name.endswith('-wal') and p.stat().st_size == 0)}

@pytest.fixture(scope='module')
def fleet(tmp_path_factory, shared):
    "Two finished replay traders under the data folder (the first halted; the second compose's ETH 5m), one outside it, a research ledger and a stray file."
    t = tmp_path_factory.mktemp('fleet'); d = t / 'data'
    for sym in ('BTC/USDT', 'ETH/USDT'):
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-1h.feather").loc['2021-09-01':'2022-06-30 23:00'], Series('binance', sym, '1h'), d)
    write_series(read_candle_file(shared / 'ETH_USDT-5m.feather').loc['2023-01-01':'2023-03-05'], Series('binance', 'ETH/USDT', '5m'), d)
    env = {'TBOT_DATA_DIR': str(d), 'TBOT_REPORTS_DIR': str(t / 'reports')}
    first, second, outside = d / 'ledger.sqlite', d / 'eth-5m' / 'ledger.sqlite', t / 'elsewhere' / 'trader.sqlite'
    assert tbot('paper', 'start', '--replay', '2022-05-01:2022-05-20', '--ledger', first, env={**env, **HALT}).stdout.startswith('HALTED')
    tbot('paper', 'start', '--replay', '2023-03-01:2023-03-01', '--symbols', 'ETH/USDT', '--timeframe', '5m', '--ledger', second,
         env={**env, 'TBOT_SETTINGS': str(ROOT / 'deploy' / 'eth-5m.ini')})
    tbot('paper', 'start', '--replay', '2022-05-01:2022-05-02', '--ledger', outside, env=env)
    from tbot.ledger import connect
    connect(d / 'research.sqlite').close()          # research tables, no trading account: not a trader
    (d / 'stray.sqlite').write_text('not a database')
    return {'env': env, 'data': d, 'first': first, 'second': second, 'outside': outside}

def test_status_all_one_line_each_halt_first(fleet):
    before = snapshot(fleet['data'].parent)
    out = tbot('paper', 'status', '--all', env=fleet['env']).stdout.splitlines()
    assert out[0] == '2 trader(s), 1 HALTED', out
    assert out[1].startswith('HALTED since') and out[1].endswith(str(fleet['first'])) and 'paper BTC/USDT,ETH/USDT 1h' in out[1]
    assert out[2].startswith('paper ETH/USDT 5m on replay 2023-03-01') and out[2].endswith(str(fleet['second']))
    for line in out[1:]: assert 'vs buy-and-hold' in line and 'not running' in line and 'last bar' in line
    assert snapshot(fleet['data'].parent) == before                 # read-only

def test_status_all_json_equals_each_status(fleet):
    rows = json.loads(tbot('paper', 'status', '--all', '--json', '--ledger', fleet['outside'], env=fleet['env']).stdout)
    assert [r['ledger'] for r in rows] == [str(fleet[k]) for k in ('first', 'second', 'outside')]
    assert [r['timeframe'] for r in rows] == ['1h', '5m', '1h'] and [bool(r['halted']) for r in rows] == [True, False, False]
    for r in rows:
        one = json.loads(tbot('paper', 'status', '--json', '--ledger', r['ledger'], env=fleet['env']).stdout)
        for k in ('symbols', 'last_bar', 'equity', 'buy_and_hold', 'fills', 'halted', 'running'): assert r[k] == one[k], (r['ledger'], k)
        assert r['error'] is None and r['mode'] == 'paper'

def test_status_all_says_which_runs(fleet, tmp_path):
    led = fleet['data'] / 'live-ish' / 'ledger.sqlite'
    proc = subprocess.Popen([TBOT, 'paper', 'start', '--replay', '2022-05-01:2022-06-30', '--speed', '3600', '--ledger', str(led)],
                            env={**os.environ, **fleet['env']}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        t = time.monotonic()
        while time.monotonic() - t < 120:
            rows = json.loads(tbot('paper', 'status', '--all', '--json', env=fleet['env']).stdout)
            mine = [r for r in rows if r['ledger'] == str(led)]
            if mine and mine[0].get('last_bar'): break
            time.sleep(1)
        assert mine[0]['running'] == proc.pid and [r['running'] for r in rows if r['ledger'] != str(led)] == [None, None]
        line = [l for l in tbot('paper', 'status', '--all', env=fleet['env']).stdout.splitlines() if l.endswith(str(led))][0]
        assert f'running (pid {proc.pid})' in line
    finally:
        proc.send_signal(signal.SIGTERM); proc.wait(60)
    assert proc.returncode == 0, proc.stderr.read()

def test_status_all_refuses_a_ledger_that_is_not_a_traders(fleet, tmp_path):
    for bad in (fleet['data'] / 'research.sqlite', fleet['data'] / 'stray.sqlite', tmp_path / 'missing.sqlite'):
        one_line_error(tbot('paper', 'status', '--all', '--ledger', bad, env=fleet['env'], check=False), 'no trader')
    assert not (tmp_path / 'missing.sqlite').exists()
    empty = tmp_path / 'empty'
    assert tbot('paper', 'status', '--all', env={**fleet['env'], 'TBOT_DATA_DIR': str(empty)}).stdout.startswith('no trader found')

def test_traders_and_scheduler_write_tbot_logs(fleet, tmp_path):
    "The traders' events and bars and the scheduler's runs are JSON lines in <reports>/logs/tbot.jsonl (`tbot logs`), secrets redacted."
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    log = Path(fleet['env']['TBOT_REPORTS_DIR']) / 'logs' / 'tbot.jsonl'
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    trader = [l for l in lines if l['logger'] == 'tbot.trader']
    for led in (fleet['first'], fleet['second'], fleet['outside']):
        mine = [l for l in trader if l.get('ledger') == str(led)]
        assert [l['event'] for l in mine if 'event' in l][:1] == ['started'] and any(l['msg'].startswith('bar ') for l in mine), led
        assert mine[0]['data']['commit'] and mine[0]['data']['settings_hash']       # the deployment, as recorded
    assert any(l['level'] == 'WARNING' and 'halted' in l['msg'] for l in trader if l.get('ledger') == str(fleet['first']))
    nb = tmp_path / 'tiny.ipynb'
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1\noutput_dir = ''", metadata={'tags': ['parameters']}),
                                       new_code_cell("from tbot import runkit\nrunkit.record(output_dir, title='tiny', metrics={'headline': {'x': x}})")],
                                metadata={'kernelspec': {'name': 'python3', 'display_name': 'python3', 'language': 'python'}}), str(nb))
    ini = tmp_path / 'settings.ini'; ini.write_text(f"[schedule]\ntiny = every 1d | {nb} | x=2\n")
    env = {**fleet['env'], 'TBOT_SETTINGS': str(ini), 'TBOT_BINANCE_API_SECRET': 'sekret-4f8a2b9c7d1e'}
    tbot('schedule', '--once', 'tiny', env=env, cwd=ROOT)
    sched = [json.loads(l) for l in log.read_text().splitlines() if '"tbot.schedule"' in l]
    assert [l['msg'] for l in sched][-1] == 'tiny ok' and sched[-1]['run']['status'] == 'ok'
    shown = tbot('logs', '-n', '3', env=env).stdout
    assert 'tiny ok' in shown and 'sekret-4f8a' not in log.read_text()
