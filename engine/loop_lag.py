"""How late the event loop runs what is due: the engine's measure of a stalled loop.

A task sleeps ``interval_s`` on the clock again and again and measures, on the monotonic
counter, how much later than asked it woke up. That lateness is the time the loop spent
on something else that did not yield — a blocking call, a long synchronous handler, a GC
pause — so its maximum is the worst stall any actor's message waited behind.

Figures are kept as a cumulative histogram (Prometheus style: fixed upper bounds in
seconds, count, sum) plus the maximum, over the whole run and over the current report
window; every ``report_every_s`` one ``event_loop_lag`` log line carries the window's
maximum and the run's, together with the process's peak resident memory (from
``getrusage``: a system call, no file to read). Live clocks only: under a
:class:`~engine.clock.SimClock` a sleep wakes exactly on time by construction.
"""

from __future__ import annotations

import resource
import sys
from typing import Final

import msgspec

from engine.clock import NS_PER_S, LiveClock, perf_ns
from engine.logs import get_logger
from engine.metrics import Histogram

__all__ = ["LAG_BUCKETS_S", "LoopLag", "LoopLagMonitor", "peak_rss_bytes"]

LAG_BUCKETS_S: Final = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds of the lag histogram, seconds (``+Inf`` is implied)."""


class LoopLag(msgspec.Struct, frozen=True, kw_only=True):
    """The loop's lateness so far (seconds are floats: a measurement, not money)."""

    samples: int
    max_s: float
    sum_s: float
    buckets: list[int]
    """Cumulative counts per :data:`LAG_BUCKETS_S` bound, then the ``+Inf`` total."""
    over_100ms: int
    """Wake-ups that came more than 100 ms late (each a stall a quote waited behind)."""

    def quantile_s(self, q: float) -> float:
        """The histogram's upper bound below which a fraction ``q`` of samples fell."""
        if self.samples == 0:
            return 0.0
        rank = q * self.samples
        for bound, count in zip(LAG_BUCKETS_S, self.buckets, strict=False):
            if count >= rank:
                return bound
        return self.max_s


def peak_rss_bytes() -> int:
    """The process's peak resident set size (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


class LoopLagMonitor:
    """Measures event-loop lag on a live clock; run :meth:`run` as a task, read :meth:`snapshot`."""

    def __init__(self, clock: LiveClock, *, interval_s: float = 0.05, report_every_s: float = 10.0) -> None:
        if interval_s <= 0 or report_every_s <= 0:
            raise ValueError("interval_s and report_every_s must be positive")
        self.clock = clock
        self.interval_s = interval_s
        self.report_every_s = report_every_s
        self._interval_ns = round(interval_s * NS_PER_S)
        self.histogram = Histogram(LAG_BUCKETS_S)
        """Every wake-up's lateness (what ``/metrics`` exports)."""
        self.last_wake_ns = perf_ns()
        """Monotonic time of the latest wake-up: a loop that stopped turning stops moving it."""
        self._max_ns = 0
        self._over_100ms = 0
        self._window_max_ns = 0
        self._log = get_logger(actor="loop-lag")

    def record(self, lag_ns: int) -> None:
        """Count one wake-up that came ``lag_ns`` late (negative: on time)."""
        lag_ns = max(0, lag_ns)
        self.histogram.observe(lag_ns)
        if lag_ns > self._max_ns:
            self._max_ns = lag_ns
        if lag_ns > self._window_max_ns:
            self._window_max_ns = lag_ns
        if lag_ns > 100_000_000:
            self._over_100ms += 1

    def snapshot(self) -> LoopLag:
        histogram = self.histogram
        return LoopLag(
            samples=histogram.count,
            max_s=self._max_ns / NS_PER_S,
            sum_s=histogram.sum,
            buckets=histogram.cumulative(),
            over_100ms=self._over_100ms,
        )

    async def run(self) -> None:
        """Sleep, measure, repeat; log a report line every ``report_every_s``. Runs until cancelled."""
        report_ns = round(self.report_every_s * NS_PER_S)
        next_report = perf_ns() + report_ns
        while True:
            asked = perf_ns()
            await self.clock.sleep(self.interval_s)
            woke = self.last_wake_ns = perf_ns()
            self.record(woke - asked - self._interval_ns)
            if woke >= next_report:
                next_report = woke + report_ns
                self._report()

    def _report(self) -> None:
        snap = self.snapshot()
        self._log.info(
            "event_loop_lag",
            window_max_ms=round(self._window_max_ns / 1e6, 3),
            max_ms=round(snap.max_s * 1e3, 3),
            p99_ms=round(snap.quantile_s(0.99) * 1e3, 3),
            samples=snap.samples,
            over_100ms=snap.over_100ms,
            peak_rss_bytes=peak_rss_bytes(),
        )
        self._window_max_ns = 0
