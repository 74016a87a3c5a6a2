"""A seeded random-walk quote stream: the workload of the peer benchmark.

One symbol, one quote every 100 ms, the mid moving by whole ticks. The same ``(n, seed)``
gives the same quotes everywhere, which is what lets Kestrel and NautilusTrader be fed
identical input. This module depends on numpy only (no Kestrel imports), so the
benchmark's NautilusTrader side, which runs in its own virtualenv, loads it by path.

Prices and sizes are integers here (cents and shares); each consumer turns them into
its own exact types (``Decimal`` for Kestrel, ``Price``/``Quantity`` for Nautilus).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

SYMBOL: Final = "SYNTH"
"""Not a listed equity: trades around the clock (no exchange calendar applies)."""
START_NS: Final = 1_704_205_800_000_000_000
"""2024-01-02 14:30:00 UTC (09:30 New York), the first quote's timestamp."""
STEP_NS: Final = 100_000_000
"""100 ms between quotes."""
START_MID_CENTS: Final = 10_000
"""The walk starts at $100.00."""
PRICE_INCREMENT: Final = "0.01"
"""One tick: prices are cents."""


@dataclass(frozen=True)
class SyntheticQuotes:
    """``n`` quotes as parallel arrays (int64): time, bid/ask in cents, bid/ask sizes."""

    ts_ns: npt.NDArray[np.int64]
    bid_cents: npt.NDArray[np.int64]
    ask_cents: npt.NDArray[np.int64]
    bid_size: npt.NDArray[np.int64]
    ask_size: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])


def random_walk_quotes(n: int, seed: int) -> SyntheticQuotes:
    """``n`` quotes of a seeded random walk: the mid moves -1, 0 or +1 cent per quote.

    The spread is 1 or 2 cents, sizes are 1–10 round lots; the mid never goes below $1.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    steps = rng.integers(-1, 2, size=n, dtype=np.int64)
    mid2 = 2 * START_MID_CENTS + 2 * np.cumsum(steps)  # twice the mid, in cents: stays an integer
    mid2 = np.maximum(mid2, 200)
    spread = rng.integers(1, 3, size=n, dtype=np.int64)
    bid = (mid2 - spread) // 2
    ask = bid + spread
    bid_size = rng.integers(1, 11, size=n, dtype=np.int64) * 100
    ask_size = rng.integers(1, 11, size=n, dtype=np.int64) * 100
    ts = START_NS + STEP_NS * np.arange(n, dtype=np.int64)
    return SyntheticQuotes(ts_ns=ts, bid_cents=bid, ask_cents=ask, bid_size=bid_size, ask_size=ask_size)
