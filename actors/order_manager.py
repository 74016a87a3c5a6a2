"""The order manager: turns approved intents into venue orders, journals every fact, recovers.

The write-ahead rule (DESIGN §5). Every fact the order manager accepts is written to the
journal, in the order it was accepted, and nothing reaches the venue before the journal
holds everything the engine knew when it decided:

- an approved intent becomes ``OrderSubmitting`` (with a client order id
  ``<prefix>-<sequence>``; the sequence lives in the journal, so an id is never issued
  twice, across restarts included), and only after its commit is ``SubmitOrder``
  published to the venue adapter — nothing is ever sent without its journal record;
- venue reports pass the transition table (:data:`ALLOWED`) and de-duplication (by
  execution id, and by the venue's cumulative quantity) first, then are appended to the
  journal, applied to the :class:`~actors.order_book.Book` and published *without
  waiting for their commit*. They are facts the venue already holds: a crash before the
  commit loses nothing that recovery does not fetch back from the venue. The journal
  commits rows in sequence order, so the next ``OrderSubmitting``'s commit is a barrier:
  every report accepted before it is durable before any order that could depend on it
  is sent. (Waiting for each report's commit cost three journal round trips per order.)

A report that would be an impossible transition is logged loudly, not applied, and the
order is looked up at the venue (``ReconcileOrders``); the venue's answer comes back
``authoritative`` and is adopted (journaled as ``OrderReconciled``). An order without
any venue acknowledgement past ``ack_sla_s`` is looked up the same way; still
unacknowledged after ``max_ack_lookups`` lookups, it is escalated: trading is halted
with the reason.

If the journal cannot be written (disk full, I/O error), the order path stops: the
intent is refused (``JOURNAL_FAILED``), trading goes ``HALTED`` with the reason, and no
order is sent. Venue reports still reach the book in memory; the next start reconciles
them from the venue.

Recovery (``Recover``, sent by the composition root once every actor has started; risk
refuses intents until it is over): rebuild the book from the newest snapshot plus the
events after it, ask the venue for every order the journal has working, open orders
carrying our prefix, positions and cash; adopt what the journal missed (orders, fills,
final states), mark orders the venue never received as rejected, then compare positions
and cash. A difference beyond tolerance leaves trading ``HALTED`` with a report; a kill
switch journaled ``HALTED`` stays halted; otherwise trading becomes ``ACTIVE``.

Without a journal (unit tests, a replay run without ``--journal``) the book lives in
memory only and no recovery is needed.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, Final

import msgspec

from actors.order_book import SNAPSHOT_KIND, Book, BookOrder, rebuild
from actors.order_latency import OrderPathLatency
from engine import crashpoints, topics
from engine.actor import Actor
from engine.clock import NS_PER_S
from engine.errors import KestrelError
from engine.journal import Journal, JournalError
from engine.messages import (
    AccountBaseline,
    ActorStats,
    ApprovedOrder,
    CancelIntent,
    CancelOrder,
    CancelRejected,
    CancelRequested,
    Fill,
    FillHistory,
    FillHistoryQuery,
    Message,
    OrderAdopted,
    OrderIntent,
    OrderReconciled,
    OrderStatus,
    OrderSubmitting,
    OrderUpdate,
    ReconcileOrders,
    Recover,
    RecoveryReport,
    RiskRejected,
    StatsQuery,
    SubmitOrder,
    TradingState,
    TradingStateChanged,
    TradingStateQuery,
    TradingStateRequest,
    VenueExecution,
    VenueOrder,
    VenueSnapshot,
    VenueSnapshotQuery,
    WorkingOrders,
    WorkingOrdersQuery,
    WorkingOrderView,
)

S = OrderStatus
_WORKING = frozenset(
    {
        S.NEW,
        S.ACCEPTED,
        S.ACCEPTED_FOR_BIDDING,
        S.PARTIALLY_FILLED,
        S.PENDING_CANCEL,
        S.PENDING_REPLACE,
        S.DONE_FOR_DAY,
        S.STOPPED,
        S.SUSPENDED,
        S.CALCULATED,
        S.HELD,
        S.PENDING_REVIEW,
    }
)
_FINAL = frozenset({S.FILLED, S.CANCELED, S.EXPIRED, S.REJECTED, S.REPLACED})
_ACKED = _WORKING - {S.ACCEPTED, S.ACCEPTED_FOR_BIDDING, S.NEW}
ALLOWED: Final[dict[OrderStatus, frozenset[OrderStatus]]] = {
    S.PENDING_NEW: _WORKING | _FINAL,
    S.ACCEPTED: _WORKING | _FINAL,
    S.ACCEPTED_FOR_BIDDING: _WORKING | _FINAL,
    S.NEW: _ACKED | _FINAL,
    # Once something happened to an acknowledged order it never goes back to "new".
    **{status: _ACKED | _FINAL for status in _ACKED},
    **{status: frozenset() for status in _FINAL},
}
"""Which status may follow which (staying in a status is always allowed)."""

ZERO: Final = Decimal(0)
JOURNAL_FAILED: Final = "JOURNAL_FAILED"


class _WatchdogTick:
    """Sent to itself every half SLA: look for orders the venue never acknowledged."""


class _ReportNotJournaled:
    """Sent to itself when a venue report's commit failed after it was applied."""

    __slots__ = ("error",)

    def __init__(self, error: JournalError) -> None:
        self.error = error


