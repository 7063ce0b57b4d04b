"""The candle feed (tbot.feed). Replay: the stored real candles of a period at speed 0 and at speed N, resume, both timeframes at
once, and bad ranges. Live: ccxt's own `binance` class against the fake Binance spot server of `fake_binance.py` on 127.0.0.1
(no mocks of ccxt, no network), driven bar by bar over days of real candles with more than 1,000 injected faults. The feed must
never raise, `complete` must never go back or past a candle it holds, and the store must end equal to the fault-free candles."""
import random, threading, time
import numpy as np, pandas as pd, pytest
from fake_binance import FAULTS, FakeBinance, shared_candles
from tbot.config import TbotError
from tbot.data import Series, load, read_candle_file, write_series
from tbot.exchange import Exchange, connect
from tbot.feed import LiveFeed, ReplayFeed

UTC = lambda s: pd.Timestamp(s, tz='UTC')
H, M5 = pd.Timedelta('1h'), pd.Timedelta('5min')
KEYS = [('BTC/USDT', '1h'), ('ETH/USDT', '1h')]

def one_line(f, *says):
    "Assert `f()` raises a TbotError of one line holding each of `says`."
    with pytest.raises(TbotError) as e: f()
    msg = str(e.value)
    assert '\n' not in msg and all(s in msg for s in says), msg
    return msg

class FakeClock:
    "A monotonic clock that a fake sleep moves on: waits and pauses take no wall time."
    def __init__(self): self.t = 0.0; self.slept = []
    def monotonic(self): return self.t
    def sleep(self, s): self.slept.append(s); self.t += s

@pytest.fixture(scope='module')
def store_1h(tmp_path_factory, shared):
    "A store (read only) holding the shared real BTC/USDT and ETH/USDT 1h candles, and BTC/USDT 5m (2023)."
    d = tmp_path_factory.mktemp('store')
    for sym in ('BTC/USDT', 'ETH/USDT'):
        write_series(read_candle_file(shared / f"{sym.replace('/', '_')}-1h.feather"), Series('binance', sym, '1h'), d)
    write_series(read_candle_file(shared / 'BTC_USDT-5m.feather'), Series('binance', 'BTC/USDT', '5m'), d)
    return d

# --- replay -------------------------------------------------------------------------------------------------------------------

def test_replay_at_speed_zero_hands_out_the_whole_period_at_once(store_1h):
    feed = ReplayFeed(KEYS, '2022-05-01', '2022-05-31', data_dir=store_1h)
    assert (feed.mode, feed.done, feed.complete) == ('replay', False, None)
    assert all(len(df) == 0 for df in feed.history(UTC('2022-06-01')).values())   # nothing before the first update
    assert feed.update() == UTC('2022-06-01') and feed.done and feed.now() == UTC('2022-06-01')
    for key, df in feed.history(UTC('2030-01-01')).items():                          # capped at what was handed out
        pd.testing.assert_frame_equal(df, load(*key, 'binance', end='2022-05-31 23:00', data_dir=store_1h))
        assert df.index[0] == UTC('2018-01-01') and df.attrs['timeframe'] == '1h'    # the agent's past: the whole store
    mid = feed.history(UTC('2022-05-10 12:30'))[KEYS[0]]
    assert mid.index[-1] == UTC('2022-05-10 11:00')                                 # the 12:00 candle had not closed
    assert feed.update() == UTC('2022-06-01') and feed.drain_events() == []

