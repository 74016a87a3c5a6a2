"""Metrics: latency histograms the hot path can afford, and the Prometheus text format.

Two halves:

- :class:`Histogram` — fixed upper bounds (seconds), observed in integer nanoseconds
  with one ``bisect`` and two additions, so an actor can time every order without
  thinking about it. An actor owns its histograms and only it writes them; the
  composition root reads them (same thread, same loop: no locking) when ``/metrics`` is
  scraped.
- :class:`MetricFamily` and :func:`render` — the Prometheus text exposition format
  (version 0.0.4): ``# HELP`` and ``# TYPE`` per family, samples with escaped label
  values, histograms as cumulative ``_bucket{le=...}`` series plus ``_sum`` and
  ``_count``. Names follow Prometheus practice: a ``kestrel_`` prefix, base units
  (seconds, bytes), ``_total`` on counters, and never an order id as a label (label
  values must come from small, fixed sets: actors, reasons, providers).
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from engine.clock import NS_PER_S

__all__ = [
    "LATENCY_BUCKETS_S",
    "Histogram",
    "MetricFamily",
    "MetricKind",
    "render",
]

LATENCY_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Order-path latencies: 100 µs to 10 s."""

MetricKind = Literal["counter", "gauge", "histogram"]
_NAME: Final = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class Histogram:
    """Counts of observations per upper bound, their sum and number.

    ``bounds`` are in the metric's base unit (seconds for latencies, rows for batch
    sizes); observations are integers in ``1/scale`` of it — nanoseconds for seconds
    (the default ``scale``), or whole units with ``scale=1`` — so the hot path never
    builds a float.
    """

    __slots__ = ("_bounds_scaled", "bounds", "count", "counts", "scale", "sum_scaled")

    def __init__(self, bounds: Sequence[float] = LATENCY_BUCKETS_S, scale: int = NS_PER_S) -> None:
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError("histogram bounds must be distinct and increasing")
        self.bounds = tuple(bounds)
        self.scale = scale
        self._bounds_scaled = [round(b * scale) for b in bounds]
        self.counts = [0] * (len(bounds) + 1)
        """Per bucket (not cumulative); the last one is ``+Inf``."""
        self.sum_scaled = 0
        self.count = 0

    def observe(self, value: int) -> None:
        """Count one observation (in ``1/scale`` units: ns by default; negative clamps to 0)."""
        if value < 0:
            value = 0
        self.counts[bisect.bisect_left(self._bounds_scaled, value)] += 1
        self.sum_scaled += value
        self.count += 1

    @property
    def sum(self) -> float:
        """The sum of observations in base units (seconds by default)."""
        return self.sum_scaled / self.scale

    def cumulative(self) -> list[int]:
        out: list[int] = []
        running = 0
        for n in self.counts:
            running += n
            out.append(running)
        return out


@dataclass
class MetricFamily:
    """One metric name with its help, type and samples.

    ``samples`` are ``(labels, value)`` for counters and gauges; histograms go in
    ``histograms`` as ``(labels, histogram)`` and are expanded by :func:`render`.
    """

    name: str
    kind: MetricKind
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)
    histograms: list[tuple[dict[str, str], Histogram]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or not self.name.startswith("kestrel_"):
            raise ValueError(f"metric name {self.name!r} must match {_NAME.pattern} and start with kestrel_")
        if self.kind == "counter" and not self.name.endswith("_total"):
            raise ValueError(f"counter {self.name!r} must end in _total")

    def add(self, value: float, **labels: str) -> MetricFamily:
        self.samples.append((labels, value))
        return self

    def add_histogram(self, histogram: Histogram, **labels: str) -> MetricFamily:
        self.histograms.append((labels, histogram))
        return self


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str], extra: tuple[str, str] | None = None) -> str:
    pairs = list(labels.items())
    if extra is not None:
        pairs.append(extra)
    if not pairs:
        return ""
    for key, _ in pairs:
        if not _LABEL.match(key) or key.startswith("__"):
            raise ValueError(f"bad label name {key!r}")
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[MetricFamily]) -> str:
    """The Prometheus text exposition of ``families`` (each name once, in the order given)."""
    lines: list[str] = []
    seen: set[str] = set()
    for family in families:
        if family.name in seen:
            raise ValueError(f"metric family {family.name} rendered twice")
        seen.add(family.name)
        lines.append(f"# HELP {family.name} {_escape(family.help)}")
        lines.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            lines.append(f"{family.name}{_labels(labels)} {_number(value)}")
        for labels, histogram in family.histograms:
            cumulative = histogram.cumulative()
            for bound, count in zip(histogram.bounds, cumulative, strict=False):
                lines.append(f"{family.name}_bucket{_labels(labels, ('le', _number(bound)))} {count}")
            lines.append(f"{family.name}_bucket{_labels(labels, ('le', '+Inf'))} {cumulative[-1]}")
            lines.append(f"{family.name}_sum{_labels(labels)} {_number(histogram.sum)}")
            lines.append(f"{family.name}_count{_labels(labels)} {histogram.count}")
    return "\n".join(lines) + "\n"
