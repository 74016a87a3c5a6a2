"""The composition root: the one module that knows every concrete class.

It builds a process from a :class:`~engine.config.Config`: the bus, the clock, the
supervision tree of actors and adapters, and the feed, then runs it.

The paper session (``kestrel run``) supervises, in start order (downstream first, so
every subscriber exists before anything upstream publishes)::

    order-manager ← (audit) ← settlement ← venue ← risk ← strategy ← pricing ← (feed)

under one ``one_for_one`` root supervisor. The order manager starts first: it rebuilds
its book from the journal, and the ledger and the strategy start from that book.

Start-up with a journal: open it (refusing one that is corrupt, locked by another live
engine or from a newer version), start the tree with risk ``RECOVERING``, then ask the
order manager to ``Recover`` — reconcile the journal with the venue — before a single
intent can pass risk. Only then does the feed (replay) start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import random
import signal
from collections.abc import AsyncIterable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import msgspec

from actors.audit import CAPACITY as AUDIT_CAPACITY
from actors.audit import AuditActor
from actors.calendars import SymbolCalendars
from actors.execution import VolumeProfile
from actors.features import FeaturePipeline
from actors.order_latency import OrderPathLatency
from actors.order_manager import OrderManagerActor
from actors.pricing import PricingActor, PricingPolicy
from actors.risk import RiskActor
from actors.settlement import SettlementActor
from actors.strategies import STRATEGIES
from actors.strategies.base import Strategy
from actors.strategy_host import StrategyActor, build_pipeline
from adapters.alpaca.feed import AlpacaFeedActor
from adapters.alpaca.rest import RestSettings
from adapters.alpaca.venue import AlpacaVenueActor
from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from adapters.control_http import ControlServer, Handler, generate_token, remove_control_file, write_control_file
from adapters.lean_ticks import symbol_for
from adapters.replay_sources import (
    LEAN_TICKS,
    InputErrors,
    InputErrorSample,
    ReplayInput,
    file_batches,
    resolve_inputs,
    synthetic_batches,
)
from adapters.sim_venue import SimulatedVenue
from engine import topics
from engine.bus import Bus, Request
from engine.clock import NS_PER_S, LiveClock, SimClock, perf_ns
from engine.config import Config, Credentials, ExecutionSection
from engine.errors import ConfigError, UserError
from engine.journal import Durability, Journal
from engine.logs import get_logger, set_log_clock
from engine.loop_lag import LoopLag, LoopLagMonitor
from engine.mailbox import Policy, conflate_by
from engine.messages import (
    ActorStats,
    BestBidOffer,
    OperatorCommand,
    OperatorReply,
    PortfolioQuery,
    PortfolioSnapshot,
    Recover,
    RecoveryReport,
    RiskReport,
    RiskReportQuery,
    RunManifest,
    StatsQuery,
    TradingState,
)
from engine.recording import RecordingWriter
from engine.replay import Pacer, Recorded, ReplayResult, replay
from engine.secrets import Secret
from engine.supervisor import ActorSpec, Supervisor, SupervisorSpec
from engine.supervisor import Strategy as SupervisionStrategy
from kestrel.dashboard import announce_dashboard, dashboard_routes
from kestrel.manifest import build_manifest
from kestrel.ops import VERSION, EngineProbe, public_routes
from simulations.sample_data import SAMPLE_FILES
from simulations.synthetic import SYMBOL as SYNTHETIC_SYMBOL
from simulations.synthetic import random_walk_quotes
from simulations.volume_profile import read_trades

ALPACA_PAPER_URL = "https://paper-api.alpaca.markets"
ALPACA_LIVE_URL = "https://api.alpaca.markets"
ALPACA_DATA_URL = "wss://stream.data.alpaca.markets/v2/{feed}"
ALPACA_FEEDS: Final = ("iex", "sip")
"""Alpaca's market-data feeds: provider ``alpaca-<feed>`` (see adapters/alpaca/data_stream.py)."""
FEED = "feed"
"""The feed actor of ``[venue] data_feed``; another Alpaca feed's actor is ``feed-<feed>``."""
SETTLEMENT = "settlement"
ORDER_MANAGER = "order-manager"
VENUE = "venue"
RISK = "risk"
STRATEGY = "strategy"
PRICING = "pricing"
AUDIT = "audit"


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
    """Replay: from the first event published to the system settled after the last one
    (start-up, calendars and recovery are in ``startup_s``). Live: the session's length."""
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
    event_log_sha256: str | None = None
    """sha256 over every message published or sent on the bus from start-up to the end of the
    replay (replay only): equal for equal input, config and seed."""
    journal_sha256: str | None = None
    """sha256 over the journal's events (seq, time, record) read back after close; None without one."""
    input_errors: dict[str, int] = msgspec.field(default_factory=dict)
    """Bad input skipped during a replay, counted by kind (``malformed_line``, ``truncated_gzip`` …)."""
    input_error_samples: list[InputErrorSample] = msgspec.field(default_factory=list)
    """The first few of them, with file and line."""
    startup_s: float = 0.0
    """From creating the actor tree to recovery done: actors started, calendars loaded, the
    journal's book rebuilt and reconciled. Not part of ``wall_s``."""
    risk: RiskReport | None = None
    """Risk's figures at the end: exposure, leverage, concentration, daily P&L, drawdown,
    historical VaR / expected shortfall (95 %), working orders, paused strategies."""
    manifest: RunManifest | None = None
    """What the run was made of: code, config, data files with hashes, seeds (also journaled first)."""
    loop_lag: LoopLag | None = None
    """Live sessions: how late the event loop woke a 50 ms sleeper (max, histogram): its worst stall."""
    provider_failovers: int = 0
    """Times pricing moved a symbol off its ``[pricing.providers]`` primary (it went stale) ..."""
    provider_failbacks: int = 0
    """... and back to it (fresh again for ``failback_s``)."""


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
    inputs: tuple[Path, ...] = ()
    """Replay these files instead of ``[data] files`` (any format, merged by receive time)."""
    input_format: str = "auto"
    """Format of ``inputs``: ``auto`` (detected per file), ``kestrel``, ``binance-capture``, ``lean-ticks``."""
    synthetic: int | None = None
    """Replay this many quotes of the seeded random walk (simulations/synthetic.py) instead of files."""
    strict: bool = False
    """The first bad input line stops the replay (a DataError) instead of being counted and skipped."""
    batch_size: int = 4096


