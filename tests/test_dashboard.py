"""The live dashboard (``GET /dashboard`` + its SSE stream), in process and end to end.

In process (a real bus, supervisor and HTTP server; one actor answering the queries with
fixed figures): the stream sends JSON ``state`` events with a growing ``seq``, caps its
clients (503 beyond), frees a slot when a client leaves, stops its producer when nobody
watches, ends at once when the server stops, and lists an actor that does not answer
instead of stalling.

End to end, every piece real: ``kestrel run`` is a child process (paper mode, the embedded
Alpaca simulator at real-time speed on the synthetic IBM session of
``tests/test_control_e2e.py``, where ``ema-cross`` buys 10 once), the demo prints the
dashboard's URL, an HTTP client reads the stream, and Debian's Chromium, headless and
driven by Playwright, opens the page: it loads, its values move without a reload, the
strategy's position and fill appear, and ``kestrel halt`` / ``kestrel resume`` typed at
the CLI show on it within seconds.

The browser is ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/dev.py test``
installs it when it can). Without it the browser test fails and says how to install it;
``KESTREL_SKIP_BROWSER=1`` skips it instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import orjson
import pytest

from actors.order_latency import OrderPathLatency
from adapters.control_http import ControlServer, generate_token
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import LiveClock
from engine.config import RiskSection
from engine.loop_lag import LoopLagMonitor
from engine.messages import (
    ActorStats,
    Fill,
    FillHistory,
    FillHistoryQuery,
    OperatorCommand,
    OperatorReply,
    PortfolioQuery,
    PortfolioSnapshot,
    RiskReport,
    RiskReportQuery,
    Side,
    StatsQuery,
    TradingState,
    TradingStateChanged,
    TradingStateQuery,
    WorkingOrders,
    WorkingOrdersQuery,
)
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec
from kestrel.dashboard import DashboardFeed, limits_used
from kestrel.ops import EngineProbe
from tests.test_control_e2e import Engine, _falling_then_rising_day, _write_config, kestrel, running_engine

CHROMIUM = Path("/usr/bin/chromium")
SKIP_ENV = "KESTREL_SKIP_BROWSER"
HALT_REASON = "dashboard e2e: desk says stop <b>now</b>"
"""Markup on purpose: the page must show it as text."""
RESUME_REASON = "dashboard e2e: all clear"
UI_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- in process: a one-actor engine


class Oracle(Actor):
    """Answers every query the dashboard asks with fixed figures (one fill, one working order)."""

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is RiskReportQuery:
            return RiskReport(
                trading_state="active", trading_reason="recovered", equity=Decimal("100010.50"),
                long_exposure=Decimal("1800"), short_exposure=Decimal(0), gross_exposure=Decimal("1800"),
                net_exposure=Decimal("1800"), leverage=Decimal("0.018"), concentration_pct={"IBM": Decimal("1.8")},
                daily_pnl=Decimal("10.50"), drawdown_pct=Decimal(0), high_water=Decimal("100010.50"), var_95=None,
                es_95=None, var_samples=0, working_orders=1, paused_strategies=[], ts_init=0,
            )  # fmt: skip
        if kind is PortfolioQuery:
            return PortfolioSnapshot(
                cash=Decimal("98200.00"), positions={"IBM": Decimal(10)}, realized_pnl=Decimal("4.00"),
                fees=Decimal(0), fills=1,
            )  # fmt: skip
        if kind is TradingStateQuery:
            return TradingStateChanged(state=TradingState.ACTIVE, reason="recovered", ts_init=0)
        if kind is WorkingOrdersQuery:
            return WorkingOrders(orders=[])
        if kind is FillHistoryQuery:
            fill = Fill(
                client_order_id="kestrel-1", venue_order_id="v1", execution_id="x1", intent_id="i1",
                strategy="ema-cross", symbol="IBM", side=Side.BUY, qty=Decimal(10), price=Decimal("179.83"),
                fee=Decimal(0), ts_event=1, ts_recv=1,
            )  # fmt: skip
            fills = [fill][message.after :]
            return FillHistory(fills=fills, baseline_cash=Decimal(100_000), total=1)
        if kind is StatsQuery:
            return ActorStats(counters={}, breakdown={"breaker_state": {"orders": 2}, "provider_seen_ns": {"iex": 0}})
        raise TypeError(f"oracle cannot handle {kind.__name__}")


@contextlib.asynccontextmanager
async def one_actor_engine(**addresses: str) -> AsyncIterator[EngineProbe]:
    bus, clock = Bus(), LiveClock()
    root = Supervisor(SupervisorSpec("root", [ActorSpec("oracle", Oracle)]), bus, clock, random.Random(1))
    task = asyncio.create_task(root.run())
    await root.started()
    roles = {role: "oracle" for role in ("order_manager", "risk", "pricing", "venue", "settlement")}
    try:
        yield EngineProbe(
            bus, root, task, clock, LoopLagMonitor(clock), OrderPathLatency(), None,
            addresses={**roles, **addresses}, info={},
        )  # fmt: skip
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def serving(feed: DashboardFeed) -> AsyncIterator[ControlServer]:
    async def dispatch(command: OperatorCommand) -> OperatorReply:
        raise AssertionError("no command in these tests")

    server = ControlServer(dispatch, generate_token(), feed.probe.clock.time_ns, public=feed.routes())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def read_events(response: aiohttp.ClientResponse, count: int, kind: str = "state") -> list[dict[str, Any]]:
    """The next ``count`` events of ``kind`` (SSE: ``event:`` then ``data:`` lines, a blank line between)."""
    found: list[dict[str, Any]] = []
    current = None
    async with asyncio.timeout(10):
        while len(found) < count:
            line = (await response.content.readline()).decode()
            assert line, "the stream ended"
            if line.startswith("event: "):
                current = line[len("event: ") :].strip()
            elif line.startswith("data: ") and current == kind:
                found.append(orjson.loads(line[len("data: ") :]))
    return found


async def test_the_stream_pushes_state_events_with_a_growing_seq() -> None:
    async with one_actor_engine() as probe:
        feed = DashboardFeed(probe, RiskSection(), interval_s=0.05)
        async with serving(feed) as server, aiohttp.ClientSession() as http:
            page = await http.get(f"{server.url}/dashboard")
            assert page.status == 200 and page.content_type == "text/html"
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
            async with http.get(f"{server.url}/dashboard/events") as stream:
                assert stream.status == 200 and stream.content_type == "text/event-stream"
                assert await read_events(stream, 1, "history") is not None
                first, second, third = await read_events(stream, 3)
            assert first["seq"] < second["seq"] < third["seq"]
            assert first["ts_ns"] <= third["ts_ns"]
            assert first["trading"] == {"state": "active", "reason": "recovered"}
            portfolio = first["portfolio"]
            # Money travels as strings: 100010.50 - 100000 = 10.50 in all, 4.00 of it realised.
            assert (portfolio["equity"], portfolio["total_pnl"], portfolio["unrealized_pnl"]) == (
                "100010.50", "10.50", "6.50"
            )
            assert portfolio["positions"] == [{"symbol": "IBM", "qty": "10", "concentration_pct": "1.8"}]
            assert [(f["symbol"], f["side"], f["qty"], f["price"]) for f in first["fills"]] == [
                ("IBM", "buy", "10", "179.83")
            ]
            assert first["breakers"] == {"orders": "open"}
            assert [p["provider"] for p in first["feeds"]["providers"]] == ["iex"]
            assert [(a["name"], a["restarts"]) for a in first["actors"]] == [("oracle", 0)]
            assert {row["name"] for row in first["limits"]} >= {"leverage", "daily loss", "drawdown %"}
            assert first["unanswered"] == []
            refused = await http.get(f"{server.url}/dashboard/events", headers={"Host": "evil.example:80"})
            assert refused.status == 403, "a foreign Host (DNS rebinding) must not read the dashboard"


async def test_clients_are_capped_and_a_leaving_client_frees_its_slot() -> None:
    async with one_actor_engine() as probe:
        feed = DashboardFeed(probe, interval_s=0.05, max_clients=2)
        async with serving(feed) as server, aiohttp.ClientSession() as http:
            url = f"{server.url}/dashboard/events"
            first, second = await http.get(url), await http.get(url)
            await read_events(first, 1)
            await read_events(second, 1)
            third = await http.get(url)
            assert third.status == 503 and (await third.json())["error"] == "busy"
            assert third.headers["Retry-After"]
            first.close()
            deadline = time.monotonic() + 3
            while feed.clients > 1:  # the server notices the closed connection within its poll
                assert time.monotonic() < deadline, "a client that left still holds its slot"
                await asyncio.sleep(0.02)
            async with http.get(url) as again:
                assert again.status == 200
                await read_events(again, 1)
            second.close()
            deadline = time.monotonic() + 3
            while feed.clients or feed._producer is not None:
                assert time.monotonic() < deadline, "nobody watches: the producer must stop"
                await asyncio.sleep(0.02)


async def test_streams_end_at_once_when_the_server_stops() -> None:
    async with one_actor_engine() as probe:
        feed = DashboardFeed(probe, interval_s=0.05)
        async with serving(feed) as server, aiohttp.ClientSession() as http:
            stream = await http.get(f"{server.url}/dashboard/events")
            await read_events(stream, 1)
            started = time.monotonic()
            await server.stop()  # as the engine does at the end of a session (idempotent: serving() stops again)
            took = time.monotonic() - started
            assert took < 1.0, f"ControlServer.stop waited {took:.2f} s for an open dashboard stream"
            async with asyncio.timeout(5):
                with contextlib.suppress(aiohttp.ClientPayloadError):
                    await stream.content.read()  # ends (EOF) rather than hanging
            assert feed.clients == 0 and feed._producer is None


async def test_an_actor_that_does_not_answer_is_listed_not_waited_for() -> None:
    async with one_actor_engine(venue="nobody") as probe:
        snapshot = await DashboardFeed(probe, query_timeout_s=0.2).snapshot()
    assert snapshot["unanswered"] == ["venue"]
    assert snapshot["breakers"] is None and snapshot["portfolio"]["equity"] == "100010.50"


def test_limits_used_reports_only_the_limits_that_are_set() -> None:
    report = RiskReport(
        trading_state="active", trading_reason="", equity=Decimal(1000), long_exposure=Decimal(1500),
        short_exposure=Decimal(0), gross_exposure=Decimal(1500), net_exposure=Decimal(1500), leverage=Decimal("1.5"),
        concentration_pct={"IBM": Decimal(150)}, daily_pnl=Decimal(-100), drawdown_pct=Decimal(5),
        high_water=Decimal(1100), var_95=None, es_95=None, var_samples=0, working_orders=3, paused_strategies=[],
        ts_init=0,
    )  # fmt: skip
    limits = RiskSection(max_gross_exposure=Decimal(3000), max_leverage=Decimal(2), daily_loss_limit=None,
                         daily_loss_limit_pct=Decimal(20), max_drawdown_pct=None, max_open_orders=None)  # fmt: skip
    rows = {row["name"]: (row["used"], row["limit"], row["pct"]) for row in limits_used(report, limits)}
    assert rows == {
        "gross exposure": ("1500", "3000", 50.0),
        "leverage": ("1.5", "2", 75.0),
        "daily loss": ("100", "220.00", 45.5),  # 20 % of the day's starting equity, 1000 + 100
    }


# ---------------------------------------------------------------- end to end: a running `kestrel run`


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    workdir = tmp_path_factory.mktemp("dashboard")
    config = _write_config(workdir, _falling_then_rising_day(workdir / "feed"), "ema-cross")
    with running_engine(workdir, config, "engine") as running:
        assert running.wait_ready() == "active"
        yield running
        assert running.interrupt() == 0, running.diagnostics()


def dashboard_url(engine: Engine) -> str:
    assert engine.endpoint is not None
    return f"{engine.endpoint.url}/dashboard"


def test_the_demo_prints_the_dashboard_url_on_stderr(engine: Engine) -> None:
    line = f"dashboard: {dashboard_url(engine)}"
    assert line in engine.stderr_path.read_text().splitlines(), engine.diagnostics()
    logged = [orjson.loads(row) for row in (engine.workdir / "kestrel.jsonl").read_bytes().splitlines()]
    assert any(row.get("event") == "dashboard_url" and row.get("url") == dashboard_url(engine) for row in logged)


async def test_the_running_engine_streams_json_state_and_caps_its_clients(engine: Engine) -> None:
    url = f"{dashboard_url(engine)}/events"
    async with aiohttp.ClientSession() as http:
        streams = [await http.get(url) for _ in range(8)]
        try:
            assert [s.status for s in streams] == [200] * 8
            first, second = await read_events(streams[0], 2)
            assert second["seq"] > first["seq"] and second["ts_ns"] > first["ts_ns"]
            assert first["trading"]["state"] == "active"
            for _ in range(10):  # the feed speaks within a tick or two of the start
                if first["feeds"]["providers"]:
                    break
                (first,) = await read_events(streams[0], 1)
            assert [p["provider"] for p in first["feeds"]["providers"]] == ["alpaca-iex"]
            assert first["feeds"]["providers"][0]["age_s"] < 5
            assert first["breakers"] == {"orders": "closed", "queries": "closed"}
            Decimal(first["risk"]["equity"])  # a decimal string, not a float
            assert {a["name"] for a in first["actors"]} >= {"order-manager", "risk", "settlement", "pricing", "venue"}
            over = await http.get(url)
            assert over.status == 503, "a ninth viewer is refused"
            over.close()
        finally:
            for stream in streams:
                stream.close()


def _launch_chromium() -> Any:
    """Playwright driving Debian's Chromium; fails (not skips) without them unless KESTREL_SKIP_BROWSER=1."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the dashboard's browser test is skipped")
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the dashboard's browser test needs Debian's Chromium. Install it with "
            "`sudo apt-get install -y --no-install-recommends chromium` (python3 .ci/dev.py test does this when "
            f"run as root), or set {SKIP_ENV}=1 to skip this test.",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[dev]' (it drives the browser)", pytrace=False)
    return sync_playwright()


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


