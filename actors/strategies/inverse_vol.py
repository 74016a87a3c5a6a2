"""Inverse-volatility allocation: hold every symbol in proportion to 1 / its volatility.

Every ``rebalance_s`` seconds of engine time (the first once the first quote has been
seen), the strategy reads each symbol's rolling volatility of 1-minute bar closes (the
shared feature pipeline's ``volatility`` over ``window`` bars), weights the symbols by
``w_i ∝ 1/σ_i`` summing exactly to ``gross`` (:func:`actors.allocation.inverse_volatility_weights`),
and targets ``floor(w_i × capital / mid_i)`` whole shares of each. A calmer symbol gets more
capital, so each contributes about the same risk.

It returns :class:`TargetPosition` values: the host orders the difference to what is held
and in flight, so a rebalance that changes nothing sends nothing. A symbol whose volatility
is not warmed up yet (fewer than ``window + 1`` bars) or is zero is left as it is. Each
order's audit record holds the volatility, the weight, the price and the capital it was
sized on.

As a member of an ``allocation`` (:mod:`actors.strategies.allocator`) it is read through
:meth:`InverseVol.target_weights`: its weights are then fractions of the member's budget and
``capital`` is not used (the allocation sizes the orders on its own capital).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_DOWN, Decimal
from typing import Any

import msgspec

from actors.allocation import TargetWeights, inverse_volatility_weights
from actors.features import FeatureSpec
from actors.strategies.base import Decision, Strategy, TargetPosition, feature, parse_params
from engine.clock import NS_PER_S
from engine.messages import BestBidOffer

VOL_FEATURE = "inverse_vol_volatility"
REBALANCE = "rebalance"


class InverseVolParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    capital: Decimal = Decimal(50_000)
    """The capital the weights are applied to (the account may hold more)."""
    gross: Decimal = Decimal("0.9")
    """Σ weights: the rest of ``capital`` stays in cash."""
    window: int = 20
    """Bars in the volatility estimate."""
    rebalance_s: float = 1800.0
    symbols: list[str] = []
    """The universe (default: every symbol on the feed)."""

    def __post_init__(self) -> None:
        if self.capital <= 0:
            raise ValueError("capital must be positive")
        if not Decimal(0) < self.gross <= Decimal(1):
            raise ValueError("gross must be in (0, 1]")
        if self.window < 2:
            raise ValueError("window must be at least 2 bars")
        if not self.rebalance_s > 0:
            raise ValueError("rebalance_s must be positive")


class InverseVol(Strategy):
    def __init__(self, name: str, params: InverseVolParams) -> None:
        self.name = name
        self.params = params
        self.features = (
            FeatureSpec(name=VOL_FEATURE, indicator="volatility", input="bar_close", params={"window": params.window}),
        )
        self._mids: dict[str, Decimal] = {}
        self._scheduled = False
        self._weights: TargetWeights | None = None

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> InverseVol:
        return cls(name, parse_params(params, InverseVolParams, name))

    def target_weights(self) -> TargetWeights | None:
        """The weights of the last rebalance (``None`` before the first one that had volatilities).

        What an ``allocation`` holding this strategy reads: the weights themselves, not the
        share counts sized on ``capital``, which would tie the member to a capital of its own.
        """
        return self._weights

    def _interval_ns(self) -> int:
        return round(self.params.rebalance_s * NS_PER_S)

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        universe = self.params.symbols
        if universe and bbo.symbol not in universe:
            return []
        self._mids[bbo.symbol] = (bbo.bid_price + bbo.ask_price) / 2
        if not self._scheduled:
            self._scheduled = True
            self.schedule(REBALANCE, now_ns + self._interval_ns())
        return []

    def on_timer(self, name: str, now_ns: int) -> Sequence[Decision]:
        if name != REBALANCE:
            return []
        self.schedule(REBALANCE, now_ns + self._interval_ns())
        vols: dict[str, float] = {}
        for symbol in sorted(self._mids):
            vol = self.feature_values.get(symbol, VOL_FEATURE)
            if vol is not None and vol > 0:
                vols[symbol] = vol
        if not vols:
            return []  # nothing warmed up yet
        params = self.params
        weights = inverse_volatility_weights(vols, total=params.gross)
        self._weights = TargetWeights(self.name, weights, now_ns)
        targets: list[Decision] = []
        for symbol, weight in weights.items():
            mid = self._mids[symbol]
            qty = (weight * params.capital / mid).quantize(Decimal(1), rounding=ROUND_DOWN)
            targets.append(
                TargetPosition(
                    symbol=symbol,
                    qty=qty,
                    features={
                        "volatility": feature(vols[symbol]),
                        "window": feature(params.window),
                        "weight": feature(weight),
                        "mid": feature(mid),
                        "capital": feature(params.capital),
                        "symbols": ",".join(sorted(vols)),
                    },
                )
            )
        return targets