def test_replay_at_speed_n_steps_bar_by_bar_to_the_same_bars(store_1h):
    clock = FakeClock()
    feed = ReplayFeed(KEYS, '2022-05-01', '2022-05-10', speed=7200, data_dir=store_1h, monotonic=clock.monotonic, sleep=clock.sleep)
    seen, bars = [feed.update()], []
    while not feed.done:
        feed.wait(threading.Event())
        c = feed.update(); seen.append(c)
        h = feed.history(c)
        assert all(df.index[-1] + H <= c for df in h.values())                      # never a candle still open
        bars.append(h[KEYS[0]].index[-1])
    assert seen[0] == UTC('2022-05-01') and seen[-1] == UTC('2022-05-11') and len(seen) == 241
    assert set(pd.Series(seen).diff().dropna()) == {H}                               # one bar a wait, none skipped, none twice
    assert clock.slept == [0.5] * 240                                                # an hour of market is half a second at 7200x
    assert bars == list(load('BTC/USDT', '1h', 'binance', '2022-05-01', '2022-05-10', data_dir=store_1h).index)
    fast = ReplayFeed(KEYS, '2022-05-01', '2022-05-10', data_dir=store_1h)     # speed 0 ends with the very same frames
    fast.update()
    for key in KEYS: pd.testing.assert_frame_equal(feed.history(seen[-1])[key], fast.history(fast.complete)[key])

def test_replay_on_the_real_wall_clock(store_1h):
    feed = ReplayFeed(KEYS, '2022-05-01', '2022-05-01', speed=360_000, data_dir=store_1h)   # an hour of market in 10 ms
    stop, t0, n = threading.Event(), time.monotonic(), 0
    while not feed.done: feed.wait(stop); feed.update(); n += 1
    assert feed.complete == UTC('2022-05-02') and 2 <= n <= 26 and time.monotonic() - t0 < 5

def test_replay_of_two_timeframes_steps_on_the_finer_grid(store_1h):
    keys = [('BTC/USDT', '1h'), ('BTC/USDT', '5m')]
    clock = FakeClock()
    feed = ReplayFeed(keys, '2023-03-01 00:00', '2023-03-01 05:59', speed=300, data_dir=store_1h, monotonic=clock.monotonic, sleep=clock.sleep)
    seen = [feed.update()]
    while not feed.done:
        feed.wait(threading.Event()); c = feed.update(); seen.append(c)
        h = feed.history(c)
        assert h[keys[1]].index[-1] + M5 == c                                       # every 5m bar, as it closes
        assert h[keys[0]].index[-1] + H <= c < h[keys[0]].index[-1] + 2 * H         # the last closed 1h bar, never the open one
    assert len(seen) == 73 and set(pd.Series(seen).diff().dropna()) == {M5} and seen[-1] == UTC('2023-03-01 06:00')

def test_replay_resumes_where_a_stopped_trader_left_off(store_1h):
    clock = FakeClock()
    feed = ReplayFeed(KEYS, '2022-05-01', '2022-05-03', speed=3600, resume='2022-05-02 12:00', data_dir=store_1h,
                      monotonic=clock.monotonic, sleep=clock.sleep)
    assert feed.update() == UTC('2022-05-02 12:00') and feed.history(feed.complete)[KEYS[0]].index[-1] == UTC('2022-05-02 11:00')
    feed.wait(threading.Event()); assert feed.update() == UTC('2022-05-02 13:00')
    done = ReplayFeed(KEYS, '2022-05-01', '2022-05-03', resume='2022-05-04', data_dir=store_1h)   # restarted after the end
    assert done.update() == UTC('2022-05-04') and done.done
    early = ReplayFeed(KEYS, '2022-05-01', '2022-05-03', speed=1, resume='2022-04-01', data_dir=store_1h)
    assert early.update() == UTC('2022-05-01')                                        # never before the period
    one_line(lambda: ReplayFeed(KEYS, '2022-05-01', '2022-05-03', resume='2022-05-05', data_dir=store_1h), 'already processed up to 2022-05-05')

