"""The composition root: the one module that knows every concrete class.

It builds a process from a :class:`~engine.config.Config`: the bus, the clock, the
supervision tree of actors and adapters, and the feed, then runs it.

The paper session (``kestrel run``) supervises, in start order (downstream first, so
every subscriber exists before anything upstream publishes)::

    order-manager ← settlement ← venue ← risk ← strategy ← pricing ← (feed)

under one ``one_for_one`` root supervisor. The order manager starts first: it rebuilds
its book from the journal, and the ledger and the strategy start from that book.

Start-up with a journal: open it (refusing one that is corrupt, locked by another live
engine or from a newer version), start the tree with risk ``RECOVERING``, then ask the
order manager to ``Recover`` — reconcile the journal with the venue — before a single
intent can pass risk. Only then does the feed (replay) start.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from actors.order_manager import OrderManagerActor
from actors.pricing import PricingActor
from actors.risk import RiskActor
from actors.settlement import SettlementActor
from actors.strategies import STRATEGIES
from actors.strategies.base import Strategy
from actors.strategy_host import StrategyActor
from adapters.alpaca.feed import AlpacaFeedActor
from adapters.alpaca.rest import RestSettings
from adapters.alpaca.venue import AlpacaVenueActor
from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from adapters.lean_ticks import read_batches, symbol_for
from adapters.sim_venue import SimulatedVenue
from engine import topics
from engine.bus import Bus
from engine.clock import NS_PER_S, LiveClock, SimClock, perf_ns
from engine.config import Config, Credentials
from engine.errors import ConfigError
from engine.journal import Durability, Journal
from engine.logs import get_logger, set_log_clock
from engine.mailbox import Policy, conflate_by
from engine.messages import (
    ActorStats,
    BestBidOffer,
    PortfolioQuery,
    PortfolioSnapshot,
    Recover,
    RecoveryReport,
    StatsQuery,
    TradingState,
)
from engine.replay import Pacer, ReplayResult, replay
from engine.secrets import Secret
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec
from engine.supervisor import Strategy as SupervisionStrategy
from simulations.sample_data import SAMPLE_FILES

ALPACA_PAPER_URL = "https://paper-api.alpaca.markets"
ALPACA_LIVE_URL = "https://api.alpaca.markets"
ALPACA_DATA_URL = "wss://stream.data.alpaca.markets/v2/{feed}"
FEED = "feed"
SETTLEMENT = "settlement"
ORDER_MANAGER = "order-manager"
VENUE = "venue"
RISK = "risk"
STRATEGY = "strategy"
PRICING = "pricing"


class SessionSummary(msgspec.Struct, kw_only=True):
    """What ``kestrel run --json`` and ``kestrel replay --json`` print."""

    mode: str
    """``replay`` (simulated time, in process) or ``paper`` / ``live`` (through a venue adapter)."""
    ticks: int
    orders: int
    fills: int
    rejected: int
    rejections_by_reason: dict[str, int]
    positions: dict[str, str]
    cash: str
    realized_pnl: str
    fees: str
    wall_s: float
    ticks_per_s: float
    strategy: str
    seed: int
    data_files: list[str]
    sim_start_ns: int | None
    sim_end_ns: int | None
    quotes_suspicious: int
    quotes_crossed: int
    actor_crashes: int
    journal: str | None = None
    trading_state: str = "active"
    """Where risk left trading: ``active``, or ``halted`` with ``trading_reason``."""
    trading_reason: str = ""
    recovery: RecoveryReport | None = None


@dataclass(frozen=True)
class SessionOptions:
    strategy: str | None = None
    """Overrides ``[strategy] name``."""
    speed: float | None = None
    """None: as fast as possible; else a multiple of real time."""
    progress: Callable[[int, int], None] | None = None
    """Called now and then with (ticks so far, simulated time ns)."""
    venue_url: str | None = None
    """Overrides ``[venue] url``: trade against an already running simulator."""
    drain_timeout_s: float = 5.0
    """After the recording ends: how long to wait for working orders to finish."""
    journal: Path | None = None
    """Overrides ``[journal] path``."""
    recovery_timeout_s: float = 60.0


def strategy_factory(config: Config, name: str) -> Callable[[], Strategy]:
    try:
        make = STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise ConfigError("strategy", [("strategy.name", f"unknown strategy {name!r} (known: {known})")]) from None
    params = config.strategy.params
    make(name, params)  # validate now, so a bad parameter is a clear error before anything starts
    return lambda: make(name, params)


def order_manager(config: Config, journal: Journal | None) -> ActorSpec:
    j = config.journal
    return ActorSpec(
        ORDER_MANAGER,
        lambda: OrderManagerActor(
            config.engine.run_id,
            journal,
            venue_address=VENUE,
            starting_cash=config.venue.starting_cash,
            cash_tolerance=j.cash_tolerance,
            snapshot_every=j.snapshot_every,
            ack_sla_s=j.ack_sla_s,
        ),
    )


def risk(config: Config, market_data: dict[type, Policy]) -> ActorSpec:
    # Nothing trades until recovery has reconciled the journal with the venue.
    return ActorSpec(RISK, lambda: RiskActor(config.risk, TradingState.RECOVERING), policies=market_data)


def session_tree(
    config: Config, build_strategy: Callable[[], Strategy], journal: Journal | None = None, boot: int = 0
) -> SupervisorSpec:
    by_symbol = conflate_by(lambda m: m.symbol)
    market_data: dict[type, Policy] = {BestBidOffer: by_symbol}
    return SupervisorSpec(
        "root",
        [
            order_manager(config, journal),
            ActorSpec(SETTLEMENT, lambda: SettlementActor(config.venue.starting_cash, ORDER_MANAGER)),
            ActorSpec(VENUE, lambda: SimulatedVenue(config.venue.fee_per_share)),
            risk(config, market_data),
            ActorSpec(STRATEGY, lambda: StrategyActor(build_strategy, SETTLEMENT, boot)),
            ActorSpec(PRICING, PricingActor),
        ],
        strategy=SupervisionStrategy.ONE_FOR_ONE,
        max_restarts=5,
        period_s=10.0,
    )


async def open_journal(config: Config, options: SessionOptions, clock: LiveClock | SimClock) -> Journal | None:
    path = options.journal or (Path(config.journal.path) if config.journal.path else None)
    if path is None:
        return None
    return await Journal.open(path, clock, Durability(config.journal.durability))


async def count_boot(journal: Journal | None) -> int:
    """This start's number on the journal (1, 2, ...; 0 without one): it keeps intent ids unique."""
    if journal is None:
        return 0
    boot = int(await journal.read_meta("boots") or 0) + 1
    await journal.write_meta("boots", str(boot))
    return boot