class EventLogBus(Bus):
    """A bus that also hashes every message it carries: the replay's event log, as a digest.

    Requests are sent, not published, so :meth:`publish`, :meth:`send` and :meth:`request`
    are all tapped: each message is hashed with how it travelled and where to. Replies
    travel in futures, not on the bus; they are the requester's next messages' cause, so
    they still show in the log. Only replay uses
    this bus: under :class:`SimClock` every timestamp in a message is simulated time, so
    the digest depends on the input, the config and the seed, never on the machine.
    """

    def __init__(self) -> None:
        super().__init__()
        self.tapping = True
        self._digest = hashlib.sha256()
        self._encode_into = msgspec.msgpack.Encoder(enc_hook=_opaque).encode_into
        self._buffer = bytearray()
        self._batch: list[tuple[str, str, object]] = []
        """Messages not yet encoded. Encoding ``LOG_BATCH`` of them in one call costs far less
        than one call each; every message is an immutable value, so encoding later sees
        what was sent. The digest covers one JSON array per batch, a fixed number of
        messages each: the same messages give the same digest."""

    def hexdigest(self) -> str:
        if self._batch:
            self._encode_batch()
        return self._digest.hexdigest()

    def _encode_batch(self) -> None:
        buffer = self._buffer
        self._encode_into(self._batch, buffer)
        self._digest.update(buffer)
        self._batch.clear()

    # Plain methods returning the base coroutine, not coroutines of their own: a tapped
    # publish costs one list append, and no second coroutine frame per message.

    def publish(self, topic: str, message: object) -> Coroutine[Any, Any, None]:
        if self.tapping:
            batch = self._batch
            batch.append(("publish", topic, message))
            if len(batch) >= LOG_BATCH:
                self._encode_batch()
        return Bus.publish(self, topic, message)

    def send(self, address: str, message: object) -> Coroutine[Any, Any, None]:
        # A Request here came through request() (logged there), where the base bus sends it.
        if self.tapping and type(message) is not Request:
            self._log("send", address, message)
        return Bus.send(self, address, message)

    def request(self, address: str, message: object, timeout_s: float = 5.0) -> Coroutine[Any, Any, Any]:
        if self.tapping:
            self._log("request", address, message)
        return Bus.request(self, address, message, timeout_s)

    def _log(self, how: str, where: str, message: object) -> None:
        batch = self._batch
        batch.append((how, where, message))
        if len(batch) >= LOG_BATCH:
            self._encode_batch()


LOG_BATCH: Final = 4096
"""Messages per encoded batch of the event log (part of what the digest means: do not change lightly)."""


def _opaque(value: object) -> str:
    """A message msgspec cannot encode is logged by its type: deterministic, unlike its repr."""
    return f"<{type(value).__module__}.{type(value).__qualname__}>"


