"""The strategy API: bars and timers reach the hooks, targets become order deltas, declared
features are computed once and shared, a pinned pipeline refuses a run that differs."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from actors.features import EMA, RSI, SMA, FeatureConflict, FeaturePipelineMismatch, FeatureSpec, pipeline_hash
from actors.strategies.base import Decision, Strategy, TargetPosition, feature
from actors.strategies.rsi_reversion import RsiReversion
from actors.strategy_host import StrategyActor, build_pipeline
from engine import topics
from engine.actor import Actor, ActorContext
from engine.bus import Bus
from engine.clock import NS_PER_S, SimClock
from engine.config import ExecutionSection
from engine.logs import get_logger
from engine.messages import (
    Bar,
    BestBidOffer,
    Fill,
    MarketDataStatus,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    PortfolioQuery,
    PortfolioSnapshot,
    RiskRejected,
    Side,
    SignalRecorded,
    WorkingOrders,
    WorkingOrdersQuery,
    WorkingOrderView,
)
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

S = NS_PER_S
T0 = 1_700_000_040 * S
CLI = [sys.executable, "-m", "kestrel.cli"]


# ---------------------------------------------------------------- harness


class Ledger(Actor):
    """Answers the host's start-up question: what do we hold?"""

    def __init__(self, positions: dict[str, Decimal]) -> None:
        self.positions = positions

    async def handle(self, message: Any) -> Any:
        assert isinstance(message, PortfolioQuery)
        return PortfolioSnapshot(
            cash=Decimal(100_000), positions=self.positions, realized_pnl=Decimal(0), fees=Decimal(0), fills=0
        )


class Orders(Actor):
    """The order manager's answer to a starting host: these orders may still fill."""

    def __init__(self, working: list[WorkingOrderView]) -> None:
        self.working = working

    async def handle(self, message: Any) -> Any:
        assert isinstance(message, WorkingOrdersQuery)
        return WorkingOrders(orders=self.working)


class Tap(Actor):
    def __init__(self, sink: list[Any]) -> None:
        self.sink = sink

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ORDER_INTENT)
        self.ctx.subscribe(topics.AUDIT)

    async def handle(self, message: Any) -> Any:
        self.sink.append(message)


class Host:
    """One strategy actor on a bus under a SimClock, driven like a replay drives it."""

    def __init__(
        self,
        build: Callable[[], Strategy],
        positions: dict[str, Decimal] | None = None,
        working: list[WorkingOrderView] | None = None,
        execution: ExecutionSection | None = None,
    ) -> None:
        self.bus, self.clock = Bus(), SimClock(T0)
        self.out: list[Any] = []
        self.actors: list[StrategyActor] = []
        ledger = dict(positions or {})
        orders = [] if working is None else [ActorSpec("orders", lambda: Orders(working))]

        def make() -> StrategyActor:
            actor = StrategyActor(build, "ledger", orders_address="orders" if orders else None, execution=execution)
            self.actors.append(actor)
            return actor

        self.root = Supervisor(
            SupervisorSpec(
                "root",
                [
                    ActorSpec("ledger", lambda: Ledger(ledger)),
                    *orders,
                    ActorSpec("tap", lambda: Tap(self.out)),
                    ActorSpec("strategy", make),
                ],
            ),
            self.bus,
            self.clock,
            random.Random(1),
        )

    async def __aenter__(self) -> Host:
        self.task = asyncio.create_task(self.root.run())
        await self.root.started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    @property
    def actor(self) -> StrategyActor:
        return self.actors[-1]

    async def at(self, ts: int, topic: str | None = None, message: object = None) -> None:
        """Fire every timer due by ``ts`` (one deadline at a time), then publish ``message``."""
        while (deadline := self.clock.next_deadline_ns()) is not None and deadline <= ts:
            self.clock.advance_to(deadline)
            await self.bus.idle()
        self.clock.advance_to(ts)
        if topic is not None:
            await self.bus.publish(topic, message)
        await self.bus.idle()

    def intents(self) -> list[OrderIntent]:
        return [m for m in self.out if isinstance(m, OrderIntent)]

    def signals(self) -> list[SignalRecorded]:
        return [m for m in self.out if isinstance(m, SignalRecorded)]


def bbo(ts: int, bid: str, ask: str, symbol: str = "IBM") -> BestBidOffer:
    return BestBidOffer(
        symbol=symbol,
        bid_price=Decimal(bid),
        bid_size=Decimal(100),
        ask_price=Decimal(ask),
        ask_size=Decimal(100),
        provider="test",
        ts_event=ts,
        ts_init=ts,
    )


