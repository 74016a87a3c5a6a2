"""The risk actor: every intent passes here before it can become an order.

Checks in this version (each rejection carries a stable reason code and the inputs it
used, and is published on ``order.event`` for the strategy and counted):

- ``TRADING_RECOVERING`` / ``TRADING_HALTED`` / ``TRADING_REDUCING`` — the trading state
  (``TradingStateChanged`` on ``trading.state``, journaled by the order manager) is not
  ``ACTIVE``. A live node starts ``RECOVERING``: nothing trades until recovery has
  reconciled the journal with the venue. ``REDUCING`` refuses every intent until risk
  tracks exposure (it cannot yet tell which orders shrink it);
- ``VENUE_UNAVAILABLE`` — the venue adapter said (``VenueStatus`` on ``venue.status``)
  that a component of its order path cannot take orders: the order endpoint's circuit
  breaker is open, or the order-event stream is down, so an order could not be sent or
  its fills could not be followed. A status with ``retry_at_ns`` stops blocking at that
  time, so the breaker's half-open trial order can go through;
- ``NO_REFERENCE_PRICE`` — no live NBBO for the symbol yet;
- ``INVALID_QTY`` — quantity not positive;
- ``MAX_ORDER_QTY`` — quantity above the cap;
- ``MAX_ORDER_NOTIONAL`` — quantity × reference price above the cap. The reference is
  the price the order would pay: the ask for a buy, the bid for a sell, or the limit
  price when that is worse for us.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from engine import topics
from engine.actor import Actor
from engine.config import RiskSection
from engine.messages import (
    ActorStats,
    ApprovedOrder,
    BestBidOffer,
    OrderIntent,
    RiskRejected,
    Side,
    StatsQuery,
    TradingState,
    TradingStateChanged,
    VenueStatus,
)


class RiskActor(Actor):
    def __init__(self, limits: RiskSection, state: TradingState = TradingState.ACTIVE) -> None:
        self.limits = limits
        self.state = state
        self.state_reason = "initial state"
        self.quotes: dict[str, BestBidOffer] = {}
        self.venue_unavailable: dict[tuple[str, str], VenueStatus] = {}
        """(venue, component) → the status that made it unavailable."""
        self.approved = 0
        self.rejections: Counter[str] = Counter()

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.MD_BBO)
        self.ctx.subscribe(topics.ORDER_INTENT)
        self.ctx.subscribe(topics.VENUE_STATUS)
        self.ctx.subscribe(topics.TRADING_STATE)

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is BestBidOffer:
            self.quotes[message.symbol] = message
        elif kind is OrderIntent:
            await self._check(message)
        elif kind is VenueStatus:
            self._venue_status(message)
        elif kind is TradingStateChanged:
            self._trading_state(message)
        elif kind is StatsQuery:
            return ActorStats(
                counters={
                    "approved": self.approved,
                    "rejected": sum(self.rejections.values()),
                    "active": int(self.state is TradingState.ACTIVE),
                },
                breakdown={"rejections_by_reason": dict(self.rejections), "trading_state": {self.state.value: 1}},
            )
        else:
            raise TypeError(f"risk actor cannot handle {kind.__name__}")
        return None

    def _trading_state(self, change: TradingStateChanged) -> None:
        if change.state is not self.state:
            log = self.ctx.log.warning if change.state is not TradingState.ACTIVE else self.ctx.log.info
            log("trading_state_changed", old=self.state.value, new=change.state.value, reason=change.reason)
        self.state, self.state_reason = change.state, change.reason

    def _venue_status(self, status: VenueStatus) -> None:
        key = (status.venue, status.component)
        if status.available:
            if self.venue_unavailable.pop(key, None) is not None:
                self.ctx.log.info("venue_available", venue=status.venue, component=status.component)
        else:
            self.venue_unavailable[key] = status
            self.ctx.log.warning(
                "venue_unavailable", venue=status.venue, component=status.component, reason=status.reason
            )

    def _blocking_status(self) -> VenueStatus | None:
        now = self.ctx.clock.time_ns()
        for status in self.venue_unavailable.values():
            if status.retry_at_ns is None or now < status.retry_at_ns:
                return status
        return None

    async def _check(self, intent: OrderIntent) -> None:
        limits = self.limits
        if self.state is not TradingState.ACTIVE:
            code = f"TRADING_{self.state.name}"
            await self._reject(intent, code, f"trading is {self.state.value}: {self.state_reason}", {})
            return
        blocking = self._blocking_status()
        if blocking is not None:
            inputs = {"venue": blocking.venue, "component": blocking.component, "state": blocking.state}
            await self._reject(intent, "VENUE_UNAVAILABLE", blocking.reason, inputs)
            return
        bbo = self.quotes.get(intent.symbol)
        if bbo is None:
            await self._reject(intent, "NO_REFERENCE_PRICE", "no NBBO for the symbol yet", {})
            return
        reference = bbo.ask_price if intent.side is Side.BUY else bbo.bid_price
        if intent.limit_price is not None:
            reference = (
                max(reference, intent.limit_price)
                if intent.side is Side.BUY
                else min(reference, intent.limit_price)
            )
        inputs = {"qty": str(intent.qty), "reference_price": str(reference)}
        if intent.qty <= 0:
            await self._reject(intent, "INVALID_QTY", "quantity must be positive", inputs)
            return
        if intent.qty > limits.max_order_qty:
            inputs["max_order_qty"] = str(limits.max_order_qty)
            await self._reject(intent, "MAX_ORDER_QTY", f"qty {intent.qty} > {limits.max_order_qty}", inputs)
            return
        notional = intent.qty * reference
        if notional > limits.max_order_notional:
            inputs.update(notional=str(notional), max_order_notional=str(limits.max_order_notional))
            await self._reject(
                intent, "MAX_ORDER_NOTIONAL", f"notional {notional} > {limits.max_order_notional}", inputs
            )
            return
        self.approved += 1
        await self.ctx.publish(
            topics.ORDER_APPROVED,
            ApprovedOrder(intent=intent, reference_price=reference, ts_init=self.ctx.clock.time_ns()),
        )

    async def _reject(self, intent: OrderIntent, reason: str, detail: str, inputs: dict[str, str]) -> None:
        self.rejections[reason] += 1
        self.ctx.log.info("intent_rejected", reason=reason, detail=detail, **inputs)
        await self.ctx.publish(
            topics.ORDER_EVENT,
            RiskRejected(
                intent_id=intent.intent_id,
                strategy=intent.strategy,
                symbol=intent.symbol,
                reason=reason,
                detail=detail,
                inputs=inputs,
                ts_init=self.ctx.clock.time_ns(),
            ),
        )
