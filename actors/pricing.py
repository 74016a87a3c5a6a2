"""The pricing actor: the engine's single source of truth for prices.

What arrives from feed adapters on ``md.raw`` is a provider's claim; what leaves on
``md.bbo`` and ``md.trade`` is what the engine trusts. In between, per symbol and provider:

- **Sanity.** Quotes and trades with a zero or negative price or a negative size are
  dropped (``invalid``); rows the provider flags as suspicious are dropped
  (``suspicious``). A quote whose mid jumps more than ``outlier_pct`` from the last
  published mid is held back (``outliers``) unless the next ones confirm it: after
  ``outlier_confirmations`` such quotes in a row the market really moved, and the new
  level is accepted. A crossed or locked NBBO (best bid ≥ best ask, which happens when one
  exchange's quote is stale) is not published until it clears (``crossed``/``locked``).
- **Sequence.** Where the protocol numbers its messages (``sequence``: Binance update and
  trade ids), a number not above the last is a duplicate or out of order and dropped; for
  trades, whose ids go up by one, a jump is a gap (counted; the trade is kept).
- **NBBO.** Per-exchange updates build a book of each exchange's top; the NBBO is the best
  across them. Updates a provider marks ``national`` replace their whole side (see
  :class:`~engine.messages.ExchangeQuote`). The NBBO size is the total displayed at the
  best price.
- **Freshness.** Each symbol has an SLA: silence from its active provider beyond it makes
  the symbol stale, and a :class:`~engine.messages.MarketDataStatus` on ``md.status`` tells
  risk (which then refuses new orders in it) and strategies. The next good quote makes it
  fresh again. A feed that goes down (:class:`~engine.messages.FeedState`), or a provider
  silent on *every* symbol beyond ``feed_silence_s`` (the data-plane watchdog), makes all
  its symbols stale at once.
- **Failover and lineage.** A symbol may have a primary and a secondary provider. Both
  books are kept current; only the active provider's NBBO is published, and every
  :class:`~engine.messages.BestBidOffer` names the provider it came from. When the active
  provider goes stale and the other one is fresh, pricing switches
  (:class:`~engine.messages.ProviderSwitched`, logged and counted). It switches back to the
  primary only after the primary has been fresh for ``failback_s`` without a break
  (hysteresis), so a flapping primary does not make prices flap between sources.

- **Bars.** Every ``bar_interval_s`` (``[pricing]``; 0 turns them off) of *event time*
  (``ts_event``), aligned on the epoch (60 s bars start on the minute), each symbol gets a
  :class:`~engine.messages.Bar` on ``md.bar``, built only from what pricing *published*:
  trades make OHLC from their prices, ``volume`` from their sizes; an interval with quotes
  but no trade gives a quote bar, OHLC of the published mids with ``volume`` 0 and
  ``trades`` 0. A bar closes, and is published, when the first event of a later interval
  arrives (before that event is published), or when the engine clock passes its end plus
  ``bar_grace_s`` (a clock timer), whichever comes first. An event whose interval is
  already closed is *late*: it is still published as a quote or trade, but no bar takes it
  (``bar_late``). Intervals without any event give no bar (no empty bars). So the bars are
  a function of the published events and their order alone: replay (timers on the
  :class:`~engine.clock.SimClock`) and live (the same timers on the wall clock) give the
  same bars for the same events; only ``ts_init``, the close time, says which clock closed
  it. The bar still open when a replay's recording ends is never published (no later
  event, and the replay stops the clock). A restarted pricing actor lost its open bars: it
  skips the rest of each symbol's current interval (counted late) rather than publish a
  partial bar with a wrong open, and resumes at the next boundary.

Timers come from the engine clock, so replay under :class:`~engine.clock.SimClock` goes
stale at exactly the same simulated moments every time. A symbol has at most one pending
staleness timer, armed for ``last_seen + sla`` and re-armed when it fires early.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from engine import topics
from engine.actor import Actor
from engine.clock import NS_PER_S
from engine.messages import (
    ActorStats,
    Bar,
    BestBidOffer,
    ExchangeQuote,
    FeedState,
    MarketDataStatus,
    ProviderSwitched,
    StatsQuery,
    SymbolTradingStatus,
    TradeTick,
)

ZERO: Final = Decimal(0)


@dataclass(frozen=True)
class PricingPolicy:
    """Freshness, failover and sanity settings (``[pricing]`` in the config)."""

    sla_s: float = 10.0
    """Default freshness SLA: a symbol whose active provider is silent longer is stale."""
    symbol_sla_s: Mapping[str, float] = field(default_factory=dict)
    """Per-symbol SLA overrides."""
    feed_silence_s: float = 30.0
    """Data-plane watchdog: a provider silent on every symbol this long is treated as down."""
    providers: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Per symbol: (primary, secondary) provider. Unlisted symbols use whichever provider
    they hear from first, with no failover."""
    failback_s: float = 30.0
    """Hysteresis: the primary must be fresh this long before prices move back to it."""
    outlier_pct: Decimal = Decimal(10)
    """A quote whose mid moves more than this percentage from the last published mid is
    held back ..."""
    outlier_confirmations: int = 5
    """... unless this many such quotes arrive in a row (then the market really moved)."""
    bar_interval_s: int = 60
    """Time bars of this many seconds of event time, aligned on the epoch; 0: no bars."""
    bar_grace_s: float = 2.0
    """A bar no later event has closed closes when the engine clock passes its end plus this."""

    def __post_init__(self) -> None:
        for name, value in (("sla_s", self.sla_s), ("feed_silence_s", self.feed_silence_s)):
            if not value > 0:
                raise ValueError(f"pricing.{name} must be positive, got {value}")
        for symbol, sla in self.symbol_sla_s.items():
            if not sla > 0:
                raise ValueError(f"pricing.symbol_sla_s.{symbol} must be positive, got {sla}")
        if self.failback_s < 0:
            raise ValueError(f"pricing.failback_s must not be negative, got {self.failback_s}")
        if not self.outlier_pct > 0:
            raise ValueError(f"pricing.outlier_pct must be positive, got {self.outlier_pct}")
        if self.outlier_confirmations < 1:
            raise ValueError(f"pricing.outlier_confirmations must be >= 1, got {self.outlier_confirmations}")
        for symbol, pair in self.providers.items():
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"pricing.providers.{symbol} must name two different providers, got {pair}")
        if self.bar_interval_s < 0:
            raise ValueError(f"pricing.bar_interval_s must not be negative, got {self.bar_interval_s}")
        if not self.bar_grace_s >= 0:
            raise ValueError(f"pricing.bar_grace_s must not be negative, got {self.bar_grace_s}")

    def sla_ns(self, symbol: str) -> int:
        return round(self.symbol_sla_s.get(symbol, self.sla_s) * NS_PER_S)


