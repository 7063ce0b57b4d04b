"""The dashboard in a real browser: a replay paper trader on the shared real candles, `tbot dashboard` beside it on the same ledger,
and the page opened in headless Debian chromium (/usr/bin/chromium, installed by `make test`) driven by Playwright (its own browser
download is never used). Every tab renders with no page error and no "Error displaying widget"; the equity figure has a line; the
values in the page's hooks (`#tbot-equity` data-value, ...) equal `tbot paper status --json`; new bars show without a reload;
without the token the page is refused; the dashboard opens the ledger read-only and never changes it; `tbot paper stop` turns the
page stale; a closed tab's kernel is culled. Screenshots of every tab at 1400x900 and 600x900 go to reports/screenshots/dashboard/
(git-ignored) for a person to look at.

The tests of this file share one trader, one dashboard and one page (module fixtures) and run in file order: the last ones stop the
trader and close the page. `Dashboard`, `launch` and `hooks` are also what bench/dashboard.py uses."""
import hashlib, json, math, os, re, signal, socket, struct, subprocess, threading, time, urllib.error, urllib.request
from pathlib import Path
import pandas as pd, psutil, pytest
from conftest import ROOT, SHARED, TBOT, tbot

pytestmark = [pytest.mark.browser, pytest.mark.slow]            # ~3 minutes for the file, most of it the first render

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']
TABS = ['Agent', 'Bots', 'Positions', 'Performance', 'Risk', 'Strategy record', 'Data', 'Health', 'Deployment']
SHOTS = ROOT / 'reports' / 'screenshots' / 'dashboard'        # reports/ is git-ignored
WIDE, NARROW = {'width': 1400, 'height': 900}, {'width': 600, 'height': 900}
SPEED = 900                                                   # a 1h bar every 4 s: the page has time to catch up between bars
REPLAY = ('--replay', '2022-03-01:2022-06-30', '--speed', str(SPEED))   # runs for hours unless stopped
CULL_IDLE = 10                                                # seconds: a closed tab's kernel goes within ~20 s
WIDGET_ERROR = 'Error displaying widget'
CELL_ERROR = 'There was an error when executing cell'

# --- the harness (bench/dashboard.py uses it too) ----------------------------------------------------------------------------

def free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def write_store(d:Path, a='2021-09-01', b='2022-06-30 23:00')->Path:
    "A candle store in `d` holding the shared real BTC/USDT and ETH/USDT 1h candles of [a, b]."
    from tbot.data import Series, read_candle_file, write_series
    for sym in ('BTC/USDT', 'ETH/USDT'):
        write_series(read_candle_file(SHARED / f"{sym.replace('/', '_')}-1h.feather").loc[a:b], Series('binance', sym, '1h'), d)
    return d

def env_for(d:Path)->dict: return {'TBOT_DATA_DIR': str(d), 'TBOT_REPORTS_DIR': str(d.parent / 'reports')}

def status_json(ledger:Path, env:dict)->dict: return json.loads(tbot('paper', 'status', '--json', '--ledger', ledger, env=env).stdout)

def bars_in(ledger:Path)->int:
    "Bars committed in the ledger (read-only; 0 before the first)."
    import sqlite3
    if not Path(ledger).is_file(): return 0
    con = sqlite3.connect(f'file:{ledger}?mode=ro', uri=True)
    try: return con.execute('SELECT COUNT(*) FROM bars').fetchone()[0]
    except sqlite3.OperationalError: return 0
    finally: con.close()

