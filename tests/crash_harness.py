"""Real processes for the crash tests: a ``kestrel venue`` simulator and ``kestrel run`` engines.

Everything here drives *child processes* the way an operator would: the simulator and
each engine are separate ``python -m kestrel.cli`` processes talking over real sockets on
127.0.0.1 (the simulator picks a free port and says which on its first stdout line). An
engine can be armed to ``SIGKILL`` itself at a named crash point (``KESTREL_CRASH_AT``,
see :mod:`engine.crashpoints`), be killed by the test, or be stopped with ``SIGTERM``.
The simulator outlives every engine of a :class:`Session`.

The journal is inspected through ``kestrel journal orders|positions|verify|show --json``
(subprocesses, as a human would); only the cheap progress polling while an engine runs
reads the SQLite file directly (read-only).

:func:`check_invariants` states DESIGN §9's invariants as assertions, comparing the
simulator's REST view with the journal.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from simulations.engine_config import write_engine_config
from simulations.journal_probe import journal_int, journal_max_seq, traded_since
from simulations.lean_feed import chaos_session

KEY_ID = "PKCRASHTEST00001"
SECRET_KEY = "crash-test-secret-0001"
RUN_ID = "crash"
PREFIX = f"{RUN_ID}-"
CLI = [sys.executable, "-m", "kestrel.cli"]
CASH_TOLERANCE = Decimal("0.01")
"""The engine's own ``[journal] cash_tolerance``. A fill recovery books for an order the
venue filled while the engine was down is priced from the venue's average fill price,
which Alpaca (and the simulator) round (to 1e-9 here), so journal cash can differ from
the venue's by nano-dollars; anything beyond a cent is a real difference."""


class Transcript:
    """What a scenario did, line by line with times; the test prints it (shown on failure)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        self.lines.append(f"[{self.name} +{time.monotonic() - self.started:5.1f}s] {message}")

    def text(self) -> str:
        return "\n".join(self.lines)


def base_env() -> dict[str, str]:
    """The children's environment: the simulator's keys, and no KESTREL_* from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREL_")}
    env["APCA_API_KEY_ID"] = KEY_ID
    env["APCA_API_SECRET_KEY"] = SECRET_KEY
    return env


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
    """Signal one child (by its pid) and reap it; SIGKILL it if it lingers."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# ---------------------------------------------------------------- the simulator


def synthetic_session(folder: Path, seed: int, quotes: int = 4000) -> list[Path]:
    """The simulator's session (:func:`simulations.lean_feed.chaos_session`, shared with ``kestrel chaos``)."""
    return chaos_session(folder, seed, quotes)


