"""The EMA-cross strategy's position bookkeeping (found by tests/test_crash_recovery.py)."""

from __future__ import annotations

from decimal import Decimal

from actors.strategies.ema_cross import EmaCross, EmaCrossParams
from engine.messages import BestBidOffer, Fill, OrderIntent, Side


def _bbo(mid: str) -> BestBidOffer:
    price = Decimal(mid)
    return BestBidOffer(
        symbol="IBM",
        bid_price=price - Decimal("0.01"),
        bid_size=Decimal(100),
        ask_price=price + Decimal("0.01"),
        ask_size=Decimal(100),
        provider="test",
        ts_event=0,
        ts_init=0,
    )


def test_a_fill_before_the_first_quote_counts_toward_the_position() -> None:
    # After a restart, recovery books what the venue filled while the engine was down,
    # before the feed has quoted the symbol. That fill used to be dropped: the strategy
    # then believed it was flat, bought again on every upward cross (each refused for
    # buying power) and never sold what it held.
    strategy = EmaCross("ema-cross", EmaCrossParams(fast=2, slow=3, qty=Decimal(10)))
    held = Fill(
        client_order_id="k-1",
        venue_order_id="v-1",
        execution_id="recovery:v-1:10",
        intent_id="ema-cross.0-1",
        strategy="ema-cross",
        symbol="IBM",
        side=Side.BUY,
        qty=Decimal(10),
        price=Decimal(100),
        fee=Decimal(0),
        ts_event=0,
        ts_recv=0,
    )
    assert strategy.on_fill(held, 0) == []
    intents: list[OrderIntent] = []
    for mid in ("100", "99", "98", "99", "101", "103", "101", "98", "95"):  # down, up-cross, down-cross
        intents += strategy.on_bbo(_bbo(mid), 0)
    assert [(i.side, i.qty) for i in intents] == [(Side.SELL, Decimal(10))]