@dataclass
class PricingCounters:
    quotes: int = 0
    trades: int = 0
    suspicious: int = 0
    invalid: int = 0
    outliers: int = 0
    crossed: int = 0
    locked: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    gaps: int = 0
    published: int = 0
    stale: int = 0
    recovered: int = 0
    failovers: int = 0
    failbacks: int = 0
    feeds_down: int = 0
    feeds_silent: int = 0
    inactive_provider: int = 0
    """Quotes from a symbol's standby provider: kept in its book, not published."""
    trading_status: int = 0
    bars: int = 0
    quote_bars: int = 0
    """Bars of an interval without trades (OHLC of the mid, volume 0)."""
    bars_by_timer: int = 0
    """Bars closed by the clock (end + grace) rather than by a later event."""
    bar_late: int = 0
    """Published events whose bar interval was already closed (no bar took them)."""


class _BarBuilder:
    """One symbol's open bar: trade OHLCV, and the mid's OHLC in case no trade comes.

    Mids are kept doubled (``bid + ask``), halved once at the close: no division per quote.
    """

    __slots__ = (
        "close",
        "end_ns",
        "high",
        "low",
        "mid_close",
        "mid_high",
        "mid_low",
        "mid_open",
        "open",
        "quote_provider",
        "start_ns",
        "symbol",
        "trade_provider",
        "trades",
        "volume",
    )

    def __init__(self, symbol: str, start_ns: int, end_ns: int) -> None:
        self.symbol = symbol
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.trades = 0
        self.volume = ZERO
        self.open = self.high = self.low = self.close = ZERO
        self.mid_open: Decimal | None = None
        self.mid_high = self.mid_low = self.mid_close = ZERO
        self.trade_provider = ""
        self.quote_provider = ""

    def add_trade(self, price: Decimal, size: Decimal, provider: str) -> None:
        if self.trades == 0:
            self.open = self.high = self.low = price
        elif price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.close = price
        self.volume += size
        self.trades += 1
        self.trade_provider = provider

    def add_mid(self, twice_mid: Decimal, provider: str) -> None:
        if self.mid_open is None:
            self.mid_open = self.mid_high = self.mid_low = twice_mid
        elif twice_mid > self.mid_high:
            self.mid_high = twice_mid
        elif twice_mid < self.mid_low:
            self.mid_low = twice_mid
        self.mid_close = twice_mid
        self.quote_provider = provider

    def bar(self, interval_s: int, now: int) -> Bar:
        if self.trades:
            ohlc = (self.open, self.high, self.low, self.close)
            provider = self.trade_provider
        else:
            assert self.mid_open is not None  # a builder exists only once an event was folded in
            ohlc = (self.mid_open / 2, self.mid_high / 2, self.mid_low / 2, self.mid_close / 2)
            provider = self.quote_provider
        return Bar(
            symbol=self.symbol,
            interval_s=interval_s,
            open=ohlc[0],
            high=ohlc[1],
            low=ohlc[2],
            close=ohlc[3],
            volume=self.volume,
            trades=self.trades,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            provider=provider,
            ts_init=now,
        )


