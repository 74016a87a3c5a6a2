"""Log lines carry the correlation ids of the message being handled, wrapped messages included."""

from __future__ import annotations

from decimal import Decimal

from engine.logs import CURRENT_MESSAGE, add_correlation_ids
from engine.messages import ApprovedOrder, OrderIntent, OrderType, Side


def test_an_approved_order_correlates_through_its_intent() -> None:
    intent = OrderIntent(
        intent_id="ema.1-7", strategy="ema", symbol="IBM", side=Side.BUY, qty=Decimal(10),
        order_type=OrderType.MARKET, ts_init=1,
    )  # fmt: skip
    token = CURRENT_MESSAGE.set(ApprovedOrder(intent=intent, reference_price=Decimal("100.00"), ts_init=2))
    try:
        line = add_correlation_ids(None, "info", {"event": "intent_refused"})
    finally:
        CURRENT_MESSAGE.reset(token)
    assert line["intent_id"] == "ema.1-7" and line["symbol"] == "IBM"
    assert line["msg_type"] == "ApprovedOrder"
    assert "client_order_id" not in line  # the intent has none yet: nothing is made up


def test_fields_of_the_line_itself_win() -> None:
    intent = OrderIntent(
        intent_id="ema.1-8", strategy="ema", symbol="IBM", side=Side.SELL, qty=Decimal(1),
        order_type=OrderType.MARKET, ts_init=1,
    )  # fmt: skip
    token = CURRENT_MESSAGE.set(intent)
    try:
        line = add_correlation_ids(None, "info", {"event": "x", "symbol": "MSFT"})
    finally:
        CURRENT_MESSAGE.reset(token)
    assert line["symbol"] == "MSFT" and line["intent_id"] == "ema.1-8"
