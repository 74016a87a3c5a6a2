"""Strategy cancels by intent id (``CancelIntent``), through the real order path.

Every test runs real parts on a real bus under a real supervisor: the risk actor, the
order manager on a real SQLite journal (``tmp_path``), and the in-process simulated venue,
where an order rests (a buy limit under the ask) until a ``CancelOrder`` takes it off.
Taps on ``venue.command``, ``order.event``, ``order.approved`` and ``trading.state`` see
what the venue, strategies and the order manager see. The bus notes, at the very instant
a ``CancelOrder`` is published, how far the journal had committed: the write-ahead rule
for cancels is checked against that, not against a later read.

Time is a SimClock (the cancel-rate window is exact); nothing sleeps: a test waits for the
bus to go idle and for the journal to flush, with timeouts.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.order_book import Book
from actors.order_manager import OrderManagerActor
from actors.risk import RiskActor
from adapters.sim_venue import SimulatedVenue
from engine import faults, topics
from engine.actor import Actor
from engine.bus import Bus
from engine.calendar import ALWAYS_OPEN
from engine.clock import NS_PER_S, LiveClock, SimClock
from engine.config import RiskSection
from engine.journal import Journal, JournalEntry
from engine.messages import (
    ActorStats,
    BestBidOffer,
    CancelIntent,
    CancelOrder,
    CancelRejected,
    CancelRequested,
    MarketDataStatus,
    OrderIntent,
    OrderReconciled,
    OrderStatus,
    OrderSubmitting,
    OrderType,
    OrderUpdate,
    Recover,
    RecoveryReport,
    RiskRejected,
    Side,
    StatsQuery,
    SubmitOrder,
    TradingState,
    TradingStateChanged,
    TradingStateRequest,
)
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec
from kestrel import cli

D = Decimal
M = TypeVar("M")

T0 = 1_700_000_000 * NS_PER_S
OM, RISK, VENUE = "order-manager", "risk", "venue"
PREFIX = "k"
SYMBOL = "SYNTH"  # 24/7: no session gate
BID, ASK = D("99.90"), D("100.10")
RESTING = D("95.00")
"""A buy limit under the ask (it rests at the venue) and inside risk's 10 % collar."""
WAIT_S = 10.0

LIMITS = RiskSection(duplicate_window_s=0)
"""Defaults, except that the same order twice is not a duplicate (tests repeat orders)."""


# ---------------------------------------------------------------- harness


