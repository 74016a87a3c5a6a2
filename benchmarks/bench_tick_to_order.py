"""Tick-to-order benchmark: a quote on the simulator's data websocket → an order POSTed back to it.

Everything runs in one process on uvloop, over real loopback sockets:

- the Alpaca simulator (:func:`adapters.alpaca_sim.cli.start_simulator`, no feed files);
  the benchmark publishes quotes itself with ``sim.hub.publish_quote`` at a steady rate
  (default 1,000 quotes/s), one symbol;
- the live actor tree (:func:`kestrel.node.live_tree`: feed → pricing → strategy → risk →
  order manager → venue, with the Alpaca feed and venue adapters), running a tiny
  benchmark strategy that sends a 1-share market order on every k-th quote (default 10th),
  alternating buy and sell.

Correlation: quote number ``seq`` travels in the quote's bid size; the strategy puts it in
the intent id; the venue actor maps the intent id to the client order id.

Two latencies per order (``time.perf_counter_ns``, one process, one clock):

- **internal**: from the moment the engine takes the quote's frame off the data websocket
  (entry of ``AlpacaDataStream._on_frame``, before decoding) to the moment the REST client
  has written the POST's body to the socket (aiohttp trace ``on_request_chunk_sent``;
  ``on_request_headers_sent`` when no chunk event fires);
- **end to end**: from just before ``sim.hub.publish_quote`` to the simulator's
  ``VenueState.submit_order`` being called for the order (the POST read and decoded).

All hooks are benchmark-side subclasses / wrappers: a data-stream subclass (frame stamp),
a feed-actor subclass (builds it), a venue-actor subclass (intent → client order id, and
an aiohttp trace config on its REST session) and a wrapper on the simulator's
``submit_order``. No engine or adapter code is changed.

Run: ``.venv/bin/python -m benchmarks.bench_tick_to_order [--seconds S] [--rate R] [--every K] [--repeats N] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import importlib.metadata
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Final

import aiohttp
import uvloop

from actors.strategies.base import Strategy
from adapters.alpaca.data_stream import AlpacaDataStream
from adapters.alpaca.feed import AlpacaFeedActor
from adapters.alpaca.rest import RestSettings
from adapters.alpaca.venue import AlpacaVenueActor
from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from adapters.alpaca_sim.events import SimQuote
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import LiveClock
from engine.config import Config, Credentials, RiskSection, VenueSection
from engine.logs import configure_logging
from engine.messages import BestBidOffer, ExchangeQuote, OrderIntent, OrderType, Side, SubmitOrder, TradeTick
from engine.secrets import Secret
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec
from kestrel.node import FEED, VENUE, live_tree

SYMBOL: Final = "BENCH"
KEY_ID: Final = "bench-key"
SECRET_KEY: Final = "bench-secret"
GOAL_INTERNAL_P99_US: Final = 300.0
WARMUP_S: Final = 1.0


class Recorder:
    """Every timestamp of a run, keyed by quote number."""

    def __init__(self) -> None:
        self.published: dict[int, int] = {}
        self.frame: dict[int, int] = {}
        self.strategy: dict[int, int] = {}
        self.venue: dict[int, int] = {}
        self.request_start: dict[int, int] = {}
        self.headers: dict[int, int] = {}
        self.written: dict[int, int] = {}
        self.sim: dict[int, int] = {}
        self.seq_by_cid: dict[str, int] = {}
        self.current_seq = 0
        """The order the venue actor is submitting (it submits one at a time)."""


REC = Recorder()


# ---------------------------------------------------------------- the strategy


class EveryKth(Strategy):
    """A market order of one share on every k-th quote; the quote number rides in the intent id."""

    name = "bench"

    def __init__(self, every: int) -> None:
        self.every = every
        self.sent = 0

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> list[OrderIntent]:
        seq = bbo.bid_size
        if seq % self.every:
            return []
        REC.strategy[seq] = time.perf_counter_ns()
        self.sent += 1
        return [
            OrderIntent(
                intent_id=f"{self.intent_prefix}-q{seq}",
                strategy=self.name,
                symbol=bbo.symbol,
                side=Side.BUY if self.sent % 2 else Side.SELL,
                qty=Decimal(1),
                order_type=OrderType.MARKET,
                ts_init=now_ns,
            )
        ]


# ---------------------------------------------------------------- benchmark-side hooks


class TimedDataStream(AlpacaDataStream):
    """Stamps each frame as the engine takes it off the websocket, before decoding."""

    frame_ns = 0

    async def _on_frame(self, ws: aiohttp.ClientWebSocketResponse, data: Any, codec: Any) -> Any:
        self.frame_ns = time.perf_counter_ns()
        return await super()._on_frame(ws, data, codec)


class TimedFeedActor(AlpacaFeedActor):
    """The Alpaca feed actor with :class:`TimedDataStream`; the same settings as ``on_start``."""

    async def on_start(self) -> None:
        ctx = self.ctx
        self.stream = TimedDataStream(
            self.url, self.key_id.reveal(), self.secret_key, self.symbols, ctx.clock, ctx.rng, self._publish,
            backoff_base_s=0.05, backoff_cap_s=5.0,
        )
        self._task = asyncio.create_task(self.stream.run(), name="alpaca-feed")
        self._task.add_done_callback(self._done)
        async with asyncio.timeout(self.subscribe_timeout_s):
            await self.stream.subscribed.wait()

    async def _publish(self, event: ExchangeQuote | TradeTick) -> None:
        if type(event) is ExchangeQuote and event.bid_size is not None:
            REC.frame[event.bid_size] = self.stream.frame_ns  # type: ignore[attr-defined]
        await super()._publish(event)


class TimedVenueActor(AlpacaVenueActor):
    """Maps client order id → quote number and stamps when the POST's bytes are written."""

    async def on_start(self) -> None:
        await super().on_start()
        # Re-open the REST session exactly as AlpacaRest.open does, plus a trace config.
        rest = self.rest
        await rest.close()
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._request_start)
        trace.on_request_headers_sent.append(self._headers_sent)
        trace.on_request_chunk_sent.append(self._sent)
        s = rest.settings
        rest._session = aiohttp.ClientSession(
            headers=rest._headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout_s, sock_read=s.read_timeout_s),
            connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=30),
            trace_configs=[trace],
        )

    async def _request_start(self, _session: aiohttp.ClientSession, _ctx: Any, params: Any) -> None:
        if params.method == "POST" and REC.current_seq:
            REC.request_start[REC.current_seq] = time.perf_counter_ns()

    async def _headers_sent(self, _session: aiohttp.ClientSession, _ctx: Any, params: Any) -> None:
        if params.method == "POST" and REC.current_seq:
            REC.headers[REC.current_seq] = time.perf_counter_ns()
            REC.written.setdefault(REC.current_seq, REC.headers[REC.current_seq])

    async def _sent(self, _session: aiohttp.ClientSession, _ctx: Any, params: Any) -> None:
        if params.method == "POST" and REC.current_seq:
            # The body chunk is written after the headers: it replaces the headers' stamp.
            REC.written[REC.current_seq] = time.perf_counter_ns()

    async def _submit(self, order: SubmitOrder) -> None:
        seq = int(order.intent_id.rsplit("-q", 1)[1])
        REC.venue[seq] = time.perf_counter_ns()
        REC.seq_by_cid[order.client_order_id] = seq
        REC.current_seq = seq
        try:
            await super()._submit(order)
        finally:
            REC.current_seq = 0


