"""The Alpaca simulator's chaos fault hooks, observed by clients over real sockets on 127.0.0.1.

Each hook: the client sees the fault (a duplicate, a gap, a swap, a stall then the rest in
order, a fill racing a cancel, a restart with connection refused) and
``Faults.injected`` counts it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from adapters.alpaca import wire
from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from adapters.alpaca_sim.events import SimQuote
from adapters.alpaca_sim.state import VenueSettings, VenueState
from engine.clock import LiveClock, SimClock

KEY, SECRET = "fault-key", "fault-secret"
AUTH = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
D = Decimal
CLOSED = (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    config = SimulatorConfig(key_id=KEY, secret_key=SECRET, ack_latency_s=(0.0, 0.0), fill_latency_s=(0.0, 0.0),
                             symbols=("IBM",))
    running = await start_simulator(config, LiveClock())
    yield running
    await running.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


def make_quote(bid: str, ask: str, size: int = 1000, symbol: str = "IBM") -> SimQuote:
    return SimQuote(symbol=symbol, bid_exchange="N", bid_price=D(bid), bid_size=size, ask_exchange="P",
                    ask_price=D(ask), ask_size=size, ts_ns=LiveClock().time_ns())


def quote(sim: RunningSimulator, bid: str, ask: str, size: int = 1000) -> None:
    sim.state.on_quote(make_quote(bid, ask, size))


async def call(http: aiohttp.ClientSession, sim: RunningSimulator, method: str, path: str,
               **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, sim.url + path, **kwargs) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


def order_body(**fields: Any) -> dict[str, Any]:
    body = {"symbol": "IBM", "side": "buy", "type": "market", "time_in_force": "day", "qty": 1}
    body.update(fields)
    return body


async def open_stream(sim: RunningSimulator, http: aiohttp.ClientSession,
                      autoping: bool = True) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(sim.stream_url, autoping=autoping)
    await ws.send_str(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}}))
    assert (await receive(ws))["data"]["status"] == "authorized"
    await ws.send_str(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
    assert (await receive(ws))["stream"] == "listening"
    return ws


async def receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg
    return json.loads(msg.data)


async def events(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[tuple[str, str]]:
    """The next ``n`` trade updates as (event, client_order_id)."""
    found = []
    for _ in range(n):
        data = (await receive(ws))["data"]
        found.append((data["event"], data["order"]["client_order_id"]))
    return found


async def silent(ws: aiohttp.ClientWebSocketResponse, seconds: float = 0.2) -> bool:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.receive(), seconds)
    return True


async def open_data(sim: RunningSimulator, http: aiohttp.ClientSession,
                    feed: str = "iex") -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(sim.data_url(feed))
    assert await data_frame(ws) == [{"T": "success", "msg": "connected"}]
    assert await data_frame(ws) == [{"T": "success", "msg": "authenticated"}]  # by the session's key headers
    await ws.send_str(json.dumps({"action": "subscribe", "quotes": ["IBM"]}))
    assert (await data_frame(ws))[0]["T"] == "subscription"
    return ws


async def data_frame(ws: aiohttp.ClientWebSocketResponse) -> Any:
    return json.loads(await asyncio.wait_for(ws.receive_str(), 5))


# ---------------------------------------------------------------- trade updates


async def test_duplicated_trade_updates_arrive_twice(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    quote(sim, "99.90", "100.00")
    ws = await open_stream(sim, http)
    sim.faults.duplicate_trade_updates_next = 1
    assert (await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="d1")))[0] == 200
    assert await events(ws, 3) == [("new", "d1"), ("new", "d1"), ("fill", "d1")]
    assert await silent(ws)
    assert (await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="d2")))[0] == 200
    assert await events(ws, 2) == [("new", "d2"), ("fill", "d2")]  # only the next one was doubled
    assert sim.faults.injected["trade_update_duplicate"] == 1
    await ws.close()


async def test_reordered_trade_updates_are_swapped_in_pairs(sim: RunningSimulator,
                                                            http: aiohttp.ClientSession) -> None:
    quote(sim, "99.90", "100.00")
    ws = await open_stream(sim, http)
    sim.faults.reorder_trade_updates_next = 1
    await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="r1"))
    assert await events(ws, 2) == [("fill", "r1"), ("new", "r1")]  # out of order
    await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="r2"))
    assert await events(ws, 2) == [("new", "r2"), ("fill", "r2")]
    # A held-back update with no successor is sent alone after reorder_max_hold_s.
    sim.faults.reorder_max_hold_s = 0.3
    sim.faults.reorder_trade_updates_next = 1
    await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="r3", type="limit",
                                                                  limit_price="90"))
    assert await silent(ws, 0.15)
    assert await events(ws, 1) == [("new", "r3")]
    assert sim.faults.injected["trade_update_reorder"] == 2
    await ws.close()


# ---------------------------------------------------------------- market data


async def test_market_data_frames_are_duplicated_dropped_and_swapped_alike_for_every_subscriber(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    assert sim.hub is not None
    iex, sip = await open_data(sim, http, "iex"), await open_data(sim, http, "sip")
    faults, hub = sim.faults, sim.hub

    def publish(bid: int, symbol: str = "IBM") -> None:
        hub.publish_quote(make_quote(str(bid), str(bid + 1), symbol=symbol))

    publish(1)
    faults.md_duplicate_next = 1
    publish(2)
    faults.md_drop_next = 1
    publish(50, symbol="AAA")  # nobody subscribed: consumes no fault
    publish(3)  # dropped: a gap
    faults.md_reorder_next = 1
    publish(4)  # held back...
    publish(5)  # ...and sent after this one
    publish(6)
    expected = [1, 2, 2, 5, 4, 6]
    for ws in (iex, sip):
        seen: list[int] = []
        while len(seen) < len(expected):
            seen += [m["bp"] for m in await data_frame(ws)]
        assert seen == expected
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.receive(), 0.1)
    assert {k: faults.injected[k] for k in ("md_duplicate", "md_drop", "md_reorder")} == {
        "md_duplicate": 1, "md_drop": 1, "md_reorder": 1}
    await iex.close()
    await sip.close()


async def test_disconnect_market_data_drops_only_the_data_websockets(sim: RunningSimulator,
                                                                     http: aiohttp.ClientSession) -> None:
    quote(sim, "99.90", "100.00")
    data = await open_data(sim, http)
    trades = await open_stream(sim, http)
    assert await sim.faults.disconnect_market_data() == 1
    assert (await asyncio.wait_for(data.receive(), 5)).type in CLOSED
    await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="m1"))
    assert await events(trades, 2) == [("new", "m1"), ("fill", "m1")]  # /stream untouched
    data = await open_data(sim, http)  # reconnecting at once is not a 406
    assert sim.faults.injected["md_stream_drop"] == 1
    await data.close()
    await trades.close()


# ---------------------------------------------------------------- stalls


async def test_stalled_streams_send_nothing_and_ignore_pings_then_resume_in_order(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    assert sim.hub is not None
    quote(sim, "99.90", "100.00")
    trades = await open_stream(sim, http, autoping=False)
    data = await open_data(sim, http)
    assert sim.faults.stall_streams(1.5) == 2
    fresh = await open_stream(sim, http)  # a connection made during the stall is served
    for n in (1, 2):
        await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id=f"s{n}"))
    expected = [("new", "s1"), ("fill", "s1"), ("new", "s2"), ("fill", "s2")]
    assert await events(fresh, 4) == expected
    sim.hub.publish_quote(make_quote("7", "8"))  # lost for the stalled data connection
    await trades.ping(b"stalled")
    assert await silent(trades, 0.3)  # neither updates nor a pong
    assert await events(trades, 4) == expected  # after the stall: all of them, in order
    await trades.ping(b"awake")
    msg = await asyncio.wait_for(trades.receive(), 5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"awake")
    sim.hub.publish_quote(make_quote("9", "10"))
    assert [m["bp"] for m in await data_frame(data)] == [9]  # the stalled quote never came
    assert sim.hub.counters.frames_dropped_stalled == 1
    assert sim.faults.injected["stream_stall"] == 1
    for ws in (trades, data, fresh):
        await ws.close()


# ---------------------------------------------------------------- late fill racing a cancel


async def test_a_fill_races_the_cancel_and_the_venue_books_it(sim: RunningSimulator,
                                                              http: aiohttp.ClientSession) -> None:
    quote(sim, "99.90", "100.00", size=3)
    ws = await open_stream(sim, http)
    # Marketable, partly filled by the quote's 3 shares: the late fill trades at the ask.
    status, first = await call(http, sim, "POST", "/v2/orders",
                               json=order_body(client_order_id="c1", type="limit", limit_price="100", qty=10))
    assert status == 200 and first["filled_qty"] == "3"
    # Resting below the ask: the late fill trades at its limit.
    status, second = await call(http, sim, "POST", "/v2/orders",
                                json=order_body(client_order_id="c2", type="limit", limit_price="99", qty=4))
    assert status == 200 and second["status"] == "new"
    assert await events(ws, 3) == [("new", "c1"), ("partial_fill", "c1"), ("new", "c2")]
    sim.faults.late_fill_after_cancel_next = 2
    for order in (first, second):
        status, _ = await call(http, sim, "DELETE", f"/v2/orders/{order['id']}")
        assert status == 204  # acknowledged as usual
    updates = [(await receive(ws))["data"] for _ in range(4)]
    assert [(u["event"], u["order"]["client_order_id"]) for u in updates] == [
        ("partial_fill", "c1"), ("canceled", "c1"), ("partial_fill", "c2"), ("canceled", "c2")]
    assert [(u["qty"], u["price"], u["position_qty"]) for u in (updates[0], updates[2])] == [
        ("3", "100", "6"), ("2", "99", "8")]
    assert [(u["order"]["filled_qty"], u["order"]["status"]) for u in (updates[1], updates[3])] == [
        ("6", "canceled"), ("2", "canceled")]
    _, position = await call(http, sim, "GET", "/v2/positions/IBM")
    assert position["qty"] == "8"
    _, account = await call(http, sim, "GET", "/v2/account")
    assert D(account["cash"]) == 100000 - 6 * 100 - 2 * 99
    _, listed = await call(http, sim, "GET", f"/v2/orders/{first['id']}")
    assert (listed["status"], listed["filled_qty"], listed["filled_avg_price"]) == ("canceled", "6", "100")
    assert sim.faults.injected["late_fill_after_cancel"] == 2 and sim.faults.late_fill_after_cancel_next == 0
    await ws.close()


def test_late_fill_lands_before_canceled_with_latencies_and_skips_orders_that_do_not_work() -> None:
    clock = SimClock(1_700_000_000 * 1_000_000_000)
    state = VenueState(VenueSettings(symbols=("IBM",), ack_latency_s=(0.01, 0.01), fill_latency_s=(0.05, 0.05)),
                       clock, seed=3)
    updates: list[wire.TradeUpdate] = []
    state.subscribe(updates.append)
    state.on_quote(make_quote("99.90", "100.00"))
    state.faults.late_fill_after_cancel_next = 1

    def submit(client_order_id: str) -> str:
        request = wire.OrderRequest(symbol="IBM", side="sell", type="limit", time_in_force="gtc",
                                    qty=D(5), limit_price=D("101"), client_order_id=client_order_id)
        return state.submit_order(request).id

    early = submit("early")
    state.cancel_order(early)  # not acknowledged yet: not working, no late fill
    assert state.faults.late_fill_after_cancel_next == 1
    working = submit("working")
    clock.advance_to(clock.time_ns() + 20_000_000)
    state.cancel_order(working)  # the cancel lands after 10 ms, the fill after 50 ms
    clock.advance_to(clock.time_ns() + 100_000_000)
    assert [(u.event, u.order.client_order_id) for u in updates] == [
        ("canceled", "early"), ("new", "working"), ("partial_fill", "working"), ("canceled", "working")]
    assert (updates[2].qty, updates[2].price, updates[2].position_qty) == (D(2), D(101), D(-2))
    assert state.orders[working].filled_qty == 2 and state.orders[working].status == "canceled"
    assert state.position_qty("IBM") == -2 and state.cash == 100000 + 2 * 101
    assert state.faults.injected["late_fill_after_cancel"] == 1


# ---------------------------------------------------------------- server restart


async def test_restart_refuses_connections_then_serves_the_same_state_on_the_same_port(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    quote(sim, "99.90", "100.00")
    status, resting = await call(http, sim, "POST", "/v2/orders",
                                 json=order_body(client_order_id="keep", type="limit", limit_price="90"))
    assert status == 200
    ws = await open_stream(sim, http)
    data = await open_data(sim, http)

    def up() -> bool:
        return sim.serving

    restart = asyncio.create_task(sim.restart_server(downtime_s=0.5))
    for _ in range(100):
        if not up():
            break
        await asyncio.sleep(0.01)
    assert not up()
    assert (await asyncio.wait_for(ws.receive(), 5)).type in CLOSED
    assert (await asyncio.wait_for(data.receive(), 5)).type in CLOSED
    async with aiohttp.ClientSession(headers=AUTH) as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await call(fresh, sim, "GET", "/v2/account")
    await asyncio.wait_for(restart, 5)
    assert up()
    async with aiohttp.ClientSession(headers=AUTH) as fresh:
        status, found = await call(fresh, sim, "GET", "/v2/orders:by_client_order_id",
                                   params={"client_order_id": "keep"})
        assert (status, found["id"], found["status"]) == (200, resting["id"], "new")
        ws = await open_stream(sim, fresh)
        data = await open_data(sim, fresh)
        status, _ = await call(fresh, sim, "DELETE", f"/v2/orders/{resting['id']}")
        assert status == 204
        assert await events(ws, 1) == [("canceled", "keep")]
        await ws.close()
        await data.close()
    assert sim.faults.injected["server_restart"] == 1


# ---------------------------------------------------------------- counters of the older hooks


async def test_the_older_hooks_are_counted(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    quote(sim, "99.90", "100.00")
    sim.faults.fail_next.extend([429, 503, 500, 408])
    assert [(await call(http, sim, "GET", "/v2/clock"))[0] for _ in range(5)] == [429, 503, 500, 408, 200]
    sim.faults.drop_submit_response_next = 1
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, sim, "POST", "/v2/orders", json=order_body())
    ws = await open_stream(sim, http)
    assert await sim.faults.disconnect_streams() == 1
    sim.faults.hold_trade_updates = True
    sim.faults.hold_trade_updates = True  # already on: not a new hold
    sim.faults.hold_trade_updates = False
    sim.faults.reject_next = 1
    sim.faults.delay_response_s = 0.01
    status, order = await call(http, sim, "POST", "/v2/orders", json=order_body())
    assert status == 200 and sim.state.orders[order["id"]].status == "rejected"
    sim.faults.reset()
    assert dict(sim.faults.injected) == {
        "http_429": 1, "http_5xx": 2, "http_error": 1, "submit_reply_lost": 1, "stream_drop": 1,
        "trade_updates_held": 1, "order_rejected": 1, "response_delayed": 1,
    }
    await ws.close()


def stream_down_since(sim: RunningSimulator) -> int | None:
    return sim.state.trade_stream_down_since_ns


async def test_the_venue_notes_orders_accepted_while_no_trade_updates_stream_listened(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    """What the chaos invariant ``no_order_while_stream_down`` is checked against."""
    quote(sim, "100.00", "100.02")
    status, _ = await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="before-any-stream"))
    assert status == 200
    assert sim.state.accepted_without_stream["before-any-stream"] >= 0

    ws = await open_stream(sim, http)
    assert stream_down_since(sim) is None
    status, _ = await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="while-listening"))
    assert status == 200
    assert "while-listening" not in sim.state.accepted_without_stream

    sim.state.faults.stall_streams(0.5)  # half-open: still a listener, as far as anyone can tell
    status, _ = await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="while-stalled"))
    assert "while-stalled" not in sim.state.accepted_without_stream

    await sim.faults.disconnect_streams()
    assert stream_down_since(sim) is not None
    status, _ = await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="after-the-drop"))
    assert status == 200
    assert "after-the-drop" in sim.state.accepted_without_stream
    refused_status, _ = await call(http, sim, "POST", "/v2/orders", json=order_body(symbol="NOPE", client_order_id="x"))
    assert refused_status == 422 and "x" not in sim.state.accepted_without_stream  # only accepted orders count
    await ws.close()


# ---------------------------------------------------------------- a provider goes silent


async def open_quiet_data(sim: RunningSimulator, http: aiohttp.ClientSession,
                          feed: str) -> aiohttp.ClientWebSocketResponse:
    """:func:`open_data` without autoping, so the test sees the server's pongs itself."""
    ws = await http.ws_connect(sim.data_url(feed), autoping=False)
    assert [m["msg"] for f in (await data_frame(ws), await data_frame(ws)) for m in f] == ["connected", "authenticated"]
    await ws.send_str(json.dumps({"action": "subscribe", "quotes": ["IBM"]}))
    assert (await data_frame(ws))[0]["T"] == "subscription"
    return ws


