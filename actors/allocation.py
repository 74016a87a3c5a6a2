"""Multi-strategy allocation: strategies' target weights → one target portfolio → order intents.

A pure library, like :mod:`actors.pretrade`: no bus, no clock, no I/O. The caller passes
the engine clock's time, the equity, the prices and the positions it already holds, so
every step can be tested from its inputs alone and replays exactly.

The pipeline:

1. each strategy states a :class:`TargetWeights` (symbol → fraction of equity), validated
   when it is built;
2. :func:`consolidate` combines them by the strategies' budgets of an
   :class:`AllocationPolicy` into one :class:`Portfolio` (caps, gross limit, cash buffer);
3. :func:`orders_for` turns a portfolio into order intents for the current positions (lots,
   minimum trade notional, sells first).

:func:`inverse_volatility_weights` is a helper for strategies that size by risk.

Weights, quantities and cash are :class:`~decimal.Decimal`. Intermediate arithmetic is
done on exact rationals (:class:`~fractions.Fraction`, built exactly from the Decimals), so
no step rounds behind our back: the only roundings are the documented ones, always
toward zero, and a limit that holds on exact values holds on the returned Decimals too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Final

from engine.messages import OrderIntent, OrderType, Side

ZERO: Final = Decimal(0)
ONE: Final = Decimal(1)
WEIGHT_QUANTUM: Final = Decimal("1e-12")
"""Consolidated weights are truncated (toward zero) to this: 1e-12 of a 1e9 book is a tenth of a cent."""
VOL_WEIGHT_QUANTUM: Final = Decimal("0.000001")
DEFAULT_FRACTIONAL_LOT: Final = Decimal("0.000001")


class AllocationError(ValueError):
    """Base of every error of this module: each message names the input and the rule it broke."""


class NotADecimal(AllocationError):
    """A weight, price, quantity or amount that is not a Decimal (floats never carry money here)."""


class NonFiniteValue(AllocationError):
    """NaN, signalling NaN or infinity: no comparison with it means anything."""


class WeightOutOfBounds(AllocationError):
    """A weight beyond [-1, 1], or beyond the policy's per-symbol cap where that applies."""


class GrossLimitExceeded(AllocationError):
    """The weights' gross Σ|w| is above the allowed maximum."""


class ShortNotAllowed(AllocationError):
    """A negative weight under a policy that does not allow shorts."""


class UnknownStrategy(AllocationError):
    """Targets from a strategy the policy gives no budget (or filed under another name)."""


class InvalidPolicy(AllocationError):
    """An :class:`AllocationPolicy` setting out of its range."""


class InvalidVolatility(AllocationError):
    """A volatility that is zero, negative, NaN or infinite."""


class InvalidInput(AllocationError):
    """Any other unusable argument (empty universe, non-positive equity, bad name …)."""


def _decimal(value: object, what: str) -> Decimal:
    """``value`` as a finite Decimal, or a typed error naming ``what``."""
    if not isinstance(value, Decimal):
        raise NotADecimal(f"{what} must be a Decimal, not {type(value).__name__} {value!r}")
    if not value.is_finite():  # checked first: comparing a signalling NaN raises
        raise NonFiniteValue(f"{what} is {value}, not a finite number")
    return value


def _validated_weights(
    weights: Mapping[str, Decimal], *, where: str, bound: Decimal, gross_limit: Decimal, allow_short: bool
) -> dict[str, Decimal]:
    """Checks every weight (type, finiteness, sign, bound) and then the gross, in symbol order
    so the first error reported does not depend on the mapping's order."""
    checked: dict[str, Decimal] = {}
    gross = Fraction(0)
    for symbol in sorted(weights):
        if not isinstance(symbol, str) or not symbol:
            raise InvalidInput(f"{where}: symbol {symbol!r} is not a non-empty string")
        weight = _decimal(weights[symbol], f"{where}: weight for {symbol!r}")
        if weight < 0 and not allow_short:
            raise ShortNotAllowed(f"{where}: weight for {symbol!r} is {weight}, and the policy allows no shorts")
        if abs(weight) > bound:
            raise WeightOutOfBounds(f"{where}: weight for {symbol!r} is {weight}, outside [-{bound}, {bound}]")
        checked[symbol] = weight
        gross += abs(Fraction(weight))
    if gross > Fraction(gross_limit):
        total = sum((abs(w) for w in checked.values()), ZERO)
        raise GrossLimitExceeded(f"{where}: gross Σ|w| = {total} exceeds the maximum {gross_limit}")
    return checked


