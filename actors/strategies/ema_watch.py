"""EMA watch: the data-only workload of the peer benchmark. It computes, never trades.

For every ``BestBidOffer`` (of ``symbol``, or of every symbol when unset) it folds the mid
into a fast and a slow EMA (10/20 by default, the same :class:`EmaPair` as ``ema-cross``)
and counts the crosses it sees once both averages are warm, exactly where ``ema-cross``
would decide to trade. It never returns an intent, so a replay with it measures the data
path alone: feed → strategy actor → hook, with the risk / order / venue actors idle.
EMAs are float maths on the mid (features, not money).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from actors.strategies.base import Strategy, parse_params
from actors.strategies.ema_cross import EmaPair
from engine.messages import BestBidOffer, OrderIntent


class EmaWatchParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fast: int = 10
    slow: int = 20
    symbol: str | None = None
    """Watch only this symbol (default: every symbol on the feed)."""

    def __post_init__(self) -> None:
        if not 1 <= self.fast < self.slow:
            raise ValueError("need 1 <= fast < slow")


class EmaWatch(Strategy):
    """Keeps an :class:`EmaPair` per symbol in :attr:`emas`; :attr:`crosses` counts fast/slow crosses."""

    def __init__(self, name: str, params: EmaWatchParams) -> None:
        self.name = name
        self.params = params
        self.emas: dict[str, EmaPair] = {}
        self.crosses = 0
        self._above: dict[str, bool] = {}

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> EmaWatch:
        return cls(name, parse_params(params, EmaWatchParams, name))

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> list[OrderIntent]:
        symbol = bbo.symbol
        if self.params.symbol is not None and symbol != self.params.symbol:
            return []
        ema = self.emas.get(symbol)
        if ema is None:
            ema = self.emas[symbol] = EmaPair(self.params.fast, self.params.slow)
        ema.update(float(bbo.bid_price + bbo.ask_price) / 2.0)  # the mid as a float: a feature, not money
        if ema.count >= self.params.slow:
            above = ema.fast > ema.slow
            if self._above.get(symbol, above) != above:
                self.crosses += 1
            self._above[symbol] = above
        return []
