"""Bounded actor mailboxes with an explicit policy per message kind.

A mailbox belongs to an actor's *address*, not to the task running the actor: when a
supervisor restarts the actor, the new instance reads the same mailbox, so nothing
queued for it is lost.

What happens to a message that arrives when the mailbox is full is decided per
message type, never implicitly:

- :attr:`Delivery.BACKPRESSURE` (the default, and the only sane choice on the order
  path): the sender waits until there is room. Nothing is ever dropped.
- :attr:`Delivery.DROP`: the message is discarded and counted in ``dropped``.
- :attr:`Delivery.CONFLATE`: at most one message per key waits in the mailbox; a newer
  one replaces the waiting one in place (``conflated`` counts replacements). Market data
  wants this: a consumer that fell behind sees the latest price per symbol, not a
  backlog. Conflatable messages are bounded by the number of distinct keys, so they
  never wait for room and never block a feed.

Why not ``asyncio.Queue`` or an anyio memory stream: the mailbox needs the policies
above and a count of messages in flight (for :meth:`engine.bus.Bus.idle`), and a
plain deque with one waiter future is as fast as ``asyncio.Queue``
(see ``benchmarks/bench_bus.py``); awaiting anyio's ``send()`` per message costs ~12×.

**Inline delivery** (see :mod:`engine.bus`): a reader waiting in :meth:`Mailbox.wait`
leaves a *runner* behind. While the mailbox's :class:`RunQueue` is enabled, a message for
a waiting reader does not wake its task: the mailbox is appended to the run queue instead
(once: ``_scheduled``), and the bus runs the reader's handler itself. The reader's task
stays parked on its future until the runner hands the actor back (a handler suspended,
crashed or asked to stop) — so at any moment exactly one of {task, run queue} owns the
actor, and the mailbox's FIFO decides the order of its messages either way.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from engine.errors import MailboxClosed


class Delivery(enum.Enum):
    BACKPRESSURE = "backpressure"
    DROP = "drop"
    CONFLATE = "conflate"


@dataclass(frozen=True, slots=True)
class Policy:
    """How a mailbox treats one message type when it is full (or, for CONFLATE, busy)."""

    delivery: Delivery
    key: Callable[[Any], Hashable] | None = None

    def __post_init__(self) -> None:
        if (self.delivery is Delivery.CONFLATE) != (self.key is not None):
            raise ValueError("a CONFLATE policy needs a key function, and only CONFLATE takes one")


# Enum member access (``Delivery.CONFLATE``) costs ~70 ns on CPython 3.11, as much as
# the rest of an offer; the hot paths compare against these module constants instead.
_CONFLATE: Final = Delivery.CONFLATE
_DROP: Final = Delivery.DROP

BACKPRESSURE: Final = Policy(Delivery.BACKPRESSURE)
DROP: Final = Policy(Delivery.DROP)


def conflate_by(key: Callable[[Any], Hashable]) -> Policy:
    return Policy(Delivery.CONFLATE, key)


class InflightCounter:
    """Counts messages accepted by any mailbox and not yet fully handled.

    The bus uses it to tell when the whole actor system is quiescent, which is what lets
    a replay advance simulated time deterministically.
    """

    __slots__ = ("_waiters", "count")

    def __init__(self) -> None:
        self.count = 0
        self._waiters: list[asyncio.Future[None]] = []

    def done(self) -> None:
        self.count -= 1
        if self.count == 0 and self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def wait_idle(self) -> None:
        if self.count == 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


class RunQueue:
    """Mailboxes whose parked readers have messages, in the order they became ready.

    Shared by every mailbox of one bus. ``enabled`` turns inline delivery on (replay under
    a :class:`~engine.clock.SimClock` only); ``kick`` schedules a drain on the loop, and is
    skipped while ``draining`` (the running drain will get there) or ``deferred`` (the
    replay driver promised to drain before it yields: see :meth:`engine.bus.Bus.settle`).
    """

    __slots__ = ("deferred", "draining", "enabled", "kick", "ready")

    def __init__(self, kick: Callable[[], None] | None = None) -> None:
        self.enabled = False
        self.deferred = False
        self.draining = False
        self.ready: deque[Mailbox] = deque()
        self.kick: Callable[[], None] = kick if kick is not None else _no_kick


def _no_kick() -> None:
    """A run queue without a bus: nothing drains it, so nothing may be enabled on it."""


class _Slot:
    """A conflatable message's place in the queue; replaced in place by newer ones."""

    __slots__ = ("key", "message")

    def __init__(self, key: Hashable, message: object) -> None:
        self.key = key
        self.message = message


class Wakeup:
    """Returned by :meth:`Mailbox.get` when the reader was interrupted (e.g. to stop)."""


WAKEUP: Final = Wakeup()