@dataclass
class _Book:
    """One symbol's top of book from one provider: exchange → (price, size)."""

    bids: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    asks: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    nbbo: tuple[Decimal, Decimal, Decimal, Decimal] | None = None
    """The last clean NBBO of this provider: bid, bid size, ask, ask size."""
    ts_event: int = 0
    last_seen_ns: int | None = None
    quote_seq: int | None = None
    trade_seq: int | None = None
    outlier_streak: int = 0
    fresh_since_ns: int | None = None
    """Since when this provider has been continuously fresh for the symbol (failback)."""


@dataclass
class _Symbol:
    symbol: str
    sla_ns: int
    primary: str | None
    secondary: str | None
    active: str | None
    books: dict[str, _Book] = field(default_factory=dict)
    fresh: bool | None = None
    """None until the first clean quote; then the verdict last published on md.status."""
    last_published: BestBidOffer | None = None
    timer_due_ns: int | None = None

    def book(self, provider: str) -> _Book:
        book = self.books.get(provider)
        if book is None:
            book = self.books[provider] = _Book()
        return book


def _best(side: dict[str, tuple[Decimal, Decimal]], highest: bool) -> tuple[Decimal, Decimal] | None:
    if len(side) <= 1:  # national feeds keep one entry per side: the common case, no scan
        return next(iter(side.values()), None)
    best: Decimal | None = None
    size = ZERO
    for price, qty in side.values():
        if best is None or (price > best if highest else price < best):
            best, size = price, qty
        elif price == best:
            size += qty
    assert best is not None
    return best, size


