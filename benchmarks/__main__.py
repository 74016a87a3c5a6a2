"""Run every benchmark: ``python -m benchmarks`` (or ``python3 .ci/dev.py bench``)."""

from __future__ import annotations

import sys

from benchmarks import bench_bus


def main() -> int:
    return bench_bus.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
