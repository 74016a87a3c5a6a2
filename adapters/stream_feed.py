"""What every market-data feed actor does around its protocol client.

A feed actor owns one client task (the client reconnects and resubscribes by itself) and
publishes whatever the client delivers on ``md.raw``. If the client task ends with an
error (bad keys, a symbol the venue refuses), the error is posted to the actor's own
mailbox and raised from ``handle``: the actor crashes and its supervisor decides, exactly
as for a failed handler. Subclasses build the client and answer ``StatsQuery``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from engine import topics
from engine.actor import Actor


class StreamClient(Protocol):
    async def run(self) -> None: ...

    async def stop(self) -> None: ...


class _StreamFailed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class StreamFeedActor(Actor):
    """Base of the feed actors: one client task, its failure supervised, ``md.raw`` out."""

    published: int = 0
    _client: StreamClient | None = None
    _task: asyncio.Task[None] | None = None

    async def start_client(
        self, client: StreamClient, ready: asyncio.Event, timeout_s: float, name: str, not_ready_event: str
    ) -> None:
        """Run ``client`` as a task; wait up to ``timeout_s`` for ``ready`` (a warning, not an error:
        the client keeps trying, and pricing marks the feed's symbols stale meanwhile)."""
        self._client = client
        self._task = asyncio.create_task(client.run(), name=name)
        self._task.add_done_callback(self._client_done)
        try:
            async with asyncio.timeout(timeout_s):
                await ready.wait()
        except TimeoutError:
            self.ctx.log.warning(not_ready_event, timeout_s=timeout_s)

    async def _publish(self, message: Any) -> None:
        self.published += 1
        await self.ctx.publish(topics.MD_RAW, message)

    def _client_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.ctx.bus.mailbox(self.ctx.address).offer(_StreamFailed(task.exception()))  # type: ignore[arg-type]

    async def on_stop(self) -> None:
        if self._task is not None and self._client is not None:
            await self._client.stop()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def raise_if_failed(self, message: Any) -> None:
        """Call first in ``handle``: re-raises the client task's error inside the actor."""
        if type(message) is _StreamFailed:
            raise message.error
