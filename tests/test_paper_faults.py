"""The paper TRADER (not only its feed) on live candles through ccxt's own `binance` class, pointed at the fake Binance server of
`fake_binance.py` on 127.0.0.1 (no mocks of ccxt, no network). Over 1,000+ injected faults (timeouts, 429 with Retry-After, 418,
5xx, malformed JSON, dropped sockets, -1021 clock errors, late and missing candles, a skewed exchange clock) the trader never
raises, never processes a bar before its candles closed by the exchange's clock or on candles it does not hold, never processes
a bar twice or out of order, and ends with a ledger equal, row for row, to a fault-free run's, and equal to the backtest
(`tbot.paper.parity`). Then `tbot paper start` as a user runs it: against an exchange that cannot be reached (one line, exit 2,
nothing written) and live against the fake server, whose clock the test moves on (bars as they close, a clean SIGTERM stop)."""
import json, os, random, signal, socket, sqlite3, subprocess, threading, time
from pathlib import Path
import numpy as np, pandas as pd, pytest
from conftest import TBOT, tbot, one_line_error, try_rows, wait_for
from fake_binance import FAULTS, FakeBinance, shared_candles
from tbot.config import TbotError
from tbot.data import Series, write_series
from tbot.exchange import Exchange, connect
from tbot.feed import LiveFeed
from tbot.ledger import utc_text
from tbot.trader import Trader, account_config

UTC = lambda s: pd.Timestamp(s, tz='UTC')
H = pd.Timedelta('1h')
SYMS = ('BTC/USDT', 'ETH/USDT')
KEYS = [(s, '1h') for s in SYMS]
HIST = UTC('2021-11-01')            # the store's first candle: a short history, so each plan is fast
T0 = UTC('2022-05-05')              # the first bar the trader may trade: the LUNA crash follows
STEPS = 100                         # bars the fake's clock moves through, one hour at a time

class FakeClock:
    "A monotonic clock that a fake sleep moves on: backoffs and Retry-After pauses take no wall time."
    def __init__(self): self.t = 0.0
    def monotonic(self): return self.t
    def sleep(self, s): self.t += s

@pytest.fixture(scope='module')
def real():
    "The shared real BTC/USDT and ETH/USDT 1h candles from HIST to the run's end (and a day beyond), as the fake serves them."
    return shared_candles(SYMS, ('1h',), HIST, T0 + (STEPS + 24) * H)

def fill_store(d:Path, real:dict)->Path:
    "A store holding the real candles up to (not including) the bar of T0."
    for sym in SYMS: write_series(real[(sym.replace('/', ''), '1h')].loc[:T0 - H], Series('binance', sym, '1h'), d)
    return d

def rows(ledger:Path, sql:str, *params)->list:
    con = sqlite3.connect(f'file:{ledger}?mode=ro', uri=True, timeout=30)
    try: return con.execute(sql, params).fetchall()
    finally: con.close()

def record(ledger:Path)->dict:
    "What must not depend on faults: bars (all but wall-clock columns), fills (every column), orders, trade decisions."
    return {'bars': rows(ledger, 'SELECT account, time, n, equity, status, risk, prices, targets, regimes, split, strategies FROM bars ORDER BY time'),
            'fills': rows(ledger, 'SELECT * FROM fills ORDER BY seq'),
            'orders': rows(ledger, 'SELECT * FROM orders ORDER BY id'),
            'trade_decisions': rows(ledger, 'SELECT * FROM trade_decisions ORDER BY id')}

def server_now(fake)->pd.Timestamp: return pd.Timestamp(fake.now_ms(), unit='ms', tz='UTC')

