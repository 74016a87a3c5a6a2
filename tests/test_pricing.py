"""NBBO construction in the pricing actor, through the real bus."""

from __future__ import annotations

import asyncio
import random
from decimal import Decimal
from typing import Any

from actors.pricing import PricingActor
from engine import topics
from engine.actor import Actor
from engine.bus import Bus
from engine.clock import SimClock
from engine.messages import ActorStats, BestBidOffer, ExchangeQuote, StatsQuery, TradeTick
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec


class Collect(Actor):
    def __init__(self, sink: list[Any]) -> None:
        self.sink = sink

    async def on_start(self) -> None:
        self.ctx.subscribe(topics.MD_BBO)
        self.ctx.subscribe(topics.MD_TRADE)

    async def handle(self, message: Any) -> Any:
        self.sink.append(message)


def quote(
    ex: str,
    bid: str | None,
    bsz: int | None,
    ask: str | None,
    asz: int | None,
    national: bool = False,
    suspicious: bool = False,
) -> ExchangeQuote:
    return ExchangeQuote(
        symbol="IBM",
        exchange=ex,
        national=national,
        bid_price=Decimal(bid) if bid else None,
        bid_size=None if bsz is None else Decimal(bsz),
        ask_price=Decimal(ask) if ask else None,
        ask_size=None if asz is None else Decimal(asz),
        suspicious=suspicious,
        provider="test",
        ts_event=1,
        ts_recv=1,
    )


async def feed(messages: list[Any]) -> tuple[list[Any], ActorStats]:
    bus, sink = Bus(), []  # type: ignore[var-annotated]
    root = Supervisor(
        SupervisorSpec(
            "root", [ActorSpec("sink", lambda: Collect(sink)), ActorSpec("pricing", PricingActor)]
        ),
        bus,
        SimClock(),
        random.Random(1),
    )
    task = asyncio.create_task(root.run())
    await root.started()
    for message in messages:
        await bus.publish(topics.MD_RAW, message)
        await bus.idle()
    stats: ActorStats = await bus.request("pricing", StatsQuery())
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return sink, stats


def tops(out: list[Any]) -> list[tuple[str, int, str, int]]:
    return [
        (str(b.bid_price), int(b.bid_size), str(b.ask_price), int(b.ask_size))
        for b in out
        if isinstance(b, BestBidOffer)
    ]


async def test_per_exchange_quotes_build_the_best_across_exchanges() -> None:
    out, stats = await feed(
        [
            quote("P", "10.00", 100, None, None),
            quote("N", None, None, "10.05", 200),  # first two-sided NBBO
            quote("Q", "10.01", 300, None, None),  # better bid elsewhere
            quote("Z", "10.01", 100, None, None),  # same price: sizes add up
            quote("Q", "10.01", 0, None, None),  # Q withdraws its bid
            quote("N", None, None, "10.05", 200),  # unchanged: not republished
        ]
    )
    assert tops(out) == [
        ("10.00", 100, "10.05", 200),
        ("10.01", 300, "10.05", 200),
        ("10.01", 400, "10.05", 200),
        ("10.01", 100, "10.05", 200),
    ]
    assert stats.counters["published"] == 4


async def test_national_updates_replace_their_side_and_suspicious_rows_are_skipped() -> None:
    out, stats = await feed(
        [
            quote("P", "10.00", 100, None, None, national=True),
            quote("N", None, None, "10.05", 200, national=True),
            quote("C", "10.03", 100, None, None, national=True),
            quote("N", "10.01", 100, None, None, national=True),  # C's better bid is gone: replaced, not kept
            quote("X", None, None, "11.00", 1, national=True, suspicious=True),
        ]
    )
    assert tops(out) == [
        ("10.00", 100, "10.05", 200),
        ("10.03", 100, "10.05", 200),
        ("10.01", 100, "10.05", 200),
    ]
    assert stats.counters["suspicious"] == 1


async def test_crossed_books_are_held_back_and_trades_filtered() -> None:
    trade = TradeTick(
        symbol="IBM",
        exchange="D",
        price=Decimal("10"),
        size=Decimal(5),
        suspicious=False,
        provider="t",
        ts_event=1,
        ts_recv=1,
    )
    bad_trade = TradeTick(
        symbol="IBM",
        exchange="D",
        price=Decimal("99"),
        size=Decimal(5),
        suspicious=True,
        provider="t",
        ts_event=1,
        ts_recv=1,
    )
    out, stats = await feed(
        [
            quote("P", "10.00", 100, "10.02", 100),
            quote("N", "10.03", 100, None, None),  # crossed: bid 10.03 > ask 10.02
            trade,
            bad_trade,
            quote("N", "10.01", 100, None, None),  # uncrossed again
        ]
    )
    assert tops(out) == [("10.00", 100, "10.02", 100), ("10.01", 100, "10.02", 100)]
    assert [m for m in out if isinstance(m, TradeTick)] == [trade]
    assert stats.counters["crossed"] == 1 and stats.counters["suspicious"] == 1
