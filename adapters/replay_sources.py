"""What ``kestrel replay`` can read, turned into batches of engine messages for :func:`engine.replay.replay`.

Formats:

- ``kestrel``: our own recordings (:mod:`engine.recording`): raw frames, decoded here by
  the *live* adapters' decoders, chosen by the frame's provider (``binance*`` → the
  Binance decoder; ``alpaca-*`` → :func:`adapters.alpaca.data_stream.decode_frame`).
- ``binance-capture``: gzip text, one frame per line, ``<receive ns> <frame as received>``
  (the hftbacktest capture format of the bundled BTCUSDT data).
- ``lean-ticks``: LEAN/AlgoSeek tick zips (:mod:`adapters.lean_ticks`).
- ``synthetic``: the seeded random walk of :mod:`simulations.synthetic` (no file).

Bad input does not stop a replay: every bad line, frame or file is counted by kind in one
shared :class:`InputErrors` (with the first samples, naming file and line) and skipped;
``strict`` makes the first one a :class:`~engine.errors.DataError` instead.

Memory is bounded by the batch size, never by the file size: files are streamed, and
several files merge by receive time through :func:`heapq.merge` over per-file streams.
All blocking reads happen in a worker thread, one batch per hop, so the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import gzip
import heapq
import itertools
import re
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

import msgspec

from adapters import lean_ticks
from adapters.alpaca.data_stream import decode_frame as decode_alpaca_frame
from adapters.binance.decode import BinanceDecodeError, BinanceDecoder
from engine.errors import DataError, UserError
from engine.messages import ExchangeQuote, SymbolTradingStatus, TradeTick
from engine.recording import MALFORMED, SUFFIX, RecordingError, iter_gzip_lines, read_recording

Tick = ExchangeQuote | TradeTick | SymbolTradingStatus

AUTO: Final = "auto"
KESTREL: Final = "kestrel"
BINANCE_CAPTURE: Final = "binance-capture"
LEAN_TICKS: Final = "lean-ticks"
SYNTHETIC: Final = "synthetic"
FILE_FORMATS: Final = (KESTREL, BINANCE_CAPTURE, LEAN_TICKS)

DECODE_ERROR: Final = "decode_error"
UNKNOWN_PROVIDER: Final = "unknown_provider"

MAX_SAMPLES: Final = 20
DEFAULT_BATCH: Final = 4096

_LEAN_NAME = re.compile(r"^\d{8}_(quote|trade)\.zip$")
_CAPTURE_LINE = re.compile(rb"^\d+ [\[{]")


# ---------------------------------------------------------------- errors


class InputErrorSample(msgspec.Struct, frozen=True):
    file: str
    line: int | None
    error: str
    kind: str


@dataclass
class InputErrors:
    """Every reader's bad input, counted by kind; the first :data:`MAX_SAMPLES` kept with file and line.

    Shared by all the readers of one replay. Called from the reading worker thread only
    (one batch at a time), read by the event loop once the replay is over.
    """

    strict: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    samples: list[InputErrorSample] = field(default_factory=list)

    def report(self, kind: str, error: DataError) -> None:
        """Count ``error`` (strict: raise it)."""
        if self.strict:
            raise error
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append(InputErrorSample(error.source, error.line, error.problem, kind))

    def on_recording_error(self, error: RecordingError) -> None:
        self.report(error.kind, error)

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ---------------------------------------------------------------- decoders


class FrameDecoder(Protocol):
    """A live adapter's pure frame decoder: raw frame + receive time → engine messages."""

    counters: dict[str, int]

    def decode(self, raw: bytes | str, ts_recv: int) -> list[Any]: ...


@dataclass(frozen=True)
class Decoders:
    """How frames of each provider family are decoded (injectable, so tests can pin a decoder)."""

    binance: Callable[[str], FrameDecoder]
    binance_error: type[Exception]


def live_decoders() -> Decoders:
    """The live adapters' decoders.

    Injectable so a test can pin a decoder; the default is the Binance client's own.
    """
    decoder_class = BinanceDecoder
    error_class: type[Exception] = BinanceDecodeError

    def make(provider: str) -> FrameDecoder:
        decoder: FrameDecoder = decoder_class(provider=provider)
        return decoder

    return Decoders(binance=make, binance_error=error_class)


