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

import dataclasses
from collections.abc import Sequence
from typing import Any

from adapters.alpaca.data_stream import AlpacaDataStream, FrameHook
from adapters.stream_feed import StreamFeedActor
from engine.messages import ActorStats, StatsQuery
from engine.secrets import Secret


class AlpacaFeedActor(StreamFeedActor):
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

    async def on_start(self) -> None:
        ctx = self.ctx
        self.stream = AlpacaDataStream(
            self.url, self.key_id.reveal(), self.secret_key, self.symbols, ctx.clock, ctx.rng, self._publish,
            backoff_base_s=0.05, backoff_cap_s=5.0, statuses=self.statuses, on_frame=self.on_frame,
        )
        await self.start_client(
            self.stream, self.stream.subscribed, self.subscribe_timeout_s, "alpaca-feed",
            "market_data_not_subscribed_at_start",
        )  # fmt: skip

    async def handle(self, message: Any) -> Any:
        self.raise_if_failed(message)
        if type(message) is StatsQuery:
            counters = dataclasses.asdict(self.stream.counters)
            return ActorStats(counters={"published": self.published, **counters})
        raise TypeError(f"alpaca feed actor cannot handle {type(message).__name__}")
