"""Engine clocks: the only place Kestrel reads time or schedules on it.

Actors never call ``time.time()``, ``asyncio.sleep()`` or ``datetime.now()``; they ask
their :class:`Clock`. Two implementations exist:

- :class:`LiveClock` reads the wall clock for event time and the event loop's monotonic
  clock for timers.
- :class:`SimClock` only moves when the replay driver calls :meth:`SimClock.advance_to`
  with the timestamp of the next recorded event. Due timers fire in (deadline, creation)
  order before the clock reaches the new time, so the same input always produces the
  same sequence of callbacks, and a replay runs as fast as the CPU allows.

All times are integer nanoseconds: ``time_ns()`` since the Unix epoch (UTC).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol

NS_PER_S = 1_000_000_000

_wall_skew: Callable[[], int] | None = None
"""Fault injection only (chaos runs, set by :mod:`engine.faults`): ns added to ``LiveClock`` wall time."""


def wall_time_ns() -> int:
    """The process wall clock. Used by log timestamps and the live clock only."""
    return time.time_ns()


def perf_ns() -> int:
    """A monotonic high-resolution counter for measuring durations (benchmarks, wall_s)."""
    return time.perf_counter_ns()


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What actors may know about time."""

    @property
    def is_simulated(self) -> bool: ...

    def time_ns(self) -> int:
        """Current time, ns since the epoch (venue/event time under simulation)."""
        ...

    def call_at(self, when_ns: int, callback: Callable[[], object]) -> TimerHandle:
        """Run ``callback`` once the clock reaches ``when_ns`` (epoch ns)."""
        ...

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> TimerHandle: ...

    async def sleep(self, delay_s: float) -> None: ...

    async def sleep_until(self, when_ns: int) -> None: ...


class LiveClock:
    """Wall time for events; the running loop's monotonic clock for timers."""

    is_simulated = False

    def time_ns(self) -> int:
        if _wall_skew is None:  # always, unless a chaos run armed a clock jump (engine/faults.py)
            return time.time_ns()
        return time.time_ns() + _wall_skew()

    def call_at(self, when_ns: int, callback: Callable[[], object]) -> TimerHandle:
        return self.call_later((when_ns - self.time_ns()) / NS_PER_S, callback)

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay_s), callback)

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)

    async def sleep_until(self, when_ns: int) -> None:
        await asyncio.sleep(max(0.0, (when_ns - self.time_ns()) / NS_PER_S))


class _SimTimer:
    __slots__ = ("callback", "cancelled", "when_ns")

    def __init__(self, when_ns: int, callback: Callable[[], object]) -> None:
        self.when_ns = when_ns
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class SimClock:
    """A clock that moves only when told to, firing due timers in a fixed order."""

    is_simulated = True

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns
        self._heap: list[tuple[int, int, _SimTimer]] = []
        self._seq = itertools.count()

    def time_ns(self) -> int:
        return self._now

    def call_at(self, when_ns: int, callback: Callable[[], object]) -> TimerHandle:
        timer = _SimTimer(max(when_ns, self._now), callback)
        heapq.heappush(self._heap, (timer.when_ns, next(self._seq), timer))
        return timer

    def call_later(self, delay_s: float, callback: Callable[[], object]) -> TimerHandle:
        # round(), not int(): 2.01 * 1e9 is 2009999999.9999998, and a timer must not fire early.
        return self.call_at(self._now + round(delay_s * NS_PER_S), callback)

    async def sleep(self, delay_s: float) -> None:
        await self.sleep_until(self._now + round(delay_s * NS_PER_S))

    async def sleep_until(self, when_ns: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        handle = self.call_at(when_ns, wake)
        try:
            await future
        finally:
            handle.cancel()

    def next_deadline_ns(self) -> int | None:
        """The earliest pending timer's deadline, or None."""
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def advance_to(self, when_ns: int) -> int:
        """Move time forward to ``when_ns``, firing every timer due by then.

        Returns the number of timers fired. Time never goes backwards: an earlier
        ``when_ns`` leaves the clock where it is (recordings can hold equal stamps).
        Each timer runs with the clock set to its own deadline.
        """
        fired = 0
        heap = self._heap
        while heap and heap[0][0] <= when_ns:
            deadline, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            self._now = max(self._now, deadline)
            fired += 1
            timer.callback()
        if when_ns > self._now:
            self._now = when_ns
        return fired
