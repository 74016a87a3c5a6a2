"""Alpaca market-data stream v2: the simulator's hub and our client, over real loopback sockets.

- The hub speaks the protocol of ``shared/protocols/alpaca.md`` §3 in JSON and MessagePack,
  with every error code, the full-set subscription echo, the wildcard and the test feed.
- The official ``alpaca-py`` 0.44.0 ``StockDataStream`` (run in a thread, as its users do)
  receives the hub's MessagePack quotes and trades and parses them.
- Our ``AlpacaDataStream`` decodes exact Decimals and nanosecond timestamps, reconnects
  fast after the hub drops it, backs off on 406, stops on auth failures, and survives
  hostile frames (hypothesis).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import random
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.alpaca.data_stream import (
    AlpacaDataStream,
    ConnectionLimitExceeded,
    DecodeError,
    StreamAuthError,
    StreamRejected,
    timestamp_ns,
)
from adapters.alpaca_sim.events import SimQuote, SimTrade
from adapters.alpaca_sim.market_data import MarketDataHub, msgpack_timestamp
from engine.clock import LiveClock, perf_ns
from engine.logs import configure_logging
from engine.messages import ExchangeQuote, SymbolTradingStatus, TradeTick
from engine.secrets import Secret

KEY, SECRET = "PKTESTKEY01", "test-secret-0123456789"
TS = 1_704_205_800_123_456_789  # 2024-01-02T14:30:00.123456789Z
MSGPACK_HEADERS = {"Content-Type": "application/msgpack"}


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    configure_logging(None)
    yield
    configure_logging(None)


def authorize(key: str, secret: str) -> bool:
    return (key, secret) == (KEY, SECRET)


def quote(
    symbol: str = "IBM", bid: str = "123.45", ask: str = "123.47", bid_size: int = 3, ts: int = TS
) -> SimQuote:
    return SimQuote(
        symbol=symbol,
        bid_exchange="V",
        bid_price=Decimal(bid),
        bid_size=bid_size,
        ask_exchange="Q",
        ask_price=Decimal(ask),
        ask_size=5,
        ts_ns=ts,
        conditions=["R"],
        tape="C",
    )


def trade(symbol: str = "IBM", price: str = "123.46", trade_id: int = 7, ts: int = TS) -> SimTrade:
    return SimTrade(
        symbol=symbol,
        trade_id=trade_id,
        exchange="V",
        price=Decimal(price),
        size=100,
        ts_ns=ts,
        conditions=["@"],
    )


# ---------------------------------------------------------------- servers and raw clients


@contextlib.asynccontextmanager
async def serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> AsyncIterator[int]:
    """Run ``handler`` on ``GET /v2/{feed}`` at 127.0.0.1 on a free port; yield the port."""
    app = web.Application()
    app.router.add_get("/v2/{feed}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert isinstance(server, asyncio.Server)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def hub_server(**options: Any) -> AsyncIterator[tuple[MarketDataHub, int]]:
    hub = MarketDataHub(authorize, LiveClock(), **options)
    async with serve(hub.handle) as port:
        try:
            yield hub, port
        finally:
            await hub.close_all()


async def eventually(condition: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll ``condition`` every 5 ms until it holds (or fail after ``within_s``)."""
    for _ in range(int(within_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    pytest.fail("condition never became true")


def first_keys_are_t(value: Any) -> bool:
    """Every map in a JSON text / decoded MessagePack array has ``T`` as its first key."""
    return all(isinstance(m, dict) and next(iter(m)) == "T" for m in value)


class RawClient:
    """A bare websocket client that speaks JSON or MessagePack, for protocol checks."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, msgpack: bool) -> None:
        self.ws = ws
        self.msgpack = msgpack

    async def send(self, message: Any) -> None:
        if self.msgpack:
            await self.ws.send_bytes(msgspec.msgpack.encode(message))
        else:
            await self.ws.send_str(json.dumps(message))

    async def recv(self) -> list[dict[str, Any]]:
        msg = await asyncio.wait_for(self.ws.receive(), 5)
        if self.msgpack:
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            value = msgspec.msgpack.decode(msg.data)
        else:
            assert msg.type is aiohttp.WSMsgType.TEXT, msg
            value = json.loads(msg.data)
        assert isinstance(value, list) and first_keys_are_t(value), value
        return value

    async def recv_one(self) -> dict[str, Any]:
        frame = await self.recv()
        assert len(frame) == 1
        return frame[0]

    async def expect_closed(self) -> None:
        msg = await asyncio.wait_for(self.ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING), msg

    async def auth(self, key: str = KEY, secret: str = SECRET) -> dict[str, Any]:
        await self.send({"action": "auth", "key": key, "secret": secret})
        return await self.recv_one()


@contextlib.asynccontextmanager
async def raw_client(
    port: int, feed: str = "iex", msgpack: bool = False, headers: dict[str, str] | None = None
) -> AsyncIterator[RawClient]:
    all_headers = dict(MSGPACK_HEADERS if msgpack else {})
    all_headers.update(headers or {})
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"http://127.0.0.1:{port}/v2/{feed}", headers=all_headers) as ws,
    ):
        client = RawClient(ws, msgpack)
        assert await client.recv_one() == {"T": "success", "msg": "connected"}
        yield client


def error(code: int, msg: str) -> dict[str, Any]:
    return {"T": "error", "code": code, "msg": msg}


def echo(trades: list[str], quotes: list[str], bars: list[str] | None = None) -> dict[str, Any]:
    return {
        "T": "subscription",
        "trades": trades,
        "quotes": quotes,
        "bars": bars or [],
        "updatedBars": [],
        "dailyBars": [],
        "statuses": [],
        "lulds": [],
        "corrections": trades,
        "cancelErrors": trades,
    }


# ---------------------------------------------------------------- the hub: protocol


async def test_json_protocol_flow_errors_subscriptions_and_data() -> None:
    async with hub_server() as (hub, port), raw_client(port) as c:
        await c.send({"action": "subscribe", "quotes": ["IBM"]})
        assert await c.recv_one() == error(401, "not authenticated")
        assert await c.auth(secret="wrong") == error(402, "auth failed")
        assert await c.auth() == {"T": "success", "msg": "authenticated"}
        assert await c.auth() == error(403, "already authenticated")
        for bad in ("not json", "[1, 2]", '{"quotes": ["IBM"]}', '{"action": "subscribe", "quotes": "IBM"}',
                    '{"action": "dance"}', '{"action": "subscribe", "trades": [1]}'):
            await c.ws.send_str(bad)
            assert await c.recv_one() == error(400, "invalid syntax"), bad

        await c.send(
            {"action": "subscribe", "trades": ["IBM"], "quotes": ["IBM", "AAPL"], "updatedBars": ["X"]}
        )
        assert await c.recv_one() == echo(["IBM"], ["IBM", "AAPL"])
        await c.send({"action": "subscribe", "quotes": ["MSFT"], "bars": ["SPY"]})
        assert await c.recv_one() == echo(["IBM"], ["IBM", "AAPL", "MSFT"], ["SPY"])
        await c.send({"action": "unsubscribe", "quotes": ["AAPL"], "bars": ["SPY"]})
        assert await c.recv_one() == echo(["IBM"], ["IBM", "MSFT"])

        hub.publish_quote(quote("AAPL"))  # unsubscribed: not sent
        hub.publish_trade(trade("TSLA"))  # never subscribed: not sent
        hub.publish_quote(quote())
        text = (await asyncio.wait_for(c.ws.receive(), 5)).data
        assert text.startswith('[{"T":"q",')
        assert '"bp":123.45' in text  # a JSON number, Alpaca's format
        assert json.loads(text) == [
            {"T": "q", "S": "IBM", "bx": "V", "bp": 123.45, "bs": 3, "ax": "Q", "ap": 123.47, "as": 5,
             "t": "2024-01-02T14:30:00.123456789Z", "c": ["R"], "z": "C"}
        ]
        hub.publish_trade(trade())
        assert await c.recv_one() == {"T": "t", "S": "IBM", "i": 7, "x": "V", "p": 123.46, "s": 100,
                                      "t": "2024-01-02T14:30:00.123456789Z", "c": ["@"], "z": "A"}

        await c.send({"action": "subscribe", "trades": ["*"]})
        assert await c.recv_one() == echo(["IBM", "*"], ["IBM", "MSFT"])
        hub.publish_trade(trade("TSLA", trade_id=8))
        assert (await c.recv_one())["S"] == "TSLA"
        assert hub.subscribers("trades", "ANYTHING") == 1
        assert hub.subscribers("quotes", "ANYTHING") == 0


async def test_msgpack_protocol_binary_frames_float_prices_and_timestamp_ext() -> None:
    class WireQuote(msgspec.Struct):
        T: str
        bp: float
        t: msgspec.msgpack.Ext

    async with hub_server() as (hub, port), raw_client(port, msgpack=True) as c:
        await c.send({"action": "subscribe", "quotes": ["IBM"]})
        assert await c.recv_one() == error(401, "not authenticated")
        await c.ws.send_bytes(b"\xc1\xc1 not msgpack")
        assert await c.recv_one() == error(400, "invalid syntax")
        assert await c.auth() == {"T": "success", "msg": "authenticated"}
        await c.send({"action": "subscribe", "trades": ["IBM"], "quotes": ["IBM"]})
        assert await c.recv_one() == echo(["IBM"], ["IBM"])
        # A text frame with JSON is understood on a MessagePack connection too.
        await c.ws.send_str('{"action":"subscribe","quotes":["AAPL"]}')
        assert await c.recv_one() == echo(["IBM"], ["IBM", "AAPL"])

        hub.publish_quote(quote())
        msg = await asyncio.wait_for(c.ws.receive(), 5)
        assert msg.type is aiohttp.WSMsgType.BINARY
        (wire,) = msgspec.msgpack.decode(msg.data, type=list[WireQuote])
        assert wire.T == "q" and wire.bp == 123.45
        assert wire.t.code == -1 and timestamp_ns(wire.t) == TS  # nanoseconds survive
        keys = list(msgspec.msgpack.decode(msg.data)[0])
        assert keys == ["T", "S", "bx", "bp", "bs", "ax", "ap", "as", "t", "c", "z"]
        hub.publish_trade(trade())
        t = await c.recv_one()
        assert list(t) == ["T", "S", "i", "x", "p", "s", "t", "c", "z"]
        assert t["p"] == 123.46 and t["t"] == dt.datetime(2024, 1, 2, 14, 30, 0, 123457, tzinfo=dt.UTC)


def test_msgpack_timestamp_layouts_round_trip() -> None:
    for ns in (TS, 1_704_205_800 * 10**9, 5, 1, 2**63 - 1):
        ext = msgpack_timestamp(ns)
        assert ext.code == -1
        assert timestamp_ns(ext) == ns
    assert len(bytes(msgpack_timestamp(1_704_205_800 * 10**9).data)) == 4
    assert len(bytes(msgpack_timestamp(TS).data)) == 8
    assert len(bytes(msgpack_timestamp(-1).data)) == 12  # before the epoch: the 96-bit layout
    assert timestamp_ns(msgspec.msgpack.Ext(-1, struct.pack(">Iq", 123_456_789, 1_704_205_800))) == TS
    for bad in (msgpack_timestamp(-1), msgpack_timestamp((1 << 34) * 10**9), msgspec.msgpack.Ext(1, b"1234")):
        with pytest.raises(DecodeError):
            timestamp_ns(bad)


async def test_handshake_headers_authenticate() -> None:
    async with hub_server() as (_, port):
        good = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
        async with raw_client(port, headers=good) as c:
            assert await c.recv_one() == {"T": "success", "msg": "authenticated"}
            await c.send({"action": "subscribe", "quotes": ["IBM"]})
            assert await c.recv_one() == echo([], ["IBM"])
        bad = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": "nope"}
        async with raw_client(port, headers=bad) as c:
            assert await c.recv_one() == error(402, "auth failed")


async def test_auth_timeout_sends_404_and_closes() -> None:
    async with hub_server(auth_timeout_s=0.1) as (hub, port), raw_client(port, msgpack=True) as c:
        assert await c.recv_one() == error(404, "auth timeout")
        await c.expect_closed()
        assert hub.counters.auth_timeouts == 1


async def test_second_connection_with_the_same_key_gets_406_and_the_first_keeps_working() -> None:
    async with hub_server() as (hub, port), raw_client(port) as first:
        assert (await first.auth())["msg"] == "authenticated"
        await first.send({"action": "subscribe", "quotes": ["IBM"]})
        await first.recv_one()
        async with raw_client(port) as second:
            assert await second.auth() == error(406, "connection limit exceeded")
            await second.expect_closed()
        async with raw_client(port, feed="sip") as other_endpoint:  # the limit is per endpoint
            assert (await other_endpoint.auth())["msg"] == "authenticated"
        hub.publish_quote(quote())
        assert (await first.recv_one())["S"] == "IBM"
        assert hub.counters.connection_limit_rejections == 1


async def test_unknown_feed_is_an_http_404() -> None:
    async with hub_server() as (_, port), aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(f"http://127.0.0.1:{port}/v2/crypto")
        assert info.value.status == 404


async def test_fragmented_client_frames_are_reassembled() -> None:
    """alpaca-py sends its subscribe as a fragmented frame (32 KiB pieces); so do we here."""
    from websockets.asyncio.client import connect

    symbols = [f"S{i:05d}" for i in range(15000)]
    async with hub_server() as (_, port):
        uri = f"ws://127.0.0.1:{port}/v2/iex"
        async with connect(uri, additional_headers=MSGPACK_HEADERS) as ws:

            async def recv() -> Any:
                frame = await ws.recv()
                assert isinstance(frame, bytes)
                return msgspec.msgpack.decode(frame)

            assert await recv() == [{"T": "success", "msg": "connected"}]
            await ws.send(msgspec.msgpack.encode({"action": "auth", "key": KEY, "secret": SECRET}))
            assert (await recv())[0]["msg"] == "authenticated"
            payload = msgspec.msgpack.encode({"action": "subscribe", "quotes": symbols})
            assert len(payload) > 3 * 32768
            await ws.send([payload[i : i + 32768] for i in range(0, len(payload), 32768)])
            (sub,) = await recv()
            assert sub["T"] == "subscription" and sub["quotes"] == symbols


async def test_a_client_that_falls_behind_gets_407_and_is_closed() -> None:
    async with hub_server(queue_size=8) as (hub, port), raw_client(port) as c:
        await c.auth()
        await c.send({"action": "subscribe", "quotes": ["IBM"]})
        await c.recv_one()
        for i in range(50):  # synchronously: the writer never gets a turn
            hub.publish_quote(quote(bid_size=i + 1))
        assert await c.recv_one() == error(407, "slow client")
        await c.expect_closed()
        assert hub.counters.slow_clients == 1


async def test_the_test_feed_streams_fakepaca_only_when_subscribed() -> None:
    async with (
        hub_server(test_interval_s=0.01) as (_, port),
        raw_client(port, feed="test", msgpack=True) as c,
    ):
        await c.auth()
        await c.send({"action": "subscribe", "quotes": ["FAKEPACA"], "trades": ["FAKEPACA"]})
        assert await c.recv_one() == echo(["FAKEPACA"], ["FAKEPACA"])
        seen = {(await c.recv_one())["T"] for _ in range(6)}
        assert seen == {"q", "t"}
        await c.send({"action": "unsubscribe", "quotes": ["FAKEPACA"], "trades": ["FAKEPACA"]})
        while (await c.recv_one())["T"] != "subscription":
            pass  # ticks already queued
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.ws.receive(), 0.1)


# ---------------------------------------------------------------- the official SDK against the hub


@pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated:DeprecationWarning")
@pytest.mark.parametrize("feed", ["iex", "sip"])
async def test_alpaca_py_stock_stream_parses_hub_quotes_and_trades(feed: str) -> None:
    from alpaca.data.enums import DataFeed
    from alpaca.data.live import StockDataStream
    from alpaca.data.models import Quote, Trade

    loop = asyncio.get_running_loop()
    received: list[Any] = []
    arrived = asyncio.Event()

    async def on_data(item: Any) -> None:  # runs in the SDK's thread and loop
        received.append(item)
        loop.call_soon_threadsafe(arrived.set)

    async with hub_server() as (hub, port):
        stream = StockDataStream(
            KEY, SECRET, feed=DataFeed(feed), url_override=f"ws://127.0.0.1:{port}/v2/{feed}"
        )
        stream.subscribe_quotes(on_data, "IBM")
        stream.subscribe_trades(on_data, "IBM")
        thread = threading.Thread(target=stream.run, name="alpaca-py", daemon=True)
        thread.start()
        try:
            await eventually(
                lambda: hub.subscribers("quotes", "IBM", feed) == hub.subscribers("trades", "IBM", feed) == 1
            )
            hub.publish_quote(quote(bid="189.2999", ask="189.31"))
            hub.publish_trade(trade(price="0.1"))
            while len(received) < 2:
                await asyncio.wait_for(arrived.wait(), 5)
                arrived.clear()
        finally:
            stream.stop()
            await hub.close_all()  # the SDK looks at its stop flag only between frames
            await asyncio.to_thread(thread.join, 5)
        assert not thread.is_alive()

    q, t = received
    assert isinstance(q, Quote) and isinstance(t, Trade)
    when = dt.datetime(2024, 1, 2, 14, 30, 0, 123456, tzinfo=dt.UTC)  # the SDK keeps microseconds
    assert (q.symbol, q.bid_price, q.bid_size, q.ask_price, q.ask_size) == ("IBM", 189.2999, 3, 189.31, 5)
    assert (q.bid_exchange, q.ask_exchange, q.timestamp, q.conditions, q.tape) == ("V", "Q", when, ["R"], "C")
    assert (t.symbol, t.price, t.size, t.id, t.timestamp, t.conditions) == ("IBM", 0.1, 100, 7, when, ["@"])


# ---------------------------------------------------------------- our client


class Collector:
    """The client's sink: keeps everything, wakes waiters."""

    def __init__(self) -> None:
        self.items: list[ExchangeQuote | TradeTick | SymbolTradingStatus] = []
        self.changed = asyncio.Event()

    async def __call__(self, item: ExchangeQuote | TradeTick | SymbolTradingStatus) -> None:
        self.items.append(item)
        self.changed.set()

    async def wait_for(self, n: int, within_s: float = 5.0) -> None:
        await self.wait_until(lambda: len(self.items) >= n, within_s)

    async def wait_until(self, done: Callable[[], bool], within_s: float = 5.0) -> None:
        async def loop() -> None:
            while not done():
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(loop(), within_s)


def make_client(
    port: int, sink: Collector, feed: str = "iex", secret: str = SECRET, **options: Any
) -> AlpacaDataStream:
    return AlpacaDataStream(
        f"ws://127.0.0.1:{port}/v2/{feed}",
        KEY,
        Secret(secret),
        ["IBM", "AAPL"],
        LiveClock(),
        random.Random(7),
        sink,
        **options,
    )


@contextlib.asynccontextmanager
async def running(client: AlpacaDataStream) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(client.run())
    try:
        yield task
    finally:
        await client.stop()
        await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("use_msgpack", [True, False])
async def test_client_decodes_quotes_and_trades_into_exact_engine_messages(use_msgpack: bool) -> None:
    sink = Collector()
    async with hub_server() as (hub, port):
        client = make_client(port, sink, use_msgpack=use_msgpack)
        async with running(client):
            await asyncio.wait_for(client.subscribed.wait(), 5)
            assert client.connected
            assert hub.subscribers("quotes", "AAPL") == 1 and hub.subscribers("trades", "IBM") == 1
            before = LiveClock().time_ns()
            hub.publish_quote(quote("AAPL", bid="189.2999", ask="0.30000000000000004"))
            hub.publish_quote(quote("MSFT"))  # not ours: the hub does not send it
            hub.publish_trade(trade(price="0.1"))
            await sink.wait_for(2)
    q, t = sink.items
    assert isinstance(q, ExchangeQuote) and isinstance(t, TradeTick)
    assert q == ExchangeQuote(
        symbol="AAPL",
        exchange="V",
        national=True,
        bid_price=Decimal("189.2999"),
        bid_size=Decimal(3),
        ask_price=Decimal("0.30000000000000004"),
        ask_size=Decimal(5),
        suspicious=False,
        provider="alpaca-iex",
        ts_event=TS,
        ts_recv=q.ts_recv,
        ask_exchange="Q",
    )
    assert str(q.bid_price) == "189.2999" and str(t.price) == "0.1"  # no binary-float digits
    assert before <= q.ts_recv <= LiveClock().time_ns()
    assert t == TradeTick(
        symbol="IBM", exchange="V", price=Decimal("0.1"), size=Decimal(100), suspicious=False,
        provider="alpaca-iex", ts_event=TS, ts_recv=t.ts_recv,
    )
    assert (client.counters.quotes, client.counters.trades, client.counters.decode_errors) == (1, 1, 0)
    assert client.counters.frames >= 5  # connected, authenticated, subscription, q, t
    assert client.last_message_ns is not None and not client.connected


async def test_client_reconnects_resubscribes_and_keeps_receiving_after_a_drop() -> None:
    sink = Collector()
    async with hub_server() as (hub, port):
        client = make_client(port, sink, backoff_base_s=0.05, backoff_cap_s=1.0)
        async with running(client):
            await asyncio.wait_for(client.subscribed.wait(), 5)
            hub.publish_quote(quote(bid_size=1))
            await sink.wait_for(1)

            sink.changed.clear()
            started = perf_ns()
            await hub.close_all()
            # Publish every 2 ms until a quote arrives over the new connection.
            while len(sink.items) < 2:
                hub.publish_quote(quote(bid_size=2))
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(sink.changed.wait(), 0.002)
                assert perf_ns() - started < 5 * 10**9, "no data after the drop"
            elapsed_ms = (perf_ns() - started) / 1e6
            assert client.subscribed.is_set()

            assert elapsed_ms < 250, f"first message {elapsed_ms:.1f} ms after the drop"
            assert client.counters.reconnects == 1 and client.counters.connects == 2
            assert hub.subscribers("quotes", "IBM") == 1  # resubscribed, once
            hub.publish_trade(trade())
            await sink.wait_until(lambda: any(isinstance(item, TradeTick) for item in sink.items))


async def test_client_backs_off_on_406_and_gives_up_without_a_storm() -> None:
    sink = Collector()
    async with hub_server() as (hub, port), raw_client(port) as holder:
        assert (await holder.auth())["msg"] == "authenticated"  # holds the key's one slot
        client = make_client(
            port, sink, backoff_base_s=0.01, backoff_cap_s=0.15, max_connection_limit_retries=3
        )
        started = perf_ns()
        with pytest.raises(ConnectionLimitExceeded) as info:
            await asyncio.wait_for(client.run(), 5)
        elapsed_s = (perf_ns() - started) / 1e9
        assert info.value.code == 406
        # Three tries spaced by the cap: a storm would have made hundreds in this time.
        assert hub.counters.connection_limit_rejections == 3 and client.counters.connects == 3
        assert 2 * 0.15 <= elapsed_s < 2.0
        assert not client.connected


async def test_client_stops_on_bad_keys_without_retrying() -> None:
    sink = Collector()
    async with hub_server() as (hub, port):
        client = make_client(port, sink, secret="wrong-secret-value")
        with pytest.raises(StreamAuthError) as info:
            await asyncio.wait_for(client.run(), 5)
        assert info.value.code == 402
        assert "wrong-secret-value" not in str(info.value)
        assert hub.counters.connections == 1 and client.counters.connects == 1
        assert client.counters.reconnects == 0


async def test_client_stop_while_backing_off_and_cancellation() -> None:
    async def unavailable(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503)

    sink = Collector()
    async with serve(unavailable) as port:
        # Every connect fails: the client sits in its backoff sleep when stopped.
        client = make_client(port, sink, backoff_base_s=5.0, backoff_cap_s=10.0)
        task = asyncio.create_task(client.run())
        await eventually(lambda: client.counters.connects >= 2)
        started = perf_ns()
        await client.stop()
        await asyncio.wait_for(task, 1)  # returns normally
        assert (perf_ns() - started) < 0.5e9
        await client.stop()  # idempotent

        task = asyncio.create_task(client.run())
        await eventually(lambda: client.counters.connects >= 3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_client_stop_from_inside_the_sink() -> None:
    async with hub_server() as (hub, port):
        stopped: list[ExchangeQuote | TradeTick | SymbolTradingStatus] = []

        async def sink(item: ExchangeQuote | TradeTick | SymbolTradingStatus) -> None:
            stopped.append(item)
            await client.stop()

        client = AlpacaDataStream(
            f"ws://127.0.0.1:{port}/v2/sip", KEY, Secret(SECRET), ["IBM"], LiveClock(), random.Random(1), sink
        )
        task = asyncio.create_task(client.run())
        await asyncio.wait_for(client.subscribed.wait(), 5)
        hub.publish_trade(trade())
        await asyncio.wait_for(task, 5)  # returns normally
        assert len(stopped) == 1 and stopped[0].provider == "alpaca-sip"
        assert not client.connected
        await eventually(lambda: hub.subscribers("trades", "IBM") == 0)


def test_client_refuses_a_bad_url() -> None:
    with pytest.raises(ValueError):
        AlpacaDataStream(
            "ftp://x/v2/iex", KEY, Secret(SECRET), ["IBM"], LiveClock(), random.Random(1), Collector()
        )


# ---------------------------------------------------------------- scripted (hostile) servers

Script = Callable[[int], list[Any]]
"""Per connection number (0, 1, …): frames to send after the subscription echo."""


@contextlib.asynccontextmanager
async def scripted_server(
    script: Script, auth_reply: Callable[[int], dict[str, Any]] | None = None, greet: bool = True
) -> AsyncIterator[tuple[int, list[int]]]:
    """A fake Alpaca that plays the handshake, then ``script(n)``; bytes go binary, str as text.

    Dict/list items are encoded in the connection's codec. Yields the port and a list whose
    length is the number of connections so far.
    """
    connections: list[int] = []
    encoder = msgspec.msgpack.Encoder(decimal_format="number")
    json_encoder = msgspec.json.Encoder(decimal_format="number")

    async def handler(request: web.Request) -> web.StreamResponse:
        n = len(connections)
        connections.append(n)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        mp = request.headers.get("Content-Type") == "application/msgpack"

        async def send(item: Any) -> None:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            elif isinstance(item, str):
                await ws.send_str(item)
            elif mp:
                await ws.send_bytes(encoder.encode(item))
            else:
                await ws.send_str(json_encoder.encode(item).decode())

        if not greet:
            await ws.receive()
            return ws
        await send([{"T": "success", "msg": "connected"}])
        await ws.receive()
        await send([auth_reply(n) if auth_reply else {"T": "success", "msg": "authenticated"}])
        subscribe = await ws.receive()
        if subscribe.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            await send([{"T": "subscription", "trades": ["IBM", "AAPL"], "quotes": ["IBM", "AAPL"]}])
            for item in script(n):
                await send(item)
            await ws.receive()  # until the client goes
        return ws

    async with serve(handler) as port:
        yield port, connections


def valid_quote(n: int, msgpack: bool) -> dict[str, Any]:
    return {
        "T": "q",
        "S": "IBM",
        "bx": "V",
        "bp": Decimal("10.01"),
        "bs": n,
        "ax": "V",
        "ap": Decimal("10.02"),
        "as": 1,
        "t": msgpack_timestamp(TS) if msgpack else "2024-01-02T14:30:00.123456789Z",
        "c": [],
        "z": "C",
    }


async def test_client_errors_409_is_permanent_500_and_407_reconnect() -> None:
    sink = Collector()

    def script(n: int) -> list[Any]:
        if n == 0:
            return [[error(500, "internal error")]]
        if n == 1:
            return [[error(407, "slow client")]]
        return [[valid_quote(1, True)], [error(409, "insufficient subscription")]]

    async with scripted_server(script) as (port, connections):
        client = make_client(port, sink, backoff_base_s=0.01, backoff_cap_s=0.02)
        with pytest.raises(StreamRejected) as info:
            await asyncio.wait_for(client.run(), 5)
    assert info.value.code == 409
    assert len(connections) == 3 and client.counters.reconnects == 2
    assert [item.bid_size for item in sink.items if isinstance(item, ExchangeQuote)] == [1]


async def test_client_retries_a_server_that_never_greets() -> None:
    async with scripted_server(lambda n: [], greet=False) as (port, connections):
        client = make_client(
            port, Collector(), handshake_timeout_s=0.05, backoff_base_s=0.01, backoff_cap_s=0.02
        )
        async with running(client):
            await eventually(lambda: len(connections) >= 3)
        assert client.counters.reconnects >= 2 and not client.subscribed.is_set()


# Hostile frames. Every "bad message" is invalid for certain; garbage bytes/text may
# occasionally be valid-but-empty (``[]``), so they are not counted as certain errors.

_BAD_FIELD: dict[str, st.SearchStrategy[Any]] = {
    "S": st.sampled_from([None, 5, [], "", "X" * 40]),
    "bx": st.sampled_from([None, 5, ["V"]]),
    "bp": st.sampled_from([None, True, "abc", -1, Decimal("1e400"), Decimal("1e12"), [1]]),
    "bs": st.sampled_from([None, -1, 1.5, "10", True, 2**64 - 1]),
    "ax": st.sampled_from([None, 7, {"a": 1}]),
    "ap": st.sampled_from([None, False, "1.0.0", Decimal("-0.01"), Decimal("1e400")]),
    "as": st.sampled_from([None, -5, 2.5, "x", 2**64 - 1]),
    "t": st.sampled_from([None, 5, "yesterday", "2024-13-45T25:61:00Z", [1], "1969-12-31T23:59:59Z"]),
    "c": st.sampled_from([5, "R", [1, 2]]),
    "T": st.sampled_from([None, 5, ["q"]]),
}
_BAD_TS_EXT = st.sampled_from(
    [
        msgspec.msgpack.Ext(5, b"\x00" * 8),
        msgspec.msgpack.Ext(-1, b"abc"),
        msgspec.msgpack.Ext(-1, (2_000_000_000).to_bytes(4, "big") + (1).to_bytes(8, "big")),
        msgspec.msgpack.Ext(-1, b"\x00\x00\x00\x00"),
    ]
)


@st.composite
def bad_message(draw: st.DrawFn, msgpack: bool) -> dict[str, Any]:
    message = valid_quote(0, msgpack)
    field = draw(st.sampled_from(sorted(_BAD_FIELD)))
    if draw(st.booleans()) and field not in ("c",):
        del message[field]
    elif field == "t" and msgpack and draw(st.booleans()):
        message["t"] = draw(_BAD_TS_EXT)
    else:
        message[field] = draw(_BAD_FIELD[field])
    if field != "T":  # keep T first, as a server would
        message = {"T": message.pop("T"), **message}
    return message


@st.composite
def hostile_frame(draw: st.DrawFn, msgpack: bool) -> tuple[Any, int]:
    """A frame and how many decode errors it causes for certain."""
    kind = draw(st.sampled_from(["bytes", "text", "not_array", "bad_messages", "other_type"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64)), 0
    if kind == "text":
        return draw(st.text(max_size=64)), 0
    if kind == "not_array":
        value = draw(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=10), st.none(),
                               st.dictionaries(st.text(max_size=5), st.integers(0, 9), max_size=3)))
        return {"__value__": value}, 1
    if kind == "other_type":  # well-formed, but a type we do not use: ignored, not an error
        return [{"T": "b", "S": "IBM", "o": 1.5}], 0
    messages = draw(st.lists(bad_message(msgpack), min_size=1, max_size=3))
    return messages, len(messages)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), use_msgpack=st.booleans())
