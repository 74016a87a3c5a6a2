"""An in-process simulated venue that fills orders against the current NBBO.

Fill model (documented, deterministic):

- Orders are acknowledged (``new``) when they arrive and matched at once against the
  latest NBBO the venue has seen, then again on every NBBO update.
- A buy takes the ask, a sell the bid; a limit order only when its limit is at or
  through that price, and then at the quoted price (never worse than its limit).
- An NBBO update offers its displayed size at the touch once: orders matched against
  the same update share that size in arrival order, and what does not fit waits for
  the next update (partial fills).
- ``ioc`` cancels what is left after the first match; ``fok`` fills completely at once
  or is cancelled without a fill.
- Zero latency: the venue acts on a message as soon as it handles it.
- A second order with a client order id the venue has seen before (even a finished
  one) is rejected, as Alpaca does; so is an order for a symbol without a quote.
- Fees: ``fee_per_share`` × quantity on each execution.
- Venue order ids are UUIDs drawn from the actor's seeded generator; execution ids are
  ``<venue order id>-<n>``. Same feed + same seed ⇒ same fills.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from engine import topics
from engine.actor import Actor
from engine.messages import (
    ActorStats,
    BestBidOffer,
    CancelOrder,
    OrderStatus,
    OrderType,
    OrderUpdate,
    ReconcileOrders,
    Side,
    StatsQuery,
    SubmitOrder,
    TimeInForce,
    VenueExecution,
    VenueOrder,
    VenueSnapshot,
    VenueSnapshotQuery,
)

ZERO = Decimal(0)


@dataclass
class _VenueOrder:
    order: SubmitOrder
    venue_order_id: str
    filled: Decimal = ZERO
    notional: Decimal = ZERO
    executions: int = 0
    status: OrderStatus = OrderStatus.NEW

    @property
    def remaining(self) -> Decimal:
        return self.order.qty - self.filled


class SimulatedVenue(Actor):
    def __init__(self, fee_per_share: Decimal = ZERO) -> None:
        self.fee_per_share = fee_per_share
        self.quotes: dict[str, BestBidOffer] = {}
        self.used: dict[str, tuple[Decimal, Decimal]] = {}
        """Per symbol: size already taken from the current NBBO's (bid, ask)."""
        self.working: dict[str, list[_VenueOrder]] = {}
        self.orders: dict[str, _VenueOrder] = {}
        self.counters = {"orders": 0, "executions": 0, "rejected": 0, "canceled": 0}

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.MD_BBO)
        self.ctx.subscribe(topics.VENUE_COMMAND)

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is BestBidOffer:
            self.quotes[message.symbol] = message
            self.used[message.symbol] = (ZERO, ZERO)
            await self._match(message.symbol)
        elif kind is SubmitOrder:
            await self._on_submit(message)
        elif kind is CancelOrder:
            await self._on_cancel(message)
        elif kind is ReconcileOrders:
            await self._reconcile(message)
        elif kind is VenueSnapshotQuery:
            return self._snapshot(message)
        elif kind is StatsQuery:
            return ActorStats(counters=dict(self.counters))
        else:
            raise TypeError(f"simulated venue cannot handle {kind.__name__}")
        return None

    # ------------------------------------------------------------ reconciliation

    def _venue_order(self, entry: _VenueOrder) -> VenueOrder:
        order = entry.order
        average = None
        if entry.filled:
            average = entry.notional / entry.filled
        return VenueOrder(
            client_order_id=order.client_order_id,
            venue_order_id=entry.venue_order_id,
            symbol=order.symbol,
            side=order.side,
            qty=order.qty,
            order_type=order.order_type,
            limit_price=order.limit_price,
            time_in_force=order.time_in_force,
            status=entry.status,
            filled_qty=entry.filled,
            filled_avg_price=average,
            updated_ns=self.ctx.clock.time_ns(),
        )

    def _snapshot(self, query: VenueSnapshotQuery) -> VenueSnapshot:
        """This venue lives in the process: it knows its orders, not an account (no positions, no cash)."""
        found = [self._venue_order(self.orders[cid]) for cid in query.client_order_ids if cid in self.orders]
        asked = set(query.client_order_ids)
        found += [
            self._venue_order(entry)
            for cid, entry in self.orders.items()
            if cid not in asked and cid.startswith(query.prefix) and not entry.status.is_terminal
        ]
        missing = [cid for cid in query.client_order_ids if cid not in self.orders]
        return VenueSnapshot(orders=found, missing=missing, positions=None, cash=None, ts_init=self.ctx.clock.time_ns())

    async def _reconcile(self, command: ReconcileOrders) -> None:
        now = self.ctx.clock.time_ns()
        for client_order_id in command.client_order_ids:
            entry = self.orders.get(client_order_id)
            if entry is None:
                await self._report(
                    client_order_id, "", OrderStatus.REJECTED, now, ZERO, "not at the venue", authoritative=True
                )
            else:
                await self._report(
                    client_order_id, entry.venue_order_id, entry.status, now, entry.filled, authoritative=True
                )

    # ------------------------------------------------------------ commands

    async def _on_submit(self, order: SubmitOrder) -> None:
        now = self.ctx.clock.time_ns()
        venue_order_id = str(uuid.UUID(int=self.ctx.rng.getrandbits(128), version=4))
        if order.client_order_id in self.orders:
            await self._report(
                order.client_order_id,
                venue_order_id,
                OrderStatus.REJECTED,
                now,
                ZERO,
                "client_order_id must be unique",
            )
            return
        if order.symbol not in self.quotes:
            await self._report(
                order.client_order_id,
                venue_order_id,
                OrderStatus.REJECTED,
                now,
                ZERO,
                f"no market in {order.symbol}",
            )
            return
        if order.qty <= 0 or (
            order.order_type is OrderType.LIMIT and (order.limit_price is None or order.limit_price <= 0)
        ):
            await self._report(
                order.client_order_id,
                venue_order_id,
                OrderStatus.REJECTED,
                now,
                ZERO,
                "invalid quantity or limit price",
            )
            return
        entry = _VenueOrder(order, venue_order_id)
        self.orders[order.client_order_id] = entry
        self.counters["orders"] += 1
        await self._report(order.client_order_id, venue_order_id, OrderStatus.NEW, now, ZERO)
        if order.time_in_force is TimeInForce.FOK and self._available(entry) < order.qty:
            await self._cancel(entry, now, "fok: not fillable in full")
            return
        self.working.setdefault(order.symbol, []).append(entry)
        await self._match(order.symbol)
        if order.time_in_force is TimeInForce.IOC and entry.remaining > 0 and not entry.status.is_terminal:
            await self._cancel(entry, now, "ioc: remainder canceled")

    async def _on_cancel(self, command: CancelOrder) -> None:
        entry = self.orders.get(command.client_order_id)
        if entry is None or entry.status.is_terminal:
            return
        await self._cancel(entry, self.ctx.clock.time_ns(), "canceled by request")

    async def _cancel(self, entry: _VenueOrder, now: int, reason: str) -> None:
        entry.status = OrderStatus.CANCELED
        working = self.working.get(entry.order.symbol, [])
        if entry in working:
            working.remove(entry)
        self.counters["canceled"] += 1
        await self._report(
            entry.order.client_order_id, entry.venue_order_id, OrderStatus.CANCELED, now, entry.filled, reason
        )

    # ------------------------------------------------------------ matching

    def _touch(self, entry: _VenueOrder) -> tuple[Decimal, Decimal] | None:
        """(price, size still available) this order could take now, or None."""
        order = entry.order
        bbo = self.quotes.get(order.symbol)
        if bbo is None:
            return None
        used_bid, used_ask = self.used.get(order.symbol, (ZERO, ZERO))
        if order.side is Side.BUY:
            price, size = bbo.ask_price, bbo.ask_size - used_ask
            marketable = order.order_type is OrderType.MARKET or (
                order.limit_price is not None and order.limit_price >= price
            )
        else:
            price, size = bbo.bid_price, bbo.bid_size - used_bid
            marketable = order.order_type is OrderType.MARKET or (
                order.limit_price is not None and order.limit_price <= price
            )
        if not marketable or size <= 0:
            return None
        return price, Decimal(size)

    def _available(self, entry: _VenueOrder) -> Decimal:
        touch = self._touch(entry)
        return ZERO if touch is None else touch[1]

    async def _match(self, symbol: str) -> None:
        working = self.working.get(symbol)
        if not working:
            return
        now = self.ctx.clock.time_ns()
        for entry in list(working):
            touch = self._touch(entry)
            if touch is None:
                continue
            price, available = touch
            qty = min(entry.remaining, available)
            used_bid, used_ask = self.used.get(symbol, (ZERO, ZERO))
            if entry.order.side is Side.BUY:
                self.used[symbol] = (used_bid, used_ask + qty)
            else:
                self.used[symbol] = (used_bid + qty, used_ask)
            await self._execute(entry, qty, price, now)
            if entry.remaining == 0:
                working.remove(entry)

    async def _execute(self, entry: _VenueOrder, qty: Decimal, price: Decimal, now: int) -> None:
        entry.filled += qty
        entry.notional += qty * price
        entry.executions += 1
        self.counters["executions"] += 1
        order = entry.order
        await self.ctx.publish(
            topics.VENUE_REPORT,
            VenueExecution(
                client_order_id=order.client_order_id,
                venue_order_id=entry.venue_order_id,
                # The client order id makes it unique across sessions: a replay restarted on
                # its journal draws the same (seeded) venue order ids again.
                execution_id=f"{order.client_order_id}:{entry.venue_order_id}-{entry.executions}",
                symbol=order.symbol,
                side=order.side,
                qty=qty,
                price=price,
                fee=self.fee_per_share * qty,
                ts_event=now,
                ts_recv=now,
            ),
        )
        entry.status = OrderStatus.FILLED if entry.remaining == 0 else OrderStatus.PARTIALLY_FILLED
        await self._report(order.client_order_id, entry.venue_order_id, entry.status, now, entry.filled)

    async def _report(
        self,
        client_order_id: str,
        venue_order_id: str,
        status: OrderStatus,
        now: int,
        filled: Decimal,
        reason: str | None = None,
        *,
        authoritative: bool = False,
    ) -> None:
        if status is OrderStatus.REJECTED:
            self.counters["rejected"] += 1
        await self.ctx.publish(
            topics.VENUE_REPORT,
            OrderUpdate(
                client_order_id=client_order_id,
                venue_order_id=venue_order_id,
                status=status,
                reason=reason,
                filled_qty=filled,
                authoritative=authoritative,
                ts_event=now,
                ts_recv=now,
            ),
        )
