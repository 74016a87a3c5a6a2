"""The in-process message bus: addresses, topics, request/reply and quiescence.

- An *address* names one actor's mailbox. ``send(address, msg)`` delivers to it.
- A *topic* is a string; ``publish(topic, msg)`` delivers to every address subscribed
  to it, in subscription order.
- ``request(address, msg)`` delivers a message together with a reply future; the actor's
  ``handle`` return value answers it.
- ``idle()`` returns once every message accepted by any mailbox has been handled. The
  replay driver awaits it between recorded events, which makes a replay deterministic.

Delivery never blocks when there is room: ``offer`` first, ``await put`` only when the
mailbox is full and its policy for that message says backpressure.

Inline delivery (replay mode)
-----------------------------
With task delivery, every hop costs a task switch: the offer resolves the reader's
future, the loop schedules its task, the task takes the message. In replay (under a
:class:`~engine.clock.SimClock`, enabled by :func:`engine.replay.replay` through
:meth:`Bus.set_inline`) the bus runs handlers itself, as a trampoline:

- An actor waiting for a message (``Mailbox.wait``) leaves an :class:`InlineRunner` on its
  mailbox. A message for it appends the *mailbox* to the bus's run queue (FIFO) instead of
  waking the task. :meth:`Bus.settle` (from :meth:`idle`, or a loop callback) pops ready
  mailboxes in order and, for each, drains its mailbox exactly as the actor's own loop
  would: one message at a time, ``coro.send(None)`` on ``handle(message)``.
- Messages the handlers publish only append to mailboxes and the run queue; nothing runs
  recursively (the nesting depth is one), so an actor never re-enters its handler and the
  stack never grows with the length of a chain of hops.

Why the order is the same as with tasks: with tasks, an offer to a waiting reader calls
``set_result`` on its future, which queues the task's wake-up on the loop's FIFO ready
queue; the woken task then drains its mailbox — including what arrives meanwhile —
without yielding, since handlers that never await a pending future never yield. The run
queue is that ready queue: the same actors, made ready by the same offers in the same
order, each draining its mailbox in FIFO order. A breadth-first trampoline, not a
depth-first call: calling a subscriber as soon as it is offered a message would let its
consequences overtake messages the publisher has not yet offered to later subscribers
(a strategy would see the fill caused by a tick before the tick itself).

When a handler does suspend (it awaits a future that is not done: a journal commit, a
request, room in a full mailbox), the runner *hands the actor back* to its task: the
mailbox leaves inline delivery (``runner = None``), the task is woken and continues the
suspended coroutine (:func:`adopt`), then drains the mailbox on its own until it waits
again. Meanwhile messages for it only queue in the mailbox, behind the suspended one:
nothing overtakes a suspended handler. A handler that raises is handed back the same way
and re-raised by its task, so the crash takes the same path as with task delivery (logged
by the actor, ``on_stop``, the supervisor's restart) — the message is not retried.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Coroutine, Generator, Mapping
from typing import TYPE_CHECKING, Any, Final

from engine.errors import UnknownAddress
from engine.logs import INLINE_MESSAGE
from engine.mailbox import BACKPRESSURE, InflightCounter, Mailbox, Policy, RunQueue

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from engine.actor import ActorContext


class Request:
    """A message travelling with the future that receives its reply."""

    __slots__ = ("future", "message")

    def __init__(self, message: object, future: asyncio.Future[Any]) -> None:
        self.message = message
        self.future = future


DEFAULT_CAPACITY: Final = 1024

DRAIN_BUDGET: Final = 65_536
"""Handler runs per :meth:`Bus.settle` before it yields to the loop (a cycle of actors
messaging each other forever must not starve timers, I/O and the supervisor)."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


@types.coroutine
def adopt(coro: Coroutine[Any, Any, Any], pending: Any) -> Generator[Any, None, Any]:
    """Continue ``coro``, which suspended on ``pending`` outside its task, in the current task.

    ``pending`` is what ``coro.send(None)`` yielded (a future with its
    ``_asyncio_future_blocking`` flag set, or None for a bare yield); it is handed to the
    running task, which wakes us when it is done, exactly as if ``coro`` had been awaited by
    the task from the start. A cancellation delivered meanwhile is thrown into ``coro``.
    """
    while True:
        try:
            yield pending
        except BaseException as exc:  # noqa: BLE001 - forwarded into the coroutine, which decides
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        return (yield from coro)


