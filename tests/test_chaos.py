"""``kestrel chaos``: schedules are a function of the seed, and the invariant checks catch
what they claim to catch — shown by planting a duplicate fill, a resent intent and an
order sent while halted into the journal of a real run and watching each one flagged."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from adapters.alpaca_sim.state import VenueSettings, VenueState
from engine.clock import LiveClock
from engine.journal import Journal
from engine.messages import OrderSubmitting, TradingState, TradingStateChanged
from simulations.chaos.invariants import STREAM_DOWN_GRACE_S, check_books, read_journal
from simulations.chaos.run import PREFIX, QTY, ChaosRun
from simulations.chaos.schedule import ENGINE_ENV_KINDS, SCENARIOS, FaultKind, draw_schedule

CLI = [sys.executable, "-m", "kestrel.cli"]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_schedule_is_a_function_of_seed_and_scenario(scenario: str) -> None:
    first = draw_schedule(7, scenario, 8.0)
    assert first == draw_schedule(7, scenario, 8.0)
    assert {f.kind for f in first.faults} <= set(SCENARIOS[scenario])
    assert 1 <= len(first.faults) <= 6
    assert all(0 <= f.at_s <= 8.0 for f in first.faults)
    others = {draw_schedule(seed, scenario, 8.0).faults for seed in range(40)}
    assert len(others) > 10  # seeds give different schedules


def test_engine_side_faults_go_to_the_first_engines_environment() -> None:
    seen_env = seen_timed = False
    for seed in range(200):
        schedule = draw_schedule(seed, "everything", 8.0)
        env = schedule.engine_env
        kinds = {f.kind for f in schedule.faults}
        assert ("KESTREL_CRASH_AT" in env) == (FaultKind.CRASH_POINT in kinds)
        journal = kinds & {FaultKind.DISK_FULL, FaultKind.JOURNAL_IO_ERROR, FaultKind.CLOCK_JUMP}
        assert ("KESTREL_FAULTS" in env) == bool(journal)
        assert all(f.kind not in ENGINE_ENV_KINDS for f in schedule.timed)
        seen_env |= bool(env)
        seen_timed |= bool(schedule.timed)
    assert seen_env and seen_timed


async def test_the_checks_flag_a_duplicate_fill_a_resent_intent_and_an_order_sent_while_halted(
    tmp_path: Path,
) -> None:
    run = ChaosRun(draw_schedule(3, "kill-9", 4.0), tmp_path, converge_timeout_s=30.0)
    result = await run.run()
    assert result.violations == [], result.violations
    assert result.orders > 0 and result.fills > 0
    assert run.sim is not None
    venue = run.sim.state
    assert check_books(await read_journal(run.journal), venue, PREFIX, Decimal(QTY)) == []

    facts = await read_journal(run.journal)
    fill = facts.fills[0]
    sent = facts.submitted[0]
    async with await Journal.open(run.journal, LiveClock()) as journal:
        await journal.write(fill)  # booked twice
        await journal.write(TradingStateChanged(state=TradingState.HALTED, reason="x", cause="operator", ts_init=0))
        resent = msgspec.structs.replace(sent.order, client_order_id=f"{PREFIX}999999")
        await journal.write(OrderSubmitting(order=resent, strategy=sent.strategy, sequence=999_999, ts_init=0))
    found = check_books(await read_journal(run.journal), venue, PREFIX, Decimal(QTY))
    by_invariant = {v.invariant for v in found}
    assert by_invariant >= {"fills_recorded_once", "books_agree", "one_venue_order_per_intent", "no_order_while_halted"}
    details = " ".join(v.detail for v in found)
    assert fill.execution_id in details and sent.order.intent_id in details


def test_usage_errors_exit_2() -> None:
    for args in (["--runs", "0"], ["--scenario", "nope"], ["--duration", "-1"]):
        done = subprocess.run([*CLI, "chaos", *args], capture_output=True, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert b"chaos" in done.stderr


async def test_an_order_accepted_long_after_the_stream_dropped_is_a_violation(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    async with await Journal.open(path, LiveClock()):
        pass  # an empty journal: only the venue's facts matter here
    venue = VenueState(VenueSettings(), LiveClock())
    venue.accepted_without_stream = {f"{PREFIX}000001": STREAM_DOWN_GRACE_S / 2, f"{PREFIX}000002": 3.0, "x-9": 9.0}
    checked = check_books(await read_journal(path), venue, PREFIX, Decimal(QTY))
    found = [v for v in checked if v.invariant == "no_order_while_stream_down"]
    assert len(found) == 1
    assert f"{PREFIX}000002" in found[0].detail
