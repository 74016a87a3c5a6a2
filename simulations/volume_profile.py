"""Volume profiles from LEAN trade recordings, for :class:`actors.execution.vwap.VWAPSchedule`.

The profile itself is pure (:meth:`actors.execution.vwap.VolumeProfile.from_trades`): the
file reading lives here because ``actors`` may not import ``adapters``. The trades stream
from :func:`adapters.lean_ticks.read_events` a file at a time, so a week of a busy symbol
is never held in memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from actors.execution.vwap import VolumeProfile
from adapters.lean_ticks import read_events
from engine.messages import TradeTick

SHARED_TICKS: Final = Path("/work/shared/data/us-equity-ticks")
"""Where the team's shared LEAN recordings live (one folder per symbol, lower case)."""


def trade_files(root: Path, symbol: str, days: Sequence[str] | None = None) -> list[Path]:
    """``<root>/<symbol>/<YYYYMMDD>_trade.zip`` for ``days`` (every recorded day if ``None``), in date order."""
    folder = root / symbol.lower()
    if days is None:
        return sorted(folder.glob("*_trade.zip"))
    return [folder / f"{day}_trade.zip" for day in days]


def read_trades(paths: Sequence[Path], symbol: str | None = None) -> Iterator[TradeTick]:
    """The trades of ``paths``, a file at a time (a bad row raises, naming the file and line)."""
    for path in paths:
        for tick in read_events([path], symbol):
            if isinstance(tick, TradeTick):
                yield tick


def volume_profile(root: Path, symbol: str, days: Sequence[str] | None = None, **options: Any) -> VolumeProfile:
    """The average intraday volume profile of ``symbol``'s recorded days under ``root``.

    ``options`` go to :meth:`VolumeProfile.from_trades` (``bucket_minutes``, ``session_open`` …).
    Raises ``FileNotFoundError`` when there is no recording to read.
    """
    paths = trade_files(root, symbol, days)
    missing = [p for p in paths if not p.is_file()]
    if not paths or missing:
        raise FileNotFoundError(f"no trade recording for {symbol} under {root}: {missing or 'no files'}")
    return VolumeProfile.from_trades(read_trades(paths, symbol.upper()), **options)
