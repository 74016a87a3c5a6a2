"""Market sessions from exchange_calendars: 2026 facts for the NYSE, and the always-open calendar."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from zoneinfo import ZoneInfo

import pytest

from engine.calendar import (
    ALWAYS_OPEN,
    ALWAYS_OPEN_CALENDAR,
    CalendarRangeError,
    MarketCalendar,
    MarketSession,
    UnknownCalendar,
    load_calendar,
)

NY = ZoneInfo("America/New_York")
PRE, REG, POST, CLOSED = (
    MarketSession.PRE_MARKET,
    MarketSession.REGULAR,
    MarketSession.POST_MARKET,
    MarketSession.CLOSED,
)


def ns(text: str, tz: dt.tzinfo = NY) -> int:
    """'2026-11-27 12:59' in New York (or another zone) as ns since the epoch."""
    moment = dt.datetime.fromisoformat(text).replace(tzinfo=tz)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


@pytest.fixture(scope="module")
def xnys() -> MarketCalendar:
    calendar = asyncio.run(load_calendar("XNYS"))
    assert isinstance(calendar, MarketCalendar)
    return calendar


@pytest.mark.parametrize(
    ("local", "session"),
    [
        ("2026-11-25 03:59:59", CLOSED),
        ("2026-11-25 04:00", PRE),
        ("2026-11-25 09:29:59.999999", PRE),
        ("2026-11-25 09:30", REG),
        ("2026-11-25 15:59:59", REG),
        ("2026-11-25 16:00", POST),
        ("2026-11-25 19:59:59", POST),
        ("2026-11-25 20:00", CLOSED),
        # Thanksgiving: closed all day, extended hours included.
        ("2026-11-26 05:00", CLOSED),
        ("2026-11-26 12:00", CLOSED),
        ("2026-11-26 17:00", CLOSED),
        # The day after: the regular session ends at 13:00, the late session four hours later.
        ("2026-11-27 04:00", PRE),
        ("2026-11-27 12:59:59", REG),
        ("2026-11-27 13:00", POST),
        ("2026-11-27 16:59:59", POST),
        ("2026-11-27 17:00", CLOSED),
        # A weekend.
        ("2026-11-28 12:00", CLOSED),
        ("2026-11-29 12:00", CLOSED),
        ("2026-11-30 09:30", REG),
        # Around the DST switches (Sunday 2026-03-08 and Sunday 2026-11-01), local times hold.
        ("2026-03-06 09:30", REG),
        ("2026-03-09 09:29", PRE),
        ("2026-03-09 09:30", REG),
        ("2026-10-30 15:59", REG),
        ("2026-11-02 09:30", REG),
        ("2026-11-02 16:00", POST),
    ],
)
def test_nyse_sessions_2026(xnys: MarketCalendar, local: str, session: MarketSession) -> None:
    assert xnys.session_at(ns(local)) is session


def test_dst_moves_the_utc_open(xnys: MarketCalendar) -> None:
    utc = dt.UTC
    # Winter: 09:30 ET = 14:30 UTC; summer: 13:30 UTC.
    assert xnys.session_at(ns("2026-03-06 14:30", utc)) is REG
    assert xnys.session_at(ns("2026-03-06 13:30", utc)) is PRE
    assert xnys.session_at(ns("2026-03-09 13:30", utc)) is REG
    assert xnys.session_at(ns("2026-10-30 13:30", utc)) is REG
    assert xnys.session_at(ns("2026-11-02 13:30", utc)) is PRE
    assert xnys.session_at(ns("2026-11-02 14:30", utc)) is REG
    summer, winter = xnys.schedule(dt.date(2026, 3, 9)), xnys.schedule(dt.date(2026, 3, 6))
    assert summer is not None and winter is not None
    assert summer.open_ns == ns("2026-03-09 13:30", utc) and winter.open_ns == ns("2026-03-06 14:30", utc)


def test_day_facts_holiday_early_close_and_intervals(xnys: MarketCalendar) -> None:
    assert xnys.schedule(dt.date(2026, 11, 26)) is None  # Thanksgiving
    assert xnys.schedule(dt.date(2026, 11, 28)) is None  # Saturday
    friday = xnys.schedule(dt.date(2026, 11, 27))
    assert friday is not None and friday.early_close
    assert (friday.close_ns, friday.post_close_ns) == (ns("2026-11-27 13:00"), ns("2026-11-27 17:00"))
    wednesday = xnys.schedule(dt.date(2026, 11, 25))
    assert wednesday is not None and not wednesday.early_close
    assert xnys.schedule(dt.date(2026, 12, 24)) is not None and xnys.schedule(dt.date(2026, 12, 25)) is None
    # The closed interval after Wednesday's late session runs to Friday's pre-market.
    interval = xnys.interval_at(ns("2026-11-26 12:00"))
    assert interval == (CLOSED, ns("2026-11-25 20:00"), ns("2026-11-27 04:00"))
    # The demo's recording: IBM on 2013-10-10, a normal Thursday.
    assert xnys.session_at(ns("2013-10-10 09:00")) is PRE and xnys.session_at(ns("2013-10-10 10:00")) is REG


def test_lookups_are_cheap_and_bounded(xnys: MarketCalendar) -> None:
    stamps = [ns("2026-11-27 12:00") + i * 7_919_000_000 for i in range(20_000)]
    started = time.perf_counter()
    for stamp in stamps:
        xnys.session_at(stamp)
    per_lookup_us = (time.perf_counter() - started) / len(stamps) * 1e6
    assert per_lookup_us < 20, per_lookup_us  # about 1 µs: one bisect, no pandas
    with pytest.raises(CalendarRangeError):
        xnys.session_at(ns("1999-06-01 10:00"))
    with pytest.raises(CalendarRangeError):
        xnys.session_at(ns("2099-06-01 10:00"))


async def test_load_is_cached_and_off_the_loop() -> None:
    first = await load_calendar("XNYS")
    assert await load_calendar("XNYS") is first
    assert await load_calendar(ALWAYS_OPEN) is ALWAYS_OPEN_CALENDAR
    with pytest.raises(UnknownCalendar, match="NOPE"):
        await load_calendar("NOPE")


def test_always_open() -> None:
    for stamp in (0, ns("2026-11-26 12:00"), ns("2026-11-28 03:00")):
        assert ALWAYS_OPEN_CALENDAR.session_at(stamp) is REG
    assert ALWAYS_OPEN_CALENDAR.name == "24/7"
