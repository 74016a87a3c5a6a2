"""RSI mean reversion: long ``qty`` when the market is oversold, flat when it is overbought.

The signal is Wilder's RSI (``period``, default 14) of the 1-minute bar closes by default
(``input = "bar_close"``: the pricing actor's time bars, ``[pricing] bar_interval_s``), or
of every mid (``input = "mid"``). When the RSI *enters* the oversold zone (falls below
``low``, default 30) the strategy targets a long of ``qty``; when it enters the overbought
zone (rises above ``high``, default 70) it targets flat. In between it holds. With
``trend > 0`` an EMA of the same input filters entries: it buys only while the price is at
or above the EMA (a dip in an uptrend, not a falling knife); exits are never filtered.

It acts on zone *entries* only, never on every update inside a zone: a target refused by
risk (the market is closed, the data stale …) is not repeated on every bar, which would
trip the runaway guard's rejection streak; the next entry states it again.

It is the sample of the declared-feature API: it reads its RSI (and EMA) from the host's
shared pipeline (``self.feature_values``), declares them as :class:`FeatureSpec` values
built from its parameters (so changing ``period`` changes the pipeline hash the manifest
records, and a pinned hash refuses the run), and returns :class:`TargetPosition` values,
which the host turns into the market order for the difference (so it never orders twice
what is already held or on its way). The audit trail of each order holds the RSI, the
thresholds, the EMA when used, and the price it was decided on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Literal

import msgspec

from actors.features import FeatureSpec
from actors.strategies.base import Decision, Strategy, TargetPosition, feature, parse_params
from engine.messages import Bar, BestBidOffer

RSI_FEATURE = "rsi"
TREND_FEATURE = "rsi_trend_ema"


class RsiReversionParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    period: int = 14
    low: float = 30.0
    """Oversold: the RSI falling below this targets a long of ``qty``."""
    high: float = 70.0
    """Overbought: the RSI rising above this targets flat."""
    qty: Decimal = Decimal(10)
    input: Literal["bar_close", "mid"] = "bar_close"
    """What the RSI is computed on: time-bar closes, or every mid."""
    trend: int = 0
    """Period of the EMA trend filter on the same input (0: no filter)."""
    symbol: str | None = None
    """Trade only this symbol (default: every symbol on the feed)."""

    def __post_init__(self) -> None:
        if self.period < 1:
            raise ValueError("period must be at least 1")
        if not 0 <= self.low < self.high <= 100:
            raise ValueError("need 0 <= low < high <= 100")
        if self.qty <= 0:
            raise ValueError("qty must be positive")
        if self.trend < 0:
            raise ValueError("trend must not be negative (0: no trend filter)")


class RsiReversion(Strategy):
    def __init__(self, name: str, params: RsiReversionParams) -> None:
        self.name = name
        self.params = params
        specs = [FeatureSpec(name=RSI_FEATURE, indicator="rsi", input=params.input, params={"period": params.period})]
        if params.trend:
            specs.append(
                FeatureSpec(name=TREND_FEATURE, indicator="ema", input=params.input, params={"period": params.trend})
            )
        self.features = tuple(specs)
        self._zone: dict[str, str] = {}
        """Per symbol: the zone of the last RSI seen ("low", "mid", "high")."""

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> RsiReversion:
        return cls(name, parse_params(params, RsiReversionParams, name))

    def on_bar(self, bar: Bar, now_ns: int) -> Sequence[Decision]:
        if self.params.input != "bar_close":
            return []
        return self._decide(bar.symbol, bar.close)

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        if self.params.input != "mid":
            return []
        return self._decide(bbo.symbol, (bbo.bid_price + bbo.ask_price) / 2)

    def _decide(self, symbol: str, price: Decimal) -> Sequence[Decision]:
        params = self.params
        if params.symbol is not None and symbol != params.symbol:
            return []
        rsi = self.feature_values.get(symbol, RSI_FEATURE)
        if rsi is None:
            return []  # warming up
        zone = "low" if rsi < params.low else "high" if rsi > params.high else "mid"
        entered = zone != self._zone.get(symbol, "mid")
        self._zone[symbol] = zone
        if not entered or zone == "mid":
            return []
        noted = {
            "rsi": feature(rsi),
            "rsi_period": feature(params.period),
            "zone": zone,
            "low": feature(params.low),
            "high": feature(params.high),
            "input": params.input,
            "price": feature(price),
        }
        if zone == "low":
            if params.trend:
                ema = self.feature_values.get(symbol, TREND_FEATURE)
                if ema is None or float(price) < ema:
                    return []  # no trend yet, or below it: not a dip to buy
                noted["trend_ema"] = feature(ema)
                noted["trend_period"] = feature(params.trend)
            return [TargetPosition(symbol=symbol, qty=params.qty, features=noted)]
        return [TargetPosition(symbol=symbol, qty=Decimal(0), features=noted)]
