"""Market sessions from a maintained calendar library, cheap enough for the order path.

Why a library: holiday and early-close lists written by hand go stale (the seeds' bug).
``exchange_calendars`` is maintained against the exchanges' own announcements; it gives
each session day's regular open and close in UTC, early closes included (e.g. the day
after Thanksgiving closes at 13:00 ET), and leaves holidays out.

What this module adds on top:

- The extended-hours sessions the library does not model: ``PRE_MARKET`` from 04:00
  local time to the regular open, ``POST_MARKET`` from the regular close until 20:00
  local time, and on early-close days four hours after the close (13:00 → 17:00 ET, when
  the late sessions end on half days). ``CLOSED`` otherwise: nights, weekends, holidays.
  Local times are built with :mod:`zoneinfo`, so the DST switches (2026-03-08 and
  2026-11-01 for New York) move the UTC times, not the local ones.
- Speed: at load, every session day in the range is turned into a flat, sorted list of
  interval starts (integer ns) with the session each one begins. A lookup is one
  :func:`bisect.bisect_right` on that list — no pandas, no datetime objects, no
  allocation on the order path.
- Loading: importing ``exchange_calendars`` (pandas) and building a calendar takes about
  0.6 s, so :func:`load_calendar` does it in a worker thread (:func:`asyncio.to_thread`)
  and keeps one instance per name for the process; a restarted actor gets it at once.
- ``"24/7"`` (:data:`ALWAYS_OPEN`): an always-open calendar for crypto and synthetic
  symbols, built without the library.

A time outside the loaded range raises :class:`CalendarRangeError`: a risk check must not
guess whether a market is open in a year nobody loaded.

Day facts for settlement and day-trade windows: :meth:`MarketCalendar.trade_date` (the
calendar day in the exchange's own time zone), :meth:`MarketCalendar.next_session_after`
(T+1 settlement) and :meth:`MarketCalendar.sessions_until` (the last *n* business days).
They respect the loaded range the same way. The 24/7 calendar's trade date is the UTC date.
"""

from __future__ import annotations

import asyncio
import bisect
import datetime as dt
import enum
import warnings
from typing import Final, NamedTuple, Protocol
from zoneinfo import ZoneInfo

from engine.errors import KestrelError, UserError

ALWAYS_OPEN: Final = "24/7"
"""The name of the always-open calendar."""
DEFAULT_START: Final = dt.date(2000, 1, 1)
"""First day loaded by default: far enough back for every bundled recording."""
PRE_MARKET_OPEN: Final = dt.time(4, 0)
POST_MARKET_CLOSE: Final = dt.time(20, 0)
EARLY_CLOSE_POST_HOURS: Final = 4
"""On an early-close day the late session lasts this long after the close (13:00 → 17:00)."""

_NS_PER_US: Final = 1_000
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MAX_NS: Final = (1 << 63) - 1


class MarketSession(enum.StrEnum):
    PRE_MARKET = "pre_market"
    REGULAR = "regular"
    POST_MARKET = "post_market"
    CLOSED = "closed"


class CalendarError(KestrelError):
    """A calendar could not be loaded or cannot answer."""


class UnknownCalendar(CalendarError, UserError):
    """No calendar by that name (a config value to fix)."""


class CalendarRangeError(CalendarError):
    """A time outside the range the calendar was loaded for."""


class SessionInterval(NamedTuple):
    """The session in force at a time, and the interval ``[start_ns, end_ns)`` it lasts."""

    session: MarketSession
    start_ns: int
    end_ns: int


class SessionCalendar(Protocol):
    """What risk needs of a calendar: which session is in force at a time."""

    @property
    def name(self) -> str: ...

    def session_at(self, ts_ns: int) -> MarketSession: ...

    def interval_at(self, ts_ns: int) -> SessionInterval: ...


class AlwaysOpenCalendar:
    """The ``"24/7"`` calendar: always the regular session (crypto, synthetic symbols)."""

    _INTERVAL: Final = SessionInterval(MarketSession.REGULAR, 0, _MAX_NS)

    @property
    def name(self) -> str:
        return ALWAYS_OPEN

    def session_at(self, ts_ns: int) -> MarketSession:
        return MarketSession.REGULAR

    def interval_at(self, ts_ns: int) -> SessionInterval:
        return self._INTERVAL

    def trade_date(self, ts_ns: int) -> dt.date:
        """A 24/7 market has no exchange time zone: its trading day is the UTC date."""
        return utc_date(ts_ns)


