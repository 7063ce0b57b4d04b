"""A fake Binance spot REST server on 127.0.0.1, so tests and replays run ccxt's own `binance` class (HTTP, signing, parsing,
error mapping) with no network.

It is a superset of `binance_stub.BinanceStub` (whose recorded exchangeInfo it reuses) and serves what ccxt's `binance` calls:
- public: GET /api/v3/ping, /api/v3/time, /api/v3/exchangeInfo, /api/v3/klines (from the shared real candles or given frames);
- signed: GET /api/v3/account, POST/GET/DELETE /api/v3/order (newClientOrderId / origClientOrderId), POST /api/v3/order/test,
  GET /api/v3/openOrders, GET /api/v3/myTrades (by symbol, startTime, orderId). Signatures, API key and the recvWindow are
  checked like Binance does.

Orders: Binance's filters give its error codes (-1013 'Filter failure: LOT_SIZE', MARKET_LOT_SIZE, PRICE_FILTER,
PERCENT_PRICE_BY_SIDE against the open candle's open, NOTIONAL); a client id is refused (-2010 'Duplicate order sent.') while an
order with it is open and accepted once that one is done; an unaffordable order is -2010 insufficient balance. A taker fills at
`fill_price[symbol]`, or with `slippage` set at the paper model's price (the open candle's open x (1 +- slippage)), else at the last
close. MARKET orders fill whole; LIMIT IOC orders fill whole when the price is within the cap, partly when `liquidity` < 1 (then
EXPIRED), and expire when it is not; LIMIT GTC orders that do not cross rest until cancelled. The commission (`fee`) is charged in
`fee_asset`: 'received' (Binance's default), 'base', 'quote' or 'BNB' (at `bnb_price`). `adjust(asset, delta)` changes a balance
behind the client's back.

The server has its own clock: `set_now(t)` makes it read `t` and run on from there; `skew` (seconds) moves it against the
machine's clock. Klines are served only up to that clock: the last one served is the still-open candle, with partial values.

Faults are queued per path (`inject('429', '500', path='/api/v3/klines')`, or `path='*'` for any request) and consumed one per
request: 'timeout' (answer after `slow` seconds), '429' and '418' (with `Retry-After: retry_after`), '500' (HTML), '503' (JSON -1001),
'1007' (backend timeout), 'malformed' (cut JSON), 'drop' (close the socket), 'skew' (-1021), 'late' (klines: the newest closed
candle and the open one are not there yet), 'hole' (klines: one candle missing from this answer only). For orders: '503_1007'
(503 with -1007, not placed), 'accepted_1007' (placed, then 503 with -1007), 'timeout' (placed, the answer lost), 'notfound' (a
lookup does not see the order yet), 'partial' (an IOC finds liquidity for half), 'lot_size' and 'notional' (rejected by that filter).
A missing candle in the exchange's own data is `missing.add(open_time)`: it is never served.
"""
from __future__ import annotations
import hashlib, hmac, json, math, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse, parse_qs, parse_qsl
import pandas as pd
from binance_stub import EXCHANGE_INFO, SHARED, kline_row

TF_MS = {'1m': 60_000, '3m': 180_000, '5m': 300_000, '15m': 900_000, '30m': 1_800_000, '1h': 3_600_000, '2h': 7_200_000,
         '4h': 14_400_000, '6h': 21_600_000, '8h': 28_800_000, '12h': 43_200_000, '1d': 86_400_000}
FAULTS = ('timeout', '429', '418', '500', '503', '1007', 'malformed', 'drop', 'skew', 'late', 'hole')
NAMED_FAULTS = ('empty',)   # injected by name only, never drawn by the fault suites: 'empty' answers 200 with []
ORDER_FAULTS = ('503_1007', 'accepted_1007', 'notfound', 'partial', 'lot_size', 'notional', 'rests')   # for /api/v3/order (any FAULTS too); 'rests': an IOC answered NEW
_SIGNED = {'/api/v3/account', '/api/v3/order', '/api/v3/order/test', '/api/v3/openOrders', '/api/v3/myTrades'}

