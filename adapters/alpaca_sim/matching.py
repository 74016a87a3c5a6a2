"""The simulator's order model and its matching rules against the national best bid and offer.

The venue keeps no order book of its own: it trades against the replayed market.

- **What is on offer.** Each quote update offers its displayed size at the touch *once*
  (the ask for buyers, the bid for sellers). Orders matched against the same update share
  that size in arrival order; what does not fit waits for the next update. A quote side
  with price or size zero offers nothing.
- **Price.** A buy takes the ask, a sell the bid, always at the quoted price. A limit
  order trades only when that price is at or through its limit (so never worse than its
  limit). A resting limit order that is not marketable has no queue position: it trades
  only once the opposite touch reaches its limit. Trades in the recording do not fill
  orders (they only trigger stops).
- **Stops.** A buy stop triggers when the ask or a trade print reaches the stop price
  (at or above), a sell stop when the bid or a trade reaches it (at or below). A
  triggered ``stop`` then behaves as a market order, a triggered ``stop_limit`` as a
  limit order at its limit price. The order's status stays ``new`` meanwhile, as on
  Alpaca.
- **Time in force.** ``ioc``: whatever the first match at arrival cannot fill is
  cancelled. ``fok``: fills completely in one execution at arrival or is cancelled with
  nothing filled. ``day``/``gtc`` (and ``opg``/``cls``, treated as ``day``) rest.
- Quantities are :class:`~decimal.Decimal` (fractional orders allowed for market/day);
  the quoted sizes are whole shares.

:class:`SimOrder` is the venue's mutable record of one order; :meth:`SimOrder.to_wire`
renders Alpaca's Order object. The functions here only *decide*; the venue state
applies the decisions (see ``state.py``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from adapters.alpaca import wire
from adapters.alpaca_sim.events import SimQuote

ZERO: Final = Decimal(0)
PRICE_QUANTUM: Final = Decimal("1e-9")

OPEN_STATUSES: Final = frozenset(
    {"pending_new", "accepted", "new", "partially_filled", "pending_cancel", "pending_replace", "held"}
)


def plain(value: Decimal) -> Decimal:
    """``value`` without trailing zeros and never in exponent form (``1E+2`` → ``100``).

    Alpaca writes decimals as plain strings (``"100"``, ``"10.5"``); msgspec renders a
    Decimal with ``str()``, so the value itself must not carry an exponent.
    """
    if value == 0:
        return ZERO
    return Decimal(format(value.normalize(), "f"))


def _opt(value: Decimal | None) -> Decimal | None:
    return None if value is None else plain(value)


@dataclass(eq=False)
class SimOrder:
    """One order at the venue, with its full history fields (timestamps in epoch ns)."""

    id: str
    client_order_id: str
    seq: int
    """Arrival order at the venue (ties of equal timestamps break on it)."""
    symbol: str
    asset_id: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    extended_hours: bool
    position_intent: str | None
    created_at: int
    submitted_at: int
    updated_at: int
    status: str = "pending_new"
    filled_qty: Decimal = ZERO
    filled_notional: Decimal = ZERO
    filled_at: int | None = None
    expired_at: int | None = None
    canceled_at: int | None = None
    failed_at: int | None = None
    replaced_at: int | None = None
    replaced_by: str | None = None
    replaces: str | None = None
    triggered: bool = False
    """For stop and stop_limit orders: the stop price has been reached."""
    live: bool = False
    """Acknowledged and working at the matching engine."""
    in_flight: Decimal = ZERO
    """Quantity matched whose execution has not been reported yet (fill latency)."""
    pending_final: str | None = None
    """``canceled``/``expired``: the order leaves the book once nothing is in flight."""
    cancel_requested_at: int | None = None
    counted_qty: Decimal = ZERO
    """Quantity the venue counts as working for buying power (its bookkeeping, see state.py)."""
    executions: list[str] = field(default_factory=list)

    # ------------------------------------------------------------ derived

    @property
    def remaining(self) -> Decimal:
        """Quantity not yet executed (in-flight executions count as not executed)."""
        return self.qty - self.filled_qty

    @property
    def open_qty(self) -> Decimal:
        """Quantity still available for matching."""
        return self.qty - self.filled_qty - self.in_flight

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES

    @property
    def is_terminal(self) -> bool:
        return self.status in wire.TERMINAL_STATUSES

    @property
    def filled_avg_price(self) -> Decimal | None:
        if self.filled_qty == 0:
            return None
        return (self.filled_notional / self.filled_qty).quantize(PRICE_QUANTUM)

    @property
    def working_limit(self) -> Decimal | None:
        """The limit that applies to matching now (None: trades at any price)."""
        if self.type in ("limit", "stop_limit"):
            return self.limit_price
        return None

    def to_wire(self) -> wire.Order:
        ts = wire.timestamp

        def opt_ts(ns: int | None) -> str | None:
            return None if ns is None else ts(ns)

        return wire.Order(
            id=self.id,
            client_order_id=self.client_order_id,
            created_at=ts(self.created_at),
            updated_at=ts(self.updated_at),
            submitted_at=ts(self.submitted_at),
            filled_at=opt_ts(self.filled_at),
            expired_at=opt_ts(self.expired_at),
            canceled_at=opt_ts(self.canceled_at),
            failed_at=opt_ts(self.failed_at),
            replaced_at=opt_ts(self.replaced_at),
            replaced_by=self.replaced_by,
            replaces=self.replaces,
            asset_id=self.asset_id,
            symbol=self.symbol,
            asset_class="us_equity",
            notional=None,
            qty=plain(self.qty),
            filled_qty=plain(self.filled_qty),
            filled_avg_price=_opt(self.filled_avg_price),
            order_class="simple",
            order_type=self.type,
            type=self.type,
            side=self.side,
            time_in_force=self.time_in_force,
            limit_price=_opt(self.limit_price),
            stop_price=_opt(self.stop_price),
            status=self.status,
            extended_hours=self.extended_hours,
            legs=None,
            trail_percent=None,
            trail_price=None,
            hwm=None,
            position_intent=self.position_intent,
        )


@dataclass
class Book:
    """The current NBBO of one symbol and how much of it orders have already taken."""

    symbol: str
    bid_price: Decimal | None = None
    bid_size: int = 0
    ask_price: Decimal | None = None
    ask_size: int = 0
    bid_left: Decimal = ZERO
    """Displayed bid size of the current quote not yet taken by sells."""
    ask_left: Decimal = ZERO
    last_trade: Decimal | None = None
    ts_ns: int = 0
    quotes: int = 0

    def update(self, quote: SimQuote) -> None:
        """A new quote: both sides offer their full displayed size again."""
        self.bid_price = quote.bid_price if quote.bid_price > 0 else None
        self.bid_size = quote.bid_size
        self.ask_price = quote.ask_price if quote.ask_price > 0 else None
        self.ask_size = quote.ask_size
        self.bid_left = Decimal(quote.bid_size) if self.bid_price is not None else ZERO
        self.ask_left = Decimal(quote.ask_size) if self.ask_price is not None else ZERO
        self.ts_ns = quote.ts_ns
        self.quotes += 1

    def take(self, side: str, qty: Decimal) -> None:
        if side == "buy":
            self.ask_left -= qty
        else:
            self.bid_left -= qty

    @property
    def mid(self) -> Decimal | None:
        if self.bid_price is not None and self.ask_price is not None:
            return (self.bid_price + self.ask_price) / 2
        return None

    @property
    def mark(self) -> Decimal | None:
        """The price positions are valued at: the mid, else the last trade, else a one-sided quote."""
        return self.mid or self.last_trade or self.ask_price or self.bid_price

    def touch(self, side: str) -> tuple[Decimal | None, Decimal]:
        """(price, size still offered) an order of ``side`` would trade against."""
        if side == "buy":
            return self.ask_price, self.ask_left
        return self.bid_price, self.bid_left


def stop_reached(order: SimOrder, book: Book, trade_price: Decimal | None = None) -> bool:
    """Has the stop price of ``order`` been reached by the quote or by ``trade_price``?"""
    stop = order.stop_price
    if stop is None:
        return True
    if order.side == "buy":
        return (book.ask_price is not None and book.ask_price >= stop) or (
            trade_price is not None and trade_price >= stop
        )
    return (book.bid_price is not None and book.bid_price <= stop) or (
        trade_price is not None and trade_price <= stop
    )


def _price_acceptable(order: SimOrder, price: Decimal) -> bool:
    limit = order.working_limit
    if limit is None:
        return True
    return price <= limit if order.side == "buy" else price >= limit


def match(order: SimOrder, book: Book) -> tuple[Decimal, Decimal] | None:
    """(qty, price) ``order`` can trade now against what the current quote still offers."""
    if order.stop_price is not None and not order.triggered:
        return None
    price, left = book.touch(order.side)
    if price is None or left <= 0 or order.open_qty <= 0 or not _price_acceptable(order, price):
        return None
    return min(order.open_qty, left), price


def fok_fillable(order: SimOrder, book: Book) -> bool:
    """Can ``order`` fill completely, in one execution, right now?"""
    found = match(order, book)
    return found is not None and found[0] == order.open_qty


def _buy_key(order: SimOrder) -> tuple[int, Decimal, int]:
    limit = order.working_limit
    return (0, ZERO, order.seq) if limit is None else (1, -limit, order.seq)


def _sell_key(order: SimOrder) -> tuple[int, Decimal, int]:
    limit = order.working_limit
    return (0, ZERO, order.seq) if limit is None else (1, limit, order.seq)


class WorkingOrders:
    """The orders working for one symbol, indexed so a quote only looks at those it can fill.

    Buys are kept most aggressive first (market, then limit high to low), sells likewise
    (market, then limit low to high); stop orders wait in a list of their own until
    triggered. :meth:`marketable` returns the orders a touch price can fill **in arrival
    order**, which is the order they share the quote's size in.
    """

    def __init__(self) -> None:
        self.buys: list[SimOrder] = []
        self.sells: list[SimOrder] = []
        self.stops: list[SimOrder] = []

    def __len__(self) -> int:
        return len(self.buys) + len(self.sells) + len(self.stops)

    def add(self, order: SimOrder) -> None:
        if order.stop_price is not None and not order.triggered:
            self.stops.append(order)
        elif order.side == "buy":
            bisect.insort(self.buys, order, key=_buy_key)
        else:
            bisect.insort(self.sells, order, key=_sell_key)

    def remove(self, order: SimOrder) -> None:
        if order.stop_price is not None and not order.triggered:
            if order in self.stops:
                self.stops.remove(order)
            return
        orders, key = (self.buys, _buy_key) if order.side == "buy" else (self.sells, _sell_key)
        at = bisect.bisect_left(orders, key(order), key=key)
        if at < len(orders) and orders[at] is order:
            del orders[at]

    def trigger(self, book: Book, trade_price: Decimal | None) -> None:
        """Move the stops the quote or ``trade_price`` reached to the matching side."""
        if not self.stops:
            return
        waiting = []
        for order in self.stops:
            if stop_reached(order, book, trade_price):
                order.triggered = True
                self.add(order)
            else:
                waiting.append(order)
        self.stops = waiting

    def marketable(self, side: str, price: Decimal) -> list[SimOrder]:
        """The ``side`` orders that can trade at ``price``, in arrival order."""
        found: list[SimOrder] = []
        if side == "buy":
            for order in self.buys:
                limit = order.working_limit
                if limit is not None and limit < price:
                    break
                found.append(order)
        else:
            for order in self.sells:
                limit = order.working_limit
                if limit is not None and limit > price:
                    break
                found.append(order)
        found.sort(key=lambda o: o.seq)
        return found