async def test_a_silenced_feed_stays_up_and_answers_pings_but_sends_no_quotes_until_the_silence_ends(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    assert sim.hub is not None
    hub, faults = sim.hub, sim.faults
    iex, sip = await open_quiet_data(sim, http, "iex"), await open_quiet_data(sim, http, "sip")

    def publish(bid: int) -> None:
        hub.publish_quote(make_quote(str(bid), str(bid + 1)))

    with pytest.raises(ValueError, match="unknown feed"):
        faults.silence_feed("nope", 1.0)
    assert faults.silence_feed("iex", 0) == 0  # no silence, nothing counted
    assert faults.silence_feed("iex", 1.5) == 1
    assert hub.silent("iex") and not hub.silent("sip")
    publish(1)
    publish(2)
    assert [m["bp"] for m in await data_frame(sip)] == [1]  # the other provider keeps quoting
    assert [m["bp"] for m in await data_frame(sip)] == [2]
    await iex.ping(b"still there?")
    msg = await asyncio.wait_for(iex.receive(), 5)  # no quote first: the pong is the next frame
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.PONG, b"still there?")
    await iex.send_str(json.dumps({"action": "subscribe", "quotes": ["AAA"]}))
    assert (await data_frame(iex))[0]["quotes"] == ["IBM", "AAA"]  # control frames flow
    # Reconnecting does not help: the feed is quiet, not the connection.
    await iex.close()
    for _ in range(100):  # its handler lets go of the (feed, key) slot, or the new one gets 406
        if hub.subscribers("quotes", "IBM", "iex") == 0:
            break
        await asyncio.sleep(0.01)
    iex = await open_quiet_data(sim, http, "iex")
    publish(3)
    assert [m["bp"] for m in await data_frame(sip)] == [3]
    assert await silent(iex, 0.2)
    assert not iex.closed
    for _ in range(200):  # the silence ends on the simulator's clock (1.5 s)
        if not hub.silent("iex"):
            break
        await asyncio.sleep(0.02)
    assert not hub.silent("iex")
    publish(4)
    assert [m["bp"] for m in await data_frame(iex)] == [4]  # 1-3 never come: dropped, not queued
    assert [m["bp"] for m in await data_frame(sip)] == [4]
    assert hub.counters.frames_dropped_silenced == 3
    faults.reset()
    assert faults.injected["provider_silent"] == 1
    for ws in (iex, sip):
        await ws.close()
