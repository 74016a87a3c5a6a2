"""The Kestrel recording format: writer round trip, rotation, a full disk, and a reader that survives damage."""

from __future__ import annotations

import errno
import gzip
import random
import re
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import SimClock
from engine.recording import (
    BAD_HEADER,
    MALFORMED,
    TRUNCATED,
    RecordedFrame,
    RecordingBackpressure,
    RecordingError,
    RecordingWriteFailed,
    RecordingWriter,
    encode_frame,
    header_line,
    read_recording,
)

T0 = 1_723_161_254_087_891_268
FRAMES: list[tuple[int, str, bytes | str]] = [
    (T0, "binance", '{"stream":"btcusdt@trade","data":{"p":"61837.63"}}'),
    (T0 + 1_000, "alpaca-iex", b"\x91\x83\xa1T\xa1q\x00\xff"),  # a binary (MessagePack) frame, not UTF-8
    (T0 + 2_000, "binance", "caf\u00e9 \u2603 text survives as text"),
]


def _as_bytes(payload: bytes | str) -> bytes:
    return payload.encode() if isinstance(payload, str) else payload


def _frames(path: Path) -> list[RecordedFrame]:
    return list(read_recording(path))


async def test_frames_round_trip_exactly_with_a_header(tmp_path: Path) -> None:
    clock = SimClock(start_ns=T0)
    writer = RecordingWriter(tmp_path, clock, prefix="binance", batch_frames=2)
    for ts, provider, payload in FRAMES:
        writer.write(ts, provider, payload)
    await writer.close()
    [path] = writer.paths
    assert re.fullmatch(r"binance-20240808T235414-1\.krec\.gz", path.name), path.name
    lines = gzip.decompress(path.read_bytes()).splitlines()
    assert orjson.loads(lines[0]) == {"format": "kestrel-recording", "version": 1, "created_ns": T0}
    assert orjson.loads(lines[1])["d"].startswith('{"stream"')
    assert "b" in orjson.loads(lines[2])  # binary frames are base64
    got = _frames(path)
    assert [(f.ts_recv, f.provider, f.payload, f.binary) for f in got] == [
        (ts, provider, _as_bytes(payload), isinstance(payload, bytes)) for ts, provider, payload in FRAMES
    ]
    assert [f.line for f in got] == [2, 3, 4] and all(f.source == str(path) for f in got)
    assert writer.stats.written == 3 and writer.stats.dropped == 0


async def test_files_rotate_by_receive_time_and_by_size(tmp_path: Path) -> None:
    by_time = RecordingWriter(tmp_path / "t", SimClock(), prefix="x", rotate_s=60, batch_frames=1)
    (tmp_path / "t").mkdir()
    for minute in range(3):
        for second in (0, 30):
            by_time.write(T0 + (minute * 60 + second) * 10**9, "binance", f"m{minute}s{second}")
    await by_time.close()
    assert [p.name.endswith(f"-{n}.krec.gz") for n, p in enumerate(by_time.paths, start=1)] == [True] * 3
    assert [len(_frames(p)) for p in by_time.paths] == [2, 2, 2]

    (tmp_path / "s").mkdir()
    by_size = RecordingWriter(tmp_path / "s", SimClock(), rotate_bytes=2_000, batch_frames=1)
    payloads = [random.Random(i).randbytes(1500) for i in range(10)]  # random: base64 of it barely compresses
    for i, payload in enumerate(payloads):
        by_size.write(T0 + i, "alpaca-iex", payload)
        await by_size.flush()  # size is checked per batch (the compressed size is known at a sync flush)
    await by_size.close()
    assert len(by_size.paths) > 1
    assert [f.payload for p in by_size.paths for f in _frames(p)] == payloads  # nothing lost at a boundary


