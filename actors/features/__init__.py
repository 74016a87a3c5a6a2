"""Features: declared, hash-locked inputs of strategies, computed incrementally and shared.

- :mod:`actors.features.ring`: a fixed-capacity float64 ring buffer.
- :mod:`actors.features.indicators`: incremental indicators (EMA, SMA, RSI, ATR, rolling
  volatility, z-score, VWAP), O(1) per update.
- :mod:`actors.features.pipeline`: :class:`FeatureSpec`, the shared per-symbol
  :class:`FeaturePipeline`, its hash and the start-up check a strategy must pass.

A pure library: no bus, no actor, no clock, no I/O.
"""

from actors.features.indicators import ATR, EMA, RSI, SMA, VWAP, Indicator, RollingVolatility, ScalarIndicator, ZScore
from actors.features.pipeline import (
    FeatureConflict,
    FeaturePipeline,
    FeaturePipelineMismatch,
    FeatureSpec,
    PipelineRegistry,
    as_float,
    canonical_json,
    diff_specs,
    merge,
    pipeline_hash,
)
from actors.features.ring import RingBuffer

__all__ = [
    "ATR",
    "EMA",
    "RSI",
    "SMA",
    "VWAP",
    "FeatureConflict",
    "FeaturePipeline",
    "FeaturePipelineMismatch",
    "FeatureSpec",
    "Indicator",
    "PipelineRegistry",
    "RingBuffer",
    "RollingVolatility",
    "ScalarIndicator",
    "ZScore",
    "as_float",
    "canonical_json",
    "diff_specs",
    "merge",
    "pipeline_hash",
]