class Run:
    "One paper trader on a LiveFeed on `fake`, its ledger and store in `d`: the in-process form of `Trader.run`'s loop."
    def __init__(self, fake, d:Path, policy, timeout:float, clock:FakeClock|None=None):
        kw = dict(sleep=clock.sleep, monotonic=clock.monotonic) if clock else {}
        self.ex = Exchange(connect(urls=fake.url, timeout=timeout, rateLimit=1, credentials=False),
                           retries=4, delay=0.001, max_delay=0.01, max_pause=60, **kw)
        self.feed = LiveFeed(self.ex, KEYS, poll=60, settle=0, gap_wait=1e9, data_dir=d, sleep=clock.sleep if clock else (lambda s: None))
        self.ledger = d / 'ledger.sqlite'
        self.trader = Trader(self.feed, account_config('paper', policy, '1h', False, 1000, start=T0, replay=None), self.ledger, policy).open()
        self.upto, self.plans, self.kinds = None, 0, []

    def update(self)->int:
        "Look at the exchange once, record its events, and process every bar newly complete; the number of bars processed."
        upto = self.feed.update()
        for e in self.feed.drain_events():
            self.kinds.append(e['kind']); self.trader.event(e['kind'], e.get('detail', ''), time=e.get('time'))
        if upto is None or upto == self.upto: return 0   # nothing new: a plan would find no bar (Trader.run would plan anyway)
        self.upto, self.plans = upto, self.plans + 1
        return self.trader.process(upto)

def check_bars(run:Run, real:dict, clock_before:pd.Timestamp):
    "Every processed bar: contiguous from T0, once each, closed by the exchange's clock, on candles held for both symbols, real prices."
    bars = rows(run.ledger, 'SELECT time, n, prices FROM bars ORDER BY n')
    times = pd.DatetimeIndex([pd.Timestamp(t) for t, _, _ in bars])
    assert list(times) == list(T0 + H * np.arange(len(bars))), 'bars not contiguous from T0, or one twice'
    assert [n for _, n, _ in bars] == list(range(len(bars)))
    if not len(bars): return 0
    assert run.trader.last_bar == times[-1]
    assert times[-1] + H <= clock_before, f"bar {times[-1]} processed before it closed by the exchange's clock {clock_before}"
    for sym in SYMS:
        exp, held = real[(sym.replace('/', ''), '1h')], run.feed.frames[(sym, '1h')]
        assert held.index[-1] >= times[-1], f'{sym}: bar {times[-1]} processed without its candle'
        run_ = exp.loc[held.index[0]:held.index[-1]]                       # held: an exact unbroken run of the real candles
        assert np.array_equal(held.index.asi8, run_.index.asi8) and np.array_equal(held.to_numpy(), run_.to_numpy()), sym
        closes = [json.loads(p)[sym] for _, _, p in bars]
        assert closes == list(exp.close.loc[times].astype(float)), f'{sym}: a bar was processed on prices that are not the real closes'
    return len(bars)

WEIGHTS = {'timeout': 2, '429': 6, '418': 3, '500': 8, '503': 8, '1007': 5, 'malformed': 8, 'drop': 6, 'skew': 4, 'late': 6, 'hole': 6}
SKEWS = [0, 0, 0, -120, -90, 45, 150, 300]   # seconds; with 30-50 s after a close, the exchange's clock is never within 30 s of one

@pytest.mark.slow
def test_the_trader_survives_a_bad_week_and_ends_where_a_fault_free_run_ends(real, tmp_path, monkeypatch):
    bad_week(real, tmp_path, monkeypatch)

