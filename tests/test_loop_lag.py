"""Event-loop lag: the histogram's arithmetic, and a real blocking call seen as a stall."""

from __future__ import annotations

import asyncio
import time

import pytest

from engine.clock import LiveClock
from engine.loop_lag import LAG_BUCKETS_S, LoopLagMonitor


def test_histogram_is_cumulative_with_max_sum_and_quantiles() -> None:
    monitor = LoopLagMonitor(LiveClock())
    for lag_ms in (0.5, 0.5, 3, 40, 300):
        monitor.record(round(lag_ms * 1e6))
    monitor.record(-2_000_000)  # woke early: counted as on time
    snap = monitor.snapshot()
    assert snap.samples == 6
    assert snap.max_s == pytest.approx(0.3)
    assert snap.sum_s == pytest.approx(0.344)
    assert snap.over_100ms == 1
    by_bound = dict(zip(LAG_BUCKETS_S, snap.buckets, strict=False))
    assert by_bound[0.001] == 3  # two 0.5 ms and the early one
    assert by_bound[0.005] == 4
    assert by_bound[0.05] == 5
    assert by_bound[0.5] == 6
    assert snap.buckets[-1] == 6  # +Inf
    assert snap.quantile_s(0.5) == 0.001
    assert snap.quantile_s(0.99) == 0.5


def test_a_blocking_call_on_the_loop_is_measured_as_a_stall() -> None:
    async def scenario() -> tuple[float, int, int]:
        monitor = LoopLagMonitor(LiveClock(), interval_s=0.01, report_every_s=60)
        task = asyncio.create_task(monitor.run())
        await asyncio.sleep(0.1)
        calm = monitor.snapshot()
        time.sleep(0.25)  # noqa: ASYNC251 - the stall under test: a blocking call on the loop
        await asyncio.sleep(0.05)
        task.cancel()
        stalled = monitor.snapshot()
        return calm.max_s, stalled.over_100ms, stalled.samples

    calm_max, over_100ms, samples = asyncio.run(scenario())
    assert calm_max < 0.1
    assert over_100ms == 1
    assert samples > 5


def test_rejects_nonsense_intervals() -> None:
    with pytest.raises(ValueError, match="positive"):
        LoopLagMonitor(LiveClock(), interval_s=0)
