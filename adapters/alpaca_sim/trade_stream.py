"""The simulator's ``trade_updates`` websocket (``GET /stream``), as Alpaca's paper endpoint speaks it.

Protocol (``shared/protocols/alpaca.md`` §2):

- client → ``{"action":"authenticate","data":{"key_id":K,"secret_key":S}}``; server →
  ``{"stream":"authorization","data":{"status":"authorized","action":"authenticate"}}``
  (``"unauthorized"`` for wrong keys).
- client → ``{"action":"listen","data":{"streams":["trade_updates"]}}`` (the list replaces
  the current set); server → ``{"stream":"listening","data":{"streams":[...]}}``. A listen
  before authentication is answered ``authorization`` / ``unauthorized`` / ``listen``.
- events: ``{"stream":"trade_updates","data":{event, order, timestamp, ...}}``.
- Server frames are **binary** frames holding JSON (like paper); client frames may be
  text or binary. A frame that is not a JSON action gets
  ``{"stream":"error","data":{"error_message":...}}`` [inferred: the error frame's shape
  is not documented].

A slow or dead client never blocks the venue: each connection has a bounded send queue
drained by its own writer task; when the queue is full the connection is aborted.

Fault hooks (``Faults`` in ``state.py``): :meth:`TradeStreamHub.disconnect_all` backs
``disconnect_streams``; :meth:`TradeStreamHub.stall` backs ``stall_streams``: a stalled
connection's writer waits (its updates stay queued, in order) and its pings go
unanswered until the stall ends (engine clock). Pings are answered by the handler, not by
aiohttp's autoping, so that a stall can withhold them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Final

import msgspec
from aiohttp import WSMsgType, web

from adapters.alpaca import wire
from adapters.alpaca_sim.state import VenueState
from engine.clock import Clock
from engine.logs import get_logger

TRADE_UPDATES: Final = "trade_updates"
log = get_logger(actor="alpaca-sim-stream")

_encoder = msgspec.json.Encoder()
_action_decoder = msgspec.json.Decoder(wire.ClientAction)


def encode_frame(stream: str, data: Any) -> bytes:
    return _encoder.encode({"stream": stream, "data": data})


class _Connection:
    def __init__(self, request: web.Request, ws: web.WebSocketResponse, queue_limit: int) -> None:
        self.request = request
        self.ws = ws
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_limit)
        self.authorized = False
        self.streams: list[str] = []
        self.dropped = False
        self.writer: asyncio.Task[None] | None = None
        self.stalled_until_ns = 0
        """A stall fault: nothing is sent and pings go unanswered until then (epoch ns)."""

    def offer(self, frame: bytes) -> None:
        """Queue ``frame``; abort the connection if its queue is full (a slow or dead client)."""
        if self.dropped:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("stream_client_too_slow", remote=self.request.remote, queued=self.queue.qsize())
            self.abort()

    @property
    def listening(self) -> bool:
        return self.authorized and not self.dropped and TRADE_UPDATES in self.streams

    def abort(self) -> None:
        self.dropped = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    async def write_loop(self, clock: Clock) -> None:
        while True:
            frame = await self.queue.get()
            while self.stalled_until_ns > clock.time_ns():
                await clock.sleep_until(self.stalled_until_ns)
            if self.ws.closed:
                return
            try:
                await self.ws.send_bytes(frame)
            except ConnectionError as exc:
                log.info("stream_send_failed", remote=self.request.remote, error=repr(exc))
                self.abort()
                return


class TradeStreamHub:
    """Fans the venue's trade updates out to the authorized, listening ``/stream`` clients."""

    def __init__(
        self, state: VenueState, authorize: Callable[[str, str], bool], queue_limit: int = 1024
    ) -> None:
        self.state = state
        self.authorize = authorize
        self.queue_limit = queue_limit
        self.connections: set[_Connection] = set()
        self.sent = 0
        self._unsubscribe = state.subscribe(self._on_update)
        state.faults.add_stream_disconnector(self.disconnect_all)
        state.faults.add_stall_target(self.stall)

    def _on_update(self, update: wire.TradeUpdate) -> None:
        if not self.connections:
            return
        frame = encode_frame(TRADE_UPDATES, update)
        for conn in list(self.connections):
            if conn.authorized and TRADE_UPDATES in conn.streams:
                conn.offer(frame)
                self.sent += 1

    def disconnect_all(self) -> int:
        """Abort every connection without a close handshake (a network failure)."""
        dropped = 0
        for conn in list(self.connections):
            conn.abort()
            dropped += 1
        self._note_listeners()
        return dropped

    def _note_listeners(self) -> None:
        """Keep :attr:`VenueState.trade_stream_down_since_ns` true to the connections now open."""
        if any(conn.listening for conn in self.connections):
            self.state.trade_stream_down_since_ns = None
        elif self.state.trade_stream_down_since_ns is None:
            self.state.trade_stream_down_since_ns = self.state.clock.time_ns()

    def stall(self, until_ns: int) -> int:
        """Stall every open connection until ``until_ns`` (engine clock); returns how many."""
        for conn in self.connections:
            conn.stalled_until_ns = max(conn.stalled_until_ns, until_ns)
        return len(self.connections)

    async def close_all(self) -> None:
        """Close every connection politely (server shutdown)."""
        closing = [conn.ws.close(code=1001, message=b"server shutdown") for conn in self.connections]
        if closing:
            await asyncio.gather(*closing)

    def detach(self) -> None:
        self._unsubscribe()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=False, timeout=1.0)  # pings: answered below
        await ws.prepare(request)
        conn = _Connection(request, ws, self.queue_limit)
        clock = self.state.clock
        conn.writer = asyncio.create_task(conn.write_loop(clock), name="alpaca-sim-stream-writer")
        self.connections.add(conn)
        log.info("stream_connected", remote=request.remote)
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._on_frame(conn, msg.data.encode())
                elif msg.type == WSMsgType.BINARY:
                    self._on_frame(conn, msg.data)
                elif msg.type == WSMsgType.PING:
                    if conn.stalled_until_ns <= clock.time_ns():  # a stalled connection stays silent
                        with contextlib.suppress(ConnectionError):
                            await ws.pong(msg.data)
                elif msg.type == WSMsgType.ERROR:
                    log.info("stream_error", remote=request.remote, error=str(ws.exception()))
        finally:
            self.connections.discard(conn)
            self._note_listeners()
            writer = conn.writer
            writer.cancel()
            await asyncio.wait([writer])
            if not writer.cancelled() and writer.exception() is not None:
                log.error("stream_writer_failed", remote=request.remote, error=repr(writer.exception()))
            log.info("stream_disconnected", remote=request.remote, dropped=conn.dropped)
        return ws

    def _on_frame(self, conn: _Connection, raw: bytes) -> None:
        try:
            action = _action_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            conn.offer(encode_frame("error", {"error_message": f"invalid message: {exc}"}))
            return
        if action.action == "authenticate":
            key_id = action.data.get("key_id")
            secret_key = action.data.get("secret_key")
            ok = isinstance(key_id, str) and isinstance(secret_key, str)
            ok = ok and self.authorize(str(key_id), str(secret_key))
            conn.authorized = ok
            status = "authorized" if ok else "unauthorized"
            conn.offer(encode_frame("authorization", {"status": status, "action": "authenticate"}))
        elif action.action == "listen":
            if not conn.authorized:
                conn.offer(encode_frame("authorization", {"status": "unauthorized", "action": "listen"}))
                return
            streams = action.data.get("streams")
            if not isinstance(streams, list):
                conn.offer(encode_frame("error", {"error_message": "listen needs data.streams, a list"}))
                return
            conn.streams = [s for s in streams if s == TRADE_UPDATES]
            conn.offer(encode_frame("listening", {"streams": conn.streams}))
            self._note_listeners()
        else:
            conn.offer(encode_frame("error", {"error_message": f"unknown action {action.action!r}"}))
