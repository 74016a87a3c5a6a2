"""Alpaca Trading API v2 over a small keep-alive HTTP/1.1 client.

Every call goes through, in order: the token-bucket rate limiter (Alpaca allows 200
requests a minute per key), the circuit breaker of its endpoint group (``orders`` for
calls that change orders, ``queries`` for reads), then HTTP with connect and read
timeouts.

Retries: only idempotent calls (GETs) are retried, with full jitter, on transient
errors. Order submission follows the *ambiguous-outcome rule*: after a timeout, a
dropped connection or a 5xx, the order may or may not exist at the venue, so we never
resend blindly and never report failure. We look it up by client order id; if it is
not there after the venue's visibility delay, we resend with the **same** client order
id, which the venue refuses if the first one did arrive after all (422 "client_order_id
must be unique" — and then we look it up again). What cannot be settled within the
deadline is raised as :class:`~adapters.alpaca.errors.AmbiguousOutcome`.

Transport: :class:`HttpClient`, keep-alive HTTP/1.1 to the one origin, not aiohttp's
client. The order POST is on the tick-to-order path, and from the call to the write
aiohttp took about 120 µs at p50 on the benchmark machine (request object, URL, header
multidicts, cookie filter, timers, and on Python < 3.12 a task of its own that writes
the body one loop iteration later, behind whatever else is ready); tuning the session
(no cookie jar, no auto headers, prebuilt URL and headers) did not change that. Here the
request is one ``bytes`` built from a pre-encoded header block and written in the
caller's step: about 30 µs from the call (see docs/BENCHMARKS.md, "Tick to order"). It
keeps what the engine relied on: connection reuse (idle connections expire after
``keepalive_s``; one is opened ahead of the first request), connect and read timeouts,
Content-Length, chunked and read-until-close answers, gzip/deflate bodies, TLS, and an
:class:`OSError` — a transient error here — for anything that breaks the exchange. A GET
that fails on a reused connection before any byte of the answer arrived is retried once
on a new connection (the server may have closed the idle one as we wrote); a POST never
is: its outcome is settled by the ambiguous-outcome rule above.
"""

from __future__ import annotations

import asyncio
import functools
import random
import re
import socket
import ssl
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar, cast
from urllib.parse import quote, urlencode, urlsplit

import msgspec

from adapters.alpaca import wire
from adapters.alpaca.errors import (
    AlpacaError,
    AmbiguousOutcome,
    AuthenticationFailed,
    NotFound,
    OrderRejected,
    PermanentError,
    TransientError,
)
from engine.backoff import full_jitter
from engine.breaker import BreakerOpen, CircuitBreaker
from engine.clock import Clock
from engine.logs import get_logger
from engine.ratelimit import RateLimited, per_minute
from engine.secrets import Secret

T = TypeVar("T")

DUPLICATE_MESSAGE: Final = "client_order_id must be unique"
_ORDER_DECODER: Final = msgspec.json.Decoder(wire.Order)
_ORDERS_DECODER: Final = msgspec.json.Decoder(list[wire.Order])
_ERROR_DECODER: Final = msgspec.json.Decoder(wire.ErrorBody)
_ENCODER: Final = msgspec.json.Encoder()


class HttpProtocolError(ConnectionError):
    """The venue's answer broke HTTP/1.1 framing (or our limits); the connection is dropped."""


# OSError covers refused and reset connections, DNS and TLS failures and (3.11+) TimeoutError.
_CONNECTION_ERRORS: Final = (OSError,)
_IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_PATH_SAFE: Final = "/:@!$&'()*+,;=-._~"
_HEX: Final = re.compile(rb"[0-9A-Fa-f]{1,16}")
_FRAMING_HEADERS: Final = frozenset({b"content-length", b"transfer-encoding", b"connection", b"content-encoding"})
MAX_HEAD_BYTES: Final = 64 * 1024
MAX_BODY_BYTES: Final = 64 * 1024 * 1024


class RestSettings(msgspec.Struct, frozen=True, kw_only=True):
    rate_per_minute: int = 200
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    """Longest silence while an answer is due (from the write, then between reads)."""
    keepalive_s: float = 30.0
    """An idle connection older than this is closed instead of reused."""
    max_connections: int = 16
    max_retries: int = 3
    retry_base_s: float = 0.05
    retry_cap_s: float = 2.0
    visibility_delay_s: float = 0.5
    """How long a just-accepted order may stay invisible to a lookup."""
    ambiguity_deadline_s: float = 10.0
    rate_limit_wait_s: float = 5.0


