"""Binance spot market-data client: one combined-stream websocket plus REST depth snapshots.

Model:

- One websocket to ``{base_ws}/stream?streams=<s>@trade/<s>@bookTicker/<s>@depth@100ms/…``
  for every configured symbol (lower case in the URL, upper case everywhere else). The
  subscription is in the URL, so there is no handshake: once the socket is open, frames
  flow. Binance pings every few minutes and drops a client that does not pong; the
  ``websockets`` library answers pings by itself, and sends its own pings every
  ``ping_interval_s`` so a dead TCP connection is noticed.
- Each frame is decoded by one :class:`~adapters.binance.decode.BinanceDecoder` (which
  also keeps the depth books and trade-id continuity) and every resulting message is
  awaited into ``sink`` before the next frame is read. The handoff is therefore bounded
  end to end: ``websockets`` stops reading the socket when its ``max_queue`` frames are
  pending, TCP pushes back, and Binance eventually drops a consumer that is too slow,
  after which we reconnect and resync. Nothing here queues without bound.
- Depth books: when the socket opens, every book is reset (events were missed while we
  were away) and a REST snapshot ``GET {base_rest}/api/v3/depth?symbol=…&limit=…`` is
  fetched per symbol while the diff events buffer in the book. Whenever a book reports a
  gap (``needs_resync``) a new snapshot is fetched; a snapshot that does not bridge the
  buffered events (Binance's REST can lag the stream) is fetched again. Transient REST
  failures (network, 5xx, 429/418 rate limits with their ``Retry-After``) are retried with
  jitter; a 4xx otherwise (an unknown symbol) is a :class:`SnapshotRejected`, which ends
  :meth:`BinanceMarketData.run`: retrying cannot help and a feed without books is misconfigured.
- ``on_frame(ts_recv_ns, provider, payload)`` sees every websocket frame and every REST
  snapshot body, exactly as received, before decoding: ``kestrel record`` writes them, and
  the decoder replays such a recording into the same state.
- Connection state goes to ``sink`` as :class:`~engine.messages.FeedState` on every change
  (up when the socket opens, down with the reason when it closes or cannot be opened).
- Reconnects: :class:`~engine.backoff.DecorrelatedJitter` from the seeded ``rng``: the first
  retry is immediate, then jittered delays up to ``backoff_cap_s``. The backoff is reset
  only once every book has synced, so a server that accepts and drops at once is not
  hammered.
- Time comes from the engine clock (``ts_recv`` of every message, sleeps between retries).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final

import aiohttp
import websockets
from websockets.asyncio.client import ClientConnection, connect

from adapters.binance.decode import BinanceDecodeError, BinanceDecoder
from engine.backoff import DecorrelatedJitter
from engine.clock import Clock
from engine.errors import KestrelError, UserError
from engine.logs import get_logger
from engine.messages import ExchangeQuote, FeedState, TradeTick

DEFAULT_WS: Final = "wss://stream.binance.com:9443"
DEFAULT_REST: Final = "https://api.binance.com"
STREAM_KINDS: Final = ("trade", "bookTicker", "depth@100ms")
RATE_LIMIT_STATUSES: Final = frozenset({418, 429})

MarketMessage = ExchangeQuote | TradeTick | FeedState
Sink = Callable[[MarketMessage], Awaitable[None]]
FrameHook = Callable[[int, str, bytes], None]
"""``(ts_recv_ns, provider, payload)`` for every frame received."""
DecodeErrorHook = Callable[[BinanceDecodeError, bytes], None]

_LOG_FIRST_DECODE_ERRORS: Final = 10
_LOG_DECODE_ERRORS_EVERY: Final = 1000


# ---------------------------------------------------------------- errors


class BinanceStreamError(KestrelError):
    """Base of the Binance client's errors."""


