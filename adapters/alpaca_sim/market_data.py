"""The simulator's market-data stream: Alpaca's ``/v2/{feed}`` websocket, served by aiohttp.

Protocol (``shared/protocols/alpaca.md`` §3), as this hub models it:

- ``GET /v2/{feed}`` with ``feed`` in ``iex``, ``sip``, ``test``; any other feed is an HTTP 404.
- Codec: the client handshake header ``Content-Type: application/msgpack`` selects
  MessagePack both ways (server frames are binary); otherwise server frames are JSON text.
  Client frames are decoded by their frame type: text frames as JSON, binary frames as
  MessagePack when the handshake asked for it (as JSON otherwise). Fragmented client frames
  are put back together by aiohttp's reader before they reach us.
- Every server frame is an array of maps whose first key is ``T``. On connect the hub sends
  ``[{"T":"success","msg":"connected"}]``.
- Auth: ``{"action":"auth","key":K,"secret":S}`` → ``authenticated``; wrong keys → error 402
  (the connection stays open and may try again until the auth deadline); handshake headers
  ``APCA-API-KEY-ID``/``APCA-API-SECRET-KEY`` authenticate at connect (``authenticated``
  follows ``connected`` at once). No auth within ``auth_timeout_s`` (10 s like Alpaca) → 404
  and close. A second auth → 403. Actions other than auth before auth → 401.
- Connection limit: one authenticated connection per (feed, key), i.e. per endpoint as
  Alpaca's docs put it. The second one gets 406 and is closed; the first keeps running.
- ``subscribe``/``unsubscribe`` add/remove symbols of ``trades``, ``quotes`` and ``bars``;
  the answer is ``subscription`` with the FULL current set (``corrections`` and
  ``cancelErrors`` mirror ``trades`` as Alpaca does). The other channels
  (``updatedBars``, ``dailyBars``, ``statuses``, ``lulds``, ``news``, ``orderbooks``)
  are accepted and echoed empty: the simulator has no such data. ``*`` means every symbol.
  Anything that is not a well-formed action → 400 "invalid syntax" (the connection stays).
- Data: :meth:`MarketDataHub.publish_quote` / :meth:`MarketDataHub.publish_trade` fan a
  :class:`SimQuote`/:class:`SimTrade` out to the ``iex`` and ``sip`` connections subscribed
  to its symbol, one message per frame. The ``test`` feed serves only ``test_symbol``
  (FAKEPACA): a seeded random walk emits one quote and one trade every ``test_interval_s``
  while some test connection is subscribed to it.
- Numbers on the data stream are JSON/MessagePack numbers (Alpaca's format): the exact
  decimal text in JSON, a float64 in MessagePack. Timestamps are RFC 3339 strings with
  nanoseconds in JSON and MessagePack Timestamp extensions (type -1, nanoseconds kept) in
  MessagePack, which is what ``alpaca-py`` expects (it calls ``.to_datetime()`` on them).

Backpressure: each connection has a bounded frame queue drained by its own writer task.
A publish never waits: a connection whose queue is full has fallen too far behind and
gets error 407 "slow client" (its pending frames are dropped to make room for it) and is
closed; if its socket does not drain within ``slow_close_grace_s`` it is aborted.

Fault hooks, when the hub is given the venue's ``Faults`` (``state.py``; the simulator
does so): ``md_drop_next`` / ``md_duplicate_next`` / ``md_reorder_next`` act in
:meth:`MarketDataHub._fan_out`, once per published quote/trade frame, on every
subscriber of it alike (a held-back frame waits per connection and follows the next
frame that connection gets); :meth:`MarketDataHub.disconnect_all` backs
``disconnect_market_data``; :meth:`MarketDataHub.stall` backs ``stall_streams``: a stalled
connection gets no quote/trade frames (they are dropped, not queued), its control
frames wait in its queue, and its pings go unanswered until the stall ends (engine
clock). Pings are answered by the reader, not by aiohttp's autoping, so that a stall can
withhold them. :meth:`MarketDataHub.silence` backs ``silence_feed``: until the silence
ends (engine clock) no quote/trade frame goes to any connection of that feed, open or
opened meanwhile (dropped, not queued), while pings and control frames flow as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import msgspec
from aiohttp import web

from adapters.alpaca.wire import timestamp
from adapters.alpaca_sim.events import SimQuote, SimTrade
from engine.clock import Clock, TimerHandle
from engine.logs import get_logger

if TYPE_CHECKING:
    from adapters.alpaca_sim.state import Faults

FEEDS: Final = frozenset({"iex", "sip", "test"})
"""Feeds the hub serves; ``test`` carries only the synthetic test symbol."""
MSGPACK_CONTENT_TYPE: Final = "application/msgpack"
KEY_HEADER: Final = "APCA-API-KEY-ID"
SECRET_HEADER: Final = "APCA-API-SECRET-KEY"

CHANNELS: Final = ("trades", "quotes", "bars")
"""Channels whose subscriptions the hub keeps."""
EMPTY_CHANNELS: Final = ("updatedBars", "dailyBars", "statuses", "lulds")
"""Channels accepted and echoed, always empty (the simulator has no such data)."""

# Error codes and texts of alpaca.md §3.
ERR_INVALID_SYNTAX: Final = (400, "invalid syntax")
ERR_NOT_AUTHENTICATED: Final = (401, "not authenticated")
ERR_AUTH_FAILED: Final = (402, "auth failed")
ERR_ALREADY_AUTHENTICATED: Final = (403, "already authenticated")
ERR_AUTH_TIMEOUT: Final = (404, "auth timeout")
ERR_CONNECTION_LIMIT: Final = (406, "connection limit exceeded")
ERR_SLOW_CLIENT: Final = (407, "slow client")

_MSGPACK = msgspec.msgpack.Encoder(decimal_format="number")
_JSON = msgspec.json.Encoder(decimal_format="number")
_TS32_MAX: Final = 1 << 32
_TS64_MAX: Final = 1 << 34

Frame = bytes | str
"""An encoded server frame: bytes for MessagePack (binary), str for JSON (text)."""


def msgpack_timestamp(ts_ns: int) -> msgspec.msgpack.Ext:
    """A MessagePack Timestamp extension (type -1) holding ``ts_ns`` exactly.

    Uses the 32-, 64- or 96-bit layout of the MessagePack spec, like every encoder does;
    ``msgpack.Timestamp.from_bytes`` (what ``alpaca-py`` gets) reads all three.
    """
    seconds, nanos = divmod(ts_ns, 1_000_000_000)
    if nanos == 0 and 0 <= seconds < _TS32_MAX:
        return msgspec.msgpack.Ext(-1, struct.pack(">I", seconds))
    if 0 <= seconds < _TS64_MAX:
        return msgspec.msgpack.Ext(-1, struct.pack(">Q", (nanos << 34) | seconds))
    return msgspec.msgpack.Ext(-1, struct.pack(">Iq", nanos, seconds))


def quote_message(q: SimQuote, msgpack: bool) -> dict[str, Any]:
    """Alpaca's ``q`` map for ``q`` (``T`` first)."""
    return {
        "T": "q",
        "S": q.symbol,
        "bx": q.bid_exchange,
        "bp": q.bid_price,
        "bs": q.bid_size,
        "ax": q.ask_exchange,
        "ap": q.ask_price,
        "as": q.ask_size,
        "t": msgpack_timestamp(q.ts_ns) if msgpack else timestamp(q.ts_ns),
        "c": list(q.conditions),
        "z": q.tape,
    }


