"""The simulator's market calendar: ``/v2/clock`` and ``/v2/calendar``.

Model: the regular US equity session, 09:30–16:00 New York time, Monday to Friday,
minus the dates listed as holidays (configurable; none by default — the simulator ships
no hand-written holiday list, early closes are not modelled).

While the feed player replays a recording the venue reports the market as open (the
recording *is* the session) and closed once it ends, whatever the wall clock says; with
no player the calendar alone decides. Alpaca answers with New York offset timestamps
(``2024-01-02T09:30:00-05:00``), and so does this module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Final
from zoneinfo import ZoneInfo

from adapters.alpaca import wire

NEW_YORK: Final = ZoneInfo("America/New_York")
OPEN_TIME: Final = dt.time(9, 30)
CLOSE_TIME: Final = dt.time(16, 0)
MAX_DAYS: Final = 5000


def _ns(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(NEW_YORK).isoformat()


class MarketCalendar:
    """Weekday sessions with a configurable holiday set."""

    def __init__(self, holidays: Iterable[str] = ()) -> None:
        self.holidays = frozenset(dt.date.fromisoformat(day) for day in holidays)

    def is_trading_day(self, day: dt.date) -> bool:
        return day.weekday() < 5 and day not in self.holidays

    def session(self, day: dt.date) -> tuple[dt.datetime, dt.datetime]:
        return (
            dt.datetime.combine(day, OPEN_TIME, tzinfo=NEW_YORK),
            dt.datetime.combine(day, CLOSE_TIME, tzinfo=NEW_YORK),
        )

    def local_date(self, now_ns: int) -> dt.date:
        return dt.datetime.fromtimestamp(now_ns / 1e9, tz=NEW_YORK).date()

    def is_open_at(self, now_ns: int) -> bool:
        day = self.local_date(now_ns)
        if not self.is_trading_day(day):
            return False
        start, end = self.session(day)
        return _ns(start) <= now_ns < _ns(end)

    def next_session_after(self, now_ns: int) -> tuple[dt.datetime, dt.datetime]:
        """The first session whose close is after ``now_ns`` (the current one while it is open)."""
        day = self.local_date(now_ns)
        for _ in range(MAX_DAYS):
            if self.is_trading_day(day):
                start, end = self.session(day)
                if _ns(end) > now_ns:
                    return start, end
            day += dt.timedelta(days=1)
        raise ValueError("no trading day within the calendar's horizon")

    def clock(self, now_ns: int, is_open: bool | None = None) -> wire.MarketClock:
        """``/v2/clock``: ``is_open`` overrides the calendar (the feed player's session)."""
        current = dt.datetime.fromtimestamp(now_ns // 1_000_000_000, tz=NEW_YORK).replace(
            microsecond=(now_ns // 1000) % 1_000_000
        )
        open_now = self.is_open_at(now_ns) if is_open is None else is_open
        if open_now:
            today = self.local_date(now_ns)
            _, close_today = self.session(today)
            if self.is_trading_day(today) and now_ns < _ns(close_today):
                next_close = close_today
            else:  # a replayed session running outside the calendar's hours
                next_close = current + dt.timedelta(minutes=1)
            next_open = self.next_session_after(_ns(next_close))[0]
        else:
            start, end = self.next_session_after(now_ns)
            next_open = start if _ns(start) > now_ns else self.next_session_after(_ns(end))[0]
            next_close = self.session(next_open.date())[1]
        return wire.MarketClock(
            timestamp=_iso(current), is_open=open_now, next_open=_iso(next_open), next_close=_iso(next_close)
        )

    def days(self, start: dt.date, end: dt.date) -> list[wire.CalendarDay]:
        """``/v2/calendar``: the trading days from ``start`` to ``end``, both included."""
        if (end - start).days > MAX_DAYS:
            raise ValueError(f"calendar range is limited to {MAX_DAYS} days")
        out: list[wire.CalendarDay] = []
        day = start
        while day <= end:
            if self.is_trading_day(day):
                opens, closes = OPEN_TIME.strftime("%H:%M"), CLOSE_TIME.strftime("%H:%M")
                out.append(wire.CalendarDay(date=day.isoformat(), open=opens, close=closes))
            day += dt.timedelta(days=1)
        return out
