"""Alpaca's wire format as msgspec structs, shared by our client and our simulator.

Source of truth: ``shared/protocols/alpaca.md`` (a summary of Alpaca's docs, OpenAPI spec
and the official ``alpaca-py`` SDK). Rules that matter here:

- Decimals travel as JSON **strings** in responses; requests may carry numbers or
  strings (``alpaca-py`` sends numbers), so request decimals decode from either.
- Missing values are JSON ``null``; timestamps are RFC 3339 strings (nanoseconds allowed).
- Unknown keys are ignored when decoding (Alpaca adds fields over time).
- Errors are ``{"code": <8 digits>, "message": "..."}`` with the HTTP status.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any, Final, Literal

import msgspec

# ---------------------------------------------------------------- constants

ORDER_STATUSES: Final = (
    "new",
    "partially_filled",
    "filled",
    "done_for_day",
    "canceled",
    "expired",
    "replaced",
    "pending_cancel",
    "pending_replace",
    "accepted",
    "pending_new",
    "accepted_for_bidding",
    "stopped",
    "rejected",
    "suspended",
    "calculated",
    "pending_review",
    "held",
)
TERMINAL_STATUSES: Final = frozenset(
    {"filled", "canceled", "expired", "replaced", "rejected", "done_for_day"}
)

CODE_MALFORMED: Final = 40010001
CODE_UNAUTHORIZED: Final = 40110000
CODE_FORBIDDEN: Final = 40310000
CODE_NOT_FOUND: Final = 40410000
CODE_UNPROCESSABLE: Final = 42210000
CODE_RATE_LIMIT: Final = 42910000
CODE_INTERNAL: Final = 50010000

Side = Literal["buy", "sell"]
OrderTypeName = Literal["market", "limit", "stop", "stop_limit", "trailing_stop"]
TimeInForceName = Literal["day", "gtc", "opg", "cls", "ioc", "fok"]


def timestamp(ns: int) -> str:
    """RFC 3339 UTC with nanoseconds, as Alpaca writes them: ``2024-01-02T14:30:00.123456789Z``."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{nanos:09d}Z"


def parse_timestamp(text: str) -> int:
    """Nanoseconds since the epoch from an RFC 3339 string (any offset, up to 9 fraction digits)."""
    head, frac, tz = text, "", ""
    if text.endswith("Z"):
        head, tz = text[:-1], "+00:00"
    else:
        for sign in ("+", "-"):
            cut = text.rfind(sign)
            if cut > 10:
                head, tz = text[:cut], text[cut:]
                break
    if "." in head:
        head, frac = head.split(".", 1)
    base = dt.datetime.fromisoformat(head + (tz or "+00:00"))
    return int(base.timestamp()) * 1_000_000_000 + int((frac + "000000000")[:9] or 0)


# ---------------------------------------------------------------- REST


class ErrorBody(msgspec.Struct, omit_defaults=True):
    code: int
    message: str


class TakeProfit(msgspec.Struct, omit_defaults=True):
    limit_price: Decimal


class StopLoss(msgspec.Struct, omit_defaults=True):
    stop_price: Decimal
    limit_price: Decimal | None = None


class OrderRequest(msgspec.Struct, omit_defaults=True):
    """POST /v2/orders body. Decimal fields accept JSON numbers or strings."""

    symbol: str
    side: Side
    type: OrderTypeName
    time_in_force: TimeInForceName
    qty: Decimal | None = None
    notional: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    extended_hours: bool = False
    client_order_id: str | None = None
    order_class: str | None = None
    take_profit: TakeProfit | None = None
    stop_loss: StopLoss | None = None


class ReplaceRequest(msgspec.Struct, omit_defaults=True):
    """PATCH /v2/orders/{id} body."""

    qty: Decimal | None = None
    time_in_force: TimeInForceName | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    trail: Decimal | None = None
    client_order_id: str | None = None