def trade_message(t: SimTrade, msgpack: bool) -> dict[str, Any]:
    """Alpaca's ``t`` map for ``t`` (``T`` first)."""
    return {
        "T": "t",
        "S": t.symbol,
        "i": t.trade_id,
        "x": t.exchange,
        "p": t.price,
        "s": t.size,
        "t": msgpack_timestamp(t.ts_ns) if msgpack else timestamp(t.ts_ns),
        "c": list(t.conditions),
        "z": t.tape,
    }


def encode_frame(messages: list[dict[str, Any]], msgpack: bool) -> Frame:
    """One server frame: an array of maps, MessagePack bytes or JSON text."""
    if msgpack:
        return _MSGPACK.encode(messages)
    return _JSON.encode(messages).decode()


def _error(code_msg: tuple[int, str]) -> dict[str, Any]:
    return {"T": "error", "code": code_msg[0], "msg": code_msg[1]}


class _ClientAction(msgspec.Struct):
    """A client → server frame. Unknown keys are ignored; wrong types are a 400."""

    action: str
    key: str | None = None
    secret: str | None = None
    trades: list[str] = []
    quotes: list[str] = []
    bars: list[str] = []
    updatedBars: list[str] = []
    dailyBars: list[str] = []
    statuses: list[str] = []
    lulds: list[str] = []
    news: list[str] = []
    orderbooks: list[str] = []
    corrections: list[str] = []
    cancelErrors: list[str] = []


