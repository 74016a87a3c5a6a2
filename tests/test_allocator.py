"""``allocation``: several strategies as members of one, their targets consolidated into one portfolio.

Worked examples with quantities computed by hand, the members' timers, features and
mistakes, the parameters, a property of the sizes, the composite in a real strategy host,
and a real ``kestrel replay`` of IBM and BAC with inverse-vol and rsi-reversion as members.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.allocation import ShortNotAllowed, TargetWeights
from actors.features import FeatureConflict, FeaturePipeline, FeatureSpec
from actors.strategies import STRATEGIES
from actors.strategies.allocator import Allocator, MemberFactory, StatesWeights
from actors.strategies.base import Decision, FeatureView, Strategy, TargetPosition
from actors.strategies.inverse_vol import InverseVol
from actors.strategies.rsi_reversion import RsiReversion
from engine import topics
from engine.errors import ConfigError
from engine.messages import (
    BestBidOffer,
    Fill,
    MarketDataStatus,
    OrderIntent,
    OrderType,
    RiskRejected,
    Side,
    SymbolTradingStatus,
)
from tests.helpers import shared_data
from tests.test_strategy_api import T0, Host, bar, bbo

D = Decimal
S = 1_000_000_000
REBALANCE_S = 600
ROOT = Path(__file__).resolve().parent.parent
TICKS = shared_data() / "us-equity-ticks"
DAY = [TICKS / s / f"20131007_{k}.zip" for s in ("ibm", "bac") for k in ("quote", "trade")]


# ---------------------------------------------------------------- scripted members


class Scripted(Strategy):
    """A member returning what the test queued, from its next ``on_bbo``; records its timers."""

    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        self.name = name
        self.queue: list[Any] = []
        self.fired: list[tuple[str, int]] = []
        self.on_fire: list[Any] = []
        self.features = tuple(FeatureSpec(**spec) for spec in params.get("features", ()))

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        out, self.queue = self.queue, []
        return out

    def on_timer(self, name: str, now_ns: int) -> Sequence[Decision]:
        self.fired.append((name, now_ns))
        return self.on_fire


class Weighted(Scripted):
    """A member stating weights (:class:`StatesWeights`); its target positions are ignored."""

    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        super().__init__(name, params)
        self.stated: TargetWeights | None = None

    def state(self, weights: Mapping[str, str]) -> None:
        self.stated = TargetWeights(self.name, {s: D(w) for s, w in weights.items()}, T0)

    def target_weights(self) -> TargetWeights | None:
        return self.stated


REGISTRY: dict[str, MemberFactory] = {"scripted": Scripted, "weighted": Weighted, **STRATEGIES}


def allocation(members: Mapping[str, Mapping[str, Any]], **settings: Any) -> Allocator:
    params = {"capital": "100000", "rebalance_s": REBALANCE_S, **settings, "members": members}
    return Allocator.from_params("alloc", params, REGISTRY)


def quote(symbol: str, bid: str, ask: str, ts: int = T0) -> BestBidOffer:
    return bbo(ts, bid, ask, symbol)


def two_members(**settings: Any) -> tuple[Allocator, Scripted, Weighted]:
    """``a`` (target positions, budget 0.6) and ``b`` (weights, budget 0.4); IBM mid 180.05, BAC 13.805."""
    alloc = allocation(
        {"a": {"strategy": "scripted", "budget": "0.6"}, "b": {"strategy": "weighted", "budget": "0.4"}}, **settings
    )
    a, b = alloc.members["a"], alloc.members["b"]
    assert isinstance(a, Scripted) and isinstance(b, Weighted)
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0)
    alloc.on_bbo(quote("BAC", "13.80", "13.81"), T0)
    return alloc, a, b


def rebalance(alloc: Allocator, at: int = T0 + REBALANCE_S * S) -> dict[str, TargetPosition]:
    targets = alloc.on_timer("rebalance", at)
    assert all(type(t) is TargetPosition for t in targets)
    return {t.symbol: t for t in targets if isinstance(t, TargetPosition)}


def qty(targets: Mapping[str, TargetPosition]) -> dict[str, Decimal]:
    return {symbol: t.qty for symbol, t in targets.items()}


# ---------------------------------------------------------------- worked examples


def test_two_members_consolidate_into_exact_quantities() -> None:
    alloc, a, b = two_members()
    a.queue = [TargetPosition(symbol="IBM", qty=D(100)), TargetPosition(symbol="ABSENT", qty=D(5))]
    b.state({"BAC": "0.5", "IBM": "0.25"})
    b.queue = [TargetPosition(symbol="BAC", qty=D(1))]  # a weights member's positions are ignored
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)
    targets = rebalance(alloc)
    # IBM: a's 100 shares × 180.05 = 18005 of its 60000 (0.300083…, 0.18005 of the whole) plus b's
    # 0.25 × 0.4 = 0.1: 0.28005 × 100000 / 180.05 = 155.54 → 155. BAC: 0.5 × 0.4 = 0.2 → 20000 / 13.805
    # = 1448.7 → 1448. ABSENT has no mid: not sized.
    assert qty(targets) == {"BAC": D(1448), "IBM": D(155)}
    ibm = targets["IBM"].features
    assert ibm["weight"] == "0.28005" and ibm["mid"] == "180.05" and ibm["capital"] == "100000"
    assert ibm["a.qty"] == "100" and ibm["a.weight"] == "0.300083333333333334"  # 18005/60000, up at 1e-18
    assert ibm["a.contribution"] == "0.1800500000000000004" and ibm["b.weight"] == "0.25"
    assert ibm["b.contribution"] == "0.1" and ibm["scale"] == "1" and ibm["capped"] == "false"
    assert "a.weight" not in targets["BAC"].features and "b.qty" not in targets["BAC"].features


def test_a_position_member_alone_gets_exactly_its_quantity() -> None:
    # 0.6 × 100000 = 60000 has a factor 3: the weight 37 × 13.805 / 60000 does not terminate, and
    # rounding it toward zero would cost the 37th share after consolidation's truncation.
    alloc, a, _ = two_members()
    a.queue = [TargetPosition(symbol="BAC", qty=D(37)), TargetPosition(symbol="IBM", qty=D(3))]
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)
    assert qty(rebalance(alloc)) == {"BAC": D(37), "IBM": D(3)}


def test_caps_and_the_cash_buffer_apply_to_the_consolidated_portfolio() -> None:
    alloc, a, b = two_members(max_weight_per_symbol="0.25", cash_buffer="0.1")
    a.queue = [TargetPosition(symbol="IBM", qty=D(100))]
    b.state({"BAC": "0.5", "IBM": "0.25"})
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)
    targets = rebalance(alloc)
    # IBM 0.28005 capped to 0.25: 25000 / 180.05 = 138.8 → 138; gross 0.45 ≤ 0.9: BAC unscaled, 1448.
    assert qty(targets) == {"BAC": D(1448), "IBM": D(138)}
    assert targets["IBM"].features["capped"] == "true" and targets["BAC"].features["capped"] == "false"

    alloc, a, b = two_members(max_weight_per_symbol="0.25", cash_buffer="0.6")
    a.queue = [TargetPosition(symbol="IBM", qty=D(100))]
    b.state({"BAC": "0.5", "IBM": "0.25"})
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)
    targets = rebalance(alloc)
    # Gross 0.45 > 1 - 0.6: every weight × 0.4 / 0.45 = 8/9, truncated at 1e-12. IBM 0.222222222222 ×
    # 100000 / 180.05 = 123.4 → 123; BAC 0.177777777777 × 100000 / 13.805 = 1287.8 → 1287.
    assert qty(targets) == {"BAC": D(1287), "IBM": D(123)}
    assert targets["IBM"].features["scale"] == "0.888888888888"
    assert targets["IBM"].features["weight"] == "0.222222222222"


def test_a_member_over_its_budget_is_scaled_down_to_it() -> None:
    alloc, a, b = two_members()
    a.queue = [TargetPosition(symbol="IBM", qty=D(1000))]  # 180050 of a 60000 budget
    b.state({"BAC": "0.5"})
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)
    targets = rebalance(alloc)
    # a scaled to gross 1: IBM 0.6 of the whole, 60000 / 180.05 = 333.2 → 333; b untouched: 1448 BAC.
    assert qty(targets) == {"BAC": D(1448), "IBM": D(333)}
    assert targets["IBM"].features["a.weight"] == "1"


def test_a_symbol_dropped_to_zero_goes_to_zero_unless_another_member_holds_it() -> None:
    alloc, a, b = two_members()
    alloc.restore_positions({"IBM": D(155), "BAC": D(1448), "OTHER": D(7)})
    a.queue = [TargetPosition(symbol="IBM", qty=D(100)), TargetPosition(symbol="BAC", qty=D(200))]
    b.state({"IBM": "0.25"})
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)
    # BAC 200 × 13.805 = 2761 → 200 shares. OTHER, held but stated by nobody, is left alone.
    assert qty(rebalance(alloc)) == {"BAC": D(200), "IBM": D(155)}
    a.queue = [TargetPosition(symbol="IBM", qty=D(0)), TargetPosition(symbol="BAC", qty=D(0))]
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)
    # b still holds IBM (0.1: 10000 / 180.05 = 55.5 → 55); nobody holds BAC any more.
    assert qty(rebalance(alloc, T0 + 2 * REBALANCE_S * S)) == {"BAC": D(0), "IBM": D(55)}
    b.state({"BAC": "0.1"})  # IBM no longer mentioned: b's earlier 0.25 still stands
    assert qty(rebalance(alloc, T0 + 3 * REBALANCE_S * S)) == {"BAC": D(289), "IBM": D(55)}


def test_min_trade_notional_is_measured_against_the_positions_held() -> None:
    alloc, a, _ = two_members(min_trade_notional="500")
    alloc.restore_positions({"IBM": D(98)})
    a.queue = [TargetPosition(symbol="IBM", qty=D(100)), TargetPosition(symbol="BAC", qty=D(100))]
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)
    # IBM: 2 × 180.05 = 360.10 < 500, left as it is; BAC: 100 × 13.805 = 1380.50, traded.
    assert qty(rebalance(alloc)) == {"BAC": D(100)}
    fill = Fill(
        client_order_id="c", venue_order_id="v", execution_id="x", intent_id="alloc-1", strategy="alloc",
        symbol="IBM", side=Side.SELL, qty=D(10), price=D(180), fee=D(0), ts_event=T0, ts_recv=T0,
    )  # fmt: skip
    alloc.on_fill(fill, T0 + S)  # holds 88 now: 12 × 180.05 = 2160.60
    assert qty(rebalance(alloc, T0 + 2 * REBALANCE_S * S)) == {"BAC": D(100), "IBM": D(100)}


def test_stale_halted_and_rejected_symbols_are_not_targeted_until_they_can_trade() -> None:
    alloc, a, _ = two_members()
    a.queue = [TargetPosition(symbol="IBM", qty=D(10)), TargetPosition(symbol="BAC", qty=D(10))]
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0)
    stale = MarketDataStatus(symbol="IBM", fresh=False, provider="test", reason="silent", ts_init=T0)
    halted = SymbolTradingStatus(symbol="BAC", halted=True, reason="T1", provider="test", ts_event=T0, ts_recv=T0)
    alloc.on_market_status(stale, T0)
    alloc.on_market_status(halted, T0)
    t = T0 + REBALANCE_S * S
    assert rebalance(alloc, t) == {}
    alloc.on_market_status(MarketDataStatus(symbol="IBM", fresh=True, provider="test", reason="ok", ts_init=t), t)
    resumed = SymbolTradingStatus(symbol="BAC", halted=False, reason="", provider="test", ts_event=t, ts_recv=t)
    alloc.on_market_status(resumed, t)
    t += REBALANCE_S * S
    assert set(rebalance(alloc, t)) == {"BAC", "IBM"}
    # Rejected: left out for 1, then 2, 4 … intervals, until a fill in it.
    for count, wait in ((1, 1), (2, 2), (3, 4)):
        alloc.on_rejected(RiskRejected(intent_id="i", strategy="alloc", symbol="IBM", reason="MARKET_CLOSED",
                                       detail="", inputs={}, ts_init=t), t)  # fmt: skip
        skipped = [rebalance(alloc, t + k * REBALANCE_S * S) for k in range(1, wait)]
        assert all(set(targets) == {"BAC"} for targets in skipped), count
        t += wait * REBALANCE_S * S
        assert set(rebalance(alloc, t)) == {"BAC", "IBM"}
    alloc.on_rejected(RiskRejected(intent_id="i", strategy="alloc", symbol="IBM", reason="MARKET_CLOSED",
                                   detail="", inputs={}, ts_init=t), t)  # fmt: skip
    fill = Fill(
        client_order_id="c", venue_order_id="v", execution_id="x", intent_id="alloc-1", strategy="alloc",
        symbol="IBM", side=Side.BUY, qty=D(1), price=D(180), fee=D(0), ts_event=t, ts_recv=t,
    )  # fmt: skip
    alloc.on_fill(fill, t)
    assert set(rebalance(alloc, t + REBALANCE_S * S)) == {"BAC", "IBM"}


# ---------------------------------------------------------------- timers, features, mistakes


def test_member_timers_are_namespaced_and_routed_back() -> None:
    alloc, a, _ = two_members()
    requests: list[tuple[str, int | None]] = []
    alloc._timer_requests = requests  # as the host does
    a.schedule("tick", T0 + 5 * S)
    a.schedule("gone", T0 + 6 * S)
    a.cancel_timer("gone")
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)  # the member's requests go out after its hook
    assert requests == [("member/a/tick", T0 + 5 * S), ("member/a/gone", T0 + 6 * S), ("member/a/gone", None)]
    requests.clear()
    a.on_fire = [TargetPosition(symbol="IBM", qty=D(10))]
    assert alloc.on_timer("member/a/tick", T0 + 5 * S) == []
    assert a.fired == [("tick", T0 + 5 * S)]
    assert alloc.on_timer("member/nobody/tick", T0 + 5 * S) == []  # never armed: ignored
    assert qty(rebalance(alloc)) == {"IBM": D(10)}  # what the timer stated counts


def test_member_timers_due_at_a_rebalance_run_before_it() -> None:
    alloc, a, _ = two_members()
    requests: list[tuple[str, int | None]] = []
    alloc._timer_requests = requests
    at = T0 + REBALANCE_S * S
    a.schedule("late", at + S)
    a.schedule("now", at)
    alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0 + S)
    requests.clear()
    a.on_fire = [TargetPosition(symbol="IBM", qty=D(20))]
    assert qty(rebalance(alloc, at)) == {"IBM": D(20)}  # the clock may fire "now" after the rebalance
    assert a.fired == [("now", at)]
    assert ("member/a/now", None) in requests  # disarmed: the host drops it when it comes
    assert ("member/a/late", None) not in requests


def test_a_member_placing_orders_is_a_type_error_naming_it() -> None:
    alloc, a, _ = two_members()
    order = OrderIntent(
        intent_id="a-1", strategy="a", symbol="IBM", side=Side.BUY, qty=D(1), order_type=OrderType.MARKET, ts_init=T0
    )
    for wrong, named in ((order, "OrderIntent"), (a.cancel("a-1", T0), "CancelIntent")):
        a.queue = [wrong]
        refused = rf"member 'a' \(Scripted\.on_bbo\) returned {named}; members of an allocation state targets .*"
        with pytest.raises(TypeError, match=refused + "the allocation places the orders"):
            alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0)
    a.queue = None  # type: ignore[assignment]
    with pytest.raises(TypeError, match=r"member 'a': Scripted\.on_bbo returned None; a hook must return a list"):
        alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0)
    a.queue = ["buy"]
    with pytest.raises(TypeError, match=r"member 'a' \(Scripted\.on_bbo\) returned str"):
        alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0)
    a.queue = [TargetPosition(symbol="IBM", qty=D(-5))]
    with pytest.raises(ShortNotAllowed, match=r"member 'a' targets -5 of 'IBM'"):
        alloc.on_bbo(quote("IBM", "180.00", "180.10"), T0)


def test_features_are_the_union_of_the_members_and_each_member_sees_its_own() -> None:
    rsi = {"name": "rsi", "indicator": "rsi", "input": "bar_close", "params": {"period": 3}}
    vol = {"name": "vol", "indicator": "volatility", "input": "bar_close", "params": {"window": 5}}
    alloc = allocation(
        {
            "a": {"strategy": "scripted", "budget": "0.5", "params": {"features": [rsi, vol]}},
            "b": {"strategy": "weighted", "budget": "0.5", "params": {"features": [rsi]}},  # the same rsi: shared
        }
    )
    assert [spec.name for spec in alloc.features] == ["rsi", "vol"]
    pipeline = FeaturePipeline(alloc.features)
    alloc.feature_values = FeatureView(pipeline, ["rsi", "vol"])
    assert alloc.feature_values.pipeline is pipeline
    assert alloc.members["a"].feature_values.names == ("rsi", "vol")
    assert alloc.members["b"].feature_values.pipeline is pipeline
    with pytest.raises(KeyError, match="'vol' was not declared"):
        alloc.members["b"].feature_values.get("IBM", "vol")
    clash = {**rsi, "params": {"period": 14}}
    with pytest.raises(FeatureConflict, match=r"features\.rsi: defined differently by strategy 'a'.*share one"):
        allocation(
            {
                "a": {"strategy": "scripted", "budget": "0.5", "params": {"features": [rsi]}},
                "b": {"strategy": "scripted", "budget": "0.5", "params": {"features": [clash]}},
            }
        )


def test_sample_members_work_unchanged_and_inverse_vol_states_weights() -> None:
    alloc = allocation({"inverse-vol": {"budget": "0.6", "params": {"window": 20}}, "rsi-reversion": {"budget": "0.4"}})
    iv, rsi = alloc.members["inverse-vol"], alloc.members["rsi-reversion"]
    assert isinstance(iv, InverseVol) and isinstance(rsi, RsiReversion)
    assert isinstance(iv, StatesWeights) and not isinstance(rsi, StatesWeights)
    assert iv.target_weights() is None  # nothing before its first rebalance
    assert STRATEGIES["allocation"]("allocation", {"capital": "1", "members": {"rsi-reversion": {"budget": "1"}}})


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"members": {"rsi-reversion": {"budget": "1"}}}, r"strategy\.params: Object missing required field capital"),
        ({"capital": "0", "members": {"rsi-reversion": {"budget": "1"}}}, r"strategy\.params\.capital: must be"),
        ({"capital": "1", "members": {}}, r"strategy\.params\.members: no members"),
        ({"capital": "1", "members": {"nope": {"budget": "1"}}},
         r"strategy\.params\.members\.nope: unknown strategy 'nope' \(known: .*inverse-vol.*rsi-reversion"),
        ({"capital": "1", "members": {"x": {"strategy": "nope", "budget": "1"}}},
         r"strategy\.params\.members\.x\.strategy: unknown strategy 'nope'"),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "1.5"}}},
         r"strategy\.params\.members\.rsi-reversion\.budget: budget of strategy 'rsi-reversion' is 1\.5, outside"),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "lots"}}},
         r"strategy\.params\.members\.rsi-reversion\.budget: Invalid decimal"),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "1", "extra": 1}}},
         r"strategy\.params\.members\.rsi-reversion: Object contains unknown field extra"),
        ({"capital": "1", "members": {"a/b": {"strategy": "rsi-reversion", "budget": "1"}}},
         r"strategy\.params\.members\.a/b: a member's key must be"),
        ({"capital": "1", "members": {"a": {"strategy": "rsi-reversion", "budget": "0.6"},
                                      "b": {"strategy": "rsi-reversion", "budget": "0.6"}}},
         r"strategy\.params\.members: strategy budgets sum to 1\.2, more than 1"),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "1", "params": {"period": 0}}}},
         r"strategy\.params\.members\.rsi-reversion\.params: period must be at least 1"),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "1", "params": {"nope": 1}}}},
         r"strategy\.params\.members\.rsi-reversion\.params: Object contains unknown field nope"),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "1"}}, "cash_buffer": "1"},
         r"strategy\.params\.cash_buffer: cash_buffer is 1, outside \[0, 1\)"),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "1"}}, "max_weight_per_symbol": "0"},
         r"strategy\.params\.max_weight_per_symbol: "),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "1"}}, "lot_sizes": {"BAC": "0.5"}},
         r"strategy\.params\.lot_sizes: lot size of 'BAC' is 0\.5, fractional"),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "1"}}, "rebalance_s": 0},
         r"strategy\.params\.rebalance_s: must be a positive number"),
        ({"capital": "1", "members": {"rsi-reversion": {"budget": "1"}}, "gross_limit": "1"},
         r"strategy\.params: Object contains unknown field gross_limit"),
    ],
)  # fmt: skip
def test_bad_parameters_are_config_errors_naming_the_key(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Allocator.from_params("alloc", params, STRATEGIES)


def test_every_problem_is_reported_at_once() -> None:
    bad = {"capital": "-1", "cash_buffer": "2", "members": {"rsi-reversion": {"budget": "2", "params": {"qty": "0"}}}}
    with pytest.raises(ConfigError) as info:
        Allocator.from_params("alloc", bad, STRATEGIES)
    assert [path for path, _ in info.value.problems] == [
        "strategy.params.capital",
        "strategy.params.members.rsi-reversion.budget",
        "strategy.params.cash_buffer",
        "strategy.params.members.rsi-reversion.params",
    ]


# ---------------------------------------------------------------- property


decimals = st.decimals(min_value=D("0.01"), max_value=D("500"), places=2)


def down(value: Decimal) -> Decimal:
    """Truncated to 1e-6: rounding up would let budgets (or weights) sum past 1."""
    return value.quantize(D("0.000001"), rounding=ROUND_DOWN)


@st.composite
def cases(draw: st.DrawFn) -> tuple[dict[str, Any], list[dict[str, str]], list[dict[str, int]], dict[str, Decimal]]:
    symbols = draw(st.lists(st.sampled_from(["AAA", "BBB", "CCC", "DDD"]), min_size=1, max_size=4, unique=True))
    mids = {symbol: draw(decimals) for symbol in symbols}
    count = draw(st.integers(1, 4))
    budgets = [draw(st.integers(0, 100)) for _ in range(count)]
    total = max(sum(budgets), 100)
    settings = {
        "capital": str(draw(st.integers(1_000, 10_000_000))),
        "cash_buffer": str(D(draw(st.integers(0, 99))) / 100),
        "max_weight_per_symbol": str(D(draw(st.integers(1, 100))) / 100),
        "max_gross": str(D(draw(st.integers(1, 100))) / 100),
        "members": {
            f"m{k}": {"strategy": "weighted" if k % 2 else "scripted", "budget": str(down(D(b) / total))}
            for k, b in enumerate(budgets)
        },
    }
    weights: list[dict[str, str]] = []
    positions: list[dict[str, int]] = []
    for _ in range(count):
        held = draw(st.lists(st.sampled_from(symbols), unique=True))
        raw = [draw(st.integers(0, 1000)) for _ in held]
        scale = max(sum(raw), 1000)
        weights.append({symbol: str(down(D(w) / scale)) for symbol, w in zip(held, raw, strict=True)})
        positions.append({symbol: draw(st.integers(0, 100_000)) for symbol in held})
    return settings, weights, positions, mids


@settings(max_examples=150, deadline=None)
@given(cases())
def test_targets_never_exceed_the_gross_limit_nor_a_symbols_cap(
    case: tuple[dict[str, Any], list[dict[str, str]], list[dict[str, int]], dict[str, Decimal]],
) -> None:
    params, weights, positions, mids = case
    members = params.pop("members")
    alloc = allocation(members, **params)
    for symbol, mid in mids.items():
        alloc.on_bbo(quote(symbol, str(mid), str(mid)), T0)
    for k, key in enumerate(members):
        member = alloc.members[key]
        if isinstance(member, Weighted):
            member.state(weights[k])
        else:
            assert isinstance(member, Scripted)
            member.queue = [TargetPosition(symbol=s, qty=D(q)) for s, q in positions[k].items()]
    first = next(iter(mids))
    alloc.on_bbo(quote(first, str(mids[first]), str(mids[first])), T0)  # delivers the queued positions
    targets = rebalance(alloc)
    capital = D(params["capital"])
    limit = min(D(params["max_gross"]), 1 - D(params["cash_buffer"]))
    notional = {symbol: abs(t.qty) * alloc._mids[symbol] for symbol, t in targets.items()}
    assert sum(notional.values(), D(0)) <= capital * limit
    for symbol, value in notional.items():
        assert value <= capital * D(params["max_weight_per_symbol"])
        assert value <= D(targets[symbol].features["weight"]) * capital  # never more than the weight
        assert targets[symbol].qty >= 0 and targets[symbol].qty == targets[symbol].qty.to_integral_value()


# ---------------------------------------------------------------- in a real strategy host


async def test_in_a_strategy_host_members_read_features_and_timers_trade() -> None:
    params = {
        "capital": "10000",
        "rebalance_s": 300,
        "members": {"rsi-reversion": {"budget": "0.5", "params": {"period": 3, "qty": "20"}}},
    }
    async with Host(lambda: STRATEGIES["allocation"]("allocation", params)) as host:
        await host.at(T0, topics.MD_BBO, bbo(T0, "9.99", "10.01"))  # the first quote arms the rebalance
        for n, close in enumerate(["10.00", "9.90", "9.80", "9.70"]):
            end = T0 + (n + 1) * 60 * S
            await host.at(end, topics.MD_BAR, bar(end, close))  # oversold on the 4th: the member targets 20
        assert host.intents() == []  # nothing before the rebalance
        await host.at(T0 + 301 * S)
        intents = host.intents()
        assert [(i.strategy, i.symbol, i.side, i.qty, i.ts_init) for i in intents] == [
            ("allocation", "IBM", Side.BUY, D(20), T0 + 300 * S)
        ]
        signal = host.signals()[-1]
        assert signal.trigger == "StrategyTimer"
        # 20 × 10.00 = 200 of its 5000: weight 0.04, 0.02 of the whole.
        assert signal.features["rsi-reversion.weight"] == "0.04" and signal.features["weight"] == "0.02"
        assert signal.features["target_qty"] == "20" and signal.features["position"] == "0"
        await host.at(T0 + 601 * S)  # in flight: the next rebalance orders nothing more
        assert len(host.intents()) == 1


# ---------------------------------------------------------------- a real replay


@pytest.mark.skipif(not all(p.exists() for p in DAY), reason=f"no recordings at {TICKS}")
def test_the_sample_config_trades_ibm_and_bac_in_a_replay_of_one_day(tmp_path: Path) -> None:
    config = tmp_path / "allocation.toml"
    config.write_text((ROOT / "configs" / "allocation.toml").read_text())  # relative paths land in tmp_path
    journal = tmp_path / "journal.db"
    done = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "replay", "--config", str(config), "--journal", str(journal),
         *map(str, DAY), "--json"],
        capture_output=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = orjson.loads(done.stdout)
    assert summary["strategy"] == "allocation" and summary["actor_crashes"] == 0
    assert summary["orders"] > 10 and summary["fills"] >= summary["orders"]
    held = {symbol: Decimal(q) for symbol, q in summary["positions"].items()}
    assert set(held) == {"IBM", "BAC"} and all(q > 0 for q in held.values())
    assert summary["trading_state"] == "active"
    shown = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "journal", "show", str(journal), "--json"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    signals = [e["record"] for e in orjson.loads(shown.stdout) if e["kind"] == "SignalRecorded"]
    assert signals and all(s["strategy"] == "allocation" for s in signals)
    assert all({"weight", "mid", "capital", "scale", "target_qty"} <= set(s["features"]) for s in signals)
    assert any("inverse-vol.weight" in s["features"] for s in signals)
    assert any("rsi-reversion.qty" in s["features"] for s in signals)
    for s in signals:  # each consolidated weight is the capped sum of the members' contributions
        contributions = sum(D(v) for k, v in s["features"].items() if k.endswith(".contribution"))
        assert D(s["features"]["weight"]) <= min(contributions, D("0.4"))
