"""The simulator's feed player: replays a recording into the venue and the market-data hub.

Input: LEAN tick files (``adapters.lean_ticks``), read in a worker thread a batch at a
time, so the event loop never waits on the disk. Their quote rows are one-sided
national best bid/offer updates (a bid row and an ask row per timestamp, each naming the
exchange where that side rests); the player keeps the last bid and the last ask per
symbol and, once both are known, emits a :class:`SimQuote` whenever something changed.
Rows of one symbol with the same timestamp are coalesced into one quote, so a bid row
and its ask row give one update, not two (the first of which would pair the new bid
with the old ask). Trades become :class:`SimTrade` with a running ``trade_id``.
Rows flagged suspicious are skipped by default.

Each quote/trade first updates the venue (which may match working orders), then goes
to the market-data hub (``publish_quote`` / ``publish_trade``).

Pacing:

- Under a :class:`~engine.clock.SimClock` the player *is* the time driver: it advances
  the clock to each event's recorded time (firing due latency timers first) and runs as
  fast as the CPU allows, yielding to the loop every ``yield_every`` events. When the
  recording ends it fires the timers due within ``drain_s`` (acks and fills in flight).
- Otherwise ``speed`` × real time (``2.0`` = twice as fast), sleeping on the clock;
  ``speed=None`` = as fast as possible, yielding to the loop regularly.

Event timestamps (``ts_ns``) are the clock's time when emitted (``stamp="clock"``, the
default: under a SimClock that is the recorded time, live it is "now", so consumers see
fresh data) or the recorded time (``stamp="recorded"``).

While playing, the venue reports the market open; at the end day orders expire
(``expire_day_orders_at_end``), the market is reported closed and :attr:`done` is set.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal, Protocol

from adapters.alpaca_sim.events import SimQuote, SimTrade
from adapters.alpaca_sim.state import VenueState
from adapters.lean_ticks import Tick, read_events
from engine.clock import NS_PER_S, Clock, SimClock
from engine.logs import get_logger
from engine.messages import ExchangeQuote, TradeTick

_MIN_SLEEP_NS: Final = 1_000_000

log = get_logger(actor="alpaca-sim-feed")


class QuoteSink(Protocol):
    """Where replayed market data goes (the market-data hub)."""

    def publish_quote(self, quote: SimQuote) -> None: ...

    def publish_trade(self, trade: SimTrade) -> None: ...


_Side = tuple[str, int, str]
"""(price as text, size, exchange): compared to detect a change; price kept exact below."""


async def yield_to_loop() -> None:
    """Let other tasks run once (``asyncio.sleep(0)`` without the time module)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    loop.call_soon(wake)
    await future