class Tap(Actor):
    """Everything published on one topic, in the order this subscriber received it."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.seen: list[Any] = []

    async def on_start(self) -> None:
        self.ctx.subscribe(self.topic)

    async def handle(self, message: Any) -> Any:
        self.seen.append(message)
        return None

    def of(self, kind: type[M]) -> list[M]:
        return [m for m in self.seen if isinstance(m, kind)]


def always(actor: Actor) -> Callable[[], Actor]:
    """A factory that hands back the same instance (its state outlives a restart: a tap, a venue)."""
    return lambda: actor


class CheckingBus(Bus):
    """The real bus, noting how far the journal had committed when each ``CancelOrder`` was published."""

    def __init__(self) -> None:
        super().__init__()
        self.journal: Journal | None = None
        self.cancel_sends: list[tuple[str, int]] = []
        """(client order id, the journal's committed seq at the instant the cancel was published)."""

    async def publish(self, topic: str, message: object) -> None:
        if topic == topics.VENUE_COMMAND and isinstance(message, CancelOrder):
            assert self.journal is not None
            self.cancel_sends.append((message.client_order_id, self.journal.committed_seq))
        await super().publish(topic, message)


class Desk:
    """One process: journal, order manager, simulated venue, risk, taps. ``async with`` starts it.

    ``venue``: pass the same :class:`SimulatedVenue` to a second desk on the same journal
    and it plays a venue that outlived the engine (its orders, quotes and ids are kept).
    ``max_restarts``: the supervisor's restart intensity (within 10 s of the SimClock).
    """

    def __init__(
        self,
        path: Path,
        venue: SimulatedVenue | None = None,
        *,
        limits: RiskSection = LIMITS,
        start_ns: int = T0,
        max_restarts: int = 100,
    ) -> None:
        self.path = path
        self.limits = limits
        self.clock = SimClock(start_ns)
        self.bus = CheckingBus()
        self.venue = venue if venue is not None else SimulatedVenue()
        self.commands = Tap(topics.VENUE_COMMAND)
        self.events = Tap(topics.ORDER_EVENT)
        self.approved = Tap(topics.ORDER_APPROVED)
        self.states = Tap(topics.TRADING_STATE)
        self.max_restarts = max_restarts
        self.journal: Journal
        self.om: OrderManagerActor
        self.risk: RiskActor
        self.root: Supervisor
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Desk:
        self.journal = journal = await Journal.open(self.path, self.clock)
        self.bus.journal = journal

        def make_om() -> OrderManagerActor:
            self.om = OrderManagerActor(PREFIX, journal, venue_address=VENUE, starting_cash=D(100_000))
            return self.om

        def make_risk() -> RiskActor:
            # As the composition root builds it: RECOVERING until the order manager says otherwise.
            self.risk = RiskActor(self.limits, TradingState.RECOVERING, default_calendar=ALWAYS_OPEN, orders_address=OM)
            return self.risk

        taps = [self.commands, self.events, self.approved, self.states]
        spec = SupervisorSpec(
            "root",
            [
                *(ActorSpec(f"tap-{tap.topic}", always(tap)) for tap in taps),
                ActorSpec(OM, make_om),
                ActorSpec(VENUE, always(self.venue)),
                ActorSpec(RISK, make_risk),
            ],
            max_restarts=self.max_restarts,
            period_s=10.0,
        )
        self.root = Supervisor(spec, self.bus, self.clock, random.Random(7))
        self.task = asyncio.create_task(self.root.run())
        started = asyncio.ensure_future(self.root.started())
        await asyncio.wait([started, self.task], timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            await self.task
        assert started.done(), "the actors did not start"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop everything at once (a crash, as far as the journal is concerned: nothing more is written)."""
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.journal.close()

    # ------------------------------------------------------------ driving

    async def settle(self) -> None:
        """Wait until no message is in flight anywhere and everything journaled is committed."""
        assert self.task is not None
        idle = asyncio.ensure_future(self.bus.idle())
        await asyncio.wait([idle, self.task], timeout=WAIT_S, return_when=asyncio.FIRST_COMPLETED)
        if self.task.done():
            idle.cancel()
            await self.task  # the supervisor gave up: raise why
            raise AssertionError("the engine stopped")
        assert idle.done(), "the bus did not go idle"
        await asyncio.wait_for(self.journal.flush(), WAIT_S)

    async def recover(self) -> RecoveryReport:
        report: RecoveryReport = await self.bus.request(OM, Recover(), WAIT_S)
        await self.settle()
        return report

    async def quote(self, settle: bool = True) -> None:
        now = self.clock.time_ns()
        bbo = BestBidOffer(
            symbol=SYMBOL,
            bid_price=BID,
            bid_size=D(100),
            ask_price=ASK,
            ask_size=D(100),
            provider="test",
            ts_event=now,
            ts_init=now,
        )
        await self.bus.publish(topics.MD_BBO, bbo)
        if settle:
            await self.settle()

    async def start_trading(self) -> None:
        report = await self.recover()
        assert report.state is TradingState.ACTIVE, report
        await self.quote()

    async def place(
        self, intent_id: str, strategy: str = "alpha", limit: Decimal = RESTING, qty: str = "10", settle: bool = True
    ) -> None:
        intent = OrderIntent(
            intent_id=intent_id,
            strategy=strategy,
            symbol=SYMBOL,
            side=Side.BUY,
            qty=D(qty),
            order_type=OrderType.LIMIT,
            limit_price=limit,
            ts_init=self.clock.time_ns(),
        )
        await self.bus.publish(topics.ORDER_INTENT, intent)
        if settle:
            await self.settle()

    async def cancel(self, intent_id: str, strategy: str = "alpha", settle: bool = True) -> None:
        cancel = CancelIntent(intent_id=intent_id, strategy=strategy, reason="test", ts_init=self.clock.time_ns())
        await self.bus.publish(topics.ORDER_INTENT, cancel)
        if settle:
            await self.settle()

    # ------------------------------------------------------------ looking

    def cid(self, intent_id: str) -> str:
        order = self.om.book.by_intent(intent_id)
        assert order is not None, f"no order for intent {intent_id}"
        return order.client_order_id

    def at_venue(self, intent_id: str) -> OrderStatus:
        return self.venue.orders[self.cid(intent_id)].status

    def cancel_rejections(self) -> list[tuple[str, str]]:
        return [(r.intent_id, r.reason) for r in self.events.of(CancelRejected)]

    def updates(self, intent_id: str) -> list[OrderStatus]:
        return [u.status for u in self.events.of(OrderUpdate) if u.intent_id == intent_id]

    def cancel_orders(self) -> list[str]:
        return [c.client_order_id for c in self.commands.of(CancelOrder)]

    async def risk_stats(self) -> ActorStats:
        """Ask risk (restarted first, if it crashed); raises why if the supervisor gave up meanwhile."""
        assert self.task is not None
        asked = asyncio.ensure_future(self.bus.request(RISK, StatsQuery(), WAIT_S))
        await asyncio.wait([asked, self.task], return_when=asyncio.FIRST_COMPLETED)
        if not asked.done():
            asked.cancel()
            await asyncio.gather(asked, return_exceptions=True)
            await self.task
            raise AssertionError("the engine stopped")
        stats: ActorStats = asked.result()
        return stats

    @property
    def risk_crashes(self) -> int:
        return self.root.stats[RISK].crashes


async def journal_entries(path: Path) -> list[JournalEntry]:
    """Every committed event, through another (read-only) connection, as ``kestrel journal`` reads it."""
    async with await Journal.open_readonly(path, LiveClock()) as reader:
        return [entry async for entry in reader.read()]


def cancel_requests(entries: list[JournalEntry]) -> list[tuple[int, CancelRequested]]:
    return [(e.seq, e.record) for e in entries if isinstance(e.record, CancelRequested)]


def assert_cancels_journaled_first(desk: Desk, entries: list[JournalEntry]) -> None:
    """Each CancelOrder sent for a strategy's cancel had its CancelRequested committed when it left.

    The n-th CancelOrder for an order goes with the n-th CancelRequested for it (no halt in these runs).
    """
    requested: dict[str, list[int]] = {}
    for seq, record in cancel_requests(entries):
        requested.setdefault(record.client_order_id, []).append(seq)
    sent: dict[str, list[int]] = {}
    for cid, committed in desk.bus.cancel_sends:
        sent.setdefault(cid, []).append(committed)
    assert set(sent) == set(requested), (sent, requested)
    for cid, commits in sent.items():
        assert len(commits) == len(requested[cid]), (cid, commits, requested[cid])
        for committed, seq in zip(commits, requested[cid], strict=True):
            assert seq <= committed, f"CancelOrder for {cid} left before its CancelRequested (seq {seq}) committed"


@pytest.fixture
def journal_path(tmp_path: Path) -> Path:
    return tmp_path / "journal.db"


@pytest.fixture
def no_faults() -> Iterator[None]:
    faults.disarm()
    yield
    faults.disarm()


# ---------------------------------------------------------------- 1. a resting order, cancelled


async def test_a_resting_order_is_cancelled_by_its_intent_id_and_the_journal_tells_it_in_order(
    journal_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Desk(journal_path) as desk:
        await desk.start_trading()
        await desk.place("x")
        cid = desk.cid("x")
        assert desk.at_venue("x") is OrderStatus.NEW  # resting: under the ask, it does not fill
        assert desk.updates("x") == [OrderStatus.NEW]

        await desk.cancel("x")
        assert desk.at_venue("x") is OrderStatus.CANCELED
        assert desk.venue.counters["canceled"] == 1
        # The strategy hears the venue's confirmation, under its own intent id; nothing is refused.
        [canceled] = [u for u in desk.events.of(OrderUpdate) if u.status is OrderStatus.CANCELED]
        assert (canceled.intent_id, canceled.strategy, canceled.client_order_id) == ("x", "alpha", cid)
        assert canceled.reason == "canceled by request"
        assert desk.cancel_rejections() == []
        commands = [(type(c).__name__, c.client_order_id) for c in desk.commands.seen]
        assert commands == [("SubmitOrder", cid), ("CancelOrder", cid)]
        assert [c.intent_id for c in desk.approved.of(CancelIntent)] == ["x"]
        assert desk.om.counters["cancels_requested"] == 1
        assert desk.om.book.orders[cid].cancel_requested

    entries = await journal_entries(journal_path)
    assert_cancels_journaled_first(desk, entries)
    submitting = next(
        e.seq for e in entries if isinstance(e.record, OrderSubmitting) and e.record.order.intent_id == "x"
    )
    [(requested_seq, requested)] = cancel_requests(entries)
    assert (requested.client_order_id, requested.intent_id, requested.strategy, requested.reason) == (
        cid,
        "x",
        "alpha",
        "test",
    )
    canceled_seq = next(
        e.seq for e in entries if isinstance(e.record, OrderUpdate) and e.record.status is OrderStatus.CANCELED
    )
    assert submitting < requested_seq < canceled_seq
    # The journal alone re-derives the cancelled order.
    book = Book()
    for entry in entries:
        book.apply(entry.seq, entry.record)
    assert book.orders[cid].status is OrderStatus.CANCELED and book.orders[cid].cancel_requested

    # And `kestrel journal show --order x --json` tells the same story, in the same order.
    capsys.readouterr()  # (what the engine logged)
    code = await asyncio.to_thread(cli.main, ["journal", "show", str(journal_path), "--order", "x", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    story = orjson.loads(out)
    assert story["client_order_ids"] == [cid] and story["orders"][0]["status"] == "canceled"
    kinds = [(e["kind"], e["record"].get("status")) for e in story["events"]]
    assert kinds == [
        ("OrderSubmitting", None),
        ("OrderUpdate", "new"),
        ("CancelRequested", None),
        ("OrderUpdate", "canceled"),
    ]


# ---------------------------------------------------------------- 2. right behind its intent (FIFO)


async def test_a_cancel_right_behind_its_intent_finds_the_order_before_any_venue_ack(journal_path: Path) -> None:
    async with Desk(journal_path) as desk:
        await desk.start_trading()
        await desk.place("x", settle=False)
        await desk.cancel("x", settle=False)  # no loop turn between the two: nothing was handled yet
        await desk.settle()
        cid = desk.cid("x")
        assert desk.at_venue("x") is OrderStatus.CANCELED
        assert desk.cancel_rejections() == []
        assert desk.updates("x") == [OrderStatus.NEW, OrderStatus.CANCELED]
        assert [(type(c).__name__, c.client_order_id) for c in desk.commands.seen] == [
            ("SubmitOrder", cid),
            ("CancelOrder", cid),
        ]
    entries = await journal_entries(journal_path)
    assert_cancels_journaled_first(desk, entries)
    mine = [
        e.record
        for e in entries
        if getattr(e.record, "client_order_id", None) == cid
        or (isinstance(e.record, OrderSubmitting) and e.record.order.client_order_id == cid)
    ]
    # The cancel was journaled while the order had no venue acknowledgement at all.
    assert [(type(r).__name__, getattr(r, "status", None)) for r in mine] == [
        ("OrderSubmitting", None),
        ("CancelRequested", None),
        ("OrderUpdate", OrderStatus.NEW),
        ("OrderUpdate", OrderStatus.CANCELED),
    ]


async def test_a_cancel_that_loses_the_race_to_a_fill_is_sent_and_the_order_ends_filled(journal_path: Path) -> None:
    """Marketable and cancelled at once: the venue fills it on arrival, then ignores the cancel. The
    strategy hears the fill (no CancelRejected: the order manager did not know it was done)."""
    async with Desk(journal_path) as desk:
        await desk.start_trading()
        await desk.place("x", limit=ASK, settle=False)
        await desk.cancel("x", settle=False)
        await desk.settle()
        cid = desk.cid("x")
        assert desk.at_venue("x") is OrderStatus.FILLED
        assert desk.om.book.orders[cid].status is OrderStatus.FILLED
        assert desk.om.book.positions == {SYMBOL: D(10)}
        assert desk.updates("x") == [OrderStatus.NEW, OrderStatus.FILLED]
        assert desk.cancel_orders() == [cid] and desk.venue.counters["canceled"] == 0
        assert desk.cancel_rejections() == []
    assert_cancels_journaled_first(desk, await journal_entries(journal_path))


# ---------------------------------------------------------------- 3. refusals send nothing


async def test_cancels_that_cannot_be_carried_out_are_refused_and_send_nothing(journal_path: Path) -> None:
    async with Desk(journal_path) as desk:
        await desk.start_trading()
        await desk.place("mine")
        await desk.place("theirs", strategy="beta")
        await desk.place("filled", limit=ASK)  # marketable: fills at once
        await desk.place("done")
        await desk.cancel("done")
        assert desk.at_venue("filled") is OrderStatus.FILLED and desk.at_venue("done") is OrderStatus.CANCELED
        sent_before = list(desk.bus.cancel_sends)
        commands_before = len(desk.commands.seen)

        await desk.cancel("never-placed")
        await desk.cancel("theirs", strategy="alpha")
        await desk.cancel("filled")
        await desk.cancel("done")

        assert desk.cancel_rejections() == [
            ("never-placed", "UNKNOWN_INTENT"),
            ("theirs", "NOT_OWNER"),
            ("filled", "NOT_WORKING"),
            ("done", "NOT_WORKING"),
        ]
        details = {r.intent_id + r.reason: r.detail for r in desk.events.of(CancelRejected)}
        assert details["never-placedUNKNOWN_INTENT"] == "no order was placed for intent never-placed"
        assert details["theirsNOT_OWNER"] == "intent theirs is an order of strategy 'beta'"
        assert details["filledNOT_WORKING"] == f"order {desk.cid('filled')} is already filled"
        assert details["doneNOT_WORKING"] == f"order {desk.cid('done')} is already canceled"
        assert all(r.strategy == "alpha" for r in desk.events.of(CancelRejected))
        # Nothing reached the venue: not a cancel, not anything.
        assert desk.bus.cancel_sends == sent_before
        assert len(desk.commands.seen) == commands_before
        # Another strategy's order is untouched: still working at the venue and in the book.
        assert desk.at_venue("theirs") is OrderStatus.NEW
        assert desk.om.book.orders[desk.cid("theirs")].status is OrderStatus.NEW
        assert not desk.om.book.orders[desk.cid("theirs")].cancel_requested
        assert desk.om.counters["cancels_refused"] == 4
        assert desk.om.counters["cancels_requested"] == 1
    entries = await journal_entries(journal_path)
    assert [r.intent_id for _, r in cancel_requests(entries)] == ["done"]  # refusals journal nothing
    assert_cancels_journaled_first(desk, entries)


# ---------------------------------------------------------------- 4. risk: the cancel-rate cap, and no gate


async def test_the_cancel_rate_cap_refuses_the_third_cancel_in_a_second_before_the_order_manager(
    journal_path: Path,
) -> None:
    limits = RiskSection(duplicate_window_s=0, max_cancels_per_s=2)
    async with Desk(journal_path, limits=limits) as desk:
        await desk.start_trading()
        for intent in ("a", "b", "c"):
            await desk.place(intent)
        for intent in ("a", "b", "c"):
            await desk.cancel(intent, settle=False)  # the same engine-clock instant
        await desk.settle()

        [refused] = desk.events.of(CancelRejected)
        assert (refused.intent_id, refused.strategy, refused.reason) == ("c", "alpha", "CANCEL_RATE")
        assert refused.detail == "2 cancels in the last 1000000000 ns reached the cap of 2"
        # It never reached the order manager, nor the venue.
        assert [c.intent_id for c in desk.approved.of(CancelIntent)] == ["a", "b"]
        assert desk.om.counters["cancels_requested"] == 2 and desk.om.counters["cancels_refused"] == 0
        assert desk.cancel_orders() == [desk.cid("a"), desk.cid("b")]
        assert [desk.at_venue(i) for i in ("a", "b", "c")] == [
            OrderStatus.CANCELED,
            OrderStatus.CANCELED,
            OrderStatus.NEW,
        ]

        # A second later the window has moved on: the same cancel goes through.
        desk.clock.advance_to(T0 + NS_PER_S)
        await desk.cancel("c")
        assert desk.at_venue("c") is OrderStatus.CANCELED
        assert [c.intent_id for c in desk.approved.of(CancelIntent)] == ["a", "b", "c"]
    entries = await journal_entries(journal_path)
    assert [r.intent_id for _, r in cancel_requests(entries)] == ["a", "b", "c"]
    assert_cancels_journaled_first(desk, entries)


@pytest.mark.parametrize("gate", ["halted", "stale"])
async def test_a_cancel_is_approved_while_risk_refuses_every_new_order(journal_path: Path, gate: str) -> None:
    """A cancel takes risk off: trading HALTED (as risk hears it announced on trading.state) or the
    symbol's data stale (pricing's verdict on md.status) refuse new orders, never a cancel."""
    async with Desk(journal_path) as desk:
        await desk.start_trading()
        await desk.place("x")
        now = desk.clock.time_ns()
        if gate == "halted":
            halt = TradingStateChanged(state=TradingState.HALTED, reason="operator halt", cause="operator", ts_init=now)
            await desk.bus.publish(topics.TRADING_STATE, halt)
        else:
            stale = MarketDataStatus(symbol=SYMBOL, fresh=False, provider="test", reason="silent 5s", ts_init=now)
            await desk.bus.publish(topics.MD_STATUS, stale)
        await desk.settle()

        await desk.place("y")  # the gate is closed for orders
        [refused] = desk.events.of(RiskRejected)
        assert (refused.intent_id, refused.reason) == ("y", "TRADING_HALTED" if gate == "halted" else "STALE_DATA")

        await desk.cancel("x")  # ... and open for cancels
        assert [c.intent_id for c in desk.approved.of(CancelIntent)] == ["x"]
        assert desk.at_venue("x") is OrderStatus.CANCELED
        assert desk.updates("x") == [OrderStatus.NEW, OrderStatus.CANCELED]
        assert desk.cancel_rejections() == []
    assert_cancels_journaled_first(desk, await journal_entries(journal_path))


# ---------------------------------------------------------------- 5. a journaled cancel outlives a crash


@pytest.mark.parametrize("halted", [False, True], ids=["active", "halted"])
async def test_a_journaled_cancel_is_sent_again_after_a_restart(journal_path: Path, halted: bool) -> None:
    """The engine journals a cancel and dies before the venue hears it. The next start recovers
    against the venue (which still works the order) and sends the cancel again; a recovery that
    stays HALTED cancels every working order, once each."""
    venue = SimulatedVenue()  # outlives both engines
    async with Desk(journal_path, venue) as first:
        await first.start_trading()
        await first.place("x")
        await first.place("y")
        cid_x, cid_y = first.cid("x"), first.cid("y")
        first.bus.unsubscribe(topics.VENUE_COMMAND, VENUE)  # from now on, what is sent is lost
        await first.cancel("x")
        if halted:
            request = TradingStateRequest(
                state=TradingState.HALTED, reason="operator halt", cause="operator", ts_init=first.clock.time_ns()
            )
            await first.bus.publish(topics.TRADING_REQUEST, request)
            await first.settle()
        assert first.cancel_orders()[0] == cid_x  # it left the order manager ...
        assert venue.orders[cid_x].status is OrderStatus.NEW  # ... and never arrived
        assert first.om.book.orders[cid_x].cancel_requested
    # (the process is gone: nothing more was journaled)
    [(requested_seq, _)] = cancel_requests(await journal_entries(journal_path))

    async with Desk(journal_path, venue, start_ns=T0 + 60 * NS_PER_S) as second:
        assert second.om.book.orders[cid_x].cancel_requested  # rebuilt from the journal
        report = await second.recover()
        assert report.state is (TradingState.HALTED if halted else TradingState.ACTIVE), report
        assert report.adopted == [] and report.not_at_venue == []
        if halted:
            assert sorted(second.cancel_orders()) == sorted([cid_x, cid_y])  # each once: x is not cancelled twice
            assert venue.orders[cid_y].status is OrderStatus.CANCELED
        else:
            assert second.cancel_orders() == [cid_x]  # only the order with a journaled request
            assert venue.orders[cid_y].status is OrderStatus.NEW
            assert second.om.book.orders[cid_y].status is OrderStatus.NEW
        assert venue.orders[cid_x].status is OrderStatus.CANCELED
        assert second.om.book.orders[cid_x].status is OrderStatus.CANCELED
        assert second.updates("x") == [OrderStatus.CANCELED]  # the strategy hears the outcome
        # The cancel went out after recovery had reconciled (its TradingStateChanged came first).
        assert [s.cause for s in second.states.of(TradingStateChanged)] == ["recovery"]
    entries = await journal_entries(journal_path)
    assert [seq for seq, _ in cancel_requests(entries)] == [requested_seq]  # not journaled a second time
    canceled = [
        e.seq
        for e in entries
        if isinstance(e.record, OrderUpdate)
        and e.record.client_order_id == cid_x
        and e.record.status is OrderStatus.CANCELED
    ]
    assert len(canceled) == 1 and canceled[0] > requested_seq


async def test_a_cancel_the_venue_carried_out_unheard_is_reconciled_not_sent_again(journal_path: Path) -> None:
    """The venue cancelled the order, but the engine died before its confirmation came back: recovery
    adopts the venue's CANCELED and sends nothing."""
    venue = SimulatedVenue()
    async with Desk(journal_path, venue) as first:
        await first.start_trading()
        await first.place("x")
        cid = first.cid("x")
        first.bus.unsubscribe(topics.VENUE_REPORT, OM)  # the venue's answers are lost from now on
        await first.cancel("x")
        assert venue.orders[cid].status is OrderStatus.CANCELED
        assert first.om.book.orders[cid].status is OrderStatus.NEW
    async with Desk(journal_path, venue, start_ns=T0 + 60 * NS_PER_S) as second:
        report = await second.recover()
        assert report.state is TradingState.ACTIVE, report
        assert second.cancel_orders() == []
        assert second.om.book.orders[cid].status is OrderStatus.CANCELED
    entries = await journal_entries(journal_path)
    [(requested_seq, _)] = cancel_requests(entries)
    [reconciled] = [e for e in entries if isinstance(e.record, OrderReconciled) and e.record.client_order_id == cid]
    assert isinstance(reconciled.record, OrderReconciled)
    assert reconciled.record.status is OrderStatus.CANCELED and reconciled.seq > requested_seq


# ---------------------------------------------------------------- 6. a journal that fails


async def test_a_cancel_that_cannot_be_journaled_is_refused_and_not_sent(journal_path: Path, no_faults: None) -> None:
    """The disk fills up on the CancelRequested's commit. The cancel is refused (JOURNAL_FAILED) and
    sends nothing itself; as with any journal failure, trading halts and the halt cancels every working order,
    once each. A cancel already queued behind it is refused without a journal attempt."""
    async with Desk(journal_path) as desk:
        await desk.start_trading()
        await desk.place("x")
        await desk.place("y")
        cid_x, cid_y = desk.cid("x"), desk.cid("y")
        assert desk.cancel_orders() == []
        faults.arm(faults.Faults(journal_error_at_commit=1, journal_error="disk_full"))  # the next commit
        await desk.cancel("x", settle=False)
        await desk.cancel("y", settle=False)
        await asyncio.wait_for(desk.bus.idle(), WAIT_S)  # (no flush: the journal has failed)

        rejected = {r.intent_id: r for r in desk.events.of(CancelRejected)}
        assert sorted(rejected) == ["x", "y"]
        assert {r.reason for r in rejected.values()} == {"JOURNAL_FAILED"}
        assert rejected["x"].detail.startswith("not sent: journal write failed:")
        assert "database or disk is full" in rejected["x"].detail
        assert rejected["y"].detail.startswith("journal write failed:")
        assert desk.om.journal_failed is not None
        assert desk.om.counters["cancels_requested"] == 0 and desk.om.counters["cancels_refused"] == 2
        [halt] = [s for s in desk.states.of(TradingStateChanged) if s.state is TradingState.HALTED]
        assert "journal write failed" in halt.reason
        # The only cancels sent are the halt's: one per working order, none for the refused intents.
        assert sorted(desk.cancel_orders()) == sorted([cid_x, cid_y])
        assert desk.at_venue("x") is OrderStatus.CANCELED and desk.at_venue("y") is OrderStatus.CANCELED
        # So the strategy hears both: its cancel refused, then the order cancelled (by the halt).
        assert desk.updates("x") == [OrderStatus.NEW, OrderStatus.CANCELED]
    faults.disarm()
    entries = await journal_entries(journal_path)
    assert cancel_requests(entries) == []
    assert not any(isinstance(e.record, OrderUpdate) and e.record.status is OrderStatus.CANCELED for e in entries)


# ---------------------------------------------------------------- property: FIFO and write-ahead

OPS = st.lists(
    st.tuples(
        st.sampled_from(["rest", "fill", "cancel", "cancel"]),
        st.integers(min_value=0, max_value=3),  # which intent
        st.booleans(),  # settle afterwards (else the next op is published in the same loop turn)
    ),
    min_size=1,
    max_size=14,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_any_interleaving_of_orders_and_cancels_sends_no_cancel_before_its_journal_record(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, bool]]
) -> None:
    """Orders (resting or marketable) and cancels for 4 intent ids, published in any order, with or
    without the system settling in between. FIFO: a cancel finds every order placed before it, and
    none placed after. Write-ahead: every CancelOrder left with its CancelRequested committed. Each
    cancel has exactly one outcome, the one the published order predicts."""
    path = tmp_path_factory.mktemp("prop") / "journal.db"
    limits = RiskSection(duplicate_window_s=0, max_cancels_per_s=None)

    async def scenario() -> None:
        async with Desk(path, limits=limits) as desk:
            await desk.start_trading()
            kinds: dict[int, str] = {}
            placed_epoch: dict[int, int] = {}
            cancel_epoch: dict[int, int] = {}  # a cancel of a resting order that was sent
            epoch = 0
            expected: list[tuple[str, str]] = []  # per cancel: (intent, "requested" | refusal reason)
            for kind, k, settle in ops:
                intent = f"i{k}"
                if kind in ("rest", "fill"):
                    if k in kinds:
                        continue  # one order per intent id
                    kinds[k] = kind
                    placed_epoch[k] = epoch
                    # A fresh quote first, as a live feed would have sent.
                    await desk.quote(settle=False)
                    await desk.place(intent, limit=RESTING if kind == "rest" else ASK, settle=False)
                else:
                    if k not in kinds:
                        outcome = "UNKNOWN_INTENT"
                    elif kinds[k] == "fill":
                        # Done once the fill report was handled, i.e. after a settle.
                        outcome = "NOT_WORKING" if epoch > placed_epoch[k] else "requested"
                    elif k in cancel_epoch and epoch > cancel_epoch[k]:
                        outcome = "NOT_WORKING"  # its earlier cancel was confirmed
                    else:
                        outcome = "requested"
                        cancel_epoch.setdefault(k, epoch)
                    expected.append((intent, outcome))
                    await desk.cancel(intent, settle=False)
                if settle:
                    await desk.settle()
                    epoch += 1
            await desk.settle()

            entries = await journal_entries(path)
            requested = [r.intent_id for _, r in cancel_requests(entries)]
            outcomes = [(i, o) for i, o in expected if o == "requested"]
            assert sorted(requested) == sorted(i for i, _ in outcomes)
            assert sorted(r for r in desk.cancel_rejections()) == sorted(
                (i, o) for i, o in expected if o != "requested"
            )
            assert_cancels_journaled_first(desk, entries)
            # Final states: a resting order ends cancelled iff it was cancelled; a marketable one filled.
            for k, kind in kinds.items():
                status = desk.at_venue(f"i{k}")
                assert desk.om.book.orders[desk.cid(f"i{k}")].status is status
                if kind == "fill":
                    assert status is OrderStatus.FILLED
                else:
                    assert status is (OrderStatus.CANCELED if k in cancel_epoch else OrderStatus.NEW)
            submits = desk.commands.of(SubmitOrder)
            assert len(submits) == len(kinds)

    asyncio.run(scenario())