_TICK: Final = _WatchdogTick()
RECOVERY_RETRY_FIRST_S: Final = 0.5
RECOVERY_RETRY_CAP_S: Final = 5.0
"""Backoff while the venue cannot answer recovery's questions (doubling from the first)."""


class RecoveryFailed(KestrelError):
    """Recovery could not get a view of the venue in time: the engine must not trade."""


class OrderManagerActor(Actor):
    def __init__(
        self,
        prefix: str,
        journal: Journal | None = None,
        *,
        venue_address: str | None = None,
        starting_cash: Decimal = ZERO,
        cash_tolerance: Decimal = Decimal("0.01"),
        snapshot_every: int = 10_000,
        ack_sla_s: float = 5.0,
        max_ack_lookups: int = 3,
        recovery_attempts: int = 3,
        recovery_timeout_s: float = 30.0,
        latency: OrderPathLatency | None = None,
    ) -> None:
        self.prefix = prefix
        self.journal = journal
        self._venue_cum: dict[str, Decimal] = {}
        """Per order still filling: the highest cumulative filled quantity the venue reported."""
        self.latency = latency if latency is not None else OrderPathLatency()
        """Submit-to-ack, ack-to-fill, tick-to-order (shared across restarts by the composition root)."""
        self.venue_address = venue_address
        self.starting_cash = starting_cash
        self.cash_tolerance = cash_tolerance
        self.snapshot_every = snapshot_every
        self.ack_sla_s = ack_sla_s
        self.max_ack_lookups = max_ack_lookups
        self.recovery_attempts = recovery_attempts
        self.recovery_timeout_s = recovery_timeout_s
        self.book = Book(cash=starting_cash)
        self.journal_failed: str | None = None
        self.ack_lookups: dict[str, int] = {}
        self._since_snapshot = 0
        self._watchdog_armed = False
        self.recovered = False
        """Recovery has reconciled the book with the venue (the trading state is then the book's)."""
        self.counters = {
            "submitted": 0,
            "fills": 0,
            "duplicate_executions": 0,
            "venue_rejected": 0,
            "bad_transitions": 0,
            "reconciled": 0,
            "ack_lookups": 0,
            "journal_failures": 0,
            "halt_cancels": 0,
            "cancels_requested": 0,
            "cancels_refused": 0,
        }

    # ------------------------------------------------------------ lifecycle

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ORDER_APPROVED)
        self.ctx.subscribe(topics.VENUE_REPORT)
        self.ctx.subscribe(topics.TRADING_REQUEST)
        if self.journal is not None:
            await self._rebuild(self.journal)
        self._arm_watchdog()

    async def _rebuild(self, journal: Journal) -> None:
        book, snapshot_seq, replayed = await rebuild(journal, self.starting_cash)
        self.book = book
        self.ctx.log.info(
            "order_book_rebuilt",
            snapshot_seq=snapshot_seq,
            events_replayed=replayed,
            journal_seq=book.last_seq,
            orders=len(book.orders),
            working=book.working_count,
        )

    def _arm_watchdog(self, unacknowledged: bool = False) -> None:
        """Tick every half SLA while some order waits for its first venue acknowledgement.

        ``unacknowledged=True``: the caller knows one does (an order just sent), which
        spares the order path a scan of the book.
        """
        if self._watchdog_armed:
            return
        if not unacknowledged and not self.book.has_unacknowledged:
            return
        self._watchdog_armed = True
        clock = self.ctx.clock
        due = clock.time_ns() + round(self.ack_sla_s / 2 * NS_PER_S)
        self.ctx.tell_self_at(due, _TICK, retry_s=self.ack_sla_s / 10)

    # ------------------------------------------------------------ messages

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is ApprovedOrder:
            await self._submit(message.intent)
        elif kind is CancelIntent:
            await self._cancel_intent(message)
        elif kind is VenueExecution:
            await self._on_execution(message)
        elif kind is OrderUpdate:
            await self._on_update(message)
        elif kind is _WatchdogTick:
            await self._watchdog()
        elif kind is TradingStateRequest:
            await self._set_state(message.state, message.reason, message.cause)
        elif kind is _ReportNotJournaled:
            await self._journal_failed(message.error)
        elif kind is Recover:
            return await self._recover()
        elif kind is TradingStateQuery:
            return self._state_now()
        elif kind is FillHistoryQuery:
            baseline = self.book.baseline
            fills = self.book.fills
            after = min(max(message.after, 0), len(fills))
            return FillHistory(
                fills=fills[after:],
                baseline_cash=baseline.cash if baseline is not None else None,
                baseline_positions=dict(baseline.positions) if baseline is not None else {},
                skipped_last_execution_id=fills[after - 1].execution_id if after else None,
                total=len(fills),
            )
        elif kind is WorkingOrdersQuery:
            return self._working_orders()
        elif kind is StatsQuery:
            return ActorStats(counters={**self.counters, "working": self.book.working_count})
        else:
            raise TypeError(f"order manager cannot handle {kind.__name__}")
        return None

    def _working_orders(self) -> WorkingOrders:
        """Every order the venue may still fill, as the book has it now (oldest first).

        The book is rebuilt from the journal in ``on_start``, before any sibling started
        after this actor can ask. Recovery runs inside :meth:`handle`, so a query sent
        while it runs waits in the mailbox and is answered with the reconciled book.
        """
        return WorkingOrders(
            orders=[
                WorkingOrderView(
                    client_order_id=order.client_order_id,
                    intent_id=order.intent_id,
                    strategy=order.strategy,
                    symbol=order.symbol,
                    side=order.side,
                    order_type=order.order_type,
                    remaining_qty=max(order.qty - order.filled_qty, ZERO),
                    limit_price=order.limit_price,
                    execution_ids=list(order.execution_ids),
                )
                for order in self.book.working()
            ]
        )

    # ------------------------------------------------------------ journal

    async def _record(self, record: Message) -> None:
        """Journal ``record`` (wait for the commit), then apply it to the book.

        Raises :class:`JournalError` when it cannot be made durable; the book is then
        unchanged, so the caller decides what is safe.
        """
        if self.journal is None:
            self.book.apply(self.book.last_seq + 1, record)
            return
        try:
            seq = await self.journal.write(record)
        except JournalError as exc:
            await self._journal_failed(exc)
            raise
        self.book.apply(seq, record)
        self._since_snapshot += 1
        if self._since_snapshot >= self.snapshot_every:
            await self._snapshot()

    async def _record_or_keep(self, record: Message) -> None:
        """For venue facts: append them to the journal if possible, apply them either way.

        Does not wait for the commit (see the module docs); a commit that fails later
        reaches :meth:`_journal_failed` through the actor's own mailbox. A fill the venue
        reports happened whether or not our disk is full: the book must show it (and the
        next start will find it at the venue again).
        """
        journal = self.journal
        if journal is None:
            self.book.apply(self.book.last_seq + 1, record)
            return
        try:
            if journal.pending >= journal.max_pending:
                await journal.wait_for_room()
            committed = journal.append(record)
        except JournalError as exc:
            await self._journal_failed(exc)
            self.book.apply(self.book.last_seq, record)
            return
        committed.add_done_callback(self._report_committed)
        self.book.apply(journal.last_seq, record)
        self._since_snapshot += 1
        if self._since_snapshot >= self.snapshot_every:
            await self._snapshot()

    def _report_committed(self, committed: asyncio.Future[int]) -> None:
        if committed.cancelled():
            return
        error = committed.exception()
        if error is None:
            return
        if not isinstance(error, JournalError):
            error = JournalError(f"journal commit failed: {error!r}")
        self.ctx.tell_self_at(self.ctx.clock.time_ns(), _ReportNotJournaled(error))

    async def _snapshot(self) -> None:
        assert self.journal is not None
        self._since_snapshot = 0
        try:
            await self.journal.write_snapshot(SNAPSHOT_KIND, self.book.encode(), self.book.last_seq)
        except JournalError as exc:
            await self._journal_failed(exc)

    async def _journal_failed(self, exc: JournalError) -> None:
        self.counters["journal_failures"] += 1
        if self.journal_failed is not None:
            return
        self.journal_failed = str(exc)
        self.ctx.log.critical("journal_failed_order_path_stopped", error=str(exc))
        reason = f"journal write failed: {exc}"
        # Not journaled (the journal is what failed): announced, and working orders cancelled.
        await self.ctx.publish(
            topics.TRADING_STATE,
            TradingStateChanged(
                state=TradingState.HALTED, reason=reason, cause="journal", ts_init=self.ctx.clock.time_ns()
            ),
        )
        await self._cancel_working(reason)

    # ------------------------------------------------------------ orders

    def next_client_order_id(self) -> tuple[str, int]:
        sequence = self.book.sequence + 1
        return f"{self.prefix}-{sequence}", sequence

    async def _submit(self, intent: OrderIntent) -> None:
        if self.journal_failed is not None:
            await self._refuse(intent, JOURNAL_FAILED, f"journal write failed: {self.journal_failed}")
            return
        client_order_id, sequence = self.next_client_order_id()
        now = self.ctx.clock.time_ns()
        order = SubmitOrder(
            client_order_id=client_order_id,
            intent_id=intent.intent_id,
            symbol=intent.symbol,
            side=intent.side,
            qty=intent.qty,
            order_type=intent.order_type,
            limit_price=intent.limit_price,
            time_in_force=intent.time_in_force,
            ts_init=now,
        )
        try:
            await self._record(OrderSubmitting(order=order, strategy=intent.strategy, sequence=sequence, ts_init=now))
        except JournalError as exc:
            await self._refuse(intent, JOURNAL_FAILED, f"not sent: journal write failed: {exc}")
            return
        crashpoints.hit("order.after_commit_before_send")
        self.counters["submitted"] += 1
        self.latency.sent(client_order_id, self.ctx.clock.time_ns(), intent.ts_trigger)
        await self.ctx.publish(topics.VENUE_COMMAND, order)
        self._arm_watchdog(unacknowledged=True)

    async def _refuse(self, intent: OrderIntent, reason: str, detail: str) -> None:
        self.ctx.log.error("intent_refused", reason=reason, detail=detail)
        await self.ctx.publish(
            topics.ORDER_EVENT,
            RiskRejected(
                intent_id=intent.intent_id,
                strategy=intent.strategy,
                symbol=intent.symbol,
                reason=reason,
                detail=detail,
                inputs={},
                ts_init=self.ctx.clock.time_ns(),
            ),
        )

    async def _cancel_intent(self, cancel: CancelIntent) -> None:
        """Resolve a strategy's cancel to its order, journal the request, then send ``CancelOrder``.

        The cancel travelled behind the intent it names through risk's and our mailboxes, so
        an order placed for that intent is already in the book; if there is none, the intent
        was refused (risk or journal) and there is nothing to cancel.
        """
        order = self.book.by_intent(cancel.intent_id)
        if order is None:
            await self._refuse_cancel(cancel, "UNKNOWN_INTENT", f"no order was placed for intent {cancel.intent_id}")
            return
        if order.strategy != cancel.strategy:
            detail = f"intent {cancel.intent_id} is an order of strategy {order.strategy!r}"
            await self._refuse_cancel(cancel, "NOT_OWNER", detail)
            return
        if order.is_terminal:
            detail = f"order {order.client_order_id} is already {order.status.value}"
            await self._refuse_cancel(cancel, "NOT_WORKING", detail)
            return
        if self.journal_failed is not None:
            # Journal first, always; trading is halted, and halting cancels every working order anyway.
            await self._refuse_cancel(cancel, JOURNAL_FAILED, f"journal write failed: {self.journal_failed}")
            return
        now = self.ctx.clock.time_ns()
        record = CancelRequested(
            client_order_id=order.client_order_id,
            intent_id=cancel.intent_id,
            strategy=cancel.strategy,
            reason=cancel.reason,
            ts_init=now,
        )
        try:
            await self._record(record)
        except JournalError as exc:
            await self._refuse_cancel(cancel, JOURNAL_FAILED, f"not sent: journal write failed: {exc}")
            return
        crashpoints.hit("cancel.after_commit_before_send")
        self.counters["cancels_requested"] += 1
        self.ctx.log.info(
            "cancel_requested",
            client_order_id=order.client_order_id,
            intent_id=cancel.intent_id,
            strategy=cancel.strategy,
            reason=cancel.reason,
        )
        await self.ctx.publish(topics.VENUE_COMMAND, CancelOrder(client_order_id=order.client_order_id, ts_init=now))

    async def _refuse_cancel(self, cancel: CancelIntent, reason: str, detail: str) -> None:
        self.counters["cancels_refused"] += 1
        self.ctx.log.warning(
            "cancel_refused", intent_id=cancel.intent_id, strategy=cancel.strategy, reason=reason, detail=detail
        )
        rejected = CancelRejected(
            intent_id=cancel.intent_id,
            strategy=cancel.strategy,
            reason=reason,
            detail=detail,
            ts_init=self.ctx.clock.time_ns(),
        )
        await self.ctx.publish(topics.ORDER_EVENT, rejected)

    async def _on_execution(self, execution: VenueExecution) -> None:
        order = self.book.orders.get(execution.client_order_id)
        if order is None:
            self.ctx.log.error("execution_for_unknown_order", execution_id=execution.execution_id)
            await self._reconcile([execution.client_order_id], "execution for an order the journal does not know")
            return
        if execution.execution_id in order.execution_ids:
            self.counters["duplicate_executions"] += 1
            return
        qty = execution.qty
        if execution.cum_qty is not None:
            # Book only up to the highest cumulative quantity the venue has reported for the
            # order: the same execution seen twice under different ids (stream and REST
            # catch-up) counts once. The highest, not this execution's own: executions can
            # arrive out of order, and one reporting cum 400 after another reporting cum 500
            # is the 100 still missing, not a duplicate (found by the 1,000-seed soak).
            cum = max(execution.cum_qty, self._venue_cum.get(order.client_order_id, ZERO))
            self._venue_cum[order.client_order_id] = cum
            qty = min(qty, cum - order.filled_qty)
            if qty <= 0:
                self.counters["duplicate_executions"] += 1
                return
        fill = Fill(
            client_order_id=execution.client_order_id,
            venue_order_id=execution.venue_order_id,
            execution_id=execution.execution_id,
            intent_id=order.intent_id,
            strategy=order.strategy,
            symbol=execution.symbol,
            side=execution.side,
            qty=qty,
            price=execution.price,
            fee=execution.fee,
            ts_event=execution.ts_event,
            ts_recv=execution.ts_recv,
        )
        await self._record_or_keep(fill)
        if order.is_terminal and order.filled_qty >= self._venue_cum.get(order.client_order_id, ZERO):
            self._venue_cum.pop(order.client_order_id, None)
        self.counters["fills"] += 1
        self.latency.filled(fill.client_order_id, self.ctx.clock.time_ns())
        if order.is_terminal:
            self.latency.finished(fill.client_order_id)
        await self.ctx.publish(topics.ORDER_FILL, fill)
        if order.filled_qty < order.qty and not order.is_terminal:
            crashpoints.hit("order.between_partial_fills")

    async def _on_update(self, update: OrderUpdate) -> None:
        order = self.book.orders.get(update.client_order_id)
        if order is None:
            self.ctx.log.error("update_for_unknown_order", status=update.status.value)
            if not update.authoritative:
                await self._reconcile([update.client_order_id], "update for an order the journal does not know")
            return
        allowed = update.status is order.status or update.status in ALLOWED[order.status]
        if not allowed and not update.authoritative:
            self.counters["bad_transitions"] += 1
            self.ctx.log.error(
                "impossible_order_transition", current=order.status.value, reported=update.status.value
            )
            await self._reconcile([order.client_order_id], f"impossible transition {order.status} -> {update.status}")
            return
        if update.status is order.status and update.venue_order_id == order.venue_order_id and order.acknowledged:
            return  # nothing new (a repeated report)
        record: Message = update
        if not allowed:
            self.counters["reconciled"] += 1
            self.ctx.log.error(
                "order_state_adopted_from_venue", current=order.status.value, venue=update.status.value
            )
            record = OrderReconciled(
                client_order_id=order.client_order_id,
                venue_order_id=update.venue_order_id,
                status=update.status,
                filled_qty=order.filled_qty,  # fills are booked only from executions
                reason=f"venue says {update.status}, journal had {order.status}",
                ts_init=self.ctx.clock.time_ns(),
            )
        await self._record_or_keep(record)
        self.latency.heard(order.client_order_id, self.ctx.clock.time_ns())
        if order.is_terminal:
            self.latency.finished(order.client_order_id)
        self.ack_lookups.pop(order.client_order_id, None)
        if update.status is OrderStatus.REJECTED:
            self.counters["venue_rejected"] += 1
            self.ctx.log.warning("order_rejected_by_venue", reason=update.reason)
        await self.ctx.publish(
            topics.ORDER_EVENT,
            msgspec.structs.replace(update, intent_id=order.intent_id, strategy=order.strategy),
        )

    async def _reconcile(self, client_order_ids: list[str], reason: str) -> None:
        self.counters["reconciled"] += 1
        await self.ctx.publish(
            topics.VENUE_COMMAND,
            ReconcileOrders(client_order_ids=client_order_ids, reason=reason, ts_init=self.ctx.clock.time_ns()),
        )

    # ------------------------------------------------------------ acknowledgement watchdog

    async def _watchdog(self) -> None:
        self._watchdog_armed = False
        try:
            now = self.ctx.clock.time_ns()
            sla_ns = int(self.ack_sla_s * 1e9)
            overdue = [o for o in self.book.unacknowledged() if now - o.submitted_ns > sla_ns]
            lookup: list[str] = []
            for order in overdue:
                attempts = self.ack_lookups.get(order.client_order_id, 0)
                if attempts >= self.max_ack_lookups:
                    if attempts == self.max_ack_lookups:
                        self.ack_lookups[order.client_order_id] = attempts + 1
                        await self._escalate(order)
                    continue
                self.ack_lookups[order.client_order_id] = attempts + 1
                lookup.append(order.client_order_id)
            if lookup:
                self.counters["ack_lookups"] += len(lookup)
                self.ctx.log.warning("orders_unacknowledged", orders=lookup, sla_s=self.ack_sla_s)
                await self._reconcile(lookup, f"no venue acknowledgement within {self.ack_sla_s} s")
        finally:
            self._arm_watchdog()

    async def _escalate(self, order: BookOrder) -> None:
        reason = (
            f"order {order.client_order_id} unacknowledged after {self.max_ack_lookups} venue lookups: halting"
        )
        self.ctx.log.critical("order_unacknowledged_escalated", client_order_id=order.client_order_id)
        await self._set_state(TradingState.HALTED, reason, "unacknowledged_order")

    def _state_now(self) -> TradingStateChanged:
        now = self.ctx.clock.time_ns()
        if not self.recovered:
            return TradingStateChanged(state=TradingState.RECOVERING, reason="recovering", cause="query", ts_init=now)
        book = self.book
        return TradingStateChanged(state=book.trading_state, reason=book.trading_reason, cause="query", ts_init=now)

    async def _set_state(self, state: TradingState, reason: str, cause: str) -> None:
        """Journal a trading state, announce it; entering ``HALTED`` cancels every working order."""
        record = TradingStateChanged(state=state, reason=reason, cause=cause, ts_init=self.ctx.clock.time_ns())
        try:
            await self._record(record)
        except JournalError as exc:
            # _record has halted the order path already; this change is not durable.
            self.ctx.log.error("trading_state_not_journaled", state=state.value, error=str(exc))
        await self.ctx.publish(topics.TRADING_STATE, record)
        if state is TradingState.HALTED:
            await self._cancel_working(reason)

    async def _cancel_working(self, reason: str) -> None:
        working = self.book.working()
        if not working:
            return
        self.counters["halt_cancels"] += len(working)
        self.ctx.log.warning("halt_cancelling_working_orders", orders=len(working), reason=reason)
        now = self.ctx.clock.time_ns()
        for order in working:
            cancel = CancelOrder(client_order_id=order.client_order_id, ts_init=now)
            await self.ctx.publish(topics.VENUE_COMMAND, cancel)

    # ------------------------------------------------------------ recovery

    async def _venue_snapshot(self) -> VenueSnapshot:
        """The venue's view for recovery, asked again with backoff while the venue is unavailable.

        Gives up with :class:`RecoveryFailed` after ``recovery_timeout_s`` of unavailability:
        an engine that cannot reconcile must not trade, and says so rather than hang.
        """
        assert self.venue_address is not None
        clock = self.ctx.clock
        deadline = clock.time_ns() + round(self.recovery_timeout_s * NS_PER_S)
        delay_s = RECOVERY_RETRY_FIRST_S
        while True:
            ask = [o.client_order_id for o in self.book.working()]
            query = VenueSnapshotQuery(client_order_ids=ask, prefix=f"{self.prefix}-", ts_init=clock.time_ns())
            snapshot: VenueSnapshot = await self.ctx.request(self.venue_address, query, self.recovery_timeout_s)
            if not snapshot.unavailable:
                return snapshot
            if clock.time_ns() + round(delay_s * NS_PER_S) > deadline:
                raise RecoveryFailed(
                    f"the venue stayed unavailable for {self.recovery_timeout_s:g} s during recovery: "
                    f"{snapshot.unavailable}"
                )
            self.ctx.log.warning("recovery_venue_unavailable", retry_in_s=delay_s, error=snapshot.unavailable)
            await clock.sleep(delay_s)
            delay_s = min(delay_s * 2, RECOVERY_RETRY_CAP_S)

    async def _recover(self) -> RecoveryReport:
        book = self.book
        known = len(book.orders)
        if self.venue_address is None:
            raise RuntimeError("recovery needs the venue adapter's address")
        adopted: list[str] = []
        not_at_venue: list[str] = []
        missed_fills = 0
        checked = 0
        mismatches: list[str] = []
        for attempt in range(1, self.recovery_attempts + 1):
            snapshot = await self._venue_snapshot()
            crashpoints.hit("recovery.midway")
            checked += len(snapshot.orders)
            fresh_baseline = book.baseline is None
            if fresh_baseline:
                baseline = AccountBaseline(
                    cash=snapshot.cash if snapshot.cash is not None else self.starting_cash,
                    positions=dict(snapshot.positions or {}),
                    source="venue" if snapshot.cash is not None else "configuration",
                    ts_init=self.ctx.clock.time_ns(),
                )
                await self._record(baseline)
                await self.ctx.publish(topics.ORDER_FILL, baseline)
            for venue_order in snapshot.orders:
                if venue_order.client_order_id not in book.orders:
                    await self._adopt(venue_order)
                    adopted.append(venue_order.client_order_id)
                # A baseline taken just now already holds whatever these orders filled.
                missed_fills += await self._catch_up(venue_order, book_fills=not fresh_baseline)
            for client_order_id in snapshot.missing:
                order = book.orders.get(client_order_id)
                if order is None or order.is_terminal or order.acknowledged:
                    continue
                await self._record(
                    OrderReconciled(
                        client_order_id=client_order_id,
                        venue_order_id="",
                        status=OrderStatus.REJECTED,
                        filled_qty=ZERO,
                        reason="not at the venue after a restart: it was never sent",
                        ts_init=self.ctx.clock.time_ns(),
                    )
                )
                not_at_venue.append(client_order_id)
            mismatches = self._compare(snapshot)
            if not mismatches:
                break
            # Fills can land between the venue's answers (orders, then positions): ask again.
            self.ctx.log.warning("recovery_books_differ", attempt=attempt, mismatches=mismatches)
        if mismatches:
            state, reason = TradingState.HALTED, "journal and venue disagree: " + "; ".join(mismatches)
        elif book.trading_state in (TradingState.HALTED, TradingState.REDUCING):
            # The kill switch (or a reduce-only state) survives the restart as journaled:
            # same state, same reason, nothing journaled again (a restart is not a cause).
            state, reason = book.trading_state, book.trading_reason
            self.ctx.log.warning("trading_state_kept", state=state.value, reason=reason)
        else:
            state, reason = TradingState.ACTIVE, "recovered: journal and venue agree"
        if state is not book.trading_state or reason != book.trading_reason:
            await self._record(
                TradingStateChanged(state=state, reason=reason, cause="recovery", ts_init=self.ctx.clock.time_ns())
            )
        if self.journal is not None:
            await self._snapshot()
        report = RecoveryReport(
            state=state,
            reason=reason,
            journal_seq=book.last_seq,
            orders_known=known,
            orders_checked=checked,
            adopted=adopted,
            missed_fills=missed_fills,
            not_at_venue=not_at_venue,
            mismatches=mismatches,
        )
        self.recovered = True
        log = self.ctx.log.critical if state is TradingState.HALTED else self.ctx.log.info
        log("recovery_finished", **msgspec.structs.asdict(report))
        await self.ctx.publish(
            topics.TRADING_STATE,
            TradingStateChanged(state=state, reason=reason, cause="recovery", ts_init=self.ctx.clock.time_ns()),
        )
        if state is TradingState.HALTED:
            await self._cancel_working(reason)
        else:
            await self._resend_cancels()
        return report

    async def _resend_cancels(self) -> None:
        """After recovery: send again every journaled cancel whose order the venue still works.

        The previous process journaled the request and may have died before the cancel
        left (or before the venue answered): a strategy's cancel outlives a crash.
        """
        pending = [order for order in self.book.working() if order.cancel_requested]
        if not pending:
            return
        self.ctx.log.warning("recovery_resending_cancels", orders=[o.client_order_id for o in pending])
        now = self.ctx.clock.time_ns()
        for order in pending:
            cancel = CancelOrder(client_order_id=order.client_order_id, ts_init=now)
            await self.ctx.publish(topics.VENUE_COMMAND, cancel)

    async def _adopt(self, venue_order: VenueOrder) -> None:
        client_order_id = venue_order.client_order_id
        _, _, tail = client_order_id.rpartition("-")
        sequence = int(tail) if tail.isdigit() else 0
        self.ctx.log.error("venue_order_adopted", client_order_id=client_order_id)
        await self._record(
            OrderAdopted(
                order=SubmitOrder(
                    client_order_id=client_order_id,
                    intent_id=f"adopted:{client_order_id}",
                    symbol=venue_order.symbol,
                    side=venue_order.side,
                    qty=venue_order.qty,
                    order_type=venue_order.order_type,
                    limit_price=venue_order.limit_price,
                    time_in_force=venue_order.time_in_force,
                    ts_init=venue_order.updated_ns,
                ),
                sequence=sequence,
                reason="at the venue with our prefix, unknown to the journal",
                ts_init=self.ctx.clock.time_ns(),
            )
        )

    async def _catch_up(self, venue_order: VenueOrder, book_fills: bool) -> int:
        """Book what the venue filled that the journal missed, then adopt its status."""
        order = self.book.orders[venue_order.client_order_id]
        missed = venue_order.filled_qty - order.filled_qty
        fills = 0
        if missed > 0 and book_fills:
            average = venue_order.filled_avg_price
            if average is None:
                raise ValueError(f"venue reports {venue_order.filled_qty} filled without an average price")
            # What the journal has not seen, priced so the order's total matches the venue's.
            price = (average * venue_order.filled_qty - order.notional) / missed
            now = self.ctx.clock.time_ns()
            fill = Fill(
                client_order_id=order.client_order_id,
                venue_order_id=venue_order.venue_order_id,
                execution_id=f"recovery:{venue_order.venue_order_id}:{venue_order.filled_qty}",
                intent_id=order.intent_id,
                strategy=order.strategy,
                symbol=order.symbol,
                side=order.side,
                qty=missed,
                price=price,
                fee=ZERO,
                ts_event=venue_order.updated_ns,
                ts_recv=now,
            )
            await self._record(fill)
            self.counters["fills"] += 1
            fills = 1
            await self.ctx.publish(topics.ORDER_FILL, fill)
        if (
            venue_order.status is not order.status
            or venue_order.venue_order_id != order.venue_order_id
            or venue_order.filled_qty != order.filled_qty
        ):
            await self._record(
                OrderReconciled(
                    client_order_id=order.client_order_id,
                    venue_order_id=venue_order.venue_order_id,
                    status=venue_order.status,
                    filled_qty=venue_order.filled_qty,
                    reason="venue state at recovery",
                    ts_init=self.ctx.clock.time_ns(),
                )
            )
        return fills

    def _compare(self, snapshot: VenueSnapshot) -> list[str]:
        book = self.book
        mismatches: list[str] = []
        if snapshot.positions is not None:
            for symbol in sorted(set(book.positions) | set(snapshot.positions)):
                ours, theirs = book.positions.get(symbol, ZERO), snapshot.positions.get(symbol, ZERO)
                if ours != theirs:
                    mismatches.append(f"{symbol} position: journal {ours}, venue {theirs}")
        if snapshot.cash is not None and abs(book.cash - snapshot.cash) > self.cash_tolerance:
            mismatches.append(f"cash: journal {book.cash}, venue {snapshot.cash} (tolerance {self.cash_tolerance})")
        return mismatches