def bad_week(real, tmp_path, monkeypatch):
    from tbot.portfolio import policy_for
    from tbot.paper import parity
    pol = policy_for(list(SYMS))
    t_start = time.monotonic()
    # --- the fault-free run: the same trader, the same steps, no fault ---
    clean = fill_store(tmp_path / 'clean', real)
    monkeypatch.setenv('TBOT_DATA_DIR', str(clean))
    with FakeBinance(real, now=T0 + pd.Timedelta('40s')) as fake:
        ok = Run(fake, clean, pol, timeout=10)
        for step in range(1, STEPS + 1):
            fake.set_now(T0 + step * H + pd.Timedelta('40s'))
            before = server_now(fake)
            assert ok.update() == 1                                           # one bar an hour, as it closes
            assert check_bars(ok, real, before) == step
        assert fake.served_faults == []
    ok.trader.close()
    assert not {'error', 'pause', 'gap', 'late'} & set(ok.kinds), ok.kinds
    t_clean = time.monotonic() - t_start

    # --- the bad week: the same trader, 1,000+ faults ---
    bad = fill_store(tmp_path / 'bad', real)
    monkeypatch.setenv('TBOT_DATA_DIR', str(bad))
    rng, clock = random.Random(11), FakeClock()
    with FakeBinance(real, now=T0 + pd.Timedelta('40s'), slow=0.12, retry_after=0) as fake:
        run = Run(fake, bad, pol, timeout=0.08, clock=clock)
        missing, updates, lagged, again = {}, 0, 0, 0
        for step in range(1, STEPS + 1):
            close = T0 + step * H
            fake.skew = rng.choice(SKEWS)
            fake.set_now(close + pd.Timedelta(seconds=rng.choice([30, 40, 50])))
            fake.retry_after = rng.choice([0, 0, 0, 1, 5, 120])               # 120 s: more than max_pause, a ban
            clock.t += 3600                                                    # an hour of the machine's clock too
            for t in [t for t, until in missing.items() if until <= step]: fake.missing.discard(t); del missing[t]
            if rng.random() < 0.15:                                            # a candle the exchange lacks for a while
                t = close - H * rng.choice([1, 1, 2])
                fake.missing.add(t); missing[t] = step + rng.choice([1, 2, 3])
            kinds = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=rng.randint(8, 15))
            fake.inject(*kinds[:-2]); fake.inject(*kinds[-2:], path='*')
            for u in range(rng.choice([2, 3, 3, 4])):                          # several looks while the faults are queued
                before = server_now(fake)
                run.update(); updates += 1                                     # never raises
                n = check_bars(run, real, before)
                run.feed.wait(threading.Event())                               # asks the exchange's clock too; takes no wall time
            lagged += n < step - (1 if fake.skew < -40 else 0)
            if step % 10 == 0 and run.upto is not None:                        # the same `upto` again: nothing is processed twice
                assert run.trader.process(run.upto) == 0; again += 1
        served = [f for _, f in fake.served_faults]
        with fake.lock: fake._queues.clear()                                   # the bad week ends
        fake.missing.clear(); fake.skew = 0; fake.retry_after = 0; clock.t += 1000
        for _ in range(3):
            before = server_now(fake); run.update(); check_bars(run, real, before)
    run.trader.close()
    t_bad = time.monotonic() - t_start - t_clean

    assert len(served) >= 1000, len(served)
    assert set(served) == set(FAULTS), set(FAULTS) - set(served)              # every kind of fault, at least once
    assert lagged > 0, 'the faults never held the trader back: they were not felt'
    assert {'gap', 'late', 'error', 'pause', 'clock'} <= set(run.kinds), set(run.kinds)
    kinds = [k for (k,) in rows(run.ledger, 'SELECT kind FROM events')]
    assert {'gap', 'late', 'error', 'pause', 'clock'} <= set(kinds)          # and recorded in the ledger
    assert run.trader.last_bar == ok.trader.last_bar == T0 + (STEPS - 1) * H
    mine, theirs = record(run.ledger), record(ok.ledger)
    assert len(theirs['bars']) == STEPS and len(theirs['fills']) > 0
    for table in theirs: assert mine[table] == theirs[table], f'{table} differ from the fault-free run'
    p = parity(run.ledger)
    assert p['ok'] and p['bars'] == STEPS and p['fills'] == len(theirs['fills']), p
    print(f"\n{len(served)} faults served over {updates} updates; {run.plans} plans (fault-free {ok.plans}); {again} repeats; "
          f"{len(theirs['fills'])} fills; fault-free {t_clean:.1f} s, bad week {t_bad:.1f} s")

# --- `tbot paper start` live, as a user runs it ----------------------------------------------------------------------------

def closed_port()->int:
    "A port of 127.0.0.1 nothing listens on."
    s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()
    return port

def env_for(d:Path, **extra)->dict:
    return {'TBOT_DATA_DIR': str(d), 'TBOT_REPORTS_DIR': str(d.parent / 'reports'), **extra}

