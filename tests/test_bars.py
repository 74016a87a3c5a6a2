"""Time bars in the pricing actor: exact OHLCV, epoch alignment, how a bar closes, replay = live."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from actors.pricing import PricingActor, PricingPolicy
from adapters.lean_ticks import read_batches
from engine import topics
from engine.actor import Actor, ActorContext
from engine.bus import Bus
from engine.clock import NS_PER_S, LiveClock, SimClock
from engine.logs import get_logger
from engine.messages import ActorStats, Bar, BestBidOffer, ExchangeQuote, StatsQuery, TradeTick
from engine.replay import replay
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec
from tests.helpers import random_walk_day

T0 = 1_700_000_040 * NS_PER_S
"""On a minute boundary of the epoch (1_700_000_040 = 28_333_334 × 60)."""
S = NS_PER_S


class Collect(Actor):
    def __init__(self, sink: list[Any]) -> None:
        self.sink = sink

    async def on_start(self) -> None:
        for topic in (topics.MD_BAR, topics.MD_BBO, topics.MD_TRADE):
            self.ctx.subscribe(topic)

    async def handle(self, message: Any) -> Any:
        self.sink.append(message)


def quote(ts: int, bid: str, ask: str, ts_recv: int | None = None) -> ExchangeQuote:
    return ExchangeQuote(
        symbol="IBM",
        exchange="N",
        national=True,
        bid_price=Decimal(bid),
        bid_size=Decimal(100),
        ask_price=Decimal(ask),
        ask_size=Decimal(100),
        suspicious=False,
        provider="test",
        ts_event=ts,
        ts_recv=ts if ts_recv is None else ts_recv,
    )


def trade(ts: int, price: str, size: int, ts_recv: int | None = None) -> TradeTick:
    return TradeTick(
        symbol="IBM",
        exchange="D",
        price=Decimal(price),
        size=Decimal(size),
        suspicious=False,
        provider="test",
        ts_event=ts,
        ts_recv=ts if ts_recv is None else ts_recv,
    )


async def _one_batch(events: Sequence[Any]) -> AsyncIterator[Sequence[Any]]:
    yield events


async def replay_events(
    events: Sequence[Any], policy: PricingPolicy, until_ns: int | None = None
) -> tuple[list[Any], ActorStats]:
    """``events`` through a pricing actor under a SimClock, as ``kestrel replay`` drives it;
    then the clock is moved on to ``until_ns`` (firing due timers), as time would pass live."""
    bus, clock, sink = Bus(), SimClock(), []  # type: ignore[var-annotated]
    root = Supervisor(
        SupervisorSpec(
            "root", [ActorSpec("sink", lambda: Collect(sink)), ActorSpec("pricing", lambda: PricingActor(policy))]
        ),
        bus,
        clock,
        random.Random(1),
    )
    task = asyncio.create_task(root.run())
    await root.started()
    try:
        await replay(_one_batch(events), clock, bus, topics.MD_RAW)
        await bus.idle()
        if until_ns is not None:
            while (deadline := clock.next_deadline_ns()) is not None and deadline <= until_ns:
                clock.advance_to(deadline)
                await bus.idle()
            clock.advance_to(until_ns)
            await bus.idle()
        stats: ActorStats = await bus.request("pricing", StatsQuery())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return sink, stats


def _collector(sink: list[Any]) -> Callable[[], Actor]:
    return lambda: Collect(sink)


def bars(out: list[Any]) -> list[Bar]:
    return [m for m in out if isinstance(m, Bar)]


def shape(bar: Bar) -> tuple[Any, ...]:
    """Everything but ``ts_init`` (when it closed, which says which clock closed it)."""
    return (
        bar.symbol, bar.interval_s, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.trades,
        bar.start_ns, bar.end_ns, bar.provider,
    )  # fmt: skip


SEQUENCE = [
    quote(T0 + 1 * S, "10.00", "10.02"),  # bar [T0, T0+60): a quote, then trades
    trade(T0 + 5 * S, "10.01", 100),
    trade(T0 + 10 * S, "10.05", 50),
    trade(T0 + 20 * S, "9.98", 25),
    trade(T0 + 60 * S - 1, "10.00", 10),  # the last nanosecond of the bar
    quote(T0 + 60 * S, "10.01", "10.03"),  # first event of [T0+60, T0+120): closes the first bar
    quote(T0 + 70 * S, "10.05", "10.08"),
    quote(T0 + 80 * S, "9.99", "10.00"),
    quote(T0 + 90 * S, "10.00", "10.01"),  # no trade in this bar: a quote bar, closed by the timer at T0+122
    trade(T0 + 100 * S, "10.00", 7, ts_recv=T0 + 200 * S),  # arrives after its bar closed: late
    trade(T0 + 201 * S, "10.10", 3),  # bar [T0+180, T0+240); nothing in [T0+120, T0+180): no bar
]


async def test_bars_from_a_known_sequence_exact_ohlcv_alignment_and_both_ways_to_close() -> None:
    out, stats = await replay_events(SEQUENCE, PricingPolicy(bar_interval_s=60, bar_grace_s=2.0), T0 + 300 * S)
    got = bars(out)
    assert [shape(b) for b in got] == [
        ("IBM", 60, Decimal("10.01"), Decimal("10.05"), Decimal("9.98"), Decimal("10.00"), Decimal(185), 4,
         T0, T0 + 60 * S, "test"),
        # Quote bar: OHLC of the mids 10.02, 10.065, 9.995, 10.005; volume 0, trades 0.
        ("IBM", 60, Decimal("10.02"), Decimal("10.065"), Decimal("9.995"), Decimal("10.005"), Decimal(0), 0,
         T0 + 60 * S, T0 + 120 * S, "test"),
        ("IBM", 60, Decimal("10.10"), Decimal("10.10"), Decimal("10.10"), Decimal("10.10"), Decimal(3), 1,
         T0 + 180 * S, T0 + 240 * S, "test"),
    ]  # fmt: skip
    first, second, third = got
    assert first.ts_init == T0 + 60 * S  # closed by the next event, at its arrival
    assert second.ts_init == T0 + 122 * S  # closed by the clock: end + grace
    assert third.ts_init == T0 + 242 * S  # the clock moved on after the last event
    # The bar is published before the event that closed it, which is still published.
    closing = out.index(first)
    assert isinstance(out[closing + 1], BestBidOffer) and out[closing + 1].ts_event == T0 + 60 * S
    late = [m for m in out if isinstance(m, TradeTick) and m.ts_event == T0 + 100 * S]
    assert late, "a late trade is still published; only the bars leave it out"
    c = stats.counters
    assert (c["bars"], c["quote_bars"], c["bars_by_timer"], c["bar_late"]) == (3, 1, 2, 1)


async def test_boundaries_are_aligned_on_the_epoch_for_any_interval() -> None:
    start = T0 + 7 * S  # not on a 5 s boundary + 2 s
    events = [trade(start, "1", 1), trade(start + 3 * S, "2", 1), trade(start + 4 * S, "3", 1)]
    out, _ = await replay_events(events, PricingPolicy(bar_interval_s=5, bar_grace_s=0), T0 + 60 * S)
    assert [(b.start_ns - T0, b.end_ns - T0, b.open, b.close, b.trades) for b in bars(out)] == [
        (5 * S, 10 * S, Decimal(1), Decimal(1), 1),
        (10 * S, 15 * S, Decimal(2), Decimal(3), 2),
    ]
    assert all(b.start_ns % (5 * S) == 0 for b in bars(out))


async def test_zero_interval_turns_bars_off() -> None:
    out, stats = await replay_events(SEQUENCE, PricingPolicy(bar_interval_s=0), T0 + 300 * S)
    assert bars(out) == [] and stats.counters["bars"] == 0
    assert any(isinstance(m, BestBidOffer) for m in out)


async def test_a_replay_run_twice_gives_identical_bars(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, quotes=3000)  # 300 s of quotes and trades: five 60 s bars
    runs = []
    for _ in range(2):
        bus, clock = Bus(), SimClock()
        sink: list[Any] = []
        root = Supervisor(
            SupervisorSpec("root", [ActorSpec("sink", _collector(sink)), ActorSpec("pricing", PricingActor)]),
            bus,
            clock,
            random.Random(1),
        )
        task = asyncio.create_task(root.run())
        await root.started()
        await replay(read_batches(files), clock, bus, topics.MD_RAW)
        await bus.idle()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        runs.append(bars(sink))
    assert len(runs[0]) >= 4
    assert runs[0] == runs[1]  # ts_init included: replay is deterministic to the nanosecond
    assert any(b.trades > 0 for b in runs[0])


async def test_live_clock_gives_the_same_bars_as_replay_for_the_same_events() -> None:
    """The same events through pricing under the wall clock (each published once the clock
    reaches its event time, as a live feed delivers it) and under a replay's SimClock."""
    live, bus = LiveClock(), Bus()
    base = (live.time_ns() // S + 1) * S  # the next whole second: 1 s bars start on it
    offsets: list[tuple[str, int, str, str]] = [
        ("q", 100, "10.00", "10.02"),
        ("t", 150, "10.01", "5"),
        ("t", 200, "10.04", "2"),
        ("q", 250, "10.01", "10.03"),
        ("q", 1_150, "10.02", "10.04"),  # bar 1: quotes only (closed by the event at 2.6 s or its timer)
        ("q", 1_200, "10.03", "10.05"),
        ("t", 2_600, "10.02", "1"),  # bar 2: closed by its timer at 3.5 s
    ]
    events: list[Any] = []
    for kind, ms, a, b in offsets:
        ts = base + ms * 1_000_000
        events.append(quote(ts, a, b) if kind == "q" else trade(ts, a, int(b)))
    policy = PricingPolicy(bar_interval_s=1, bar_grace_s=0.5)

    sink: list[Any] = []
    root = Supervisor(
        SupervisorSpec(
            "root", [ActorSpec("sink", lambda: Collect(sink)), ActorSpec("pricing", lambda: PricingActor(policy))]
        ),
        bus,
        live,
        random.Random(1),
    )
    task = asyncio.create_task(root.run())
    await root.started()
    try:
        for event in events:
            await live.sleep_until(event.ts_event)
            await bus.publish(topics.MD_RAW, event)
        await live.sleep_until(base + 3_500_000_000 + 300_000_000)  # past the last bar's end + grace
        await bus.idle()
        live_stats: ActorStats = await bus.request("pricing", StatsQuery())
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    replayed, _ = await replay_events(events, policy, base + 10 * S)
    assert live_stats.counters["bar_late"] == 0, "the machine stalled for over a second: rerun"
    assert [shape(b) for b in bars(sink)] == [shape(b) for b in bars(replayed)]
    assert [b.start_ns - base for b in bars(replayed)] == [0, S, 2 * S]
    assert [b.trades for b in bars(replayed)] == [2, 0, 1]


async def test_a_restarted_pricing_actor_skips_the_interval_in_progress_instead_of_a_partial_bar() -> None:
    bus, clock = Bus(), SimClock(T0)
    bus.register("pricing")
    sink = bus.register("sink")
    bus.subscribe(topics.MD_BAR, "sink")
    actor = PricingActor(PricingPolicy(bar_interval_s=60))
    actor.ctx = ActorContext("pricing", bus, clock, get_logger(actor="pricing"), random.Random(1), restarts=1)
    await actor.on_start()
    for seconds, price in ((30, "1"), (59, "2"), (65, "3"), (70, "4"), (125, "5")):
        clock.advance_to(T0 + seconds * S)
        await actor.handle(trade(T0 + seconds * S, price, 1))
    published: list[Bar] = []
    while len(sink):
        message = sink.get_nowait()
        assert isinstance(message, Bar)
        published.append(message)
    assert [(b.start_ns - T0, b.open, b.close, b.trades) for b in published] == [
        (60 * S, Decimal(3), Decimal(4), 2)  # the restart's own interval [0, 60) gave none
    ]
    assert actor.counters.bar_late == 2
