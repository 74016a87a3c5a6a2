"""Shared test helpers: synthetic recordings in the LEAN tick format."""

from __future__ import annotations

import math
import os
import random
from pathlib import Path

from simulations.lean_feed import write_lean_zip

__all__ = ["random_walk_day", "write_lean_zip"]


def random_walk_day(
    folder: Path, symbol: str = "test", date: str = "20240102", quotes: int = 2000, seed: int = 1
) -> list[Path]:
    """A day of national quote pairs (bid row + ask row) following a seeded random walk, plus trades."""
    rng = random.Random(seed)
    mid = 1_000_000  # $100.0000
    quote_rows: list[tuple[object, ...]] = []
    trade_rows: list[tuple[object, ...]] = []
    ms = 34_200_000  # 09:30
    for i in range(quotes):
        mid += int(rng.gauss(0, 1) * 500) + int(300 * math.sin(i / 50))
        half = 100 * rng.randint(1, 3)
        bid, ask = mid - half, mid + half
        quote_rows.append((ms, bid, rng.randint(1, 9) * 100, 0, 0, "P", 1, 0))
        quote_rows.append((ms, 0, 0, ask, rng.randint(1, 9) * 100, "N", 1, 0))
        if i % 10 == 0:
            trade_rows.append((ms, mid, 100, "D", 0, 0))
        ms += 100
    day = folder / symbol
    return [
        write_lean_zip(day / f"{date}_quote.zip", quote_rows),
        write_lean_zip(day / f"{date}_trade.zip", trade_rows),
    ]


def shared_data() -> Path:
    """The workplace's recordings (``../shared/data`` of the checkout; ``$KESTREL_SHARED_DATA``
    or ``/work/shared/data`` when the checkout lives elsewhere, as CI's clean clone may)."""
    override = os.environ.get("KESTREL_SHARED_DATA")
    candidates = [Path(override)] if override else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data")]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]

