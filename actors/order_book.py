"""The order book as the journal derives it: orders, fills, positions, cash, trading state.

:class:`Book` is a pure function of the journal's records, applied in sequence order
(:meth:`Book.apply`). The order manager keeps one live, ``kestrel journal`` derives one
from a file, recovery rebuilds one from the newest snapshot plus the events after it, and
``kestrel journal verify`` checks that replaying every event from the start reproduces
each snapshot. The journal only ever holds facts the order manager accepted, so ``apply``
never second-guesses a record: validation (the transition table, de-duplication) happens
*before* a record is written.

The book is also the snapshot payload (:meth:`Book.encode` / :meth:`Book.decode`).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import msgspec

from engine.journal import Journal
from engine.messages import (
    AccountBaseline,
    CancelRequested,
    Fill,
    Message,
    OperatorActionRecorded,
    OrderAdopted,
    OrderReconciled,
    OrderStatus,
    OrderSubmitting,
    OrderType,
    OrderUpdate,
    RiskDecision,
    RiskRejected,
    RunManifest,
    Side,
    SignalRecorded,
    SubmitOrder,
    TimeInForce,
    TradingState,
    TradingStateChanged,
)

ZERO: Final = Decimal(0)
SNAPSHOT_KIND: Final = "order-book"
ADOPTED: Final = "adopted"
"""The strategy name of a venue order with our prefix that the journal did not know."""


class BookOrder(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    client_order_id: str
    intent_id: str
    strategy: str
    sequence: int
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    time_in_force: TimeInForce
    submitted_ns: int
    status: OrderStatus = OrderStatus.PENDING_NEW
    venue_order_id: str = ""
    filled_qty: Decimal = ZERO
    notional: Decimal = ZERO
    """Σ qty × price of the fills booked: with the venue's average price it prices a missed fill."""
    execution_ids: list[str] = []
    acknowledged: bool = False
    """The venue has said something about this order (any update or fill)."""
    cancel_requested: bool = False
    """A ``CancelRequested`` is journaled for it: recovery re-sends the cancel while it works."""

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


