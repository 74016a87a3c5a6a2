"""The Alpaca venue adapter: the order manager's commands in, Alpaca's order events out.

It is an actor at the venue boundary. It takes ``SubmitOrder`` / ``CancelOrder`` from
``venue.command`` and publishes ``OrderUpdate`` / ``VenueExecution`` on ``venue.report``;
no other actor knows Alpaca exists.

Safety rules it enforces:

- **No order while the order stream is dead.** An order is sent only while the
  trade-updates stream is live; otherwise it waits (at most ``stream_wait_s``) and is
  then refused with the reason, without ever reaching the venue.
- **Ambiguous submits stay pending.** A submit whose outcome cannot be settled (see
  :mod:`adapters.alpaca.rest`) is logged and left pending for reconciliation — never
  reported as failed, never resent under a new id.
- **No fill missed while the socket was down.** After every reconnect, before the
  stream is live again, each order still working is looked up by client order id and
  anything the venue filled meanwhile is published as an execution carrying the venue's
  cumulative quantity (the order manager books each quantity once).
- **Breaker open → refused fast** with the reason.
- **Risk is told.** Every change of the order path's health — the ``orders`` circuit
  breaker opening, turning half-open or closing; the trade-updates stream going down or
  live — is published as a :class:`~engine.messages.VenueStatus` on ``venue.status``, so
  risk refuses new intents up front (with a reason code) instead of letting them queue
  behind a venue that cannot take them. The callbacks that notice a change are
  synchronous; the newest status per component is kept and a small task publishes it.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any, Final

from adapters.alpaca import wire
from adapters.alpaca.errors import (
    AlpacaError,
    AmbiguousOutcome,
    AuthenticationFailed,
    PermanentError,
    TransientError,
)
from adapters.alpaca.rest import AlpacaRest, RestSettings
from adapters.alpaca.trade_stream import TradeUpdatesStream
from engine import crashpoints, topics
from engine.actor import Actor
from engine.breaker import BREAKER_CODES, BreakerOpen, BreakerState
from engine.messages import (
    ActorStats,
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
    VenueStatus,
)
from engine.ratelimit import RateLimited
from engine.secrets import Secret

ZERO: Final = Decimal(0)
VENUE: Final = "alpaca"
ORDERS_BREAKER: Final = "alpaca.orders"
FILL_EVENTS: Final = frozenset({"fill", "partial_fill"})


class _StreamFailed:
    """Sent to itself when the stream task dies: the actor crashes and is supervised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Tracked:
    __slots__ = ("filled", "notional", "status", "updated_ns", "venue_order_id")

    def __init__(self) -> None:
        self.venue_order_id = ""
        self.filled = ZERO
        self.notional = ZERO
        self.status = OrderStatus.PENDING_NEW
        self.updated_ns = 0
        """``updated_at`` of the newest venue snapshot of this order applied so far."""


