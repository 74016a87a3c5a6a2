"""In-engine fault injection for chaos runs (``kestrel chaos``): off unless the environment arms it.

Faults live at the engine's boundaries, where real ones surface, so the engine's own error
handling is what runs. Only the composition root arms them, and only when the chaos-only
environment variable ``KESTREL_FAULTS`` holds a compact JSON object::

    KESTREL_FAULTS='{"journal_error_at_commit": 40, "journal_error": "disk_full"}'
    KESTREL_FAULTS='{"clock_jump_s": 3600, "clock_jump_after_s": 5}'

Keys (every one optional, unknown keys refused; at least one fault must be named):

===========================  ==============================================================
``journal_error_at_commit``  int >= 1. The Nth journal group commit (counted from arming,
                             over every journal the process opens) raises
                             ``sqlite3.OperationalError`` inside the transaction, on the
                             connection's thread, just before ``COMMIT``: the group is rolled
                             back and the journal fails (sticky :class:`JournalWriteFailed`).
``journal_error``            ``"disk_full"`` (default; "database or disk is full",
                             SQLITE_FULL) or ``"io_error"`` ("disk I/O error", SQLITE_IOERR).
                             Needs ``journal_error_at_commit``.
``journal_error_repeat``     bool, default false: every commit from the Nth on fails (the
                             disk stays full), not only the Nth. A :class:`Journal` takes no
                             write after its first failure, so within one journal the two are
                             the same; it differs only for a journal opened later in the same
                             process. Needs ``journal_error_at_commit``.
``clock_jump_s``             number, not 0. :meth:`LiveClock.time_ns` (event wall time) steps
                             by this many seconds (backwards if negative), as an NTP step
                             would. Monotonic time (the loop's timers, ``perf_ns``) and log
                             timestamps are not moved.
``clock_jump_after_s``       number >= 0, default 0: the step happens at the first
                             ``time_ns()`` read this many seconds of monotonic time after
                             arming. Needs ``clock_jump_s``.
===========================  ==============================================================

Each injection is logged once at warning level as ``fault_injected`` with ``kind``
(``journal_error`` or ``clock_jump``) and is counted in :data:`injected`, so a chaos
orchestrator can count them in the engine's JSON log. Unarmed, the journal hook is one
global read and a comparison per group commit, and the clock hook one global read per
``time_ns()`` (the hook lives in :mod:`engine.clock`, set from here).
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from engine import clock
from engine.clock import NS_PER_S, perf_ns
from engine.errors import ConfigError
from engine.logs import get_logger

ENV_VAR: Final = "KESTREL_FAULTS"

JOURNAL_ERRORS: Final = {
    "disk_full": ("database or disk is full", 13, "SQLITE_FULL"),
    "io_error": ("disk I/O error", 10, "SQLITE_IOERR"),
}
"""``journal_error`` kind -> (message, sqlite_errorcode, sqlite_errorname), as SQLite reports them."""

KEYS: Final = (
    "journal_error_at_commit",
    "journal_error",
    "journal_error_repeat",
    "clock_jump_s",
    "clock_jump_after_s",
)


@dataclass(frozen=True, slots=True)
class Faults:
    """What one chaos run injects (see the module docs for each field)."""

    journal_error_at_commit: int | None = None
    journal_error: str = "disk_full"
    journal_error_repeat: bool = False
    clock_jump_s: float | None = None
    clock_jump_after_s: float = 0.0


injected: Counter[str] = Counter()
"""Injections so far, by kind (``journal_error``, ``clock_jump``)."""

_armed: Faults | None = None
_journal_at = 0
"""The commit number that fails (0: no journal fault armed); the hook's one global read."""
_commits = 0
_clock_due_ns = 0
"""When (``perf_ns``, monotonic) the armed clock jump happens."""


def _problem(key: str, message: str) -> ConfigError:
    return ConfigError(ENV_VAR, [(key, message)])


