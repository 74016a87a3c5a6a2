"""Multi-strategy allocation (actors/allocation.py): worked examples with exact Decimals, then
hypothesis properties of consolidation, inverse-volatility weights and order generation."""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.allocation import (
    AllocationError,
    AllocationPolicy,
    GrossLimitExceeded,
    InvalidInput,
    InvalidPolicy,
    InvalidVolatility,
    NonFiniteValue,
    NotADecimal,
    OrderPlan,
    ShortNotAllowed,
    TargetWeights,
    UnknownStrategy,
    WeightOutOfBounds,
    consolidate,
    inverse_volatility_weights,
    orders_for,
)
from engine.messages import OrderIntent, OrderType, Side

D = Decimal
MILLI = D("0.001")
SYMBOLS = ("AAA", "BBB", "CCC", "DDD", "EEE", "FFF")
FRACTIONAL = ("EEE", "FFF")
PROPERTY = settings(max_examples=150, deadline=None)


def ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"alloc-{next(counter)}"


def plan(target, equity, prices, positions, policy, **kw) -> OrderPlan:
    return orders_for(
        target, equity, prices, positions, policy, strategy="alloc", make_intent_id=ids(), ts_init=7, **kw
    )


def applied(positions: dict[str, Decimal], intents: list[OrderIntent]) -> dict[str, Decimal]:
    result = dict(positions)
    for intent in intents:
        result[intent.symbol] = result.get(intent.symbol, D(0)) + intent.side.sign * intent.qty
    return result


# ------------------------------------------------------------------ worked examples


def test_inverse_volatility_worked_examples() -> None:
    # 1/σ ∝ 10 : 5 : 2.5 → 4/7, 2/7, 1/7; truncated they sum to 0.999999, the residue goes to the largest.
    assert inverse_volatility_weights({"A": 0.1, "B": D("0.2"), "C": D("0.4")}) == {
        "A": D("0.571429"), "B": D("0.285714"), "C": D("0.142857"),
    }  # fmt: skip
    # Ties: the residue goes to the first symbol in sorted order, whatever the mapping's order.
    assert inverse_volatility_weights({"C": 1, "B": 1, "A": 1}) == {
        "A": D("0.333334"), "B": D("0.333333"), "C": D("0.333333"),
    }  # fmt: skip
    # The residue goes to the lowest volatility, even when the truncated weights tie.
    assert inverse_volatility_weights({"A": 0.010000000000000002, "B": D("0.01"), "C": D("0.01")}, total=D("0.1")) == {
        "A": D("0.033333"), "B": D("0.033334"), "C": D("0.033333"),
    }  # fmt: skip
    assert inverse_volatility_weights({"X": 0.3, "Y": 0.3}, total=D("0.5")) == {"X": D("0.25"), "Y": D("0.25")}
    assert inverse_volatility_weights({"X": D("0.25")}, total=D("0.9")) == {"X": D("0.9")}
    assert inverse_volatility_weights({"A": 1, "B": 3}, total=D(1), quantum=D("0.01")) == {
        "A": D("0.75"), "B": D("0.25"),
    }  # fmt: skip


@pytest.mark.parametrize("vol", [0, -0.1, D("-1"), float("nan"), D("NaN"), D("sNaN"), float("inf"), D("Infinity")])
def test_inverse_volatility_rejects_broken_volatilities(vol: Decimal | float) -> None:
    with pytest.raises(InvalidVolatility, match="'BAD'"):
        inverse_volatility_weights({"OK": D("0.2"), "BAD": vol})


def test_inverse_volatility_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidInput, match="no volatilities"):
        inverse_volatility_weights({})
    with pytest.raises(InvalidInput, match="multiple of the quantum"):
        inverse_volatility_weights({"A": 1}, total=D("0.0000001"))
    with pytest.raises(InvalidInput, match="positive"):
        inverse_volatility_weights({"A": 1}, total=D(0))
    with pytest.raises(InvalidInput, match=r"'B'.*finer quantum"):
        inverse_volatility_weights({"A": D("0.0001"), "B": D("1000")})
    with pytest.raises(InvalidVolatility, match="not a number"):
        inverse_volatility_weights({"A": "0.2"})  # type: ignore[dict-item]


