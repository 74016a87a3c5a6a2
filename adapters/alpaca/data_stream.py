"""Alpaca market-data stream v2 client: quotes and trades as engine messages.

Model (``shared/protocols/alpaca.md`` §3):

- One websocket to ``…/v2/{feed}``. With ``use_msgpack`` the handshake carries
  ``Content-Type: application/msgpack`` and both directions speak MessagePack (what the
  official SDKs do); otherwise JSON text. Server frames are decoded by their frame type
  (text → JSON, binary → the negotiated codec), so a server that answers in JSON anyway
  is still understood.
- Session: ``connected`` → we send ``auth`` → ``authenticated`` → we subscribe quotes and
  trades for our symbols → ``subscription`` echo: :attr:`AlpacaDataStream.subscribed` is
  set and the reconnect backoff is reset. Every session after a disconnect
  authenticates and subscribes again from scratch (the server keeps no state for us).
- Each ``q`` becomes an :class:`~engine.messages.ExchangeQuote` with ``national=True``
  (Alpaca quotes are the NBBO: bid at ``bx``, ask at ``ax``); each ``t`` a
  :class:`~engine.messages.TradeTick`. ``provider`` is ``alpaca-<feed>`` (the last path
  segment of the URL), ``ts_event`` the message's ``t`` in ns, ``ts_recv`` the clock's
  time when the frame arrived. ``suspicious`` is always False (Alpaca filters its feed;
  conditions are not interpreted). Each ``s`` (trading status) and ``l`` (LULD bands)
  becomes a :class:`~engine.messages.SymbolTradingStatus`: ``halted`` from the status
  code (:data:`HALTED_CODES` / :data:`TRADING_CODES`; other codes — imbalances, price
  indications, short-sale restriction — leave it ``None``, i.e. no change), bands from
  ``d``/``u`` as Decimals. Statuses and LULD are subscribed only with ``statuses=True``
  (they are a separate subscription, not on every plan/feed). Other message types (bars,
  corrections …) are counted as ignored.
- Recording and replay: ``on_frame(ts_recv_ns, provider, raw_bytes)`` is called for
  every frame received, before it is decoded (text frames as their UTF-8 bytes);
  :func:`decode_frame` turns such a frame back into the same engine messages, so a replay
  goes through the same decoders as the live session.
- Numbers: Alpaca sends prices as JSON / MessagePack numbers. JSON numbers are decoded
  straight from their text into :class:`~decimal.Decimal`, exactly. MessagePack prices
  are IEEE float64 on the wire; they become the Decimal of the float's shortest repr
  (``Decimal(repr(f))``: ``123.45`` stays ``123.45``, never
  ``123.4500000000000028…``). That is exact for every price with at most 15 significant
  digits, i.e. every US equity price. Timestamps keep their nanoseconds in both codecs
  (RFC 3339 strings in JSON, Timestamp extension type -1 in MessagePack).
- Validation: prices must be finite, not negative (a trade's positive) and below
  ``MAX_PRICE``; sizes between 0 and 2^63 − 1; a timestamp must be a valid time after the
  epoch. A frame or a message that fails is a :class:`DecodeError`: counted in
  ``counters.decode_errors``, logged (rate-limited), skipped. The session stays up and the
  other messages of the same frame are still delivered.
- Errors from the server, by code: 401/402 → :class:`StreamAuthError` (permanent, no
  retry); 400, 403, 405, 408–411 → :class:`StreamRejected` (permanent: retrying cannot
  help); 406 "connection limit exceeded" → wait ``backoff_cap_s`` (no reconnect storm
  against a slot another process holds), then try again, and after
  ``max_connection_limit_retries`` consecutive refusals → :class:`ConnectionLimitExceeded`;
  404, 407, 500 and unknown codes → reconnect with backoff.
- Reconnects: :class:`~engine.backoff.DecorrelatedJitter` (first retry immediate, then
  decorrelated jitter between ``backoff_base_s`` and ``backoff_cap_s``), drawn from the
  seeded ``rng``. A session that does not reach ``subscribed`` within
  ``handshake_timeout_s`` is closed and retried. A dead TCP connection is caught by
  websocket pings every ``heartbeat_s``.
- Backpressure: the sink is awaited for each message before the next frame is read, so
  nothing queues up in here; a consumer that is too slow lets the server's queue fill
  and the server drops us with 407, after which we reconnect.
"""

