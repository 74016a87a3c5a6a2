"""Our Alpaca client side (REST, trade_updates stream, venue actor) against the in-process simulator.

Real sockets on 127.0.0.1; the simulator runs on a LiveClock with no recording, and the
tests give it an NBBO directly (``VenueState.on_quote``) so orders can fill. The REST
client's HTTP/1.1 transport is also tested against a scripted server (framing, timeouts,
stale connections, TLS), on both asyncio and uvloop.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
import uvloop
from aiohttp import WSMsgType, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.order_manager import OrderManagerActor
from adapters.alpaca import wire
from adapters.alpaca.errors import TransientError
from adapters.alpaca.rest import MAX_HEAD_BYTES, AlpacaRest, HttpClient, HttpProtocolError, RestSettings
from adapters.alpaca.trade_stream import TradeUpdatesStream
from adapters.alpaca.venue import AlpacaVenueActor
from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from adapters.alpaca_sim.events import SimQuote
from adapters.alpaca_sim.matching import SimOrder
from adapters.alpaca_sim.state import not_found
from engine import topics
from engine.actor import Actor
from engine.breaker import BreakerOpen, BreakerState, CircuitBreaker
from engine.bus import Bus
from engine.clock import LiveClock
from engine.messages import (
    ApprovedOrder,
    Fill,
    FillHistory,
    FillHistoryQuery,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    StatsQuery,
    TimeInForce,
    VenueSnapshot,
    VenueSnapshotQuery,
)
from engine.secrets import Secret
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

D = Decimal
KEY, SECRET = "test-key", "test-secret"
SYMBOL = "TEST"
OM, VENUE, COLLECTOR = "order-manager", "venue", "collector"
FAST = RestSettings(
    retry_base_s=0.01, retry_cap_s=0.05, visibility_delay_s=0.05, ambiguity_deadline_s=5.0, read_timeout_s=3.0
)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Wait (polling the event loop) until ``predicate()`` holds; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def quote(sim: RunningSimulator, size: int = 1000, bid: str = "99.90", ask: str = "100.10") -> None:
    sim.state.on_quote(
        SimQuote(symbol=SYMBOL, bid_exchange="N", bid_price=D(bid), bid_size=size, ask_exchange="P",
                 ask_price=D(ask), ask_size=size, ts_ns=time.time_ns())
    )


def venue_orders(sim: RunningSimulator, client_order_id: str) -> list[SimOrder]:
    return [o for o in sim.state.orders.values() if o.client_order_id == client_order_id]


def request(client_order_id: str, qty: str = "10", limit: str | None = None) -> wire.OrderRequest:
    return wire.OrderRequest(
        symbol=SYMBOL,
        side="buy",
        type="limit" if limit else "market",
        time_in_force="day",
        qty=D(qty),
        limit_price=D(limit) if limit else None,
        client_order_id=client_order_id,
    )


def state_of(breaker: CircuitBreaker) -> BreakerState:
    """The breaker's state, read afresh (it changes between reads)."""
    return breaker.state