def test_consolidate_combines_by_budget_then_caps() -> None:
    policy = AllocationPolicy({"mom": D("0.6"), "rsi": D("0.3")}, max_weight_per_symbol=D("0.4"), cash_buffer=D("0.05"))
    targets = {
        "mom": TargetWeights("mom", {"AAPL": D("0.5"), "MSFT": D("0.5")}, ts_init=1),
        "rsi": TargetWeights("rsi", {"AAPL": D("1")}, ts_init=2),
    }
    portfolio = consolidate(targets, policy)
    # AAPL: 0.6 × 0.5 + 0.3 × 1 = 0.6 → capped at 0.4; MSFT: 0.6 × 0.5 = 0.3; gross 0.7 ≤ 0.95: no scaling.
    assert dict(portfolio) == {"AAPL": D("0.4"), "MSFT": D("0.3")}
    assert portfolio.capped == frozenset({"AAPL"})
    assert portfolio.scale == 1
    assert (portfolio.gross, portfolio.net) == (D("0.7"), D("0.7"))


def test_consolidate_scales_to_the_cash_buffer() -> None:
    targets = {"a": TargetWeights("a", {"X": D(1)}, 0), "b": TargetWeights("b", {"Y": D(1)}, 0)}
    buffered = AllocationPolicy({"a": D("0.5"), "b": D("0.5")}, cash_buffer=D("0.2"))
    portfolio = consolidate(targets, buffered)
    assert dict(portfolio) == {"X": D("0.4"), "Y": D("0.4")}  # gross 1 scaled to 0.8
    assert portfolio.scale == D("0.8")
    # Capped first (0.3 each, gross 0.6 ≤ 0.8): the scale is computed after the caps, so none is needed.
    capped = AllocationPolicy({"a": D("0.5"), "b": D("0.5")}, cash_buffer=D("0.2"), max_weight_per_symbol=D("0.3"))
    assert dict(consolidate(targets, capped)) == {"X": D("0.3"), "Y": D("0.3")}
    # A non-terminating scale (1 / 1.5) is truncated toward zero: the gross stays ≤ 1.
    levered = {"a": TargetWeights("a", {"X": D("0.7"), "Y": D("0.7"), "Z": D("0.1")}, 0, max_gross=D(2))}
    portfolio = consolidate(levered, AllocationPolicy({"a": D(1)}))
    assert dict(portfolio) == {"X": D("0.466666666666"), "Y": D("0.466666666666"), "Z": D("0.066666666666")}
    assert portfolio.gross == D("0.999999999998")


def test_consolidate_nets_long_and_short_views() -> None:
    policy = AllocationPolicy({"a": D("0.5"), "b": D("0.5")}, allow_short=True)
    targets = {
        "a": TargetWeights("a", {"X": D("0.8"), "Y": D("-0.2")}, 0),
        "b": TargetWeights("b", {"X": D("-0.4"), "Z": D(0)}, 0),
    }
    assert dict(consolidate(targets, policy)) == {"X": D("0.2"), "Y": D("-0.1"), "Z": D(0)}
    assert dict(consolidate({}, policy)) == {}


def test_consolidate_refuses_mismatched_targets() -> None:
    policy = AllocationPolicy({"a": D("0.5")})
    with pytest.raises(UnknownStrategy, match="'b' has targets but no budget"):
        consolidate({"b": TargetWeights("b", {"X": D("0.1")}, 0)}, policy)
    with pytest.raises(UnknownStrategy, match=r"targets\['a'\] holds the targets of strategy 'b'"):
        consolidate({"a": TargetWeights("b", {"X": D("0.1")}, 0)}, policy)
    with pytest.raises(ShortNotAllowed, match=r"'a'.*'X' is -0\.1"):
        consolidate({"a": TargetWeights("a", {"X": D("-0.1")}, 0)}, policy)


def test_orders_for_worked_example() -> None:
    policy = AllocationPolicy({"alloc": D(1)}, min_trade_notional=D(100))
    target = {"AAPL": D("0.4"), "MSFT": D("0.3"), "NVDA": D("0.1"), "GOOG": D("0.05"), "IBM": D("0.0001")}
    prices = {"AAPL": D("190.37"), "MSFT": D("410.10"), "GOOG": D("150")}
    positions = {"MSFT": D(100), "TSLA": D(3), "GOOG": D(33)}
    result = plan(target, D(100_000), prices, positions, policy)
    # AAPL: 40000 / 190.37 = 210.1… → buy 210; MSFT: 30000 / 410.10 = 73.15… → sell 27 (listed first);
    # GOOG: 5000 / 150 = 33.3… → 33, already held; IBM: no price.
    assert [(i.intent_id, i.symbol, i.side, i.qty, i.order_type, i.limit_price) for i in result.intents] == [
        ("alloc-1", "MSFT", Side.SELL, D(27), OrderType.MARKET, None),
        ("alloc-2", "AAPL", Side.BUY, D(210), OrderType.MARKET, None),
    ]
    assert all(i.strategy == "alloc" and i.ts_init == 7 for i in result.intents)
    assert result.target_qty == {"AAPL": D(210), "GOOG": D(33), "MSFT": D(73)}
    assert result.skipped == {
        "IBM": "no price",
        "NVDA": "no price",
        "TSLA": "not in the target: position 3 left alone",
    }


