"""Sample strategies, selectable by name (``--strategy NAME`` or ``[strategy] name``).

- ``ema-cross`` (:mod:`~actors.strategies.ema_cross`): long while a fast EMA of the mid is
  above a slow one, flat otherwise; one order at a time. The default.
- ``rsi-reversion`` (:mod:`~actors.strategies.rsi_reversion`): long when the RSI of the
  1-minute bar closes enters oversold, flat when it enters overbought; the sample of
  declared features (shared pipeline, hash-pinnable) and target positions.
- ``inverse-vol`` (:mod:`~actors.strategies.inverse_vol`): a multi-asset allocator holding
  each symbol in proportion to 1 / its volatility of 1-minute bars, rebalanced on a timer
  through target positions and :mod:`actors.allocation`.
- ``allocation`` (:mod:`~actors.strategies.allocator`): a composite running several of
  these as members, each with a budget; their targets (weights, or target positions
  converted to weights) are consolidated into one portfolio under caps, a gross limit and a
  cash buffer (:mod:`actors.allocation`) and traded on a rebalance timer.
- ``ema-watch`` (:mod:`~actors.strategies.ema_watch`): computes the EMAs, never trades
  (the data-path benchmark).
- ``fat-finger`` (:mod:`~actors.strategies.fat_finger`): an adversarial script of every
  mistake risk must refuse (the test of the risk engine, not a way to trade).

Parameters come from ``[strategy.params]``, validated per strategy (``parse_params``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from actors.strategies.allocator import allocation_factory
from actors.strategies.base import Strategy
from actors.strategies.ema_cross import EmaCross
from actors.strategies.ema_watch import EmaWatch
from actors.strategies.fat_finger import FatFinger
from actors.strategies.inverse_vol import InverseVol
from actors.strategies.rsi_reversion import RsiReversion

StrategyFactory = Callable[[str, Mapping[str, Any]], Strategy]

STRATEGIES: Final[dict[str, StrategyFactory]] = {
    "allocation": allocation_factory(lambda: STRATEGIES),
    "ema-cross": EmaCross.from_params,
    "ema-watch": EmaWatch.from_params,
    "fat-finger": FatFinger.from_params,
    "inverse-vol": InverseVol.from_params,
    "rsi-reversion": RsiReversion.from_params,
}