def test_hostile_frames_are_counted_and_skipped(data: st.DataObject, use_msgpack: bool) -> None:
    frames = data.draw(st.lists(hostile_frame(use_msgpack), max_size=12), label="frames")
    script_items: list[Any] = []
    certain_errors = 0
    for i, (frame, errors) in enumerate(frames):
        if isinstance(frame, dict):  # a non-array value
            frame = frame["__value__"]
            if isinstance(frame, str):
                frame = json.dumps(frame) if not use_msgpack else msgspec.msgpack.encode(frame)
        script_items.append(frame)
        # Valid data right after each hostile frame, and valid data inside the bad frame's array.
        script_items.append([valid_quote(i, use_msgpack)])
        certain_errors += errors
    script_items.append([{"T": "x"}, valid_quote(len(frames), use_msgpack), {"T": "q"}])
    certain_errors += 1  # the {"T": "q"} without fields

    async def scenario() -> None:
        configure_logging(None)
        sink = Collector()
        async with scripted_server(lambda n: script_items if n == 0 else []) as (port, connections):
            client = make_client(port, sink, use_msgpack=use_msgpack)
            async with running(client) as task:
                await sink.wait_for(len(frames) + 1)
                assert not task.done()
                assert client.connected
            assert [item.bid_size for item in sink.items if isinstance(item, ExchangeQuote)] == list(
                range(len(frames) + 1)
            )
            assert client.counters.decode_errors >= certain_errors
            assert len(connections) == 1 and client.counters.reconnects == 0

    asyncio.run(scenario())