class Simulator:
    """``kestrel venue`` in its own process, replaying :func:`synthetic_session`.

    At ``speed`` 1.5 that is about 15 quotes a second while quoting, and roughly one order
    a second from the crash tests' engine: well inside Alpaca's 200 requests a minute.
    """

    def __init__(self, workdir: Path, speed: float, seed: int) -> None:
        self.stderr_path = workdir / "venue.stderr"
        files = synthetic_session(workdir / "feed", seed)
        feeds = [a for f in files for a in ("--feed", str(f))]
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "venue", "--port", "0", *feeds, "--speed", str(speed), "--seed", str(seed),
                 "--key", KEY_ID, "--secret", SECRET_KEY, "--exit-when-done"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=base_env(),
                start_new_session=True,  # a Ctrl-C at the terminal is the test's to handle, not the venue's
            )
        try:
            self.url = self._read_url(timeout=30.0)
        except BaseException:
            self.stop()
            raise

    def _read_url(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise AssertionError(f"the simulator said nothing in {timeout} s: {self.stderr_tail()}")
        first = self.proc.stdout.readline().decode().strip()
        if not first.startswith("listening on http://127.0.0.1:"):
            raise AssertionError(f"unexpected first line {first!r}: {self.stderr_tail()}")
        return first.removeprefix("listening on ")

    def stderr_tail(self, chars: int = 2000) -> str:
        return self.stderr_path.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        # SIGTERM, not SIGINT: a child of a non-interactive shell's background job ignores SIGINT.
        _stop(self.proc, signal.SIGTERM)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    # ------------------------------------------------------------ REST: the venue's truth

    def get(self, path: str, **params: str) -> Any:
        """One GET with the engine's keys; waits out a 429 (the test shares the key's rate limit)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        request = urllib.request.Request(
            f"{self.url}/v2{path}{query}",
            headers={"APCA-API-KEY-ID": KEY_ID, "APCA-API-SECRET-KEY": SECRET_KEY},
        )
        for _ in range(60):
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return orjson.loads(response.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 429:
                    raise
                time.sleep(1.0)
        raise AssertionError(f"GET {path}: still rate limited after a minute")

    def orders(self) -> list[dict[str, Any]]:
        """Every order with our prefix (``status=all``), oldest first, paging past 500."""
        found: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params = {"status": "all", "direction": "asc", "limit": "500"}
            if after is not None:
                params["after"] = after
            page: list[dict[str, Any]] = self.get("/orders", **params)
            found.extend(page)
            if len(page) < 500:
                return [o for o in found if o["client_order_id"].startswith(PREFIX)]
            after = page[-1]["submitted_at"]

    def find(self, client_order_id: str) -> dict[str, Any] | None:
        try:
            order: dict[str, Any] = self.get("/orders:by_client_order_id", client_order_id=client_order_id)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise
        return order

    def open_orders(self) -> list[dict[str, Any]]:
        orders: list[dict[str, Any]] = self.get("/orders", status="open", limit="500")
        return [o for o in orders if o["client_order_id"].startswith(PREFIX)]

    def positions(self) -> dict[str, Decimal]:
        return {p["symbol"]: Decimal(p["qty"]) for p in self.get("/positions") if Decimal(p["qty"])}

    def cash(self) -> Decimal:
        return Decimal(self.get("/account")["cash"])

    def wait_quiet(self, timeout: float = 30.0) -> None:
        """Until none of our orders is open at the venue (market orders fill on the next quotes)."""
        deadline = time.monotonic() + timeout
        while True:
            still = self.open_orders()
            if not still:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"venue orders still open after {timeout} s: {still}")
            time.sleep(0.25)


# ---------------------------------------------------------------- the engine


def write_config(
    path: Path, *, qty: int = 500, snapshot_every: int = 10_000, trade: bool = True, strategy: str | None = None
) -> Path:
    """An engine config for the crash tests (:func:`simulations.engine_config.write_engine_config`);
    ``strategy`` is TOML for the ``[strategy]`` tables in place of the default EMA 2/4."""
    return write_engine_config(
        path, run_id=RUN_ID, qty=qty, snapshot_every=snapshot_every, trade=trade, strategy=strategy
    )


class Engine:
    """One ``kestrel run --venue-url`` process on a journal."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        venue: Simulator,
        journal: Path,
        config: Path,
        say: Callable[[str], None],
        crash_at: str | None = None,
    ) -> None:
        self.name = name
        self.crash_at = crash_at
        self.say = say
        self.log_path = workdir / f"{name}.jsonl"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        env = base_env()
        if crash_at is not None:
            env["KESTREL_CRASH_AT"] = crash_at
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "run", "--venue-url", venue.url, "--journal", str(journal), "--config", str(config),
                 "--log", str(self.log_path), "--json"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,  # signals come from the test (or its crash point) only
            )
        self.started_at = time.monotonic()
        armed = f" with KESTREL_CRASH_AT={crash_at}" if crash_at else ""
        say(f"{name}: pid {self.proc.pid} started{armed}")

    # ------------------------------------------------------------ observing

    def events(self) -> list[dict[str, Any]]:
        if not self.log_path.exists():
            return []
        found = []
        for line in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):  # a line cut short by SIGKILL
                found.append(orjson.loads(line))
        return found

    def has_event(self, name: str) -> bool:
        return any(e.get("event") == name for e in self.events())

    def describe(self) -> str:
        err = self.stderr_path.read_text(errors="replace")[-1500:] if self.stderr_path.exists() else ""
        tail = [e.get("event") for e in self.events()[-15:]]
        return f"{self.name} (exit {self.proc.poll()}): last log events {tail}; stderr: {err}"

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout: float, poll_s: float = 0.05) -> None:
        """Poll ``predicate()`` while the engine runs; fail if it exits or time runs out.

        ``poll_s``: longer for a predicate that asks the venue (its REST rate limit is the engine's)."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited while waiting for {what}: {self.describe()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {what} within {timeout} s: {self.describe()}")
            time.sleep(poll_s)

    def wait_recovered(self, timeout: float = 30.0) -> None:
        self.wait_until("recovery_finished", lambda: self.has_event("recovery_finished"), timeout)

    # ------------------------------------------------------------ ending

    def wait_killed(self, timeout: float) -> None:
        """The armed crash point must fire: the process dies by SIGKILL (returncode -9)."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(self.proc)
            raise AssertionError(
                f"{self.name}: crash point {self.crash_at} not reached within {timeout} s: {self.describe()}"
            ) from None
        assert code == -signal.SIGKILL, f"{self.name}: expected death by SIGKILL, got {code}: {self.describe()}"
        self.say(f"{self.name}: died by SIGKILL at {self.crash_at} after {time.monotonic() - self.started_at:.1f} s")

    def kill(self) -> None:
        """``kill -9`` from outside; the engine must still have been running."""
        assert self.proc.poll() is None, f"{self.name} stopped by itself: {self.describe()}"
        _stop(self.proc, signal.SIGKILL)
        assert self.proc.returncode == -signal.SIGKILL, self.describe()

    def terminate(self, timeout: float = 30.0) -> dict[str, Any]:
        """``SIGTERM``: the engine must exit 0 and print its JSON summary."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(self.proc)
            raise AssertionError(f"{self.name}: did not stop within {timeout} s of SIGTERM") from None
        assert code == 0, f"{self.name}: SIGTERM exit code {code}: {self.describe()}"
        summary: dict[str, Any] = orjson.loads(self.stdout_path.read_bytes())
        self.say(
            f"{self.name}: SIGTERM -> exit 0: orders {summary['orders']}, fills {summary['fills']}, "
            f"trading {summary['trading_state']}, recovery {summary['recovery']}"
        )
        return summary

    def cleanup(self) -> None:
        _stop(self.proc, signal.SIGKILL)


# ---------------------------------------------------------------- the journal


def journal_count(path: Path, kind: str = "OrderSubmitting") -> int:
    return journal_int(path, "SELECT count(*) FROM events WHERE kind = ?", kind)


def journal_traded_since(path: Path, after_seq: int) -> int:
    return traded_since(path, after_seq)


def journal_cli(action: str, path: Path) -> Any:
    done = subprocess.run(
        [*CLI, "journal", action, str(path), "--json"], capture_output=True, timeout=60, env=base_env()
    )
    assert done.returncode == 0, f"kestrel journal {action}: exit {done.returncode}: {done.stdout!r} {done.stderr!r}"
    return orjson.loads(done.stdout)


def journal_views(path: Path) -> dict[str, Any]:
    """``kestrel journal orders|positions|verify|show --json``, run side by side."""
    actions = ("orders", "positions", "verify", "show")
    procs = {
        a: subprocess.Popen(
            [*CLI, "journal", a, str(path), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=base_env(),
        )
        for a in actions
    }
    views: dict[str, Any] = {}
    try:
        for action, proc in procs.items():
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"kestrel journal {action}: exit {proc.returncode}: {out!r} {err!r}"
            views[action] = orjson.loads(out)
    finally:
        for proc in procs.values():
            _stop(proc)
    return views


# ---------------------------------------------------------------- a session: one simulator, many engines


_LIVE: set[Session] = set()
_LIVE_LOCK = threading.Lock()


def kill_all_sessions() -> None:
    """Kill every child process of every session still open (a test run being torn down early)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for s in live:
        s.close()


