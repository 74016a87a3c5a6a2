"""Fat finger: an adversarial sample strategy that tries every mistake risk must catch.

It is the test of the risk engine, not a way to trade: every ``step_s`` of engine time it
takes the next step of a fixed script, pricing each intent off the current quote, and
emits what a buggy or runaway strategy would send. Each step names the rule it expects to
trip; ``kestrel replay --strategy fat-finger --json`` then shows them in
``rejections_by_reason``. The quantities are parameters, so a config can set them against
its limits (see tests/test_fat_finger.py for one that trips every rule).

The script, in order (``base`` is ``base_qty``):

1. ``open`` — buy ``base`` at market: approved, it fills (a long to work with);
2. ``oversized`` — buy ``oversized_qty``: MAX_ORDER_QTY;
3. ``fractional`` — buy 1.5 shares of a symbol that is not fractionable: FRACTIONAL_NOT_ALLOWED;
4. ``notional`` — buy ``notional_qty``: MAX_ORDER_NOTIONAL;
5. ``buying_power`` — buy ``buying_power_qty``: BUYING_POWER;
6. ``position`` — buy ``position_qty``: MAX_POSITION;
7. ``off_collar`` — a buy limit 50 % above the ask: PRICE_COLLAR;
8. ``duplicate`` — the same passive buy limit twice: approved, then DUPLICATE_ORDER;
9. ``self_trade`` — a market sell, which would hit our own working buy: SELF_TRADE;
10. ``short`` — a sell limit above the ask for more than we hold: SHORT_NOT_LOCATED;
11. ``churn`` — buy ``churn_qty`` at market, then (``churn_back``) sell it with a limit at
    the bid: approved both; with fees the day's loss passes ``daily_loss_limit`` and
    trading turns REDUCING;
12. ``grow`` — buy ``base`` at market: TRADING_REDUCING;
13. ``reduce`` — sell one share with a limit above the ask: approved (it shrinks the position);
14. ``burst`` — ``burst_size`` such one-share sells at once: some approved, then ORDER_RATE;
15. ``open_orders`` — one more: MAX_OPEN_ORDERS;
16. ``runaway`` — ``runaway_size`` market buys at once: the runaway guard pauses the
    strategy, and everything after is STRATEGY_PAUSED.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final

import msgspec

from actors.strategies.base import Strategy, feature, parse_params
from engine.messages import BestBidOffer, Fill, OrderIntent, OrderType, Side

PASSIVE: Final = Decimal("0.99")
CENT: Final = Decimal("0.01")


class FatFingerParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    symbol: str | None = None
    """Trade only this symbol (default: the first one quoted)."""
    step_s: float = 2.0
    """Engine time between steps: longer than the duplicate and rate windows."""
    base_qty: Decimal = Decimal(10)
    oversized_qty: Decimal = Decimal(1_000_000)
    notional_qty: Decimal = Decimal(400)
    buying_power_qty: Decimal = Decimal(300)
    position_qty: Decimal = Decimal(200)
    burst_size: int = 8
    churn_qty: Decimal = Decimal(100)
    runaway_size: int = 200

    def __post_init__(self) -> None:
        if not self.step_s > 0:
            raise ValueError("step_s must be positive")
        if self.burst_size < 1 or self.runaway_size < 1:
            raise ValueError("burst_size and runaway_size must be at least 1")


class FatFinger(Strategy):
    def __init__(self, name: str, params: FatFingerParams) -> None:
        self.name = name
        self.params = params
        self.symbol = params.symbol
        self.position = Decimal(0)
        self.step = 0
        self.steps_taken: list[str] = []
        self._next_ns: int | None = None

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any]) -> FatFinger:
        return cls(name, parse_params(params, FatFingerParams, name))

    def restore_positions(self, positions: Mapping[str, Decimal]) -> None:
        if self.symbol is not None:
            self.position = positions.get(self.symbol, Decimal(0))

    def on_fill(self, fill: Fill, now_ns: int) -> list[OrderIntent]:
        if fill.symbol == self.symbol:
            self.position += fill.qty * fill.side.sign
        return []

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> list[OrderIntent]:
        if self.symbol is None:
            self.symbol = bbo.symbol
        if bbo.symbol != self.symbol or self.step >= len(_SCRIPT):
            return []
        if self._next_ns is not None and now_ns < self._next_ns:
            return []
        self._next_ns = now_ns + round(self.params.step_s * 1e9)
        name = _SCRIPT[self.step]
        self.step += 1
        self.steps_taken.append(name)
        intents: list[OrderIntent] = getattr(self, f"_{name}")(bbo, now_ns)
        # The audit trail: which step of the script, and the quote and position it was priced off.
        features = {
            "step": name,
            "bid": feature(bbo.bid_price),
            "ask": feature(bbo.ask_price),
            "position": feature(self.position),
        }
        for intent in intents:
            self.note_features(intent, features)
        return intents

    # ------------------------------------------------------------ the script

    def _intent(self, side: Side, qty: Decimal, now_ns: int, limit: Decimal | None = None) -> OrderIntent:
        return OrderIntent(
            intent_id=self.next_intent_id(),
            strategy=self.name,
            symbol=self.symbol or "",
            side=side,
            qty=qty,
            order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
            limit_price=None if limit is None else limit.quantize(CENT),
            ts_init=now_ns,
        )

    def _passive_buy(self, bbo: BestBidOffer) -> Decimal:
        return bbo.bid_price * PASSIVE

    def _open(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, self.params.base_qty, now)]

    def _oversized(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, self.params.oversized_qty, now)]

    def _fractional(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, Decimal("1.5"), now)]

    def _notional(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, self.params.notional_qty, now)]

    def _buying_power(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, self.params.buying_power_qty, now)]

    def _position(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, self.params.position_qty, now)]

    def _off_collar(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, self.params.base_qty, now, bbo.ask_price * Decimal("1.5"))]

    def _duplicate(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        price = self._passive_buy(bbo)
        return [self._intent(Side.BUY, self.params.base_qty, now, price) for _ in range(2)]

    def _self_trade(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.SELL, self.params.base_qty, now)]

    def _short(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        qty = max(self.position, Decimal(0)) + self.params.base_qty
        return [self._intent(Side.SELL, qty, now, bbo.ask_price * Decimal("1.01"))]

    def _passive_sell(self, bbo: BestBidOffer, cents: int = 0) -> Decimal:
        """A sell limit 1 % above the ask (plus ``cents``): it rests, it does not fill."""
        return bbo.ask_price * Decimal("1.01") + CENT * cents

    def _burst(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        # Distinct prices: a burst of different orders, not one order repeated.
        return [
            self._intent(Side.SELL, Decimal(1), now, self._passive_sell(bbo, i))
            for i in range(1, self.params.burst_size + 1)
        ]

    def _open_orders(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.SELL, Decimal(1), now, self._passive_sell(bbo, 50))]

    def _churn(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, self.params.churn_qty, now)]

    def _churn_back(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        # A limit at the bid, not a market sell: that would cross our own working buys.
        return [self._intent(Side.SELL, self.params.churn_qty, now, bbo.bid_price)]

    def _grow(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, self.params.base_qty, now)]

    def _reduce(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.SELL, Decimal(1), now, self._passive_sell(bbo))]

    def _runaway(self, bbo: BestBidOffer, now: int) -> list[OrderIntent]:
        return [self._intent(Side.BUY, Decimal(1), now) for _ in range(self.params.runaway_size)]


_SCRIPT: Final = (
    "open", "oversized", "fractional", "notional", "buying_power", "position", "off_collar", "duplicate",
    "self_trade", "short", "churn", "churn_back", "grow", "reduce", "burst", "open_orders", "runaway",
)
