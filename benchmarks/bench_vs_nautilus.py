"""Kestrel vs NautilusTrader 1.221.0, side by side on the same seeded synthetic quotes.

Both sides replay ``simulations.synthetic.random_walk_quotes(N, seed)`` (one symbol SYNTH,
a quote every 100 ms, the mid a ±1-cent random walk) for each ``N`` in ``--sizes``
(default 200,000 and 1,000,000), with two workloads:

- **data** — the strategy computes EMA 10/20 on the mid of every quote and never trades:
  Kestrel ``--strategy ema-watch``; Nautilus ``nautilus_side.py --variant data``.
- **cross** — EMA 10/20 cross, one market order per cross (≈ 45k orders per 1M quotes),
  long on an upward cross, flat on a downward one: Kestrel ``--strategy ema-cross`` through
  its full pipeline (pricing, strategy, risk, order manager writing the SQLite journal,
  the simulated venue, settlement); Nautilus ``--variant cross`` (the same long/flat
  decisions, so the same orders) with OMS NETTING and with OMS HEDGING, plus the row
  ``nautilus-netting-flip`` (``--variant flip``: every order reverses a netting position
  long/short, same order count). The flip row is the shape of the DESIGN §11 baseline
  (netting ≈ 4.4k ticks/s at 1M) and of the issue's ≥ 20× netting goal; the long/flat
  netting row is the like-for-like one. Both are reported against that goal.

Every run is its own child process, one at a time; per repeat and size the sides are
interleaved, Kestrel first on even repeats and Nautilus first on odd ones. The Kestrel
side is the CLI::

    .venv/bin/python -m kestrel.cli replay --synthetic N --seed S --strategy ema-watch|ema-cross \\
        --config TMP/bench.toml [--journal TMP/journal.db] --json

with a small config (log level ``warning`` into the temp dir, as Nautilus runs at ERROR;
``[strategy.params] symbol = "SYNTH"``, ema-cross keeps its defaults: 10/20, qty 10).
The Nautilus side is ``benchmarks/nautilus_side.py`` in ``.bench/nautilus-venv`` (created
on first use by :mod:`benchmarks.nautilus_env`).

Figures per run: ``ticks_per_s`` and ``wall_s`` as each side reports them (Kestrel: session
start to bus idle; Nautilus: ``engine.run()`` alone — its ``QuoteTick`` building and engine
setup are outside, which flatters it slightly); ``proc_s``, the child's wall time from
spawn to exit as seen here (imports included); ``peak_rss_mb``, the child's ``ru_maxrss``
from ``os.wait4``; ``orders``. Each figure is the median over ``--repeats``.

Goals (issue): data: Kestrel ≥ 1.0× Nautilus ticks/s; cross: Kestrel ≥ 3× Nautilus
HEDGING and ≥ 20× NETTING, Kestrel time(1M)/time(200k) ≤ 5.5, Kestrel peak RSS ≤ 200 MB.

Run: ``.venv/bin/python -m benchmarks.bench_vs_nautilus [--sizes 200000,1000000] [--seed 1] [--repeats 1]
[--skip-nautilus] [--no-flip] [--json]`` (``python -m kestrel`` has no ``__main__``: the Kestrel
side runs ``-m kestrel.cli``). A full run at the default sizes takes ≈ 6–8 minutes here,
most of it the Nautilus NETTING rows at 1M.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from benchmarks import nautilus_env

REPO: Final = Path(__file__).resolve().parent.parent
NAUTILUS_SIDE: Final = REPO / "benchmarks" / "nautilus_side.py"
GOAL_DATA_VS_NAUTILUS: Final = 1.0
GOAL_CROSS_VS_HEDGING: Final = 3.0
GOAL_CROSS_VS_NETTING: Final = 20.0
GOAL_TIME_SCALING: Final = 5.5
GOAL_RSS_MB: Final = 200.0

KESTREL_STRATEGY: Final = {"data": "ema-watch", "cross": "ema-cross"}
SIDES: Final = {
    "data": ("kestrel", "nautilus"),
    "cross": ("kestrel", "nautilus-netting", "nautilus-hedging", "nautilus-netting-flip"),
}
NAUTILUS_RUNS: Final = {  # (workload, side) -> nautilus_side.py (--variant, --oms)
    ("data", "nautilus"): ("data", "netting"),
    ("cross", "nautilus-netting"): ("cross", "netting"),
    ("cross", "nautilus-hedging"): ("cross", "hedging"),
    ("cross", "nautilus-netting-flip"): ("flip", "netting"),
}

CONFIG_TOML: Final = """\
# Written by benchmarks/bench_vs_nautilus.py for one benchmark run.
[log]
path = "{log}"
level = "warning"

