"""A recorded-Binance stand-in served from 127.0.0.1, so tests exercise ccxt's own HTTP, parsing and paging code.

It answers the two spot endpoints `fetch` uses, in Binance's wire format:
- GET /api/v3/exchangeInfo: a recorded market list (BTCUSDT, ETHUSDT) with real filters;
- GET /api/v3/klines: pages of candles from the shared real data, honouring symbol, interval, startTime, endTime, limit.
Faults are queued per request: `stub.faults = ['429', '500', 'timeout', 'malformed', 'drop']`, consumed one per klines request.
"""
from __future__ import annotations
import json, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse, parse_qs
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'binance'

def _symbol_info(base, quote, tick, step, min_notional):
    return {
        "symbol": base + quote, "status": "TRADING", "baseAsset": base, "baseAssetPrecision": 8, "quoteAsset": quote,
        "quotePrecision": 8, "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
        "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": True, "isMarginTradingAllowed": True,
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
            {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000.00000000", "stepSize": step},
            {"filterType": "ICEBERG_PARTS", "limit": 10},
            {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000", "stepSize": "0.00000000"},
            {"filterType": "TRAILING_DELTA", "minTrailingAboveDelta": 10, "maxTrailingAboveDelta": 2000, "minTrailingBelowDelta": 10, "maxTrailingBelowDelta": 2000},
            {"filterType": "PERCENT_PRICE_BY_SIDE", "bidMultiplierUp": "5", "bidMultiplierDown": "0.2", "askMultiplierUp": "5", "askMultiplierDown": "0.2", "avgPriceMins": 5},
            {"filterType": "NOTIONAL", "minNotional": min_notional, "applyMinToMarket": True, "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
            {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
            {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5},
        ],
        "permissions": [], "permissionSets": [["SPOT", "MARGIN"]], "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }

EXCHANGE_INFO = {
    "timezone": "UTC", "serverTime": 0,
    "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}],
    "exchangeFilters": [],
    "symbols": [_symbol_info("BTC", "USDT", "0.01000000", "0.00001000", "5.00000000"),
                _symbol_info("ETH", "USDT", "0.01000000", "0.00010000", "5.00000000")],
}

_TF_MS = {'1m': 60_000, '5m': 300_000, '1h': 3_600_000}

def kline_row(ts_ms, o, h, l, c, v, step_ms):
    "One candle in Binance's /api/v3/klines format (strings for prices, like the real API)."
    return [int(ts_ms), f"{o:.8f}", f"{h:.8f}", f"{l:.8f}", f"{c:.8f}", f"{v:.8f}", int(ts_ms) + step_ms - 1,
            f"{c*v:.8f}", 100, f"{v/2:.8f}", f"{c*v/2:.8f}", "0"]

class BinanceStub:
    "Serve recorded Binance answers on 127.0.0.1; use as a context manager."
    def __init__(self, candles:dict[tuple[str,str], pd.DataFrame], open_candle:dict|None=None, max_limit:int=1000):
        self.candles = {k: v for k, v in candles.items()}
        self.open_candle = open_candle or {}   # (symbol, tf) -> True: append a candle that opened a minute ago
        self.max_limit, self.faults, self.requests = max_limit, [], []
        self.lock = threading.Lock()

    def _klines(self, q):
        sym, tf = q['symbol'][0], q['interval'][0]
        step = _TF_MS[tf]
        df = self.candles[(sym, tf)]
        start = int(q.get('startTime', ['0'])[0]); limit = min(int(q.get('limit', ['500'])[0]), self.max_limit)
        end = int(q['endTime'][0]) if 'endTime' in q else None
        ms = df.index.as_unit('ns').asi8 // 1_000_000
        sel = (ms >= start) & ((ms <= end) if end is not None else True)
        part = df[sel].iloc[:limit]; pms = ms[sel][:limit]
        rows = [kline_row(t, *r, step) for t, r in zip(pms, part[['open', 'high', 'low', 'close', 'volume']].to_numpy())]
        if self.open_candle.get((sym, tf)) and len(rows) < limit:
            now = int(time.time() * 1000); t = now - now % step
            if t >= start: rows.append(kline_row(t, 1, 2, 0.5, 1.5, 10, step))
        return rows

    def handler(self):
        stub = self
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def _send(self, code, body, ctype='application/json'):
                data = body.encode() if isinstance(body, str) else body
                self.send_response(code); self.send_header('Content-Type', ctype); self.send_header('Content-Length', str(len(data)))
                self.end_headers(); self.wfile.write(data)
            def do_GET(self):
                u = urlparse(self.path); q = parse_qs(u.query)
                with stub.lock: stub.requests.append(u.path + ('?' + u.query if u.query else ''))
                if u.path.endswith('/exchangeInfo'):
                    info = EXCHANGE_INFO if u.path == '/api/v3/exchangeInfo' else {**EXCHANGE_INFO, 'symbols': []}
                    return self._send(200, json.dumps({**info, 'serverTime': int(time.time() * 1000)}))
                if u.path == '/api/v3/klines':
                    with stub.lock: fault = stub.faults.pop(0) if stub.faults else None
                    if fault == '429': return self._send(429, json.dumps({"code": -1003, "msg": "Too many requests; current limit of IP is 6000 requests per minute."}))
                    if fault == '418': return self._send(418, json.dumps({"code": -1003, "msg": "Way too many requests; IP banned."}))
                    if fault == '500': return self._send(500, '<html><body>500 Internal Server Error</body></html>', 'text/html')
                    if fault == '503': return self._send(503, json.dumps({"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}))
                    if fault == 'timeout': time.sleep(1.5); return self._send(200, '[]')
                    if fault == 'malformed': return self._send(200, '[[1672531200000,"16541.77","16545.70"')
                    if fault == 'drop': self.close_connection = True; self.connection.shutdown(2); return
                    return self._send(200, json.dumps(self._klines_safe(q)))
                return self._send(404, json.dumps({"code": -1, "msg": f"no stub for {u.path}"}))
            def _klines_safe(self, q): return stub._klines(q)
        return H

    def __enter__(self):
        self.server = ThreadingHTTPServer(('127.0.0.1', 0), self.handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True); self.thread.start()
        return self

    def __exit__(self, *a):
        self.server.shutdown(); self.server.server_close()

    def klines_requests(self): return [r for r in self.requests if r.startswith('/api/v3/klines')]

def point_at(exchange, url:str):
    "Rewrite every Binance API host in a ccxt exchange's URLs to the local stub."
    def rewrite(v):
        if isinstance(v, dict): return {k: rewrite(x) for k, x in v.items()}
        if isinstance(v, str):
            for host in ('https://api.binance.com', 'https://fapi.binance.com', 'https://dapi.binance.com', 'https://eapi.binance.com'):
                if v.startswith(host): return url + v[len(host):]
        return v
    exchange.urls['api'] = rewrite(exchange.urls['api'])
    return exchange
