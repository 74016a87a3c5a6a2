"""Execution algorithms run live: the strategy host drives them, their children go through risk,
their re-pegs cancel through risk and the order manager, and a target is worked by one of them.

The first half drives a real :class:`StrategyActor` on a bus under a simulated clock (the
harness of tests/test_strategy_api.py); the second replays a recorded day through the whole
engine (risk, the order manager and its journal, the simulated venue) with
``[strategy.execution]`` set, and reads the journal back.
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from actors.execution import TWAP, Bracket, ExecutionAlgo
from actors.strategies.base import Decision, Strategy, TargetPosition
from engine import topics
from engine.config import ExecutionSection
from engine.messages import (
    BestBidOffer,
    CancelIntent,
    CancelRejected,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
)
from tests.helpers import shared_data
from tests.test_strategy_api import T0, Host, S, bbo, fill

TICKS = shared_data() / "us-equity-ticks"
IBM_DAY = [TICKS / "ibm" / f"20131007_{k}.zip" for k in ("quote", "trade")]
BOTH_DAYS = [TICKS / s / f"20131007_{k}.zip" for s in ("ibm", "bac") for k in ("quote", "trade")]


def update(intent: OrderIntent, status: OrderStatus, filled: str = "0") -> OrderUpdate:
    return OrderUpdate(
        client_order_id=f"c-{intent.intent_id}",
        venue_order_id=f"v-{intent.intent_id}",
        status=status,
        filled_qty=Decimal(filled),
        intent_id=intent.intent_id,
        strategy=intent.strategy,
        ts_event=T0,
        ts_recv=T0,
    )


def cancels(out: list[Any]) -> list[CancelIntent]:
    return [m for m in out if isinstance(m, CancelIntent)]


# ---------------------------------------------------------------- a strategy's own algorithm


class Slicer(Strategy):
    """Starts one TWAP of 30 IBM over 30 s in 3 slices at the first quote; cancels on request."""

    name = "slicer"
    done: list[tuple[str, Decimal]] = []
    refused: list[CancelRejected] = []

    def __init__(self) -> None:
        self.started = False

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        if self.started:
            return []
        self.started = True
        algo = TWAP(
            "IBM", Side.BUY, Decimal(30), now_ns, now_ns + 30 * S, 3,
            lot=Decimal(1), strategy=self.name, make_intent_id=self.next_intent_id,
        )  # fmt: skip
        return [algo]

    def on_execution_done(self, algo: ExecutionAlgo, now_ns: int) -> Sequence[Decision]:
        self.done.append((type(algo).__name__, algo.filled_qty))
        return []

    def on_cancel_rejected(self, rejection: CancelRejected, now_ns: int) -> Sequence[Decision]:
        self.refused.append(rejection)
        return []


async def test_the_host_runs_a_strategys_twap_on_its_timers_and_reports_when_it_is_done() -> None:
    Slicer.done, Slicer.refused = [], []
    async with Host(Slicer) as host:
        await host.at(T0, topics.MD_BBO, bbo(T0, "10.00", "10.02"))
        first = host.intents()
        assert [(i.side, i.qty) for i in first] == [(Side.BUY, Decimal(10))]
        signal = host.signals()[-1]
        assert signal.features == {"algo": "TWAP#1"}  # the audit trail names the algorithm
        await host.at(T0 + S, topics.ORDER_FILL, fill(first[0], "10", 1))
        await host.at(T0 + 10 * S)  # the second slice is due: a timer of the actor, nothing else
        second = host.intents()[-1]
        assert second.qty == Decimal(10) and len(host.intents()) == 2
        await host.at(T0 + 11 * S, topics.ORDER_FILL, fill(second, "10", 1))
        await host.at(T0 + 20 * S)
        third = host.intents()[-1]
        assert len(host.intents()) == 3
        assert Slicer.done == []
        await host.at(T0 + 21 * S, topics.ORDER_FILL, fill(third, "10", 1))
        assert Slicer.done == [("TWAP", Decimal(30))]
        assert host.actor.positions == {"IBM": Decimal(30)}
        stats = host.actor
        assert (stats.algos_started, len(stats._algos)) == (1, 0)


class BadAlgo(Strategy):
    """Builds an algorithm for another strategy: its children's fills would never come back."""

    name = "bad-algo"

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        return [
            TWAP("IBM", Side.BUY, Decimal(3), now_ns, now_ns + S, 1, lot=Decimal(1), strategy="someone-else",
                 make_intent_id=self.next_intent_id)
        ]  # fmt: skip