class RecordingClock(LiveClock):
    """A live clock that remembers every sleep (to see the retry jitter)."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        await super().sleep(delay_s)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    simulator = await start_simulator(
        SimulatorConfig(feed_files=[], market_data=False, key_id=KEY, secret_key=SECRET, seed=3), LiveClock()
    )
    simulator.state.add_symbol(SYMBOL)
    try:
        yield simulator
    finally:
        await simulator.stop()


def make_rest(sim: RunningSimulator, clock: LiveClock | None = None) -> AlpacaRest:
    return AlpacaRest(sim.url, Secret(KEY), Secret(SECRET), clock or LiveClock(), random.Random(5), FAST)


# ---------------------------------------------------------------- 1. REST basics, retries, breaker


async def test_rest_submit_find_list_cancel_account_positions(sim: RunningSimulator) -> None:
    quote(sim)
    async with make_rest(sim) as rest:
        resting = await rest.submit_order(request("rest-1", limit="90.00"))
        assert resting.client_order_id == "rest-1"
        assert (await rest.get_order(resting.id)).id == resting.id
        found = await rest.find_order("rest-1")
        assert found is not None and found.id == resting.id
        assert await rest.find_order("no-such-order") is None
        await eventually(lambda: venue_orders(sim, "rest-1")[0].status == "new", what="ack")
        assert [o.id for o in await rest.list_orders("open")] == [resting.id]
        await rest.cancel_order(resting.id)
        await eventually(lambda: venue_orders(sim, "rest-1")[0].status == "canceled", what="cancel")
        assert (await rest.get_order(resting.id)).status == "canceled"
        assert await rest.list_orders("open") == []

        await rest.submit_order(request("rest-2", qty="10"))
        await eventually(lambda: venue_orders(sim, "rest-2")[0].status == "filled", what="fill")
        positions = await rest.list_positions()
        assert [(p.symbol, p.qty) for p in positions] == [(SYMBOL, D(10))]
        account = await rest.get_account()
        assert account.cash == D(100000) - D(10) * D("100.10")
        assert rest.counters["retries"] == 0


async def test_get_retries_5xx_with_jitter_then_raises_transient(sim: RunningSimulator) -> None:
    clock = RecordingClock()
    async with make_rest(sim, clock) as rest:
        retries = FAST.max_retries
        sim.faults.fail_next = [500] * (retries + 1)
        with pytest.raises(TransientError) as caught:
            await rest.get_account()
        assert caught.value.status == 500
        assert sim.faults.fail_next == []
        assert rest.counters["retries"] == retries
        assert rest.counters["requests"] == retries + 1
        assert len(clock.sleeps) == retries
        for attempt, delay in enumerate(clock.sleeps):
            assert 0.0 <= delay <= min(FAST.retry_cap_s, FAST.retry_base_s * 2**attempt)
        assert len(set(clock.sleeps)) == len(clock.sleeps)  # jittered, not a fixed delay

        # A storm shorter than the retry budget is ridden out.
        sim.faults.fail_next = [503] * retries
        account = await rest.get_account()
        assert account.cash == D(100000)
        assert sim.faults.fail_next == []


async def test_orders_breaker_opens_refuses_fast_and_recovers(sim: RunningSimulator) -> None:
    quote(sim)
    changes: list[tuple[str, BreakerState, BreakerState]] = []
    async with make_rest(sim) as rest:
        breaker = CircuitBreaker(
            "alpaca.orders", rest.clock, min_calls=3, open_for_s=0.2,
            on_change=lambda name, old, new: changes.append((name, old, new)),
        )
        rest.breakers["orders"] = breaker
        sim.faults.fail_next = [503] * 3
        for i in range(3):  # cancels are not resolved by lookup: each 503 is one failure
            with pytest.raises(TransientError):
                await rest.cancel_order(f"00000000-0000-4000-8000-00000000000{i}")
        assert breaker.state is BreakerState.OPEN
        assert changes == [("alpaca.orders", BreakerState.CLOSED, BreakerState.OPEN)]

        sent = rest.counters["requests"]
        sim.faults.fail_next = [500]  # a tripwire: any request reaching the simulator consumes it
        started = time.monotonic()
        with pytest.raises(BreakerOpen):
            await rest.submit_order(request("brk-1"))
        assert time.monotonic() - started < 0.1
        assert rest.counters["requests"] == sent
        assert sim.faults.fail_next == [500]
        assert venue_orders(sim, "brk-1") == []
        sim.faults.fail_next = []

        await eventually(lambda: breaker.state is BreakerState.HALF_OPEN, timeout_s=5.0, what="half-open")
        placed = await rest.submit_order(request("brk-1"))  # the trial call succeeds
        assert placed.client_order_id == "brk-1"
        assert state_of(breaker) is BreakerState.CLOSED
        assert [(old, new) for _, old, new in changes] == [
            (BreakerState.CLOSED, BreakerState.OPEN),
            (BreakerState.OPEN, BreakerState.HALF_OPEN),
            (BreakerState.HALF_OPEN, BreakerState.CLOSED),
        ]
        assert len(venue_orders(sim, "brk-1")) == 1


async def test_submit_5xx_storm_trips_orders_breaker(sim: RunningSimulator) -> None:
    """Submits refused with 429 count against the orders breaker; then refused fast."""
    async with make_rest(sim) as rest:
        breaker = CircuitBreaker("alpaca.orders", rest.clock, min_calls=3, open_for_s=30.0)
        rest.breakers["orders"] = breaker
        sim.faults.fail_next = [429] * 3
        for i in range(3):
            with pytest.raises(TransientError):
                await rest.submit_order(request(f"storm-{i}"))
        assert breaker.state is BreakerState.OPEN
        with pytest.raises(BreakerOpen):
            await rest.submit_order(request("storm-x"))
        assert sim.state.orders == {}


# ---------------------------------------------------------------- 2. 429


async def test_429_on_submit_is_transient_and_creates_nothing(sim: RunningSimulator) -> None:
    async with make_rest(sim) as rest:
        sim.faults.fail_next = [429] * 3
        with pytest.raises(TransientError) as caught:
            await rest.submit_order(request("rl-1"))
        assert caught.value.status == 429
        assert rest.counters["ambiguous"] == 0 and rest.counters["resent"] == 0
        assert sim.state.orders == {}
        # The GET retries ride out the rest of the storm.
        assert await rest.find_order("rl-1") is None
        assert sim.faults.fail_next == []
        assert rest.counters["retries"] == 2
        assert sim.state.orders == {}


# ---------------------------------------------------------------- 3-4. ambiguous submits, duplicates


async def test_dropped_submit_response_is_resolved_by_lookup(sim: RunningSimulator) -> None:
    async with make_rest(sim) as rest:
        sim.faults.drop_submit_response_next = 1
        placed = await rest.submit_order(request("amb-1", limit="90.00"))
        assert placed.client_order_id == "amb-1"
        assert rest.counters["ambiguous"] == 1
        assert rest.counters["resolved_by_lookup"] == 1
        assert rest.counters["resent"] == 0
        assert [o.id for o in venue_orders(sim, "amb-1")] == [placed.id]


async def test_dropped_response_and_invisible_order_resend_is_refused_then_found(
    sim: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order arrived but lookups miss it at first: the resend (same id) is refused as a
    duplicate and the next lookup finds the one order."""
    state = sim.state
    real = state.get_order_by_client_id
    misses = {"left": 2}

    def slow_visibility(client_order_id: str) -> SimOrder:
        if misses["left"] > 0:
            misses["left"] -= 1
            raise not_found(f"order not found for {client_order_id}")
        return real(client_order_id)

    monkeypatch.setattr(state, "get_order_by_client_id", slow_visibility)
    async with make_rest(sim) as rest:
        sim.faults.drop_submit_response_next = 1
        placed = await rest.submit_order(request("amb-2", limit="90.00"))
        assert rest.counters["resent"] == 1
        assert rest.counters["resolved_by_lookup"] == 1
        assert [o.id for o in venue_orders(sim, "amb-2")] == [placed.id]
        assert state.counters["refused"] == 1  # the resend, refused as a duplicate


