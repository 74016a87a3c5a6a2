"""Tick-to-order benchmark: a quote on the simulator's data websocket → an order POSTed back to it.

Two processes, each on uvloop, over real loopback sockets:

- the venue: the Alpaca simulator in its own process (:mod:`benchmarks.tick_to_order_venue`,
  :func:`adapters.alpaca_sim.cli.start_simulator`, no feed files). On command it publishes
  quotes itself with ``hub.publish_quote`` at a steady rate (default 1,000 quotes/s), one
  symbol, and afterwards hands back its timestamps as one JSON line;
- this process: the live actor tree (:func:`kestrel.node.live_tree`: feed → pricing →
  strategy → risk → order manager → venue, with the Alpaca feed and venue adapters),
  running a tiny benchmark strategy that sends a 1-share market order on every k-th quote
  (default 10th), alternating buy and sell. After the tree starts, the live session's
  recovery step (:func:`kestrel.node.recover`) lets risk pass intents. No order journal by
  default; ``--journal`` gives each repeat a fresh write-ahead journal.

Correlation: quote number ``seq`` travels in the quote's bid size; the strategy puts it in
the intent id; the venue actor maps the intent id to the client order id, which is how the
venue process's stamps (keyed by client order id) are matched to quotes.

Two latencies per order (``time.perf_counter_ns``: ``CLOCK_MONOTONIC`` on Linux, one clock
for both processes on this machine):

- **internal** (this process only): from the moment the engine takes the quote's frame off
  the data websocket (entry of ``AlpacaDataStream._on_frame``, before decoding) to the moment
  the REST client writes the POST to the socket (``AlpacaRest.on_write``, called just before
  ``transport.write`` of the request's bytes);
- **end to end** (across the processes): from just before the venue's ``hub.publish_quote``
  to the venue's ``VenueState.submit_order`` being called for the order (the POST read and
  decoded).

Hooks: a data-stream subclass (frame stamp), a feed-actor subclass (builds it), a
venue-actor subclass (intent → client order id, and ``AlpacaRest.on_write``) and, in the
venue process, a wrapper on the simulator's ``submit_order``.

Run: ``.venv/bin/python -m benchmarks.bench_tick_to_order [--seconds S] [--rate R] [--every K] [--repeats N]
[--journal] [--pin] [--json]``
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
import tempfile
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
from benchmarks.tick_to_order_venue import KEY_ID, RATE_LIMIT_PER_MINUTE, SECRET_KEY, STARTING_CASH, SYMBOL
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import LiveClock
from engine.config import Config, Credentials, RiskSection, VenueSection
from engine.journal import Journal
from engine.logs import configure_logging
from engine.messages import (
    BestBidOffer,
    ExchangeQuote,
    OrderIntent,
    OrderType,
    Side,
    SubmitOrder,
    SymbolTradingStatus,
    TradeTick,
    TradingState,
)
from engine.secrets import Secret
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec
from kestrel.node import FEED, VENUE, live_tree, recover

REPO_ROOT: Final = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOAL_INTERNAL_P99_US: Final = 300.0
WARMUP_S: Final = 1.0


class Recorder:
    """Every timestamp of a run, keyed by quote number."""

    def __init__(self) -> None:
        self.published: dict[int, int] = {}
        self.frame: dict[int, int] = {}
        self.strategy: dict[int, int] = {}
        self.venue: dict[int, int] = {}
        self.written: dict[int, int] = {}
        self.sim: dict[int, int] = {}
        self.seq_by_cid: dict[str, int] = {}
        self.current_seq = 0
        """The order the venue actor is submitting (it submits one at a time)."""


REC = Recorder()


# ---------------------------------------------------------------- the strategy


class EveryKth(Strategy):
    """A market buy of one share on every k-th quote; the quote number rides in the intent id."""

    name = "bench"

    def __init__(self, every: int) -> None:
        self.every = every
        self.sent = 0

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> list[OrderIntent]:
        seq = int(bbo.bid_size)  # the venue numbers its quotes in the bid size
        if seq % self.every:
            return []
        REC.strategy[seq] = time.perf_counter_ns()
        self.sent += 1
        return [
            OrderIntent(
                intent_id=f"{self.intent_prefix}-q{seq}",
                strategy=self.name,
                symbol=bbo.symbol,
                side=Side.BUY,  # always buying: a sell could cross our own working buy (SELF_TRADE)
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
        await self.start_client(
            self.stream, self.stream.subscribed, self.subscribe_timeout_s, "alpaca-feed", "feed_not_subscribed"
        )
        if not self.stream.subscribed.is_set():
            raise RuntimeError("the benchmark's feed did not subscribe")

    async def _publish(self, event: ExchangeQuote | TradeTick | SymbolTradingStatus) -> None:
        if type(event) is ExchangeQuote and event.bid_size is not None:
            REC.frame[int(event.bid_size)] = self.stream.frame_ns  # type: ignore[attr-defined]
        await super()._publish(event)


class TimedVenueActor(AlpacaVenueActor):
    """Maps client order id → quote number and stamps when the POST's bytes are written."""

    async def on_start(self) -> None:
        await super().on_start()
        self.rest.on_write = self._written

    def _written(self, method: str, path: str) -> None:
        if method == "POST" and REC.current_seq:
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


