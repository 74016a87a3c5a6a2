"""LEAN tick files for the venue simulator to replay: a writer and a seeded test session.

The crash tests and ``kestrel chaos`` both run the simulator on :func:`chaos_session`,
a made-up IBM-like day built to make an engine trade steadily without being slow.
"""

from __future__ import annotations

import math
import random
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["chaos_session", "write_lean_zip"]


def write_lean_zip(path: Path, rows: Iterable[Sequence[object]]) -> Path:
    """Write one LEAN tick zip (one header-less CSV inside) at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(",".join(str(v) for v in row) + "\n" for row in rows)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(path.stem + ".csv", text)
    return path


def chaos_session(folder: Path, seed: int, quotes: int = 4000) -> list[Path]:
    """A seeded IBM-like session in the LEAN tick format, for the simulator to replay.

    Why not the bundled IBM day: it starts at 04:00 with a pre-market whose quotes come in
    bursts with long gaps, so how long an engine waits for its next trade depends on where
    in the day the replay is. This one has what crash and chaos runs need and nothing that
    makes them slow or flaky:

    - quotes every 100 ms of market time, in bursts of 2 s separated by 1.5 s of silence:
      a restart may recover before the first quote arrives, as in a quiet market, so the
      fills recovery books can reach a strategy that has not seen the symbol yet;
    - sizes 100-900 shares, so a 500-share market order often fills in several pieces;
    - prices around $180 on a $100,000 account: 500 shares fit, 1,000 do not, so an engine
      that forgets a position it holds and buys again is refused and stops trading.
    """
    rng = random.Random(seed)
    mid = 1_800_000  # $180.0000 (LEAN prices are dollars x 10,000)
    quote_rows: list[tuple[object, ...]] = []
    trade_rows: list[tuple[object, ...]] = []
    ms = 34_200_000  # 09:30 New York
    for i in range(quotes):
        mid += int(rng.gauss(0, 1) * 500) + int(300 * math.sin(i / 50))
        half = 100 * rng.randint(1, 3)
        quote_rows.append((ms, mid - half, rng.randint(1, 9) * 100, 0, 0, "P", 1, 0))
        quote_rows.append((ms, 0, 0, mid + half, rng.randint(1, 9) * 100, "N", 1, 0))
        if i % 10 == 0:
            trade_rows.append((ms, mid, 100, "D", 0, 0))
        ms += 1_600 if i % 20 == 19 else 100
    day = folder / "ibm"
    return [
        write_lean_zip(day / "20240102_quote.zip", quote_rows),
        write_lean_zip(day / "20240102_trade.zip", trade_rows),
    ]
