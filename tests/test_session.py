"""The paper session's actors wired together, in process: order flow, crashes, determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.settlement import SettlementActor
from actors.strategies.ema_cross import EmaCross, EmaCrossParams
from adapters.lean_ticks import read_batches
from engine import topics
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import SimClock
from engine.config import Config, parse_config
from engine.messages import (
    BestBidOffer,
    Fill,
    FillHistory,
    FillHistoryQuery,
    OrderIntent,
    PortfolioQuery,
    PortfolioSnapshot,
    Recover,
)
from engine.replay import replay
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec
from kestrel.node import ORDER_MANAGER, SETTLEMENT, STRATEGY, session_tree
from tests.helpers import random_walk_day

ALL_TOPICS = [getattr(topics, name) for name in dir(topics) if name.isupper()]


class Recorder(Actor):
    """Subscribes to every topic and keeps the encoded messages in arrival order."""

    def __init__(self, sink: list[bytes]) -> None:
        self.sink = sink

    async def on_start(self) -> None:
        for topic in ALL_TOPICS:
            self.ctx.subscribe(topic)

    async def handle(self, message: Any) -> Any:
        self.sink.append(msgspec.msgpack.encode(message))
        return None


async def run_session(
    config: Config, files: list[Path], spec: SupervisorSpec | None = None, record: list[bytes] | None = None
) -> tuple[Bus, Supervisor]:
    bus, clock = Bus(), SimClock()
    params = config.strategy.params
    tree = spec or session_tree(config, lambda: EmaCross.from_params("ema-cross", params))
    if record is not None:
        tree = dataclasses.replace(
            tree, children=[ActorSpec("recorder", lambda: Recorder(record)), *tree.children]
        )
    root = Supervisor(tree, bus, clock, random.Random(config.engine.seed))
    import asyncio

    task = asyncio.create_task(root.run())
    await root.started()
    await bus.request(ORDER_MANAGER, Recover())  # risk starts RECOVERING: nothing trades before this
    await replay(read_batches(files), clock, bus, topics.MD_RAW)
    await bus.idle()
    bus.root_task = task  # type: ignore[attr-defined]
    return bus, root


async def stop(bus: Bus) -> None:
    import asyncio

    task: asyncio.Task[None] = bus.root_task  # type: ignore[attr-defined]
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _config(**params: Any) -> Config:
    return parse_config(
        {"strategy": {"params": params or {"fast": 5, "slow": 12}}, "venue": {"fee_per_share": "0.005"}},
        "test",
    )


async def test_the_ledger_equals_the_sum_of_the_fills(tmp_path: Path) -> None:
    config = _config()
    bus, _ = await run_session(config, random_walk_day(tmp_path, quotes=3000))
    history: FillHistory = await bus.request(ORDER_MANAGER, FillHistoryQuery())
    book: PortfolioSnapshot = await bus.request(SETTLEMENT, PortfolioQuery())
    await stop(bus)
    assert len(history.fills) > 20
    assert len({f.execution_id for f in history.fills}) == len(history.fills)
    position = sum((f.qty * f.side.sign for f in history.fills), Decimal(0))
    cash = config.venue.starting_cash - sum(
        (f.qty * f.side.sign * f.price + f.fee for f in history.fills), Decimal(0)
    )
    assert book.positions.get("TEST", Decimal(0)) == position
    assert book.cash == cash
    assert book.fees == sum((f.fee for f in history.fills), Decimal(0))
    assert book.fills == len(history.fills)
    # Long-only strategy: never short, never more than qty.
    running = Decimal(0)
    for fill in history.fills:
        running += fill.qty * fill.side.sign
        assert Decimal(0) <= running <= EmaCrossParams().qty


async def test_same_input_and_seed_give_the_same_message_sequence(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, quotes=1500, seed=9)
    digests = []
    for _ in range(2):
        record: list[bytes] = []
        bus, _ = await run_session(_config(), files, record=record)
        await stop(bus)
        assert len(record) > 3000
        digests.append(hashlib.sha256(b"".join(record)).hexdigest())
    assert digests[0] == digests[1]


class CrashOnce(EmaCross):
    """An EMA cross that blows up on its 700th quote, once per test."""

    crashed: list[bool]

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> list[OrderIntent]:
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen == 700 and not self.crashed:
            self.crashed.append(True)
            raise RuntimeError("strategy bug")
        return super().on_bbo(bbo, now_ns)


def _replace_child(tree: SupervisorSpec, name: str, factory: Callable[[], Actor]) -> SupervisorSpec:
    children: list[ActorSpec | SupervisorSpec] = []
    for child in tree.children:
        if isinstance(child, ActorSpec) and child.name == name:
            child = dataclasses.replace(child, factory=factory)
        children.append(child)
    return dataclasses.replace(tree, children=children)


async def test_a_crashing_strategy_is_restarted_and_rebuilds_its_position(tmp_path: Path) -> None:
    from actors.strategy_host import StrategyActor

    config = _config()
    crashed: list[bool] = []

    def build() -> CrashOnce:
        strategy = CrashOnce("ema-cross", EmaCrossParams(fast=5, slow=12))
        strategy.crashed = crashed
        return strategy

    tree = _replace_child(session_tree(config, build), STRATEGY, lambda: StrategyActor(build, SETTLEMENT))
    bus, root = await run_session(config, random_walk_day(tmp_path, quotes=3000), spec=tree)
    history: FillHistory = await bus.request(ORDER_MANAGER, FillHistoryQuery())
    book: PortfolioSnapshot = await bus.request(SETTLEMENT, PortfolioQuery())
    await stop(bus)
    assert crashed == [True]
    assert root.stats[STRATEGY].crashes == 1 and root.stats[STRATEGY].restarts == 1
    # Orders kept flowing after the restart, intent ids stayed unique, and the long-only
    # invariant held across it.
    after_restart = [f for f in history.fills if f.intent_id.startswith("ema-cross.1-")]
    assert len(after_restart) > 10
    assert len({f.intent_id for f in history.fills}) == len({f.client_order_id for f in history.fills})
    running = Decimal(0)
    for fill in history.fills:
        running += fill.qty * fill.side.sign
        assert Decimal(0) <= running <= EmaCrossParams().qty
    assert book.positions.get("TEST", Decimal(0)) == running


class FlakyLedger(SettlementActor):
    """Crashes on the 5th fill it sees, before booking it (once)."""

    crashed: list[bool] = []

    async def handle(self, message: Any) -> Any:
        if type(message) is Fill and self.ledger.fills == 4 and not FlakyLedger.crashed:
            FlakyLedger.crashed.append(True)
            raise RuntimeError("ledger bug")
        return await super().handle(message)


async def test_a_crashed_ledger_rebuilds_and_loses_no_fill(tmp_path: Path) -> None:
    FlakyLedger.crashed = []
    config = _config()
    tree = _replace_child(
        session_tree(config, lambda: EmaCross.from_params("ema-cross", config.strategy.params)),
        SETTLEMENT,
        lambda: FlakyLedger(config.venue.starting_cash, ORDER_MANAGER),
    )
    bus, root = await run_session(config, random_walk_day(tmp_path, quotes=3000), spec=tree)
    history: FillHistory = await bus.request(ORDER_MANAGER, FillHistoryQuery())
    book: PortfolioSnapshot = await bus.request(SETTLEMENT, PortfolioQuery())
    await stop(bus)
    assert FlakyLedger.crashed == [True]
    assert root.stats[SETTLEMENT].restarts == 1
    # The fill that was in flight during the crash was recovered from the order manager.
    assert book.fills == len(history.fills)
    assert book.positions.get("TEST", Decimal(0)) == sum(
        (f.qty * f.side.sign for f in history.fills), Decimal(0)
    )


@pytest.mark.parametrize("qty", ["600", "1"])
async def test_risk_caps_reject_with_reason_codes(tmp_path: Path, qty: str) -> None:
    config = parse_config(
        {
            "strategy": {"params": {"fast": 5, "slow": 12, "qty": qty}},
            "risk": {"max_order_qty": 500, "max_order_notional": 50},
        },
        "test",
    )
    bus, _ = await run_session(config, random_walk_day(tmp_path, quotes=800))
    from engine.messages import ActorStats, StatsQuery
    from kestrel.node import RISK

    stats: ActorStats = await bus.request(RISK, StatsQuery())
    history: FillHistory = await bus.request(ORDER_MANAGER, FillHistoryQuery())
    await stop(bus)
    expected = "MAX_ORDER_QTY" if qty == "600" else "MAX_ORDER_NOTIONAL"  # 1 × ~$100 > $50
    assert stats.counters["approved"] == 0 and history.fills == []
    assert stats.breakdown["rejections_by_reason"] == {expected: stats.counters["rejected"]}
    assert stats.counters["rejected"] > 0
