"""Reader for LEAN-format US equity tick files (``<sym>/<YYYYMMDD>_{quote,trade}.zip``).

Each zip holds one header-less CSV. Times are milliseconds after midnight, New York
time, on the date in the file name; prices are integers, dollars × 10,000 (exactly
representable as :class:`~decimal.Decimal`).

- trade row: ``ms, price, size, exchange, sale_condition, suspicious``
- quote row: ``ms, bid_price, bid_size, ask_price, ask_size, exchange, condition, suspicious``
  — one-sided: the side not carried is ``0, 0``. Rows come in pairs of equal time, a
  bid row then an ask row, each naming the exchange where that side's national best
  rests; they are national best bid/offer updates, so quotes are marked ``national``.

:func:`read_events` merges a day's quote and trade files into one time-ordered stream
of :class:`~engine.messages.ExchangeQuote` and :class:`~engine.messages.TradeTick`.
It streams (never loads a whole file) and raises :class:`~engine.errors.DataError`
naming the file and line of the first row it cannot read — or, given ``on_error``,
reports each bad row there (with a kind: ``bad_row``, ``time_backwards``,
``unreadable_file``, ``truncated_zip``) and skips it, so a replay of a slightly damaged
day goes on and says what it skipped.

This is blocking file I/O: the async :func:`read_batches` runs it in a worker thread,
a batch at a time, so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import io
import re
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Final
from zoneinfo import ZoneInfo

from engine.errors import DataError
from engine.messages import ExchangeQuote, TradeTick

PROVIDER: Final = "lean-ticks"
NEW_YORK: Final = ZoneInfo("America/New_York")
_NAME = re.compile(r"^(?P<date>\d{8})_(?P<kind>quote|trade)\.zip$")
_PRICE_EXP: Final = -4

Tick = ExchangeQuote | TradeTick

BAD_ROW: Final = "bad_row"
TIME_BACKWARDS: Final = "time_backwards"
UNREADABLE: Final = "unreadable_file"
TRUNCATED: Final = "truncated_zip"

OnError = Callable[[str, DataError], None]
"""Lenient reading: receives ``(kind, error)`` for each bad row or file, which is then skipped.
Raising from it makes reading strict again."""


def _raise(kind: str, error: DataError) -> None:
    raise error


def _midnight_ns(date: str, source: str) -> int:
    try:
        day = dt.datetime.strptime(date, "%Y%m%d").replace(tzinfo=NEW_YORK)
    except ValueError:
        raise DataError(source, None, f"file name date {date!r} is not a valid YYYYMMDD date") from None
    return int(day.timestamp()) * 1_000_000_000


def symbol_for(path: Path, explicit: str | None) -> str:
    """The symbol a file holds: ``explicit`` if given, else its folder's name, upper-cased."""
    return (explicit or path.parent.name).upper()


def _rows(path: Path, on_error: OnError) -> Iterator[tuple[int, list[str]]]:
    source = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        on_error(UNREADABLE, DataError(source, None, "no such file"))
        return
    except (zipfile.BadZipFile, OSError) as exc:
        on_error(UNREADABLE, DataError(source, None, f"not a readable zip archive ({exc})"))
        return
    with archive:
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if len(members) != 1:
            on_error(
                UNREADABLE, DataError(source, None, f"expected exactly one CSV in the archive, found {len(members)}")
            )
            return
        lineno = 0
        try:
            with archive.open(members[0]) as raw:
                text = io.TextIOWrapper(raw, encoding="ascii", newline="")
                for lineno, line in enumerate(text, start=1):
                    line = line.strip()
                    if line:
                        yield lineno, line.split(",")
        except (zipfile.BadZipFile, EOFError, UnicodeDecodeError, OSError) as exc:
            # No line number: a decompressor reads ahead, so the damage is not at a line we can name.
            on_error(
                TRUNCATED,
                DataError(source, None, f"archive is corrupt or truncated ({type(exc).__name__}: {exc})"),
            )