@dataclass(frozen=True)
class TargetWeights:
    """One strategy's desired portfolio: symbol → fraction of equity (negative = short).

    Validated on construction, so a bad target fails where it is made, naming the
    strategy, the symbol and the rule: every weight a finite Decimal within [-1, 1], the
    gross Σ|w| at most ``max_gross`` (1: no leverage). A symbol with weight 0 means "hold
    none": it is how a strategy exits a name (a symbol it no longer mentions is simply
    not its concern). ``ts_init`` is the engine-clock time the target was computed.
    """

    strategy: str
    weights: Mapping[str, Decimal]
    ts_init: int
    max_gross: Decimal = ONE

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, str) or not self.strategy:
            raise InvalidInput(f"strategy name {self.strategy!r} is not a non-empty string")
        where = f"strategy {self.strategy!r}"
        if _decimal(self.max_gross, f"{where}: max_gross") <= 0:
            raise InvalidInput(f"{where}: max_gross is {self.max_gross}, not positive")
        checked = _validated_weights(self.weights, where=where, bound=ONE, gross_limit=self.max_gross, allow_short=True)
        # A private, read-only copy: the caller mutating its dict later cannot undo the validation.
        object.__setattr__(self, "weights", MappingProxyType(checked))

    @property
    def gross(self) -> Decimal:
        return sum((abs(w) for w in self.weights.values()), ZERO)


@dataclass(frozen=True)
class AllocationPolicy:
    """How strategies share the account, and the limits of the consolidated portfolio.

    - ``budgets``: strategy → share of equity it steers (each ≥ 0, sum ≤ 1; the rest,
      and the share of a strategy without targets, stays cash);
    - ``max_weight_per_symbol``: cap on |weight| of any one symbol, in (0, 1];
    - ``max_gross`` and ``cash_buffer``: the portfolio's gross is at most
      ``min(max_gross, 1 - cash_buffer)`` (:attr:`gross_limit`). ``max_gross`` above 1
      would never bind, so it is refused rather than silently ignored;
    - ``allow_short``: negative weights allowed (else any is an error);
    - ``min_trade_notional``: :func:`orders_for` skips trades worth less (no churn);
    - ``lot_sizes`` / ``fractional``: a symbol trades in whole multiples of its lot
      (default 1 share). Only symbols in ``fractional`` may have a fractional lot, and
      those default to ``fractional_lot``; the same rule the pre-trade checks enforce.
    """

    budgets: Mapping[str, Decimal]
    max_weight_per_symbol: Decimal = ONE
    max_gross: Decimal = ONE
    cash_buffer: Decimal = ZERO
    allow_short: bool = False
    min_trade_notional: Decimal = ZERO
    lot_sizes: Mapping[str, Decimal] = field(default_factory=dict)
    fractional: frozenset[str] = frozenset()
    fractional_lot: Decimal = DEFAULT_FRACTIONAL_LOT

    def __post_init__(self) -> None:
        def check(value: Decimal, name: str, low: Decimal, high: Decimal | None, low_open: bool) -> None:
            _decimal(value, name)
            if (value <= low if low_open else value < low) or (high is not None and value > high):
                bounds = f"{'(' if low_open else '['}{low}, " + (f"{high}]" if high is not None else "∞)")
                raise InvalidPolicy(f"{name} is {value}, outside {bounds}")

        for name in sorted(self.budgets):
            check(self.budgets[name], f"budget of strategy {name!r}", ZERO, ONE, low_open=False)
        if sum((Fraction(b) for b in self.budgets.values()), Fraction(0)) > 1:  # exact, however many digits
            raise InvalidPolicy(f"strategy budgets sum to {sum(self.budgets.values(), ZERO)}, more than 1")
        check(self.max_weight_per_symbol, "max_weight_per_symbol", ZERO, ONE, low_open=True)
        check(self.max_gross, "max_gross", ZERO, ONE, low_open=True)
        if _decimal(self.cash_buffer, "cash_buffer") < 0 or self.cash_buffer >= ONE:
            raise InvalidPolicy(f"cash_buffer is {self.cash_buffer}, outside [0, 1)")
        check(self.min_trade_notional, "min_trade_notional", ZERO, None, low_open=False)
        check(self.fractional_lot, "fractional_lot", ZERO, ONE, low_open=True)
        for symbol in sorted(self.lot_sizes):
            lot = self.lot_sizes[symbol]
            check(lot, f"lot size of {symbol!r}", ZERO, None, low_open=True)
            if symbol not in self.fractional and lot != lot.to_integral_value():
                raise InvalidPolicy(f"lot size of {symbol!r} is {lot}, fractional, but {symbol!r} is not fractional")
        object.__setattr__(self, "budgets", MappingProxyType(dict(self.budgets)))
        object.__setattr__(self, "lot_sizes", MappingProxyType(dict(self.lot_sizes)))

    @property
    def gross_limit(self) -> Decimal:
        return min(self.max_gross, ONE - self.cash_buffer)

    def lot_size(self, symbol: str) -> Decimal:
        lot = self.lot_sizes.get(symbol)
        if lot is not None:
            return lot
        return self.fractional_lot if symbol in self.fractional else ONE