def bar(ts_end: int, close: str, symbol: str = "IBM") -> Bar:
    price = Decimal(close)
    return Bar(
        symbol=symbol,
        interval_s=60,
        open=price,
        high=price,
        low=price,
        close=price,
        volume=Decimal(0),
        trades=0,
        start_ns=ts_end - 60 * S,
        end_ns=ts_end,
        provider="test",
        ts_init=ts_end,
    )


def fill(intent: OrderIntent, qty: str, n: int) -> Fill:
    return Fill(
        client_order_id=f"c-{intent.intent_id}",
        venue_order_id=f"v-{intent.intent_id}",
        execution_id=f"x-{intent.intent_id}-{n}",
        intent_id=intent.intent_id,
        strategy=intent.strategy,
        symbol=intent.symbol,
        side=intent.side,
        qty=Decimal(qty),
        price=Decimal(100),
        fee=Decimal(0),
        ts_event=T0,
        ts_recv=T0,
    )


# ---------------------------------------------------------------- timers and bars


class Clockwork(Strategy):
    """Asks for timers; records when each fires. ``a`` repeats every 5 s, three times."""

    def __init__(self) -> None:
        self.name = "clockwork"
        self.fired: list[tuple[str, int]] = []
        self.bars: list[Bar] = []

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        if not self.fired and bbo.ts_event == T0:
            self.schedule("a", now_ns + 5 * S)
            self.schedule("b", now_ns + 2 * S)
            self.schedule("b", now_ns + 3 * S)  # replaces the first "b"
            self.schedule("c", now_ns + 4 * S)
            self.cancel_timer("c")
            self.schedule("past", now_ns - S)  # already due: fires at once
        return []

    def on_bar(self, bar: Bar, now_ns: int) -> Sequence[Decision]:
        self.bars.append(bar)
        return []

    def on_timer(self, name: str, now_ns: int) -> Sequence[Decision]:
        self.fired.append((name, now_ns))
        if name == "a" and sum(1 for n, _ in self.fired if n == "a") < 3:
            self.schedule("a", now_ns + 5 * S)
        if name == "b":  # a timer may trade like any hook
            intent = OrderIntent(
                intent_id=self.next_intent_id(),
                strategy=self.name,
                symbol="IBM",
                side=Side.BUY,
                qty=Decimal(1),
                order_type=OrderType.MARKET,
                ts_init=now_ns,
            )
            return [self.note_features(intent, {"why": "timer b"})]
        return []


async def _clockwork_run() -> tuple[list[tuple[str, int]], list[Any], int]:
    async with Host(Clockwork) as host:
        await host.at(T0, topics.MD_BBO, bbo(T0, "10.00", "10.02"))
        await host.at(T0 + 1 * S, topics.MD_BBO, bbo(T0 + 1 * S, "10.00", "10.02"))
        await host.at(T0 + 60 * S, topics.MD_BAR, bar(T0 + 60 * S, "10.01"))
        await host.at(T0 + 100 * S)
        strategy = host.actor.strategy
        assert isinstance(strategy, Clockwork)
        return strategy.fired, host.out, len(strategy.bars)


async def test_timers_fire_at_their_exact_times_in_replay_and_the_same_every_run() -> None:
    fired, out, bars_seen = await _clockwork_run()
    assert fired == [
        ("past", T0),
        ("b", T0 + 3 * S),
        ("a", T0 + 5 * S),
        ("a", T0 + 10 * S),
        ("a", T0 + 15 * S),
    ]  # "c" was cancelled, the first "b" replaced
    assert bars_seen == 1
    intents = [m for m in out if isinstance(m, OrderIntent)]
    signals = [m for m in out if isinstance(m, SignalRecorded)]
    assert [(i.ts_init, i.side, i.qty) for i in intents] == [(T0 + 3 * S, Side.BUY, Decimal(1))]
    assert signals[0].trigger == "StrategyTimer" and signals[0].ts_trigger == T0 + 3 * S
    assert signals[0].features == {"why": "timer b"}
    again = await _clockwork_run()
    assert again == (fired, out, bars_seen)


# ---------------------------------------------------------------- hooks must return lists


class Forgetful(Strategy):
    """Forgets the ``return []`` (a hook that falls off its end returns None)."""

    name = "forgetful"

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        return None  # type: ignore[return-value]

    def on_bar(self, bar: Bar, now_ns: int) -> Sequence[Decision]:
        return ["buy"]  # type: ignore[list-item]


