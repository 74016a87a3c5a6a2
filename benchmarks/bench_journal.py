"""Journal benchmark: group-commit throughput, write-ahead latency, restart-to-ready.

Four measurements, on real SQLite files (WAL) in a temporary folder (``--dir``, default the
system's temp folder; it must be a real disk, not tmpfs, or fsync costs nothing):

1. **hops**: the commit path alone, raw aiosqlite, no journal: a group of G rows committed
   with *one* thread hop (``Connection._execute`` of a function doing BEGIN, executemany,
   COMMIT: what :class:`engine.journal.Journal` does) against *two* public calls
   (``await db.executemany(...)`` then ``await db.commit()``, implicit BEGIN). Round trip
   per group, p50, G = 1 and G = 100, ``synchronous=NORMAL``.
2. **throughput**: durable events/s through :meth:`Journal.write` from ``--producers``
   concurrent tasks, each awaiting the commit of its record before writing the next (the
   write-ahead pattern), and from one pipelined producer that appends without waiting
   (``wait_for_room`` when full) and flushes at the end. Records alternate ``Fill`` and
   ``OrderUpdate`` (Decimal fields), built beforehand. Both durabilities.
3. **latency**: what one write-ahead ``await journal.write(OrderSubmitting)`` adds on an
   otherwise idle loop, one at a time, p50/p99, both durabilities.
4. **restart**: a journal of ``--events`` events (default 1,000,000) with a snapshot near
   the end, closed; then the time to open it (lock, ``PRAGMA quick_check``, setup) and
   read every event back decoded, and the time to open it, load the latest snapshot and
   read only the events after it. The file is in the page cache (just written), as it is
   on a quick restart. The cyclic GC stays on, as in production; the throughput records
   are freed first so the heap is about as small as a freshly started engine's.

Runs on uvloop, as the engine does. Times are ``time.perf_counter_ns``.

Run: ``.venv/bin/python -m benchmarks.bench_journal [--events N] [--writes N] [--producers N] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import json
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import aiosqlite
import msgspec
import uvloop

from engine.clock import LiveClock
from engine.journal import Durability, Journal, JournalBackpressure
from engine.logs import configure_logging
from engine.messages import (
    Fill,
    Message,
    OrderStatus,
    OrderSubmitting,
    OrderType,
    OrderUpdate,
    Side,
    SubmitOrder,
    TimeInForce,
)

GOAL_EVENTS_PER_S: Final = 150_000
GOAL_RESTART_S: Final = 2.0
T0: Final = 1_700_000_000_000_000_000
DURABILITIES: Final = (Durability.PROCESS, Durability.POWER)


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[index])


def realistic_records(n: int) -> list[Message]:
    """``n`` distinct Fill / OrderUpdate records, alternating, as the order manager journals them."""
    records: list[Message] = []
    for i in range(n):
        coid = f"kst-r1-momentum-{i:08d}"
        if i % 2:
            records.append(
                Fill(
                    client_order_id=coid,
                    venue_order_id=f"8f2c1a6e-0b7d-4c55-9e3a-{i:012d}",
                    execution_id=f"exec-{i:010d}",
                    intent_id=f"momentum-{i:08d}",
                    strategy="momentum",
                    symbol="AAPL",
                    side=Side.BUY if i % 4 == 1 else Side.SELL,
                    qty=Decimal("12.5"),
                    price=Decimal("189.1234") + Decimal(i % 100) / 100,
                    fee=Decimal("0.0125"),
                    ts_event=T0 + i * 1000,
                    ts_recv=T0 + i * 1000 + 350_000,
                )
            )
        else:
            records.append(
                OrderUpdate(
                    client_order_id=coid,
                    venue_order_id=f"8f2c1a6e-0b7d-4c55-9e3a-{i:012d}",
                    status=OrderStatus.PARTIALLY_FILLED,
                    filled_qty=Decimal("12.5"),
                    intent_id=f"momentum-{i:08d}",
                    strategy="momentum",
                    ts_event=T0 + i * 1000,
                    ts_recv=T0 + i * 1000 + 350_000,
                )
            )
    return records


def submitting(i: int) -> OrderSubmitting:
    order = SubmitOrder(
        client_order_id=f"kst-r1-momentum-{i:08d}",
        intent_id=f"momentum-{i:08d}",
        symbol="AAPL",
        side=Side.BUY,
        qty=Decimal("10"),
        order_type=OrderType.LIMIT,
        limit_price=Decimal("189.12"),
        time_in_force=TimeInForce.DAY,
        ts_init=T0 + i,
    )
    return OrderSubmitting(order=order, strategy="momentum", sequence=i, ts_init=T0 + i)


# ---------------------------------------------------------------- 1. one hop or two


_RAW_INSERT: Final = (
    "INSERT INTO events (seq, ts_ns, kind, client_order_id, intent_id, payload) VALUES (?, ?, ?, ?, ?, ?)"
)
_RAW_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, ts_ns INTEGER NOT NULL, kind TEXT NOT NULL, "
    "client_order_id TEXT, intent_id TEXT, payload BLOB NOT NULL)"
)


def _one_hop_group(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_RAW_INSERT, rows)
    conn.execute("COMMIT")


async def hops(folder: Path, group: int, groups: int) -> dict[str, float]:
    """p50 µs per group round trip, one hop vs two public calls, on the same file, interleaved."""
    payload = msgspec.msgpack.encode(realistic_records(2)[1])
    results: dict[str, list[int]] = {"one_hop": [], "two_hops": []}
    path = folder / f"hops-{group}.db"
    # One connection per variant; isolation_level=None for explicit BEGIN, "" (implicit
    # BEGIN before the INSERT) for the public executemany + commit pair.
    one = await aiosqlite.connect(path, isolation_level=None)
    two = await aiosqlite.connect(path)
    for db in (one, two):
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
    await one.execute(_RAW_SCHEMA)
    seq = 0
    for i in range(groups * 2):
        rows = [(seq + k + 1, T0, "Fill", "c", "i", payload) for k in range(group)]
        seq += group
        variant = "one_hop" if i % 2 == 0 else "two_hops"
        t0 = time.perf_counter_ns()
        if variant == "one_hop":
            raw = one._conn
            await one._execute(_one_hop_group, raw, rows)  # type: ignore[no-untyped-call]
        else:
            await two.executemany(_RAW_INSERT, rows)
            await two.commit()
        results[variant].append(time.perf_counter_ns() - t0)
    await one.close()
    await two.close()
    out: dict[str, float] = {}
    for variant, samples in results.items():
        samples = sorted(samples[10:])  # the first few warm the statement cache
        out[f"{variant}_p50_us"] = percentile(samples, 50) / 1e3
        out[f"{variant}_rows_per_s"] = group / (statistics.mean(samples) / 1e9)
    return out


# ---------------------------------------------------------------- 2. throughput


async def throughput_write(
    folder: Path, durability: Durability, records: list[Message], producers: int
) -> dict[str, Any]:
    """``producers`` tasks, each ``await journal.write`` of its next record, until all are durable."""
    path = folder / f"tp-write-{durability.value}.db"
    journal = await Journal.open(path, LiveClock(), durability)
    n = len(records)
    per = n // producers

    async def producer(k: int) -> None:
        write = journal.write
        for record in records[k * per : (k + 1) * per]:
            await write(record)

    gc.collect()
    t0 = time.perf_counter_ns()
    await asyncio.gather(*(producer(k) for k in range(producers)))
    seconds = (time.perf_counter_ns() - t0) / 1e9
    stats = dict(journal.stats)
    await journal.close()
    total = per * producers
    return {
        "events": total,
        "events_per_s": total / seconds,
        "commits": stats["commits"],
        "mean_group": total / max(1, stats["commits"]),
        "max_group": stats["max_group"],
    }


async def throughput_append(folder: Path, durability: Durability, records: list[Message]) -> dict[str, Any]:
    """One producer appending without awaiting each commit (``wait_for_room`` when full), then flush."""
    path = folder / f"tp-append-{durability.value}.db"
    journal = await Journal.open(path, LiveClock(), durability, max_pending=10_000)
    append = journal.append
    gc.collect()
    t0 = time.perf_counter_ns()
    for record in records:
        try:
            append(record)
        except JournalBackpressure:
            await journal.wait_for_room()  # max_pending rows queued behind the commit in flight
            append(record)
    await journal.flush()
    seconds = (time.perf_counter_ns() - t0) / 1e9
    stats = dict(journal.stats)
    await journal.close()
    return {
        "events": len(records),
        "events_per_s": len(records) / seconds,
        "commits": stats["commits"],
        "mean_group": len(records) / max(1, stats["commits"]),
        "max_group": stats["max_group"],
    }


# ---------------------------------------------------------------- 3. latency


async def latency(folder: Path, durability: Durability, writes: int) -> dict[str, Any]:
    path = folder / f"latency-{durability.value}.db"
    journal = await Journal.open(path, LiveClock(), durability)
    orders = [submitting(i) for i in range(writes + 200)]
    for order in orders[:200]:  # warm-up: statement cache, WAL growth, allocator
        await journal.write(order)
    samples: list[int] = []
    gc.collect()
    for order in orders[200:]:
        t0 = time.perf_counter_ns()
        await journal.write(order)
        samples.append(time.perf_counter_ns() - t0)
    await journal.close()
    samples.sort()
    return {
        "writes": writes,
        "p50_us": percentile(samples, 50) / 1e3,
        "p99_us": percentile(samples, 99) / 1e3,
        "max_us": samples[-1] / 1e3,
    }


# ---------------------------------------------------------------- 4. restart


async def build(path: Path, events: int, snapshot_at: int, progress: bool) -> dict[str, Any]:
    """Write ``events`` events (PROCESS) with a snapshot after ``snapshot_at``; return build figures."""
    records = realistic_records(10_000)
    journal = await Journal.open(path, LiveClock(), Durability.PROCESS, max_pending=20_000)
    t0 = time.perf_counter_ns()
    for i in range(events):
        if progress and i % 200_000 == 0 and i:
            print(f"  building: {i:,} events", file=sys.stderr)
        try:
            journal.append(records[i % 10_000])
        except JournalBackpressure:
            await journal.wait_for_room()
            journal.append(records[i % 10_000])
        if i + 1 == snapshot_at:
            await journal.write_snapshot("ledger", b"x" * 4096, upto_seq=snapshot_at)
    await journal.flush()
    seconds = (time.perf_counter_ns() - t0) / 1e9
    await journal.close()
    size = await asyncio.to_thread(os.path.getsize, path)
    return {"events": events, "build_s": seconds, "file_mb": size / 1e6}


async def restart_full(path: Path) -> dict[str, float]:
    t0 = time.perf_counter_ns()
    journal = await Journal.open(path, LiveClock())
    t1 = time.perf_counter_ns()
    count = 0
    async for _entry in journal.read():
        count += 1
    t2 = time.perf_counter_ns()
    await journal.close()
    if count != journal.last_seq:
        raise AssertionError(f"read {count} events, the journal has {journal.last_seq}")
    return {"open_s": (t1 - t0) / 1e9, "read_s": (t2 - t1) / 1e9, "total_s": (t2 - t0) / 1e9, "events_read": count}


async def restart_snapshot(path: Path) -> dict[str, float]:
    t0 = time.perf_counter_ns()
    journal = await Journal.open(path, LiveClock())
    t1 = time.perf_counter_ns()
    snapshot = await journal.latest_snapshot("ledger")
    if snapshot is None:
        raise AssertionError("the snapshot is missing")
    count = 0
    async for _entry in journal.read(snapshot.seq):
        count += 1
    t2 = time.perf_counter_ns()
    await journal.close()
    return {"open_s": (t1 - t0) / 1e9, "read_s": (t2 - t1) / 1e9, "total_s": (t2 - t0) / 1e9, "events_read": count}


async def quick_check_s(path: Path) -> float:
    """``PRAGMA quick_check`` alone, read-only connection: the part of ``open`` that scales with size."""

    def check() -> float:
        t0 = time.perf_counter_ns()
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
        return (time.perf_counter_ns() - t0) / 1e9

    return await asyncio.to_thread(check)


# ---------------------------------------------------------------- driver


def _median_dicts(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


async def run(args: argparse.Namespace, folder: Path, progress: bool) -> dict[str, Any]:
    def say(text: str) -> None:
        if progress:
            print(text, file=sys.stderr)

    result: dict[str, Any] = {
        "config": {
            "events": args.events,
            "writes": args.writes,
            "throughput_events": args.throughput_events,
            "producers": args.producers,
            "repeats": args.repeats,
            "loop": f"uvloop {importlib.metadata.version('uvloop')}",
            "python": f"{platform.python_implementation()} {platform.python_version()}",
            "sqlite": sqlite3.sqlite_version,
            "aiosqlite": aiosqlite.__version__,
            "machine": f"{platform.machine()}, {_cpus()} CPUs",
            "folder": str(folder),
        }
    }
    say("1. one hop vs two hops per group")
    result["hops"] = {str(group): await hops(folder, group, args.hop_groups) for group in (1, 100)}

    records = realistic_records(args.throughput_events)
    say("2. throughput")
    result["throughput"] = {}
    for durability in DURABILITIES:
        writes = [await throughput_write(folder, durability, records, args.producers) for _ in range(args.repeats)]
        appends = [await throughput_append(folder, durability, records) for _ in range(args.repeats)]
        result["throughput"][durability.value] = {"write": _median_dicts(writes), "append": _median_dicts(appends)}
        say(
            f"  {durability.value}: {result['throughput'][durability.value]['write']['events_per_s']:,.0f} events/s "
            f"(write x{args.producers}), {result['throughput'][durability.value]['append']['events_per_s']:,.0f} "
            "(pipelined append)"
        )

    # A restart is a fresh process: do not let these 200k GC-tracked records slow every
    # collection during the reads below (with them alive, a full read takes ~50 % longer).
    del records
    gc.collect()

    say("3. write-ahead latency")
    result["latency"] = {d.value: await latency(folder, d, args.writes) for d in DURABILITIES}

    say(f"4. restart with {args.events:,} events")
    path = folder / "restart.db"
    built = await build(path, args.events, max(1, args.events - 1000), progress)
    full = [await restart_full(path) for _ in range(args.repeats)]
    snap = [await restart_snapshot(path) for _ in range(args.repeats)]
    checks = [await quick_check_s(path) for _ in range(args.repeats)]
    result["restart"] = {
        **built,
        "full": _median_dicts(full),
        "from_snapshot": _median_dicts(snap),
        "quick_check_s": statistics.median(checks),
    }
    result["goals"] = {"events_per_s": GOAL_EVENTS_PER_S, "restart_s": GOAL_RESTART_S}
    return result


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [line(header), *(line(r) for r in rows)]


def render(result: dict[str, Any]) -> str:
    cfg = result["config"]
    lines = [
        f"{cfg['python']}, {cfg['loop']}, SQLite {cfg['sqlite']}, aiosqlite {cfg['aiosqlite']}, {cfg['machine']}; "
        f"medians of {cfg['repeats']} repeats",
        "",
        "1. commit path, one group per round trip (synchronous=NORMAL, raw aiosqlite)",
    ]
    hop_rows = []
    for group, h in result["hops"].items():
        hop_rows.append(
            (
                f"group of {group}",
                f"{h['one_hop_p50_us']:.0f}",
                f"{h['two_hops_p50_us']:.0f}",
                f"{h['one_hop_rows_per_s']:,.0f}",
                f"{h['two_hops_rows_per_s']:,.0f}",
            )
        )
    lines += _table(("", "1 hop p50 µs", "2 hops p50 µs", "1 hop rows/s", "2 hops rows/s"), hop_rows)
    lines += ["", f"2. durable events/s ({cfg['throughput_events']:,} Fill/OrderUpdate records)"]
    tp_rows = []
    for durability, t in result["throughput"].items():
        for mode, label in (
            ("write", f"{cfg['producers']} producers, await write each"),
            ("append", "pipelined append"),
        ):
            f = t[mode]
            tp_rows.append(
                (
                    f"{durability}: {label}",
                    f"{f['events_per_s']:,.0f}",
                    f"{f['mean_group']:,.0f}",
                    f"{f['max_group']:,.0f}",
                )
            )
    lines += _table(("", "events/s", "mean group", "max group"), tp_rows)
    lines += ["", f"3. one write-ahead await journal.write(OrderSubmitting), idle loop ({cfg['writes']:,} writes)"]
    lat_rows = [
        (d, f"{v['p50_us']:.0f}", f"{v['p99_us']:.0f}", f"{v['max_us']:.0f}") for d, v in result["latency"].items()
    ]
    lines += _table(("", "p50 µs", "p99 µs", "max µs"), lat_rows)
    r = result["restart"]
    lines += [
        "",
        f"4. restart: {r['events']:,} events, {r['file_mb']:.0f} MB (built at {r['events'] / r['build_s']:,.0f}/s)",
    ]
    rs_rows = [
        (
            label,
            f"{v['open_s']:.2f}",
            f"{v['read_s']:.2f}",
            f"{v['total_s']:.2f}",
            f"{v['events_read']:,.0f}",
        )
        for label, v in (("open + read all", r["full"]), ("open + snapshot + read tail", r["from_snapshot"]))
    ]
    lines += _table(("", "open s", "read s", "total s", "events read"), rs_rows)
    lines.append(f"   of which PRAGMA quick_check alone: {r['quick_check_s']:.2f} s")
    goals = result["goals"]
    best = result["throughput"]["process"]
    rate = max(best["write"]["events_per_s"], best["append"]["events_per_s"])
    lines += [
        "",
        f"goal: >= {goals['events_per_s']:,} durable events/s (process): "
        f"{'meets' if rate >= goals['events_per_s'] else 'MISSES'} ({rate:,.0f}; "
        f"{best['write']['events_per_s']:,.0f} with awaiting producers)",
        f"goal: restart-to-ready <= {goals['restart_s']} s: from a snapshot "
        f"{'meets' if r['from_snapshot']['total_s'] <= goals['restart_s'] else 'MISSES'} "
        f"({r['from_snapshot']['total_s']:.2f} s); reading all {r['events']:,} events "
        f"{'meets' if r['full']['total_s'] <= goals['restart_s'] else 'MISSES'} ({r['full']['total_s']:.2f} s)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the restart journal")
    parser.add_argument("--throughput-events", type=int, default=200_000, help="events per throughput run")
    parser.add_argument("--producers", type=int, default=256, help="concurrent producers in the write throughput run")
    parser.add_argument("--writes", type=int, default=3000, help="sequential writes per latency run")
    parser.add_argument("--hop-groups", type=int, default=1000, help="groups per variant in the hop comparison")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of throughput and restart; medians")
    parser.add_argument("--dir", type=Path, default=None, help="folder for the journal files (a real disk)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if min(args.events, args.throughput_events, args.producers, args.writes, args.hop_groups, args.repeats) < 1:
        parser.error("every count must be >= 1")
    if args.throughput_events < args.producers:
        parser.error("--throughput-events must be >= --producers")
    configure_logging(None, "warning")
    with (
        tempfile.TemporaryDirectory(prefix="kestrel-bench-journal-", dir=args.dir) as tmp,
        asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner,
    ):
        result = runner.run(run(args, Path(tmp), progress=not args.json))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
