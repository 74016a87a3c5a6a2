"""Fault kinds, the scenarios that bundle them, and the seeded schedule of one chaos run.

A run's whole fault schedule is drawn from ``random.Random(f"chaos:{seed}:{scenario}")``
before anything starts, so ``kestrel chaos --seed N --scenario S`` replays the same
schedule (the same faults, at the same offsets, with the same parameters). What the
engine does in between depends on the machine's timing; the schedule does not.

Where each kind is injected (always at a boundary, never inside the order path):

- the venue simulator, in the chaos process (:mod:`adapters.alpaca_sim` ``Faults``):
  socket drops, stalls, slow responses, HTTP 429/5xx, lost submit replies, market-data
  frames duplicated / dropped / reordered, the primary market-data provider (``iex``)
  going silent while its socket stays up (pricing must fail over to ``sip`` and back),
  order updates duplicated / reordered, late fills after a cancel, trade updates missed
  while a socket is down, a simulator restart;
- the engine process, armed from its environment at start (``KESTREL_FAULTS``,
  :mod:`engine.faults`; ``KESTREL_CRASH_AT``, :mod:`engine.crashpoints`): journal write
  errors and a full disk, wall-clock jumps, ``kill -9`` at a named order-path point;
- process control, from the chaos process: ``kill -9`` at a random moment.
"""

from __future__ import annotations

import enum
import json
import random
from dataclasses import dataclass, field
from typing import Final

__all__ = ["SCENARIOS", "Fault", "FaultKind", "Schedule", "draw_schedule"]


class FaultKind(enum.StrEnum):
    TRADE_STREAM_DROP = "trade_stream_drop"
    FEED_DROP = "feed_drop"
    STREAM_STALL = "stream_stall"
    SLOW_RESPONSES = "slow_responses"
    HTTP_429 = "http_429"
    HTTP_5XX = "http_5xx"
    SUBMIT_REPLY_LOST = "submit_reply_lost"
    MD_DUPLICATE = "md_duplicate"
    MD_GAP = "md_gap"
    MD_REORDER = "md_reorder"
    UPDATE_DUPLICATE = "update_duplicate"
    UPDATE_REORDER = "update_reorder"
    LATE_FILL_AFTER_CANCEL = "late_fill_after_cancel"
    FILLS_WHILE_DISCONNECTED = "fills_while_disconnected"
    SIMULATOR_RESTART = "simulator_restart"
    KILL_9 = "kill_9"
    CRASH_POINT = "crash_point"
    DISK_FULL = "disk_full"
    JOURNAL_IO_ERROR = "journal_io_error"
    CLOCK_JUMP = "clock_jump"
    PROVIDER_SILENT = "provider_silent"


ENGINE_ENV_KINDS: Final = frozenset(
    {FaultKind.CRASH_POINT, FaultKind.DISK_FULL, FaultKind.JOURNAL_IO_ERROR, FaultKind.CLOCK_JUMP}
)
"""Armed in the first engine's environment (they happen inside its process)."""

CRASH_POINTS: Final = (
    "journal.before_commit",
    "order.after_commit_before_send",
    "venue.after_send_before_ack",
    "order.between_partial_fills",
    "recovery.midway",
)

_ALL: Final = tuple(FaultKind)
SCENARIOS: Final[dict[str, tuple[FaultKind, ...]]] = {
    "reconnect-storm": (
        FaultKind.TRADE_STREAM_DROP, FaultKind.FEED_DROP, FaultKind.STREAM_STALL, FaultKind.SIMULATOR_RESTART,
    ),
    "fill-during-disconnect": (
        FaultKind.FILLS_WHILE_DISCONNECTED, FaultKind.TRADE_STREAM_DROP, FaultKind.LATE_FILL_AFTER_CANCEL,
        FaultKind.UPDATE_DUPLICATE, FaultKind.UPDATE_REORDER,
    ),
    "rate-limit-storm": (FaultKind.HTTP_429, FaultKind.HTTP_5XX, FaultKind.SLOW_RESPONSES),
    "ambiguous-submit": (FaultKind.SUBMIT_REPLY_LOST, FaultKind.HTTP_5XX, FaultKind.SLOW_RESPONSES),
    "kill-9": (FaultKind.KILL_9, FaultKind.CRASH_POINT),
    "disk-full": (FaultKind.DISK_FULL, FaultKind.JOURNAL_IO_ERROR),
    "feed-failover": (
        FaultKind.FEED_DROP, FaultKind.MD_GAP, FaultKind.MD_DUPLICATE, FaultKind.MD_REORDER, FaultKind.STREAM_STALL,
        FaultKind.CLOCK_JUMP, FaultKind.PROVIDER_SILENT,
    ),
    "everything": _ALL,
}
"""Scenario name → the fault kinds its schedule draws from."""


@dataclass(frozen=True)
class Fault:
    at_s: float
    """Offset from the first engine's start (engine-environment faults: 0)."""
    kind: FaultKind
    amount: float = 0.0
    """Kind-specific: a count (frames, requests, commits), a duration in seconds, a clock step."""
    point: str = ""
    """A crash point name (``crash_point`` only)."""

    def describe(self) -> str:
        extra = f" {self.point}" if self.point else ""
        return f"{self.at_s:5.1f}s {self.kind.value}({self.amount:g}{extra})"


