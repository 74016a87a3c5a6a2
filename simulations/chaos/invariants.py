"""What must hold after every chaos run, checked from the journal and the simulator's state.

Each check returns :class:`Violation` values (never raises for a broken invariant), so a
campaign reports every invariant a seed broke, not just the first:

``one_venue_order_per_intent``
    at most one venue order per client order id and per intent; every venue order with
    our prefix is in the journal (nothing reached the venue before its journal record).
``fills_recorded_once``
    no execution booked twice; per order, the journal's fills add up to what the venue
    filled, and the journal's status is the venue's.
``books_agree``
    positions equal the venue's; cash within a cent (recovery prices a fill it missed at
    the venue's rounded average price).
``no_order_while_halted``
    no order was journaled for sending while the journal's trading state was ``halted``
    (or recovering), nor while ``reducing`` unless it reduced the position.
``no_order_while_stream_down``
    the venue accepted none of our orders while no client was listening to trade updates,
    except within :data:`STREAM_DOWN_GRACE_S` of the drop (a submit already on the wire
    when the socket went). A stalled, half-open stream still counts as listening: no client
    can tell it apart from a quiet one until its heartbeat times out.
``risk_limits_held``
    no order journaled above the configured quantity cap.
``restarts_within_budget``
    no engine process gave up (its supervisor's restart budget) or exited other than by
    the run's own kill, crash point or stop.
``converged``
    once faults stopped, an engine recovered, reconciled and traded again within the bound.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Final

import msgspec

from actors.order_book import Book
from adapters.alpaca_sim.state import VenueState
from engine.clock import LiveClock
from engine.journal import Journal
from engine.messages import (
    Fill,
    OrderAdopted,
    OrderSubmitting,
    Side,
    TradingState,
    TradingStateChanged,
)

__all__ = ["CASH_TOLERANCE", "STREAM_DOWN_GRACE_S", "JournalFacts", "Violation", "check_books", "read_journal"]

CASH_TOLERANCE: Final = Decimal("0.01")
STREAM_DOWN_GRACE_S: Final = 1.0
"""A submit the engine sent just before the stream dropped may land this much after it."""

_FINAL_STATUSES: Final = frozenset({"filled", "canceled", "expired", "rejected"})
"""Venue statuses the journal must show too once the venue is done with an order."""


class Violation(msgspec.Struct, frozen=True):
    invariant: str
    detail: str


class JournalFacts(msgspec.Struct, kw_only=True):
    """What the checks need from one journal, read once after the run."""

    book: Book
    submitted: list[OrderSubmitting]
    adopted: list[str]
    fills: list[Fill]
    sent_while: list[tuple[str, OrderSubmitting, Decimal]]
    """(trading state in force, the order, the position before it) for every order journaled."""


async def read_journal(path: Path) -> JournalFacts:
    """Replay the whole journal (read-only) into a book, collecting the facts on the way."""
    book = Book()
    submitted: list[OrderSubmitting] = []
    adopted: list[str] = []
    fills: list[Fill] = []
    sent_while: list[tuple[str, OrderSubmitting, Decimal]] = []
    state = TradingState.ACTIVE.value
    async with await Journal.open_readonly(path, LiveClock()) as journal:
        async for entry in journal.read():
            record = entry.record
            if isinstance(record, TradingStateChanged):
                state = record.state.value
            elif isinstance(record, OrderSubmitting):
                submitted.append(record)
                sent_while.append((state, record, book.positions.get(record.order.symbol, Decimal(0))))
            elif isinstance(record, OrderAdopted):
                adopted.append(record.order.client_order_id)
            elif isinstance(record, Fill):
                fills.append(record)
            book.apply(entry.seq, record)
    return JournalFacts(book=book, submitted=submitted, adopted=adopted, fills=fills, sent_while=sent_while)


def check_books(facts: JournalFacts, venue: VenueState, prefix: str, max_order_qty: Decimal) -> list[Violation]:
    """Every invariant the journal and the venue can show (the process ones are the runner's)."""
    found: list[Violation] = []
    ours = [o for o in venue.orders.values() if o.client_order_id.startswith(prefix)]

    # one_venue_order_per_intent
    per_client = Counter(o.client_order_id for o in ours)
    for cid, n in per_client.items():
        if n > 1:
            found.append(Violation("one_venue_order_per_intent", f"{n} venue orders for client order id {cid}"))
    per_intent: defaultdict[str, set[str]] = defaultdict(set)
    for record in facts.submitted:
        per_intent[record.order.intent_id].add(record.order.client_order_id)
    for intent, cids in sorted(per_intent.items()):
        if len(cids) > 1:
            found.append(
                Violation("one_venue_order_per_intent", f"intent {intent} under client order ids {sorted(cids)}")
            )
    journaled = {r.order.client_order_id for r in facts.submitted}
    for cid in sorted(set(per_client) - journaled):
        found.append(Violation("one_venue_order_per_intent", f"venue order {cid} was never journaled for sending"))
    for cid in facts.adopted:
        found.append(Violation("one_venue_order_per_intent", f"recovery adopted {cid}: sent before journaled"))

    # no_order_while_stream_down: the venue accepted nothing of ours while no trade-updates
    # stream was listening, beyond an order already in flight when the socket dropped.
    for cid, down_s in sorted(venue.accepted_without_stream.items()):
        if cid.startswith(prefix) and down_s > STREAM_DOWN_GRACE_S:
            found.append(
                Violation(
                    "no_order_while_stream_down",
                    f"venue accepted {cid} {down_s:.2f} s after the last trade-updates listener went away",
                )
            )

    # fills_recorded_once
    executions = Counter(f.execution_id for f in facts.fills)
    for execution_id, n in executions.items():
        if n > 1:
            found.append(Violation("fills_recorded_once", f"execution {execution_id} booked {n} times"))
    journal_filled: defaultdict[str, Decimal] = defaultdict(Decimal)
    for fill in facts.fills:
        journal_filled[fill.client_order_id] += fill.qty
    for order in ours:
        mine = facts.book.orders.get(order.client_order_id)
        if mine is None:
            continue  # reported above
        if journal_filled[order.client_order_id] != order.filled_qty or mine.filled_qty != order.filled_qty:
            found.append(
                Violation(
                    "fills_recorded_once",
                    f"{order.client_order_id}: venue filled {order.filled_qty} ({order.status}), journal "
                    f"{mine.filled_qty} ({mine.status.value}), Σ journal fills {journal_filled[order.client_order_id]}",
                )
            )
        if order.status in _FINAL_STATUSES and mine.status.value != order.status:
            found.append(
                Violation(
                    "fills_recorded_once", f"{order.client_order_id}: venue {order.status}, journal {mine.status.value}"
                )
            )

    # books_agree
    venue_positions = {s: venue.position_qty(s) for s in venue.assets if venue.position_qty(s)}
    journal_positions = {s: q for s, q in facts.book.positions.items() if q}
    if venue_positions != journal_positions:
        found.append(Violation("books_agree", f"positions: journal {journal_positions}, venue {venue_positions}"))
    if abs(facts.book.cash - venue.cash) > CASH_TOLERANCE:
        found.append(Violation("books_agree", f"cash: journal {facts.book.cash}, venue {venue.cash}"))

    # no_order_while_halted, risk_limits_held
    for state, record, position in facts.sent_while:
        sent = record.order
        if state in (TradingState.HALTED.value, TradingState.RECOVERING.value):
            found.append(Violation("no_order_while_halted", f"{sent.client_order_id} journaled while {state}"))
        elif state == TradingState.REDUCING.value:
            signed = sent.qty if sent.side is Side.BUY else -sent.qty
            if not (position and (position > 0) != (signed > 0) and abs(signed) <= abs(position)):
                found.append(
                    Violation("no_order_while_halted", f"{sent.client_order_id} adds exposure while reducing")
                )
        if sent.qty > max_order_qty:
            found.append(
                Violation("risk_limits_held", f"{sent.client_order_id}: qty {sent.qty} > cap {max_order_qty}")
            )
    return found