class AlpacaVenueActor(Actor):
    def __init__(
        self,
        base_url: str,
        key_id: Secret,
        secret_key: Secret,
        rest_settings: RestSettings | None = None,
        stream_wait_s: float = 2.0,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.key_id = key_id
        self.secret_key = secret_key
        self.rest_settings = rest_settings
        self.stream_wait_s = stream_wait_s
        self.start_timeout_s = start_timeout_s
        self.orders: dict[str, _Tracked] = {}
        self.counters = {
            "submitted": 0,
            "refused_stream_down": 0,
            "refused_breaker": 0,
            "ambiguous": 0,
            "catchup_fills": 0,
            "catchup_incomplete": 0,
            "stale_snapshots": 0,
        }
        self.rest: AlpacaRest
        self.stream: TradeUpdatesStream
        self._stream_task: asyncio.Task[None] | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._status_pending: dict[str, VenueStatus] = {}
        self._status_ready = asyncio.Event()

    async def on_start(self) -> None:
        ctx = self.ctx
        self.rest = AlpacaRest(
            self.base_url,
            self.key_id,
            self.secret_key,
            ctx.clock,
            ctx.rng,
            self.rest_settings,
            self._breaker_changed,
        )
        await self.rest.open()
        ws_url = "ws" + self.base_url[len("http") :] + "/stream"
        self.stream = TradeUpdatesStream(
            ws_url, self.key_id, self.secret_key, ctx.clock, ctx.rng, self._on_update, self._catch_up,
            on_live_change=self._stream_live_changed,
        )
        self._status_task = asyncio.create_task(self._publish_statuses(), name="alpaca-venue-status")
        self._status_task.add_done_callback(self._stream_done)
        self._stream_task = asyncio.create_task(self.stream.run(), name="alpaca-trade-updates")
        self._stream_task.add_done_callback(self._stream_done)
        ctx.subscribe(topics.VENUE_COMMAND)
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await self.stream.live.wait()
        except TimeoutError:
            ctx.log.warning("trade_updates_not_live_at_start", timeout_s=self.start_timeout_s)
        if ctx.restarts:
            await self._catch_up()
        # A fresh breaker is closed: say so, in case a predecessor left risk believing otherwise.
        self._status_changed("orders", True, "closed", "circuit breaker closed")

    async def on_stop(self) -> None:
        tasks = [t for t in (self._stream_task, self._status_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.rest.close()

    def _stream_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        mailbox = self.ctx.bus.mailbox(self.ctx.address)
        mailbox.offer(_StreamFailed(task.exception()))  # type: ignore[arg-type]

    # ------------------------------------------------------------ health → risk

    def _breaker_changed(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self.ctx.log.warning("breaker_state_changed", breaker=name, old=old.value, new=new.value)
        if name != ORDERS_BREAKER:
            return  # the queries breaker guards reads; orders can still be placed
        if new is BreakerState.OPEN:
            retry_at = self.rest.breakers["orders"].trial_at_ns
            self._status_changed("orders", False, new.value, "order endpoint circuit breaker is open", retry_at)
        else:
            self._status_changed("orders", True, new.value, f"order endpoint circuit breaker is {new.value}")

    def _stream_live_changed(self, live: bool) -> None:
        if live:
            self._status_changed("trade_updates", True, "live", "trade_updates stream is live")
        else:
            self._status_changed("trade_updates", False, "down", "trade_updates stream is down")

    def _status_changed(
        self, component: str, available: bool, state: str, reason: str, retry_at_ns: int | None = None
    ) -> None:
        self._status_pending[component] = VenueStatus(
            venue=VENUE,
            component=component,
            available=available,
            state=state,
            reason=reason,
            retry_at_ns=retry_at_ns,
            ts_event=self.ctx.clock.time_ns(),
        )
        self._status_ready.set()

    async def _publish_statuses(self) -> None:
        """Publish the newest status of each component that changed (bounded: one per component)."""
        while True:
            await self._status_ready.wait()
            self._status_ready.clear()
            pending, self._status_pending = self._status_pending, {}
            for status in pending.values():
                await self.ctx.publish(topics.VENUE_STATUS, status)

    # ------------------------------------------------------------ commands

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is SubmitOrder:
            await self._submit(message)
        elif kind is CancelOrder:
            await self._cancel(message)
        elif kind is ReconcileOrders:
            await self._reconcile(message)
        elif kind is VenueSnapshotQuery:
            return await self._snapshot(message)
        elif kind is StatsQuery:
            return ActorStats(
                counters={**self.counters, **self.rest.counters, **self.stream.counters},
                breakdown={"breaker_state": {name: BREAKER_CODES[b.state] for name, b in self.rest.breakers.items()}},
            )
        elif kind is _StreamFailed:
            raise message.error
        else:
            raise TypeError(f"alpaca venue adapter cannot handle {kind.__name__}")
        return None

    async def _refuse(self, order: SubmitOrder, reason: str) -> None:
        now = self.ctx.clock.time_ns()
        self.ctx.log.warning("order_not_sent", reason=reason)
        await self.ctx.publish(
            topics.VENUE_REPORT,
            OrderUpdate(
                client_order_id=order.client_order_id,
                venue_order_id="",
                status=OrderStatus.REJECTED,
                reason=reason,
                ts_event=now,
                ts_recv=now,
            ),
        )

    async def _submit(self, order: SubmitOrder) -> None:
        if not self.stream.live.is_set():
            try:
                async with asyncio.timeout(self.stream_wait_s):
                    await self.stream.live.wait()
            except TimeoutError:
                self.counters["refused_stream_down"] += 1
                await self._refuse(order, "not sent: trade_updates stream is down")
                return
        request = wire.OrderRequest(
            symbol=order.symbol,
            side=order.side.value,
            type=order.order_type.value,
            time_in_force=order.time_in_force.value,
            qty=order.qty,
            limit_price=order.limit_price,
            client_order_id=order.client_order_id,
        )
        tracked = self.orders.setdefault(order.client_order_id, _Tracked())
        self.counters["submitted"] += 1
        try:
            placed = await self.rest.submit_order(request, may_resend=self.stream.live.is_set)
        except (BreakerOpen, RateLimited) as exc:
            self.counters["refused_breaker"] += 1
            await self._refuse(order, f"not sent: {exc}")
            return
        except AmbiguousOutcome as exc:
            self.counters["ambiguous"] += 1
            self.ctx.log.error("order_outcome_ambiguous", error=str(exc))
            return
        except PermanentError as exc:
            tracked.status = OrderStatus.REJECTED
            await self._refuse(order, f"venue refused: {exc}")
            return
        except AlpacaError as exc:
            # A transient refusal before acceptance (429): nothing reached the venue.
            await self._refuse(order, f"not sent: {exc}")
            return
        crashpoints.hit("venue.after_send_before_ack")
        tracked.venue_order_id = placed.id
        await self._apply_order(placed)

    async def _cancel(self, command: CancelOrder) -> None:
        tracked = self.orders.get(command.client_order_id)
        if tracked is None or not tracked.venue_order_id or tracked.status.is_terminal:
            return
        try:
            await self.rest.cancel_order(tracked.venue_order_id)
        except AlpacaError as exc:
            # The stream (or the next catch-up) reports the order's real state.
            self.ctx.log.warning("cancel_failed", error=str(exc))

    # ------------------------------------------------------------ venue events

    async def _on_update(self, update: wire.TradeUpdate) -> None:
        order = update.order
        tracked = self.orders.setdefault(order.client_order_id, _Tracked())
        tracked.venue_order_id = order.id
        if update.event in FILL_EVENTS and update.qty is not None and update.price is not None:
            now = self.ctx.clock.time_ns()
            ts = wire.parse_timestamp(update.timestamp) if update.timestamp else now
            tracked.notional += update.qty * update.price
            tracked.filled = max(tracked.filled, order.filled_qty)
            await self.ctx.publish(
                topics.VENUE_REPORT,
                VenueExecution(
                    client_order_id=order.client_order_id,
                    venue_order_id=order.id,
                    execution_id=update.execution_id or f"{order.id}:{order.filled_qty}",
                    symbol=order.symbol,
                    side=Side(order.side),
                    qty=update.qty,
                    price=update.price,
                    fee=ZERO,
                    ts_event=ts,
                    ts_recv=now,
                    cum_qty=order.filled_qty,
                ),
            )
        await self._publish_status(order)

    async def _apply_order(self, order: wire.Order, *, authoritative: bool = False) -> None:
        """Bring one order up to the venue's view: missed fills first, then its status."""
        tracked = self.orders.setdefault(order.client_order_id, _Tracked())
        tracked.venue_order_id = order.id
        missed = order.filled_qty - tracked.filled
        if missed > 0 and order.filled_avg_price is not None:
            now = self.ctx.clock.time_ns()
            price = (order.filled_avg_price * order.filled_qty - tracked.notional) / missed
            tracked.notional = order.filled_avg_price * order.filled_qty
            tracked.filled = order.filled_qty
            self.counters["catchup_fills"] += 1
            await self.ctx.publish(
                topics.VENUE_REPORT,
                VenueExecution(
                    client_order_id=order.client_order_id,
                    venue_order_id=order.id,
                    execution_id=f"catchup:{order.id}:{order.filled_qty}",
                    symbol=order.symbol,
                    side=Side(order.side),
                    qty=missed,
                    price=price,
                    fee=ZERO,
                    ts_event=now,
                    ts_recv=now,
                    cum_qty=order.filled_qty,
                ),
            )
        await self._publish_status(order, authoritative=authoritative)

    async def _publish_status(self, order: wire.Order, *, authoritative: bool = False) -> None:
        tracked = self.orders[order.client_order_id]
        try:
            status = OrderStatus(order.status)
        except ValueError:
            self.ctx.log.error("unknown_order_status", status=order.status)
            return
        updated_ns = wire.parse_timestamp(order.updated_at)
        if updated_ns < tracked.updated_ns and not authoritative:
            # An older snapshot than one already applied: the stream and a REST answer
            # (submit response, catch-up) race, so e.g. "new" can arrive after "filled".
            self.counters["stale_snapshots"] += 1
            return
        tracked.updated_ns = updated_ns
        tracked.status = status
        now = self.ctx.clock.time_ns()
        await self.ctx.publish(
            topics.VENUE_REPORT,
            OrderUpdate(
                client_order_id=order.client_order_id,
                venue_order_id=order.id,
                status=status,
                filled_qty=order.filled_qty,
                authoritative=authoritative,
                ts_event=updated_ns,
                ts_recv=now,
            ),
        )

    async def _catch_up(self) -> None:
        """After a reconnect: every order we still consider working, as the venue has it now.

        The stream goes live only once every lookup has succeeded. A lookup that fails (a 5xx,
        an open breaker) may hide a fill made while we were away; going live anyway would
        lose it for good, since the venue never sends that trade update again (found by the
        1,000-seed chaos soak: a sell journaled "filled" with 400 of 500 booked). So a failed
        catch-up fails the session: the stream reconnects with backoff and catches up again,
        and meanwhile no order is sent.
        """
        working = [cid for cid, t in self.orders.items() if not t.status.is_terminal]
        failed: list[str] = []
        for client_order_id in working:
            try:
                order = await self.rest.find_order(client_order_id)
            except (AlpacaError, BreakerOpen, RateLimited) as exc:
                self.ctx.log.error("catch_up_lookup_failed", client_order_id=client_order_id, error=str(exc))
                failed.append(client_order_id)
                continue
            if order is not None:
                await self._apply_order(order)
        if failed:
            self.counters["catchup_incomplete"] += 1
            raise TransientError(f"catch-up incomplete: {len(failed)} of {len(working)} working orders not looked up")
        self.ctx.log.info("trade_updates_caught_up", orders=len(working))


    # ------------------------------------------------------------ reconciliation

    async def _find_after_visibility(self, client_order_id: str) -> wire.Order | None:
        """Look an order up; if absent, once more after the venue's visibility delay."""
        order = await self.rest.find_order(client_order_id)
        if order is None:
            await self.ctx.clock.sleep(self.rest.settings.visibility_delay_s)
            order = await self.rest.find_order(client_order_id)
        return order

    async def _reconcile(self, command: ReconcileOrders) -> None:
        """The venue's truth about each order, through the normal report path, marked authoritative."""
        now = self.ctx.clock.time_ns()
        for client_order_id in command.client_order_ids:
            try:
                order = await self._find_after_visibility(client_order_id)
            except (AlpacaError, BreakerOpen, RateLimited) as exc:
                # Nothing is decided: the order manager's watchdog asks again.
                self.ctx.log.error("reconcile_lookup_failed", client_order_id=client_order_id, error=str(exc))
                continue
            if order is not None:
                await self._apply_order(order, authoritative=True)
                continue
            self.ctx.log.warning("reconciled_order_not_at_venue", client_order_id=client_order_id)
            await self.ctx.publish(
                topics.VENUE_REPORT,
                OrderUpdate(
                    client_order_id=client_order_id,
                    venue_order_id="",
                    status=OrderStatus.REJECTED,
                    reason=f"not at the venue ({command.reason})",
                    authoritative=True,
                    ts_event=now,
                    ts_recv=now,
                ),
            )

    async def _snapshot(self, query: VenueSnapshotQuery) -> VenueSnapshot:
        """Recovery's view of the venue: the orders asked for, our open orders, positions and cash.

        Recovery must not proceed on a partial view: a transient failure (5xx, 429, an open
        breaker) is answered as ``unavailable`` with the reason, and the order manager asks
        again later (raising would crash this actor and, in a storm, exhaust the restart
        budget: found by the chaos soak). Permanent errors (bad keys) propagate. Each order
        reported also seeds this adapter's tracking, so later catch-ups count from the
        venue's quantities.
        """
        try:
            return await self._snapshot_now(query)
        except (TransientError, BreakerOpen, RateLimited) as exc:
            self.ctx.log.warning("venue_snapshot_unavailable", error=f"{type(exc).__name__}: {exc}")
            return VenueSnapshot(
                orders=[], missing=[], positions=None, cash=None, ts_init=self.ctx.clock.time_ns(),
                unavailable=f"{type(exc).__name__}: {exc}",
            )

    async def _snapshot_now(self, query: VenueSnapshotQuery) -> VenueSnapshot:
        found: list[wire.Order] = []
        missing: list[str] = []
        for client_order_id in query.client_order_ids:
            order = await self._find_after_visibility(client_order_id)
            if order is None:
                missing.append(client_order_id)
            else:
                found.append(order)
        asked = set(query.client_order_ids)
        for order in await self.rest.list_orders(status="open"):
            if order.client_order_id.startswith(query.prefix) and order.client_order_id not in asked:
                found.append(order)
        positions = {p.symbol: p.qty for p in await self.rest.list_positions()}
        account = await self.rest.get_account()
        orders = [self._seed(order) for order in found]
        return VenueSnapshot(
            orders=orders,
            missing=missing,
            positions=positions,
            cash=account.cash,
            ts_init=self.ctx.clock.time_ns(),
        )

    def _seed(self, order: wire.Order) -> VenueOrder:
        tracked = self.orders.setdefault(order.client_order_id, _Tracked())
        tracked.venue_order_id = order.id
        tracked.filled = order.filled_qty
        tracked.notional = (order.filled_avg_price or ZERO) * order.filled_qty
        tracked.status = OrderStatus(order.status)
        tracked.updated_ns = max(tracked.updated_ns, wire.parse_timestamp(order.updated_at))
        return VenueOrder(
            client_order_id=order.client_order_id,
            venue_order_id=order.id,
            symbol=order.symbol,
            side=Side(order.side),
            qty=order.qty if order.qty is not None else ZERO,
            order_type=OrderType(order.type),
            limit_price=order.limit_price,
            time_in_force=TimeInForce(order.time_in_force),
            status=OrderStatus(order.status),
            filled_qty=order.filled_qty,
            filled_avg_price=order.filled_avg_price,
            updated_ns=wire.parse_timestamp(order.updated_at),
        )


__all__ = ["AlpacaVenueActor", "AuthenticationFailed"]
