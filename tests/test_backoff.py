"""Retry delays: decorrelated jitter for reconnects, full jitter for idempotent retries."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.backoff import DecorrelatedJitter, full_jitter


def delays(jitter: DecorrelatedJitter, count: int) -> list[float]:
    return [jitter.next_delay() for _ in range(count)]


# ================================================================ DecorrelatedJitter


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_invalid_base_and_cap_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        DecorrelatedJitter(base, cap, random.Random(1))


def test_first_delay_is_zero_then_within_base_and_cap() -> None:
    jitter = DecorrelatedJitter(0.05, 5.0, random.Random(7))
    got = delays(jitter, 200)
    assert got[0] == 0.0
    assert all(0.05 <= d <= 5.0 for d in got[1:])
    assert jitter.attempts == 200


def test_without_immediate_first_every_delay_is_within_base_and_cap() -> None:
    jitter = DecorrelatedJitter(0.1, 2.0, random.Random(7), immediate_first=False)
    got = delays(jitter, 100)
    assert all(0.1 <= d <= 2.0 for d in got)


def test_delays_grow_from_base_and_reach_the_cap() -> None:
    jitter = DecorrelatedJitter(0.05, 5.0, random.Random(3))
    got = delays(jitter, 60)
    assert got[1] <= 3 * 0.05  # the first real delay is drawn from [base, 3 × base]
    assert max(got) == 5.0  # min(cap, ...) clamps exactly
    for previous, delay in itertools.pairwise(got[1:]):
        assert delay <= max(3 * previous, 0.05)  # decorrelated: never more than 3 × the last


def test_reset_starts_over_with_an_immediate_retry() -> None:
    jitter = DecorrelatedJitter(0.05, 5.0, random.Random(11))
    delays(jitter, 30)
    jitter.reset()
    assert jitter.attempts == 0
    assert jitter.next_delay() == 0.0
    assert jitter.next_delay() <= 3 * 0.05  # grows from base again, not from the last delay


def test_reset_replays_the_same_sequence_as_a_fresh_jitter_on_the_same_draws() -> None:
    fresh = DecorrelatedJitter(0.05, 5.0, random.Random(5))
    expected = delays(fresh, 10)
    rng = random.Random(5)
    used = DecorrelatedJitter(0.05, 5.0, rng)
    delays(used, 4)
    used.reset()
    rng.seed(5)
    assert delays(used, 10) == expected


def test_same_seed_gives_the_same_delays_and_another_seed_does_not() -> None:
    a = delays(DecorrelatedJitter(0.05, 5.0, random.Random(42)), 50)
    b = delays(DecorrelatedJitter(0.05, 5.0, random.Random(42)), 50)
    c = delays(DecorrelatedJitter(0.05, 5.0, random.Random(43)), 50)
    assert a == b
    assert a != c


def test_equal_base_and_cap_gives_constant_delays() -> None:
    got = delays(DecorrelatedJitter(1.0, 1.0, random.Random(0)), 20)
    assert got == [0.0] + [1.0] * 19


_base_cap = st.tuples(st.floats(1e-4, 10.0, allow_nan=False), st.floats(1.0, 1_000.0, allow_nan=False)).map(
    lambda bc: (bc[0], bc[0] * bc[1])
)  # cap = base × factor >= base


@settings(max_examples=300, deadline=None)
@given(base_cap=_base_cap, seed=st.integers(0, 2**32), count=st.integers(1, 80), immediate=st.booleans())
def test_property_delays_stay_within_bounds_and_repeat_per_seed(
    base_cap: tuple[float, float], seed: int, count: int, immediate: bool
) -> None:
    base, cap = base_cap
    got = delays(DecorrelatedJitter(base, cap, random.Random(seed), immediate_first=immediate), count)
    later = got[1:] if immediate else got
    if immediate:
        assert got[0] == 0.0
    assert all(base <= d <= cap for d in later)
    assert got == delays(DecorrelatedJitter(base, cap, random.Random(seed), immediate_first=immediate), count)


# ================================================================ full_jitter


def test_full_jitter_refuses_a_negative_attempt() -> None:
    with pytest.raises(ValueError):
        full_jitter(-1, 0.05, 2.0, random.Random(1))


def test_full_jitter_ceiling_doubles_per_attempt_until_the_cap() -> None:
    rng = random.Random(9)
    for attempt, ceiling in [(0, 0.05), (1, 0.1), (2, 0.2), (3, 0.4), (5, 1.6), (6, 2.0), (50, 2.0)]:
        got = [full_jitter(attempt, 0.05, 2.0, rng) for _ in range(500)]
        assert all(0.0 <= d <= ceiling for d in got)
        assert max(got) > 0.9 * ceiling  # it does use the whole range


def test_full_jitter_survives_huge_attempt_numbers() -> None:
    assert 0.0 <= full_jitter(10**9, 0.05, 2.0, random.Random(1)) <= 2.0


@settings(max_examples=300, deadline=None)
@given(attempt=st.integers(0, 10_000), base_cap=_base_cap, seed=st.integers(0, 2**32))
def test_property_full_jitter_bounds_and_determinism(
    attempt: int, base_cap: tuple[float, float], seed: int
) -> None:
    base, cap = base_cap
    delay = full_jitter(attempt, base, cap, random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2 ** min(attempt, 30))
    assert delay == full_jitter(attempt, base, cap, random.Random(seed))
