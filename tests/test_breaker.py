"""Circuit breaker: every transition, the sliding window, trial slots, guard(), listeners.

Time is a SimClock moved by hand, so every expectation below is exact to the nanosecond.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.breaker import BreakerOpen, BreakerState, CircuitBreaker
from engine.clock import NS_PER_S, SimClock
from engine.errors import KestrelError

T0 = 1_700_000_000 * NS_PER_S
CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Transient(Exception):
    """Stands in for a 5xx / timeout: counts against the dependency."""


class Permanent(Exception):
    """Stands in for a 4xx rejection: says nothing about the dependency's health."""


def at(clock: SimClock, seconds: float) -> None:
    """Move the clock to ``T0 + seconds``."""
    clock.advance_to(T0 + round(seconds * NS_PER_S))


Change = tuple[str, BreakerState, BreakerState]


def make(clock: SimClock, changes: list[Change] | None = None, **kw: Any) -> CircuitBreaker:
    options: dict[str, Any] = {"min_calls": 4, "window_s": 10.0, "open_for_s": 5.0}
    options.update(kw)

    def listen(name: str, old: BreakerState, new: BreakerState) -> None:
        if changes is not None:
            changes.append((name, old, new))

    return CircuitBreaker("venue.orders", clock, on_change=listen, **options)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.min_calls):
        breaker.check()
        breaker.record_failure()
    assert breaker.state is OPEN


async def spin(times: int = 10) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


# ================================================================ construction


def test_state_values_are_the_documented_strings() -> None:
    assert [s.value for s in BreakerState] == ["closed", "open", "half_open"]


@pytest.mark.parametrize(
    "kw",
    [
        {"failure_rate_threshold": 0.0},
        {"failure_rate_threshold": 1.01},
        {"failure_rate_threshold": float("nan")},
        {"window_s": 0.0},
        {"min_calls": 0},
        {"open_for_s": -1.0},
        {"half_open_max_calls": 0},
        {"trial_timeout_s": 0.0},
    ],
)
def test_invalid_settings_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("b", SimClock(T0), **kw)


def test_starts_closed_and_admits_calls() -> None:
    breaker = CircuitBreaker("b", SimClock(T0))
    assert breaker.state is CLOSED
    for _ in range(100):
        breaker.check()
    assert breaker.failure_rate == 0.0
    assert breaker.calls_in_window == 0
    assert breaker.transitions == {
        "closed->open": 0,
        "open->half_open": 0,
        "half_open->closed": 0,
        "half_open->open": 0,
    }
    assert "closed" in repr(breaker)


# ================================================================ CLOSED -> OPEN


def test_does_not_trip_before_min_calls_however_bad_the_rate() -> None:
    clock = SimClock(T0)
    breaker = make(clock, min_calls=10)
    for _ in range(9):
        breaker.record_failure()
    assert breaker.state is CLOSED
    assert breaker.failure_rate == 1.0
    breaker.record_failure()
    assert breaker.state is OPEN


def test_trips_when_the_rate_reaches_the_threshold_not_before() -> None:
    clock = SimClock(T0)
    changes: list[Change] = []
    breaker = make(clock, changes, min_calls=10, failure_rate_threshold=0.5)
    for _ in range(6):
        breaker.record_success()
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is CLOSED  # 4/10
    assert breaker.failure_rate == 0.4
    breaker.record_failure()  # 5/11 < 0.5
    assert breaker.state is CLOSED
    breaker.record_failure()  # 6/12 == 0.5
    assert breaker.state is OPEN
    assert changes == [("venue.orders", CLOSED, OPEN)]
    assert breaker.transitions["closed->open"] == 1


def test_threshold_comparison_is_exact_for_decimal_rates() -> None:
    breaker = make(SimClock(T0), min_calls=10, failure_rate_threshold=0.3)
    for _ in range(7):
        breaker.record_success()
    for _ in range(3):
        breaker.record_failure()
    assert breaker.state is OPEN  # 3/10 >= 0.3, not fooled by 0.3 * 10 == 3.0000000000000004


