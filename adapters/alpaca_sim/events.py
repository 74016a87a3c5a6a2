"""Market events inside the simulator: what its feed player replays and its data stream sends."""

from __future__ import annotations

from decimal import Decimal

import msgspec


class SimQuote(msgspec.Struct, frozen=True, kw_only=True):
    """A national best bid and offer, each side naming its exchange (Alpaca's ``q`` message)."""

    symbol: str
    bid_exchange: str
    bid_price: Decimal
    bid_size: int
    ask_exchange: str
    ask_price: Decimal
    ask_size: int
    ts_ns: int
    conditions: list[str] = msgspec.field(default_factory=list)
    tape: str = "A"


class SimTrade(msgspec.Struct, frozen=True, kw_only=True):
    """A trade print (Alpaca's ``t`` message)."""

    symbol: str
    trade_id: int
    exchange: str
    price: Decimal
    size: int
    ts_ns: int
    conditions: list[str] = msgspec.field(default_factory=list)
    tape: str = "A"
