"""``kestrel tail``: filters, one order's story, pass-through, malformed lines, following.

The log under test is written by the engine's own logging (:mod:`engine.logs`), with the
correlation ids coming from real bus messages set as the message being handled, exactly
as the actor runtime does; only its wall clock is stepped so the timestamps are known.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from engine import logs
from engine.logs import CURRENT_MESSAGE, configure_logging, get_logger, shutdown_logging
from engine.messages import (
    Fill,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    Side,
    SubmitOrder,
    TimeInForce,
)
from kestrel.tail_cli import (
    LogFilter,
    Record,
    TailOptions,
    colour_enabled,
    follow,
    format_line,
    parse_record,
    parse_since,
    run_tail,
)

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "kestrel.cli"]
START = dt.datetime(2026, 3, 2, 14, 30, tzinfo=dt.UTC)
MALFORMED = [b"engine restarted here, not json\n", b"[1, 2, 3]\n"]
CUT_OFF = b'{"actor":"risk","event":"intent_appr'


def _intent(intent_id: str, symbol: str) -> OrderIntent:
    return OrderIntent(
        intent_id=intent_id, strategy="ema-cross", symbol=symbol, side=Side.BUY, qty=Decimal(10),
        order_type=OrderType.LIMIT, limit_price=Decimal("120.50"), ts_init=0,
    )


def _submit(client_order_id: str, intent_id: str, symbol: str) -> SubmitOrder:
    return SubmitOrder(
        client_order_id=client_order_id, intent_id=intent_id, symbol=symbol, side=Side.BUY, qty=Decimal(10),
        order_type=OrderType.LIMIT, limit_price=Decimal("120.50"), time_in_force=TimeInForce.DAY, ts_init=0,
    )


def _update(client_order_id: str, status: OrderStatus) -> OrderUpdate:
    return OrderUpdate(client_order_id=client_order_id, venue_order_id="v-" + client_order_id, status=status,
                       ts_event=0, ts_recv=0)


def _fill(client_order_id: str, intent_id: str, symbol: str) -> Fill:
    return Fill(
        client_order_id=client_order_id, venue_order_id="v-" + client_order_id, execution_id="x-1",
        intent_id=intent_id, strategy="ema-cross", symbol=symbol, side=Side.BUY, qty=Decimal(10),
        price=Decimal("120.49"), fee=Decimal(0), ts_event=0, ts_recv=0,
    )


def write_engine_log(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A short session's log: two orders and a rejected intent, one minute apart per line."""
    minutes = iter(range(1000))

    def stepped_wall_time_ns() -> int:
        return int((START + dt.timedelta(minutes=next(minutes))).timestamp()) * 1_000_000_000

    monkeypatch.setattr(logs, "wall_time_ns", stepped_wall_time_ns)
    configure_logging(path, "debug")
    risk, om, venue, settlement = (get_logger(actor=a) for a in ("risk", "order-manager", "alpaca", "settlement"))

    def handling(message: object, log: Callable[[], None]) -> None:
        token = CURRENT_MESSAGE.set(message)
        try:
            log()
        finally:
            CURRENT_MESSAGE.reset(token)

    try:
        get_logger(component="journal").info("journal_opened", journal="/tmp/j.db")          # 14:30
        get_logger(actor="pricing").debug("md_fresh", symbol="IBM", provider="alpaca-iex")   # 14:31
        handling(_intent("ema-cross.0-1", "IBM"), lambda: risk.info("intent_approved", notional="1205.00"))  # 14:32
        handling(_submit("kestrel-1", "ema-cross.0-1", "IBM"), lambda: om.info("order_submitting"))  # 14:33
        handling(_submit("kestrel-1", "ema-cross.0-1", "IBM"), lambda: venue.info("order_sent", attempt=1))  # 14:34
        handling(_intent("ema-cross.0-2", "IBM"), lambda: risk.info("intent_rejected", reason="MAX_QTY"))  # 14:35
        handling(_update("kestrel-1", OrderStatus.ACCEPTED), lambda: om.info("order_accepted"))  # 14:36
        handling(_intent("ema-cross.0-3", "MSFT"), lambda: risk.info("intent_approved", notional="4100.00"))  # 14:37
        handling(_submit("kestrel-2", "ema-cross.0-3", "MSFT"), lambda: om.info("order_submitting"))  # 14:38
        handling(
            _fill("kestrel-1", "ema-cross.0-1", "IBM"), lambda: settlement.info("fill_booked", cash="98795.00")
        )  # 14:39
        handling(
            _update("kestrel-2", OrderStatus.REJECTED),
            lambda: om.warning("order_rejected_by_venue", reason="insufficient buying power"),
        )  # 14:40
        try:
            raise RuntimeError("venue said no")
        except RuntimeError as exc:
            get_logger(actor="alpaca").error("request_failed", exc_info=exc)  # 14:41
    finally:
        shutdown_logging()
        configure_logging(None)
    with open(path, "ab") as file:
        file.writelines(MALFORMED)
        file.write(CUT_OFF)


