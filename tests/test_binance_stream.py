"""The Binance client and feed actor against a fake Binance on 127.0.0.1 serving recorded frames.

The fake server is a ``websockets`` server for ``/stream`` and an aiohttp app for
``/api/v3/depth``. It replays the first recording and keeps its own reference book (a
plain dict, independent of ``adapters.binance.depth``) at the position it has streamed to,
so a snapshot it serves is what Binance would serve at that moment, and the client's book
can be checked against it after gaps, drops and reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from adapters.binance.decode import BinanceDecodeError
from adapters.binance.feed import BinanceFeedActor
from adapters.binance.stream import BinanceMarketData, SnapshotRejected, stream_names
from engine import topics
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import LiveClock
from engine.messages import ActorStats, ExchangeQuote, FeedState, StatsQuery, TradeTick
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

DATA = Path("/work/shared/data/binance-ws/btcusdt_20240808.gz")
D = Decimal

pytestmark = pytest.mark.skipif(not DATA.exists(), reason="Binance recordings not available")


@dataclass
class Recording:
    frames: list[bytes]
    """Websocket frames in order (the REST snapshot line taken out)."""
    depth: list[tuple[int, int, list[list[str]], list[list[str]]] | None]
    """Per frame: (U, u, bids, asks) of a depth event, else None."""
    snapshot: dict[str, Any]


@pytest.fixture(scope="module")
def recording() -> Recording:
    frames: list[bytes] = []
    depth: list[tuple[int, int, list[list[str]], list[list[str]]] | None] = []
    snapshot: dict[str, Any] = {}
    with gzip.open(DATA, "rb") as fh:
        for i, line in enumerate(fh):
            if i >= 9000:
                break
            frame = line.rstrip(b"\n").split(b" ", 1)[1]
            obj = json.loads(frame)
            if "lastUpdateId" in obj:
                snapshot = obj
                continue
            frames.append(frame)
            d = obj["data"]
            depth.append((d["U"], d["u"], d["b"], d["a"]) if obj["stream"].endswith("@depth@100ms") else None)
    return Recording(frames, depth, snapshot)


@dataclass
class Leg:
    """What the server does on one connection: skip frames (missed), send ``count``, then drop or hold."""

    count: int
    skip: int = 0
    then: str = "hold"  # "hold" | "drop" | "pause-skip"
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by the test to let the leg end (drop the socket, or skip ahead on the same socket)."""
    gap: int = 0
    """For "pause-skip": frames skipped on the same socket once the gate opens."""
    after: int = 0
    """For "pause-skip": frames sent after the gap on the same socket."""


