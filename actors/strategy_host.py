"""The strategy actor: hosts one :class:`~actors.strategies.base.Strategy`.

It feeds the strategy market data and the outcomes of its own orders, and publishes the
intents the strategy returns on ``order.intent``, each followed on ``audit`` by a
``SignalRecorded``: the intent, the features the strategy noted for it, and the message it
was reacting to. Market data is conflated per symbol
when the strategy falls behind (see the mailbox policy the composition root sets).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from actors.strategies.base import Strategy
from engine import topics
from engine.actor import Actor
from engine.messages import (
    AccountBaseline,
    ActorStats,
    BestBidOffer,
    Fill,
    MarketDataStatus,
    OrderIntent,
    OrderUpdate,
    PortfolioQuery,
    PortfolioSnapshot,
    ProviderSwitched,
    RiskRejected,
    SignalRecorded,
    StatsQuery,
    SymbolTradingStatus,
    TradeTick,
)


class StrategyActor(Actor):
    def __init__(self, build: Callable[[], Strategy], portfolio_address: str, boot: int = 0) -> None:
        self.strategy = build()
        self.portfolio_address = portfolio_address
        self.boot = boot
        """How many times this engine has started on its journal (0: no journal)."""
        self.intents = 0
        self.market_status = 0

    async def on_start(self) -> None:
        # Intent ids: <strategy>[.b<boot>].<incarnation>-<n>, unique even though a
        # restarted strategy (or a restarted process) counts from 1 again.
        boot = f".b{self.boot}" if self.boot else ""
        self.strategy.intent_prefix = f"{self.strategy.name}{boot}.{self.ctx.restarts}"
        for topic in (topics.MD_BBO, topics.MD_TRADE, topics.MD_STATUS, topics.ORDER_FILL, topics.ORDER_EVENT):
            self.ctx.subscribe(topic)
        # A fresh instance (a restarted actor, or a restarted process whose ledger the
        # journal rebuilt) knows nothing: ask the ledger what we hold.
        snapshot: PortfolioSnapshot = await self.ctx.request(self.portfolio_address, PortfolioQuery())
        if snapshot.positions:
            self.strategy.restore_positions(snapshot.positions)
            self.ctx.log.info(
                "strategy_state_rebuilt",
                strategy=self.strategy.name,
                source=self.portfolio_address,
                positions={k: str(v) for k, v in snapshot.positions.items()},
            )

    async def handle(self, message: Any) -> Any:
        strategy = self.strategy
        now = self.ctx.clock.time_ns()
        kind = type(message)
        intents: list[OrderIntent]
        if kind is BestBidOffer:
            intents = strategy.on_bbo(message, now)
        elif kind is TradeTick:
            intents = strategy.on_trade(message, now)
        elif kind is AccountBaseline:
            # Recovery's first look at the account: what it holds is where we start.
            strategy.restore_positions(message.positions)
            return None
        elif kind is Fill:
            if message.strategy != strategy.name:
                return None
            intents = strategy.on_fill(message, now)
        elif kind is OrderUpdate:
            if message.strategy != strategy.name:
                return None
            intents = strategy.on_order_update(message, now)
        elif kind is RiskRejected:
            if message.strategy != strategy.name:
                return None
            intents = strategy.on_rejected(message, now)
        elif kind is MarketDataStatus or kind is ProviderSwitched or kind is SymbolTradingStatus:
            self.market_status += 1
            intents = strategy.on_market_status(message, now)
        elif kind is StatsQuery:
            return ActorStats(counters={"intents": self.intents, "market_status": self.market_status})
        else:
            raise TypeError(f"strategy actor cannot handle {kind.__name__}")
        if not intents:
            return None
        # Each intent, then its signal on ``audit``: risk is woken first, so the audit actor's
        # turn is not on the way from the strategy to risk. It still comes before the order
        # manager's (woken later, by the approval), so the signal is journaled ahead of the
        # decision and the order it explains (see actors/audit.py).
        features = strategy.take_features()
        ts_trigger = _event_time(message)
        trigger = kind.__name__
        priced_ns = message.ts_init if kind is BestBidOffer else message.ts_recv if kind is TradeTick else 0
        for intent in intents:
            self.intents += 1
            if priced_ns:
                intent = msgspec.structs.replace(intent, ts_trigger=priced_ns)
            signal = SignalRecorded(
                intent_id=intent.intent_id,
                strategy=intent.strategy,
                symbol=intent.symbol,
                side=intent.side,
                qty=intent.qty,
                order_type=intent.order_type,
                limit_price=intent.limit_price,
                features=features.get(intent.intent_id, {}),
                trigger=trigger,
                ts_trigger=ts_trigger,
                ts_init=now,
            )
            await self.ctx.publish(topics.ORDER_INTENT, intent)
            await self.ctx.publish(topics.AUDIT, signal)
        return None


def _event_time(message: Any) -> int:
    """When what the strategy reacted to happened: its ``ts_event``, else (no event time) its ``ts_init``."""
    ts_event: int | None = getattr(message, "ts_event", None)
    if ts_event is not None:
        return ts_event
    ts_init: int = message.ts_init
    return ts_init