# ---------------------------------------------------------------- HTTP/1.1 transport


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection carrying one request at a time.

    The answer is parsed as it arrives; the request's future gets ``(status, body)`` or
    an :class:`OSError`. Any failure, and any byte nobody asked for, closes the connection.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self._loop = loop
        self._read_timeout_s = read_timeout_s
        self.transport: asyncio.Transport | None = None
        self.usable = False
        """Connected, not closing, framing intact: may carry another request."""
        self.idle_since = 0.0
        self.received = False
        """Some byte of the current answer has arrived."""
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_data = 0.0
        self._buf = bytearray()
        self._no_body_method = False
        self.closed: asyncio.Future[None] = loop.create_future()
        """Done once the transport has gone."""
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._in_body = False
        self._length = -1  # -1: the body runs until the server closes
        self._chunked = False
        self._chunk_left = -1  # -1: a chunk-size line is due
        self._trailers = False
        self._keep_alive = True
        self._encoding = b""
        self._body = bytearray()

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.usable = True
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError as exc:  # pragma: no cover - depends on the platform
                get_logger(actor="alpaca.rest").debug("tcp_nodelay_failed", error=str(exc))

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._fail(HttpProtocolError("unexpected bytes from the venue between requests"))
            return
        self.received = True
        self._last_data = self._loop.time()
        self._buf += data
        try:
            self._parse()
        except HttpProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self.usable = False
        if self._waiter is not None and self._in_body and self._length < 0 and not self._chunked:
            self._keep_alive = False
            try:
                self._complete()
            except HttpProtocolError as exc:
                self._fail(exc)
        else:
            self._fail(ConnectionResetError("the venue closed the connection"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self.transport = None
        if not self.closed.done():
            self.closed.set_result(None)
        if exc is None:
            self._fail(ConnectionResetError("the connection was closed"))
        elif isinstance(exc, OSError):
            self._fail(exc)
        else:  # pragma: no cover - transports report OSErrors
            self._fail(ConnectionError(f"connection lost: {exc!r}"))

    # ------------------------------------------------------------ requests

    def send(
        self, data: bytes, no_body: bool, on_write: Callable[[], None] | None
    ) -> asyncio.Future[tuple[int, bytes]]:
        """Write one request; the future resolves with the answer. One request at a time."""
        transport = self.transport
        if transport is None or not self.usable or transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        assert self._waiter is None, "one request at a time"
        if on_write is not None:
            on_write()
        transport.write(data)  # the answer cannot arrive before this step yields to the loop
        self._reset()
        self.received = False
        self._no_body_method = no_body
        loop = self._loop
        waiter: asyncio.Future[tuple[int, bytes]] = loop.create_future()
        self._waiter = waiter
        self._last_data = now = loop.time()
        self._timer = loop.call_at(now + self._read_timeout_s, self._on_timer)
        return waiter

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection now; a request still waiting on it fails."""
        self._fail(ConnectionAbortedError("the connection was dropped by the client"))

    def _on_timer(self) -> None:
        self._timer = None
        if self._waiter is None or self._waiter.done():
            return
        due = self._last_data + self._read_timeout_s
        if self._loop.time() < due:  # data arrived since: wait for the rest of the silence
            self._timer = self._loop.call_at(due, self._on_timer)
            return
        self._fail(TimeoutError(f"no answer from the venue for {self._read_timeout_s:g} s"))

    def _settle(self) -> asyncio.Future[tuple[int, bytes]] | None:
        """Stop the timer and hand back the pending future, if any (it is done with)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        waiter, self._waiter = self._waiter, None
        self._buf.clear()
        return waiter if waiter is not None and not waiter.done() else None

    def _fail(self, exc: OSError) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.abort()
        waiter = self._settle()
        if waiter is not None:
            waiter.set_exception(exc)

    def _complete(self) -> None:
        body = bytes(self._body)
        encoding = self._encoding
        if encoding and encoding != b"identity":
            if encoding not in (b"gzip", b"x-gzip", b"deflate"):
                raise HttpProtocolError(f"unsupported content-encoding {encoding.decode('latin-1')!r}")
            try:
                body = zlib.decompress(body, 47)  # 32 + 15: zlib or gzip header
            except zlib.error as exc:
                raise HttpProtocolError(f"bad {encoding.decode('latin-1')} body: {exc}") from exc
        leftover = bool(self._buf)
        status = self._status
        waiter = self._settle()
        if not self._keep_alive or leftover:
            self.close()
        self.idle_since = self._loop.time()
        if waiter is not None:
            waiter.set_result((status, body))

    # ------------------------------------------------------------ parsing

    def _parse(self) -> None:
        buf = self._buf
        while not self._in_body:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise HttpProtocolError("response head too large")
                return
            head = bytes(buf[:end])
            del buf[: end + 4]
            self._head(head)
        if self._chunked:
            self._parse_chunked()
            return
        if self._length >= 0:
            want = self._length - len(self._body)
            if len(buf) >= want:
                self._body += buf[:want]
                del buf[:want]
                self._complete()
            else:
                self._body += buf
                buf.clear()
            return
        self._body += buf  # until the server closes
        buf.clear()
        if len(self._body) > MAX_BODY_BYTES:
            raise HttpProtocolError("response body too large")

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or not (code.isdigit() and len(code) == 3 and rest[3:4] in b" "):
            raise HttpProtocolError(f"bad status line {lines[0][:100]!r}")
        status = int(code)
        length = -1
        chunked = False
        connection = b""
        encoding = b""
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                raise HttpProtocolError(f"bad header line {line[:100]!r}")
            name = name.lower()
            if name not in _FRAMING_HEADERS:
                continue
            value = value.strip()
            if name == b"content-length":
                if not value.isdigit() or (length >= 0 and int(value) != length):
                    raise HttpProtocolError(f"bad content-length {value[:40]!r}")
                length = int(value)
            elif name == b"transfer-encoding":
                codings = [c.strip().lower() for c in value.split(b",")]
                chunked = codings[-1] == b"chunked"
                if not chunked:
                    raise HttpProtocolError(f"unsupported transfer-encoding {value[:40]!r}")
            elif name == b"connection":
                connection = value.lower()
            elif name == b"content-encoding":
                encoding = value.lower()
        if 100 <= status < 200:
            return  # an interim answer (e.g. 100 Continue): the real one follows
        self._status = status
        self._encoding = encoding
        tokens = {t.strip() for t in connection.split(b",")} if connection else set()
        self._keep_alive = b"close" not in tokens and (version == b"HTTP/1.1" or b"keep-alive" in tokens)
        self._in_body = True
        if length > MAX_BODY_BYTES:
            raise HttpProtocolError("response body too large")
        if self._no_body_method or status in (204, 304):
            self._length = 0
        elif chunked:
            self._chunked = True
            if length >= 0:  # both framings: chunked wins, and the connection is not trusted again
                self._keep_alive = False
        elif length >= 0:
            self._length = length
        else:
            self._keep_alive = False

    def _parse_chunked(self) -> None:
        buf = self._buf
        while True:
            if self._trailers:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise HttpProtocolError("chunked trailers too large")
                    return
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line:
                    self._complete()
                    return
                continue
            if self._chunk_left < 0:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise HttpProtocolError("chunk-size line too long")
                    return
                size = bytes(buf[:end]).partition(b";")[0].strip()
                del buf[: end + 2]
                if _HEX.fullmatch(size) is None:  # int(x, 16) would take "0x1", "-1" and "1_0"
                    raise HttpProtocolError(f"bad chunk size {size[:20]!r}")
                self._chunk_left = int(size, 16)
                if len(self._body) + self._chunk_left > MAX_BODY_BYTES:
                    raise HttpProtocolError("response body too large")
                if self._chunk_left == 0:
                    self._trailers = True
                continue
            if len(buf) < self._chunk_left + 2:
                return
            if buf[self._chunk_left : self._chunk_left + 2] != b"\r\n":
                raise HttpProtocolError("chunk not followed by CRLF")
            self._body += buf[: self._chunk_left]
            del buf[: self._chunk_left + 2]
            self._chunk_left = -1


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """Verifying, HTTP/1.1 by ALPN; built once (it reads the CA store from disk)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class HttpClient:
    """Keep-alive HTTP/1.1 requests to one origin (``http://`` or ``https://``).

    ``headers`` go on every request, encoded once. At most ``max_connections`` requests
    are in flight; the others wait. Idle connections are reused newest first and closed
    after ``keepalive_s``. Errors are :class:`OSError` (:class:`TimeoutError` for the
    connect and read timeouts, :class:`HttpProtocolError` for a broken answer).
    """

    def __init__(
        self,
        base_url: str,
        headers: Mapping[str, str],
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        keepalive_s: float = 30.0,
        max_connections: int = 16,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.path_prefix = parts.path.rstrip("/")
        self._ssl = (ssl_context or _default_ssl_context()) if parts.scheme == "https" else None
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self.keepalive_s = keepalive_s
        lines = [f"Host: {parts.netloc.rpartition('@')[2]}", "User-Agent: kestrel", "Accept: application/json"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        for line in lines:
            if any(c in line for c in "\r\n\0"):
                raise ValueError("a header name or value contains a line break")
        self._headers = ("\r\n".join(lines) + "\r\n").encode("ascii")
        self._idle: list[_Connection] = []
        self._busy: set[_Connection] = set()
        self._slots = asyncio.Semaphore(max_connections)
        self._closed = False
        self.counters = {"connections": 0, "stale_retries": 0}

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    def target(self, path: str, params: Mapping[str, str] | None = None) -> str:
        """The request target for ``path`` under the base URL, with the query, if any."""
        target = quote(self.path_prefix + path, safe=_PATH_SAFE)
        return f"{target}?{urlencode(params)}" if params else target

    def encode(self, method: str, target: str, body: bytes | None = None) -> bytes:
        """The whole request as bytes (a JSON body, if any)."""
        if " " in target or not target.isprintable() or not method.isalpha():  # no CR, LF, NUL or space
            raise ValueError(f"bad request line {method!r} {target!r}")
        start = f"{method} {target} HTTP/1.1\r\n".encode("ascii")
        if body is None:
            end = b"Content-Length: 0\r\n\r\n" if method in ("POST", "PUT", "PATCH") else b"\r\n"
            return start + self._headers + end
        return b"".join(
            (start, self._headers, b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body), body)
        )

    async def request(
        self, method: str, data: bytes, on_write: Callable[[], None] | None = None
    ) -> tuple[int, bytes]:
        """Send a request built by :meth:`encode`; returns ``(status, body)``.

        ``on_write`` is called just before the request is written to the socket.
        """
        if self._closed:
            raise ConnectionResetError("the HTTP client is closed")
        async with self._slots:
            retried = False
            while True:
                conn = self._take()
                reused = conn is not None
                if conn is None:
                    conn = await self._connect()
                self._busy.add(conn)
                try:
                    answer = await conn.send(data, method == "HEAD", on_write)
                except BaseException as exc:
                    stale = reused and not conn.received and isinstance(exc, ConnectionError)
                    conn.abort()
                    if stale and not retried and method in _IDEMPOTENT and not self._closed:
                        # The server may have closed the idle connection as we wrote: nothing was answered.
                        retried = True
                        self.counters["stale_retries"] += 1
                        continue
                    raise
                finally:
                    self._busy.discard(conn)
                self._park(conn)
                return answer

    def _take(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()
            if conn.usable and now - conn.idle_since < self.keepalive_s:
                return conn
            conn.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout_s):
            _, conn = await loop.create_connection(
                lambda: _Connection(loop, self.read_timeout_s),
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
            )
        self.counters["connections"] += 1
        return conn

    async def warm(self) -> None:
        """Open one connection ahead of the first request, if none is idle."""
        if self._idle or self._closed:
            return
        conn = await self._connect()
        conn.idle_since = asyncio.get_running_loop().time()
        self._park(conn)

    def _park(self, conn: _Connection) -> None:
        """An idle connection back into the pool, or closed if it cannot carry another request."""
        if conn.usable and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()

    async def close(self) -> None:
        """Close every connection; requests in flight fail with a connection error."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
        busy = list(self._busy)
        for conn in busy:
            conn.abort()
        pending = [conn.closed for conn in (*idle, *busy)]
        if pending:
            await asyncio.wait(pending, timeout=1.0)  # transports report their end a loop turn later


def _error(status: int, body: bytes) -> AlpacaError:
    try:
        parsed = _ERROR_DECODER.decode(body)
        code, message = parsed.code, parsed.message
    except msgspec.DecodeError:
        code, message = None, body[:200].decode("utf-8", "replace")
    text = f"HTTP {status}: {message}"
    if status == 401:
        return AuthenticationFailed(text, status, code)
    if status == 404:
        return NotFound(text, status, code)
    if status in (403, 422):
        return OrderRejected(text, status, code)
    if status == 429 or status >= 500:
        return TransientError(text, status, code)
    return PermanentError(text, status, code)


class AlpacaRest:
    """The Trading API calls the engine makes, over one :class:`HttpClient`.

    ``on_write``, if set, is called with ``(method, path)`` just before a request's bytes
    are written to the socket (after rate limiter and breaker): a tracing hook.
    """

    def __init__(
        self,
        base_url: str,
        key_id: Secret,
        secret_key: Secret,
        clock: Clock,
        rng: random.Random,
        settings: RestSettings | None = None,
        on_breaker_change: Any = None,
        on_write: Callable[[str, str], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.settings = settings or RestSettings()
        self.clock = clock
        self._rng = rng
        self._headers = {"APCA-API-KEY-ID": key_id.reveal(), "APCA-API-SECRET-KEY": secret_key.reveal()}
        self._http: HttpClient | None = None
        self._targets: dict[str, str] = {}
        """Request targets of the paths without parameters, built once."""
        self._warm_task: asyncio.Task[None] | None = None
        self.on_write = on_write
        s = self.settings
        # At most rate_per_minute in any 60 s window, bursts included (see per_minute).
        self.rate = per_minute(s.rate_per_minute, clock)
        self.breakers = {
            "orders": CircuitBreaker("alpaca.orders", clock, on_change=on_breaker_change),
            "queries": CircuitBreaker("alpaca.queries", clock, on_change=on_breaker_change),
        }
        self.log = get_logger(actor="alpaca.rest")
        self.counters = {"requests": 0, "retries": 0, "ambiguous": 0, "resolved_by_lookup": 0, "resent": 0}

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Ready the client; a connection is opened in the background so the first order finds it warm."""
        if self._http is None:
            s = self.settings
            self._http = HttpClient(
                self.base_url,
                self._headers,
                connect_timeout_s=s.connect_timeout_s,
                read_timeout_s=s.read_timeout_s,
                keepalive_s=s.keepalive_s,
                max_connections=s.max_connections,
            )
            self._targets = {p: self._http.target("/v2" + p) for p in ("/orders", "/account", "/positions")}
            self._warm_task = asyncio.create_task(self._warm(self._http), name="alpaca-rest-warm")

    async def _warm(self, http: HttpClient) -> None:
        try:
            await http.warm()
        except _CONNECTION_ERRORS as exc:
            self.log.info("rest_warm_up_failed", error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        task, self._warm_task = self._warm_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> AlpacaRest:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def http(self) -> HttpClient | None:
        """The transport while open (its counters: connections opened, stale GETs retried)."""
        return self._http

    # ------------------------------------------------------------ transport

    async def _request(
        self,
        method: str,
        path: str,
        group: str,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """One HTTP exchange through rate limiter and breaker; raises typed errors for non-2xx."""
        http = self._http
        if http is None:
            await self.open()
            http = self._http
            assert http is not None
        target = self._targets.get(path) if params is None else None
        if target is None:
            target = http.target("/v2" + path, params)
        data = http.encode(method, target, body)
        hook = self.on_write
        on_write = None if hook is None else (lambda: hook(method, path))
        # The breaker refuses first (no token spent on a refused call); inside its guard,
        # transient failures count against the venue, permanent 4xx answers do not.
        async with self.breakers[group].guard(counts=(TransientError,)):
            await self.rate.acquire(1, max_wait_s=self.settings.rate_limit_wait_s)
            self.counters["requests"] += 1
            try:
                status, payload = await http.request(method, data, on_write)
            except _CONNECTION_ERRORS as exc:
                raise TransientError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if status >= 400:
                raise _error(status, payload)
        return status, payload

    async def _get(
        self, path: str, decoder: msgspec.json.Decoder[T], params: Mapping[str, str] | None = None
    ) -> T:
        """An idempotent read: retried with full jitter on transient errors."""
        attempt = 0
        while True:
            try:
                _, payload = await self._request("GET", path, "queries", params)
                return decoder.decode(payload)
            except TransientError:
                if attempt >= self.settings.max_retries:
                    raise
                self.counters["retries"] += 1
                await self.clock.sleep(
                    full_jitter(attempt, self.settings.retry_base_s, self.settings.retry_cap_s, self._rng)
                )
                attempt += 1

    # ------------------------------------------------------------ reads

    async def get_account(self) -> wire.Account:
        return await self._get("/account", msgspec.json.Decoder(wire.Account))

    async def list_positions(self) -> list[wire.Position]:
        return await self._get("/positions", msgspec.json.Decoder(list[wire.Position]))

    async def get_order(self, order_id: str) -> wire.Order:
        return await self._get(f"/orders/{order_id}", _ORDER_DECODER)

    async def find_order(self, client_order_id: str) -> wire.Order | None:
        """The order with this client order id, or None if the venue does not know it."""
        try:
            return await self._get(
                "/orders:by_client_order_id", _ORDER_DECODER, {"client_order_id": client_order_id}
            )
        except NotFound:
            return None

    async def list_orders(
        self, status: str = "open", after: str | None = None, limit: int = 500
    ) -> list[wire.Order]:
        params = {"status": status, "limit": str(limit), "direction": "asc"}
        if after is not None:
            params["after"] = after
        return await self._get("/orders", _ORDERS_DECODER, params)

    # ------------------------------------------------------------ order path

    async def submit_order(
        self, request: wire.OrderRequest, may_resend: Callable[[], bool] | None = None
    ) -> wire.Order:
        """Submit under the ambiguous-outcome rule (see the module docstring).

        ``request.client_order_id`` is required: it is what makes lookups and resends safe.
        ``may_resend``: asked before resending an order the venue turned out not to have;
        while it says no (the order stream is down) the resend waits and lookups go on.
        """
        client_order_id = request.client_order_id
        if not client_order_id:
            raise ValueError("submit_order needs a client_order_id")
        body = _ENCODER.encode(request)
        try:
            _, payload = await self._request("POST", "/orders", "orders", body=body)
            return _ORDER_DECODER.decode(payload)
        except OrderRejected as exc:
            if DUPLICATE_MESSAGE in str(exc):
                # Our id is already there: an earlier attempt did arrive. That order is ours.
                found = await self.find_order(client_order_id)
                if found is not None:
                    self.counters["resolved_by_lookup"] += 1
                    return found
            raise
        except TransientError as exc:
            if exc.status == 429:
                raise  # refused before acceptance: nothing is at the venue
            self.counters["ambiguous"] += 1
            self.log.warning("submit_outcome_ambiguous", client_order_id=client_order_id, error=str(exc))
            return await self._resolve(request, body, may_resend)

    async def _resolve(
        self, request: wire.OrderRequest, body: bytes, may_resend: Callable[[], bool] | None
    ) -> wire.Order:
        client_order_id = request.client_order_id
        assert client_order_id is not None
        settings = self.settings
        deadline = self.clock.time_ns() + int(settings.ambiguity_deadline_s * 1e9)
        resent = False
        attempt = 0
        while self.clock.time_ns() < deadline:
            try:
                found = await self.find_order(client_order_id)
                if found is None and not resent:
                    # Give a just-accepted order time to become visible before concluding.
                    await self.clock.sleep(settings.visibility_delay_s)
                    found = await self.find_order(client_order_id)
                if found is not None:
                    self.counters["resolved_by_lookup"] += 1
                    self.log.info(
                        "submit_resolved_by_lookup", client_order_id=client_order_id, status=found.status
                    )
                    return found
                if may_resend is not None and not may_resend():
                    self.log.warning("resend_deferred", client_order_id=client_order_id, why="order stream down")
                else:
                    # Not at the venue: resend under the same id (a duplicate would be refused).
                    resent = True
                    self.counters["resent"] += 1
                    _, payload = await self._request("POST", "/orders", "orders", body=body)
                    return _ORDER_DECODER.decode(payload)
            except OrderRejected as exc:
                if DUPLICATE_MESSAGE not in str(exc):
                    raise
            except (TransientError, BreakerOpen, RateLimited) as exc:
                self.log.warning("resolve_attempt_failed", client_order_id=client_order_id, error=str(exc))
            await self.clock.sleep(
                full_jitter(attempt, settings.retry_base_s, settings.retry_cap_s, self._rng)
            )
            attempt += 1
        raise AmbiguousOutcome(client_order_id, f"not settled within {settings.ambiguity_deadline_s:g} s")

    async def cancel_order(self, order_id: str) -> None:
        """DELETE /v2/orders/{id}: 204 on success; 422 when it is no longer cancelable."""
        await self._request("DELETE", f"/orders/{order_id}", "orders")