def hook_simulator(sim: RunningSimulator) -> None:
    state = sim.state
    original = state.submit_order

    def submit_order(request: Any) -> Any:
        now = time.perf_counter_ns()
        seq = REC.seq_by_cid.get(request.client_order_id or "")
        if seq is not None:
            REC.sim[seq] = now
        return original(request)

    setattr(state, "submit_order", submit_order)  # noqa: B010 - instance override, benchmark only


def bench_tree(
    config: Config, build: Callable[[], Strategy], sim: RunningSimulator, creds: Credentials
) -> SupervisorSpec:
    spec = live_tree(config, build, sim.url, sim.data_url("iex"), creds, [SYMBOL])
    url, data_url = sim.url, sim.data_url("iex")

    def venue() -> Actor:
        return TimedVenueActor(url, creds.key_id, creds.secret_key, _rest_settings(config))

    def feed() -> Actor:
        return TimedFeedActor(data_url, creds.key_id, creds.secret_key, [SYMBOL])

    children: list[ActorSpec | SupervisorSpec] = []
    for child in spec.children:
        if isinstance(child, ActorSpec) and child.name == VENUE:
            child = dataclasses.replace(child, factory=venue)
        elif isinstance(child, ActorSpec) and child.name == FEED:
            child = dataclasses.replace(child, factory=feed)
        children.append(child)
    return dataclasses.replace(spec, children=children)


