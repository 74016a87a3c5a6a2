"""The Kestrel recording format: what arrived, frame by frame, so a replay can feed it again.

A recording keeps the *raw* frames, not decoded messages: replay runs them through the
same decoders the live adapters use, so a decoder fix or a new message type applies to
old recordings, and a replay exercises the live code path (DESIGN §8).

File format (gzip, UTF-8 JSON lines)::

    {"format":"kestrel-recording","version":1,"created_ns":1723161253937085768}
    {"t":1723161254087891268,"p":"binance","d":"{\\"stream\\":\\"btcusdt@trade\\",...}"}
    {"t":1723161254087896568,"p":"alpaca-iex","b":"kZOBoVShcQ..."}

``t`` is the receive time (ns since the epoch, from the engine clock), ``p`` the provider,
``d`` a text frame as received, ``b`` a binary frame (Alpaca MessagePack), base64.

Writing (:class:`RecordingWriter`) never touches the disk on the event loop: frames are
buffered (bounded) and written a batch at a time in a worker thread. Each batch ends with
a zlib *sync flush*, so a file cut short by a crash or a full disk still decompresses up
to the last completed batch; the reader reports the truncation and keeps every line
before it. Files rotate by size and/or by receive time and are named
``<prefix>-<YYYYmmddTHHMMSS>-<n>.krec.gz`` (UTC time of the file's first frame, ``n`` a
counter that keeps names unique within one writer).

Reading (:func:`read_recording`) is a blocking generator: callers run it in a worker
thread a batch at a time. A bad line is a :class:`RecordingError` naming file and line;
with an ``on_error`` callback it is reported and skipped, without one it is raised.

This module is engine-level: it knows frames and files, nothing of adapters or actors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import gzip
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

import msgspec

from engine.clock import NS_PER_S, Clock
from engine.errors import DataError, KestrelError
from engine.logs import get_logger

FORMAT_NAME: Final = "kestrel-recording"
VERSION: Final = 1
SUFFIX: Final = ".krec.gz"

TRUNCATED: Final = "truncated_gzip"
"""Error kind: the gzip stream ends early or is corrupt; the rest of the file is lost."""
MALFORMED: Final = "malformed_line"
"""Error kind: a line that is not a valid frame record."""
BAD_HEADER: Final = "bad_header"
"""Error kind: the file is not a Kestrel recording (or a newer version): nothing read."""
UNREADABLE: Final = "unreadable_file"
"""Error kind: the file cannot be opened at all."""


class RecordingError(DataError):
    """A recording (or any gzip line file) cannot be read at ``source:line``; ``kind`` says how."""

    def __init__(self, kind: str, source: str, line: int | None, problem: str) -> None:
        self.kind = kind
        super().__init__(source, line, problem)


class RecordingWriteFailed(KestrelError):
    """The recorder could not write (disk full, permissions): frames from then on are not recorded.

    Raised by every later :meth:`RecordingWriter.write`, :meth:`~RecordingWriter.flush` and
    :meth:`~RecordingWriter.close`, so a recorder never carries on silently writing nothing.
    """


OnError = Callable[[RecordingError], None]
"""Receives each bad line/file when reading leniently; raising from it makes the read strict."""


@dataclass(frozen=True, slots=True)
class RecordedFrame:
    """One frame as received: ``payload`` is the exact bytes (UTF-8 for text frames)."""

    ts_recv: int
    provider: str
    payload: bytes
    source: str
    line: int
    binary: bool = False
    """True for a binary websocket frame (``b`` in the file), False for a text frame (``d``)."""


class _Header(msgspec.Struct, forbid_unknown_fields=False):
    format: str
    version: int
    created_ns: int = 0


class _Line(msgspec.Struct, forbid_unknown_fields=True):
    t: int
    p: str
    d: str | None = None
    b: str | None = None


class _TextLine(msgspec.Struct):
    t: int
    p: str
    d: str


class _BinaryLine(msgspec.Struct):
    t: int
    p: str
    b: str


_encode = msgspec.json.Encoder().encode
_decode_line = msgspec.json.Decoder(_Line).decode
_decode_header = msgspec.json.Decoder(_Header).decode


def encode_frame(ts_recv: int, provider: str, payload: bytes | str) -> bytes:
    """One recording line (without the newline): ``str`` is a text frame, ``bytes`` a binary one."""
    if isinstance(payload, str):
        return _encode(_TextLine(ts_recv, provider, payload))
    return _encode(_BinaryLine(ts_recv, provider, base64.b64encode(payload).decode("ascii")))


def header_line(created_ns: int) -> bytes:
    return _encode(_Header(FORMAT_NAME, VERSION, created_ns))


# ---------------------------------------------------------------- reading


def iter_gzip_lines(path: Path, on_error: OnError | None = None) -> Iterator[tuple[int, bytes]]:
    """``(line number, line without its newline)`` of a gzip text file, streamed.

    A file that ends early (a crash, a copy cut short) or is corrupt mid-way yields every
    complete line before the damage, then reports a :data:`TRUNCATED` error at the next
    line number: the caller's choice (``on_error``) whether that is fatal.
    """
    source = str(path)
    lineno = 0
    try:
        with gzip.open(path, "rb") as stream:
            for lineno, raw in enumerate(stream, start=1):
                if not raw.endswith(b"\n"):
                    # The last line of a file cut inside a line; with an intact trailer it is just unterminated.
                    yield lineno, raw
                    continue
                yield lineno, raw[:-1]
    except FileNotFoundError:
        _report(on_error, RecordingError(UNREADABLE, source, None, "no such file"))
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        _report(on_error, RecordingError(TRUNCATED, source, lineno + 1, f"gzip stream is truncated or corrupt ({exc})"))
    except OSError as exc:
        _report(on_error, RecordingError(UNREADABLE, source, lineno + 1 if lineno else None, f"cannot read ({exc})"))


def _report(on_error: OnError | None, error: RecordingError) -> None:
    if on_error is None:
        raise error
    on_error(error)


def read_recording(path: Path, on_error: OnError | None = None) -> Iterator[RecordedFrame]:
    """Every frame of a Kestrel recording, in file order, streamed (blocking: run it in a thread).

    A bad line is reported through ``on_error`` and skipped (raised without a callback); a
    file whose first line is not a version-1 header is reported once and yields nothing.
    """
    source = str(path)
    empty = True
    reported: list[RecordingError] = []

    def file_error(error: RecordingError) -> None:
        reported.append(error)
        _report(on_error, error)

    for lineno, raw in iter_gzip_lines(path, file_error):
        empty = False
        if lineno == 1:
            try:
                header = _decode_header(raw)
            except msgspec.DecodeError as exc:
                _report(on_error, RecordingError(BAD_HEADER, source, 1, f"not a Kestrel recording ({exc})"))
                return
            if header.format != FORMAT_NAME or header.version != VERSION:
                _report(
                    on_error,
                    RecordingError(
                        BAD_HEADER, source, 1, f"unsupported recording {header.format!r} version {header.version}"
                    ),
                )
                return
            continue
        frame = _frame(raw, source, lineno, on_error)
        if frame is not None:
            yield frame
    if empty and not reported:
        _report(on_error, RecordingError(BAD_HEADER, source, None, "empty file: no recording header"))


def _frame(raw: bytes, source: str, lineno: int, on_error: OnError | None) -> RecordedFrame | None:
    try:
        line = _decode_line(raw)
    except msgspec.DecodeError as exc:
        _report(on_error, RecordingError(MALFORMED, source, lineno, f"not a frame record ({exc})"))
        return None
    if line.t < 0 or not line.p:
        _report(on_error, RecordingError(MALFORMED, source, lineno, "negative receive time or empty provider"))
        return None
    if (line.d is None) == (line.b is None):
        _report(on_error, RecordingError(MALFORMED, source, lineno, "a frame needs exactly one of 'd' and 'b'"))
        return None
    if line.d is not None:
        return RecordedFrame(line.t, line.p, line.d.encode(), source, lineno)
    assert line.b is not None
    try:
        payload = base64.b64decode(line.b, validate=True)
    except (binascii.Error, ValueError) as exc:
        _report(on_error, RecordingError(MALFORMED, source, lineno, f"'b' is not base64 ({exc})"))
        return None
    return RecordedFrame(line.t, line.p, payload, source, lineno, binary=True)


# ---------------------------------------------------------------- writing


@dataclass
class WriterStats:
    frames: int = 0
    """Frames handed to the disk thread."""
    written: int = 0
    """Frames on disk (sync-flushed)."""
    dropped: int = 0
    """Frames refused by :meth:`RecordingWriter.offer` because the buffer was full."""
    files: int = 0
    bytes: int = 0
    """Compressed bytes written, all files."""


class _FileSink:
    """The disk side, used only from the worker thread (one batch at a time, never concurrently)."""

    def __init__(
        self, directory: Path, prefix: str, rotate_bytes: int | None, rotate_ns: int | None, clock: Clock
    ) -> None:
        self.directory = directory
        self.prefix = prefix
        self.rotate_bytes = rotate_bytes
        self.rotate_ns = rotate_ns
        self.clock = clock
        self.raw: BinaryIO | None = None
        self.gz: gzip.GzipFile | None = None
        self.first_ns = 0
        self.counter = 0
        self.paths: list[Path] = []
        self.bytes_closed = 0

    def write(self, frames: list[tuple[int, bytes]]) -> int:
        for ts, line in frames:
            if self.gz is None or self._due(ts):
                self._rotate(ts)
            assert self.gz is not None
            self.gz.write(line + b"\n")
        if self.gz is not None:
            self.gz.flush(zlib.Z_SYNC_FLUSH)
            assert self.raw is not None
            self.raw.flush()
        return self.total_bytes()

    def total_bytes(self) -> int:
        return self.bytes_closed + (self.raw.tell() if self.raw is not None else 0)

    def _due(self, ts: int) -> bool:
        # Size is the compressed size as of the last sync flush: checked per batch, so a file
        # can exceed ``rotate_bytes`` by up to one batch.
        if self.rotate_ns is not None and ts - self.first_ns >= self.rotate_ns:
            return True
        if self.rotate_bytes is not None:
            assert self.raw is not None
            return self.raw.tell() >= self.rotate_bytes
        return False

    def _rotate(self, ts: int) -> None:
        self.close()
        self.counter += 1
        stamp = dt.datetime.fromtimestamp(ts / NS_PER_S, tz=dt.UTC).strftime("%Y%m%dT%H%M%S")
        path = self.directory / f"{self.prefix}-{stamp}-{self.counter}{SUFFIX}"
        # "xb": never overwrite an existing recording.
        raw = open(path, "xb")  # noqa: SIM115 - closed in close()
        self.raw = raw
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        self.first_ns = ts
        self.paths.append(path)
        self.gz.write(header_line(self.clock.time_ns()) + b"\n")

    def close(self) -> None:
        gz, raw = self.gz, self.raw
        self.gz = self.raw = None
        try:
            if gz is not None:
                gz.close()
        finally:
            if raw is not None:
                raw.flush()
                os.fsync(raw.fileno())
                self.bytes_closed += raw.tell()
                raw.close()


class RecordingWriter:
    """Writes frames to rotating gzip recordings from a worker thread, through a bounded buffer.

    :meth:`write` (or :meth:`offer`) is called on the event loop for every frame: it only
    appends to a buffer and, once ``batch_frames`` are waiting, starts a write of the
    batch in a thread. ``max_buffered`` bounds the buffer: :meth:`write` raises
    :class:`RecordingBackpressure` past it and :meth:`offer` drops (and counts) the frame,
    while :meth:`wait_for_room` lets a caller that can wait (a websocket reader) hold its
    producer back instead. A write that fails (a full disk) is logged once and makes every
    later call raise :class:`RecordingWriteFailed`.
    """

    def __init__(
        self,
        directory: Path,
        clock: Clock,
        *,
        prefix: str = "kestrel",
        rotate_bytes: int | None = None,
        rotate_s: float | None = None,
        batch_frames: int = 512,
        max_buffered: int = 65_536,
    ) -> None:
        if rotate_bytes is not None and rotate_bytes <= 0:
            raise ValueError("rotate_bytes must be positive")
        if rotate_s is not None and rotate_s <= 0:
            raise ValueError("rotate_s must be positive")
        if not 0 < batch_frames <= max_buffered:
            raise ValueError("need 0 < batch_frames <= max_buffered")
        self.directory = directory
        self.batch_frames = batch_frames
        self.max_buffered = max_buffered
        self.stats = WriterStats()
        self._sink = _FileSink(
            directory, prefix, rotate_bytes, round(rotate_s * NS_PER_S) if rotate_s is not None else None, clock
        )
        self._pending: list[tuple[int, bytes]] = []
        self._inflight: asyncio.Task[None] | None = None
        self._room = asyncio.Event()
        self._room.set()
        self._failed: RecordingWriteFailed | None = None
        self._closed = False
        self._log = get_logger(component="recording_writer", directory=str(directory))

    @property
    def paths(self) -> list[Path]:
        """Every file this writer has opened so far, oldest first."""
        return list(self._sink.paths)

    def buffered(self) -> int:
        return len(self._pending)

    def write(self, ts_recv_ns: int, provider: str, payload: bytes | str) -> None:
        """Record one frame (``str``: a text frame; ``bytes``: a binary one)."""
        self._check()
        if len(self._pending) >= self.max_buffered:
            raise RecordingBackpressure(f"{len(self._pending)} frames waiting for the disk")
        self._append(ts_recv_ns, provider, payload)

    def offer(self, ts_recv_ns: int, provider: str, payload: bytes | str) -> bool:
        """Like :meth:`write`, but a full buffer drops the frame (counted) instead of raising."""
        self._check()
        if len(self._pending) >= self.max_buffered:
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 10_000 == 0:
                self._log.warning("recording_frames_dropped", dropped=self.stats.dropped)
            return False
        self._append(ts_recv_ns, provider, payload)
        return True

    async def wait_for_room(self) -> None:
        while len(self._pending) >= self.max_buffered:
            self._room.clear()
            self._kick()
            await self._room.wait()
            self._check()

    async def flush(self) -> None:
        """Wait until every frame written so far is on disk (sync-flushed)."""
        self._check()
        while self._pending or self._inflight is not None:
            if self._inflight is None:
                self._kick()
            inflight = self._inflight
            if inflight is not None:
                await asyncio.wait([inflight])
            self._check()

    async def close(self) -> None:
        """Flush, then finish the current file (gzip trailer, fsync). Raises if any write failed."""
        if self._closed:
            self._check_failed()
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            if self._inflight is not None:
                await asyncio.wait([self._inflight])
            try:
                await asyncio.to_thread(self._sink.close)
            except OSError as exc:
                self._fail(exc)
        self._check_failed()

    # ------------------------------------------------------------ internals

    def _check_failed(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _check(self) -> None:
        self._check_failed()
        if self._closed:
            raise RecordingWriteFailed("the recording writer is closed")

    def _append(self, ts: int, provider: str, payload: bytes | str) -> None:
        self._pending.append((ts, encode_frame(ts, provider, payload)))
        if len(self._pending) >= self.batch_frames:
            self._kick()

    def _kick(self) -> None:
        if self._inflight is not None or not self._pending:
            return
        batch, self._pending = self._pending, []
        self.stats.frames += len(batch)
        self._inflight = asyncio.ensure_future(self._write_batch(batch))

    async def _write_batch(self, batch: list[tuple[int, bytes]]) -> None:
        try:
            total = await asyncio.to_thread(self._sink.write, batch)
        except OSError as exc:
            self._fail(exc)
        else:
            self.stats.written += len(batch)
            self.stats.bytes = total
            self.stats.files = len(self._sink.paths)
        finally:
            self._inflight = None
            self._room.set()
        if self._failed is None and len(self._pending) >= self.batch_frames:
            self._kick()

    def _fail(self, exc: OSError) -> None:
        if self._failed is not None:
            return
        where = self._sink.paths[-1] if self._sink.paths else self.directory
        self._failed = RecordingWriteFailed(f"{where}: cannot write the recording ({exc.strerror or exc})")
        self._failed.__cause__ = exc
        self._log.error("recording_write_failed", path=str(where), error=repr(exc), written=self.stats.written)


class RecordingBackpressure(KestrelError):
    """More frames are waiting for the disk than the writer's buffer holds."""

