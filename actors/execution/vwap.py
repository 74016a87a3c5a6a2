"""VWAP: trade along the day's usual volume curve, measured from recordings.

:class:`VolumeProfile` is the intraday volume curve: the share of the regular session's
volume that trades in each bucket (30 minutes by default, 09:30–16:00 New York), from
recorded trades. Each day is normalised on its own and the days are then averaged, so one
heavy day (an index rebalance, news) weighs no more than a quiet one. Trades outside the
regular session are left out, and so are the closing-auction prints stamped 16:00:00 or
later: a DAY limit order cannot take part in the auction, so its volume is not volume a
child can trade against. US equities show the familiar U: heavy at the open and the
close, light around midday.

:class:`VWAPSchedule` sizes children by that curve: the part of each bucket inside the
window gets the bucket's fraction times the share of the bucket covered (volume is taken
as uniform within a bucket), the weights are renormalised to the window, and the
cumulative targets become a :class:`~actors.execution.schedule.ScheduledExecution`
schedule (one step at the start of each bucket, or ``slices_per_bucket`` steps). Matching
the market's own volume rhythm is what keeps the average price close to the day's VWAP
and the participation rate roughly constant.

Pure: :meth:`VolumeProfile.from_trades` takes trades, not files (the recording loader is
:mod:`simulations.volume_profile`). Time-zone arithmetic uses :mod:`zoneinfo`, so DST days
are right.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo

from actors.execution.common import NS_PER_S, ZERO, MakeIntentId, floor_to
from actors.execution.schedule import ScheduledExecution, check_window
from engine.messages import Side, TimeInForce, TradeTick

NEW_YORK = "America/New_York"
_NS_PER_MINUTE = 60 * NS_PER_S


def _ns(moment: dt.datetime) -> int:
    """Integer ns of an aware datetime on a whole second (exact: no float fractions)."""
    return int(moment.timestamp()) * NS_PER_S


def _local_date(ts_ns: int, zone: ZoneInfo) -> dt.date:
    return dt.datetime.fromtimestamp(ts_ns // NS_PER_S, tz=zone).date()


@dataclass(frozen=True, slots=True)
class VolumeProfile:
    """Fractions of the regular session's volume per bucket; they sum to exactly 1."""

    fractions: tuple[Decimal, ...]
    bucket_minutes: int = 30
    session_open: dt.time = dt.time(9, 30)
    session_close: dt.time = dt.time(16, 0)
    tz: str = NEW_YORK
    days: int = 0
    """How many recorded days were averaged (0: not from recordings)."""

    def __post_init__(self) -> None:
        if self.bucket_minutes <= 0:
            raise ValueError("bucket_minutes must be positive")
        if self.session_close <= self.session_open:
            raise ValueError("the session must close after it opens")
        if len(self.fractions) != self.bucket_count(self.bucket_minutes, self.session_open, self.session_close):
            raise ValueError("one fraction per bucket of the session")
        if any(f < 0 for f in self.fractions) or sum(self.fractions, ZERO) != 1:
            raise ValueError("fractions must be non-negative and sum to 1")

    @staticmethod
    def bucket_count(bucket_minutes: int, session_open: dt.time, session_close: dt.time) -> int:
        minutes = (session_close.hour - session_open.hour) * 60 + session_close.minute - session_open.minute
        return -(-minutes // bucket_minutes)

    def buckets_ns(self, day: dt.date) -> list[tuple[int, int]]:
        """Each bucket's ``[start, end)`` in ns on ``day`` (the last one ends at the close)."""
        zone = ZoneInfo(self.tz)
        open_ns = _ns(dt.datetime.combine(day, self.session_open, zone))
        close_ns = _ns(dt.datetime.combine(day, self.session_close, zone))
        width = self.bucket_minutes * _NS_PER_MINUTE
        return [(open_ns + i * width, min(open_ns + (i + 1) * width, close_ns)) for i in range(len(self.fractions))]

    @classmethod
    def uniform(
        cls,
        bucket_minutes: int = 30,
        session_open: dt.time = dt.time(9, 30),
        session_close: dt.time = dt.time(16, 0),
        tz: str = NEW_YORK,
    ) -> VolumeProfile:
        """Every bucket alike: VWAP on this profile is TWAP over the session."""
        n = cls.bucket_count(bucket_minutes, session_open, session_close)
        return cls(_normalised([Decimal(1)] * n), bucket_minutes, session_open, session_close, tz)

    @classmethod
    def from_trades(
        cls,
        trades: Iterable[TradeTick],
        *,
        bucket_minutes: int = 30,
        session_open: dt.time = dt.time(9, 30),
        session_close: dt.time = dt.time(16, 0),
        tz: str = NEW_YORK,
        include_suspicious: bool = False,
    ) -> VolumeProfile:
        """The average intraday profile of ``trades`` (any order, any number of days and symbols).

        Suspicious prints (the feed's flag) are left out unless ``include_suspicious``.
        Raises ``ValueError`` when no trade falls in a regular session.
        """
        zone = ZoneInfo(tz)
        n = cls.bucket_count(bucket_minutes, session_open, session_close)
        width = bucket_minutes * _NS_PER_MINUTE
        per_day: dict[dt.date, list[Decimal]] = {}
        # The day's bounds are cached: recordings come a day at a time, so the time-zone
        # conversion runs once per day rather than once per trade.
        day_lo = day_hi = open_ns = close_ns = 0
        volumes: list[Decimal] = []
        for trade in trades:
            if trade.suspicious and not include_suspicious:
                continue
            ts = trade.ts_event
            if not day_lo <= ts < day_hi:
                day = _local_date(ts, zone)
                day_lo = _ns(dt.datetime.combine(day, dt.time(0), zone))
                day_hi = _ns(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone))
                open_ns = _ns(dt.datetime.combine(day, session_open, zone))
                close_ns = _ns(dt.datetime.combine(day, session_close, zone))
                volumes = per_day.setdefault(day, [ZERO] * n)
            if open_ns <= ts < close_ns:
                volumes[(ts - open_ns) // width] += trade.size
        days = [v for v in per_day.values() if sum(v, ZERO) > 0]
        if not days:
            raise ValueError("no trade in a regular session: cannot build a volume profile")
        mean = [sum((_normalised(v)[i] for v in days), ZERO) / len(days) for i in range(n)]
        return cls(_normalised(mean), bucket_minutes, session_open, session_close, tz, len(days))


def _normalised(values: list[Decimal]) -> tuple[Decimal, ...]:
    """``values / sum(values)``, the last absorbing the rounding so the sum is exactly 1."""
    total = sum(values, ZERO)
    fractions = [v / total for v in values]
    fractions[-1] = Decimal(1) - sum(fractions[:-1], ZERO)
    return tuple(fractions)


def vwap_steps(
    total_qty: Decimal,
    profile: VolumeProfile,
    start_ns: int,
    end_ns: int,
    lot: Decimal,
    slices_per_bucket: int = 1,
) -> list[tuple[int, Decimal]]:
    """The VWAP schedule: cumulative targets following ``profile`` inside ``[start_ns, end_ns)``."""
    check_window(start_ns, end_ns)
    if slices_per_bucket < 1:
        raise ValueError("slices_per_bucket must be at least 1")
    zone = ZoneInfo(profile.tz)
    weighted: list[tuple[int, Decimal]] = []
    day = _local_date(start_ns, zone)
    last_day = _local_date(end_ns - 1, zone)
    while day <= last_day:
        for (b0, b1), fraction in zip(profile.buckets_ns(day), profile.fractions, strict=True):
            s, e = max(b0, start_ns), min(b1, end_ns)
            if e <= s or fraction == 0:
                continue
            weight = fraction * Decimal(e - s) / Decimal(b1 - b0) / slices_per_bucket
            weighted.extend((s + j * (e - s) // slices_per_bucket, weight) for j in range(slices_per_bucket))
        day += dt.timedelta(days=1)
    total_weight = sum((w for _, w in weighted), ZERO)
    if total_weight == 0:
        raise ValueError("the window holds no volume of the profile (outside the session?)")
    steps: list[tuple[int, Decimal]] = []
    cumulative = ZERO
    for time_ns, weight in weighted:
        cumulative += weight
        steps.append((time_ns, floor_to(total_qty * cumulative / total_weight, lot)))
    steps[-1] = (steps[-1][0], total_qty)
    return steps


class VWAPSchedule(ScheduledExecution):
    """``total_qty`` along ``profile`` between ``start_ns`` and ``end_ns`` (see the module docstring)."""

    def __init__(
        self,
        symbol: str,
        side: Side,
        total_qty: Decimal,
        profile: VolumeProfile,
        start_ns: int,
        end_ns: int,
        *,
        lot: Decimal,
        strategy: str,
        make_intent_id: MakeIntentId,
        slices_per_bucket: int = 1,
        limit_offset: Decimal | None = None,
        tick: Decimal = Decimal("0.01"),
        time_in_force: TimeInForce = TimeInForce.DAY,
        cancel_retry_s: float = 5.0,
    ) -> None:
        super().__init__(
            symbol,
            side,
            total_qty,
            vwap_steps(total_qty, profile, start_ns, end_ns, lot, slices_per_bucket),
            end_ns,
            lot=lot,
            strategy=strategy,
            make_intent_id=make_intent_id,
            limit_offset=limit_offset,
            tick=tick,
            time_in_force=time_in_force,
            cancel_retry_s=cancel_retry_s,
        )
        self.profile = profile
        self.start_ns = start_ns
