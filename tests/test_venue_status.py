"""Risk is told when the venue cannot take orders, and refuses intents up front.

The Alpaca venue adapter publishes ``VenueStatus`` on ``venue.status`` when its order
endpoint's circuit breaker opens / turns half-open / closes and when its trade_updates
stream goes down / live. These tests run the real risk actor, order manager and Alpaca
venue adapter against the simulator over loopback sockets.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import pytest

from actors.order_manager import OrderManagerActor
from actors.risk import RiskActor
from adapters.alpaca.errors import TransientError
from adapters.alpaca.rest import RestSettings
from adapters.alpaca.venue import AlpacaVenueActor
from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from adapters.alpaca_sim.events import SimQuote
from engine import topics
from engine.actor import Actor
from engine.breaker import BreakerState, CircuitBreaker
from engine.bus import Bus
from engine.clock import LiveClock
from engine.config import RiskSection
from engine.messages import (
    BestBidOffer,
    OrderIntent,
    OrderType,
    RiskRejected,
    Side,
    VenueStatus,
)
from engine.secrets import Secret
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec

D = Decimal
KEY, SECRET = "status-key", "status-secret"
SYMBOL = "TEST"
FAST = RestSettings(retry_base_s=0.01, retry_cap_s=0.05, visibility_delay_s=0.05, read_timeout_s=3.0)


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Watcher(Actor):
    """Records what risk and the venue say."""

    def __init__(self) -> None:
        self.rejections: list[RiskRejected] = []
        self.statuses: list[VenueStatus] = []

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.ORDER_EVENT)
        self.ctx.subscribe(topics.VENUE_STATUS)

    async def handle(self, message: Any) -> Any:
        if isinstance(message, RiskRejected):
            self.rejections.append(message)
        elif isinstance(message, VenueStatus):
            self.statuses.append(message)
        return None


@pytest.fixture
async def sim() -> AsyncIterator[RunningSimulator]:
    simulator = await start_simulator(
        SimulatorConfig(feed_files=[], market_data=False, key_id=KEY, secret_key=SECRET, seed=3), LiveClock()
    )
    simulator.state.add_symbol(SYMBOL)
    simulator.state.on_quote(
        SimQuote(
            symbol=SYMBOL, bid_exchange="V", bid_price=D("99.90"), bid_size=1000,
            ask_exchange="V", ask_price=D("100.10"), ask_size=1000, ts_ns=time.time_ns(),
        )
    )
    try:
        yield simulator
    finally:
        await simulator.stop()


class Session:
    def __init__(self, sim: RunningSimulator) -> None:
        self.sim = sim
        self.bus = Bus()
        self.watcher = Watcher()
        self.venue = AlpacaVenueActor(sim.url, Secret(KEY), Secret(SECRET), FAST, stream_wait_s=0.3)
        limits = RiskSection(max_order_qty=D(1000), max_order_notional=D(1_000_000), duplicate_window_s=0)
        spec = SupervisorSpec(
            "root",
            [
                ActorSpec("watcher", lambda: self.watcher),
                ActorSpec("order-manager", lambda: OrderManagerActor("run")),
                ActorSpec("venue", lambda: self.venue, shutdown_timeout_s=3.0),
                # Wall-clock time: an always-open calendar, so the NYSE session gate does not
                # refuse these orders at night or on weekends (it is not what is tested here).
                ActorSpec("risk", lambda: RiskActor(limits, default_calendar="24/7")),
            ],
        )
        self.root = Supervisor(spec, self.bus, LiveClock(), random.Random(11))
        self.task: asyncio.Task[None] | None = None
        self.intents = 0

    async def __aenter__(self) -> Session:
        self.task = asyncio.create_task(self.root.run())
        async with asyncio.timeout(10):
            await self.root.started()
            await self.venue.stream.live.wait()
        await self.bus.publish(
            topics.MD_BBO,
            BestBidOffer(
                symbol=SYMBOL, bid_price=D("99.90"), bid_size=D(1000), ask_price=D("100.10"), ask_size=D(1000),
                provider="test", ts_event=time.time_ns(), ts_init=time.time_ns(),
            ),
        )
        await self.bus.idle()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def buy(self) -> str:
        self.intents += 1
        intent_id = f"i{self.intents}"
        await self.bus.publish(
            topics.ORDER_INTENT,
            OrderIntent(
                intent_id=intent_id, strategy="test", symbol=SYMBOL, side=Side.BUY, qty=D(1),
                order_type=OrderType.MARKET, ts_init=time.time_ns(),
            ),
        )
        await self.bus.idle()
        return intent_id

    def rejection(self, intent_id: str) -> RiskRejected | None:
        return next((r for r in self.watcher.rejections if r.intent_id == intent_id), None)


async def test_open_orders_breaker_makes_risk_refuse_until_the_trial(sim: RunningSimulator) -> None:
    async with Session(sim) as session:
        venue = session.venue
        # A faster breaker than the default, wired exactly like the adapter wires its own.
        breaker = CircuitBreaker("alpaca.orders", venue.rest.clock, min_calls=3, open_for_s=0.5,
                                 on_change=venue._breaker_changed)
        venue.rest.breakers["orders"] = breaker
        sim.faults.fail_next = [503] * 3
        for i in range(3):
            with pytest.raises(TransientError):
                await venue.rest.cancel_order(f"00000000-0000-4000-8000-00000000000{i}")
        assert breaker.state is BreakerState.OPEN
        await eventually(lambda: any(not s.available for s in session.watcher.statuses), "unavailable status")
        [down] = [s for s in session.watcher.statuses if not s.available]
        assert (down.venue, down.component, down.state) == ("alpaca", "orders", "open")
        assert down.retry_at_ns == breaker.trial_at_ns

        refused = await session.buy()
        rejection = session.rejection(refused)
        assert rejection is not None and rejection.reason == "VENUE_UNAVAILABLE"
        assert rejection.inputs == {"venue": "alpaca", "component": "orders", "state": "open"}
        assert sim.state.orders == {}  # nothing reached the venue

        # Once the breaker would admit a trial, risk lets one through and it closes the breaker.
        await asyncio.sleep(0.55)
        trial = await session.buy()
        assert session.rejection(trial) is None
        await eventually(lambda: len(sim.state.orders) == 1, "the trial order at the venue")
        await eventually(lambda: breaker.state is BreakerState.CLOSED, "breaker closed")
        await eventually(
            lambda: [s.state for s in session.watcher.statuses if s.component == "orders"][-1] == "closed",
            "closed status",
        )
        after = await session.buy()
        assert session.rejection(after) is None
        await eventually(lambda: len(sim.state.orders) == 2, "the next order at the venue")


async def test_stream_down_makes_risk_refuse_and_live_again_lets_orders_through(sim: RunningSimulator) -> None:
    async with Session(sim) as session:
        venue = session.venue
        task = venue._stream_task
        assert task is not None
        task.cancel()  # the stream dies and stays dead
        await asyncio.gather(task, return_exceptions=True)
        await eventually(
            lambda: any(s.component == "trade_updates" and not s.available for s in session.watcher.statuses),
            "stream-down status",
        )
        refused = await session.buy()
        rejection = session.rejection(refused)
        assert rejection is not None and rejection.reason == "VENUE_UNAVAILABLE"
        assert rejection.inputs["component"] == "trade_updates"
        assert "stream is down" in rejection.detail
        assert sim.state.orders == {}

        # Bring a stream back: risk hears it is live and orders flow again.
        venue._stream_task = asyncio.create_task(venue.stream.run())
        await eventually(venue.stream.live.is_set, "stream live again")
        await eventually(
            lambda: [s.available for s in session.watcher.statuses if s.component == "trade_updates"][-1],
            "live status",
        )
        accepted = await session.buy()
        assert session.rejection(accepted) is None
        await eventually(lambda: len(sim.state.orders) == 1, "order at the venue")