class FakeBinance:
    def __init__(self, recording: Recording, legs: list[Leg]) -> None:
        self.rec = recording
        self.legs = legs
        self.all_legs = list(legs)
        self.pos = 0
        self.last_id: int = recording.snapshot["lastUpdateId"]
        self.book = {
            "b": {D(p): D(q) for p, q in recording.snapshot["bids"]},
            "a": {D(p): D(q) for p, q in recording.snapshot["asks"]},
        }
        self.sent: list[bytes] = []
        self.paths: list[str] = []
        self.depth_requests: list[dict[str, str]] = []
        self.rest_script: list[web.Response] = []
        """Canned answers served (in order) before real snapshots."""
        self.ws_url = ""
        self.rest_url = ""
        self.skip_events = 0
        self.injected: dict[int, bytes] = {}
        """Extra frames to send before frame index ``pos`` (e.g. garbage)."""

    # ------------------------------------------------------------ the reference book

    def _advance(self) -> bytes:
        frame = self.rec.frames[self.pos]
        d = self.rec.depth[self.pos]
        if d is not None and d[1] > self.last_id:
            assert d[0] <= self.last_id + 1, "the recording itself has a gap"
            for side, levels in (("b", d[2]), ("a", d[3])):
                for p, q in levels:
                    if D(q) == 0:
                        self.book[side].pop(D(p), None)
                    else:
                        self.book[side][D(p)] = D(q)
            self.last_id = d[1]
        self.pos += 1
        return frame

    def skip(self, n: int) -> int:
        """Advance without sending (frames the client misses); returns the depth events among them."""
        events = sum(self.rec.depth[i] is not None for i in range(self.pos, self.pos + n))
        for _ in range(n):
            self._advance()
        return events

    def best(self) -> tuple[tuple[Decimal, Decimal], tuple[Decimal, Decimal]]:
        bid = max(self.book["b"])
        ask = min(self.book["a"])
        return (bid, self.book["b"][bid]), (ask, self.book["a"][ask])

    # ------------------------------------------------------------ websocket

    async def _send(self, conn: ServerConnection, n: int) -> None:
        for _ in range(n):
            extra = self.injected.pop(self.pos, None)
            if extra is not None:
                await conn.send(extra.decode(errors="replace"))
            frame = self._advance()
            self.sent.append(frame)
            await conn.send(frame.decode())

    async def ws_handler(self, conn: ServerConnection) -> None:
        assert conn.request is not None
        self.paths.append(conn.request.path)
        leg = self.legs.pop(0)
        self.skip(leg.skip)
        await self._send(conn, leg.count)
        await leg.gate.wait()
        if leg.then == "drop":
            assert conn.transport is not None
            conn.transport.abort()  # no close frame: a dropped TCP connection
            return
        if leg.then == "pause-skip":
            self.skip_events = self.skip(leg.gap)
            await self._send(conn, leg.after)
        await conn.wait_closed()

    # ------------------------------------------------------------ REST

    async def depth(self, request: web.Request) -> web.Response:
        self.depth_requests.append(dict(request.query))
        if self.rest_script:
            return self.rest_script.pop(0)
        body = {
            "lastUpdateId": self.last_id,
            "bids": [[str(p), str(q)] for p, q in sorted(self.book["b"].items(), reverse=True)],
            "asks": [[str(p), str(q)] for p, q in sorted(self.book["a"].items())],
        }
        return web.json_response(body)


@contextlib.asynccontextmanager
async def running(server: FakeBinance) -> AsyncIterator[FakeBinance]:
    app = web.Application()
    app.router.add_get("/api/v3/depth", server.depth)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert runner.addresses
    server.rest_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    async with serve(server.ws_handler, "127.0.0.1", 0) as ws_server:
        port = next(iter(ws_server.sockets)).getsockname()[1]
        server.ws_url = f"ws://127.0.0.1:{port}"
        try:
            yield server
        finally:
            for leg in server.all_legs:
                leg.gate.set()
            ws_server.close()
    await runner.cleanup()


