"""Risk's cached account view and New York day decide exactly as computing them afresh would.

``RiskActor`` caches what it derives from the ledger's ``AccountState`` and the quotes
(equity, buying power, the marks: ``_account_view``) and New York's trading day
(``_new_york_day``), instead of recomputing them on every intent. The reference here is
:class:`Uncached`, a ``RiskActor`` computing both afresh on every read, as risk did before.
Two real risk actors, each on its own bus and ``SimClock``, get the same messages; every
``RiskDecision`` (approved or not, reason, detail, inputs, reference price) must be equal,
so the cache can never approve what the uncached check refuses, nor explain a decision with
other figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator, Mapping
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import event, given, settings
from hypothesis import strategies as st

from actors.pretrade import AccountView
from actors.risk import RiskActor
from benchmarks.bench_risk_check import _bench as bench_risk_check
from engine import topics
from engine.actor import Actor
from engine.bus import Bus
from engine.calendar import local_date
from engine.clock import SimClock
from engine.config import AssetSection, DayTradingSection, RiskSection
from engine.messages import (
    AccountState,
    BestBidOffer,
    Fill,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RiskDecision,
    Side,
)
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

D = Decimal
ZERO = D(0)
NY = ZoneInfo("America/New_York")
SYMBOLS = ("AAA", "BBB", "CCC")


def ny(text: str) -> int:
    moment = dt.datetime.fromisoformat(text).replace(tzinfo=NY)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


class Uncached(RiskActor):
    """The reference: marks, the account view and the day computed afresh on every read (risk before the cache)."""

    def _marks(self) -> Mapping[str, Decimal]:
        return {s: (q.bid_price + q.ask_price) / 2 for s, q in self.quotes.items()}

    def _account_view(self) -> AccountView:
        marks = self._marks()
        account = self.account
        equity = account.cash
        for symbol, qty in account.positions.items():
            equity += qty * marks.get(symbol, account.avg_prices.get(symbol, ZERO))
        if self.section.account_type == "cash":
            buying_power = max(account.cash, ZERO)
        else:
            gross = sum((abs(q) * marks.get(s, account.avg_prices.get(s, ZERO)) for s, q in account.positions.items()),
                        ZERO)
            buying_power = max(equity * self.section.margin_multiplier - gross, ZERO)
        return AccountView(equity=equity, buying_power=buying_power, positions=account.positions, marks=marks)

    def _new_york_day(self, now: int) -> tuple[dt.date, str]:
        day = local_date(now, NY)
        return day, day.isoformat()


class Auditor(Actor):
    """Collects every decision risk puts on the audit trail."""

    def __init__(self) -> None:
        self.decisions: list[RiskDecision] = []

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.AUDIT)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, RiskDecision):
            self.decisions.append(message)
        return None


class Desk:
    """One risk actor (cached or not) with an auditor, on its own bus and SimClock."""

    def __init__(self, clock: SimClock, bus: Bus, auditor: Auditor, risk: list[RiskActor]) -> None:
        self.clock, self.bus, self.auditor, self._risk = clock, bus, auditor, risk

    @property
    def risk(self) -> RiskActor:
        return self._risk[-1]

    async def publish(self, topic: str, message: object) -> None:
        await self.bus.publish(topic, message)
        await self.bus.idle()


@contextlib.asynccontextmanager
async def desk(kind: type[RiskActor], section: RiskSection, start_ns: int) -> AsyncIterator[Desk]:
    clock, bus, auditor = SimClock(start_ns), Bus(), Auditor()
    made: list[RiskActor] = []

    def build() -> RiskActor:
        made.append(kind(section, default_calendar="24/7", starting_cash=D(20_000)))
        return made[-1]

    spec = SupervisorSpec("root", [ActorSpec("auditor", lambda: auditor), ActorSpec("risk", build)])
    root = Supervisor(spec, bus, clock, random.Random(3))
    task = asyncio.create_task(root.run())
    try:
        async with asyncio.timeout(10):
            await root.started()
        yield Desk(clock, bus, auditor, made)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class Pair:
    """The cached and the uncached risk actor, fed the same messages at the same times."""

    def __init__(self, cached: Desk, uncached: Desk) -> None:
        self.desks = (cached, uncached)
        self.cached, self.uncached = cached, uncached
        self.n = 0

    def now(self) -> int:
        return self.cached.clock.time_ns()

    async def advance(self, ns: int) -> None:
        for d in self.desks:
            d.clock.advance_to(d.clock.time_ns() + ns)
            await d.bus.idle()

    async def publish(self, topic: str, message: object) -> None:
        for d in self.desks:
            await d.publish(topic, message)

    async def bbo(self, symbol: str, bid: str, ask: str) -> None:
        now = self.now()
        await self.publish(topics.MD_BBO, BestBidOffer(
            symbol=symbol, bid_price=D(bid), bid_size=D(100), ask_price=D(ask), ask_size=D(100), provider="test",
            ts_event=now, ts_init=now,
        ))

    async def account(self, cash: str, positions: Mapping[str, str], *, trade_date: str = "",
                      opened_today: Mapping[str, str] | None = None, day_trades: int = 0,
                      gfv_restricted: Mapping[str, str] | None = None, account_type: str = "margin") -> None:
        held = {s: D(q) for s, q in positions.items()}
        await self.publish(topics.ACCOUNT_STATE, AccountState(
            account_type=account_type, cash=D(cash), settled_cash=D(cash), positions=held,
            avg_prices={s: D("90.00") for s in held}, realized_pnl=ZERO, fees=ZERO, fills=self.n,
            trade_date=trade_date, opened_today={s: D(q) for s, q in (opened_today or {}).items()},
            day_trades=day_trades, gfv_restricted={s: D(q) for s, q in (gfv_restricted or {}).items()},
            ts_init=self.now(),
        ))

    async def intent(self, symbol: str, side: Side, qty: str, limit: str | None = None) -> tuple[RiskDecision, ...]:
        self.n += 1
        await self.publish(topics.ORDER_INTENT, OrderIntent(
            intent_id=f"i{self.n}", strategy="test", symbol=symbol, side=side, qty=D(qty),
            order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
            limit_price=None if limit is None else D(limit), ts_init=self.now(),
        ))
        return self.decided()

    def decided(self) -> tuple[RiskDecision, ...]:
        """The latest decision of each desk, asserted equal."""
        cached, uncached = (d.auditor.decisions[-1] for d in self.desks)
        assert cached == uncached, (cached, uncached)
        return cached, uncached

    async def fill(self, intent_id: str, qty: str, n: int) -> None:
        order = self.uncached.risk.working.get(intent_id)
        if order is None:
            return
        now = self.now()
        await self.publish(topics.ORDER_FILL, Fill(
            client_order_id=order.client_order_id, venue_order_id="v", execution_id=f"x{n}", intent_id=intent_id,
            strategy=order.strategy, symbol=order.symbol, side=order.side, qty=D(qty), price=order.reference_price,
            fee=ZERO, ts_event=now, ts_recv=now,
        ))

    async def done(self, intent_id: str) -> None:
        await self.publish(topics.ORDER_EVENT, OrderUpdate(
            client_order_id=f"c-{intent_id}", venue_order_id="v", status=OrderStatus.CANCELED, intent_id=intent_id,
            strategy="test", ts_event=0, ts_recv=0,
        ))


@contextlib.asynccontextmanager
async def pair(section: RiskSection, start_ns: int) -> AsyncIterator[Pair]:
    async with desk(RiskActor, section, start_ns) as cached, desk(Uncached, section, start_ns) as uncached:
        yield Pair(cached, uncached)


def limits(**options: Any) -> RiskSection:
    base: dict[str, Any] = {
        "max_order_qty": D(1000), "max_order_notional": D(1_000_000), "duplicate_window_s": 0,
        "max_orders_per_s": None, "runaway_intents_per_s": None, "runaway_rejected_streak": None,
        "max_adv_participation_pct": None, "max_drawdown_pct": None, "daily_loss_limit": D(10**12),
        "assets": {s: AssetSection(shortable=True, easy_to_borrow=True) for s in SYMBOLS},
    }
    return RiskSection(**(base | options))


# ---------------------------------------------------------------- scenarios


async def test_a_fill_and_the_account_state_after_it_reduce_buying_power_at_once() -> None:
    async with pair(limits(account_type="cash"), ny("2026-11-25 10:00")) as p:
        await p.bbo("AAA", "99.98", "100.00")
        first, _ = await p.intent("AAA", Side.BUY, "150")  # 15,000 of 20,000
        assert first.approved and first.inputs["buying_power"] == "20000"
        await p.fill("i1", "150", 1)
        await p.account("5000.00", {"AAA": "150"}, account_type="cash")
        second, _ = await p.intent("AAA", Side.BUY, "60")  # 6,000 > 5,000 left
        assert not second.approved and second.reason == "BUYING_POWER"
        assert second.inputs["buying_power"] == "5000.00"
        third, _ = await p.intent("AAA", Side.BUY, "50")
        assert third.approved and third.inputs["buying_power"] == "5000.00"


async def test_a_new_account_state_replaces_the_view_even_between_quotes() -> None:
    async with pair(limits(max_leverage=D(1)), ny("2026-11-25 10:00")) as p:
        await p.bbo("AAA", "99.98", "100.00")
        await p.account("20000", {})
        assert (await p.intent("AAA", Side.BUY, "150"))[0].approved  # 15,000 ≤ 1 × 20,000
        await p.done("i1")
        await p.account("10000", {})  # the same quote; only the account moved
        refused, _ = await p.intent("AAA", Side.BUY, "150")
        assert refused.reason == "LEVERAGE" and refused.inputs["equity"] == "10000"


async def test_a_quote_moving_a_held_symbol_moves_equity_and_buying_power() -> None:
    async with pair(limits(), ny("2026-11-25 10:00")) as p:
        await p.bbo("AAA", "100.00", "100.02")
        await p.bbo("BBB", "20.00", "20.02")
        await p.account("-5000", {"AAA": "200"})  # margin: equity 15,002.00, gross 20,002.00
        before, _ = await p.intent("BBB", Side.BUY, "1")
        assert before.approved and before.inputs["buying_power"] == "10002.00"  # 2 × 15,002 − 20,002
        await p.done("i1")
        await p.bbo("AAA", "50.00", "50.02")  # the held symbol halves: equity 5,002.00, gross 10,002.00
        after, _ = await p.intent("BBB", Side.BUY, "1")
        assert not after.approved and after.reason == "BUYING_POWER" and after.inputs["buying_power"] == "2.00"
        await p.bbo("BBB", "1.00", "1.02")  # a symbol not held: its mark moves, equity and buying power do not
        cheap, _ = await p.intent("BBB", Side.BUY, "1")
        assert cheap.approved and cheap.inputs["buying_power"] == "2.00" and cheap.inputs["mark"] == "1.01"


async def test_a_mid_equal_in_value_but_not_in_digits_is_shown_as_quoted() -> None:
    async with pair(limits(max_gross_exposure=D(10**9)), ny("2026-11-25 10:00")) as p:
        await p.account("50000", {"AAA": "10"})
        await p.bbo("AAA", "100.1", "100.3")
        first, _ = await p.intent("AAA", Side.BUY, "1")
        await p.done("i1")
        await p.bbo("AAA", "100.10", "100.30")
        second, _ = await p.intent("AAA", Side.BUY, "1")
        assert first.inputs["mark"] == "100.2" and second.inputs["mark"] == "100.20"
        assert first.inputs["equity"] != second.inputs["equity"]
        assert D(first.inputs["equity"]) == D(second.inputs["equity"])


async def test_the_trading_day_turns_at_new_york_midnight_for_the_day_trading_rule() -> None:
    section = limits(day_trading=DayTradingSection(policy="pdt"))
    async with pair(section, ny("2026-11-25 23:59:59")) as p:
        await p.bbo("AAA", "100.00", "100.02")
        await p.account("0", {"AAA": "100"}, trade_date="2026-11-25", opened_today={"AAA": "100"}, day_trades=3)
        refused, _ = await p.intent("AAA", Side.SELL, "10")  # closes shares opened today: a 4th day trade
        assert refused.reason == "PATTERN_DAY_TRADER" and refused.inputs["day"] == "2026-11-25"
        await p.advance(1_000_000_000)  # 2026-11-26 00:00:00 in New York: yesterday's purchases
        assert (await p.intent("AAA", Side.SELL, "10"))[0].approved


# ---------------------------------------------------------------- property


PRICES = ("50", "99.9", "99.90", "100", "100.00", "100.1", "100.10", "100.25", "150.5")
SPREADS = ("0", "0.02", "0.1", "0.10", "1")
STARTS = ("2026-03-07 23:59:58", "2026-11-01 01:59:59", "2026-11-25 10:00", "2027-10-19 23:59:59")
WAITS = (1, 1_000_000, 999_999_999, 60 * 10**9, 3_600 * 10**9, 86_400 * 10**9)

quote_op = st.tuples(st.just("quote"), st.sampled_from(SYMBOLS), st.sampled_from(PRICES), st.sampled_from(SPREADS))
account_op = st.tuples(
    st.just("account"),
    st.integers(-20_000, 60_000),
    st.dictionaries(st.sampled_from(SYMBOLS), st.integers(-300, 300), max_size=3),
    st.sampled_from(["today", "yesterday", ""]),
    st.integers(0, 5),
)
intent_op = st.tuples(
    st.just("intent"), st.sampled_from(SYMBOLS), st.sampled_from([Side.BUY, Side.SELL]), st.integers(1, 150),
    st.none() | st.sampled_from(PRICES),
)
fill_op = st.tuples(st.just("fill"), st.integers(1, 40), st.integers(1, 150))
done_op = st.tuples(st.just("done"), st.integers(1, 40))
wait_op = st.tuples(st.just("wait"), st.sampled_from(WAITS))
ops_st = st.lists(  # intents twice as likely as the rest: they are what is compared
    st.one_of(quote_op, account_op, intent_op, intent_op, fill_op, done_op, wait_op), min_size=5, max_size=40
)
sections_st = st.builds(
    limits,
    account_type=st.sampled_from(["cash", "margin"]),
    max_leverage=st.none() | st.sampled_from([D(1), D(2), D(4)]),
    max_gross_exposure=st.none() | st.sampled_from([D(20_000), D(60_000)]),
    max_net_exposure=st.none() | st.sampled_from([D(10_000), D(40_000)]),
    max_symbol_concentration_pct=st.none() | st.sampled_from([D(30), D(80)]),
    max_position_notional=st.none() | st.sampled_from([D(15_000)]),
    day_trading=st.builds(DayTradingSection, policy=st.sampled_from(["auto", "pdt", "intraday-margin"])),
)


async def _replay(section: RiskSection, start: str, ops: list[tuple[Any, ...]]) -> None:
    async with pair(section, ny(start)) as p:
        for symbol in SYMBOLS:  # a quote each, so most intents get to the account checks
            await p.bbo(symbol, "100", "100.02")
        for n, op in enumerate(ops):
            kind = op[0]
            if kind == "quote":
                _, symbol, bid, spread = op
                await p.bbo(symbol, bid, str(D(bid) + D(spread)))
            elif kind == "account":
                _, cash, held, day, day_trades = op
                today = local_date(p.now(), NY)
                trade_date = {"today": today, "yesterday": today - dt.timedelta(days=1)}.get(day)
                positions = {s: str(q) for s, q in held.items()}
                await p.account(
                    str(cash), positions, trade_date="" if trade_date is None else trade_date.isoformat(),
                    opened_today={s: q for s, q in positions.items() if int(q) % 2}, day_trades=day_trades,
                    gfv_restricted={s: q for s, q in positions.items() if int(q) > 0 and int(q) % 3 == 0},
                    account_type=section.account_type,
                )
            elif kind == "intent":
                _, symbol, side, qty, limit = op
                await p.intent(symbol, side, str(qty), limit)
            elif kind == "fill":
                await p.fill(f"i{op[1]}", str(op[2]), n)
            elif kind == "done":
                await p.done(f"i{op[1]}")
            else:
                await p.advance(op[1])
            assert p.cached.risk.working == p.uncached.risk.working
            cached, uncached = p.cached.risk, p.uncached.risk
            assert (cached.state, cached.state_reason) == (uncached.state, uncached.state_reason)
        assert p.cached.auditor.decisions == p.uncached.auditor.decisions
        for decision in p.cached.auditor.decisions:
            event(f"decision: {decision.reason or 'approved'}")
        assert p.cached.risk._report() == p.uncached.risk._report()


@settings(max_examples=300, deadline=None)
@given(sections_st, st.sampled_from(STARTS), ops_st)
def test_cached_decisions_equal_uncached_ones(section: RiskSection, start: str, ops: list[tuple[Any, ...]]) -> None:
    """Quotes (some equal in value, not in digits), account states, intents, fills, cancels and
    time (across New York midnights and DST changes) in any order: the same decisions."""
    asyncio.run(_replay(section, start, ops))


EDGES = [
    ny(f"{day} {clock}") + offset
    for day in ("2026-03-07", "2026-03-08", "2026-03-09", "2026-10-31", "2026-11-01", "2026-11-02")
    for clock, offset in (("00:00", -1), ("00:00", 0), ("00:30", 0), ("01:30", 0), ("12:00", 0), ("23:30", 0))
]
"""Around both 2026 DST changes (23- and 25-hour days): the instants either side of each midnight."""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(ny("2026-03-06 00:00"), ny("2026-11-03 00:00")) | st.sampled_from(EDGES),
                min_size=1, max_size=30))
def test_the_cached_new_york_day_is_local_date(times: list[int]) -> None:
    """Any sequence of times, backwards too, around both 2026 DST changes: the day ``local_date`` gives."""
    risk = RiskActor(limits())
    for now in times:
        day = local_date(now, NY)
        assert risk._new_york_day(now) == (day, day.isoformat())


async def test_the_risk_check_micro_benchmark_still_approves_every_intent() -> None:
    """``benchmarks/bench_risk_check.py`` raises if risk refuses one of its intents (a limit changed)."""
    for symbols, working, move_every in ((1, 0, 0), (5, 3, 2)):
        result = await bench_risk_check(30, symbols, working, 10, move_every, None)
        assert result["intents"] == 30 and result["check_p50_us"] > 0
