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
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".kestrel-installed"
CHROMIUM = Path("/usr/bin/chromium")


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


def ensure_browser() -> None:
    """Install Debian's Chromium for the dashboard's browser test (tests/test_dashboard.py) when missing.

    Playwright (a dev dependency) drives it; its own browser download is not used. Only as root
    with apt-get: anywhere else this says what is missing, and that test then fails with the
    command to run (KESTREL_SKIP_BROWSER=1 skips it instead).
    """
    if CHROMIUM.exists() or os.environ.get("KESTREL_SKIP_BROWSER") == "1":
        return
    apt = shutil.which("apt-get")
    if apt is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
        print(
            f"--- {CHROMIUM} is missing and this is not root with apt-get: tests/test_dashboard.py will fail "
            "(install it: sudo apt-get install -y --no-install-recommends chromium; or KESTREL_SKIP_BROWSER=1)",
            file=sys.stderr,
        )
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", "chromium"]
    # Package lists may be missing (a fresh container) or stale: update once if the install fails.
    for commands in ([install], [[apt, "update"], install]):
        for command in commands:
            print(f"--- browser for the dashboard test: {' '.join(command)}", file=sys.stderr, flush=True)
            if subprocess.call(command, env=env) != 0:
                print(f"--- {' '.join(command)} failed", file=sys.stderr)
                break
        else:
            return
    print("--- could not install chromium: tests/test_dashboard.py will fail", file=sys.stderr)


def test(argv: list[str]) -> int:
    steps = [
        ("ruff", [str(_python()), "-m", "ruff", "check", "."]),
        ("mypy", [str(_python()), "-m", "mypy"]),
        ("pytest", [str(_python()), "-m", "pytest", *argv]),
    ]
    for name, command in steps:
        if name == "pytest":
            ensure_browser()
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