def shared_candles(symbols=('BTC/USDT',), timeframes=('1h',), start=None, end=None)->dict:
    "The shared real candles as {(BTCUSDT, 1h): frame}, cut to [start, end]."
    from tbot.data import read_candle_file
    out = {}
    for sym in symbols:
        for tf in timeframes:
            df = read_candle_file(SHARED / f"{sym.replace('/', '_')}-{tf}.feather")
            out[(sym.replace('/', ''), tf)] = df.loc[start:end]
    return out

def _err(code, msg): return json.dumps({'code': code, 'msg': msg})

class FakeBinance:
    "A fake Binance spot REST API on 127.0.0.1; a context manager, `url` is its base."
    def __init__(self,
                 candles:dict|None=None,     # {(BTCUSDT, 1h): DataFrame}; the shared BTC+ETH 1h candles when None
                 now=None,                   # the server clock's start (UTC); the machine's clock when None
                 skew:float=0.0,             # seconds the server clock is ahead of the machine's (negative: behind)
                 max_limit:int=1000,         # most klines per answer, as Binance spot
                 retry_after:int=1,          # the Retry-After header of a 429/418, seconds
                 slow:float=1.5,             # seconds a 'timeout' fault waits before answering
                 api_key:str='test-key', api_secret:str='test-secret',
                 balances:dict|None=None,    # {'USDT': 10000.0}
                 fee:float=0.001,            # commission rate
                 fee_asset:str='received',   # the commission's asset: 'received' (Binance's default), 'base', 'quote' or 'BNB'
                 bnb_price:float=300.0,      # quote per BNB, for fees paid in BNB
                 slippage:float|None=None,   # fill at the open candle's open x (1 +- slippage): the paper model; None: the last close
                 liquidity:float|None=None,  # share of an IOC order there is liquidity for (None: all of it)
                 ):
        self.candles = candles if candles is not None else shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',))
        self._base, self._set_at, self.skew = None, None, skew
        if now is not None: self.set_now(now)
        self.max_limit, self.retry_after, self.slow = max_limit, retry_after, slow
        self.api_key, self.api_secret, self.fee = api_key, api_secret, fee
        self.fee_asset, self.bnb_price, self.slippage, self.liquidity = fee_asset, bnb_price, slippage, liquidity
        self.balances = dict(balances if balances is not None else {'USDT': 10_000.0})
        self.fill_price, self.missing = {}, set()
        self._queues, self.requests, self.served_faults = {}, [], []
        self.orders, self.trades, self._ids = {}, [], iter(range(1, 10**9))
        self.lock = threading.Lock()

    # --- the server clock -------------------------------------------------------------------------------------------
    def set_now(self, t):
        "Make the server clock read `t` (UTC) now and run on from there."
        self._base, self._set_at = pd.Timestamp(t, tz='UTC') if pd.Timestamp(t).tz is None else pd.Timestamp(t), time.time()

    def now_ms(self)->int:
        "The server clock, ms since the epoch."
        if self._base is None: return int((time.time() + self.skew) * 1000)
        return int(self._base.value // 10**6 + (time.time() - self._set_at + self.skew) * 1000)

    # --- faults -----------------------------------------------------------------------------------------------------
    def inject(self, *kinds, path:str='/api/v3/klines'):
        "Queue faults for the next requests to `path` ('*': any path), one per request; None: answer that one normally."
        for k in kinds: assert k is None or k in FAULTS + ORDER_FAULTS + NAMED_FAULTS, k
        with self.lock: self._queues.setdefault(path, []).extend(kinds)

    def _next_fault(self, path):
        with self.lock:
            for p in (path, '*'):
                q = self._queues.get(p)
                if q:
                    f = q.pop(0)
                    self.served_faults.append((path, f))
                    return f
        return None

    def pending_faults(self)->int: return sum(len(q) for q in self._queues.values())

    @property
    def faults(self)->list:
        "The klines fault queue, as `BinanceStub.faults` (assign a list to replace it)."
        return self._queues.setdefault('/api/v3/klines', [])
    @faults.setter
    def faults(self, kinds): self._queues['/api/v3/klines'] = list(kinds)

    # --- market data ------------------------------------------------------------------------------------------------
    def _klines(self, q, fault=None):
        sym, tf = q['symbol'], q['interval']
        if (sym, tf) not in self.candles: return 400, _err(-1121, 'Invalid symbol.')
        step, df = TF_MS[tf], self.candles[(sym, tf)]
        now = self.now_ms()
        limit = min(int(q.get('limit', 500)), self.max_limit)
        ms = df.index.as_unit('ns').asi8 // 1_000_000
        keep = ms <= now
        if fault == 'late': keep &= ms < now - now % step - step   # the newest closed candle is not in yet
        if 'startTime' in q: keep &= ms >= int(q['startTime'])
        if 'endTime' in q: keep &= ms <= int(q['endTime'])
        if self.missing: keep &= ~pd.Index(ms).isin([int(pd.Timestamp(t).value // 10**6) for t in self.missing])
        part, pms = df[keep], ms[keep]
        part, pms = (part.iloc[:limit], pms[:limit]) if 'startTime' in q else (part.iloc[-limit:], pms[-limit:])
        rows = []
        for t, (o, h, l, c, v) in zip(pms, part[['open', 'high', 'low', 'close', 'volume']].to_numpy()):
            if t + step > now: h = l = c = o; v = 0.0   # the still-open candle: only its first trade so far
            rows.append(kline_row(t, o, h, l, c, v, step))
        if fault == 'hole' and len(rows) > 2: del rows[len(rows) // 2]
        return 200, json.dumps(rows)

    def last_close(self, symbol:str)->float:
        "The close of the last closed candle of the smallest timeframe served for `symbol` (BTCUSDT)."
        now = self.now_ms()
        for tf in sorted((tf for s, tf in self.candles if s == symbol), key=TF_MS.get):
            df = self.candles[(symbol, tf)]; ms = df.index.as_unit('ns').asi8 // 1_000_000
            closed = df[ms + TF_MS[tf] <= now]
            if len(closed): return float(closed.close.iloc[-1])
        raise KeyError(symbol)

    # --- account and orders -----------------------------------------------------------------------------------------
    def _auth(self, headers, raw:str):
        "None when a signed request is good, else (status, body) as Binance answers."
        if headers.get('X-MBX-APIKEY') != self.api_key: return 401, _err(-2015, 'Invalid API-key, IP, or permissions for action.')
        payload, _, sig = raw.rpartition('&signature=')
        good = hmac.new(self.api_secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, good): return 400, _err(-1022, 'Signature for this request is not valid.')
        q = dict(parse_qsl(payload))
        ts, window, now = int(q.get('timestamp', 0)), int(q.get('recvWindow', 5000)), self.now_ms()
        if ts >= now + 1000 or now - ts > window:
            return 400, _err(-1021, "Timestamp for this request is outside of the recvWindow.")
        return None

    def _filters(self, sym):
        info = next(s for s in EXCHANGE_INFO['symbols'] if s['symbol'] == sym)
        return info, {f['filterType']: f for f in info['filters']}

    def _order_view(self, o, full=False):
        keys = ['symbol', 'orderId', 'orderListId', 'clientOrderId', 'price', 'origQty', 'executedQty', 'cummulativeQuoteQty',
                'status', 'timeInForce', 'type', 'side']
        out = {k: o[k] for k in keys}
        if full: return {**out, 'transactTime': o['time'], 'workingTime': o['time'], 'fills': o['fills'], 'selfTradePreventionMode': 'EXPIRE_MAKER'}
        return {**out, 'stopPrice': '0.00000000', 'icebergQty': '0.00000000', 'time': o['time'], 'updateTime': o['updateTime'],
                'isWorking': True, 'workingTime': o['time'], 'origQuoteOrderQty': '0.00000000', 'selfTradePreventionMode': 'EXPIRE_MAKER'}

    def _price_now(self, sym, side):
        "What a taker pays now: `fill_price[sym]`, or the paper model's price with `slippage` set, else the last close."
        if sym in self.fill_price: return self.fill_price[sym]
        if self.slippage is None: return self.last_close(sym)
        return self.open_price(sym) * (1.0 + self.slippage * (1 if side == 'BUY' else -1))

    def open_price(self, symbol:str)->float:
        "The open of the candle the server clock is in (the smallest timeframe served for `symbol`): the price available now."
        now = self.now_ms()
        for tf in sorted((tf for s, tf in self.candles if s == symbol), key=TF_MS.get):
            df = self.candles[(symbol, tf)]; ms = df.index.as_unit('ns').asi8 // 1_000_000
            i = int(ms.searchsorted(now, side='right')) - 1
            if i >= 0 and ms[i] + TF_MS[tf] > now: return float(df.open.iloc[i])
        return self.last_close(symbol)

    def check_filters(self, sym, side, typ, qty, price, avg)->str|None:
        "The filter an order fails, as Binance names it ('Filter failure: LOT_SIZE'), or None."
        info, f = self._filters(sym)
        step, tick = float(f['LOT_SIZE']['stepSize']), float(f['PRICE_FILTER']['tickSize'])
        if qty < float(f['LOT_SIZE']['minQty']) or qty > float(f['LOT_SIZE']['maxQty']) or abs(qty / step - round(qty / step)) > 1e-6:
            return 'LOT_SIZE'
        if typ == 'MARKET' and qty > float(f['MARKET_LOT_SIZE']['maxQty']): return 'MARKET_LOT_SIZE'
        if typ == 'LIMIT':
            if abs(price / tick - round(price / tick)) > 1e-6 or price < float(f['PRICE_FILTER']['minPrice']): return 'PRICE_FILTER'
            pp = f['PERCENT_PRICE_BY_SIDE']
            up, down = (pp['bidMultiplierUp'], pp['bidMultiplierDown']) if side == 'BUY' else (pp['askMultiplierUp'], pp['askMultiplierDown'])
            if not float(down) * avg <= price <= float(up) * avg: return 'PERCENT_PRICE_BY_SIDE'
        notional = qty * (price if typ == 'LIMIT' else avg)
        if notional < float(f['NOTIONAL']['minNotional']) or (typ == 'LIMIT' and notional > float(f['NOTIONAL']['maxNotional'])): return 'NOTIONAL'
        return None

    def _fee(self, side, qty, price, base, quote):
        "(asset, amount) of the commission on a trade, by `fee_asset`: 'received' (Binance's default), 'base', 'quote' or 'BNB'."
        mode = self.fee_asset
        if mode == 'received': mode = 'base' if side == 'BUY' else 'quote'
        if mode == 'base': return base, qty * self.fee
        if mode == 'quote': return quote, abs(qty * price) * self.fee
        return 'BNB', abs(qty * price) * self.fee / self.bnb_price

    def _trade(self, o, qty, price):
        "Fill `qty` of order `o` at `price`: balances, the order's fills and the account's trades."
        sym, side = o['symbol'], o['side']
        info, _ = self._filters(sym)
        base, quote = info['baseAsset'], info['quoteAsset']
        fee_asset, fee = self._fee(side, qty, price, base, quote)
        sign = 1 if side == 'BUY' else -1
        self.balances[base] = self.balances.get(base, 0.0) + sign * qty
        self.balances[quote] = self.balances.get(quote, 0.0) - sign * qty * price
        self.balances[fee_asset] = self.balances.get(fee_asset, 0.0) - fee
        tid, done = next(self._ids), float(o['executedQty']) + qty
        quote_qty = float(o['cummulativeQuoteQty']) + qty * price
        o.update(executedQty=f'{done:.8f}', cummulativeQuoteQty=f'{quote_qty:.8f}')
        o['fills'].append({'price': f'{price:.8f}', 'qty': f'{qty:.8f}', 'commission': f'{fee:.8f}', 'commissionAsset': fee_asset, 'tradeId': tid})
        self.trades.append({'symbol': sym, 'id': tid, 'orderId': o['orderId'], 'orderListId': -1, 'price': f'{price:.8f}', 'qty': f'{qty:.8f}',
                            'quoteQty': f'{qty * price:.8f}', 'commission': f'{fee:.8f}', 'commissionAsset': fee_asset, 'time': o['updateTime'],
                            'isBuyer': side == 'BUY', 'isMaker': False, 'isBestMatch': True})

    def _new_order(self, q, test=False, fault=None):
        sym = q.get('symbol')
        if sym not in {s['symbol'] for s in EXCHANGE_INFO['symbols']}: return 400, _err(-1121, 'Invalid symbol.')
        info, f = self._filters(sym)
        side, typ, tif = q.get('side'), q.get('type'), q.get('timeInForce', 'GTC')
        qty = float(q.get('quantity', 0))
        at = self._price_now(sym, side)                       # where a taker order would fill now
        avg = self.open_price(sym) if self.slippage is not None or sym not in self.fill_price else self.fill_price[sym]
        price = float(q['price']) if typ == 'LIMIT' else at
        bad = {'lot_size': 'LOT_SIZE', 'notional': 'NOTIONAL'}.get(fault) or self.check_filters(sym, side, typ, qty, price, avg)
        if bad: return 400, _err(-1013, f'Filter failure: {bad}')
        base, quote = info['baseAsset'], info['quoteAsset']
        cid = q.get('newClientOrderId') or f'fake-{next(self._ids)}'
        with self.lock:
            if any(o['clientOrderId'] == cid and o['status'] in ('NEW', 'PARTIALLY_FILLED') for o in self.orders.values()):
                return 400, _err(-2010, 'Duplicate order sent.')
            need, asset = (qty * price * (1 + (self.fee if self.fee_asset == 'quote' else 0)), quote) if side == 'BUY' else (qty, base)
            if self.balances.get(asset, 0.0) < need - 1e-9:
                return 400, _err(-2010, 'Account has insufficient balance for requested action.')
            if test: return 200, '{}'
            oid, now = next(self._ids), self.now_ms()
            o = {'symbol': sym, 'orderId': oid, 'orderListId': -1, 'clientOrderId': cid, 'price': f"{price if typ == 'LIMIT' else 0:.8f}",
                 'origQty': f'{qty:.8f}', 'executedQty': '0.00000000', 'cummulativeQuoteQty': '0.00000000', 'status': 'NEW',
                 'timeInForce': tif if typ == 'LIMIT' else 'GTC', 'type': typ, 'side': side, 'time': now, 'updateTime': now, 'fills': []}
            crosses = typ == 'MARKET' or (at <= price if side == 'BUY' else at >= price)
            if fault == 'rests': pass                            # answered before matching: NEW until it is cancelled
            elif typ == 'MARKET' or (crosses and tif in ('IOC', 'FOK')):
                take = qty
                if fault == 'partial' or self.liquidity is not None:   # a thin book: only part of it there
                    share = 0.5 if fault == 'partial' else self.liquidity
                    step = float(f['LOT_SIZE']['stepSize'])
                    take = math.floor(qty * share / step + 1e-9) * step
                if take > 0: self._trade(o, take, at)
                o['status'] = 'FILLED' if take >= qty - 1e-12 else ('EXPIRED' if typ == 'LIMIT' else 'FILLED')
            elif tif in ('IOC', 'FOK'): o['status'] = 'EXPIRED'     # nothing at the price: an IOC ends at once
            self.orders[oid] = o
        return 200, json.dumps(self._order_view(o, full=True))

    def adjust(self, asset:str, delta:float):
        "A balance changed behind tbot's back (a deposit, a withdrawal, a trade made by hand)."
        with self.lock: self.balances[asset] = self.balances.get(asset, 0.0) + delta

    def _find_order(self, q):
        with self.lock:
            for o in self.orders.values():
                if o['symbol'] == q.get('symbol') and (str(o['orderId']) == q.get('orderId') or o['clientOrderId'] == q.get('origClientOrderId')):
                    return o
        return None

    def _private(self, method, path, q, fault=None):
        if path == '/api/v3/account':
            bal = [{'asset': a, 'free': f'{v:.8f}', 'locked': '0.00000000'} for a, v in self.balances.items()]
            return 200, json.dumps({'makerCommission': 10, 'takerCommission': 10, 'buyerCommission': 0, 'sellerCommission': 0,
                                    'canTrade': True, 'canWithdraw': True, 'canDeposit': True, 'brokered': False, 'requireSelfTradePrevention': False,
                                    'preventSor': False, 'updateTime': self.now_ms(), 'accountType': 'SPOT', 'balances': bal, 'permissions': ['SPOT'], 'uid': 1})
        if path == '/api/v3/order/test': return self._new_order(q, test=True)
        if path == '/api/v3/order' and method == 'POST':
            status, body = self._new_order(q, fault=fault)
            if fault == 'accepted_1007' and status == 200:   # on the book, but the answer says the outcome is unknown
                return 503, _err(-1007, 'Timeout waiting for response from backend server. Send status unknown; execution status unknown.')
            return status, body
        if path == '/api/v3/order' and method == 'GET':
            o = None if fault == 'notfound' else self._find_order(q)   # 'notfound': the order is not visible yet
            return (200, json.dumps(self._order_view(o))) if o else (400, _err(-2013, 'Order does not exist.'))
        if path == '/api/v3/order' and method == 'DELETE':
            o = self._find_order(q)
            if not o or o['status'] not in ('NEW', 'PARTIALLY_FILLED'): return 400, _err(-2011, 'Unknown order sent.')
            o.update(status='CANCELED', updateTime=self.now_ms())
            return 200, json.dumps({**self._order_view(o, full=True), 'origClientOrderId': o['clientOrderId']})
        if path == '/api/v3/openOrders':
            with self.lock: return 200, json.dumps([self._order_view(o) for o in self.orders.values()
                                                    if o['status'] in ('NEW', 'PARTIALLY_FILLED') and o['symbol'] == q.get('symbol', o['symbol'])])
        if path == '/api/v3/myTrades':
            since = int(q.get('startTime', 0))
            oid = int(q['orderId']) if 'orderId' in q else None
            until = int(q.get('endTime', since + 86_400_000 - 1 if 'startTime' in q else 2**62))   # Binance: a window of at most 24 h
            if 'startTime' in q and until - since >= 86_400_000: return 400, _err(-1127, 'More than 24 hours between startTime and endTime.')
            with self.lock: return 200, json.dumps([t for t in self.trades if t['symbol'] == q.get('symbol') and since <= t['time'] <= until
                                                    and (oid is None or t['orderId'] == oid)][:int(q.get('limit', 500))])
        return 404, _err(-1, f'no fake for {method} {path}')

    # --- HTTP -------------------------------------------------------------------------------------------------------
    def answer(self, method, path, q, headers, raw):
        "(status, body, headers) for one request, after any queued fault."
        fault = self._next_fault(path)
        if fault == 'timeout':   # the request is handled (an order is placed), but the answer comes too late
            out = self._answer(method, path, q, headers, raw, None); time.sleep(self.slow); return out
        return self._answer(method, path, q, headers, raw, fault)

    def _answer(self, method, path, q, headers, raw, fault):
        if fault in ('429', '418'):
            msg = 'Too many requests; current limit of IP is 6000 requests per minute.' if fault == '429' else 'Way too many requests; IP banned.'
            return int(fault), _err(-1003, msg), {'Retry-After': str(self.retry_after)}
        if fault == '500': return 500, '<html><body><h1>500 Internal Server Error</h1></body></html>', {'Content-Type': 'text/html'}
        if fault == '503': return 503, _err(-1001, 'Internal error; unable to process your request. Please try again.'), {}
        if fault == '503_1007': return 503, _err(-1007, 'Timeout waiting for response from backend server. Send status unknown; execution status unknown.'), {}
        if fault == '1007': return 408, _err(-1007, 'Timeout waiting for response from backend server. Send status unknown; execution status unknown.'), {}
        if fault == 'skew': return 400, _err(-1021, "Timestamp for this request was 1000ms ahead of the server's time."), {}
        if fault == 'malformed': return 200, '[[1672531200000,"16541.77","16545.70"', {}
        if fault == 'empty': return 200, '[]', {}
        if fault == 'drop': return None, None, {}
        if path == '/api/v3/ping': return 200, '{}', {}
        if path == '/api/v3/time': return 200, json.dumps({'serverTime': self.now_ms()}), {}
        if path == '/api/v3/exchangeInfo': return 200, json.dumps({**EXCHANGE_INFO, 'serverTime': self.now_ms()}), {}
        if path == '/api/v3/klines': return (*self._klines(q, fault), {})
        if path in _SIGNED:
            bad = self._auth(headers, raw)
            if bad: return (*bad, {})
            return (*self._private(method, path, q, fault if fault in ORDER_FAULTS else None), {})
        return 404, _err(-1, f'no fake for {method} {path}'), {}

    def handler(self):
        fake = self
        class H(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            disable_nagle_algorithm = True   # headers and body go out in two writes: without this each answer waits ~40 ms for an ACK
            def log_message(self, *a): pass
            def _do(self, method):
                u = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get('Content-Length') or 0)).decode() if method in ('POST', 'PUT') else ''
                raw = body if method == 'POST' else u.query
                q = dict(parse_qsl(raw))
                with fake.lock: fake.requests.append((method, u.path, q))
                status, text, headers = fake.answer(method, u.path, q, self.headers, raw)
                if status is None:   # 'drop': close the socket without an answer
                    self.close_connection = True
                    try: self.connection.shutdown(2)
                    except OSError: pass
                    return
                data = text.encode()
                self.send_response(status)
                self.send_header('Content-Type', headers.pop('Content-Type', 'application/json'))
                for k, v in headers.items(): self.send_header(k, v)
                self.send_header('Content-Length', str(len(data))); self.end_headers()
                try: self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError): pass   # the client gave up (its timeout)
            def do_GET(self): self._do('GET')
            def do_POST(self): self._do('POST')
            def do_DELETE(self): self._do('DELETE')
        return H

    def start(self):
        "Serve on a random free port of 127.0.0.1."
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), self.handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True); self.thread.start()
        return self

    def stop(self): self.server.shutdown(); self.server.server_close()
    def __enter__(self): return self.start()
    def __exit__(self, *a): self.stop()

    def klines_requests(self)->list[str]:
        "Every klines request as path?query, as `BinanceStub.klines_requests`."
        from urllib.parse import urlencode
        return [f"/api/v3/klines?{urlencode(q)}" for q in self.calls()]

    def calls(self, path:str='/api/v3/klines')->list[dict]:
        "The query of every request made to `path`, in order."
        with self.lock: return [q for m, p, q in self.requests if p == path]

try:
    import pytest

    @pytest.fixture
    def fake_binance():
        "A running `FakeBinance` on the shared BTC+ETH 1h candles of Q2 2022, its clock at 2022-05-09 12:30 UTC."
        with FakeBinance(shared_candles(('BTC/USDT', 'ETH/USDT'), ('1h',), '2022-04-01', '2022-06-30'), now='2022-05-09 12:30') as f:
            yield f
except ImportError: pass