from __future__ import annotations

import asyncio
import enum
import random
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Generic, TypeVar
from urllib.parse import urlsplit

import aiohttp
import msgspec

from adapters.alpaca.wire import parse_timestamp
from engine.backoff import DecorrelatedJitter
from engine.clock import Clock
from engine.errors import KestrelError, UserError
from engine.logs import get_logger
from engine.messages import ExchangeQuote, SymbolTradingStatus, TradeTick
from engine.secrets import Secret

MSGPACK_CONTENT_TYPE: Final = "application/msgpack"
MAX_PRICE: Final = Decimal(1_000_000_000)
"""No US equity trades at or above a billion dollars; anything there is garbage."""
MAX_SIZE: Final = (1 << 63) - 1
MAX_TS_NS: Final = (1 << 63) - 1

AUTH_CODES: Final = frozenset({401, 402})
PERMANENT_CODES: Final = frozenset({400, 403, 405, 408, 409, 410, 411})
CONNECTION_LIMIT_CODE: Final = 406

HALTED_CODES: Final = frozenset({"2", "H", "P"})
"""Status codes that halt trading: CTA ``2`` trading halt; UTP ``H`` trading halt, ``P``
volatility trading pause. UTP ``Q`` (quotation resumption) re-opens quoting only, so it
leaves ``halted`` as it was."""
TRADING_CODES: Final = frozenset({"3", "T"})
"""Status codes that resume trading: CTA ``3`` resume; UTP ``T`` trading resumption."""

MarketEvent = ExchangeQuote | TradeTick | SymbolTradingStatus
Sink = Callable[[MarketEvent], Awaitable[None]]
FrameHook = Callable[[int, str, bytes], None]
"""``(ts_recv_ns, provider, raw frame bytes)``: what a recorder keeps of each frame."""


# ---------------------------------------------------------------- errors


class DataStreamError(KestrelError):
    """Base of the data stream's errors. ``code``/``msg`` are the server's, when it sent one."""

    def __init__(self, message: str, code: int | None = None, msg: str = "") -> None:
        self.code = code
        self.msg = msg
        super().__init__(message)


class StreamAuthError(DataStreamError, UserError):
    """The server refused our keys (401/402). Permanent: check the key id and secret."""


class StreamRejected(DataStreamError, UserError):
    """The server refused the session for good (e.g. 409 insufficient subscription): no retry can help."""


class ConnectionLimitExceeded(DataStreamError, UserError):
    """406 on every try: another connection holds this key's only slot for the endpoint."""


class DecodeError(DataStreamError):
    """A frame or message that is not valid Alpaca market data (counted and skipped, never raised out)."""


# ---------------------------------------------------------------- wire structs

TS = TypeVar("TS")


class _Head(msgspec.Struct):
    """Just the type tag of a message; every other key is ignored."""

    T: str


class _Quote(msgspec.Struct, Generic[TS]):
    S: str
    bx: str
    bp: Decimal
    bs: int
    ax: str
    ap: Decimal
    as_: int = msgspec.field(name="as")
    t: TS
    c: list[str] = []
    z: str = ""


class _Trade(msgspec.Struct, Generic[TS]):
    S: str
    x: str
    p: Decimal
    s: int
    t: TS
    i: int = 0
    c: list[str] = []
    z: str = ""


class _Status(msgspec.Struct, Generic[TS]):
    S: str
    sc: str
    t: TS
    sm: str = ""
    rc: str = ""
    rm: str = ""
    z: str = ""


class _Luld(msgspec.Struct, Generic[TS]):
    S: str
    u: Decimal
    d: Decimal
    t: TS
    i: str = ""
    z: str = ""