async def test_submit_5xx_not_at_venue_is_resent_once_with_same_id(sim: RunningSimulator) -> None:
    async with make_rest(sim) as rest:
        sim.faults.fail_next = [500]  # the POST never reached the venue
        placed = await rest.submit_order(request("amb-3", limit="90.00"))
        assert rest.counters["ambiguous"] == 1
        assert rest.counters["resent"] == 1
        assert [o.id for o in venue_orders(sim, "amb-3")] == [placed.id]


async def test_a_resend_waits_while_the_order_stream_is_down(sim: RunningSimulator) -> None:
    """The POST never arrived; the order stream is down, so the resend waits for it."""
    asked: list[bool] = []

    def may_resend() -> bool:
        asked.append(len(asked) >= 2)  # the stream comes back on the third ask; lookups go on meanwhile
        return asked[-1]

    async with make_rest(sim) as rest:
        sim.faults.fail_next = [500]
        placed = await rest.submit_order(request("amb-4", limit="90.00"), may_resend=may_resend)
        assert len(asked) == 3  # asked before each resend; sent only on the third, once live
        assert rest.counters["resent"] == 1
        assert [o.id for o in venue_orders(sim, "amb-4")] == [placed.id]


async def test_duplicate_client_order_id_returns_the_original(sim: RunningSimulator) -> None:
    async with make_rest(sim) as rest:
        first = await rest.submit_order(request("dup-1", limit="90.00"))
        second = await rest.submit_order(request("dup-1", limit="91.00"))
        assert second.id == first.id
        assert second.limit_price == D("90")
        assert rest.counters["resolved_by_lookup"] == 1
        assert len(venue_orders(sim, "dup-1")) == 1
        assert len(sim.state.orders) == 1


# ---------------------------------------------------------------- 4b. the HTTP/1.1 transport under AlpacaRest

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}
OK_JSON = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'
CLOSE = "close"
"""Scripted action: close the connection without answering."""


@pytest.fixture(params=sorted(LOOPS))
def run_on(request: pytest.FixtureRequest) -> Callable[[Any], Any]:
    """Runs a coroutine on a fresh loop of each kind (the live engine runs on uvloop)."""

    def run(coro: Any) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as runner:
            return runner.run(coro)

    return run


class ScriptedServer:
    """HTTP/1.1 on 127.0.0.1 that answers each request with the next scripted action.

    An action is raw bytes to write, :data:`CLOSE`, or an async function of the stream
    writer (it returns False to close the connection afterwards).
    """

    def __init__(self, *actions: Any) -> None:
        self.actions = list(actions)
        self.requests: list[tuple[int, bytes, bytes]] = []
        """(connection number, head, body) of every request read."""
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ScriptedServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                self.requests.append((number, head, body))
                action = self.actions.pop(0)
                if action == CLOSE:
                    return
                if isinstance(action, bytes):
                    writer.write(action)
                    await writer.drain()
                elif await action(writer) is False:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()


def client(url: str, read_timeout_s: float = 2.0, **kw: Any) -> HttpClient:
    return HttpClient(url, {"APCA-API-KEY-ID": "k"}, connect_timeout_s=1.0, read_timeout_s=read_timeout_s, **kw)


async def get(http: HttpClient, path: str = "/v2/account") -> tuple[int, bytes]:
    return await http.request("GET", http.encode("GET", http.target(path)))


def test_http_reuses_one_connection_and_sends_what_alpaca_expects(run_on: Callable[[Any], Any]) -> None:
    async def scenario() -> None:
        async with ScriptedServer(OK_JSON, OK_JSON, OK_JSON) as server:
            http = client(server.url + "/base/")
            await http.warm()
            assert await get(http) == (200, b'{"ok":true}')
            target = http.target("/v2/orders:by_client_order_id", {"client_order_id": "a b&c"})
            assert await http.request("GET", http.encode("GET", target)) == (200, b'{"ok":true}')
            body = b'{"symbol":"X"}'
            assert (await http.request("POST", http.encode("POST", http.target("/v2/orders"), body)))[0] == 200
            await http.close()
        assert server.connections == 1 and http.counters["connections"] == 1
        heads = [head for _, head, _ in server.requests]
        assert heads[0].startswith(b"GET /base/v2/account HTTP/1.1\r\n")
        assert heads[1].startswith(b"GET /base/v2/orders:by_client_order_id?client_order_id=a+b%26c HTTP/1.1\r\n")
        assert heads[2].startswith(b"POST /base/v2/orders HTTP/1.1\r\n")
        host = server.url.removeprefix("http://").encode()
        for head in heads:
            assert b"\r\nHost: " + host + b"\r\n" in head and b"\r\nAPCA-API-KEY-ID: k\r\n" in head
        assert b"\r\nContent-Type: application/json\r\nContent-Length: 14\r\n" in heads[2]
        assert server.requests[2][2] == body

    run_on(scenario())