async def test_an_algorithm_built_for_another_strategy_is_a_type_error() -> None:
    from tests.test_strategy_api import _bare_actor

    actor = _bare_actor(BadAlgo)
    with pytest.raises(TypeError, match=r"strategy=self\.name"):
        await actor.handle(bbo(T0, "10.00", "10.02"))


# ---------------------------------------------------------------- targets worked by an algorithm


class Targets(Strategy):
    """Returns the next scripted IBM target on every quote."""

    name = "targets"
    script: list[Decimal] = []

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        return [TargetPosition(symbol="IBM", qty=self.script.pop(0))]


async def test_a_repeated_target_is_worked_by_one_twap_and_a_new_one_waits_for_the_old_ones_cancel() -> None:
    Targets.script = [Decimal(q) for q in ("30", "30", "30", "0", "0", "0")]
    execution = ExecutionSection(algo="twap", duration_s=30, slices=3)
    async with Host(Targets, execution=execution) as host:
        quote = bbo(T0, "10.00", "10.02")
        await host.at(T0, topics.MD_BBO, quote)
        first = host.intents()
        assert [(i.side, i.qty) for i in first] == [(Side.BUY, Decimal(10))]
        await host.at(T0 + S, topics.MD_BBO, quote)  # the same target: already being worked
        await host.at(T0 + 2 * S, topics.ORDER_FILL, fill(first[0], "10", 1))
        await host.at(T0 + 3 * S, topics.MD_BBO, quote)  # holds 10, 20 reserved by the TWAP: nothing
        assert len(host.intents()) == 1
        await host.at(T0 + 10 * S)
        second = host.intents()[-1]
        assert (second.side, second.qty) == (Side.BUY, Decimal(10))
        # A new target (flat) while the second slice works: the TWAP stops and cancels it, and
        # nothing is sold yet: how much to sell depends on whether the slice fills first.
        await host.at(T0 + 11 * S, topics.MD_BBO, quote)
        assert [c.intent_id for c in cancels(host.out)] == [second.intent_id]
        assert len(host.intents()) == 2
        await host.at(T0 + 12 * S, topics.MD_BBO, quote)  # flat again: still waiting, no second cancel
        assert len(cancels(host.out)) == 1 and len(host.intents()) == 2
        # The slice filled 4 before the cancel took: holds 14, so the new TWAP sells 14, not 10 or 20.
        await host.at(T0 + 13 * S, topics.ORDER_FILL, fill(second, "4", 1))
        await host.at(T0 + 14 * S, topics.ORDER_EVENT, update(second, OrderStatus.CANCELED, "4"))
        sell = host.intents()[-1]
        assert sell.side is Side.SELL and len(host.intents()) == 3
        twap = host.actor._target_algos["IBM"].algo
        assert isinstance(twap, TWAP) and twap.total_qty == Decimal(14)
        assert sell.qty == Decimal(4)  # floor(14 / 3) on a lot of 1: the first of three slices
        assert host.actor.positions == {"IBM": Decimal(14)}
        await host.at(T0 + 15 * S, topics.MD_BBO, quote)  # the same flat target: nothing new
        assert host.intents()[-1] == sell and len(cancels(host.out)) == 1