class Trader:
    "`tbot paper start --replay ... --speed N --ledger L` in the background."
    def __init__(self, ledger:Path, env:dict, args=REPLAY):
        self.ledger, self.env = ledger, env
        self.proc = subprocess.Popen([TBOT, 'paper', 'start', *args, '--ledger', str(ledger)], env={**os.environ, **env},
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    def wait_bars(self, n=1, timeout=120):
        end = time.monotonic() + timeout
        while bars_in(self.ledger) < n:
            assert self.proc.poll() is None, f'the trader ended early ({self.proc.returncode}): {self.proc.stderr.read()}'
            assert time.monotonic() < end, f'the trader committed no {n} bars in {timeout} s'
            time.sleep(0.2)
        return self
    def stop(self, timeout=60):
        "`tbot paper stop`, as a user stops it; the trader's exit code."
        if self.proc.poll() is None: tbot('paper', 'stop', '--ledger', self.ledger, env=self.env)
        return self.proc.wait(timeout=timeout)
    def kill(self):
        if self.proc.poll() is None: self.proc.kill(); self.proc.wait()

class Dashboard:
    "`tbot dashboard --port P --ledger L` in the background; `url` is the URL it printed (token included)."
    URL = re.compile(r'https?://\S+')
    def __init__(self, ledger:Path, env:dict, *args, port:int|None=None, timeout=120):
        self.port = port or free_port()
        self.proc = subprocess.Popen([TBOT, 'dashboard', '--port', str(self.port), '--ledger', str(ledger), '--no-browser', *args],
                                     env={**os.environ, **env},
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out, self.err, self.url = [], [], None
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, l=lines: [l.append(x) for x in s], daemon=True).start()
        end = time.monotonic() + timeout
        while self.url is None:
            assert self.proc.poll() is None, f'tbot dashboard exited {self.proc.returncode}:\n{"".join(self.out + self.err)}'
            assert time.monotonic() < end, f'tbot dashboard printed no URL in {timeout} s:\n{"".join(self.out + self.err)}'
            m = next((m for l in list(self.out) if (m := self.URL.search(l)) and 'token=' in m.group()), None)
            if m: self.url = m.group().rstrip('.,;)')
            else: time.sleep(0.1)
        self.token = re.search(r'token=([^&\s]+)', self.url).group(1)
        self.base = self.url.split('?')[0].rstrip('/')
        while True:                                           # listening (a TCP connect: a page GET would start a kernel)
            try: socket.create_connection(('127.0.0.1', self.port), timeout=1).close(); break
            except OSError:
                assert time.monotonic() < end, f'nothing listens on port {self.port}'; time.sleep(0.1)
    def tree(self)->list:
        "The dashboard's processes: `tbot dashboard`, voila and the kernels."
        try: p = psutil.Process(self.proc.pid); return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess: return []
    def kernels(self)->list:
        out = []
        for p in self.tree():
            try:
                if any('ipykernel' in a for a in p.cmdline()): out.append(p)
            except psutil.Error: pass
        return out
    def option(self, name:str)->float|None:
        "A number passed on voila's command line, e.g. `cull_idle_timeout`."
        for p in self.tree():
            try: m = next((m for a in p.cmdline() if (m := re.search(rf'{name}=([0-9.]+)', a))), None)
            except psutil.Error: continue
            if m: return float(m.group(1))
    def stop(self):
        "Ctrl-C, as a user stops it; whatever of its tree is left is killed (by pid)."
        tree = self.tree()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try: self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        for p in tree[1:]:
            try: p.kill()
            except psutil.Error: pass

def launch(pw):
    "Headless Debian chromium through Playwright."
    return pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)

HOOKS_JS = "() => Object.fromEntries([...document.querySelectorAll('[id^=\"tbot-\"]')].reverse().map(e => [e.id.slice(5), e.dataset.value]))"
def hooks(page)->dict:
    "The page's hooks, {'equity': '1000.0', 'status': 'active', ...} (data-value, unformatted)."
    return page.evaluate(HOOKS_JS)

def open_page(browser, url:str, viewport=WIDE):
    "A new page on `url` that records its page errors and console errors (`page.errors`, `page.console`)."
    page = browser.new_page(viewport=viewport)
    page.errors, page.console, page.logs = [], [], []
    page.on('pageerror', lambda e: page.errors.append(f'{e.message} | {(e.stack or "").splitlines()[1:3]}'))
    page.on('console', lambda m: (page.logs.append(f'{m.type}: {m.text}'), m.type == 'error' and page.console.append(m.text)))
    page.goto(url, wait_until='domcontentloaded', timeout=180_000)    # voila runs the notebook before the page arrives
    return page

def wait_ready(page, timeout=90):
    "Until the page is fully drawn: the status hook has a value and the timer has ticked; seconds taken."
    t = time.monotonic()
    page.wait_for_function("() => { const s = document.getElementById('tbot-status'), k = document.getElementById('tbot-tick');"
                           " return s && s.dataset.value && k && Number(k.dataset.value) >= 1 }", timeout=timeout * 1000)
    return time.monotonic() - t

def wait_hook(page, name:str, pred, timeout=20, every=0.1):
    "Poll hook `name` until `pred(value)`; the value (AssertionError with the last one on timeout)."
    end, v = time.monotonic() + timeout, None
    while time.monotonic() < end:
        v = hooks(page).get(name)
        if v is not None and pred(v): return v
        time.sleep(every)
    raise AssertionError(f'hook tbot-{name} still {v!r} after {timeout} s')

