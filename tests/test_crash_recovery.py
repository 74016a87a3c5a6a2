"""Crash tests with real processes: ``kill -9`` anywhere on the order path loses nothing and sends nothing twice.

Each scenario runs the Alpaca venue simulator (``kestrel venue``, replaying a seeded
synthetic IBM session) in one process and engines (``kestrel run --venue-url``) in
others, one after the other on one journal; the simulator outlives them all. An engine dies by ``SIGKILL``
at a named crash point (``KESTREL_CRASH_AT``, :mod:`engine.crashpoints`) or, in the
randomised variant, whenever the test's seeded clock says so. Then a clean engine must
recover and trade again, is stopped with ``SIGTERM`` (exit 0, JSON summary), and the
venue is left to finish our orders; a last engine that recovers but cannot trade brings
the journal up to date (recovery is what reconciles fills made while no engine ran).
Then the venue's REST view and the journal (``kestrel journal ... --json``) must agree
(:func:`tests.crash_harness.check_invariants`):

1. each intent produced at most one venue order, and nothing reached the venue before
   its journal record (no order ever had to be adopted);
2. every venue fill is in the journal exactly once (per order, Σ journaled fills ==
   venue ``filled_qty``; ``kestrel journal verify`` passes);
3. journal positions and cash equal the venue's;
4. no venue order with our client-order-id prefix is unknown to the journal;
5. after the restart, trading is ``active`` and new orders were placed *and filled*.

One scenario kills at ``cancel.after_commit_before_send``, with rsi-reversion's targets
worked by the limit chaser (which cancels to re-peg): a cancel journaled but never sent
must be sent again by the restart's recovery, and the venue must end the order canceled.

The scenarios are independent (one simulator, journal and temp dir each) and mostly wait
for market data, so the module runs the selected ones side by side in threads (20-35 s
in all on 2 cores, against about 2 minutes one after the other); each test reports its
own scenario, with a transcript of what happened printed on failure.

Reproduce the randomised variant with ``CRASH_TEST_SEED=<seed> .venv/bin/python -m
pytest -q tests/test_crash_recovery.py -k random`` (the seed and every delay are printed).
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from engine.messages import OrderStatus
from simulations.journal_probe import journal_max_seq
from tests.crash_harness import (
    Session,
    Transcript,
    check_invariants,
    journal_cli,
    journal_count,
    kill_all_sessions,
    session,
    write_config,
)

SCENARIO_TIMEOUT_S = 150.0
CRASH_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class CrashCase:
    point: str
    nth: int
    """Die at this hit of the point: late enough that the engine has traded first."""
    snapshot_every: int = 10_000
    why: str = ""


CASES = [
    CrashCase("journal.before_commit", 12, why="rows of a group written, not committed, after a few orders"),
    CrashCase("order.after_commit_before_send", 3, why="the third order journaled, never sent"),
    CrashCase("venue.after_send_before_ack", 3, why="the third order accepted by the venue, its answer lost"),
    CrashCase("order.between_partial_fills", 3, why="500-share orders fill in pieces against 100-900 share quotes"),
    CrashCase("journal.during_snapshot", 3, snapshot_every=5, why="a snapshot every 5 events: the third one"),
    CrashCase("recovery.midway", 1, why="a second start, after a crash that left an order in flight"),
]


# ---------------------------------------------------------------- evidence that each crash hit its moment


def _last_order(s: Session) -> dict[str, str]:
    orders = journal_cli("orders", s.journal)
    assert orders, "the engine crashed before it journaled any order"
    last: dict[str, str] = orders[-1]
    return last


def _check_crash_left(case: CrashCase, s: Session, say: Callable[[str], None]) -> str | None:
    """What the crash left behind is what the point promises; returns an order id to follow, if any."""
    verify = journal_cli("verify", s.journal)
    assert verify["ok"], f"the journal a crash left fails verification: {verify['problems']}"
    placed = s.orders_placed()
    say(f"after the crash: {placed} orders journaled, {verify['events']} events, snapshot at {verify['snapshot_seq']}")
    if case.point == "journal.before_commit":
        assert placed >= 1, "crashed before trading"
    elif case.point == "order.after_commit_before_send":
        last = _last_order(s)
        assert last["status"] == "pending_new" and not last["venue_order_id"], last
        assert s.venue.find(last["client_order_id"]) is None, "sent although the crash came before the send"
        return last["client_order_id"]
    elif case.point == "venue.after_send_before_ack":
        # (The trade-updates stream may have beaten the POST's answer to the journal.)
        last = _last_order(s)
        assert s.venue.find(last["client_order_id"]) is not None, "the venue never got the order"
        say(f"{last['client_order_id']} at the venue; the journal has it {last['status']}")
        return last["client_order_id"]
    elif case.point == "order.between_partial_fills":
        # The engine died right after applying a partial fill. Venue reports are not waited
        # for (actors/order_manager.py), so the journal may or may not hold that fill yet:
        # either way the order is working in the journal and the venue has filled some of it.
        interrupted = []
        for order in journal_cli("orders", s.journal):
            if OrderStatus(order["status"]).is_terminal or Decimal(order["filled_qty"]) >= Decimal(order["qty"]):
                continue
            at_venue = s.venue.find(order["client_order_id"])
            if at_venue is not None and Decimal(at_venue["filled_qty"]) > 0:
                interrupted.append((order, at_venue))
        assert interrupted, "no order was being filled when the engine died"
        order, at_venue = interrupted[0]
        say(
            f"{order['client_order_id']}: the journal has {order['filled_qty']} of {order['qty']} filled, "
            f"the venue {at_venue['filled_qty']}"
        )
        return str(order["client_order_id"])
    elif case.point == "journal.during_snapshot":
        # The n-th snapshot was written but never committed: n - 1 are there.
        snapshots = _snapshot_rows(s.journal)
        assert snapshots == case.nth - 1, f"{snapshots} snapshots committed, expected {case.nth - 1}"
    elif case.point == "recovery.midway":
        crashed = s.engines[-1]
        assert crashed.has_event("order_book_rebuilt") and not crashed.has_event("recovery_finished")
        # The engine journals its run manifest first; recovery itself wrote nothing before the crash.
        written = _kinds_after(s.journal, s.run_starts[-1])
        assert written == ["RunManifest"], f"recovery wrote before the crash point: {written}"
    return None


def _kinds_after(path: Path, seq: int) -> list[str]:
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        return [str(kind) for (kind,) in db.execute("SELECT kind FROM events WHERE seq > ? ORDER BY seq", (seq,))]


def _snapshot_rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        return int(db.execute("SELECT count(*) FROM snapshots").fetchone()[0])


# ---------------------------------------------------------------- the scenarios


def crash_at_point(case: CrashCase, workdir: Path, say: Transcript) -> None:
    say(f"crash point {case.point}:{case.nth} ({case.why})")
    trading = write_config(workdir / "engine.toml", snapshot_every=case.snapshot_every)
    audit = write_config(workdir / "audit.toml", snapshot_every=case.snapshot_every, trade=False)
    with session(workdir, say) as s:
        if case.point == "recovery.midway":
            # Recovery needs something to recover: a journal with an order in flight.
            s.start(trading, "venue.after_send_before_ack:2").wait_killed(CRASH_TIMEOUT_S)
            in_flight = _last_order(s)
            say(f"left in flight: {in_flight['client_order_id']} ({in_flight['status']})")
        crashed = s.start(trading, f"{case.point}:{case.nth}")
        crashed.wait_killed(CRASH_TIMEOUT_S)
        followed = _check_crash_left(case, s, say)
        summary = s.trade_then_stop(trading)
        if case.point == "order.after_commit_before_send":
            # Recovery asked the venue, did not find it, and closed it: never resent.
            assert summary["recovery"]["not_at_venue"] == [followed], summary["recovery"]
        elif case.point == "recovery.midway":
            assert summary["recovery"]["orders_known"] >= 1, summary["recovery"]
        s.settle_and_audit(audit)
        check_invariants(s)
        if followed is not None:
            final = {o["client_order_id"]: o for o in journal_cli("orders", s.journal)}[followed]
            say(f"{followed} ended {final['status']}, filled {final['filled_qty']} (venue: {s.venue.find(followed)})")


def random_kills(seed: int, workdir: Path, say: Transcript, kills: int = 8, budget_s: float = 20.0) -> None:
    """SIGKILL clean engines at seeded random moments (start-up, recovery, trading), restarting each time."""
    rng = random.Random(seed)
    say(
        f"seed {seed}; reproduce: CRASH_TEST_SEED={seed} {sys.executable} -m pytest -q "
        "tests/test_crash_recovery.py -k random"
    )
    trading = write_config(workdir / "engine.toml", snapshot_every=7)
    audit = write_config(workdir / "audit.toml", snapshot_every=7, trade=False)
    with session(workdir, say, seed=seed) as s:
        started = time.monotonic()
        delays: list[float] = []
        for i in range(kills):
            if i >= 5 and time.monotonic() - started > budget_s:
                break
            # Mostly while trading, sometimes in start-up or recovery (~0.3-0.6 s after exec).
            delay = round(rng.uniform(0.2, 1.0) if rng.random() < 0.3 else rng.uniform(1.0, 4.0), 3)
            delays.append(delay)
            engine = s.start(trading)
            time.sleep(delay)
            last = [e.get("event") for e in engine.events()[-1:]]
            engine.kill()
            say(f"kill {i + 1}: {delay} s after start (last log event {last}); "
                f"journal seq {journal_max_seq(s.journal)}, {journal_count(s.journal)} orders")
        say(f"seed {seed}: delays {delays}")
        s.trade_then_stop(trading)
        s.settle_and_audit(audit)
        check_invariants(s)


def sigterm_during_startup(workdir: Path, say: Transcript) -> None:
    """SIGTERM while the engine starts and recovers: it still recovers, prints its summary, exits 0.

    Regression test for kestrel/node.py: the signal handlers used to be installed only
    after recovery, so this SIGTERM killed the process (exit -15, no summary).
    """
    trading = write_config(workdir / "engine.toml")
    audit = write_config(workdir / "audit.toml", trade=False)
    with session(workdir, say) as s:
        s.start(trading, "venue.after_send_before_ack:1").wait_killed(CRASH_TIMEOUT_S)  # something to recover
        engine = s.start(trading)
        engine.wait_until("live_session_starting", lambda: engine.has_event("live_session_starting"), 30.0)
        recovered = engine.has_event("recovery_finished")
        summary = engine.terminate()
        say(f"the SIGTERM came {'after' if recovered else 'before'} recovery finished")
        assert summary["recovery"] is not None and summary["recovery"]["state"] == "active", summary
        assert summary["recovery"]["orders_checked"] >= 1, summary["recovery"]  # the order in flight
        s.trade_then_stop(trading)
        s.settle_and_audit(audit)
        check_invariants(s)


CANCEL_POINT = "cancel.after_commit_before_send"
CANCEL_QTY = 100
CHASER_TICK = 11
CANCEL_SEED = 1
"""The chaser's price grid (dollars) and the session's seed: the seed-1 session's bids stay
within $179.62-187.73, so the chaser's buys (its bid rounded down to the grid) all rest at
$176 and cannot fill: an order whose cancel the crash cut off can only end by the restart's
cancel. (Resting at the touch, it was filled before the restart in two tries out of three.)"""


def _rsi_reversion(execution: str) -> str:
    """RSI(3) of every mid, entering below 40 or above 60: a new target every second or two."""
    return f"""[strategy]