async def test_a_full_disk_is_a_typed_error_that_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = RecordingWriter(tmp_path, SimClock(), batch_frames=1)

    def disk_full(self: object, frames: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("engine.recording._FileSink.write", disk_full)
    writer.write(T0, "binance", "x")
    with pytest.raises(RecordingWriteFailed, match="No space left on device"):
        await writer.flush()
    with pytest.raises(RecordingWriteFailed):
        writer.write(T0 + 1, "binance", "y")  # every later call says so, too
    with pytest.raises(RecordingWriteFailed):
        await writer.close()


async def test_the_buffer_is_bounded(tmp_path: Path) -> None:
    writer = RecordingWriter(tmp_path, SimClock(), batch_frames=4, max_buffered=4)
    # No loop turn between the calls: the first batch is handed to the thread, the next fills the buffer.
    for i in range(8):
        writer.write(T0 + i, "binance", "x")
    assert writer.buffered() == 4
    with pytest.raises(RecordingBackpressure):
        writer.write(T0 + 9, "binance", "x")
    assert writer.offer(T0 + 9, "binance", "x") is False and writer.stats.dropped == 1
    await writer.wait_for_room()
    assert writer.offer(T0 + 10, "binance", "x") is True
    await writer.close()
    assert sum(len(_frames(p)) for p in writer.paths) == 9


def _recording(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "r.krec.gz"
    path.write_bytes(gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0))
    return path


def test_bad_lines_are_reported_with_file_and_line_and_skipped(tmp_path: Path) -> None:
    good = encode_frame(T0, "binance", "{}")
    path = _recording(
        tmp_path,
        [header_line(T0), good, b"not json", b'{"t":1,"p":"binance"}', b'{"t":1,"p":"a","b":"%%%"}', good],
    )
    errors: list[RecordingError] = []
    frames = list(read_recording(path, errors.append))
    assert [f.line for f in frames] == [2, 6]
    assert [(e.kind, e.line) for e in errors] == [(MALFORMED, 3), (MALFORMED, 4), (MALFORMED, 5)]
    assert all(str(e).startswith(f"{path}:") for e in errors)
    with pytest.raises(RecordingError, match=r"r\.krec\.gz:3: not a frame record"):
        list(read_recording(path))
    other = _recording(tmp_path, [b'{"format":"something-else","version":1}', good])
    errors.clear()
    assert list(read_recording(other, errors.append)) == []
    assert [e.kind for e in errors] == [BAD_HEADER]


def _written(tmp_path: Path, n: int) -> bytes:
    lines = [header_line(T0)] + [encode_frame(T0 + i, "binance", f'{{"n":{i}}}') for i in range(n)]
    return gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(min_value=0.0, max_value=1.0))
def test_a_truncated_recording_yields_a_prefix_then_one_truncation_error(tmp_path: Path, cut: float) -> None:
    data = _written(tmp_path, 300)
    path = tmp_path / "cut.krec.gz"
    path.write_bytes(data[: int(len(data) * cut)])
    errors: list[RecordingError] = []
    frames = list(read_recording(path, errors.append))
    assert [f.payload for f in frames] == [f'{{"n":{i}}}'.encode() for i in range(len(frames))]
    if cut < 1.0:
        assert len(errors) == 1 and errors[0].kind in (TRUNCATED, BAD_HEADER, MALFORMED)
    else:
        assert errors == [] and len(frames) == 300


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_bytes_never_crash_the_reader(tmp_path: Path, data: st.DataObject) -> None:
    original = bytearray(_written(tmp_path, 50))
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(original) - 1), st.integers(0, 255)), max_size=8))
    for offset, value in flips:
        original[offset] = value
    path = tmp_path / "corrupt.krec.gz"
    path.write_bytes(bytes(original))
    errors: list[RecordingError] = []
    frames = list(read_recording(path, errors.append))  # anything but a RecordingError would escape here
    assert all(isinstance(f.ts_recv, int) and f.ts_recv >= 0 and f.provider for f in frames)
    assert all(e.line is None or e.line >= 1 for e in errors)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.binary(max_size=80).filter(lambda b: b"\n" not in b), max_size=20))
def test_arbitrary_lines_are_frames_or_reported(tmp_path: Path, lines: list[bytes]) -> None:
    path = _recording(tmp_path, [header_line(T0), *lines])
    errors: list[RecordingError] = []
    frames = list(read_recording(path, errors.append))
    assert len(frames) + len(errors) == len(lines)