def _bare_actor(strategy: Callable[[], Strategy]) -> StrategyActor:
    bus, clock = Bus(), SimClock(T0)
    bus.register("strategy")
    actor = StrategyActor(strategy, "ledger")
    actor.ctx = ActorContext("strategy", bus, clock, get_logger(actor="strategy"), random.Random(1), 0)
    return actor


async def test_a_hook_returning_none_or_a_stranger_is_a_type_error_not_a_silent_no_op() -> None:
    actor = _bare_actor(Forgetful)
    with pytest.raises(TypeError, match=r"Forgetful\.on_bbo returned None; a hook must return a list"):
        await actor.handle(bbo(T0, "10.00", "10.02"))
    with pytest.raises(TypeError, match=r"Forgetful\.on_bar returned str"):
        await actor.handle(bar(T0, "10.00"))


def test_on_stale_is_called_by_the_default_market_status_hook() -> None:
    seen: list[str] = []

    class Careful(Strategy):
        name = "careful"

        def on_stale(self, status: MarketDataStatus, now_ns: int) -> Sequence[Decision]:
            seen.append(status.reason)
            return []

    strategy = Careful()
    for fresh, reason in ((False, "silent 11 s"), (True, "quotes resumed")):
        status = MarketDataStatus(symbol="IBM", fresh=fresh, provider="test", reason=reason, ts_init=T0)
        assert strategy.on_market_status(status, T0) == []
    assert seen == ["silent 11 s"]


# ---------------------------------------------------------------- target positions


class Targets(Strategy):
    """Returns the next scripted target on every quote."""

    name = "targets"
    script: list[Decimal] = []

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        qty = self.script.pop(0)
        return [TargetPosition(symbol="IBM", qty=qty, features={"signal": feature(qty)})]


async def test_a_target_position_becomes_the_order_for_the_difference() -> None:
    Targets.script = [Decimal(q) for q in ("10", "10", "10", "10", "0", "-5", "-5")]
    async with Host(Targets, positions={"IBM": Decimal(5)}) as host:
        quote = bbo(T0, "10.00", "10.02")
        await host.at(T0, topics.MD_BBO, quote)  # holds 5 (the ledger's), wants 10: buy 5
        first = host.intents()[-1]
        assert (first.side, first.qty, first.order_type) == (Side.BUY, Decimal(5), OrderType.MARKET)
        await host.at(T0 + S, topics.MD_BBO, quote)  # the 5 are in flight: nothing more
        assert len(host.intents()) == 1
        await host.at(T0 + 2 * S, topics.ORDER_FILL, fill(first, "2", 1))  # holds 7, 3 in flight
        await host.at(T0 + 3 * S, topics.MD_BBO, quote)
        assert len(host.intents()) == 1
        cancelled = OrderUpdate(
            client_order_id=f"c-{first.intent_id}",
            venue_order_id=f"v-{first.intent_id}",
            status=OrderStatus.CANCELED,
            filled_qty=Decimal(2),
            intent_id=first.intent_id,
            strategy="targets",
            ts_event=T0,
            ts_recv=T0,
        )
        await host.at(T0 + 4 * S, topics.ORDER_EVENT, cancelled)  # the other 3 will never come
        await host.at(T0 + 5 * S, topics.MD_BBO, quote)  # holds 7, wants 10: buy 3
        second = host.intents()[-1]
        assert (second.side, second.qty) == (Side.BUY, Decimal(3))
        await host.at(T0 + 6 * S, topics.ORDER_FILL, fill(second, "3", 1))  # holds 10
        await host.at(T0 + 7 * S, topics.MD_BBO, quote)  # wants flat: sell 10
        third = host.intents()[-1]
        assert (third.side, third.qty) == (Side.SELL, Decimal(10))
        rejected = RiskRejected(
            intent_id=third.intent_id,
            strategy="targets",
            symbol="IBM",
            reason="STALE_DATA",
            detail="",
            inputs={},
            ts_init=T0,
        )
        await host.at(T0 + 8 * S, topics.ORDER_EVENT, rejected)  # still holds 10
        await host.at(T0 + 9 * S, topics.MD_BBO, quote)  # wants -5: sell 15
        fourth = host.intents()[-1]
        assert (fourth.side, fourth.qty) == (Side.SELL, Decimal(15))
        assert host.actor.positions == {"IBM": Decimal(10)}
        signal = host.signals()[-1]
        assert signal.intent_id == fourth.intent_id
        assert signal.features == {"signal": "-5", "target_qty": "-5", "position": "10", "in_flight": "0"}
        assert len(host.intents()) == 4


