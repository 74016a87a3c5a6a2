"""``kestrel tail``: read Kestrel's JSON log (see :mod:`engine.logs`) as a person or a script would.

The log is one JSON object per line, with ``ts`` (ISO wall time, UTC), ``level``, ``event``,
``actor`` (or ``component``) and, while a message is being handled, its correlation ids
``intent_id``, ``client_order_id`` and ``symbol``. This command filters those lines and prints
them either as aligned, optionally coloured columns (time, level, actor, event, then
``key=value`` pairs) or, with ``--json``, byte for byte as they are in the file, for ``jq``.

Why each rule is what it is:

- Filters combine with AND. ``--level`` is a minimum; a line whose level Kestrel does not
  know is kept (hiding what we cannot rank could hide the one line that matters).
  ``--actor`` matches ``actor``, or ``component`` on lines that have no actor (the journal
  and the recording writer log under ``component``). ``--since`` drops lines whose ``ts``
  is missing or unreadable: they cannot be placed in time.
- ``--order CLIENT_ID`` tells one order's story across actors. Its lines are those carrying
  that ``client_order_id`` plus those carrying an ``intent_id`` seen on one of them: risk
  decides on the *intent* before the order manager gives it a client order id, so the
  decision line has only the intent id. That needs look-ahead, so the file is scanned once
  for the intent ids first; lines appended while following that carry a not-yet-linked
  intent id are held back (at most :data:`PENDING_LINES`) and released, in file order,
  when a line links their intent to the order.
- Malformed lines (not JSON, not an object, a last line cut off mid-write) never stop the
  command. In human output they are always shown, raw, with level ``?``: they cannot be
  tested against a filter, and hiding them would hide corruption (the cut-off line may be
  the very one you are looking for). With ``--json`` they are passed through unchanged
  only when no filter is set, so that ``kestrel tail --json`` alone reproduces the file;
  with any filter they are dropped, because the output is then meant for ``jq`` and one
  unparseable line would stop it. A line cut off without its newline gets one, so the
  next line is never glued to it.
- ``-f`` prints the existing (filtered) lines, then polls for appended ones. It follows
  rotation (the name now points at a new file: the rest of the old file is read, then the
  new one from its start) and truncation (the file shrank: read it again from offset 0).
  Truncation followed by a rewrite past the old size before the next poll cannot be told
  from appending; ``tail -F`` has the same blind spot. This is a CLI process without an
  event loop, so it blocks; it waits on a :class:`threading.Event` rather than sleeping,
  which also makes following stoppable (tests, ``--max-idle``).
- Colour only when stdout is a terminal, ``NO_COLOR`` is unset or empty and ``TERM`` is
  not ``dumb`` (https://no-color.org). Control characters from the file are escaped in
  human output so a corrupt line cannot drive the terminal.
- A closed pipe (``kestrel tail … | head``) ends the command quietly with status 0.

Exit status: 0 ok; 2 a usage error or a log file that cannot be opened (one line on stderr).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import orjson

from engine.clock import NS_PER_S, wall_time_ns
from engine.config import load_config
from engine.errors import UserError
from engine.logs import CORRELATION_FIELDS, LEVELS, configure_logging, console_for_stderr

__all__ = [
    "LogFilter",
    "OrderStory",
    "Record",
    "TailOptions",
    "add_tail_command",
    "cmd_tail",
    "colour_enabled",
    "follow",
    "format_line",
    "parse_record",
    "parse_since",
    "read_lines",
    "run_tail",
    "select",
]

PENDING_LINES: Final = 10_000
"""While following with ``--order``: lines with a not-yet-linked intent id held back, at most."""

DEFAULT_POLL_S: Final = 0.25
_CHUNK: Final = 1 << 16
_COLUMN_FIELDS: Final = frozenset(("ts", "level", "event", "actor"))
_WIDTHS: Final = (23, 8, 16, 28)  # time, level, actor, event
_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS_S: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_BARE_VALUE = re.compile(r"^[\w.:/@+\-,]+$")

_RESET: Final = "\x1b[0m"
_DIM: Final = "\x1b[2m"
_BOLD: Final = "\x1b[1m"
_CYAN: Final = "\x1b[36m"
_MAGENTA: Final = "\x1b[35m"
_LEVEL_COLOURS: Final = {
    "debug": _DIM,
    "info": "\x1b[32m",
    "warning": "\x1b[33m",
    "error": "\x1b[31m",
    "critical": "\x1b[1;31m",
}
_CONTROL_CHARS: Final = {
    code: f"\\x{code:02x}" for code in (*range(0x20), *range(0x7F, 0xA0)) if code != 0x09
}


# ---------------------------------------------------------------- records and filters


@dataclass(frozen=True, slots=True)
class Record:
    """One line of the log: its bytes as read (newline included) and, if it parsed, its object."""

    raw: bytes
    fields: dict[str, Any] | None

    @property
    def malformed(self) -> bool:
        return self.fields is None


def parse_record(raw: bytes) -> Record:
    """Never raises: a line that is not a JSON object becomes a malformed :class:`Record`."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Record(raw, None)
    return Record(raw, value if isinstance(value, dict) else None)


