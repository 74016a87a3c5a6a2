"""Token bucket: refill arithmetic, the burst cap, exact waits by SimClock time, FIFO order,
max_wait_s, cancellation, and the window bound as a property."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.clock import NS_PER_S, SimClock
from engine.errors import KestrelError
from engine.ratelimit import RateLimited, TokenBucket, per_minute

T0 = 1_700_000_000 * NS_PER_S
MS = 1_000_000


async def spin(times: int = 10) -> None:
    """Let ready tasks run (asyncio.sleep is fine in tests; engine code uses the clock)."""
    for _ in range(times):
        await asyncio.sleep(0)


async def run_until(clock: SimClock, when_ns: int) -> None:
    """Drive the clock like the replay driver: deadline by deadline, letting tasks run between."""
    await spin()
    while (deadline := clock.next_deadline_ns()) is not None and deadline <= when_ns:
        clock.advance_to(deadline)
        await spin()
    clock.advance_to(when_ns)
    await spin()


def start(
    coro: Coroutine[Any, Any, None], clock: SimClock, done_at: dict[str, int], label: str
) -> asyncio.Task[None]:
    """Run ``coro`` as a task that notes in ``done_at[label]`` the clock time it finished."""

    async def run() -> None:
        await coro
        done_at[label] = clock.time_ns()

    return asyncio.create_task(run())


class JumpyClock(SimClock):
    """A SimClock whose time can be set anywhere, backwards included (a stepped wall clock)."""

    def set(self, when_ns: int) -> None:
        self._now = when_ns


# ================================================================ construction


@pytest.mark.parametrize(
    ("rate", "burst"),
    [(0.0, 1), (-1.0, 1), (float("inf"), 1), (float("nan"), 1), (1.0, 0)],
)
def test_invalid_settings_are_refused(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, SimClock(T0))


async def test_n_must_be_between_1_and_burst() -> None:
    bucket = TokenBucket(1.0, 3, SimClock(T0))
    for n in (0, -1, 4):
        with pytest.raises(ValueError):
            bucket.try_acquire(n)
        with pytest.raises(ValueError):
            await bucket.acquire(n)
    for bad in (-0.5, float("nan")):
        with pytest.raises(ValueError):
            await bucket.acquire(1, max_wait_s=bad)


def test_interval_is_exact_for_200_a_minute_and_rounded_up_otherwise() -> None:
    clock = SimClock(T0)
    assert TokenBucket(200 / 60, 1, clock).interval_ns == 300_000_000
    assert TokenBucket(3.0, 1, clock).interval_ns == 333_333_334  # never faster than asked
    assert TokenBucket(2e9, 1, clock).interval_ns == 1


# ================================================================ refill and cap


def test_starts_full_and_empties_one_token_at_a_time() -> None:
    bucket = TokenBucket(1.0, 5, SimClock(T0))
    assert bucket.available == 5.0
    assert [bucket.try_acquire() for _ in range(6)] == [True] * 5 + [False]
    assert bucket.available == 0.0
    assert "burst=5" in repr(bucket)


def test_refill_math_is_exact_including_fractions() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(2.0, 5, clock)  # one token per 0.5 s
    assert bucket.try_acquire(5)
    clock.advance_to(T0 + 250 * MS)
    assert bucket.available == 0.5
    clock.advance_to(T0 + 500 * MS - 1)
    assert not bucket.try_acquire()
    clock.advance_to(T0 + 500 * MS)
    assert bucket.available == 1.0
    assert bucket.try_acquire()
    clock.advance_to(T0 + 1_750 * MS)  # 1.25 s later: 2.5 tokens
    assert bucket.available == 2.5
    assert bucket.try_acquire(2)
    assert not bucket.try_acquire(1)
    assert bucket.available == 0.5


def test_refill_never_exceeds_the_burst() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(10.0, 3, clock)
    bucket.try_acquire(3)
    clock.advance_to(T0 + 3600 * NS_PER_S)
    assert bucket.available == 3.0
    assert bucket.try_acquire(3)
    assert not bucket.try_acquire()


def test_many_small_steps_do_not_drift() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(200 / 60, 200, clock)
    assert bucket.try_acquire(200)
    for step in range(1, 60_001):  # one minute in 1 ms steps, reading each time
        clock.advance_to(T0 + step * MS)
        _ = bucket.available
    assert bucket.available == 200.0
    assert bucket.try_acquire(200)


def test_a_backwards_clock_step_pauses_refill_until_time_catches_up() -> None:
    clock = JumpyClock(T0)
    bucket = TokenBucket(1.0, 5, clock)
    bucket.try_acquire(5)
    clock.set(T0 + 2 * NS_PER_S)
    assert bucket.available == 2.0
    clock.set(T0 - 10 * NS_PER_S)  # NTP stepped the wall clock back
    assert bucket.available == 2.0
    clock.set(T0 + 2 * NS_PER_S)
    assert bucket.available == 2.0  # the same second is not paid for twice
    clock.set(T0 + 3 * NS_PER_S)
    assert bucket.available == 3.0


async def test_after_a_backwards_clock_step_a_waiter_waits_for_the_refill_it_needs() -> None:
    clock = JumpyClock(T0)
    bucket = TokenBucket(1.0, 1, clock)
    bucket.try_acquire()
    clock.set(T0 - 10 * NS_PER_S)
    done_at: dict[str, int] = {}
    task = start(bucket.acquire(), clock, done_at, "a")
    await spin()
    assert clock.next_deadline_ns() == T0 + NS_PER_S  # not T0 - 9 s: that second is not refilled
    await run_until(clock, T0 + NS_PER_S)
    await task
    assert done_at == {"a": T0 + NS_PER_S}


# ================================================================ acquire


async def test_acquire_takes_available_tokens_without_scheduling_anything() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(1.0, 2, clock)
    await bucket.acquire()
    await bucket.acquire()
    assert clock.next_deadline_ns() is None
    assert clock.time_ns() == T0
    assert bucket.available == 0.0


async def test_acquire_waits_exactly_until_the_tokens_exist() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(4.0, 4, clock)  # 250 ms a token
    bucket.try_acquire(4)
    clock.advance_to(T0 + 100 * MS)  # 0.4 of a token
    done_at: dict[str, int] = {}
    task = start(bucket.acquire(2), clock, done_at, "a")
    await run_until(clock, T0 + 500 * MS - 1)
    assert not task.done()
    await run_until(clock, T0 + 500 * MS)
    assert task.done()
    assert done_at == {"a": T0 + 500 * MS}
    assert bucket.available == 0.0


async def test_waiters_are_served_first_come_first_served() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(1.0, 3, clock)
    bucket.try_acquire(3)
    done_at: dict[str, int] = {}
    big = start(bucket.acquire(3), clock, done_at, "big")
    small = start(bucket.acquire(1), clock, done_at, "small")
    await spin()
    # The small request arrived later: it does not overtake, and neither does try_acquire.
    await run_until(clock, T0 + 2 * NS_PER_S)
    assert not bucket.try_acquire()
    await run_until(clock, T0 + 10 * NS_PER_S)
    await asyncio.gather(big, small)
    assert done_at == {"big": T0 + 3 * NS_PER_S, "small": T0 + 4 * NS_PER_S}


async def test_many_waiters_complete_one_interval_apart_in_arrival_order() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(200 / 60, 1, clock)
    bucket.try_acquire()
    done_at: dict[str, int] = {}
    tasks = [start(bucket.acquire(), clock, done_at, str(i)) for i in range(10)]
    await run_until(clock, T0 + 10 * NS_PER_S)
    await asyncio.gather(*tasks)
    assert [done_at[str(i)] for i in range(10)] == [T0 + (i + 1) * 300 * MS for i in range(10)]


async def test_max_wait_refuses_at_once_and_reserves_nothing() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(1.0, 2, clock)
    bucket.try_acquire(2)
    with pytest.raises(RateLimited) as refused:
        await bucket.acquire(2, max_wait_s=1.5)
    err = refused.value
    assert isinstance(err, KestrelError)
    assert (err.n, err.wait_s, err.max_wait_s) == (2, 2.0, 1.5)
    assert "2.000 s" in str(err)
    assert clock.next_deadline_ns() is None  # it did not wait
    clock.advance_to(T0 + 2 * NS_PER_S)
    assert bucket.try_acquire(2)  # and the refused request took nothing


async def test_max_wait_equal_to_the_wait_is_allowed() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(1.0, 1, clock)
    bucket.try_acquire()
    done_at: dict[str, int] = {}
    task = start(bucket.acquire(1, max_wait_s=1.0), clock, done_at, "a")
    await run_until(clock, T0 + 5 * NS_PER_S)
    await task
    assert done_at == {"a": T0 + NS_PER_S}


async def test_an_infinite_max_wait_is_no_limit() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(1.0, 1, clock)
    bucket.try_acquire()
    done_at: dict[str, int] = {}
    task = start(bucket.acquire(1, max_wait_s=float("inf")), clock, done_at, "a")
    await run_until(clock, T0 + 5 * NS_PER_S)
    await task
    assert done_at == {"a": T0 + NS_PER_S}


async def test_max_wait_accounts_for_the_queue_ahead() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(1.0, 1, clock)
    bucket.try_acquire()
    first = asyncio.create_task(bucket.acquire(1, max_wait_s=1.0))  # due at 1 s
    await spin()
    with pytest.raises(RateLimited) as refused:
        await bucket.acquire(1, max_wait_s=1.5)  # would be due at 2 s
    assert refused.value.wait_s == 2.0
    with pytest.raises(RateLimited):
        await bucket.acquire(1, max_wait_s=0)
    await run_until(clock, T0 + NS_PER_S)
    await first


async def test_a_cancelled_last_waiter_gives_its_tokens_back() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(1.0, 2, clock)
    bucket.try_acquire(2)
    done_at: dict[str, int] = {}
    first = start(bucket.acquire(1), clock, done_at, "first")  # due at 1 s
    second = asyncio.create_task(bucket.acquire(1))  # due at 2 s
    await spin()
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    third = start(bucket.acquire(1), clock, done_at, "third")  # takes second's place
    await run_until(clock, T0 + 5 * NS_PER_S)
    await asyncio.gather(first, third)
    assert done_at == {"first": T0 + NS_PER_S, "third": T0 + 2 * NS_PER_S}


async def test_a_cancelled_waiter_with_others_behind_forfeits_its_tokens() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(1.0, 2, clock)
    bucket.try_acquire(2)
    done_at: dict[str, int] = {}
    first = asyncio.create_task(bucket.acquire(1))  # due at 1 s
    second = start(bucket.acquire(1), clock, done_at, "second")  # due at 2 s
    await spin()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    third = start(bucket.acquire(1), clock, done_at, "third")
    await run_until(clock, T0 + 5 * NS_PER_S)
    await asyncio.gather(second, third)
    # Handing the first's token to the third would put two grants at 2 s with burst 2
    # on top of the two taken at 0 s: over the bound. It is forfeited instead.
    assert done_at == {"second": T0 + 2 * NS_PER_S, "third": T0 + 3 * NS_PER_S}


async def test_a_cancelled_waiter_after_its_due_time_keeps_its_tokens_spent() -> None:
    clock = SimClock(T0)
    bucket = TokenBucket(1.0, 1, clock)
    bucket.try_acquire()
    waiter = asyncio.create_task(bucket.acquire())
    await spin()
    clock.advance_to(T0 + NS_PER_S)  # its timer fires; the task has not resumed yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bucket.available == 0.0


# ================================================================ per_minute


def test_per_minute_never_exceeds_n_in_a_minute() -> None:
    clock = SimClock(T0)
    bucket = per_minute(200, clock)
    assert (bucket.burst, bucket.rate_per_s) == (20, 3.0)
    granted = sum(bucket.try_acquire() for _ in range(1000))
    for ms in range(1, 60_000):
        clock.advance_to(T0 + ms * MS)
        granted += bucket.try_acquire()
    assert granted <= 200  # everything granted in [0, 60 s)
    assert granted == 20 + 179  # the 180th refill lands at 60.00000012 s


@pytest.mark.parametrize(("n", "burst"), [(1, None), (10, 10), (10, 0), (10, 11)])
def test_per_minute_refuses_settings_that_cannot_keep_the_promise(n: int, burst: int | None) -> None:
    with pytest.raises(ValueError):
        per_minute(n, SimClock(T0), burst=burst)


def test_per_minute_with_a_chosen_burst() -> None:
    bucket = per_minute(200, SimClock(T0), burst=1)
    assert bucket.burst == 1
    assert bucket.rate_per_s == 199 / 60


# ================================================================ the window bound


_ops = st.lists(
    st.tuples(
        st.one_of(st.just(0), st.sampled_from([1, 250, 500, 1_000]), st.integers(0, 2_000)),  # ms later
        st.sampled_from(["try", "wait", "wait_bounded", "cancel"]),
        st.integers(1, 4),  # tokens asked for (clipped to burst)
        st.integers(0, 3_000),  # max_wait in ms, for wait_bounded
    ),
    max_size=60,
)


async def _grants(
    rate: float, burst: int, ops: list[tuple[int, str, int, int]]
) -> tuple[list[tuple[int, int, str]], int]:
    """Run ``ops``; return the grants as (time, tokens, label) and how many waiters were cancelled."""
    clock = SimClock(T0)
    bucket = TokenBucket(rate, burst, clock)
    grants: list[tuple[int, int, str]] = []  # (time, tokens, kind)
    tasks: list[asyncio.Task[None]] = []

    async def waiter(n: int, max_wait_s: float | None, label: str) -> None:
        try:
            await bucket.acquire(n, max_wait_s)
        except RateLimited:
            return
        grants.append((clock.time_ns(), n, label))

    now = T0
    for gap, kind, n, max_wait_ms in ops:
        now += gap * MS
        await run_until(clock, now)
        if kind == "cancel":  # cancel the n-th newest waiter still waiting, if any
            pending = [task for task in tasks if not task.done()]
            if pending:
                pending[-min(n, len(pending))].cancel()
                await spin()
            continue
        n = min(n, burst)
        if kind == "try":
            if bucket.try_acquire(n):
                grants.append((clock.time_ns(), n, "try"))
        else:
            max_wait_s = max_wait_ms / 1000 if kind == "wait_bounded" else None
            tasks.append(asyncio.create_task(waiter(n, max_wait_s, f"{kind}#{len(tasks)}")))
            await spin()
    while clock.next_deadline_ns() is not None:  # let every waiter finish
        await run_until(clock, clock.next_deadline_ns() or now)
    await asyncio.gather(*tasks, return_exceptions=True)
    return grants, sum(task.cancelled() for task in tasks)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([0.5, 1.0, 200 / 60, 3.0, 7.5, 40.0]),
    burst=st.integers(1, 6),
    ops=_ops,
)
def test_property_no_window_grants_more_than_burst_plus_rate_times_window(
    rate: float, burst: int, ops: list[tuple[int, str, int, int]]
) -> None:
    grants, cancelled = asyncio.run(_grants(rate, burst, ops))
    times = [t for t, _, _ in grants]
    # Waiters are served in the order they asked.
    served = [int(label.split("#")[1]) for _, _, label in grants if label != "try"]
    assert served == sorted(served)
    # Every window [times[i], times[j]] — the tightest window holding those grants.
    for i in range(len(grants)):
        tokens = 0
        for j in range(i, len(grants)):
            tokens += grants[j][1]
            window_s = (times[j] - times[i]) / NS_PER_S
            assert tokens <= burst + rate * window_s + 1e-9, (i, j, grants)
    # Every unbounded waiter that was not cancelled was served.
    assert sum(label.startswith("wait#") for _, _, label in grants) + cancelled >= sum(
        kind == "wait" for _, kind, _, _ in ops
    )