async def test_working_orders_of_an_earlier_start_count_as_in_flight() -> None:
    """A restarted host (or process) asks the order manager what still works for it."""
    working = WorkingOrderView(
        client_order_id="c-old",
        intent_id="targets.b1.0-7",
        strategy="targets",
        symbol="IBM",
        side=Side.BUY,
        order_type=OrderType.MARKET,
        remaining_qty=Decimal(4),
        limit_price=None,
        execution_ids=["x-old-1"],
    )
    other = msgspec.structs.replace(working, intent_id="other.0-1", strategy="other", remaining_qty=Decimal(50))
    Targets.script = [Decimal(10), Decimal(10), Decimal(10)]
    async with Host(Targets, positions={"IBM": Decimal(5)}, working=[working, other]) as host:
        quote = bbo(T0, "10.00", "10.02")
        await host.at(T0, topics.MD_BBO, quote)  # 10 - 5 held - 4 working: buy 1
        assert [(i.side, i.qty) for i in host.intents()] == [(Side.BUY, Decimal(1))]
        old = OrderIntent(
            intent_id="targets.b1.0-7",
            strategy="targets",
            symbol="IBM",
            side=Side.BUY,
            qty=Decimal(6),
            order_type=OrderType.MARKET,
            ts_init=T0,
        )
        await host.at(T0 + S, topics.ORDER_FILL, fill(old, "2", 2))  # a new execution: held 7, 2 + 1 in flight
        await host.at(T0 + 2 * S, topics.MD_BBO, quote)  # 10 - 7 - 3: nothing
        assert len(host.intents()) == 1
        # An execution the working view had already counted moves the position, not what is in flight.
        counted = msgspec.structs.replace(fill(old, "2", 1), execution_id="x-old-1")
        await host.at(T0 + 3 * S, topics.ORDER_FILL, counted)  # held 9, still 3 in flight
        await host.at(T0 + 4 * S, topics.MD_BBO, quote)  # 10 - 9 - 3: sell 2
        assert [(i.side, i.qty) for i in host.intents()][-1] == (Side.SELL, Decimal(2))


# ---------------------------------------------------------------- declared features


EMA3 = FeatureSpec(name="ema", indicator="ema", input="mid", params={"period": 3})
RSI3 = FeatureSpec(name="rsi", indicator="rsi", input="mid", params={"period": 3})
SMA2 = FeatureSpec(name="bar_sma", indicator="sma", input="bar_close", params={"period": 2})


class Reader(Strategy):
    """Reads its features in every hook: they already include the message handed to it."""

    name = "reader"
    features = (EMA3, RSI3, SMA2)

    def __init__(self) -> None:
        self.seen: list[tuple[float | None, float | None]] = []
        self.bar_sma: list[float | None] = []

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        self.seen.append((self.feature_values.get(bbo.symbol, "ema"), self.feature_values.get(bbo.symbol, "rsi")))
        return []

    def on_bar(self, bar: Bar, now_ns: int) -> Sequence[Decision]:
        self.bar_sma.append(self.feature_values.get(bar.symbol, "bar_sma"))
        return []


async def test_declared_features_are_updated_once_before_the_hook_and_equal_a_standalone_indicator() -> None:
    quotes = [("10.00", "10.02"), ("10.02", "10.04"), ("10.01", "10.03"), ("10.05", "10.07"), ("10.03", "10.05")]
    async with Host(Reader) as host:
        for n, (bid, ask) in enumerate(quotes):
            await host.at(T0 + n * S, topics.MD_BBO, bbo(T0 + n * S, bid, ask))
        for n, close in enumerate(("10.00", "10.10")):
            await host.at(T0 + (60 + n * 60) * S, topics.MD_BAR, bar(T0 + (60 + n * 60) * S, close))
        strategy = host.actor.strategy
        assert isinstance(strategy, Reader)
        pipeline = host.actor.pipeline
        assert pipeline.indicator("IBM", "ema").count == len(quotes)  # once per quote, not once per read
        assert pipeline.indicator("IBM", "bar_sma").count == 2
        with pytest.raises(KeyError, match="not declared"):
            strategy.feature_values.get("IBM", "vwap")
    ema, rsi = EMA(3), RSI(3)
    expected = []
    for bid, ask in quotes:
        mid = float(Decimal(bid) + Decimal(ask)) / 2.0
        expected.append((ema.update(mid), rsi.update(mid)))
    assert strategy.seen == expected
    assert strategy.seen[2][0] is not None  # warm after 3 mids, and then exactly the standalone value
    sma = SMA(2)
    assert strategy.bar_sma == [sma.update(10.0), sma.update(10.1)]