[strategy.params]
symbol = "SYNTH"
"""


@dataclass
class Run:
    """One child process: what it printed (parsed) and what the OS says it cost."""

    workload: str
    side: str
    n: int
    repeat: int
    command: list[str]
    ok: bool
    proc_s: float
    peak_rss_mb: float
    result: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def run_child(command: list[str], timeout_s: float) -> tuple[int, str, str, float, float]:
    """Run ``command`` to its end; return exit code, stdout, stderr, wall seconds and peak RSS (MB).

    The child is reaped with ``os.wait4`` so its own ``ru_maxrss`` is read (not the maximum
    over every child so far, which is what ``RUSAGE_CHILDREN`` would give). stderr goes to
    a temporary file so neither pipe can fill up and stall the child.
    """
    with tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, cwd=REPO)
        timer = threading.Timer(timeout_s, proc.kill)
        timer.start()
        try:
            assert proc.stdout is not None
            out = proc.stdout.read()
            proc.stdout.close()
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - started
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    return code, out.decode(errors="replace"), stderr, elapsed, usage.ru_maxrss / 1024  # KiB on Linux


def parse_json(stdout: str) -> dict[str, Any]:
    """The child's JSON summary: all of stdout, or else its last line that is a JSON object."""
    try:
        value = json.loads(stdout)
    except json.JSONDecodeError:
        value = None
        for line in reversed(stdout.strip().splitlines()):
            if line.startswith("{"):
                value = json.loads(line)
                break
    if not isinstance(value, dict):
        raise ValueError("no JSON object on stdout")
    return value


def kestrel_command(workload: str, n: int, seed: int, tmp: Path) -> list[str]:
    config = tmp / "bench.toml"
    if not config.exists():
        config.write_text(CONFIG_TOML.format(log=tmp / "kestrel.jsonl"))
    command = [
        sys.executable, "-m", "kestrel.cli", "replay", "--synthetic", str(n), "--seed", str(seed),
        "--strategy", KESTREL_STRATEGY[workload], "--config", str(config),
    ]
    if workload == "cross":
        journal = tmp / f"journal-{n}.db"
        for stale in tmp.glob(f"{journal.name}*"):  # a fresh journal per run (one would be recovered from)
            stale.unlink()
        command += ["--journal", str(journal)]
    return [*command, "--json"]


def nautilus_command(python: Path, workload: str, side: str, n: int, seed: int) -> list[str]:
    variant, oms = NAUTILUS_RUNS[workload, side]
    return [str(python), str(NAUTILUS_SIDE), "--n", str(n), "--seed", str(seed), "--variant", variant, "--oms", oms]


def measure(command: list[str], workload: str, side: str, n: int, repeat: int, timeout_s: float) -> Run:
    code, out, err, elapsed, rss = run_child(command, timeout_s)
    run = Run(workload, side, n, repeat, command, ok=False, proc_s=round(elapsed, 3), peak_rss_mb=round(rss, 1))
    if code != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        if side == "kestrel" and "--synthetic" in err:
            tail = f"`kestrel replay --synthetic` is not available yet ({tail})"
        run.error = f"exit {code}: {tail}"
        return run
    try:
        run.result = parse_json(out)
    except ValueError as exc:
        run.error = f"{exc}: {out[-300:]!r}"
        return run
    normalise(run)
    missing = [key for key in ("ticks", "orders", "wall_s", "ticks_per_s") if key not in run.result]
    if missing:
        run.error = f"JSON summary lacks {missing}"
        return run
    if run.result["ticks"] != n:
        run.error = f"replayed {run.result['ticks']} ticks, expected {n}"
        return run
    run.ok = True
    return run