@dataclass(frozen=True)
class Schedule:
    seed: int
    scenario: str
    duration_s: float
    faults: tuple[Fault, ...] = field(default_factory=tuple)

    @property
    def engine_env(self) -> dict[str, str]:
        """``KESTREL_FAULTS`` / ``KESTREL_CRASH_AT`` for the first engine, from the env-kind faults."""
        env: dict[str, str] = {}
        plan: dict[str, object] = {}
        for fault in self.faults:
            if fault.kind is FaultKind.CRASH_POINT:
                env["KESTREL_CRASH_AT"] = f"{fault.point}:{int(fault.amount)}"
            elif fault.kind in (FaultKind.DISK_FULL, FaultKind.JOURNAL_IO_ERROR):
                plan["journal_error_at_commit"] = int(fault.amount)
                plan["journal_error"] = "disk_full" if fault.kind is FaultKind.DISK_FULL else "io_error"
            elif fault.kind is FaultKind.CLOCK_JUMP:
                plan["clock_jump_s"] = fault.amount
                plan["clock_jump_after_s"] = round(fault.at_s, 3)
        if plan:
            env["KESTREL_FAULTS"] = json.dumps(plan, sort_keys=True)
        return env

    @property
    def timed(self) -> list[Fault]:
        """The faults the chaos process injects itself, in time order."""
        return sorted((f for f in self.faults if f.kind not in ENGINE_ENV_KINDS), key=lambda f: f.at_s)


def _amount(kind: FaultKind, rng: random.Random) -> tuple[float, str]:
    if kind is FaultKind.CRASH_POINT:
        return float(rng.randint(1, 3)), rng.choice(CRASH_POINTS)
    if kind in (FaultKind.DISK_FULL, FaultKind.JOURNAL_IO_ERROR):
        # The Nth group commit fails. A short run commits 10-30 groups: with N up to 60 (as
        # before) two runs in three of the soak's disk-full scenario never reached theirs.
        return float(rng.randint(3, 12)), ""
    if kind is FaultKind.CLOCK_JUMP:
        return float(rng.choice([-1, 1]) * rng.choice([2, 30, 3600])), ""
    if kind in (FaultKind.STREAM_STALL, FaultKind.FILLS_WHILE_DISCONNECTED):
        return round(rng.uniform(0.5, 3.0), 2), ""
    if kind is FaultKind.SLOW_RESPONSES:
        return round(rng.uniform(0.2, 1.5), 2), ""
    if kind is FaultKind.PROVIDER_SILENT:
        # Seconds: longer than the chaos engines' SLA (1.5 s, simulations/engine_config.py), so
        # pricing fails over; short enough that the failback (failback_s after the silence)
        # often happens within the run, not only in the engine that converges after it.
        return round(rng.uniform(2.0, 4.0), 2), ""
    if kind in (FaultKind.HTTP_429, FaultKind.HTTP_5XX):
        return float(rng.randint(1, 6)), ""
    if kind in (FaultKind.MD_DUPLICATE, FaultKind.MD_GAP, FaultKind.MD_REORDER):
        return float(rng.randint(1, 20)), ""
    if kind in (FaultKind.UPDATE_DUPLICATE, FaultKind.UPDATE_REORDER, FaultKind.LATE_FILL_AFTER_CANCEL):
        return float(rng.randint(1, 4)), ""
    return 1.0, ""


def draw_schedule(seed: int, scenario: str, duration_s: float) -> Schedule:
    """The fault schedule of run ``seed`` of ``scenario``: 2-6 faults over ``duration_s``.

    At most one fault per engine-environment kind family (the engine process arms one
    journal fault, one clock jump, one crash point).
    """
    if scenario not in SCENARIOS:
        raise KeyError(scenario)
    kinds = SCENARIOS[scenario]
    rng = random.Random(f"chaos:{seed}:{scenario}")
    faults: list[Fault] = []
    journal_armed = crash_armed = clock_armed = False
    for _ in range(rng.randint(2, 6)):
        kind = rng.choice(kinds)
        if kind in (FaultKind.DISK_FULL, FaultKind.JOURNAL_IO_ERROR):
            if journal_armed:
                continue
            journal_armed = True
        elif kind is FaultKind.CRASH_POINT:
            if crash_armed:
                continue
            crash_armed = True
        elif kind is FaultKind.CLOCK_JUMP:
            if clock_armed:
                continue
            clock_armed = True
        at = round(rng.uniform(1.0, max(1.5, duration_s - 1.0)), 2)
        amount, point = _amount(kind, rng)
        # Armed at start, these have no time of their own (a clock jump's is its delay).
        timeless = kind in ENGINE_ENV_KINDS and kind is not FaultKind.CLOCK_JUMP
        faults.append(Fault(0.0 if timeless else at, kind, amount, point))
    return Schedule(seed, scenario, duration_s, tuple(sorted(faults, key=lambda f: (f.at_s, f.kind.value))))