def show_tab(page, name:str):
    page.locator('.lm-TabBar-tab', has_text=re.compile(rf'^\s*{re.escape(name)}\s*$')).first.click()
    page.wait_for_timeout(400)

def shoot(page, path:Path):
    """A screenshot of the whole tab at the page's width: the content scrolls inside `#rendered_cells` (voila's lab template), so the
    window is made as tall as the content for the shot (the width, which sets the layout, stays), then put back."""
    vp = page.viewport_size
    h = page.evaluate("() => { const c = document.getElementById('rendered_cells'); return c ? c.scrollHeight : document.documentElement.scrollHeight }")
    page.set_viewport_size({'width': vp['width'], 'height': max(vp['height'], h + 20)})
    page.wait_for_timeout(300)
    page.screenshot(path=path)
    page.set_viewport_size(vp)

def line_paths(page)->list:
    "The `d` of every visible plotly line on the page."
    return page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot .scatterlayer path.js-line')]"
                         ".filter(p => p.getBoundingClientRect().width > 0).map(p => p.getAttribute('d') || '')")

ANYWIDGET_ERROR = re.compile(r'anywidget.*(fail|error)|Failed to initialize model|Could not create (a )?(model|view)', re.I)

def page_problems(page, since:int=0)->list:
    """Page errors (from the `since`-th on), widget and cell errors shown on the page, console errors other than the resources offline,
    and any console message of any level saying a widget failed to start ("[anywidget] Failed to initialize model": the timer would be dead)."""
    text = page.evaluate('() => document.body.textContent')
    return ([f'pageerror: {e}' for e in page.errors[since:]] + [f'page shows {s!r}' for s in (WIDGET_ERROR, CELL_ERROR) if s in text]
            + [f'console: {c}' for c in page.console if 'Failed to load resource' not in c and 'net::ERR' not in c]
            + [f'console: {c}' for c in page.logs if ANYWIDGET_ERROR.search(c) and not c.startswith('error: ')])

class Inotify:
    "File events in one folder (Linux inotify through ctypes): which files were opened, and which were written or closed after writing."
    EVENTS = {0x2: 'modify', 0x8: 'close_write', 0x10: 'close_nowrite', 0x20: 'open', 0x100: 'create', 0x200: 'delete', 0x80: 'moved_to'}
    def __init__(self, folder:Path):
        import ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        assert self.fd >= 0 and self.libc.inotify_add_watch(self.fd, str(folder).encode(), sum(self.EVENTS)) >= 0
    def read(self)->list:
        "[(file name, event), ...] since the last read."
        out, buf = [], b''
        while True:
            try: chunk = os.read(self.fd, 65536)
            except BlockingIOError: break
            buf += chunk
        i = 0
        while i < len(buf):
            _, mask, _, n = struct.unpack_from('iIII', buf, i)
            name = buf[i + 16:i + 16 + n].rstrip(b'\0').decode()
            out += [(name, e) for bit, e in self.EVENTS.items() if mask & bit]
            i += 16 + n
        return out
    def close(self): os.close(self.fd)

def files_state(ledger:Path)->dict:
    "Hash, size and mtime of the ledger and its -wal/-journal files."
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in (ledger, Path(f'{ledger}-wal'), Path(f'{ledger}-journal')) if p.exists()}

# --- fixtures: one store, one trader, one dashboard, one browser and one page for the module ---------------------------------

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    d = write_store(tmp_path_factory.mktemp('dash') / 'data')
    ledger, env = d / 'ledger.sqlite', env_for(d)
    tr = Trader(ledger, env).wait_bars(2)
    try:
        dash = Dashboard(ledger, env, '--cull-idle', str(CULL_IDLE))
        try: yield {'ledger': ledger, 'env': env, 'trader': tr, 'dash': dash}
        finally: dash.stop()
    finally: tr.kill()

@pytest.fixture(scope='module')
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        b = launch(pw)
        try: yield b
        finally: b.close()

@pytest.fixture(scope='module')
def page(browser, run):
    t = time.monotonic()
    p = open_page(browser, run['dash'].url)
    wait_ready(p)
    p.took = time.monotonic() - t                                    # the first full render, from the request
    p.evaluate('() => { window.tbotNoReload = 1 }')                  # gone if the page ever reloads
    yield p
    if not p.is_closed(): p.close()