async def test_a_refused_slice_ends_the_targets_twap_and_the_next_target_tries_again() -> None:
    from engine.messages import RiskRejected

    Targets.script = [Decimal(q) for q in ("30", "30")]
    execution = ExecutionSection(algo="twap", duration_s=30, slices=3)
    async with Host(Targets, execution=execution) as host:
        quote = bbo(T0, "10.00", "10.02")
        await host.at(T0, topics.MD_BBO, quote)
        first = host.intents()[-1]
        refused = RiskRejected(
            intent_id=first.intent_id, strategy="targets", symbol="IBM", reason="MARKET_CLOSED", detail="",
            inputs={}, ts_init=T0,
        )  # fmt: skip
        await host.at(T0 + S, topics.ORDER_EVENT, refused)
        assert host.actor._target_algos == {} and host.actor._in_flight == {}
        await host.at(T0 + 30 * S)  # no slice is sent for a stopped TWAP
        assert len(host.intents()) == 1
        await host.at(T0 + 31 * S, topics.MD_BBO, quote)  # the repeated target starts a new one
        again = host.intents()[-1]
        assert again.intent_id != first.intent_id and (again.side, again.qty) == (Side.BUY, Decimal(10))


# ---------------------------------------------------------------- through the whole engine


def _replay(tmp_path: Path, config: str, files: list[Path]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Replay ``files`` with ``config``; return the summary and the journal's events in order."""
    path = tmp_path / "run.toml"
    path.write_text(config)
    journal = tmp_path / "journal.db"
    done = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "replay", "--config", str(path), "--journal", str(journal),
         *map(str, files), "--json"],
        capture_output=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    shown = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "journal", "show", str(journal), "--json"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr.decode()[-2000:]
    events: list[dict[str, Any]] = orjson.loads(shown.stdout)
    return orjson.loads(done.stdout), events


def _children(events: list[dict[str, Any]]) -> tuple[dict[str, str], dict[str, str]]:
    """intent id → the algorithm that sent it (from its signal); client order id → intent id."""
    algo_of = {
        e["record"]["intent_id"]: e["record"]["features"]["algo"]
        for e in events
        if e["kind"] == "SignalRecorded" and "algo" in e["record"]["features"]
    }
    intent_of = {
        e["record"]["order"]["client_order_id"]: e["record"]["order"]["intent_id"]
        for e in events
        if e["kind"] == "OrderSubmitting"
    }
    return algo_of, intent_of


@pytest.mark.skipif(not all(p.exists() for p in IBM_DAY), reason=f"no recordings at {TICKS}")
def test_a_chasers_repegs_cancel_through_the_engine_and_two_of_its_children_never_work_at_once(
    tmp_path: Path,
) -> None:
    config = '[strategy]\nname = "rsi-reversion"\n[strategy.execution]\nalgo = "chaser"\ntimeout_s = 2.0\n'
    summary, events = _replay(tmp_path, config, IBM_DAY)
    assert summary["orders"] > 3 and summary["fills"] > 0
    algo_of, intent_of = _children(events)
    requested = [e["record"] for e in events if e["kind"] == "CancelRequested"]
    assert requested, "the chaser never re-pegged"
    # Every re-peg went through risk and the order manager: journaled before the venue's CANCELED.
    final: dict[str, int] = {}
    for i, e in enumerate(events):
        if e["kind"] == "OrderUpdate" and OrderStatus(e["record"]["status"]).is_terminal:
            final.setdefault(e["record"]["client_order_id"], i)
    positions = {e["record"]["client_order_id"]: i for i, e in enumerate(events) if e["kind"] == "CancelRequested"}
    for cid, at in positions.items():
        assert cid in final and final[cid] > at  # every cancel the order manager journaled ended its order
    first = requested[0]["client_order_id"]
    story = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "journal", "show", str(tmp_path / "journal.db"), "--order", first],
        capture_output=True, timeout=60, text=True,
    )  # fmt: skip
    assert f"cancel of {first} asked by LimitChaser#" in story.stdout, story.stdout
    # At most one child of a chaser works at any time: a child is submitted only after the one
    # before it has ended (cancelled or filled), in journal order.
    working: dict[str, str] = {}
    for e in events:
        record = e["record"]
        if e["kind"] == "OrderSubmitting":
            label = algo_of.get(record["order"]["intent_id"])
            assert label is not None and label.startswith("LimitChaser#")
            assert label not in working, f"{label}: a child was sent while {working.get(label)} still worked"
            working[label] = record["order"]["client_order_id"]
        elif e["kind"] == "OrderUpdate" and OrderStatus(record["status"]).is_terminal:
            label = algo_of.get(intent_of.get(record["client_order_id"], ""), "")
            if working.get(label) == record["client_order_id"]:
                del working[label]


