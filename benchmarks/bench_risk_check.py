"""Risk check micro-benchmark: the cost of one ``RiskActor`` decision, the actor alone.

Why: the tick-to-order benchmark (:mod:`benchmarks.bench_tick_to_order`) measures the whole
order path over sockets, on a machine whose speed drifts by 2x; this one isolates the risk
actor's CPU time per intent, so a change to ``actors/risk.py`` or ``actors/pretrade.py`` can
be measured in a few seconds with little noise, and profiled (``--profile``).

Setup: a real :class:`actors.risk.RiskActor` (default limits of ``RiskSection``, as the
tick-to-order benchmark sets them: leverage, open orders, ADV, collar all on) with a real
:class:`engine.actor.ActorContext` on a real :class:`engine.bus.Bus` with nobody subscribed to
what risk publishes, under a :class:`engine.clock.SimClock` on the ``24/7`` calendar. Messages
are handed to ``RiskActor.handle`` directly, in the order the live tree delivers them. Each
round is, as in the tick-to-order benchmark:

- ``--every`` quotes (default 10), round-robin over the ``--symbols`` symbols, each symbol's
  bid/ask moving by a cent every ``--move-every`` quotes (0: never, as the tick-to-order
  venue's constant quotes);
- one 1-share market buy in the next symbol: **timed** (``handle(intent)`` start to return);
- its fill and the ledger's ``AccountState`` after it (the position grows by one share),
  so each round starts with the account changed, as it does live. ``--working`` orders
  (resting limit buys far from the market, one per symbol in turn) stay working throughout.

Reported: p50/p99/mean µs per timed check over ``--intents`` rounds, and the per-round µs
spent in the other messages (quotes, fill, account state), which also run on risk's task.

Run: ``.venv/bin/python -m benchmarks.bench_risk_check [--intents N] [--symbols S] [--working W]
[--every K] [--move-every M] [--profile] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import random
import statistics
import sys
import time
from decimal import Decimal
from typing import Any, Final

from actors.risk import RiskActor
from engine.actor import ActorContext
from engine.bus import Bus
from engine.clock import SimClock
from engine.config import RiskSection
from engine.logs import configure_logging, get_logger
from engine.messages import (
    AccountState,
    BestBidOffer,
    Fill,
    OrderIntent,
    OrderType,
    Side,
    TradingState,
)

START_NS: Final = 1_800_000_000 * 1_000_000_000
STEP_NS: Final = 1_000_000
"""1 ms between messages: 1,000 quotes/s, as the tick-to-order benchmark sends."""
CASH: Final = Decimal(1_000_000_000)


def _risk() -> tuple[RiskActor, SimClock]:
    clock = SimClock(START_NS)
    bus = Bus()
    bus.register("risk", 1 << 20)
    # As the tick-to-order benchmark configures risk: the guards against a strategy ordering
    # 100 times a second by mistake are off, every other limit at its default.
    limits = RiskSection(
        max_order_qty=Decimal(1_000), max_order_notional=Decimal(1_000_000_000), duplicate_window_s=0.0,
        max_orders_per_s=None, runaway_intents_per_s=None, max_open_orders=10_000,
    )
    risk = RiskActor(limits, TradingState.ACTIVE, default_calendar="24/7", starting_cash=CASH)
    risk.ctx = ActorContext("risk", bus, clock, get_logger(actor="risk"), random.Random(1), 0)
    return risk, clock


async def _bench(intents: int, n_symbols: int, working: int, every: int, move_every: int,
                 profile: cProfile.Profile | None) -> dict[str, Any]:
    symbols = [f"S{i:03d}" for i in range(n_symbols)]
    risk, clock = _risk()
    await risk.calendars.load()
    positions: dict[str, Decimal] = {s: Decimal(100) for s in symbols}
    avg = {s: Decimal("100.00") for s in symbols}
    cash = CASH - 100 * Decimal("100.00") * n_symbols
    fills = 0

    def state() -> AccountState:
        return AccountState(
            account_type="margin", cash=cash, settled_cash=cash, positions=dict(positions), avg_prices=dict(avg),
            realized_pnl=Decimal(0), fees=Decimal(0), fills=fills, trade_date="", opened_today={}, day_trades=0,
            gfv_restricted={}, ts_init=clock.time_ns(),
        )

    def tick() -> int:
        clock.advance_to(clock.time_ns() + STEP_NS)
        return clock.time_ns()

    quotes = 0

    def bbo(symbol: str) -> BestBidOffer:
        nonlocal quotes
        quotes += 1
        moved = Decimal(quotes // move_every % 7) / 100 if move_every else Decimal(0)
        now = tick()
        return BestBidOffer(symbol=symbol, bid_price=Decimal("100.00") + moved, bid_size=Decimal(quotes),
                            ask_price=Decimal("100.02") + moved, ask_size=Decimal(100), provider="bench",
                            ts_event=now, ts_init=now)

    await risk.handle(state())
    for s in symbols:
        await risk.handle(bbo(s))
    for i in range(working):  # resting buys far below the market: they stay working
        intent = OrderIntent(intent_id=f"rest-{i}", strategy="rest", symbol=symbols[i % n_symbols], side=Side.BUY,
                             qty=Decimal(1), order_type=OrderType.LIMIT, limit_price=Decimal("95.00"), ts_init=tick())
        await risk.handle(intent)
    if len(risk.working) != working:
        raise RuntimeError(f"the resting orders were not approved: {len(risk.working)} of {working}")

    checks: list[int] = []
    other_ns = 0
    counter = time.perf_counter_ns
    gc.collect()
    for n in range(intents):
        start = counter()
        for q in range(every):
            await risk.handle(bbo(symbols[(n * every + q) % n_symbols]))
        other_ns += counter() - start
        symbol = symbols[n % n_symbols]
        intent = OrderIntent(intent_id=f"bench-{n}", strategy="bench", symbol=symbol, side=Side.BUY, qty=Decimal(1),
                             order_type=OrderType.MARKET, ts_init=tick())
        if profile is not None:
            profile.enable()
        start = counter()
        await risk.handle(intent)
        checks.append(counter() - start)
        if profile is not None:
            profile.disable()
        if risk.approved != working + n + 1:
            raise RuntimeError(f"intent {n} was refused: {dict(risk.rejections)}")
        start = counter()
        order = risk.working[intent.intent_id]
        fill_at = tick()
        await risk.handle(Fill(client_order_id=order.client_order_id, venue_order_id=f"v{n}", execution_id=f"x{n}",
                               intent_id=intent.intent_id, strategy="bench", symbol=symbol, side=Side.BUY,
                               qty=Decimal(1), price=Decimal("100.02"), fee=Decimal(0), ts_event=fill_at,
                               ts_recv=fill_at))
        positions[symbol] += 1
        cash -= Decimal("100.02")
        fills += 1
        await risk.handle(state())
        other_ns += counter() - start
    checks.sort()
    return {
        "intents": intents,
        "symbols": n_symbols,
        "working": working,
        "every": every,
        "move_every": move_every,
        "check_p50_us": checks[len(checks) // 2] / 1e3,
        "check_p99_us": checks[min(len(checks) - 1, round(0.99 * len(checks)) - 1)] / 1e3,
        "check_mean_us": statistics.fmean(checks) / 1e3,
        "other_per_round_us": other_ns / intents / 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--intents", type=int, default=5_000, help="timed intents (rounds)")
    parser.add_argument("--symbols", type=int, default=1, help="symbols held and quoted")
    parser.add_argument("--working", type=int, default=0, help="resting orders kept working")
    parser.add_argument("--every", type=int, default=10, help="quotes per intent")
    parser.add_argument("--move-every", type=int, default=0, help="move a symbol's quote every M quotes (0: never)")
    parser.add_argument("--profile", action="store_true", help="cProfile the timed checks; print the top functions")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    if args.intents < 1 or args.symbols < 1 or args.working < 0 or args.every < 0 or args.move_every < 0:
        parser.error("--intents and --symbols must be positive, the others not negative")
    configure_logging(None, "warning")
    profile = cProfile.Profile() if args.profile else None
    result = asyncio.run(_bench(args.intents, args.symbols, args.working, args.every, args.move_every, profile))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['intents']} intents, {result['symbols']} symbols, {result['working']} working, "
            f"{result['every']} quotes per intent (moving every {result['move_every'] or 'never'}): check p50 "
            f"{result['check_p50_us']:.1f} p99 {result['check_p99_us']:.1f} mean {result['check_mean_us']:.1f} µs; "
            f"other messages {result['other_per_round_us']:.1f} µs per round"
        )
    if profile is not None:
        stats = pstats.Stats(profile, stream=sys.stdout)
        stats.sort_stats("tottime").print_stats(25)
    return 0


if __name__ == "__main__":
    sys.exit(main())