def test_orders_for_limits_fractions_shorts_and_skips() -> None:
    policy = AllocationPolicy(
        {"alloc": D(1)},
        allow_short=True,
        min_trade_notional=D(50),
        fractional=frozenset({"BTCUSDT"}),
        lot_sizes={"BTCUSDT": D("0.00001"), "ODD": D(10)},
    )
    target = {"BTCUSDT": D("0.25"), "SPY": D("-0.1"), "ZERO": D("0.1"), "TINY": D("0.004"), "ODD": D("0.2")}
    prices = {"BTCUSDT": D("64321.50"), "SPY": D("123.45"), "ZERO": D(0), "TINY": D(10), "ODD": D(7)}
    positions = {"SPY": D(2), "TINY": D(0), "ODD": D("283.5")}
    result = plan(target, D(10_000), prices, positions, policy, limit=True)
    # BTCUSDT: 2500 / 64321.50 = 0.0388672… → 0.03886 (lot 0.00001). SPY: -1000 / 123.45 = -8.1… → -8,
    # from +2: one sell of 10. ODD: 2000 / 7 = 285.7… → 280 (lot 10); 280 - 283.5 = -3.5 is under one lot.
    assert [(i.symbol, i.side, i.qty, i.order_type, i.limit_price) for i in result.intents] == [
        ("SPY", Side.SELL, D(10), OrderType.LIMIT, D("123.45")),
        ("BTCUSDT", Side.BUY, D("0.03886"), OrderType.LIMIT, D("64321.50")),
    ]
    assert result.target_qty["ODD"] == D(280)
    assert result.skipped == {
        "ODD": "-3.5 from the target, less than one lot of 10",
        "TINY": "trade notional 40 below min_trade_notional 50",
        "ZERO": "price 0 is not a positive number",
    }


def test_orders_for_never_trades_a_long_only_book_short_and_checks_its_inputs() -> None:
    policy = AllocationPolicy({"alloc": D(1)}, max_weight_per_symbol=D("0.5"))
    with pytest.raises(ShortNotAllowed, match=r"'X' is -0\.1"):
        plan({"X": D("-0.1")}, D(1000), {"X": D(1)}, {}, policy)
    with pytest.raises(WeightOutOfBounds, match=re.escape("'X' is 0.6, outside [-0.5, 0.5]")):
        plan({"X": D("0.6")}, D(1000), {"X": D(1)}, {}, policy)
    with pytest.raises(GrossLimitExceeded, match=re.escape("gross Σ|w| = 1.2 exceeds the maximum 1")):
        plan({"X": D("0.4"), "Y": D("0.4"), "Z": D("0.4")}, D(1000), {}, {}, policy)
    with pytest.raises(InvalidInput, match="equity is 0"):
        plan({"X": D("0.1")}, D(0), {"X": D(1)}, {}, policy)
    with pytest.raises(NotADecimal, match="price of 'X'"):
        plan({"X": D("0.1")}, D(1000), {"X": 1.5}, {}, policy)
    with pytest.raises(NonFiniteValue, match="position in 'Y' is NaN"):
        plan({"X": D("0.1")}, D(1000), {"X": D(1)}, {"Y": D("NaN")}, policy)
    # An existing short (say, from before the policy changed) is covered, not extended.
    result = plan({"X": D(0)}, D(1000), {"X": D(1)}, {"X": D(-5)}, policy)
    assert [(i.side, i.qty) for i in result.intents] == [(Side.BUY, D(5))]