def test_http_reads_chunked_gzip_interim_and_bodiless_answers(run_on: Callable[[Any], Any]) -> None:
    payload = b'{"id":"' + b"x" * 5000 + b'"}'
    gz = gzip.compress(payload)
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )

    async def dribble(writer: asyncio.StreamWriter) -> None:
        for i in range(len(chunked)):  # one byte per TCP segment, as badly as a peer can split it
            writer.write(chunked[i : i + 1])
            await writer.drain()
            if i % 16 == 0:
                await asyncio.sleep(0.001)

    async def scenario() -> None:
        async with ScriptedServer(
            dribble,
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gz) + gz,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            OK_JSON,
        ) as server:
            http = client(server.url)
            assert await get(http) == (200, b"hello world")
            assert await get(http) == (200, payload)
            assert await get(http) == (201, b"{}")
            assert await get(http) == (204, b"")
            assert await get(http) == (200, b'{"ok":true}')
            await http.close()
        assert server.connections == 1

    run_on(scenario())


def test_http_body_until_close_and_connection_close_are_not_reused(run_on: Callable[[Any], Any]) -> None:
    async def until_close(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n{\"a\":")
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(b"1}")
        return False

    async def scenario() -> None:
        async with ScriptedServer(
            until_close,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]",
            OK_JSON,
        ) as server:
            http = client(server.url)
            assert await get(http) == (200, b'{"a":1}')
            assert await get(http) == (200, b"{}")
            assert await get(http) == (200, b"[]")
            assert await get(http) == (200, b'{"ok":true}')
            await http.close()
        assert [number for number, _, _ in server.requests] == [1, 2, 3, 4]

    run_on(scenario())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 OK\r\n\r\n",
        b"SPDY/3 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10),
    ],
)
def test_http_broken_answers_raise_and_drop_the_connection(answer: bytes) -> None:
    async def scenario() -> None:
        async with ScriptedServer(answer, OK_JSON) as server:
            http = client(server.url)
            with pytest.raises(HttpProtocolError):
                await get(http)
            assert await get(http) == (200, b'{"ok":true}')  # on a new connection
            await http.close()
        assert [number for number, _, _ in server.requests] == [1, 2]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_http_bytes_nobody_asked_for_retire_the_connection(run_on: Callable[[Any], Any]) -> None:
    async def scenario() -> None:
        async with ScriptedServer(OK_JSON + b"HTTP/1.1 200 OK\r\n", OK_JSON) as server:
            http = client(server.url)
            assert await get(http) == (200, b'{"ok":true}')
            assert await get(http) == (200, b'{"ok":true}')
            await http.close()
        assert [number for number, _, _ in server.requests] == [1, 2]

    run_on(scenario())


