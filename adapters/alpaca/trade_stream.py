"""The ``trade_updates`` websocket client: Alpaca's order events, kept alive.

Lifecycle of one connection: connect → ``authenticate`` → wait for ``authorized`` →
``listen`` to ``trade_updates`` → wait for ``listening`` → the stream is **live**. Only
while it is live may orders be sent (the venue adapter checks :attr:`live`), because an
order sent while nobody listens could fill unseen.

When the connection drops, :attr:`live` clears at once, and the client reconnects:
immediately the first time, then with decorrelated-jitter backoff (capped). After it is
live again it calls ``on_reconnected`` — the adapter's REST catch-up of every order that
may have changed meanwhile — before handing on any new event, so nothing that happened
while the socket was down is missed. Bad credentials are permanent: no retry loop.

Frames: the server sends binary frames holding JSON (as Alpaca's paper endpoint does);
text frames are accepted too. A frame that does not decode is counted and logged, and
the session stays up.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import msgspec

from adapters.alpaca import wire
from adapters.alpaca.errors import AuthenticationFailed, TransientError
from engine.backoff import DecorrelatedJitter
from engine.clock import Clock
from engine.logs import get_logger
from engine.secrets import Secret

_MESSAGE: Final = msgspec.json.Decoder(wire.StreamMessage)
_ENCODER: Final = msgspec.json.Encoder()
HANDSHAKE_TIMEOUT_S: Final = 5.0

UpdateSink = Callable[[wire.TradeUpdate], Awaitable[None]]


def _check(update: wire.TradeUpdate) -> None:
    """Refuse an update whose fields the adapter could not act on (it stays for REST catch-up)."""
    order = update.order
    if order.side not in ("buy", "sell"):
        raise ValueError(f"unknown side {order.side!r}")
    wire.parse_timestamp(order.updated_at)
    if update.timestamp is not None:
        wire.parse_timestamp(update.timestamp)
    if update.event in ("fill", "partial_fill") and (update.qty is None or update.price is None or update.qty <= 0):
        raise ValueError("fill without a positive qty and a price")


class TradeUpdatesStream:
    def __init__(
        self,
        url: str,
        key_id: Secret,
        secret_key: Secret,
        clock: Clock,
        rng: random.Random,
        on_update: UpdateSink,
        on_reconnected: Callable[[], Awaitable[None]],
        on_live_change: Callable[[bool], None] | None = None,
        backoff_base_s: float = 0.05,
        backoff_cap_s: float = 5.0,
    ) -> None:
        self.url = url
        self._key_id = key_id
        self._secret_key = secret_key
        self.clock = clock
        self.on_update = on_update
        self.on_reconnected = on_reconnected
        self.on_live_change = on_live_change
        self.backoff = DecorrelatedJitter(backoff_base_s, backoff_cap_s, rng)
        self.live = asyncio.Event()
        self.log = get_logger(actor="alpaca.trade_updates")
        self.counters = {"connects": 0, "reconnects": 0, "updates": 0, "decode_errors": 0}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    def _set_live(self, live: bool) -> None:
        if live == self.live.is_set():
            return
        if live:
            self.live.set()
        else:
            self.live.clear()
        self.log.info("trade_updates_live" if live else "trade_updates_down")
        if self.on_live_change is not None:
            self.on_live_change(live)

    async def run(self) -> None:
        """Connect and stay connected until cancelled; raises only on permanent errors."""
        self._session = aiohttp.ClientSession()
        try:
            while True:
                try:
                    await self._session_once()
                except AuthenticationFailed:
                    raise
                except (aiohttp.ClientError, TransientError, TimeoutError, ConnectionError) as exc:
                    self.log.warning("trade_updates_disconnected", error=f"{type(exc).__name__}: {exc}")
                finally:
                    self._set_live(False)
                delay = self.backoff.next_delay()
                if delay:
                    await self.clock.sleep(delay)
        finally:
            await self._session.close()
            self._session = None

    async def disconnect(self) -> None:
        """Drop the current connection (tests and chaos); the run loop reconnects."""
        if self._ws is not None:
            await self._ws.close()

    async def _session_once(self) -> None:
        assert self._session is not None
        async with self._session.ws_connect(self.url, heartbeat=10.0, max_msg_size=8 * 2**20) as ws:
            self._ws = ws
            reconnect = self.counters["connects"] > 0
            self.counters["connects"] += 1
            await ws.send_str(
                _ENCODER.encode(
                    {
                        "action": "authenticate",
                        "data": {"key_id": self._key_id.reveal(), "secret_key": self._secret_key.reveal()},
                    }
                ).decode()
            )
            reply = await self._control(ws, "authorization")
            if reply.get("status") != "authorized":
                raise AuthenticationFailed("trade_updates: not authorized (check the API key pair)")
            await ws.send_str(
                _ENCODER.encode({"action": "listen", "data": {"streams": ["trade_updates"]}}).decode()
            )
            await self._control(ws, "listening")
            if reconnect:
                self.counters["reconnects"] += 1
                # Catch up on what happened while we were away before going live again.
                await self.on_reconnected()
            self._set_live(True)
            self.backoff.reset()
            async for frame in ws:
                if frame.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    await self._on_frame(frame.data)
                elif frame.type == aiohttp.WSMsgType.ERROR:
                    raise TransientError(f"trade_updates socket error: {ws.exception()}")
            raise TransientError(f"trade_updates closed by the server (code {ws.close_code})")

    async def _control(self, ws: aiohttp.ClientWebSocketResponse, stream: str) -> dict[str, Any]:
        """Wait for the control message of ``stream``; other frames before it are handled normally."""
        async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
            while True:
                frame = await ws.receive()
                if frame.type not in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT):
                    raise TransientError(f"trade_updates closed during handshake ({frame.type.name})")
                try:
                    message = _MESSAGE.decode(frame.data)
                except msgspec.DecodeError:
                    self.counters["decode_errors"] += 1
                    continue
                if message.stream == stream:
                    return message.data
                if message.stream == "authorization":
                    raise AuthenticationFailed("trade_updates: not authorized (check the API key pair)")

    async def _on_frame(self, data: bytes | str) -> None:
        try:
            message = _MESSAGE.decode(data)
            if message.stream != "trade_updates":
                return
            update = msgspec.convert(message.data, wire.TradeUpdate)
            _check(update)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            self.counters["decode_errors"] += 1
            self.log.warning("trade_update_undecodable", error=str(exc), frame=str(data)[:200])
            return
        self.counters["updates"] += 1
        await self.on_update(update)