class Session:
    """One simulator and the engines run against it one after the other, on one journal."""

    def __init__(self, workdir: Path, say: Callable[[str], None], *, speed: float = 1.5, seed: int = 1) -> None:
        self.workdir = workdir
        self.say = say
        self.journal = workdir / "journal.db"
        self.engines: list[Engine] = []
        self.run_starts: list[int] = []
        """The journal's last seq when each engine started: its records come after it."""
        self.venue = Simulator(workdir, speed, seed)
        with _LIVE_LOCK:
            _LIVE.add(self)
        say(f"simulator at {self.venue.url} (speed {speed}, seed {seed}); files in {workdir}")

    def start(self, config: Path, crash_at: str | None = None) -> Engine:
        assert all(e.proc.poll() is not None for e in self.engines), "one engine at a time"
        self.run_starts.append(journal_max_seq(self.journal))
        name = f"engine-{len(self.engines) + 1}"
        engine = Engine(name, self.workdir, self.venue, self.journal, config, self.say, crash_at)
        self.engines.append(engine)
        return engine

    def orders_placed(self) -> int:
        return journal_count(self.journal)

    def close(self) -> None:
        with _LIVE_LOCK:
            _LIVE.discard(self)
        for engine in list(self.engines):
            engine.cleanup()
        self.venue.stop()

    # ------------------------------------------------------------ the common endings

    def trade_then_stop(self, config: Path, *, new_orders: int = 2, timeout: float = 40.0) -> dict[str, Any]:
        """A clean restart must recover and trade again: ``new_orders`` new orders *filled*
        (an order the venue refuses is not trading), then SIGTERM; returns the summary."""
        engine = self.start(config)
        engine.wait_recovered()
        return self.trade_on_then_stop(engine, new_orders=new_orders, timeout=timeout)

    def trade_on_then_stop(self, engine: Engine, *, new_orders: int = 2, timeout: float = 40.0) -> dict[str, Any]:
        """:meth:`trade_then_stop` for an engine already started and recovered (a scenario
        that checked what its recovery did first)."""
        after = journal_max_seq(self.journal)
        engine.wait_until(
            f"{new_orders} new orders filled after recovery",
            lambda: journal_traded_since(self.journal, after) >= new_orders,
            timeout,
        )
        summary = engine.terminate()
        # (5) the engine converged (recovery found journal and venue agreeing) and trades.
        assert summary["trading_state"] == "active", summary
        assert summary["recovery"]["state"] == "active", summary["recovery"]
        assert summary["recovery"]["mismatches"] == [], summary["recovery"]
        assert summary["orders"] >= new_orders, summary
        return summary

    def settle_and_audit(self, audit_config: Path) -> dict[str, Any]:
        """Let the venue finish our orders, then start an engine that recovers but cannot trade.

        The last trading engine was stopped with orders possibly still working, and the
        venue fills them after it is gone: the journal learns of those fills only at the
        next start. This start is that one, and nothing trades after it, so the journal
        and the venue can then be compared at rest.
        """
        self.venue.wait_quiet()
        engine = self.start(audit_config)
        engine.wait_recovered()
        summary = engine.terminate()
        assert summary["trading_state"] == "active", summary
        assert summary["recovery"]["mismatches"] == [], summary["recovery"]
        assert summary["orders"] == 0, summary
        return summary