def test_http_read_timeout_counts_silence_not_the_whole_answer(run_on: Callable[[Any], Any]) -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        for part in (b"HTTP/1.1 200 OK\r\n", b"Content-Length: 2\r\n", b"\r\n", b"{", b"}"):
            writer.write(part)
            await asyncio.sleep(0.1)

    async def silent(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    async def scenario() -> None:
        async with ScriptedServer(trickle, silent, OK_JSON) as server:
            http = client(server.url, read_timeout_s=0.3)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await get(http) == (200, b"{}")  # 0.5 s in all, never 0.3 s of silence
            assert loop.time() - started >= 0.4
            started = loop.time()
            with pytest.raises(TimeoutError):
                await get(http)
            assert 0.25 <= loop.time() - started < 2.0
            assert await get(http) == (200, b'{"ok":true}')
            await http.close()
        assert [number for number, _, _ in server.requests] == [1, 1, 2]

    run_on(scenario())


def test_http_stale_idle_connection_retries_a_get_once_but_never_a_post(run_on: Callable[[Any], Any]) -> None:
    async def scenario() -> None:
        async with ScriptedServer(OK_JSON, CLOSE, OK_JSON, OK_JSON, CLOSE) as server:
            http = client(server.url)
            assert await get(http) == (200, b'{"ok":true}')
            # The server drops the kept-alive connection as the GET arrives: sent again on a new one.
            assert await get(http) == (200, b'{"ok":true}')
            assert http.counters["stale_retries"] == 1
            assert await get(http) == (200, b'{"ok":true}')
            # A POST is never resent here: its outcome is the caller's to settle.
            with pytest.raises(ConnectionResetError):
                await http.request("POST", http.encode("POST", "/v2/orders", b"{}"))
            assert http.counters["stale_retries"] == 1
            await http.close()
        assert [number for number, _, _ in server.requests] == [1, 1, 2, 2, 2]

    run_on(scenario())


def test_http_refused_connect_timeout_cancel_and_close(run_on: Callable[[Any], Any]) -> None:
    async def scenario() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        listener.close()
        with pytest.raises(ConnectionRefusedError):
            await get(client(f"http://127.0.0.1:{port}"))

        async def hang(writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(5)

        async with ScriptedServer(hang, OK_JSON, hang) as server:
            http = client(server.url)
            task = asyncio.create_task(get(http))
            await eventually(lambda: len(server.requests) == 1, what="request")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await get(http) == (200, b'{"ok":true}')  # a cancelled exchange never shares its connection
            task = asyncio.create_task(get(http))
            await eventually(lambda: len(server.requests) == 3, what="request")
            await http.close()
            with pytest.raises(ConnectionError):
                await task
            with pytest.raises(ConnectionError):
                await get(http)
        assert [number for number, _, _ in server.requests] == [1, 2, 2]

    run_on(scenario())


def test_http_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()

        async def never(*args: Any, **kwargs: Any) -> Any:
            await asyncio.Event().wait()

        monkeypatch.setattr(loop, "create_connection", never)
        http = HttpClient("http://127.0.0.1:9", {}, connect_timeout_s=0.05, read_timeout_s=1.0)
        with pytest.raises(TimeoutError):
            await get(http)

    asyncio.run(scenario())


def test_http_refuses_header_and_request_line_injection() -> None:
    with pytest.raises(ValueError):
        HttpClient("http://127.0.0.1:1", {"APCA-API-KEY-ID": "k\r\nX-Evil: 1"}, connect_timeout_s=1, read_timeout_s=1)
    with pytest.raises(ValueError):
        HttpClient("ftp://127.0.0.1:1", {}, connect_timeout_s=1, read_timeout_s=1)
    http = HttpClient("http://127.0.0.1:1", {}, connect_timeout_s=1, read_timeout_s=1)
    assert http.target("/v2/orders/a b\r\nX: 1") == "/v2/orders/a%20b%0D%0AX:%201"
    with pytest.raises(ValueError):
        http.encode("GET", "/v2/x y")
    assert http.encode("DELETE", "/v2/orders/1").endswith(b"\r\nAccept: application/json\r\n\r\n")
    assert http.encode("POST", "/v2/orders").endswith(b"\r\nContent-Length: 0\r\n\r\n")


def test_https_with_a_self_signed_certificate(tmp_path: Path, run_on: Callable[[Any], Any]) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )

    async def scenario() -> None:
        server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_ctx.load_cert_chain(cert, key)

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while await reader.readuntil(b"\r\n\r\n"):
                    writer.write(OK_JSON)
            except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
                return
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            trusting = ssl.create_default_context(cafile=str(cert))
            http = client(f"https://localhost:{port}", ssl_context=trusting)
            assert await get(http) == (200, b'{"ok":true}')
            assert await get(http) == (200, b'{"ok":true}')
            assert http.counters["connections"] == 1
            await http.close()
            with pytest.raises(ssl.SSLCertVerificationError):  # the default context does not trust it
                await get(client(f"https://localhost:{port}"))
        finally:
            server.close()

    run_on(scenario())


def test_rest_on_uvloop_with_the_write_hook(run_on: Callable[[Any], Any]) -> None:
    """The REST client against the simulator on both loops; ``on_write`` fires before the bytes leave."""

    async def scenario() -> None:
        simulator = await start_simulator(
            SimulatorConfig(feed_files=[], market_data=False, key_id=KEY, secret_key=SECRET, seed=3), LiveClock()
        )
        simulator.state.add_symbol(SYMBOL)
        seen: list[tuple[str, str, int]] = []
        try:
            rest = make_rest(simulator)
            rest.on_write = lambda method, path: seen.append((method, path, len(simulator.state.orders)))
            async with rest:
                await eventually(lambda: rest.http is not None and rest.http.idle_connections == 1, what="warm")
                placed = await rest.submit_order(request("uv-1", limit="90.00"))
                assert (await rest.find_order("uv-1")) == placed
                await rest.cancel_order(placed.id)
                assert (await rest.get_order(placed.id)).id == placed.id
                simulator.faults.drop_submit_response_next = 1
                assert (await rest.submit_order(request("uv-2", limit="90.00"))).client_order_id == "uv-2"
                assert rest.counters["resolved_by_lookup"] == 1
                # the warm connection, then a new one after the dropped answer
                assert rest.http is not None and rest.http.counters["connections"] == 2
        finally:
            await simulator.stop()
        assert seen[:4] == [
            ("POST", "/orders", 0),  # written while the venue had no order yet
            ("GET", "/orders:by_client_order_id", 1),
            ("DELETE", f"/orders/{placed.id}", 1),
            ("GET", f"/orders/{placed.id}", 1),
        ]

    run_on(scenario())


# ---------------------------------------------------------------- 5-6. venue actor end to end


class Collector(Actor):
    def __init__(self) -> None:
        self.fills: list[Fill] = []
        self.events: list[OrderUpdate] = []

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ORDER_FILL)
        self.ctx.subscribe(topics.ORDER_EVENT)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, Fill):
            self.fills.append(message)
        elif isinstance(message, OrderUpdate):
            self.events.append(message)
        return None


