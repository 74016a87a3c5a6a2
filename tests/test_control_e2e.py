"""The operator control channel end to end: ``kestrel halt|flatten|resume`` against a real ``kestrel run``.

tests/test_control.py checks the channel against a fake dispatcher; here every piece is
real. ``kestrel run`` is a child process (paper mode, the embedded Alpaca simulator replaying
a small synthetic IBM session at real-time speed) with its journal, control file and log in
``tmp_path`` and its working directory there. The operator commands are further child
processes (``python -m kestrel.cli halt ...``) that find the engine through its control
file and reach it over HTTP on 127.0.0.1, exactly as a person at a shell would. The test
itself reads the engine's trading state the way the CLI reaches the engine: ``GET
/control/state`` with the token from the control file.

What is proved:

- ``halt`` is accepted (exit 0) and the engine is ``halted`` at once; ``flatten`` while
  halted is refused (exit 3); a ``resume`` sent with a wrong token fails (exit 2) and changes
  nothing; ``resume`` is accepted (exit 0) and trading becomes ``active``; ``flatten`` then
  is accepted (exit 0), moves to ``reducing`` and sends the order that closes the position
  the strategy had bought, which fills;
- SIGINT stops the engine in order (exit 0, control file removed, journal verifies), and
  the journal holds the operator's states, in order, with cause ``operator`` and the
  operator's name and reason;
- the kill switch survives a restart: an engine started again on the journal of a halted
  one comes up ``halted`` (state endpoint, ``flatten`` refused, the ``--json`` summary).

Each engine is killed in a ``finally`` whatever happens; every wait is a bounded poll.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from adapters.control_http import (
    ControlEndpoint,
    ControlFileError,
    generate_token,
    read_control_file,
    write_control_file,
)
from tests.helpers import write_lean_zip

CLI = [sys.executable, "-m", "kestrel.cli"]
OPERATOR = "e2e-operator"
HALT_REASON = "e2e: halt while the desk checks a fill"
FLATTEN_REASON = "e2e: flatten before the close"
RESUME_REASON = "e2e: desk says all clear"
READY_TIMEOUT_S = 30.0
WAIT_TIMEOUT_S = 20.0
CLI_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
FALLING_QUOTES = 20
"""The synthetic session falls for 2 s before it rises: the engine subscribes to market data
within tens of milliseconds of the simulator starting its feed, so ``ema-cross`` sees the
fall, then exactly one upward cross, and buys once."""

# The engine's state endpoint is on loopback: never through a proxy named in the environment.
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---------------------------------------------------------------- fixtures: data, config, environment


def _falling_then_rising_day(folder: Path, quotes: int = 3000) -> list[Path]:
    """IBM around $180: a quote pair every 100 ms, down a cent each for ``FALLING_QUOTES``, then up a cent each.

    At speed 1 that is 5 minutes of quotes: the engine never runs out of market data during
    a test (it is stopped with SIGINT long before). Monotonic after the turn, so ``ema-cross``
    (fast 2, slow 4) crosses upward once, buys ``qty`` and never sells.
    """
    mid = 1_800_000  # $180.0000 (LEAN prices are dollars x 10,000)
    ms = 34_200_000  # 09:30 New York
    quote_rows: list[tuple[object, ...]] = []
    trade_rows: list[tuple[object, ...]] = []
    for i in range(quotes):
        mid += -100 if i < FALLING_QUOTES else 100
        quote_rows.append((ms, mid - 100, 500, 0, 0, "P", 1, 0))
        quote_rows.append((ms, 0, 0, mid + 100, 500, "N", 1, 0))
        if i % 10 == 0:
            trade_rows.append((ms, mid, 100, "D", 0, 0))
        ms += 100
    day = folder / "ibm"
    return [
        write_lean_zip(day / "20240102_quote.zip", quote_rows),
        write_lean_zip(day / "20240102_trade.zip", trade_rows),
    ]


def _write_config(workdir: Path, files: list[Path], strategy: str, name: str = "kestrel.toml") -> Path:
    """A paper config: embedded simulator, journal, control file and log all under ``workdir``."""
    config = workdir / name
    config.write_text(
        "[engine]\n"
        'mode = "paper"\n'
        "[venue]\n"
        'kind = "simulator"\n'
        "[data]\n"
        f"files = {orjson.dumps([str(f) for f in files]).decode()}\n"
        "[strategy]\n"
        f'name = "{strategy}"\n'
        "[strategy.params]\n"
        "fast = 2\n"
        "slow = 4\n"
        + ("qty = 10\n" if strategy == "ema-cross" else "")
        + "[journal]\n"
        f"path = {orjson.dumps(str(workdir / 'journal.db')).decode()}\n"
        "[control]\n"
        f"file = {orjson.dumps(str(workdir / 'run' / 'control.json')).decode()}\n"
        "[log]\n"
        f"path = {orjson.dumps(str(workdir / 'kestrel.jsonl')).decode()}\n"
    )
    return config


def _env() -> dict[str, str]:
    """No KESTREL_* (a control file or profile of the caller's) and no Alpaca keys: the engine's own defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("KESTREL_", "APCA_"))}