async def journal_digest(path: Path, clock: LiveClock | SimClock) -> str:
    """sha256 of a closed journal's events (seq, ts, record), not of its file: SQLite pages are not reproducible.

    The run manifest is left out: it describes where the run happened (paths, source
    revision, Python) rather than what it did, and two equal runs from different
    checkouts must still digest the same.
    """
    digest = hashlib.sha256()
    encode = msgspec.json.Encoder().encode
    async with await Journal.open_readonly(path, clock) as reader:
        async for entry in reader.read():
            if isinstance(entry.record, RunManifest):
                continue
            digest.update(encode(entry))
            digest.update(b"\n")
    return digest.hexdigest()


def strategy_factory(config: Config, name: str) -> Callable[[], Strategy]:
    try:
        make = STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise ConfigError("strategy", [("strategy.name", f"unknown strategy {name!r} (known: {known})")]) from None
    execution_settings(config)  # its cross-checks with [risk], before anything starts
    params = config.strategy.params
    # Validate now, so a bad parameter or a pinned feature pipeline this run would not compute
    # is a clear error (exit 2) before anything starts, not a strategy actor failing to start.
    feature_pipeline(config, make(name, params))
    return lambda: make(name, params)


def feature_pipeline(config: Config, strategy: Strategy) -> FeaturePipeline:
    """The feature pipeline the strategy actor will build for ``strategy``, pins checked.

    Raises :class:`~actors.features.FeaturePipelineMismatch` (a ``ConfigError``) when the
    strategy's pin, or ``[strategy] pipeline_hash``, differs from what it would compute.
    """
    pin = config.strategy.pipeline_hash
    return build_pipeline([strategy], {strategy.name: pin} if pin else None)


def manifest_pipeline_hash(pipeline: FeaturePipeline) -> str:
    """What the run manifest records: the pipeline's hash, empty when no feature is declared."""
    return pipeline.pipeline_hash if pipeline.specs else ""


def order_manager(config: Config, journal: Journal | None, latency: OrderPathLatency | None = None) -> ActorSpec:
    """``latency``: shared by every incarnation of the actor (its histograms outlive a restart)."""
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
            latency=latency,
        ),
    )


def audit(journal: Journal | None) -> list[ActorSpec]:
    """The audit actor, which journals signals, risk decisions and operator actions (actors/audit.py).

    None without a journal: there is nowhere to write them, and nobody listens on ``audit``.
    Started right after the order manager, before anything that publishes on ``audit``.
    """
    if journal is None:
        return []
    trail = journal
    return [ActorSpec(AUDIT, lambda: AuditActor(trail), capacity=AUDIT_CAPACITY)]


def risk(config: Config, market_data: dict[type, Policy], *, default_calendar: str | None = None) -> ActorSpec:
    """The risk actor's spec. Nothing trades until recovery has reconciled the journal with the venue.

    Market sessions: equities follow the NYSE calendar (``XNYS``) against Alpaca. A
    simulator venue's market is open whenever it plays its recording, and the embedded
    simulator stamps what it plays with the wall clock, so gating it by the NYSE calendar
    would shut the demo at night and on weekends: with ``venue.kind = "simulator"`` the
    default is ``"24/7"``. A replay under the SimClock (recorded time) may pass
    ``default_calendar="XNYS"`` to gate by the real sessions of the recorded day.
    """
    limits = config.risk
    calendar = market_calendar(config, default_calendar)
    return ActorSpec(
        RISK,
        lambda: RiskActor(
            limits,
            TradingState.RECOVERING,
            calendars=limits.calendars,
            default_calendar=calendar,
            extended_hours=limits.extended_hours,
            starting_cash=config.venue.starting_cash,
            ledger_address=SETTLEMENT,
            orders_address=ORDER_MANAGER,
        ),
        policies=market_data,
    )


def market_calendar(config: Config, default_calendar: str | None = None) -> str:
    """The calendar of symbols ``[risk] calendars`` does not map (see :func:`risk`)."""
    configured = config.risk.default_calendar
    return configured or default_calendar or ("24/7" if config.venue.kind == "simulator" else "XNYS")


def settlement(config: Config, journal: Journal | None = None, *, default_calendar: str | None = None) -> ActorSpec:
    """The settlement actor's spec: fills dated on the same calendars risk gates orders by
    (T+1 session for exchange symbols), the account's day on the default calendar."""
    account_type = config.risk.account_type
    calendar = market_calendar(config, default_calendar)
    return ActorSpec(
        SETTLEMENT,
        lambda: SettlementActor(
            config.venue.starting_cash,
            ORDER_MANAGER,
            account_type=account_type,
            calendars=SymbolCalendars(config.risk.calendars, calendar),
            account_calendar=calendar,
            journal=journal,
            snapshot_every=config.journal.snapshot_every,
        ),
    )