_ACTION_JSON = msgspec.json.Decoder(_ClientAction)
_ACTION_MSGPACK = msgspec.msgpack.Decoder(_ClientAction)


@dataclass
class HubCounters:
    """What the hub has done since it was built (read by tests and stats)."""

    connections: int = 0
    """Websocket handshakes accepted."""
    authenticated: int = 0
    auth_failures: int = 0
    auth_timeouts: int = 0
    connection_limit_rejections: int = 0
    invalid_messages: int = 0
    slow_clients: int = 0
    quotes_published: int = 0
    trades_published: int = 0
    frames_queued: int = 0
    frames_sent: int = 0
    dropped_connections: int = 0
    """Connections aborted by :meth:`MarketDataHub.close_all`."""
    frames_dropped_stalled: int = 0
    """Quote/trade frames not sent to a stalled connection (the ``stall_streams`` fault)."""
    frames_dropped_silenced: int = 0
    """Quote/trade frames not sent to a connection of a silenced feed (the ``silence_feed`` fault)."""


class _Connection:
    """One client websocket: codec, auth state, subscriptions and its bounded outbox."""

    def __init__(
        self, feed: str, msgpack: bool, ws: web.WebSocketResponse, request: web.Request, queue_size: int
    ) -> None:
        self.feed = feed
        self.msgpack = msgpack
        self.ws = ws
        self.request = request
        self.outbox: asyncio.Queue[Frame | None] = asyncio.Queue(maxsize=queue_size)
        """Frames to send; ``None`` tells the writer to close the socket."""
        self.key: str | None = None
        self.authenticated = False
        self.closing = False
        self.subs: dict[str, dict[str, None]] = {channel: {} for channel in CHANNELS}
        """Per channel, the subscribed symbols in subscription order (a dict as an ordered set)."""
        self.timers: list[TimerHandle] = []
        self.done = asyncio.Event()
        self.stalled_until_ns = 0
        """A stall fault: nothing is sent and pings go unanswered until then (epoch ns)."""
        self.held: Frame | None = None
        """A frame held back by the ``md_reorder_next`` fault, sent after the next one."""

    def wants(self, channel: str, symbol: str) -> bool:
        subs = self.subs[channel]
        return symbol in subs or "*" in subs

    def abort(self) -> None:
        """Drop the TCP connection without a close frame."""
        self.closing = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class MarketDataHub:
    """Serves Alpaca's market-data stream v2 to any number of websocket clients.

    ``authorize(key, secret)`` says whether a key pair is valid. Mount :meth:`handle` on
    ``GET /v2/{feed}``. All timers use ``clock``; the test feed's random walk uses ``rng``
    (a seeded ``random.Random(0)`` when none is given).
    """

    def __init__(
        self,
        authorize: Callable[[str, str], bool],
        clock: Clock,
        test_symbol: str = "FAKEPACA",
        *,
        auth_timeout_s: float = 10.0,
        queue_size: int = 1024,
        slow_close_grace_s: float = 1.0,
        test_interval_s: float = 0.1,
        rng: random.Random | None = None,
        faults: Faults | None = None,
    ) -> None:
        if queue_size < 2:
            raise ValueError("queue_size must be at least 2 (an error frame and the close)")
        self._authorize = authorize
        self._clock = clock
        self.test_symbol = test_symbol
        self.auth_timeout_s = auth_timeout_s
        self.queue_size = queue_size
        self.slow_close_grace_s = slow_close_grace_s
        self.test_interval_s = test_interval_s
        self._rng = rng if rng is not None else random.Random(0)
        self.counters = HubCounters()
        self._connections: set[_Connection] = set()
        self._by_key: dict[tuple[str, str], _Connection] = {}
        self._test_timer: TimerHandle | None = None
        self._test_mid_cents = 10_000
        self._test_trade_id = 0
        self._log = get_logger(component="alpaca_sim_market_data")
        self._silent_until_ns: dict[str, int] = {}
        """Per feed, the end of its ``silence_feed`` fault (epoch ns); a feed, not a connection,
        goes quiet, so a client that reconnects hears nothing either."""
        self._faults = faults
        if faults is not None:
            faults.add_market_data_disconnector(self.disconnect_all)
            faults.add_stall_target(self.stall)
            faults.add_silence_target(self.silence)

    # ------------------------------------------------------------ introspection

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def subscribers(self, channel: str, symbol: str, feed: str | None = None) -> int:
        """How many authenticated connections (of ``feed``, or any) would get ``symbol`` on ``channel``."""
        return sum(
            1
            for c in self._connections
            if c.authenticated
            and not c.closing
            and (feed is None or c.feed == feed)
            and c.wants(channel, symbol)
        )

    # ------------------------------------------------------------ publishing

    def publish_quote(self, q: SimQuote) -> None:
        """Send ``q`` to every iex/sip connection subscribed to its quotes. Never waits."""
        self.counters.quotes_published += 1
        self._fan_out_quote(q, test=False)

    def publish_trade(self, t: SimTrade) -> None:
        """Send ``t`` to every iex/sip connection subscribed to its trades. Never waits."""
        self.counters.trades_published += 1
        self._fan_out_trade(t, test=False)

    def _fan_out_quote(self, q: SimQuote, test: bool) -> None:
        self._fan_out("quotes", q.symbol, lambda mp: encode_frame([quote_message(q, mp)], mp), test)

    def _fan_out_trade(self, t: SimTrade, test: bool) -> None:
        self._fan_out("trades", t.symbol, lambda mp: encode_frame([trade_message(t, mp)], mp), test)

    def _fan_out(self, channel: str, symbol: str, encode: Callable[[bool], Frame], test: bool) -> None:
        targets: list[_Connection] = []
        now = self._clock.time_ns()
        silent = self._silent_until_ns
        for conn in tuple(self._connections):
            if (conn.feed == "test") != test or not conn.authenticated or conn.closing:
                continue
            if not conn.wants(channel, symbol):
                continue
            if conn.stalled_until_ns > now:
                self.counters.frames_dropped_stalled += 1
                continue
            if silent and silent.get(conn.feed, 0) > now:
                self.counters.frames_dropped_silenced += 1
                continue
            targets.append(conn)
        if not targets:
            return
        fault = None
        if self._faults is not None:
            fault = self._faults.next_md_fault(can_reorder=all(conn.held is None for conn in targets))
            if fault == "drop":
                return
        # Encoded at most once per codec, shared by every connection that gets it.
        frames: dict[bool, Frame] = {}
        for conn in targets:
            frame = frames.get(conn.msgpack)
            if frame is None:
                frame = frames[conn.msgpack] = encode(conn.msgpack)
            if fault == "reorder":
                conn.held = frame
            else:
                self._offer(conn, frame, copies=2 if fault == "duplicate" else 1)

    def _offer(self, conn: _Connection, frame: Frame, copies: int = 1) -> None:
        """Queue ``frame`` (``copies`` times), then the frame held back for reordering, if any."""
        for _ in range(copies):
            if conn.closing:
                return
            try:
                conn.outbox.put_nowait(frame)
            except asyncio.QueueFull:
                self._drop_slow(conn)
                return
            self.counters.frames_queued += 1
        held = conn.held
        if held is not None:
            conn.held = None
            self._offer(conn, held)

    def _send(self, conn: _Connection, *messages: dict[str, Any]) -> None:
        self._offer(conn, encode_frame(list(messages), conn.msgpack))

    def _send_and_close(self, conn: _Connection, code_msg: tuple[int, str]) -> None:
        """Queue an error and then the close; nothing queued after them is sent.

        Frames still waiting are dropped when there is no room left for the two: the
        connection is going away, and the error must be the last thing it sees.
        """
        if conn.closing:
            return
        conn.closing = True
        outbox = conn.outbox
        if outbox.maxsize - outbox.qsize() < 2:
            while not outbox.empty():
                outbox.get_nowait()
        outbox.put_nowait(encode_frame([_error(code_msg)], conn.msgpack))
        outbox.put_nowait(None)
        self.counters.frames_queued += 1

    def _drop_slow(self, conn: _Connection) -> None:
        """The client fell ``queue_size`` frames behind: its backlog goes, 407, close.

        If its socket does not drain within ``slow_close_grace_s`` it is aborted.
        """
        self.counters.slow_clients += 1
        self._log.warning("alpaca_md_slow_client", feed=conn.feed, queued=conn.outbox.qsize())
        self._send_and_close(conn, ERR_SLOW_CLIENT)
        conn.timers.append(self._clock.call_later(self.slow_close_grace_s, conn.abort))

    # ------------------------------------------------------------ connections

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler for ``GET /v2/{feed}``."""
        feed = request.match_info.get("feed", "")
        if feed not in FEEDS:
            raise web.HTTPNotFound(text=f"unknown feed {feed!r}")
        ws = web.WebSocketResponse(autoping=False)  # pings: answered in _read (a stall withholds them)
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="websocket upgrade required")
        await ws.prepare(request)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        msgpack = content_type == MSGPACK_CONTENT_TYPE
        conn = _Connection(feed, msgpack, ws, request, self.queue_size)
        self._connections.add(conn)
        self.counters.connections += 1
        writer = asyncio.create_task(self._writer(conn), name=f"alpaca-md-writer-{feed}")
        try:
            self._send(conn, {"T": "success", "msg": "connected"})
            key = request.headers.get(KEY_HEADER)
            secret = request.headers.get(SECRET_HEADER)
            if key is not None and secret is not None:
                self._authenticate(conn, key, secret)
            if not conn.authenticated and not conn.closing:
                deadline = self._clock.call_later(self.auth_timeout_s, lambda: self._auth_deadline(conn))
                conn.timers.append(deadline)
            await self._read(conn)
        finally:
            self._forget(conn)
            for timer in conn.timers:
                timer.cancel()
            try:
                if not writer.done():
                    transport = request.transport
                    if ws.closed or transport is None or transport.is_closing():
                        writer.cancel()
                    elif not conn.closing:
                        # The reader stopped first: let what is queued go out, then close.
                        conn.closing = True
                        if conn.outbox.full():
                            writer.cancel()
                        else:
                            conn.outbox.put_nowait(None)
                    await asyncio.wait({writer})
            finally:
                writer.cancel()
                conn.done.set()
        return ws

    async def _read(self, conn: _Connection) -> None:
        async for msg in conn.ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._on_client_frame(conn, msg.data, binary=False)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                self._on_client_frame(conn, msg.data, binary=True)
            elif msg.type is aiohttp.WSMsgType.PING:
                if conn.stalled_until_ns <= self._clock.time_ns():  # a stalled connection stays silent
                    with contextlib.suppress(ConnectionError):
                        await conn.ws.pong(msg.data)
            elif msg.type is aiohttp.WSMsgType.PONG:
                continue
            else:  # ERROR: a protocol violation or a lost transport
                self._log.info("alpaca_md_client_error", feed=conn.feed, error=repr(conn.ws.exception()))
                return

    async def _writer(self, conn: _Connection) -> None:
        while True:
            frame = await conn.outbox.get()
            while conn.stalled_until_ns > self._clock.time_ns():
                await self._clock.sleep_until(conn.stalled_until_ns)
            if frame is None:
                await conn.ws.close()
                return
            try:
                if isinstance(frame, bytes):
                    await conn.ws.send_bytes(frame)
                else:
                    await conn.ws.send_str(frame)
            except ConnectionResetError as exc:  # aiohttp's ClientConnectionResetError too
                self._log.info("alpaca_md_send_failed", feed=conn.feed, error=repr(exc))
                conn.closing = True
                return
            self.counters.frames_sent += 1

    def _forget(self, conn: _Connection) -> None:
        self._connections.discard(conn)
        if conn.key is not None and self._by_key.get((conn.feed, conn.key)) is conn:
            del self._by_key[(conn.feed, conn.key)]

    def _auth_deadline(self, conn: _Connection) -> None:
        if not conn.authenticated and not conn.closing:
            self.counters.auth_timeouts += 1
            self._send_and_close(conn, ERR_AUTH_TIMEOUT)

    def _authenticate(self, conn: _Connection, key: str, secret: str) -> None:
        if not self._authorize(key, secret):
            self.counters.auth_failures += 1
            self._send(conn, _error(ERR_AUTH_FAILED))
            return
        holder = self._by_key.get((conn.feed, key))
        if holder is not None and holder is not conn:
            self.counters.connection_limit_rejections += 1
            self._send_and_close(conn, ERR_CONNECTION_LIMIT)
            return
        self._by_key[(conn.feed, key)] = conn
        conn.key = key
        conn.authenticated = True
        self.counters.authenticated += 1
        self._send(conn, {"T": "success", "msg": "authenticated"})

    def _on_client_frame(self, conn: _Connection, data: Any, binary: bool) -> None:
        if conn.closing:
            return
        try:
            decoder = _ACTION_MSGPACK if binary and conn.msgpack else _ACTION_JSON
            action = decoder.decode(data)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            self._invalid(conn, f"undecodable action: {exc}")
            return
        if action.action == "auth":
            if conn.authenticated:
                self._send(conn, _error(ERR_ALREADY_AUTHENTICATED))
            elif action.key is None or action.secret is None:
                self._invalid(conn, "auth without key or secret")
            else:
                self._authenticate(conn, action.key, action.secret)
        elif action.action in ("subscribe", "unsubscribe"):
            if not conn.authenticated:
                self._send(conn, _error(ERR_NOT_AUTHENTICATED))
                return
            self._update_subscriptions(conn, action)
        else:
            self._invalid(conn, f"unknown action {action.action!r}")

    def _invalid(self, conn: _Connection, why: str) -> None:
        self.counters.invalid_messages += 1
        self._log.info("alpaca_md_invalid_action", feed=conn.feed, why=why[:200])
        self._send(conn, _error(ERR_INVALID_SYNTAX))

    def _update_subscriptions(self, conn: _Connection, action: _ClientAction) -> None:
        adding = action.action == "subscribe"
        # corrections/cancelErrors follow trades; the client may name them but cannot hold them alone.
        requested = {"trades": action.trades, "quotes": action.quotes, "bars": action.bars}
        for channel, symbols in requested.items():
            subs = conn.subs[channel]
            for symbol in symbols:
                if not symbol:
                    continue
                if adding:
                    subs[symbol] = None
                else:
                    subs.pop(symbol, None)
        trades = list(conn.subs["trades"])
        echo: dict[str, Any] = {
            "T": "subscription",
            "trades": trades,
            "quotes": list(conn.subs["quotes"]),
            "bars": list(conn.subs["bars"]),
        }
        for channel in EMPTY_CHANNELS:
            echo[channel] = []
        echo["corrections"] = list(trades)
        echo["cancelErrors"] = list(trades)
        self._send(conn, echo)
        if conn.feed == "test":
            self._ensure_test_timer()

    def stall(self, until_ns: int) -> int:
        """Stall every open connection until ``until_ns`` (engine clock); returns how many."""
        for conn in self._connections:
            conn.stalled_until_ns = max(conn.stalled_until_ns, until_ns)
        return len(self._connections)

    def silence(self, feed: str, until_ns: int) -> int:
        """Send no quote/trade frames on ``feed`` until ``until_ns`` (engine clock); returns how
        many of its connections are open. Its connections stay up and answer pings."""
        if feed not in FEEDS:
            raise ValueError(f"unknown feed {feed!r} (known: {', '.join(sorted(FEEDS))})")
        self._silent_until_ns[feed] = max(self._silent_until_ns.get(feed, 0), until_ns)
        open_now = sum(1 for conn in self._connections if conn.feed == feed)
        self._log.info("alpaca_md_feed_silenced", feed=feed, until_ns=until_ns, connections=open_now)
        return open_now

    def silent(self, feed: str) -> bool:
        """Whether ``feed`` is silenced right now (engine clock)."""
        return self._silent_until_ns.get(feed, 0) > self._clock.time_ns()

    async def disconnect_all(self) -> int:
        """:meth:`close_all`, returning how many connections were dropped."""
        dropped = len(self._connections)
        await self.close_all()
        return dropped

    async def close_all(self) -> None:
        """Drop every connection abruptly (no close frame), as a network failure would.

        Connections leave the per-key registry at once, so a client that reconnects
        immediately is not refused with 406. Returns when every handler has finished.
        """
        conns = tuple(self._connections)
        for conn in conns:
            self._forget(conn)
            conn.abort()
            self.counters.dropped_connections += 1
        if self._test_timer is not None:
            self._test_timer.cancel()
            self._test_timer = None
        for conn in conns:
            await conn.done.wait()

    # ------------------------------------------------------------ the test feed

    def _test_targets(self) -> list[_Connection]:
        sym = self.test_symbol
        return [
            c
            for c in self._connections
            if c.feed == "test"
            and c.authenticated
            and not c.closing
            and (c.wants("quotes", sym) or c.wants("trades", sym))
        ]

    def _ensure_test_timer(self) -> None:
        if self._test_timer is None and self._test_targets():
            self._test_timer = self._clock.call_later(self.test_interval_s, self._test_tick)

    def _test_tick(self) -> None:
        """One step of the test symbol's random walk: a quote and a trade, in cents."""
        self._test_timer = None
        if not self._test_targets():
            return
        rng = self._rng
        self._test_mid_cents = max(100, self._test_mid_cents + rng.choice((-2, -1, 0, 1, 2)))
        bid = self._test_mid_cents - rng.randint(1, 2)
        ask = self._test_mid_cents + rng.randint(1, 2)
        now = self._clock.time_ns()
        quote = SimQuote(
            symbol=self.test_symbol,
            bid_exchange="V",
            bid_price=Decimal(bid).scaleb(-2),
            bid_size=rng.randint(1, 10),
            ask_exchange="V",
            ask_price=Decimal(ask).scaleb(-2),
            ask_size=rng.randint(1, 10),
            ts_ns=now,
            conditions=["R"],
            tape="C",
        )
        self._test_trade_id += 1
        trade = SimTrade(
            symbol=self.test_symbol,
            trade_id=self._test_trade_id,
            exchange="V",
            price=Decimal(bid if rng.random() < 0.5 else ask).scaleb(-2),
            size=rng.randint(1, 5) * 100,
            ts_ns=now,
            conditions=["@"],
            tape="C",
        )
        self._fan_out_quote(quote, test=True)
        self._fan_out_trade(trade, test=True)
        self._test_timer = self._clock.call_later(self.test_interval_s, self._test_tick)
