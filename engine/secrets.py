"""Secret values that cannot leak by accident.

A :class:`Secret` renders as ``***`` in ``str``, ``repr``, f-strings, msgspec and
orjson output. Every secret ever constructed is also remembered (in this process only)
so that :func:`scrub` can remove its text from anything about to be written — a log
line, an exception message, a CLI error — even if the raw value escaped via
``reveal()`` into some other string.
"""

from __future__ import annotations

import hmac
import re
from typing import Final

REDACTED: Final = "***"

# Values that mean "nobody filled this in". Refused wherever a secret is loaded.
PLACEHOLDERS: Final = frozenset(
    {
        "",
        "changeme",
        "change_me",
        "change-me",
        "your_key_here",
        "your_secret_here",
        "xxx",
        "todo",
        "none",
        "null",
    }
)

_known: set[str] = set()
_pattern: re.Pattern[str] | None = None


def _remember(value: str) -> None:
    global _pattern
    if len(value) >= 4 and value not in _known:
        _known.add(value)
        # Longest first, so a secret that contains another is removed whole.
        alternatives = sorted(_known, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(v) for v in alternatives))


def scrub(text: str) -> str:
    """Replace every known secret value inside ``text`` with ``***``."""
    pattern = _pattern
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


def is_placeholder(value: str) -> bool:
    return value.strip().lower() in PLACEHOLDERS or value.strip().lower().startswith("your_")


class Secret:
    """A string that only says what it is when asked with :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        _remember(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret cannot be pickled")