@pytest.mark.skipif(not all(p.exists() for p in BOTH_DAYS), reason=f"no recordings at {TICKS}")
def test_inverse_vol_targets_worked_by_twap_never_buy_more_than_the_target_asked(tmp_path: Path) -> None:
    config = (
        '[strategy]\nname = "inverse-vol"\n[strategy.execution]\nalgo = "twap"\nduration_s = 600\nslices = 5\n'
        "[risk]\nmax_order_qty = 5000\n"
    )
    summary, events = _replay(tmp_path, config, BOTH_DAYS)
    assert summary["orders"] > 10 and summary["fills"] >= summary["orders"]
    held = {symbol: Decimal(qty) for symbol, qty in summary["positions"].items()}
    assert set(held) == {"IBM", "BAC"} and all(qty > 0 for qty in held.values())
    algo_of, intent_of = _children(events)
    asked: dict[str, Decimal] = {}
    sent: defaultdict[str, list[Decimal]] = defaultdict(list)
    filled: defaultdict[str, Decimal] = defaultdict(Decimal)
    for e in events:
        record = e["record"]
        if e["kind"] == "SignalRecorded":
            f = record["features"]
            label = f["algo"]
            assert label.startswith("TWAP#")
            # The difference the target asked for when the TWAP started (its first child's signal).
            asked.setdefault(label, abs(Decimal(f["target_qty"]) - Decimal(f["position"]) - Decimal(f["in_flight"])))
        elif e["kind"] == "OrderSubmitting":
            sent[algo_of[record["order"]["intent_id"]]].append(Decimal(record["order"]["qty"]))
        elif e["kind"] == "Fill":
            filled[algo_of[intent_of[record["client_order_id"]]]] += Decimal(record["qty"])
    assert len(sent) > 3
    for label, children in sent.items():
        assert len(children) <= 5, f"{label} sent {len(children)} children for 5 slices"
        assert filled[label] <= asked[label], f"{label} filled {filled[label]} of {asked[label]} asked"


class Protected(Strategy):
    """Buys 10 IBM at the first quote inside a bracket: stop 9.50, take-profit 11.00."""

    name = "protected"
    done: list[str] = []

    def __init__(self) -> None:
        self.started = False

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        if self.started:
            return []
        self.started = True
        entry = OrderIntent(
            intent_id=self.next_intent_id(), strategy=self.name, symbol="IBM", side=Side.BUY, qty=Decimal(10),
            order_type=OrderType.MARKET, ts_init=now_ns,
        )  # fmt: skip
        return [Bracket(entry, Decimal("9.50"), Decimal("11.00"), make_intent_id=self.next_intent_id)]

    def on_execution_done(self, algo: ExecutionAlgo, now_ns: int) -> Sequence[Decision]:
        self.done.append(algo.reason)
        return []