@pytest.fixture
def engine_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "logs" / "kestrel.jsonl"
    write_engine_log(path, monkeypatch)
    return path


def tail(path: Path, **options: object) -> bytes:
    out = io.BytesIO()
    run_tail(TailOptions(path=path, **options), out)  # type: ignore[arg-type]
    return out.getvalue()


def events(output: bytes) -> list[str]:
    """The event column of human output (malformed lines as ``?``)."""
    found = []
    for line in output.decode().splitlines():
        if line.startswith(" " * 23 + " ?"):
            found.append("?")
        elif line[:4].isdigit():
            found.append(line.split()[4])
    return found


def json_events(output: bytes) -> list[str]:
    return [orjson.loads(line)["event"] for line in output.splitlines()]


# ---------------------------------------------------------------- the fixture is what the engine writes


def test_the_fixture_carries_the_engines_correlation_ids(engine_log: Path) -> None:
    lines = engine_log.read_bytes().splitlines()
    risk = orjson.loads(lines[2])
    assert risk["actor"] == "risk" and risk["intent_id"] == "ema-cross.0-1" and "client_order_id" not in risk
    assert risk["ts"] == "2026-03-02T14:32:00.000000+00:00"
    sent = orjson.loads(lines[4])
    assert (sent["client_order_id"], sent["intent_id"], sent["symbol"]) == ("kestrel-1", "ema-cross.0-1", "IBM")
    accepted = orjson.loads(lines[6])
    assert accepted["client_order_id"] == "kestrel-1" and "intent_id" not in accepted


# ---------------------------------------------------------------- filters


def test_without_filters_every_line_is_shown_in_file_order(engine_log: Path) -> None:
    assert events(tail(engine_log)) == [
        "journal_opened", "md_fresh", "intent_approved", "order_submitting", "order_sent", "intent_rejected",
        "order_accepted", "intent_approved", "order_submitting", "fill_booked", "order_rejected_by_venue",
        "request_failed", "?", "?", "?",
    ]


def test_actor_filter_also_matches_component_lines(engine_log: Path) -> None:
    out = tail(engine_log, json=True, log_filter=LogFilter(actor="risk"))
    assert json_events(out) == ["intent_approved", "intent_rejected", "intent_approved"]
    assert json_events(tail(engine_log, json=True, log_filter=LogFilter(actor="journal"))) == ["journal_opened"]


def test_level_is_a_minimum(engine_log: Path) -> None:
    out = tail(engine_log, json=True, log_filter=LogFilter(min_level="warning"))
    assert json_events(out) == ["order_rejected_by_venue", "request_failed"]
    assert "md_fresh" not in json_events(tail(engine_log, json=True, log_filter=LogFilter(min_level="info")))
    assert len(json_events(tail(engine_log, json=True, log_filter=LogFilter(min_level="debug")))) == 12


def test_symbol_filter_ignores_case_and_combines_with_and(engine_log: Path) -> None:
    msft = json_events(tail(engine_log, json=True, log_filter=LogFilter(symbol="msft")))
    assert msft == ["intent_approved", "order_submitting"]  # the venue's rejection names no symbol
    both = tail(engine_log, json=True, log_filter=LogFilter(symbol="IBM", actor="order-manager"))
    assert json_events(both) == ["order_submitting"]