# --- the tests, in order -------------------------------------------------------------------------------------------------------

def test_every_tab_renders_without_errors_at_both_sizes(page):
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert page.took < 120, f'first render took {page.took:.1f} s'           # aim 5 s: bench/dashboard.py measures it
    tabs = page.locator('.lm-TabBar-tab').all_inner_texts()
    assert [t.strip() for t in tabs] == TABS, tabs
    for size, vp in (('1400', WIDE), ('600', NARROW)):
        page.set_viewport_size(vp)
        for name in TABS:
            show_tab(page, name)
            assert page_problems(page) == [], f'{name} at {size} px'
            assert layout_problems(page, vp['width']) == [], f'{name} at {size} px'
            shoot(page, SHOTS / f"{TABS.index(name) + 1:02d}-{name.lower().replace(' ', '-')}-{size}.png")
        show_tab(page, 'Performance')
        widths = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(e => e.getBoundingClientRect().width).filter(w => w > 0)")
        assert widths and all(vp['width'] * 0.75 < w <= vp['width'] for w in widths), (size, widths)   # the figure takes the window's width
    page.set_viewport_size(WIDE)
    assert page.evaluate('() => window.tbotNoReload') == 1

def layout_problems(page, width:int)->list:
    "What a person could not read at this window width: a tab label cut, the page wider than the window (a table must scroll in its own box)."
    return page.evaluate("""w => {
      const out = [];
      for (const t of document.querySelectorAll('.lm-TabBar-tab')) {
        const l = t.querySelector('.lm-TabBar-tabLabel') || t;
        if (l.scrollWidth > l.clientWidth + 1) out.push('tab label cut: ' + t.textContent.trim());
      }
      if (document.documentElement.scrollWidth > w + 1) out.push('page wider than the window: ' + document.documentElement.scrollWidth);
      for (const t of document.querySelectorAll('table')) if (t.offsetParent && !t.closest('.tbot-scroll')) out.push('a table outside its scroll box');
      // nothing is cut by the tab's edge: text, scroll boxes and figures end inside the window (a wide table scrolls inside its box)
      for (const e of document.querySelectorAll('.tbot-scroll, .widget-html-content p, .widget-html-content h4, .js-plotly-plot'))
        if (e.offsetParent && e.getBoundingClientRect().right > w + 1) out.push(`${e.className || e.tagName} ends at ${Math.round(e.getBoundingClientRect().right)} px: ${e.textContent.slice(0, 40)}`);
      return out; }""", width)

def test_equity_figure_has_data(page):
    show_tab(page, 'Performance')
    paths = line_paths(page)
    assert paths and all(re.search(r'M[-0-9.]+,[-0-9.]+L', d) for d in paths[:1]), paths
    assert max(d.count('L') for d in paths) >= 2, paths              # a line through several points, not one dot

def ledger_equity(ledger:Path, bars:int)->float:
    import sqlite3
    con = sqlite3.connect(f'file:{ledger}?mode=ro', uri=True)
    try: return con.execute('SELECT equity FROM bars WHERE n = ?', (bars - 1,)).fetchone()[0]
    finally: con.close()

def test_new_bars_show_without_a_reload(page, run):
    show_tab(page, 'Performance')
    e0 = len(page.errors)
    h0, path0 = hooks(page), max(line_paths(page), key=len)
    assert math.isclose(float(h0['equity']), ledger_equity(run['ledger'], int(h0['bars'])), rel_tol=1e-12), h0   # while it moves
    n0 = bars_in(run['ledger'])
    end = time.monotonic() + 30
    while bars_in(run['ledger']) == n0:                              # the next bar committed
        assert time.monotonic() < end, 'the trader committed no new bar in 30 s'; time.sleep(0.05)
    t = time.monotonic()
    wait_hook(page, 'bars', lambda v: int(v) > max(n0, int(h0['bars'])), timeout=15, every=0.05)  # aim: 5 s (bench/dashboard.py)
    took = time.monotonic() - t
    h1 = hooks(page)
    assert pd.Timestamp(h1['last-bar']) > pd.Timestamp(h0['last-bar']) and int(h1['version']) > int(h0['version']), (h0, h1)
    assert int(h1['tick']) > int(h0['tick']), (h0, h1)
    assert math.isclose(float(h1['equity']), ledger_equity(run['ledger'], int(h1['bars'])), rel_tol=1e-12), h1
    end = time.monotonic() + 15                                      # a figure is redrawn at most every FIGURE_GAP (5 s)
    while max(line_paths(page), key=len) == path0:
        assert time.monotonic() < end, 'the equity line did not move with the new bar'; time.sleep(0.2)
    assert page.evaluate('() => window.tbotNoReload') == 1, 'the page reloaded'
    assert page_problems(page, e0) == []
    print(f'new bar shown {took:.2f} s after its commit')

