"""The settlement actor: hosts the :class:`~actors.ledger.Ledger` and tells risk the account's state.

The bookkeeping itself (FIFO lots, realised P&L, T+1 settlement, good-faith restrictions,
day trades) lives in :mod:`actors.ledger`; this actor feeds it fills, answers
``PortfolioQuery`` and, after every fill it books and after an account baseline,
publishes an :class:`~engine.messages.AccountState` on ``account.state`` for the trading
day the engine clock is in.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from actors.ledger import (
    SAME_DAY_SETTLEMENT,
    AccountType,
    Ledger,
    Position,
    SettleDate,
    SettlementRule,
    account_trade_date,
    business_days,
)
from engine import topics
from engine.actor import Actor
from engine.messages import (
    AccountBaseline,
    ActorStats,
    Fill,
    FillHistory,
    FillHistoryQuery,
    PortfolioQuery,
    StatsQuery,
)

__all__ = ["WINDOW_BUSINESS_DAYS", "Ledger", "Position", "SettlementActor", "SettlementRule"]

WINDOW_BUSINESS_DAYS = 5
"""The day-trade window: this many business days, the current trading day included."""


class SettlementActor(Actor):
    """Hosts the :class:`Ledger`, built from the order manager's fills when it starts.

    The order manager must start first (it rebuilds its book from the journal): the
    ledger asks it for the account baseline and every fill so far, so a restarted actor
    — or a restarted process — begins from the same book. Fills recovery books later
    arrive on ``order.fill`` like any other.

    ``settle_date`` dates each fill's cash settlement (default: T+0 on UTC days, i.e. no
    settlement lag). With a :class:`SettlementRule` the account's trading day and its
    business-day window come from the rule's account calendar; with any other callable
    they are the UTC day and the last five calendar days.
    """

    def __init__(
        self,
        starting_cash: Decimal,
        fills_address: str,
        settle_date: SettleDate | None = None,
        account_type: AccountType | str = AccountType.MARGIN,
        *,
        window_business_days: int = WINDOW_BUSINESS_DAYS,
    ) -> None:
        self.settle_date: SettleDate = settle_date if settle_date is not None else SAME_DAY_SETTLEMENT
        self.ledger = Ledger(starting_cash, self.settle_date, account_type)
        self.fills_address = fills_address
        self.window_business_days = window_business_days
        self.states_published = 0

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
            if self.ledger.apply(message):
                await self._publish_state()
        elif kind is AccountBaseline:
            if self.ledger.fills:
                raise RuntimeError("an account baseline after fills: the order manager's book is inconsistent")
            self.ledger.set_baseline(message.cash, message.positions)
            await self._publish_state()
        elif kind is PortfolioQuery:
            return self.ledger.snapshot()
        elif kind is StatsQuery:
            return ActorStats(counters={"fills": self.ledger.fills, "account_states": self.states_published})
        else:
            raise TypeError(f"settlement actor cannot handle {kind.__name__}")
        return None

    async def _publish_state(self) -> None:
        now = self.ctx.clock.time_ns()
        day = account_trade_date(self.settle_date, now)
        window = business_days(self.settle_date, day, self.window_business_days)
        await self.ctx.publish(topics.ACCOUNT_STATE, self.ledger.state(now, day, window))
        self.states_published += 1