class FeedPlayer:
    """Replays LEAN tick files into a :class:`VenueState` and a :class:`QuoteSink`."""

    def __init__(
        self,
        files: Sequence[Path],
        state: VenueState,
        hub: QuoteSink | None,
        clock: Clock,
        speed: float | None = 1.0,
        *,
        batch_size: int = 4096,
        yield_every: int = 256,
        skip_suspicious: bool = True,
        stamp: Literal["clock", "recorded"] = "clock",
        drain_s: float = 1.0,
        expire_day_orders_at_end: bool = True,
    ) -> None:
        if speed is not None and not speed > 0:
            raise ValueError(f"speed must be positive or None, got {speed}")
        self.files = list(files)
        self.state = state
        self.hub = hub
        self.clock = clock
        self.speed = speed
        self.batch_size = batch_size
        self.yield_every = max(1, yield_every)
        self.skip_suspicious = skip_suspicious
        self.stamp = stamp
        self.drain_s = drain_s
        self.expire_day_orders_at_end = expire_day_orders_at_end
        self.done = asyncio.Event()
        """Set once the whole recording has been played."""
        self.rows = 0
        self.quotes = 0
        self.trades = 0
        self.skipped = 0
        self._sim = clock if isinstance(clock, SimClock) else None
        self._bids: dict[str, tuple[ExchangeQuote, _Side]] = {}
        self._asks: dict[str, tuple[ExchangeQuote, _Side]] = {}
        self._pending: tuple[str, int] | None = None
        self._origin: tuple[int, int] | None = None
        self._since_yield = 0
        self._trade_id = 0

    async def run(self) -> None:
        """Play the whole recording (once)."""
        self.state.session_open = True
        log.info("feed_started", files=[str(f) for f in self.files], speed=self.speed)
        ticks = read_events(self.files)

        def next_batch() -> list[Tick]:  # blocking zip/CSV reading: runs in a worker thread
            return list(itertools.islice(ticks, self.batch_size))

        while batch := await asyncio.to_thread(next_batch):
            await self._play(batch)
        if self._pending is not None:
            self._flush(*self._pending)
        if self._sim is not None:
            horizon = self._sim.time_ns() + round(self.drain_s * NS_PER_S)
            while (deadline := self._sim.next_deadline_ns()) is not None and deadline <= horizon:
                self._sim.advance_to(deadline)
        expired = self.state.expire_day_orders() if self.expire_day_orders_at_end else 0
        self.state.session_open = False
        log.info(
            "feed_done", rows=self.rows, quotes=self.quotes, trades=self.trades, skipped=self.skipped,
            expired_orders=expired,
        )
        self.done.set()

    async def _play(self, batch: list[Tick]) -> None:
        for tick in batch:
            self.rows += 1
            pending = self._pending
            if pending is not None and not (
                isinstance(tick, ExchangeQuote) and (tick.symbol, tick.ts_event) == pending
            ):
                self._flush(pending[0], pending[1])
            if tick.suspicious and self.skip_suspicious:
                self.skipped += 1
                continue
            await self._pace(tick.ts_event)
            if isinstance(tick, ExchangeQuote):
                if self._apply(tick):
                    self._pending = (tick.symbol, tick.ts_event)
            else:
                self._emit_trade(tick)

    async def _pace(self, ts_ns: int) -> None:
        if self._sim is not None:
            self._sim.advance_to(ts_ns)
        elif self.speed is not None:
            if self._origin is None:
                self._origin = (ts_ns, self.clock.time_ns())
            recorded0, clock0 = self._origin
            target = clock0 + round((ts_ns - recorded0) / self.speed)
            if target - self.clock.time_ns() >= _MIN_SLEEP_NS:
                self._since_yield = 0
                await self.clock.sleep_until(target)
                return
        self._since_yield += 1
        if self._since_yield >= self.yield_every:
            self._since_yield = 0
            await yield_to_loop()

    def _stamp(self, recorded_ns: int) -> int:
        return recorded_ns if self.stamp == "recorded" else self.clock.time_ns()

    def _apply(self, quote: ExchangeQuote) -> bool:
        """Fold one national row into the last bid/ask of its symbol; True if anything changed."""
        changed = False
        symbol = quote.symbol
        if quote.bid_price is not None:
            side: _Side = (str(quote.bid_price), int(quote.bid_size or 0), quote.exchange)
            last = self._bids.get(symbol)
            if last is None or last[1] != side:
                self._bids[symbol] = (quote, side)
                changed = True
        if quote.ask_price is not None:
            side = (str(quote.ask_price), int(quote.ask_size or 0), quote.ask_exchange or quote.exchange)
            last = self._asks.get(symbol)
            if last is None or last[1] != side:
                self._asks[symbol] = (quote, side)
                changed = True
        return changed

    def _flush(self, symbol: str, recorded_ns: int) -> None:
        self._pending = None
        bid = self._bids.get(symbol)
        ask = self._asks.get(symbol)
        if bid is None or ask is None:
            return
        bid_row, (_, bid_size, bid_exchange) = bid
        ask_row, (_, ask_size, ask_exchange) = ask
        assert bid_row.bid_price is not None and ask_row.ask_price is not None
        quote = SimQuote(
            symbol=symbol,
            bid_exchange=bid_exchange,
            bid_price=bid_row.bid_price,
            bid_size=bid_size,
            ask_exchange=ask_exchange,
            ask_price=ask_row.ask_price,
            ask_size=ask_size,
            ts_ns=self._stamp(recorded_ns),
        )
        self.quotes += 1
        self.state.on_quote(quote)
        if self.hub is not None:
            self.hub.publish_quote(quote)

    def _emit_trade(self, tick: TradeTick) -> None:
        self._trade_id += 1
        trade = SimTrade(
            symbol=tick.symbol,
            trade_id=self._trade_id,
            exchange=tick.exchange,
            price=tick.price,
            size=int(tick.size),
            ts_ns=self._stamp(tick.ts_event),
        )
        self.trades += 1
        self.state.on_trade(trade)
        if self.hub is not None:
            self.hub.publish_trade(trade)
