"""The audit actor: journals the audit trail published on ``audit``.

Issue 8: every signal (with the features that produced it), risk decision and operator
action is in the journal, linked to its order by correlation ids. The strategy host
publishes a ``SignalRecorded`` for each intent a strategy returns, risk a ``RiskDecision``
for each intent it decides and an ``OperatorActionRecorded`` for each operator command;
this actor appends them to the journal. The order manager stays the only writer of order
records, and the order path never waits for an audit record:

- **Append, don't wait.** Records go through :meth:`engine.journal.Journal.append`: the seq
  is assigned at once, the commit is the journal's group commit, shared with the order
  manager's rows. The actor never waits for a commit, so it keeps up with its mailbox
  and a slow disk never backs up into risk or the strategy host through it.
- **Deferred.** They are appended ``deferred=True``: an audit record starts no commit of
  its own but rides in the next one the order manager starts (within
  :data:`engine.journal.DEFERRED_COMMIT_S` otherwise). Appended just before the
  ``OrderSubmitting`` it explains, it would otherwise take the commit slot and make the
  write-ahead record wait for a second commit: the order path's latency would double.
- **Ordering.** The strategy host publishes a signal right after its intent (so risk, woken
  first, does not wait for this actor), and risk a decision right before the
  ``ApprovedOrder`` it goes with. Either way this actor is woken before the order manager
  (the replay's inline run queue and the loop's ready queue are both FIFO), so the signal
  and the decision take lower seqs than the order's ``OrderSubmitting`` and, deferred, go
  in its transaction (or an earlier one): no order is on disk without them. This is not
  a guarantee across actors: after a restart of this actor, or while it waits for room
  (journal backpressure), an audit record can follow the order records it explains.
  ``kestrel journal show --order`` therefore tells a story in journal (seq) order.
- **Best-effort durable, never silently lost.** A record the journal refuses (failed,
  closed) or whose commit fails is logged as an error with its correlation ids, and
  counted (``failed``). It does not crash the actor: a restart would not bring the
  record back, and a crash loop here would take the trading engine down with the audit
  trail. A failed journal is the order manager's to act on (it halts trading).

Only wired when there is a journal (kestrel/node.py): without one nobody listens on
``audit`` and the records published there cost a construction and a publish each.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any, Final

from engine import topics
from engine.actor import Actor
from engine.journal import Journal, JournalError
from engine.messages import (
    ActorStats,
    AuditRecord,
    OperatorActionRecorded,
    StatsQuery,
)

CAPACITY: Final = 16_384
"""Mailbox size: a burst of intents (a runaway strategy, a flatten) is two records each, and a
full mailbox would make risk wait (backpressure) on the order path; records are never dropped."""


class AuditActor(Actor):
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.counters = {"appended": 0, "committed": 0, "failed": 0}

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.AUDIT)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, AuditRecord):
            await self._append(message)
        elif type(message) is StatsQuery:
            return ActorStats(counters=dict(self.counters))
        else:
            raise TypeError(f"audit actor cannot handle {type(message).__name__}")
        return None

    async def _append(self, record: AuditRecord) -> None:
        journal = self.journal
        try:
            if journal.pending >= journal.max_pending:
                await journal.wait_for_room()
            committed = journal.append(record, deferred=True)
        except JournalError as exc:
            self._failed(record, exc)
            return
        self.counters["appended"] += 1
        committed.add_done_callback(partial(self._committed, record))

    def _committed(self, record: AuditRecord, committed: asyncio.Future[int]) -> None:
        if committed.cancelled():
            # Nobody cancels these futures; and a cancelled one still has its row committed
            # (Journal.append), so there is nothing to report.
            return
        error = committed.exception()
        if error is None:
            self.counters["committed"] += 1
        else:
            self._failed(record, error)

    def _failed(self, record: AuditRecord, error: BaseException) -> None:
        self.counters["failed"] += 1
        ids: dict[str, str] = (
            {"action": record.action.value, "operator": record.operator}
            if isinstance(record, OperatorActionRecorded)
            else {"intent_id": record.intent_id, "strategy": record.strategy}
        )
        self.ctx.log.error(
            "audit_record_not_journaled",
            kind=type(record).__name__,
            error=f"{type(error).__name__}: {error}",
            **ids,
        )