def pricing_policy(config: Config) -> PricingPolicy:
    section = config.pricing
    return PricingPolicy(
        sla_s=section.sla_s,
        symbol_sla_s=dict(section.symbol_sla_s),
        feed_silence_s=section.feed_silence_s,
        providers={symbol: (pair[0], pair[1]) for symbol, pair in section.providers.items()},
        failback_s=section.failback_s,
        outlier_pct=section.outlier_pct,
        outlier_confirmations=section.outlier_confirmations,
        bar_interval_s=section.bar_interval_s,
        bar_grace_s=section.bar_grace_s,
    )


def strategy_actor(
    config: Config, build_strategy: Callable[[], Strategy], boot: int, volume_profile: VolumeProfile | None = None
) -> StrategyActor:
    return StrategyActor(
        build_strategy,
        SETTLEMENT,
        boot,
        pipeline_hash=config.strategy.pipeline_hash,
        orders_address=ORDER_MANAGER,
        execution=execution_settings(config),
        volume_profile=volume_profile,
    )


def execution_settings(config: Config) -> ExecutionSection:
    """``[strategy.execution]`` checked against ``[risk]``, with the chaser's shortest timeout resolved.

    A chaser re-pegging at an unchanged touch sends the same order again: within ``[risk]
    duplicate_window_s`` of the last one, risk refuses it (``DUPLICATE_ORDER``) and the
    chaser gives up. So its timeouts may not go under the window: ``timeout_s`` (and a set
    ``min_timeout_s``) below it is a ConfigError, and an unset ``min_timeout_s`` is a
    quarter of ``timeout_s`` raised to the window.
    """
    execution = config.strategy.execution
    if execution.algo != "chaser":
        return execution
    window = config.risk.duplicate_window_s
    problems = [
        (
            f"strategy.execution.{key}",
            f"{value:g} s is under [risk] duplicate_window_s ({window:g} s): a re-peg at an unchanged touch would be"
            " refused as DUPLICATE_ORDER; make it at least the window, or shorten the window",
        )
        for key, value in (("timeout_s", execution.timeout_s), ("min_timeout_s", execution.min_timeout_s))
        if value is not None and value < window
    ]
    if problems:
        raise ConfigError("strategy.execution", problems)
    if execution.min_timeout_s is not None:
        return execution
    return msgspec.structs.replace(execution, min_timeout_s=max(execution.timeout_s / 4, window))


async def load_volume_profile(config: Config) -> VolumeProfile | None:
    """VWAP's intraday volume profile from ``[strategy.execution] vwap_trades``, read in a worker
    thread (``None``: not VWAP, or a flat profile). A missing or unusable file is a ConfigError."""
    execution = config.strategy.execution
    if execution.algo != "vwap" or not execution.vwap_trades:
        return None
    paths = [Path(p) for p in execution.vwap_trades]

    def build() -> VolumeProfile:
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"no such file: {', '.join(missing)}")
        return VolumeProfile.from_trades(read_trades(paths), bucket_minutes=execution.bucket_minutes)

    try:
        return await asyncio.to_thread(build)
    except (OSError, ValueError) as exc:
        raise ConfigError("strategy.execution", [("strategy.execution.vwap_trades", str(exc))]) from None