def test_successes_alone_never_trip() -> None:
    breaker = make(SimClock(T0), min_calls=1)
    for _ in range(50):
        breaker.record_success()
    assert breaker.state is CLOSED


def test_old_outcomes_fall_out_of_the_window() -> None:
    clock = SimClock(T0)
    breaker = make(clock, min_calls=4, window_s=10.0)
    for _ in range(3):
        breaker.record_failure()
    at(clock, 9.999999999)  # 1 ns before those three are window_s old
    assert breaker.calls_in_window == 3
    at(clock, 10.0)  # exactly window_s old: out
    assert breaker.calls_in_window == 0
    assert breaker.failure_rate == 0.0
    breaker.record_failure()  # only one failure in the window now
    assert breaker.state is CLOSED


def test_failures_spread_over_the_window_trip_when_enough_are_recent() -> None:
    clock = SimClock(T0)
    breaker = make(clock, min_calls=4, window_s=10.0)
    for second in (0, 3, 6):
        at(clock, second)
        breaker.record_failure()
    at(clock, 10.5)  # the failure at 0 s has left; 3 s and 6 s remain
    breaker.record_failure()
    assert breaker.state is CLOSED  # 3 outcomes < min_calls
    at(clock, 12.0)
    breaker.record_failure()
    assert breaker.state is OPEN  # 3, 6, 10.5, 12


def test_old_successes_leaving_the_window_can_expose_a_bad_rate() -> None:
    clock = SimClock(T0)
    breaker = make(clock, min_calls=4, window_s=10.0, failure_rate_threshold=0.6)
    for _ in range(6):
        breaker.record_success()
    at(clock, 5.0)
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is CLOSED  # 4/10
    at(clock, 11.0)  # the six successes are gone; the rate is judged on the next outcome
    breaker.record_success()
    assert breaker.state is OPEN  # 4/5


# ================================================================ OPEN


def test_open_refuses_fast_with_the_time_until_retry() -> None:
    clock = SimClock(T0)
    breaker = make(clock, open_for_s=5.0)
    trip(breaker)
    with pytest.raises(BreakerOpen) as refused:
        breaker.check()
    err = refused.value
    assert isinstance(err, KestrelError)
    assert err.name == "venue.orders"
    assert err.retry_after_s == 5.0
    assert err.state is OPEN
    assert "venue.orders" in str(err) and "5.000 s" in str(err)
    at(clock, 3.75)
    with pytest.raises(BreakerOpen) as refused:
        breaker.check()
    assert refused.value.retry_after_s == 1.25


def test_outcomes_reported_while_open_are_ignored() -> None:
    clock = SimClock(T0)
    breaker = make(clock)
    trip(breaker)
    for _ in range(10):
        breaker.record_success()
    assert breaker.state is OPEN
    breaker.record_failure()
    at(clock, 5.0)
    assert breaker.state is HALF_OPEN  # the late failure did not extend the open period


def test_open_becomes_half_open_on_read_exactly_after_open_for_s() -> None:
    clock = SimClock(T0)
    changes: list[Change] = []
    breaker = make(clock, changes, open_for_s=5.0)
    trip(breaker)
    clock.advance_to(T0 + 5 * NS_PER_S - 1)
    assert breaker.state is OPEN
    assert changes == [("venue.orders", CLOSED, OPEN)]
    clock.advance_to(T0 + 5 * NS_PER_S)
    assert changes == [("venue.orders", CLOSED, OPEN)]  # nothing happens until someone looks
    assert breaker.state is HALF_OPEN
    assert changes[-1] == ("venue.orders", OPEN, HALF_OPEN)
    assert breaker.transitions["open->half_open"] == 1


def test_zero_open_for_s_goes_straight_to_half_open() -> None:
    breaker = make(SimClock(T0), open_for_s=0.0)
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state is HALF_OPEN
    assert breaker.transitions["closed->open"] == 1


# ================================================================ HALF_OPEN