class InlineRunner:
    """One actor instance's handler, as the bus runs it for inline delivery.

    Created by the actor runtime (``engine.supervisor``), left on the mailbox while the
    actor waits for messages. When a handler suspends, crashes or stops the actor, the
    runner hands the actor back to its task with what it needs: ``adopted`` (the coroutine,
    what it yielded, the message item), or ``crash`` (the exception to re-raise).
    """

    __slots__ = ("adopted", "crash", "crash_message", "ctx", "handle", "inflight", "mailbox")

    def __init__(
        self,
        mailbox: Mailbox,
        handle: Callable[[Any], Awaitable[Any]],
        ctx: ActorContext,
        inflight: InflightCounter,
    ) -> None:
        self.mailbox = mailbox
        self.handle = handle
        self.ctx = ctx
        self.inflight = inflight
        self.adopted: tuple[Coroutine[Any, Any, Any], Any, object] | None = None
        self.crash: BaseException | None = None
        self.crash_message: object = None

    def run(self) -> None:
        """Handle queued messages inline until the mailbox is empty or the actor is handed back."""
        mailbox = self.mailbox
        items = mailbox._items
        get_nowait = mailbox.get_nowait
        handle = self.handle
        ctx = self.ctx
        inflight = self.inflight
        current = INLINE_MESSAGE
        while items:
            item = get_nowait()
            is_request = type(item) is Request
            message = item.message if is_request else item  # type: ignore[attr-defined]
            current.message = message
            try:
                coro: Any = handle(message)
                pending = coro.send(None)
            except StopIteration as stop:
                if is_request and not item.future.done():  # type: ignore[attr-defined]
                    item.future.set_result(stop.value)  # type: ignore[attr-defined]
            except BaseException as exc:  # noqa: BLE001 - re-raised by the actor's task (see hand_back)
                if is_request and not item.future.done():  # type: ignore[attr-defined]
                    item.future.set_exception(exc)  # type: ignore[attr-defined]
                self._done(inflight)
                self.crash = exc
                self.crash_message = message
                mailbox.hand_back()
                return
            else:
                # Suspended: the task finishes this message (and counts it done) first.
                self.adopted = (coro, pending, item)
                mailbox.hand_back()
                return
            if inflight.count == 1:
                inflight.done()
            else:
                inflight.count -= 1
            if ctx._stop_requested:
                mailbox.hand_back()
                return
        mailbox._scheduled = False

    @staticmethod
    def _done(inflight: InflightCounter) -> None:
        if inflight.count == 1:
            inflight.done()
        else:
            inflight.count -= 1


