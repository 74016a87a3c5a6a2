"""Structured JSON logs.

One event per line, rendered with orjson, with ``ts`` (wall time, UTC), ``level``,
``event``, ``actor`` and the correlation ids of the message being handled. Those come
from :data:`CURRENT_MESSAGE`, a context variable the actor runtime sets per message, and
are read only when a line is actually written, so an unlogged message costs nothing.

Every line passes the redaction step last before it is written: values under
secret-looking keys become ``***``, :class:`~engine.secrets.Secret` objects render as
``***``, and any known secret text inside any string (tracebacks included) is scrubbed.

Lines go to a log file (the path in config or ``--log``) and, when stderr is a
terminal, to a human-readable console. The hot path logs nothing per tick.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import IO, Any, Final

import orjson
import structlog

from engine.clock import Clock, wall_time_ns
from engine.secrets import REDACTED, Secret, scrub

CURRENT_MESSAGE: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "kestrel_message", default=None
)
"""The message the running actor is handling; the source of a log line's correlation ids."""


class _InlineMessage:
    """The message a handler run *inline* by the bus is handling (see :mod:`engine.bus`).

    Inline handlers run one after another inside one synchronous drain, never interleaved
    with a task, so a plain slot is enough — and costs ~10 ns per message where
    ``ContextVar.set`` costs ~130 ns. The drain clears it before it returns; a handler that
    suspends continues in its actor's task, which sets :data:`CURRENT_MESSAGE` instead.
    """

    __slots__ = ("message",)

    def __init__(self) -> None:
        self.message: object | None = None


INLINE_MESSAGE: Final = _InlineMessage()


def current_message() -> object | None:
    """The message whose correlation ids a log line written now should carry."""
    message = INLINE_MESSAGE.message
    return message if message is not None else CURRENT_MESSAGE.get()

CORRELATION_FIELDS: Final = ("intent_id", "client_order_id", "symbol")
_SECRET_KEY_HINTS: Final = (
    "secret",
    "password",
    "passwd",
    "token",
    "api_key",
    "apikey",
    "key_id",
    "private_key",
)
LEVELS: Final = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}

EventDict = MutableMapping[str, Any]


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(hint in lowered for hint in _SECRET_KEY_HINTS)


def redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _is_secret_key(k) else redact_value(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


def redact(_: Any, __: str, event_dict: EventDict) -> EventDict:
    for key, value in list(event_dict.items()):
        if _is_secret_key(key) and value is not None:
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_value(value)
    return event_dict


def add_correlation_ids(_: Any, __: str, event_dict: EventDict) -> EventDict:
    message = current_message()
    if message is not None:
        # A message that wraps another (an ApprovedOrder carries its intent, an
        # OrderSubmitting its order) correlates through the inner one too.
        inner = getattr(message, "intent", None) or getattr(message, "order", None)
        for name in CORRELATION_FIELDS:
            if name not in event_dict:
                value = getattr(message, name, None)
                if value is None and inner is not None:
                    value = getattr(inner, name, None)
                if value is not None:
                    event_dict[name] = value
        event_dict.setdefault("msg_type", type(message).__name__)
    return event_dict


class _Timestamper:
    def __init__(self) -> None:
        self.clock: Clock | None = None

    def __call__(self, _: Any, __: str, event_dict: EventDict) -> EventDict:
        now = wall_time_ns()
        event_dict["ts"] = dt.datetime.fromtimestamp(now / 1e9, tz=dt.UTC).isoformat(timespec="microseconds")
        clock = self.clock
        if clock is not None and clock.is_simulated:
            event_dict["sim_ts"] = clock.time_ns()
        return event_dict


_timestamper = _Timestamper()


def _add_level(_: Any, method: str, event_dict: EventDict) -> EventDict:
    event_dict["level"] = "warning" if method == "warn" else method
    return event_dict


def _default(value: Any) -> Any:
    return str(value)


class _Sink:
    """The final processor: writes the JSON line to the file and a pretty one to the console."""

    def __init__(self, file: IO[bytes] | None, console: IO[str] | None) -> None:
        self.file = file
        self.console = console
        self._pretty = structlog.dev.ConsoleRenderer(colors=console is not None and console.isatty())

    def __call__(self, logger: Any, method: str, event_dict: EventDict) -> str:
        if self.file is not None:
            self.file.write(orjson.dumps(event_dict, default=_default, option=orjson.OPT_APPEND_NEWLINE))
        if self.console is not None:
            shown = {k: v for k, v in event_dict.items() if k not in ("sim_ts",)}
            self.console.write(str(self._pretty(logger, method, shown)) + "\n")
            self.console.flush()
        raise structlog.DropEvent


_sink: _Sink | None = None


def configure_logging(
    path: Path | None,
    level: str = "info",
    console: IO[str] | None = None,
) -> None:
    """(Re)configure process-wide logging.

    ``path``: the JSON-lines file (appended to, created with its folder); None for none.
    ``console``: a text stream for human-readable lines, usually ``sys.stderr`` when it is a TTY.
    """
    global _sink
    if _sink is not None and _sink.file is not None:
        _sink.file.close()
    file: IO[bytes] | None = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        file = open(path, "ab", buffering=0)  # noqa: SIM115 - closed on reconfigure / shutdown
    _sink = _Sink(file, console)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_level,
            _timestamper,
            add_correlation_ids,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact,
            _sink,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.ReturnLoggerFactory(),
        cache_logger_on_first_use=False,
    )


def set_log_clock(clock: Clock | None) -> None:
    """Log lines carry ``sim_ts`` (the engine's simulated time) when the clock is simulated."""
    _timestamper.clock = clock


def shutdown_logging() -> None:
    global _sink
    if _sink is not None and _sink.file is not None:
        _sink.file.close()
        _sink.file = None


def console_for_stderr() -> IO[str] | None:
    """stderr when it is a terminal, else None (no human output into pipes)."""
    return sys.stderr if sys.stderr.isatty() else None


def get_logger(**bound: Any) -> Any:
    """A structlog logger with ``bound`` context (e.g. ``actor="risk"``).

    Lazy: it follows the configuration in force when it logs, not when it was made, so a
    module-level logger created at import time still writes where :func:`configure_logging`
    said (and never to stdout, which belongs to ``--json`` output).
    """
    return structlog.get_logger(**bound)


Logger = Any