def test_target_weights_are_validated_and_frozen() -> None:
    raw = {"X": D("0.5")}
    target = TargetWeights("s", raw, ts_init=3)
    raw["Y"] = D("0.9")  # the caller's dict changing afterwards cannot bypass validation
    assert dict(target.weights) == {"X": D("0.5")}
    with pytest.raises(TypeError):
        target.weights["Y"] = D(1)  # type: ignore[index]
    assert TargetWeights("s", {"X": D("0.9"), "Y": D("-0.9")}, 0, max_gross=D("1.8")).gross == D("1.8")
    with pytest.raises(NotADecimal, match="strategy 's': weight for 'X' must be a Decimal, not float"):
        TargetWeights("s", {"X": 0.5}, 0)  # type: ignore[dict-item]
    with pytest.raises(InvalidInput, match="strategy name"):
        TargetWeights("", {}, 0)
    with pytest.raises(InvalidInput, match="symbol ''"):
        TargetWeights("s", {"": D("0.1")}, 0)


def test_policy_settings_are_validated() -> None:
    with pytest.raises(InvalidPolicy, match=re.escape("budgets sum to 1.1")):
        AllocationPolicy({"a": D("0.6"), "b": D("0.5")})
    with pytest.raises(InvalidPolicy, match=re.escape("budget of strategy 'a' is -0.1")):
        AllocationPolicy({"a": D("-0.1")})
    with pytest.raises(InvalidPolicy, match=re.escape("max_gross is 2, outside (0, 1]")):
        AllocationPolicy({}, max_gross=D(2))
    with pytest.raises(InvalidPolicy, match="cash_buffer is 1"):
        AllocationPolicy({}, cash_buffer=D(1))
    with pytest.raises(
        InvalidPolicy, match=re.escape("lot size of 'AAPL' is 0.5, fractional, but 'AAPL' is not fractional")
    ):
        AllocationPolicy({}, lot_sizes={"AAPL": D("0.5")})
    with pytest.raises(NonFiniteValue, match="min_trade_notional is NaN"):
        AllocationPolicy({}, min_trade_notional=D("NaN"))
    policy = AllocationPolicy({}, fractional=frozenset({"BTC"}), lot_sizes={"ETH": D(2)}, cash_buffer=D("0.1"))
    assert (policy.lot_size("BTC"), policy.lot_size("ETH"), policy.lot_size("AAPL")) == (D("0.000001"), D(2), D(1))
    assert policy.gross_limit == D("0.9")


def test_errors_are_value_errors() -> None:
    for error in (NonFiniteValue, WeightOutOfBounds, GrossLimitExceeded, InvalidVolatility, InvalidPolicy):
        assert issubclass(error, AllocationError)
    assert issubclass(AllocationError, ValueError)


# ------------------------------------------------------------------ property tests


def milli(n: int) -> Decimal:
    return n * MILLI


def fit(ints: list[int], limit: int) -> list[int]:
    """Shrinks integers toward zero so Σ|n| ≤ limit (integer arithmetic: exact)."""
    gross = sum(abs(n) for n in ints)
    if gross <= limit:
        return ints
    return [int(Fraction(n * limit, gross)) for n in ints]


@st.composite
def policies(draw: st.DrawFn, names: list[str]) -> AllocationPolicy:
    budgets = fit(draw(st.lists(st.integers(0, 1000), min_size=len(names), max_size=len(names))), 1000)
    return AllocationPolicy(
        {name: milli(b) for name, b in zip(names, budgets, strict=True)},
        max_weight_per_symbol=milli(draw(st.integers(1, 1000))),
        max_gross=milli(draw(st.integers(1, 1000))),
        cash_buffer=milli(draw(st.integers(0, 999))),
        allow_short=draw(st.booleans()),
        min_trade_notional=D(draw(st.integers(0, 500))),
        fractional=frozenset(FRACTIONAL),
        lot_sizes={"DDD": D(5), "EEE": D("0.01")},
    )


@st.composite
def weights(draw: st.DrawFn, allow_short: bool, max_gross: int = 1000) -> dict[str, Decimal]:
    symbols = draw(st.lists(st.sampled_from(SYMBOLS), unique=True, max_size=len(SYMBOLS)))
    low = -1000 if allow_short else 0
    ints = fit(draw(st.lists(st.integers(low, 1000), min_size=len(symbols), max_size=len(symbols))), max_gross)
    return {symbol: milli(n) for symbol, n in zip(symbols, ints, strict=True)}


@st.composite
def allocations(draw: st.DrawFn) -> tuple[dict[str, TargetWeights], AllocationPolicy]:
    names = [f"s{i}" for i in range(draw(st.integers(1, 4)))]
    policy = draw(policies(names))
    targets = {}
    for name in names:
        max_gross = draw(st.sampled_from([1000, 2000]))
        target = draw(weights(policy.allow_short, max_gross))
        targets[name] = TargetWeights(name, target, ts_init=0, max_gross=milli(max_gross))
    return targets, policy