def normalise(run: Run) -> None:
    """Give both sides the same keys: Nautilus reports ``run_s`` where Kestrel reports ``wall_s``."""
    if "run_s" in run.result and "wall_s" not in run.result:
        run.result["wall_s"] = run.result["run_s"]


def bench(
    sizes: list[int], seed: int, repeats: int, skip_nautilus: bool, flip: bool, timeout_s: float, progress: bool
) -> dict[str, Any]:
    python = None if skip_nautilus else nautilus_env.ensure()
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="kestrel-vs-nautilus-") as tmp_dir:
        tmp = Path(tmp_dir)
        for repeat in range(repeats):
            for n in sizes:
                for workload, sides in SIDES.items():
                    order = [
                        s
                        for s in sides
                        if not (skip_nautilus and s.startswith("nautilus")) and (flip or not s.endswith("-flip"))
                    ]
                    if repeat % 2:
                        order.reverse()
                    for side in order:
                        if side == "kestrel":
                            command = kestrel_command(workload, n, seed, tmp)
                        else:
                            assert python is not None
                            command = nautilus_command(python, workload, side, n, seed)
                        run = measure(command, workload, side, n, repeat, timeout_s)
                        runs.append(run)
                        if progress:
                            status = f"{run.result.get('ticks_per_s', 0):,.0f} ticks/s" if run.ok else run.error
                            where = f"[{repeat + 1}/{repeats}] {workload:5} {n:>9,} {side:21}"
                            print(f"  {where} {status}", file=sys.stderr)
    return summarise(runs, sizes, seed, repeats)


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3) if values else float("nan")


