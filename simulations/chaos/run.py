"""One chaos run: the venue simulator in this process, the engine in child processes.

The simulator runs on this process's event loop so its fault hooks can be pulled
directly; every engine is a real ``kestrel run --venue-url`` child on a shared journal,
talking to the simulator over sockets on 127.0.0.1, so ``kill -9`` is a real kill.

A run goes:

1. draw the schedule (:func:`~simulations.chaos.schedule.draw_schedule`);
2. start the simulator on a seeded session, and the first engine with the schedule's
   engine-side faults in its environment;
3. for ``duration_s``: inject each timed fault when due; an engine that dies (by the run's
   own ``kill -9``, a crash point, or after a journal fault) is replaced at once by a clean
   one on the same journal, as a process supervisor would;
4. faults stop: every hook is reset and the engine restarted clean; it must recover,
   reconcile and trade again within ``converge_timeout_s`` (if recovery keeps a halt
   an injected journal failure caused, the run resumes it as an operator would, through
   the control channel);
5. stop it, let the venue finish our orders, start an audit engine that cannot trade (so
   the journal learns what the venue did last) and stop it;
6. check the invariants (:mod:`simulations.chaos.invariants`).
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from adapters.alpaca_sim.cli import RunningSimulator, SimulatorConfig, start_simulator
from engine.clock import LiveClock
from simulations.chaos.invariants import Violation, check_books, read_journal
from simulations.chaos.schedule import Fault, FaultKind, Schedule, draw_schedule
from simulations.engine_config import PRIMARY_FEED, write_engine_config
from simulations.engine_process import EngineKeys, EngineProcess
from simulations.journal_probe import journal_max_seq, traded_since
from simulations.lean_feed import chaos_session

__all__ = ["RunResult", "run_one"]

KEY_ID: Final = "PKCHAOSTEST00001"
SECRET_KEY: Final = "chaos-secret-0001"
RUN_ID: Final = "chaos"
PREFIX: Final = f"{RUN_ID}-"
QTY: Final = 500
_CLOCK: Final = LiveClock()
"""The orchestrator's waits are real time (the engines and the simulator live on it too)."""
SPEED: Final = 1.5
"""Simulator replay speed: about 15 quotes a second, an order a second from the engine."""


@dataclass
class RunResult:
    seed: int
    scenario: str
    schedule: list[str]
    faults_injected: Counter[str] = field(default_factory=Counter)
    violations: list[Violation] = field(default_factory=list)
    engines: int = 0
    orders: int = 0
    fills: int = 0
    converged_s: float | None = None
    wall_s: float = 0.0

    @property
    def repro(self) -> str:
        return f"kestrel chaos --seed {self.seed} --scenario {self.scenario} --runs 1"