class PricingActor(Actor):
    def __init__(self, policy: PricingPolicy | None = None) -> None:
        self.policy = policy or PricingPolicy()
        self.symbols: dict[str, _Symbol] = {}
        self.counters = PricingCounters()
        self.switches: list[ProviderSwitched] = []
        self._provider_seen_ns: dict[str, int] = {}
        self._provider_down: set[str] = set()
        self._feed_timer_armed = False
        self._bar_s = self.policy.bar_interval_s
        self._bar_ns = self._bar_s * NS_PER_S
        self._bar_grace_ns = round(self.policy.bar_grace_s * NS_PER_S)
        self._bars: dict[str, _BarBuilder] = {}
        self._bars_closed_until: dict[str, int] = {}
        """Per symbol, the end of its last closed bar: an event before it is late."""
        self._bars_resume = True
        """False after a restart: each symbol's interval in progress is skipped (see the module doc)."""

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.MD_RAW)
        if self.ctx.restarts:
            # Books rebuild from the next quote of each exchange; until both sides are
            # seen again nothing is published, so nobody trades on a half-built book.
            self.ctx.log.info("pricing_rebuilding_books_from_feed")
            if self._bar_ns:
                self._bars_resume = False
                self.ctx.log.info("pricing_bars_resume_at_next_boundary")

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is ExchangeQuote:
            await self._on_quote(message)
        elif kind is TradeTick:
            await self._on_trade(message)
        elif kind is _Check:
            await self._on_check(message)
        elif kind is _BarDue:
            await self._on_bar_due(message)
        elif kind is FeedState:
            await self._on_feed_state(message)
        elif kind is SymbolTradingStatus:
            self.counters.trading_status += 1
            await self.ctx.publish(topics.MD_STATUS, message)
        elif kind is StatsQuery:
            return ActorStats(
                counters=dataclasses.asdict(self.counters),
                breakdown={
                    # symbol → 1, keyed "SYMBOL provider" (ActorStats breakdowns are counts)
                    "active_provider": {f"{s.symbol} {s.active}": 1 for s in self.symbols.values() if s.active},
                    "stale": {s.symbol: 1 for s in self.symbols.values() if s.fresh is False},
                    # provider → clock time (ns) of its last event: feed freshness for /metrics
                    "provider_seen_ns": dict(self._provider_seen_ns),
                    "provider_down": {provider: 1 for provider in self._provider_down},
                },
            )
        else:
            raise TypeError(f"pricing actor cannot handle {kind.__name__}")
        return None

    # ------------------------------------------------------------ symbols and providers

    def _symbol(self, symbol: str, provider: str) -> _Symbol:
        state = self.symbols.get(symbol)
        if state is None:
            pair = self.policy.providers.get(symbol)
            primary, secondary = pair if pair is not None else (None, None)
            state = self.symbols[symbol] = _Symbol(
                symbol=symbol,
                sla_ns=self.policy.sla_ns(symbol),
                primary=primary,
                secondary=secondary,
                active=primary if primary is not None else provider,
            )
        return state

    def _heard_from(self, provider: str, now: int) -> None:
        self._provider_seen_ns[provider] = now
        self._provider_down.discard(provider)
        if not self._feed_timer_armed:
            self._arm_feed_timer(now + round(self.policy.feed_silence_s * NS_PER_S))

    # ------------------------------------------------------------ quotes

    async def _on_quote(self, quote: ExchangeQuote) -> None:
        counters = self.counters
        counters.quotes += 1
        if quote.suspicious:
            counters.suspicious += 1
            return
        if (quote.bid_price is not None and (quote.bid_price <= ZERO or (quote.bid_size or ZERO) < ZERO)) or (
            quote.ask_price is not None and (quote.ask_price <= ZERO or (quote.ask_size or ZERO) < ZERO)
        ):
            counters.invalid += 1
            return
        provider = quote.provider
        state = self._symbol(quote.symbol, provider)
        book = state.book(provider)
        sequence = quote.sequence
        if sequence is not None:
            last = book.quote_seq
            if last is not None and sequence <= last:
                if sequence == last:
                    counters.duplicates += 1
                else:
                    counters.out_of_order += 1
                return
            book.quote_seq = sequence
        now = self.ctx.clock.time_ns()
        self._heard_from(provider, now)
        if quote.national:
            # A national update replaces its side: the previous best is gone from it.
            if quote.bid_price is not None:
                book.bids.clear()
            if quote.ask_price is not None:
                book.asks.clear()
        if quote.bid_price is not None:
            if quote.bid_size:
                book.bids[quote.exchange] = (quote.bid_price, quote.bid_size)
            else:
                book.bids.pop(quote.exchange, None)
        if quote.ask_price is not None:
            ask_exchange = quote.ask_exchange or quote.exchange
            if quote.ask_size:
                book.asks[ask_exchange] = (quote.ask_price, quote.ask_size)
            else:
                book.asks.pop(ask_exchange, None)
        bid = _best(book.bids, highest=True)
        ask = _best(book.asks, highest=False)
        if bid is None or ask is None:
            return
        if bid[0] >= ask[0]:
            if bid[0] == ask[0]:
                counters.locked += 1
            else:
                counters.crossed += 1
            return
        if self._is_outlier(book, bid[0], ask[0]):
            counters.outliers += 1
            return
        book.nbbo = (bid[0], bid[1], ask[0], ask[1])
        book.ts_event = quote.ts_event
        if book.last_seen_ns is None or now - book.last_seen_ns >= state.sla_ns:
            book.fresh_since_ns = now  # a fresh run starts (a standby has no timer to end one)
        book.last_seen_ns = now
        self._arm_symbol_timer(state, now + state.sla_ns)
        if provider != state.active:
            counters.inactive_provider += 1
            await self._maybe_fail_back(state, provider, now)
            return
        if state.fresh is not True:
            await self._set_fresh(state, True, "first quote" if state.fresh is None else "quotes resumed", now)
        await self._publish_bbo(state, provider, now)

    def _is_outlier(self, book: _Book, bid: Decimal, ask: Decimal) -> bool:
        last = book.nbbo
        if last is None:
            return False
        # |mid - last_mid| / last_mid > pct / 100, without a division (mids doubled on both sides).
        last_twice = last[0] + last[2]
        if abs(bid + ask - last_twice) * 100 <= self.policy.outlier_pct * last_twice:
            book.outlier_streak = 0
            return False
        book.outlier_streak += 1
        if book.outlier_streak >= self.policy.outlier_confirmations:
            book.outlier_streak = 0
            return False
        return True

    async def _publish_bbo(self, state: _Symbol, provider: str, now: int) -> None:
        book = state.books[provider]
        nbbo = book.nbbo
        if nbbo is None:
            return
        last = state.last_published
        if (
            last is not None
            and last.provider == provider
            and (last.bid_price, last.bid_size, last.ask_price, last.ask_size) == nbbo
        ):
            return
        bbo = BestBidOffer(
            symbol=state.symbol,
            bid_price=nbbo[0],
            bid_size=nbbo[1],
            ask_price=nbbo[2],
            ask_size=nbbo[3],
            provider=provider,
            ts_event=book.ts_event,
            ts_init=now,
        )
        state.last_published = bbo
        self.counters.published += 1
        if self._bar_ns:
            ts_event = book.ts_event
            bar = self._bars.get(state.symbol)
            if bar is None or not bar.start_ns <= ts_event < bar.end_ns:  # the common case needs no await
                bar = await self._bar_for(state.symbol, ts_event, now)
            if bar is not None:
                bar.add_mid(nbbo[0] + nbbo[2], provider)
        await self.ctx.publish(topics.MD_BBO, bbo)

    # ------------------------------------------------------------ trades

    async def _on_trade(self, trade: TradeTick) -> None:
        counters = self.counters
        counters.trades += 1
        if trade.suspicious:
            counters.suspicious += 1
            return
        if trade.price <= ZERO or trade.size < ZERO:
            counters.invalid += 1
            return
        state = self._symbol(trade.symbol, trade.provider)
        book = state.book(trade.provider)
        sequence = trade.sequence
        if sequence is not None:
            last = book.trade_seq
            if last is not None:
                if sequence == last:
                    counters.duplicates += 1
                    return
                if sequence < last:
                    counters.out_of_order += 1
                    return
                if sequence > last + 1:
                    counters.gaps += 1
            book.trade_seq = sequence
        self._heard_from(trade.provider, self.ctx.clock.time_ns())
        # With failover configured only the active provider's trades count (lineage); without
        # it, a symbol's trades are published whoever provides them.
        if state.primary is None or trade.provider == state.active:
            if self._bar_ns:
                ts_event = trade.ts_event
                bar = self._bars.get(trade.symbol)
                if bar is None or not bar.start_ns <= ts_event < bar.end_ns:
                    bar = await self._bar_for(trade.symbol, ts_event, self.ctx.clock.time_ns())
                if bar is not None:
                    bar.add_trade(trade.price, trade.size, trade.provider)
            await self.ctx.publish(topics.MD_TRADE, trade)

    # ------------------------------------------------------------ freshness and failover

    async def _set_fresh(self, state: _Symbol, fresh: bool, reason: str, now: int) -> None:
        was = state.fresh
        state.fresh = fresh
        if was is False and fresh:
            self.counters.recovered += 1
        elif not fresh:
            self.counters.stale += 1
        log = self.ctx.log.info if fresh else self.ctx.log.warning
        log("md_fresh" if fresh else "md_stale", symbol=state.symbol, provider=state.active, reason=reason)
        await self.ctx.publish(
            topics.MD_STATUS,
            MarketDataStatus(symbol=state.symbol, fresh=fresh, provider=state.active, reason=reason, ts_init=now),
        )

    def _is_fresh(self, state: _Symbol, provider: str | None, now: int) -> bool:
        if provider is None or provider in self._provider_down:
            return False
        book = state.books.get(provider)
        if book is None or book.last_seen_ns is None or book.nbbo is None:
            return False
        return now - book.last_seen_ns < state.sla_ns  # the timer's rule: stale at last_seen + SLA

    def _standby(self, state: _Symbol) -> str | None:
        if state.primary is None:
            return None
        return state.secondary if state.active == state.primary else state.primary

    async def _switch(self, state: _Symbol, to: str, reason: str, now: int) -> None:
        switch = ProviderSwitched(
            symbol=state.symbol, from_provider=state.active, to_provider=to, reason=reason, ts_init=now
        )
        if to == state.primary:
            self.counters.failbacks += 1
        else:
            self.counters.failovers += 1
        self.switches.append(switch)
        self.ctx.log.warning(
            "md_provider_switched", symbol=state.symbol, from_provider=state.active, to_provider=to, reason=reason
        )
        state.active = to
        await self.ctx.publish(topics.MD_STATUS, switch)

    async def _maybe_fail_back(self, state: _Symbol, provider: str, now: int) -> None:
        """A quote from the standby provider: switch to it if the active one is stale, or
        back to the primary once it has been fresh for ``failback_s``."""
        if provider == state.primary and state.active == state.secondary:
            book = state.books[provider]
            assert book.fresh_since_ns is not None
            held = now - book.fresh_since_ns
            if held >= round(self.policy.failback_s * NS_PER_S) or not self._is_fresh(state, state.active, now):
                await self._switch(state, provider, f"primary fresh for {held / NS_PER_S:.1f} s", now)
                await self._publish_bbo(state, provider, now)
                if state.fresh is not True:
                    await self._set_fresh(state, True, f"failed back to {provider}", now)
            return
        if not self._is_fresh(state, state.active, now) and provider in (state.primary, state.secondary):
            if self._primary_still_starting(state, provider, now):
                return
            await self._switch(state, provider, f"{state.active} stale", now)
            await self._publish_bbo(state, provider, now)
            if state.fresh is not True:
                await self._set_fresh(state, True, f"failed over to {provider}", now)

    def _primary_still_starting(self, state: _Symbol, standby: str, now: int) -> bool:
        """The active provider has never spoken and the standby has been fresh for less than
        one SLA: at start-up (or after both feeds reconnect) whichever feed's first quote
        lands first is a race, not a failure, so the primary gets one SLA to show up."""
        active = state.books.get(state.active) if state.active is not None else None
        if active is not None and active.last_seen_ns is not None:
            return False
        since = state.books[standby].fresh_since_ns
        return since is not None and now - since < state.sla_ns

    async def _go_stale(self, state: _Symbol, reason: str, now: int) -> None:
        """The active provider is stale: fail over if the standby is fresh, else tell everyone."""
        active = state.active
        if active is not None and active in state.books:
            state.books[active].fresh_since_ns = None
        standby = self._standby(state)
        if standby is not None and self._is_fresh(state, standby, now):
            await self._switch(state, standby, f"{active} {reason}", now)
            await self._publish_bbo(state, standby, now)
            if state.fresh is not True:
                await self._set_fresh(state, True, f"failed over to {standby}", now)
            return
        if state.fresh is not False:
            await self._set_fresh(state, False, reason, now)

    async def _on_check(self, check: _Check) -> None:
        now = self.ctx.clock.time_ns()
        if check.symbol is None:
            await self._check_feeds(now)
            return
        state = self.symbols.get(check.symbol)
        if state is None:
            return  # set by an incarnation before a restart: this one has not heard of the symbol yet
        state.timer_due_ns = None
        active = state.active
        book = state.books.get(active) if active is not None else None
        if book is None or book.last_seen_ns is None:
            return
        due = book.last_seen_ns + state.sla_ns
        if now < due:
            self._arm_symbol_timer(state, due)
            return
        if state.fresh is not False:
            silent = (now - book.last_seen_ns) / NS_PER_S
            await self._go_stale(state, f"silent {silent:.1f} s > SLA {state.sla_ns / NS_PER_S:g} s", now)

    async def _check_feeds(self, now: int) -> None:
        self._feed_timer_armed = False
        silence_ns = round(self.policy.feed_silence_s * NS_PER_S)
        next_due: int | None = None
        for provider, seen in self._provider_seen_ns.items():
            if provider in self._provider_down:
                continue
            if now - seen >= silence_ns:
                self.counters.feeds_silent += 1
                self.ctx.log.warning("md_feed_silent", provider=provider, silent_s=(now - seen) / NS_PER_S)
                await self._provider_lost(provider, f"feed silent {(now - seen) / NS_PER_S:.1f} s", now)
            else:
                due = seen + silence_ns
                next_due = due if next_due is None else min(next_due, due)
        if next_due is not None:
            self._arm_feed_timer(next_due)

    async def _on_feed_state(self, state: FeedState) -> None:
        now = self.ctx.clock.time_ns()
        if state.connected:
            self.ctx.log.info("md_feed_up", provider=state.provider, reason=state.reason)
            return  # symbols turn fresh with their next quote
        self.counters.feeds_down += 1
        self.ctx.log.warning("md_feed_down", provider=state.provider, reason=state.reason)
        await self._provider_lost(state.provider, f"feed down: {state.reason}", now)

    async def _provider_lost(self, provider: str, reason: str, now: int) -> None:
        self._provider_down.add(provider)
        for symbol in self.symbols.values():
            book = symbol.books.get(provider)
            if book is not None:
                book.fresh_since_ns = None
                book.last_seen_ns = None
            if symbol.active == provider:
                await self._go_stale(symbol, reason, now)

    # ------------------------------------------------------------ bars

    async def _bar_for(self, symbol: str, ts_event: int, now: int) -> _BarBuilder | None:
        """The open bar an event at ``ts_event`` belongs in, or None if its interval is closed (late).

        An event of a later interval first closes (publishes) the open bar and opens its own,
        arming the timer that closes it at ``end + grace`` should no later event come.
        """
        bar = self._bars.get(symbol)
        start = ts_event - ts_event % self._bar_ns
        if bar is not None and start == bar.start_ns:
            return bar
        closed_until = self._bars_closed_until.get(symbol)
        if closed_until is None and not self._bars_resume:
            # First event of this symbol since a restart: its interval began before we did.
            closed_until = self._bars_closed_until[symbol] = start + self._bar_ns
        if (bar is not None and start < bar.start_ns) or (closed_until is not None and start < closed_until):
            self.counters.bar_late += 1
            return None
        if bar is not None:
            await self._close_bar(bar, now)
        bar = self._bars[symbol] = _BarBuilder(symbol, start, start + self._bar_ns)
        self.ctx.tell_self_at(bar.end_ns + self._bar_grace_ns, _BarDue(symbol, bar.end_ns))
        return bar

    async def _close_bar(self, bar: _BarBuilder, now: int) -> None:
        del self._bars[bar.symbol]
        self._bars_closed_until[bar.symbol] = bar.end_ns
        counters = self.counters
        counters.bars += 1
        if not bar.trades:
            counters.quote_bars += 1
        await self.ctx.publish(topics.MD_BAR, bar.bar(self._bar_s, now))

    async def _on_bar_due(self, due: _BarDue) -> None:
        """The clock passed a bar's end plus the grace: close it, unless a later event already did."""
        bar = self._bars.get(due.symbol)
        if bar is None or bar.end_ns != due.end_ns:
            return  # closed by a later event, or set by an incarnation before a restart
        now = self.ctx.clock.time_ns()
        due_ns = bar.end_ns + self._bar_grace_ns
        if now < due_ns:  # a live timer a hair early (loop clock vs wall clock): check again then
            self.ctx.tell_self_at(due_ns, due)
            return
        self.counters.bars_by_timer += 1
        await self._close_bar(bar, now)

    # ------------------------------------------------------------ timers

    def _arm_symbol_timer(self, state: _Symbol, due_ns: int) -> None:
        if state.timer_due_ns is not None:
            return  # one pending timer per symbol; it re-arms itself if it fires early
        state.timer_due_ns = due_ns
        self.ctx.tell_self_at(due_ns, _Check(state.symbol))

    def _arm_feed_timer(self, due_ns: int) -> None:
        self._feed_timer_armed = True
        self.ctx.tell_self_at(due_ns, _Check(None))


@dataclass(frozen=True)
class _Check:
    """A staleness check for one symbol, or (``symbol=None``) for every feed."""

    symbol: str | None


@dataclass(frozen=True)
class _BarDue:
    """The clock passed ``end_ns`` plus the grace: close ``symbol``'s bar ending then, if still open."""

    symbol: str
    end_ns: int