class Session:
    def __init__(self, sim: RunningSimulator, stream_wait_s: float = 2.0) -> None:
        self.sim = sim
        self.bus = Bus()
        self.collector = Collector()
        self.venue = AlpacaVenueActor(sim.url, Secret(KEY), Secret(SECRET), FAST, stream_wait_s=stream_wait_s)
        spec = SupervisorSpec(
            "root",
            [
                ActorSpec(OM, lambda: OrderManagerActor("run")),
                ActorSpec(VENUE, lambda: self.venue, shutdown_timeout_s=3.0),
                ActorSpec(COLLECTOR, lambda: self.collector),
            ],
        )
        self.root = Supervisor(spec, self.bus, LiveClock(), random.Random(11))
        self.task: asyncio.Task[None] | None = None
        self.intents = 0

    async def __aenter__(self) -> Session:
        self.task = asyncio.create_task(self.root.run())
        async with asyncio.timeout(10):
            await self.root.started()
            await self.venue.stream.live.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def buy(self, qty: str = "10") -> str:
        self.intents += 1
        intent = OrderIntent(
            intent_id=f"i{self.intents}", strategy="test", symbol=SYMBOL, side=Side.BUY, qty=D(qty),
            order_type=OrderType.MARKET, time_in_force=TimeInForce.DAY, ts_init=time.time_ns(),
        )
        await self.bus.publish(
            topics.ORDER_APPROVED, ApprovedOrder(intent=intent, reference_price=D(100), ts_init=time.time_ns())
        )
        return f"run-{self.intents}"

    async def fills(self) -> list[Fill]:
        await self.bus.idle()
        history: FillHistory = await self.bus.request(OM, FillHistoryQuery())
        return history.fills

    def filled_qty(self) -> Decimal:
        return sum((f.qty for f in self.collector.fills), D(0))

    async def reconnected(self, previous: int) -> None:
        stream = self.venue.stream
        await eventually(
            lambda: stream.counters["reconnects"] > previous and stream.live.is_set(), what="reconnect"
        )


async def test_order_fills_through_the_venue_actor_once(sim: RunningSimulator) -> None:
    quote(sim)
    async with Session(sim) as session:
        cid = await session.buy("10")
        await eventually(lambda: session.filled_qty() == D(10), what="fill")
        await eventually(
            lambda: any(e.status is OrderStatus.FILLED for e in session.collector.events), what="filled event"
        )
        fills = await session.fills()
        assert [(f.client_order_id, f.qty, f.price) for f in fills] == [(cid, D(10), D("100.10"))]
        assert len(session.collector.fills) == 1
        assert sim.state.position_qty(SYMBOL) == D(10)
        assert session.venue.counters["catchup_fills"] == 0


async def test_fill_missed_while_socket_down_is_booked_once_by_catch_up(sim: RunningSimulator) -> None:
    quote(sim)
    async with Session(sim) as session:
        sim.faults.hold_trade_updates = True
        cid = await session.buy("10")
        await eventually(lambda: bool(venue_orders(sim, cid)) and venue_orders(sim, cid)[0].status == "filled",
                         what="venue fill")
        previous = session.venue.stream.counters["reconnects"]
        assert await sim.faults.disconnect_streams() == 1
        assert sim.faults.discard_held_trade_updates() >= 1
        sim.faults.hold_trade_updates = False
        await session.reconnected(previous)
        await eventually(lambda: session.filled_qty() == D(10), what="catch-up fill")
        fills = await session.fills()
        assert [(f.client_order_id, f.qty, f.price) for f in fills] == [(cid, D(10), D("100.10"))]
        assert session.venue.counters["catchup_fills"] == 1
        assert sim.state.position_qty(SYMBOL) == sum((f.qty for f in fills), D(0))


async def test_a_failed_catch_up_keeps_the_stream_down_until_the_fill_is_found(sim: RunningSimulator) -> None:
    """Found by the chaos soak: a catch-up lookup failed (5xx, breaker open), the stream went
    live anyway, and the fill made while it was down was never booked."""
    quote(sim)
    async with Session(sim) as session:
        sim.faults.hold_trade_updates = True
        cid = await session.buy("10")
        await eventually(lambda: bool(venue_orders(sim, cid)) and venue_orders(sim, cid)[0].status == "filled",
                         what="venue fill")
        previous = session.venue.stream.counters["reconnects"]
        sim.faults.fail_next = [503] * 12  # the catch-up's lookups (and their retries) fail for a while
        await sim.faults.disconnect_streams()
        sim.faults.discard_held_trade_updates()
        sim.faults.hold_trade_updates = False
        await eventually(lambda: session.venue.counters["catchup_incomplete"] >= 1, what="a failed catch-up")
        assert session.filled_qty() == D(0)
        stream = session.venue.stream
        # Live again only after a catch-up that found the order (the queries breaker stays open ~5 s).
        await eventually(
            lambda: stream.counters["reconnects"] > previous + 1 and stream.live.is_set(), timeout_s=30.0,
            what="reconnect with a complete catch-up",
        )
        await eventually(lambda: session.filled_qty() == D(10), what="catch-up fill")
        fills = await session.fills()
        assert [(f.client_order_id, f.qty) for f in fills] == [(cid, D(10))]
        assert sim.state.position_qty(SYMBOL) == D(10)


