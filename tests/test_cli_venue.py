"""``kestrel venue`` as its own process, and ``kestrel run --venue-url`` trading against it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.helpers import random_walk_day


def test_run_against_a_separately_started_venue(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, quotes=4000, seed=5)
    env = {**os.environ, "APCA_API_KEY_ID": "PKTESTVENUE0001", "APCA_API_SECRET_KEY": "venue-test-secret-0001"}
    venue = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kestrel.cli",
            "venue",
            "--speed",
            "20",
            *(a for f in files for a in ("--feed", str(f))),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert venue.stdout is not None
        first = venue.stdout.readline().strip()
        assert first.startswith("listening on http://127.0.0.1:"), first
        url = first.removeprefix("listening on ")
        config = tmp_path / "k.toml"
        config.write_text(
            f"[data]\nfiles = {orjson.dumps([str(f) for f in files]).decode()}\n[strategy.params]\nfast = 3\nslow = 6\n"
        )
        engine = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kestrel.cli",
                "run",
                "--venue-url",
                url,
                "--json",
                "--config",
                str(config),
                "--log",
                str(tmp_path / "run.jsonl"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        log = tmp_path / "run.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (log.exists() and "trade_updates_live" in log.read_text()):
            assert engine.poll() is None, engine.communicate()
            time.sleep(0.1)
        time.sleep(4.0)  # let it trade on the live feed for a few seconds
        engine.send_signal(signal.SIGINT)
        out, err = engine.communicate(timeout=30)
        assert engine.returncode == 0, err
        summary = orjson.loads(out)
        assert summary["mode"] == "paper"
        assert summary["ticks"] > 50
        assert summary["orders"] >= 1 and summary["fills"] >= 1
    finally:
        venue.send_signal(signal.SIGINT)
        try:
            venue.wait(timeout=10)
        except subprocess.TimeoutExpired:
            venue.kill()
