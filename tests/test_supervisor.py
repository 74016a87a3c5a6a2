"""Supervision trees: OTP strategies, restart kinds, intensity, ordered start/stop, logging."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine.actor import Actor
from engine.bus import Bus
from engine.clock import NS_PER_S, SimClock
from engine.errors import SupervisorGaveUp
from engine.logs import configure_logging
from engine.supervisor import (
    ActorSpec,
    ChildSpec,
    Restart,
    Strategy,
    Supervisor,
    SupervisorSpec,
)

T0 = 1_700_000_000 * NS_PER_S


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    configure_logging(None)
    yield
    configure_logging(None)


class Boom(Exception):
    pass


@dataclass(frozen=True)
class Crash:
    """A message that makes a Probe raise; carries a correlation id for the log line."""

    intent_id: str = "I-1"


_instance_ids = itertools.count()


@dataclass
class World:
    """Everything the probes record, shared by all instances of all probes."""

    journal: list[tuple[Any, ...]] = field(default_factory=list)
    live: collections.Counter[str] = field(default_factory=collections.Counter)
    max_live: collections.Counter[str] = field(default_factory=collections.Counter)

    def spec(self, name: str, yields: int = 0, **kwargs: Any) -> ActorSpec:
        return ActorSpec(name, lambda: Probe(self, name, yields), **kwargs)

    def instances(self, name: str) -> list[int]:
        return [e[2] for e in self.journal if e[0] == "start" and e[1] == name]

    def handled(self, name: str) -> list[tuple[int, Any]]:
        return [(e[2], e[3]) for e in self.journal if e[0] == "handle" and e[1] == name]

    def lifecycle(self, since: int = 0) -> list[tuple[str, str]]:
        """(start|stop, name) in the order they happened."""
        return [(e[0], e[1]) for e in self.journal[since:] if e[0] in ("start", "stop")]

    def started_ids(self) -> set[int]:
        return {e[2] for e in self.journal if e[0] == "start"}

    def stopped_ids(self) -> set[int]:
        return {e[2] for e in self.journal if e[0] == "stop"}


class Probe(Actor):
    """An actor that records its life and obeys a few command messages."""

    def __init__(self, world: World, name: str, yields: int) -> None:
        self.world = world
        self.name = name
        self.yields = yields
        self.id = next(_instance_ids)

    async def _yield(self) -> None:
        for _ in range(self.yields):
            await asyncio.sleep(0)

    async def on_start(self) -> None:
        self.world.journal.append(("starting", self.name, self.id))
        await self._yield()
        self.world.live[self.name] += 1
        self.world.max_live[self.name] = max(self.world.max_live[self.name], self.world.live[self.name])
        self.world.journal.append(("start", self.name, self.id, self.ctx.restarts))

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Crash) or message == "crash":
            self.world.journal.append(("crash", self.name, self.id))
            raise Boom(f"{self.name} crashed")
        if message == "exit":
            self.world.journal.append(("exit", self.name, self.id))
            self.ctx.stop()
            return None
        if message == "block":
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.world.journal.append(("cancelled", self.name, self.id))
                raise
        if message == "slow":
            await asyncio.sleep(0.02)
        self.world.journal.append(("handle", self.name, self.id, message))
        return (self.name, self.id)

    async def on_stop(self) -> None:
        self.world.journal.append(("stopping", self.name, self.id))
        await self._yield()
        self.world.live[self.name] -= 1
        self.world.journal.append(("stop", self.name, self.id))


def make_supervisor(
    bus: Bus,
    children: list[ChildSpec],
    clock: SimClock | None = None,
    name: str = "root",
    **kwargs: Any,
) -> Supervisor:
    spec = SupervisorSpec(name, children, **kwargs)
    return Supervisor(spec, bus, clock or SimClock(T0), random.Random(42))


async def start(sup: Supervisor) -> asyncio.Task[None]:
    task = asyncio.create_task(sup.run())
    started = asyncio.ensure_future(sup.started())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    return task


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel the supervisor (a no-op if it already ended) and wait for its shutdown."""
    task.cancel()
    await asyncio.wait([task])