def test_half_open_admits_only_max_trial_calls() -> None:
    clock = SimClock(T0)
    breaker = make(clock, half_open_max_calls=2)
    trip(breaker)
    at(clock, 5.0)
    breaker.check()
    breaker.check()
    with pytest.raises(BreakerOpen) as refused:
        breaker.check()
    assert refused.value.state is HALF_OPEN
    assert refused.value.retry_after_s == 0.0
    assert "half_open" in str(refused.value)


def test_a_trial_success_closes_with_an_empty_window() -> None:
    clock = SimClock(T0)
    changes: list[Change] = []
    breaker = make(clock, changes, min_calls=4)
    trip(breaker)
    at(clock, 5.0)
    breaker.check()
    breaker.record_success()
    assert breaker.state is CLOSED
    assert changes[-1] == ("venue.orders", HALF_OPEN, CLOSED)
    assert breaker.calls_in_window == 0
    for _ in range(3):  # needs min_calls fresh outcomes to trip again
        breaker.record_failure()
    assert breaker.state is CLOSED
    breaker.record_failure()
    assert breaker.state is OPEN


def test_a_trial_failure_reopens_for_another_open_for_s() -> None:
    clock = SimClock(T0)
    changes: list[Change] = []
    breaker = make(clock, changes, open_for_s=5.0)
    trip(breaker)
    at(clock, 7.0)
    breaker.check()
    at(clock, 8.0)
    breaker.record_failure()
    assert breaker.state is OPEN
    with pytest.raises(BreakerOpen) as refused:
        breaker.check()
    assert refused.value.retry_after_s == 5.0
    at(clock, 13.0)
    assert breaker.state is HALF_OPEN
    assert [(old.value, new.value) for _, old, new in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
    ]


def test_with_several_trials_the_first_outcome_decides() -> None:
    clock = SimClock(T0)
    breaker = make(clock, half_open_max_calls=3)
    trip(breaker)
    at(clock, 5.0)
    breaker.check()
    breaker.check()
    breaker.record_success()
    assert breaker.state is CLOSED
    breaker.record_failure()  # the other trial, reported into the fresh window
    assert breaker.state is CLOSED
    assert breaker.calls_in_window == 1


def test_an_outcome_in_half_open_without_a_trial_is_ignored() -> None:
    clock = SimClock(T0)
    breaker = make(clock)
    trip(breaker)
    at(clock, 5.0)
    breaker.record_success()  # a call admitted before the trip, finishing late
    assert breaker.state is HALF_OPEN
    breaker.record_failure()
    assert breaker.state is HALF_OPEN


def test_a_trial_that_never_reports_is_presumed_failed_after_trial_timeout() -> None:
    clock = SimClock(T0)
    changes: list[Change] = []
    breaker = make(clock, changes, open_for_s=5.0, trial_timeout_s=2.0)
    trip(breaker)
    at(clock, 5.0)
    breaker.check()  # ... and the caller forgets to record anything
    at(clock, 6.999999999)
    assert breaker.state is HALF_OPEN
    at(clock, 7.0)
    assert breaker.state is OPEN
    with pytest.raises(BreakerOpen) as refused:
        breaker.check()
    assert refused.value.retry_after_s == 5.0  # open as of the moment the trial timed out
    at(clock, 12.0)
    assert breaker.state is HALF_OPEN
    breaker.check()  # a slot is free again


def test_lazy_evaluation_applies_every_transition_time_has_caused() -> None:
    clock = SimClock(T0)
    changes: list[Change] = []
    breaker = make(clock, changes, open_for_s=5.0, trial_timeout_s=2.0)
    trip(breaker)
    at(clock, 5.0)
    breaker.check()
    at(clock, 100.0)  # trial expired at 7 s, reopened until 12 s, half-open since
    assert breaker.state is HALF_OPEN
    pairs = [(old.value, new.value) for _, old, new in changes]
    assert pairs[-2:] == [("half_open", "open"), ("open", "half_open")]