@dataclass(frozen=True)
class Portfolio(Mapping[str, Decimal]):
    """The consolidated target: symbol → weight, readable as a mapping.

    Holds every symbol any strategy mentioned (a 0 weight means "hold none"), plus what
    the limits did: ``capped`` symbols were clipped to the per-symbol cap, and every
    weight was multiplied by ``scale`` (1: no scaling) to fit the gross limit.
    """

    weights: Mapping[str, Decimal]
    capped: frozenset[str] = frozenset()
    scale: Decimal = ONE

    def __getitem__(self, symbol: str) -> Decimal:
        return self.weights[symbol]

    def __iter__(self) -> Iterator[str]:
        return iter(self.weights)

    def __len__(self) -> int:
        return len(self.weights)

    @property
    def gross(self) -> Decimal:
        return sum((abs(w) for w in self.weights.values()), ZERO)

    @property
    def net(self) -> Decimal:
        return sum(self.weights.values(), ZERO)


def _toward_zero(value: Fraction, quantum: Decimal) -> Decimal:
    """``value`` truncated toward zero to a multiple of ``quantum``, as an exact Decimal."""
    return math.trunc(value / Fraction(quantum)) * quantum


def consolidate(targets: Mapping[str, TargetWeights], policy: AllocationPolicy) -> Portfolio:
    """Combine the strategies' targets into one portfolio, in this order:

    1. **combine** — w[s] = Σ_k budget_k × w_k[s], exactly, strategies in name order (the
       result does not depend on the mapping's order). Long and short views of the same
       symbol net out: the account holds one position per symbol;
    2. **cap** — clip each |w[s]| to ``max_weight_per_symbol``, sign kept. Before the
       scaling, so the scale factor is computed on the gross that remains and is as mild
       as it can be; the clipped excess stays cash rather than going to other symbols,
       which no strategy asked for;
    3. **scale** — if the gross exceeds ``policy.gross_limit``, multiply every weight by
       limit / gross: proportional, so the strategies' relative views survive. Scaling
       only shrinks, so the caps still hold;
    4. **quantize** — truncate each weight toward zero to :data:`WEIGHT_QUANTUM`: never
       larger in magnitude than the exact value, so caps and gross limit hold on the
       Decimals returned, and no sign flips (a tiny weight may become 0).

    Raises :class:`UnknownStrategy` for targets of a strategy without a budget (they
    would otherwise vanish silently) and :class:`ShortNotAllowed` for a negative weight
    when shorts are not allowed, even at budget 0: that is a configuration mismatch.
    """
    combined: dict[str, Fraction] = {}
    for name in sorted(targets):
        target = targets[name]
        if not isinstance(target, TargetWeights):
            raise InvalidInput(f"targets[{name!r}] is a {type(target).__name__}, not TargetWeights")
        if target.strategy != name:
            raise UnknownStrategy(f"targets[{name!r}] holds the targets of strategy {target.strategy!r}")
        budget = policy.budgets.get(name)
        if budget is None:
            raise UnknownStrategy(f"strategy {name!r} has targets but no budget in the allocation policy")
        for symbol, weight in target.weights.items():
            if weight < 0 and not policy.allow_short:
                raise ShortNotAllowed(
                    f"strategy {name!r}: weight for {symbol!r} is {weight}, and the policy allows no shorts"
                )
            combined[symbol] = combined.get(symbol, Fraction(0)) + Fraction(budget) * Fraction(weight)
    cap = Fraction(policy.max_weight_per_symbol)
    capped = set()
    for symbol, combined_weight in combined.items():
        if abs(combined_weight) > cap:
            combined[symbol] = cap if combined_weight > 0 else -cap
            capped.add(symbol)
    limit = Fraction(policy.gross_limit)
    gross = sum((abs(w) for w in combined.values()), Fraction(0))
    scale = limit / gross if gross > limit else Fraction(1)
    weights = {s: _toward_zero(combined[s] * scale, WEIGHT_QUANTUM).normalize() for s in sorted(combined)}
    return Portfolio(MappingProxyType(weights), frozenset(capped), _toward_zero(scale, WEIGHT_QUANTUM).normalize())


