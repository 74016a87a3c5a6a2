"""The Alpaca simulator's feed player: pairing, pacing, hub publishing and deterministic fills."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from adapters.alpaca import wire
from adapters.alpaca_sim.events import SimQuote, SimTrade
from adapters.alpaca_sim.feed import FeedPlayer, QuoteSink
from adapters.alpaca_sim.state import VenueError, VenueSettings, VenueState
from engine.clock import LiveClock, SimClock, perf_ns
from engine.errors import DataError
from tests.helpers import random_walk_day, write_lean_zip

D = Decimal
MIDNIGHT_NS = int(dt.datetime(2024, 1, 2, 5, 0, tzinfo=dt.UTC).timestamp()) * 1_000_000_000  # NY midnight
OPEN_MS = 34_200_000


class FakeHub:
    def __init__(self) -> None:
        self.quotes: list[SimQuote] = []
        self.trades: list[SimTrade] = []

    def publish_quote(self, quote: SimQuote) -> None:
        self.quotes.append(quote)

    def publish_trade(self, trade: SimTrade) -> None:
        self.trades.append(trade)


def _state(clock: Any, seed: int = 1, **settings: Any) -> VenueState:
    settings.setdefault("symbols", ("TEST",))
    return VenueState(VenueSettings(**settings), clock, seed=seed)


def _small_day(folder: Path) -> list[Path]:
    quotes = [
        (OPEN_MS, 1_000_000, 300, 0, 0, "P", 1, 0),  # bid alone: not a quote yet
        (OPEN_MS + 5, 0, 0, 1_001_000, 200, "N", 1, 0),  # ask arrives: first quote
        (OPEN_MS + 10, 1_000_500, 100, 0, 0, "Z", 1, 0),  # a pair: one quote
        (OPEN_MS + 10, 0, 0, 1_001_500, 400, "Q", 1, 0),
        (OPEN_MS + 20, 1_000_500, 100, 0, 0, "Z", 1, 0),  # nothing changed: no quote
        (OPEN_MS + 20, 0, 0, 1_001_500, 400, "Q", 1, 0),
        (OPEN_MS + 30, 1_000_400, 100, 0, 0, "Z", 1, 1),  # suspicious: skipped
        (OPEN_MS + 40, 0, 0, 1_002_000, 100, "Q", 1, 0),
    ]
    trades = [
        (OPEN_MS + 10, 1_001_000, 50, "D", 0, 0),
        (OPEN_MS + 25, 1_001_200, 70, "N", 0, 0),
    ]
    day = folder / "test"
    return [
        write_lean_zip(day / "20240102_quote.zip", quotes),
        write_lean_zip(day / "20240102_trade.zip", trades),
    ]


async def test_pairs_national_rows_into_quotes_and_numbers_trades(tmp_path: Path) -> None:
    clock = SimClock()
    state = _state(clock)
    hub = FakeHub()
    sink: QuoteSink = hub
    player = FeedPlayer(_small_day(tmp_path), state, sink, clock, speed=None)
    await asyncio.wait_for(player.run(), 10)
    assert player.done.is_set()
    assert [(q.bid_price, q.bid_size, q.bid_exchange, q.ask_price, q.ask_size, q.ask_exchange)
            for q in hub.quotes] == [
        (D("100.0000"), 300, "P", D("100.1000"), 200, "N"),
        (D("100.0500"), 100, "Z", D("100.1500"), 400, "Q"),
        (D("100.0500"), 100, "Z", D("100.2000"), 100, "Q"),
    ]
    assert [q.ts_ns for q in hub.quotes] == [MIDNIGHT_NS + (OPEN_MS + ms) * 1_000_000 for ms in (5, 10, 40)]
    assert [(t.trade_id, t.price, t.size, t.exchange) for t in hub.trades] == [
        (1, D("100.1000"), 50, "D"),
        (2, D("100.1200"), 70, "N"),
    ]
    assert (player.rows, player.quotes, player.trades, player.skipped) == (10, 3, 2, 1)
    assert state.books["TEST"].ask_price == D("100.2000") and state.books["TEST"].last_trade == D("100.12")
    assert state.session_open is False


async def test_replay_fills_orders_and_ends_the_session(tmp_path: Path) -> None:
    clock = SimClock()
    state = _state(clock, ack_latency_s=(0.0, 0.0), fill_latency_s=(0.0, 0.0))
    player = FeedPlayer(_small_day(tmp_path), state, None, clock, speed=None)
    updates: list[wire.TradeUpdate] = []
    state.subscribe(updates.append)
    orders: list[Any] = []

    def place() -> None:
        assert state.session_open is True
        orders.append(state.submit_order(wire.OrderRequest(symbol="TEST", side="buy", type="market",
                                                           time_in_force="day", qty=D(300))))
        orders.append(state.submit_order(wire.OrderRequest(symbol="TEST", side="buy", type="limit",
                                                           time_in_force="day", qty=D(5),
                                                           limit_price=D("90"))))

    clock.call_at(MIDNIGHT_NS + (OPEN_MS + 7) * 1_000_000, place)
    await player.run()
    market, limit = orders
    assert (market.status, market.filled_qty) == ("filled", D(300))
    assert [u.qty for u in updates if u.event in ("partial_fill", "fill")] == [D(200), D(100)]
    assert limit.status == "expired"  # the recording ended: day orders expire
    assert state.market_clock().is_open is False


def _fills_of_a_replay(files: list[Path], seed: int) -> list[tuple[Any, ...]]:
    """Replay a recording under a SimClock with orders placed at fixed recorded times."""

    async def replay() -> list[tuple[Any, ...]]:
        clock = SimClock()
        state = _state(clock, seed=seed, ack_latency_s=(0.001, 0.005), fill_latency_s=(0.001, 0.005),
                       starting_cash=D(250_000))
        refusals: list[tuple[int, str]] = []
        updates: list[wire.TradeUpdate] = []
        state.subscribe(updates.append)
        for i in range(40):
            when = MIDNIGHT_NS + (OPEN_MS + 1_000 + i * 4_000) * 1_000_000

            def place(i: int = i) -> None:
                kind: Any = ("market", "limit", "market", "stop")[i % 4]
                book = state.books["TEST"]
                assert book.ask_price is not None
                extra: dict[str, Any] = {}
                if kind == "limit":
                    extra["limit_price"] = (book.ask_price - D("0.10")).quantize(D("0.01"))
                if kind == "stop":
                    extra["stop_price"] = (book.ask_price + D("0.05")).quantize(D("0.01"))
                try:
                    state.submit_order(wire.OrderRequest(symbol="TEST", side="buy" if i % 3 else "sell",
                                                         type=kind, time_in_force="gtc" if i % 5 else "ioc",
                                                         qty=D(150 + 10 * i), **extra))
                except VenueError as exc:
                    refusals.append((i, exc.message))

            clock.call_at(when, place)
        player = FeedPlayer(files, state, FakeHub(), clock, speed=None, yield_every=64)
        await player.run()
        open_ids = {o.id for o in state.orders.values() if o.is_open}
        assert open_ids == {o.id for o in state._open.values()}  # the open-order index stays exact
        assert all(o.in_flight == 0 for o in state.orders.values())
        for (symbol, side), totals in state._totals.items():  # buying-power bookkeeping stays exact
            working = [o for o in state._open.values() if (o.symbol, o.side) == (symbol, side)]
            assert totals.qty == sum((o.remaining for o in working if o.pending_final is None), D(0))
        return [(u.event, u.order.id, u.order.status, u.execution_id, u.price, u.qty, u.position_qty,
                 u.timestamp) for u in updates] + [("refused", *r) for r in refusals]

    return asyncio.run(replay())


def test_same_feed_and_seed_give_the_same_fills(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, symbol="test", quotes=2000, seed=3)
    first = _fills_of_a_replay(files, seed=11)
    again = _fills_of_a_replay(files, seed=11)
    other = _fills_of_a_replay(files, seed=12)
    fills = [e for e in first if e[0] in ("fill", "partial_fill")]
    assert len(fills) > 20
    assert any(e[0] == "refused" for e in first)  # buying power ran out on the way
    assert first == again
    assert [e[1] for e in other] != [e[1] for e in first]  # other seed: other ids and latencies


async def test_speed_paces_on_the_clock_without_blocking_the_loop(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, symbol="test", quotes=500, seed=1)  # 50 s of recording
    clock = LiveClock()
    hub = FakeHub()
    player = FeedPlayer(files, _state(clock), hub, clock, speed=250.0)  # ≈ 0.2 s
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while not player.done.is_set():
            ticks += 1
            await clock.sleep(0.01)

    started = perf_ns()
    await asyncio.gather(player.run(), ticker())
    elapsed = (perf_ns() - started) / 1e9
    assert 0.15 < elapsed < 5
    assert ticks >= 5
    assert player.quotes == len(hub.quotes) > 400
    stamps = [q.ts_ns for q in hub.quotes]
    assert stamps == sorted(stamps) and abs(stamps[-1] - clock.time_ns()) < 5e9  # stamped "now"


async def test_as_fast_as_possible_still_yields_to_the_loop(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, symbol="test", quotes=3000, seed=2)
    clock = LiveClock()
    player = FeedPlayer(files, _state(clock), None, clock, speed=None, yield_every=100)
    turns = 0

    async def spinner() -> None:
        nonlocal turns
        while not player.done.is_set():
            turns += 1
            await clock.sleep(0)

    await asyncio.gather(player.run(), spinner())
    assert player.quotes > 2500 and turns > 20


async def test_recorded_stamps_and_bad_files(tmp_path: Path) -> None:
    clock = LiveClock()
    hub = FakeHub()
    player = FeedPlayer(_small_day(tmp_path), _state(clock), hub, clock, speed=None, stamp="recorded")
    await player.run()
    assert hub.quotes[0].ts_ns == MIDNIGHT_NS + (OPEN_MS + 5) * 1_000_000
    bad = write_lean_zip(tmp_path / "bad" / "20240102_trade.zip", [(1, 2, 3)])
    broken = FeedPlayer([bad], _state(clock), hub, clock, speed=None)
    with pytest.raises(DataError, match="trade row has 3 fields"):
        await broken.run()
    assert not broken.done.is_set()
    with pytest.raises(ValueError, match="speed"):
        FeedPlayer([bad], _state(clock), hub, clock, speed=0)
