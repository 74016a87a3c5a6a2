"""The venue side of the tick-to-order benchmark, run as its own process.

``python -m benchmarks.tick_to_order_venue`` starts the Alpaca simulator
(:func:`adapters.alpaca_sim.cli.start_simulator`, no feed files) on uvloop on a free
loopback port, prints ``listening on http://HOST:PORT`` and then obeys one command per
line on stdin:

- ``run TOTAL RATE``: publish quotes number 1..TOTAL on :data:`SYMBOL` at RATE quotes/s
  (paced against the loop clock; the quote number rides in the bid size), then print
  ``done SECONDS`` (how long publishing took);
- ``dump``: print one JSON line: ``published`` (quote number → ``perf_counter_ns`` just
  before ``hub.publish_quote``), ``submitted`` (client order id → ``perf_counter_ns`` when
  ``VenueState.submit_order`` was called, i.e. the POST has been read and decoded) and the
  simulator's counters.

End of stdin stops the simulator and ends the process. ``time.perf_counter_ns`` is
``CLOCK_MONOTONIC`` on Linux, so these stamps compare with the engine process's.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from decimal import Decimal
from typing import Any, Final

import uvloop

from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from adapters.alpaca_sim.events import SimQuote
from engine.clock import LiveClock
from engine.logs import configure_logging

SYMBOL: Final = "BENCH"
KEY_ID: Final = "bench-key"
SECRET_KEY: Final = "bench-secret"
STARTING_CASH: Final = Decimal(1_000_000_000)
RATE_LIMIT_PER_MINUTE: Final = 10_000_000


class VenueSide:
    def __init__(self, sim: RunningSimulator, clock: LiveClock) -> None:
        self.sim = sim
        self.clock = clock
        self.published: dict[int, int] = {}
        self.submitted: dict[str, int] = {}
        state = sim.state
        original = state.submit_order

        def submit_order(request: Any) -> Any:
            self.submitted[request.client_order_id or ""] = time.perf_counter_ns()
            return original(request)

        setattr(state, "submit_order", submit_order)  # noqa: B010 - instance override, benchmark only

    async def publish(self, total: int, rate: int) -> float:
        """Quotes 1..total at ``rate`` a second; returns the seconds it took."""
        hub, state, clock = self.sim.hub, self.sim.state, self.clock
        assert hub is not None
        published = self.published
        loop = asyncio.get_running_loop()
        period = 1.0 / rate
        bid, ask = Decimal("100.00"), Decimal("100.02")
        gc.collect()
        start = loop.time()
        for seq in range(1, total + 1):
            delay = start + seq * period - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            quote = SimQuote(
                symbol=SYMBOL, bid_exchange="V", bid_price=bid, bid_size=seq,
                ask_exchange="V", ask_price=ask, ask_size=100, ts_ns=clock.time_ns(),
            )
            state.on_quote(quote)
            published[seq] = time.perf_counter_ns()
            hub.publish_quote(quote)
        return loop.time() - start

    def dump(self) -> dict[str, Any]:
        hub = self.sim.hub
        return {
            "published": self.published,
            "submitted": self.submitted,
            "state_counters": dict(self.sim.state.counters),
            "quotes_published": hub.counters.quotes_published if hub is not None else 0,
        }


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve() -> None:
    clock = LiveClock()
    sim = await start_simulator(
        SimulatorConfig(
            key_id=KEY_ID,
            secret_key=SECRET_KEY,
            starting_cash=STARTING_CASH,
            rate_limit_per_minute=RATE_LIMIT_PER_MINUTE,
            ack_latency_s=(0.001, 0.005),
            fill_latency_s=(0.001, 0.005),
        ),
        clock,
    )
    try:
        sim.state.add_symbol(SYMBOL)
        side = VenueSide(sim, clock)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        _say(f"listening on {sim.url}")
        while line := (await reader.readline()).decode().strip():
            command, *args = line.split()
            if command == "run":
                sent_s = await side.publish(int(args[0]), int(args[1]))
                _say(f"done {sent_s:.6f}")
            elif command == "dump":
                _say(json.dumps(side.dump()))
            else:
                raise ValueError(f"unknown command {line!r}")
    finally:
        await sim.stop()


def main() -> int:
    configure_logging(None, "warning")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