def _volatility(symbol: str, value: Decimal | float) -> Fraction:
    """A float is converted once via ``Decimal(str(x))``: its shortest repr, i.e. the number
    the caller printed (``Decimal(0.2)`` would be 0.2000000000000000111…)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | float | int):
        raise InvalidVolatility(f"volatility of {symbol!r} is {value!r}, not a number")
    vol = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    if not vol.is_finite():
        raise InvalidVolatility(f"volatility of {symbol!r} is {vol}: it must be finite")
    if vol <= 0:
        raise InvalidVolatility(f"volatility of {symbol!r} is {vol}: it must be positive")
    return Fraction(vol)


def inverse_volatility_weights(
    vols: Mapping[str, Decimal | float], *, total: Decimal = ONE, quantum: Decimal = VOL_WEIGHT_QUANTUM
) -> dict[str, Decimal]:
    """Weights w_i ∝ 1/σ_i that sum *exactly* to ``total``, each a multiple of ``quantum``.

    A zero, negative, NaN or infinite volatility raises :class:`InvalidVolatility` rather
    than excluding the symbol: such a value is a broken estimate (a stale feed, too short
    a window), and dropping the symbol would silently hand its capital to the others.

    Each exact weight is truncated down to the quantum, and the residue (less than one
    quantum per symbol, never negative) goes to the lowest volatility (ties: the first
    symbol in sorted order). Truncation is monotone and the largest weight only grows,
    so a lower volatility never gets a smaller weight. A weight that truncates to zero
    (a volatility far above the others') raises :class:`InvalidInput`: use a finer quantum.
    """
    if not vols:
        raise InvalidInput("inverse_volatility_weights: no volatilities given")
    if _decimal(quantum, "quantum") <= 0:
        raise InvalidInput(f"quantum is {quantum}, not positive")
    units_total = Fraction(_decimal(total, "total")) / Fraction(quantum)
    if total <= 0 or units_total.denominator != 1:
        raise InvalidInput(f"total is {total}: it must be positive and a multiple of the quantum {quantum}")
    inverse = {symbol: 1 / _volatility(symbol, vols[symbol]) for symbol in sorted(vols)}
    norm = sum(inverse.values(), Fraction(0))
    units = {symbol: math.floor(Fraction(total) * inv / norm / Fraction(quantum)) for symbol, inv in inverse.items()}
    for symbol, count in units.items():
        if count == 0:
            raise InvalidInput(f"the weight of {symbol!r} is below the quantum {quantum}: use a finer quantum")
    # The largest *exact* weight (lowest volatility): its truncated weight is the largest too. Ties: sorted order.
    largest = max(inverse, key=lambda symbol: inverse[symbol])
    units[largest] += units_total.numerator - sum(units.values())
    return {symbol: count * quantum for symbol, count in units.items()}


@dataclass(frozen=True)
class OrderPlan:
    """What :func:`orders_for` decided: the intents (sells first), the symbols it did not
    trade with the reason, and the target quantity of every priced symbol."""

    intents: list[OrderIntent]
    skipped: dict[str, str]
    target_qty: dict[str, Decimal]


def orders_for(
    target: Mapping[str, Decimal],
    equity: Decimal,
    prices: Mapping[str, Decimal],
    positions: Mapping[str, Decimal],
    policy: AllocationPolicy,
    *,
    strategy: str,
    make_intent_id: Callable[[], str],
    ts_init: int,
    limit: bool = False,
) -> OrderPlan:
    """The intents that move ``positions`` to the ``target`` weights of ``equity``.

    Per symbol of the target, in sorted order: target quantity = weight × equity / price
    truncated toward zero to the symbol's lot (never more exposure than the weight asks);
    delta = target − position, truncated toward zero to the lot too (so a position that
    is not a lot multiple is never overshot); no trade when |delta| × price is below
    ``min_trade_notional``. Sells come before buys, so their proceeds free cash first; the
    intent ids are drawn in that order. Orders are market orders, or limit orders at the
    given price with ``limit=True``. A long-to-short change is one sell order.

    Not traded, and reported in ``skipped``: a symbol without a price or with a price that
    is not a positive number, a trade below the minimum notional or under one lot, and a
    position the target does not mention (left alone: it may not be this allocator's).
    The target itself is validated against the policy (caps, gross limit, shorts) and
    raises like :func:`consolidate`; so do a non-positive equity and a non-Decimal input.
    ``ts_init`` is the engine clock's time, stamped on every intent.
    """
    if _decimal(equity, "equity") <= 0:
        raise InvalidInput(f"equity is {equity}: orders are sized only against a positive equity")
    weights = _validated_weights(
        target,
        where="target",
        bound=policy.max_weight_per_symbol,
        gross_limit=policy.gross_limit,
        allow_short=policy.allow_short,
    )
    held = {symbol: _decimal(positions[symbol], f"position in {symbol!r}") for symbol in sorted(positions)}
    sells: list[tuple[str, Decimal, Decimal]] = []
    buys: list[tuple[str, Decimal, Decimal]] = []
    skipped: dict[str, str] = {}
    target_qty: dict[str, Decimal] = {}
    for symbol, weight in weights.items():
        current = held.get(symbol, ZERO)
        price = prices.get(symbol)
        if price is None:
            skipped[symbol] = "no price"
            continue
        if not isinstance(price, Decimal):
            raise NotADecimal(f"price of {symbol!r} must be a Decimal, not {type(price).__name__} {price!r}")
        if not price.is_finite() or price <= 0:
            skipped[symbol] = f"price {price} is not a positive number"
            continue
        lot = policy.lot_size(symbol)
        wanted = _toward_zero(Fraction(weight) * Fraction(equity) / Fraction(price), lot)
        target_qty[symbol] = wanted
        delta = _toward_zero(Fraction(wanted) - Fraction(current), lot)
        if delta == 0:
            if wanted != current:
                skipped[symbol] = f"{wanted - current} from the target, less than one lot of {lot}"
            continue
        notional = abs(delta) * price
        if notional < policy.min_trade_notional:
            skipped[symbol] = f"trade notional {notional} below min_trade_notional {policy.min_trade_notional}"
            continue
        (sells if delta < 0 else buys).append((symbol, delta, price))
    for symbol, qty in held.items():
        if symbol not in weights and qty != 0:
            skipped[symbol] = f"not in the target: position {qty} left alone"
    intents = [
        OrderIntent(
            intent_id=make_intent_id(),
            strategy=strategy,
            symbol=symbol,
            side=Side.BUY if delta > 0 else Side.SELL,
            qty=abs(delta),
            order_type=OrderType.LIMIT if limit else OrderType.MARKET,
            limit_price=price if limit else None,
            ts_init=ts_init,
        )
        for symbol, delta, price in sells + buys
    ]
    return OrderPlan(intents, skipped, target_qty)
