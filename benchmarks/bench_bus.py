"""Bus benchmark: a Kestrel actor hop against a raw ``asyncio.Queue`` hop, side by side.

Two pipelines of three hops each carry the same payload (one frozen msgspec
``BestBidOffer`` with ``Decimal`` fields, built once):

- **raw**: producer → q1 → task1 → q2 → task2 → q3 → sink task, over bounded
  ``asyncio.Queue(maxsize=1024)``, ``await put`` / ``await get``;
- **kestrel**: producer → ``hop1`` → ``hop2`` → ``sink``, three actors under a real
  :class:`engine.supervisor.Supervisor`, each forwarding with ``await ctx.send`` into a
  backpressure mailbox of capacity 1024 (the producer uses ``await bus.send``).

Each variant is measured two ways:

- **saturated**: the producer pushes N messages as fast as it can; the clock stops when
  the sink has the N-th. Reported as messages/s and ns per message per hop.
- **latency**: one message at a time; ``time.perf_counter_ns`` at send and when the
  sink receives it, then the next message. Reported as end-to-end p50/p99 and per hop
  (end-to-end / 3).

The variants alternate within each repeat (and swap order every repeat) so machine noise
hits both alike; every figure is the median over the repeats. Runs on uvloop, as the
engine does.

Run: ``.venv/bin/python -m benchmarks.bench_bus [--messages N] [--repeats R] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import importlib.metadata
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Final

import uvloop

from engine.actor import Actor
from engine.bus import Bus
from engine.clock import LiveClock
from engine.mailbox import BACKPRESSURE
from engine.messages import BestBidOffer
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

HOPS: Final = 3
CAPACITY: Final = 1024
GOAL_RATIO: Final = 1.5

PAYLOAD: Final = BestBidOffer(
    symbol="AAPL",
    bid_price=Decimal("189.12"),
    bid_size=Decimal(300),
    ask_price=Decimal("189.14"),
    ask_size=Decimal(200),
    provider="bench",
    ts_event=1_700_000_000_000_000_000,
    ts_init=1_700_000_000_000_000_000,
)


class Sink:
    """The end of either pipeline: counts arrivals and stamps the last one.

    Saturated mode: resolves ``done`` with the receive time of the ``expected``-th message.
    Latency mode (``expected == 1``, reset per message): the same, for one message.
    """

    __slots__ = ("count", "done", "expected")

    def __init__(self) -> None:
        self.count = 0
        self.expected = 0
        self.done: asyncio.Future[int] | None = None

    def arm(self, expected: int) -> asyncio.Future[int]:
        self.count = 0
        self.expected = expected
        self.done = asyncio.get_running_loop().create_future()
        return self.done

    def receive(self, _message: object) -> None:
        self.count += 1
        if self.count == self.expected:
            assert self.done is not None
            self.done.set_result(time.perf_counter_ns())


class Pipeline:
    """A running three-hop pipeline: ``send`` feeds the first hop, ``sink`` is the last."""

    send: Callable[[object], Awaitable[None]]
    sink: Sink

    async def stop(self) -> None:
        raise NotImplementedError


# ---------------------------------------------------------------- raw asyncio.Queue


class RawPipeline(Pipeline):
    def __init__(self) -> None:
        self.sink = Sink()
        queues: list[asyncio.Queue[object]] = [asyncio.Queue(maxsize=CAPACITY) for _ in range(HOPS)]
        self.send = queues[0].put
        self._tasks = [
            asyncio.create_task(self._forward(queues[0], queues[1])),
            asyncio.create_task(self._forward(queues[1], queues[2])),
            asyncio.create_task(self._drain(queues[2], self.sink)),
        ]

    @staticmethod
    async def _forward(source: asyncio.Queue[object], target: asyncio.Queue[object]) -> None:
        while True:
            item = await source.get()
            await target.put(item)

    @staticmethod
    async def _drain(source: asyncio.Queue[object], sink: Sink) -> None:
        receive = sink.receive
        while True:
            receive(await source.get())

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


# ---------------------------------------------------------------- Kestrel actors


class Forward(Actor):
    """Forwards every message to the next address, as an actor normally would."""

    def __init__(self, target: str) -> None:
        self.target = target

    async def handle(self, message: Any) -> None:
        await self.ctx.send(self.target, message)


class SinkActor(Actor):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def handle(self, message: Any) -> None:
        self.sink.receive(message)


class KestrelPipeline(Pipeline):
    def __init__(self) -> None:
        self.sink = Sink()
        self.bus = Bus()
        spec = SupervisorSpec(
            "bench",
            children=[
                ActorSpec("hop1", lambda: Forward("hop2"), capacity=CAPACITY, default_policy=BACKPRESSURE),
                ActorSpec("hop2", lambda: Forward("sink"), capacity=CAPACITY, default_policy=BACKPRESSURE),
                ActorSpec(
                    "sink", lambda: SinkActor(self.sink), capacity=CAPACITY, default_policy=BACKPRESSURE
                ),
            ],
        )
        self.supervisor = Supervisor(spec, self.bus, LiveClock(), random.Random(0))
        self._task = asyncio.create_task(self.supervisor.run())
        # A partial, not a wrapper coroutine: the producer pays bus.send only, as raw pays put.
        self.send = functools.partial(self.bus.send, "hop1")

    async def started(self) -> None:
        await self.supervisor.started()

    async def stop(self) -> None:
        await self.bus.idle()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# ---------------------------------------------------------------- measurements


async def _make(variant: str) -> Pipeline:
    if variant == "raw":
        return RawPipeline()
    pipeline = KestrelPipeline()
    await pipeline.started()
    return pipeline


async def saturated(variant: str, n: int) -> float:
    """Seconds for ``n`` messages to reach the sink with the producer pushing flat out."""
    pipeline = await _make(variant)
    await asyncio.sleep(0)
    done = pipeline.sink.arm(n)
    send = pipeline.send
    message = PAYLOAD
    gc.collect()
    t0 = time.perf_counter_ns()
    for _ in range(n):
        await send(message)
    t1 = await done
    await pipeline.stop()
    return (t1 - t0) / 1e9


async def latency(variant: str, n: int) -> list[int]:
    """End-to-end ns of ``n`` messages sent one at a time, each waited for at the sink."""
    pipeline = await _make(variant)
    await asyncio.sleep(0)
    sink = pipeline.sink
    send = pipeline.send
    message = PAYLOAD
    samples: list[int] = []
    append = samples.append
    gc.collect()
    for _ in range(n):
        done = sink.arm(1)
        t0 = time.perf_counter_ns()
        await send(message)
        t1 = await done
        append(t1 - t0)
    await pipeline.stop()
    return samples


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])


@dataclass
class Figures:
    msgs_per_s: float
    sat_ns_per_hop: float
    e2e_p50_us: float
    e2e_p99_us: float
    hop_p50_us: float
    hop_p99_us: float


def _figures(seconds: float, n: int, samples: list[int]) -> Figures:
    samples.sort()
    p50 = percentile(samples, 50) / 1e3
    p99 = percentile(samples, 99) / 1e3
    return Figures(
        msgs_per_s=n / seconds,
        sat_ns_per_hop=seconds * 1e9 / n / HOPS,
        e2e_p50_us=p50,
        e2e_p99_us=p99,
        hop_p50_us=p50 / HOPS,
        hop_p99_us=p99 / HOPS,
    )


def _median(runs: list[Figures]) -> Figures:
    fields = asdict(runs[0]).keys()
    return Figures(**{f: statistics.median(getattr(r, f) for r in runs) for f in fields})


async def run(messages: int, latency_messages: int, repeats: int, progress: bool) -> dict[str, Any]:
    variants = ("raw", "kestrel")
    # Warm-up: imports, code paths, allocator; not recorded.
    for variant in variants:
        await saturated(variant, min(messages, 20_000))
        await latency(variant, min(latency_messages, 2_000))
    runs: dict[str, list[Figures]] = {v: [] for v in variants}
    for r in range(repeats):
        order = variants if r % 2 == 0 else variants[::-1]
        seconds: dict[str, float] = {}
        samples: dict[str, list[int]] = {}
        for variant in order:
            seconds[variant] = await saturated(variant, messages)
        for variant in order:
            samples[variant] = await latency(variant, latency_messages)
        for variant in variants:
            runs[variant].append(_figures(seconds[variant], messages, samples[variant]))
        if progress:
            raw, kes = runs["raw"][-1], runs["kestrel"][-1]
            print(
                f"  repeat {r + 1}/{repeats}: saturated {raw.msgs_per_s:,.0f} vs {kes.msgs_per_s:,.0f} "
                f"msgs/s, hop p50 {raw.hop_p50_us:.2f} vs {kes.hop_p50_us:.2f} µs (raw vs kestrel)",
                file=sys.stderr,
            )
    raw = _median(runs["raw"])
    kes = _median(runs["kestrel"])
    sat_ratios = [
        k.sat_ns_per_hop / w.sat_ns_per_hop for w, k in zip(runs["raw"], runs["kestrel"], strict=True)
    ]
    lat_ratios = [k.hop_p50_us / w.hop_p50_us for w, k in zip(runs["raw"], runs["kestrel"], strict=True)]
    return {
        "config": {
            "messages": messages,
            "latency_messages": latency_messages,
            "repeats": repeats,
            "hops": HOPS,
            "capacity": CAPACITY,
            "loop": f"uvloop {importlib.metadata.version('uvloop')}",
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "machine": f"{platform.machine()}, {_cpus()} CPUs",
        },
        "raw": asdict(raw),
        "kestrel": asdict(kes),
        "ratio": {
            # Per-hop cost, kestrel / raw: median of the per-repeat ratios.
            "saturated_per_hop": statistics.median(sat_ratios),
            "latency_p50_per_hop": statistics.median(lat_ratios),
            "goal": GOAL_RATIO,
        },
    }


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    raw, kes, ratio = result["raw"], result["kestrel"], result["ratio"]
    rows = [
        ("saturated throughput (msgs/s)", f"{raw['msgs_per_s']:,.0f}", f"{kes['msgs_per_s']:,.0f}", ""),
        (
            "saturated, ns per message per hop",
            f"{raw['sat_ns_per_hop']:.0f}",
            f"{kes['sat_ns_per_hop']:.0f}",
            f"{ratio['saturated_per_hop']:.2f}×",
        ),
        (
            "latency per hop p50 (µs)",
            f"{raw['hop_p50_us']:.2f}",
            f"{kes['hop_p50_us']:.2f}",
            f"{ratio['latency_p50_per_hop']:.2f}×",
        ),
        ("latency per hop p99 (µs)", f"{raw['hop_p99_us']:.2f}", f"{kes['hop_p99_us']:.2f}", ""),
        ("latency end-to-end p50 (µs)", f"{raw['e2e_p50_us']:.2f}", f"{kes['e2e_p50_us']:.2f}", ""),
        ("latency end-to-end p99 (µs)", f"{raw['e2e_p99_us']:.2f}", f"{kes['e2e_p99_us']:.2f}", ""),
    ]
    header = ("3 hops, BestBidOffer payload", "raw asyncio.Queue", "Kestrel actors", "kestrel/raw")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    lines = [
        f"{cfg['python']}, {cfg['loop']}, {cfg['machine']}; saturated N={cfg['messages']:,}, "
        f"latency N={cfg['latency_messages']:,}, medians of {cfg['repeats']} interleaved repeats",
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True))
        ),
    ]
    for row in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    worst = max(ratio["saturated_per_hop"], ratio["latency_p50_per_hop"])
    verdict = "meets" if worst <= ratio["goal"] else "MISSES"
    lines.append(
        f"goal: an actor hop costs <= {ratio['goal']}× a raw queue hop: {verdict} (worst {worst:.2f}×)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=500_000, help="messages per saturated run")
    parser.add_argument(
        "--latency-messages", type=int, default=50_000, help="messages per latency run (one at a time)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; figures are medians")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.latency_messages < 1 or args.repeats < 1:
        parser.error("--messages, --latency-messages and --repeats must be >= 1")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(args.messages, args.latency_messages, args.repeats, progress=not args.json))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
