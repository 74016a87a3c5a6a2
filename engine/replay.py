"""Deterministic replay: feed recorded events through the bus under a :class:`SimClock`.

For each event, in order:

1. fire every timer due before the event's receive time, one deadline at a time,
   letting the actor system settle (``bus.idle()``) after each;
2. set the clock to the event's receive time;
3. optionally wait for the wall clock (``speed`` × real time);
4. publish the event and wait until every consequence of it has been handled.

Because nothing runs concurrently with a settled system, the same events, config and
seed always produce the same sequence of messages, whatever the machine's speed.

Under a :class:`SimClock` the replay turns on the bus's inline delivery for its duration
(:meth:`engine.bus.Bus.set_inline`): the driver publishes with the drain deferred, then
settles the system itself, so an event whose consequences never wait on I/O costs no loop
turn and no task switch at all. The messages, each actor's order of them and hence the
results are the same as with task delivery (see :mod:`engine.bus` for why).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.bus import Bus
from engine.clock import NS_PER_S, LiveClock, SimClock


class Recorded(Protocol):
    @property
    def ts_recv(self) -> int: ...


class Pacer:
    """Holds replay back to ``speed`` × real time (``speed=None``: as fast as possible)."""

    def __init__(self, speed: float, live: LiveClock) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self.live = live
        self._origin: tuple[int, int] | None = None

    async def wait_for(self, sim_ns: int) -> None:
        if self._origin is None:
            self._origin = (sim_ns, self.live.time_ns())
            return
        sim0, wall0 = self._origin
        due = wall0 + int((sim_ns - sim0) / self.speed)
        if due - self.live.time_ns() > NS_PER_S // 1000:
            await self.live.sleep_until(due)


@dataclass(frozen=True)
class ReplayResult:
    events: int
    first_ts_ns: int | None
    last_ts_ns: int | None


async def replay(
    batches: AsyncIterable[Sequence[Recorded]],
    clock: SimClock,
    bus: Bus,
    topic: str,
    pacer: Pacer | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    progress_every: int = 4096,
    inline: bool = True,
) -> ReplayResult:
    """Publish every event of ``batches`` on ``topic``, in order.

    ``inline=False`` keeps task delivery (every hop through the loop): the reference the
    inline path is tested against.
    """
    count = 0
    first: int | None = None
    ts = 0
    inflight = bus.inflight
    wait_idle = inflight.wait_idle
    defer = bus.defer
    settle = bus.settle
    publish = bus.publish
    next_deadline = clock.next_deadline_ns
    advance_to = clock.advance_to
    for_progress = progress_every
    inline = inline and clock.is_simulated
    if inline:
        bus.set_inline(True)
    try:
        async for batch in batches:
            for event in batch:
                ts = event.ts_recv
                deadline = next_deadline()
                while deadline is not None and deadline <= ts:
                    defer()
                    advance_to(deadline)
                    settle()
                    if inflight.count:
                        await wait_idle()
                    deadline = next_deadline()
                advance_to(ts)
                if first is None:
                    first = ts
                if pacer is not None:
                    await pacer.wait_for(ts)
                defer()
                await publish(topic, event)
                settle()
                if inflight.count:
                    await wait_idle()
                count += 1
                for_progress -= 1
                if for_progress == 0:
                    for_progress = progress_every
                    if on_progress is not None:
                        on_progress(count, ts)
    finally:
        if inline:
            bus.set_inline(False)
    return ReplayResult(count, first, ts if count else None)