class SnapshotRejected(BinanceStreamError, UserError):
    """Binance refused the depth snapshot request for good (HTTP 4xx: e.g. an unknown symbol)."""

    def __init__(self, symbol: str, status: int, body: str) -> None:
        self.symbol = symbol
        self.status = status
        self.body = body
        super().__init__(f"Binance refused the depth snapshot of {symbol}: HTTP {status} {body}")


class _TransientSnapshotError(BinanceStreamError):
    """A snapshot request that may succeed later; ``retry_after_s`` is the server's wish, if any."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message)


# ---------------------------------------------------------------- the client


@dataclass
class StreamCounters:
    ws_frames: int = 0
    """Websocket frames received (each is also decoded: see the decoder's counters)."""
    connects: int = 0
    """Connection attempts, the first included."""
    reconnects: int = 0
    disconnects: int = 0
    """Sessions that were open and ended."""
    snapshot_requests: int = 0
    snapshot_failures: int = 0


def stream_names(symbols: Sequence[str]) -> list[str]:
    return [f"{symbol.lower()}@{kind}" for symbol in symbols for kind in STREAM_KINDS]


class BinanceMarketData:
    """Streams Binance trades and top-of-book quotes for ``symbols`` into ``sink`` until stopped.

    Call :meth:`run` in a task; it returns after :meth:`stop` and raises
    :class:`SnapshotRejected` if Binance refuses a symbol. ``rng`` must be seeded.
    """

    def __init__(
        self,
        symbols: Sequence[str],
        clock: Clock,
        rng: random.Random,
        sink: Sink,
        *,
        base_ws: str = DEFAULT_WS,
        base_rest: str = DEFAULT_REST,
        provider: str = "binance",
        on_frame: FrameHook | None = None,
        on_decode_error: DecodeErrorHook | None = None,
        decoder: BinanceDecoder | None = None,
        snapshot_limit: int = 1000,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        open_timeout_s: float = 10.0,
        request_timeout_s: float = 10.0,
        ping_interval_s: float | None = 20.0,
        max_queue: int = 64,
        max_frame_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        if not symbols:
            raise ValueError("need at least one symbol")
        if not base_ws.startswith(("ws://", "wss://")):
            raise ValueError(f"not a websocket URL: {base_ws!r}")
        if not base_rest.startswith(("http://", "https://")):
            raise ValueError(f"not an HTTP URL: {base_rest!r}")
        if not 1 <= snapshot_limit <= 5000:
            raise ValueError("snapshot_limit must be within 1..5000")
        self.symbols = list(dict.fromkeys(s.upper() for s in symbols))
        self.provider = provider
        self.url = f"{base_ws.rstrip('/')}/stream?streams={'/'.join(stream_names(self.symbols))}"
        self.depth_url = f"{base_rest.rstrip('/')}/api/v3/depth"
        self.decoder = decoder if decoder is not None else BinanceDecoder(provider)
        self.snapshot_limit = snapshot_limit
        self.open_timeout_s = open_timeout_s
        self.request_timeout_s = request_timeout_s
        self.ping_interval_s = ping_interval_s
        self.max_queue = max_queue
        self.max_frame_bytes = max_frame_bytes
        self._clock = clock
        self._rng = rng
        self._sink = sink
        self._on_frame = on_frame
        self._on_decode_error = on_decode_error or self._log_decode_error
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._backoff = DecorrelatedJitter(backoff_base_s, backoff_cap_s, rng)
        self.counters = StreamCounters()
        self.connected = asyncio.Event()
        """Set while the websocket is open."""
        self.synced = asyncio.Event()
        """Set while the websocket is open and every symbol's depth book is in sync."""
        self._state: bool | None = None
        """The connection state last sent to the sink (None: nothing sent yet)."""
        self._ws: ClientConnection | None = None
        self._fetching: dict[str, asyncio.Task[None]] = {}
        self._closer: asyncio.Task[None] | None = None
        self._fatal: BaseException | None = None
        self._resyncs_seen = 0
        self._inner: asyncio.Task[None] | None = None
        self._stop_requested = False
        self._log = get_logger(component="binance_market_data", provider=provider)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect, stream and reconnect until :meth:`stop`; raise :class:`SnapshotRejected` on a bad symbol."""
        if self._inner is not None and not self._inner.done():
            raise RuntimeError("BinanceMarketData.run() is already running")
        self._stop_requested = False
        self._fatal = None
        inner = asyncio.create_task(self._run_forever(), name=f"binance-md-{self.provider}")
        self._inner = inner
        try:
            await inner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stop_requested and (current is None or current.cancelling() == 0):
                return
            raise

    async def stop(self) -> None:
        """Stop :meth:`run` and wait until the socket is closed; safe at any time, also from the sink."""
        self._stop_requested = True
        inner = self._inner
        if inner is None or inner.done():
            return
        inner.cancel()
        if asyncio.current_task() is not inner:
            await asyncio.wait({inner})

    # ------------------------------------------------------------ the reconnect loop

    async def _run_forever(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                reason = await self._session(http)
                if self._fatal is not None:
                    raise self._fatal
                await self._set_state(False, reason)
                delay = self._backoff.next_delay()
                self.counters.reconnects += 1
                self._log.info("binance_md_reconnecting", delay_s=round(delay, 3), reason=reason)
                if delay > 0:
                    await self._clock.sleep(delay)

    async def _session(self, http: aiohttp.ClientSession) -> str:
        """One connection from open to close; returns why it ended."""
        self.counters.connects += 1
        try:
            ws = await connect(
                self.url,
                open_timeout=self.open_timeout_s,
                ping_interval=self.ping_interval_s,
                ping_timeout=self.ping_interval_s,
                close_timeout=1.0,
                max_size=self.max_frame_bytes,
                max_queue=self.max_queue,
            )
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            self._log.warning("binance_md_connect_failed", error=repr(exc)[:300])
            return f"connect failed: {exc!r}"[:200]
        self._ws = ws
        reason = "closed"
        try:
            self.decoder.reset_books()
            self._resyncs_seen = self.decoder.counters["resyncs"]
            self.connected.set()
            self._log.info("binance_md_connected", symbols=len(self.symbols))
            await self._set_state(True, "connected")
            for symbol in self.symbols:
                self._start_snapshot(http, symbol)
            while True:
                payload = await ws.recv(decode=False)
                await self._on_payload(http, payload if isinstance(payload, bytes) else payload.encode())
        except websockets.exceptions.ConnectionClosed as exc:
            reason = f"closed: {exc}"[:200]
            self._log.info("binance_md_disconnected", reason=reason)
        finally:
            self.counters.disconnects += 1
            self.connected.clear()
            self.synced.clear()
            fetching = list(self._fetching.values())
            self._fetching.clear()
            for task in fetching:
                task.cancel()
            await asyncio.gather(*fetching, return_exceptions=True)
            self._ws = None
            await ws.close()
        return reason

    async def _set_state(self, connected: bool, reason: str) -> None:
        if self._state is connected:
            return
        self._state = connected
        await self._sink(
            FeedState(provider=self.provider, connected=connected, reason=reason, ts_init=self._clock.time_ns())
        )

    # ------------------------------------------------------------ frames

    async def _on_payload(self, http: aiohttp.ClientSession, payload: bytes) -> None:
        now = self._clock.time_ns()
        self.counters.ws_frames += 1
        if self._on_frame is not None:
            self._on_frame(now, self.provider, payload)
        try:
            messages = self.decoder.decode(payload, now)
        except BinanceDecodeError as exc:
            self._on_decode_error(exc, payload)
            return
        for message in messages:
            await self._sink(message)
        if self.decoder.counters["resyncs"] != self._resyncs_seen:
            self._resyncs_seen = self.decoder.counters["resyncs"]
            self.synced.clear()
            for symbol in self.symbols:
                book = self.decoder.book(symbol)
                if book is not None and book.needs_resync:
                    self._log.warning("binance_md_book_gap", symbol=symbol, last_update_id=book.last_update_id)
                    self._start_snapshot(http, symbol)

    def _log_decode_error(self, exc: BinanceDecodeError, payload: bytes) -> None:
        n = self.decoder.counters["decode_errors"]
        if n <= _LOG_FIRST_DECODE_ERRORS or n % _LOG_DECODE_ERRORS_EVERY == 0:
            self._log.warning("binance_md_decode_error", reason=exc.reason[:300], sample=exc.sample, count=n)

    # ------------------------------------------------------------ depth snapshots

    def _start_snapshot(self, http: aiohttp.ClientSession, symbol: str) -> None:
        if symbol in self._fetching:
            return
        self._fetching[symbol] = asyncio.create_task(self._sync_book(http, symbol), name=f"binance-depth-{symbol}")

    async def _sync_book(self, http: aiohttp.ClientSession, symbol: str) -> None:
        """Fetch snapshots until ``symbol``'s book is in sync (or the session ends)."""
        backoff = DecorrelatedJitter(min(0.25, self._backoff_cap_s), self._backoff_cap_s, self._rng)
        try:
            while True:
                book = self.decoder.book(symbol)
                if book is not None and not book.needs_resync:
                    break
                delay: float | None = None
                try:
                    body = await self._get_depth(http, symbol)
                except _TransientSnapshotError as exc:
                    self.counters.snapshot_failures += 1
                    self._log.warning("binance_md_snapshot_failed", symbol=symbol, error=str(exc)[:300])
                    delay = exc.retry_after_s
                else:
                    now = self._clock.time_ns()
                    if self._on_frame is not None:
                        self._on_frame(now, self.provider, body)
                    try:
                        self.decoder.on_snapshot(symbol, body)
                    except BinanceDecodeError as exc:
                        self._on_decode_error(exc, body)
                    book = self.decoder.book(symbol)
                    if book is not None and book.synced:
                        self._log.info("binance_md_book_synced", symbol=symbol, last_update_id=book.last_update_id)
                        break
                pause = max(delay or 0.0, backoff.next_delay())
                if pause > 0:
                    await self._clock.sleep(pause)
        except SnapshotRejected as exc:
            self._log.error("binance_md_snapshot_rejected", symbol=symbol, status=exc.status, body=exc.body)
            self._fatal = exc
            ws = self._ws
            if ws is not None:
                self._closer = asyncio.ensure_future(ws.close())
            return
        finally:
            if self._fetching.get(symbol) is asyncio.current_task():
                del self._fetching[symbol]
        self._check_synced()

    def _check_synced(self) -> None:
        if self._ws is None or self.synced.is_set():
            return
        for symbol in self.symbols:
            book = self.decoder.book(symbol)
            if book is None or not book.synced:
                return
        self.synced.set()
        self._backoff.reset()

    async def _get_depth(self, http: aiohttp.ClientSession, symbol: str) -> bytes:
        self.counters.snapshot_requests += 1
        params = {"symbol": symbol, "limit": str(self.snapshot_limit)}
        try:
            async with http.get(self.depth_url, params=params) as response:
                body = await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _TransientSnapshotError(f"GET depth {symbol}: {exc!r}") from None
        if status == 200:
            return body
        text = body[:200].decode("utf-8", "replace")
        if status in RATE_LIMIT_STATUSES:
            wait = float(retry_after) if retry_after is not None and retry_after.isdigit() else None
            raise _TransientSnapshotError(f"GET depth {symbol}: HTTP {status} {text}", retry_after_s=wait)
        if 400 <= status < 500:
            raise SnapshotRejected(symbol, status, text)
        raise _TransientSnapshotError(f"GET depth {symbol}: HTTP {status} {text}")
