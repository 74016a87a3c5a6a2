"""What the engine's HTTP server says about it: ``/metrics``, ``/healthz``, ``/readyz``.

This is composition-root code: it knows every actor's address and what its
:class:`~engine.messages.ActorStats` counters mean, and turns them into Prometheus
families (:mod:`engine.metrics`). A scrape asks every actor for its stats at once, each
with a short timeout; an actor that does not answer is left out of that scrape (and
counted in ``kestrel_metrics_unanswered``) rather than stalling it. Histograms the actors
keep (order-path latencies, journal commits, loop lag) are read directly: they live on
this event loop and only their owner writes them.

Health and readiness follow the Kubernetes convention:

- ``/healthz`` — the process is alive and its event loop turns (the loop-lag sampler
  woke recently and the actor tree is running): 200, else 503;
- ``/readyz`` — it may be trusted with orders: recovery and reconciliation are done,
  trading is not halted, and market data is fresh (some provider has spoken and none
  of the symbols is stale): 200, else 503 with the failing checks.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from aiohttp import web

from actors.order_latency import OrderPathLatency
from engine.bus import Bus
from engine.clock import NS_PER_S, LiveClock, perf_ns
from engine.errors import MailboxClosed, UnknownAddress
from engine.journal import Journal
from engine.loop_lag import LoopLagMonitor
from engine.messages import ActorStats, StatsQuery, TradingState, TradingStateChanged, TradingStateQuery
from engine.metrics import MetricFamily, render
from engine.supervisor import Supervisor

__all__ = ["PROMETHEUS_CONTENT_TYPE", "VERSION", "EngineProbe", "Probe", "public_routes"]

def _installed_version() -> str:
    try:
        return importlib.metadata.version("kestrel")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION: Final = _installed_version()
"""Kestrel's installed version (read once, at import: never on the event loop)."""
PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
STATS_TIMEOUT_S: Final = 1.0
LOOP_SILENT_AFTER_S: Final = 5.0
"""``/healthz`` fails when the loop-lag sampler has not woken for this long."""


@dataclass(frozen=True)
class Probe:
    """A health or readiness verdict and why (``checks``: name → passed, plus details)."""

    ok: bool
    checks: dict[str, Any]


