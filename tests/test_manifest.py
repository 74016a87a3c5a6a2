"""The run manifest: journaled first at every start, shown by ``kestrel journal show --manifest``."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import orjson

CLI = [sys.executable, "-m", "kestrel.cli"]


def kestrel(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=120)


def test_every_start_journals_a_manifest_that_pins_code_config_data_and_seeds(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    config = tmp_path / "k.toml"
    config.write_text('[engine]\nseed = 11\n[strategy.params]\nfast = 3\nslow = 7\n')
    for _ in range(2):
        done = kestrel("replay", "--config", str(config), "--journal", str(journal), "--json")
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    summary = orjson.loads(done.stdout)

    shown = kestrel("journal", "show", str(journal), "--manifest", "--json")
    assert shown.returncode == 0, shown.stderr.decode()
    manifests = orjson.loads(shown.stdout)
    assert [m["boot"] for m in manifests] == [1, 2]
    first, second = manifests
    assert first["seq"] == 1  # before any order record of the first start
    assert first["mode"] == "replay" and first["strategy"] == "ema-cross"
    assert first["seeds"] == {"engine": 11}
    assert first["config_sha256"] == hashlib.sha256(first["config_json"].encode()).hexdigest()
    assert orjson.loads(first["config_json"])["strategy"]["params"] == {"fast": 3, "slow": 7}
    assert first["config_sha256"] == second["config_sha256"]
    assert first["data_files"] and first["data_files"] == second["data_files"]
    for data in first["data_files"]:
        content = Path(data["path"]).read_bytes()
        assert data["bytes"] == len(content) and data["sha256"] == hashlib.sha256(content).hexdigest()
    assert first["version"] and first["source_revision"] and first["python"].startswith("3.")
    assert summary["manifest"]["boot"] == 2 and summary["manifest"]["config_sha256"] == first["config_sha256"]

    text = kestrel("journal", "show", str(journal), "--manifest")
    assert text.returncode == 0
    lines = text.stdout.decode()
    assert "boot 1 (seq 1): replay run" in lines and "boot 2" in lines and first["config_sha256"] in lines
    assert kestrel("journal", "verify", str(journal)).returncode == 0  # the book ignores manifests


def test_manifest_and_order_do_not_combine(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    assert kestrel("replay", "--journal", str(journal)).returncode == 0
    done = kestrel("journal", "show", str(journal), "--manifest", "--order", "x")
    assert done.returncode == 2 and b"--manifest" in done.stderr
