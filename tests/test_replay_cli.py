"""``kestrel replay FILE... / --synthetic``: determinism (in process and in a fresh one), formats, bad input."""

from __future__ import annotations

import asyncio
import gzip
import itertools
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import orjson

from engine.config import parse_config
from kestrel.node import RecordPlan, SessionOptions, run_recorder, run_replay_session
from tests.helpers import write_lean_zip
from tests.test_cli import kestrel

CAPTURE = Path("/work/shared/data/binance-ws/btcusdt_20240808.gz")
N = 20_000
PARAMS = {"strategy": {"params": {"fast": 3, "slow": 7}}}
"""Fast EMAs: the walk crosses often, so the replay journals hundreds of orders."""


def _replay(*args: str, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    done = kestrel("replay", "--json", "--log", str(tmp_path / "log.jsonl"), *args)
    return done.returncode, orjson.loads(done.stdout) if done.returncode == 0 else {}, done.stderr


async def test_the_same_seed_gives_the_same_event_log_and_journal_in_process_and_in_a_fresh_one(
    tmp_path: Path,
) -> None:
    config = parse_config({**PARAMS, "engine": {"seed": 5}}, "test")
    runs = [
        await run_replay_session(config, SessionOptions(synthetic=N, journal=tmp_path / f"j{i}.db")) for i in range(2)
    ]
    toml = tmp_path / "k.toml"
    toml.write_text("[strategy.params]\nfast = 3\nslow = 7\n")
    code, fresh, err = _replay(
        "--synthetic", str(N), "--seed", "5", "--config", str(toml), "--journal", str(tmp_path / "j2.db"),
        tmp_path=tmp_path,
    )
    assert code == 0, err
    summaries = [msgspec.to_builtins(r) for r in runs] + [fresh]
    manifests = [s.pop("manifest") for s in summaries]
    # The manifests differ only where the configs do (the CLI's resolves paths from its file).
    assert len({(m["seeds"]["engine"], m["source_revision"], m["strategy"]) for m in manifests}) == 1
    assert manifests[0]["config_sha256"] == manifests[1]["config_sha256"] != manifests[2]["config_sha256"]
    for s in summaries:
        del s["wall_s"], s["ticks_per_s"], s["startup_s"], s["journal"]
    assert summaries[0] == summaries[1] == summaries[2]
    s = summaries[0]
    assert s["ticks"] == N and s["orders"] > 100 and s["seed"] == 5
    assert len(s["event_log_sha256"]) == 64 and len(s["journal_sha256"]) == 64
    assert s["input_errors"] == {} and s["input_error_samples"] == []
    assert s["risk"]["var_samples"] > 20 and Decimal(s["risk"]["es_95"]) >= Decimal(s["risk"]["var_95"])

    code, other, err = _replay("--synthetic", str(N), "--seed", "6", "--config", str(toml), tmp_path=tmp_path)
    assert code == 0, err
    assert other["event_log_sha256"] != s["event_log_sha256"]
    assert other["journal_sha256"] is None  # no journal, no journal digest


def test_a_binance_capture_replays_deterministically_through_the_cli(tmp_path: Path) -> None:
    with gzip.open(CAPTURE, "rb") as f:
        lines = list(itertools.islice(f, 6000))
    capture = tmp_path / "btc.gz"
    capture.write_bytes(gzip.compress(b"".join(lines), mtime=0))
    first = _replay(str(capture), tmp_path=tmp_path)
    second = _replay(str(capture), "--format", "binance-capture", tmp_path=tmp_path)
    assert first[0] == 0 and second[0] == 0, (first[2], second[2])
    a, b = first[1], second[1]
    assert a["ticks"] > 4000 and a["sim_start_ns"] >= int(lines[0].split(b" ")[0])
    assert a["data_files"] == [str(capture)] and a["input_errors"] == {}
    assert a["event_log_sha256"] == b["event_log_sha256"]


def _damaged_lean_day(tmp_path: Path) -> Path:
    good = (34200000, 1000000, 100, 0, 0, "P", 1, 0)
    ask = (34200000, 0, 0, 1000100, 100, "P", 1, 0)
    return write_lean_zip(
        tmp_path / "xyz" / "20240102_quote.zip", [good, ask, (34200001, "1o0", 100, 0, 0, "P", 1, 0), good, ask]
    )


def test_bad_input_is_counted_with_file_and_line_and_the_replay_goes_on(tmp_path: Path) -> None:
    quotes = _damaged_lean_day(tmp_path)
    code, summary, err = _replay(str(quotes), tmp_path=tmp_path)
    assert code == 0, err
    assert summary["ticks"] == 4
    assert summary["input_errors"] == {"bad_row": 1}
    error = "not an integer field (invalid literal for int() with base 10: '1o0')"
    assert summary["input_error_samples"] == [{"file": str(quotes), "line": 3, "error": error, "kind": "bad_row"}]
    human = kestrel("replay", str(quotes), "--log", str(tmp_path / "h.jsonl"))
    assert human.returncode == 0 and "bad input      bad_row 1 (skipped)" in human.stdout
    assert f"{quotes}:3: not an integer field" in human.stdout


def test_strict_makes_the_first_bad_line_fatal(tmp_path: Path) -> None:
    quotes = _damaged_lean_day(tmp_path)
    code, _, err = _replay(str(quotes), "--strict", tmp_path=tmp_path)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"kestrel: error: {quotes}:3: not an integer field")
    truncated = tmp_path / "cut.gz"
    data = gzip.compress(b"".join(_capture_head(3000)), mtime=0)
    truncated.write_bytes(data[: len(data) // 2])
    code, _, err = _replay(str(truncated), "--strict", tmp_path=tmp_path)
    assert code == 2 and f"kestrel: error: {truncated}:" in err and "truncated" in err


def _capture_head(n: int) -> list[bytes]:
    with gzip.open(CAPTURE, "rb") as f:
        return list(itertools.islice(f, n))


def test_usage_errors(tmp_path: Path) -> None:
    code, _, err = _replay(str(tmp_path / "nope.gz"), tmp_path=tmp_path)
    assert code == 2 and "nope.gz: no such file" in err
    code, _, err = _replay("--synthetic", "10", str(CAPTURE), tmp_path=tmp_path)
    assert code == 2 and "not both" in err
    code, _, err = _replay("--synthetic", "-3", tmp_path=tmp_path)
    assert code == 2 and "whole number" in err
    code, _, err = _replay(str(CAPTURE), "--format", "csv", tmp_path=tmp_path)
    assert code == 2 and "invalid choice" in err


class _FakeBinance:
    """Stands in for the live client: hands ``frames`` to the recorder's hook, then idles until stopped."""

    def __init__(self, frames: list[tuple[int, bytes]], on_frame: Any) -> None:
        self.frames = frames
        self.on_frame = on_frame
        self.stopped = asyncio.Event()

    async def run(self) -> None:
        for ts, payload in self.frames:
            self.on_frame(ts, "binance", payload)
        await self.stopped.wait()

    async def stop(self) -> None:
        self.stopped.set()


async def test_record_then_replay_gives_what_the_capture_gives(tmp_path: Path) -> None:
    frames = [(int(ts), frame) for ts, _, frame in (line.rstrip(b"\n").partition(b" ") for line in _capture_head(3000))]
    plan = RecordPlan("binance", ["BTCUSDT"], tmp_path / "rec", rotate_bytes=50_000, duration_s=0.3)
    result = await run_recorder(plan, lambda plan, clock, on_frame: _FakeBinance(frames, on_frame))
    assert result.frames == result.written == 3000 and result.dropped == 0
    assert len(result.files) > 1 and all(Path(f).name.startswith("binance-") for f in result.files)
    config = parse_config({}, "test")
    recorded = await run_replay_session(config, SessionOptions(inputs=tuple(Path(f) for f in result.files)))
    capture = tmp_path / "cap.gz"
    capture.write_bytes(gzip.compress(b"".join(_capture_head(3000)), mtime=0))
    direct = await run_replay_session(config, SessionOptions(inputs=(capture,)))
    assert recorded.ticks == direct.ticks > 2000
    assert recorded.event_log_sha256 == direct.event_log_sha256
    assert recorded.input_errors == {}