name = "rsi-reversion"
[strategy.params]
input = "mid"
period = 3
low = 40.0
high = 60.0
qty = {CANCEL_QTY}
[strategy.execution]
{execution}
"""


CHASER = _rsi_reversion(
    'algo = "chaser"\ntimeout_s = 1.0\nmax_timeout_s = 2.0\nmax_repegs = 3\non_exhausted = "leave"\n'
    f"tick = {CHASER_TICK}\n"
)
"""Limits re-pegged (cancelled first) after at most half a second, and cancelled whenever a new
target replaces the one being worked: the first cancel comes within seconds of the first quote."""
MARKET = _rsi_reversion('algo = "market"\n')
"""The same strategy after the restart, with market orders: it trades (fills), and what it
leaves working when it is stopped fills on the next quotes, so the venue comes to rest."""


def _last_cancel_requested(path: Path) -> str | None:
    """The order of the journal's last ``CancelRequested``."""
    with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        row = db.execute(
            "SELECT client_order_id FROM events WHERE kind = 'CancelRequested' ORDER BY seq DESC LIMIT 1"
        ).fetchone()
    return None if row is None else str(row[0])


def _venue_status(s: Session, client_order_id: str) -> OrderStatus | None:
    order = s.venue.find(client_order_id)
    return None if order is None else OrderStatus(order["status"])


