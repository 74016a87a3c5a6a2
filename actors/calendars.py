"""Which market calendar each symbol trades on: one resolver shared by risk and settlement.

Risk gates orders by a symbol's sessions; settlement dates a fill's cash by the same
symbol's next session. Both must agree on the calendar, so the mapping (exact symbols or
``fnmatch`` patterns such as ``*USDT`` → calendar name, laid over
:data:`DEFAULT_SYMBOL_CALENDARS`, with a default for the rest) lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Final

from engine.calendar import ALWAYS_OPEN, SessionCalendar, load_calendar

__all__ = ["DEFAULT_CALENDAR", "DEFAULT_SYMBOL_CALENDARS", "SymbolCalendars"]

DEFAULT_CALENDAR: Final = "XNYS"
"""US equities: the NYSE calendar (sessions, holidays, early closes)."""
DEFAULT_SYMBOL_CALENDARS: Final[Mapping[str, str]] = {"SYNTH": ALWAYS_OPEN, "*USDT": ALWAYS_OPEN}
"""The synthetic symbol and crypto pairs trade around the clock."""


class SymbolCalendars:
    """symbol → calendar: an exact mapping, else the first matching pattern, else the default.

    :meth:`load` must be awaited (calendars are built in a worker thread the first time)
    before :meth:`calendar_for` is called; resolutions are cached per symbol, so patterns
    are not matched per order.
    """

    def __init__(self, mapping: Mapping[str, str] | None = None, default: str = DEFAULT_CALENDAR) -> None:
        self.mapping: dict[str, str] = {**DEFAULT_SYMBOL_CALENDARS, **(mapping or {})}
        self.default = default
        self._calendars: dict[str, SessionCalendar] = {}
        self._of: dict[str, SessionCalendar] = {}

    @property
    def names(self) -> set[str]:
        return {self.default, *self.mapping.values()}

    async def load(self, *extra: str) -> None:
        """Load every calendar the mapping names, the default and ``extra`` ones."""
        for name in sorted(self.names | set(extra)):
            self._calendars[name] = await load_calendar(name)

    def get(self, name: str) -> SessionCalendar:
        """A loaded calendar by name (``KeyError`` if :meth:`load` did not load it)."""
        return self._calendars[name]

    def name_for(self, symbol: str) -> str:
        name = self.mapping.get(symbol)
        if name is not None:
            return name
        return next((cal for pattern, cal in self.mapping.items() if fnmatchcase(symbol, pattern)), self.default)

    def calendar_for(self, symbol: str) -> SessionCalendar:
        found = self._of.get(symbol)
        if found is None:
            found = self._of[symbol] = self._calendars[self.name_for(symbol)]
        return found