def parse(text: str) -> Faults:
    """``KESTREL_FAULTS``'s JSON object as :class:`Faults`; :class:`ConfigError` naming every problem."""
    try:
        raw = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        raise _problem("", f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(raw, dict):
        raise _problem("", f'expected a JSON object such as {{"journal_error_at_commit": 40}}, got {text!r}')
    problems: list[tuple[str, str]] = []
    for key in raw:
        if key not in KEYS:
            problems.append((key, f"unknown fault key (known: {', '.join(KEYS)})"))

    def number(key: str) -> float | None:
        value = raw.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            problems.append((key, f"expected a number of seconds, got {value!r}"))
            return None
        return float(value)

    at = raw.get("journal_error_at_commit")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int) or at < 1):
        problems.append(("journal_error_at_commit", f"expected a commit number >= 1, got {at!r}"))
        at = None
    kind = raw.get("journal_error", "disk_full")
    if not isinstance(kind, str) or kind not in JOURNAL_ERRORS:
        problems.append(("journal_error", f"expected one of {', '.join(JOURNAL_ERRORS)}, got {kind!r}"))
    repeat = raw.get("journal_error_repeat", False)
    if not isinstance(repeat, bool):
        problems.append(("journal_error_repeat", f"expected true or false, got {repeat!r}"))
    for key in ("journal_error", "journal_error_repeat"):
        if key in raw and "journal_error_at_commit" not in raw:
            problems.append((key, "needs journal_error_at_commit (which commit fails)"))
    jump = number("clock_jump_s")
    if jump == 0:
        problems.append(("clock_jump_s", "a jump of 0 s injects nothing"))
    after = number("clock_jump_after_s")
    if after is not None and after < 0:
        problems.append(("clock_jump_after_s", f"must be >= 0, got {raw['clock_jump_after_s']!r}"))
    if "clock_jump_after_s" in raw and "clock_jump_s" not in raw:
        problems.append(("clock_jump_after_s", "needs clock_jump_s (how far the clock jumps)"))
    if not problems and at is None and jump is None:
        problems.append(("", f"names no fault: set journal_error_at_commit and/or clock_jump_s, got {text!r}"))
    if problems:
        raise ConfigError(ENV_VAR, problems)
    return Faults(
        journal_error_at_commit=at,
        journal_error=str(kind),
        journal_error_repeat=bool(repeat),
        clock_jump_s=jump,
        clock_jump_after_s=after or 0.0,
    )


def arm(faults: Faults) -> None:
    """Arm ``faults`` from now on (commits and monotonic time count from here)."""
    global _armed, _journal_at, _commits, _clock_due_ns
    disarm()
    _armed = faults
    if faults.journal_error_at_commit is not None:
        _journal_at = faults.journal_error_at_commit
    if faults.clock_jump_s is not None:
        _clock_due_ns = perf_ns() + round(faults.clock_jump_after_s * NS_PER_S)
        clock._wall_skew = _clock_skew


def disarm() -> None:
    """No faults; the clock back to true wall time. :data:`injected` is left as it is."""
    global _armed, _journal_at, _commits, _clock_due_ns
    _armed, _journal_at, _commits, _clock_due_ns = None, 0, 0, 0
    clock._wall_skew = None


def armed() -> Faults | None:
    return _armed


def arm_from_env(environ: Mapping[str, str]) -> Faults | None:
    """Arm from ``KESTREL_FAULTS`` if it is set (and not blank); returns what was armed."""
    value = environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    faults = parse(value)
    arm(faults)
    fields = {key: getattr(faults, key) for key in KEYS}
    get_logger(actor="faults").warning("faults_armed", **fields)
    return faults


# ---------------------------------------------------------------- hooks


def journal_commit() -> None:
    """Hook: :func:`engine.journal._write_events` calls it inside each group's transaction, before COMMIT.

    Runs on the journal connection's thread; raises the armed SQLite error at the armed commit.
    """
    global _commits
    if not _journal_at:
        return
    _commits += 1
    faults = _armed
    assert faults is not None
    if _commits < _journal_at or (_commits > _journal_at and not faults.journal_error_repeat):
        return
    message, code, name = JOURNAL_ERRORS[faults.journal_error]
    _injected("journal_error", error=faults.journal_error, commit=_commits, message=message)
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    error.sqlite_errorname = name
    raise error


def _clock_skew() -> int:
    """Hook: :meth:`engine.clock.LiveClock.time_ns` adds this (ns) while a clock jump is armed."""
    faults = _armed
    if faults is None or faults.clock_jump_s is None or perf_ns() < _clock_due_ns:
        return 0
    offset = round(faults.clock_jump_s * NS_PER_S)
    clock._wall_skew = lambda: offset  # jumped: a constant from now on
    _injected("clock_jump", offset_s=faults.clock_jump_s, after_s=faults.clock_jump_after_s)
    return offset


def _injected(kind: str, **fields: object) -> None:
    injected[kind] += 1
    get_logger(actor="faults").warning("fault_injected", kind=kind, **fields)
