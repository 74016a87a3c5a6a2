"""The ``kestrel`` command as a user runs it: a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import orjson

from tests.helpers import random_walk_day, write_lean_zip


def kestrel(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kestrel.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=cwd,
    )


def test_the_default_demo_trades_through_the_alpaca_adapter(tmp_path: Path) -> None:
    log = tmp_path / "demo.jsonl"
    done = kestrel("run", "--json", "--log", str(log))
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)  # stdout is exactly one JSON object
    for key in ("ticks", "orders", "fills", "rejected", "positions", "realized_pnl", "wall_s"):
        assert key in summary
    assert summary["mode"] == "paper"
    # The simulator pairs the day's 105,428 one-sided national rows into two-sided quotes
    # and streams them with the 22,415 trades; every one of them reached pricing.
    assert summary["ticks"] == 42_451 + 22_415
    assert summary["orders"] > 5 and summary["fills"] >= summary["orders"]
    assert summary["actor_crashes"] == 0
    assert set(summary["positions"]) <= {"IBM"}
    Decimal(summary["realized_pnl"])  # an exact decimal string, not a float
    assert isinstance(summary["positions"].get("IBM", "0"), str)
    assert Decimal(summary["cash"]) != Decimal(100_000)
    events = [orjson.loads(line)["event"] for line in log.read_text().splitlines()]
    assert events[0] == "simulator_started" and events[-1] == "live_session_finished"
    assert "live_session_starting" in events
    assert "trade_updates_live" in events and "alpaca_data_subscribed" in events
    assert len(events) < 100, "no per-tick log lines"


def test_the_replay_of_the_bundled_day(tmp_path: Path) -> None:
    done = kestrel("replay", "--json", "--log", str(tmp_path / "r.jsonl"))
    assert done.returncode == 0, done.stderr
    summary = orjson.loads(done.stdout)
    assert summary["mode"] == "replay"
    assert summary["ticks"] == 127_843
    assert summary["orders"] > 100 and summary["fills"] >= summary["orders"] * 0.9
    assert summary["quotes_suspicious"] == 1  # the one flagged row of the bundled day


def test_same_data_and_seed_give_the_same_session(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, quotes=3000, seed=3)
    config = tmp_path / "k.toml"
    config.write_text(
        f"[data]\nfiles = {orjson.dumps([str(f) for f in files]).decode()}\n[engine]\nseed = 11\n"
    )
    runs = [
        orjson.loads(
            kestrel("replay", "--json", "--config", str(config), "--log", str(tmp_path / f"{i}.jsonl")).stdout
        )
        for i in range(2)
    ]
    for run in runs:
        del run["wall_s"], run["ticks_per_s"], run["startup_s"]
    assert runs[0] == runs[1]
    assert runs[0]["orders"] > 0


def test_human_summary_and_strategy_flag(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, quotes=500)
    config = tmp_path / "k.toml"
    config.write_text(f"[data]\nfiles = {orjson.dumps([str(f) for f in files]).decode()}\n")
    done = kestrel(
        "replay", "--config", str(config), "--strategy", "ema-cross", "--log", str(tmp_path / "l.jsonl")
    )
    assert done.returncode == 0, done.stderr
    assert "Kestrel replay session: ema-cross" in done.stdout
    assert "orders" in done.stdout and "realized P&L" in done.stdout


def test_speed_factor_paces_the_replay(tmp_path: Path) -> None:
    # 20 quote pairs 100 ms apart = 1.9 s of market time; at 10× it takes ≥ 0.19 s.
    files = random_walk_day(tmp_path, quotes=20)
    config = tmp_path / "k.toml"
    config.write_text(f"[data]\nfiles = {orjson.dumps([str(f) for f in files]).decode()}\n")
    done = kestrel(
        "replay", "--json", "--speed", "10", "--config", str(config), "--log", str(tmp_path / "l.jsonl")
    )
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["wall_s"] >= 0.18


def _assert_user_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


def test_bad_input_gets_one_clear_line_and_exit_2(tmp_path: Path) -> None:
    _assert_user_error(kestrel("run", "--bogus"), "unrecognized arguments: --bogus")
    _assert_user_error(kestrel("run", "--speed", "fast"), "expected 'max' or a positive number")
    _assert_user_error(
        kestrel("run", "--config", str(tmp_path / "missing.toml")), "missing.toml: no such file"
    )
    malformed = tmp_path / "bad.toml"
    malformed.write_text("[engine\n")
    _assert_user_error(kestrel("run", "--config", str(malformed)), "bad.toml: malformed TOML")
    _assert_user_error(
        kestrel("run", "--strategy", "nope", "--log", str(tmp_path / "l")), "unknown strategy 'nope'"
    )
    params = tmp_path / "params.toml"
    params.write_text("[strategy.params]\nfast = 30\nslow = 20\n")
    _assert_user_error(
        kestrel("run", "--config", str(params), "--log", str(tmp_path / "l")), "strategy.params"
    )


def test_a_corrupt_recording_row_names_file_and_line(tmp_path: Path) -> None:
    good = (34200000, 1000000, 100, 0, 0, "P", 1, 0)
    quotes = write_lean_zip(
        tmp_path / "xyz" / "20240102_quote.zip", [good, good, (34200001, "1o0", 100, 0, 0, "P", 1, 0)]
    )
    config = tmp_path / "k.toml"
    config.write_text(f'[data]\nfiles = ["{quotes}"]\n')
    done = kestrel("replay", "--strict", "--config", str(config), "--log", str(tmp_path / "l.jsonl"))
    _assert_user_error(done, f"{quotes}:3: not an integer field")
    # Without --strict the row is counted, named and skipped (tests/test_replay_cli.py).
    done = kestrel("replay", "--json", "--config", str(config), "--log", str(tmp_path / "l.jsonl"))
    assert done.returncode == 0, done.stderr
    assert orjson.loads(done.stdout)["input_errors"] == {"bad_row": 1}


def test_live_mode_is_refused_without_confirmation(tmp_path: Path) -> None:
    config = tmp_path / "live.toml"
    config.write_text('[engine]\nmode = "live"\n')
    env = {k: v for k, v in os.environ.items() if k != "KESTREL_CONFIRM_LIVE"}
    _assert_user_error(kestrel("run", "--config", str(config), env=env), "--confirm-live")


def test_a_placeholder_secret_is_refused_and_a_real_one_never_printed_or_logged(tmp_path: Path) -> None:
    env = {**os.environ, "APCA_API_KEY_ID": "PKREALKEY123456", "APCA_API_SECRET_KEY": "your_key_here"}
    _assert_user_error(
        kestrel("run", "--log", str(tmp_path / "l"), env=env), "APCA_API_SECRET_KEY", "placeholder"
    )
    secret = "real-secret-value-0xC0FFEE-42"
    env["APCA_API_SECRET_KEY"] = secret
    files = random_walk_day(tmp_path, quotes=300)
    config = tmp_path / "k.toml"
    config.write_text(
        f'[data]\nfiles = {orjson.dumps([str(f) for f in files]).decode()}\n[log]\nlevel = "debug"\n'
    )
    log = tmp_path / "s.jsonl"
    done = kestrel("run", "--config", str(config), "--log", str(log), env=env)  # the embedded venue uses these keys
    assert done.returncode == 0, done.stderr
    everything = done.stdout + done.stderr + log.read_text()
    assert secret not in everything and "PKREALKEY123456" not in everything
    loaded = [orjson.loads(line) for line in log.read_text().splitlines() if "credentials_loaded" in line]
    assert loaded and loaded[0]["key_id"] == "***" and loaded[0]["source"] == "environment"