def test_transition_counters_over_full_cycles() -> None:
    clock = SimClock(T0)
    breaker = make(clock)
    trip(breaker)
    at(clock, 5.0)
    breaker.check()
    breaker.record_failure()
    at(clock, 10.0)
    breaker.check()
    breaker.record_success()
    trip(breaker)
    assert breaker.transitions == {
        "closed->open": 2,
        "open->half_open": 2,
        "half_open->closed": 1,
        "half_open->open": 1,
    }


# ================================================================ guard()


async def test_guard_records_success_when_the_block_returns() -> None:
    clock = SimClock(T0)
    breaker = make(clock)
    async with breaker.guard():
        pass
    assert breaker.calls_in_window == 1
    assert breaker.failure_rate == 0.0


async def test_guard_records_counting_exceptions_as_failures_and_reraises() -> None:
    clock = SimClock(T0)
    breaker = make(clock, min_calls=3)
    for _ in range(3):
        with pytest.raises(Transient):
            async with breaker.guard(counts=(Transient,)):
                raise Transient("503")
    assert breaker.state is OPEN
    ran = False
    with pytest.raises(BreakerOpen):
        async with breaker.guard(counts=(Transient,)):
            ran = True
    assert not ran  # refused before the block


async def test_guard_records_non_counting_exceptions_as_success_and_reraises() -> None:
    clock = SimClock(T0)
    breaker = make(clock, min_calls=3)
    for _ in range(10):
        with pytest.raises(Permanent):
            async with breaker.guard(counts=(Transient,)):
                raise Permanent("422 insufficient buying power")
    assert breaker.state is CLOSED
    assert breaker.calls_in_window == 10
    assert breaker.failure_rate == 0.0


async def test_guard_counts_subclasses_and_every_exception_by_default() -> None:
    class ReadTimeout(Transient):
        pass

    breaker = make(SimClock(T0), min_calls=2)
    with pytest.raises(ReadTimeout):
        async with breaker.guard(counts=(Transient,)):
            raise ReadTimeout
    with pytest.raises(Permanent):
        async with breaker.guard():  # default: any Exception counts
            raise Permanent
    assert breaker.state is OPEN


async def test_guard_in_half_open_closes_on_success_and_reopens_on_failure() -> None:
    clock = SimClock(T0)
    breaker = make(clock)
    trip(breaker)
    at(clock, 5.0)
    with pytest.raises(Transient):
        async with breaker.guard(counts=(Transient,)):
            raise Transient
    assert breaker.state is OPEN
    at(clock, 10.0)
    with pytest.raises(Permanent):
        async with breaker.guard(counts=(Transient,)):
            raise Permanent  # the venue answered: it is up
    assert breaker.state is CLOSED


async def test_guard_refuses_a_second_trial_while_the_first_is_in_flight() -> None:
    clock = SimClock(T0)
    breaker = make(clock)
    trip(breaker)
    at(clock, 5.0)
    async with breaker.guard():
        with pytest.raises(BreakerOpen):
            async with breaker.guard():
                pass
    assert breaker.state is CLOSED


async def test_a_cancelled_trial_records_nothing_and_frees_its_slot() -> None:
    clock = SimClock(T0)
    breaker = make(clock)
    trip(breaker)
    at(clock, 5.0)
    entered = asyncio.Event()

    async def call() -> None:
        async with breaker.guard(counts=(Transient,)):
            entered.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await entered.wait()
    with pytest.raises(BreakerOpen):
        breaker.check()  # the slot is taken
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.state is HALF_OPEN  # not closed, not reopened
    breaker.check()  # the slot is free


async def test_a_cancelled_call_while_closed_records_nothing() -> None:
    clock = SimClock(T0)
    breaker = make(clock)

    async def call() -> None:
        async with breaker.guard():
            await clock.sleep(1.0)

    task = asyncio.create_task(call())
    await spin()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert breaker.calls_in_window == 0