# ---------------------------------------------------------------- regression: risk and CancelRejected
#
# RiskActor subscribes to order.event (for fills, final reports and refusals). It once had no
# branch for CancelRejected and raised TypeError on every refused cancel (its own CANCEL_RATE
# and the order manager's UNKNOWN_INTENT / NOT_OWNER / NOT_WORKING / JOURNAL_FAILED alike): the
# supervisor restarted it with a blank state (quotes, rate windows), and a burst of refusals
# exceeded the restart intensity and stopped the engine.


async def test_a_refused_cancel_does_not_crash_the_risk_actor(journal_path: Path) -> None:
    async with Desk(journal_path) as desk:
        await desk.start_trading()
        await desk.cancel("never-placed")
        assert desk.cancel_rejections() == [("never-placed", "UNKNOWN_INTENT")]
        await desk.place("x")
        assert desk.events.of(RiskRejected) == []  # risk still has the quote it was given
        await desk.risk_stats()
        assert desk.risk_crashes == 0


async def test_the_cancel_rate_cap_holds_for_the_whole_second(journal_path: Path) -> None:
    limits = RiskSection(duplicate_window_s=0, max_cancels_per_s=2)
    async with Desk(journal_path, limits=limits) as desk:
        await desk.start_trading()
        for intent in ("a", "b", "c"):
            await desk.place(intent)
        for intent in ("a", "b", "c"):
            await desk.cancel(intent)
        assert desk.cancel_rejections() == [("c", "CANCEL_RATE")]
        desk.clock.advance_to(T0 + NS_PER_S - 1)  # still inside the second of a's and b's cancels
        await desk.cancel("c")
        assert desk.cancel_rejections() == [("c", "CANCEL_RATE"), ("c", "CANCEL_RATE")]
        assert desk.at_venue("c") is OrderStatus.NEW


async def test_a_burst_of_refused_cancels_does_not_stop_the_engine(journal_path: Path) -> None:
    """Under the composition root's supervision (kestrel.node.session_tree: 5 restarts in 10 s)."""
    async with Desk(journal_path, max_restarts=5) as desk:
        await desk.start_trading()
        for n in range(6):
            await desk.cancel(f"never-placed-{n}")
        assert len(desk.cancel_rejections()) == 6
        await desk.risk_stats()  # raises SupervisorGaveUp if the refusals stopped the engine
        assert desk.risk_crashes == 0
