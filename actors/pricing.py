"""The pricing actor: the engine's single source of truth for prices.

It turns one-sided quote updates into a national best bid and offer (NBBO) per symbol
and publishes it on ``md.bbo`` whenever it changes. Per-exchange updates build a book of
each exchange's top; the NBBO is the best across them. Updates a provider marks
``national`` already are the best for their side and replace it (see
:class:`~engine.messages.ExchangeQuote`). Rows a provider
flags as suspicious are skipped; a crossed or locked NBBO (best bid ≥ best ask, which
happens when one exchange's quote is stale) is not published until it uncrosses. Both
are counted. Clean trades are passed on to ``md.trade``.

The NBBO size is the total size displayed at the best price across exchanges.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from engine import topics
from engine.actor import Actor
from engine.messages import ActorStats, BestBidOffer, ExchangeQuote, StatsQuery, TradeTick


@dataclass
class PricingCounters:
    quotes: int = 0
    trades: int = 0
    suspicious: int = 0
    crossed: int = 0
    published: int = 0


@dataclass
class _Book:
    """One symbol's per-exchange top of book: exchange → (price, size)."""

    bids: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    asks: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)
    last: BestBidOffer | None = None


def _best(side: dict[str, tuple[Decimal, Decimal]], highest: bool) -> tuple[Decimal, Decimal] | None:
    if not side:
        return None
    price = max(p for p, _ in side.values()) if highest else min(p for p, _ in side.values())
    return price, sum((s for p, s in side.values() if p == price), Decimal(0))


class PricingActor(Actor):
    def __init__(self) -> None:
        self.books: dict[str, _Book] = {}
        self.counters = PricingCounters()

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.MD_RAW)
        if self.ctx.restarts:
            # Books rebuild from the next quote of each exchange; until both sides are
            # seen again nothing is published, so nobody trades on a half-built book.
            self.ctx.log.info("pricing_rebuilding_books_from_feed")

    async def handle(self, message: Any) -> Any:
        if type(message) is ExchangeQuote:
            await self._on_quote(message)
        elif type(message) is TradeTick:
            self.counters.trades += 1
            if message.suspicious:
                self.counters.suspicious += 1
            else:
                await self.ctx.publish(topics.MD_TRADE, message)
        elif type(message) is StatsQuery:
            return ActorStats(counters=dataclasses.asdict(self.counters))
        else:
            raise TypeError(f"pricing actor cannot handle {type(message).__name__}")
        return None

    async def _on_quote(self, quote: ExchangeQuote) -> None:
        counters = self.counters
        counters.quotes += 1
        if quote.suspicious:
            counters.suspicious += 1
            return
        book = self.books.get(quote.symbol)
        if book is None:
            book = self.books[quote.symbol] = _Book()
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
            counters.crossed += 1
            return
        last = book.last
        if last is not None and (last.bid_price, last.bid_size, last.ask_price, last.ask_size) == (
            *bid,
            *ask,
        ):
            return
        bbo = BestBidOffer(
            symbol=quote.symbol,
            bid_price=bid[0],
            bid_size=bid[1],
            ask_price=ask[0],
            ask_size=ask[1],
            provider=quote.provider,
            ts_event=quote.ts_event,
            ts_init=self.ctx.clock.time_ns(),
        )
        book.last = bbo
        counters.published += 1
        await self.ctx.publish(topics.MD_BBO, bbo)