class Order(msgspec.Struct):
    """The REST Order object (also the ``order`` of a trade update)."""

    id: str
    client_order_id: str
    created_at: str
    updated_at: str
    submitted_at: str
    filled_at: str | None
    expired_at: str | None
    canceled_at: str | None
    failed_at: str | None
    replaced_at: str | None
    replaced_by: str | None
    replaces: str | None
    asset_id: str
    symbol: str
    asset_class: str
    notional: Decimal | None
    qty: Decimal | None
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    order_class: str
    order_type: str
    type: str
    side: str
    time_in_force: str
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: str
    extended_hours: bool
    legs: list[Any] | None
    trail_percent: Decimal | None
    trail_price: Decimal | None
    hwm: Decimal | None
    position_intent: str | None = None


class Account(msgspec.Struct):
    id: str
    account_number: str
    status: str
    crypto_status: str
    currency: str
    cash: Decimal
    buying_power: Decimal
    regt_buying_power: Decimal
    non_marginable_buying_power: Decimal
    options_buying_power: Decimal
    equity: Decimal
    last_equity: Decimal
    portfolio_value: Decimal
    long_market_value: Decimal
    short_market_value: Decimal
    initial_margin: Decimal
    maintenance_margin: Decimal
    last_maintenance_margin: Decimal
    sma: Decimal
    multiplier: str
    accrued_fees: Decimal
    pending_transfer_in: Decimal
    pending_transfer_out: Decimal
    created_at: str
    trading_blocked: bool
    transfers_blocked: bool
    account_blocked: bool
    trade_suspended_by_user: bool
    shorting_enabled: bool
    options_approved_level: int = 0
    options_trading_level: int = 0


class Position(msgspec.Struct):
    asset_id: str
    symbol: str
    exchange: str
    asset_class: str
    asset_marginable: bool
    avg_entry_price: Decimal
    qty: Decimal
    qty_available: Decimal
    side: Literal["long", "short"]
    market_value: Decimal | None
    cost_basis: Decimal
    unrealized_pl: Decimal | None
    unrealized_plpc: Decimal | None
    unrealized_intraday_pl: Decimal | None
    unrealized_intraday_plpc: Decimal | None
    current_price: Decimal | None
    lastday_price: Decimal | None
    change_today: Decimal | None


class Asset(msgspec.Struct, rename={"asset_class": "class"}):
    id: str
    asset_class: str
    exchange: str
    symbol: str
    name: str
    status: str
    tradable: bool
    marginable: bool
    shortable: bool
    easy_to_borrow: bool
    fractionable: bool
    attributes: list[str] = msgspec.field(default_factory=list)


class MarketClock(msgspec.Struct):
    timestamp: str
    is_open: bool
    next_open: str
    next_close: str


class CalendarDay(msgspec.Struct):
    date: str
    open: str
    close: str


class MultiStatus(msgspec.Struct, omit_defaults=True):
    """One item of a 207 answer to DELETE /v2/orders."""

    id: str
    status: int
    body: ErrorBody | None = None


# ---------------------------------------------------------------- trade_updates stream


class StreamAuthData(msgspec.Struct):
    key_id: str
    secret_key: str


class StreamListenData(msgspec.Struct):
    streams: list[str]


class TradeUpdate(msgspec.Struct, omit_defaults=True):
    """``data`` of a ``trade_updates`` message."""

    event: str
    order: Order
    timestamp: str | None = None
    execution_id: str | None = None
    price: Decimal | None = None
    qty: Decimal | None = None
    position_qty: Decimal | None = None


class StreamMessage(msgspec.Struct):
    """A server → client frame on ``/stream``: ``{"stream": ..., "data": {...}}``."""

    stream: str
    data: dict[str, Any]


class ClientAction(msgspec.Struct):
    """A client → server frame on ``/stream``: ``{"action": ..., "data": {...}}``."""

    action: str
    data: dict[str, Any] = msgspec.field(default_factory=dict)
