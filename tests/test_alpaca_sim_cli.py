"""Running the Alpaca simulator: config defaults, serve(), and the feed reaching both websockets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from adapters.alpaca_sim.cli import (
    DEFAULT_KEY_ID,
    DEFAULT_SECRET_KEY,
    SimulatorConfig,
    serve,
    start_simulator,
)
from engine.clock import LiveClock
from tests.helpers import random_walk_day

KEY, SECRET = "cli-key", "cli-secret"
AUTH = {"APCA-API-KEY-ID": KEY, "APCA-API-SECRET-KEY": SECRET}


def test_config_keys_come_from_the_environment_or_the_documented_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("APCA_API_KEY_ID", raising=False)
    monkeypatch.delenv("APCA_API_SECRET_KEY", raising=False)
    config = SimulatorConfig()
    assert (config.key_id, config.secret_key) == (DEFAULT_KEY_ID, DEFAULT_SECRET_KEY)
    assert (DEFAULT_KEY_ID, DEFAULT_SECRET_KEY) == ("kestrel-sim-key", "kestrel-sim-secret")
    monkeypatch.setenv("APCA_API_KEY_ID", "env-key")
    monkeypatch.setenv("APCA_API_SECRET_KEY", "env-secret-value")
    config = SimulatorConfig()
    assert (config.key_id, config.secret_key) == ("env-key", "env-secret-value")
    assert "env-secret-value" not in repr(config) and "***" in repr(config)
    assert config.starting_cash == 100000 and config.rate_limit_per_minute == 200


async def test_serve_runs_until_cancelled() -> None:
    urls: list[str] = []
    task = asyncio.create_task(serve("127.0.0.1", 0, [], None, KEY, SECRET, 1, urls.append))
    for _ in range(500):
        if urls or task.done():
            break
        await asyncio.sleep(0.01)
    assert urls and urls[0].startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession(headers=AUTH) as http, http.get(urls[0] + "/v2/account") as response:
        assert response.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(urls[0] + "/v2/account")


async def test_serve_exits_when_the_feed_is_done(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, symbol="abc", quotes=300)
    urls: list[str] = []
    await asyncio.wait_for(
        serve("127.0.0.1", 0, files, None, KEY, SECRET, 1, urls.append, exit_when_done=True), 30
    )
    assert len(urls) == 1


async def test_the_feed_reaches_the_venue_and_the_market_data_stream(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, symbol="abc", quotes=2000)  # 200 s of recording
    config = SimulatorConfig(key_id=KEY, secret_key=SECRET, feed_files=files, speed=50.0, symbols=("msft",))
    sim = await start_simulator(config, LiveClock())
    try:
        assert sim.player is not None and {a.symbol for a in sim.state.list_assets()} == {"ABC", "FAKEPACA", "MSFT"}
        async with aiohttp.ClientSession(headers=AUTH) as http:
            data = await http.ws_connect(sim.data_url("iex"))
            assert json.loads(await data.receive_str()) == [{"T": "success", "msg": "connected"}]
            await data.send_str(json.dumps({"action": "auth", "key": KEY, "secret": SECRET}))
            assert json.loads(await data.receive_str()) == [{"T": "success", "msg": "authenticated"}]
            await data.send_str(json.dumps({"action": "subscribe", "quotes": ["ABC"]}))
            seen: list[dict[str, Any]] = []
            while len(seen) < 3:
                for message in json.loads(await asyncio.wait_for(data.receive_str(), 10)):
                    if message["T"] == "q":
                        seen.append(message)
            assert all(m["S"] == "ABC" and m["bp"] < m["ap"] for m in seen)
            async with http.get(sim.url + "/v2/clock") as response:
                assert (await response.json())["is_open"] is True  # the replay is the session
            async with http.post(sim.url + "/v2/orders", json={"symbol": "ABC", "side": "buy", "type": "market",
                                                                "time_in_force": "day", "qty": "1"}) as response:
                order = await response.json()
                assert response.status == 200, order
            for _ in range(500):
                if sim.state.orders[order["id"]].status == "filled":
                    break
                await asyncio.sleep(0.01)
            assert sim.state.orders[order["id"]].status == "filled"
            await data.close()
    finally:
        await sim.stop()
    assert sim.player_task is not None and sim.player_task.cancelled()
