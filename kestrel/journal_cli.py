"""``kestrel journal show|orders|positions|verify PATH [--json]``: read a journal, never write it.

The journal is opened read-only and without the engine's lock, so these commands work
on the journal of a running engine too (they see what it has committed so far).

- ``show``: the events, one per line (``--json``: a list of objects);
- ``show --order ID``: one order's story, ``ID`` a client order id or an intent id: the
  signal that produced it (with its features), risk's decision, the write-ahead
  ``OrderSubmitting``, the venue's updates and fills, the final state, and the operator
  actions and trading-state changes journaled between its first and last record; in
  journal (seq) order, which is the order things were journaled in (an audit record
  normally precedes the order's records but is not guaranteed to: see actors/audit.py).
  An id the journal does not know is a user error (exit 2);
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
import datetime as dt
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import msgspec

from actors.ledger import ZERO, Ledger
from actors.order_book import SNAPSHOT_KIND, Book, BookOrder, rebuild
from engine.clock import NS_PER_S, LiveClock
from engine.errors import UserError
from engine.journal import Journal, JournalEntry
from engine.messages import (
    CancelRequested,
    Fill,
    Message,
    OperatorActionRecorded,
    OrderAdopted,
    OrderReconciled,
    OrderSubmitting,
    OrderUpdate,
    RiskDecision,
    RunManifest,
    SignalRecorded,
    TradingStateChanged,
)

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
            action.add_argument(
                "--manifest", action="store_true",
                help="the run manifest of every start: code, config hash, data files with hashes, seeds",
            )
            action.add_argument(
                "--order", default=None, metavar="ID",
                help="one order's story: signal, risk decision, order events, operator actions (client order id "
                "or intent id)",
            )


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
    if args.manifest:
        if args.order is not None or args.after or args.limit is not None:
            raise UserError("journal show: --manifest takes no --order, --after or --limit")
        return await _show_manifests(args.path, args.json)
    if args.order is not None:
        if args.after or args.limit is not None:
            raise UserError("journal show: --order shows one order's whole story; it takes no --after or --limit")
        return await _show_order(args.path, args.order, args.json)
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
    keys = (
        "client_order_id", "status", "side", "qty", "symbol", "price", "state", "cash", "reason",
        "action", "approved", "accepted",  # audit records (the rest of them: show --order)
    )
    return " ".join(f"{k}={record[k]}" for k in keys if record.get(k) not in (None, "", {}))


async def _show_manifests(path: Path, as_json: bool) -> int:
    """Every start's :class:`~engine.messages.RunManifest`, oldest first."""
    async with await Journal.open_readonly(path, LiveClock()) as journal:
        entries = await journal.read_kinds(["RunManifest"], 1, journal.last_seq)
    manifests = [(entry.seq, entry.record) for entry in entries if isinstance(entry.record, RunManifest)]
    if as_json:
        _write_json([{"seq": seq, **msgspec.to_builtins(m)} for seq, m in manifests])
        return 0
    if not manifests:
        sys.stdout.write("no run manifest in this journal (written by Kestrel since the manifest was added)\n")
        return 0
    for seq, m in manifests:
        sys.stdout.write(
            f"boot {m.boot} (seq {seq}): {m.mode} run {m.run_id!r}, strategy {m.strategy}\n"
            f"  code     kestrel {m.version}, source {m.source_revision}, Python {m.python} on {m.platform}\n"
            f"  config   sha256 {m.config_sha256}\n"
            f"  seeds    {', '.join(f'{k}={v}' for k, v in sorted(m.seeds.items()))}\n"
            f"  pipeline {m.pipeline_hash or '(no features declared)'}\n"
        )
        for d in m.data_files:
            sys.stdout.write(f"  data     {d.sha256}  {d.bytes:>12,} B  {d.path}\n")
    return 0


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


# ---------------------------------------------------------------- show --order: one order's story

_CONTEXT_KINDS: Final = ("OperatorActionRecorded", "TradingStateChanged")
"""Records that name no order but may have acted on one: shown when journaled during its life."""


def _ids_of(record: Message) -> set[str]:
    """The correlation ids a record carries (the journal's index columns, read off the record)."""
    if isinstance(record, OrderSubmitting | OrderAdopted):
        return {record.order.client_order_id, record.order.intent_id}
    ids: set[str] = set()
    for name in ("client_order_id", "intent_id"):
        value = getattr(record, name, None)
        if isinstance(value, str) and value:
            ids.add(value)
    return ids


async def _order_entries(journal: Journal, wanted: str) -> list[JournalEntry]:
    """Every record correlated with ``wanted``, following the links: an intent id finds the
    ``OrderSubmitting`` that names its client order id, which finds the venue's reports."""
    ids = {wanted}
    while True:
        entries = await journal.read_correlated(ids)
        found = set(ids)
        for entry in entries:
            found |= _ids_of(entry.record)
        if found == ids:
            return entries
        ids = found


