"""``kestrel journal show|orders|positions|verify PATH [--json]``: read a journal, never write it.

The journal is opened read-only and without the engine's lock, so these commands work
on the journal of a running engine too (they see what it has committed so far).

- ``show``: the events, one per line (``--json``: a list of objects);
- ``orders``: every order as the journal derives it (client order id, venue order id,
  status, filled quantity, ...);
- ``positions``: what the settlement ledger derives from the journal's baseline and fills:
  per symbol the quantity, average cost and realised P&L (net of fees), then cash, fees
  and total realised P&L (``--json``: ``positions``, ``cash``, ``fees``, ``realized_pnl``,
  ``fills`` and ``symbols``, every symbol ever traded);
- ``verify``: re-derive the book from the first event, check the sequence is gap-free,
  that no execution is booked twice and no client order id issued twice, and that the
  newest snapshot equals the book re-derived up to it. Exit 0 when all holds, 1 if not.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from actors.ledger import ZERO, Ledger
from actors.order_book import SNAPSHOT_KIND, Book, BookOrder, rebuild
from engine.clock import LiveClock
from engine.journal import Journal
from engine.messages import Fill, OrderAdopted, OrderSubmitting

EXIT_VERIFY_FAILED: Final = 1


def add_parser(commands: Any) -> None:
    journal = commands.add_parser("journal", help="inspect or verify a write-ahead order journal (read-only)")
    actions = journal.add_subparsers(dest="journal_command", metavar="ACTION", required=True)
    for name, text in (
        ("show", "the journal's events"),
        ("orders", "orders as the journal derives them"),
        ("positions", "positions and cash as the journal derives them"),
        ("verify", "re-derive the book from every event and check it against the newest snapshot"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("path", type=Path, metavar="PATH")
        action.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "show":
            action.add_argument("--after", type=int, default=0, metavar="SEQ", help="only events after SEQ")
            action.add_argument("--limit", type=int, default=None, metavar="N", help="at most N events")


def cmd_journal(args: argparse.Namespace) -> int:
    actions: dict[str, Callable[[argparse.Namespace], Any]] = {
        "show": _show,
        "orders": _orders,
        "positions": _positions,
        "verify": _verify,
    }
    code: int = asyncio.run(actions[args.journal_command](args))
    return code


def _write_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


async def _derive(journal: Journal) -> Book:
    """The book as of the last committed event: the newest snapshot plus what follows it."""
    book, _, _ = await rebuild(journal)
    return book


async def _show(args: argparse.Namespace) -> int:
    async with await Journal.open_readonly(args.path, LiveClock()) as journal:
        events: list[dict[str, Any]] = []
        count = 0
        async for entry in journal.read(after_seq=args.after):
            if args.limit is not None and count >= args.limit:
                break
            count += 1
            record = msgspec.to_builtins(entry.record)
            kind = record.pop("type", type(entry.record).__name__)
            if args.json:
                events.append({"seq": entry.seq, "ts_ns": entry.ts_ns, "kind": kind, "record": record})
            else:
                sys.stdout.write(f"{entry.seq:>8}  {entry.ts_ns}  {kind:<20} {_brief(record)}\n")
        if args.json:
            _write_json(events)
    return 0


def _brief(record: dict[str, Any]) -> str:
    order = record.get("order")
    if isinstance(order, dict):
        record = {**order, **{k: v for k, v in record.items() if k != "order"}}
    keys = ("client_order_id", "status", "side", "qty", "symbol", "price", "state", "cash", "reason")
    return " ".join(f"{k}={record[k]}" for k in keys if record.get(k) not in (None, "", {}))


def _order_row(order: BookOrder) -> dict[str, Any]:
    return {
        "client_order_id": order.client_order_id,
        "venue_order_id": order.venue_order_id,
        "status": order.status.value,
        "filled_qty": str(order.filled_qty),
        "qty": str(order.qty),
        "symbol": order.symbol,
        "side": order.side.value,
        "order_type": order.order_type.value,
        "limit_price": str(order.limit_price) if order.limit_price is not None else None,
        "intent_id": order.intent_id,
        "strategy": order.strategy,
    }


async def _orders(args: argparse.Namespace) -> int:
    async with await Journal.open_readonly(args.path, LiveClock()) as journal:
        book = await _derive(journal)
    rows = [_order_row(o) for o in sorted(book.orders.values(), key=lambda o: o.sequence)]
    if args.json:
        _write_json(rows)
        return 0
    sys.stdout.write(f"{'client order id':<24}{'venue order id':<38}{'status':<18}{'filled':>10}{'qty':>10}  symbol\n")
    for row in rows:
        sys.stdout.write(
            f"{row['client_order_id']:<24}{row['venue_order_id'] or '-':<38}{row['status']:<18}"
            f"{row['filled_qty']:>10}{row['qty']:>10}  {row['symbol']} {row['side']}\n"
        )
    return 0


def _ledger(book: Book) -> Ledger:
    """The settlement ledger re-derived from the journal: the baseline, then every fill in order.

    Without a baseline the fills count from the cash the book started with (what its cash
    is less their effects), so the ledger's cash is the book's.
    """
    if book.baseline is not None:
        ledger = Ledger(book.baseline.cash)
        ledger.set_baseline(book.baseline.cash, book.baseline.positions)
    else:
        ledger = Ledger(book.cash + sum((f.qty * f.side.sign * f.price + f.fee for f in book.fills), ZERO))
    for fill in book.fills:
        ledger.apply(fill)
    return ledger


async def _positions(args: argparse.Namespace) -> int:
    async with await Journal.open_readonly(args.path, LiveClock()) as journal:
        book = await _derive(journal)
    ledger = _ledger(book)
    positions = {symbol: str(qty) for symbol, qty in ledger.quantities().items()}
    symbols = {
        symbol: {
            "qty": str(p.qty),
            "avg_price": str(p.avg_price),
            "realized_pnl": str(p.realized_pnl),
            "fees": str(p.fees),
        }
        for symbol, p in sorted(ledger.positions.items())
    }
    if args.json:
        _write_json(
            {
                "positions": positions,
                "cash": str(ledger.cash),
                "fees": str(ledger.fees),
                "realized_pnl": str(ledger.realized_pnl),
                "fills": ledger.fills,
                "symbols": symbols,
            }
        )
        return 0
    sys.stdout.write(f"{'symbol':<10}{'qty':>14}{'avg cost':>18}{'realised P&L':>18}\n")
    for symbol, row in symbols.items():
        sys.stdout.write(f"{symbol:<10}{row['qty']:>14}{row['avg_price']:>18}{row['realized_pnl']:>18}\n")
    sys.stdout.write(f"{'cash':<10}{ledger.cash!s:>14}\n")
    sys.stdout.write(f"{'fees':<10}{ledger.fees!s:>14}\n")
    sys.stdout.write(f"{'realised':<10}{ledger.realized_pnl!s:>14}  (net of fees, {ledger.fills} fills)\n")
    return 0


async def _verify(args: argparse.Namespace) -> int:
    problems: list[str] = []
    async with await Journal.open_readonly(args.path, LiveClock()) as journal:
        snapshot = await journal.latest_snapshot(SNAPSHOT_KIND)
        book = Book()
        expected_seq = 1
        events = 0
        issued: set[str] = set()
        executions: set[tuple[str, str]] = set()
        checked_snapshot = False
        async for entry in journal.read():
            if entry.seq != expected_seq:
                problems.append(f"sequence gap: expected event {expected_seq}, found {entry.seq}")
            expected_seq = entry.seq + 1
            record = entry.record
            if isinstance(record, OrderSubmitting | OrderAdopted):
                cid = record.order.client_order_id
                if cid in issued:
                    problems.append(f"event {entry.seq}: client order id {cid} issued twice")
                issued.add(cid)
            elif isinstance(record, Fill):
                key = (record.client_order_id, record.execution_id)
                if key in executions:
                    problems.append(f"event {entry.seq}: execution {key[1]} booked twice")
                executions.add(key)
                if record.client_order_id not in book.orders:
                    problems.append(f"event {entry.seq}: fill for unknown order {record.client_order_id}")
            book.apply(entry.seq, record)
            events += 1
            if snapshot is not None and entry.seq == snapshot.seq:
                checked_snapshot = True
                if Book.decode(snapshot.payload) != book:
                    problems.append(f"snapshot at event {snapshot.seq} differs from the book re-derived from events")
        if snapshot is not None and not checked_snapshot and snapshot.seq != 0:
            problems.append(f"snapshot at event {snapshot.seq} is beyond the last event {expected_seq - 1}")
    result = {
        "ok": not problems,
        "events": events,
        "orders": len(book.orders),
        "fills": len(executions),
        "snapshot_seq": snapshot.seq if snapshot is not None else None,
        "problems": problems,
    }
    if args.json:
        _write_json(result)
    else:
        verdict = "OK" if not problems else f"FAILED ({len(problems)} problems)"
        sys.stdout.write(
            f"journal {args.path}: {verdict}: {events} events, {len(book.orders)} orders, {len(executions)} fills"
            + (f", snapshot at event {snapshot.seq} matches" if snapshot is not None and not problems else "")
            + "\n"
        )
        for problem in problems:
            sys.stdout.write(f"  {problem}\n")
    return 0 if not problems else EXIT_VERIFY_FAILED