async def test_held_updates_released_after_catch_up_are_not_booked_twice(sim: RunningSimulator) -> None:
    quote(sim, size=4)  # only 4 of 10 available: a partial fill while the socket is down
    async with Session(sim) as session:
        sim.faults.hold_trade_updates = True
        cid = await session.buy("10")
        await eventually(
            lambda: bool(venue_orders(sim, cid)) and venue_orders(sim, cid)[0].filled_qty == D(4),
            what="venue partial fill",
        )
        previous = session.venue.stream.counters["reconnects"]
        await sim.faults.disconnect_streams()
        await session.reconnected(previous)
        await eventually(lambda: session.filled_qty() == D(4), what="catch-up partial fill")
        updates = session.venue.stream.counters["updates"]
        held = sim.faults.held_trade_updates
        assert held >= 2  # new + partial_fill
        sim.faults.hold_trade_updates = False  # the stale events now arrive on the new socket
        await eventually(lambda: session.venue.stream.counters["updates"] >= updates + held, what="stale events")
        await session.bus.idle()
        assert session.filled_qty() == D(4)
        quote(sim, size=100)  # the rest fills live
        await eventually(lambda: session.filled_qty() == D(10), what="final fill")
        fills = await session.fills()
        assert sum((f.qty for f in fills), D(0)) == D(10)
        assert [f.qty for f in fills] == [D(4), D(6)]
        assert sim.state.position_qty(SYMBOL) == D(10)
        stats = await session.bus.request(OM, StatsQuery())
        assert stats.counters["duplicate_executions"] >= 1


async def test_no_order_is_sent_while_the_stream_is_down(sim: RunningSimulator) -> None:
    quote(sim)
    async with Session(sim, stream_wait_s=0.3) as session:
        venue = session.venue
        task = venue._stream_task
        assert task is not None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert not venue.stream.live.is_set()
        sent = venue.rest.counters["requests"]
        cid = await session.buy("10")
        await eventually(
            lambda: any(e.status is OrderStatus.REJECTED for e in session.collector.events), what="refusal"
        )
        [refusal] = [e for e in session.collector.events if e.status is OrderStatus.REJECTED]
        assert refusal.client_order_id == cid
        assert refusal.reason is not None and "stream is down" in refusal.reason
        assert venue.rest.counters["requests"] == sent
        assert sim.state.orders == {}
        assert venue.counters["refused_stream_down"] == 1


# ---------------------------------------------------------------- 7. hostile frames


def _valid_order(client_order_id: str) -> wire.Order:
    now = wire.timestamp(time.time_ns())
    return wire.Order(
        id="0b7a1f5e-0000-4000-8000-000000000001", client_order_id=client_order_id, created_at=now,
        updated_at=now, submitted_at=now, filled_at=None, expired_at=None, canceled_at=None, failed_at=None,
        replaced_at=None, replaced_by=None, replaces=None, asset_id="a", symbol=SYMBOL, asset_class="us_equity",
        notional=None, qty=D(1), filled_qty=D(0), filled_avg_price=None, order_class="", order_type="market",
        type="market", side="buy", time_in_force="day", limit_price=None, stop_price=None, status="new",
        extended_hours=False, legs=None, trail_percent=None, trail_price=None, hwm=None,
    )


def _frame(stream: Any, data: Any) -> bytes:
    return msgspec.json.encode({"stream": stream, "data": data})


_ORDER_DICT = msgspec.to_builtins(_valid_order("x"))
KNOWN_BAD: list[bytes | str] = [
    b"",
    b"\x00\xff\xfe garbage",
    "not json",
    b"[1, 2, 3]",
    b'{"stream": "trade_updates"}',
    _frame(5, {}),
    _frame("trade_updates", []),
    _frame("trade_updates", {"event": "fill"}),
    _frame("trade_updates", {"event": 7, "order": _ORDER_DICT}),
    _frame("trade_updates", {"event": "fill", "order": {**_ORDER_DICT, "filled_qty": "many"}}),
    _frame("trade_updates", {"event": "fill", "order": {**_ORDER_DICT, "id": None}}),
    _frame("trade_updates", {"event": "fill", "order": _ORDER_DICT, "qty": [1]}),
    _frame("trade_updates", {"event": "fill", "order": "an order"}),
]
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
_hostile = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.builds(_frame, st.just("trade_updates"), _json),
    st.builds(_frame, _json, _json),
    st.builds(lambda data: _frame("trade_updates", {"order": _ORDER_DICT, **data}),
              st.dictionaries(st.sampled_from(["event", "qty", "price", "timestamp", "execution_id"]), _json)),
    st.builds(lambda event: _frame("trade_updates", {"event": event, "order": _ORDER_DICT}), st.text(max_size=12)),
)


