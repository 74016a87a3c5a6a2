"""Supervision trees with OTP semantics.

A :class:`Supervisor` starts its children in order and watches them. When a child
ends, what happens depends on

- the child's *restart kind*: ``PERMANENT`` children are always restarted,
  ``TRANSIENT`` ones only after a crash, ``TEMPORARY`` ones never;
- the supervisor's *strategy*: ``ONE_FOR_ONE`` restarts just that child;
  ``REST_FOR_ONE`` stops the children started after it (in reverse order) and restarts
  it and them (in order); ``ONE_FOR_ALL`` does the same for every child;
- its *restart intensity*: more than ``max_restarts`` restarts within ``period_s``
  seconds (engine clock) and the supervisor stops all its children and raises
  :class:`~engine.errors.SupervisorGaveUp` — to its parent, which sees a crashed child,
  or, at the root, to the node, which stops the engine with a non-zero exit.

Stopping is in reverse start order; each child gets ``shutdown_timeout_s`` to finish its
current message and run ``on_stop`` before it is cancelled.

A child's mailbox belongs to its address on the bus, so messages queued for an actor
survive its restart. In replay the bus may run an actor's handler inline, outside its
task (see :mod:`engine.bus`); a handler that raises there is handed back to the task and
re-raised in it, so the crash is logged, ``on_stop`` runs and the supervisor restarts the
actor exactly as when the task itself ran the handler. The message being handled when it crashed is not retried (it may
be what crashed it); the crash line in the log names its type.

anyio/asyncio task groups give structured cancellation, but they do not restart
anything — that is what this module adds.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.actor import Actor, ActorContext
from engine.bus import DEFAULT_CAPACITY, Bus, InlineRunner, Request, adopt
from engine.clock import NS_PER_S, Clock
from engine.errors import SupervisorGaveUp
from engine.logs import CURRENT_MESSAGE, get_logger
from engine.mailbox import BACKPRESSURE, InflightCounter, Policy


class Strategy(enum.Enum):
    ONE_FOR_ONE = "one_for_one"
    REST_FOR_ONE = "rest_for_one"
    ONE_FOR_ALL = "one_for_all"


class Restart(enum.Enum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


@dataclass(frozen=True)
class ActorSpec:
    """How to start one actor: its address, a factory for fresh instances, its mailbox."""

    name: str
    factory: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    shutdown_timeout_s: float = 5.0
    capacity: int = DEFAULT_CAPACITY
    policies: Mapping[type, Policy] = field(default_factory=dict)
    default_policy: Policy = BACKPRESSURE


@dataclass(frozen=True)
class SupervisorSpec:
    """A nested supervisor as a child of another."""

    name: str
    children: Sequence[ActorSpec | SupervisorSpec]
    strategy: Strategy = Strategy.ONE_FOR_ONE
    max_restarts: int = 3
    period_s: float = 5.0
    restart: Restart = Restart.PERMANENT
    shutdown_timeout_s: float = 10.0


ChildSpec = ActorSpec | SupervisorSpec


@dataclass
class ChildStats:
    starts: int = 0
    crashes: int = 0
    restarts: int = 0


class _Child:
    """A running child: an actor task or a nested supervisor task."""

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.context: ActorContext | None = None
        self.supervisor: Supervisor | None = None


class Supervisor:
    def __init__(
        self,
        spec: SupervisorSpec,
        bus: Bus,
        clock: Clock,
        rng: random.Random,
        parent_path: str = "",
    ) -> None:
        self.spec = spec
        self.bus = bus
        self.clock = clock
        self.path = f"{parent_path}/{spec.name}" if parent_path else spec.name
        self._rng = rng
        self._log = get_logger(actor=self.path)
        self._children: list[_Child] = [_Child(c) for c in spec.children]
        # Not capped by a maxsize: exits of instances already replaced can still be queued
        # (see run()). Bounded all the same: one entry per started instance at most, and the
        # restart intensity bounds how many instances start per period.
        self._exits: asyncio.Queue[tuple[_Child, asyncio.Task[None], BaseException | None]] = asyncio.Queue()
        self._restart_times: deque[int] = deque()
        self.stats: dict[str, ChildStats] = {c.name: ChildStats() for c in spec.children}
        self._started = asyncio.Event()
        self._last_error: BaseException | None = None
        self._seeds = {c.name: rng.getrandbits(64) for c in spec.children}

    # ------------------------------------------------------------ public

    async def run(self) -> None:
        """Start the children, supervise them until cancelled, then stop them in reverse order."""
        try:
            await self._start_from(0)
            self._started.set()
            while True:
                child, task, error = await self._exits.get()
                # An exit queued by an instance that has since been stopped or replaced
                # (siblings crashing together under rest_for_one / one_for_all) is stale:
                # acting on it would start a second instance on the same mailbox.
                if child.task is not task or child.stopping:
                    continue
                child.task = None
                await self._on_exit(child, error)
        finally:
            await self._stop_from(0)

    async def started(self) -> None:
        """Wait until every child has started (its ``on_start`` returned)."""
        await self._started.wait()

    def tree(self) -> dict[str, Any]:
        """The supervision tree with start, crash and restart counts (for health views)."""
        children: list[dict[str, Any]] = []
        for child in self._children:
            stats = self.stats[child.spec.name]
            entry: dict[str, Any] = {
                "name": child.spec.name,
                "running": child.task is not None and not child.task.done(),
                "starts": stats.starts,
                "crashes": stats.crashes,
                "restarts": stats.restarts,
            }
            if child.supervisor is not None:
                entry["children"] = child.supervisor.tree()["children"]
            children.append(entry)
        return {"name": self.spec.name, "strategy": self.spec.strategy.value, "children": children}

    # ------------------------------------------------------------ exits

    async def _on_exit(self, child: _Child, error: BaseException | None) -> None:
        spec = child.spec
        stats = self.stats[spec.name]
        if error is not None:
            stats.crashes += 1
            self._last_error = error
            # An actor logs its own traceback (with the message's correlation ids); a
            # nested supervisor that gave up has logged why. Here: the count.
            self._log.error(
                "child_crashed",
                child=spec.name,
                error=f"{type(error).__name__}: {error}",
                crashes=stats.crashes,
            )
        else:
            self._log.info("child_exited", child=spec.name)
        restart = spec.restart is Restart.PERMANENT or (
            spec.restart is Restart.TRANSIENT and error is not None
        )
        if not restart:
            return
        self._check_intensity()
        index = self._children.index(child)
        strategy = self.spec.strategy
        if strategy is Strategy.ONE_FOR_ONE:
            await self._start_child(child, restarted=True)
            return
        first = index if strategy is Strategy.REST_FOR_ONE else 0
        await self._stop_from(first, skip=child)
        for i in range(first, len(self._children)):
            sibling = self._children[i]
            if sibling is not child and sibling.spec.restart is Restart.TEMPORARY:
                continue
            await self._start_child(sibling, restarted=True)

    def _check_intensity(self) -> None:
        now = self.clock.time_ns()
        window = int(self.spec.period_s * NS_PER_S)
        times = self._restart_times
        times.append(now)
        while times and times[0] <= now - window:
            times.popleft()
        if len(times) > self.spec.max_restarts:
            error = SupervisorGaveUp(self.path, self.spec.max_restarts, self.spec.period_s, self._last_error)
            self._log.critical("supervisor_gave_up", error=str(error))
            raise error

    # ------------------------------------------------------------ start / stop

    async def _start_from(self, first: int) -> None:
        for child in self._children[first:]:
            await self._start_child(child, restarted=False)

    async def _start_child(self, child: _Child, restarted: bool) -> None:
        spec = child.spec
        stats = self.stats[spec.name]
        stats.starts += 1
        if restarted:
            stats.restarts += 1
        child.stopping = False
        started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if isinstance(spec, SupervisorSpec):
            nested = Supervisor(spec, self.bus, self.clock, random.Random(self._seeds[spec.name]), self.path)
            child.supervisor = nested
            task = asyncio.create_task(self._run_supervisor(nested, started), name=f"{self.path}/{spec.name}")
        else:
            rng = random.Random(self._seeds[spec.name] + stats.starts)
            task = asyncio.create_task(
                self._run_actor(child, spec, rng, stats.starts - 1, started), name=spec.name
            )
        child.task = task
        task.add_done_callback(lambda t, c=child: self._on_task_done(c, t))  # type: ignore[misc]
        # Ordered start: the next sibling starts only once this one is up (or failed).
        await asyncio.wait([started, task], return_when=asyncio.FIRST_COMPLETED)
        if restarted:
            self._log.info("child_restarted", child=spec.name, restarts=stats.restarts)

    def _on_task_done(self, child: _Child, task: asyncio.Task[None]) -> None:
        if child.task is not task or child.stopping:
            return
        error = None if task.cancelled() else task.exception()
        self._exits.put_nowait((child, task, error))

    async def _stop_from(self, first: int, skip: _Child | None = None) -> None:
        for child in reversed(self._children[first:]):
            if child is not skip:
                await self._stop_child(child)

    async def _stop_child(self, child: _Child) -> None:
        task = child.task
        if task is None:
            return
        child.stopping = True
        child.task = None
        if not task.done():
            if child.context is not None:
                child.context.stop()
                self.bus.mailbox(child.spec.name).interrupt()
            if child.supervisor is not None:
                task.cancel()
            done, _ = await asyncio.wait([task], timeout=child.spec.shutdown_timeout_s)
            if not done:
                self._log.warning(
                    "child_shutdown_timeout", child=child.spec.name, timeout_s=child.spec.shutdown_timeout_s
                )
                task.cancel()
                await asyncio.wait([task])
        if not task.cancelled() and task.exception() is not None:
            # It crashed on its own before (or while) being stopped: still a crash.
            self.stats[child.spec.name].crashes += 1
            self._log.error("child_failed_while_stopping", child=child.spec.name, exc_info=task.exception())

    # ------------------------------------------------------------ runners

    async def _run_supervisor(self, nested: Supervisor, started: asyncio.Future[None]) -> None:
        def mark_started(_: object) -> None:
            if not started.done():
                started.set_result(None)

        waiter = asyncio.ensure_future(nested.started())
        waiter.add_done_callback(mark_started)
        try:
            await nested.run()
        finally:
            waiter.cancel()

    async def _run_actor(
        self, child: _Child, spec: ActorSpec, rng: random.Random, restarts: int, started: asyncio.Future[None]
    ) -> None:
        bus = self.bus
        mailbox = bus.register(spec.name, spec.capacity, spec.policies, spec.default_policy)
        log = get_logger(actor=spec.name)
        ctx = ActorContext(spec.name, bus, self.clock, log, rng, restarts)
        child.context = ctx
        actor = spec.factory()
        actor.ctx = ctx
        inflight = bus.inflight
        handle = actor.handle
        # While the actor waits for messages, the bus may run its handler inline (replay):
        # the runner hands it back here when a handler suspends, raises or stops the actor.
        runner = InlineRunner(mailbox, handle, ctx, inflight)
        # Hot loop: names bound once; ctx._stop_requested read directly (the property
        # costs a call per message); inflight.done() called only when it can wake idle().
        items = mailbox._items
        get_nowait = mailbox.get_nowait
        wait = mailbox.wait
        set_current = CURRENT_MESSAGE.set
        try:
            await actor.on_start()
            if restarts:
                log.info("actor_restarted", restarts=restarts)
            started.set_result(None)
            while not ctx._stop_requested:
                if not items:
                    try:
                        await wait(runner)
                    except BaseException:
                        self._abandon(runner, inflight)
                        raise
                    if runner.adopted is not None:
                        await self._finish_adopted(runner, inflight)
                        continue
                    crash = runner.crash
                    if crash is not None:
                        # Counted done and answered by the runner; the crash path is ours.
                        runner.crash = None
                        set_current(runner.crash_message)
                        raise crash
                    continue
                item = get_nowait()
                try:
                    if type(item) is Request:
                        request: Request = item
                        set_current(request.message)
                        try:
                            reply = await handle(request.message)
                        except BaseException as exc:
                            if not request.future.done():
                                request.future.set_exception(exc)
                            raise
                        if not request.future.done():
                            request.future.set_result(reply)
                    else:
                        set_current(item)
                        await handle(item)
                finally:
                    if inflight.count == 1:
                        inflight.done()
                    else:
                        inflight.count -= 1
        except Exception as exc:
            log.error("actor_crashed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            raise
        finally:
            CURRENT_MESSAGE.set(None)
            await self._stop_actor(actor, log)

    @staticmethod
    def _abandon(runner: InlineRunner, inflight: InflightCounter) -> None:
        """The task was cancelled before it could take over a suspended inline handler."""
        if runner.adopted is None:
            return
        coro, _, item = runner.adopted
        runner.adopted = None
        coro.close()
        if type(item) is Request and not item.future.done():
            item.future.cancel()
        if inflight.count == 1:
            inflight.done()
        else:
            inflight.count -= 1

    @staticmethod
    async def _finish_adopted(runner: InlineRunner, inflight: InflightCounter) -> None:
        """Finish, in the actor's task, a handler that suspended while delivered inline."""
        assert runner.adopted is not None
        coro, pending, item = runner.adopted
        runner.adopted = None
        request = item if type(item) is Request else None
        CURRENT_MESSAGE.set(request.message if request is not None else item)
        try:
            try:
                reply = await adopt(coro, pending)
            except BaseException as exc:
                if request is not None and not request.future.done():
                    request.future.set_exception(exc)
                raise
            if request is not None and not request.future.done():
                request.future.set_result(reply)
        finally:
            if inflight.count == 1:
                inflight.done()
            else:
                inflight.count -= 1

    @staticmethod
    async def _stop_actor(actor: Actor, log: Any) -> None:
        try:
            await actor.on_stop()
        except Exception as exc:
            # Not re-raised: it would hide the reason the actor is stopping. Logged in full.
            log.error("actor_on_stop_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
