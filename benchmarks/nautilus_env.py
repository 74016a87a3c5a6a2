"""The NautilusTrader side's own virtualenv: ``.bench/nautilus-venv`` with ``nautilus_trader==1.221.0``.

NautilusTrader is not a Kestrel dependency and must never be imported into Kestrel's
virtualenv (it pins its own numpy, pandas, pyarrow, ...). The side-by-side benchmark
therefore runs it in a separate virtualenv, made here on first use:

1. ``python3 -m venv .bench/nautilus-venv`` (with the interpreter running this module, so
   the same CPython minor version as Kestrel's: 1.221.0 is the newest release for 3.11);
2. ``pip install nautilus_trader==1.221.0`` (binary wheels; the venv is ≈ 670 MB with pyarrow, pandas, ...).

It is idempotent: if the venv's python already imports ``nautilus_trader`` at the pinned
version, nothing is done. ``.bench/`` must be git-ignored.

Run: ``.venv/bin/python -m benchmarks.nautilus_env [--venv PATH] [--force]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

REPO: Final = Path(__file__).resolve().parent.parent
VENV: Final = REPO / ".bench" / "nautilus-venv"
NAUTILUS_VERSION: Final = "1.221.0"


def venv_python(venv: Path = VENV) -> Path:
    """The interpreter inside ``venv`` (POSIX layout)."""
    return venv / "bin" / "python"


def installed_version(venv: Path = VENV) -> str | None:
    """The ``nautilus_trader`` version the venv imports, or ``None`` (no venv, not installed, broken)."""
    python = venv_python(venv)
    if not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('nautilus_trader'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.stdout.strip() if probe.returncode == 0 else None


def ensure(venv: Path = VENV, *, force: bool = False, quiet: bool = False) -> Path:
    """Make sure ``venv`` exists with the pinned NautilusTrader; return its python.

    Creates the venv if it is missing (or ``force``), installs or re-pins the package if the
    version differs. Progress goes to stderr so a ``--json`` caller's stdout stays clean.
    """
    if force and venv.exists():
        shutil.rmtree(venv)
    if installed_version(venv) == NAUTILUS_VERSION:
        return venv_python(venv)
    out = subprocess.DEVNULL if quiet else sys.stderr
    if not venv_python(venv).exists():
        print(f"creating {venv} ...", file=sys.stderr)
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out, stderr=out)
    print(f"installing nautilus_trader=={NAUTILUS_VERSION} into {venv} (≈ 670 MB) ...", file=sys.stderr)
    subprocess.run(
        [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "-q",
         f"nautilus_trader=={NAUTILUS_VERSION}"],
        check=True,
        stdout=out,
        stderr=out,
    )
    version = installed_version(venv)
    if version != NAUTILUS_VERSION:
        raise RuntimeError(f"{venv}: nautilus_trader {version!r} after install, expected {NAUTILUS_VERSION}")
    return venv_python(venv)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--force", action="store_true", help="delete and recreate the venv")
    args = parser.parse_args(argv)
    python = ensure(args.venv, force=args.force)
    print(f"{python}: nautilus_trader {installed_version(args.venv)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
