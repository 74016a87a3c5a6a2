"""The settlement actor as the node wires it: calendars loaded by name (T+1 on the NYSE),
ledger snapshots in the real journal for a fast restart, and fills beyond a calendar's
loaded range booked (settled on their trade date, loudly) instead of crashing the actor."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from structlog.testing import capture_logs

from actors.calendars import SymbolCalendars
from actors.settlement import LEDGER_SNAPSHOT_KIND, SettlementActor
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import SimClock
from engine.journal import Journal
from engine.messages import (
    Fill,
    FillHistory,
    FillHistoryQuery,
    PortfolioQuery,
    PortfolioSnapshot,
    Side,
    StatsQuery,
)
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

D = Decimal
NY = ZoneInfo("America/New_York")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ns(text: str) -> int:
    moment = dt.datetime.fromisoformat(text).replace(tzinfo=NY)
    return (moment - EPOCH) // dt.timedelta(microseconds=1) * 1000


def fill(i: int, symbol: str, side: Side, qty: str, price: str, ts: int) -> Fill:
    return Fill(
        client_order_id=f"c{i}",
        venue_order_id=f"v{i}",
        execution_id=f"e{i}",
        intent_id=f"i{i}",
        strategy="s",
        symbol=symbol,
        side=side,
        qty=D(qty),
        price=D(price),
        fee=D("0.01"),
        ts_event=ts,
        ts_recv=ts,
    )


class BookOfFills(Actor):
    """Answers ``FillHistoryQuery`` as the order manager does: its fills after ``after``."""

    def __init__(self, fills: list[Fill]) -> None:
        self.fills = fills
        self.asked: list[int] = []

    async def handle(self, message: Any) -> Any:
        assert isinstance(message, FillHistoryQuery)
        self.asked.append(message.after)
        after = min(message.after, len(self.fills))
        return FillHistory(
            fills=self.fills[after:],
            skipped_last_execution_id=self.fills[after - 1].execution_id if after else None,
            total=len(self.fills),
        )


async def start(
    actor: SettlementActor, book: BookOfFills, clock: SimClock
) -> tuple[Bus, Supervisor, asyncio.Task[None]]:
    bus = Bus()
    spec = SupervisorSpec("root", [ActorSpec("om", lambda: book), ActorSpec("settlement", lambda: actor)])
    root = Supervisor(spec, bus, clock, random.Random(1))
    task = asyncio.create_task(root.run())
    await asyncio.wait_for(root.started(), 10)
    return bus, root, task


async def stop(root: Supervisor, task: asyncio.Task[None]) -> None:
    """Cancel the tree: the supervisor stops its children (``on_stop``) in reverse order."""
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    opened = await Journal.open(tmp_path / "journal.db", SimClock(ns("2026-11-25 16:00")))
    try:
        yield opened
    finally:
        await opened.close()


def trades(count: int) -> list[Fill]:
    """Round trips in IBM over several November days (Thanksgiving among them)."""
    made = []
    start = ns("2026-11-23 10:00")
    for i in range(count):
        side = Side.BUY if i % 2 == 0 else Side.SELL
        made.append(fill(i, "IBM", side, "10", str(100 + i), start + i * 7 * 3600 * 10**9))
    return made


def actor(journal: Journal | None, snapshot_every: int = 3) -> SettlementActor:
    return SettlementActor(
        D(100_000),
        "om",
        calendars=SymbolCalendars({"IBM": "XNYS"}, "XNYS"),
        account_calendar="XNYS",
        journal=journal,
        snapshot_every=snapshot_every,
    )


async def test_a_restart_resumes_from_the_ledger_snapshot_and_asks_only_for_later_fills(journal: Journal) -> None:
    made = trades(8)
    clock = SimClock(ns("2026-11-27 12:00"))
    first = actor(journal)
    book = BookOfFills(made[:2])
    bus, root, task = await start(first, book, clock)
    for f in made[2:]:
        book.fills.append(f)
        await bus.publish("order.fill", f)
    await bus.idle()
    before: PortfolioSnapshot = await bus.request("settlement", PortfolioQuery())
    stats = await bus.request("settlement", StatsQuery())
    assert stats.counters["snapshots"] == 2  # after fills 3 and 6 of those it booked
    await stop(root, task)  # stopping writes the rest
    saved = await journal.latest_snapshot(LEDGER_SNAPSHOT_KIND)
    assert saved is not None

    again = BookOfFills(list(made))
    second = actor(journal)
    bus, root, task = await start(second, again, clock)
    try:
        assert again.asked == [8]  # nothing replayed: the snapshot held all eight
        after: PortfolioSnapshot = await bus.request("settlement", PortfolioQuery())
        assert after == before
        assert second.ledger.encode() == first.ledger.encode()
    finally:
        await stop(root, task)


async def test_a_snapshot_missing_the_books_fills_is_ignored_for_a_full_rebuild(journal: Journal) -> None:
    made = trades(5)
    clock = SimClock(ns("2026-11-27 12:00"))
    first = actor(journal, snapshot_every=1)
    _bus, root, task = await start(first, BookOfFills(made[:3]), clock)
    await stop(root, task)
    # Another book under the same journal path: its third fill is not the one the snapshot holds.
    other = [*made[:2], fill(99, "IBM", Side.BUY, "1", "50", made[2].ts_event), *made[3:]]
    book = BookOfFills(other)
    second = actor(journal)
    with capture_logs() as logs:
        _bus, root, task = await start(second, book, clock)
    try:
        assert book.asked == [3, 0]
        assert any(e["event"] == "ledger_snapshot_mismatch" for e in logs)
        assert second.ledger.execution_ids == {f.execution_id for f in other}
        assert second.ledger.positions["IBM"].qty == sum((f.qty * f.side.sign for f in other), D(0))
    finally:
        await stop(root, task)


async def test_friday_purchases_settle_on_monday_and_thanksgiving_is_skipped() -> None:
    wednesday, friday = ns("2026-11-25 10:00"), ns("2026-11-27 10:00")
    book = BookOfFills(
        [fill(1, "IBM", Side.SELL, "10", "100", wednesday), fill(2, "IBM", Side.SELL, "1", "100", friday)]
    )
    settlement = actor(None)
    _bus, root, task = await start(settlement, book, SimClock(friday))
    try:
        by_date = settlement.ledger.cash_by_settlement
        assert set(by_date) == {dt.date(2026, 11, 27), dt.date(2026, 11, 30)}  # T+1 skips Thursday's holiday
        assert settlement.ledger.settled_cash(dt.date(2026, 11, 27)) == D(100_000) + D("999.99")
    finally:
        await stop(root, task)


async def test_a_fill_beyond_the_loaded_calendar_is_booked_on_its_trade_date_with_an_error_logged() -> None:
    far = ns("2099-06-01 10:00")  # the NYSE calendar is loaded for a few years around now
    book = BookOfFills([fill(1, "IBM", Side.BUY, "10", "100", ns("2026-11-24 10:00"))])
    settlement = actor(None)
    with capture_logs() as logs:
        bus, root, task = await start(settlement, book, SimClock(far))
        try:
            await bus.publish("order.fill", fill(2, "IBM", Side.SELL, "10", "101", far))
            await bus.idle()
            assert root.stats["settlement"].crashes == 0
            assert settlement.ledger.fills == 2
            assert settlement.ledger.cash_by_settlement[dt.date(2099, 6, 1)] == D("1009.99")
            stats = await bus.request("settlement", StatsQuery())
            assert stats.counters["dated_out_of_calendar_range"] >= 1
        finally:
            await stop(root, task)
    errors = [e for e in logs if e["event"] == "settlement_date_out_of_calendar_range"]
    assert errors and errors[0]["log_level"] == "error" and "outside the loaded range" in errors[0]["error"]
    assert errors[0]["what"] == "IBM" and errors[0]["ts_ns"] == far
