"""Load run: a sustained quote rate into a real engine process, its memory and loop stall over time.

The venue simulator runs in this process with no recording; :class:`QuoteLoad` drives its
market data instead, a seeded random walk on ``symbols`` symbols at ``rate`` quotes a
second (plus one trade print per ten quotes), paced on the clock in 10 ms ticks. Each
quote goes through the venue first (it may fill working orders) and then out on the
``/v2/iex`` websocket, one frame per quote, as the feed player sends them. One engine —
a real ``kestrel run --venue-url`` child with its journal — subscribes to every symbol
and trades the first one with EMA cross.

While it runs, the engine's resident memory is read from ``/proc/PID/status`` every
``sample_every_s`` (in a worker thread) and its ``event_loop_lag`` log lines are
collected. At the end the engine gets SIGTERM and its ``--json`` summary says what it
saw: quotes, orders, fills and the loop-lag histogram of the whole run.

What the run proves: the engine keeps up (``ticks_seen`` = ``quotes_sent + trades_sent``, and the
simulator never dropped it as a slow client), memory levels off instead of growing with
the quote count, and the worst loop stall stays small.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import msgspec
import orjson

from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from adapters.alpaca_sim.events import SimQuote, SimTrade
from engine.clock import NS_PER_S, LiveClock, perf_ns
from engine.loop_lag import LoopLag
from simulations.engine_process import EngineKeys, EngineProcess

__all__ = ["LoadReport", "LoadSample", "QuoteLoad", "run_load"]

KEYS: Final = EngineKeys("PKLOADTEST000001", "load-test-secret-0001")
TICK_S: Final = 0.01
"""The generator's pacing step: ``rate * TICK_S`` quotes go out per tick."""
TRADE_EVERY: Final = 10
DRAIN_S: Final = 2.0
"""After the last quote: how long the engine gets to read what is in flight before SIGTERM."""
_CENT: Final = Decimal("0.01")
_NO_LAG: Final = {"samples": 0, "max_s": 0.0, "sum_s": 0.0, "buckets": [], "over_100ms": 0}


class QuoteLoad:
    """A seeded random walk per symbol, published at ``rate`` quotes/s into a simulator."""

    def __init__(self, sim: RunningSimulator, symbols: list[str], rate: float, seed: int, clock: LiveClock) -> None:
        if rate <= 0 or not symbols:
            raise ValueError("a load needs a positive rate and at least one symbol")
        if sim.hub is None:
            raise ValueError("the simulator has no market-data hub")
        self.sim = sim
        self.hub = sim.hub
        self.symbols = symbols
        self.rate = rate
        self.clock = clock
        self._rng = random.Random(f"load:{seed}")
        self._mid_cents = {symbol: 10_000 + 1_000 * i for i, symbol in enumerate(symbols)}
        self.quotes = 0
        self.trades = 0
        self.max_behind_s = 0.0
        """How far the generator fell behind its schedule at worst (this process's own stall)."""

    def _quote(self, symbol: str) -> None:
        rng = self._rng
        mid = max(200, self._mid_cents[symbol] + rng.choice((-1, 0, 0, 1)))
        self._mid_cents[symbol] = mid
        spread = rng.randint(1, 2)
        bid = Decimal(mid - spread) * _CENT
        ask = Decimal(mid + spread) * _CENT
        now = self.clock.time_ns()
        quote = SimQuote(
            symbol=symbol, bid_exchange="P", bid_price=bid, bid_size=rng.randint(1, 9) * 100,
            ask_exchange="N", ask_price=ask, ask_size=rng.randint(1, 9) * 100, ts_ns=now,
        )
        self.quotes += 1
        self.sim.state.on_quote(quote)
        self.hub.publish_quote(quote)
        if self.quotes % TRADE_EVERY == 0:
            self.trades += 1
            trade = SimTrade(symbol=symbol, trade_id=self.trades, exchange="D", price=Decimal(mid) * _CENT,
                             size=100, ts_ns=now)
            self.sim.state.on_trade(trade)
            self.hub.publish_trade(trade)

    async def run(self, duration_s: float) -> None:
        """Publish for ``duration_s`` seconds at the rate; a tick that runs late is caught up at once."""
        self.sim.state.session_open = True
        start = perf_ns()
        tick_ns = round(TICK_S * NS_PER_S)
        end = start + round(duration_s * NS_PER_S)
        owed = 0.0
        n = 0
        due = start
        turn = 0
        while due < end:
            now = perf_ns()
            if due > now:
                await self.clock.sleep((due - now) / NS_PER_S)
            else:
                self.max_behind_s = max(self.max_behind_s, (now - due) / NS_PER_S)
            owed += self.rate * TICK_S
            count = int(owed)
            owed -= count
            for _ in range(count):
                self._quote(self.symbols[turn])
                turn = (turn + 1) % len(self.symbols)
            n += 1
            due = start + n * tick_ns