def test_strategies_sharing_a_pipeline_share_each_computation_and_conflicts_are_refused() -> None:
    class A(Strategy):
        name = "a"
        features = (EMA3,)

    class B(Strategy):
        name = "b"
        features = (FeatureSpec(name="fast", indicator="ema", input="mid", params={"period": 3}), RSI3)

    pipeline = build_pipeline([A(), B()])
    assert pipeline.computations == 2  # "ema" and "fast" are one EMA(3): computed once for both
    assert pipeline.indicator("IBM", "ema") is pipeline.indicator("IBM", "fast")

    class C(Strategy):
        name = "c"
        features = (FeatureSpec(name="ema", indicator="ema", input="mid", params={"period": 5}),)

    with pytest.raises(FeatureConflict, match=r"features\.ema"):
        build_pipeline([A(), C()])


# ---------------------------------------------------------------- the pin


class Pinned(Strategy):
    """Built (researched) for ema(period=10); this version of the code declares ema(period=3)."""

    name = "pinned"
    features = (EMA3,)
    pipeline_specs = (FeatureSpec(name="ema", indicator="ema", input="mid", params={"period": 10}),)
    pipeline_hash = pipeline_hash(pipeline_specs)


def test_a_pinned_strategy_refuses_a_pipeline_that_differs_naming_both_hashes_and_the_difference() -> None:
    with pytest.raises(FeaturePipelineMismatch) as caught:
        build_pipeline([Pinned()])
    message = str(caught.value)
    actual = pipeline_hash([EMA3])
    assert Pinned.pipeline_hash in message and actual in message
    assert "features.ema: changed: params.period 10 (expected) -> 3 (this run)" in message
    # The host itself refuses too (a strategy actor never starts on the wrong features) ...
    with pytest.raises(FeaturePipelineMismatch):
        StrategyActor(Pinned, "ledger")
    # ... and the config's pin wins over the strategy's own.
    assert build_pipeline([Pinned()], {"pinned": actual}).pipeline_hash == actual
    with pytest.raises(FeaturePipelineMismatch, match="0" * 64):
        build_pipeline([Reader()], {"reader": "0" * 64})


def _kestrel(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def test_a_pin_the_run_does_not_match_is_a_user_error_exit_2_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "k.toml"
    config.write_text(f'[strategy]\nname = "rsi-reversion"\npipeline_hash = "{"0" * 64}"\n')
    done = _kestrel("replay", "--config", str(config), "--log", str(tmp_path / "k.jsonl"))
    assert done.returncode == 2, done.stderr
    actual = pipeline_hash(RsiReversion.from_params("rsi-reversion", {}).features)
    assert "0" * 64 in done.stderr and actual in done.stderr
    assert "rsi = rsi(period=14) on bar_close" in done.stderr
    assert "Traceback" not in done.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[strategy]\npipeline_hash = "not-a-hash"\n')
    done = _kestrel("check-config", str(bad))
    assert done.returncode == 2 and "strategy.pipeline_hash" in done.stderr


def test_the_manifest_records_the_pipeline_hash(tmp_path: Path) -> None:
    expected = pipeline_hash(RsiReversion.from_params("rsi-reversion", {}).features)
    config = tmp_path / "k.toml"
    config.write_text(f'[strategy]\nname = "rsi-reversion"\npipeline_hash = "{expected}"\n')  # pinned, and right
    journal = tmp_path / "j.db"
    done = _kestrel(
        "replay", "--config", str(config), "--synthetic", "3000", "--journal", str(journal), "--json",
        "--log", str(tmp_path / "k.jsonl"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert orjson.loads(done.stdout)["manifest"]["pipeline_hash"] == expected
    shown = _kestrel("journal", "show", str(journal), "--manifest", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [m["pipeline_hash"] for m in orjson.loads(shown.stdout)] == [expected]
    text = _kestrel("journal", "show", str(journal), "--manifest")
    assert f"pipeline {expected}" in text.stdout
    # A strategy that declares no features records none.
    done = _kestrel("replay", "--synthetic", "100", "--json", "--log", str(tmp_path / "k2.jsonl"))
    assert done.returncode == 0 and orjson.loads(done.stdout)["manifest"]["pipeline_hash"] == ""