class _Success(msgspec.Struct):
    msg: str


class _Error(msgspec.Struct):
    code: int
    msg: str = ""


class _Subscription(msgspec.Struct):
    trades: list[str] = []
    quotes: list[str] = []


_MsgpackTime = msgspec.msgpack.Ext | str


class _Codec:
    """Decoders for one codec; ``t`` is a string in JSON and a Timestamp extension in MessagePack."""

    def __init__(self, msgpack: bool) -> None:
        self.msgpack = msgpack
        mod: Any = msgspec.msgpack if msgpack else msgspec.json
        time_type: Any = _MsgpackTime if msgpack else str
        self.frame = mod.Decoder(list[msgspec.Raw])
        self.head = mod.Decoder(_Head)
        self.quote = mod.Decoder(_Quote[time_type])
        self.trade = mod.Decoder(_Trade[time_type])
        self.status = mod.Decoder(_Status[time_type])
        self.luld = mod.Decoder(_Luld[time_type])
        self.success = mod.Decoder(_Success)
        self.error = mod.Decoder(_Error)
        self.subscription = mod.Decoder(_Subscription)
        self.encoder: Any = mod.Encoder()


_JSON_CODEC = _Codec(msgpack=False)
_MSGPACK_CODEC = _Codec(msgpack=True)


def timestamp_ns(value: object) -> int:
    """Nanoseconds since the epoch from a ``t`` value: an RFC 3339 string or a MessagePack Timestamp ext."""
    if isinstance(value, str):
        try:
            ns = parse_timestamp(value)
        except (ValueError, OverflowError) as exc:
            raise DecodeError(f"bad timestamp {value[:40]!r}: {exc}") from None
    elif isinstance(value, msgspec.msgpack.Ext):
        if value.code != -1:
            raise DecodeError(f"extension type {value.code} is not a timestamp")
        data = bytes(value.data)
        if len(data) == 4:
            (seconds,) = struct.unpack(">I", data)
            nanos = 0
        elif len(data) == 8:
            (packed,) = struct.unpack(">Q", data)
            nanos, seconds = packed >> 34, packed & ((1 << 34) - 1)
        elif len(data) == 12:
            nanos, seconds = struct.unpack(">Iq", data)
        else:
            raise DecodeError(f"timestamp extension of {len(data)} bytes")
        if nanos >= 1_000_000_000:
            raise DecodeError(f"timestamp nanoseconds out of range: {nanos}")
        ns = seconds * 1_000_000_000 + nanos
    else:
        raise DecodeError(f"timestamp of type {type(value).__name__}")
    if not 0 < ns <= MAX_TS_NS:
        raise DecodeError(f"timestamp out of range: {ns} ns")
    return ns


def _price(value: Decimal, what: str, positive: bool) -> Decimal:
    if not value.is_finite() or value < 0 or value >= MAX_PRICE or (positive and value == 0):
        raise DecodeError(f"bad {what} {value}")
    return value


def _size(value: int, what: str) -> Decimal:
    if not 0 <= value <= MAX_SIZE:
        raise DecodeError(f"bad {what} {value}")
    return Decimal(value)


def _symbol(value: str) -> str:
    if not value or len(value) > 32:
        raise DecodeError(f"bad symbol {value[:40]!r}")
    return value


# ---------------------------------------------------------------- data messages (pure)

DATA_KINDS: Final = frozenset({"q", "t", "s", "l"})
"""Message types that become engine messages; everything else is control or ignored."""


def _decode_quote(q: _Quote[Any], now: int, provider: str) -> ExchangeQuote:
    return ExchangeQuote(
        symbol=_symbol(q.S),
        exchange=q.bx,
        national=True,
        bid_price=_price(q.bp, "bid price", positive=False),
        bid_size=_size(q.bs, "bid size"),
        ask_price=_price(q.ap, "ask price", positive=False),
        ask_size=_size(q.as_, "ask size"),
        suspicious=False,
        provider=provider,
        ts_event=timestamp_ns(q.t),
        ts_recv=now,
        ask_exchange=q.ax,
    )