@contextlib.contextmanager
def session(workdir: Path, say: Callable[[str], None], **kwargs: Any) -> Iterator[Session]:
    s = Session(workdir, say, **kwargs)
    try:
        yield s
    finally:
        s.close()


# ---------------------------------------------------------------- the invariants (DESIGN §9)


def check_invariants(s: Session) -> None:
    venue_orders = s.venue.orders()
    positions = s.venue.positions()
    cash = s.venue.cash()
    views = journal_views(s.journal)
    journal_orders = {o["client_order_id"]: o for o in views["orders"]}
    book, verify, events = views["positions"], views["verify"], views["show"]
    s.say(
        f"venue: {len(venue_orders)} orders, positions {positions}, cash {cash}; "
        f"journal: {len(journal_orders)} orders, positions {book['positions']}, cash {book['cash']}, "
        f"{verify['events']} events, {verify['fills']} fills"
    )
    assert venue_orders, "the venue never saw an order"

    # (1) Each intent produced at most one venue order: one venue order per client order
    # id, one client order id per intent, and nothing sent without its journal record.
    per_client_id = Counter(o["client_order_id"] for o in venue_orders)
    assert all(n == 1 for n in per_client_id.values()), f"duplicate venue orders: {per_client_id}"
    ends = [*s.run_starts[1:], sys.maxsize]
    per_intent: Counter[tuple[int, str]] = Counter()
    for event in events:
        if event["kind"] == "OrderSubmitting":
            # Intent ids restart with each process (see the report), so an intent is
            # (engine run, intent id); a resend under a new client order id would repeat one.
            run = next(i for i, end in enumerate(ends) if event["seq"] <= end)
            per_intent[(run, event["record"]["order"]["intent_id"])] += 1
    resent = {k: n for k, n in per_intent.items() if n > 1}
    assert not resent, f"an intent was submitted under more than one client order id: {resent}"
    for engine in s.engines:
        sent_as: defaultdict[str, set[str]] = defaultdict(set)
        for event in engine.events():
            # Write-ahead: an order at the venue that the journal did not know would be adopted.
            assert event.get("event") != "venue_order_adopted", f"{engine.name}: sent before journaled: {event}"
            if event.get("msg_type") == "SubmitOrder":  # logged while sending: intent and client order id
                sent_as[str(event.get("intent_id"))].add(str(event.get("client_order_id")))
        twice = {intent: ids for intent, ids in sent_as.items() if len(ids) > 1}
        assert not twice, f"{engine.name}: its log shows an intent under several client order ids: {twice}"

    # (4) Every venue order with our prefix is known to the journal.
    unknown = sorted(set(per_client_id) - set(journal_orders))
    assert not unknown, f"venue orders unknown to the journal: {unknown}"

    # (2) Every venue fill is in the journal exactly once: no execution booked twice
    # (verify), and per order the journal's fills add up to what the venue filled.
    assert verify["ok"], f"kestrel journal verify: {verify['problems']}"
    journal_fills: defaultdict[str, Decimal] = defaultdict(Decimal)
    for event in events:
        if event["kind"] == "Fill":
            journal_fills[event["record"]["client_order_id"]] += Decimal(event["record"]["qty"])
    differ = {}
    for order in venue_orders:
        cid = order["client_order_id"]
        mine = journal_orders[cid]
        venue_filled = Decimal(order["filled_qty"])
        if (venue_filled, venue_filled, order["status"]) != (
            Decimal(mine["filled_qty"]), journal_fills[cid], mine["status"]
        ):
            differ[cid] = {
                "venue": (order["status"], order["filled_qty"]),
                "journal": (mine["status"], mine["filled_qty"], str(journal_fills[cid])),
            }
    assert not differ, f"orders where venue (status, filled) and journal (status, filled, Σ fills) differ: {differ}"
    for cid, order in journal_orders.items():
        if cid not in per_client_id:
            # Journaled but never sent (a crash between the commit and the send): recovery
            # must have closed it as rejected, with nothing filled.
            assert order["status"] == "rejected" and Decimal(order["filled_qty"]) == 0, order
            assert journal_fills[cid] == 0, (cid, journal_fills[cid])

    # (3) Journal positions and cash equal the venue's.
    journal_positions = {k: Decimal(v) for k, v in book["positions"].items() if Decimal(v)}
    assert journal_positions == positions, f"positions: journal {journal_positions}, venue {positions}"
    difference = abs(Decimal(book["cash"]) - cash)
    assert difference <= CASH_TOLERANCE, f"cash: journal {book['cash']}, venue {cash} (differ by {difference})"
