"""Risk's market gates through the real risk actor on the real bus: sessions, halts, LULD, stale data.

Time is a SimClock set to New York wall times of 2026, so the calendar facts are fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from actors.risk import RiskActor
from engine import topics
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import SimClock
from engine.config import AssetSection, RiskSection
from engine.messages import (
    ActorStats,
    ApprovedOrder,
    BestBidOffer,
    MarketDataStatus,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RiskRejected,
    Side,
    StatsQuery,
    SymbolTradingStatus,
    TimeInForce,
)
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

D = Decimal
NY = ZoneInfo("America/New_York")


def ny(text: str) -> int:
    moment = dt.datetime.fromisoformat(text).replace(tzinfo=NY)
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


class Watcher(Actor):
    def __init__(self) -> None:
        self.seen: dict[str, RiskRejected | ApprovedOrder] = {}

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ORDER_EVENT)
        self.ctx.subscribe(topics.ORDER_APPROVED)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, RiskRejected):
            self.seen[message.intent_id] = message
        elif isinstance(message, ApprovedOrder):
            self.seen[message.intent.intent_id] = message
        return None


class Desk:
    """The risk actor, a watcher, a SimClock; publishes what pricing and strategies would."""

    def __init__(self, clock: SimClock, bus: Bus, watcher: Watcher) -> None:
        self.clock, self.bus, self.watcher = clock, bus, watcher
        self.n = 0

    def at(self, local: str) -> None:
        self.clock.advance_to(ny(local))

    async def bbo(self, symbol: str = "IBM", bid: str = "99.90", ask: str = "100.10") -> None:
        now = self.clock.time_ns()
        await self.bus.publish(
            topics.MD_BBO,
            BestBidOffer(symbol=symbol, bid_price=D(bid), bid_size=D(100), ask_price=D(ask), ask_size=D(100),
                         provider="test", ts_event=now, ts_init=now),
        )
        await self.bus.idle()

    async def status(self, message: SymbolTradingStatus | MarketDataStatus) -> None:
        await self.bus.publish(topics.MD_STATUS, message)
        await self.bus.idle()

    def trading_status(
        self, halted: bool | None, lower: str | None = None, upper: str | None = None, symbol: str = "IBM"
    ) -> SymbolTradingStatus:
        now = self.clock.time_ns()
        return SymbolTradingStatus(
            symbol=symbol, halted=halted, reason="test status", provider="alpaca-sip", ts_event=now, ts_recv=now,
            luld_lower=None if lower is None else D(lower), luld_upper=None if upper is None else D(upper),
        )

    async def order(
        self,
        symbol: str = "IBM",
        side: Side = Side.BUY,
        limit: str | None = None,
        tif: TimeInForce = TimeInForce.DAY,
    ) -> RiskRejected | ApprovedOrder:
        self.n += 1
        intent_id = f"i{self.n}"
        await self.bus.publish(
            topics.ORDER_INTENT,
            OrderIntent(
                intent_id=intent_id, strategy="test", symbol=symbol, side=side, qty=D(1),
                order_type=OrderType.MARKET if limit is None else OrderType.LIMIT,
                limit_price=None if limit is None else D(limit), time_in_force=tif, ts_init=self.clock.time_ns(),
            ),
        )
        await self.bus.idle()
        return self.watcher.seen[intent_id]

    async def rejected(self, reason: str, **kwargs: Any) -> RiskRejected:
        result = await self.order(**kwargs)
        assert isinstance(result, RiskRejected), result
        assert result.reason == reason, (result.reason, result.detail, result.inputs)
        return result

    async def approved(self, **kwargs: Any) -> ApprovedOrder:
        result = await self.order(**kwargs)
        assert isinstance(result, ApprovedOrder), result
        # No venue here: say the order is done, so it does not stay working (these tests
        # are about the gates, not about self-trade or open-order limits).
        await self.bus.publish(
            topics.ORDER_EVENT,
            OrderUpdate(
                client_order_id=f"c-{result.intent.intent_id}", venue_order_id="v", status=OrderStatus.CANCELED,
                intent_id=result.intent.intent_id, strategy="test", ts_event=0, ts_recv=0,
            ),
        )
        await self.bus.idle()
        return result

    async def stats(self) -> ActorStats:
        stats: ActorStats = await self.bus.request("risk", StatsQuery())
        return stats


@contextlib.asynccontextmanager
async def desk(start: str = "2026-11-25 10:00", **risk_options: Any) -> AsyncIterator[Desk]:
    clock, bus, watcher = SimClock(ny(start)), Bus(), Watcher()
    # These tests are about the gates: no duplicate window (they repeat one intent on purpose),
    # and IBM may be sold short (they sell without a position).
    limits = RiskSection(
        max_order_qty=D(1000), max_order_notional=D(1_000_000), duplicate_window_s=0,
        assets={"IBM": AssetSection(shortable=True, easy_to_borrow=True)},
    )
    spec = SupervisorSpec(
        "root",
        [ActorSpec("watcher", lambda: watcher), ActorSpec("risk", lambda: RiskActor(limits, **risk_options))],
    )
    root = Supervisor(spec, bus, clock, random.Random(5))
    task = asyncio.create_task(root.run())
    try:
        async with asyncio.timeout(10):
            await root.started()
        yield Desk(clock, bus, watcher)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_market_closed_outside_regular_hours_by_the_nyse_calendar() -> None:
    async with desk() as d:
        await d.bbo()
        await d.approved()  # Wednesday 10:00, regular session
        d.at("2026-11-26 11:00")  # Thanksgiving
        closed = await d.rejected("MARKET_CLOSED")
        assert closed.inputs == {
            "calendar": "XNYS",
            "session": "closed",
            "now_ns": str(ny("2026-11-26 11:00")),
            "session_start_ns": str(ny("2026-11-25 20:00")),
            "session_end_ns": str(ny("2026-11-27 04:00")),
            "extended_hours": "false",
            "order_type": "market",
            "time_in_force": "day",
        }
        d.at("2026-11-27 08:00")  # pre-market: not allowed by default, even for a limit order
        pre = await d.rejected("MARKET_CLOSED", limit="100.00")
        assert pre.inputs["session"] == "pre_market" and pre.detail == "XNYS is pre_market"
        d.at("2026-11-27 12:59")
        await d.approved()
        d.at("2026-11-27 13:00")  # the early close
        assert (await d.rejected("MARKET_CLOSED")).inputs["session"] == "post_market"
        # Always-open symbols trade on a holiday and a weekend.
        d.at("2026-11-28 03:00")
        await d.bbo("SYNTH")
        await d.bbo("BTCUSDT")
        await d.approved(symbol="SYNTH")
        await d.approved(symbol="BTCUSDT")
        await d.rejected("MARKET_CLOSED")
        stats = await d.stats()
        assert stats.breakdown["rejections_by_reason"] == {"MARKET_CLOSED": 4}
        assert stats.counters["approved"] == 4


async def test_extended_hours_take_day_limit_orders_only() -> None:
    async with desk("2026-11-27 14:00", extended_hours=True, calendars={"IBM": "XNYS", "ETH*": "24/7"}) as d:
        await d.bbo()
        await d.approved(limit="100.20")  # post-market limit day order
        market = await d.rejected("MARKET_CLOSED")
        assert market.detail == "XNYS is post_market: extended hours take day limit orders only"
        assert market.inputs["extended_hours"] == "true" and market.inputs["order_type"] == "market"
        gtc = await d.rejected("MARKET_CLOSED", limit="100.20", tif=TimeInForce.GTC)
        assert gtc.inputs["time_in_force"] == "gtc"
        d.at("2026-11-27 17:00")  # after the half day's late session
        assert (await d.rejected("MARKET_CLOSED", limit="100.20")).inputs["session"] == "closed"
        await d.bbo("ETHUSD")
        await d.approved(symbol="ETHUSD")  # a pattern in the mapping


async def test_a_halt_blocks_until_the_symbol_resumes() -> None:
    async with desk() as d:
        await d.bbo()
        await d.bbo("AAPL")
        await d.status(d.trading_status(halted=True))
        halted_at = d.clock.time_ns()
        refused = await d.rejected("SYMBOL_HALTED")
        assert refused.inputs == {
            "halt_reason": "test status", "provider": "alpaca-sip", "halted_at_ns": str(halted_at)
        }
        await d.approved(symbol="AAPL")  # another symbol trades on
        assert (await d.stats()).counters["symbols_halted"] == 1
        await d.status(d.trading_status(halted=None, lower="95", upper="105"))  # bands only: still halted
        await d.rejected("SYMBOL_HALTED")
        await d.status(d.trading_status(halted=False))
        await d.approved()
        stats = await d.stats()
        assert stats.counters["symbols_halted"] == 0
        assert stats.breakdown["rejections_by_reason"] == {"SYMBOL_HALTED": 2}


async def test_stale_data_blocks_until_fresh_and_no_quote_is_stale() -> None:
    async with desk() as d:
        never = await d.rejected("STALE_DATA")
        assert never.inputs == {"quote_seen": "false"}
        await d.bbo()
        await d.approved()
        stale_at = d.clock.time_ns()
        await d.status(MarketDataStatus(symbol="IBM", fresh=False, provider="alpaca-iex", reason="silent 5s",
                                        ts_init=stale_at))
        refused = await d.rejected("STALE_DATA")
        assert refused.inputs == {"provider": "alpaca-iex", "stale_reason": "silent 5s", "stale_at_ns": str(stale_at)}
        assert (await d.stats()).counters["symbols_stale"] == 1
        await d.status(MarketDataStatus(symbol="IBM", fresh=True, provider="alpaca-sip", reason="quotes again",
                                        ts_init=stale_at + 1))
        await d.approved()
        assert (await d.stats()).breakdown["rejections_by_reason"] == {"STALE_DATA": 2}


async def test_luld_bands_refuse_prices_outside_them() -> None:
    async with desk() as d:
        await d.bbo(bid="99.90", ask="100.10")
        await d.status(d.trading_status(halted=None, lower="95.00", upper="100.05"))
        bands_at = d.clock.time_ns()
        limit = await d.rejected("LULD", limit="100.06")
        assert limit.inputs == {
            "limit_price": "100.06", "luld_lower": "95.00", "luld_upper": "100.05",
            "bands_at_ns": str(bands_at), "provider": "alpaca-sip",
        }
        await d.approved(limit="100.05")  # on the band is inside it
        market = await d.rejected("LULD")  # a market buy would pay the ask, 100.10 > 100.05
        assert market.inputs["reference_price"] == "100.10"
        await d.approved(side=Side.SELL)  # a market sell pays the bid, 99.90: inside
        assert (await d.rejected("LULD", side=Side.SELL, limit="94.99")).inputs["limit_price"] == "94.99"
        # New bands replace the old ones.
        await d.status(d.trading_status(halted=None, lower="96.00", upper="104.00"))
        await d.approved()
        # Bands from an earlier session do not apply to the next one.
        await d.status(d.trading_status(halted=None, lower="10.00", upper="11.00"))
        await d.rejected("LULD")
        d.at("2026-11-27 10:00")
        await d.approved()
        stats = await d.stats()
        assert stats.breakdown["rejections_by_reason"] == {"LULD": 4}


async def test_checks_run_in_order_halt_before_stale_before_session() -> None:
    async with desk("2026-11-26 11:00") as d:  # Thanksgiving
        await d.bbo()
        await d.status(MarketDataStatus(symbol="IBM", fresh=False, provider=None, reason="feed down", ts_init=1))
        await d.status(d.trading_status(halted=True))
        await d.rejected("SYMBOL_HALTED")
        await d.status(d.trading_status(halted=False))
        await d.rejected("STALE_DATA")
        await d.status(MarketDataStatus(symbol="IBM", fresh=True, provider="x", reason="back", ts_init=2))
        await d.rejected("MARKET_CLOSED")
