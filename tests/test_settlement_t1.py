"""T+1 settlement on the NYSE calendar, checked against exchange_calendars' own session list,
and the settlement actor publishing the account's state."""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import random
import warnings
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.ledger import SettlementRule
from actors.settlement import Ledger, SettlementActor
from engine import topics
from engine.actor import Actor
from engine.bus import Bus
from engine.calendar import ALWAYS_OPEN_CALENDAR, CalendarRangeError, MarketCalendar, SessionCalendar
from engine.clock import SimClock
from engine.messages import (
    AccountBaseline,
    AccountState,
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


def ns(text: str, tz: dt.tzinfo = NY) -> int:
    moment = dt.datetime.fromisoformat(text).replace(tzinfo=tz)
    return (moment - EPOCH) // dt.timedelta(microseconds=1) * 1000


@pytest.fixture(scope="module")
def xnys() -> MarketCalendar:
    return MarketCalendar.build("XNYS")


@pytest.fixture(scope="module")
def sessions() -> list[dt.date]:
    """The oracle: exchange_calendars' own XNYS session list, not our precomputed one."""
    import exchange_calendars as xcals  # type: ignore[import-untyped]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        calendar = xcals.get_calendar("XNYS", start="2020-01-01")
        return [ts.date() for ts in calendar.sessions]


def equities_rule(xnys: MarketCalendar) -> SettlementRule:
    def calendar_for(symbol: str) -> SessionCalendar:
        return ALWAYS_OPEN_CALENDAR if symbol.endswith("USDT") else xnys

    return SettlementRule(calendar_for, xnys)


def fill(i: int, symbol: str, side: Side, qty: str, price: str, ts: int, fee: str = "0") -> Fill:
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
        fee=D(fee),
        ts_event=ts,
        ts_recv=ts,
    )


@pytest.mark.parametrize(
    ("traded", "settles"),
    [
        ("2026-11-20 10:00", "2026-11-23"),  # Friday → Monday
        ("2026-11-20 19:30", "2026-11-23"),  # Friday's late session (Saturday in UTC) is still Friday's trade
        ("2026-11-23 09:31", "2026-11-24"),  # an ordinary Monday
        ("2026-11-25 15:00", "2026-11-27"),  # the day before Thanksgiving → the (half-day) Friday
        ("2026-11-27 12:00", "2026-11-30"),  # Thanksgiving Friday → Monday
        ("2026-01-16 12:00", "2026-01-20"),  # before Martin Luther King Jr. Day (Monday 19 Jan)
        ("2026-02-13 12:00", "2026-02-17"),  # before Presidents' Day (Monday 16 Feb)
        ("2026-05-22 12:00", "2026-05-26"),  # before Memorial Day (Monday 25 May)
        ("2026-04-02 12:00", "2026-04-06"),  # Thursday before Good Friday
        ("2026-12-24 12:00", "2026-12-28"),  # Christmas Eve (Christmas on a Friday)
        ("2026-12-31 12:00", "2027-01-04"),  # New Year's Eve → the first session of 2027
    ],
)
def test_nyse_trades_settle_the_next_session(xnys: MarketCalendar, traded: str, settles: str) -> None:
    rule = equities_rule(xnys)
    assert rule("IBM", ns(traded)) == dt.date.fromisoformat(settles)
    assert rule.trade_date("IBM", ns(traded)) == dt.date.fromisoformat(traded[:10])


def test_24_7_symbols_settle_the_same_utc_day(xnys: MarketCalendar) -> None:
    rule = equities_rule(xnys)
    # 21:00 New York on Friday is Saturday 02:00 UTC: the crypto trade date is Saturday, T+0.
    assert rule("BTCUSDT", ns("2026-11-20 21:00")) == dt.date(2026, 11, 21)
    assert rule.trade_date("BTCUSDT", ns("2026-11-20 21:00")) == dt.date(2026, 11, 21)