async def _hostile_session(frames: list[bytes | str]) -> tuple[dict[str, int], list[wire.TradeUpdate]]:
    marker = _frame("trade_updates", wire.TradeUpdate(event="new", order=_valid_order("marker")))

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # authenticate
        await ws.send_bytes(_frame("authorization", {"status": "authorized", "action": "authenticate"}))
        await ws.receive()  # listen
        await ws.send_bytes(_frame("listening", {"streams": ["trade_updates"]}))
        for frame in frames:
            if isinstance(frame, str):
                await ws.send_str(frame)
            else:
                await ws.send_bytes(frame)
        await ws.send_bytes(marker)
        async for msg in ws:
            if msg.type == WSMsgType.CLOSE:
                break
        return ws

    app = web.Application()
    app.router.add_get("/stream", handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    delivered: list[wire.TradeUpdate] = []
    got_marker = asyncio.Event()

    async def on_update(update: wire.TradeUpdate) -> None:
        delivered.append(update)
        if update.order.client_order_id == "marker":
            got_marker.set()

    async def on_reconnected() -> None:
        return None

    stream = TradeUpdatesStream(
        f"ws://{host}:{port}/stream", Secret(KEY), Secret(SECRET), LiveClock(), random.Random(1),
        on_update, on_reconnected,
    )
    task = asyncio.create_task(stream.run())
    try:
        async with asyncio.timeout(10):
            waiter = asyncio.create_task(got_marker.wait())
            done, _ = await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            assert task not in done, f"the stream task ended: {task.exception()!r}"
        assert stream.live.is_set()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.cleanup()
    return stream.counters, delivered


def test_known_hostile_frames_are_counted_and_the_stream_stays_up() -> None:
    counters, delivered = asyncio.run(_hostile_session(list(KNOWN_BAD)))
    assert counters["connects"] == 1
    assert counters["decode_errors"] == len(KNOWN_BAD)
    assert [u.order.client_order_id for u in delivered] == ["marker"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_hostile, min_size=1, max_size=8))
def test_random_hostile_frames_never_break_the_stream(frames: list[bytes | str]) -> None:
    counters, delivered = asyncio.run(_hostile_session(frames))
    assert counters["connects"] == 1
    assert counters["updates"] == len(delivered)
    assert delivered[-1].order.client_order_id == "marker"
    assert counters["decode_errors"] + len(delivered) <= len(frames) + 1


async def test_stale_snapshots_never_move_an_order_backwards() -> None:
    """With zero venue latency the POST answer already says ``filled`` while the stream's
    ``new`` event (an older snapshot) arrives afterwards: the adapter must not report it."""
    config = SimulatorConfig(
        feed_files=[], market_data=False, key_id=KEY, secret_key=SECRET, ack_latency_s=(0.0, 0.0),
        fill_latency_s=(0.0, 0.0),
    )
    simulator = await start_simulator(config, LiveClock())
    simulator.state.add_symbol(SYMBOL)
    try:
        quote(simulator, size=100_000)
        async with Session(simulator) as session:
            for _ in range(10):
                await session.buy("1")
            await eventually(lambda: session.filled_qty() == D(10), what="fills")
            await eventually(
                lambda: sum(e.status is OrderStatus.FILLED for e in session.collector.events) >= 10, what="events"
            )
            await session.bus.idle()
            stats = await session.bus.request(OM, StatsQuery())
            assert stats.counters["fills"] == 10
            assert stats.counters["bad_transitions"] == 0
            assert session.venue.counters["stale_snapshots"] >= 1
            assert simulator.state.position_qty(SYMBOL) == D(10)
    finally:
        await simulator.stop()


@pytest.mark.parametrize(
    "change",
    [
        {"side": "sideways"},
        {"updated_at": "yesterday"},
    ],
)
def test_an_update_the_adapter_cannot_act_on_is_refused_by_the_stream_client(change: dict[str, str]) -> None:
    import msgspec

    from adapters.alpaca.trade_stream import _check

    good = wire.TradeUpdate(event="new", order=_valid_order("k-1"))
    _check(good)
    bad = wire.TradeUpdate(event="new", order=msgspec.structs.replace(good.order, **change))
    with pytest.raises(ValueError):
        _check(bad)
    with pytest.raises(ValueError, match="fill without"):
        _check(wire.TradeUpdate(event="fill", order=good.order))


async def test_a_snapshot_in_a_rate_limit_storm_is_answered_unavailable_not_a_crash(sim: RunningSimulator) -> None:
    """Found by the chaos soak: recovery's venue snapshot hit a 429 storm, the adapter raised,
    the venue actor and the order manager crashed and the engine exited."""
    async with Session(sim) as session:
        sim.faults.fail_next = [429] * 40
        query = VenueSnapshotQuery(client_order_ids=[], prefix="run-", ts_init=0)
        snapshot: VenueSnapshot = await session.bus.request(VENUE, query, 30)
        assert snapshot.unavailable and "429" in snapshot.unavailable
        assert snapshot.positions is None and snapshot.cash is None
        sim.faults.fail_next = []
        await eventually(lambda: session.venue.rest.breakers["queries"].state.value != "open", timeout_s=15,
                         what="the queries breaker to let a trial through")
        snapshot = await session.bus.request(VENUE, query, 30)
        assert not snapshot.unavailable and snapshot.cash is not None
        assert session.root.stats[VENUE].crashes == 0
