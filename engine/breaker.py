"""Circuit breakers: stop calling a dependency that is failing, and find out when it recovers.

A :class:`CircuitBreaker` sits in front of one dependency (an endpoint group of a venue
API, say) and is in one of three states:

- ``CLOSED``: calls go through and their outcomes are recorded in a sliding time window
  of ``window_s`` seconds (engine clock). Once the window holds at least ``min_calls``
  outcomes and the share of failures among them is at least ``failure_rate_threshold``,
  the breaker *trips* to ``OPEN``. The rate is evaluated each time an outcome is
  recorded; outcomes older than ``window_s`` no longer count.
- ``OPEN``: :meth:`~CircuitBreaker.check` refuses at once with :class:`BreakerOpen`,
  which says how many seconds remain until the breaker will let a trial call through.
  Nothing is sent, so a struggling venue is not hammered and the caller does not wait
  on timeouts. Outcomes reported while open are ignored: they belong to calls admitted
  before the breaker tripped.
- ``HALF_OPEN``: entered ``open_for_s`` seconds after opening. Up to
  ``half_open_max_calls`` trial calls may be in flight at once; further calls are
  refused. The first trial to succeed closes the breaker (with an empty window); the
  first to fail opens it again for another ``open_for_s``. A trial that reports nothing
  within ``trial_timeout_s`` is presumed failed, so a caller that forgets to report (or
  hangs) cannot wedge the breaker half-open for ever.

Time moves only through the engine :class:`~engine.clock.Clock`, and transitions driven
by time alone (``OPEN`` → ``HALF_OPEN``, an expired trial) are applied lazily, whenever
the breaker is next consulted — reading :attr:`~CircuitBreaker.state` included. Under a
:class:`~engine.clock.SimClock` every run is therefore reproducible.

There are two ways to use a breaker. The safe one is :meth:`~CircuitBreaker.guard`::

    async with breaker.guard(counts=(TransientError,)):
        response = await send(request)

It checks, then records a failure if the block raises one of the ``counts`` exception
types and a success otherwise: an error that says nothing about the dependency's health
(a 4xx rejection, a bug in our request) is a *success* for breaker purposes, and is
re-raised. If the block is cancelled, nothing is recorded (a cancelled call is not
evidence either way) but its half-open trial slot is released. A guard also ignores the
outcome of a call admitted before the breaker last changed state, so a slow call that
started before a trip cannot close the breaker by finishing late.

The manual way is :meth:`~CircuitBreaker.check` followed by exactly one of
:meth:`~CircuitBreaker.record_success` or :meth:`~CircuitBreaker.record_failure`. It
cannot tell a trial call from a late one, so prefer :meth:`~CircuitBreaker.guard`.

To put a timeout on guarded calls, put it *inside* the guard
(``async with breaker.guard(counts=(TimeoutError,)): async with asyncio.timeout(2): ...``):
a timeout outside the guard reaches it as a cancellation, which is not recorded.

Every transition is counted in :attr:`~CircuitBreaker.transitions` and reported to the
optional ``on_change(name, old_state, new_state)`` listener (for example, so risk can
stop sending orders to a venue whose order endpoint is open). The listener is called
after the state has changed, synchronously, from whichever call noticed the transition;
it must not raise.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Final

from engine.clock import NS_PER_S, Clock
from engine.errors import KestrelError


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


CLOSED: Final = BreakerState.CLOSED
BREAKER_CODES: Final = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
"""A breaker's state as a number (``kestrel_breaker_state`` in ``/metrics``): 0 closed, 1 half-open, 2 open."""
OPEN: Final = BreakerState.OPEN
HALF_OPEN: Final = BreakerState.HALF_OPEN

BreakerListener = Callable[[str, BreakerState, BreakerState], None]
"""``on_change(breaker_name, old_state, new_state)``."""


class BreakerOpen(KestrelError):
    """A call was refused by a circuit breaker without being attempted.

    ``retry_after_s`` is how long until the breaker will admit a trial call. While
    ``OPEN`` that is exact (as far as the engine clock goes). When the breaker is
    ``HALF_OPEN`` with all trial slots taken (``state`` is ``HALF_OPEN``), it is ``0.0``:
    the outcome of the trial in flight decides, and it may arrive at any moment.
    """

    def __init__(self, name: str, retry_after_s: float, state: BreakerState = OPEN) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        self.state = state
        detail = f"retry in {retry_after_s:.3f} s" if state is OPEN else "a trial call is in flight"
        super().__init__(f"circuit breaker {name!r} is {state.value}: {detail}")