def session_tree(
    config: Config,
    build_strategy: Callable[[], Strategy],
    journal: Journal | None = None,
    boot: int = 0,
    default_calendar: str = "XNYS",
    volume_profile: VolumeProfile | None = None,
) -> SupervisorSpec:
    by_symbol = conflate_by(lambda m: m.symbol)
    market_data: dict[type, Policy] = {BestBidOffer: by_symbol}
    policy = pricing_policy(config)
    return SupervisorSpec(
        "root",
        [
            order_manager(config, journal),
            *audit(journal),
            settlement(config, journal, default_calendar=default_calendar),
            ActorSpec(VENUE, lambda: SimulatedVenue(config.venue.fee_per_share)),
            # Replays play recorded time: equity days are gated by the NYSE calendar they were
            # recorded on (crypto and the synthetic symbol are 24/7 whatever the default). A
            # synthetic run trades only SYNTH: "24/7" then spares loading the NYSE calendar.
            risk(config, market_data, default_calendar=default_calendar),
            ActorSpec(STRATEGY, lambda: strategy_actor(config, build_strategy, boot, volume_profile)),
            ActorSpec(PRICING, lambda: PricingActor(policy)),
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


async def start_manifest(
    config: Config,
    files: Sequence[Path],
    strategy: str,
    boot: int,
    clock: LiveClock | SimClock,
    journal: Journal | None,
    *,
    mode: str,
    pipeline_hash: str = "",
) -> RunManifest:
    """Build the run manifest, journal it (before any order record of this start) and log its hashes."""
    manifest = await build_manifest(
        config,
        files,
        mode=mode,
        strategy=strategy,
        boot=boot,
        now_ns=clock.time_ns(),
        pipeline_hash=pipeline_hash,
    )
    if journal is not None:
        await journal.write(manifest)
    get_logger(actor="node").info(
        "run_manifest",
        boot=boot,
        version=manifest.version,
        source_revision=manifest.source_revision,
        config_sha256=manifest.config_sha256,
        data_files={d.path: d.sha256 for d in manifest.data_files},
        seeds=manifest.seeds,
        pipeline_hash=manifest.pipeline_hash,
    )
    return manifest


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
    """Replay the configured recording through the full actor set; return the summary.

    The input is, in order of precedence: ``options.synthetic`` quotes of the seeded
    random walk, ``options.inputs`` (any supported format, merged by receive time), or
    ``[data] files`` (LEAN ticks; default: the bundled sample day).
    """
    log = get_logger(actor="node")
    strategy_name = options.strategy or config.strategy.name
    build_strategy = strategy_factory(config, strategy_name)
    pipeline_hash = manifest_pipeline_hash(feature_pipeline(config, build_strategy()))
    volume_profile = await load_volume_profile(config)
    errors = InputErrors(strict=options.strict)
    inputs: list[ReplayInput] = []
    if options.synthetic is None:
        if options.inputs:
            inputs = await asyncio.to_thread(resolve_inputs, options.inputs, options.input_format)
        else:
            inputs = [ReplayInput(f, LEAN_TICKS) for f in data_files(config)]
    files = [i.path for i in inputs]
    clock = SimClock()
    set_log_clock(clock)
    bus = EventLogBus()
    journal = await open_journal(config, options, clock)
    boot = await count_boot(journal)
    manifest = await start_manifest(
        config, files, strategy_name, boot, clock, journal, mode="replay", pipeline_hash=pipeline_hash
    )
    root = Supervisor(
        session_tree(
            config,
            build_strategy,
            journal,
            boot,
            default_calendar="24/7" if options.synthetic is not None else "XNYS",
            volume_profile=volume_profile,
        ),
        bus,
        clock,
        random.Random(config.engine.seed),
    )
    pacer = Pacer(options.speed, LiveClock()) if options.speed is not None else None
    log.info(
        "session_starting",
        strategy=strategy_name,
        seed=config.engine.seed,
        files=[str(f) for f in files],
        formats=sorted({i.format for i in inputs}),
        synthetic=options.synthetic,
    )

    booting = perf_ns()
    root_task = asyncio.create_task(root.run(), name="root-supervisor")
    try:
        await asyncio.wait([asyncio.ensure_future(root.started()), root_task], return_when=asyncio.FIRST_COMPLETED)
        if root_task.done():
            await root_task  # raises why it could not start
        report = await recover(bus, root_task, options.recovery_timeout_s)
        started = perf_ns()
        startup_s = (started - booting) / NS_PER_S
        batches: AsyncIterable[Sequence[Recorded]]
        if options.synthetic is not None:
            if options.synthetic < 0:
                raise UserError(f"--synthetic needs a count >= 0, got {options.synthetic}")
            quotes = random_walk_quotes(options.synthetic, config.engine.seed)
            batches = synthetic_batches(quotes, SYNTHETIC_SYMBOL, options.batch_size)
        else:
            batches = file_batches(inputs, errors, config.data.symbol, batch_size=options.batch_size)
        feed_task = asyncio.create_task(replay(batches, clock, bus, topics.MD_RAW, pacer, options.progress))
        await asyncio.wait([feed_task, root_task], return_when=asyncio.FIRST_COMPLETED)
        if root_task.done():
            feed_task.cancel()
            await asyncio.gather(feed_task, return_exceptions=True)
            await root_task  # the supervisor gave up: raise its SupervisorGaveUp
        result = await feed_task
        await bus.idle()
        bus.tapping = False  # the summary's own queries are not part of the replay
        wall_s = (perf_ns() - started) / NS_PER_S
        summary = await _summarise(
            bus, root, config, strategy_name, files, result, wall_s, report=report, journal=journal
        )
        summary.event_log_sha256 = bus.hexdigest()
        summary.startup_s = round(startup_s, 3)
        summary.input_errors = dict(sorted(errors.counts.items()))
        summary.input_error_samples = list(errors.samples)
        summary.manifest = manifest
    finally:
        root_task.cancel()
        await asyncio.gather(root_task, return_exceptions=True)
        if journal is not None:
            await journal.close()
        set_log_clock(None)
    if journal is not None:
        summary.journal_sha256 = await journal_digest(journal.path, clock)
    if errors.total:
        log.warning("replay_input_errors", counts=summary.input_errors, first=str(errors.samples[0].file))
    log.info(
        "session_finished",
        **{
            k: v
            for k, v in msgspec.to_builtins(summary).items()
            if k not in ("data_files", "input_error_samples", "manifest")
        },
    )
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
    risk_report: RiskReport = await bus.request(RISK, RiskReportQuery())
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
        provider_failovers=pricing_stats.counters.get("failovers", 0),
        provider_failbacks=pricing_stats.counters.get("failbacks", 0),
        actor_crashes=crashes,
        journal=str(journal.path) if journal is not None else None,
        trading_state=risk_report.trading_state,
        trading_reason=risk_report.trading_reason,
        recovery=report,
        risk=risk_report,
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
    latency: OrderPathLatency | None = None,
    volume_profile: VolumeProfile | None = None,
) -> SupervisorSpec:
    """The same actors as the replay tree, with Alpaca adapters at the venue boundary.

    ``data_url`` is the stream of ``[venue] data_feed`` (``…/v2/<feed>``), read by the actor
    ``feed``. Each other Alpaca feed ``[pricing.providers]`` names (see :func:`alpaca_feeds`)
    gets its own actor, ``feed-<feed>``, on the sibling URL ``…/v2/<feed>``: pricing can only
    fail over to a provider that something feeds. Trading statuses come from ``feed`` alone,
    so risk hears each halt once, in one provider's order.
    """
    by_symbol = conflate_by(lambda m: m.symbol)
    market_data: dict[type, Policy] = {BestBidOffer: by_symbol}
    rest = RestSettings(rate_per_minute=config.venue.rate_limit_per_minute)
    policy = pricing_policy(config)
    default_feed = config.venue.data_feed
    feeds = [
        _alpaca_feed(FEED, data_url, credentials, symbols, config.venue.data_statuses)
        if feed == default_feed
        else _alpaca_feed(f"{FEED}-{feed}", _sibling_feed_url(data_url, feed), credentials, symbols, False)
        for feed in alpaca_feeds(config)
    ]
    return SupervisorSpec(
        "root",
        [
            order_manager(config, journal, latency),
            *audit(journal),
            settlement(config, journal),
            ActorSpec(VENUE, lambda: AlpacaVenueActor(venue_url, credentials.key_id, credentials.secret_key, rest)),
            risk(config, market_data),
            ActorSpec(STRATEGY, lambda: strategy_actor(config, build_strategy, boot, volume_profile)),
            ActorSpec(PRICING, lambda: PricingActor(policy)),
            *feeds,
        ],
        strategy=SupervisionStrategy.ONE_FOR_ONE,
        max_restarts=5,
        period_s=10.0,
    )


def alpaca_feeds(config: Config) -> list[str]:
    """The Alpaca feeds a live session streams, ``[venue] data_feed`` first, then each other
    one ``[pricing.providers]`` names; a provider there that is not ``alpaca-iex`` or
    ``alpaca-sip`` is a :class:`ConfigError` (nothing could feed it, so its symbol could never
    fail over). Called before anything starts, and again to build the tree."""
    feeds: list[str] = [config.venue.data_feed]
    problems: list[tuple[str, str]] = []
    for symbol, pair in config.pricing.providers.items():
        for provider in pair:
            feed = provider.removeprefix("alpaca-")
            if feed == provider or feed not in ALPACA_FEEDS:
                known = ", ".join(f"alpaca-{f}" for f in ALPACA_FEEDS)
                why = f"unknown provider {provider!r} for Alpaca market data (known: {known})"
                problems.append((f"pricing.providers.{symbol}", why))
            elif feed not in feeds:
                feeds.append(feed)
    if problems:
        raise ConfigError("pricing", problems)
    return feeds


def _sibling_feed_url(data_url: str, feed: str) -> str:
    """``…/v2/iex`` → ``…/v2/<feed>``: the last path segment names the feed (and the provider)."""
    return data_url.rstrip("/").rsplit("/", 1)[0] + f"/{feed}"


def _alpaca_feed(name: str, url: str, credentials: Credentials, symbols: list[str], statuses: bool) -> ActorSpec:
    """One Alpaca feed actor's spec (a function, so each factory closes over its own URL)."""
    return ActorSpec(
        name, lambda: AlpacaFeedActor(url, credentials.key_id, credentials.secret_key, symbols, statuses=statuses)
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
    pipeline_hash = manifest_pipeline_hash(feature_pipeline(config, build_strategy()))
    alpaca_feeds(config)  # a provider nothing can feed is refused before a simulator or journal is opened
    volume_profile = await load_volume_profile(config)
    files = data_files(config)
    symbols = sorted(config.data.symbols) or sorted({symbol_for(f, config.data.symbol) for f in files})
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
                hold_feed=True,  # played once the engine has recovered and subscribed: not a quote lost
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
    latency = OrderPathLatency()
    boot = await count_boot(journal)
    manifest = await start_manifest(
        config, files, strategy_name, boot, clock, journal, mode=config.engine.mode, pipeline_hash=pipeline_hash
    )
    root = Supervisor(
        live_tree(
            config,
            build_strategy,
            venue_url,
            data_url,
            keys,
            symbols,
            journal,
            boot,
            latency=latency,
            volume_profile=volume_profile,
        ),
        bus,
        clock,
        rng,
    )
    # Every session listens for SIGINT/SIGTERM from before anything starts (see _StopSignals):
    # one that plays the embedded recording ends at its end or at the signal, whichever is first.
    stop = _StopSignals()
    log.info(
        "live_session_starting",
        venue=venue_url,
        strategy=strategy_name,
        symbols=symbols,
        embedded=simulator is not None,
    )
    started = perf_ns()
    root_task = asyncio.create_task(root.run(), name="root-supervisor")
    lag = LoopLagMonitor(clock)
    lag_task = asyncio.create_task(lag.run(), name="loop-lag")
    control: ControlServer | None = None
    try:
        await _first_of(asyncio.ensure_future(root.started()), root_task)
        if root_task.done():
            await root_task  # raises why it could not start
        if config.control.enabled:
            probe = EngineProbe(
                bus, root, root_task, clock, lag, latency, journal,
                addresses={
                    "order_manager": ORDER_MANAGER, "risk": RISK, "pricing": PRICING, "venue": VENUE,
                    "settlement": SETTLEMENT,
                },
                info={"version": VERSION, "mode": config.engine.mode, "run_id": config.engine.run_id},
            )  # fmt: skip
            routes = {**public_routes(probe), **dashboard_routes(probe, config.risk)}
            control = await start_control(config, bus, clock, routes)
            announce_dashboard(control.url, embedded=simulator is not None)
        report = await recover(bus, root_task, options.recovery_timeout_s)
        freeze_startup_heap()
        if simulator is not None and simulator.player is not None:
            simulator.start_feed()
        signalled = asyncio.ensure_future(stop.requested.wait())
        if simulator is not None and simulator.player is not None:
            played = asyncio.ensure_future(simulator.player.done.wait())
            either = asyncio.ensure_future(asyncio.wait([played, signalled], return_when=asyncio.FIRST_COMPLETED))
            await _first_of(either, root_task)
            for waiter in (played, signalled):
                waiter.cancel()
            if not stop.requested.is_set():
                await _drain(bus, options.drain_timeout_s, root_task)
        else:
            await _first_of(signalled, root_task)
        if root_task.done():
            await root_task  # raises why the engine stopped
        wall_s = (perf_ns() - started) / NS_PER_S
        pricing: ActorStats = await bus.request(PRICING, StatsQuery())
        ticks = pricing.counters.get("quotes", 0) + pricing.counters.get("trades", 0)
        result = ReplayResult(ticks, None, clock.time_ns())
        summary = await _summarise(
            bus, root, config, strategy_name, files, result, wall_s, config.engine.mode, report=report, journal=journal
        )
        summary.loop_lag = lag.snapshot()
        summary.manifest = manifest
    finally:
        lag_task.cancel()
        stop.remove()
        if control is not None:
            await stop_control(control, config)
        root_task.cancel()
        await asyncio.gather(root_task, return_exceptions=True)
        if journal is not None:
            await journal.close()
        if simulator is not None:
            await simulator.stop()
    log.info("live_session_finished", ticks=summary.ticks, orders=summary.orders, fills=summary.fills)
    return summary


def freeze_startup_heap() -> None:
    """Move everything alive after start-up out of the cyclic GC's sight (``gc.freeze``).

    Start-up leaves ~100k long-lived objects (pandas and the exchange calendars, the
    recovered book, the actors). A full collection walks them all: about 20-70 ms on this
    hardware, and CPython starts one whenever enough objects have survived into the oldest
    generation, so a busy engine stalled its event loop that long about once a minute
    (``kestrel load``: 50-140 ms windows, 60 s apart). Frozen, they are never scanned;
    what is allocated later is collected as before. Collected first, so no garbage is kept.
    """
    gc.collect()
    gc.freeze()
    get_logger(actor="node").info("startup_heap_frozen", objects=gc.get_freeze_count())


# ---------------------------------------------------------------- operator control channel


async def start_control(
    config: Config, bus: Bus, clock: LiveClock, public: Mapping[str, Handler] | None = None
) -> ControlServer:
    """The engine's HTTP server: ``kestrel halt|resume|flatten`` (commands go to risk as
    requests, behind a token) and the read-only ``public`` routes (``/metrics``,
    ``/healthz``, ``/readyz``).

    A fresh token per session, in the control file (mode 0600) next to the URL; the file
    is removed when the session ends.
    """
    section = config.control

    async def dispatch(command: OperatorCommand) -> OperatorReply:
        reply: OperatorReply = await bus.request(RISK, command)
        return reply

    async def state() -> dict[str, Any]:
        stats: ActorStats = await bus.request(RISK, StatsQuery())
        return msgspec.to_builtins(stats)  # type: ignore[no-any-return]

    token = generate_token()
    server = ControlServer(dispatch, token, clock.time_ns, section.host, section.port, state, public=public)
    await server.start()
    await asyncio.to_thread(write_control_file, Path(section.file), server.url, token, os.getpid())
    get_logger(actor="node").info("control_channel_listening", url=server.url, file=section.file)
    return server


async def stop_control(server: ControlServer, config: Config) -> None:
    await server.stop()
    await asyncio.to_thread(remove_control_file, Path(config.control.file))


# ---------------------------------------------------------------- recording


@dataclass(frozen=True)
class RecordPlan:
    provider: str
    """``binance`` or ``alpaca``."""
    symbols: list[str] | None
    out: Path
    rotate_bytes: int | None = None
    rotate_s: float | None = None
    duration_s: float | None = None
    """None: until SIGINT / SIGTERM."""
    url: str | None = None


class RecordResult(msgspec.Struct, kw_only=True):
    """What ``kestrel record`` prints when it stops."""

    provider: str
    frames: int
    written: int
    dropped: int
    files: list[str]
    bytes: int
    wall_s: float


class MarketDataClient(Protocol):
    async def run(self) -> None: ...

    async def stop(self) -> None: ...


FrameHook = Callable[[int, str, bytes | str], None]


def _frame_hook(writer: RecordingWriter) -> FrameHook:
    """The ``on_frame`` hook a live market-data client calls with every frame it receives.

    Binance sends only text frames: a client handing them over as bytes still gets them
    recorded as text (readable, and replayed as the text they were).
    """

    def on_frame(ts_recv_ns: int, provider: str, raw: bytes | str) -> None:
        if isinstance(raw, bytes) and provider.startswith("binance"):
            with contextlib.suppress(UnicodeDecodeError):  # not text after all: recorded as binary, byte for byte
                raw = raw.decode()
        writer.offer(ts_recv_ns, provider, raw)

    return on_frame


def market_data_client(plan: RecordPlan, clock: LiveClock, on_frame: FrameHook) -> MarketDataClient:
    """The live client of ``plan.provider`` with its raw-frame hook wired to the recorder."""
    if plan.provider == "alpaca":
        # AlpacaDataStream has the on_frame hook; the recorder does not yet load credentials or
        # derive the data stream URL, so this is refused rather than half done.
        raise UserError("kestrel record --provider alpaca is not wired yet (record Binance; Alpaca recordings replay)")
    # Imported here: replaying or trading on Alpaca must not depend on the Binance client.
    from adapters.binance.stream import BinanceMarketData

    async def discard(_: object) -> None:
        """The recorder wants frames, not decoded messages."""

    kwargs: dict[str, Any] = {"on_frame": on_frame}
    if plan.url is not None:
        kwargs["base_ws"] = plan.url
    return BinanceMarketData(plan.symbols or ["BTCUSDT"], clock, random.Random(), discard, **kwargs)


async def run_recorder(plan: RecordPlan, client_factory: Callable[..., MarketDataClient] | None = None) -> RecordResult:
    """Record every frame the live client receives until ``duration_s`` or a signal; return the totals."""
    log = get_logger(actor="recorder")
    clock = LiveClock()
    await asyncio.to_thread(plan.out.mkdir, parents=True, exist_ok=True)
    writer = RecordingWriter(
        plan.out, clock, prefix=plan.provider, rotate_bytes=plan.rotate_bytes, rotate_s=plan.rotate_s
    )
    client = (client_factory or market_data_client)(plan, clock, _frame_hook(writer))
    stop = _StopSignals()
    started = perf_ns()
    log.info("recording_started", provider=plan.provider, out=str(plan.out), symbols=plan.symbols)
    client_task = asyncio.create_task(client.run(), name="recorder-client")
    try:
        stopper = asyncio.ensure_future(stop.requested.wait())
        await asyncio.wait([stopper, client_task], timeout=plan.duration_s, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        await client.stop()
        if client_task.done():
            await client_task  # a permanent refusal (bad keys …) is the user's to see
    finally:
        stop.remove()
        client_task.cancel()
        await asyncio.gather(client_task, return_exceptions=True)
        await writer.close()
    stats = writer.stats
    result = RecordResult(
        provider=plan.provider,
        frames=stats.frames,
        written=stats.written,
        dropped=stats.dropped,
        files=[str(p) for p in writer.paths],
        bytes=stats.bytes,
        wall_s=round((perf_ns() - started) / NS_PER_S, 3),
    )
    log.info("recording_finished", **msgspec.to_builtins(result))
    return result


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
