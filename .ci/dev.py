#!/usr/bin/env python3
"""Set up and use a Kestrel checkout with nothing but Python 3.11+ and pip.

    python3 .ci/dev.py run [kestrel run options]   # the paper demo on the bundled data
    python3 .ci/dev.py test [pytest options]       # ruff, mypy and the whole test suite
    python3 .ci/dev.py bench                       # the benchmarks (figures for docs/BENCHMARKS.md)

The first call creates ``.venv`` and installs Kestrel with its dev dependencies into it;
later calls reinstall only when ``pyproject.toml`` changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".kestrel-installed"


def _python() -> Path:
    return BIN / ("python.exe" if os.name == "nt" else "python")


def ensure_venv() -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Kestrel needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == want and _python().exists():
        return
    if not _python().exists():
        print(f"creating virtualenv {VENV}", file=sys.stderr)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing kestrel and its dev dependencies (once)", file=sys.stderr)
    pip = [str(_python()), "-m", "pip", "--disable-pip-version-check", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(want)


def run(argv: list[str]) -> int:
    return subprocess.call([str(BIN / "kestrel"), "run", *argv], cwd=ROOT)


def test(argv: list[str]) -> int:
    steps = [
        ("ruff", [str(_python()), "-m", "ruff", "check", "."]),
        ("mypy", [str(_python()), "-m", "mypy"]),
        ("pytest", [str(_python()), "-m", "pytest", *argv]),
    ]
    for name, command in steps:
        print(f"--- {name}", file=sys.stderr, flush=True)
        code = subprocess.call(command, cwd=ROOT)
        if code != 0:
            print(f"--- {name} failed (exit {code})", file=sys.stderr)
            return code
    return 0


def bench(argv: list[str]) -> int:
    return subprocess.call([str(_python()), "-m", "benchmarks", *argv], cwd=ROOT)


def main() -> int:
    commands = {"run": run, "test": test, "bench": bench}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__, file=sys.stderr)
        return 2
    ensure_venv()
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
