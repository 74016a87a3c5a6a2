"""In-engine fault injection (``KESTREL_FAULTS``, :mod:`engine.faults`): parsing, the journal
hook on a real SQLite journal, a real ``kestrel run`` whose disk "fills up", and the clock jump."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine import clock as clock_module
from engine import faults
from engine.clock import NS_PER_S, LiveClock, SimClock
from engine.errors import ConfigError
from engine.journal import Journal, JournalWriteFailed
from engine.logs import configure_logging
from engine.messages import RiskRejected
from tests.crash_harness import (
    CLI,
    Engine,
    Session,
    Transcript,
    base_env,
    journal_cli,
    session,
    write_config,
)

T0 = 1_700_000_000 * NS_PER_S


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    configure_logging(None)
    faults.disarm()
    faults.injected.clear()
    yield
    faults.disarm()
    faults.injected.clear()
    configure_logging(None)


def log_events(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def record(i: int) -> RiskRejected:
    return RiskRejected(intent_id=f"i{i}", strategy="s", symbol="X", reason="R", detail=str(i), inputs={}, ts_init=T0)


# ---------------------------------------------------------------- (a) parsing and validation


def test_a_full_spec_parses_into_a_frozen_struct() -> None:
    spec = faults.parse(
        '{"journal_error_at_commit": 40, "journal_error": "io_error", "journal_error_repeat": true,'
        ' "clock_jump_s": -3600, "clock_jump_after_s": 5}'
    )
    assert spec == faults.Faults(
        journal_error_at_commit=40,
        journal_error="io_error",
        journal_error_repeat=True,
        clock_jump_s=-3600.0,
        clock_jump_after_s=5.0,
    )
    with pytest.raises(AttributeError):
        spec.journal_error_at_commit = 1  # type: ignore[misc]
    assert faults.parse('{"journal_error_at_commit": 1}') == faults.Faults(journal_error_at_commit=1)
    assert faults.parse('{"clock_jump_s": 0.5}') == faults.Faults(clock_jump_s=0.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("journal_error_at_commit=4", "KESTREL_FAULTS: not valid JSON"),
        ('{"journal_error_at_commit": NaN}', "KESTREL_FAULTS: not valid JSON"),
        ("[40]", "KESTREL_FAULTS: expected a JSON object"),
        ("{}", "KESTREL_FAULTS: names no fault"),
        (
            '{"journal_error_at": 4}',
            "KESTREL_FAULTS: journal_error_at: unknown fault key (known: journal_error_at_commit",
        ),
        ('{"journal_error_at_commit": 0}', "journal_error_at_commit: expected a commit number >= 1, got 0"),
        ('{"journal_error_at_commit": "4"}', "journal_error_at_commit: expected a commit number >= 1, got '4'"),
        ('{"journal_error_at_commit": true}', "journal_error_at_commit: expected a commit number >= 1, got True"),
        ('{"journal_error_at_commit": 2.5}', "journal_error_at_commit: expected a commit number >= 1, got 2.5"),
        (
            '{"journal_error_at_commit": 4, "journal_error": "full"}',
            "journal_error: expected one of disk_full, io_error, got 'full'",
        ),
        ('{"journal_error_at_commit": 4, "journal_error": ["x"]}', "journal_error: expected one of disk_full"),
        ('{"journal_error_at_commit": 4, "journal_error_repeat": 1}', "journal_error_repeat: expected true or false"),
        ('{"journal_error": "disk_full"}', "journal_error: needs journal_error_at_commit"),
        ('{"journal_error_repeat": true}', "journal_error_repeat: needs journal_error_at_commit"),
        ('{"clock_jump_s": 0}', "clock_jump_s: a jump of 0 s injects nothing"),
        ('{"clock_jump_s": "1h"}', "clock_jump_s: expected a number of seconds, got '1h'"),
        ('{"clock_jump_s": 60, "clock_jump_after_s": -1}', "clock_jump_after_s: must be >= 0, got -1"),
        ('{"clock_jump_after_s": 5}', "clock_jump_after_s: needs clock_jump_s"),
    ],
)
def test_bad_specs_are_config_errors_that_say_what_is_wrong(text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"^KESTREL_FAULTS: ") as caught:
        faults.parse(text)
    assert expected in str(caught.value), str(caught.value)
    assert faults.armed() is None


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        faults.parse('{"journal_error_at_commit": 0, "journal_error": "x", "bogus": 1, "clock_jump_s": 0}')
    keys = [key for key, _ in caught.value.problems]
    assert keys == ["bogus", "journal_error_at_commit", "journal_error", "clock_jump_s"], caught.value.problems


def test_arm_from_env_arms_only_when_set_and_logs_it(tmp_path: Path) -> None:
    assert faults.arm_from_env({}) is None
    assert faults.arm_from_env({"KESTREL_FAULTS": "  "}) is None
    assert faults.armed() is None and clock_module._wall_skew is None
    with pytest.raises(ConfigError):
        faults.arm_from_env({"KESTREL_FAULTS": '{"journal_error_at_commit": -1}'})
    assert faults.armed() is None
    configure_logging(tmp_path / "log.jsonl")
    armed = faults.arm_from_env({"KESTREL_FAULTS": '{"journal_error_at_commit": 3}'})
    assert armed == faults.Faults(journal_error_at_commit=3) == faults.armed()
    assert clock_module._wall_skew is None  # no clock jump armed: the clock's hook stays off
    [event] = [e for e in log_events(tmp_path / "log.jsonl") if e["event"] == "faults_armed"]
    assert event["level"] == "warning" and event["journal_error_at_commit"] == 3


def test_the_cli_refuses_a_bad_spec_before_it_starts(tmp_path: Path) -> None:
    config = write_config(tmp_path / "engine.toml")
    env = base_env() | {"KESTREL_FAULTS": '{"journal_error_at_commit": 0}'}
    done = subprocess.run(
        [
            *CLI,
            "run",
            "--venue-url",
            "http://127.0.0.1:9",
            "--journal",
            str(tmp_path / "j.db"),
            "--config",
            str(config),
        ],
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert done.returncode != 0
    assert b"KESTREL_FAULTS: journal_error_at_commit: expected a commit number >= 1, got 0" in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr
    assert not (tmp_path / "j.db").exists()


# ---------------------------------------------------------------- (b) the journal hook, on a real journal


@pytest.mark.parametrize(
    ("kind", "message", "code"), [("disk_full", "database or disk is full", 13), ("io_error", "disk I/O error", 10)]
)
async def test_the_nth_commit_fails_and_earlier_ones_are_durable(
    tmp_path: Path, kind: str, message: str, code: int
) -> None:
    path = tmp_path / "journal.sqlite"
    log = tmp_path / "log.jsonl"
    configure_logging(log)
    clock = SimClock(T0)
    faults.arm(faults.Faults(journal_error_at_commit=4, journal_error=kind))
    journal = await Journal.open(path, clock)
    await journal.write_meta("boots", "1")  # not an event group: not counted
    assert [await journal.write(record(i)) for i in range(1, 4)] == [1, 2, 3]
    with pytest.raises(JournalWriteFailed, match=message) as caught:
        await journal.write(record(4))
    assert f"{path}: writing events 4..4 failed (OperationalError: {message})" in str(caught.value)
    assert "(committed up to seq 3)" in str(caught.value)
    cause = caught.value.__cause__
    assert isinstance(cause, sqlite3.OperationalError) and cause.sqlite_errorcode == code
    assert journal.failed and journal.committed_seq == 3
    with pytest.raises(JournalWriteFailed, match=message):  # sticky, as for a real full disk
        await journal.write(record(5))
    await journal.close()
    assert faults.injected == {"journal_error": 1}
    [event] = [e for e in log_events(log) if e["event"] == "fault_injected"]
    assert (event["level"], event["kind"], event["error"], event["commit"]) == ("warning", "journal_error", kind, 4)

    faults.disarm()
    async with await Journal.open(path, clock) as reopened:
        assert [(e.seq, e.record) for e in [e async for e in reopened.read()]] == [(i, record(i)) for i in (1, 2, 3)]
        assert await reopened.read_meta("boots") == "1"


async def test_commits_are_counted_per_group_not_per_row(tmp_path: Path) -> None:
    faults.arm(faults.Faults(journal_error_at_commit=2))
    journal = await Journal.open(tmp_path / "journal.sqlite", SimClock(T0))
    # One loop turn: the first row goes alone (commit 1), the other four together (commit 2).
    results = await asyncio.gather(*(journal.append(record(i)) for i in range(1, 6)), return_exceptions=True)
    assert results[0] == 1
    assert all(isinstance(r, JournalWriteFailed) and "writing events 2..5" in str(r) for r in results[1:]), results
    await journal.close()


@pytest.mark.parametrize("repeat", [False, True])
async def test_repeat_keeps_the_disk_full_for_journals_opened_later(tmp_path: Path, repeat: bool) -> None:
    """Within one journal a failure is sticky either way (it attempts no further commit);
    ``journal_error_repeat`` shows only in a journal opened later in the same process."""
    path = tmp_path / "journal.sqlite"
    faults.arm(faults.Faults(journal_error_at_commit=1, journal_error_repeat=repeat))
    first = await Journal.open(path, SimClock(T0))
    with pytest.raises(JournalWriteFailed):
        await first.write(record(1))
    with pytest.raises(JournalWriteFailed):
        await first.write(record(2))
    await first.close()
    assert faults.injected["journal_error"] == 1  # the failed journal attempted no second commit
    async with await Journal.open(path, SimClock(T0)) as second:
        if repeat:
            with pytest.raises(JournalWriteFailed, match="database or disk is full"):
                await second.write(record(1))
        else:
            assert await second.write(record(1)) == 1
    assert faults.injected["journal_error"] == (2 if repeat else 1)


async def test_unarmed_journals_never_fail(tmp_path: Path) -> None:
    async with await Journal.open(tmp_path / "journal.sqlite", SimClock(T0)) as journal:
        for i in range(1, 30):
            assert await journal.write(record(i)) == i
    assert not faults.injected


# ---------------------------------------------------------------- (c) a real engine whose disk fills up


class FaultyEngine(Engine):
    """:class:`tests.crash_harness.Engine`, started with ``KESTREL_FAULTS`` in its environment."""

    def __init__(self, s: Session, config: Path, spec: dict[str, Any], say: Transcript) -> None:
        self.name = f"engine-{len(s.engines) + 1}"
        self.crash_at = None
        self.say = say
        self.log_path = s.workdir / f"{self.name}.jsonl"
        self.stdout_path = s.workdir / f"{self.name}.stdout"
        self.stderr_path = s.workdir / f"{self.name}.stderr"
        env = base_env() | {faults.ENV_VAR: json.dumps(spec)}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    *CLI,
                    "run",
                    "--venue-url",
                    s.venue.url,
                    "--journal",
                    str(s.journal),
                    "--config",
                    str(config),
                    "--log",
                    str(self.log_path),
                    "--json",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
            )
        self.started_at = time.monotonic()
        s.engines.append(self)  # the session kills it if the test fails
        say(f"{self.name}: pid {self.proc.pid} started with {faults.ENV_VAR}={json.dumps(spec)}")


def test_a_full_disk_halts_a_live_engine_and_nothing_is_sent_after_it(tmp_path: Path) -> None:
    """Commit 10 fails: by then recovery (2 events) and the first order (submitting, updates,
    fills) are durable, so the failing commit is on the order path with trading under way.
    Observed: the engine does not exit; it halts trading (not journaled: the journal is what
    failed), refuses every later intent, and on SIGTERM exits 0 with ``trading_state`` halted."""
    say = Transcript("full-disk")
    nth = 10
    try:
        with session(tmp_path, say) as s:
            engine = FaultyEngine(s, write_config(tmp_path / "engine.toml"), {"journal_error_at_commit": nth}, say)
            engine.wait_until("the injected journal failure", lambda: engine.has_event("fault_injected"), 15.0)
            say(f"journal failure injected after {time.monotonic() - engine.started_at:.1f} s")
            # Let the strategy keep signalling for a while: nothing may reach the venue now.
            time.sleep(2.0)
            assert engine.proc.poll() is None, f"the engine exited: {engine.describe()}"
            summary = engine.terminate()
            events = engine.events()
            venue_ids = {o["client_order_id"] for o in s.venue.orders()}
            journaled = journal_cli("show", s.journal)

        injected = [e for e in events if e["event"] == "fault_injected"]
        assert [(e["kind"], e["error"], e["commit"]) for e in injected] == [("journal_error", "disk_full", nth)]
        [failure] = [e for e in events if e["event"] == "journal_write_failed"]
        assert "database or disk is full" in failure["error"]
        assert any(e["event"] == "journal_failed_order_path_stopped" for e in events)
        halted = [e for e in events if e["event"] == "trading_state_changed" and e.get("new") == "halted"]
        assert halted and "journal write failed" in halted[0]["reason"] and "disk is full" in halted[0]["reason"]
        assert summary["trading_state"] == "halted", summary
        assert "database or disk is full" in summary["trading_reason"]
        # Everything up to the failing commit is on disk (commits 1..nth-1, a row or more each); nothing after it.
        assert [e["seq"] for e in journaled] == list(range(1, failure["committed_seq"] + 1))
        assert failure["committed_seq"] >= nth - 1
        # Write-ahead held: every order the venue saw was journaled before it was sent (so
        # before the failure); the order whose OrderSubmitting failed was never sent.
        journal_ids = {e["record"]["order"]["client_order_id"] for e in journaled if e["kind"] == "OrderSubmitting"}
        assert journal_ids, "the engine failed before it had traded"
        assert venue_ids == journal_ids, (venue_ids, journal_ids)
        assert summary["orders"] == len(journal_ids), summary
    except BaseException as exc:
        exc.add_note(say.text())  # what happened, line by line
        raise


# ---------------------------------------------------------------- (d) the clock jump


def test_the_unarmed_clock_reads_true_wall_time() -> None:
    assert clock_module._wall_skew is None
    live = LiveClock()
    before = time.time_ns()
    now = live.time_ns()
    assert before <= now <= time.time_ns()


@pytest.mark.parametrize("jump_s", [3600.0, -7200.0])
async def test_wall_time_jumps_after_the_delay_and_monotonic_time_does_not(tmp_path: Path, jump_s: float) -> None:
    log = tmp_path / "log.jsonl"
    configure_logging(log)
    live = LiveClock()
    loop = asyncio.get_running_loop()
    faults.arm(faults.Faults(clock_jump_s=jump_s, clock_jump_after_s=0.3))
    loop_start = loop.time()
    assert abs(live.time_ns() - time.time_ns()) < NS_PER_S // 10  # not yet
    assert not faults.injected
    fired: list[float] = []
    loop.call_later(0.35, lambda: fired.append(loop.time()))  # a monotonic timer set before the jump
    await asyncio.sleep(0.4)
    skew = live.time_ns() - time.time_ns()
    assert abs(skew - jump_s * NS_PER_S) < NS_PER_S // 10, skew / NS_PER_S
    assert 0.35 <= loop.time() - loop_start < 1.0  # the loop's monotonic clock did not move with it
    assert len(fired) == 1 and 0.35 <= fired[0] - loop_start < 1.0
    # After the step, call_at / sleep_until deadlines computed from the clock's (jumped) time
    # are honoured in real seconds, as after a real NTP step.
    started = loop.time()
    await live.sleep_until(live.time_ns() + NS_PER_S // 10)
    assert 0.05 < loop.time() - started < 1.0
    woke: asyncio.Future[float] = loop.create_future()
    started = loop.time()
    live.call_at(live.time_ns() + NS_PER_S // 10, lambda: woke.set_result(loop.time()))
    assert 0.05 < await asyncio.wait_for(woke, 2.0) - started < 1.0
    # Injected and logged once, however often the clock is read.
    for _ in range(100):
        live.time_ns()
    assert faults.injected == {"clock_jump": 1}
    [event] = [e for e in log_events(log) if e["event"] == "fault_injected"]
    assert (event["level"], event["kind"], event["offset_s"]) == ("warning", "clock_jump", jump_s)
    # Disarmed: back to true wall time, through the same single check.
    faults.disarm()
    assert clock_module._wall_skew is None
    assert abs(live.time_ns() - time.time_ns()) < NS_PER_S // 10


async def test_a_jump_with_no_delay_happens_at_the_first_read() -> None:
    faults.arm(faults.Faults(clock_jump_s=60))
    assert abs(LiveClock().time_ns() - time.time_ns() - 60 * NS_PER_S) < NS_PER_S // 10
    assert faults.injected == {"clock_jump": 1}


def test_the_sim_clock_is_never_jumped() -> None:
    faults.arm(faults.Faults(clock_jump_s=60))
    assert SimClock(T0).time_ns() == T0
    assert not faults.injected