class Mailbox:
    """A bounded FIFO for one consumer and any number of producers."""

    __slots__ = (
        "_closed",
        "_default",
        "_getter",
        "_items",
        "_may_conflate",
        "_pending_keys",
        "_policies",
        "_putters",
        "_runq",
        "_scheduled",
        "address",
        "capacity",
        "conflated",
        "dropped",
        "high_water",
        "inflight",
        "runner",
    )

    def __init__(
        self,
        address: str,
        capacity: int,
        inflight: InflightCounter,
        policies: Mapping[type, Policy] | None = None,
        default: Policy = BACKPRESSURE,
        runq: RunQueue | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"mailbox capacity must be >= 1, got {capacity}")
        self.address = address
        self.capacity = capacity
        self.inflight = inflight
        self._policies: dict[type, Policy] = dict(policies or {})
        self._default = default
        # Policies are fixed at construction: without a CONFLATE one, no message needs a
        # policy lookup until the mailbox is full, and _pending_keys stays empty.
        self._may_conflate = default.delivery is _CONFLATE or any(
            p.delivery is _CONFLATE for p in self._policies.values()
        )
        self._items: deque[object] = deque()
        self._pending_keys: dict[Hashable, _Slot] = {}
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()
        self._closed = False
        self._runq = runq if runq is not None else RunQueue()
        self._scheduled = False
        self.runner: Any = None
        """Set while the reader waits in :meth:`wait`: what the bus runs for inline delivery."""
        self.dropped = 0
        self.conflated = 0
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def depth(self) -> int:
        return len(self._items)

    def _bounded_len(self) -> int:
        return len(self._items) - len(self._pending_keys)

    def _append(self, item: object) -> None:
        items = self._items
        items.append(item)
        self.inflight.count += 1
        if len(items) > self.high_water:
            self.high_water = len(items)
        if self._getter is not None and not self._scheduled:
            self._wake()

    def _wake(self) -> None:
        """A message arrived for a waiting reader: schedule it inline, or wake its task."""
        runq = self._runq
        if runq.enabled and self.runner is not None:
            self._scheduled = True
            runq.ready.append(self)
            if not (runq.draining or runq.deferred):
                runq.kick()
            return
        getter = self._getter
        self._getter = None
        if getter is not None and not getter.done():
            getter.set_result(None)

    def offer(self, message: object) -> bool:
        """Deliver without waiting. False means: full, and the policy is backpressure."""
        if self._closed:
            raise MailboxClosed(f"mailbox {self.address!r} is closed")
        items = self._items
        if self._may_conflate:
            policy = self._policies.get(type(message), self._default)
            if policy.delivery is _CONFLATE:
                key = policy.key(message)  # type: ignore[misc]
                slot = self._pending_keys.get(key)
                if slot is not None:
                    slot.message = message
                    self.conflated += 1
                    return True
                slot = _Slot(key, message)
                self._pending_keys[key] = slot
                self._append(slot)
                return True
            bounded = len(items) - len(self._pending_keys)
        else:
            bounded = len(items)
        if bounded < self.capacity:
            # _append, inlined: this is the hot path of every send and publish.
            items.append(message)
            self.inflight.count += 1
            depth = len(items)
            if depth > self.high_water:
                self.high_water = depth
            if self._getter is not None and not self._scheduled:
                self._wake()
            return True
        if self._policies.get(type(message), self._default).delivery is _DROP:
            self.dropped += 1
            return True
        return False

    async def put(self, message: object) -> None:
        """Deliver, waiting for room when the policy says backpressure."""
        while not self.offer(message):
            putter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._putters.append(putter)
            try:
                await putter
            except asyncio.CancelledError:
                if putter in self._putters:
                    self._putters.remove(putter)
                elif self._putters and self._bounded_len() < self.capacity:
                    # We were woken for a free place we will not use: pass it on.
                    nxt = self._putters.popleft()
                    if not nxt.done():
                        nxt.set_result(None)
                raise

    def get_nowait(self) -> object:
        """Take the oldest message; raises IndexError when empty."""
        item = self._items.popleft()
        if type(item) is _Slot:
            del self._pending_keys[item.key]
            item = item.message
        elif self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_result(None)
        return item

    async def get(self) -> object:
        """Take the oldest message, waiting for one; :data:`WAKEUP` if interrupted."""
        if self._items:
            return self.get_nowait()
        getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._getter = getter
        try:
            await getter
        finally:
            if self._getter is getter:
                self._getter = None
        if self._items:
            return self.get_nowait()
        return WAKEUP

    async def wait(self, runner: object) -> None:
        """Wait for a message (or an interrupt), leaving ``runner`` for inline delivery.

        Returns without taking anything: the caller looks at its mailbox and at what the
        runner handed back. Used by the actor runtime's loop instead of :meth:`get`.
        """
        if self._items:
            return
        getter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._getter = getter
        self.runner = runner
        try:
            await getter
        finally:
            self.runner = None
            if self._getter is getter:
                self._getter = None

    def hand_back(self) -> None:
        """End inline delivery to this mailbox's reader and wake its task (see :meth:`wait`)."""
        self.runner = None
        self._scheduled = False
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    def interrupt(self) -> None:
        """Wake a waiting reader without a message (it gets :data:`WAKEUP`)."""
        self.runner = None
        getter = self._getter
        if getter is not None:
            self._getter = None
            if not getter.done():
                getter.set_result(None)

    def close(self) -> None:
        """Refuse further messages; waiting producers get :class:`MailboxClosed`."""
        self._closed = True
        while self._putters:
            putter = self._putters.popleft()
            if not putter.done():
                putter.set_exception(MailboxClosed(f"mailbox {self.address!r} is closed"))
        self.interrupt()