class EngineProbe:
    """Reads a running engine for the HTTP server; built by the composition root."""

    def __init__(
        self,
        bus: Bus,
        root: Supervisor,
        root_task: asyncio.Task[None],
        clock: LiveClock,
        lag: LoopLagMonitor,
        latency: OrderPathLatency,
        journal: Journal | None,
        *,
        addresses: dict[str, str],
        info: dict[str, str],
    ) -> None:
        """``addresses``: role → actor address for ``order_manager``, ``risk``, ``pricing``,
        ``venue``, ``settlement``; feed actors are found by name (``feed*``)."""
        self.bus = bus
        self.root = root
        self.root_task = root_task
        self.clock = clock
        self.lag = lag
        self.latency = latency
        self.journal = journal
        self.addresses = addresses
        self.info = info

    # ------------------------------------------------------------ reading the actors

    async def _stats(self, address: str) -> ActorStats | None:
        try:
            stats: ActorStats = await self.bus.request(address, StatsQuery(), timeout_s=STATS_TIMEOUT_S)
        except (TimeoutError, UnknownAddress, MailboxClosed):
            return None  # not answering (restarting, or the engine is stopping): left out of this scrape
        return stats

    def _feeds(self) -> list[str]:
        return sorted(name for name in self.root.stats if name.startswith("feed"))

    async def _all_stats(self) -> dict[str, ActorStats | None]:
        names = sorted({*self.addresses.values(), *self._feeds()})
        answers = await asyncio.gather(*(self._stats(name) for name in names))
        return dict(zip(names, answers, strict=True))

    async def trading_state(self) -> TradingState | None:
        try:
            reply: TradingStateChanged = await self.bus.request(
                self.addresses["order_manager"], TradingStateQuery(), timeout_s=STATS_TIMEOUT_S
            )
        except (TimeoutError, UnknownAddress, MailboxClosed):
            return None
        return reply.state

    # ------------------------------------------------------------ /metrics

    async def metrics(self) -> str:
        stats = await self._all_stats()
        state = await self.trading_state()
        role = self.addresses

        def counters(address: str) -> dict[str, int]:
            found = stats.get(address)
            return found.counters if found is not None else {}

        def breakdown(address: str, key: str) -> dict[str, int]:
            found = stats.get(address)
            return found.breakdown.get(key, {}) if found is not None else {}

        om, risk, pricing, venue = (counters(role[r]) for r in ("order_manager", "risk", "pricing", "venue"))
        families = [
            MetricFamily("kestrel_info", "gauge", "Build and run information (value 1).").add(1, **self.info),
            _counter_family(
                "kestrel_orders_total", "Orders by outcome: approved or rejected by risk, submitted, refused "
                "before sending, rejected by the venue.", "outcome",
                {
                    "approved": risk.get("approved"),
                    "risk_rejected": risk.get("rejected"),
                    "submitted": om.get("submitted"),
                    "refused_stream_down": venue.get("refused_stream_down"),
                    "refused_breaker": venue.get("refused_breaker"),
                    "venue_rejected": om.get("venue_rejected"),
                },
            ),
            _single("kestrel_fills_total", "counter", "Fills booked by the order manager.", om.get("fills")),
            _counter_family(
                "kestrel_risk_rejections_total", "Intents refused by risk, by reason code.", "reason",
                breakdown(role["risk"], "rejections_by_reason"),
            ),
            _single("kestrel_working_orders", "gauge", "Orders the venue may still fill.", om.get("working")),
            _single("kestrel_ambiguous_submits_total", "counter",
                    "Submits whose outcome had to be settled by lookup.", venue.get("ambiguous")),
            _counter_family(
                "kestrel_market_data_total", "Market data events received by pricing, by kind.", "kind",
                {"quote": pricing.get("quotes"), "trade": pricing.get("trades")},
            ),
            _single("kestrel_failovers_total", "counter", "Symbols moved to their secondary provider.",
                    pricing.get("failovers")),
            _single("kestrel_failbacks_total", "counter", "Symbols moved back to their primary provider.",
                    pricing.get("failbacks")),
            self._freshness(
                breakdown(role["pricing"], "provider_seen_ns"), breakdown(role["pricing"], "provider_down")
            ),
            _single("kestrel_stale_symbols", "gauge", "Symbols whose market data is stale (no new orders in them).",
                    len(breakdown(role["pricing"], "stale"))),
            _gauge_family(
                "kestrel_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open.", "breaker",
                breakdown(role["venue"], "breaker_state"),
            ),
            self._reconnects(stats, venue),
            _gauge_family(
                "kestrel_trading_state", "1 for the trading state in force, 0 for the others.", "state",
                {s.value: int(s is state) for s in TradingState} if state is not None else {},
            ),
            self._restarts(),
            _gauge_family(
                "kestrel_mailbox_depth", "Messages waiting in each actor's mailbox.", "actor",
                {name: len(box) for name, box in self.bus.mailboxes.items()},
            ),
            MetricFamily("kestrel_tick_to_order_seconds", "histogram",
                         "From the market data that triggered an intent to its order leaving for the venue.")
            .add_histogram(self.latency.tick_to_order),
            MetricFamily("kestrel_submit_to_ack_seconds", "histogram",
                         "From an order leaving to the venue's first word about it.")
            .add_histogram(self.latency.submit_to_ack),
            MetricFamily("kestrel_ack_to_fill_seconds", "histogram", "From the venue's first word to each fill.")
            .add_histogram(self.latency.ack_to_fill),
            MetricFamily("kestrel_event_loop_lag_seconds", "histogram",
                         "How late the event loop woke a 50 ms sleeper (the longest stall a message waited behind).")
            .add_histogram(self.lag.histogram),
            _gauge_family(
                "kestrel_metrics_unanswered", "Actors that did not answer this scrape's stats query in time.",
                "actor", {name: 1 for name, answer in stats.items() if answer is None},
            ),
        ]
        journal = self.journal
        if journal is not None:
            families += [
                MetricFamily("kestrel_journal_commit_seconds", "histogram",
                             "Group commit round trip: hop to the writer thread, write, commit, hop back.")
                .add_histogram(journal.commit_latency),
                MetricFamily("kestrel_journal_commit_rows", "histogram", "Journal rows per group commit.")
                .add_histogram(journal.group_rows),
                _single("kestrel_journal_rows_total", "counter", "Journal rows committed.", journal.stats["rows"]),
                _single("kestrel_journal_backpressure_total", "counter",
                        "Journal appends refused because too many were pending.", journal.stats["backpressure"]),
            ]
        return render(families)  # fmt: skip

    def _freshness(self, seen_ns: dict[str, int], down: dict[str, int]) -> MetricFamily:
        now = self.clock.time_ns()
        family = MetricFamily(
            "kestrel_feed_last_event_age_seconds", "gauge",
            "Seconds since each market-data provider's last event (feed freshness).",
        )  # fmt: skip
        for provider, seen in sorted(seen_ns.items()):
            family.add(max(0, now - seen) / NS_PER_S, provider=provider, down=str(bool(down.get(provider))).lower())
        return family

    def _reconnects(self, stats: dict[str, ActorStats | None], venue: dict[str, int]) -> MetricFamily:
        family = MetricFamily("kestrel_reconnects_total", "counter", "Websocket reconnects, by stream.")
        for feed in self._feeds():
            answer = stats.get(feed)
            if answer is not None:
                family.add(answer.counters.get("reconnects", 0), stream=feed)
        if "reconnects" in venue:
            family.add(venue["reconnects"], stream="trade_updates")
        return family

    def _restarts(self) -> MetricFamily:
        family = MetricFamily("kestrel_actor_restarts_total", "counter", "Actor restarts by its supervisor.")
        for name, child in sorted(self.root.stats.items()):
            family.add(child.restarts, actor=name)
        return family

    # ------------------------------------------------------------ /healthz and /readyz

    def health(self) -> Probe:
        silent_s = (perf_ns() - self.lag.last_wake_ns) / NS_PER_S
        loop_ok = silent_s < LOOP_SILENT_AFTER_S
        tree_ok = not self.root_task.done()
        return Probe(
            loop_ok and tree_ok,
            {"event_loop": loop_ok, "loop_lag_sampler_silent_s": round(silent_s, 3), "actor_tree_running": tree_ok},
        )

    async def readiness(self) -> Probe:
        state = await self.trading_state()
        pricing = await self._stats(self.addresses["pricing"])
        seen = pricing.breakdown.get("provider_seen_ns", {}) if pricing is not None else {}
        down = pricing.breakdown.get("provider_down", {}) if pricing is not None else {}
        stale = pricing.breakdown.get("stale", {}) if pricing is not None else {}
        recovered = state is not None and state is not TradingState.RECOVERING
        not_halted = state is not None and state is not TradingState.HALTED
        feeds_fresh = bool(seen) and not stale and len(down) < len(seen)
        checks: dict[str, Any] = {
            "recovered": recovered,
            "not_halted": not_halted,
            "feeds_fresh": feeds_fresh,
            "trading_state": state.value if state is not None else None,
            "stale_symbols": sorted(stale),
            "providers_down": sorted(down),
        }
        return Probe(recovered and not_halted and feeds_fresh, checks)


