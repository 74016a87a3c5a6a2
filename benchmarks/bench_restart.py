"""Restart-to-ready: how long the order manager takes to rebuild its book from a big journal.

Builds a journal of ``--events`` events (default 1,000,000) shaped like a trading day of
the order manager: per order ``OrderSubmitting`` → ``OrderUpdate(new)`` → ``Fill`` →
``OrderUpdate(filled)``, so 1M events are 250k orders and 250k fills. The order book is
snapshotted where the order manager would have written its last snapshot with
``snapshot_every`` (default 10,000) *minus one event*, so the restart replays the worst
tail the setting allows.

Measured, each on a fresh process-level open of the file:

- **ready**: ``Journal.open`` (lock, ``quick_check``, schema) + :func:`actors.order_book.rebuild`
  (newest snapshot decoded + the events after it applied) — what the order manager does
  before recovery asks the venue anything;
- **full replay**: open + every event decoded and applied from the first (what
  ``kestrel journal verify`` does, and what a restart would cost without snapshots).

Run: ``.venv/bin/python -m benchmarks.bench_restart [--events N] [--snapshot-every K] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import uvloop

from actors.order_book import SNAPSHOT_KIND, Book, rebuild
from engine.clock import LiveClock
from engine.journal import Journal
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

GOAL_READY_S: Final = 2.0


def order_events(n: int, ts: int) -> list[Message]:
    cid = f"kestrel-{n}"
    side = Side.BUY if n % 2 else Side.SELL
    price = Decimal("184.50") + Decimal(n % 100) / 100
    return [
        OrderSubmitting(
            order=SubmitOrder(
                client_order_id=cid, intent_id=f"ema-cross.b1.0-{n}", symbol="IBM", side=side, qty=Decimal(10),
                order_type=OrderType.MARKET, limit_price=None, time_in_force=TimeInForce.DAY, ts_init=ts,
            ),
            strategy="ema-cross",
            sequence=n,
            ts_init=ts,
        ),
        OrderUpdate(
            client_order_id=cid, venue_order_id=f"v{n:012d}", status=OrderStatus.NEW, ts_event=ts, ts_recv=ts
        ),
        Fill(
            client_order_id=cid, venue_order_id=f"v{n:012d}", execution_id=f"x{n:012d}", intent_id=f"i{n}",
            strategy="ema-cross", symbol="IBM", side=side, qty=Decimal(10), price=price, fee=Decimal(0),
            ts_event=ts, ts_recv=ts,
        ),
        OrderUpdate(
            client_order_id=cid, venue_order_id=f"v{n:012d}", status=OrderStatus.FILLED, filled_qty=Decimal(10),
            ts_event=ts, ts_recv=ts,
        ),
    ]


async def build(path: Path, events: int, snapshot_every: int) -> dict[str, Any]:
    started = time.perf_counter()
    snapshot_at = max(0, events - (snapshot_every - 1))  # the worst tail the setting allows
    book = Book(cash=Decimal(100_000_000))
    journal = await Journal.open(path, LiveClock())
    written = 0
    n = 0
    pending: list[asyncio.Future[int]] = []
    while written < events:
        n += 1
        for record in order_events(n, 1_700_000_000_000_000_000 + n):
            if written == events:
                break
            await journal.wait_for_room()
            pending.append(journal.append(record))
            written += 1
            if written <= snapshot_at:
                book.apply(written, record)
            if written == snapshot_at:
                await journal.flush()
                await journal.write_snapshot(SNAPSHOT_KIND, book.encode(), snapshot_at)
        if len(pending) > 50_000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    await journal.close()
    return {
        "events": events,
        "orders": n,
        "snapshot_seq": snapshot_at,
        "tail": events - snapshot_at,
        "file_mb": round(await asyncio.to_thread(lambda: path.stat().st_size) / 1e6, 1),
        "build_s": round(time.perf_counter() - started, 1),
    }


async def ready(path: Path) -> tuple[float, int]:
    gc.collect()
    started = time.perf_counter()
    journal = await Journal.open(path, LiveClock())
    book, _, replayed = await rebuild(journal)
    elapsed = time.perf_counter() - started
    await journal.close()
    assert book.last_seq == journal.last_seq
    return elapsed, replayed


async def full_replay(path: Path) -> float:
    gc.collect()
    started = time.perf_counter()
    journal = await Journal.open(path, LiveClock())
    book = Book()
    async for entry in journal.read():
        book.apply(entry.seq, entry.record)
    elapsed = time.perf_counter() - started
    await journal.close()
    return elapsed


async def run(events: int, snapshot_every: int, repeats: int, folder: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / "restart.db"
        shape = await build(path, events, snapshot_every)
        readies = [await ready(path) for _ in range(repeats)]
        fulls = [await full_replay(path) for _ in range(repeats)]
    ready_s = sorted(r for r, _ in readies)[len(readies) // 2]
    return {
        **shape,
        "snapshot_every": snapshot_every,
        "repeats": repeats,
        "ready_s": round(ready_s, 3),
        "ready_runs_s": [round(r, 3) for r, _ in readies],
        "full_replay_s": round(sorted(fulls)[len(fulls) // 2], 3),
        "full_replay_runs_s": [round(f, 3) for f in fulls],
        "goal_ready_s": GOAL_READY_S,
    }


def render(result: dict[str, Any]) -> str:
    verdict = "meets" if result["ready_s"] <= GOAL_READY_S else "MISSES"
    return "\n".join(
        [
            f"journal: {result['events']:,} events ({result['orders']:,} orders and fills), {result['file_mb']} MB, "
            f"snapshot at event {result['snapshot_seq']:,} (tail {result['tail']:,}; snapshot_every "
            f"{result['snapshot_every']:,}); built in {result['build_s']} s",
            f"restart to ready (open + snapshot + tail): {result['ready_s']} s  runs {result['ready_runs_s']}",
            f"full replay from event 1 (no snapshot):   {result['full_replay_s']} s  "
            f"runs {result['full_replay_runs_s']}",
            f"goal: ready <= {GOAL_READY_S:g} s: {verdict}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--snapshot-every", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the temporary journal goes (a real disk)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.events < 4 or args.snapshot_every < 1 or args.repeats < 1:
        parser.error("--events >= 4, --snapshot-every >= 1 and --repeats >= 1")
    configure_logging(None, "warning")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(run(args.events, args.snapshot_every, args.repeats, args.dir))
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
