"""Actors: one task, one bounded mailbox, private state.

An actor handles one message at a time, so its state needs no locks. It never calls
another actor's methods: it publishes to topics, sends to addresses or makes requests,
all through its :class:`ActorContext`. It reads time and sets timers only through
``ctx.clock``, and draws randomness only from ``ctx.rng`` (forked from the run's seed).

Subclasses implement :meth:`Actor.handle`; :meth:`Actor.on_start` subscribes to topics
and rebuilds state (``ctx.restarts > 0`` tells a restart from the first start).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from engine.bus import Bus
from engine.clock import Clock

if TYPE_CHECKING:
    from engine.logs import Logger


class ActorContext:
    """What an actor may touch: its address, the bus, the clock, its logger and RNG."""

    __slots__ = ("_stop_requested", "address", "bus", "clock", "log", "publish", "restarts", "rng", "send")

    publish: Callable[[str, object], Awaitable[None]]
    """``bus.publish`` itself (bound once: one coroutine frame per publish, not two)."""
    send: Callable[[str, object], Awaitable[None]]
    """``bus.send`` itself."""

    def __init__(
        self, address: str, bus: Bus, clock: Clock, log: Logger, rng: random.Random, restarts: int
    ) -> None:
        self.address = address
        self.bus = bus
        self.clock = clock
        self.log = log
        self.rng = rng
        self.restarts = restarts
        self._stop_requested = False
        self.publish = bus.publish
        self.send = bus.send

    def subscribe(self, topic: str) -> None:
        self.bus.subscribe(topic, self.address)

    async def request(self, address: str, message: object, timeout_s: float = 5.0) -> Any:
        return await self.bus.request(address, message, timeout_s)

    def tell_self_at(self, when_ns: int, message: object, retry_s: float = 0.01) -> None:
        """Put ``message`` in this actor's own mailbox once the engine clock reaches ``when_ns``.

        How an actor runs a timer: the message is handled like any other, one at a time, so
        the handler needs no locking (and under a SimClock it fires at exactly ``when_ns``).
        The mailbox outlives a restart, so a timer set by an earlier incarnation still
        arrives; handlers must treat a timer message as "check now", not as a fact. If the
        mailbox is full the offer is retried every ``retry_s``: a timer is never lost.
        """
        mailbox = self.bus.mailbox(self.address)
        clock = self.clock

        def fire() -> None:
            if not mailbox.offer(message):
                clock.call_later(retry_s, fire)

        clock.call_at(when_ns, fire)

    def stop(self) -> None:
        """End this actor normally after the current message (a *normal exit*)."""
        self._stop_requested = True

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested


class Actor:
    """Base class of every actor. Instances are created fresh on every (re)start."""

    ctx: ActorContext

    async def on_start(self) -> None:
        """Subscribe and (re)build state. Runs before the next sibling starts."""

    async def handle(self, message: Any) -> Any:
        """Handle one message. The return value answers a request; otherwise it is ignored."""
        raise NotImplementedError

    async def on_stop(self) -> None:
        """Release resources. Runs on a normal stop and after a crash."""