def _rest_settings(config: Config) -> RestSettings:
    return RestSettings(rate_per_minute=config.venue.rate_limit_per_minute)


# ---------------------------------------------------------------- one run


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])


def _stats(samples: list[int]) -> dict[str, float]:
    samples = sorted(samples)
    if not samples:
        return {"count": 0, "p50_us": float("nan"), "p99_us": float("nan"), "max_us": float("nan")}
    return {
        "count": len(samples),
        "p50_us": percentile(samples, 50) / 1e3,
        "p99_us": percentile(samples, 99) / 1e3,
        "max_us": samples[-1] / 1e3,
    }


SEGMENTS: Final = (
    ("internal", "frame", "written"),
    ("end_to_end", "published", "sim"),
    ("publish_to_frame", "published", "frame"),
    ("frame_to_strategy", "frame", "strategy"),
    ("strategy_to_venue", "strategy", "venue"),
    ("venue_to_request", "venue", "request_start"),
    ("request_to_headers", "request_start", "headers"),
    ("headers_to_written", "headers", "written"),
    ("written_to_sim", "written", "sim"),
)


async def run_once(seconds: float, rate: int, every: int) -> dict[str, Any]:
    global REC
    REC = Recorder()
    clock = LiveClock()
    cash = Decimal(1_000_000_000)
    sim = await start_simulator(
        SimulatorConfig(
            key_id=KEY_ID,
            secret_key=SECRET_KEY,
            starting_cash=cash,
            rate_limit_per_minute=10_000_000,
            ack_latency_s=(0.001, 0.005),
            fill_latency_s=(0.001, 0.005),
        ),
        clock,
    )
    assert sim.hub is not None
    sim.state.add_symbol(SYMBOL)
    hook_simulator(sim)
    config = Config(
        risk=RiskSection(max_order_qty=Decimal(1_000), max_order_notional=Decimal(1_000_000_000)),
        venue=VenueSection(rate_limit_per_minute=10_000_000, starting_cash=cash),
    )
    creds = Credentials(Secret(KEY_ID), Secret(SECRET_KEY), source="benchmark")
    bus = Bus()
    root = Supervisor(bench_tree(config, lambda: EveryKth(every), sim, creds), bus, clock, random.Random(7))
    root_task = asyncio.create_task(root.run(), name="root-supervisor")
    hub, state = sim.hub, sim.state
    try:
        await asyncio.wait([asyncio.ensure_future(root.started()), root_task], return_when=asyncio.FIRST_COMPLETED)
        if root_task.done():
            await root_task
        loop = asyncio.get_running_loop()
        total = int((WARMUP_S + seconds) * rate)
        warmup = int(WARMUP_S * rate)
        period = 1.0 / rate
        bid, ask = Decimal("100.00"), Decimal("100.02")
        gc.collect()
        start = loop.time()
        for seq in range(1, total + 1):
            target = start + seq * period
            delay = target - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            quote = SimQuote(
                symbol=SYMBOL, bid_exchange="V", bid_price=bid, bid_size=seq,
                ask_exchange="V", ask_price=ask, ask_size=100, ts_ns=clock.time_ns(),
            )
            state.on_quote(quote)
            REC.published[seq] = time.perf_counter_ns()
            hub.publish_quote(quote)
        sent_s = loop.time() - start
        await asyncio.sleep(0.5)  # let the last orders arrive
        if root_task.done():
            await root_task
    finally:
        root_task.cancel()
        await asyncio.gather(root_task, return_exceptions=True)
        await sim.stop()
    orders = [s for s in REC.strategy if s > warmup]
    result: dict[str, Any] = {
        "quotes": total - warmup,
        "quotes_per_s": round(total / sent_s, 1),
        "orders_expected": sum(1 for s in range(warmup + 1, total + 1) if s % every == 0),
        "orders_at_strategy": len(orders),
        "orders_at_sim": sum(1 for s in orders if s in REC.sim),
    }
    points: dict[str, dict[int, int]] = {
        "published": REC.published,
        "frame": REC.frame,
        "strategy": REC.strategy,
        "venue": REC.venue,
        "request_start": REC.request_start,
        "headers": REC.headers,
        "written": REC.written,
        "sim": REC.sim,
    }
    for label, a, b in SEGMENTS:
        start_map, end_map = points[a], points[b]
        result[label] = _stats([end_map[s] - start_map[s] for s in orders if s in start_map and s in end_map])
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


