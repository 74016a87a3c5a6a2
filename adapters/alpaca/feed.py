"""The Alpaca market-data adapter actor: quotes, trades and trading statuses onto ``md.raw``.

Trading statuses (halts, resumes) and LULD bands arrive as
:class:`~engine.messages.SymbolTradingStatus` when ``statuses`` is on; pricing forwards
them to risk on ``md.status``. ``on_frame`` is handed to the stream: it sees every raw
frame (for ``kestrel record``).

It owns an :class:`~adapters.alpaca.data_stream.AlpacaDataStream` task (which reconnects
and resubscribes by itself) and publishes every decoded event. If the stream fails for
good (bad keys, insufficient subscription), the actor crashes and its supervisor decides.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any

from adapters.alpaca.data_stream import AlpacaDataStream, FrameHook, MarketEvent
from engine import topics
from engine.actor import Actor
from engine.messages import ActorStats, StatsQuery
from engine.secrets import Secret


class _StreamFailed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class AlpacaFeedActor(Actor):
    def __init__(
        self,
        url: str,
        key_id: Secret,
        secret_key: Secret,
        symbols: Sequence[str],
        subscribe_timeout_s: float = 10.0,
        *,
        statuses: bool = False,
        on_frame: FrameHook | None = None,
    ) -> None:
        self.url = url
        self.key_id = key_id
        self.secret_key = secret_key
        self.symbols = list(symbols)
        self.subscribe_timeout_s = subscribe_timeout_s
        self.statuses = statuses
        self.on_frame = on_frame
        self.stream: AlpacaDataStream
        self._task: asyncio.Task[None] | None = None
        self.published = 0

    async def on_start(self) -> None:
        ctx = self.ctx
        self.stream = AlpacaDataStream(
            self.url, self.key_id.reveal(), self.secret_key, self.symbols, ctx.clock, ctx.rng, self._publish,
            backoff_base_s=0.05, backoff_cap_s=5.0, statuses=self.statuses, on_frame=self.on_frame,
        )
        self._task = asyncio.create_task(self.stream.run(), name="alpaca-feed")
        self._task.add_done_callback(self._done)
        try:
            async with asyncio.timeout(self.subscribe_timeout_s):
                await self.stream.subscribed.wait()
        except TimeoutError:
            ctx.log.warning("market_data_not_subscribed_at_start", timeout_s=self.subscribe_timeout_s)

    async def _publish(self, event: MarketEvent) -> None:
        self.published += 1
        await self.ctx.publish(topics.MD_RAW, event)

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.ctx.bus.mailbox(self.ctx.address).offer(_StreamFailed(task.exception()))  # type: ignore[arg-type]

    async def on_stop(self) -> None:
        if self._task is not None:
            await self.stream.stop()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def handle(self, message: Any) -> Any:
        if type(message) is _StreamFailed:
            raise message.error
        if type(message) is StatsQuery:
            counters = dataclasses.asdict(self.stream.counters)
            return ActorStats(counters={"published": self.published, **counters})
        raise TypeError(f"alpaca feed actor cannot handle {type(message).__name__}")