T = TypeVar("T")


def until(page: Any, condition: Callable[[], T | None], what: str, timeout_s: float = UI_TIMEOUT_S) -> T:
    """Poll the page (Playwright's own reads: the page's CSP forbids evaluating test code in it)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} on the dashboard within {timeout_s} s")
        page.wait_for_timeout(50)
    return value


def rows(page: Any, table: str) -> list[str]:
    """The text of each row of a table body (its cells run together)."""
    return [str(row) for row in page.locator(f"#{table} tr").all_text_contents()]


def test_the_dashboard_in_a_real_browser_follows_the_engine_and_a_cli_halt(engine: Engine) -> None:
    with _launch_chromium() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            loads: list[str] = []
            page.on("load", lambda _: loads.append("load"))
            page.goto(dashboard_url(engine))
            assert page.title() == "Kestrel dashboard"
            for section in ("portfolio", "positions", "chart", "risk", "limits", "orders", "fills", "actors", "venue"):
                assert page.locator(f"#{section}-section").is_visible(), section

            # Live: seq and the engine clock move twice, the chart gets points, no reload.
            seq: int = until(page, lambda: _number(page.text_content("#seq")), "a first state event")
            clock = page.text_content("#clock")
            until(page, lambda: (_number(page.text_content("#seq")) or 0) >= seq + 2, "two more state events")
            assert page.text_content("#clock") != clock
            until(page, lambda: len((page.get_attribute("#line-total", "points") or "").split()) >= 2, "chart points")
            assert page.text_content("#conn") == "live"

            # The strategy bought 10 IBM: the position and its fill show.
            until(page, lambda: any(r.startswith("IBM10") for r in rows(page, "positions")), "the IBM position")
            until(page, lambda: any("IBMbuy10179." in r for r in rows(page, "fills")), "the IBM fill")
            assert page.text_content("#equity") not in ("—", None)
            assert any(row.startswith("order-manageryes0") for row in rows(page, "actors")), rows(page, "actors")
            assert rows(page, "breakers") and rows(page, "feeds")

            # kestrel halt, typed at the CLI, shows within seconds; the reason is text, not markup.
            halt = kestrel("halt", "--reason", HALT_REASON, cwd=engine.workdir)
            assert halt.returncode == 0, (halt.stdout, halt.stderr)
            until(page, lambda: page.text_content("#state") == "HALTED", "HALTED on the page")
            assert HALT_REASON in (page.text_content("#reason") or "")
            assert page.locator("#reason b").count() == 0
            resume = kestrel("resume", "--reason", RESUME_REASON, cwd=engine.workdir)
            assert resume.returncode == 0, (resume.stdout, resume.stderr)
            until(page, lambda: page.text_content("#state") == "ACTIVE", "ACTIVE on the page")
            assert RESUME_REASON in (page.text_content("#reason") or "")

            assert loads == ["load"], "the page must update in place, never reload"
            assert problems == [], problems  # no script error, no Content-Security-Policy violation
        finally:
            browser.close()
