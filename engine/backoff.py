"""Retry delays with jitter, drawn from a seeded generator (so chaos runs reproduce).

- :class:`DecorrelatedJitter` for reconnect loops: the first retry is immediate, then
  ``delay = min(cap, uniform(base, 3 × previous))`` (the "decorrelated jitter" of the
  AWS architecture blog), which spreads a crowd of clients out quickly without the
  lock-step of plain exponential backoff.
- :func:`full_jitter` for retrying idempotent requests: ``uniform(0, min(cap, base × 2^n))``.
"""

from __future__ import annotations

import random


class DecorrelatedJitter:
    """Delays for successive reconnect attempts; :meth:`reset` after a success."""

    def __init__(self, base_s: float, cap_s: float, rng: random.Random, immediate_first: bool = True) -> None:
        if not 0 < base_s <= cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s}, cap_s={cap_s}")
        self.base_s = base_s
        self.cap_s = cap_s
        self.immediate_first = immediate_first
        self._rng = rng
        self._previous = 0.0
        self.attempts = 0

    def next_delay(self) -> float:
        self.attempts += 1
        if self.attempts == 1 and self.immediate_first:
            return 0.0
        previous = self._previous or self.base_s
        delay = min(self.cap_s, self._rng.uniform(self.base_s, previous * 3))
        self._previous = delay
        return delay

    def reset(self) -> None:
        self._previous = 0.0
        self.attempts = 0


def full_jitter(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Delay before retry number ``attempt`` (0-based) of an idempotent request."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    return rng.uniform(0.0, min(cap_s, base_s * (2 ** min(attempt, 30))))
