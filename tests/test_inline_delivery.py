"""Inline delivery (replay mode): the bus runs handlers itself instead of waking actor tasks.

What must hold (see engine/bus.py): the same messages, each actor's order of them and the
same results as task delivery; a suspended handler keeps its place (nothing overtakes it);
a handler raising inline goes through the supervisor as a crash; no recursion, and a drain
that never ends still yields to the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import bus as bus_module
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import SimClock
from engine.errors import SupervisorGaveUp
from engine.logs import configure_logging, current_message
from engine.replay import replay
from engine.supervisor import ActorSpec, ChildSpec, Supervisor, SupervisorSpec


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    configure_logging(None)
    yield
    configure_logging(None)


@contextlib.asynccontextmanager
async def supervised(bus: Bus, *children: ChildSpec, max_restarts: int = 3) -> AsyncIterator[Supervisor]:
    sup = Supervisor(SupervisorSpec("root", children, max_restarts=max_restarts), bus, SimClock(), random.Random(1))
    task = asyncio.create_task(sup.run())
    started = asyncio.ensure_future(sup.started())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    assert not task.done(), "the supervisor died while starting"
    try:
        yield sup
    finally:
        started.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def spin_until(predicate: Callable[[], bool], turns: int = 200) -> None:
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def drive(bus: Bus, deliveries: Sequence[tuple[str, object]]) -> None:
    """What the replay driver does per event: deliver with the drain deferred, then settle."""
    for address, message in deliveries:
        bus.defer()
        await bus.send(address, message)
        await bus.idle()


class Boom(Exception):
    pass


@dataclass(frozen=True)
class Tick:
    n: tuple[int, int]
    ts_recv: int = 0


# ---------------------------------------------------------------- inline really is inline


class Recorder(Actor):
    def __init__(self, trace: list[tuple[str, object]]) -> None:
        self.trace = trace

    async def handle(self, message: Any) -> Any:
        self.trace.append((self.ctx.address, message))
        return message


async def test_inline_delivery_handles_without_a_loop_turn() -> None:
    bus = Bus()
    trace: list[tuple[str, object]] = []
    async with supervised(bus, ActorSpec("r", lambda: Recorder(trace))):
        bus.set_inline(True)
        bus.defer()
        await bus.send("r", 1)
        assert trace == []  # deferred: queued, not yet run
        bus.settle()  # synchronous: no await, no loop turn
        assert trace == [("r", 1)]
        assert bus.inflight.count == 0
        bus.set_inline(False)


async def test_turning_inline_off_hands_queued_actors_back_to_their_tasks() -> None:
    bus = Bus()
    trace: list[tuple[str, object]] = []
    async with supervised(bus, ActorSpec("r", lambda: Recorder(trace))):
        bus.set_inline(True)
        bus.defer()
        await bus.send("r", "queued")
        bus.set_inline(False)  # nobody will settle: the task must take it
        await bus.idle()
        assert trace == [("r", "queued")]


async def test_requests_are_answered_inline_and_without_a_task_timeout() -> None:
    bus = Bus()
    trace: list[tuple[str, object]] = []
    async with supervised(bus, ActorSpec("r", lambda: Recorder(trace))):
        bus.set_inline(True)
        assert await bus.request("r", "ping", timeout_s=1.0) == "ping"
        bus.set_inline(False)


# ---------------------------------------------------------------- suspension keeps the order


class Suspender(Actor):
    """Waits on a gate for messages named "wait", logs start and end of every message."""

    def __init__(self, trace: list[tuple[str, object]], gate: asyncio.Event) -> None:
        self.trace = trace
        self.gate = gate

    async def handle(self, message: Any) -> Any:
        self.trace.append(("start", message))
        if message == "wait":
            await self.gate.wait()
        self.trace.append(("end", message))
        await self.ctx.publish("out", message)


async def test_nothing_overtakes_a_suspended_inline_handler() -> None:
    bus = Bus()
    trace: list[tuple[str, object]] = []
    downstream: list[tuple[str, object]] = []
    gate = asyncio.Event()

    class Wiring(Actor):
        async def on_start(self) -> None:
            self.ctx.bus.subscribe("out", "down")

        async def handle(self, message: Any) -> Any:
            return None

    async with supervised(
        bus,
        ActorSpec("down", lambda: Recorder(downstream)),
        ActorSpec("s", lambda: Suspender(trace, gate)),
        ActorSpec("wiring", Wiring),
    ):
        bus.set_inline(True)
        bus.defer()
        await bus.send("s", "a")
        await bus.send("s", "wait")
        bus.settle()
        # "a" ran inline; "wait" suspended and was handed to the actor's task.
        assert trace == [("start", "a"), ("end", "a"), ("start", "wait")]
        assert bus.mailbox("s").runner is None
        bus.defer()
        await bus.send("s", "b")
        await bus.send("s", "c")
        bus.settle()
        for _ in range(5):
            await asyncio.sleep(0)
        assert trace == [("start", "a"), ("end", "a"), ("start", "wait")], "b or c overtook the suspended handler"
        assert bus.inflight.count == 3
        gate.set()
        await bus.idle()
        assert trace == [
            ("start", "a"), ("end", "a"),
            ("start", "wait"), ("end", "wait"),
            ("start", "b"), ("end", "b"),
            ("start", "c"), ("end", "c"),
        ]  # fmt: skip
        assert [m for _, m in downstream] == ["a", "wait", "b", "c"]
        # Back to waiting: inline again.
        await drive(bus, [("s", "d")])
        assert trace[-2:] == [("start", "d"), ("end", "d")]
        bus.set_inline(False)


async def test_a_suspended_inline_request_is_answered_by_the_task() -> None:
    bus = Bus()
    trace: list[tuple[str, object]] = []
    gate = asyncio.Event()
    async with supervised(bus, ActorSpec("s", lambda: Suspender(trace, gate))):
        bus.set_inline(True)
        reply = asyncio.ensure_future(bus.request("s", "wait", timeout_s=2.0))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        assert trace == [("start", "wait")]
        gate.set()
        assert await reply is None
        bus.set_inline(False)


async def test_an_actor_cancelled_before_taking_over_a_suspended_handler_leaves_nothing_in_flight() -> None:
    bus = Bus()
    trace: list[tuple[str, object]] = []
    gate = asyncio.Event()
    async with supervised(bus, ActorSpec("s", lambda: Suspender(trace, gate))) as sup:
        bus.set_inline(True)
        task = sup._children[0].task
        assert task is not None
        bus.defer()
        await bus.send("s", "wait")
        bus.settle()  # delivered inline, suspended, handed back: the task is about to wake
        assert trace == [("start", "wait")]
        assert bus.inflight.count == 1
        task.cancel()
        await asyncio.wait_for(bus.idle(), timeout=1.0)
        assert trace == [("start", "wait")]  # abandoned, not finished by anyone
        await spin_until(lambda: sup.stats["s"].starts == 2)  # permanent: restarted
        bus.set_inline(False)


async def test_the_correlation_message_follows_a_handler_into_its_task() -> None:
    bus = Bus()
    seen: list[object] = []
    gate = asyncio.Event()

    class Peek(Actor):
        async def handle(self, message: Any) -> Any:
            seen.append(current_message())
            await gate.wait()
            seen.append(current_message())

    async with supervised(bus, ActorSpec("p", Peek)):
        bus.set_inline(True)
        bus.defer()
        await bus.send("p", "m1")
        bus.settle()
        gate.set()
        await bus.idle()
        assert seen == ["m1", "m1"]
        bus.set_inline(False)


# ---------------------------------------------------------------- crashes are supervised


class Fragile(Actor):
    stops: list[int] = []

    def __init__(self, trace: list[tuple[str, object]]) -> None:
        self.trace = trace

    async def handle(self, message: Any) -> Any:
        if message == "boom":
            raise Boom("inline handler exploded")
        self.trace.append((f"r{self.ctx.restarts}", message))
        return message

    async def on_stop(self) -> None:
        Fragile.stops.append(self.ctx.restarts)


async def test_a_crash_in_an_inline_handler_goes_through_supervision() -> None:
    bus = Bus()
    trace: list[tuple[str, object]] = []
    Fragile.stops = []
    async with supervised(bus, ActorSpec("f", lambda: Fragile(trace))) as sup:
        bus.set_inline(True)
        bus.defer()
        for message in ("a", "boom", "b", "c"):
            await bus.send("f", message)
        bus.settle()
        assert trace == [("r0", "a")]  # the crash handed the actor back; b and c wait in its mailbox
        await bus.idle()  # the restarted instance takes them, in order
        assert trace == [("r0", "a"), ("r1", "b"), ("r1", "c")]
        assert sup.stats["f"].crashes == 1
        assert sup.stats["f"].restarts == 1
        assert Fragile.stops == [0]  # on_stop ran for the crashed instance
        # The new instance is delivered inline once it waits again.
        await drive(bus, [("f", "d")])
        assert trace[-1] == ("r1", "d")
        with pytest.raises(Boom, match="exploded"):
            await bus.request("f", "boom")
        await spin_until(lambda: sup.stats["f"].crashes == 2)
        bus.set_inline(False)


async def test_an_inline_crash_is_logged_like_a_task_crash(tmp_path: Any) -> None:
    log = tmp_path / "log.jsonl"
    configure_logging(log)
    bus = Bus()
    async with supervised(bus, ActorSpec("f", lambda: Fragile([]))):
        bus.set_inline(True)
        await drive(bus, [("f", "boom")])
        await bus.idle()
        for _ in range(20):
            await asyncio.sleep(0)
        bus.set_inline(False)
    text = log.read_text()
    assert '"event":"actor_crashed"' in text
    assert "Boom: inline handler exploded" in text
    assert '"msg_type":"str"' in text  # the crashing message's correlation context


async def test_restart_intensity_still_applies_to_inline_crashes() -> None:
    bus = Bus()
    spec = SupervisorSpec("root", [ActorSpec("f", lambda: Fragile([]))], max_restarts=1)
    sup = Supervisor(spec, bus, SimClock(), random.Random(1))
    task = asyncio.create_task(sup.run())
    await sup.started()
    bus.set_inline(True)
    for _ in range(3):
        if task.done():
            break
        await drive(bus, [("f", "boom")])
        await spin_until(lambda: task.done() or bus.mailbox("f").runner is not None)
    with pytest.raises(SupervisorGaveUp):
        await task
    assert sup.stats["f"].crashes == 2
    bus.set_inline(False)


async def test_ctx_stop_in_an_inline_handler_ends_the_actor_after_that_message() -> None:
    bus = Bus()
    trace: list[tuple[str, object]] = []

    class StopOnX(Actor):
        async def handle(self, message: Any) -> Any:
            trace.append((f"r{self.ctx.restarts}", message))
            if message == "x":
                self.ctx.stop()

    async with supervised(bus, ActorSpec("s", StopOnX)) as sup:
        bus.set_inline(True)
        bus.defer()
        for message in ("a", "x", "b"):
            await bus.send("s", message)
        bus.settle()
        assert trace == [("r0", "a"), ("r0", "x")]
        await bus.idle()  # permanent: restarted, and the new instance takes "b"
        assert trace == [("r0", "a"), ("r0", "x"), ("r1", "b")]
        assert sup.stats["s"].crashes == 0
        bus.set_inline(False)


# ---------------------------------------------------------------- no recursion, bounded drains


class PingPong(Actor):
    def __init__(self, other: str, depths: list[int]) -> None:
        self.other = other
        self.depths = depths

    async def handle(self, message: Any) -> Any:
        self.depths.append(len_stack())
        if message > 0:
            await self.ctx.send(self.other, message - 1)


def len_stack() -> int:
    frame: FrameType | None = sys._getframe()
    depth = 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


async def test_a_long_chain_of_hops_runs_at_constant_stack_depth() -> None:
    bus = Bus()
    depths: list[int] = []
    async with supervised(
        bus, ActorSpec("ping", lambda: PingPong("pong", depths)), ActorSpec("pong", lambda: PingPong("ping", depths))
    ):
        bus.set_inline(True)
        hops = 5 * sys.getrecursionlimit()  # far deeper than any recursive delivery could go
        await drive(bus, [("ping", hops)])
        assert len(depths) == hops + 1
        assert len(set(depths)) == 1, "inline delivery recursed"
        bus.set_inline(False)


async def test_an_endless_drain_yields_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bus_module, "DRAIN_BUDGET", 10)
    bus = Bus()
    depths: list[int] = []
    async with supervised(
        bus, ActorSpec("ping", lambda: PingPong("pong", depths)), ActorSpec("pong", lambda: PingPong("ping", depths))
    ):
        bus.set_inline(True)
        bus.defer()
        await bus.send("ping", 1000)
        bus.settle()
        assert len(depths) == 10  # budget spent: the rest is left for a loop callback
        ticker_ran = asyncio.Event()
        asyncio.get_running_loop().call_soon(ticker_ran.set)
        await bus.idle()
        assert ticker_ran.is_set()
        assert len(depths) == 1001
        bus.set_inline(False)


async def test_backpressure_between_inline_actors_does_not_deadlock() -> None:
    """A handler publishing into a full mailbox suspends; the drain empties it; both finish."""
    bus = Bus()
    got: list[tuple[str, object]] = []

    class Burst(Actor):
        async def handle(self, message: Any) -> Any:
            for i in range(10):
                await self.ctx.send("sink", (message, i))

    async with supervised(bus, ActorSpec("sink", lambda: Recorder(got), capacity=2), ActorSpec("burst", Burst)):
        bus.set_inline(True)
        await drive(bus, [("burst", "x"), ("burst", "y")])
        assert [m for _, m in got] == [("x", i) for i in range(10)] + [("y", i) for i in range(10)]
        bus.set_inline(False)


# ---------------------------------------------------------------- inline == tasks, on random graphs


@dataclass(frozen=True)
class Node:
    topics_out: tuple[str, ...]
    sends_to: tuple[int, ...]
    suspend_on: int  # suspend (a real loop turn) when message % suspend_on == 0; 0: never


class GraphActor(Actor):
    """Forwards a decremented token to its topics and addresses; records every delivery."""

    def __init__(self, node: Node, trace: list[tuple[str, object]], seen: dict[str, list[object]]) -> None:
        self.node = node
        self.trace = trace
        self.seen = seen

    async def handle(self, message: Any) -> Any:
        token, path = message
        address = self.ctx.address
        self.trace.append((address, message))
        self.seen.setdefault(address, []).append(message)
        if self.node.suspend_on and token % self.node.suspend_on == 0:
            await asyncio.sleep(0)
        if token <= 0:
            return None
        for topic in self.node.topics_out:
            await self.ctx.publish(topic, (token - 1, f"{path}>{address}:{topic}"))
        for target in self.node.sends_to:
            await self.ctx.send(f"a{target}", (token - 1, f"{path}>{address}"))
        return None


graphs = st.integers(min_value=2, max_value=6).flatmap(
    lambda n: st.tuples(
        st.just(n),
        # subscriptions: topic index -> subscriber indices (in subscription order)
        st.lists(st.lists(st.integers(0, n - 1), max_size=3, unique=True), min_size=1, max_size=3),
        st.lists(
            st.tuples(
                st.lists(st.integers(0, 2), max_size=2, unique=True),
                st.lists(st.integers(0, n - 1), max_size=2, unique=True),
            ),
            min_size=n,
            max_size=n,
        ),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 3)), min_size=1, max_size=6),
    )
)


async def run_graph(
    n: int,
    subscriptions: list[list[int]],
    wiring: list[tuple[list[int], list[int]]],
    events: list[tuple[int, int]],
    suspend: list[int],
    inline: bool,
) -> tuple[list[tuple[str, object]], dict[str, list[object]]]:
    bus = Bus()
    trace: list[tuple[str, object]] = []
    seen: dict[str, list[object]] = {}
    topic_names = [f"t{i}" for i in range(len(subscriptions))]

    def make(i: int) -> Callable[[], Actor]:
        outs = tuple(topic_names[t] for t in wiring[i][0] if t < len(topic_names))
        node = Node(outs, tuple(wiring[i][1]), suspend[i])
        return lambda: GraphActor(node, trace, seen)

    specs: list[ChildSpec] = [ActorSpec(f"a{i}", make(i), capacity=4096) for i in range(n)]

    class Wire(Actor):
        async def on_start(self) -> None:
            for topic, subscribers in zip(topic_names, subscriptions, strict=True):
                for s in subscribers:
                    self.ctx.bus.subscribe(topic, f"a{s}")
            self.ctx.bus.subscribe("feed", "router")

        async def handle(self, message: Any) -> Any:
            target, token = message.n
            await self.ctx.send(f"a{target}", (token, "feed"))

    specs.append(ActorSpec("router", Wire))

    async def batches() -> AsyncIterator[list[Tick]]:
        yield [Tick((target, token), ts_recv=i) for i, (target, token) in enumerate(events)]

    async with supervised(bus, *specs):
        await replay(batches(), SimClock(), bus, "feed", inline=inline)
        await bus.idle()
    return trace, seen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs)
def test_property_inline_delivery_gives_the_task_delivery_trace(
    graph: tuple[int, list[list[int]], list[tuple[list[int], list[int]]], list[tuple[int, int]]],
) -> None:
    """Without suspension, inline delivery reproduces task delivery's global order exactly."""
    n, subscriptions, wiring, events = graph
    no_suspend = [0] * n
    by_tasks = asyncio.run(run_graph(n, subscriptions, wiring, events, no_suspend, inline=False))
    inline = asyncio.run(run_graph(n, subscriptions, wiring, events, no_suspend, inline=True))
    assert inline[0] == by_tasks[0]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph=graphs, suspend_seed=st.integers(0, 2**32 - 1))
def test_property_inline_delivery_with_suspending_handlers_keeps_each_actors_order(
    graph: tuple[int, list[list[int]], list[tuple[list[int], list[int]]], list[tuple[int, int]]],
    suspend_seed: int,
) -> None:
    """With handlers that suspend (a loop turn), every actor still gets the same messages, and
    inline delivery is deterministic. The interleaving of different senders at one actor is
    not compared: with task delivery it depends on how many loop turns each suspension takes,
    which no delivery order can promise (each sender's own FIFO and "nothing overtakes a
    suspended handler" are tested above)."""
    n, subscriptions, wiring, events = graph
    rng = random.Random(suspend_seed)
    suspend = [rng.choice([0, 1, 2, 3]) for _ in range(n)]
    by_tasks = asyncio.run(run_graph(n, subscriptions, wiring, events, suspend, inline=False))
    inline = asyncio.run(run_graph(n, subscriptions, wiring, events, suspend, inline=True))
    again = asyncio.run(run_graph(n, subscriptions, wiring, events, suspend, inline=True))
    assert inline == again
    assert {a: sorted(map(repr, ms)) for a, ms in inline[1].items()} == {
        a: sorted(map(repr, ms)) for a, ms in by_tasks[1].items()
    }