def test_since_absolute(engine_log: Path) -> None:
    since = parse_since("2026-03-02T14:39:00Z", START)
    assert json_events(tail(engine_log, json=True, log_filter=LogFilter(since=since))) == [
        "fill_booked", "order_rejected_by_venue", "request_failed",
    ]
    naive_is_utc = parse_since("2026-03-02 14:40", START)
    assert json_events(tail(engine_log, json=True, log_filter=LogFilter(since=naive_is_utc)))[0] == (
        "order_rejected_by_venue"
    )


def test_since_relative_counts_back_from_now(engine_log: Path) -> None:
    now = START + dt.timedelta(minutes=12)  # 14:42
    assert parse_since("3m", now) == START + dt.timedelta(minutes=9)
    assert parse_since("2h", now) == now - dt.timedelta(hours=2)
    assert parse_since("30s", now) == now - dt.timedelta(seconds=30)
    assert parse_since("1.5d", now) == now - dt.timedelta(hours=36)
    out = tail(engine_log, json=True, log_filter=LogFilter(since=parse_since("3m", now)))
    assert json_events(out) == ["fill_booked", "order_rejected_by_venue", "request_failed"]
    for bad in ("10x", "yesterday", "", "-5m"):
        with pytest.raises(ValueError):
            parse_since(bad, now)


# ---------------------------------------------------------------- one order's story


def test_order_story_includes_the_risk_decision_made_before_the_order_existed(engine_log: Path) -> None:
    out = tail(engine_log, json=True, order="kestrel-1")
    assert json_events(out) == ["intent_approved", "order_submitting", "order_sent", "order_accepted", "fill_booked"]
    actors = [orjson.loads(line)["actor"] for line in out.splitlines()]
    assert actors == ["risk", "order-manager", "alpaca", "order-manager", "settlement"]
    other = tail(engine_log, json=True, order="kestrel-2")
    assert json_events(other) == ["intent_approved", "order_submitting", "order_rejected_by_venue"]
    assert b"ema-cross.0-2" not in out + other  # the rejected intent belongs to no order
    assert tail(engine_log, json=True, order="kestrel-404") == b""


def test_order_story_combines_with_other_filters(engine_log: Path) -> None:
    # The line linking the intent to the order is the order manager's: filtered out, it still links.
    assert json_events(tail(engine_log, json=True, order="kestrel-1", log_filter=LogFilter(actor="risk"))) == [
        "intent_approved"
    ]