UNKNOWN_STREAM: Final = "unknown_stream"


def _decode(
    decoder: FrameDecoder,
    bad_frame: type[Exception],
    raw: bytes | str,
    ts: int,
    errors: InputErrors,
    where: tuple[str, int],
) -> list[Any]:
    """Decode one frame; a bad one is reported (kind ``unknown_stream`` when the decoder counted it so)."""
    unknown = decoder.counters.get("unknown_streams", 0)
    try:
        return decoder.decode(raw, ts)
    except bad_frame as exc:
        kind = UNKNOWN_STREAM if decoder.counters.get("unknown_streams", 0) > unknown else DECODE_ERROR
        errors.report(kind, DataError(where[0], where[1], str(exc)[:300]))
        return []


# ---------------------------------------------------------------- format detection


@dataclass(frozen=True)
class ReplayInput:
    path: Path
    format: str


def detect_format(path: Path) -> str:
    """The format of ``path``, from its name and, for gzip files, its first line (blocking: sniffs the file)."""
    name = path.name
    source = str(path)
    if name.endswith(SUFFIX):
        return KESTREL
    if _LEAN_NAME.match(name):
        return LEAN_TICKS
    try:
        with gzip.open(path, "rb") as stream:
            first = stream.readline(65_536)
    except FileNotFoundError:
        raise DataError(source, None, "no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(source, None, f"cannot tell the format: not a gzip file ({exc}); use --format") from None
    if first.startswith(b'{"format"') and b"kestrel-recording" in first:
        return KESTREL
    if _CAPTURE_LINE.match(first):
        return BINANCE_CAPTURE
    raise DataError(source, 1, "cannot tell the format of this file; use --format")


def resolve_inputs(paths: Sequence[Path], fmt: str = AUTO) -> list[ReplayInput]:
    """Pair each path with its format (``auto``: :func:`detect_format`). Blocking."""
    if fmt != AUTO and fmt not in FILE_FORMATS:
        raise UserError(f"unknown format {fmt!r} (known: auto, {', '.join(FILE_FORMATS)})")
    inputs = []
    for path in paths:
        if not path.exists():
            raise DataError(str(path), None, "no such file")
        inputs.append(ReplayInput(path, detect_format(path) if fmt == AUTO else fmt))
    return inputs


# ---------------------------------------------------------------- per-format readers (blocking generators)


def read_binance_capture(path: Path, errors: InputErrors, decoders: Decoders) -> Iterator[Tick]:
    """The frames of a ``<receive ns> <frame>`` capture, through the live Binance decoder."""
    source = str(path)
    decoder = decoders.binance("binance")
    bad_frame = decoders.binance_error
    for lineno, raw in iter_gzip_lines(path, errors.on_recording_error):
        if not raw.strip():
            continue
        stamp, sep, frame = raw.partition(b" ")
        if not sep or not stamp.isdigit() or not frame:
            errors.report(MALFORMED, DataError(source, lineno, "expected '<receive ns> <frame>'"))
            continue
        yield from _decode(decoder, bad_frame, frame, int(stamp), errors, (source, lineno))


def read_kestrel(path: Path, errors: InputErrors, decoders: Decoders) -> Iterator[Tick]:
    """The frames of a Kestrel recording, each through its provider's live decoder."""
    binance: dict[str, FrameDecoder] = {}
    for frame in read_recording(path, errors.on_recording_error):
        provider = frame.provider
        if provider.startswith("binance"):
            decoder = binance.get(provider)
            if decoder is None:
                decoder = binance[provider] = decoders.binance(provider)
            payload: bytes | str = frame.payload if frame.binary else frame.payload.decode()
            yield from _decode(
                decoder, decoders.binance_error, payload, frame.ts_recv, errors, (frame.source, frame.line)
            )
        elif provider.startswith("alpaca-"):
            # The live client's own decoder; a binary frame was MessagePack on the wire.
            problems: list[str] = []
            yield from decode_alpaca_frame(frame.payload, frame.ts_recv, provider, frame.binary, problems)
            for problem in problems:
                errors.report(DECODE_ERROR, DataError(frame.source, frame.line, problem[:300]))
        else:
            errors.report(UNKNOWN_PROVIDER, DataError(frame.source, frame.line, f"unknown provider {provider!r}"))


def _ts_recv(tick: Tick) -> int:
    return tick.ts_recv


def merged_events(
    inputs: Sequence[ReplayInput],
    errors: InputErrors,
    symbol: str | None = None,
    decoders: Decoders | None = None,
) -> Iterator[Tick]:
    """Every file's messages, merged by receive time (ties: LEAN files first, then in the given order).

    LEAN files are read as one group, which keeps their own order at equal times
    (quotes before trades). Blocking: iterate it in a worker thread.
    """
    streams: list[Iterator[Tick]] = []
    lean = [i.path for i in inputs if i.format == LEAN_TICKS]
    if lean:
        streams.append(lean_ticks.read_events(lean, symbol, errors.report))
    others = [i for i in inputs if i.format != LEAN_TICKS]
    if others and decoders is None:
        decoders = live_decoders()
    for item in others:
        assert decoders is not None
        if item.format == KESTREL:
            streams.append(read_kestrel(item.path, errors, decoders))
        elif item.format == BINANCE_CAPTURE:
            streams.append(read_binance_capture(item.path, errors, decoders))
        else:
            raise UserError(f"{item.path}: unknown format {item.format!r}")
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=_ts_recv)