class Bus:
    def __init__(self) -> None:
        self.inflight = InflightCounter()
        self._mailboxes: dict[str, Mailbox] = {}
        self._topics: dict[str, list[Mailbox]] = {}
        self._runq = RunQueue(self._kick)
        self._kicked = False

    # ------------------------------------------------------------ wiring

    def register(
        self,
        address: str,
        capacity: int = DEFAULT_CAPACITY,
        policies: Mapping[type, Policy] | None = None,
        default: Policy = BACKPRESSURE,
    ) -> Mailbox:
        """Create the mailbox for ``address``, or return the existing one.

        Registering an address twice returns the first mailbox unchanged: that is how a
        restarted actor finds the messages queued for its predecessor.
        """
        mailbox = self._mailboxes.get(address)
        if mailbox is None:
            mailbox = Mailbox(address, capacity, self.inflight, policies, default, self._runq)
            self._mailboxes[address] = mailbox
        return mailbox

    def mailbox(self, address: str) -> Mailbox:
        try:
            return self._mailboxes[address]
        except KeyError:
            raise UnknownAddress(f"no actor is registered at {address!r}") from None

    @property
    def mailboxes(self) -> Mapping[str, Mailbox]:
        return self._mailboxes

    def subscribe(self, topic: str, address: str) -> None:
        """Subscribe ``address`` to ``topic``; subscribing twice has no further effect."""
        mailbox = self.mailbox(address)
        subscribers = self._topics.setdefault(topic, [])
        if mailbox not in subscribers:
            subscribers.append(mailbox)

    def unsubscribe(self, topic: str, address: str) -> None:
        subscribers = self._topics.get(topic)
        mailbox = self._mailboxes.get(address)
        if subscribers and mailbox in subscribers:
            subscribers.remove(mailbox)

    def subscribers(self, topic: str) -> list[str]:
        return [m.address for m in self._topics.get(topic, ())]

    # ------------------------------------------------------------ inline delivery

    @property
    def inline(self) -> bool:
        return self._runq.enabled

    def set_inline(self, enabled: bool) -> None:
        """Turn inline delivery on or off (see the module docs). Only where time is simulated.

        Turning it off hands every actor still in the run queue back to its task, so no
        message is left waiting for a drain that will not come.
        """
        runq = self._runq
        runq.enabled = enabled
        if not enabled:
            runq.deferred = False
            while runq.ready:
                runq.ready.popleft().hand_back()

    def defer(self) -> None:
        """Promise to call :meth:`settle` (or :meth:`idle`) before yielding to the loop.

        Until then, messages to waiting actors do not schedule a drain on the loop: the
        replay driver publishes an event and settles the system itself, with no loop turn.
        """
        self._runq.deferred = True

    def settle(self) -> None:
        """Run inline deliveries until the run queue is empty (or the drain budget is spent).

        Never recursive: a handler's publish only queues; a call from inside a drain returns.
        """
        runq = self._runq
        runq.deferred = False
        if runq.draining or not runq.ready:
            return
        ready = runq.ready
        budget = DRAIN_BUDGET
        runq.draining = True
        try:
            while ready:
                mailbox = ready.popleft()
                runner: InlineRunner | None = mailbox.runner
                if runner is None:
                    mailbox._scheduled = False
                else:
                    runner.run()
                budget -= 1
                if budget == 0:
                    break
        finally:
            runq.draining = False
            INLINE_MESSAGE.message = None
        if ready:
            self._kick()

    def _kick(self) -> None:
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._drain_soon)

    def _drain_soon(self) -> None:
        self._kicked = False
        self.settle()

    # ------------------------------------------------------------ delivery

    async def publish(self, topic: str, message: object) -> None:
        for mailbox in self._topics.get(topic, ()):
            if not mailbox.offer(message):
                self._kick()  # the consumer may be waiting for a drain: never wait on a deferred one
                await mailbox.put(message)

    async def send(self, address: str, message: object) -> None:
        mailbox = self._mailboxes.get(address)
        if mailbox is None:
            raise UnknownAddress(f"no actor is registered at {address!r}")
        if not mailbox.offer(message):
            self._kick()
            await mailbox.put(message)

    async def request(self, address: str, message: object, timeout_s: float = 5.0) -> Any:
        """Send ``message`` and wait for the actor's reply (``TimeoutError`` after ``timeout_s``).

        The timeout is a loop timer on the reply future, not ``asyncio.timeout``: that one
        cancels the *current task*, and a handler delivered inline runs in whichever task
        drains the run queue (or in none), not in its actor's.
        """
        mailbox = self._mailboxes.get(address)
        if mailbox is None:
            raise UnknownAddress(f"no actor is registered at {address!r}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        timer = loop.call_later(timeout_s, _expire, future)
        try:
            request = Request(message, future)
            if not mailbox.offer(request):
                # The timeout covers delivery too: waiting for room in a full mailbox counts.
                self._kick()
                put = asyncio.ensure_future(mailbox.put(request))
                try:
                    await asyncio.wait([put, future], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not put.done():
                        put.cancel()
                        await asyncio.wait([put])
                if not put.cancelled():
                    put.result()  # MailboxClosed, if it was closed meanwhile
            return await future
        finally:
            timer.cancel()

    async def idle(self) -> None:
        """Wait until no message is queued or being handled anywhere.

        Runs pending inline deliveries first; returns without a loop turn when that settles
        everything (the common case in a replay).
        """
        self.settle()
        if self.inflight.count:
            await self.inflight.wait_idle()
