"""``/metrics``, ``/healthz`` and ``/readyz``: the Prometheus format (checked by Prometheus's own
parser) and a real engine process seen through them — not ready while it recovers, ready
after, not ready while halted, and its order-path figures moving as it trades.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from engine.clock import LiveClock
from engine.metrics import Histogram, MetricFamily, render
from simulations.engine_config import write_engine_config
from simulations.engine_process import EngineKeys, EngineProcess
from simulations.lean_feed import chaos_session

KEYS = EngineKeys("PKMETRICSTEST001", "metrics-test-secret-01")


def parse(text: str) -> dict[str, Any]:
    """Family name (as Prometheus's parser names it) → family."""
    return {family.name: family for family in text_string_to_metric_families(text)}


# ---------------------------------------------------------------- the format


def test_render_is_read_back_by_the_reference_parser() -> None:
    latency = Histogram((0.001, 0.01))
    for ns in (500_000, 2_000_000, 3_000_000, 50_000_000):
        latency.observe(ns)
    text = render([
        MetricFamily("kestrel_orders_total", "counter", "Orders.")
        .add(3, outcome="submitted")
        .add(1, outcome='we"ird\\'),
        MetricFamily("kestrel_working_orders", "gauge", "Working.").add(2),
        MetricFamily("kestrel_submit_to_ack_seconds", "histogram", "Latency.").add_histogram(latency),
    ])  # fmt: skip
    families = parse(text)
    orders = families["kestrel_orders"]
    assert orders.type == "counter"
    assert {(s.labels["outcome"], s.value) for s in orders.samples} == {("submitted", 3.0), ('we"ird\\', 1.0)}
    assert families["kestrel_working_orders"].samples[0].value == 2
    hist = families["kestrel_submit_to_ack_seconds"]
    assert hist.type == "histogram"
    values = {(s.name, s.labels.get("le")): s.value for s in hist.samples}
    assert values[("kestrel_submit_to_ack_seconds_bucket", "0.001")] == 1
    assert values[("kestrel_submit_to_ack_seconds_bucket", "0.01")] == 3
    assert values[("kestrel_submit_to_ack_seconds_bucket", "+Inf")] == 4
    assert values[("kestrel_submit_to_ack_seconds_count", None)] == 4
    assert values[("kestrel_submit_to_ack_seconds_sum", None)] == pytest.approx(0.0555)


def test_names_follow_the_conventions() -> None:
    with pytest.raises(ValueError, match="kestrel_"):
        MetricFamily("orders_total", "counter", "x")
    with pytest.raises(ValueError, match="_total"):
        MetricFamily("kestrel_orders", "counter", "x")
    with pytest.raises(ValueError, match="rendered twice"):
        render([MetricFamily("kestrel_a", "gauge", "a"), MetricFamily("kestrel_a", "gauge", "a")])
    with pytest.raises(ValueError, match="increasing"):
        Histogram((0.1, 0.01))


# ---------------------------------------------------------------- a real engine


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[RunningSimulator]:
    feed = chaos_session(tmp_path / "feed", seed=11)
    running = await start_simulator(
        SimulatorConfig(feed_files=feed, speed=1.5, seed=11, key_id=KEYS.key_id, secret_key=KEYS.secret_key),
        LiveClock(),
    )
    yield running
    await running.stop()


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        body = await response.text()
        return response.status, (json.loads(body) if response.content_type == "application/json" else body)


async def _until(what: str, check: Any, timeout_s: float = 30.0) -> Any:
    clock = LiveClock()
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        result = await check()
        if result:
            return result
        await clock.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    for family in families.values():
        for sample in family.samples:
            if sample.name == sample_name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise KeyError(f"{sample_name}{labels}")


async def test_a_running_engine_through_metrics_health_and_readiness(
    sim: RunningSimulator, tmp_path: Path
) -> None:
    config = write_engine_config(tmp_path / "engine.toml", run_id="metrics")
    control_file = tmp_path / "control.json"
    sim.faults.delay_response_s = 1.0  # every REST reply is slow: recovery takes seconds, long enough to see
    engine = await EngineProcess.start(
        "engine", tmp_path, sim.url, tmp_path / "journal.db", config, KEYS, args=["--http", "127.0.0.1:0"]
    )
    try:
        async with aiohttp.ClientSession() as http:

            async def control_url() -> str | None:
                assert engine.running, engine.describe()
                if not control_file.exists():
                    return None
                found: str = json.loads(control_file.read_text())["url"]
                return found

            url = await _until("the HTTP server", control_url)
            token = json.loads(control_file.read_text())["token"]

            status, health = await _get(http, f"{url}/healthz")
            assert status == 200 and health["ok"] and health["checks"]["event_loop"]
            status, ready = await _get(http, f"{url}/readyz")
            assert status == 503, ready  # still recovering: reconciling with a slow venue
            # The order manager is busy reconciling: it answers "recovering", or not in time at all.
            assert ready["checks"]["recovered"] is False and ready["checks"]["trading_state"] in ("recovering", None)

            sim.faults.delay_response_s = 0.0

            async def ready_now() -> bool:
                code, _ = await _get(http, f"{url}/readyz")
                return code == 200

            await _until("ready after recovery", ready_now)

            async def traded() -> dict[str, Any] | None:
                code, text = await _get(http, f"{url}/metrics")
                assert code == 200
                families = parse(text)
                filled = _value(families, "kestrel_fills_total") > 0
                acked = _value(families, "kestrel_submit_to_ack_seconds_count") > 0
                return families if filled and acked else None

            families = await _until("orders and fills in /metrics", traded)
            types = {name: family.type for name, family in families.items()}
            assert types["kestrel_orders"] == "counter"
            assert types["kestrel_fills"] == "counter"
            for histogram in ("kestrel_tick_to_order_seconds", "kestrel_submit_to_ack_seconds",
                              "kestrel_ack_to_fill_seconds", "kestrel_event_loop_lag_seconds",
                              "kestrel_journal_commit_seconds", "kestrel_journal_commit_rows"):  # fmt: skip
                assert types[histogram] == "histogram", histogram
            for gauge in ("kestrel_mailbox_depth", "kestrel_breaker_state", "kestrel_feed_last_event_age_seconds",
                          "kestrel_trading_state", "kestrel_working_orders"):  # fmt: skip
                assert types[gauge] == "gauge", gauge
            assert _value(families, "kestrel_orders_total", outcome="submitted") > 0
            assert _value(families, "kestrel_ack_to_fill_seconds_count") > 0
            # Every order so far came from a quote: each was timed from it.
            ticked = _value(families, "kestrel_tick_to_order_seconds_count")
            assert 0 < ticked <= _value(families, "kestrel_orders_total", outcome="submitted")
            assert _value(families, "kestrel_tick_to_order_seconds_bucket", le="0.25") == ticked  # well under 250 ms
            assert _value(families, "kestrel_journal_rows_total") > 0
            assert _value(families, "kestrel_trading_state", state="active") == 1
            assert _value(families, "kestrel_breaker_state", breaker="orders") == 0
            assert _value(families, "kestrel_feed_last_event_age_seconds", provider="alpaca-iex") < 10
            assert _value(families, "kestrel_actor_restarts_total", actor="order-manager") == 0
            labels = {key for family in families.values() for sample in family.samples for key in sample.labels}
            assert not labels & {"client_order_id", "intent_id", "order_id", "execution_id"}

            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(f"{url}/control/halt", json={"reason": "test"}, headers=headers) as response:
                assert response.status == 200
            status, ready = await _get(http, f"{url}/readyz")
            assert status == 503 and ready["checks"]["not_halted"] is False
            _, text = await _get(http, f"{url}/metrics")
            assert _value(parse(text), "kestrel_trading_state", state="halted") == 1
            async with http.post(f"{url}/control/resume", json={"reason": "test"}, headers=headers) as response:
                assert response.status == 200
            await _until("ready after resume", ready_now)

            async with http.post(f"{url}/control/halt", json={"reason": "no token"}) as response:
                assert response.status == 401  # the read-only routes are open; control is not
        assert await engine.terminate() == 0
    finally:
        await engine.kill()
