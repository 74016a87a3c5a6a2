"""The Binance market-data adapter actor: trades, quotes and feed state onto ``md.raw``.

It owns a :class:`~adapters.binance.stream.BinanceMarketData` task (which reconnects and
resyncs its depth books by itself) and publishes every decoded message, plus a
:class:`~engine.messages.FeedState` whenever the connection goes up or down, so pricing
can fail over to another provider. A bad frame is counted and logged with its context,
never fatal. If the client fails for good (Binance refuses a symbol), the actor crashes
and its supervisor decides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Final

from adapters.binance.decode import BinanceDecodeError
from adapters.binance.stream import DEFAULT_REST, DEFAULT_WS, BinanceMarketData, FrameHook
from adapters.stream_feed import StreamFeedActor
from engine.messages import ActorStats, StatsQuery

_LOG_FIRST_DECODE_ERRORS: Final = 10
_LOG_DECODE_ERRORS_EVERY: Final = 1000


class BinanceFeedActor(StreamFeedActor):
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
        self.decode_errors = 0

    async def on_start(self) -> None:
        ctx = self.ctx
        self.client = BinanceMarketData(
            self.symbols, ctx.clock, ctx.rng, self._publish,
            base_ws=self.base_ws, base_rest=self.base_rest, provider=self.provider,
            on_frame=self.on_frame, on_decode_error=self._on_decode_error,
            backoff_base_s=self.backoff_base_s, backoff_cap_s=self.backoff_cap_s,
        )  # fmt: skip
        await self.start_client(
            self.client, self.client.connected, self.start_timeout_s, f"binance-feed-{self.provider}",
            "binance_feed_not_connected_at_start",
        )  # fmt: skip

    def _on_decode_error(self, error: BinanceDecodeError, payload: bytes) -> None:
        self.decode_errors += 1
        n = self.decode_errors
        if n <= _LOG_FIRST_DECODE_ERRORS or n % _LOG_DECODE_ERRORS_EVERY == 0:
            self.ctx.log.warning(
                "binance_feed_decode_error", provider=self.provider, reason=error.reason[:300],
                sample=error.sample, size=len(payload), count=n,
            )  # fmt: skip

    async def handle(self, message: Any) -> Any:
        self.raise_if_failed(message)
        if type(message) is StatsQuery:
            return ActorStats(
                counters={"published": self.published, "decode_errors": self.decode_errors},
                breakdown={
                    "stream": dataclasses.asdict(self.client.counters),
                    "decoder": dict(self.client.decoder.counters),
                },
            )
        raise TypeError(f"binance feed actor cannot handle {type(message).__name__}")
