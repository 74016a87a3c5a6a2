"""Named points where a crash test can kill the process (``SIGKILL``, as ``kill -9`` would).

The order path calls :func:`hit` at each moment where a crash would leave the most
interesting state behind (before a journal commit, between the commit and the send, ...).
Unarmed, :func:`hit` is one global read and a comparison. Only the composition root arms
a point, and only when the test-only environment variable ``KESTREL_CRASH_AT`` is set::

    KESTREL_CRASH_AT=order.after_commit_before_send      # die at the first hit
    KESTREL_CRASH_AT=order.after_commit_before_send:3    # die at the third hit

Known points (the crash tests kill at each):

=================================  ===================================================
``journal.before_commit``          rows written, transaction not committed
``journal.during_snapshot``        snapshot row written, transaction not committed
``order.after_commit_before_send`` ``OrderSubmitting`` durable, venue not yet asked
``cancel.after_commit_before_send`` ``CancelRequested`` durable, the cancel not yet sent
``venue.after_send_before_ack``    the venue accepted the order, we have not seen it
``order.between_partial_fills``    a partial fill journaled, the order still working
``recovery.midway``                recovery has rebuilt from the journal, venue not yet reconciled
=================================  ===================================================
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Final

from engine.errors import ConfigError

ENV_VAR: Final = "KESTREL_CRASH_AT"
POINTS: Final = frozenset(
    {
        "journal.before_commit",
        "journal.during_snapshot",
        "order.after_commit_before_send",
        "cancel.after_commit_before_send",
        "venue.after_send_before_ack",
        "order.between_partial_fills",
        "recovery.midway",
    }
)

_armed: str | None = None
_remaining = 0


def arm(point: str, nth: int = 1) -> None:
    """Kill the process at the ``nth`` hit of ``point``."""
    global _armed, _remaining
    if point not in POINTS:
        raise ConfigError(ENV_VAR, [("", f"unknown crash point {point!r} (known: {', '.join(sorted(POINTS))})")])
    if nth < 1:
        raise ConfigError(ENV_VAR, [("", f"the hit count must be >= 1, got {nth}")])
    _armed, _remaining = point, nth


def disarm() -> None:
    global _armed, _remaining
    _armed, _remaining = None, 0


def arm_from_env(environ: Mapping[str, str]) -> str | None:
    """Arm from ``KESTREL_CRASH_AT`` (``point`` or ``point:n``); returns the point, if any."""
    value = environ.get(ENV_VAR, "").strip()
    if not value:
        return None
    point, _, count = value.partition(":")
    try:
        nth = int(count) if count else 1
    except ValueError:
        raise ConfigError(ENV_VAR, [("", f"expected POINT or POINT:N, got {value!r}")]) from None
    arm(point, nth)
    return point


def hit(point: str) -> None:
    """Die here if this point is armed and its count is reached; otherwise do nothing."""
    global _remaining
    if _armed != point:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