class CircuitBreaker:
    """A failure-rate circuit breaker over a sliding window of engine-clock time.

    See the module docstring for the model. Not thread-safe; meant for one event loop.
    """

    def __init__(
        self,
        name: str,
        clock: Clock,
        failure_rate_threshold: float = 0.5,
        window_s: float = 30.0,
        min_calls: int = 10,
        open_for_s: float = 5.0,
        half_open_max_calls: int = 1,
        on_change: BreakerListener | None = None,
        *,
        trial_timeout_s: float = 30.0,
    ) -> None:
        if not 0.0 < failure_rate_threshold <= 1.0:
            raise ValueError(f"need 0 < failure_rate_threshold <= 1, got {failure_rate_threshold}")
        if not window_s > 0.0:
            raise ValueError(f"need window_s > 0, got {window_s}")
        if min_calls < 1:
            raise ValueError(f"need min_calls >= 1, got {min_calls}")
        if not open_for_s >= 0.0:
            raise ValueError(f"need open_for_s >= 0, got {open_for_s}")
        if half_open_max_calls < 1:
            raise ValueError(f"need half_open_max_calls >= 1, got {half_open_max_calls}")
        if not trial_timeout_s > 0.0:
            raise ValueError(f"need trial_timeout_s > 0, got {trial_timeout_s}")
        self.name = name
        self.clock = clock
        self.failure_rate_threshold = failure_rate_threshold
        self.window_s = window_s
        self.min_calls = min_calls
        self.open_for_s = open_for_s
        self.half_open_max_calls = half_open_max_calls
        self.trial_timeout_s = trial_timeout_s
        self.on_change = on_change
        self.transitions: dict[str, int] = {
            "closed->open": 0,
            "open->half_open": 0,
            "half_open->closed": 0,
            "half_open->open": 0,
        }
        """How often each transition happened, keyed ``"<old>-><new>"`` by state value."""

        self._window_ns = max(1, round(window_s * NS_PER_S))
        self._open_ns = round(open_for_s * NS_PER_S)
        self._trial_ns = round(trial_timeout_s * NS_PER_S)
        self._state = CLOSED
        self._outcomes: deque[tuple[int, bool]] = deque()  # (time_ns, failed), oldest first
        self._failures = 0
        self._opened_at_ns = 0
        self._trials: list[int] = []  # admission times of half-open trials in flight
        self._generation = 0  # bumped on every transition; lets a guard spot a stale outcome

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state.value}>"

    # ------------------------------------------------------------ reading

    @property
    def state(self) -> BreakerState:
        """The current state, after applying any transition that time alone has caused."""
        self._advance(self.clock.time_ns())
        return self._state

    @property
    def trial_at_ns(self) -> int | None:
        """While ``OPEN``: the engine-clock time from which a trial call will be admitted."""
        return self._opened_at_ns + self._open_ns if self.state is OPEN else None

    @property
    def failure_rate(self) -> float:
        """The share of failures among the outcomes in the window (0.0 if there are none)."""
        self._prune(self.clock.time_ns())
        return self._failures / len(self._outcomes) if self._outcomes else 0.0

    @property
    def calls_in_window(self) -> int:
        """How many outcomes the window holds now (always 0 unless ``CLOSED``)."""
        self._prune(self.clock.time_ns())
        return len(self._outcomes)

    # ------------------------------------------------------------ the manual API

    def check(self) -> None:
        """Admit one call or raise :class:`BreakerOpen`.

        When ``HALF_OPEN``, admitting a call reserves one of the ``half_open_max_calls``
        trial slots, which its recorded outcome releases.
        """
        self._admit(self.clock.time_ns())

    def record_success(self) -> None:
        """Report that an admitted call succeeded (or failed in a way that does not count)."""
        self._record(self.clock.time_ns(), failed=False)

    def record_failure(self) -> None:
        """Report that an admitted call failed in a way that counts against the dependency."""
        self._record(self.clock.time_ns(), failed=True)

    # ------------------------------------------------------------ the guarded API

    def guard(
        self, counts: tuple[type[BaseException], ...] = (Exception,)
    ) -> AbstractAsyncContextManager[None]:
        """An async context manager that checks, runs the block, and records its outcome.

        Raises :class:`BreakerOpen` on entry if the call is refused (the block does not
        run). If the block raises an instance of one of ``counts``, a failure is recorded;
        if it returns or raises any other :class:`Exception`, a success; if it is cancelled
        (or raises another ``BaseException`` not in ``counts``), nothing — but a trial slot
        is released. Exceptions always propagate.
        """
        return _Guard(self, counts)

    # ------------------------------------------------------------ the model

    def _admit(self, now: int) -> tuple[int, bool]:
        """Check and reserve; returns (generation admitted in, whether it is a trial)."""
        self._advance(now)
        if self._state is CLOSED:
            return self._generation, False
        if self._state is OPEN:
            retry_ns = max(0, self._opened_at_ns + self._open_ns - now)
            raise BreakerOpen(self.name, retry_ns / NS_PER_S, OPEN)
        if len(self._trials) >= self.half_open_max_calls:
            raise BreakerOpen(self.name, 0.0, HALF_OPEN)
        self._trials.append(now)
        return self._generation, True

    def _record(self, now: int, failed: bool) -> None:
        self._advance(now)
        if self._state is OPEN:
            return  # a call admitted before the trip finishing late: not evidence of anything now
        if self._state is HALF_OPEN:
            if not self._trials:
                return  # no trial was admitted, so this is a late outcome of a call from before
            if failed:
                self._trip(now)
            else:
                self._transition(CLOSED)
            return
        self._outcomes.append((now, failed))
        self._failures += failed
        self._prune(now)
        calls = len(self._outcomes)
        if calls >= self.min_calls and self._failures / calls >= self.failure_rate_threshold:
            self._trip(now)

    def _release(self, admitted_at: int) -> None:
        """Give back a trial slot whose call ended without an outcome (it was cancelled)."""
        if admitted_at in self._trials:
            self._trials.remove(admitted_at)

    def _advance(self, now: int) -> None:
        """Apply the transitions that the passing of time has caused by ``now``."""
        while True:
            if self._state is OPEN and now >= self._opened_at_ns + self._open_ns:
                self._transition(HALF_OPEN)
            elif self._state is HALF_OPEN and self._trials and now >= self._trials[0] + self._trial_ns:
                # A trial that never reported is presumed failed, as of when it timed out.
                self._trip(self._trials[0] + self._trial_ns)
            else:
                return

    def _prune(self, now: int) -> None:
        """Drop outcomes that are ``window_s`` or more old."""
        cutoff = now - self._window_ns
        outcomes = self._outcomes
        while outcomes and outcomes[0][0] <= cutoff:
            _, failed = outcomes.popleft()
            self._failures -= failed

    def _trip(self, at_ns: int) -> None:
        self._opened_at_ns = at_ns
        self._transition(OPEN)

    def _transition(self, new: BreakerState) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._trials.clear()
        self._outcomes.clear()
        self._failures = 0
        self.transitions[f"{old.value}->{new.value}"] += 1
        if self.on_change is not None:
            self.on_change(self.name, old, new)


class _Guard(AbstractAsyncContextManager[None]):
    """One guarded call: see :meth:`CircuitBreaker.guard`."""

    __slots__ = ("_admitted_at", "_breaker", "_counts", "_generation", "_is_trial")

    def __init__(self, breaker: CircuitBreaker, counts: tuple[type[BaseException], ...]) -> None:
        self._breaker = breaker
        self._counts = counts
        self._admitted_at = 0
        self._generation = -1
        self._is_trial = False

    async def __aenter__(self) -> None:
        now = self._breaker.clock.time_ns()
        self._generation, self._is_trial = self._breaker._admit(now)
        self._admitted_at = now

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        breaker = self._breaker
        now = breaker.clock.time_ns()
        breaker._advance(now)
        if breaker._generation != self._generation:
            return  # the breaker moved on while this call ran; its outcome is stale
        if exc is None:
            breaker._record(now, failed=False)
        elif isinstance(exc, self._counts):
            breaker._record(now, failed=True)
        elif isinstance(exc, Exception):
            breaker._record(now, failed=False)
        elif self._is_trial:
            breaker._release(self._admitted_at)
