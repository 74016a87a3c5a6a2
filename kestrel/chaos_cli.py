"""``kestrel chaos``: seeded fault-injection campaigns against the engine, with invariant checks.

Prints a progress line per run (stderr), then for each failing run one line that
reproduces it exactly; ``--json`` prints one object (:class:`CampaignReport`) on stdout.
Exit status: 0 when every invariant held, 1 when any was violated, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from simulations.chaos.campaign import ALL, run_campaign
from simulations.chaos.run import RunResult
from simulations.chaos.schedule import SCENARIOS

__all__ = ["add_chaos_command", "cmd_chaos", "positive_number"]

EXIT_VIOLATED = 1


def positive_number(value: str) -> float:
    """argparse type: a number > 0 (shared with ``kestrel load``)."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value!r}")
    return number


def _runs(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return number


def add_chaos_command(commands: Any) -> None:
    chaos = commands.add_parser(
        "chaos", help="run seeded fault schedules against the engine and check its invariants"
    )
    chaos.add_argument("--seed", type=int, default=1, help="first seed; run i uses seed + i (default: 1)")
    chaos.add_argument("--runs", type=_runs, default=1, help="how many runs (default: 1)")
    chaos.add_argument(
        "--scenario", default=ALL, choices=[ALL, *sorted(SCENARIOS)],
        help="fault scenario (default: all, taken in turn by seed)",
    )
    chaos.add_argument(
        "--duration", type=positive_number, default=8.0, metavar="S", help="seconds of faults per run (default: 8)"
    )
    chaos.add_argument("--jobs", type=_runs, default=1, help="runs side by side (default: 1)")
    chaos.add_argument("--workdir", type=Path, default=None, help="where runs keep their files (default: a temp dir)")
    chaos.add_argument("--keep", action="store_true", help="keep every run's files (failing runs' are always kept)")
    chaos.add_argument("--json", action="store_true", help="print the campaign report as one JSON object")


def cmd_chaos(args: argparse.Namespace, new_loop: Callable[[], asyncio.AbstractEventLoop]) -> int:
    root = args.workdir or Path(tempfile.mkdtemp(prefix="kestrel-chaos-"))
    root.mkdir(parents=True, exist_ok=True)

    def progress(result: RunResult, done: int, total: int) -> None:
        verdict = "ok" if not result.violations else f"VIOLATED {sorted({v.invariant for v in result.violations})}"
        injected = sum(result.faults_injected.values())
        sys.stderr.write(
            f"[{done}/{total}] seed {result.seed} {result.scenario}: {verdict}; {injected} faults, "
            f"{result.orders} orders, {result.fills} fills, {result.engines} engines, "
            f"converged in {result.converged_s} s, {result.wall_s} s\n"
        )
        sys.stderr.flush()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        report = runner.run(
            run_campaign(
                args.seed, args.runs, args.scenario, args.duration, root, jobs=args.jobs, keep=args.keep,
                progress=progress,
            )
        )
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        sys.stdout.write(
            f"{report.runs} runs, {sum(report.faults_injected.values())} faults injected, "
            f"{len(report.seeds_failed)} seeds failed, {report.wall_s} s\n"
        )
        for kind, n in report.faults_injected.items():
            sys.stdout.write(f"  {kind:<28}{n:>6}\n")
    for failed in report.violations:
        sys.stderr.write(f"FAILED {failed.invariant}: {failed.detail}\n  reproduce: {failed.repro}\n")
    if report.workdirs_kept:
        sys.stderr.write(f"files kept in: {', '.join(report.workdirs_kept)}\n")
    return EXIT_VIOLATED if report.violations else 0