def bench_tree(
    config: Config,
    build: Callable[[], Strategy],
    url: str,
    data_url: str,
    creds: Credentials,
    journal: Journal | None = None,
) -> SupervisorSpec:
    spec = live_tree(config, build, url, data_url, creds, [SYMBOL], journal)

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
    ("venue_to_written", "venue", "written"),
    ("written_to_sim", "written", "sim"),
)


class VenueProcess:
    """The simulator in its own process (:mod:`benchmarks.tick_to_order_venue`), driven over its stdin/stdout."""

    def __init__(self, proc: asyncio.subprocess.Process, url: str) -> None:
        self.proc = proc
        self.url = url
        self.data_url = url.replace("http://", "ws://", 1) + "/v2/iex"

    @classmethod
    async def start(cls, cpu: int | None) -> VenueProcess:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "benchmarks.tick_to_order_venue",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=REPO_ROOT,
            limit=64 * 1024 * 1024,
        )
        try:
            if cpu is not None:
                os.sched_setaffinity(proc.pid, {cpu})
            line = await cls._read(proc, 30.0)
            if not line.startswith("listening on "):
                raise RuntimeError(f"venue process said {line!r}")
        except BaseException:
            await cls._end(proc)
            raise
        return cls(proc, line.removeprefix("listening on "))

    @staticmethod
    async def _read(proc: asyncio.subprocess.Process, timeout_s: float) -> str:
        assert proc.stdout is not None
        async with asyncio.timeout(timeout_s):
            raw = await proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"venue process ended (exit code {await proc.wait()})")
        return raw.decode().strip()

    async def command(self, line: str, timeout_s: float) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._read(self.proc, timeout_s)

    async def publish(self, total: int, rate: int) -> float:
        """Has the venue publish quotes 1..total at ``rate``; returns the seconds it took."""
        answer = await self.command(f"run {total} {rate}", total / rate + 30.0)
        return float(answer.removeprefix("done "))

    async def dump(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(await self.command("dump", 30.0))
        return result

    async def stop(self) -> None:
        await self._end(self.proc)

    @staticmethod
    async def _end(proc: asyncio.subprocess.Process) -> None:
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.close()
        try:
            async with asyncio.timeout(10.0):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def run_once(seconds: float, rate: int, every: int, pin: bool, journal_dir: str | None) -> dict[str, Any]:
    global REC
    REC = Recorder()
    clock = LiveClock()
    venue = await VenueProcess.start(1 if pin else None)
    config = Config(
        # The benchmark sends 100 market orders a second by design: the guards against a
        # strategy doing that by mistake (duplicates, order rate, runaway pause) are off here.
        risk=RiskSection(
            max_order_qty=Decimal(1_000), max_order_notional=Decimal(1_000_000_000), duplicate_window_s=0.0,
            max_orders_per_s=None, runaway_intents_per_s=None,
        ),
        venue=VenueSection(rate_limit_per_minute=RATE_LIMIT_PER_MINUTE, starting_cash=STARTING_CASH),
    )
    creds = Credentials(Secret(KEY_ID), Secret(SECRET_KEY), source="benchmark")
    journal = None
    if journal_dir is not None:  # a fresh write-ahead journal for each run, with the default durability
        journal = await Journal.open(os.path.join(journal_dir, f"journal-{time.monotonic_ns()}.db"), clock)
    bus = Bus()
    tree = bench_tree(config, lambda: EveryKth(every), venue.url, venue.data_url, creds, journal)
    root = Supervisor(tree, bus, clock, random.Random(7))
    root_task = asyncio.create_task(root.run(), name="root-supervisor")
    total = int((WARMUP_S + seconds) * rate)
    warmup = int(WARMUP_S * rate)
    try:
        await asyncio.wait([asyncio.ensure_future(root.started()), root_task], return_when=asyncio.FIRST_COMPLETED)
        if root_task.done():
            await root_task
        # As the live session does: reconcile with the venue; risk lets intents through only after this.
        report = await recover(bus, root_task, 10.0)
        if report.state is not TradingState.ACTIVE:
            raise RuntimeError(f"recovery left trading {report.state}: {report.reason}")
        gc.collect()
        sent_s = await venue.publish(total, rate)
        await asyncio.sleep(0.5)  # let the last orders arrive
        if root_task.done():
            await root_task
        stamps = await venue.dump()
    finally:
        root_task.cancel()
        await asyncio.gather(root_task, return_exceptions=True)
        await venue.stop()
        if journal is not None:
            await journal.close()
    REC.published = {int(seq): ns for seq, ns in stamps["published"].items()}
    for cid, ns in stamps["submitted"].items():
        seq = REC.seq_by_cid.get(cid)
        if seq is not None:
            REC.sim[seq] = ns
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
        "written": REC.written,
        "sim": REC.sim,
    }
    for label, a, b in SEGMENTS:
        start_map, end_map = points[a], points[b]
        result[label] = _stats([end_map[s] - start_map[s] for s in orders if s in start_map and s in end_map])
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


