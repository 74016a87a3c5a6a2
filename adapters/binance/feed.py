"""The Binance market-data adapter actor: trades, quotes and feed state onto ``md.raw``.

It owns a :class:`~adapters.binance.stream.BinanceMarketData` task (which reconnects and
resyncs its depth books by itself) and publishes every decoded message, plus a
:class:`~engine.messages.FeedState` whenever the connection goes up or down, so pricing
can fail over to another provider. A bad frame is counted and logged with its context,
never fatal. If the client fails for good (Binance refuses a symbol), the actor crashes
and its supervisor decides.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import Any, Final

from adapters.binance.decode import BinanceDecodeError
from adapters.binance.stream import DEFAULT_REST, DEFAULT_WS, BinanceMarketData, FrameHook, MarketMessage
from engine import topics
from engine.actor import Actor
from engine.messages import ActorStats, StatsQuery

_LOG_FIRST_DECODE_ERRORS: Final = 10
_LOG_DECODE_ERRORS_EVERY: Final = 1000


class _StreamFailed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class BinanceFeedActor(Actor):
    """Runs the Binance client for ``symbols`` and publishes what it produces on ``md.raw``."""

    def __init__(
        self,
        symbols: Sequence[str],
        *,
        base_ws: str = DEFAULT_WS,
        base_rest: str = DEFAULT_REST,
        provider: str = "binance",
        on_frame: FrameHook | None = None,
        start_timeout_s: float = 10.0,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 5.0,
    ) -> None:
        self.symbols = list(symbols)
        self.base_ws = base_ws
        self.base_rest = base_rest
        self.provider = provider
        self.on_frame = on_frame
        self.start_timeout_s = start_timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.client: BinanceMarketData
        self._task: asyncio.Task[None] | None = None
        self.published = 0
        self.decode_errors = 0

    async def on_start(self) -> None:
        ctx = self.ctx
        self.client = BinanceMarketData(
            self.symbols, ctx.clock, ctx.rng, self._publish,
            base_ws=self.base_ws, base_rest=self.base_rest, provider=self.provider,
            on_frame=self.on_frame, on_decode_error=self._on_decode_error,
            backoff_base_s=self.backoff_base_s, backoff_cap_s=self.backoff_cap_s,
        )  # fmt: skip
        self._task = asyncio.create_task(self.client.run(), name=f"binance-feed-{self.provider}")
        self._task.add_done_callback(self._done)
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await self.client.connected.wait()
        except TimeoutError:
            ctx.log.warning("binance_feed_not_connected_at_start", timeout_s=self.start_timeout_s)

    async def _publish(self, message: MarketMessage) -> None:
        self.published += 1
        await self.ctx.publish(topics.MD_RAW, message)

    def _on_decode_error(self, error: BinanceDecodeError, payload: bytes) -> None:
        self.decode_errors += 1
        n = self.decode_errors
        if n <= _LOG_FIRST_DECODE_ERRORS or n % _LOG_DECODE_ERRORS_EVERY == 0:
            self.ctx.log.warning(
                "binance_feed_decode_error", provider=self.provider, reason=error.reason[:300],
                sample=error.sample, size=len(payload), count=n,
            )  # fmt: skip

    def _done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        self.ctx.bus.mailbox(self.ctx.address).offer(_StreamFailed(task.exception()))  # type: ignore[arg-type]

    async def on_stop(self) -> None:
        if self._task is not None:
            await self.client.stop()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def handle(self, message: Any) -> Any:
        if type(message) is _StreamFailed:
            raise message.error
        if type(message) is StatsQuery:
            return ActorStats(
                counters={"published": self.published, "decode_errors": self.decode_errors},
                breakdown={
                    "stream": dataclasses.asdict(self.client.counters),
                    "decoder": dict(self.client.decoder.counters),
                },
            )
        raise TypeError(f"binance feed actor cannot handle {type(message).__name__}")