async def run(seconds: float, rate: int, every: int, repeats: int, progress: bool) -> dict[str, Any]:
    runs = []
    for r in range(repeats):
        one = await run_once(seconds, rate, every)
        runs.append(one)
        if progress:
            print(
                f"  repeat {r + 1}/{repeats}: {one['orders_at_sim']}/{one['orders_expected']} orders, internal "
                f"p50 {one['internal']['p50_us']:.0f} p99 {one['internal']['p99_us']:.0f} µs, end to end "
                f"p50 {one['end_to_end']['p50_us']:.0f} p99 {one['end_to_end']['p99_us']:.0f} µs",
                file=sys.stderr,
            )
    median: dict[str, Any] = {}
    for label, _, _ in SEGMENTS:
        median[label] = {
            "count": sum(r[label]["count"] for r in runs),
            **{k: statistics.median(r[label][k] for r in runs) for k in ("p50_us", "p99_us", "max_us")},
        }
    return {
        "config": {
            "seconds": seconds,
            "warmup_s": WARMUP_S,
            "rate": rate,
            "every": every,
            "repeats": repeats,
            "loop": f"uvloop {importlib.metadata.version('uvloop')}",
            "aiohttp": importlib.metadata.version("aiohttp"),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "machine": f"{platform.machine()}, {_cpus()} CPUs",
        },
        "runs": runs,
        "median": median,
        "goal": {"internal_p99_us": GOAL_INTERNAL_P99_US},
    }


def render(result: dict[str, Any]) -> str:
    cfg, med = result["config"], result["median"]
    lines = [
        f"{cfg['python']}, {cfg['loop']}, aiohttp {cfg['aiohttp']}, {cfg['machine']}; {cfg['rate']:,} quotes/s "
        f"for {cfg['seconds']:g} s (+{cfg['warmup_s']:g} s warm-up), an order every {cfg['every']} quotes; "
        f"medians of {cfg['repeats']} runs",
        f"{'segment':<22}{'orders':>8}{'p50 µs':>10}{'p99 µs':>10}{'max µs':>10}",
    ]
    for label, _, _ in SEGMENTS:
        s = med[label]
        lines.append(f"{label:<22}{s['count']:>8}{s['p50_us']:>10.0f}{s['p99_us']:>10.0f}{s['max_us']:>10.0f}")
    for r in result["runs"]:
        lines.append(
            f"run: {r['quotes_per_s']:,.0f} quotes/s sent, orders expected {r['orders_expected']}, "
            f"at strategy {r['orders_at_strategy']}, at simulator {r['orders_at_sim']}"
        )
    p99 = med["internal"]["p99_us"]
    goal = result["goal"]["internal_p99_us"]
    lines.append(f"goal: internal p99 <= {goal:g} µs: {'meets' if p99 <= goal else 'MISSES'} ({p99:.0f} µs)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of quotes per run")
    parser.add_argument("--rate", type=int, default=1000, help="quotes per second")
    parser.add_argument("--every", type=int, default=10, help="an order on every k-th quote")
    parser.add_argument("--repeats", type=int, default=3, help="runs (fresh simulator and tree); figures are medians")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate < 1 or args.every < 1 or args.repeats < 1:
        parser.error("--seconds, --rate, --every and --repeats must be positive")
    configure_logging(None, "warning")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(args.seconds, args.rate, args.every, args.repeats, progress=not args.json))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