def _text(value: Any) -> str | None:
    """A correlation id as text: ids are strings, but a hand-written line may hold a number."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _timestamp(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """``--since``: an ISO timestamp (UTC unless it says otherwise) or ``N`` s/m/h/d before ``now``.

    ``now`` is a parameter so the rule is testable without a clock.
    """
    relative = _RELATIVE.match(text)
    if relative is not None:
        amount, unit = float(relative.group(1)), relative.group(2)
        return now - dt.timedelta(seconds=amount * _UNITS_S[unit])
    when = _timestamp(text.strip())
    if when is None:
        raise ValueError(f"expected an ISO time (2024-05-01T13:30:00Z) or an age like 30s, 10m, 2h, 1d; got {text!r}")
    return when


@dataclass(frozen=True, slots=True)
class LogFilter:
    """The stateless filters, combined with AND (``--order`` needs state: :class:`OrderStory`)."""

    actor: str | None = None
    min_level: str | None = None
    symbol: str | None = None
    since: dt.datetime | None = None

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.actor, self.min_level, self.symbol, self.since))

    def matches(self, fields: Mapping[str, Any]) -> bool:
        if self.actor is not None and _actor(fields) != self.actor:
            return False
        if self.min_level is not None:
            rank = LEVELS.get(str(fields.get("level", "")).lower())
            if rank is not None and rank < LEVELS[self.min_level]:
                return False
        if self.symbol is not None:
            symbol = _text(fields.get("symbol"))
            if symbol is None or symbol.upper() != self.symbol.upper():
                return False
        if self.since is not None:
            when = _timestamp(fields.get("ts"))
            if when is None or when < self.since:
                return False
        return True


def _actor(fields: Mapping[str, Any]) -> str | None:
    return _text(fields.get("actor")) or _text(fields.get("component"))


@dataclass(slots=True)
class OrderStory:
    """``--order``: the lines of one client order id and of the intent ids linked to it.

    ``intents`` starts with the ids found by :func:`collect_intents` over the file as it
    is; :meth:`feed` links more as lines arrive and releases lines held back for them.
    """

    client_order_id: str
    intents: set[str] = field(default_factory=set)
    pending: deque[Record] = field(default_factory=lambda: deque(maxlen=PENDING_LINES))

    def feed(self, record: Record, shown: bool) -> list[Record]:
        """The records to print now, in file order. ``shown``: the other filters accept ``record``.

        Every parsed record must be fed, shown or not: the line that links an intent to
        the order may itself be filtered out (``--actor risk --order X``).
        """
        fields = record.fields
        if fields is None:
            return []
        intent = _text(fields.get("intent_id"))
        if _text(fields.get("client_order_id")) == self.client_order_id:
            released: list[Record] = []
            if intent is not None and intent not in self.intents:
                self.intents.add(intent)
                released = [r for r in self.pending if _intent_of(r) == intent]
                if released:
                    kept = (r for r in self.pending if _intent_of(r) != intent)
                    self.pending = deque(kept, maxlen=PENDING_LINES)
            return [*released, record] if shown else released
        if intent is None or not shown:
            return []
        if intent in self.intents:
            return [record]
        self.pending.append(record)
        return []


def _intent_of(record: Record) -> str | None:
    return None if record.fields is None else _text(record.fields.get("intent_id"))


def collect_intents(lines: Iterable[bytes], client_order_id: str) -> set[str]:
    """The intent ids on lines that carry ``client_order_id`` (the look-ahead of ``--order``)."""
    intents: set[str] = set()
    for raw in lines:
        if client_order_id.encode() not in raw:  # cheap pre-check: most lines are about something else
            continue
        fields = parse_record(raw).fields
        if fields is not None and _text(fields.get("client_order_id")) == client_order_id:
            intent = _text(fields.get("intent_id"))
            if intent is not None:
                intents.add(intent)
    return intents


def select(
    records: Iterable[Record], log_filter: LogFilter, story: OrderStory | None, keep_malformed: bool
) -> Iterator[Record]:
    """The records to print, in file order (see the module docstring for malformed lines)."""
    for record in records:
        if record.fields is None:
            if keep_malformed:
                yield record
            continue
        shown = log_filter.matches(record.fields)
        if story is not None:
            yield from story.feed(record, shown)
        elif shown:
            yield record


# ---------------------------------------------------------------- human output


def colour_enabled(stream: IO[Any], environ: Mapping[str, str]) -> bool:
    """Colour on a terminal only, and never when ``NO_COLOR`` is set (non-empty) or ``TERM=dumb``."""
    if environ.get("NO_COLOR") or environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


def _escape(text: str) -> str:
    """Control characters as ``\\xNN``: text from a log file must not drive the terminal."""
    return text.translate(_CONTROL_CHARS)


def _paint(text: str, style: str, colour: bool) -> str:
    return f"{style}{text}{_RESET}" if colour and style else text


def _time_column(value: Any) -> str:
    when = _timestamp(value)
    if when is None:
        return _escape(str(value)) if value is not None else "-"
    when = when.astimezone(dt.UTC)
    return f"{when:%Y-%m-%d %H:%M:%S}.{when.microsecond // 1000:03d}"


def _value(value: Any) -> str:
    if isinstance(value, str) and _BARE_VALUE.match(value):
        return value
    return orjson.dumps(value, default=str).decode()  # quoted and escaped: one line, unambiguous


def format_line(record: Record, colour: bool) -> str:
    """One record as aligned columns — time (UTC), level, actor, event — then ``key=value``.

    Correlation ids come first among the pairs, the rest in file order. A multi-line string
    (a traceback under ``exception``) follows on indented lines, as a traceback reads best.
    Padding is applied before colouring so escape codes never break the alignment.
    """
    fields = record.fields
    if fields is None:
        raw = record.raw.decode("utf-8", errors="replace").rstrip("\r\n")
        time_col = " " * _WIDTHS[0]
        return f"{time_col} {_paint('?'.ljust(_WIDTHS[1]), _MAGENTA, colour)} {_escape(raw)}"
    level = str(fields.get("level", "-"))
    actor_key = "actor" if "actor" in fields else "component"
    columns = [
        _paint(_time_column(fields.get("ts")).ljust(_WIDTHS[0]), _DIM, colour),
        _paint(_escape(level).ljust(_WIDTHS[1]), _LEVEL_COLOURS.get(level.lower(), ""), colour),
        _paint(_escape(str(fields.get(actor_key, "-"))).ljust(_WIDTHS[2]), _CYAN, colour),
        _paint(_escape(str(fields.get("event", "-"))).ljust(_WIDTHS[3]), _BOLD, colour),
    ]
    skip = _COLUMN_FIELDS | {actor_key}
    keys: list[str] = [k for k in CORRELATION_FIELDS if k in fields]
    keys += [k for k in fields if k not in skip and k not in CORRELATION_FIELDS]
    pairs: list[str] = []
    trailers: list[str] = []
    for key in keys:
        value = fields[key]
        if isinstance(value, str) and "\n" in value:
            trailers.append(f"    {_paint(_escape(key) + ':', _DIM, colour)}")
            trailers.extend(f"      {_escape(line)}" for line in value.rstrip("\n").split("\n"))
        else:
            pairs.append(f"{_paint(_escape(key) + '=', _DIM, colour)}{_escape(_value(value))}")
    line = " ".join([*columns, *pairs]).rstrip()
    return "\n".join([line, *trailers])


# ---------------------------------------------------------------- reading and following


def read_lines(path: Path) -> Iterator[bytes]:
    """The file's lines as they are, newline included (a cut-off last line has none)."""
    with open(path, "rb") as handle:
        yield from handle


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def follow(
    path: Path,
    stop: threading.Event,
    *,
    poll_s: float = DEFAULT_POLL_S,
    max_idle_s: float | None = None,
    on_idle: Callable[[], None] | None = None,
) -> Iterator[bytes]:
    """Lines of ``path`` from its start, then as they are appended, until ``stop`` is set.

    Polls: at end of file it checks whether the name now points at another file (rotated:
    finish the old one, which we are at the end of, then read the new one from its start)
    or at a shorter one (truncated: start again at 0). A missing name (between a rename and
    the new file's creation) is waited out. A partial last line is held until its newline
    arrives, and yielded as it is when the file is rotated or truncated under it or when
    following ends. ``max_idle_s`` ends following after that long without new data
    (counted in polls, so no clock is read); ``on_idle`` runs each time we are about to wait,
    which is when a caller should flush its output.
    """
    handle = open(path, "rb")  # noqa: SIM115 - swapped on rotation, closed in finally
    try:
        identity = _identity(os.fstat(handle.fileno()))
        partial = b""
        idle_polls = 0
        while not stop.is_set():  # checked here too: a file that never stops growing never idles
            data = handle.read(_CHUNK)
            if data:
                idle_polls = 0
                *lines, partial = (partial + data).split(b"\n")
                for line in lines:
                    yield line + b"\n"
                continue
            try:
                stat: os.stat_result | None = os.stat(path)
            except FileNotFoundError:
                stat = None
            replacement = None
            if stat is not None and _identity(stat) != identity:
                try:
                    replacement = open(path, "rb")  # noqa: SIM115 - becomes `handle`
                except FileNotFoundError:  # renamed away again between stat and open: next poll
                    replacement = None
            if replacement is not None:
                # What was written to the old file after our last read and before the new
                # one appeared belongs before the new file's lines.
                *lines, partial = (partial + handle.read()).split(b"\n")
                for line in lines:
                    yield line + b"\n"
                if partial:
                    yield partial
                    partial = b""
                handle.close()
                handle = replacement
                identity = _identity(os.fstat(handle.fileno()))
                continue
            if stat is not None and _identity(stat) == identity and stat.st_size < handle.tell():
                if partial:
                    yield partial
                    partial = b""
                handle.seek(0)
                continue
            if on_idle is not None:
                on_idle()
            if max_idle_s is not None and idle_polls * poll_s >= max_idle_s:
                break
            if stop.wait(poll_s):
                break
            idle_polls += 1
        if partial:
            yield partial
    finally:
        handle.close()