class Book(msgspec.Struct, kw_only=True, array_like=True, dict=True):
    """The derived state. Besides its fields (the snapshot), it keeps two indexes that are
    not encoded and are rebuilt on decode (``__post_init__``): the working orders and the
    working orders the venue has not acknowledged yet. The order path asks for those on
    every order; scanning every order ever placed made a long session quadratic."""

    last_seq: int = 0
    """The journal sequence number of the last record applied (audit records are skipped, not applied)."""
    sequence: int = 0
    """The highest client-order-id sequence number ever used."""
    orders: dict[str, BookOrder] = {}
    fills: list[Fill] = []
    baseline: AccountBaseline | None = None
    cash: Decimal = ZERO
    positions: dict[str, Decimal] = {}
    fees: Decimal = ZERO
    trading_state: TradingState = TradingState.ACTIVE
    trading_reason: str = ""
    risk_rejections: int = 0

    def __post_init__(self) -> None:
        self._working: dict[str, BookOrder] = {}
        self._unacknowledged: dict[str, BookOrder] = {}
        self._by_intent: dict[str, BookOrder] = {}
        for order in self.orders.values():
            self._by_intent[order.intent_id] = order
            self._index(order)

    def _index(self, order: BookOrder) -> None:
        """Keep the two indexes in step with ``order``'s status and acknowledgement."""
        cid = order.client_order_id
        if order.status.is_terminal:
            self._working.pop(cid, None)
            self._unacknowledged.pop(cid, None)
            return
        if cid not in self._working:
            self._working[cid] = order
        if order.acknowledged:
            self._unacknowledged.pop(cid, None)
        elif cid not in self._unacknowledged:
            self._unacknowledged[cid] = order

    # ------------------------------------------------------------ derivation

    def apply(self, seq: int, record: Message) -> None:
        """Apply one journal record (sequence number ``seq``)."""
        if isinstance(record, Fill):
            self._fill(record)
        elif isinstance(record, OrderUpdate):
            self._update(record)
        elif isinstance(record, OrderSubmitting):
            self._submitting(record)
        elif isinstance(record, OrderAdopted):
            self._adopted(record)
        elif isinstance(record, OrderReconciled):
            self._reconciled(record)
        elif isinstance(record, AccountBaseline):
            self._baseline(record)
        elif isinstance(record, TradingStateChanged):
            self.trading_state = record.state
            self.trading_reason = record.reason
        elif isinstance(record, RiskRejected):
            self.risk_rejections += 1
        elif isinstance(record, CancelRequested):
            requested = self.orders.get(record.client_order_id)
            if requested is not None:
                requested.cancel_requested = True
        elif isinstance(record, (SignalRecorded, RiskDecision, OperatorActionRecorded, RunManifest)):
            # The audit trail (signals, risk decisions, operator actions) and the run manifest explain
            # the book and are not part of it; others write them, between the order manager's records.
            # Not even ``last_seq`` moves: the book the journal re-derives is then the very book
            # the order manager held live, and its snapshot seq is always one of its own records.
            return
        # Anything else the journal may hold is not part of the book.
        self.last_seq = seq

    def _submitting(self, record: OrderSubmitting) -> None:
        self._add(record.order, record.strategy, record.sequence, record.ts_init)

    def _adopted(self, record: OrderAdopted) -> None:
        self._add(record.order, ADOPTED, record.sequence, record.ts_init)

    def _add(self, order: SubmitOrder, strategy: str, sequence: int, ts_init: int) -> None:
        self.sequence = max(self.sequence, sequence)
        self.orders[order.client_order_id] = added = BookOrder(
            client_order_id=order.client_order_id,
            intent_id=order.intent_id,
            strategy=strategy,
            sequence=sequence,
            symbol=order.symbol,
            side=order.side,
            qty=order.qty,
            order_type=order.order_type,
            limit_price=order.limit_price,
            time_in_force=order.time_in_force,
            submitted_ns=ts_init,
        )
        self._by_intent[added.intent_id] = added
        self._index(added)

    def _update(self, update: OrderUpdate) -> None:
        order = self.orders.get(update.client_order_id)
        if order is None:
            return
        order.status = update.status
        order.acknowledged = True
        if update.venue_order_id:
            order.venue_order_id = update.venue_order_id
        self._index(order)

    def _reconciled(self, record: OrderReconciled) -> None:
        order = self.orders.get(record.client_order_id)
        if order is None:
            return
        order.status = record.status
        order.acknowledged = True
        if record.venue_order_id:
            order.venue_order_id = record.venue_order_id
        # Only when fills were counted elsewhere (an account baseline taken at the same
        # recovery): otherwise each fill was journaled before this record.
        order.filled_qty = max(order.filled_qty, record.filled_qty)
        self._index(order)

    def _fill(self, fill: Fill) -> None:
        order = self.orders.get(fill.client_order_id)
        if order is not None:
            order.filled_qty += fill.qty
            order.notional += fill.qty * fill.price
            order.execution_ids.append(fill.execution_id)
            order.acknowledged = True
            if fill.venue_order_id:
                order.venue_order_id = fill.venue_order_id
            self._index(order)
        self.fills.append(fill)
        signed = fill.qty * fill.side.sign
        position = self.positions.get(fill.symbol, ZERO) + signed
        if position:
            self.positions[fill.symbol] = position
        else:
            self.positions.pop(fill.symbol, None)
        self.cash -= signed * fill.price + fill.fee
        self.fees += fill.fee

    def _baseline(self, baseline: AccountBaseline) -> None:
        self.baseline = baseline
        self.cash = baseline.cash
        self.positions = {symbol: qty for symbol, qty in baseline.positions.items() if qty}

    # ------------------------------------------------------------ queries

    def by_intent(self, intent_id: str) -> BookOrder | None:
        """The order placed for ``intent_id`` (``None``: no order was placed for it)."""
        return self._by_intent.get(intent_id)

    def working(self) -> list[BookOrder]:
        """Orders not in a terminal status, oldest first."""
        return list(self._working.values())

    @property
    def working_count(self) -> int:
        return len(self._working)

    def unacknowledged(self) -> list[BookOrder]:
        """Working orders the venue has said nothing about yet, oldest first."""
        return list(self._unacknowledged.values())

    @property
    def has_unacknowledged(self) -> bool:
        return bool(self._unacknowledged)

    # ------------------------------------------------------------ snapshots

    def encode(self) -> bytes:
        return _ENCODER.encode(self)

    @classmethod
    def decode(cls, payload: bytes) -> Book:
        return _DECODER.decode(payload)


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(Book)


async def rebuild(journal: Journal, starting_cash: Decimal = ZERO) -> tuple[Book, int, int]:
    """The book as of the journal's last committed event: newest snapshot + the events after it.

    Returns ``(book, snapshot_seq, events_replayed)``; ``snapshot_seq`` is 0 without a snapshot.
    """
    snapshot = await journal.latest_snapshot(SNAPSHOT_KIND)
    book = Book.decode(snapshot.payload) if snapshot is not None else Book(cash=starting_cash)
    replayed = 0
    async for entry in journal.read(after_seq=book.last_seq):
        book.apply(entry.seq, entry.record)
        replayed += 1
    return book, snapshot.seq if snapshot is not None else 0, replayed