@contextlib.asynccontextmanager
async def running(sup: Supervisor) -> AsyncIterator[asyncio.Task[None]]:
    task = await start(sup)
    assert not task.done(), "the supervisor died while starting"
    try:
        yield task
    finally:
        await stop(task)
    if not task.cancelled() and task.exception() is not None:
        raise AssertionError("the supervisor failed") from task.exception()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 2.0) -> None:
    """Run the loop until ``predicate`` holds (mostly zero-time scheduling steps)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    spins = 0
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        spins += 1
        await asyncio.sleep(0 if spins < 500 else 0.001)


def running_children(sup: Supervisor) -> dict[str, bool]:
    return {c["name"]: c["running"] for c in sup.tree()["children"]}


def stats(sup: Supervisor, name: str) -> tuple[int, int, int]:
    s = sup.stats[name]
    return (s.starts, s.crashes, s.restarts)


# ================================================================ strategies


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec("a"), world.spec("b"), world.spec("c")])
    async with running(sup):
        ids = {n: world.instances(n) for n in "abc"}
        assert all(len(v) == 1 for v in ids.values())
        mark = len(world.journal)

        await bus.send("b", "crash")
        await bus.send("b", "ping")
        await bus.send("a", "ping")
        await bus.send("c", "ping")
        await bus.idle()

        assert world.instances("a") == ids["a"]
        assert world.instances("c") == ids["c"]
        assert len(world.instances("b")) == 2
        new_b = world.instances("b")[1]
        assert world.handled("b") == [(new_b, "ping")]
        assert world.handled("a") == [(ids["a"][0], "ping")]
        assert world.handled("c") == [(ids["c"][0], "ping")]
        assert world.lifecycle(mark) == [("stop", "b"), ("start", "b")]
        assert stats(sup, "a") == (1, 0, 0)
        assert stats(sup, "b") == (2, 1, 1)
        assert stats(sup, "c") == (1, 0, 0)
        assert running_children(sup) == {"a": True, "b": True, "c": True}


async def test_rest_for_one_restarts_crashed_child_and_later_ones_in_order() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec(n, yields=3) for n in "abcd"], strategy=Strategy.REST_FOR_ONE)
    async with running(sup) as task:
        first_a = world.instances("a")
        mark = len(world.journal)
        await bus.send("b", "crash")
        await bus.send("b", "ping")
        await bus.idle()
        await wait_until(lambda: len(world.instances("d")) == 2)

        # b stopped itself by crashing; d then c are stopped (reverse); b, c, d restart in order.
        assert world.lifecycle(mark) == [
            ("stop", "b"),
            ("stop", "d"),
            ("stop", "c"),
            ("start", "b"),
            ("start", "c"),
            ("start", "d"),
        ]
        assert world.instances("a") == first_a
        assert stats(sup, "a") == (1, 0, 0)
        assert stats(sup, "b") == (2, 1, 1)
        assert stats(sup, "c") == (2, 0, 1)
        assert stats(sup, "d") == (2, 0, 1)

        mark = len(world.journal)
        await stop(task)
        assert world.lifecycle(mark) == [("stop", "d"), ("stop", "c"), ("stop", "b"), ("stop", "a")]


async def test_rest_for_one_crash_of_last_child_touches_nobody_else() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec(n) for n in "abc"], strategy=Strategy.REST_FOR_ONE)
    async with running(sup):
        mark = len(world.journal)
        await bus.send("c", "crash")
        await bus.send("c", "ping")
        await bus.idle()
        assert world.lifecycle(mark) == [("stop", "c"), ("start", "c")]
        assert [stats(sup, n)[0] for n in "abc"] == [1, 1, 2]


async def test_one_for_all_restarts_every_child() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec(n, yields=2) for n in "abc"], strategy=Strategy.ONE_FOR_ALL)
    async with running(sup) as task:
        mark = len(world.journal)
        await bus.send("b", "crash")
        await bus.send("b", "ping")
        await bus.idle()
        await wait_until(lambda: len(world.instances("c")) == 2)
        assert world.lifecycle(mark) == [
            ("stop", "b"),
            ("stop", "c"),
            ("stop", "a"),
            ("start", "a"),
            ("start", "b"),
            ("start", "c"),
        ]
        assert [stats(sup, n) for n in "abc"] == [(2, 0, 1), (2, 1, 1), (2, 0, 1)]
        # The ping queued behind the crash was handled by b's new instance.
        assert world.handled("b") == [(world.instances("b")[1], "ping")]

        mark = len(world.journal)
        await stop(task)
        assert world.lifecycle(mark) == [("stop", "c"), ("stop", "b"), ("stop", "a")]


async def test_one_for_all_does_not_restart_a_temporary_sibling() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(
        bus,
        [world.spec("perm"), world.spec("tmp", restart=Restart.TEMPORARY)],
        strategy=Strategy.ONE_FOR_ALL,
    )
    async with running(sup):
        await bus.send("perm", "crash")
        await bus.send("perm", "ping")
        await bus.idle()
        assert len(world.instances("perm")) == 2
        assert len(world.instances("tmp")) == 1
        assert world.stopped_ids() >= set(world.instances("tmp"))
        assert running_children(sup) == {"perm": True, "tmp": False}


# ================================================================ restart kinds


async def test_permanent_child_is_restarted_after_crash_and_after_normal_exit() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec("p")])
    async with running(sup):
        await bus.send("p", "exit")
        await bus.send("p", "ping")
        await bus.idle()
        assert stats(sup, "p") == (2, 0, 1)
        assert world.handled("p") == [(world.instances("p")[1], "ping")]

        await bus.send("p", "crash")
        await bus.send("p", "ping")
        await bus.idle()
        assert stats(sup, "p") == (3, 1, 2)
        assert world.handled("p")[-1] == (world.instances("p")[2], "ping")


async def test_transient_child_is_restarted_after_crash_only() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(
        bus,
        [world.spec("t_exit", restart=Restart.TRANSIENT), world.spec("t_crash", restart=Restart.TRANSIENT)],
    )
    async with running(sup):
        await bus.send("t_crash", "crash")
        await bus.send("t_crash", "ping")
        await bus.send("t_exit", "exit")
        await bus.idle()
        await wait_until(lambda: not running_children(sup)["t_exit"])
        await asyncio.sleep(0.01)  # give a (wrong) restart every chance to happen
        assert stats(sup, "t_crash") == (2, 1, 1)
        assert stats(sup, "t_exit") == (1, 0, 0)
        assert running_children(sup) == {"t_exit": False, "t_crash": True}
        assert world.handled("t_crash") == [(world.instances("t_crash")[1], "ping")]
        assert world.stopped_ids() >= set(world.instances("t_exit"))


async def test_temporary_child_is_never_restarted() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(
        bus,
        [
            world.spec("tmp_crash", restart=Restart.TEMPORARY),
            world.spec("tmp_exit", restart=Restart.TEMPORARY),
            world.spec("other"),
        ],
    )
    async with running(sup) as task:
        await bus.send("tmp_crash", "crash")
        await bus.send("tmp_exit", "exit")
        await bus.idle()
        await wait_until(lambda: not any(running_children(sup)[n] for n in ("tmp_crash", "tmp_exit")))
        await asyncio.sleep(0.01)
        assert stats(sup, "tmp_crash") == (1, 1, 0)
        assert stats(sup, "tmp_exit") == (1, 0, 0)
        assert running_children(sup) == {"tmp_crash": False, "tmp_exit": False, "other": True}
        assert not task.done()
        # The survivor still works.
        await bus.send("other", "ping")
        await bus.idle()
        assert world.handled("other") == [(world.instances("other")[0], "ping")]


# ================================================================ intensity


async def test_exceeding_restart_intensity_gives_up_and_stops_every_child() -> None:
    bus, world = Bus(), World()
    clock = SimClock(T0)
    children: list[ChildSpec] = [world.spec("a"), world.spec("b"), world.spec("c")]
    sup = make_supervisor(bus, children, clock, max_restarts=2, period_s=10)
    task = await start(sup)
    for _ in range(3):
        await bus.send("b", "crash")
    with pytest.raises(SupervisorGaveUp) as info:
        await asyncio.wait_for(task, 2.0)

    error = info.value
    assert error.supervisor == "root"
    assert error.restarts == 2
    assert error.period_s == 10
    assert isinstance(error.last_error, Boom)
    assert "more than 2 restarts in 10 s" in str(error)
    assert stats(sup, "b") == (3, 3, 2)
    # Every instance that ever started has been stopped (on_stop ran), siblings included.
    assert world.started_ids() == world.stopped_ids()
    assert len(world.started_ids()) == 5
    assert running_children(sup) == {"a": False, "b": False, "c": False}
    assert sum(world.live.values()) == 0


async def test_restarts_outside_the_intensity_window_are_forgotten() -> None:
    bus, world = Bus(), World()
    clock = SimClock(T0)
    sup = make_supervisor(bus, [world.spec("w")], clock, max_restarts=2, period_s=10)
    task = await start(sup)
    try:
        for _ in range(2):
            await bus.send("w", "crash")
        await bus.send("w", "ping")
        await bus.idle()
        assert stats(sup, "w") == (3, 2, 2)

        clock.advance_to(T0 + 10 * NS_PER_S)  # the two restarts at T0 leave the window
        for _ in range(2):
            await bus.send("w", "crash")
        await bus.send("w", "ping")
        await bus.idle()
        assert not task.done()
        assert stats(sup, "w") == (5, 4, 4)

        # A third restart at the same instant is one too many.
        await bus.send("w", "crash")
        with pytest.raises(SupervisorGaveUp):
            await asyncio.wait_for(task, 2.0)
    finally:
        await stop(task)


async def test_intensity_window_boundary_just_inside_gives_up() -> None:
    bus, world = Bus(), World()
    clock = SimClock(T0)
    sup = make_supervisor(bus, [world.spec("w")], clock, max_restarts=2, period_s=10)
    task = await start(sup)
    try:
        for _ in range(2):
            await bus.send("w", "crash")
        await bus.send("w", "ping")
        await bus.idle()
        clock.advance_to(T0 + 10 * NS_PER_S - 1)  # still within 10 s of the first restart
        await bus.send("w", "crash")
        with pytest.raises(SupervisorGaveUp):
            await asyncio.wait_for(task, 2.0)
        assert world.started_ids() == world.stopped_ids()
    finally:
        await stop(task)


async def test_child_failing_in_on_start_makes_the_supervisor_give_up() -> None:
    class CannotStart(Actor):
        async def on_start(self) -> None:
            raise Boom("no connection")

        async def handle(self, message: Any) -> Any:
            return None

    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec("ok"), ActorSpec("bad", CannotStart)], max_restarts=3)
    with pytest.raises(SupervisorGaveUp) as info:
        await asyncio.wait_for(sup.run(), 2.0)
    assert isinstance(info.value.last_error, Boom)
    assert stats(sup, "bad") == (4, 4, 3)
    assert world.started_ids() == world.stopped_ids()


async def test_nested_supervisor_giving_up_is_a_crashed_child_of_its_parent() -> None:
    bus, world = Bus(), World()
    clock = SimClock(T0)
    inner = SupervisorSpec("inner", [world.spec("w1"), world.spec("w2")], max_restarts=1, period_s=60)
    sup = make_supervisor(bus, [world.spec("x"), inner], clock, max_restarts=5)
    async with running(sup):
        first_x = world.instances("x")
        await bus.send("w1", "crash")  # inner restarts w1
        await bus.send("w1", "crash")  # second restart within 60 s: inner gives up
        await bus.send("w1", "ping")  # handled once the parent has restarted inner
        await bus.idle()
        await wait_until(lambda: len(world.instances("w2")) == 2)

        assert stats(sup, "inner") == (2, 1, 1)
        assert stats(sup, "x") == (1, 0, 0)
        assert world.instances("x") == first_x
        w1 = world.instances("w1")
        assert len(w1) == 3  # original, restarted by inner, started by the new inner
        assert world.handled("w1") == [(w1[2], "ping")]
        # Giving up stopped w2 as well; the new inner started a fresh one.
        assert len(world.instances("w2")) == 2
        assert world.stopped_ids() >= set(world.instances("w2")[:1])
        assert max(world.max_live.values()) == 1

        tree = sup.tree()
        inner_view = tree["children"][1]
        assert inner_view["name"] == "inner"
        assert inner_view["crashes"] == 1
        assert [c["name"] for c in inner_view["children"]] == ["w1", "w2"]
        assert all(c["running"] for c in inner_view["children"])


async def test_nested_give_up_escalates_to_the_root_when_the_root_cannot_restart() -> None:
    bus, world = Bus(), World()
    inner = SupervisorSpec("inner", [world.spec("w")], max_restarts=0)
    sup = make_supervisor(bus, [world.spec("x"), inner], max_restarts=0)
    task = await start(sup)
    await bus.send("w", "crash")
    with pytest.raises(SupervisorGaveUp) as info:
        await asyncio.wait_for(task, 2.0)
    assert info.value.supervisor == "root"
    nested = info.value.last_error
    assert isinstance(nested, SupervisorGaveUp)
    assert nested.supervisor == "root/inner"
    assert isinstance(nested.last_error, Boom)
    assert world.started_ids() == world.stopped_ids()


# ================================================================ start / stop


async def test_children_start_in_order_and_stop_in_reverse_order() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec(n, yields=5) for n in "abcd"])
    task = await start(sup)
    try:
        # on_start of child i completes before child i+1's on_start begins.
        assert [(e[0], e[1]) for e in world.journal] == [
            (kind, n) for n in "abcd" for kind in ("starting", "start")
        ]
        assert not task.done()
    finally:
        mark = len(world.journal)
        await stop(task)
    # on_stop of the later child completes before the earlier one is asked to stop.
    assert [(e[0], e[1]) for e in world.journal[mark:]] == [
        (kind, n) for n in "dcba" for kind in ("stopping", "stop")
    ]


async def test_started_waits_for_every_on_start() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec(n, yields=20) for n in "ab"])
    task = asyncio.create_task(sup.run())
    try:
        await sup.started()
        assert [e[1] for e in world.journal if e[0] == "start"] == ["a", "b"]
    finally:
        await stop(task)


async def test_stop_lets_the_current_message_finish_within_the_timeout() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec("w", shutdown_timeout_s=1.0)])
    task = await start(sup)
    await bus.send("w", "slow")  # takes ~20 ms
    await bus.send("w", "later")
    await wait_until(lambda: bus.mailbox("w").depth == 1)  # "slow" is being handled
    await stop(task)
    assert [m for _, m in world.handled("w")] == ["slow"]
    kinds = [e[0] for e in world.journal]
    assert kinds.index("handle") < kinds.index("stop")
    # The unhandled message is still queued at the address.
    assert bus.mailbox("w").get_nowait() == "later"


async def test_actor_stuck_longer_than_shutdown_timeout_is_cancelled() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(
        bus, [world.spec("a"), world.spec("stuck", shutdown_timeout_s=0.05), world.spec("c")]
    )
    task = await start(sup)
    await bus.send("stuck", "block")
    await wait_until(lambda: bus.mailbox("stuck").depth == 0)
    await asyncio.sleep(0)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    mark = len(world.journal)
    await stop(task)
    elapsed = loop.time() - t0
    assert 0.045 <= elapsed < 1.0
    assert [(e[0], e[1]) for e in world.journal[mark:] if e[0] in ("stop", "cancelled")] == [
        ("stop", "c"),
        ("cancelled", "stuck"),
        ("stop", "stuck"),  # on_stop still runs after cancellation
        ("stop", "a"),
    ]
    assert world.started_ids() == world.stopped_ids()
    assert bus.inflight.count == 0


# ================================================================ mailboxes across restarts


async def test_queued_messages_survive_the_actor_restart() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec("w")])
    async with running(sup):
        for message in (1, 2, "crash", 3, 4, 5):
            await bus.send("w", message)
        await bus.idle()
        first, second = world.instances("w")
        assert world.handled("w") == [(first, 1), (first, 2), (second, 3), (second, 4), (second, 5)]
        # The message that crashed the actor is not retried.
        assert [e for e in world.journal if e[0] == "crash"] == [("crash", "w", first)]
        assert stats(sup, "w") == (2, 1, 1)


async def test_messages_queued_for_a_sibling_stopped_by_the_strategy_survive() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec("a"), world.spec("b")], strategy=Strategy.REST_FOR_ONE)
    async with running(sup):
        await bus.send("b", "slow")
        await bus.send("b", 1)
        await bus.send("b", 2)
        await bus.send("a", "crash")
        await bus.idle()
        b0, b1 = world.instances("b")
        assert world.handled("b") == [(b0, "slow"), (b1, 1), (b1, 2)]


async def test_ctx_restarts_counts_restarts() -> None:
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec("w")], max_restarts=10)
    async with running(sup):
        for _ in range(3):
            await bus.send("w", "crash")
        await bus.send("w", "ping")
        await bus.idle()
    assert [e[3] for e in world.journal if e[0] == "start"] == [0, 1, 2, 3]


# ================================================================ crash logging


async def test_every_crash_is_logged_with_its_traceback_and_counted(tmp_path: Path) -> None:
    log_path = tmp_path / "logs" / "kestrel.jsonl"
    configure_logging(log_path, level="info")
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec("w")])
    async with running(sup):
        await bus.send("w", Crash("I-7"))
        await bus.send("w", "crash")
        await bus.send("w", "ping")
        await bus.idle()
        assert sup.stats["w"].crashes == 2
    configure_logging(None)

    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    crashed = [line for line in lines if line["event"] == "actor_crashed"]
    assert len(crashed) == 2
    for line in crashed:
        assert line["actor"] == "w"
        assert line["level"] == "error"
        assert "Traceback" in line["exception"]
        assert "Boom: w crashed" in line["exception"]
        assert "in handle" in line["exception"]
    assert crashed[0]["intent_id"] == "I-7"
    assert crashed[0]["msg_type"] == "Crash"
    assert crashed[1]["msg_type"] == "str"

    child_crashed = [line for line in lines if line["event"] == "child_crashed"]
    assert [line["crashes"] for line in child_crashed] == [1, 2]
    assert all(line["child"] == "w" and line["actor"] == "root" for line in child_crashed)
    assert [line["restarts"] for line in lines if line["event"] == "actor_restarted"] == [1, 2]


async def test_give_up_is_logged_as_critical(tmp_path: Path) -> None:
    log_path = tmp_path / "k.jsonl"
    configure_logging(log_path)
    bus, world = Bus(), World()
    sup = make_supervisor(bus, [world.spec("w")], max_restarts=0)
    task = await start(sup)
    await bus.send("w", "crash")
    with pytest.raises(SupervisorGaveUp):
        await asyncio.wait_for(task, 2.0)
    configure_logging(None)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    gave_up = [line for line in lines if line["event"] == "supervisor_gave_up"]
    assert len(gave_up) == 1
    assert gave_up[0]["level"] == "critical"
    assert "'root' gave up" in gave_up[0]["error"]


# ================================================================ tree view


async def test_tree_view_reports_structure_and_counts() -> None:
    bus, world = Bus(), World()
    inner = SupervisorSpec(
        "feeds",
        [world.spec("f1"), world.spec("f2", restart=Restart.TEMPORARY)],
        strategy=Strategy.REST_FOR_ONE,
    )
    sup = make_supervisor(bus, [world.spec("risk"), inner], strategy=Strategy.ONE_FOR_ONE)
    async with running(sup):
        await bus.send("risk", "crash")
        await bus.send("risk", "ping")
        await bus.send("f2", "exit")
        await bus.idle()
        await wait_until(lambda: not sup.tree()["children"][1]["children"][1]["running"])
        assert sup.tree() == {
            "name": "root",
            "strategy": "one_for_one",
            "children": [
                {"name": "risk", "running": True, "starts": 2, "crashes": 1, "restarts": 1},
                {
                    "name": "feeds",
                    "running": True,
                    "starts": 1,
                    "crashes": 0,
                    "restarts": 0,
                    "children": [
                        {"name": "f1", "running": True, "starts": 1, "crashes": 0, "restarts": 0},
                        {"name": "f2", "running": False, "starts": 1, "crashes": 0, "restarts": 0},
                    ],
                },
            ],
        }
    assert all(not c["running"] for c in sup.tree()["children"])


# ================================================================ simultaneous crashes


@pytest.mark.parametrize("strategy", [Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE])
async def test_siblings_crashing_together_never_leave_a_duplicate_instance(strategy: Strategy) -> None:
    """Two or more children crash on the same published message.

    The supervisor stops and restarts the later ones because of the first crash; the
    exit notices of their *old* instances, still queued, must not be taken as crashes of
    the new instances (which would start a second instance reading the same mailbox and
    leave the first running unsupervised).
    """
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))

    class Subscriber(Probe):
        async def on_start(self) -> None:
            self.ctx.subscribe("all")
            await super().on_start()

    bus, world = Bus(), World()
    names = ["a", "b", "c"]

    def subscriber(name: str) -> Callable[[], Actor]:
        return lambda: Subscriber(world, name, 0)

    sup = make_supervisor(
        bus,
        [ActorSpec(n, subscriber(n)) for n in names],
        strategy=strategy,
        max_restarts=20,
    )
    try:
        async with running(sup):
            await bus.publish("all", "crash")
            await bus.publish("all", "crash")
            await bus.publish("all", "ping")
            await bus.idle()
            await wait_until(lambda: all(running_children(sup).values()))
            await asyncio.sleep(0.01)

            assert max(world.max_live.values()) == 1, f"two live instances at once: {world.max_live}"
            for n in names:
                # Exactly one instance is alive, and it is the one that handled the ping.
                assert world.live[n] == 1
                assert world.handled(n) == [(world.instances(n)[-1], "ping")]
                assert sup.stats[n].crashes == 2, sup.stats
        assert world.started_ids() == world.stopped_ids(), "an instance was left running"
        assert loop_errors == []
    finally:
        loop.set_exception_handler(None)
