"""The bus: addresses, topics, request/reply and quiescence, with real supervised actors."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from engine.actor import Actor
from engine.bus import Bus
from engine.clock import SimClock
from engine.errors import UnknownAddress
from engine.logs import configure_logging
from engine.mailbox import DROP
from engine.supervisor import ActorSpec, ChildSpec, Supervisor, SupervisorSpec


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    configure_logging(None)
    yield
    configure_logging(None)


async def spin(times: int = 10) -> None:
    for _ in range(times):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def supervised(bus: Bus, *children: ChildSpec) -> AsyncIterator[Supervisor]:
    sup = Supervisor(SupervisorSpec("root", children), bus, SimClock(), random.Random(1))
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


class Boom(Exception):
    pass


# ---------------------------------------------------------------- wiring


def test_register_twice_returns_the_same_mailbox_unchanged() -> None:
    bus = Bus()
    first = bus.register("a", capacity=3)
    first.offer("queued")
    second = bus.register("a", capacity=100, default=DROP)
    assert second is first
    assert second.capacity == 3
    assert len(second) == 1
    assert bus.mailbox("a") is first
    assert dict(bus.mailboxes) == {"a": first}


def test_unknown_address_errors() -> None:
    bus = Bus()
    with pytest.raises(UnknownAddress, match="'ghost'"):
        bus.mailbox("ghost")
    with pytest.raises(UnknownAddress):
        bus.subscribe("t", "ghost")


async def test_send_to_unknown_address_raises() -> None:
    bus = Bus()
    bus.register("a")
    with pytest.raises(UnknownAddress, match="no actor is registered at 'nobody'"):
        await bus.send("nobody", "hi")
    with pytest.raises(UnknownAddress):
        await bus.request("nobody", "hi", timeout_s=0.1)
    assert len(bus.mailbox("a")) == 0
    assert bus.inflight.count == 0


async def test_send_delivers_to_the_addressed_mailbox_only() -> None:
    bus = Bus()
    a = bus.register("a")
    b = bus.register("b")
    await bus.send("a", 1)
    await bus.send("a", 2)
    assert [a.get_nowait(), a.get_nowait()] == [1, 2]
    assert len(b) == 0
    assert bus.inflight.count == 2


async def test_send_waits_when_the_mailbox_is_full() -> None:
    bus = Bus()
    box = bus.register("a", capacity=1)
    await bus.send("a", 1)
    sender = asyncio.create_task(bus.send("a", 2))
    await spin()
    assert not sender.done()
    assert box.get_nowait() == 1
    await spin()
    assert sender.done()
    assert box.get_nowait() == 2


# ---------------------------------------------------------------- topics


async def test_publish_fans_out_to_every_subscriber_in_subscription_order() -> None:
    bus = Bus()
    boxes = {name: bus.register(name, capacity=1 if name == "b" else 8) for name in "abc"}
    bus.subscribe("px", "a")
    bus.subscribe("px", "b")
    bus.subscribe("px", "c")
    bus.subscribe("other", "c")
    assert bus.subscribers("px") == ["a", "b", "c"]

    await bus.publish("px", 1)
    assert [len(boxes[n]) for n in "abc"] == [1, 1, 1]

    # "b" is now full: the publisher delivers to "a", then waits on "b", and only then
    # delivers to "c" — delivery is sequential in subscription order.
    publisher = asyncio.create_task(bus.publish("px", 2))
    await spin()
    assert not publisher.done()
    assert [len(boxes[n]) for n in "abc"] == [2, 1, 1]
    assert boxes["b"].get_nowait() == 1
    await spin()
    assert publisher.done()
    assert [len(boxes[n]) for n in "abc"] == [2, 1, 2]
    assert [boxes["c"].get_nowait(), boxes["c"].get_nowait()] == [1, 2]


async def test_subscription_order_is_kept_not_registration_order() -> None:
    bus = Bus()
    for name in "abc":
        bus.register(name)
    for name in "cab":
        bus.subscribe("t", name)
    assert bus.subscribers("t") == ["c", "a", "b"]


async def test_subscribe_is_idempotent() -> None:
    bus = Bus()
    box = bus.register("a")
    bus.subscribe("t", "a")
    bus.subscribe("t", "a")
    assert bus.subscribers("t") == ["a"]
    await bus.publish("t", "once")
    assert len(box) == 1


async def test_unsubscribe_stops_delivery() -> None:
    bus = Bus()
    a = bus.register("a")
    b = bus.register("b")
    bus.subscribe("t", "a")
    bus.subscribe("t", "b")
    bus.unsubscribe("t", "a")
    assert bus.subscribers("t") == ["b"]
    await bus.publish("t", 1)
    assert (len(a), len(b)) == (0, 1)
    # Unsubscribing what is not subscribed is harmless.
    bus.unsubscribe("t", "a")
    bus.unsubscribe("nope", "a")
    bus.unsubscribe("t", "ghost")
    assert bus.subscribers("t") == ["b"]


async def test_publish_without_subscribers_is_a_no_op() -> None:
    bus = Bus()
    await bus.publish("empty", 1)
    assert bus.subscribers("empty") == []
    assert bus.inflight.count == 0


# ---------------------------------------------------------------- actors


class Echo(Actor):
    def __init__(self) -> None:
        self.count = 0

    async def handle(self, message: Any) -> Any:
        self.count += 1
        if message == "boom":
            raise Boom("echo exploded")
        await asyncio.sleep(0)
        return (message, self.count, self.ctx.restarts)


class Forwarder(Actor):
    """Asks "echo" and answers with what it got back (a request inside a handler)."""

    async def handle(self, message: Any) -> Any:
        reply = await self.ctx.request("echo", message)
        return ("via", reply)


class Stuck(Actor):
    async def handle(self, message: Any) -> Any:
        await asyncio.Event().wait()


async def test_request_reply_through_a_supervised_actor() -> None:
    bus = Bus()
    async with supervised(bus, ActorSpec("echo", Echo), ActorSpec("fwd", Forwarder)):
        assert await bus.request("echo", "hi") == ("hi", 1, 0)
        assert await bus.request("echo", "again") == ("again", 2, 0)
        assert await bus.request("fwd", "x") == ("via", ("x", 3, 0))
        await bus.idle()
        assert bus.inflight.count == 0


async def test_request_to_a_crashing_actor_raises_its_error_and_it_is_restarted() -> None:
    bus = Bus()
    async with supervised(bus, ActorSpec("echo", Echo)) as sup:
        with pytest.raises(Boom, match="echo exploded"):
            await bus.request("echo", "boom")
        # The restarted instance answers (fresh state, restarts == 1).
        assert await bus.request("echo", "after") == ("after", 1, 1)
        assert sup.stats["echo"].crashes == 1


async def test_request_times_out_when_no_reply_comes() -> None:
    bus = Bus()
    async with supervised(bus, ActorSpec("stuck", Stuck, shutdown_timeout_s=0.01)):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(TimeoutError):
            await bus.request("stuck", "anything", timeout_s=0.05)
        elapsed = loop.time() - t0
        assert 0.04 <= elapsed < 1.0


async def test_request_timeout_covers_waiting_for_room_in_a_full_mailbox() -> None:
    """``timeout_s`` bounds the whole request, including backpressure on delivery."""
    bus = Bus()
    async with supervised(bus, ActorSpec("stuck", Stuck, capacity=1, shutdown_timeout_s=0.01)):
        await bus.send("stuck", "first")  # taken: the actor is now stuck handling it
        await spin()
        await bus.send("stuck", "second")  # fills the mailbox
        request = asyncio.create_task(bus.request("stuck", "third", timeout_s=0.05))
        done, _ = await asyncio.wait([request], timeout=1.0)
        if not done:
            request.cancel()
        assert done, "request() ignored its timeout while waiting for room in the mailbox"
        with pytest.raises(TimeoutError):
            request.result()
        # The timed-out request was not delivered.
        assert len(bus.mailbox("stuck")) == 1


class Hop(Actor):
    """Forwards message+1 to the next address after a few scheduling points."""

    def __init__(self, nxt: str | None, journal: list[tuple[str, int]]) -> None:
        self.nxt = nxt
        self.journal = journal

    async def handle(self, message: Any) -> Any:
        for _ in range(3):
            await asyncio.sleep(0)
        self.journal.append((self.ctx.address, message))
        if self.nxt is not None:
            await self.ctx.send(self.nxt, message + 1)
        if self.ctx.address == "h1":
            await self.ctx.publish("fan", message)


async def test_idle_waits_for_a_multi_hop_chain_to_finish() -> None:
    bus = Bus()
    journal: list[tuple[str, int]] = []
    chain = ["h0", "h1", "h2", "h3"]

    def hop(nxt: str | None) -> Callable[[], Actor]:
        return lambda: Hop(nxt, journal)

    specs: list[ChildSpec] = [
        ActorSpec(name, hop(chain[i + 1] if i + 1 < len(chain) else None)) for i, name in enumerate(chain)
    ]
    specs += [ActorSpec(f"leaf{j}", hop(None)) for j in range(2)]

    class Subscribe(Actor):
        async def on_start(self) -> None:
            for j in range(2):
                self.ctx.bus.subscribe("fan", f"leaf{j}")

        async def handle(self, message: Any) -> Any:
            return None

    specs.append(ActorSpec("wiring", Subscribe))
    async with supervised(bus, *specs):
        await bus.idle()  # nothing in flight: returns at once
        await bus.send("h0", 10)
        assert journal == []
        await bus.idle()
        assert journal[:2] == [("h0", 10), ("h1", 11)]
        assert sorted(journal[2:]) == [("h2", 12), ("h3", 13), ("leaf0", 11), ("leaf1", 11)]
        assert bus.inflight.count == 0

        # Twice more, concurrently started chains: idle() covers both.
        journal.clear()
        await bus.send("h0", 100)
        await bus.send("h2", 200)
        await bus.idle()
        assert len(journal) == 8
        assert ("h3", 103) in journal
        assert ("h3", 201) in journal
