"""Alpaca trading status (``s``) and LULD (``l``) messages, live and from a recording.

The live client subscribes to them (with ``statuses=True``), hands each on as a
SymbolTradingStatus, and shows every raw frame to ``on_frame``; ``decode_frame`` turns
the recorded frames back into the very same messages.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from aiohttp import web

from adapters.alpaca.data_stream import AlpacaDataStream, MarketEvent, decode_frame
from adapters.alpaca_sim.market_data import msgpack_timestamp
from engine.clock import LiveClock
from engine.messages import ExchangeQuote, SymbolTradingStatus
from engine.secrets import Secret

TS = 1_795_789_800_000_000_001  # 2026-11-27T14:30:00.000000001Z
TS_TEXT = "2026-11-27T14:30:00.000000001Z"


def status(code: str, msgpack: bool, symbol: str = "IBM") -> dict[str, Any]:
    return {"T": "s", "S": symbol, "sc": code, "sm": "Trading Halt" if code == "H" else "Trading Resumption",
            "rc": "LUDP", "rm": "Volatility Trading Pause", "t": msgpack_timestamp(TS) if msgpack else TS_TEXT,
            "z": "A"}


def luld(down: str, up: str, msgpack: bool) -> dict[str, Any]:
    return {"T": "l", "S": "IBM", "u": Decimal(up), "d": Decimal(down), "i": "B",
            "t": msgpack_timestamp(TS) if msgpack else TS_TEXT, "z": "A"}


_MSGPACK = msgspec.msgpack.Encoder(decimal_format="number")
_JSON = msgspec.json.Encoder(decimal_format="number")


def encode(items: list[dict[str, Any]], msgpack: bool) -> bytes:
    """Prices as numbers, the way Alpaca sends them."""
    return (_MSGPACK if msgpack else _JSON).encode(items)


@pytest.mark.parametrize("msgpack", [True, False])
def test_decode_frame_statuses_and_bands(msgpack: bool) -> None:
    frame = encode(
        [status("H", msgpack), status("T", msgpack), status("2", msgpack), status("3", msgpack),
         status("Q", msgpack), status("E", msgpack), luld("118.05", "130.55", msgpack)],
        msgpack,
    )
    events = decode_frame(frame, 42, "alpaca-sip", msgpack)
    assert [e.halted for e in events if isinstance(e, SymbolTradingStatus)] == [
        True, False, True, False, None, None, None
    ]
    first = events[0]
    assert first == SymbolTradingStatus(
        symbol="IBM", halted=True, reason="H Trading Halt: LUDP Volatility Trading Pause", provider="alpaca-sip",
        ts_event=TS, ts_recv=42,
    )
    band = events[-1]
    assert isinstance(band, SymbolTradingStatus)
    assert (band.luld_lower, band.luld_upper, band.halted, band.reason) == (
        Decimal("118.05"), Decimal("130.55"), None, "luld B"
    )
    assert type(band.luld_lower) is Decimal


def test_decode_frame_skips_control_and_bad_messages_and_sniffs_json() -> None:
    errors: list[str] = []
    frame = encode(
        [{"T": "subscription", "trades": ["IBM"]}, luld("130", "120", False), {"T": "s", "S": "IBM"},
         status("H", False), {"T": "b", "S": "IBM"}],
        False,
    )
    # Recorded as bytes of a JSON text frame: read as JSON even on a msgpack session.
    events = decode_frame(frame, 1, "alpaca-iex", msgpack=True, errors=errors)
    assert [type(e) for e in events] == [SymbolTradingStatus]
    assert len(errors) == 2 and "limit down 130 above limit up 120" in errors[0]
    assert decode_frame(frame.decode(), 1, "alpaca-iex", msgpack=False) == events
    assert decode_frame(b"\x01\x02", 1, "x", msgpack=True, errors=errors) == [] and len(errors) == 3


@asynccontextmanager
async def server(frames: list[bytes], msgpack: bool, seen: list[Any]) -> AsyncIterator[int]:
    """A one-connection Alpaca: handshake, then ``frames``; keeps the client's subscribe in ``seen``."""
    decode = msgspec.msgpack.decode if msgpack else msgspec.json.decode

    async def send(ws: web.WebSocketResponse, payload: bytes) -> None:
        await (ws.send_bytes(payload) if msgpack else ws.send_str(payload.decode()))

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await send(ws, encode([{"T": "success", "msg": "connected"}], msgpack))
        await ws.receive()
        await send(ws, encode([{"T": "success", "msg": "authenticated"}], msgpack))
        subscribe = await ws.receive()
        seen.append(decode(subscribe.data))
        await send(ws, encode([{"T": "subscription", "trades": ["IBM"], "quotes": ["IBM"],
                                "statuses": ["IBM"], "lulds": ["IBM"]}], msgpack))
        for frame in frames:
            await send(ws, frame)
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/v2/sip", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("msgpack", [True, False])
async def test_the_client_subscribes_delivers_and_records_frames_that_replay_identically(msgpack: bool) -> None:
    quote = {"T": "q", "S": "IBM", "bx": "V", "bp": Decimal("120.01"), "bs": 1, "ax": "V",
             "ap": Decimal("120.02"), "as": 2, "t": msgpack_timestamp(TS) if msgpack else TS_TEXT}
    frames = [encode([status("H", msgpack)], msgpack), encode([luld("118.05", "130.55", msgpack), quote], msgpack),
              encode([status("T", msgpack)], msgpack)]
    seen: list[Any] = []
    delivered: list[MarketEvent] = []
    recorded: list[tuple[int, str, bytes]] = []
    done = asyncio.Event()

    async def sink(event: MarketEvent) -> None:
        delivered.append(event)
        if len(delivered) == 4:
            done.set()

    async with server(frames, msgpack, seen) as port:
        client = AlpacaDataStream(
            f"ws://127.0.0.1:{port}/v2/sip", "key", Secret("secret"), ["IBM"], LiveClock(), random.Random(1), sink,
            use_msgpack=msgpack, statuses=True, on_frame=lambda *frame: recorded.append(frame),
        )
        task = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(done.wait(), 5)
        finally:
            await client.stop()
            await asyncio.wait_for(task, 5)
    assert seen == [{"action": "subscribe", "trades": ["IBM"], "quotes": ["IBM"], "statuses": ["IBM"],
                     "lulds": ["IBM"]}]
    assert [type(e) for e in delivered] == [SymbolTradingStatus, SymbolTradingStatus, ExchangeQuote,
                                            SymbolTradingStatus]
    assert [getattr(e, "halted", "q") for e in delivered] == [True, None, "q", False]
    assert (client.counters.statuses, client.counters.lulds, client.counters.quotes) == (2, 1, 1)
    assert len(recorded) == client.counters.frames == 6  # 3 handshake frames + 3 data frames
    assert all(provider == "alpaca-sip" and isinstance(raw, bytes) for _, provider, raw in recorded)
    replayed = [e for ts, provider, raw in recorded for e in decode_frame(raw, ts, provider, msgpack)]
    assert replayed == delivered
