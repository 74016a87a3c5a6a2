"""The order manager: turns approved intents into venue orders and tracks them.

- Assigns each order a deterministic client order id, ``<run_id>-<sequence>``; the
  venue refuses a second order with the same id, which is what makes a resend safe.
- Applies venue reports through a transition table; a report that would move an order
  backwards or out of a final state is logged loudly and ignored (the journal-backed
  version reconciles such an order with the venue).
- De-duplicates executions by execution id: a replayed or duplicated report can never
  book a fill twice. Executions that arrive after a cancel are still applied.
- Publishes each new fill on ``order.fill`` and each order update on ``order.event``,
  with the intent id and strategy attached, in that order (fill first, then status).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import msgspec

from engine import topics
from engine.actor import Actor
from engine.messages import (
    ActorStats,
    ApprovedOrder,
    Fill,
    FillHistory,
    FillHistoryQuery,
    OrderIntent,
    OrderStatus,
    OrderUpdate,
    StatsQuery,
    SubmitOrder,
    VenueExecution,
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


@dataclass
class OrderRecord:
    intent: OrderIntent
    client_order_id: str
    status: OrderStatus = OrderStatus.PENDING_NEW
    venue_order_id: str = ""
    filled_qty: Decimal = Decimal(0)


class OrderManagerActor(Actor):
    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.sequence = 0
        self.orders: dict[str, OrderRecord] = {}
        self.execution_ids: set[str] = set()
        self.fills: list[Fill] = []
        self.counters = {
            "submitted": 0,
            "fills": 0,
            "duplicate_executions": 0,
            "venue_rejected": 0,
            "bad_transitions": 0,
        }

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ORDER_APPROVED)
        self.ctx.subscribe(topics.VENUE_REPORT)

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is ApprovedOrder:
            await self._submit(message.intent)
        elif kind is VenueExecution:
            await self._on_execution(message)
        elif kind is OrderUpdate:
            await self._on_update(message)
        elif kind is FillHistoryQuery:
            return FillHistory(fills=list(self.fills))
        elif kind is StatsQuery:
            working = sum(1 for o in self.orders.values() if not o.status.is_terminal)
            return ActorStats(counters={**self.counters, "working": working})
        else:
            raise TypeError(f"order manager cannot handle {kind.__name__}")
        return None

    def next_client_order_id(self) -> str:
        self.sequence += 1
        return f"{self.run_id}-{self.sequence}"

    async def _submit(self, intent: OrderIntent) -> None:
        client_order_id = self.next_client_order_id()
        self.orders[client_order_id] = OrderRecord(intent, client_order_id)
        self.counters["submitted"] += 1
        await self.ctx.publish(
            topics.VENUE_COMMAND,
            SubmitOrder(
                client_order_id=client_order_id,
                intent_id=intent.intent_id,
                symbol=intent.symbol,
                side=intent.side,
                qty=intent.qty,
                order_type=intent.order_type,
                limit_price=intent.limit_price,
                time_in_force=intent.time_in_force,
                ts_init=self.ctx.clock.time_ns(),
            ),
        )

    async def _on_execution(self, execution: VenueExecution) -> None:
        if execution.execution_id in self.execution_ids:
            self.counters["duplicate_executions"] += 1
            return
        order = self.orders.get(execution.client_order_id)
        if order is None:
            self.ctx.log.error("execution_for_unknown_order", execution_id=execution.execution_id)
            return
        qty = execution.qty
        if execution.cum_qty is not None:
            # Book only what raises the venue's cumulative quantity: the same execution
            # seen twice under different ids (stream and REST catch-up) counts once.
            qty = min(qty, execution.cum_qty - order.filled_qty)
            if qty <= 0:
                self.counters["duplicate_executions"] += 1
                return
        self.execution_ids.add(execution.execution_id)
        order.filled_qty += qty
        order.venue_order_id = execution.venue_order_id
        self.counters["fills"] += 1
        intent = order.intent
        fill = Fill(
            client_order_id=execution.client_order_id,
            venue_order_id=execution.venue_order_id,
            execution_id=execution.execution_id,
            intent_id=intent.intent_id,
            strategy=intent.strategy,
            symbol=execution.symbol,
            side=execution.side,
            qty=qty,
            price=execution.price,
            fee=execution.fee,
            ts_event=execution.ts_event,
            ts_recv=execution.ts_recv,
        )
        self.fills.append(fill)
        await self.ctx.publish(topics.ORDER_FILL, fill)

    async def _on_update(self, update: OrderUpdate) -> None:
        order = self.orders.get(update.client_order_id)
        if order is None:
            self.ctx.log.error("update_for_unknown_order", status=update.status.value)
            return
        if update.status is not order.status and update.status not in ALLOWED[order.status]:
            self.counters["bad_transitions"] += 1
            self.ctx.log.error(
                "impossible_order_transition", current=order.status.value, reported=update.status.value
            )
            return
        order.status = update.status
        order.venue_order_id = update.venue_order_id
        if update.status is OrderStatus.REJECTED:
            self.counters["venue_rejected"] += 1
            self.ctx.log.warning("order_rejected_by_venue", reason=update.reason)
        await self.ctx.publish(
            topics.ORDER_EVENT,
            msgspec.structs.replace(update, intent_id=order.intent.intent_id, strategy=order.intent.strategy),
        )