async def _show_order(path: Path, wanted: str, as_json: bool) -> int:
    async with await Journal.open_readonly(path, LiveClock()) as journal:
        entries = await _order_entries(journal, wanted)
        if not entries:
            raise UserError(
                f"{path}: no order or intent {wanted!r} in the journal "
                "(give a client order id, as `kestrel journal orders` lists them, or an intent id)"
            )
        mine = {entry.seq for entry in entries}
        context = [
            e for e in await journal.read_kinds(_CONTEXT_KINDS, entries[0].seq, entries[-1].seq) if e.seq not in mine
        ]
    story = sorted([*entries, *context], key=lambda e: e.seq)
    orders, outcome = _outcome(entries)
    audited = (e.record for e in entries)
    intent_ids = sorted(
        {r.intent_id for r in audited if isinstance(r, SignalRecorded | RiskDecision)} | {o.intent_id for o in orders}
    )
    if as_json:
        events = []
        for entry in story:
            record = msgspec.to_builtins(entry.record)
            kind = record.pop("type", type(entry.record).__name__)
            role = "order" if entry.seq in mine else "context"
            events.append({"seq": entry.seq, "ts_ns": entry.ts_ns, "kind": kind, "role": role, "record": record})
        _write_json(
            {
                "id": wanted,
                "intent_ids": intent_ids,
                "client_order_ids": [o.client_order_id for o in orders],
                "orders": [_order_row(o) for o in orders],
                "outcome": outcome,
                "events": events,
            }
        )
        return 0
    out = sys.stdout
    head = ", ".join(f"{o.client_order_id} ({o.strategy} {o.side.value} {o.qty} {o.symbol})" for o in orders)
    out.write(f"order {head or 'none'}; intent {', '.join(intent_ids) or '-'}\n")
    out.write(f"{'seq':>8}  {'journaled (UTC, engine clock)':<30}  {'event':<24}  what\n")
    for entry in story:
        mark = " " if entry.seq in mine else "*"
        out.write(
            f"{entry.seq:>8}  {_utc(entry.ts_ns):<30}  {mark}{type(entry.record).__name__:<23}  "
            f"{_story_line(entry.record, intent_ids)}\n"
        )
    if context:
        out.write("  * journaled while the order was alive; not the order's own record\n")
    out.write(f"final: {outcome}\n")
    return 0


def _outcome(entries: list[JournalEntry]) -> tuple[list[BookOrder], str]:
    """The orders as their records derive them (the book's own rules), and the story's end in words."""
    book = Book()
    decision: RiskDecision | None = None
    signal = False
    for entry in entries:
        book.apply(entry.seq, entry.record)
        if isinstance(entry.record, RiskDecision):
            decision = entry.record
        elif isinstance(entry.record, SignalRecorded):
            signal = True
    orders = sorted(book.orders.values(), key=lambda o: o.sequence)
    if orders:
        return orders, "; ".join(f"{o.client_order_id} {o.status.value}, {o.filled_qty} of {o.qty} filled"
                                 for o in orders)
    if decision is not None and not decision.approved:
        return orders, f"rejected by risk: {decision.reason} ({decision.detail})"
    if decision is not None:
        return orders, "approved by risk, but no order was journaled (the order manager refused it, or stopped)"
    if signal:
        return orders, "no risk decision journaled"
    return orders, "no order journaled"


def _utc(ts_ns: int) -> str:
    seconds, ns = divmod(ts_ns, NS_PER_S)
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%d %H:%M:%S") + f".{ns:09d}"


def _pairs(values: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(values.items()))


def _story_line(record: Message, intent_ids: list[str]) -> str:
    """One record of an order's story, in words."""
    if isinstance(record, SignalRecorded):
        limit = f" @ {record.limit_price}" if record.limit_price is not None else ""
        features = _pairs(record.features) or "(none noted)"
        return (
            f"{record.strategy}: {record.side.value} {record.qty} {record.symbol} {record.order_type.value}{limit} "
            f"on {record.trigger} of {_utc(record.ts_trigger)}; features: {features}"
        )
    if isinstance(record, RiskDecision):
        if record.approved:
            verdict = f"approved at {record.reference_price} (trading {record.trading_state.value})"
        else:
            verdict = f"rejected {record.reason}: {record.detail} (trading {record.trading_state.value})"
        return f"{verdict}; inputs: {_pairs(record.inputs) or '-'}"
    if isinstance(record, OrderSubmitting | OrderAdopted):
        order = record.order
        limit = f" @ {order.limit_price}" if order.limit_price is not None else ""
        how = (
            "adopted from the venue: " + record.reason
            if isinstance(record, OrderAdopted)
            else "write-ahead: journaled before it went to the venue"
        )
        return (
            f"{order.client_order_id}: {order.side.value} {order.qty} {order.symbol} {order.order_type.value}{limit} "
            f"{order.time_in_force.value}; {how}"
        )
    if isinstance(record, CancelRequested):
        why = f" by {record.reason}" if record.reason else ""
        return f"cancel of {record.client_order_id} asked{why}; write-ahead: journaled before it went to the venue"
    if isinstance(record, OrderUpdate):
        why = f" ({record.reason})" if record.reason else ""
        return f"{record.status.value}{why}; venue order {record.venue_order_id or '-'}"
    if isinstance(record, OrderReconciled):
        return f"{record.status.value}, {record.filled_qty} filled: {record.reason}"
    if isinstance(record, Fill):
        return f"{record.side.value} {record.qty} @ {record.price} fee {record.fee}; execution {record.execution_id}"
    if isinstance(record, OperatorActionRecorded):
        verdict = "accepted" if record.accepted else "refused"
        sent = [i for i in record.intents if i in intent_ids]
        tail = f"; sent this order ({', '.join(sent)})" if sent else ""
        return (
            f"operator {record.operator}: {record.action.value} ({record.reason}); {verdict}: {record.result}; "
            f"trading {record.state.value}{tail}"
        )
    if isinstance(record, TradingStateChanged):
        return f"trading {record.state.value} ({record.cause or '-'}): {record.reason}"
    return _brief(msgspec.to_builtins(record))