async def recover(bus: Bus, root_task: asyncio.Task[None], timeout_s: float) -> RecoveryReport:
    """Reconcile the journal with the venue; risk lets intents through only after this."""
    waiter = asyncio.ensure_future(bus.request(ORDER_MANAGER, Recover(), timeout_s))
    await asyncio.wait([waiter, root_task], return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await root_task  # the supervisor gave up during recovery: raise why
        raise RuntimeError("the engine stopped during recovery")
    report: RecoveryReport = waiter.result()
    return report


def data_files(config: Config) -> list[Path]:
    return [Path(f) for f in config.data.files] or list(SAMPLE_FILES)


async def run_replay_session(config: Config, options: SessionOptions) -> SessionSummary:
    """Replay the configured recording through the full actor set; return the summary."""
    log = get_logger(actor="node")
    strategy_name = options.strategy or config.strategy.name
    build_strategy = strategy_factory(config, strategy_name)
    files = data_files(config)
    clock = SimClock()
    set_log_clock(clock)
    bus = Bus()
    journal = await open_journal(config, options, clock)
    boot = await count_boot(journal)
    root = Supervisor(
        session_tree(config, build_strategy, journal, boot), bus, clock, random.Random(config.engine.seed)
    )
    pacer = Pacer(options.speed, LiveClock()) if options.speed is not None else None
    log.info("session_starting", strategy=strategy_name, seed=config.engine.seed, files=[str(f) for f in files])

    started = perf_ns()
    root_task = asyncio.create_task(root.run(), name="root-supervisor")
    try:
        await asyncio.wait([asyncio.ensure_future(root.started()), root_task], return_when=asyncio.FIRST_COMPLETED)
        if root_task.done():
            await root_task  # raises why it could not start
        report = await recover(bus, root_task, options.recovery_timeout_s)
        feed_task = asyncio.create_task(
            replay(read_batches(files, config.data.symbol), clock, bus, topics.MD_RAW, pacer, options.progress)
        )
        await asyncio.wait([feed_task, root_task], return_when=asyncio.FIRST_COMPLETED)
        if root_task.done():
            feed_task.cancel()
            await asyncio.gather(feed_task, return_exceptions=True)
            await root_task  # the supervisor gave up: raise its SupervisorGaveUp
        result = await feed_task
        await bus.idle()
        wall_s = (perf_ns() - started) / NS_PER_S
        summary = await _summarise(
            bus, root, config, strategy_name, files, result, wall_s, report=report, journal=journal
        )
    finally:
        root_task.cancel()
        await asyncio.gather(root_task, return_exceptions=True)
        if journal is not None:
            await journal.close()
        set_log_clock(None)
    log.info("session_finished", **{k: v for k, v in msgspec.to_builtins(summary).items() if k != "data_files"})
    return summary


async def _summarise(
    bus: Bus,
    root: Supervisor,
    config: Config,
    strategy: str,
    files: list[Path],
    result: ReplayResult,
    wall_s: float,
    mode: str = "replay",
    *,
    report: RecoveryReport,
    journal: Journal | None = None,
) -> SessionSummary:
    portfolio: PortfolioSnapshot = await bus.request(SETTLEMENT, PortfolioQuery())
    orders: ActorStats = await bus.request(ORDER_MANAGER, StatsQuery())
    risk: ActorStats = await bus.request(RISK, StatsQuery())
    pricing_stats: ActorStats = await bus.request(PRICING, StatsQuery())
    crashes = sum(s.crashes for s in root.stats.values())
    return SessionSummary(
        mode=mode,
        ticks=result.events,
        orders=orders.counters["submitted"],
        fills=portfolio.fills,
        rejected=risk.counters["rejected"] + orders.counters["venue_rejected"],
        rejections_by_reason=risk.breakdown.get("rejections_by_reason", {}),
        positions={symbol: str(qty) for symbol, qty in portfolio.positions.items()},
        cash=str(portfolio.cash),
        realized_pnl=str(portfolio.realized_pnl),
        fees=str(portfolio.fees),
        wall_s=round(wall_s, 3),
        ticks_per_s=round(result.events / wall_s, 1) if wall_s > 0 else 0.0,
        strategy=strategy,
        seed=config.engine.seed,
        data_files=[str(f) for f in files],
        sim_start_ns=result.first_ts_ns,
        sim_end_ns=result.last_ts_ns,
        quotes_suspicious=pricing_stats.counters.get("suspicious", 0),
        quotes_crossed=pricing_stats.counters.get("crossed", 0),
        actor_crashes=crashes,
        journal=str(journal.path) if journal is not None else None,
        trading_state=next(iter(risk.breakdown.get("trading_state", {})), report.state.value),
        trading_reason=report.reason,
        recovery=report,
    )


# ---------------------------------------------------------------- the live path


def live_tree(
    config: Config,
    build_strategy: Callable[[], Strategy],
    venue_url: str,
    data_url: str,
    credentials: Credentials,
    symbols: list[str],
    journal: Journal | None = None,
    boot: int = 0,
) -> SupervisorSpec:
    """The same actors as the replay tree, with Alpaca adapters at the venue boundary."""
    by_symbol = conflate_by(lambda m: m.symbol)
    market_data: dict[type, Policy] = {BestBidOffer: by_symbol}
    rest = RestSettings(rate_per_minute=config.venue.rate_limit_per_minute)
    return SupervisorSpec(
        "root",
        [
            order_manager(config, journal),
            ActorSpec(SETTLEMENT, lambda: SettlementActor(config.venue.starting_cash, ORDER_MANAGER)),
            ActorSpec(VENUE, lambda: AlpacaVenueActor(venue_url, credentials.key_id, credentials.secret_key, rest)),
            risk(config, market_data),
            ActorSpec(STRATEGY, lambda: StrategyActor(build_strategy, SETTLEMENT, boot)),
            ActorSpec(PRICING, PricingActor),
            ActorSpec(FEED, lambda: AlpacaFeedActor(data_url, credentials.key_id, credentials.secret_key, symbols)),
        ],
        strategy=SupervisionStrategy.ONE_FOR_ONE,
        max_restarts=5,
        period_s=10.0,
    )


def _embedded_credentials(credentials: Credentials | None, rng: random.Random) -> Credentials:
    """The embedded simulator's keys: the user's, if set, else a fresh random pair for this run."""
    if credentials is not None:
        return credentials
    return Credentials(
        Secret(f"PK{rng.getrandbits(64):016X}"),
        Secret(f"{rng.getrandbits(160):040x}"),
        source="generated for this run",
    )


async def run_live_session(config: Config, options: SessionOptions, credentials: Credentials | None) -> SessionSummary:
    """Trade through the Alpaca adapters: against the embedded simulator (replaying the
    configured recording), a running one (``venue_url``), or Alpaca itself.
    """
    log = get_logger(actor="node")
    strategy_name = options.strategy or config.strategy.name
    build_strategy = strategy_factory(config, strategy_name)
    files = data_files(config)
    symbols = sorted({symbol_for(f, config.data.symbol) for f in files})
    clock = LiveClock()
    rng = random.Random(config.engine.seed)
    bus = Bus()
    venue_url = options.venue_url or config.venue.url
    simulator: RunningSimulator | None = None
    kind = config.venue.kind
    if kind == "simulator" and venue_url is None:
        keys = _embedded_credentials(credentials, random.Random(f"keys:{config.engine.seed}:{clock.time_ns()}"))
        simulator = await start_simulator(
            SimulatorConfig(
                feed_files=files,
                speed=options.speed,
                key_id=keys.key_id.reveal(),
                secret_key=keys.secret_key.reveal(),
                seed=config.engine.seed,
                starting_cash=config.venue.starting_cash,
                rate_limit_per_minute=max(config.venue.rate_limit_per_minute, 200),
            ),
            clock,
        )
        venue_url = simulator.url
        data_url = simulator.data_url(config.venue.data_feed)
    else:
        if credentials is None:
            raise ConfigError(
                "credentials", [("", "trading against a venue needs APCA_API_KEY_ID and APCA_API_SECRET_KEY")]
            )
        keys = credentials
        if kind == "simulator":
            assert venue_url is not None
            data_url = "ws" + venue_url[len("http") :].rstrip("/") + f"/v2/{config.venue.data_feed}"
        else:
            venue_url = ALPACA_LIVE_URL if kind == "alpaca-live" else ALPACA_PAPER_URL
            data_url = ALPACA_DATA_URL.format(feed=config.venue.data_feed)
    journal = await open_journal(config, options, clock)
    root = Supervisor(
        live_tree(config, build_strategy, venue_url, data_url, keys, symbols, journal, await count_boot(journal)),
        bus,
        clock,
        rng,
    )
    # A session that runs until signalled listens from before anything starts (see _StopSignals).
    stop = _StopSignals() if simulator is None or simulator.player is None else None
    log.info(
        "live_session_starting",
        venue=venue_url,
        strategy=strategy_name,
        symbols=symbols,
        embedded=simulator is not None,
    )
    started = perf_ns()
    root_task = asyncio.create_task(root.run(), name="root-supervisor")
    try:
        await _first_of(asyncio.ensure_future(root.started()), root_task)
        if root_task.done():
            await root_task  # raises why it could not start
        report = await recover(bus, root_task, options.recovery_timeout_s)
        if stop is None:
            assert simulator is not None and simulator.player is not None
            await _first_of(asyncio.ensure_future(simulator.player.done.wait()), root_task)
            await _drain(bus, options.drain_timeout_s, root_task)
        else:
            await _first_of(asyncio.ensure_future(stop.requested.wait()), root_task)
        if root_task.done():
            await root_task  # raises why the engine stopped
        wall_s = (perf_ns() - started) / NS_PER_S
        pricing: ActorStats = await bus.request(PRICING, StatsQuery())
        ticks = pricing.counters.get("quotes", 0) + pricing.counters.get("trades", 0)
        result = ReplayResult(ticks, None, clock.time_ns())
        summary = await _summarise(
            bus, root, config, strategy_name, files, result, wall_s, config.engine.mode, report=report, journal=journal
        )
    finally:
        if stop is not None:
            stop.remove()
        root_task.cancel()
        await asyncio.gather(root_task, return_exceptions=True)
        if journal is not None:
            await journal.close()
        if simulator is not None:
            await simulator.stop()
    log.info("live_session_finished", ticks=summary.ticks, orders=summary.orders, fills=summary.fills)
    return summary


async def _first_of(waiter: asyncio.Future[Any], root_task: asyncio.Task[None]) -> None:
    await asyncio.wait([waiter, root_task], return_when=asyncio.FIRST_COMPLETED)
    if not waiter.done():
        waiter.cancel()


async def _drain(bus: Bus, timeout_s: float, root_task: asyncio.Task[None]) -> None:
    """Let in-flight messages settle and working orders finish (bounded by ``timeout_s``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline and not root_task.done():
        stats: ActorStats = await bus.request(ORDER_MANAGER, StatsQuery())
        if stats.counters.get("working", 0) == 0:
            return
        await asyncio.wait([root_task], timeout=0.05)


class _StopSignals:
    """SIGINT / SIGTERM as a request to stop, heard from before the session starts.

    Fix (found by tests/test_crash_recovery.py): the handlers used to be installed only
    once recovery had returned, so a SIGTERM during start-up or recovery — or in the few
    loop turns between the order manager finishing recovery and the node starting to
    wait — took the default action: the process died by the signal (exit -15), with no
    summary and no orderly journal close. Now the request is remembered: recovery
    (bounded by its timeout) completes, and the session stops right after it. After the
    first signal the default actions are back, so a second one still stops a start-up
    that hangs, the hard way.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._installed = True
        for signum in self.SIGNALS:
            self._loop.add_signal_handler(signum, self._on_signal)

    def _on_signal(self) -> None:
        self.requested.set()
        self.remove()

    def remove(self) -> None:
        if self._installed:
            self._installed = False
            for signum in self.SIGNALS:
                self._loop.remove_signal_handler(signum)