class ChaosRun:
    def __init__(self, schedule: Schedule, workdir: Path, converge_timeout_s: float) -> None:
        self.schedule = schedule
        self.workdir = workdir
        self.journal = workdir / "journal.db"
        self.converge_timeout_s = converge_timeout_s
        self.result = RunResult(schedule.seed, schedule.scenario, [f.describe() for f in schedule.faults])
        self.engines: list[EngineProcess] = []
        self.sim: RunningSimulator | None = None
        # Every engine streams both feeds with IBM on iex, failing over to sip (see
        # simulations/engine_config.py): provider_silent needs it, and every other fault hits two feeds.
        self.trade_config = write_engine_config(workdir / "trade.toml", run_id=RUN_ID, qty=QTY, failover=True)
        self.audit_config = write_engine_config(
            workdir / "audit.toml", run_id=RUN_ID, qty=QTY, trade=False, failover=True
        )
        self._restore: list[asyncio.TimerHandle] = []

    def violation(self, invariant: str, detail: str) -> None:
        self.result.violations.append(Violation(invariant, detail))

    async def start_engine(self, config: Path, env: dict[str, str] | None = None) -> EngineProcess:
        assert self.sim is not None
        name = f"engine-{len(self.engines) + 1}"
        engine = await EngineProcess.start(
            name, self.workdir, self.sim.url, self.journal, config, EngineKeys(KEY_ID, SECRET_KEY), env or {}
        )
        self.engines.append(engine)
        return engine

    async def run(self) -> RunResult:
        loop = asyncio.get_running_loop()
        began = loop.time()
        feed = chaos_session(self.workdir / "feed", self.schedule.seed)
        config = SimulatorConfig(
            feed_files=feed, speed=SPEED, seed=self.schedule.seed, key_id=KEY_ID, secret_key=SECRET_KEY
        )
        self.sim = await start_simulator(config, LiveClock())
        try:
            await self._faulty_phase()
            await self._converge()
            await self._audit()
        finally:
            for engine in self.engines:
                await engine.kill()
            for handle in self._restore:
                handle.cancel()
            await self.sim.stop()
        self.result.faults_injected.update(self.sim.faults.injected)
        for engine in self.engines:
            for event in await asyncio.to_thread(engine.events):
                name = event.get("event")
                if name == "fault_injected":
                    self.result.faults_injected[str(event.get("kind"))] += 1
                elif name == "supervisor_gave_up":
                    self.violation("restarts_within_budget", f"{engine.name}: {event.get('error', event)}")
        facts = await read_journal(self.journal)
        self.result.violations.extend(check_books(facts, self.sim.state, PREFIX, Decimal(QTY)))
        self.result.engines = len(self.engines)
        self.result.orders = len(facts.submitted)
        self.result.fills = len(facts.fills)
        self.result.wall_s = round(loop.time() - began, 2)
        return self.result

    # ------------------------------------------------------------ phases

    async def _faulty_phase(self) -> None:
        loop = asyncio.get_running_loop()
        engine = await self.start_engine(self.trade_config, self.schedule.engine_env)
        started = loop.time()
        pending = self.schedule.timed
        while (elapsed := loop.time() - started) < self.schedule.duration_s:
            while pending and pending[0].at_s <= elapsed:
                fault = pending.pop(0)
                engine = await self._inject(fault, engine)
            if not engine.running:
                await self._check_death(engine)
                engine = await self.start_engine(self.trade_config)
            await _CLOCK.sleep(0.05)
        for fault in pending:  # a slow start can leave the last ones unfired: fire them now
            engine = await self._inject(fault, engine)
        self._reset_faults()
        if engine.running:
            code = await engine.terminate()
            # A replacement still importing Python modules when SIGTERM comes dies by the default
            # action before it has opened anything (no log line yet): that is a clean stop, not
            # a failure (the soak's seeds 1602, 1653, 1686). Anything later must exit 0.
            still_importing = code == -signal.SIGTERM and not await asyncio.to_thread(engine.events)
            if code != 0 and not engine.armed and not still_importing:
                self.violation("restarts_within_budget", f"SIGTERM after the faults: {engine.describe()}")
        else:
            await self._check_death(engine)

    async def _check_death(self, engine: EngineProcess) -> None:
        code = await engine.proc.wait()
        if engine.killed_by_us:
            return
        if code == -signal.SIGKILL:
            self.result.faults_injected[FaultKind.CRASH_POINT.value] += 1  # the armed point fired
            return
        if engine.armed and code != 0:
            return  # an injected journal failure may stop it: the next engine must recover
        self.violation("restarts_within_budget", f"engine exited by itself: {engine.describe()}")

    async def _inject(self, fault: Fault, engine: EngineProcess) -> EngineProcess:
        sim = self.sim
        assert sim is not None
        faults = sim.faults
        kind, amount = fault.kind, fault.amount
        count = max(1, int(amount))
        if kind is FaultKind.KILL_9:
            await engine.kill()
            self.result.faults_injected[kind.value] += 1
            return await self.start_engine(self.trade_config)
        if kind is FaultKind.TRADE_STREAM_DROP:
            await faults.disconnect_streams()
        elif kind is FaultKind.FEED_DROP:
            await faults.disconnect_market_data()
        elif kind is FaultKind.STREAM_STALL:
            faults.stall_streams(amount)
        elif kind is FaultKind.SLOW_RESPONSES:
            faults.delay_response_s = amount
            self._later(min(amount * 3, 4.0), lambda: setattr(faults, "delay_response_s", 0.0))
        elif kind is FaultKind.HTTP_429:
            faults.fail_next.extend([429] * count)
        elif kind is FaultKind.HTTP_5XX:
            faults.fail_next.extend([(500, 502, 503)[i % 3] for i in range(count)])
        elif kind is FaultKind.SUBMIT_REPLY_LOST:
            faults.drop_submit_response_next += count
        elif kind is FaultKind.MD_DUPLICATE:
            faults.md_duplicate_next += count
        elif kind is FaultKind.MD_GAP:
            faults.md_drop_next += count
        elif kind is FaultKind.MD_REORDER:
            faults.md_reorder_next += count
        elif kind is FaultKind.UPDATE_DUPLICATE:
            faults.duplicate_trade_updates_next += count
        elif kind is FaultKind.UPDATE_REORDER:
            faults.reorder_trade_updates_next += count
        elif kind is FaultKind.LATE_FILL_AFTER_CANCEL:
            faults.late_fill_after_cancel_next += count
        elif kind is FaultKind.FILLS_WHILE_DISCONNECTED:
            # Updates stop reaching the engine; then its socket drops and they are gone for
            # good: only reconciliation over REST can tell it what filled meanwhile.
            faults.hold_trade_updates = True
            self._later(amount, lambda: asyncio.ensure_future(self._drop_held()))
        elif kind is FaultKind.SIMULATOR_RESTART:
            await sim.restart_server()
        elif kind is FaultKind.PROVIDER_SILENT:
            # The engines' primary provider goes quiet (its socket stays up): prices must
            # come from the secondary meanwhile, and from the primary again after it.
            faults.silence_feed(PRIMARY_FEED, amount)
        else:
            raise AssertionError(f"{kind} is armed in the engine's environment, not injected")
        return engine

    async def _drop_held(self) -> None:
        assert self.sim is not None
        faults = self.sim.faults
        await faults.disconnect_streams()
        faults.discard_held_trade_updates()
        faults.hold_trade_updates = False

    def _later(self, delay_s: float, callback: Any) -> None:
        self._restore.append(asyncio.get_running_loop().call_later(delay_s, callback))

    def _reset_faults(self) -> None:
        assert self.sim is not None
        for handle in self._restore:
            handle.cancel()
        self._restore.clear()
        self.sim.faults.reset()

    async def _converge(self) -> None:
        """Faults have stopped: a clean engine must recover, reconcile and trade again.

        (A halt an injected journal failure causes is not journaled, since the journal is
        what failed, so recovery does not keep it: the clean engine trades without an operator.)
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        after = await asyncio.to_thread(journal_max_seq, self.journal)
        engine = await self.start_engine(self.trade_config)
        deadline = started + self.converge_timeout_s
        while await asyncio.to_thread(traded_since, self.journal, after) < 1:
            if not engine.running:
                self.violation("converged", f"the engine died while converging: {engine.describe()}")
                return
            if loop.time() > deadline:
                self.violation("converged", f"not trading {self.converge_timeout_s} s after the faults stopped: "
                               f"{engine.describe()}")
                await engine.terminate()
                return
            await _CLOCK.sleep(0.1)
        self.result.converged_s = round(loop.time() - started, 2)
        code = await engine.terminate()
        if code != 0:
            self.violation("restarts_within_budget", f"SIGTERM after converging: {engine.describe()}")

    async def _audit(self) -> None:
        """Let the venue finish our orders, then let a non-trading engine recover what it did."""
        assert self.sim is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20.0
        state = self.sim.state
        while any(o.client_order_id.startswith(PREFIX) for o in state.list_orders(status="open", limit=10_000)):
            if loop.time() > deadline:
                break
            await _CLOCK.sleep(0.1)
        engine = await self.start_engine(self.audit_config)
        deadline = loop.time() + 30.0
        while not await engine.has_event("recovery_finished"):
            if not engine.running or loop.time() > deadline:
                self.violation("converged", f"the audit engine did not recover: {engine.describe()}")
                await engine.kill()
                return
            await _CLOCK.sleep(0.1)
        finished = [e for e in engine.events() if e.get("event") == "recovery_finished"][-1]
        if finished.get("mismatches"):
            self.violation("books_agree", f"recovery found journal and venue apart: {finished.get('mismatches')}")
        code = await engine.terminate()
        if code != 0:
            self.violation("restarts_within_budget", f"the audit engine's SIGTERM: {engine.describe()}")


async def run_one(
    seed: int, scenario: str, duration_s: float, workdir: Path, *, converge_timeout_s: float = 30.0
) -> RunResult:
    """Run seed ``seed`` of ``scenario`` in ``workdir`` (created); the result, violations included."""
    await asyncio.to_thread(workdir.mkdir, parents=True, exist_ok=True)
    schedule = draw_schedule(seed, scenario, duration_s)
    return await ChaosRun(schedule, workdir, converge_timeout_s).run()