def test_order_story_while_following_releases_held_lines_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    path.write_bytes(b"")
    seen: list[bytes] = []
    stop = threading.Event()

    class Sink(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            seen.append(data)
            return len(data)

    worker = threading.Thread(
        target=run_tail, args=(TailOptions(path=path, json=True, order="c-1", follow=True, poll_s=0.01), Sink(), stop)
    )
    worker.start()
    try:
        lines = [
            b'{"event":"intent_approved","actor":"risk","intent_id":"i-1"}\n',
            b'{"event":"intent_approved","actor":"risk","intent_id":"i-9"}\n',
            b'{"event":"order_submitting","actor":"order-manager","intent_id":"i-1","client_order_id":"c-1"}\n',
            b'{"event":"order_accepted","actor":"order-manager","client_order_id":"c-1"}\n',
        ]
        with open(path, "ab", buffering=0) as file:
            for line in lines:
                file.write(line)
        wait_until(lambda: len(seen) >= 3)
    finally:
        stop.set()
        worker.join(5)
    assert seen == [lines[0], lines[2], lines[3]]


# ---------------------------------------------------------------- output


def test_json_passes_the_file_through_byte_for_byte(engine_log: Path) -> None:
    raw = engine_log.read_bytes()
    # Unfiltered, malformed lines pass too; only the cut-off last line gets its newline.
    assert tail(engine_log, json=True) == raw + b"\n"
    filtered = tail(engine_log, json=True, log_filter=LogFilter(actor="order-manager"))
    file_lines = raw.splitlines(keepends=True)
    assert filtered.splitlines(keepends=True) == [line for line in file_lines if b'"actor":"order-manager"' in line]
    assert b"not json" not in filtered and CUT_OFF not in filtered


def test_malformed_lines_are_shown_raw_and_never_crash(engine_log: Path) -> None:
    out = tail(engine_log, log_filter=LogFilter(actor="risk")).decode().splitlines()
    raw = [line for line in out if line.startswith(" " * 23 + " ?")]
    assert [line.split("?", 1)[1].strip() for line in raw] == [
        "engine restarted here, not json", "[1, 2, 3]", CUT_OFF.decode(),
    ]
    assert parse_record(b"\xff\xfe garbage\n").malformed
    assert parse_record(b'"a string"\n').malformed
    escaped = format_line(parse_record(b"\x1b[31mred\x07\n"), colour=False)
    assert "\x1b" not in escaped and "\\x1b[31mred\\x07" in escaped


def test_human_lines_have_aligned_columns_and_key_values(engine_log: Path) -> None:
    out = tail(engine_log, order="kestrel-1").decode().splitlines()[:5]  # then the three malformed lines
    assert out[1].split() == [
        "2026-03-02", "14:33:00.000", "info", "order-manager", "order_submitting",
        "intent_id=ema-cross.0-1", "client_order_id=kestrel-1", "symbol=IBM", "msg_type=SubmitOrder",
    ]
    assert {line.index("info") for line in out} == {24}
    assert {line.index(line.split()[4]) for line in out} == {24 + 9 + 17}
    rejected = tail(engine_log, log_filter=LogFilter(min_level="warning")).decode()
    assert 'reason="insufficient buying power"' in rejected
    # A traceback follows its line, indented, rather than as one escaped value.
    assert "\n    exception:\n      Traceback (most recent call last):\n" in rejected
    assert '      RuntimeError: venue said no' in rejected


def test_colour_only_on_a_terminal_and_never_with_no_color(engine_log: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert colour_enabled(Terminal(), {})
    assert not colour_enabled(io.StringIO(), {})
    assert not colour_enabled(Terminal(), {"NO_COLOR": "1"})
    assert not colour_enabled(Terminal(), {"TERM": "dumb"})
    assert colour_enabled(Terminal(), {"NO_COLOR": ""})  # no-color.org: set *and non-empty*
    record = parse_record(engine_log.read_bytes().splitlines()[10])
    coloured, plain = format_line(record, colour=True), format_line(record, colour=False)
    assert "\x1b[33m" in coloured and "\x1b[" not in plain  # warning in yellow
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured) == plain  # padded before painted: same alignment
    done = subprocess.run([*CLI, "tail", str(engine_log)], capture_output=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "NO_COLOR": ""})
    assert done.returncode == 0 and b"\x1b[" not in done.stdout  # a pipe is not a terminal


def test_format_line_of_a_record_without_the_usual_fields() -> None:
    line = format_line(Record(b"{}\n", {"x": 1, "note": "two words"}), colour=False)
    assert line.split() == ["-", "-", "-", "-", "x=1", 'note="two', 'words"']


# ---------------------------------------------------------------- following


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


class Follower:
    """``follow`` in a thread, collecting the lines it yields."""

    def __init__(self, path: Path) -> None:
        self.lines: list[bytes] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(path,))
        self.thread.start()

    def _run(self, path: Path) -> None:
        for line in follow(path, self.stop, poll_s=0.01):
            self.lines.append(line)

    def saw(self, count: int) -> None:
        wait_until(lambda: len(self.lines) >= count)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def follower(tmp_path: Path) -> Iterator[Callable[[Path], Follower]]:
    started: list[Follower] = []

    def start(path: Path) -> Follower:
        started.append(Follower(path))
        return started[-1]

    yield start
    for f in started:
        f.close()


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as file:
        file.write(data)


def test_follow_picks_up_appended_lines_and_joins_a_line_written_in_two_parts(
    tmp_path: Path, follower: Callable[[Path], Follower]
) -> None:
    path = tmp_path / "k.jsonl"
    path.write_bytes(b"a\nb\n")
    f = follower(path)
    f.saw(2)
    _append(path, b"c\n")
    f.saw(3)
    _append(path, b'{"half":')
    time.sleep(0.05)
    assert len(f.lines) == 3  # a partial line waits for its newline
    _append(path, b'"done"}\n')
    f.saw(4)
    assert f.lines == [b"a\n", b"b\n", b"c\n", b'{"half":"done"}\n']


