"""The settlement actor: hosts the :class:`~actors.ledger.Ledger` and tells risk the account's state.

The bookkeeping itself (FIFO lots, realised P&L, T+1 settlement, good-faith restrictions,
day trades) lives in :mod:`actors.ledger`; this actor feeds it fills, answers
``PortfolioQuery`` and, after every fill it books and after an account baseline,
publishes an :class:`~engine.messages.AccountState` on ``account.state`` for the trading
day the engine clock is in.

Settlement dates come from the same symbol → calendar mapping risk gates orders by
(:class:`~actors.calendars.SymbolCalendars`): T+1 session for exchange-listed symbols,
same day for 24/7 ones; the account's trading day is counted on ``account_calendar``.

Fast restart: with a journal, the ledger is snapshotted every ``snapshot_every`` fills
and when the actor stops (snapshot kind ``ledger``). A snapshot is positioned by the
number of fills it holds (its payload), not by a journal sequence number: the ledger
learns fills from the order manager's messages, which carry none. On start the newest
snapshot is decoded and only the fills after it are asked for; the order manager names
the last fill it skipped, and a snapshot that does not hold it (a journal from another
book) is ignored for a full rebuild.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec

from actors.calendars import SymbolCalendars
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
from engine.calendar import CalendarRangeError
from engine.journal import Journal, JournalError
from engine.messages import (
    AccountBaseline,
    ActorStats,
    Fill,
    FillHistory,
    FillHistoryQuery,
    PortfolioQuery,
    StatsQuery,
)

__all__ = ["LEDGER_SNAPSHOT_KIND", "WINDOW_BUSINESS_DAYS", "Ledger", "Position", "SettlementActor", "SettlementRule"]

WINDOW_BUSINESS_DAYS = 5
"""The day-trade window: this many business days, the current trading day included."""
LEDGER_SNAPSHOT_KIND = "ledger"


class SettlementActor(Actor):
    """Hosts the :class:`Ledger`, built from the order manager's fills when it starts.

    The order manager must start first (it rebuilds its book from the journal): the
    ledger asks it for the account baseline and every fill so far (after its newest
    snapshot, with a journal), so a restarted actor — or a restarted process — begins
    from the same book. Fills recovery books later arrive on ``order.fill`` like any other.

    Dating: ``calendars`` (loaded in :meth:`on_start`) build a :class:`SettlementRule`
    with ``account_calendar`` as the account's calendar; a fill beyond a calendar's loaded
    range is settled on its local trade date with an error logged, never refused (the
    fill happened). Without ``calendars``, ``settle_date`` dates fills (default: T+0 on
    UTC days, i.e. no settlement lag).
    """

    def __init__(
        self,
        starting_cash: Decimal,
        fills_address: str,
        settle_date: SettleDate | None = None,
        account_type: AccountType | str = AccountType.MARGIN,
        *,
        calendars: SymbolCalendars | None = None,
        account_calendar: str | None = None,
        journal: Journal | None = None,
        snapshot_every: int = 10_000,
        window_business_days: int = WINDOW_BUSINESS_DAYS,
    ) -> None:
        if snapshot_every < 1:
            raise ValueError(f"snapshot_every must be at least 1, not {snapshot_every}")
        self.starting_cash = starting_cash
        self.account_type = AccountType(account_type)
        self.settle_date: SettleDate = settle_date if settle_date is not None else SAME_DAY_SETTLEMENT
        self.ledger = Ledger(starting_cash, self.settle_date, self.account_type)
        self.fills_address = fills_address
        self.calendars = calendars
        self.account_calendar = account_calendar
        self.journal = journal
        self.snapshot_every = snapshot_every
        self.window_business_days = window_business_days
        self.states_published = 0
        self.out_of_range = 0
        self.snapshots_written = 0
        self._since_snapshot = 0

    async def on_start(self) -> None:
        if self.calendars is not None:
            account = self.account_calendar or self.calendars.default
            await self.calendars.load(account)
            self.settle_date = SettlementRule(
                self.calendars.calendar_for, self.calendars.get(account), on_out_of_range=self._out_of_range
            )
            self.ledger = Ledger(self.starting_cash, self.settle_date, self.account_type)
        self.ctx.subscribe(topics.ORDER_FILL)
        restored = await self._restore()
        history: FillHistory = await self.ctx.request(self.fills_address, FillHistoryQuery(after=restored))
        if restored and history.skipped_last_execution_id not in self.ledger.execution_ids:
            self.ctx.log.warning(
                "ledger_snapshot_mismatch", snapshot_fills=restored, book_fills=history.total, action="full rebuild"
            )
            self.ledger = Ledger(self.starting_cash, self.settle_date, self.account_type)
            restored = 0
            history = await self.ctx.request(self.fills_address, FillHistoryQuery())
        if not restored and history.baseline_cash is not None:
            self.ledger.set_baseline(history.baseline_cash, history.baseline_positions)
        for fill in history.fills:
            if self.ledger.apply(fill):
                self._since_snapshot += 1
        if self._since_snapshot >= self.snapshot_every:
            await self._snapshot()  # the next restart need not replay them again
        self.ctx.log.info(
            "ledger_rebuilt",
            source=self.fills_address,
            fills=self.ledger.fills,
            from_snapshot=restored,
            replayed=len(history.fills),
        )

    async def on_stop(self) -> None:
        if self._since_snapshot:
            await self._snapshot()

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is Fill:
            if self.ledger.apply(message):
                await self._publish_state()
                self._since_snapshot += 1
                if self._since_snapshot >= self.snapshot_every:
                    await self._snapshot()
        elif kind is AccountBaseline:
            if self.ledger.fills:
                raise RuntimeError("an account baseline after fills: the order manager's book is inconsistent")
            self.ledger.set_baseline(message.cash, message.positions)
            await self._publish_state()
        elif kind is PortfolioQuery:
            return self.ledger.snapshot()
        elif kind is StatsQuery:
            return ActorStats(
                counters={
                    "fills": self.ledger.fills,
                    "account_states": self.states_published,
                    "dated_out_of_calendar_range": self.out_of_range,
                    "snapshots": self.snapshots_written,
                    "good_faith_violations": len(self.ledger.violations),
                }
            )
        else:
            raise TypeError(f"settlement actor cannot handle {kind.__name__}")
        return None

    async def _publish_state(self) -> None:
        now = self.ctx.clock.time_ns()
        day = account_trade_date(self.settle_date, now)
        window = business_days(self.settle_date, day, self.window_business_days)
        await self.ctx.publish(topics.ACCOUNT_STATE, self.ledger.state(now, day, window))
        self.states_published += 1

    def _out_of_range(self, what: str, ts_ns: int, error: CalendarRangeError) -> None:
        self.out_of_range += 1
        self.ctx.log.error(
            "settlement_date_out_of_calendar_range",
            what=what,
            ts_ns=ts_ns,
            error=str(error),
            fallback="local trade date, settled the same day",
        )

    # ------------------------------------------------------------ snapshots

    async def _restore(self) -> int:
        """Decode the newest ledger snapshot, if any; the number of fills it holds (0: none)."""
        if self.journal is None:
            return 0
        snapshot = await self.journal.latest_snapshot(LEDGER_SNAPSHOT_KIND)
        if snapshot is None:
            return 0
        try:
            self.ledger = Ledger.decode(snapshot.payload, self.settle_date)
        except (ValueError, msgspec.DecodeError) as exc:
            self.ctx.log.warning("ledger_snapshot_unreadable", error=str(exc), action="full rebuild")
            self.ledger = Ledger(self.starting_cash, self.settle_date, self.account_type)
            return 0
        return self.ledger.fills

    async def _snapshot(self) -> None:
        """Store the ledger (an optimisation: a failure is logged, the ledger stays as it is)."""
        self._since_snapshot = 0
        if self.journal is None or self.journal.closed or self.journal.failed:
            return
        try:
            await self.journal.write_snapshot(LEDGER_SNAPSHOT_KIND, self.ledger.encode(), 0)
        except JournalError as exc:
            self.ctx.log.error("ledger_snapshot_failed", fills=self.ledger.fills, error=str(exc))
            return
        self.snapshots_written += 1
