"""CI's chaos campaign: 20 seeds across every scenario through the real ``kestrel chaos`` CLI.

Each run is a simulator and several engine processes; a failing run prints the one
line that reproduces it (``kestrel chaos --seed N --scenario S --runs 1``), and the
files it kept (engine logs, journal) are named in the output.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from simulations.chaos.schedule import SCENARIOS

SEED = 100
RUNS = 24
"""Three rounds of the eight scenarios."""


def test_a_short_campaign_breaks_no_invariant(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "chaos", "--seed", str(SEED), "--runs", str(RUNS), "--jobs", "2",
         "--duration", "5", "--workdir", str(tmp_path), "--json"],
        capture_output=True,
        timeout=540,
    )
    report = orjson.loads(done.stdout)
    progress = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"{report['violations']}\n{progress}"
    assert report["runs"] == RUNS and report["violations"] == [] and report["seeds_failed"] == []
    assert set(report["scenarios"]) == set(SCENARIOS)
    injected = report["faults_injected"]
    assert sum(injected.values()) >= RUNS, injected
    assert len(injected) >= 10, injected  # many kinds, not one repeated
    assert report["orders"] > RUNS and report["fills"] > RUNS  # the engines traded through it
    assert report["converged_s_max"] is not None and report["converged_s_max"] < 30
    assert progress.count(" ok; ") == RUNS
