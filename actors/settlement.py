"""The settlement actor: the ledger of positions, cash and realised P&L, built from fills.

Positions may be long or short, kept as first-in-first-out lots: a fill first closes
the oldest opposite lots, realising ``(price - lot price) × qty`` in the lot's
direction, and opens a new lot with what is left. Cash moves by ``∓ price × qty`` and
fees; realised P&L is net of fees. All arithmetic is decimal and no step divides, so a
book that returns to flat has realised exactly its change in cash.
"""

from __future__ import annotations

from collections import deque
from decimal import Decimal
from typing import Any

from engine import topics
from engine.actor import Actor
from engine.messages import (
    AccountBaseline,
    ActorStats,
    Fill,
    FillHistory,
    FillHistoryQuery,
    PortfolioQuery,
    PortfolioSnapshot,
    StatsQuery,
)

ZERO = Decimal(0)


class Position:
    """A position as first-in-first-out lots of (signed quantity, price)."""

    __slots__ = ("lots", "qty")

    def __init__(self) -> None:
        self.qty = ZERO
        self.lots: deque[list[Decimal]] = deque()

    @property
    def avg_price(self) -> Decimal:
        """Average price of the open lots (for display; realised P&L never divides)."""
        if not self.qty:
            return ZERO
        return sum((q * p for q, p in self.lots), ZERO) / self.qty


class Ledger:
    """Pure bookkeeping, separate from the actor so it can be tested and replayed on its own."""

    def __init__(self, cash: Decimal) -> None:
        self.cash = cash
        self.positions: dict[str, Position] = {}
        self.realized_pnl = ZERO
        self.fees = ZERO
        self.fills = 0
        self.execution_ids: set[str] = set()

    def set_baseline(self, cash: Decimal, positions: dict[str, Decimal]) -> None:
        """Start from an account as the venue reported it: cash, and positions of unknown cost.

        A baseline position's cost is unknown to us, so its lot is priced at zero and
        realised P&L on closing it is not meaningful; cash and quantities are exact.
        """
        self.cash = cash
        for symbol, qty in positions.items():
            if qty:
                position = self.positions[symbol] = Position()
                position.qty = qty
                position.lots.append([qty, ZERO])

    def apply(self, fill: Fill) -> bool:
        """Book a fill; False (and no change) if its execution id was booked before."""
        if fill.execution_id in self.execution_ids:
            return False
        self.execution_ids.add(fill.execution_id)
        signed = fill.qty * fill.side.sign
        price = fill.price
        position = self.positions.get(fill.symbol)
        if position is None:
            position = self.positions[fill.symbol] = Position()
        self.cash -= signed * price + fill.fee
        self.fees += fill.fee
        self.realized_pnl -= fill.fee
        self.fills += 1
        lots = position.lots
        remaining = signed
        # Close opposite lots first, oldest first: exact, no division anywhere.
        while remaining and lots and (lots[0][0] > 0) != (remaining > 0):
            lot = lots[0]
            closed = min(abs(remaining), abs(lot[0]))
            direction = 1 if lot[0] > 0 else -1
            self.realized_pnl += (price - lot[1]) * closed * direction
            lot[0] -= closed * direction
            remaining += closed * direction
            if not lot[0]:
                lots.popleft()
        if remaining:
            lots.append([remaining, price])
        position.qty += signed
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
    """Hosts the :class:`Ledger`, built from the order manager's fills when it starts.

    The order manager must start first (it rebuilds its book from the journal): the
    ledger asks it for the account baseline and every fill so far, so a restarted actor
    — or a restarted process — begins from the same book. Fills recovery books later
    arrive on ``order.fill`` like any other.
    """

    def __init__(self, starting_cash: Decimal, fills_address: str) -> None:
        self.ledger = Ledger(starting_cash)
        self.fills_address = fills_address

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ORDER_FILL)
        history: FillHistory = await self.ctx.request(self.fills_address, FillHistoryQuery())
        if history.baseline_cash is not None:
            self.ledger.set_baseline(history.baseline_cash, history.baseline_positions)
        for fill in history.fills:
            self.ledger.apply(fill)
        self.ctx.log.info("ledger_rebuilt", source=self.fills_address, fills=self.ledger.fills)

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is Fill:
            self.ledger.apply(message)
        elif kind is AccountBaseline:
            if self.ledger.fills:
                raise RuntimeError("an account baseline after fills: the order manager's book is inconsistent")
            self.ledger.set_baseline(message.cash, message.positions)
        elif kind is PortfolioQuery:
            return self.ledger.snapshot()
        elif kind is StatsQuery:
            return ActorStats(counters={"fills": self.ledger.fills})
        else:
            raise TypeError(f"settlement actor cannot handle {kind.__name__}")
        return None
