"""Risk's view of the working orders survives restarts: of the whole process, and of risk alone.

Risk counts the orders the venue may still fill (buying power, the open-order cap,
self-trade prevention, flatten). It builds that view from its own approvals, the fills
and the final reports; after a restart it asks the order manager, whose book is rebuilt
from the journal, and asks again when recovery has reconciled the journal with the venue.

Real actors on a real bus with a real SQLite journal (tmp_path), started in the node's
order (order manager first); a scripted venue stands in for the venue adapter.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from actors.order_manager import OrderManagerActor
from actors.risk import RiskActor
from engine import topics
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import LiveClock
from engine.config import RiskSection
from engine.journal import Journal
from engine.messages import (
    ActorStats,
    ApprovedOrder,
    BestBidOffer,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Recover,
    RecoveryReport,
    RiskRejected,
    Side,
    StatsQuery,
    SubmitOrder,
    TimeInForce,
    TradingState,
    TradingStateRequest,
    VenueExecution,
    VenueOrder,
    VenueSnapshot,
    VenueSnapshotQuery,
)
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

D = Decimal
OM, VENUE, RISK, WATCHER = "order-manager", "venue", "risk", "watcher"
XYZ = "XYZ"


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


class ScriptedVenue(Actor):
    def __init__(self, snapshot: VenueSnapshot) -> None:
        self.snapshot = snapshot
        self.orders: list[SubmitOrder] = []

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.VENUE_COMMAND)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, SubmitOrder):
            self.orders.append(message)
        elif isinstance(message, VenueSnapshotQuery):
            return self.snapshot
        return None


class Watcher(Actor):
    def __init__(self) -> None:
        self.decisions: dict[str, RiskRejected | ApprovedOrder] = {}

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ORDER_EVENT)
        self.ctx.subscribe(topics.ORDER_APPROVED)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, RiskRejected):
            self.decisions[message.intent_id] = message
        elif isinstance(message, ApprovedOrder):
            self.decisions[message.intent.intent_id] = message
        return None


class Crash:
    """Nothing risk can handle: it crashes, and its supervisor restarts it."""


def snapshot(*orders: VenueOrder, position: str = "0", cash: str = "100000") -> VenueSnapshot:
    positions = {XYZ: D(position)} if D(position) else {}
    return VenueSnapshot(orders=list(orders), missing=[], positions=positions, cash=D(cash), ts_init=0)


def venue_order(
    cid: str, status: OrderStatus, qty: str, filled: str = "0", avg: str | None = None,
    side: Side = Side.BUY, limit: str | None = None,
) -> VenueOrder:
    return VenueOrder(
        client_order_id=cid, venue_order_id=f"v-{cid}", symbol=XYZ, side=side, qty=D(qty),
        order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
        limit_price=None if limit is None else D(limit), time_in_force=TimeInForce.DAY, status=status,
        filled_qty=D(filled), filled_avg_price=None if avg is None else D(avg), updated_ns=1,
    )


def ack(cid: str, status: OrderStatus = OrderStatus.NEW) -> OrderUpdate:
    return OrderUpdate(client_order_id=cid, venue_order_id=f"v-{cid}", status=status, ts_event=0, ts_recv=0)


def execution(cid: str, exec_id: str, qty: str, cum: str, price: str = "10") -> VenueExecution:
    return VenueExecution(
        client_order_id=cid, venue_order_id=f"v-{cid}", execution_id=exec_id, symbol=XYZ, side=Side.BUY,
        qty=D(qty), price=D(price), fee=D(0), ts_event=0, ts_recv=0, cum_qty=D(cum),
    )


class Process:
    """One 'process': the journal, the order manager, the scripted venue, risk and a watcher."""

    def __init__(self, name: str, path: Path, venue: VenueSnapshot, limits: RiskSection, cash: str = "100000") -> None:
        self.name, self.path, self.limits, self.cash = name, path, limits, D(cash)
        self.bus = Bus()
        self.venue = ScriptedVenue(venue)
        self.watcher = Watcher()
        self.risks: list[RiskActor] = []
        self.journal: Journal
        self.task: asyncio.Task[None] | None = None
        self.intents = 0

    async def __aenter__(self) -> Process:
        self.journal = await Journal.open(self.path, LiveClock())

        def make_risk() -> RiskActor:
            # As in the node: every instance starts RECOVERING. The first hears recovery's
            # announcement; one restarted alone asks the order manager for the state in force.
            risk = RiskActor(
                self.limits, TradingState.RECOVERING, default_calendar="24/7", starting_cash=self.cash,
                orders_address=OM,
            )
            self.risks.append(risk)
            return risk

        spec = SupervisorSpec(
            "root",
            [
                ActorSpec(OM, lambda: OrderManagerActor("t", self.journal, venue_address=VENUE)),
                ActorSpec(VENUE, lambda: self.venue),
                ActorSpec(RISK, make_risk),
                ActorSpec(WATCHER, lambda: self.watcher),
            ],
        )
        root = Supervisor(spec, self.bus, LiveClock(), random.Random(1))
        self.task = asyncio.create_task(root.run())
        await asyncio.wait_for(root.started(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.journal.close()

    @property
    def risk(self) -> RiskActor:
        return self.risks[-1]

    def view(self) -> dict[str, tuple[str, Side, Decimal, Decimal | None]]:
        """Risk's working orders: intent id → symbol, side, remaining quantity, limit."""
        return {k: (o.symbol, o.side, o.remaining_qty, o.limit_price) for k, o in self.risk.working.items()}

    async def recover(self) -> RecoveryReport:
        report: RecoveryReport = await self.bus.request(OM, Recover(), 5)
        await self.bus.idle()
        return report

    async def quote(self, bid: str = "9.99", ask: str = "10.01") -> None:
        await self.bus.publish(
            topics.MD_BBO,
            BestBidOffer(symbol=XYZ, bid_price=D(bid), bid_size=D(100), ask_price=D(ask), ask_size=D(100),
                         provider="test", ts_event=time.time_ns(), ts_init=time.time_ns()),
        )
        await self.bus.idle()

    async def intent(self, qty: str, side: Side = Side.BUY, limit: str | None = None) -> RiskRejected | ApprovedOrder:
        self.intents += 1
        intent_id = f"{self.name}-i{self.intents}"
        await self.bus.publish(
            topics.ORDER_INTENT,
            OrderIntent(
                intent_id=intent_id, strategy="s", symbol=XYZ, side=side, qty=D(qty),
                order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
                limit_price=None if limit is None else D(limit), ts_init=time.time_ns(),
            ),
        )
        await self.bus.idle()
        return self.watcher.decisions[intent_id]

    async def approved(self, qty: str, side: Side = Side.BUY, limit: str | None = None) -> ApprovedOrder:
        decision = await self.intent(qty, side, limit)
        assert isinstance(decision, ApprovedOrder), decision
        return decision

    async def rejected(self, reason: str, qty: str, side: Side = Side.BUY, limit: str | None = None) -> RiskRejected:
        decision = await self.intent(qty, side, limit)
        assert isinstance(decision, RiskRejected), decision
        assert decision.reason == reason, (decision.reason, decision.detail)
        return decision

    async def report(self, message: Any) -> None:
        await self.bus.publish(topics.VENUE_REPORT, message)
        await self.bus.idle()

    async def restart_risk(self, *during: Any) -> RiskActor:
        """Crash risk; ``during`` reaches the venue report topic while it is down."""
        before = len(self.risks)
        await self.bus.send(RISK, Crash())
        for message in during:
            await self.bus.publish(topics.VENUE_REPORT, message)
        await eventually(lambda: len(self.risks) == before + 1, "risk restarted")
        # Answered only once the new instance's on_start (the seeding) is over.
        stats: ActorStats = await self.bus.request(RISK, StatsQuery())
        assert stats.counters["approved"] == 0  # a fresh instance
        await self.bus.idle()
        return self.risk