def cancel_survives_crash(workdir: Path, say: Transcript) -> None:
    """``kill -9`` between a cancel's journal commit and its send: the restart sends it.

    An engine works rsi-reversion's targets with the limit chaser and dies by SIGKILL at its
    first ``cancel.after_commit_before_send``: the journal holds a ``CancelRequested`` for an
    order the venue still works, and the cancel never left. A clean engine recovers on the
    journal, must send that cancel again (``recovery_resending_cancels``), and the venue must
    show the order canceled; then it trades, and journal and venue agree.
    """
    say(f"crash point {CANCEL_POINT}:1 (the chaser's first cancel: journaled, never sent)")
    chasing = write_config(workdir / "chaser.toml", qty=CANCEL_QTY, strategy=CHASER)
    trading = write_config(workdir / "engine.toml", qty=CANCEL_QTY, strategy=MARKET)
    audit = write_config(workdir / "audit.toml", trade=False)
    with session(workdir, say, seed=CANCEL_SEED) as s:
        crashed = s.start(chasing, f"{CANCEL_POINT}:1")
        crashed.wait_killed(CRASH_TIMEOUT_S)
        followed = _last_cancel_requested(s.journal)
        assert followed is not None, "died at the cancel crash point with no CancelRequested journaled"
        at_crash = s.venue.find(followed)
        assert at_crash is not None, f"{followed}: its cancel was journaled, but the venue never got the order"
        assert not OrderStatus(at_crash["status"]).is_terminal, f"{followed} is not working at the venue: {at_crash}"
        # The cancel was never sent: the engine logs ``cancel_requested`` only after the crash point.
        assert not any(
            e.get("event") == "cancel_requested" and e.get("client_order_id") == followed for e in crashed.events()
        ), f"{crashed.name} logged the cancel of {followed} as sent"
        verify = journal_cli("verify", s.journal)
        assert verify["ok"], f"the journal the crash left fails verification: {verify['problems']}"
        say(
            f"CancelRequested {followed} journaled ({s.orders_placed()} orders, {verify['events']} events); "
            f"the venue has it {at_crash['status']}, {at_crash['filled_qty']} of {at_crash['qty']} filled"
        )

        engine = s.start(trading)
        engine.wait_recovered()
        # Logged right after recovery_finished, as the cancels go out.
        engine.wait_until("recovery_resending_cancels", lambda: engine.has_event("recovery_resending_cancels"), 10.0)
        resending = [e for e in engine.events() if e.get("event") == "recovery_resending_cancels"]
        assert len(resending) == 1 and resending[0]["orders"] == [followed], resending
        engine.wait_until(
            f"the venue to end {followed}",
            lambda: (_venue_status(s, followed) or OrderStatus.PENDING_NEW).is_terminal,
            20.0,
            poll_s=0.25,  # REST: the engine's rate limit
        )
        final = s.venue.find(followed)
        assert final is not None and final["status"] == OrderStatus.CANCELED, final
        assert Decimal(final["filled_qty"]) == 0 and final["canceled_at"], final
        say(f"{engine.name} resent the cancel of {followed}: the venue has it {final['status']}")
        summary = s.trade_on_then_stop(engine)
        assert summary["recovery"]["orders_checked"] >= 1, summary["recovery"]
        s.settle_and_audit(audit)
        check_invariants(s)
        journaled = {o["client_order_id"]: o for o in journal_cli("orders", s.journal)}[followed]
        assert journaled["status"] == OrderStatus.CANCELED, journaled
        say(f"{followed} ended canceled in the journal too, {journaled['filled_qty']} of {journaled['qty']} filled")