def _decode_trade(t: _Trade[Any], now: int, provider: str) -> TradeTick:
    return TradeTick(
        symbol=_symbol(t.S),
        exchange=t.x,
        price=_price(t.p, "trade price", positive=True),
        size=_size(t.s, "trade size"),
        suspicious=False,
        provider=provider,
        ts_event=timestamp_ns(t.t),
        ts_recv=now,
    )


def _decode_status(s: _Status[Any], now: int, provider: str) -> SymbolTradingStatus:
    halted = True if s.sc in HALTED_CODES else False if s.sc in TRADING_CODES else None
    parts = [f"{s.sc} {s.sm}".strip()]
    if s.rc or s.rm:
        parts.append(f"{s.rc} {s.rm}".strip())
    return SymbolTradingStatus(
        symbol=_symbol(s.S),
        halted=halted,
        reason=": ".join(parts)[:200],
        provider=provider,
        ts_event=timestamp_ns(s.t),
        ts_recv=now,
    )


def _decode_luld(band: _Luld[Any], now: int, provider: str) -> SymbolTradingStatus:
    lower = _price(band.d, "limit down", positive=False)
    upper = _price(band.u, "limit up", positive=False)
    if lower > upper:
        raise DecodeError(f"limit down {lower} above limit up {upper}")
    return SymbolTradingStatus(
        symbol=_symbol(band.S),
        halted=None,
        reason=f"luld {band.i}".strip(),
        provider=provider,
        ts_event=timestamp_ns(band.t),
        ts_recv=now,
        luld_lower=lower,
        luld_upper=upper,
    )


def _decode_data(codec: _Codec, kind: str, raw: msgspec.Raw, now: int, provider: str) -> MarketEvent:
    """One data message (``kind`` in :data:`DATA_KINDS`); raises DecodeError / msgspec.DecodeError."""
    if kind == "q":
        return _decode_quote(codec.quote.decode(raw), now, provider)
    if kind == "t":
        return _decode_trade(codec.trade.decode(raw), now, provider)
    if kind == "s":
        return _decode_status(codec.status.decode(raw), now, provider)
    return _decode_luld(codec.luld.decode(raw), now, provider)


def _looks_like_json(payload: bytes) -> bool:
    """A JSON frame is an array: its first non-blank byte is ``[``. A MessagePack array
    starts with 0x90–0x9F, 0xDC or 0xDD, never with ``[`` (0x5B is the integer 91)."""
    return payload.lstrip(b" \t\r\n")[:1] == b"["


def decode_frame(
    payload: bytes | str, ts_recv: int, provider: str, msgpack: bool, errors: list[str] | None = None
) -> list[MarketEvent]:
    """The engine messages in one recorded frame: what the live client would have delivered.

    ``payload`` is the frame as :data:`FrameHook` recorded it. ``str`` is always JSON;
    ``bytes`` are MessagePack when ``msgpack`` is set, unless they are a JSON array (a
    server may answer in JSON text frames whatever was negotiated, and a recording keeps
    only the bytes). Control messages (success, subscription, error) and types we do not
    use are skipped. A frame or message that does not decode is skipped, its reason
    appended to ``errors`` when given; the other messages of the frame are still returned.
    """
    if isinstance(payload, str):
        codec, data = _JSON_CODEC, payload.encode()
    else:
        data = payload
        codec = _MSGPACK_CODEC if msgpack and not _looks_like_json(payload) else _JSON_CODEC
    try:
        items = codec.frame.decode(data)
    except msgspec.DecodeError as exc:
        if errors is not None:
            errors.append(f"frame is not an array of messages: {exc}")
        return []
    events: list[MarketEvent] = []
    for raw in items:
        try:
            kind = codec.head.decode(raw).T
            if kind in DATA_KINDS:
                events.append(_decode_data(codec, kind, raw, ts_recv, provider))
        except (msgspec.DecodeError, DecodeError) as exc:
            if errors is not None:
                errors.append(str(exc))
    return events