async def run(
    seconds: float, rate: int, every: int, repeats: int, pin: bool, journal_dir: str | None, progress: bool
) -> dict[str, Any]:
    runs = []
    for r in range(repeats):
        one = await run_once(seconds, rate, every, pin, journal_dir)
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
            "venue": "separate process",
            "pinned": "engine on CPU 0, venue on CPU 1" if pin else None,
            "journal": "write-ahead journal, durability process" if journal_dir is not None else None,
            "loop": f"uvloop {importlib.metadata.version('uvloop')}",
            "aiohttp": importlib.metadata.version("aiohttp"),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "machine": f"{platform.machine()}, {_cpus()} CPUs",
            "clock": time.get_clock_info("perf_counter").implementation,
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
        f"medians of {cfg['repeats']} runs; venue in a separate process"
        + (f" ({cfg['pinned']})" if cfg["pinned"] else "")
        + (f"; {cfg['journal']}" if cfg["journal"] else "; no journal"),
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
    parser.add_argument("--pin", action="store_true", help="pin the engine to CPU 0 and the venue process to CPU 1")
    parser.add_argument(
        "--journal", action="store_true", help="with the write-ahead order journal (a fresh one per run, in a temp dir)"
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.rate < 1 or args.every < 1 or args.repeats < 1:
        parser.error("--seconds, --rate, --every and --repeats must be positive")
    if args.pin and (not hasattr(os, "sched_setaffinity") or not {0, 1} <= os.sched_getaffinity(0)):
        parser.error("--pin needs CPUs 0 and 1 (Linux)")
    configure_logging(None, "warning")
    if args.pin:
        os.sched_setaffinity(0, {0})
    with (
        tempfile.TemporaryDirectory(prefix="kestrel-bench-t2o-") as tmp,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        journal_dir = tmp if args.journal else None
        result = runner.run(
            run(args.seconds, args.rate, args.every, args.repeats, args.pin, journal_dir, progress=not args.json)
        )
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