def raw_combination(targets: dict[str, TargetWeights], policy: AllocationPolicy) -> dict[str, Fraction]:
    raw: dict[str, Fraction] = {}
    for name, target in targets.items():
        for symbol, weight in target.weights.items():
            raw[symbol] = raw.get(symbol, Fraction(0)) + Fraction(policy.budgets[name]) * Fraction(weight)
    return raw


@PROPERTY
@given(allocations())
def test_consolidated_weights_respect_every_limit(case: tuple[dict[str, TargetWeights], AllocationPolicy]) -> None:
    targets, policy = case
    portfolio = consolidate(targets, policy)
    raw = raw_combination(targets, policy)
    assert set(portfolio) == set(raw)
    assert all(isinstance(w, Decimal) for w in portfolio.values())
    assert all(abs(w) <= policy.max_weight_per_symbol for w in portfolio.values())
    assert portfolio.gross <= policy.gross_limit
    assert portfolio.gross <= policy.max_gross
    assert portfolio.net <= 1 - policy.cash_buffer
    for symbol, weight in portfolio.items():
        assert Fraction(weight) * raw[symbol] > 0 or weight == 0  # never a flip
        assert abs(Fraction(weight)) <= abs(raw[symbol])  # limits only ever shrink a weight
    if not policy.allow_short:
        assert all(w >= 0 for w in portfolio.values())
    cap = Fraction(policy.max_weight_per_symbol)
    if all(abs(w) <= cap for w in raw.values()) and sum(abs(w) for w in raw.values()) <= Fraction(policy.gross_limit):
        assert {s: Fraction(w) for s, w in portfolio.items()} == raw  # no limit binds: exactly the combination
    assert consolidate(dict(reversed(targets.items())), policy) == portfolio  # deterministic


@PROPERTY
@given(allocations(), st.data())
def test_zero_budgets_contribute_nothing(
    case: tuple[dict[str, TargetWeights], AllocationPolicy], data: st.DataObject
) -> None:
    targets, policy = case
    idle = TargetWeights("idle", data.draw(weights(policy.allow_short)), ts_init=0)
    with_idle = dataclasses.replace(policy, budgets={**policy.budgets, "idle": D(0)})
    before = consolidate(targets, policy)
    after = consolidate({**targets, "idle": idle}, with_idle)
    for symbol in set(before) | set(after):
        assert after.get(symbol, D(0)) == before.get(symbol, D(0))


vols = st.one_of(
    st.integers(1, 500).map(lambda n: n * D("0.01")),
    st.floats(0.01, 5.0, allow_nan=False, allow_infinity=False),
)


@PROPERTY
@given(st.dictionaries(st.text("ABCDEFGHIJ", min_size=1, max_size=3), vols, min_size=1, max_size=20),
       st.integers(100_000, 1_000_000).map(lambda n: n * D("0.000001")))  # fmt: skip
def test_inverse_volatility_weights_sum_exactly_and_are_ordered(
    volatilities: dict[str, Decimal | float], total: Decimal
) -> None:
    result = inverse_volatility_weights(volatilities, total=total)
    assert set(result) == set(volatilities)
    assert sum(result.values(), D(0)) == total
    assert all(isinstance(w, Decimal) and w > 0 and w % D("0.000001") == 0 for w in result.values())
    sigma = {s: Fraction(D(str(v)) if isinstance(v, float) else v) for s, v in volatilities.items()}
    norm = sum(1 / v for v in sigma.values())
    for a, b in itertools.permutations(result, 2):
        if sigma[a] < sigma[b]:
            assert result[a] >= result[b]
    for symbol, weight in result.items():  # within the rounding residue of the exact weight
        assert abs(Fraction(weight) - Fraction(total) / sigma[symbol] / norm) < len(result) * Fraction(1, 10**6)


@st.composite
def books(
    draw: st.DrawFn,
) -> tuple[dict[str, Decimal], Decimal, dict[str, Decimal], dict[str, Decimal], AllocationPolicy]:
    policy = draw(policies(["alloc"]))
    limit = int(policy.gross_limit / MILLI)
    cap = int(policy.max_weight_per_symbol / MILLI)
    target = {s: max(min(w, milli(cap)), -milli(cap)) for s, w in draw(weights(policy.allow_short, limit)).items()}
    priced = draw(st.lists(st.sampled_from(SYMBOLS), unique=True))
    prices = {s: draw(st.integers(1, 10_000_000)) * D("0.01") for s in priced}
    positions = {s: draw(st.integers(-300, 300)) * policy.lot_size(s) for s in draw(st.lists(st.sampled_from(SYMBOLS)))}
    equity = D(draw(st.integers(1, 10_000_000)))
    return target, equity, prices, positions, policy