async def test_an_emulated_bracket_cancels_its_take_profit_through_a_cancel_intent_before_the_stop_exits() -> None:
    Protected.done = []
    async with Host(Protected) as host:
        await host.at(T0, topics.MD_BBO, bbo(T0, "10.00", "10.02"))
        (entry,) = host.intents()
        await host.at(T0 + S, topics.ORDER_FILL, fill(entry, "10", 1))
        await host.at(T0 + S, topics.ORDER_EVENT, update(entry, OrderStatus.FILLED, "10"))
        take_profit = host.intents()[-1]
        resting = (take_profit.side, take_profit.qty, take_profit.limit_price)
        assert resting == (Side.SELL, Decimal(10), Decimal("11.00"))
        await host.at(T0 + 2 * S, topics.MD_BBO, bbo(T0 + 2 * S, "9.45", "9.47"))  # the stop is hit
        assert [c.intent_id for c in cancels(host.out)] == [take_profit.intent_id]
        assert host.intents()[-1] == take_profit  # no stop exit while the take-profit may still fill
        await host.at(T0 + 3 * S, topics.ORDER_EVENT, update(take_profit, OrderStatus.CANCELED))
        stop = host.intents()[-1]
        assert (stop.side, stop.qty, stop.order_type) == (Side.SELL, Decimal(10), OrderType.MARKET)
        assert Protected.done == []
        await host.at(T0 + 4 * S, topics.ORDER_FILL, fill(stop, "10", 1))
        await host.at(T0 + 4 * S, topics.ORDER_EVENT, update(stop, OrderStatus.FILLED, "10"))
        assert len(Protected.done) == 1 and Protected.done[0].startswith("stop_loss exit complete")
        assert host.actor.positions == {"IBM": Decimal(0)}


PROFILE_DAYS = [TICKS / "ibm" / f"2013100{d}_trade.zip" for d in (8, 9)]


@pytest.mark.skipif(not all(p.exists() for p in IBM_DAY + PROFILE_DAYS), reason=f"no recordings at {TICKS}")
def test_vwap_targets_slice_by_the_recorded_volume_profile_inside_the_session_only(tmp_path: Path) -> None:
    profile = ", ".join(f'"{p}"' for p in PROFILE_DAYS)
    config = (
        '[strategy]\nname = "inverse-vol"\n[strategy.params]\nrebalance_s = 3600\n'
        f'[strategy.execution]\nalgo = "vwap"\nduration_s = 3600\nbucket_minutes = 10\nvwap_trades = [{profile}]\n'
    )
    summary, events = _replay(tmp_path, config, IBM_DAY)
    assert summary["orders"] > 2 and summary["fills"] >= summary["orders"]
    assert Decimal(summary["positions"]["IBM"]) > 0
    algo_of, _ = _children(events)
    assert algo_of and all(label.startswith("VWAPSchedule#") for label in algo_of.values())
    open_ns, close_ns = 1381152600 * S, 1381176000 * S  # 2013-10-07 09:30 and 16:00 New York
    times = [e["record"]["ts_init"] for e in events if e["kind"] == "SignalRecorded"]
    # A profile has no volume outside the session: no slice is due there (a target made before
    # the open is refused by the host, logged, and repeated by the strategy's next rebalance).
    assert all(open_ns <= t < close_ns for t in times)


def test_a_vwap_profile_file_that_is_missing_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(f'[strategy.execution]\nalgo = "vwap"\nvwap_trades = ["{tmp_path / "nope.zip"}"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "replay", "--config", str(path), "--synthetic", "10"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert b"strategy.execution.vwap_trades" in done.stderr and b"nope.zip" in done.stderr


def test_a_chaser_faster_than_risks_duplicate_window_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """Its re-peg at an unchanged touch would be the same order again: DUPLICATE_ORDER, and it gives up."""
    path = tmp_path / "run.toml"
    path.write_text('[strategy.execution]\nalgo = "chaser"\ntimeout_s = 0.5\n[risk]\nduplicate_window_s = 1.0\n')
    done = subprocess.run([sys.executable, "-m", "kestrel.cli", "check-config", str(path)], capture_output=True)
    assert done.returncode == 2
    assert b"strategy.execution.timeout_s: 0.5 s is under [risk] duplicate_window_s (1 s)" in done.stderr
    from engine.config import parse_config
    from kestrel.node import execution_settings

    resolved = execution_settings(parse_config({"strategy": {"execution": {"algo": "chaser"}}}, "test"))
    assert resolved.min_timeout_s == 1.0  # a quarter of the 2 s default, raised to the 1 s window