@pytest.mark.parametrize('kw, says', [
    (dict(keys=[('DOGE/USDT', '1h')]), ["no DOGE/USDT 1h candles", 'tbot data list']),
    (dict(keys=[('BTC/USDT', '4h')]), ["no BTC/USDT 4h candles", 'tbot data list']),
    (dict(keys=[('BTC/USDT', '7x')]), ["unknown timeframe '7x'"]),
    (dict(keys=[]), ['no (symbol, timeframe) pairs']),
    (dict(start='2099-01-01'), ['run from 2018-01-01 00:00', 'before the start 2099-01-01']),
    (dict(keys=[('BTC/USDT', '5m')], start='2024-03-01'), ['BTC/USDT 5m candles run from 2023-01-01', 'before the start 2024-03-01']),
    (dict(start='2015-01-01', end='2016-01-01'), ['after the end 2016-01-01']),
    (dict(start='2022-05-03', end='2022-05-01'), ['the end 2022-05-01 23:59 is before the start 2022-05-03 00:00']),
    (dict(start='May the first'), ["replay start: 'May the first' is not a date"]),
    (dict(end='2022-13-01'), ["replay end: '2022-13-01' is not a date"]),
    (dict(speed=-5), ['replay speed', 'at least 0']),
    (dict(speed='fast'), ['replay speed', 'not a number']),
])
def test_bad_replays_are_one_line_before_any_work(store_1h, kw, says):
    args = dict(keys=KEYS, start='2022-05-01', end=None, speed=0.0, data_dir=store_1h) | kw
    one_line(lambda: ReplayFeed(**args), *says)

def test_a_hole_in_the_store_is_reported_when_the_replay_passes_it_never_filled(tmp_path, shared):
    btc = read_candle_file(shared / 'BTC_USDT-1h.feather').loc['2022-04-01':'2022-05-31']
    write_series(btc.drop([UTC('2022-05-02 10:00'), UTC('2022-05-02 11:00')]), Series('binance', 'BTC/USDT', '1h'), tmp_path)
    clock = FakeClock()
    feed = ReplayFeed([('BTC/USDT', '1h')], '2022-05-02', '2022-05-02', speed=3600, data_dir=tmp_path, monotonic=clock.monotonic, sleep=clock.sleep)
    events = []
    while not feed.done:
        feed.update(); events += [(feed.complete, e) for e in feed.drain_events()]; feed.wait(threading.Event())
    assert [(c, e['time'], e['kind']) for c, e in events] == [(UTC('2022-05-02 11:00'), UTC('2022-05-02 11:00'), 'gap')]
    assert events[0][1]['detail'] == 'BTC/USDT 1h: 2 candle(s) missing from the store from 2022-05-02 10:00 UTC; not filled'
    h = feed.history(feed.complete)[('BTC/USDT', '1h')]
    assert len(h.loc['2022-05-02']) == 22 and UTC('2022-05-02 10:00') not in h.index

# --- live ---------------------------------------------------------------------------------------------------------------------

def exchange(fake, clock=None, timeout=1.0, **kw):
    "An `Exchange` on ccxt's binance class pointed at the fake, with tiny backoffs; waits on `clock` take no wall time."
    kw.setdefault('retries', 4); kw.setdefault('delay', 0.001); kw.setdefault('max_delay', 0.01)
    if clock: kw.update(sleep=clock.sleep, monotonic=clock.monotonic)
    return Exchange(connect(urls=fake.url, timeout=timeout, rateLimit=1, credentials=False), **kw)

@pytest.fixture(scope='module')
def q2():
    return shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-04-01', '2022-06-30')

def test_construction_sends_nothing_and_the_first_update_catches_up(q2, tmp_path):
    with FakeBinance(q2, now='2022-05-09 12:30', max_limit=100) as fake:
        feed = LiveFeed(exchange(fake), KEYS, since='2022-04-01', data_dir=tmp_path)
        assert fake.requests == [] and feed.history(UTC('2022-05-09'))[KEYS[0]].empty and feed.complete is None
        assert (feed.mode, feed.done) == ('live', False)
        assert feed.update() == UTC('2022-05-09 12:00')
        assert len(fake.calls()) == 2 * 10                                            # 924 candles a symbol, in pages of 100
    for (sym, tf), df in feed.history(feed.complete).items():
        expect = fake.candles[(sym.replace('/', ''), tf)].loc[:'2022-05-09 11:00']
        pd.testing.assert_frame_equal(df, expect, check_freq=False)
        pd.testing.assert_frame_equal(load(sym, tf, 'binance', data_dir=tmp_path), expect, check_freq=False)