# ---------------------------------------------------------------- the command


@dataclass(frozen=True, slots=True)
class TailOptions:
    path: Path
    log_filter: LogFilter = LogFilter()
    order: str | None = None
    json: bool = False
    colour: bool = False
    follow: bool = False
    poll_s: float = DEFAULT_POLL_S
    max_idle_s: float | None = None
    encoding: str = "utf-8"


def run_tail(options: TailOptions, out: IO[bytes], stop: threading.Event | None = None) -> None:
    """Print the selected lines of ``options.path`` to ``out``; with ``follow``, until ``stop``.

    Raises ``OSError`` if the file cannot be read (``cmd_tail`` turns it into a user error).
    """
    story = None
    if options.order is not None:
        story = OrderStory(options.order, collect_intents(read_lines(options.path), options.order))
    if options.follow:
        lines: Iterable[bytes] = follow(
            options.path,
            stop or threading.Event(),
            poll_s=options.poll_s,
            max_idle_s=options.max_idle_s,
            on_idle=out.flush,
        )
    else:
        lines = read_lines(options.path)
    keep_malformed = not options.json or not (options.log_filter.active or story is not None)
    for record in select(map(parse_record, lines), options.log_filter, story, keep_malformed):
        if options.json:
            out.write(record.raw if record.raw.endswith(b"\n") else record.raw + b"\n")
        else:
            out.write((format_line(record, options.colour) + "\n").encode(options.encoding, errors="replace"))
    out.flush()


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}") from None
    if not number > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def _since(value: str) -> dt.datetime:
    now = dt.datetime.fromtimestamp(wall_time_ns() / NS_PER_S, tz=dt.UTC)
    try:
        return parse_since(value, now)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_tail_command(commands: Any) -> None:
    tail = commands.add_parser(
        "tail",
        help="show (and follow) the JSON log as readable columns, filtered by actor, level, order, symbol, time",
        description="Show Kestrel's JSON log as aligned columns, or unchanged with --json. Filters combine with AND.",
    )
    tail.add_argument(
        "file", nargs="?", type=Path, metavar="FILE",
        help="the log file (default: [log] path of --config, else the default config's logs/kestrel.jsonl)",
    )
    tail.add_argument(
        "-f", "--follow", action="store_true",
        help="keep printing lines as they are appended; follows rotation and truncation",
    )
    tail.add_argument("--actor", metavar="A", help="only this actor's lines (or component's, for lines without actor)")
    tail.add_argument(
        "--level", type=str.lower, choices=list(LEVELS), metavar="L",
        help="minimum level: debug, info, warning, error, critical",
    )
    tail.add_argument(
        "--order", metavar="CLIENT_ID",
        help="one order's story: its lines and those of its intent (the risk decision) in file order",
    )
    tail.add_argument("--symbol", metavar="S", help="only lines about this symbol")
    tail.add_argument(
        "--since", type=_since, metavar="TIME", help="only lines from TIME on: ISO (UTC by default) or 30s, 10m, 2h, 1d"
    )
    tail.add_argument(
        "--json", action="store_true",
        help="print the selected lines unchanged, for jq (malformed lines only when no filter is set)",
    )
    tail.add_argument("--config", type=Path, help="TOML config whose [log] path is the default FILE")
    tail.add_argument("--profile", help="apply [profiles.NAME] from the config")
    tail.add_argument(
        "--interval", type=_positive, default=DEFAULT_POLL_S, metavar="S",
        help=f"with -f: seconds between checks for new lines (default: {DEFAULT_POLL_S})",
    )
    tail.add_argument(
        "--max-idle", type=_positive, default=None, metavar="S", help="with -f: stop after S seconds without a new line"
    )


def default_log_path(config_path: Path | None, profile: str | None) -> Path:
    """Where ``kestrel run`` with the same ``--config``/``--profile`` writes its log."""
    config, _ = load_config(config_path, profile)
    if not config.log.path:
        raise UserError("the config sets no [log] path: name the log FILE")
    return Path(config.log.path)


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def cmd_tail(args: argparse.Namespace) -> int:
    # Logs of our own (a user error) must never reach stdout, which belongs to the output.
    configure_logging(None, "warning", console_for_stderr())
    profile = args.profile or os.environ.get("KESTREL_PROFILE") or None
    path: Path = args.file if args.file is not None else default_log_path(args.config, profile)
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror or exc}") from None
    options = TailOptions(
        path=path,
        log_filter=LogFilter(actor=args.actor, min_level=args.level, symbol=args.symbol, since=args.since),
        order=args.order,
        json=args.json,
        colour=not args.json and colour_enabled(sys.stdout, os.environ),
        follow=args.follow,
        poll_s=args.interval,
        max_idle_s=args.max_idle,
        encoding=sys.stdout.encoding or "utf-8",
    )
    try:
        run_tail(options, sys.stdout.buffer)
    except BrokenPipeError:
        _silence_stdout()
    return 0
