"""The run manifest: what a run was made of, built at start and journaled first.

Why: a result nobody can reproduce is an anecdote. The manifest pins the code (installed
version and the source tree's git commit, ``+dirty`` when it has uncommitted changes),
the effective config (canonical JSON, sorted keys, and its sha256), every data file the
run reads (size and sha256), every seed, and the feature pipeline's hash. Two runs with
equal manifests on equal inputs must produce equal journals; ``kestrel journal show
--manifest`` prints it back.

Hashing files and asking git are blocking: both run in a worker thread, before the
actors start.
"""

from __future__ import annotations

import asyncio
import hashlib
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from engine.config import Config
from engine.messages import DataFileDigest, RunManifest
from kestrel.ops import VERSION

__all__ = ["build_manifest", "config_json", "file_digest"]

_SOURCE_ROOT: Final = Path(__file__).resolve().parent.parent
_CHUNK: Final = 1 << 20


def config_json(config: Config) -> str:
    """The effective config as canonical JSON: sorted keys, no whitespace, Decimals as strings."""
    return msgspec.json.encode(msgspec.to_builtins(config), order="sorted").decode()


def file_digest(path: Path) -> DataFileDigest:
    """Size and sha256 of one file (blocking)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return DataFileDigest(path=str(path), bytes=size, sha256=digest.hexdigest())


def source_revision(root: Path = _SOURCE_ROOT) -> str:
    """The git commit of the source tree, ``+dirty`` with uncommitted changes (blocking)."""
    if not (root / ".git").exists():
        return "unknown"
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if status.strip() else "")


async def build_manifest(
    config: Config,
    files: Sequence[Path],
    *,
    mode: str,
    strategy: str,
    boot: int,
    now_ns: int,
    pipeline_hash: str = "",
) -> RunManifest:
    def blocking() -> tuple[list[DataFileDigest], str]:
        return [file_digest(path) for path in files], source_revision()

    digests, revision = await asyncio.to_thread(blocking)
    text = config_json(config)
    return RunManifest(
        run_id=config.engine.run_id,
        mode=mode,
        boot=boot,
        version=VERSION,
        source_revision=revision,
        python=sys.version.split()[0],
        platform=f"{platform.system()} {platform.machine()}",
        config_sha256=hashlib.sha256(text.encode()).hexdigest(),
        config_json=text,
        data_files=digests,
        seeds={"engine": config.engine.seed},
        pipeline_hash=pipeline_hash,
        strategy=strategy,
        ts_init=now_ns,
    )
