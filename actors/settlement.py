"""The settlement actor: the ledger of positions, cash and realised P&L, built from fills.

Positions may be long or short. Realised P&L uses average cost: adding to a position
moves its average price; reducing it realises ``(price - average) × qty`` in the
position's direction; crossing through zero closes the old position and opens the rest
at the fill price. Cash moves by ``∓ price × qty`` and fees. All arithmetic is decimal.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from engine import topics
from engine.actor import Actor
from engine.messages import (
    ActorStats,
    Fill,
    FillHistory,
    FillHistoryQuery,
    PortfolioQuery,
    PortfolioSnapshot,
    StatsQuery,
)

ZERO = Decimal(0)


@dataclass
class Position:
    qty: Decimal = ZERO
    avg_price: Decimal = ZERO


class Ledger:
    """Pure bookkeeping, separate from the actor so it can be tested and replayed on its own."""

    def __init__(self, cash: Decimal) -> None:
        self.cash = cash
        self.positions: dict[str, Position] = {}
        self.realized_pnl = ZERO
        self.fees = ZERO
        self.fills = 0
        self.execution_ids: set[str] = set()

    def apply(self, fill: Fill) -> bool:
        """Book a fill; False (and no change) if its execution id was booked before."""
        if fill.execution_id in self.execution_ids:
            return False
        self.execution_ids.add(fill.execution_id)
        signed = fill.qty * fill.side.sign
        position = self.positions.setdefault(fill.symbol, Position())
        self.cash -= signed * fill.price + fill.fee
        self.fees += fill.fee
        self.fills += 1
        old = position.qty
        new = old + signed
        if old == 0 or (old > 0) == (signed > 0):
            # Opening or adding: the average moves.
            position.avg_price = (position.avg_price * abs(old) + fill.price * abs(signed)) / abs(new)
        else:
            closed = min(abs(signed), abs(old))
            direction = 1 if old > 0 else -1
            self.realized_pnl += (fill.price - position.avg_price) * closed * direction
            if new == 0:
                position.avg_price = ZERO
            elif (new > 0) != (old > 0):
                position.avg_price = fill.price
        position.qty = new
        self.realized_pnl -= fill.fee
        return True

    def snapshot(self) -> PortfolioSnapshot:
        return PortfolioSnapshot(
            cash=self.cash,
            positions={symbol: p.qty for symbol, p in sorted(self.positions.items())},
            realized_pnl=self.realized_pnl,
            fees=self.fees,
            fills=self.fills,
        )


class SettlementActor(Actor):
    """Hosts the :class:`Ledger`. After a restart it rebuilds it from the order manager's fills."""

    def __init__(self, starting_cash: Decimal, fills_address: str) -> None:
        self.ledger = Ledger(starting_cash)
        self.fills_address = fills_address

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ORDER_FILL)
        if self.ctx.restarts:
            history: FillHistory = await self.ctx.request(self.fills_address, FillHistoryQuery())
            for fill in history.fills:
                self.ledger.apply(fill)
            self.ctx.log.info("ledger_rebuilt", source=self.fills_address, fills=self.ledger.fills)

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is Fill:
            self.ledger.apply(message)
        elif kind is PortfolioQuery:
            return self.ledger.snapshot()
        elif kind is StatsQuery:
            return ActorStats(counters={"fills": self.ledger.fills})
        else:
            raise TypeError(f"settlement actor cannot handle {kind.__name__}")
        return None
