"""EMA crossover: long when the fast EMA of the mid is above the slow one, flat otherwise.

On an upward cross it buys ``qty``; on a downward cross it sells what it holds. It sends
at most one order at a time and waits for that order's outcome (fill or rejection)
before deciding again. EMAs are float maths on the mid (features, not money); order
quantities are exact decimals. Each intent carries, for the audit trail, the EMAs, the
quote and the position it was decided on (:meth:`Strategy.note_features`).
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import msgspec

from actors.strategies.base import Strategy, feature, parse_params
from engine.messages import BestBidOffer, Fill, OrderIntent, OrderType, OrderUpdate, RiskRejected, Side


class EmaCrossParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fast: int = 10
    slow: int = 20
    qty: Decimal = Decimal(10)
    symbol: str | None = None
    """Trade only this symbol (default: every symbol on the feed)."""

    def __post_init__(self) -> None:
        if not 1 <= self.fast < self.slow:
            raise ValueError("need 1 <= fast < slow")
        if self.qty <= 0:
            raise ValueError("qty must be positive")


class EmaPair:
    """A fast and a slow exponential moving average of one series (the mid), updated in place.

    ``alpha = 2 / (period + 1)``; the first value seeds both averages, then each update is
    ``ema += alpha * (value - ema)``. This is the textbook EMA, and the one NautilusTrader's
    ``ExponentialMovingAverage`` computes, so the two sides of the peer benchmark agree.
    ``count`` is the number of values seen: an average is "warm" once ``count >= period``.
    Shared by ``ema-cross`` and ``ema-watch``.
    """

    __slots__ = ("alpha_fast", "alpha_slow", "count", "fast", "slow")

    def __init__(self, fast: int, slow: int) -> None:
        self.alpha_fast = 2.0 / (fast + 1)
        self.alpha_slow = 2.0 / (slow + 1)
        self.fast = 0.0
        self.slow = 0.0
        self.count = 0

    def update(self, value: float) -> None:
        """Fold one value into both averages."""
        if self.count == 0:
            self.fast = self.slow = value
        else:
            self.fast += self.alpha_fast * (value - self.fast)
            self.slow += self.alpha_slow * (value - self.slow)
        self.count += 1


class _SymbolState:
    __slots__ = ("ema", "last_above", "pending", "position")

    def __init__(self, fast: int, slow: int) -> None:
        self.ema = EmaPair(fast, slow)
        self.last_above: bool | None = None
        self.position = Decimal(0)
        self.pending: str | None = None


class EmaCross(Strategy):
    def __init__(self, name: str, params: EmaCrossParams) -> None:
        self.name = name
        self.params = params
        self._states: dict[str, _SymbolState] = {}

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> EmaCross:
        return cls(name, parse_params(params, EmaCrossParams, name))

    def _intent(self, symbol: str, side: Side, qty: Decimal, now_ns: int) -> OrderIntent:
        return OrderIntent(
            intent_id=self.next_intent_id(),
            strategy=self.name,
            symbol=symbol,
            side=side,
            qty=qty,
            order_type=OrderType.MARKET,
            ts_init=now_ns,
        )

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> list[OrderIntent]:
        if self.params.symbol is not None and bbo.symbol != self.params.symbol:
            return []
        state = self._states.get(bbo.symbol)
        if state is None:
            state = self._states[bbo.symbol] = self._new_state()
        ema = state.ema
        ema_input = float(bbo.bid_price + bbo.ask_price) / 2.0  # the mid as a float: a feature, not money
        ema.update(ema_input)
        if ema.count < self.params.slow:
            return []
        above = ema.fast > ema.slow
        crossed = state.last_above is not None and above != state.last_above
        state.last_above = above
        if not crossed or state.pending is not None:
            return []
        if above and state.position <= 0:
            intent = self._intent(bbo.symbol, Side.BUY, self.params.qty - state.position, now_ns)
        elif not above and state.position > 0:
            intent = self._intent(bbo.symbol, Side.SELL, state.position, now_ns)
        else:
            return []
        state.pending = intent.intent_id
        # The audit trail: the cross and everything it was computed from (only when it trades).
        self.note_features(
            intent,
            {
                "cross": "up" if above else "down",
                "ema_fast": feature(ema.fast),
                "ema_slow": feature(ema.slow),
                "fast_period": feature(self.params.fast),
                "slow_period": feature(self.params.slow),
                "samples": feature(ema.count),
                "bid": feature(bbo.bid_price),
                "ask": feature(bbo.ask_price),
                "mid": feature(ema_input),
                "position": feature(state.position),
            },
        )
        return [intent]

    def _new_state(self) -> _SymbolState:
        return _SymbolState(self.params.fast, self.params.slow)

    def _state(self, symbol: str) -> _SymbolState:
        state = self._states.get(symbol)
        if state is None:
            state = self._states[symbol] = self._new_state()
        return state

    def restore_positions(self, positions: Mapping[str, Decimal]) -> None:
        for symbol, qty in positions.items():
            self._state(symbol).position = qty

    def on_fill(self, fill: Fill, now_ns: int) -> list[OrderIntent]:
        # A fill can come before the first quote of its symbol: recovery books the fills
        # the venue made while the engine was down before the feed has said anything.
        # Dropping it left the position at zero, so the strategy bought again and again
        # what it already held (each refused for buying power). Count it either way.
        state = self._state(fill.symbol)
        state.position += fill.qty * fill.side.sign
        return []

    def on_order_update(self, update: OrderUpdate, now_ns: int) -> list[OrderIntent]:
        if update.status.is_terminal:
            for state in self._states.values():
                if state.pending is not None and state.pending == update.intent_id:
                    state.pending = None
        return []

    def on_rejected(self, rejection: RiskRejected, now_ns: int) -> list[OrderIntent]:
        state = self._states.get(rejection.symbol)
        if state is not None and state.pending == rejection.intent_id:
            state.pending = None
        return []