class LoadSample(msgspec.Struct, frozen=True):
    t_s: float
    """Seconds since the load started."""
    rss_mb: float
    quotes_sent: int


class LoadReport(msgspec.Struct, kw_only=True):
    rate: float
    duration_s: float
    symbols: list[str]
    seed: int
    quotes_sent: int
    trades_sent: int
    ticks_seen: int
    """Quotes and trades the engine's pricing actor received (its summary's ``ticks``)."""
    slow_client_drops: int
    """Times the simulator cut the engine off for falling ``queue_size`` frames behind."""
    generator_max_behind_ms: float
    samples: list[LoadSample]
    rss_first_mb: float
    rss_peak_mb: float
    rss_last_mb: float
    rss_growth_second_half_mb: float
    """RSS at the end minus RSS at the half-way sample: growth once warmed up."""
    loop_lag_max_ms: float
    loop_lag_p99_ms: float
    loop_lag_over_100ms: int
    loop_lag_windows_max_ms: list[float]
    """The worst lag of each ``event_loop_lag`` report window (every 10 s), in order."""
    orders: int
    fills: int
    engine_exit: int
    wall_s: float
    summary: dict[str, Any]


def _engine_config(path: Path, symbols: list[str], qty: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(f'"{s}"' for s in symbols)
    path.write_text(
        f"""
[engine]
run_id = "load"
[log]
level = "info"
[data]
symbols = [{listed}]
[strategy.params]
fast = 20
slow = 80
qty = {qty}
symbol = "{symbols[0]}"
[risk]
max_order_qty = {qty}
[control]
file = "{path.parent / "control.json"}"
"""
    )
    return path


def _rss_mb(pid: int) -> float | None:
    """The process's resident set from ``/proc`` (blocking: call it in a worker thread)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


async def run_load(
    workdir: Path,
    *,
    rate: float = 5000.0,
    duration_s: float = 600.0,
    symbols: int = 8,
    seed: int = 1,
    sample_every_s: float = 10.0,
    ready_timeout_s: float = 60.0,
    progress: Callable[[LoadSample], None] | None = None,
) -> LoadReport:
    """One load run (see the module docstring); ``progress(sample)`` is called per memory sample."""
    clock = LiveClock()
    names = [f"LOAD{i}" for i in range(symbols)]
    config = await asyncio.to_thread(_engine_config, workdir / "load.toml", names, 10)
    sim = await start_simulator(
        SimulatorConfig(seed=seed, key_id=KEYS.key_id, secret_key=KEYS.secret_key, symbols=tuple(names),
                        rate_limit_per_minute=200),
        clock,
    )
    engine: EngineProcess | None = None
    began = perf_ns()
    try:
        engine = await EngineProcess.start("engine", workdir, sim.url, workdir / "journal.db", config, KEYS)
        await _wait_until_subscribed(sim, names, engine, ready_timeout_s)
        load = QuoteLoad(sim, names, rate, seed, clock)
        samples: list[LoadSample] = []

        async def sample() -> None:
            t0 = perf_ns()
            while True:
                await clock.sleep(sample_every_s)
                rss = await asyncio.to_thread(_rss_mb, engine.proc.pid)
                if rss is None:
                    return
                point = LoadSample(round((perf_ns() - t0) / NS_PER_S, 1), round(rss, 1), load.quotes)
                samples.append(point)
                if progress is not None:
                    progress(point)

        first = await asyncio.to_thread(_rss_mb, engine.proc.pid)
        samples.append(LoadSample(0.0, round(first or 0.0, 1), 0))
        sampler = asyncio.create_task(sample(), name="load-rss-sampler")
        try:
            await load.run(duration_s)
            await clock.sleep(DRAIN_S)  # frames still on the wire or in the engine's mailboxes
        finally:
            sampler.cancel()
        code = await engine.terminate(timeout_s=60.0)
        summary = await asyncio.to_thread(_summary, engine.stdout)
        events = await asyncio.to_thread(engine.events)
    finally:
        if engine is not None:
            await engine.kill()
        await sim.stop()
    return _report(load, samples, summary, events, code, sim, names, seed, duration_s, (perf_ns() - began) / NS_PER_S)


async def _wait_until_subscribed(
    sim: RunningSimulator, names: list[str], engine: EngineProcess, timeout_s: float
) -> None:
    assert sim.hub is not None
    deadline = perf_ns() + round(timeout_s * NS_PER_S)
    clock = LiveClock()
    while not all(sim.hub.subscribers("quotes", name) for name in names):
        if not engine.running:
            raise RuntimeError(f"the engine exited before subscribing: {engine.describe()}")
        if perf_ns() > deadline:
            raise TimeoutError(f"the engine did not subscribe to {names} within {timeout_s} s")
        await clock.sleep(0.1)


def _summary(stdout: Path) -> dict[str, Any]:
    lines = [line for line in stdout.read_bytes().splitlines() if line.startswith(b"{")]
    if not lines:
        raise RuntimeError(f"the engine printed no summary ({stdout})")
    summary: dict[str, Any] = orjson.loads(lines[-1])
    return summary


def _report(
    load: QuoteLoad,
    samples: list[LoadSample],
    summary: dict[str, Any],
    events: list[dict[str, Any]],
    code: int,
    sim: RunningSimulator,
    names: list[str],
    seed: int,
    duration_s: float,
    wall_s: float,
) -> LoadReport:
    rss = [s.rss_mb for s in samples]
    half = rss[len(rss) // 2]
    raw_lag = summary.get("loop_lag")
    lag = msgspec.convert(raw_lag or _NO_LAG, LoopLag)
    return LoadReport(
        rate=load.rate,
        duration_s=duration_s,
        symbols=names,
        seed=seed,
        quotes_sent=load.quotes,
        trades_sent=load.trades,
        ticks_seen=int(summary.get("ticks", 0)),
        slow_client_drops=sim.hub.counters.slow_clients if sim.hub is not None else 0,
        generator_max_behind_ms=round(load.max_behind_s * 1e3, 1),
        samples=samples,
        rss_first_mb=rss[0],
        rss_peak_mb=max(rss),
        rss_last_mb=rss[-1],
        rss_growth_second_half_mb=round(rss[-1] - half, 1),
        loop_lag_max_ms=round(lag.max_s * 1e3, 2),
        loop_lag_p99_ms=round(lag.quantile_s(0.99) * 1e3, 2),
        loop_lag_over_100ms=lag.over_100ms,
        loop_lag_windows_max_ms=[float(e["window_max_ms"]) for e in events if e.get("event") == "event_loop_lag"],
        orders=int(summary.get("orders", 0)),
        fills=int(summary.get("fills", 0)),
        engine_exit=code,
        wall_s=round(wall_s, 1),
        summary=summary,
    )