def _default_sigint() -> None:
    """In the child, before exec: SIGINT back to its default, so Python turns it into KeyboardInterrupt.

    A child of a shell's background job would otherwise inherit SIGINT ignored, and the
    engine would never hear the test's stop request.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def kestrel(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """One ``kestrel`` command, as the operator types it in ``cwd``."""
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )


def _wait_for(condition: Callable[[], bool], what: str, engine: Engine, timeout_s: float = WAIT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        engine.assert_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s\n{engine.diagnostics()}")
        time.sleep(0.05)


# ---------------------------------------------------------------- the engine under test


class Engine:
    """One ``kestrel run`` child process; its stdout and stderr go to files in ``workdir``."""

    def __init__(self, workdir: Path, config: Path, name: str, *args: str) -> None:
        self.workdir = workdir
        self.name = name
        self.control = workdir / "run" / "control.json"
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.endpoint: ControlEndpoint | None = None
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [*CLI, "run", "--config", str(config), "--speed", "1", *args],
                cwd=workdir,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # a Ctrl-C at the terminal is the test's to handle, not the engine's
                preexec_fn=_default_sigint,
            )

    def diagnostics(self) -> str:
        tail = self.stderr_path.read_text(errors="replace")[-2000:] if self.stderr_path.exists() else ""
        log = self.workdir / "kestrel.jsonl"
        log_tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
        return f"[{self.name}] exit {self.proc.poll()}; stderr:\n{tail}\nlog tail:\n{log_tail}"

    def assert_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"the engine stopped unexpectedly\n{self.diagnostics()}")

    def wait_ready(self) -> str:
        """Wait for the control file, then for recovery to end; the trading state it ended in."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while self.endpoint is None:
            self.assert_alive()
            with contextlib.suppress(ControlFileError):  # not written yet (it is replaced atomically)
                self.endpoint = read_control_file(self.control)
            if time.monotonic() > deadline:
                raise AssertionError(f"no control file within {READY_TIMEOUT_S} s\n{self.diagnostics()}")
            time.sleep(0.05)
        assert self.endpoint.pid == self.proc.pid, "the control file is this engine's"
        assert self.endpoint.url.startswith("http://127.0.0.1:")
        while (state := self.state()) == "recovering":
            self.assert_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"still recovering after {READY_TIMEOUT_S} s\n{self.diagnostics()}")
            time.sleep(0.05)
        return state

    def state(self) -> str:
        """Risk's trading state, from ``GET /control/state`` with the control file's token."""
        assert self.endpoint is not None
        request = urllib.request.Request(
            f"{self.endpoint.url}/control/state", headers={"Authorization": f"Bearer {self.endpoint.token}"}
        )
        with _opener.open(request, timeout=10) as response:
            stats: dict[str, Any] = orjson.loads(response.read())
        states = list(stats["breakdown"]["trading_state"])
        assert len(states) == 1, stats
        return str(states[0])

    def interrupt(self) -> int:
        """SIGINT (Ctrl-C): the engine stops in order. Its exit code."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"SIGINT did not stop the engine in {STOP_TIMEOUT_S} s\n{self.diagnostics()}"
            ) from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(timeout=10)


@contextlib.contextmanager
def running_engine(workdir: Path, config: Path, name: str, *args: str) -> Iterator[Engine]:
    engine = Engine(workdir, config, name, *args)
    try:
        yield engine
    finally:
        engine.kill()


# ---------------------------------------------------------------- reading the journal (as the operator does)


def _journal_json(command: str, journal: Path, cwd: Path) -> Any:
    done = kestrel("journal", command, str(journal), "--json", cwd=cwd)
    assert done.returncode == 0, (command, done.stdout, done.stderr)
    return orjson.loads(done.stdout)


def _position(journal: Path, cwd: Path, symbol: str = "IBM") -> Decimal:
    """The position in ``symbol`` the journal derives (read-only: works on a running engine's journal)."""
    positions: dict[str, str] = _journal_json("positions", journal, cwd)["positions"]
    return Decimal(positions.get(symbol, "0"))


def _operator_orders(journal: Path, cwd: Path) -> list[dict[str, Any]]:
    """The orders the journal holds for the operator (a flatten's closing orders)."""
    orders: list[dict[str, Any]] = _journal_json("orders", journal, cwd)
    return [o for o in orders if o["strategy"] == "operator"]


def _state_changes(journal: Path, cwd: Path) -> list[dict[str, Any]]:
    """Every journaled ``TradingStateChanged`` record, in journal order (with its seq)."""
    events: list[dict[str, Any]] = _journal_json("show", journal, cwd)
    return [{"seq": e["seq"], **e["record"]} for e in events if e["kind"] == "TradingStateChanged"]


def _assert_stopped_in_order(engine: Engine, code: int) -> None:
    # The engine handles SIGINT/SIGTERM itself: an orderly stop, its summary, exit 0.
    assert code == 0, f"SIGINT: expected exit 0\n{engine.diagnostics()}"
    assert not engine.control.exists(), "an orderly stop removes the control file (its token is dead)"
    assert "Traceback" not in engine.stderr_path.read_text(errors="replace")


# ---------------------------------------------------------------- the tests


def test_halt_flatten_resume_act_on_a_running_engine_and_are_journaled(tmp_path: Path) -> None:
    config = _write_config(tmp_path, _falling_then_rising_day(tmp_path / "feed"), "ema-cross")
    journal = tmp_path / "journal.db"
    with running_engine(tmp_path, config, "engine") as engine:
        assert engine.wait_ready() == "active"
        endpoint = engine.endpoint
        assert endpoint is not None
        # The strategy buys on the upward turn: a position for the operator to flatten later.
        _wait_for(lambda: _position(journal, tmp_path) > 0, "filled buy in the journal", engine)
        held = _position(journal, tmp_path)

        # halt: no --control, found at the default run/control.json under the working directory.
        halt = kestrel("halt", "--reason", HALT_REASON, "--operator", OPERATOR, cwd=tmp_path)
        assert halt.returncode == 0, (halt.stdout, halt.stderr)
        assert halt.stdout.startswith("halted: halted"), halt.stdout
        assert engine.state() == "halted"  # a more restrictive state applies at once

        refused = kestrel(
            "flatten", "--reason", FLATTEN_REASON, "--operator", OPERATOR, "--control", str(engine.control), "--json",
            cwd=tmp_path,
        )
        assert refused.returncode == 3, (refused.stdout, refused.stderr)
        reply = orjson.loads(refused.stdout)
        assert reply["accepted"] is False and reply["state"] == "halted", reply
        assert "resume before flattening" in reply["detail"]
        assert reply["intents"] == []
        assert engine.state() == "halted"

        # A stale control file: the engine's URL and pid, another token. Exit 2, nothing changes.
        stale = tmp_path / "stale" / "control.json"
        wrong_token = generate_token()
        write_control_file(stale, endpoint.url, wrong_token, endpoint.pid)
        wrong = kestrel(
            "resume", "--reason", RESUME_REASON, "--operator", OPERATOR, "--control", str(stale), cwd=tmp_path
        )
        assert wrong.returncode == 2, (wrong.stdout, wrong.stderr)
        assert "refused the token" in wrong.stderr and wrong.stdout == ""
        output = wrong.stdout + wrong.stderr
        assert wrong_token not in output and endpoint.token not in output
        assert engine.state() == "halted", "a resume with the wrong token must not resume"

        resume = kestrel(
            "resume", "--reason", RESUME_REASON, "--operator", OPERATOR, "--control", str(engine.control),
            cwd=tmp_path,
        )
        assert resume.returncode == 0, (resume.stdout, resume.stderr)
        assert resume.stdout.startswith("resumed: active"), resume.stdout
        # A resume takes effect once the order manager has journaled it.
        _wait_for(lambda: engine.state() == "active", "active trading after the resume", engine)
        assert _position(journal, tmp_path) == held, "nothing traded while halted"

        flatten = kestrel(
            "flatten", "--reason", FLATTEN_REASON, "--operator", OPERATOR, "--control", str(engine.control), "--json",
            cwd=tmp_path,
        )
        assert flatten.returncode == 0, (flatten.stdout, flatten.stderr)
        reply = orjson.loads(flatten.stdout)
        assert reply["accepted"] is True and reply["state"] == "reducing", reply
        assert len(reply["intents"]) == 1 and reply["intents"][0].startswith("operator-flatten."), reply
        _wait_for(
            lambda: _position(journal, tmp_path) == 0 and [o["status"] for o in _operator_orders(journal, tmp_path)]
            == ["filled"],
            "flatten order filled and journaled",
            engine,
        )
        assert engine.state() == "reducing"

        _assert_stopped_in_order(engine, engine.interrupt())

    verify = kestrel("journal", "verify", str(journal), cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    changes = _state_changes(journal, tmp_path)
    assert changes[0]["state"] == "active" and changes[0]["cause"] == "recovery", changes
    by_operator = [c for c in changes if c["cause"] == "operator"]
    # Exactly what the operator was granted, in order: the refused flatten and the wrong-token
    # resume left no trace.
    assert [c["state"] for c in by_operator] == ["halted", "active", "reducing"], changes
    halted, resumed, reducing = by_operator
    assert halted["reason"] == f"operator halt ({OPERATOR}: {HALT_REASON})"
    assert resumed["reason"] == f"operator resume ({OPERATOR}: {RESUME_REASON})"
    assert reducing["reason"] == f"operator flatten ({OPERATOR}: {FLATTEN_REASON})"
    assert halted["seq"] < resumed["seq"] < reducing["seq"]
    assert changes[-1] == reducing, "nothing moved the state after the flatten"

    # The closing order is the operator's, journaled like any other, and filled.
    closing = _operator_orders(journal, tmp_path)
    assert len(closing) == 1, closing
    assert closing[0]["side"] == "sell" and Decimal(closing[0]["qty"]) == held
    assert closing[0]["status"] == "filled" and Decimal(closing[0]["filled_qty"]) == held


def test_the_kill_switch_survives_a_restart(tmp_path: Path) -> None:
    files = _falling_then_rising_day(tmp_path / "feed")
    # ema-watch never trades: the restarted engine's fresh simulator agrees with the journal,
    # so a halt after the restart can only be the kill switch, not a reconciliation mismatch.
    config = _write_config(tmp_path, files, "ema-watch")
    journal = tmp_path / "journal.db"
    with running_engine(tmp_path, config, "first") as first:
        assert first.wait_ready() == "active"
        halt = kestrel("halt", "--reason", HALT_REASON, "--operator", OPERATOR, cwd=tmp_path)
        assert halt.returncode == 0, (halt.stdout, halt.stderr)
        assert first.state() == "halted"
        _assert_stopped_in_order(first, first.interrupt())

    with running_engine(tmp_path, config, "second") as second:
        assert second.wait_ready() == "halted", "the kill switch must survive the restart"
        refused = kestrel("flatten", "--reason", FLATTEN_REASON, "--operator", OPERATOR, cwd=tmp_path)
        assert refused.returncode == 3, (refused.stdout, refused.stderr)
        assert refused.stdout.startswith("flatten refused: halted"), refused.stdout
        assert second.state() == "halted"
        _assert_stopped_in_order(second, second.interrupt())

    # A third start plays a short recording at full speed to its end and prints its summary.
    short_files = _falling_then_rising_day(tmp_path / "short-feed", quotes=50)
    short = _write_config(tmp_path, short_files, "ema-watch", name="short.toml")
    done = subprocess.run(
        [*CLI, "run", "--config", str(short), "--json"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["trading_state"] == "halted", summary
    operator_halt = f"operator halt ({OPERATOR}: {HALT_REASON})"
    assert summary["trading_reason"] == operator_halt, summary  # the operator's words, not a restart's

    changes = _state_changes(journal, tmp_path)
    # The restarts kept the halt as journaled and journaled nothing again.
    assert [(c["state"], c["cause"], c["reason"]) for c in changes] == [
        ("active", "recovery", "recovered: journal and venue agree"),  # first start
        ("halted", "operator", operator_halt),  # kestrel halt
    ], changes


def test_sigterm_stops_the_default_paper_run_in_order(tmp_path: Path) -> None:
    """``kestrel run`` on the embedded simulator and its recording: SIGTERM (a service manager's
    stop) ends it as SIGINT does — summary printed, exit 0, control file (and token) removed."""
    config = _write_config(tmp_path, _falling_then_rising_day(tmp_path / "feed"), "ema-watch")
    with running_engine(tmp_path, config, "sigterm", "--json") as engine:
        assert engine.wait_ready() == "active"
        engine.proc.send_signal(signal.SIGTERM)
        code = engine.proc.wait(timeout=STOP_TIMEOUT_S)
        assert code == 0, engine.diagnostics()
        assert not engine.control.exists()
        summary = orjson.loads(engine.stdout_path.read_bytes())
        assert summary["mode"] == "paper" and summary["trading_state"] == "active", summary