LIMITS = RiskSection(max_open_orders=2, duplicate_window_s=0)


async def two_working_orders(p: Process) -> None:
    """p1-i1: buy 10 at 10.00 (t-1, 4 filled); p1-i2: buy 5 at 9.50 (t-2); both acknowledged."""
    assert (await p.recover()).state is TradingState.ACTIVE
    await p.quote()
    await p.approved("10", limit="10.00")
    await p.approved("5", limit="9.50")
    await p.report(ack("t-1"))
    await p.report(ack("t-2"))
    await p.report(execution("t-1", "e1", "4", cum="4"))
    assert [o.client_order_id for o in p.venue.orders] == ["t-1", "t-2"]
    assert p.view() == {"p1-i1": (XYZ, Side.BUY, D(6), D("10.00")), "p1-i2": (XYZ, Side.BUY, D(5), D("9.50"))}


async def test_a_restarted_process_counts_the_orders_still_working_at_the_venue(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with Process("p1", path, snapshot(), LIMITS) as p1:
        await two_working_orders(p1)
        await p1.rejected("MAX_OPEN_ORDERS", "1")
    still_working = snapshot(
        venue_order("t-1", OrderStatus.PARTIALLY_FILLED, "10", filled="4", avg="10", limit="10.00"),
        venue_order("t-2", OrderStatus.NEW, "5", limit="9.50"),
        position="4", cash="99960",
    )
    async with Process("p2", path, still_working, LIMITS) as p2:
        # Seeded at start from the book the journal rebuilt, before recovery.
        assert p2.view() == {"p1-i1": (XYZ, Side.BUY, D(6), D("10.00")), "p1-i2": (XYZ, Side.BUY, D(5), D("9.50"))}
        assert p2.risk.working["p1-i1"].client_order_id == "t-1"
        report = await p2.recover()
        assert report.state is TradingState.ACTIVE, report.mismatches
        assert len(p2.view()) == 2
        await p2.quote()
        capped = await p2.rejected("MAX_OPEN_ORDERS", "1")
        assert capped.inputs["open_orders"] == "2"
        # A final report for a seeded order frees its slot; the other still crosses a sell.
        await p2.report(ack("t-2", OrderStatus.CANCELED))
        assert list(p2.view()) == ["p1-i1"]
        crossing = await p2.rejected("SELF_TRADE", "1", side=Side.SELL, limit="9.90")
        assert crossing.inputs["working_order"] == "t-1"
        await p2.approved("1")
        assert [o.client_order_id for o in p2.venue.orders] == ["t-3"]


async def test_a_restarted_process_counts_working_orders_against_buying_power(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    cash_account = RiskSection(account_type="cash", duplicate_window_s=0)
    async with Process("p1", path, snapshot(), cash_account, cash="1000") as p1:
        assert (await p1.recover()).state is TradingState.ACTIVE
        await p1.quote()
        await p1.approved("60", limit="10.00")  # 60 × 10.01 of the 1000 cash
    async with Process("p2", path, snapshot(venue_order("t-1", OrderStatus.NEW, "60", limit="10.00")),
                       cash_account, cash="1000") as p2:
        assert (await p2.recover()).state is TradingState.ACTIVE
        await p2.quote()
        refused = await p2.rejected("BUYING_POWER", "40", limit="10.00")
        # Priced at its limit: there was no quote when it was seeded.
        assert refused.inputs["working_opening_notional"] == "600.00"
        await p2.approved("39", limit="10.00")  # 39 × 10.01 + 600 ≤ 1000


async def test_what_recovery_finds_at_the_venue_reaches_risk(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with Process("p1", path, snapshot(), LIMITS) as p1:
        await two_working_orders(p1)
    # While we were down: t-1 was cancelled, t-2 filled, and t-3 (ours; the journal lost it)
    # rests at the venue. Recovery journals all that without an OrderUpdate for risk.
    venue = snapshot(
        venue_order("t-1", OrderStatus.CANCELED, "10", filled="4", avg="10", limit="10.00"),
        venue_order("t-2", OrderStatus.FILLED, "5", filled="5", avg="9.50", limit="9.50"),
        venue_order("t-3", OrderStatus.NEW, "7", side=Side.SELL, limit="11.00"),
        position="9", cash="99912.50",
    )
    async with Process("p2", path, venue, LIMITS) as p2:
        assert set(p2.view()) == {"p1-i1", "p1-i2"}  # the journal's view, until recovery
        report = await p2.recover()
        assert report.state is TradingState.ACTIVE, report.mismatches
        assert report.adopted == ["t-3"]
        assert p2.view() == {"adopted:t-3": (XYZ, Side.SELL, D(7), D("11.00"))}
        await p2.quote(bid="10.99", ask="11.01")
        crossing = await p2.rejected("SELF_TRADE", "1", limit="11.50")
        assert crossing.inputs["working_order"] == "t-3"


async def test_risk_restarted_alone_keeps_its_working_view(tmp_path: Path) -> None:
    async with Process("p1", tmp_path / "journal.db", snapshot(), LIMITS) as p:
        await two_working_orders(p)
        before = p.view()
        first = p.risk
        # Approved here, so not seeded: the old instance knew them from its approvals.
        assert not first._seeded

        again = await p.restart_risk()
        assert again is not first
        assert p.view() == before
        assert again.working["p1-i1"].client_order_id == "t-1"

        # A fill booked while risk is down reaches the new instance twice: in the order
        # manager's answer and from the mailbox. It counts once.
        await p.restart_risk(execution("t-1", "e2", "3", cum="7"))
        assert p.view() == {**before, "p1-i1": (XYZ, Side.BUY, D(3), D("10.00"))}

        # Fills reduce seeded orders, final reports remove them.
        await p.report(execution("t-1", "e3", "2", cum="9"))
        assert p.view()["p1-i1"] == (XYZ, Side.BUY, D(1), D("10.00"))
        await p.quote()  # a new instance has seen no quote yet
        await p.rejected("MAX_OPEN_ORDERS", "1")
        await p.report(ack("t-2", OrderStatus.CANCELED))
        assert p.view() == {"p1-i1": (XYZ, Side.BUY, D(1), D("10.00"))}
        await p.approved("1")
        await p.rejected("MAX_OPEN_ORDERS", "1")
        await p.report(execution("t-1", "e4", "1", cum="10"))
        assert set(p.view()) == {"p1-i4"}  # p1-i1 filled in full; p1-i4 approved above


def state(p: Process) -> TradingState:
    """Risk's state now (a call: mypy would narrow an attribute across awaits)."""
    return p.risk.state


async def test_risk_restarted_alone_resumes_the_trading_state_in_force(tmp_path: Path) -> None:
    async with Process("p1", tmp_path / "journal.db", snapshot(), LIMITS) as p:
        await two_working_orders(p)
        await p.restart_risk()
        assert state(p) is TradingState.ACTIVE  # not stuck RECOVERING: the order manager said so
        await p.quote()  # a fresh instance has seen no quote yet
        await p.rejected("MAX_OPEN_ORDERS", "1")  # past the state gate; the working view survived too
        await p.bus.publish(
            topics.TRADING_REQUEST,
            TradingStateRequest(state=TradingState.HALTED, reason="operator halt", cause="operator", ts_init=0),
        )
        await p.bus.idle()
        await p.restart_risk()
        assert state(p) is TradingState.HALTED and p.risk.state_reason == "operator halt"
        await p.quote()
        await p.rejected("TRADING_HALTED", "1")


async def test_before_recovery_a_restarted_risk_stays_recovering(tmp_path: Path) -> None:
    async with Process("p1", tmp_path / "journal.db", snapshot(), LIMITS) as p:
        await p.restart_risk()
        assert state(p) is TradingState.RECOVERING
        assert (await p.recover()).state is TradingState.ACTIVE
        assert state(p) is TradingState.ACTIVE
