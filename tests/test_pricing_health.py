"""Freshness SLAs, the feed watchdog, failover with hysteresis, sanity and sequence checks.

The real pricing actor on the real bus under a SimClock: time moves only when the test
moves it, and timers fire at their deadlines (as in replay).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.pricing import PricingActor, PricingPolicy
from engine import topics
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import NS_PER_S, SimClock
from engine.messages import (
    ActorStats,
    BestBidOffer,
    ExchangeQuote,
    FeedState,
    MarketDataStatus,
    ProviderSwitched,
    StatsQuery,
    SymbolTradingStatus,
    TradeTick,
)
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

T0 = 1_700_000_000 * NS_PER_S


class Collect(Actor):
    def __init__(self, sink: list[Any]) -> None:
        self.sink = sink

    async def on_start(self) -> None:
        for topic in (topics.MD_BBO, topics.MD_TRADE, topics.MD_STATUS):
            self.ctx.subscribe(topic)

    async def handle(self, message: Any) -> Any:
        self.sink.append(message)


class Harness:
    def __init__(self, bus: Bus, clock: SimClock, sink: list[Any]) -> None:
        self.bus, self.clock, self.sink = bus, clock, sink

    async def at(self, seconds: float, *messages: Any) -> None:
        """Move the clock to T0 + seconds (firing due timers on the way), then publish."""
        when = T0 + round(seconds * NS_PER_S)
        deadline = self.clock.next_deadline_ns()
        while deadline is not None and deadline <= when:
            self.clock.advance_to(deadline)
            await self.bus.idle()
            deadline = self.clock.next_deadline_ns()
        self.clock.advance_to(when)
        for message in messages:
            await self.bus.publish(topics.MD_RAW, message)
            await self.bus.idle()

    async def stats(self) -> ActorStats:
        stats: ActorStats = await self.bus.request("pricing", StatsQuery())
        return stats

    def of(self, kind: type) -> list[Any]:
        return [m for m in self.sink if isinstance(m, kind)]

    def statuses(self) -> list[tuple[bool, str | None]]:
        return [(m.fresh, m.provider) for m in self.of(MarketDataStatus)]


@pytest.fixture
async def harness_factory() -> AsyncIterator[Any]:
    tasks: list[asyncio.Task[None]] = []

    async def make(policy: PricingPolicy | None = None) -> Harness:
        bus, clock, sink = Bus(), SimClock(T0), []  # type: ignore[var-annotated]
        root = Supervisor(
            SupervisorSpec(
                "root", [ActorSpec("sink", lambda: Collect(sink)), ActorSpec("pricing", lambda: PricingActor(policy))]
            ),
            bus,
            clock,
            random.Random(1),
        )
        tasks.append(asyncio.create_task(root.run()))
        await root.started()
        return Harness(bus, clock, sink)

    yield make
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def quote(
    bid: str, ask: str, provider: str = "p1", symbol: str = "IBM", sequence: int | None = None, size: str = "100"
) -> ExchangeQuote:
    return ExchangeQuote(
        symbol=symbol,
        exchange="X",
        national=True,
        bid_price=Decimal(bid),
        bid_size=Decimal(size),
        ask_price=Decimal(ask),
        ask_size=Decimal(size),
        suspicious=False,
        provider=provider,
        ts_event=0,
        ts_recv=0,
        sequence=sequence,
    )


def trade(price: str, sequence: int | None, provider: str = "p1") -> TradeTick:
    return TradeTick(
        symbol="IBM",
        exchange="X",
        price=Decimal(price),
        size=Decimal("0.5"),
        suspicious=False,
        provider=provider,
        ts_event=0,
        ts_recv=0,
        sequence=sequence,
    )


async def test_silence_beyond_the_sla_makes_a_symbol_stale_and_the_next_quote_fresh(harness_factory: Any) -> None:
    h = await harness_factory(PricingPolicy(sla_s=2.0, symbol_sla_s={"AAPL": 0.5}))
    await h.at(0, quote("10.00", "10.02"), quote("20.00", "20.02", symbol="AAPL"))
    await h.at(0.4, quote("20.00", "20.03", symbol="AAPL"))
    assert [(m.symbol, m.fresh, m.reason) for m in h.of(MarketDataStatus)] == [
        ("IBM", True, "first quote"),
        ("AAPL", True, "first quote"),
    ]
    await h.at(1.9)  # AAPL's 0.5 s SLA ran out at 0.9 s; IBM's 2 s has not
    stale = h.of(MarketDataStatus)[-1]
    assert (stale.symbol, stale.fresh, stale.provider) == ("AAPL", False, "p1")
    assert stale.ts_init == T0 + round(0.9 * NS_PER_S)  # exactly at the SLA, from the engine clock
    assert "SLA 0.5 s" in stale.reason
    await h.at(1.95, quote("10.00", "10.03"))  # IBM keeps quoting: never stale
    await h.at(3.0, quote("20.01", "20.03", symbol="AAPL"))
    assert [(m.symbol, m.fresh) for m in h.of(MarketDataStatus)][2:] == [("AAPL", False), ("AAPL", True)]
    assert h.of(MarketDataStatus)[-1].reason == "quotes resumed"
    counters = (await h.stats()).counters
    assert (counters["stale"], counters["recovered"]) == (1, 1)


async def test_a_stale_symbol_publishes_no_prices_and_a_feed_down_makes_it_stale_at_once(harness_factory: Any) -> None:
    h = await harness_factory(PricingPolicy(sla_s=5.0))
    await h.at(0, quote("10.00", "10.02"))
    await h.at(1, FeedState(provider="p1", connected=False, reason="socket closed", ts_init=0))
    assert h.statuses() == [(True, "p1"), (False, "p1")]
    assert "feed down: socket closed" in h.of(MarketDataStatus)[-1].reason
    await h.at(2, FeedState(provider="p1", connected=True, reason="reconnected", ts_init=0))
    assert h.statuses()[-1] == (False, "p1")  # connected is not fresh: a quote is
    await h.at(2.5, quote("10.01", "10.02"))
    assert h.statuses()[-1] == (True, "p1")
    assert len(h.of(BestBidOffer)) == 2


async def test_the_feed_watchdog_notices_a_provider_silent_on_every_symbol(harness_factory: Any) -> None:
    h = await harness_factory(PricingPolicy(sla_s=100.0, feed_silence_s=3.0))
    await h.at(0, quote("10.00", "10.02"), trade("10.01", None))
    await h.at(10)
    counters = (await h.stats()).counters
    assert counters["feeds_silent"] == 1
    assert h.statuses() == [(True, "p1"), (False, "p1")]
    assert "feed silent" in h.of(MarketDataStatus)[-1].reason


async def test_failover_to_the_secondary_and_back_after_the_hysteresis(harness_factory: Any) -> None:
    policy = PricingPolicy(sla_s=1.0, providers={"IBM": ("sip", "iex")}, failback_s=3.0)
    h = await harness_factory(policy)
    await h.at(0, quote("10.00", "10.02", "sip"), quote("10.00", "10.03", "iex"))
    assert [b.provider for b in h.of(BestBidOffer)] == ["sip"]  # the standby's book is kept, not published
    # The primary goes quiet; the secondary keeps quoting.
    for t in (0.5, 1.0, 1.5):
        await h.at(t, quote("10.00", "10.03" if t != 1.5 else "10.04", "iex"))
    switches = h.of(ProviderSwitched)
    assert [(s.from_provider, s.to_provider) for s in switches] == [("sip", "iex")]
    assert switches[0].ts_init == T0 + 1 * NS_PER_S and "sip" in switches[0].reason
    assert [b.provider for b in h.of(BestBidOffer)] == ["sip", "iex", "iex"]  # lineage on every price
    assert all(fresh for fresh, _ in h.statuses())  # a clean failover never leaves the symbol stale
    # The primary comes back, flapping: one quote, silence, then steady.
    await h.at(2.0, quote("10.01", "10.03", "sip"), quote("10.00", "10.04", "iex"))
    await h.at(3.2, quote("10.00", "10.04", "iex"))  # sip silent for 1.2 s > SLA: its fresh run restarts
    for t in (3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5):
        await h.at(t, quote("10.01", "10.03", "sip"), quote("10.00", "10.04", "iex"))
    switches = h.of(ProviderSwitched)
    assert [(s.from_provider, s.to_provider) for s in switches] == [("sip", "iex"), ("iex", "sip")]
    assert switches[1].ts_init == T0 + round(6.5 * NS_PER_S)  # 3 s after sip's fresh run began at 3.5
    assert h.of(BestBidOffer)[-1].provider == "sip"
    counters = (await h.stats()).counters
    assert (counters["failovers"], counters["failbacks"]) == (1, 1)


async def test_the_standby_speaking_first_at_start_up_is_a_race_not_a_failover(harness_factory: Any) -> None:
    """Found by the chaos failover runs: sip's first quote beat iex's, and pricing failed
    over to sip at once, then back after failback_s. The primary now gets one SLA."""
    policy = PricingPolicy(sla_s=1.0, providers={"IBM": ("iex", "sip")}, failback_s=3.0)
    h = await harness_factory(policy)
    await h.at(0, quote("10.00", "10.02", "sip"))
    await h.at(0.4, quote("10.00", "10.02", "sip"), quote("10.00", "10.03", "iex"))
    assert h.of(ProviderSwitched) == []
    assert [b.provider for b in h.of(BestBidOffer)] == ["iex"]
    # A primary that never shows up at all: the standby takes over once it has been fresh one SLA.
    h2 = await harness_factory(PricingPolicy(sla_s=1.0, providers={"MSFT": ("iex", "sip")}))
    for t in (0, 0.5, 1.0):
        await h2.at(t, quote("20.00", "20.02", "sip", symbol="MSFT"))
    assert [(s.from_provider, s.to_provider) for s in h2.of(ProviderSwitched)] == [("iex", "sip")]
    assert [b.provider for b in h2.of(BestBidOffer)] == ["sip"]


async def test_both_providers_stale_makes_the_symbol_stale(harness_factory: Any) -> None:
    h = await harness_factory(PricingPolicy(sla_s=1.0, providers={"IBM": ("sip", "iex")}))
    await h.at(0, quote("10.00", "10.02", "sip"), quote("10.00", "10.03", "iex"))
    await h.at(5)
    assert h.statuses() == [(True, "sip"), (False, "sip")]
    assert h.of(ProviderSwitched) == []
    await h.at(5.5, quote("10.00", "10.03", "iex"))  # the secondary first: fail over to it
    assert h.statuses()[-1] == (True, "iex")
    assert [s.to_provider for s in h.of(ProviderSwitched)] == ["iex"]


async def test_sanity_filters_and_sequence_checks(harness_factory: Any) -> None:
    h = await harness_factory(PricingPolicy(outlier_pct=Decimal(5), outlier_confirmations=3))
    await h.at(
        0,
        quote("10.00", "10.02", sequence=10),
        quote("10.00", "10.03", sequence=10),  # duplicate
        quote("10.00", "10.04", sequence=9),  # out of order
        quote("0", "10.04", sequence=11),  # zero price
        quote("10.05", "10.05", sequence=12),  # locked
        quote("10.06", "10.05", sequence=13),  # crossed
        quote("12.00", "12.02", sequence=14),  # +20 %: held back
        quote("12.00", "12.03", sequence=15),  # again
        quote("12.01", "12.03", sequence=16),  # the third in a row: the market moved
        trade("10.01", 100),
        trade("10.01", 100),  # duplicate trade id
        trade("10.01", 99),  # out of order
        trade("10.02", 103),  # gap (101, 102 missing): kept
        trade("-1", 104),  # invalid
    )
    bbos = h.of(BestBidOffer)
    assert [(str(b.bid_price), str(b.ask_price)) for b in bbos] == [("10.00", "10.02"), ("12.01", "12.03")]
    assert [t.sequence for t in h.of(TradeTick)] == [100, 103]
    c = (await h.stats()).counters
    assert (c["duplicates"], c["out_of_order"], c["gaps"], c["invalid"]) == (2, 2, 1, 2)
    assert (c["locked"], c["crossed"], c["outliers"]) == (1, 1, 2)


async def test_trading_status_is_forwarded_to_risk_and_strategies(harness_factory: Any) -> None:
    h = await harness_factory()
    halt = SymbolTradingStatus(symbol="IBM", halted=True, reason="H", provider="p1", ts_event=1, ts_recv=1)
    await h.at(0, halt)
    assert h.of(SymbolTradingStatus) == [halt]


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="sla_s"):
        PricingPolicy(sla_s=0)
    with pytest.raises(ValueError, match="two different providers"):
        PricingPolicy(providers={"IBM": ("sip", "sip")})
    with pytest.raises(ValueError, match="outlier_confirmations"):
        PricingPolicy(outlier_confirmations=0)


@settings(max_examples=25, deadline=None)
@given(
    gaps=st.lists(st.integers(min_value=10, max_value=4000), min_size=1, max_size=30),  # ms
)
def test_stale_exactly_when_a_silence_reaches_the_sla(gaps: list[int]) -> None:
    """Property: for any quote schedule, the symbol went stale iff some silence exceeded the SLA,
    and the stale/fresh messages alternate, starting fresh."""

    async def run() -> tuple[list[bool], bool]:
        bus, clock, sink = Bus(), SimClock(T0), []  # type: ignore[var-annotated]
        root = Supervisor(
            SupervisorSpec(
                "root",
                [
                    ActorSpec("sink", lambda: Collect(sink)),
                    ActorSpec("pricing", lambda: PricingActor(PricingPolicy(sla_s=1.0, feed_silence_s=1000.0))),
                ],
            ),
            bus,
            clock,
            random.Random(1),
        )
        task = asyncio.create_task(root.run())
        await root.started()
        h = Harness(bus, clock, sink)
        t = 0
        await h.at(0, quote("10.00", "10.02"))
        for i, gap in enumerate(gaps):
            t += gap
            await h.at(t / 1000, quote("10.00", "10.02" if i % 2 else "10.03"))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return [m.fresh for m in sink if isinstance(m, MarketDataStatus)], any(g >= 1000 for g in gaps)

    flags, silence = asyncio.run(run())
    assert flags[0] is True
    assert all(a != b for a, b in itertools.pairwise(flags))
    assert (False in flags) == silence
    assert flags.count(False) == sum(1 for g in gaps if g >= 1000)
