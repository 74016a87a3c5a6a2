"""``kestrel load``: a sustained quote rate into a real engine; memory over time and the worst loop stall.

Prints one line per memory sample (stderr) and then the figures; ``--json`` prints the
whole :class:`~simulations.load.LoadReport` on stdout instead. Exit status 1 when the
engine fell behind (dropped by the simulator as a slow client, or fewer ticks seen than
sent) or did not stop cleanly.
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

from kestrel.chaos_cli import positive_number
from simulations.load import LoadReport, LoadSample, run_load

__all__ = ["add_load_command", "cmd_load"]


def add_load_command(commands: Any) -> None:
    load = commands.add_parser("load", help="drive a real engine at a sustained quote rate; report memory and loop lag")
    load.add_argument("--rate", type=positive_number, default=5000.0, help="quotes per second (default: 5000)")
    load.add_argument("--duration", type=positive_number, default=600.0, metavar="S", help="seconds (default: 600)")
    load.add_argument("--symbols", type=int, default=8, help="symbols the quotes are spread over (default: 8)")
    load.add_argument("--seed", type=int, default=1, help="seed of the random walk (default: 1)")
    load.add_argument(
        "--sample-every", type=positive_number, default=10.0, metavar="S",
        help="seconds between memory samples (default: 10)",
    )
    load.add_argument("--workdir", type=Path, default=None, help="engine journal, config and log (default: a temp dir)")
    load.add_argument("--json", action="store_true", help="print the report as one JSON object")


def kept_up(report: LoadReport) -> bool:
    """The engine saw every tick sent, was never cut off, and stopped cleanly."""
    return (
        report.slow_client_drops == 0
        and report.ticks_seen >= report.quotes_sent + report.trades_sent
        and report.engine_exit == 0
    )


def cmd_load(args: argparse.Namespace, new_loop: Callable[[], asyncio.AbstractEventLoop]) -> int:
    if args.symbols < 1:
        sys.stderr.write("kestrel load: --symbols must be at least 1\n")
        return 2
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kestrel-load-"))

    def progress(sample: LoadSample) -> None:
        sys.stderr.write(f"t={sample.t_s:>7.1f} s  quotes={sample.quotes_sent:>9}  engine RSS {sample.rss_mb:.1f} MB\n")
        sys.stderr.flush()

    with asyncio.Runner(loop_factory=new_loop) as runner:
        report = runner.run(
            run_load(
                workdir, rate=args.rate, duration_s=args.duration, symbols=args.symbols, seed=args.seed,
                sample_every_s=args.sample_every, progress=progress,
            )
        )
    if args.json:
        sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
    else:
        sys.stdout.write(
            f"{report.quotes_sent} quotes + {report.trades_sent} trades sent in {report.duration_s} s "
            f"({report.quotes_sent / report.duration_s:.0f} quotes/s), engine saw {report.ticks_seen} ticks\n"
            f"engine RSS: first {report.rss_first_mb} MB, peak {report.rss_peak_mb} MB, last {report.rss_last_mb} MB "
            f"(second half {report.rss_growth_second_half_mb:+} MB)\n"
            f"event-loop lag: max {report.loop_lag_max_ms} ms, p99 <= {report.loop_lag_p99_ms} ms, "
            f"{report.loop_lag_over_100ms} wake-ups over 100 ms\n"
            f"orders {report.orders}, fills {report.fills}, slow-client drops {report.slow_client_drops}, "
            f"engine exit {report.engine_exit}; files in {workdir}\n"
        )
    return 0 if kept_up(report) else 1
