"""Reconnect benchmark: how long the engine's Alpaca streams are blind after the socket dies.

One in-process simulator (uvloop, loopback), quotes published on one symbol at a steady
rate (default 1,000/s) the whole time, and two clients with the engine's own settings:

- **market data**: an :class:`~adapters.alpaca.data_stream.AlpacaDataStream` subscribed to
  the symbol, with ``backoff_base_s=0.05, backoff_cap_s=5.0`` as
  :class:`~adapters.alpaca.feed.AlpacaFeedActor` builds it (first retry immediate). Kill:
  ``sim.hub.close_all()`` (abort, no close frame). Measured from just before the kill to
  (a) ``subscribed`` set again and (b) the first quote delivered to the sink afterwards.
- **trade updates**: a :class:`~adapters.alpaca.trade_stream.TradeUpdatesStream` with its
  default backoff (0.05 / 5.0 s, first retry immediate) and a no-op catch-up. Kill:
  ``sim.faults.disconnect_streams()``. Measured from just before the kill to ``live`` set
  again (its ``on_live_change`` callback).

Each kill waits until the stream is back and has been up for ``--gap`` seconds (default
0.2 s: longer than nothing, so backoff resets as it would in real life). Times are
``time.perf_counter_ns``.

Run: ``.venv/bin/python -m benchmarks.bench_reconnect [--kills N] [--gap S] [--rate R] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import random
import sys
import time
from decimal import Decimal
from typing import Any, Final

import uvloop

from adapters.alpaca.data_stream import AlpacaDataStream
from adapters.alpaca.trade_stream import TradeUpdatesStream
from adapters.alpaca_sim.cli import SimulatorConfig, start_simulator
from adapters.alpaca_sim.events import SimQuote
from engine.clock import LiveClock
from engine.logs import configure_logging
from engine.messages import ExchangeQuote, SymbolTradingStatus, TradeTick
from engine.secrets import Secret

SYMBOL: Final = "BENCH"
KEY_ID: Final = "bench-key"
SECRET_KEY: Final = "bench-secret"
GOAL_P50_MS: Final = 250.0
TIMEOUT_S: Final = 10.0


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return sorted_values[index]


def _stats(samples_ms: list[float]) -> dict[str, float]:
    s = sorted(samples_ms)
    return {
        "count": len(s),
        "p50_ms": percentile(s, 50),
        "p99_ms": percentile(s, 99),
        "min_ms": s[0],
        "max_ms": s[-1],
    }


class WatchedDataStream(AlpacaDataStream):
    """The engine's data stream, plus waiters for the next subscription and the next quote
    of a newer connection than the one that was killed."""

    sub_waiter: asyncio.Future[int] | None = None
    quote_waiter: asyncio.Future[int] | None = None
    armed_connects = 0
    quotes_seen = 0

    def arm(self) -> None:
        loop = asyncio.get_running_loop()
        self.armed_connects = self.counters.connects
        self.sub_waiter = loop.create_future()
        self.quote_waiter = loop.create_future()

    def _on_subscription(self, sub: Any) -> None:
        super()._on_subscription(sub)
        waiter = self.sub_waiter
        if waiter is not None and not waiter.done() and self.counters.connects > self.armed_connects:
            waiter.set_result(time.perf_counter_ns())

    async def sink(self, event: ExchangeQuote | TradeTick) -> None:
        self.quotes_seen += 1
        waiter = self.quote_waiter
        if waiter is not None and not waiter.done() and self.counters.connects > self.armed_connects:
            waiter.set_result(time.perf_counter_ns())


class LiveWatch:
    def __init__(self) -> None:
        self.waiter: asyncio.Future[int] | None = None

    def changed(self, live: bool) -> None:
        waiter = self.waiter
        if live and waiter is not None and not waiter.done():
            waiter.set_result(time.perf_counter_ns())


async def _publisher(hub: Any, rate: int) -> None:
    loop = asyncio.get_running_loop()
    clock = LiveClock()
    period = 1.0 / rate
    start = loop.time()
    seq = 0
    bid, ask = Decimal("100.00"), Decimal("100.02")
    while True:
        seq += 1
        delay = start + seq * period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        hub.publish_quote(
            SimQuote(
                symbol=SYMBOL, bid_exchange="V", bid_price=bid, bid_size=100,
                ask_exchange="V", ask_price=ask, ask_size=100, ts_ns=clock.time_ns(),
            )
        )


async def run(kills: int, gap_s: float, rate: int, progress: bool) -> dict[str, Any]:
    clock = LiveClock()
    sim = await start_simulator(SimulatorConfig(key_id=KEY_ID, secret_key=SECRET_KEY), clock)
    assert sim.hub is not None
    hub = sim.hub
    sink: list[Any] = []

    async def forward(event: ExchangeQuote | TradeTick | SymbolTradingStatus) -> None:
        await sink[0](event)

    data = WatchedDataStream(
        sim.data_url("iex"), KEY_ID, Secret(SECRET_KEY), [SYMBOL], clock, random.Random(1), forward,
        backoff_base_s=0.05, backoff_cap_s=5.0,
    )
    sink.append(data.sink)
    live = LiveWatch()

    async def no_catch_up() -> None:
        return None

    async def ignore(_update: Any) -> None:
        return None

    trades = TradeUpdatesStream(
        sim.stream_url, Secret(KEY_ID), Secret(SECRET_KEY), clock, random.Random(2), ignore, no_catch_up,
        on_live_change=live.changed,
    )
    tasks = [
        asyncio.create_task(data.run(), name="bench-data"),
        asyncio.create_task(trades.run(), name="bench-trades"),
        asyncio.create_task(_publisher(hub, rate), name="bench-publisher"),
    ]
    loop = asyncio.get_running_loop()
    resubscribed: list[float] = []
    first_quote: list[float] = []
    trade_live: list[float] = []
    try:
        async with asyncio.timeout(TIMEOUT_S):
            await data.subscribed.wait()
            await trades.live.wait()
        await asyncio.sleep(0.5)  # warm-up: quotes flowing
        for k in range(kills):
            # ---- market data
            await asyncio.sleep(gap_s)
            # Only a subscription / quote of a connection made after the kill counts.
            data.arm()
            assert data.sub_waiter is not None and data.quote_waiter is not None
            t0 = time.perf_counter_ns()
            await hub.close_all()
            async with asyncio.timeout(TIMEOUT_S):
                t_sub = await data.sub_waiter
                t_quote = await data.quote_waiter
            resubscribed.append((t_sub - t0) / 1e6)
            first_quote.append((t_quote - t0) / 1e6)
            # ---- trade updates
            await asyncio.sleep(gap_s)
            live.waiter = loop.create_future()
            t0 = time.perf_counter_ns()
            dropped = await sim.faults.disconnect_streams()
            async with asyncio.timeout(TIMEOUT_S):
                t_live = await live.waiter
            trade_live.append((t_live - t0) / 1e6)
            if progress:
                print(
                    f"  kill {k + 1}/{kills}: data resubscribed {resubscribed[-1]:.1f} ms, first quote "
                    f"{first_quote[-1]:.1f} ms; trade_updates live {trade_live[-1]:.1f} ms (dropped {dropped})",
                    file=sys.stderr,
                )
    finally:
        await data.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await sim.stop()
    return {
        "config": {
            "kills": kills,
            "gap_s": gap_s,
            "rate": rate,
            "backoff": {"base_s": 0.05, "cap_s": 5.0, "first_retry": "immediate"},
            "loop": f"uvloop {importlib.metadata.version('uvloop')}",
            "aiohttp": importlib.metadata.version("aiohttp"),
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "machine": f"{platform.machine()}, {_cpus()} CPUs",
        },
        "market_data_resubscribed": _stats(resubscribed),
        "market_data_first_quote": _stats(first_quote),
        "trade_updates_live": _stats(trade_live),
        "counters": {
            "data_connects": data.counters.connects,
            "data_reconnects": data.counters.reconnects,
            "quotes": data.quotes_seen,
            "trade_connects": trades.counters["connects"],
        },
        "goal": {"p50_ms": GOAL_P50_MS},
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"{cfg['python']}, {cfg['loop']}, aiohttp {cfg['aiohttp']}, {cfg['machine']}; {cfg['kills']} kills each, "
        f"{cfg['rate']:,} quotes/s flowing, backoff 0.05-5 s (first retry immediate)",
        f"{'kill → back':<32}{'n':>4}{'p50 ms':>9}{'p99 ms':>9}{'min ms':>9}{'max ms':>9}",
    ]
    names = (
        ("market_data_resubscribed", "market data: resubscribed"),
        ("market_data_first_quote", "market data: first quote"),
        ("trade_updates_live", "trade_updates: live"),
    )
    for key, label in names:
        s = result[key]
        lines.append(
            f"{label:<32}{s['count']:>4}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}{s['min_ms']:>9.2f}{s['max_ms']:>9.2f}"
        )
    worst = max(result[k]["p50_ms"] for k, _ in names)
    goal = result["goal"]["p50_ms"]
    lines.append(f"goal: p50 <= {goal:g} ms: {'meets' if worst <= goal else 'MISSES'} (worst p50 {worst:.2f} ms)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=30, help="kills of each stream")
    parser.add_argument("--gap", type=float, default=0.2, help="seconds of normal streaming before each kill")
    parser.add_argument("--rate", type=int, default=1000, help="quotes per second while measuring")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.kills < 1 or args.gap < 0 or args.rate < 1:
        parser.error("--kills and --rate must be >= 1, --gap >= 0")
    configure_logging(None, "warning")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(args.kills, args.gap, args.rate, progress=not args.json))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