def test_a_missing_candle_holds_complete_until_it_comes(q2, tmp_path):
    with FakeBinance(q2, now='2022-05-09 10:30', retry_after=0) as fake:
        feed = LiveFeed(exchange(fake), KEYS, since='2022-05-09', data_dir=tmp_path)
        assert feed.update() == UTC('2022-05-09 10:00')
        fake.missing.add('2022-05-09 10:00'); fake.set_now('2022-05-09 11:30')
        assert feed.update() == UTC('2022-05-09 10:00')                              # not served yet: late
        assert {e['kind'] for e in feed.drain_events()} >= {'late'}
        fake.set_now('2022-05-09 14:30')
        for _ in range(3): assert feed.update() == UTC('2022-05-09 10:00')          # later ones there: a gap, waited for
        gaps = [e for e in feed.drain_events() if e['kind'] == 'gap']
        assert len(gaps) == 2 and 'waiting up to 900 s' in gaps[0]['detail'] and gaps[0]['time'] >= UTC('2022-05-09 14:30')
        assert load('BTC/USDT', '1h', 'binance', data_dir=tmp_path).index[-1] == UTC('2022-05-09 09:00')   # nothing after the hole
        fake.missing.clear()
        assert feed.update() == UTC('2022-05-09 14:00')
        assert [e['detail'] for e in feed.drain_events() if e['kind'] == 'late'][0] == \
            'BTC/USDT 1h: the candle of 2022-05-09 10:00 UTC arrived late; the gap is closed'
        fake.missing.add('2022-05-09 14:00'); fake.set_now('2022-05-09 16:30')     # this one never comes
        assert feed.update() == UTC('2022-05-09 14:00')
        fake.set_now('2022-05-09 16:46')                                              # 16 min of exchange time later
        assert feed.update() == UTC('2022-05-09 16:00')
        assert sum('accepted as its gap, not filled' in e['detail'] for e in feed.drain_events()) == 2
    for sym in ('BTC/USDT', 'ETH/USDT'):
        expect = fake.candles[(sym.replace('/', ''), '1h')].loc['2022-05-09':'2022-05-09 15:00'].drop(UTC('2022-05-09 14:00'))
        pd.testing.assert_frame_equal(load(sym, '1h', 'binance', data_dir=tmp_path), expect, check_freq=False)

def test_a_ban_is_a_pause_and_nothing_is_sent_while_it_lasts(q2, tmp_path):
    clock = FakeClock()
    with FakeBinance(q2, now='2022-05-09 12:30', retry_after=600) as fake:
        feed = LiveFeed(exchange(fake, clock, max_pause=60), KEYS, since='2022-05-09', data_dir=tmp_path, sleep=clock.sleep)
        fake.inject('418', path='*')
        assert feed.update() is None
        sent = len(fake.requests)
        for _ in range(5): feed.wait(threading.Event()); assert feed.update() is None   # 5 x poll (60 s) of a 600 s ban
        assert len(fake.requests) == sent and feed.stats['pauses'] >= 6
        assert {e['kind'] for e in feed.drain_events()} == {'pause'}
        clock.t += 600
        assert feed.update() == UTC('2022-05-09 12:00')

def test_closed_is_judged_by_the_exchange_clock(q2, tmp_path):
    # The machine's clock is years ahead of the fake's; then the fake falls 40 minutes further behind.
    with FakeBinance(q2, now='2022-05-09 12:30') as fake:
        feed = LiveFeed(exchange(fake), KEYS, since='2022-05-09', data_dir=tmp_path)
        assert feed.update() == UTC('2022-05-09 12:00')
        fake.set_now('2022-05-09 13:30'); fake.skew = -40 * 60                       # the exchange reads 12:50: 12:00 is still open
        assert feed.update() == UTC('2022-05-09 12:00')
        assert [e['kind'] for e in feed.drain_events()] == ['clock', 'clock']
        assert feed.now() < UTC('2022-05-09 13:00')
        fake.skew = 0
        assert feed.update() == UTC('2022-05-09 13:00')
    pd.testing.assert_frame_equal(load('BTC/USDT', '1h', 'binance', data_dir=tmp_path), q2[('BTCUSDT', '1h')].loc['2022-05-09':'2022-05-09 12:00'], check_freq=False)