T = TypeVar("T")


async def in_batches(events: Iterator[T], batch_size: int = DEFAULT_BATCH) -> AsyncIterator[list[T]]:
    """``events`` a batch at a time, each batch read in a worker thread (the loop never waits on the disk)."""

    def next_batch() -> list[T]:
        return list(itertools.islice(events, batch_size))

    while True:
        batch = await asyncio.to_thread(next_batch)
        if not batch:
            return
        yield batch


def file_batches(
    inputs: Sequence[ReplayInput],
    errors: InputErrors,
    symbol: str | None = None,
    decoders: Decoders | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> AsyncIterator[list[Tick]]:
    return in_batches(merged_events(inputs, errors, symbol, decoders), batch_size)


# ---------------------------------------------------------------- synthetic


SYNTHETIC_EXCHANGE: Final = "SYN"
SYNTHETIC_PROVIDER: Final = "synthetic"


class _Decimals(dict[int, Decimal]):
    """Integer → ``Decimal(value).scaleb(exponent)``, built once per value: a random walk
    revisits the same few thousand prices and ten sizes (and a Decimal is immutable)."""

    def __init__(self, exponent: int) -> None:
        super().__init__()
        self.exponent = exponent

    def __missing__(self, value: int) -> Decimal:
        exact = self[value] = Decimal(value).scaleb(self.exponent)
        return exact


def _convert(q: Any, symbol: str, start: int, stop: int, cents: _Decimals, units: _Decimals) -> list[ExchangeQuote]:
    rows = zip(
        q.ts_ns[start:stop].tolist(),
        q.bid_cents[start:stop].tolist(),
        q.ask_cents[start:stop].tolist(),
        q.bid_size[start:stop].tolist(),
        q.ask_size[start:stop].tolist(),
        strict=True,
    )
    return [
        ExchangeQuote(
            symbol=symbol,
            exchange=SYNTHETIC_EXCHANGE,
            national=True,
            bid_price=cents[bid],
            bid_size=units[bid_size],
            ask_price=cents[ask],
            ask_size=units[ask_size],
            suspicious=False,
            provider=SYNTHETIC_PROVIDER,
            ts_event=ts,
            ts_recv=ts,
        )
        for ts, bid, ask, bid_size, ask_size in rows
    ]


async def synthetic_batches(
    quotes: Any, symbol: str, batch_size: int = DEFAULT_BATCH
) -> AsyncIterator[list[ExchangeQuote]]:
    """A generated quote stream (:class:`simulations.synthetic.SyntheticQuotes`: int64 arrays
    of time, bid/ask cents and sizes) as :class:`ExchangeQuote` batches, built lazily.

    The arrays cost 40 bytes a quote; only one batch of messages exists at a time.
    Converting is CPU work, not I/O, so it runs on the loop (a thread would only add a hop
    under the GIL). The composition root generates the arrays: adapters do not import
    ``simulations``.
    """
    n = len(quotes)
    cents, units = _Decimals(-2), _Decimals(0)
    for start in range(0, n, batch_size):
        yield _convert(quotes, symbol, start, start + batch_size, cents, units)