def test_without_the_token_the_page_is_refused(browser, run):
    dash = run['dash']
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k): return None
    for url in (dash.base + '/', dash.url.replace(dash.token, dash.token[::-1]), dash.base + '/api/kernels/x'):
        try:
            r = urllib.request.build_opener(NoRedirect).open(url, timeout=30); code, body = r.status, r.read().decode(errors='replace')
        except urllib.error.HTTPError as e: code, body = e.code, e.read().decode(errors='replace')
        assert code in (302, 401, 403, 404) and 'tbot-status' not in body, (url, code, body[:300])
    kernels = len(dash.kernels())
    p = open_page(browser, dash.base + '/')                          # a browser without the token: no dashboard, no kernel
    try:
        p.wait_for_timeout(3000)
        assert p.locator('#tbot-status').count() == 0 and 'tbot-equity' not in p.content()
        assert len(dash.kernels()) == kernels
    finally: p.close()

def test_the_dashboard_opens_the_ledger_read_only(page, run):
    """Every handle a dashboard kernel opens on the ledger file is read-only (watched until one is seen: the page opens the ledger
    for a moment on each tick). SQLite opens the -wal and -shm files read-write for any connection, a read-only one included:
    the test after the stop proves nothing is written to them."""
    dash, ledger = run['dash'], run['ledger']
    seen, bad = set(), []
    end = time.monotonic() + 30
    while not any(name == ledger.name for _, name, _ in seen) and time.monotonic() < end:
        for p in dash.kernels():
            try: files = p.open_files()
            except psutil.Error: continue
            for f in files:
                if not f.path.startswith(str(ledger)): continue
                seen.add((p.pid, Path(f.path).name, f.mode))
                if f.path in (str(ledger), f'{ledger}-journal') and f.mode != 'r': bad.append((p.pid, f.path, f.mode))
        time.sleep(0.001)
    assert any(name == ledger.name for _, name, _ in seen), f'no dashboard kernel had the ledger open in 30 s: {seen}'
    assert not bad, f'the dashboard opened the ledger for writing: {bad}'
    print('ledger handles of the dashboard:', sorted(seen))

def test_stopping_the_trader_turns_the_page_stale(page, run):
    e0 = len(page.errors)
    assert hooks(page)['status'] == 'active'
    t = time.monotonic()
    assert run['trader'].stop() == 0                                 # `tbot paper stop` returns once the trader has exited
    t1 = time.monotonic()
    wait_hook(page, 'status', lambda v: v == 'stale', timeout=20)
    took = time.monotonic() - t1
    assert took < 5, f'stale {took:.1f} s after the trader exited'
    assert hooks(page)['running'] == '0'
    assert page_problems(page, e0) == []
    print(f'stale {took:.1f} s after the trader exited ({t1 - t:.1f} s for `tbot paper stop`)')

def test_the_page_shows_what_paper_status_says(page, run):
    "The trader stopped, the ledger holds still: every value on the page equals `tbot paper status --json`."
    s = status_json(run['ledger'], run['env'])
    h = hooks(page) if int(hooks(page)['bars']) == s['bars'] else (wait_hook(page, 'bars', lambda v: int(v) == s['bars']), hooks(page))[1]
    for k, key in (('equity', 'equity'), ('buy-and-hold', 'buy_and_hold'), ('floor', 'floor')):
        assert math.isclose(float(h[k]), s[key], rel_tol=1e-12), (k, h[k], s[key])
    assert int(h['fills']) == s['fills'], (h['fills'], s['fills'])
    assert pd.Timestamp(h['last-bar']) == pd.Timestamp(s['last_bar']), (h['last-bar'], s['last_bar'])
    assert s['status'] == 'active' and s['running'] is None and h['status'] == 'stale' and h['running'] == '0', (s['status'], h)
    assert int(h['version']) > 0 and int(h['tick']) >= 1, h