def _random_seed() -> int:
    text = os.environ.get("CRASH_TEST_SEED")
    return int(text) if text else random.SystemRandom().randrange(1_000_000)


SCENARIOS: dict[str, Callable[[Path, Transcript], None]] = {
    **{case.point: functools.partial(crash_at_point, case) for case in CASES},
    "random-kills": lambda workdir, transcript: random_kills(_random_seed(), workdir, transcript),
    "sigterm-during-startup": sigterm_during_startup,
    CANCEL_POINT: cancel_survives_crash,
}


# ---------------------------------------------------------------- running them side by side


@dataclass
class Run:
    future: Future[None]
    transcript: Transcript


def _scenario_of(item: pytest.Item) -> str | None:
    """The scenario a collected test of this module reports on (None for anything else)."""
    if not isinstance(item, pytest.Function) or item.module is not sys.modules[__name__]:
        return None
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("scenario")


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Start every selected scenario at once; each test then waits for its own."""
    selected = [name for name in map(_scenario_of, request.session.items) if name is not None]
    with ThreadPoolExecutor(max_workers=max(1, len(selected)), thread_name_prefix="crash") as pool:
        started: dict[str, Run] = {}
        for name in selected:
            transcript = Transcript(name)
            workdir = tmp_path_factory.mktemp(name.replace(".", "-"))
            started[name] = Run(pool.submit(SCENARIOS[name], workdir, transcript), transcript)
        try:
            yield started
        finally:
            # Normally every scenario is over (each test waited for its own, and each kills
            # its own processes). If the run is torn down early, kill what is left so the
            # scenario threads fail fast, and leaving the pool does not wait for long.
            if not all(run.future.done() for run in started.values()):
                kill_all_sessions()


def _report(run: Run) -> None:
    try:
        run.future.result(timeout=SCENARIO_TIMEOUT_S)
    finally:
        sys.stdout.write(run.transcript.text() + "\n")  # pytest shows it when the test fails


@pytest.mark.parametrize("scenario", [case.point for case in CASES])
def test_crash_point_then_recover(scenario: str, runs: dict[str, Run]) -> None:
    """Die at ``scenario`` by SIGKILL, restart, trade, stop; journal and venue agree."""
    _report(runs[scenario])


@pytest.mark.parametrize("scenario", ["random-kills"])
def test_random_kills_then_recover(scenario: str, runs: dict[str, Run]) -> None:
    """SIGKILL at 5-8 seeded random moments, restarting each time; journal and venue agree."""
    _report(runs[scenario])


@pytest.mark.parametrize("scenario", ["sigterm-during-startup"])
def test_sigterm_during_startup_still_stops_cleanly(scenario: str, runs: dict[str, Run]) -> None:
    """SIGTERM before recovery is over: recovery completes, exit 0 with a summary."""
    _report(runs[scenario])


@pytest.mark.parametrize("scenario", [CANCEL_POINT])
def test_cancel_survives_crash_between_commit_and_send(scenario: str, runs: dict[str, Run]) -> None:
    """Die by SIGKILL with a cancel journaled, not sent: the restart sends it; the venue cancels; all agree."""
    _report(runs[scenario])