def _read_quotes(
    path: Path, symbol: str, midnight_ns: int, on_error: OnError = _raise
) -> Iterator[tuple[int, int, ExchangeQuote]]:
    source = str(path)
    last = -1
    for lineno, f in _rows(path, on_error):
        if len(f) != 8:
            on_error(BAD_ROW, DataError(source, lineno, f"quote row has {len(f)} fields, expected 8"))
            continue
        try:
            ms = int(f[0])
            bid_px, bid_sz, ask_px, ask_sz = int(f[1]), int(f[2]), int(f[3]), int(f[4])
            suspicious = f[7] == "1"
        except ValueError as exc:
            on_error(BAD_ROW, DataError(source, lineno, f"not an integer field ({exc})"))
            continue
        if ms < last:
            on_error(TIME_BACKWARDS, DataError(source, lineno, f"time goes backwards ({ms} ms after {last} ms)"))
            continue
        if min(ms, bid_px, bid_sz, ask_px, ask_sz) < 0:
            on_error(BAD_ROW, DataError(source, lineno, "negative time, price or size"))
            continue
        if f[7] not in ("0", "1"):
            on_error(BAD_ROW, DataError(source, lineno, f"suspicious flag must be 0 or 1, got {f[7]!r}"))
            continue
        last = ms
        has_bid = bid_px > 0 or bid_sz > 0
        has_ask = ask_px > 0 or ask_sz > 0
        ts = midnight_ns + ms * 1_000_000
        yield (
            ts,
            0,
            ExchangeQuote(
                symbol=symbol,
                exchange=f[5],
                national=True,
                bid_price=Decimal(bid_px).scaleb(_PRICE_EXP) if has_bid else None,
                bid_size=Decimal(bid_sz) if has_bid else None,
                ask_price=Decimal(ask_px).scaleb(_PRICE_EXP) if has_ask else None,
                ask_size=Decimal(ask_sz) if has_ask else None,
                suspicious=suspicious,
                provider=PROVIDER,
                ts_event=ts,
                ts_recv=ts,
            ),
        )


def _read_trades(
    path: Path, symbol: str, midnight_ns: int, on_error: OnError = _raise
) -> Iterator[tuple[int, int, TradeTick]]:
    source = str(path)
    last = -1
    for lineno, f in _rows(path, on_error):
        if len(f) != 6:
            on_error(BAD_ROW, DataError(source, lineno, f"trade row has {len(f)} fields, expected 6"))
            continue
        try:
            ms, price, size = int(f[0]), int(f[1]), int(f[2])
        except ValueError as exc:
            on_error(BAD_ROW, DataError(source, lineno, f"not an integer field ({exc})"))
            continue
        if ms < last:
            on_error(TIME_BACKWARDS, DataError(source, lineno, f"time goes backwards ({ms} ms after {last} ms)"))
            continue
        if price <= 0 or size < 0:
            on_error(BAD_ROW, DataError(source, lineno, "trade price must be positive and size not negative"))
            continue
        if f[5] not in ("0", "1"):
            on_error(BAD_ROW, DataError(source, lineno, f"suspicious flag must be 0 or 1, got {f[5]!r}"))
            continue
        last = ms
        ts = midnight_ns + ms * 1_000_000
        yield (
            ts,
            1,
            TradeTick(
                symbol=symbol,
                exchange=f[3],
                price=Decimal(price).scaleb(_PRICE_EXP),
                size=Decimal(size),
                suspicious=f[5] == "1",
                provider=PROVIDER,
                ts_event=ts,
                ts_recv=ts,
            ),
        )


def read_events(paths: Sequence[Path], symbol: str | None = None, on_error: OnError | None = None) -> Iterator[Tick]:
    """All ticks of ``paths`` in time order (quotes before trades at equal times).

    Without ``on_error`` the first bad row or file raises; with it, each is reported and skipped.
    """
    report = on_error or _raise
    streams: list[Iterator[tuple[int, int, Tick]]] = []
    for path in paths:
        match = _NAME.match(path.name)
        if match is None:
            report(
                UNREADABLE,
                DataError(str(path), None, "not a LEAN tick file (expected YYYYMMDD_quote.zip or YYYYMMDD_trade.zip)"),
            )
            continue
        sym = symbol_for(path, symbol)
        try:
            midnight = _midnight_ns(match["date"], str(path))
        except DataError as exc:
            report(UNREADABLE, exc)
            continue
        reader = _read_quotes if match["kind"] == "quote" else _read_trades
        streams.append(reader(path, sym, midnight, report))
    for _, _, tick in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
        yield tick


async def read_batches(
    paths: Sequence[Path], symbol: str | None = None, batch_size: int = 4096, on_error: OnError | None = None
) -> AsyncIterator[list[Tick]]:
    """:func:`read_events` in batches, each read in a worker thread."""
    events = read_events(paths, symbol, on_error)

    def next_batch() -> list[Tick]:
        batch: list[Tick] = []
        for tick in events:
            batch.append(tick)
            if len(batch) >= batch_size:
                break
        return batch

    while True:
        batch = await asyncio.to_thread(next_batch)
        if not batch:
            return
        yield batch
