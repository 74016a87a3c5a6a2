"""Replay inputs: format detection, the live decoders on recorded frames, lenient vs strict, merging, synthetic."""

from __future__ import annotations

import gzip
import itertools
from decimal import Decimal
from pathlib import Path

import pytest

from adapters.binance.decode import BinanceDecoder
from adapters.replay_sources import (
    BINANCE_CAPTURE,
    KESTREL,
    LEAN_TICKS,
    MAX_SAMPLES,
    InputErrors,
    ReplayInput,
    detect_format,
    merged_events,
    resolve_inputs,
    synthetic_batches,
)
from engine.clock import SimClock
from engine.errors import DataError
from engine.messages import ExchangeQuote, TradeTick
from engine.recording import RecordingWriter
from simulations.synthetic import SYMBOL, random_walk_quotes
from tests.helpers import random_walk_day, write_lean_zip

CAPTURE = Path("/work/shared/data/binance-ws/btcusdt_20240808.gz")
needs_capture = pytest.mark.skipif(not CAPTURE.exists(), reason="the shared Binance capture is not here")


def _capture_lines(n: int) -> list[bytes]:
    with gzip.open(CAPTURE, "rb") as f:
        return [line.rstrip(b"\n") for line in itertools.islice(f, n)]


def _gz(path: Path, lines: list[bytes], cut: int | None = None) -> Path:
    data = gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)
    path.write_bytes(data if cut is None else data[:cut])
    return path


@needs_capture
def test_formats_are_detected_from_name_and_content(tmp_path: Path) -> None:
    lean = random_walk_day(tmp_path, quotes=5)
    assert detect_format(CAPTURE) == BINANCE_CAPTURE
    assert detect_format(lean[0]) == LEAN_TICKS
    assert detect_format(tmp_path / "x.krec.gz") == KESTREL
    renamed = _gz(tmp_path / "rec.gz", [b'{"format":"kestrel-recording","version":1,"created_ns":0}'])
    assert detect_format(renamed) == KESTREL
    unknown = _gz(tmp_path / "other.gz", [b"hello"])
    with pytest.raises(DataError, match=r"other\.gz:1: cannot tell the format"):
        detect_format(unknown)
    with pytest.raises(DataError, match="no such file"):
        resolve_inputs([tmp_path / "missing.gz"])


@needs_capture
def test_a_capture_goes_through_the_live_decoder_and_bad_lines_are_counted(tmp_path: Path) -> None:
    lines = _capture_lines(400)
    expected = []
    decoder = BinanceDecoder()
    for line in lines:
        ts, _, frame = line.partition(b" ")
        expected.extend(decoder.decode(frame, int(ts)))
    damaged = [
        *lines[:100],
        b"garbage without a timestamp",  # line 101
        lines[100].split(b" ", 1)[0] + b' {"stream":"btcusdt@kline_1m","data":{}}',  # 102: unknown stream
        lines[100].split(b" ", 1)[0] + b" {not json",  # 103: not a frame
        *lines[100:],
    ]
    path = _gz(tmp_path / "cap.gz", damaged)
    errors = InputErrors()
    got = list(merged_events([ReplayInput(path, BINANCE_CAPTURE)], errors))
    assert got == expected and len(got) > 300
    assert errors.counts == {"malformed_line": 1, "unknown_stream": 1, "decode_error": 1}
    assert [(s.file, s.line) for s in errors.samples] == [(str(path), 101), (str(path), 102), (str(path), 103)]
    with pytest.raises(DataError, match=r"cap\.gz:101: expected '<receive ns> <frame>'"):
        list(merged_events([ReplayInput(path, BINANCE_CAPTURE)], InputErrors(strict=True)))


