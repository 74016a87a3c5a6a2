"""The Alpaca simulator over real sockets: REST v2 shapes, /stream, rate limit and fault hooks.

Follows the checklist of ``shared/protocols/alpaca.md`` §5 (items 1–9).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
import websockets.asyncio.client

from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from adapters.alpaca_sim.events import SimQuote
from engine.clock import LiveClock, perf_ns

KEY, SECRET = "test-key", "test-secret"
AUTH = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}
D = Decimal


async def _start(**overrides: Any) -> RunningSimulator:
    fields: dict[str, Any] = {
        "key_id": KEY,
        "secret_key": SECRET,
        "ack_latency_s": (0.0, 0.0),
        "fill_latency_s": (0.0, 0.0),
        "market_data": False,
    }
    fields.update(overrides)
    sim = await start_simulator(SimulatorConfig(**fields), LiveClock())
    sim.state.add_symbol("IBM")
    return sim


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    running = await _start()
    yield running
    await running.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


def quote(sim: RunningSimulator, bid: str, ask: str, size: int = 1000, symbol: str = "IBM") -> None:
    sim.state.on_quote(SimQuote(symbol=symbol, bid_exchange="N", bid_price=D(bid), bid_size=size,
                                ask_exchange="P", ask_price=D(ask), ask_size=size,
                                ts_ns=sim.state.clock.time_ns()))


async def call(http: aiohttp.ClientSession, sim: RunningSimulator, method: str, path: str,
               **kwargs: Any) -> tuple[int, Any]:
    async with http.request(method, sim.url + path, **kwargs) as response:
        text = await response.text()
        if response.status != 204:
            assert response.content_type == "application/json", text
        return response.status, (json.loads(text) if text else None)


async def open_stream(sim: RunningSimulator, session: aiohttp.ClientSession) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(sim.stream_url)
    await ws.send_str(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}}))
    assert await receive(ws) == {"stream": "authorization",
                                 "data": {"status": "authorized", "action": "authenticate"}}
    await ws.send_bytes(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}).encode())
    assert await receive(ws) == {"stream": "listening", "data": {"streams": ["trade_updates"]}}
    return ws


async def receive(ws: aiohttp.ClientWebSocketResponse) -> Any:
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type == aiohttp.WSMsgType.BINARY, msg  # like paper: binary frames holding JSON
    return json.loads(msg.data)


def order_body(**fields: Any) -> dict[str, Any]:
    body = {"symbol": "IBM", "side": "buy", "type": "market", "time_in_force": "day", "qty": 1}
    body.update(fields)
    return body


# ---------------------------------------------------------------- auth and errors


async def test_missing_or_wrong_keys_get_a_json_401(sim: RunningSimulator) -> None:
    async with aiohttp.ClientSession() as anonymous:
        status, body = await call(anonymous, sim, "GET", "/v2/account")
        assert (status, body) == (401, {"code": 40110000, "message": "request is not authorized"})
        wrong = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": "nope"}
        status, _ = await call(anonymous, sim, "GET", "/v2/account", headers=wrong)
        assert status == 401


async def test_unknown_routes_and_bad_bodies_answer_json(sim: RunningSimulator,
                                                         http: aiohttp.ClientSession) -> None:
    status, body = await call(http, sim, "GET", "/v3/nothing")
    assert status == 404 and body["code"] == 40410000
    status, body = await call(http, sim, "PUT", "/v2/account")
    assert status == 405 and "message" in body
    status, body = await call(http, sim, "POST", "/v2/orders", data=b"{not json")
    assert (status, body["code"]) == (422, 40010001)
    status, body = await call(http, sim, "POST", "/v2/orders", json=order_body(side="up"))
    assert status == 422 and "side" in body["message"]
    status, body = await call(http, sim, "GET", "/v2/orders", params={"status": "weird"})
    assert status == 422
    status, body = await call(http, sim, "GET", "/v2/orders", params={"limit": "501"})
    assert status == 422


# ---------------------------------------------------------------- checklist 1-8


async def test_numbers_and_strings_are_accepted_and_decimals_come_back_as_strings(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    quote(sim, "99.90", "100.00")
    status, as_number = await call(http, sim, "POST", "/v2/orders",
                                   json=order_body(qty=2.0, type="limit", limit_price=99.5))
    assert status == 200
    status, as_string = await call(http, sim, "POST", "/v2/orders",
                                   json=order_body(qty="2", type="limit", limit_price="99.50"))
    assert status == 200
    for order in (as_number, as_string):
        assert order["qty"] == "2" and order["limit_price"] == "99.5" and order["filled_qty"] == "0"
        assert order["filled_avg_price"] is None and order["status"] == "new"
        for stamp in ("created_at", "updated_at", "submitted_at"):
            assert isinstance(order[stamp], str) and order[stamp].endswith("Z")
    status, account = await call(http, sim, "GET", "/v2/account")
    assert status == 200 and all(isinstance(account[k], str) for k in ("cash", "buying_power", "equity"))


async def test_duplicate_client_order_id_is_422_and_changes_nothing(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    quote(sim, "99.90", "100.00")
    status, first = await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="dup-1"))
    assert status == 200
    status, body = await call(http, sim, "POST", "/v2/orders",
                              json=order_body(client_order_id="dup-1", qty=5))
    assert (status, body) == (422, {"code": 40010001, "message": "client_order_id must be unique"})
    status, found = await call(http, sim, "GET", "/v2/orders:by_client_order_id",
                               params={"client_order_id": "dup-1"})
    assert status == 200 and found["id"] == first["id"] and found["qty"] == "1"
    status, everything = await call(http, sim, "GET", "/v2/orders", params={"status": "all"})
    assert [o["id"] for o in everything] == [first["id"]]
    status, _ = await call(http, sim, "GET", "/v2/orders:by_client_order_id",
                           params={"client_order_id": "nope"})
    assert status == 404


async def test_oversized_order_is_403_insufficient_buying_power(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    quote(sim, "99.90", "100.00")
    status, body = await call(http, sim, "POST", "/v2/orders", json=order_body(qty=5000))
    assert status == 403
    assert body == {"code": 40310000, "message": "insufficient buying power",
                    "buying_power": "100000", "cost_basis": "500000"}


async def test_delete_semantics(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    quote(sim, "99.90", "100.00")
    ws = await open_stream(sim, http)
    _, order = await call(http, sim, "POST", "/v2/orders", json=order_body(type="limit", limit_price="90"))
    assert (await receive(ws))["data"]["event"] == "new"
    async with http.delete(f"{sim.url}/v2/orders/{order['id']}") as response:
        assert response.status == 204 and await response.read() == b""
    canceled = await receive(ws)
    assert canceled["stream"] == "trade_updates"
    assert canceled["data"]["event"] == "canceled" and canceled["data"]["timestamp"]
    assert canceled["data"]["order"]["status"] == "canceled" and canceled["data"]["order"]["canceled_at"]
    status, body = await call(http, sim, "DELETE", f"/v2/orders/{order['id']}")
    assert status == 422 and body["code"] == 42210000
    status, body = await call(http, sim, "DELETE", f"/v2/orders/{uuid.uuid4()}")
    assert (status, body) == (404, {"code": 40410000, "message": "order not found"})
    status, body = await call(http, sim, "DELETE", "/v2/orders/not-a-uuid")
    assert (status, body["code"]) == (422, 40010001)
    status, body = await call(http, sim, "GET", f"/v2/orders/{uuid.uuid4()}")
    assert status == 404
    # DELETE /v2/orders: 207, one item per open order
    ids = []
    for price in ("90", "91"):
        _, placed = await call(http, sim, "POST", "/v2/orders",
                               json=order_body(type="limit", limit_price=price))
        ids.append(placed["id"])
    status, body = await call(http, sim, "DELETE", "/v2/orders")
    assert status == 207 and body == [{"id": ids[0], "status": 200}, {"id": ids[1], "status": 200}]
    await ws.close()


async def test_patch_replaces_with_a_new_order(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    quote(sim, "99.90", "100.00")
    ws = await open_stream(sim, http)
    _, old = await call(http, sim, "POST", "/v2/orders", json=order_body(type="limit", limit_price="90", qty=3))
    await receive(ws)
    status, new = await call(http, sim, "PATCH", f"/v2/orders/{old['id']}", json={"qty": 4, "limit_price": 91})
    assert status == 200 and new["id"] != old["id"] and new["replaces"] == old["id"]
    assert (new["qty"], new["limit_price"]) == ("4", "91")
    _, old_now = await call(http, sim, "GET", f"/v2/orders/{old['id']}")
    assert old_now["status"] == "replaced" and old_now["replaced_by"] == new["id"] and old_now["replaced_at"]
    replaced = await receive(ws)
    assert replaced["data"]["event"] == "replaced" and replaced["data"]["order"]["id"] == old["id"]
    assert (await receive(ws))["data"]["event"] == "new"
    status, body = await call(http, sim, "PATCH", f"/v2/orders/{old['id']}", json={"qty": 5})
    assert status == 422
    status, body = await call(http, sim, "PATCH", f"/v2/orders/{new['id']}", json={"qty": 99999})
    assert status == 403 and body["message"] == "insufficient buying power"
    await ws.close()


async def test_fills_carry_execution_ids_and_string_decimals(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    quote(sim, "99.90", "100.00", size=30)
    ws = await open_stream(sim, http)
    _, order = await call(http, sim, "POST", "/v2/orders", json=order_body(qty=50))
    events = [(await receive(ws))["data"] for _ in range(2)]
    quote(sim, "99.90", "100.10", size=30)
    events.append((await receive(ws))["data"])
    assert [e["event"] for e in events] == ["new", "partial_fill", "fill"]
    for event, qty, position in zip(events[1:], ("30", "20"), ("30", "50"), strict=True):
        assert uuid.UUID(event["execution_id"])
        assert (event["qty"], event["position_qty"]) == (qty, position)
        assert isinstance(event["price"], str) and event["timestamp"]
    assert events[2]["order"]["filled_qty"] == "50" and events[2]["order"]["status"] == "filled"
    assert events[2]["order"]["filled_avg_price"] == "100.04"
    _, fetched = await call(http, sim, "GET", f"/v2/orders/{order['id']}")
    assert fetched["filled_avg_price"] == "100.04" and fetched["filled_at"]
    status, positions = await call(http, sim, "GET", "/v2/positions")
    assert status == 200 and [(p["symbol"], p["qty"], p["side"]) for p in positions] == [("IBM", "50", "long")]
    status, position = await call(http, sim, "GET", f"/v2/positions/{sim.state.asset('IBM').id}")
    assert status == 200 and position["avg_entry_price"] == "100.04"
    status, body = await call(http, sim, "GET", "/v2/positions/MSFT")
    assert (status, body["code"]) == (404, 40410000)
    status, closed = await call(http, sim, "DELETE", "/v2/positions/IBM", params={"percentage": "50"})
    assert status == 200 and closed["qty"] == "25" and closed["side"] == "sell"
    status, closed_all = await call(http, sim, "DELETE", "/v2/positions", params={"cancel_orders": "true"})
    assert status == 207 and closed_all[0]["symbol"] == "IBM" and closed_all[0]["status"] == 200
    assert closed_all[0]["body"]["qty"] == "25" and closed_all[0]["order_id"] == closed_all[0]["body"]["id"]
    await ws.close()


async def test_rate_limit_answers_429_after_the_configured_rate(http: aiohttp.ClientSession) -> None:
    sim = await _start(rate_limit_per_minute=5)
    try:
        for i in range(5):
            async with http.get(sim.url + "/v2/clock") as response:
                assert response.status == 200
                assert response.headers["X-RateLimit-Remaining"] == str(4 - i)
        status, body = await call(http, sim, "GET", "/v2/account")
        assert (status, body) == (429, {"code": 42910000, "message": "rate limit exceeded"})
        async with aiohttp.ClientSession(headers={"APCA-API-KEY-ID": "other", "APCA-API-SECRET-KEY": "x"}) as s:
            status, _ = await call(s, sim, "GET", "/v2/account")
            assert status == 401  # an unknown key is refused before it counts
    finally:
        await sim.stop()


async def test_clock_calendar_and_assets(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    status, clock = await call(http, sim, "GET", "/v2/clock")
    assert status == 200 and set(clock) == {"timestamp", "is_open", "next_open", "next_close"}
    status, days = await call(http, sim, "GET", "/v2/calendar", params={"start": "2024-01-01",
                                                                          "end": "2024-01-07"})
    assert status == 200 and [d["date"] for d in days] == [f"2024-01-0{i}" for i in range(1, 6)]
    status, assets = await call(http, sim, "GET", "/v2/assets")
    assert status == 200 and {a["symbol"] for a in assets} == {"FAKEPACA", "IBM"}
    assert all(a["class"] == "us_equity" for a in assets)
    status, asset = await call(http, sim, "GET", "/v2/assets/ibm")
    assert status == 200 and asset["symbol"] == "IBM" and asset["shortable"] is True
    status, body = await call(http, sim, "GET", "/v2/assets/NOPE")
    assert (status, body["code"]) == (404, 40410000)


async def test_orders_listing_after_a_time(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    quote(sim, "99.90", "100.00")
    _, first = await call(http, sim, "POST", "/v2/orders", json=order_body())
    _, second = await call(http, sim, "POST", "/v2/orders", json=order_body())
    status, listed = await call(http, sim, "GET", "/v2/orders",
                                params={"status": "all", "after": first["submitted_at"], "direction": "asc"})
    assert status == 200 and [o["id"] for o in listed] == [second["id"]]
    status, listed = await call(http, sim, "GET", "/v2/orders", params={"status": "closed",
                                                                         "symbols": "IBM,MSFT"})
    assert [o["id"] for o in listed] == [second["id"], first["id"]]
    status, _ = await call(http, sim, "GET", "/v2/orders", params={"after": "yesterday"})
    assert status == 422


# ---------------------------------------------------------------- the trade stream (checklist 9)


async def test_stream_authorization_rules(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    ws = await http.ws_connect(sim.stream_url)
    await ws.send_str(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
    assert await receive(ws) == {"stream": "authorization",
                                 "data": {"status": "unauthorized", "action": "listen"}}
    await ws.send_str(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": "bad"}}))
    assert await receive(ws) == {"stream": "authorization",
                                 "data": {"status": "unauthorized", "action": "authenticate"}}
    await ws.send_str("not json")
    assert (await receive(ws))["stream"] == "error"
    await ws.send_bytes(json.dumps({"action": "authenticate",
                                    "data": {"key_id": KEY, "secret_key": SECRET}}).encode())
    assert (await receive(ws))["data"]["status"] == "authorized"
    await ws.send_str(json.dumps({"action": "listen", "data": {"streams": ["trade_updates", "bogus"]}}))
    assert await receive(ws) == {"stream": "listening", "data": {"streams": ["trade_updates"]}}
    await ws.send_str(json.dumps({"action": "listen", "data": {"streams": []}}))
    assert await receive(ws) == {"stream": "listening", "data": {"streams": []}}
    quote(sim, "99.90", "100.00")
    await call(http, sim, "POST", "/v2/orders", json=order_body())
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.receive(), 0.2)  # not listening: nothing arrives
    await ws.close()


async def test_a_client_that_does_not_read_is_dropped_and_never_blocks_the_venue(
    http: aiohttp.ClientSession,
) -> None:
    sim = await _start(stream_queue_limit=64)
    try:
        quote(sim, "99.90", "100.00")
        healthy = await open_stream(sim, http)
        # A websockets client that never calls recv() stops reading its socket after a few frames.
        stuck = await websockets.asyncio.client.connect(sim.stream_url, compression=None, max_queue=1)
        await stuck.send(json.dumps({"action": "authenticate", "data": {"key_id": KEY, "secret_key": SECRET}}))
        await stuck.recv()
        await stuck.send(json.dumps({"action": "listen", "data": {"streams": ["trade_updates"]}}))
        await stuck.recv()
        _, order = await call(http, sim, "POST", "/v2/orders", json=order_body(type="limit", limit_price="90"))
        await receive(healthy)
        received = 0

        async def drain() -> None:
            nonlocal received
            while True:
                await receive(healthy)
                received += 1

        reader = asyncio.create_task(drain())
        started = perf_ns()
        sent = 0
        while len(sim.trade_hub.connections) == 2 and sent < 200_000:
            for _ in range(16):
                # Synthetic load through the real fan-out: an update for the same order, again and again.
                sim.state._emit("new", sim.state.orders[order["id"]])
                sent += 1
            await asyncio.sleep(0.001)  # the test's pacing: the healthy client keeps up
        await asyncio.sleep(0.2)
        reader.cancel()
        assert len(sim.trade_hub.connections) == 1, sent  # the stuck one was aborted
        assert (perf_ns() - started) / 1e9 < 20
        assert received > 100  # the healthy client kept receiving
        stuck.transport.abort()  # its reading is paused: it would never see the server's abort
    finally:
        await sim.stop()


# ---------------------------------------------------------------- fault hooks


async def test_fail_next_and_delay_response(sim: RunningSimulator, http: aiohttp.ClientSession) -> None:
    sim.faults.fail_next.extend([503, 500, 429])
    results = [await call(http, sim, "GET", "/v2/account") for _ in range(4)]
    assert [status for status, _ in results] == [503, 500, 429, 200]
    assert results[0][1] == {"code": 50310000, "message": "service unavailable"}
    sim.faults.delay_response_s = 0.2
    started = perf_ns()
    status, _ = await call(http, sim, "GET", "/v2/clock")
    assert status == 200 and (perf_ns() - started) / 1e9 >= 0.19
    sim.faults.reset()


async def test_dropped_submit_response_leaves_the_order_at_the_venue(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    quote(sim, "99.90", "100.00")
    sim.faults.drop_submit_response_next = 1
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="lost-1"))
    status, found = await call(http, sim, "GET", "/v2/orders:by_client_order_id",
                               params={"client_order_id": "lost-1"})
    assert status == 200 and found["status"] == "filled"
    status, _ = await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="lost-1"))
    assert status == 422  # a blind resend is refused as a duplicate
    status, _ = await call(http, sim, "POST", "/v2/orders", json=order_body(client_order_id="lost-2"))
    assert status == 200  # only the next one was dropped


async def test_disconnect_streams_and_held_updates_are_found_through_rest(
    sim: RunningSimulator, http: aiohttp.ClientSession
) -> None:
    quote(sim, "99.90", "100.00")
    ws = await open_stream(sim, http)
    assert await sim.faults.disconnect_streams() == 1
    msg = await asyncio.wait_for(ws.receive(), 5)
    assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.ERROR)
    sim.faults.hold_trade_updates = True
    status, order = await call(http, sim, "POST", "/v2/orders", json=order_body())
    assert status == 200 and order["status"] == "filled"
    ws = await open_stream(sim, http)  # reconnected: the fill happened while away
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.receive(), 0.2)
    status, missed = await call(http, sim, "GET", "/v2/orders",
                                params={"status": "all", "after": sim_time_before(order)})
    assert [(o["id"], o["status"]) for o in missed] == [(order["id"], "filled")]
    sim.faults.hold_trade_updates = False  # the queued updates are now sent
    assert [(await receive(ws))["data"]["event"] for _ in range(2)] == ["new", "fill"]
    await ws.close()


def sim_time_before(order: dict[str, Any]) -> str:
    """A timestamp just before the order's submission (``after`` is exclusive)."""
    stamp = order["submitted_at"]
    head, frac = stamp[:-1].split(".")
    return f"{head}.{int(frac) - 1:09d}Z"