def test_a_machine_clock_far_behind_the_exchange_stores_nothing_from_its_future(q2, tmp_path):
    # Real candles moved to today; the exchange's clock is 3 hours ahead of the machine's, whose store refuses candles from its future.
    today = pd.Timestamp.now(tz='UTC').floor('h')
    moved = {k: df.loc['2022-05-01':'2022-05-10'].set_axis(df.loc['2022-05-01':'2022-05-10'].index + (today - UTC('2022-05-08')))
             for k, df in q2.items()}
    with FakeBinance(moved, skew=3 * 3600) as fake:
        feed = LiveFeed(exchange(fake), KEYS, since=today - pd.Timedelta('12h'), data_dir=tmp_path)
        assert feed.update() is None
        errors = [e['detail'] for e in feed.drain_events() if e['kind'] == 'error']
        assert len(errors) == 2 and 'open in the future' in errors[0] and not any(tmp_path.rglob('*.parquet'))
        fake.skew = 0
        c = feed.update()
    assert c is not None and c <= pd.Timestamp.now(tz='UTC') and len(load('BTC/USDT', '1h', 'binance', data_dir=tmp_path)) >= 12

def test_wait_sleeps_to_the_next_close_capped_by_poll_and_stops_early(q2, tmp_path):
    with FakeBinance(q2, now='2022-05-09 12:59:50') as fake:
        slept = []
        feed = LiveFeed(exchange(fake), KEYS, poll=30, settle=3, data_dir=tmp_path, sleep=slept.append)
        feed.wait(threading.Event())
        fake.set_now('2022-05-09 13:00:05'); feed.ex.sync_clock(); feed.wait(threading.Event())
        assert [round(s) for s in slept] == [13, 30]                                 # 10 s to the close + 3 to settle; then poll
        feed.sleep, stop = None, threading.Event()
        threading.Timer(0.2, stop.set).start()
        t0 = time.monotonic(); feed.wait(stop)
        assert 0.1 < time.monotonic() - t0 < 2                                       # a stop ends the wait at once
        t0 = time.monotonic(); feed.wait(stop); assert time.monotonic() - t0 < 0.1

def test_bad_live_input_is_one_line(q2, tmp_path):
    with FakeBinance(q2, now='2022-05-09 12:30') as fake:
        one_line(lambda: LiveFeed(exchange(fake), KEYS, poll=0, data_dir=tmp_path), 'poll', 'greater than 0')
        one_line(lambda: LiveFeed(exchange(fake), KEYS, since='soon', data_dir=tmp_path), "since: 'soon' is not a date")
        (tmp_path / 'file').write_text('x')
        one_line(lambda: LiveFeed(exchange(fake), KEYS, data_dir=tmp_path / 'file'), 'is a file, not a folder')
        assert fake.requests == []

# --- live, bar by bar through a bad week ------------------------------------------------------------------------------------

LIVE_KEYS = [('BTC/USDT', '1h'), ('ETH/USDT', '1h'), ('BTC/USDT', '5m')]
WEIGHTS = {'timeout': 2, '429': 6, '418': 3, '500': 8, '503': 8, '1007': 5, 'malformed': 8, 'drop': 6, 'skew': 4, 'late': 6, 'hole': 6}
SKEWS = [0, 0, 0, -60, 45, -130, 150]        # seconds; with the 30-50 s after a close, never within 10 s of a 5m close