def test_live_start_against_an_unreachable_exchange_is_one_line_fast_and_writes_nothing(real, tmp_path):
    d = fill_store(tmp_path / 'data', real)
    before = sorted((str(p), p.stat().st_mtime_ns) for p in d.rglob('*'))
    env = env_for(d, TBOT_EXCHANGE_URL=f'http://127.0.0.1:{closed_port()}', TBOT_EXCHANGE_RETRIES='1', TBOT_EXCHANGE_TIMEOUT='1')
    t = time.monotonic()
    p = tbot('paper', 'start', env=env, check=False, timeout=60)
    took = time.monotonic() - t
    line = one_line_error(p, 'binance')
    assert 'reach' in line, line
    assert took < 15, took
    assert sorted((str(p), p.stat().st_mtime_ns) for p in d.rglob('*')) == before   # no ledger, no lock, the store untouched
    assert not any(p.name.startswith('ledger') for p in d.iterdir())

def bar_times(ledger:Path)->list: return [pd.Timestamp(t) for (t,) in try_rows(ledger, 'SELECT time FROM bars ORDER BY time')]

@pytest.mark.slow
def test_live_start_processes_bars_as_they_close_and_stops_on_sigterm(real, tmp_path):
    d = fill_store(tmp_path / 'data', real)
    ledger = d / 'ledger.sqlite'
    with FakeBinance(real, now=T0 + pd.Timedelta('20s')) as fake:
        env = env_for(d, TBOT_EXCHANGE_URL=fake.url, TBOT_PAPER_POLL='0.2', TBOT_PAPER_SETTLE='0', TBOT_EXCHANGE_RETRY_DELAY='0.01')
        proc = subprocess.Popen([TBOT, 'paper', 'start'], env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: try_rows(ledger, "SELECT 1 FROM events WHERE kind = 'started'"), 60, 'the trader to start')
            start = pd.Timestamp(rows(ledger, 'SELECT start FROM accounts')[0][0])
            assert T0 <= start < T0 + pd.Timedelta('1min')                    # the exchange's clock, not the machine's
            first = start.ceil('h')                                            # the first bar opening at or after the start
            time.sleep(1.0); assert bar_times(ledger) == []                    # its candle has not closed yet: nothing
            for k in range(2, 6):
                close = first + (k - 1) * H
                fake.set_now(close - pd.Timedelta('2s'))                       # just before the close: still nothing new
                time.sleep(1.0)
                assert bar_times(ledger) == [first + i * H for i in range(k - 2)], 'a bar was processed before its candle closed'
                fake.set_now(close + pd.Timedelta('1s'))
                wait_for(lambda: len(bar_times(ledger)) == k - 1 or proc.poll() is not None, 30, f'the bar of {close - H}')
                if proc.poll() is not None: break                              # it died: its stderr says why, below
                assert bar_times(ledger) == [first + i * H for i in range(k - 1)]
            died = proc.poll() is not None
            if not died: proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        except AssertionError as e:   # say what the trader was doing
            if proc.poll() is None: proc.kill()
            out, err = proc.communicate(timeout=30)
            evs = try_rows(ledger, 'SELECT kind, time, detail FROM events ORDER BY id')
            raise AssertionError(f"{e}\nevents: {evs[-8:]}\nstderr: {err[-2000:]}") from None
        finally:
            if proc.poll() is None: proc.kill(); proc.wait()
    assert not died, f'the trader died while running (exit {proc.returncode}): {err}'
    assert proc.returncode == 0, err
    assert 'Traceback' not in err, err
    ev = [k for (k,) in rows(ledger, 'SELECT kind FROM events ORDER BY id')]
    assert ev[0] == 'started' and ev[-1] == 'stopped' and 'error' not in ev, ev
    assert 'on live candles' in rows(ledger, "SELECT detail FROM events WHERE kind = 'started'")[0][0]
    prices = [json.loads(p) for (p,) in rows(ledger, 'SELECT prices FROM bars ORDER BY time')]
    for sym in SYMS:                                                           # the real closes, as served
        exp = real[(sym.replace('/', ''), '1h')].close.loc[[first + i * H for i in range(4)]]
        assert [p[sym] for p in prices] == list(exp.astype(float))
    o = json.loads(tbot('paper', 'parity', '--json', env=env_for(d), check=False).stdout)
    assert o['ok'] and o['bars'] == 4, o
    st = json.loads(tbot('paper', 'status', '--json', env=env_for(d)).stdout)
    assert st['running'] is None, st