def test_the_ledger_is_unchanged_while_only_the_dashboard_runs(page, run):
    "With the trader stopped, every file event on the ledger is the dashboard's: it opens the ledger, and never for writing."
    ledger = run['ledger']
    before, tick = files_state(ledger), int(hooks(page)['tick'])    # read before the watch starts: its events are the dashboard's
    watch = Inotify(ledger.parent)
    try:
        wait_hook(page, 'tick', lambda v: int(v) >= tick + 5, timeout=30)    # the kernel has answered several ticks meanwhile
        ev = watch.read()
    finally: watch.close()
    assert files_state(ledger) == before
    mine = [(n, e) for n, e in ev if n in (ledger.name, f'{ledger.name}-wal', f'{ledger.name}-journal')]
    assert (ledger.name, 'open') in mine, f'the dashboard never read the ledger meanwhile: {sorted(set(ev))}'
    # a write is a `modify`; a handle open for writing shows as `close_write`, allowed only on the -wal (see the test above)
    written = [(n, e) for n, e in mine if e in ('modify', 'create', 'delete', 'moved_to') or (e == 'close_write' and n != f'{ledger.name}-wal')]
    assert not written, f'the dashboard wrote the ledger: {written}'
    print('file events while only the dashboard ran:', sorted(set(ev)))

def test_a_closed_tab_kernel_is_culled(page, run):
    dash = run['dash']
    idle, every = dash.option('cull_idle_timeout'), dash.option('cull_interval')
    assert idle and every, 'voila runs without kernel culling'
    pool = int(dash.option('pool_size') or 0)                        # the preheated kernel waits for the next tab: never culled
    mine = [p.pid for p in dash.kernels()]
    assert len(mine) >= pool + 1, mine
    page.close(); t = time.monotonic()
    limit = idle + every + 15
    while len(dash.kernels()) > pool:
        assert time.monotonic() - t < limit, f'{len(dash.kernels())} kernels alive {limit:.0f} s after the tab closed (the pool holds {pool})'
        time.sleep(0.5)
    print(f'kernel culled {time.monotonic() - t:.1f} s after the tab closed (idle timeout {idle:.0f} s, interval {every:.0f} s); {pool} preheated kernel waits')

def test_a_halted_system_is_impossible_to_miss(browser, tmp_path):
    """A ledger whose portfolio stop fired (a 1% stop, no risk budget): the page opens on a red HALTED banner above everything, with
    the command that resets it, a red frame around the whole page, at both widths; the Risk tab says HALTED first."""
    d = write_store(tmp_path / 'data')
    ledger = d / 'halted.sqlite'
    env = {**env_for(d), 'TBOT_RISK_PORTFOLIO_STOP': '0.01', 'TBOT_RISK_CPPI_MULTIPLIER': '0', 'TBOT_RISK_TIPP': '0'}
    assert tbot('paper', 'start', '--replay', '2022-05-01:2022-05-20', '--ledger', ledger, env=env).stdout.startswith('HALTED')
    dash = Dashboard(ledger, env_for(d), '--cull-idle', str(CULL_IDLE))
    try:
        p = open_page(browser, dash.url)
        try:
            wait_ready(p)
            assert hooks(p)['status'] == 'halted'
            for size, vp in (('1400', WIDE), ('600', NARROW)):
                p.set_viewport_size(vp); p.wait_for_timeout(300)
                top = p.evaluate("""() => { const h = [...document.querySelectorAll('b')].find(b => b.textContent.trim() === 'HALTED');
                                            const r = h.getBoundingClientRect(), t = document.querySelector('.lm-TabBar').getBoundingClientRect();
                                            return {y: r.top, size: parseFloat(getComputedStyle(h).fontSize), tabs: t.top,
                                                    frame: getComputedStyle(document.querySelector('.tbot-page')).borderTopColor} }""")
                assert top['y'] < top['tabs'] and top['y'] < vp['height'] / 3 and top['size'] >= 20, (size, top)   # first, big, in view
                assert top['frame'] == 'rgb(198, 40, 40)', (size, top)                                            # the page framed in red
                assert 'tbot paper reset-stop --by NAME --reason TEXT' in p.locator('.tbot-page').inner_text()
                assert layout_problems(p, vp['width']) == [] and page_problems(p) == []
                SHOTS.mkdir(parents=True, exist_ok=True); shoot(p, SHOTS / f'00-halted-{size}.png')
            show_tab(p, 'Risk')
            risk = p.locator('.widget-tab-contents').inner_text()
            assert risk.index('HALTED') < risk.index('Limits') and 'reset-stop' in risk
        finally: p.close()
    finally: dash.stop()