def summarise(runs: list[Run], sizes: list[int], seed: int, repeats: int) -> dict[str, Any]:
    """Medians per (workload, N, side), the Kestrel/Nautilus ratios and the goals."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        for workload, sides in SIDES.items():
            for side in sides:
                mine = [r for r in runs if (r.workload, r.n, r.side) == (workload, n, side)]
                if not mine:
                    continue
                good = [r for r in mine if r.ok]
                rows.append(
                    {
                        "workload": workload,
                        "n": n,
                        "side": side,
                        "runs": len(good),
                        "errors": [r.error for r in mine if not r.ok],
                        "orders": good[0].result["orders"] if good else None,
                        "ticks_per_s": _median([r.result["ticks_per_s"] for r in good]),
                        "wall_s": _median([r.result["wall_s"] for r in good]),
                        "proc_s": _median([r.proc_s for r in good]),
                        "peak_rss_mb": _median([r.peak_rss_mb for r in good]),
                    }
                )
    goals = evaluate(rows, sizes)
    return {
        "sizes": sizes,
        "seed": seed,
        "repeats": repeats,
        "rows": rows,
        "goals": goals,
        "runs": [
            {k: v for k, v in vars(r).items() if k != "command"} | {"command": shlex.join(r.command)} for r in runs
        ],
    }


def _row(rows: list[dict[str, Any]], workload: str, n: int, side: str) -> dict[str, Any] | None:
    for row in rows:
        if (row["workload"], row["n"], row["side"]) == (workload, n, side) and row["runs"]:
            return row
    return None


def evaluate(rows: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """Each goal with its measured value (``None`` when a side is missing) and a verdict."""
    goals: list[dict[str, Any]] = []

    def goal(name: str, value: float | None, target: float, at_least: bool) -> None:
        met = None if value is None else (value >= target if at_least else value <= target)
        op = ">=" if at_least else "<="
        goals.append({"goal": name, "value": None if value is None else round(value, 2), "target": f"{op} {target:g}",
                      "met": met})

    for n in sizes:
        kestrel_data, kestrel_cross = _row(rows, "data", n, "kestrel"), _row(rows, "cross", n, "kestrel")
        for workload, side, kestrel, target in (
            ("data", "nautilus", kestrel_data, GOAL_DATA_VS_NAUTILUS),
            ("cross", "nautilus-hedging", kestrel_cross, GOAL_CROSS_VS_HEDGING),
            ("cross", "nautilus-netting", kestrel_cross, GOAL_CROSS_VS_NETTING),
            ("cross", "nautilus-netting-flip", kestrel_cross, GOAL_CROSS_VS_NETTING),
        ):
            peer = _row(rows, workload, n, side)
            if peer is None:
                continue
            ratio = kestrel["ticks_per_s"] / peer["ticks_per_s"] if kestrel is not None else None
            goal(f"{workload} {n:,}: kestrel / {side} ticks/s", ratio, target, at_least=True)
        for workload, kestrel in (("data", kestrel_data), ("cross", kestrel_cross)):
            if workload == "cross" or kestrel is not None:
                goal(f"{workload} {n:,}: kestrel peak RSS (MB)", None if kestrel is None else kestrel["peak_rss_mb"],
                     GOAL_RSS_MB, at_least=False)
    if 200_000 in sizes and 1_000_000 in sizes:
        small, large = _row(rows, "cross", 200_000, "kestrel"), _row(rows, "cross", 1_000_000, "kestrel")
        scaling = large["wall_s"] / small["wall_s"] if small is not None and large is not None else None
        goal("cross: kestrel time(1M) / time(200k)", scaling, GOAL_TIME_SCALING, at_least=False)
    return goals


def render(summary: dict[str, Any], command: str) -> str:
    lines = [
        f"Kestrel vs NautilusTrader {nautilus_env.NAUTILUS_VERSION}: synthetic quotes, seed {summary['seed']}, "
        f"medians of {summary['repeats']} run(s) per row",
        "",
        f"{'workload':8} {'quotes':>9}  {'side':21} {'orders':>7} {'ticks/s':>10} {'wall s':>8} {'proc s':>8} "
        f"{'peak RSS MB':>11}",
    ]
    for row in summary["rows"]:
        if not row["runs"]:
            lines.append(f"{row['workload']:8} {row['n']:>9,}  {row['side']:21} FAILED: {row['errors'][0]}")
            continue
        lines.append(
            f"{row['workload']:8} {row['n']:>9,}  {row['side']:21} {row['orders']:>7,} {row['ticks_per_s']:>10,.0f} "
            f"{row['wall_s']:>8.2f} {row['proc_s']:>8.2f} {row['peak_rss_mb']:>11.0f}"
        )
    lines += ["", "goals:"]
    for g in summary["goals"]:
        value = "n/a (a side failed or was skipped)" if g["value"] is None else f"{g['value']:,}"
        verdict = {True: "meets", False: "MISSES", None: "-"}[g["met"]]
        lines.append(f"  {g['goal']:58} {value:>12}  (goal {g['target']}): {verdict}")
    lines += [
        "",
        "wall s: each side's own timer (Kestrel: session start to bus idle; Nautilus: engine.run() only);",
        "proc s: child process spawn to exit (imports, quote generation, setup included).",
        f"command: {command}",
    ]
    return "\n".join(lines)


def _sizes(value: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in value.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=_sizes, default=[200_000, 1_000_000], help="quotes per run, comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-nautilus", action="store_true", help="Kestrel side only (no Nautilus venv needed)")
    parser.add_argument(
        "--no-flip", action="store_true", help="skip the nautilus-netting-flip row (the slowest run: minutes at 1M)"
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before a child run is killed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats >= 1")
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.bench_vs_nautilus", *sys.argv[1:]])
    summary = bench(
        args.sizes, args.seed, args.repeats, args.skip_nautilus, not args.no_flip, args.timeout, progress=not args.json
    )
    summary["command"] = command
    print(json.dumps(summary, indent=2) if args.json else render(summary, command))
    failed = [r for r in summary["runs"] if not r["ok"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