@pytest.mark.slow
def test_a_bad_week_is_survived_and_ends_where_a_fault_free_run_ends(shared, tmp_path):
    fault_free = {**shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2023-01-01', '2023-03-10'),
                  **shared_candles(('BTC/USDT',), ('5m',), '2023-02-20', '2023-03-10')}
    tf = {'1h': H, '5m': M5}
    for sym in ('BTC/USDT', 'ETH/USDT'):   # the store holds January and February; the 5m series starts empty
        write_series(fault_free[(sym.replace('/', ''), '1h')].loc[:'2023-02-28 23:00'], Series('binance', sym, '1h'), tmp_path)
    expect = lambda sym, t: fault_free[(sym.replace('/', ''), t)].loc['2023-03-01' if t == '5m' else None:]
    rng, clock = random.Random(11), FakeClock()
    with FakeBinance(fault_free, now='2023-03-01 00:00:30', slow=0.12) as fake:
        ex = exchange(fake, clock, timeout=0.08, retries=4, max_pause=60)
        feed = LiveFeed(ex, LIVE_KEYS, since='2023-03-01', data_dir=tmp_path, gap_wait=1e9, sleep=clock.sleep)
        closes = [UTC('2023-03-01 01:00') + i * H for i in range(72)] + [UTC('2023-03-04 00:05') + i * M5 for i in range(36)]
        prev, missing, n, events = None, {}, 0, []
        for step, close in enumerate(closes):
            fake.skew = rng.choice(SKEWS)
            fake.set_now(close + pd.Timedelta(seconds=rng.choice([30, 40, 50])))
            fake.retry_after = rng.choice([0, 0, 0, 1, 5, 120])                      # 120 s: more than max_pause, a ban
            for t in [t for t, until in missing.items() if until <= step]: fake.missing.discard(t); del missing[t]
            if rng.random() < 0.15:                                                   # a candle the exchange lacks for a while
                t = close - (H if step < 72 else M5) * rng.choice([1, 1, 2])
                fake.missing.add(t); missing[t] = step + rng.choice([1, 2, 3])
            kinds = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()), k=rng.randint(6, 15))
            fake.inject(*kinds[:-2]); fake.inject(*kinds[-2:], path='*')
            for _ in range(rng.choice([1, 2, 2, 3])):
                c = feed.update(); n += 1                                             # never raises
                events += feed.drain_events()
                assert prev is None or (c is not None and c >= prev), (prev, c)     # never goes back
                server = pd.Timestamp(fake.now_ms(), unit='ms', tz='UTC')
                assert c is None or c <= server
                for sym, t in LIVE_KEYS:
                    held, exp = feed.frames[(sym, t)], expect(sym, t)
                    if c is not None:                                                 # every candle closed by `complete` is held
                        due = exp.index[exp.index + tf[t] <= c]
                        assert len(due) == 0 or (len(held) and held.index[-1] >= due[-1]), (sym, t, c)
                        h = feed.history(c)[(sym, t)]
                        assert len(h) == 0 or h.index[-1] + tf[t] <= c
                    if len(held):                                                     # held: an exact unbroken run of real candles
                        run = exp.loc[held.index[0]:held.index[-1]]
                        assert np.array_equal(held.index.asi8, run.index.asi8) and np.array_equal(held.to_numpy(), run.to_numpy()), (sym, t)
                if n % 25 == 0:                                                       # and the store on disk is what is held
                    for sym, t in LIVE_KEYS:
                        pd.testing.assert_frame_equal(load(sym, t, 'binance', data_dir=tmp_path), feed.frames[(sym, t)], check_freq=False)
                prev = c
                feed.wait(threading.Event())
        served = [f for _, f in fake.served_faults]
        with fake.lock: fake._queues.clear()
        fake.missing.clear(); fake.skew = 0; fake.retry_after = 0; clock.t += 1000
        fake.set_now('2023-03-04 03:00:30')
        for _ in range(3): last = feed.update()
    assert len(served) >= 1000, len(served)
    assert set(served) == set(FAULTS)                                                 # every kind of fault, at least once
    assert last == UTC('2023-03-04 03:00')
    for sym, t in LIVE_KEYS:
        pd.testing.assert_frame_equal(load(sym, t, 'binance', data_dir=tmp_path), expect(sym, t).loc[:UTC('2023-03-04 03:00') - tf[t]], check_freq=False)
    assert {e['kind'] for e in events} == {'gap', 'late', 'error', 'pause', 'clock'}
    assert all(isinstance(e['detail'], str) and '\n' not in e['detail'] for e in events)
    s = feed.stats
    assert s['errors'] > 0 and s['pauses'] > 0 and s['late'] > 0 and s['retries'] > 100 and s['gaps'] == 0, s
