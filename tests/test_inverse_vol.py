"""``inverse-vol``: a multi-asset allocator that trades in a replay of IBM and BAC on the same day."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from actors.strategies.inverse_vol import InverseVol
from engine.errors import ConfigError
from tests.helpers import shared_data

TICKS = shared_data() / "us-equity-ticks"
DAY = [TICKS / s / f"20131007_{k}.zip" for s in ("ibm", "bac") for k in ("quote", "trade")]


def test_parameters_are_validated() -> None:
    for bad in ({"gross": "1.5"}, {"window": 1}, {"capital": "-1"}, {"rebalance_s": 0}, {"nope": 1}):
        with pytest.raises(ConfigError, match=r"strategy\.params"):
            InverseVol.from_params("inverse-vol", bad)
    strategy = InverseVol.from_params("inverse-vol", {"window": 30})
    declared = [(f.indicator, f.input, f.params) for f in strategy.features]
    assert declared == [("volatility", "bar_close", {"window": 30})]


@pytest.mark.skipif(not all(p.exists() for p in DAY), reason=f"no recordings at {TICKS}")
def test_it_holds_both_symbols_after_a_replay_of_one_day(tmp_path: Path) -> None:
    config = tmp_path / "iv.toml"
    config.write_text('[strategy]\nname = "inverse-vol"\n[risk]\nmax_order_qty = 5000\n')
    journal = tmp_path / "journal.db"
    done = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "replay", "--config", str(config), "--journal", str(journal),
         *map(str, DAY), "--json"],
        capture_output=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = orjson.loads(done.stdout)
    assert summary["strategy"] == "inverse-vol"
    assert summary["orders"] > 2 and summary["fills"] >= summary["orders"]
    held = {symbol: Decimal(qty) for symbol, qty in summary["positions"].items()}
    assert set(held) == {"IBM", "BAC"} and all(qty > 0 for qty in held.values())
    assert summary["manifest"]["pipeline_hash"]  # its volatility feature is declared and hashed
    shown = subprocess.run(
        [sys.executable, "-m", "kestrel.cli", "journal", "show", str(journal), "--json"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    signals = [e["record"] for e in orjson.loads(shown.stdout) if e["kind"] == "SignalRecorded"]
    assert signals and all({"volatility", "weight", "mid"} <= set(s["features"]) for s in signals)