def _single(name: str, kind: Any, help_text: str, value: int | float | None) -> MetricFamily:
    family = MetricFamily(name, kind, help_text)
    if value is not None:
        family.add(value)
    return family


def _counter_family(
    name: str, help_text: str, label: str, values: dict[str, int | None] | dict[str, int]
) -> MetricFamily:
    family = MetricFamily(name, "counter", help_text)
    for key, value in sorted(values.items()):
        if value is not None:
            family.add(value, **{label: key})
    return family


def _gauge_family(name: str, help_text: str, label: str, values: dict[str, int]) -> MetricFamily:
    family = MetricFamily(name, "gauge", help_text)
    for key, value in sorted(values.items()):
        family.add(value, **{label: key})
    return family


def public_routes(probe: EngineProbe) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """The unauthenticated, read-only GET routes the engine's HTTP server adds to the control routes."""

    async def metrics(_: web.Request) -> web.StreamResponse:
        return web.Response(body=(await probe.metrics()).encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    def verdict(result: Probe) -> web.StreamResponse:
        body = msgspec.json.encode({"ok": result.ok, "checks": result.checks})
        return web.Response(body=body, status=200 if result.ok else 503, content_type="application/json")

    async def healthz(_: web.Request) -> web.StreamResponse:
        return verdict(probe.health())

    async def readyz(_: web.Request) -> web.StreamResponse:
        return verdict(await probe.readiness())

    return {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}