# ---------------------------------------------------------------- the client


@dataclass
class StreamCounters:
    frames: int = 0
    """Websocket text/binary frames received, control messages included."""
    quotes: int = 0
    trades: int = 0
    statuses: int = 0
    lulds: int = 0
    decode_errors: int = 0
    ignored: int = 0
    """Well-formed messages of types we do not use (bars, corrections …)."""
    server_errors: int = 0
    connects: int = 0
    """Connection attempts, the first included."""
    reconnects: int = 0
    """Reconnect attempts after a session ended."""


class _End(enum.Enum):
    """Why a session ended without a permanent error."""

    CLOSED = "closed"
    CONNECTION_LIMIT = "connection_limit"


_LOG_FIRST_DECODE_ERRORS: Final = 10
_LOG_DECODE_ERRORS_EVERY: Final = 1000


class AlpacaDataStream:
    """Streams quotes and trades (and, with ``statuses``, halts and LULD bands) for ``symbols``
    into ``sink``, reconnecting until stopped.

    Call :meth:`run` in a task; it returns after :meth:`stop` and raises a
    :class:`DataStreamError` subclass when the server refuses us for good. ``rng`` must be
    seeded (it draws the backoff jitter).
    """

    def __init__(
        self,
        url: str,
        key_id: str,
        secret_key: Secret,
        symbols: Sequence[str],
        clock: Clock,
        rng: random.Random,
        sink: Sink,
        *,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        use_msgpack: bool = True,
        max_connection_limit_retries: int = 3,
        handshake_timeout_s: float = 10.0,
        heartbeat_s: float | None = 10.0,
        max_msg_size: int = 16 * 1024 * 1024,
        statuses: bool = False,
        on_frame: FrameHook | None = None,
    ) -> None:
        if not symbols:
            raise ValueError("need at least one symbol")
        if max_connection_limit_retries < 1:
            raise ValueError("max_connection_limit_retries must be >= 1")
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
            raise ValueError(f"not a websocket URL: {url!r}")
        self.url = url
        self.feed = parts.path.rstrip("/").rsplit("/", 1)[-1] or "unknown"
        self.provider = f"alpaca-{self.feed}"
        self.symbols = list(dict.fromkeys(symbols))
        self.use_msgpack = use_msgpack
        self.backoff_cap_s = backoff_cap_s
        self.max_connection_limit_retries = max_connection_limit_retries
        self.handshake_timeout_s = handshake_timeout_s
        self.heartbeat_s = heartbeat_s
        self.max_msg_size = max_msg_size
        self.statuses = statuses
        """Also subscribe to trading statuses (halts) and LULD bands."""
        self._on_frame_hook = on_frame
        self._key_id = key_id
        self._secret = secret_key
        self._clock = clock
        self._sink = sink
        self._backoff = DecorrelatedJitter(backoff_base_s, backoff_cap_s, rng)
        self._codec = _MSGPACK_CODEC if use_msgpack else _JSON_CODEC
        self.counters = StreamCounters()
        self.connected = False
        """True while a websocket is open (before and after authentication)."""
        self.last_message_ns: int | None = None
        """Clock time of the last frame received, any kind."""
        self.subscribed = asyncio.Event()
        """Set from the subscription echo until the session ends."""
        self._limit_refusals = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._inner: asyncio.Task[None] | None = None
        self._stop_requested = False
        self._closer: asyncio.Task[bool] | None = None
        self._log = get_logger(component="alpaca_data_stream", feed=self.feed)

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Connect, stream and reconnect until :meth:`stop`; raise on a permanent refusal.

        Cancelling the task that runs this closes the socket and re-raises the cancellation.
        """
        if self._inner is not None and not self._inner.done():
            raise RuntimeError("AlpacaDataStream.run() is already running")
        self._stop_requested = False
        inner = asyncio.create_task(self._run_forever(), name=f"alpaca-data-{self.feed}")
        self._inner = inner
        try:
            await inner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if self._stop_requested and (current is None or current.cancelling() == 0):
                return
            raise

    async def stop(self) -> None:
        """Stop :meth:`run` and wait until its socket is closed.

        Safe at any time and repeatedly, before :meth:`run` and from inside the sink (then it
        does not wait: the session ends at the sink's next await). If the caller of ``stop``
        is cancelled while waiting, the shutdown still completes in the background.
        """
        self._stop_requested = True
        inner = self._inner
        if inner is None or inner.done():
            return
        inner.cancel()
        if asyncio.current_task() is not inner:
            await asyncio.wait({inner})

    # ------------------------------------------------------------ the reconnect loop

    async def _run_forever(self) -> None:
        timeout = aiohttp.ClientWSTimeout(ws_close=1.0)
        async with aiohttp.ClientSession() as session:
            while True:
                end = await self._session(session, timeout)
                if end is _End.CONNECTION_LIMIT:
                    self._limit_refusals += 1
                    if self._limit_refusals >= self.max_connection_limit_retries:
                        raise ConnectionLimitExceeded(
                            f"{self.url}: connection limit exceeded {self._limit_refusals} times in a row; "
                            "another connection uses this key",
                            code=CONNECTION_LIMIT_CODE,
                            msg="connection limit exceeded",
                        )
                    delay = self.backoff_cap_s
                else:
                    delay = self._backoff.next_delay()
                self.counters.reconnects += 1
                self._log.info("alpaca_data_reconnecting", delay_s=round(delay, 3), reason=end.value)
                if delay > 0:
                    await self._clock.sleep(delay)

    async def _session(self, session: aiohttp.ClientSession, ws_timeout: aiohttp.ClientWSTimeout) -> _End:
        """One connection, from connect to close. Raises only permanent errors."""
        self.counters.connects += 1
        headers = {"Content-Type": MSGPACK_CONTENT_TYPE} if self.use_msgpack else {}
        try:
            ws = await session.ws_connect(
                self.url,
                headers=headers,
                heartbeat=self.heartbeat_s,
                timeout=ws_timeout,
                max_msg_size=self.max_msg_size,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._log.warning("alpaca_data_connect_failed", error=repr(exc))
            return _End.CLOSED
        self._ws = ws
        self.connected = True
        watchdog = self._clock.call_later(self.handshake_timeout_s, self._on_handshake_timeout)
        try:
            async for message in ws:
                if message.type is aiohttp.WSMsgType.BINARY:
                    codec = self._codec
                elif message.type is aiohttp.WSMsgType.TEXT:
                    codec = _JSON_CODEC
                else:  # ERROR
                    self._log.warning("alpaca_data_socket_error", error=repr(ws.exception()))
                    break
                end = await self._on_frame(ws, message.data, codec)
                if end is not None:
                    return end
            self._log.info("alpaca_data_disconnected", close_code=ws.close_code)
            return _End.CLOSED
        except (aiohttp.ClientError, ConnectionResetError) as exc:
            # A send on a socket that just went away.
            self._log.warning("alpaca_data_send_failed", error=repr(exc))
            return _End.CLOSED
        finally:
            watchdog.cancel()
            self.connected = False
            self.subscribed.clear()
            self._ws = None
            await ws.close()

    def _on_handshake_timeout(self) -> None:
        ws = self._ws
        if ws is not None and not self.subscribed.is_set():
            self._log.warning("alpaca_data_handshake_timeout", timeout_s=self.handshake_timeout_s)
            # Closing wakes the reader, which ends the session; it is then retried.
            self._closer = asyncio.ensure_future(ws.close())

    # ------------------------------------------------------------ frames

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, data: Any, codec: _Codec) -> _End | None:
        now = self._clock.time_ns()
        self.counters.frames += 1
        self.last_message_ns = now
        if self._on_frame_hook is not None:
            self._on_frame_hook(now, self.provider, data.encode() if isinstance(data, str) else bytes(data))
        try:
            items = codec.frame.decode(data)
        except msgspec.DecodeError as exc:
            self._decode_error(f"frame is not an array of messages: {exc}", data)
            return None
        for raw in items:
            try:
                kind = codec.head.decode(raw).T
                if kind in DATA_KINDS:
                    event: MarketEvent | None = _decode_data(codec, kind, raw, now, self.provider)
                    self._count(kind)
                else:
                    event = None
                    end = await self._on_control(ws, kind, raw, codec)
                    if end is not None:
                        return end
            except (msgspec.DecodeError, DecodeError) as exc:  # msgspec's ValidationError included
                self._decode_error(str(exc), bytes(raw))
                continue
            if event is not None:
                await self._sink(event)
        return None

    def _count(self, kind: str) -> None:
        counters = self.counters
        if kind == "q":
            counters.quotes += 1
        elif kind == "t":
            counters.trades += 1
        elif kind == "s":
            counters.statuses += 1
        else:
            counters.lulds += 1

    async def _on_control(
        self, ws: aiohttp.ClientWebSocketResponse, kind: str, raw: msgspec.Raw, codec: _Codec
    ) -> _End | None:
        if kind == "success":
            text = codec.success.decode(raw).msg
            if text == "connected":
                await self._send(ws, {"action": "auth", "key": self._key_id, "secret": self._secret.reveal()})
            elif text == "authenticated":
                subscribe: dict[str, Any] = {"action": "subscribe", "trades": self.symbols, "quotes": self.symbols}
                if self.statuses:
                    subscribe.update(statuses=self.symbols, lulds=self.symbols)
                await self._send(ws, subscribe)
            else:
                self._log.info("alpaca_data_unexpected_success", msg=text[:100])
        elif kind == "subscription":
            self._on_subscription(codec.subscription.decode(raw))
        elif kind == "error":
            return self._on_error(codec.error.decode(raw))
        else:
            self.counters.ignored += 1
        return None

    async def _send(self, ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> None:
        payload = self._codec.encoder.encode(message)
        if self.use_msgpack:
            await ws.send_bytes(payload)
        else:
            await ws.send_str(payload.decode())

    def _on_subscription(self, sub: _Subscription) -> None:
        missing = [
            s for s in self.symbols if not ({s, "*"} & set(sub.quotes) and {s, "*"} & set(sub.trades))
        ]
        if missing:
            self._log.warning("alpaca_data_subscription_incomplete", missing=missing[:20])
        if not self.subscribed.is_set():
            self._backoff.reset()
            self._limit_refusals = 0
            self.subscribed.set()
            self._log.info("alpaca_data_subscribed", symbols=len(self.symbols))

    def _on_error(self, error: _Error) -> _End | None:
        self.counters.server_errors += 1
        code, text = error.code, error.msg[:200]
        if code in AUTH_CODES:
            self._log.error("alpaca_data_auth_failed", code=code, msg=text)
            raise StreamAuthError(f"{self.url}: authentication refused ({code} {text})", code, text)
        if code in PERMANENT_CODES:
            self._log.error("alpaca_data_rejected", code=code, msg=text)
            raise StreamRejected(f"{self.url}: server refused the session ({code} {text})", code, text)
        if code == CONNECTION_LIMIT_CODE:
            self._log.warning(
                "alpaca_data_connection_limit", code=code, msg=text, retry_in_s=self.backoff_cap_s
            )
            return _End.CONNECTION_LIMIT
        # 404 auth timeout, 407 slow client, 500 internal error, codes we do not know: start over.
        self._log.warning("alpaca_data_server_error", code=code, msg=text)
        return _End.CLOSED

    def _decode_error(self, why: str, data: Any) -> None:
        self.counters.decode_errors += 1
        n = self.counters.decode_errors
        if n <= _LOG_FIRST_DECODE_ERRORS or n % _LOG_DECODE_ERRORS_EVERY == 0:
            sample = data[:120] if isinstance(data, bytes | str) else data
            self._log.warning("alpaca_data_decode_error", why=why[:300], sample=repr(sample), count=n)