@PROPERTY
@given(books(), st.booleans())
def test_orders_reach_the_target_within_a_lot_and_never_overshoot(
    book: tuple[dict[str, Decimal], Decimal, dict[str, Decimal], dict[str, Decimal], AllocationPolicy], limit: bool
) -> None:
    target, equity, prices, positions, policy = book
    result = plan(target, equity, prices, positions, policy, limit=limit)
    intents = result.intents
    assert len({i.symbol for i in intents}) == len(intents)  # one order per symbol
    assert [i.intent_id for i in intents] == [f"alloc-{n}" for n in range(1, len(intents) + 1)]
    sides = [i.side for i in intents]
    assert sides == sorted(sides, key=lambda side: side is Side.BUY)  # sells before buys
    after = applied(positions, intents)
    for intent in intents:
        lot = policy.lot_size(intent.symbol)
        assert intent.qty > 0 and intent.qty % lot == 0
        assert intent.qty * prices[intent.symbol] >= policy.min_trade_notional
        assert intent.order_type is (OrderType.LIMIT if limit else OrderType.MARKET)
        assert intent.limit_price == (prices[intent.symbol] if limit else None)
        exact = Fraction(target[intent.symbol]) * Fraction(equity) / Fraction(prices[intent.symbol])
        held = after[intent.symbol]
        assert held == result.target_qty[intent.symbol]
        assert abs(exact - Fraction(held)) < Fraction(lot)
        assert abs(Fraction(held)) <= abs(exact) and Fraction(held) * exact >= 0  # no over-buying, no flip
    for symbol in target:
        if symbol not in prices:
            assert result.skipped[symbol] == "no price"
            assert after.get(symbol, D(0)) == positions.get(symbol, D(0))
        elif symbol not in {i.symbol for i in intents}:  # untouched: already there, or the trade is too small
            wanted, held = result.target_qty[symbol], positions.get(symbol, D(0))
            assert wanted == held or abs(wanted - held) * prices[symbol] < policy.min_trade_notional
    for symbol, qty in positions.items():
        if symbol not in target and qty != 0:
            assert "left alone" in result.skipped[symbol]


@PROPERTY
@given(books(), st.data())
def test_odd_positions_are_never_overshot(
    book: tuple[dict[str, Decimal], Decimal, dict[str, Decimal], dict[str, Decimal], AllocationPolicy],
    data: st.DataObject,
) -> None:
    target, equity, prices, _, policy = book
    odd = {s: data.draw(st.integers(-30_000, 30_000)) * D("0.0001") for s in target}
    result = plan(target, equity, prices, odd, policy)
    after = applied(odd, result.intents)
    for intent in result.intents:
        assert intent.qty % policy.lot_size(intent.symbol) == 0
    for symbol, wanted in result.target_qty.items():
        start, end = odd[symbol], after[symbol]
        assert min(start, wanted) <= end <= max(start, wanted)  # moves toward the target, never past it
        if symbol in {i.symbol for i in result.intents}:
            assert abs(wanted - end) < policy.lot_size(symbol)


@PROPERTY
@given(weights(allow_short=True), st.sampled_from(SYMBOLS), st.data())
def test_invalid_target_weights_raise_typed_errors(valid: dict[str, Decimal], symbol: str, data: st.DataObject) -> None:
    bad_value = data.draw(st.sampled_from([D("NaN"), D("-NaN"), D("sNaN"), D("Infinity"), D("-Infinity")]))
    with pytest.raises(NonFiniteValue, match=f"'{symbol}' is .*not a finite number"):
        TargetWeights("s", {**valid, symbol: bad_value}, 0)
    too_big = data.draw(st.integers(1001, 10_000).map(milli)) * data.draw(st.sampled_from([1, -1]))
    with pytest.raises(WeightOutOfBounds, match=f"'{symbol}' is {too_big}, outside"):
        TargetWeights("s", {**valid, symbol: too_big}, 0)
    spread = dict.fromkeys(SYMBOLS, D("0.2"))  # each within bounds, Σ = 1.2
    with pytest.raises(GrossLimitExceeded, match="strategy 's': gross"):
        TargetWeights("s", spread, 0)