@settings(max_examples=400, deadline=None)
@given(st.integers(min_value=ns("2021-01-01 00:00"), max_value=ns("2027-06-30 23:59")))
def test_settlement_is_the_first_library_session_after_the_new_york_date(
    xnys: MarketCalendar, sessions: list[dt.date], ts: int
) -> None:
    trade_date = (EPOCH + dt.timedelta(microseconds=ts // 1000)).astimezone(NY).date()
    expected = sessions[bisect.bisect_right(sessions, trade_date)]
    assert equities_rule(xnys)("IBM", ts) == expected
    assert xnys.next_session_after(trade_date) == expected
    # The business-day window: the library's last five sessions up to the trade date.
    upto = bisect.bisect_right(sessions, trade_date)
    assert xnys.sessions_until(trade_date, 5) == sessions[upto - 5 : upto]


def test_dates_beyond_the_loaded_range_are_not_guessed(xnys: MarketCalendar) -> None:
    rule = equities_rule(xnys)
    with pytest.raises(CalendarRangeError):
        rule("IBM", ns("2099-06-01 10:00"))
    with pytest.raises(CalendarRangeError):
        xnys.next_session_after(xnys.last_day)  # the next session is beyond what was loaded
    with pytest.raises(CalendarRangeError):
        xnys.sessions_until(dt.date(1999, 1, 4), 5)
    # A fill that cannot be dated leaves the ledger as it was.
    ledger = Ledger(D(100), rule, "cash")
    before = ledger.encode()
    with pytest.raises(CalendarRangeError):
        ledger.apply(fill(1, "IBM", Side.BUY, "1", "10", ns("2099-06-01 10:00")))
    assert ledger.encode() == before and ledger.fills == 0


trading_days = st.lists(
    st.tuples(
        st.sampled_from(["IBM", "AAPL", "BTCUSDT"]),
        st.sampled_from(list(Side)),
        st.integers(1, 50),
        st.integers(1, 500),
        st.integers(0, 40),  # calendar days after Monday 16 Nov 2026: Thanksgiving and weekends within
        st.integers(0, 23 * 60),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(trading_days, st.integers(0, 45), st.sampled_from(["cash", "margin"]))
def test_settled_cash_never_counts_what_has_not_settled(
    xnys: MarketCalendar,
    sessions: list[dt.date],
    rows: list[tuple[str, Side, int, int, int, int]],
    as_of_days: int,
    account_type: str,
) -> None:
    start = dt.datetime(2026, 11, 16, tzinfo=NY)
    stamps = sorted(
        ns((start + dt.timedelta(days=d, minutes=m)).replace(tzinfo=None).isoformat(sep=" ")) for *_, d, m in rows
    )
    made = [
        fill(i, s, side, str(q), str(p), ts, "0.01")
        for i, ((s, side, q, p, _, _), ts) in enumerate(zip(rows, stamps, strict=True))
    ]
    ledger = Ledger(D(10_000), equities_rule(xnys), account_type)
    for f in made:
        ledger.apply(f)
    as_of = dt.date(2026, 11, 16) + dt.timedelta(days=as_of_days)

    def settles(f: Fill) -> dt.date:
        local = (EPOCH + dt.timedelta(microseconds=f.ts_event // 1000)).astimezone(NY).date()
        if f.symbol.endswith("USDT"):
            return (EPOCH + dt.timedelta(microseconds=f.ts_event // 1000)).date()
        return sessions[bisect.bisect_right(sessions, local)]

    def effect(f: Fill) -> Decimal:
        return -(f.qty * f.side.sign * f.price + f.fee)

    settled = sum((effect(f) for f in made if settles(f) <= as_of), D(0))
    assert ledger.settled_cash(as_of) == D(10_000) + settled
    assert ledger.cash == D(10_000) + sum((effect(f) for f in made), D(0))
    # Only sales settle money in: settled cash never exceeds the baseline plus the proceeds settled by then.
    proceeds = sum((effect(f) for f in made if settles(f) <= as_of and effect(f) > 0), D(0))
    assert ledger.settled_cash(as_of) <= D(10_000) + proceeds


# ---------------------------------------------------------------- the actor


class FakeOrderManager(Actor):
    def __init__(self, history: FillHistory) -> None:
        self.history = history

    async def handle(self, message: Any) -> Any:
        assert isinstance(message, FillHistoryQuery)
        return self.history


class StateWatcher(Actor):
    def __init__(self) -> None:
        self.states: list[AccountState] = []

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ACCOUNT_STATE)

    async def handle(self, message: Any) -> Any:
        self.states.append(message)
        return None


async def run_actor(
    settlement: SettlementActor, history: FillHistory, clock: SimClock
) -> tuple[Bus, StateWatcher, asyncio.Task[None]]:
    bus, watcher = Bus(), StateWatcher()
    spec = SupervisorSpec(
        "root",
        [
            ActorSpec("om", lambda: FakeOrderManager(history)),
            ActorSpec("watcher", lambda: watcher),
            ActorSpec("settlement", lambda: settlement),
        ],
    )
    root = Supervisor(spec, bus, clock, random.Random(1))
    task = asyncio.create_task(root.run())
    await asyncio.wait_for(root.started(), 5)
    return bus, watcher, task


async def test_the_actor_publishes_the_account_state_after_each_booked_fill(xnys: MarketCalendar) -> None:
    wednesday = ns("2026-11-25 10:00")
    history = FillHistory(fills=[fill(1, "IBM", Side.BUY, "10", "100", ns("2026-11-24 10:00"))])
    clock = SimClock(wednesday)
    actor = SettlementActor(D(1000), "om", equities_rule(xnys), "cash")
    bus, watcher, task = await run_actor(actor, history, clock)
    try:
        assert watcher.states == []  # the rebuild publishes nothing by itself
        await bus.publish(topics.ORDER_FILL, fill(2, "IBM", Side.SELL, "10", "101", wednesday))
        await bus.publish(topics.ORDER_FILL, fill(3, "MSFT", Side.BUY, "5", "200", wednesday + 1))
        await bus.publish(topics.ORDER_FILL, fill(3, "MSFT", Side.BUY, "5", "200", wednesday + 1))  # a duplicate
        await bus.idle()
        assert len(watcher.states) == 2
        first, second = watcher.states
        assert first.trade_date == second.trade_date == "2026-11-25" and second.ts_init == wednesday
        assert first.account_type == "cash"
        # Tuesday's purchase settled on Wednesday; Wednesday's sale settles on Friday (Thanksgiving skipped).
        assert first.settled_cash == D(0) and first.cash == D(1010)
        # MSFT was bought with the unsettled proceeds: restricted until they settle.
        assert second.gfv_restricted == {"MSFT": D(5)} and second.opened_today == {"MSFT": D(5)}
        assert second.positions == {"MSFT": D(5)} and second.avg_prices == {"MSFT": D(200)}
        assert second.realized_pnl == D(10) and second.fills == 3 and second.day_trades == 0
        snapshot: PortfolioSnapshot = await bus.request("settlement", PortfolioQuery())
        assert snapshot.cash == D(10) and snapshot.fills == 3
        stats = await bus.request("settlement", StatsQuery())
        assert stats.counters["fills"] == 3
        assert stats.counters["account_states"] == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_day_trades_are_counted_over_five_nyse_sessions(xnys: MarketCalendar) -> None:
    # Day trades on Mon 23 Nov and Wed 25 Nov; on Tue 1 Dec the window is 24, 25, 27, 30 Nov, 1 Dec.
    trades = []
    for i, day in enumerate(("2026-11-23", "2026-11-25")):
        trades.append(fill(2 * i, "IBM", Side.BUY, "1", "10", ns(f"{day} 10:00")))
        trades.append(fill(2 * i + 1, "IBM", Side.SELL, "1", "10", ns(f"{day} 11:00")))
    clock = SimClock(ns("2026-11-30 10:00"))
    bus, watcher, task = await run_actor(
        SettlementActor(D(1000), "om", equities_rule(xnys)), FillHistory(fills=trades), clock
    )
    try:
        await bus.publish(topics.ORDER_FILL, fill(10, "IBM", Side.BUY, "1", "10", clock.time_ns()))
        await bus.idle()
        clock.advance_to(ns("2026-12-01 10:00"))
        await bus.publish(topics.ORDER_FILL, fill(11, "IBM", Side.BUY, "1", "10", clock.time_ns()))
        await bus.idle()
        monday, tuesday = watcher.states
        assert monday.account_type == "margin"
        assert (monday.trade_date, monday.day_trades) == ("2026-11-30", 2)  # 23, 24, 25, 27, 30 Nov
        assert (tuesday.trade_date, tuesday.day_trades) == ("2026-12-01", 1)  # the 23rd has left the window
        assert tuesday.opened_today == {"IBM": D(1)}  # Monday's purchase is no longer today's
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_old_constructor_still_works_and_a_baseline_is_published() -> None:
    clock = SimClock(ns("2026-11-21 12:00", dt.UTC))
    actor = SettlementActor(D(1000), "om")  # as kestrel.node builds it: T+0 on UTC days, margin
    bus, watcher, task = await run_actor(actor, FillHistory(fills=[]), clock)
    try:
        await bus.publish(
            topics.ORDER_FILL, AccountBaseline(cash=D(700), positions={"BTCUSDT": D(2)}, source="venue", ts_init=0)
        )
        await bus.publish(topics.ORDER_FILL, fill(1, "BTCUSDT", Side.SELL, "1", "100", clock.time_ns()))
        await bus.idle()
        baseline, after = watcher.states
        assert baseline.cash == baseline.settled_cash == D(700) and baseline.positions == {"BTCUSDT": D(2)}
        assert after.cash == after.settled_cash == D(800)  # T+0
        assert after.trade_date == "2026-11-21" and after.day_trades == 0 and after.gfv_restricted == {}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
