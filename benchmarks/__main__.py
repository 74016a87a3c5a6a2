"""Run every benchmark: ``python -m benchmarks`` (or ``python3 .ci/dev.py bench``).

Arguments (e.g. ``--json``) are passed to each benchmark; only flags every benchmark
accepts make sense here. Run one benchmark by its module for its own options.
"""

from __future__ import annotations

import sys

from benchmarks import bench_bus, bench_journal, bench_reconnect, bench_restart, bench_tick_to_order


def main() -> int:
    status = 0
    for bench in (bench_bus, bench_tick_to_order, bench_reconnect, bench_journal, bench_restart):
        status = bench.main(sys.argv[1:]) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