ALWAYS_OPEN_CALENDAR: Final = AlwaysOpenCalendar()


def _ns(moment: dt.datetime) -> int:
    """Integer ns since the epoch of an aware datetime (no float seconds on the way)."""
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * _NS_PER_US


def local_date(ts_ns: int, zone: dt.tzinfo) -> dt.date:
    """The calendar date in ``zone`` at ``ts_ns`` (integer arithmetic to the microsecond)."""
    return (_EPOCH + dt.timedelta(microseconds=ts_ns // _NS_PER_US)).astimezone(zone).date()


def utc_date(ts_ns: int) -> dt.date:
    """The UTC calendar date at ``ts_ns``."""
    return local_date(ts_ns, dt.UTC)


class DaySchedule(NamedTuple):
    """One session day, all in UTC ns."""

    day: dt.date
    pre_open_ns: int
    open_ns: int
    close_ns: int
    post_close_ns: int
    early_close: bool


class MarketCalendar:
    """An exchange calendar with extended hours, precomputed for constant-time-ish lookups.

    Build it from day schedules (:meth:`from_days`, what tests and the loader use), or from
    ``exchange_calendars`` with :meth:`build` (blocking) / :meth:`load` (in a thread).
    """

    def __init__(self, name: str, days: list[DaySchedule], first_ns: int, end_ns: int, tz: str = "UTC") -> None:
        self._name = name
        self.days = {d.day: d for d in days}
        self.first_ns = first_ns
        self.end_ns = end_ns
        self.tz = ZoneInfo(tz)
        """The exchange's time zone: trade dates are its calendar days."""
        self._session_days = sorted(self.days)
        self._first_day = local_date(first_ns, self.tz)
        self._last_day = local_date(end_ns - 1, self.tz)
        starts: list[int] = [first_ns]
        kinds: list[MarketSession] = [MarketSession.CLOSED]
        for d in sorted(days):
            for start, kind in (
                (d.pre_open_ns, MarketSession.PRE_MARKET),
                (d.open_ns, MarketSession.REGULAR),
                (d.close_ns, MarketSession.POST_MARKET),
                (d.post_close_ns, MarketSession.CLOSED),
            ):
                if start < starts[-1]:
                    raise CalendarError(f"{name}: session times out of order on {d.day}")
                if start == starts[-1]:
                    kinds[-1] = kind  # an empty interval (e.g. no pre-market) is replaced
                else:
                    starts.append(start)
                    kinds.append(kind)
        self._starts = starts
        self._kinds = kinds

    @property
    def name(self) -> str:
        return self._name

    # ------------------------------------------------------------ lookups (the order path)

    def interval_at(self, ts_ns: int) -> SessionInterval:
        if not self.first_ns <= ts_ns < self.end_ns:
            raise CalendarRangeError(f"{self._name}: {ts_ns} ns is outside the loaded range")
        i = bisect.bisect_right(self._starts, ts_ns) - 1
        end = self._starts[i + 1] if i + 1 < len(self._starts) else self.end_ns
        return SessionInterval(self._kinds[i], self._starts[i], end)

    def session_at(self, ts_ns: int) -> MarketSession:
        return self.interval_at(ts_ns).session

    # ------------------------------------------------------------ day facts (tests, reports)

    def schedule(self, day: dt.date) -> DaySchedule | None:
        """The day's sessions, or None when the market does not open that day."""
        return self.days.get(day)

    # ------------------------------------------------------------ trade dates (settlement, day trades)

    @property
    def first_day(self) -> dt.date:
        """The first calendar day of the loaded range (exchange time zone)."""
        return self._first_day

    @property
    def last_day(self) -> dt.date:
        """The last calendar day of the loaded range (exchange time zone)."""
        return self._last_day

    def trade_date(self, ts_ns: int) -> dt.date:
        """The calendar day in the exchange's time zone at ``ts_ns`` (a Friday 19:00 New York
        trade is Friday's, although it is Saturday in UTC)."""
        if not self.first_ns <= ts_ns < self.end_ns:
            raise CalendarRangeError(f"{self._name}: {ts_ns} ns is outside the loaded range")
        return local_date(ts_ns, self.tz)

    def _check_day(self, day: dt.date) -> None:
        if not self._first_day <= day <= self._last_day:
            raise CalendarRangeError(
                f"{self._name}: {day} is outside the loaded range {self._first_day}..{self._last_day}"
            )

    def is_session(self, day: dt.date) -> bool:
        """Whether the market opens on ``day`` (a business day of the exchange)."""
        self._check_day(day)
        return day in self.days

    def next_session_after(self, day: dt.date) -> dt.date:
        """The first session day strictly after ``day``: T+1 settlement skips weekends and holidays.

        Raises :class:`CalendarRangeError` when ``day`` is outside the loaded range or the
        next session is beyond it (the answer is not known, so it is not guessed).
        """
        self._check_day(day)
        i = bisect.bisect_right(self._session_days, day)
        if i == len(self._session_days):
            raise CalendarRangeError(f"{self._name}: no session after {day} in the loaded range")
        return self._session_days[i]

    def sessions_until(self, day: dt.date, count: int) -> list[dt.date]:
        """The last ``count`` session days up to and including ``day``, oldest first.

        Fewer when the loaded range starts later; :class:`CalendarRangeError` when ``day``
        is outside it.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        self._check_day(day)
        i = bisect.bisect_right(self._session_days, day)
        return self._session_days[max(0, i - count) : i]

    # ------------------------------------------------------------ construction

    @classmethod
    def from_days(
        cls, name: str, tz: str, start: dt.date, end: dt.date, sessions: list[tuple[dt.date, int, int, bool]]
    ) -> MarketCalendar:
        """Build from regular sessions ``(day, open_ns, close_ns, early_close)`` between ``start`` and ``end``.

        Days between ``start`` and ``end`` (inclusive) that are not listed are closed all
        day (weekends, holidays). Extended hours are added per day in ``tz``.
        """
        zone = ZoneInfo(tz)
        days = []
        for day, open_ns, close_ns, early in sessions:
            pre = _ns(dt.datetime.combine(day, PRE_MARKET_OPEN, zone))
            post = _ns(dt.datetime.combine(day, POST_MARKET_CLOSE, zone))
            if early:
                post = min(post, close_ns + EARLY_CLOSE_POST_HOURS * 3_600_000_000_000)
            days.append(DaySchedule(day, min(pre, open_ns), open_ns, close_ns, max(post, close_ns), early))
        first_ns = _ns(dt.datetime.combine(start, dt.time(0), zone))
        end_ns = _ns(dt.datetime.combine(end + dt.timedelta(days=1), dt.time(0), zone))
        return cls(name, days, first_ns, end_ns, tz)

    @classmethod
    def build(cls, name: str, start: dt.date = DEFAULT_START, end: dt.date | None = None) -> MarketCalendar:
        """Blocking: import ``exchange_calendars`` and precompute ``name`` (≈0.6 s the first time).

        ``end`` defaults to the library's own default (a year after today).
        """
        # Imported here, not at module level: pandas takes ~0.5 s to import, and this runs
        # in a worker thread (see load()), never on the event loop.
        import exchange_calendars as xcals  # type: ignore[import-untyped]

        # The library still uses pandas APIs that pandas 3 deprecates; that is its business,
        # not a message for our users (the results are checked by tests/test_calendar.py).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                calendar = xcals.get_calendar(name, start=start.isoformat(), end=end.isoformat() if end else None)
            except xcals.errors.InvalidCalendarName as exc:
                raise UnknownCalendar(f"unknown market calendar {name!r}") from exc
            schedule = calendar.schedule
            early = {ts.date() for ts in calendar.early_closes}
        sessions = [
            (day.date(), opened.value, closed.value, day.date() in early)
            for day, opened, closed in zip(schedule.index, schedule["open"], schedule["close"], strict=True)
        ]
        first = calendar.first_session.date()
        last = calendar.last_session.date()
        return cls.from_days(name, str(calendar.tz), min(start, first), last, sessions)

    @classmethod
    async def load(cls, name: str, start: dt.date = DEFAULT_START, end: dt.date | None = None) -> MarketCalendar:
        """:meth:`build` in a worker thread: the loop keeps running while pandas loads."""
        return await asyncio.to_thread(cls.build, name, start, end)


_loaded: dict[str, SessionCalendar] = {ALWAYS_OPEN: ALWAYS_OPEN_CALENDAR}
"""One calendar per name for the process: calendars are immutable facts, loaded once."""


async def load_calendar(name: str) -> SessionCalendar:
    """The calendar called ``name`` (``"24/7"`` or an ``exchange_calendars`` code such as ``"XNYS"``).

    Loaded in a worker thread the first time, from the process-wide cache afterwards. Two
    concurrent first loads of one name both build it; the first stored wins (harmless).
    """
    cached = _loaded.get(name)
    if cached is not None:
        return cached
    built = await MarketCalendar.load(name)
    return _loaded.setdefault(name, built)
