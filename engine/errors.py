"""The engine's typed errors.

Every error a user can cause (bad config, bad data, bad arguments) derives from
:class:`UserError`: the CLI prints it as one line and exits non-zero without a traceback.
Anything else is a bug and is logged with its traceback.
"""

from __future__ import annotations


class KestrelError(Exception):
    """Base class of every error Kestrel raises on purpose."""


class UserError(KestrelError):
    """Something the user can fix: a file, a flag, a config key, a data row."""


class ConfigError(UserError):
    """A configuration file or value is invalid.

    ``problems`` holds every problem found, each as ``(key_path, message)``, so a
    user sees all of them at once instead of fixing one per run.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [
            f"{source}: {path}: {message}" if path else f"{source}: {message}" for path, message in problems
        ]
        super().__init__("\n".join(lines))


class DataError(UserError):
    """A recording or data file cannot be read: names the file and line."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        self.source = source
        self.line = line
        self.problem = problem
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {problem}")


class LiveTradingNotConfirmed(UserError):
    """``mode = "live"`` was configured without the explicit confirmation."""


class MailboxClosed(KestrelError):
    """A message was sent to an address that no longer accepts messages."""


class UnknownAddress(KestrelError):
    """A message was sent to an address nobody registered."""


class SupervisorGaveUp(KestrelError):
    """A supervisor exceeded its restart intensity and escalates to its parent."""

    def __init__(
        self, supervisor: str, restarts: int, period_s: float, last_error: BaseException | None
    ) -> None:
        self.supervisor = supervisor
        self.restarts = restarts
        self.period_s = period_s
        self.last_error = last_error
        super().__init__(
            f"supervisor {supervisor!r} gave up: more than {restarts} restarts in {period_s:g} s"
            + (f" (last error: {type(last_error).__name__}: {last_error})" if last_error else "")
        )
