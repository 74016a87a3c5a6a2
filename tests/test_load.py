"""``kestrel load`` end to end: a real engine process under a sustained quote rate.

A short run at 1,000 quotes/s (the documented soak is 5,000/s for 10 minutes): the engine
must see every tick sent, never be cut off as a slow client, trade, stop cleanly on
SIGTERM, and report its loop lag; memory is sampled while it runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

CLI = [sys.executable, "-m", "kestrel.cli"]


def test_load_run_keeps_up_and_reports_memory_and_loop_lag(tmp_path: Path) -> None:
    done = subprocess.run(
        [*CLI, "load", "--rate", "1000", "--duration", "4", "--symbols", "3", "--sample-every", "1",
         "--workdir", str(tmp_path), "--json"],
        capture_output=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    report = orjson.loads(done.stdout)
    assert report["symbols"] == ["LOAD0", "LOAD1", "LOAD2"]
    assert 3900 <= report["quotes_sent"] <= 4000
    assert report["trades_sent"] == report["quotes_sent"] // 10
    assert report["ticks_seen"] == report["quotes_sent"] + report["trades_sent"]
    assert report["slow_client_drops"] == 0
    assert report["engine_exit"] == 0
    assert len(report["samples"]) >= 4  # t=0 and one a second
    assert all(s["rss_mb"] > 10 for s in report["samples"])
    lag = report["summary"]["loop_lag"]
    assert lag["samples"] > 20  # a 50 ms sleeper over several seconds
    assert lag["buckets"][-1] == lag["samples"]
    assert report["loop_lag_max_ms"] == round(lag["max_s"] * 1e3, 2)
    assert report["orders"] > 0
    assert report["summary"]["positions"] or report["fills"] > 0
    assert (tmp_path / "journal.db").exists()