async def test_a_slow_call_from_before_the_trip_cannot_close_the_breaker() -> None:
    clock = SimClock(T0)
    breaker = make(clock, open_for_s=5.0)

    async def slow_call() -> None:
        async with breaker.guard():
            await clock.sleep(6.0)

    task = asyncio.create_task(slow_call())
    await spin()
    trip(breaker)  # other calls fail meanwhile
    clock.advance_to(T0 + 6 * NS_PER_S)
    await task  # admitted while closed, finishes while half-open: stale
    assert breaker.state is HALF_OPEN
    breaker.check()  # and it did not use up the trial slot


async def test_a_timeout_inside_the_guard_counts_when_listed() -> None:
    clock = SimClock(T0)
    breaker = make(clock, min_calls=1)
    with pytest.raises(TimeoutError):
        async with breaker.guard(counts=(TimeoutError,)):
            raise TimeoutError
    assert breaker.state is OPEN


# ================================================================ listener


def test_listener_sees_the_new_state_already_applied() -> None:
    clock = SimClock(T0)
    seen: list[BreakerState] = []
    breaker: CircuitBreaker

    def listen(name: str, old: BreakerState, new: BreakerState) -> None:
        seen.append(breaker.state)

    breaker = CircuitBreaker("b", clock, min_calls=1, on_change=listen)
    breaker.record_failure()
    assert seen == [OPEN]


def test_no_listener_is_fine() -> None:
    breaker = CircuitBreaker("b", SimClock(T0), min_calls=1)
    breaker.record_failure()
    assert breaker.state is OPEN


# ================================================================ against a model


_steps = st.lists(
    st.tuples(  # (ms later, what); round gaps land on the window and timeout edges exactly
        st.one_of(st.sampled_from([0, 1, 999, 1_000, 3_000, 4_000, 10_000]), st.integers(0, 5_000)),
        st.sampled_from(["ok", "fail", "check"]),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=_steps,
    min_calls=st.integers(1, 6),
    threshold=st.sampled_from([0.25, 0.5, 0.75, 1.0]),
    max_trials=st.integers(1, 3),
)
def test_property_matches_a_naive_model(
    steps: list[tuple[int, str]], min_calls: int, threshold: float, max_trials: int
) -> None:
    """A straightforward re-statement of the rules, recomputing the window from scratch each time."""
    window, open_for, trial_timeout = 10_000, 3_000, 4_000  # ms
    clock = SimClock(T0)
    breaker = CircuitBreaker(
        "m",
        clock,
        failure_rate_threshold=threshold,
        window_s=window / 1000,
        min_calls=min_calls,
        open_for_s=open_for / 1000,
        half_open_max_calls=max_trials,
        trial_timeout_s=trial_timeout / 1000,
    )
    # The model; times in ms.
    state = "closed"
    history: list[tuple[int, bool]] = []
    opened_at = 0
    trials: list[int] = []
    now = 0

    def catch_up() -> None:
        nonlocal state, opened_at, trials
        while True:
            if state == "open" and now >= opened_at + open_for:
                state = "half_open"
            elif state == "half_open" and trials and now >= trials[0] + trial_timeout:
                state, opened_at, trials = "open", trials[0] + trial_timeout, []
            else:
                return

    for gap, what in steps:
        now += gap
        clock.advance_to(T0 + now * 1_000_000)
        catch_up()
        if what == "check":
            allowed = state == "closed" or (state == "half_open" and len(trials) < max_trials)
            if allowed:
                breaker.check()
                if state == "half_open":
                    trials.append(now)
            else:
                with pytest.raises(BreakerOpen):
                    breaker.check()
        else:
            failed = what == "fail"
            (breaker.record_failure if failed else breaker.record_success)()
            if state == "half_open" and trials:
                if failed:
                    state, opened_at, trials = "open", now, []
                else:
                    state, history, trials = "closed", [], []
            elif state == "closed":
                history.append((now, failed))
                recent = [f for t, f in history if t > now - window]
                if len(recent) >= min_calls and sum(recent) / len(recent) >= threshold:
                    state, history = "open", []
                    opened_at = now
        assert breaker.state.value == state
