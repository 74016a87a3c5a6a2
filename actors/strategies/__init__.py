"""Sample strategies, selectable by name (``--strategy NAME``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from actors.strategies.base import Strategy
from actors.strategies.ema_cross import EmaCross
from actors.strategies.ema_watch import EmaWatch
from actors.strategies.fat_finger import FatFinger

StrategyFactory = Callable[[str, Mapping[str, Any]], Strategy]

STRATEGIES: Final[dict[str, StrategyFactory]] = {
    "ema-cross": EmaCross.from_params,
    "ema-watch": EmaWatch.from_params,
    "fat-finger": FatFinger.from_params,
}