@needs_capture
def test_a_truncated_capture_keeps_what_came_before(tmp_path: Path) -> None:
    lines = _capture_lines(2000)
    full = gzip.compress(b"".join(line + b"\n" for line in lines), mtime=0)
    path = _gz(tmp_path / "cut.gz", lines, cut=len(full) // 2)
    errors = InputErrors()
    got = list(merged_events([ReplayInput(path, BINANCE_CAPTURE)], errors))
    assert got and errors.counts == {"truncated_gzip": 1}
    assert errors.samples[0].line is not None and errors.samples[0].line > 500


@needs_capture
async def test_a_kestrel_recording_replays_like_the_capture_it_was_made_from(tmp_path: Path) -> None:
    lines = _capture_lines(500)
    writer = RecordingWriter(tmp_path, SimClock(), prefix="binance", batch_frames=64)
    for line in lines:
        ts, _, frame = line.partition(b" ")
        writer.write(int(ts), "binance", frame.decode())
    # Alpaca frames go through the live client's decoder: a quote, then a message it cannot read.
    alpaca_quote = (
        '[{"T":"q","S":"IBM","bx":"V","bp":189.5,"bs":3,"ax":"Q","ap":189.52,"as":5,'
        '"c":["R"],"z":"A","t":"2024-08-09T00:00:00Z"}]'
    )
    writer.write(int(ts) + 1, "alpaca-iex", alpaca_quote)
    writer.write(int(ts) + 2, "alpaca-iex", b"\x91\x80")  # MessagePack: one message without a type
    writer.write(int(ts) + 3, "bloomberg", "{}")
    await writer.close()
    capture = _gz(tmp_path / "cap.gz", lines)
    errors = InputErrors()
    from_recording = list(merged_events(resolve_inputs(writer.paths), errors))
    alpaca = [m for m in from_recording if m.provider == "alpaca-iex"]
    assert [(type(m).__name__, m.symbol, str(getattr(m, "bid_price", ""))) for m in alpaca] == [
        ("ExchangeQuote", "IBM", "189.5")
    ]
    binance_only = [m for m in from_recording if m.provider != "alpaca-iex"]
    assert binance_only == list(merged_events([ReplayInput(capture, BINANCE_CAPTURE)], InputErrors()))
    assert errors.counts == {"decode_error": 1, "unknown_provider": 1}


def test_lean_rows_are_skipped_and_counted_unless_strict(tmp_path: Path) -> None:
    good = (34200000, 1831500, 100, 0, 0, "P", 1, 0)
    rows = [good, (34200001, "1o0", 100, 0, 0, "P", 1, 0), good, (34100000, 1, 1, 0, 0, "P", 1, 0), good]
    quotes = write_lean_zip(tmp_path / "ibm" / "20131010_quote.zip", rows)
    errors = InputErrors()
    got = list(merged_events([ReplayInput(quotes, LEAN_TICKS)], errors))
    assert len(got) == 3
    assert errors.counts == {"bad_row": 1, "time_backwards": 1}
    assert [(s.line, s.kind) for s in errors.samples] == [(2, "bad_row"), (4, "time_backwards")]
    with pytest.raises(DataError, match=":2: not an integer field"):
        list(merged_events([ReplayInput(quotes, LEAN_TICKS)], InputErrors(strict=True)))


def test_samples_are_capped(tmp_path: Path) -> None:
    path = _gz(tmp_path / "cap.gz", [b"bad"] * 50)
    errors = InputErrors()
    assert list(merged_events([ReplayInput(path, BINANCE_CAPTURE)], errors)) == []
    assert errors.counts == {"malformed_line": 50} and len(errors.samples) == MAX_SAMPLES


@needs_capture
def test_files_of_different_formats_merge_by_receive_time(tmp_path: Path) -> None:
    lean = random_walk_day(tmp_path, quotes=50, date="20240808")  # 09:30 New York = 13:30 UTC
    capture = _gz(tmp_path / "cap.gz", _capture_lines(300))  # from 23:54 UTC
    inputs = [ReplayInput(capture, BINANCE_CAPTURE), *(ReplayInput(p, LEAN_TICKS) for p in lean)]
    got = list(merged_events(inputs, InputErrors()))
    stamps = [t.ts_recv for t in got]
    assert stamps == sorted(stamps)
    assert {t.provider for t in got} == {"lean-ticks", "binance"}


async def test_synthetic_quotes_are_built_lazily_in_batches() -> None:
    arrays = random_walk_quotes(10_000, 9)
    batches = synthetic_batches(random_walk_quotes(10_000, 9), SYMBOL, batch_size=4096)
    first = await anext(batches)
    assert len(first) == 4096  # one batch of messages exists, not ten thousand
    rest = [q async for batch in batches for q in batch]
    quotes = first + rest
    assert len(quotes) == 10_000
    q = quotes[1234]
    assert isinstance(q, ExchangeQuote) and not isinstance(q, TradeTick)
    assert (q.symbol, q.exchange, q.provider, q.national) == ("SYNTH", "SYN", "synthetic", True)
    assert q.bid_price == Decimal(int(arrays.bid_cents[1234])).scaleb(-2)
    assert q.ask_size == Decimal(int(arrays.ask_size[1234]))
    assert q.ts_event == q.ts_recv == int(arrays.ts_ns[1234])
    again = [q async for b in synthetic_batches(random_walk_quotes(10_000, 9), SYMBOL) for q in b]
    assert again == quotes  # the same seed, the same quotes