def test_follow_survives_rotation(tmp_path: Path, follower: Callable[[Path], Follower]) -> None:
    path = tmp_path / "k.jsonl"
    path.write_bytes(b"a\nb\n")
    f = follower(path)
    f.saw(2)
    path.rename(tmp_path / "k.jsonl.1")
    _append(tmp_path / "k.jsonl.1", b"c\n")  # still written through the old handle, then a new file
    time.sleep(0.05)  # the name is missing meanwhile: waited out
    path.write_bytes(b"d\n")
    f.saw(4)
    _append(path, b"e\n")
    f.saw(5)
    assert f.lines == [b"a\n", b"b\n", b"c\n", b"d\n", b"e\n"]


def test_follow_survives_truncation(tmp_path: Path, follower: Callable[[Path], Follower]) -> None:
    path = tmp_path / "k.jsonl"
    path.write_bytes(b"first line\nsecond line\n")
    f = follower(path)
    f.saw(2)
    with open(path, "wb") as file:  # same file, cut to nothing, written again
        file.write(b"x\n")
    f.saw(3)
    _append(path, b"y\n")
    f.saw(4)
    assert f.lines == [b"first line\n", b"second line\n", b"x\n", b"y\n"]


def test_follow_ends_after_max_idle_and_yields_a_cut_off_last_line(tmp_path: Path) -> None:
    path = tmp_path / "k.jsonl"
    path.write_bytes(b'{"a":1}\n{"cut')
    idles: list[int] = []
    lines = list(follow(path, threading.Event(), poll_s=0.01, max_idle_s=0.05, on_idle=lambda: idles.append(1)))
    assert lines == [b'{"a":1}\n', b'{"cut']
    assert len(idles) >= 5


# ---------------------------------------------------------------- the command


def test_cli_order_story(engine_log: Path) -> None:
    done = subprocess.run([*CLI, "tail", str(engine_log), "--order", "kestrel-1"], capture_output=True, cwd=ROOT,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert events(done.stdout) == [
        "intent_approved", "order_submitting", "order_sent", "order_accepted", "fill_booked",
        "?", "?", "?",  # human output shows malformed lines whatever the filter
    ]
    assert done.stderr == b""


def test_cli_default_file_is_the_configs_log_path(engine_log: Path, tmp_path: Path) -> None:
    config = tmp_path / "conf" / "k.toml"
    config.parent.mkdir()
    config.write_text('[log]\npath = "../logs/kestrel.jsonl"\n')
    done = subprocess.run([*CLI, "tail", "--config", str(config), "--json", "--level", "error"], capture_output=True,
                          cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json_events(done.stdout) == ["request_failed"]


def test_cli_follow_with_max_idle(engine_log: Path) -> None:
    done = subprocess.run([*CLI, "tail", str(engine_log), "-f", "--interval", "0.01", "--max-idle", "0.1", "--json",
                           "--symbol", "MSFT"], capture_output=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json_events(done.stdout) == ["intent_approved", "order_submitting"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["tail", "no-such.jsonl"], b"no-such.jsonl: No such file or directory"),
        (["tail", "x.jsonl", "--since", "soon"], b"argument --since"),
        (["tail", "x.jsonl", "--level", "loud"], b"argument --level"),
    ],
)
def test_cli_usage_errors_exit_2_without_traceback(tmp_path: Path, args: list[str], message: bytes) -> None:
    done = subprocess.run([*CLI, *args], capture_output=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert message in done.stderr and b"Traceback" not in done.stderr
    assert done.stdout == b""


def test_cli_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = orjson.dumps({"ts": "2026-03-02T14:30:00+00:00", "level": "info", "event": "md_fresh", "actor": "pricing",
                         "symbol": "IBM", "pad": "x" * 200}) + b"\n"
    path.write_bytes(line * 20_000)  # ~5 MB: far more than a pipe holds
    process = subprocess.Popen([*CLI, "tail", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert process.stdout is not None and process.stderr is not None
    assert b"md_fresh" in process.stdout.readline()
    process.stdout.close()  # what `| head -1` does
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""
    process.stderr.close()