async def eventually(condition: Callable[[], bool], within_s: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class Frames:
    """The ``on_frame`` hook: records every payload as the client received it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, bytes]] = []

    def __call__(self, ts: int, provider: str, payload: bytes) -> None:
        self.calls.append((ts, provider, payload))

    def ws(self) -> list[bytes]:
        return [p for _, _, p in self.calls if not p.startswith(b'{"lastUpdateId"')]

    def snapshots(self) -> int:
        return sum(p.startswith(b'{"lastUpdateId"') for _, _, p in self.calls)


# ---------------------------------------------------------------- the feed actor, end to end


class Collector(Actor):
    def __init__(self) -> None:
        self.messages: list[object] = []

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.MD_RAW)

    async def handle(self, message: Any) -> Any:
        self.messages.append(message)
        return None


async def test_feed_actor_syncs_survives_a_drop_reconnects_and_resyncs(recording: Recording) -> None:
    drop = Leg(count=3000, then="drop")
    hold = Leg(count=2500, skip=200)
    server = FakeBinance(recording, [drop, hold])
    garbage = b'{"stream":"btcusdt@trade","data":{"e":"trade"}}'
    server.injected[100] = garbage  # one bad frame
    frames = Frames()
    async with running(server):
        bus = Bus()
        collector = Collector()
        feed = BinanceFeedActor(
            ["btcusdt"], base_ws=server.ws_url, base_rest=server.rest_url, on_frame=frames, backoff_cap_s=0.2
        )
        spec = SupervisorSpec("root", [ActorSpec("collector", lambda: collector), ActorSpec("binance", lambda: feed)])
        root = Supervisor(spec, bus, LiveClock(), random.Random(7))
        task = asyncio.create_task(root.run())
        try:
            async with asyncio.timeout(10):
                await root.started()
            client = feed.client
            await eventually(lambda: client.synced.is_set() and len(frames.ws()) == 3001, what="first sync")
            book = client.decoder.book("BTCUSDT")
            assert book is not None and book.synced
            await eventually(lambda: book.last_update_id == server.last_id, what="caught up")
            assert (book.best_bid(), book.best_ask()) == server.best()
            drop.gate.set()
            await eventually(lambda: client.counters.connects == 2, what="reconnect")
            hold.gate.set()
            await eventually(
                lambda: client.synced.is_set() and len(server.sent) == 5500 and len(frames.ws()) == 5501,
                what="second sync",
            )
            await eventually(lambda: book.last_update_id == server.last_id, what="caught up")
            assert (book.best_bid(), book.best_ask()) == server.best()

            assert server.paths == [f"/stream?streams={'/'.join(stream_names(['BTCUSDT']))}"] * 2
            assert server.depth_requests == [{"symbol": "BTCUSDT", "limit": "1000"}] * 2
            assert frames.ws() == [*server.sent[:100], garbage, *server.sent[100:]]
            assert frames.snapshots() == 2
            assert {provider for _, provider, _ in frames.calls} == {"binance"}

            c = client.decoder.counters
            assert c["decode_errors"] == 1 and feed.decode_errors == 1
            assert (c["snapshots"], c["resyncs"], c["depth_gaps"]) == (2, 1, 0)
            assert c["trade_gaps"] == 1  # the 200 frames missed while disconnected hold trades
            assert c["trade_duplicates"] == 0

            await bus.idle()
            states = [m for m in collector.messages if isinstance(m, FeedState)]
            assert [(s.provider, s.connected) for s in states] == [
                ("binance", True), ("binance", False), ("binance", True),
            ]  # fmt: skip
            assert states[1].reason.startswith("closed")
            quotes = [m for m in collector.messages if isinstance(m, ExchangeQuote)]
            trades = [m for m in collector.messages if isinstance(m, TradeTick)]
            assert len(quotes) == c["book_tickers"] and len(trades) == c["trades"]
            assert all(q.provider == "binance" and q.exchange == "BINANCE" for q in quotes)
            assert feed.published == len(quotes) + len(trades) + len(states)

            stats: ActorStats = await bus.request("binance", StatsQuery())
            assert stats.counters == {"published": feed.published, "decode_errors": 1}
            assert stats.breakdown["stream"]["connects"] == 2
            assert stats.breakdown["decoder"]["snapshots"] == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# ---------------------------------------------------------------- the client alone


class Sink:
    def __init__(self) -> None:
        self.messages: list[object] = []

    async def __call__(self, message: object) -> None:
        self.messages.append(message)


@contextlib.asynccontextmanager
async def client_running(client: BinanceMarketData) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(client.run())
    try:
        yield task
    finally:
        await client.stop()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_gap_on_a_live_socket_triggers_a_new_snapshot_and_resync(recording: Recording) -> None:
    leg = Leg(count=1500, then="pause-skip", gap=60, after=1500)
    server = FakeBinance(recording, [leg])
    frames = Frames()
    sink = Sink()
    async with running(server):
        client = BinanceMarketData(
            ["BTCUSDT"], LiveClock(), random.Random(3), sink,
            base_ws=server.ws_url, base_rest=server.rest_url, on_frame=frames,
        )  # fmt: skip
        async with client_running(client):
            await eventually(lambda: client.synced.is_set() and len(server.sent) == 1500, what="sync")
            leg.gate.set()
            await eventually(lambda: len(frames.ws()) == 3000, what="all frames")
            await eventually(lambda: client.synced.is_set(), what="resync")
            book = client.decoder.book("BTCUSDT")
            assert book is not None
            await eventually(lambda: book.last_update_id == server.last_id, what="caught up")
            assert (book.best_bid(), book.best_ask()) == server.best()
            assert server.skip_events > 0
            c = client.decoder.counters
            assert (c["depth_gaps"], c["resyncs"], c["snapshots"]) == (1, 1, 2)
            assert c["trade_gaps"] == 1
            assert client.counters.connects == 1
            assert [m.connected for m in sink.messages if isinstance(m, FeedState)] == [True]


async def test_rate_limits_are_retried_and_a_stale_snapshot_is_fetched_again(recording: Recording) -> None:
    leg = Leg(count=600)
    server = FakeBinance(recording, [leg])
    stale = {"lastUpdateId": 1, "bids": [["1", "1"]], "asks": [["2", "1"]]}
    server.rest_script = [
        web.Response(status=429, text='{"code":-1003,"msg":"Too many requests"}', headers={"Retry-After": "0"}),
        web.Response(status=503, text="unavailable"),
        web.Response(status=200, text="not json"),
        web.json_response(stale),
    ]
    sink = Sink()
    errors: list[BinanceDecodeError] = []
    async with running(server):
        client = BinanceMarketData(
            ["BTCUSDT"], LiveClock(), random.Random(5), sink, base_ws=server.ws_url, base_rest=server.rest_url,
            backoff_base_s=0.01, backoff_cap_s=0.05, on_decode_error=lambda exc, payload: errors.append(exc),
        )  # fmt: skip
        async with client_running(client):
            await eventually(lambda: len(server.depth_requests) == 5 and client.synced.is_set(), what="sync")
            book = client.decoder.book("BTCUSDT")
            assert book is not None
            await eventually(lambda: book.last_update_id == server.last_id, what="caught up")
            assert len(server.depth_requests) == 5
            assert client.counters.snapshot_failures == 2
            assert len(errors) == 1 and "depth snapshot" in str(errors[0])
            assert client.decoder.counters["depth_gaps"] == 1  # the stale snapshot did not bridge
            assert (book.best_bid(), book.best_ask()) == server.best()


async def test_an_unknown_symbol_ends_run_with_a_typed_error(recording: Recording) -> None:
    server = FakeBinance(recording, [Leg(count=0)])
    server.rest_script = [web.Response(status=400, text='{"code":-1121,"msg":"Invalid symbol."}')]
    async with running(server):
        client = BinanceMarketData(
            ["NOPE"], LiveClock(), random.Random(5), Sink(), base_ws=server.ws_url, base_rest=server.rest_url
        )
        with pytest.raises(SnapshotRejected, match="Invalid symbol"):
            async with asyncio.timeout(5):
                await client.run()
        assert client.counters.connects == 1


async def test_no_server_reports_down_once_and_retries_with_backoff() -> None:
    sink = Sink()
    clock = LiveClock()
    client = BinanceMarketData(
        ["BTCUSDT"], clock, random.Random(1), sink, base_ws="ws://127.0.0.1:9", base_rest="http://127.0.0.1:9",
        backoff_base_s=0.01, backoff_cap_s=0.02,
    )  # fmt: skip
    async with client_running(client):
        await eventually(lambda: client.counters.connects >= 4, what="retries")
    states = [m for m in sink.messages if isinstance(m, FeedState)]
    assert len(states) == 1 and not states[0].connected and states[0].reason.startswith("connect failed")
