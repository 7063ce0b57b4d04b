"""The fake Binance of `fake_binance.py`, plus what the live rails ask of an API key: GET /sapi/v1/account/apiRestrictions
(signed, checked like the other signed endpoints) with permissions a test sets, and an /api/v3/order/test that can be made to
refuse. Everything else is `FakeBinance` unchanged (its clock, `skew`, faults, signed endpoints)."""
from __future__ import annotations
import json
from fake_binance import FakeBinance, _err

RESTRICTIONS = '/sapi/v1/account/apiRestrictions'

class FakeBinanceRails(FakeBinance):
    "A `FakeBinance` whose key has permissions (`can_trade`, `can_withdraw`) and whose test orders can be refused (`test_order_error`)."
    def __init__(self, *args,
                 can_trade:bool=True,           # the key's enableSpotAndMarginTrading
                 can_withdraw:bool=False,       # the key's enableWithdrawals
                 test_order_error=None,         # (status, code, msg) that /api/v3/order/test answers instead of accepting
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.can_trade, self.can_withdraw, self.test_order_error = can_trade, can_withdraw, test_order_error

    def restrictions(self)->dict:
        "What Binance answers to GET /sapi/v1/account/apiRestrictions for this key."
        return {'ipRestrict': False, 'createTime': 1_600_000_000_000, 'enableReading': True, 'enableWithdrawals': self.can_withdraw,
                'enableInternalTransfer': False, 'enableMargin': False, 'enableFutures': False, 'permitsUniversalTransfer': False,
                'enableVanillaOptions': False, 'enableFixApiTrade': False, 'enableFixReadOnly': False,
                'enableSpotAndMarginTrading': self.can_trade, 'enablePortfolioMarginTrading': False}

    def _answer(self, method, path, q, headers, raw, fault):
        if fault is None and (path == RESTRICTIONS or (path == '/api/v3/order/test' and self.test_order_error)):
            bad = self._auth(headers, raw)
            if bad: return (*bad, {})
            if path == RESTRICTIONS: return 200, json.dumps(self.restrictions()), {}
            status, code, msg = self.test_order_error
            return status, _err(code, msg), {}
        return super()._answer(method, path, q, headers, raw, fault)
