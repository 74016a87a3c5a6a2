"""The feature library: ring buffer, incremental indicators, the shared hash-locked pipeline.

Every indicator is checked against a straightforward reference that recomputes from scratch
at every step with numpy (a window slice, or the closed form of an exponential average:
``seed·(1-a)^m + Σ a·(1-a)^(t-k)·x_k``) — never against the same recursion — on real IBM
data from ``../shared/data`` (7 Oct 2013): mids from quotes, trades for VWAP, one-minute bars
built from the trades for ATR; and on random sequences with hypothesis.

Tolerances: 1e-9 relative, except where a comparison says otherwise:

- a z-score is dimensionless, O(1), and exactly 0 in the reference when the newest value is
  the window mean: absolute floor 1e-9 (``|z - z_ref| <= 1e-9 * max(1, |z_ref|)``);
- on random data, a mean is compared relative to the window's root-mean-square (its values
  can cancel to ~0: no float method has relative accuracy there), and spreads only on
  windows whose spread is at least 1e-6 of their magnitude (below that, numpy's two-pass
  reference itself has no 1e-9 accuracy left).

A window whose values are all equal has, by the conventions of the indicators, spread 0 and
z-score 0; the references say so explicitly (numpy's mean of equal values can be one ulp off,
which would turn 0/0 into ±1).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.features import (
    ATR,
    EMA,
    RSI,
    SMA,
    VWAP,
    FeatureConflict,
    FeaturePipeline,
    FeaturePipelineMismatch,
    FeatureSpec,
    PipelineRegistry,
    RingBuffer,
    RollingVolatility,
    ZScore,
    as_float,
    canonical_json,
    merge,
    pipeline_hash,
)
from adapters.lean_ticks import read_events
from engine.errors import ConfigError, UserError
from engine.messages import ExchangeQuote, TradeTick
from tests.helpers import shared_data

DATA = shared_data() / "us-equity-ticks" / "ibm"
QUOTES = DATA / "20131007_quote.zip"
TRADES = DATA / "20131007_trade.zip"
REL = 1e-9
N_MIDS = 5000


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"no recording at {path}")


# -- data ----------------------------------------------------------------------------------


def _mids(start_ns: int, count: int) -> list[float]:
    """Mids (as floats) of the national best bid/offer, tracking the last bid and ask, from ``start_ns`` on."""
    _need(QUOTES)
    bid = ask = None
    mids: list[float] = []
    for quote in read_events([QUOTES]):
        assert isinstance(quote, ExchangeQuote)
        bid = quote.bid_price if quote.bid_price is not None else bid
        ask = quote.ask_price if quote.ask_price is not None else ask
        if bid is not None and ask is not None and quote.ts_event >= start_ns:
            mids.append(as_float((bid + ask) / 2))
            if len(mids) == count:
                break
    return mids


OPEN_NS = int(dt.datetime(2013, 10, 7, 9, 30, tzinfo=ZoneInfo("America/New_York")).timestamp()) * 10**9


@pytest.fixture(scope="module", params=["premarket", "open"])
def mids(request: pytest.FixtureRequest) -> list[float]:
    """The first 5,000 mids of the day (pre-market: wide, flat stretches) or from the 09:30 open (busy)."""
    return _mids(0 if request.param == "premarket" else OPEN_NS, N_MIDS)


@pytest.fixture(scope="module")
def trades() -> list[tuple[int, float, float]]:
    """Every trade of the day as (ts_event, price, size)."""
    _need(TRADES)
    out = []
    for trade in read_events([TRADES]):
        assert isinstance(trade, TradeTick)
        out.append((trade.ts_event, as_float(trade.price), as_float(trade.size)))
    return out


@pytest.fixture(scope="module")
def bars(trades: list[tuple[int, float, float]]) -> list[tuple[float, float, float, float, float]]:
    """One-minute bars (open, high, low, close, volume) of the minutes that have trades."""
    by_minute: dict[int, list[tuple[float, float]]] = {}
    for ts, price, size in trades:
        by_minute.setdefault(ts // 60_000_000_000, []).append((price, size))
    out = []
    for minute in sorted(by_minute):
        prices = [p for p, _ in by_minute[minute]]
        out.append((prices[0], max(prices), min(prices), prices[-1], sum(s for _, s in by_minute[minute])))
    return out


# -- references: recompute from scratch at every step ---------------------------------------------


def ref_exponential(seed: float, xs: np.ndarray, alpha: float) -> list[float]:
    """``e_0 = seed``, ``e_t = e_{t-1} + alpha (x_t - e_{t-1})``, each e_t in closed form from the raw data.

    ``e_t = seed (1-a)^t + Σ_k a (1-a)^(t-k) x_k``; terms weighing less than 1e-40 are left out
    (negligible at 1e-9, and numpy is slow on the subnormal powers they would need).
    """
    decay = 1.0 - alpha
    keep = 1 if decay == 0.0 else math.ceil(math.log(1e-40) / math.log(decay))
    weights = alpha * decay ** np.arange(min(keep, len(xs)) - 1, -1, -1, dtype=np.float64)
    out = [seed]
    for t in range(1, len(xs) + 1):
        lo = max(0, t - keep)
        out.append(seed * decay**t + float(weights[len(weights) - (t - lo) :] @ xs[lo:t]))
    return out


def ref_ema(xs: Sequence[float], period: int) -> list[float | None]:
    a = np.asarray(xs, dtype=np.float64)
    if len(a) < period:
        return [None] * len(a)
    seed = float(a[:period].mean())
    return [None] * (period - 1) + list(ref_exponential(seed, a[period:], 2.0 / (period + 1)))


def ref_sma(xs: Sequence[float], period: int) -> list[float | None]:
    a = np.asarray(xs, dtype=np.float64)
    return [None if t + 1 < period else float(a[t + 1 - period : t + 1].mean()) for t in range(len(a))]


def _constant(window: np.ndarray) -> bool:
    return bool(np.all(window == window[0]))


def ref_zscore(xs: Sequence[float], window: int) -> list[float | None]:
    a = np.asarray(xs, dtype=np.float64)
    out: list[float | None] = []
    for t in range(len(a)):
        if t + 1 < window:
            out.append(None)
            continue
        w = a[t + 1 - window : t + 1]
        out.append(0.0 if _constant(w) else float((a[t] - w.mean()) / w.std(ddof=0)))
    return out


def ref_volatility(xs: Sequence[float], window: int) -> list[float | None]:
    a = np.asarray(xs, dtype=np.float64)
    returns = np.log(a[1:] / a[:-1])
    out: list[float | None] = [None]
    for t in range(len(returns)):
        if t + 1 < window:
            out.append(None)
            continue
        w = returns[t + 1 - window : t + 1]
        out.append(0.0 if _constant(w) else float(w.std(ddof=1)))
    return out[: len(a)]


def ref_rsi(xs: Sequence[float], period: int) -> list[float | None]:
    changes = np.diff(np.asarray(xs, dtype=np.float64))
    if len(changes) < period:
        return [None] * len(xs)
    gains, losses = np.where(changes > 0, changes, 0.0), np.where(changes < 0, -changes, 0.0)
    avg_gain = ref_exponential(float(gains[:period].mean()), gains[period:], 1.0 / period)
    avg_loss = ref_exponential(float(losses[:period].mean()), losses[period:], 1.0 / period)
    rsi = [100.0 * g / (g + loss) if g + loss > 0 else 50.0 for g, loss in zip(avg_gain, avg_loss, strict=True)]
    return [None] * period + rsi


def ref_atr(bars: Sequence[tuple[float, float, float, float, float]], period: int) -> list[float | None]:
    a = np.asarray(bars, dtype=np.float64)
    high, low, close = a[:, 1], a[:, 2], a[:, 3]
    prev_close = np.concatenate(([np.nan], close[:-1]))
    tr = np.fmax(high - low, np.fmax(np.abs(high - prev_close), np.abs(low - prev_close)))  # fmax: NaN loses
    seed = float(tr[:period].mean())
    return [None] * (period - 1) + ref_exponential(seed, tr[period:], 1.0 / period)


def ref_vwap(prices: np.ndarray, sizes: np.ndarray, window: int | None) -> list[float | None]:
    out: list[float | None] = []
    for t in range(len(prices)):
        lo = 0 if window is None else max(0, t + 1 - window)
        volume = float(sizes[lo : t + 1].sum())
        out.append(float(prices[lo : t + 1] @ sizes[lo : t + 1]) / volume if volume > 0 else None)
    return out


def run(indicator: Any, xs: Sequence[Any]) -> list[float | None]:
    """Feed ``xs`` one by one (tuples are spread into ``update``); check ``value`` follows each return."""
    out = []
    for x in xs:
        value = indicator.update(*x) if isinstance(x, tuple) else indicator.update(x)
        assert indicator.value == value
        out.append(value)
    return out


def assert_close(
    actual: Sequence[float | None],
    expected: Sequence[float | None],
    rel: float = REL,
    abs_floor: float = 0.0,
    scale: Callable[[int], float] | None = None,
) -> None:
    """Same warm-up (``None``s), then ``|a - e| <= rel * max(|e|, scale(i)) + abs_floor`` everywhere."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert (a is None) == (e is None), f"step {i}: {a!r} vs reference {e!r}"
        if a is None or e is None:
            continue
        bound = rel * max(abs(e), scale(i) if scale else 0.0) + abs_floor * max(1.0, abs(e))
        assert abs(a - e) <= bound, f"step {i}: {a!r} vs reference {e!r} (off by {abs(a - e):.3g}, allowed {bound:.3g})"


# -- the ring buffer -------------------------------------------------------------------------------


def test_ring_buffer_basics() -> None:
    ring = RingBuffer(3)
    assert [len(ring), ring.full, ring.values().tolist()] == [0, False, []]
    with pytest.raises(IndexError):
        ring.last()
    assert [ring.push(x) for x in (1.0, 2.0, 3.0, 4.0, 5.0)] == [None, None, None, 1.0, 2.0]
    assert ring.full and len(ring) == 3 and ring.capacity == 3
    assert ring.values().tolist() == [3.0, 4.0, 5.0]
    assert (ring.first(), ring.last(), ring[0], ring[1], ring[-1]) == (3.0, 5.0, 3.0, 4.0, 5.0)
    assert type(ring.last()) is float
    with pytest.raises(IndexError):
        ring[3]
    snapshot = ring.values()
    ring.push(6.0)
    assert snapshot.tolist() == [3.0, 4.0, 5.0], "values() is a copy"
    ring.clear()
    assert len(ring) == 0 and ring.capacity == 3
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            RingBuffer(bad)  # type: ignore[arg-type]


@given(
    capacity=st.integers(1, 20),
    xs=st.lists(st.floats(allow_nan=False, width=64), max_size=100),
)
def test_ring_buffer_keeps_the_newest_in_order(capacity: int, xs: list[float]) -> None:
    ring = RingBuffer(capacity)
    evicted = [ring.push(x) for x in xs]
    assert [e for e in evicted if e is not None] == xs[: max(0, len(xs) - capacity)]
    assert ring.values().tolist() == xs[-capacity:] if xs else ring.values().tolist() == []
    assert len(ring) == min(capacity, len(xs))
    assert [ring[i] for i in range(len(ring))] == ring.values().tolist()
    if xs:
        assert ring.last() == xs[-1] and ring.first() == xs[-min(capacity, len(xs))]


# -- indicators on real data -----------------------------------------------------------------------


@pytest.mark.parametrize("period", [1, 10, 50])
def test_ema_matches_reference(mids: list[float], period: int) -> None:
    assert_close(run(EMA(period), mids), ref_ema(mids, period))


@pytest.mark.parametrize("period", [1, 20, 200])
def test_sma_matches_reference(mids: list[float], period: int) -> None:
    sma = SMA(period)
    assert_close(run(sma, mids), ref_sma(mids, period))


def test_sma_with_frequent_resync_matches_reference(mids: list[float]) -> None:
    assert_close(run(SMA(20, resync_every=7), mids), ref_sma(mids, 20))


@pytest.mark.parametrize("period", [2, 14])
def test_rsi_matches_reference(mids: list[float], period: int) -> None:
    values = run(RSI(period), mids)
    assert_close(values, ref_rsi(mids, period))
    assert all(0.0 <= v <= 100.0 for v in values if v is not None)


@pytest.mark.parametrize("window", [2, 20, 100])
def test_volatility_matches_reference(mids: list[float], window: int) -> None:
    assert_close(run(RollingVolatility(window), mids), ref_volatility(mids, window))


@pytest.mark.parametrize("window", [2, 20, 100])
def test_zscore_matches_reference(mids: list[float], window: int) -> None:
    values = run(ZScore(window), mids)
    assert_close(values, ref_zscore(mids, window), abs_floor=REL)
    assert all(abs(v) <= math.sqrt(window - 1) + 1e-9 for v in values if v is not None)


def test_drift_guard_resyncs_rarely_on_market_data(mids: list[float]) -> None:
    """The exact recomputation (O(window)) is the exception: O(1) amortized in practice."""
    for indicator in (SMA(20), ZScore(20), RollingVolatility(20)):
        run(indicator, mids)
        assert indicator.resyncs <= len(mids) // 50, (type(indicator).__name__, indicator.resyncs)


@pytest.mark.parametrize("window", [None, 1, 100])
def test_vwap_matches_reference(trades: list[tuple[int, float, float]], window: int | None) -> None:
    """Rolling windows over the whole day; the session VWAP over its first 5,000 trades (full recomputation
    at each step is quadratic), and over the whole day against cumulative sums."""
    day = trades if window is not None else trades[:5000]
    prices = np.array([p for _, p, _ in day])
    sizes = np.array([s for _, _, s in day])
    assert_close(run(VWAP(window), [(p, s) for _, p, s in day]), ref_vwap(prices, sizes, window))
    if window is None:
        prices = np.array([p for _, p, _ in trades])
        sizes = np.array([s for _, _, s in trades])
        expected = (np.cumsum(prices * sizes) / np.cumsum(sizes)).tolist()
        assert_close(run(VWAP(), [(p, s) for _, p, s in trades]), expected)


def test_vwap_reset_starts_a_new_session(trades: list[tuple[int, float, float]]) -> None:
    vwap = VWAP()
    first, second = trades[:1000], trades[1000:3000]
    run(vwap, [(p, s) for _, p, s in first])
    vwap.reset()
    assert vwap.value is None and vwap.count == 0
    values = run(vwap, [(p, s) for _, p, s in second])
    assert_close(values, ref_vwap(np.array([p for _, p, _ in second]), np.array([s for _, _, s in second]), None))


def test_vwap_edge_cases() -> None:
    vwap = VWAP(window=2)
    assert vwap.update(10.0, 0.0) is None, "no volume yet"
    assert vwap.update(10.0, 1.0) == 10.0
    assert vwap.update(12.0, 3.0) == 11.5
    assert vwap.update(99.0, 0.0) == 12.0
    assert vwap.update(99.0, 0.0) is None, "the window holds no volume"
    with pytest.raises(ValueError, match="negative"):
        vwap.update(10.0, -1.0)


@pytest.mark.parametrize("period", [1, 14])
def test_atr_matches_reference(bars: list[tuple[float, float, float, float, float]], period: int) -> None:
    assert len(bars) > 300
    values = run(ATR(period), [(h, low, c) for _, h, low, c, _ in bars])
    assert_close(values, ref_atr(bars, period))


def test_atr_refuses_inverted_bar() -> None:
    with pytest.raises(ValueError, match="below its low"):
        ATR(3).update(1.0, 2.0, 1.5)


def test_warm_up_lengths() -> None:
    """``None`` exactly until the documented number of updates."""
    xs = [float(100 + (i % 7)) for i in range(30)]
    cases: list[tuple[Any, int]] = [(EMA(5), 5), (SMA(5), 5), (RSI(5), 6), (RollingVolatility(5), 6), (ZScore(5), 5)]
    for indicator, first in cases:
        values = run(indicator, xs)
        assert values.index(next(v for v in values if v is not None)) == first - 1, type(indicator).__name__
        indicator.reset()
        assert indicator.value is None and indicator.count == 0
    for bad in (lambda: EMA(0), lambda: SMA(True), lambda: ZScore(1), lambda: RollingVolatility(1), lambda: VWAP(0)):
        with pytest.raises(ValueError):
            bad()
    with pytest.raises(ValueError, match="positive prices"):
        RollingVolatility(3).update(0.0)


# -- indicators on random data (hypothesis) ----------------------------------------------------


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False).filter(
    lambda v: v == 0.0 or abs(v) >= 1e-6
)
"""Magnitudes from 1e-6 to 1e6 (and 0): squared deviations never underflow, as with any price."""
repeats = st.sampled_from([0.0, 1.0, 100.25, -3.5, 1e6])
"""Values that recur, so constant windows (and their exits) happen."""
series = st.lists(st.one_of(finite, repeats), max_size=150)
resync = st.sampled_from([1, 3, 10_000])


def _rms(xs: Sequence[float], window: int) -> Callable[[int], float]:
    a = np.asarray(xs, dtype=np.float64)
    return lambda t: float(np.sqrt(np.mean(np.square(a[max(0, t + 1 - window) : t + 1]))))


def _well_conditioned(xs: Sequence[float], window: int, t: int) -> bool:
    w = np.asarray(xs[max(0, t + 1 - window) : t + 1], dtype=np.float64)
    return _constant(w) or float(w.std()) >= 1e-6 * float(np.sqrt(np.mean(np.square(w))))


@settings(max_examples=200, deadline=None)
@given(xs=series, window=st.integers(1, 12), resync_every=resync)
def test_sma_equals_reference_on_random_data(xs: list[float], window: int, resync_every: int) -> None:
    assert_close(run(SMA(window, resync_every=resync_every), xs), ref_sma(xs, window), scale=_rms(xs, window))


@settings(max_examples=200, deadline=None)
@given(xs=series, window=st.integers(2, 12), resync_every=resync)
def test_zscore_equals_reference_on_random_data(xs: list[float], window: int, resync_every: int) -> None:
    actual = run(ZScore(window, resync_every=resync_every), xs)
    expected = ref_zscore(xs, window)
    for t, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert (a is None) == (e is None)
        if a is not None and e is not None:
            assert math.isfinite(a) and abs(a) <= math.sqrt(window - 1) + 1e-9
            if _well_conditioned(xs, window, t):
                assert abs(a - e) <= REL * max(1.0, abs(e)), (t, a, e)


prices = st.one_of(
    st.floats(min_value=0.01, max_value=1e6, allow_nan=False, allow_infinity=False), st.sampled_from([1.0, 50.0])
)


@settings(max_examples=200, deadline=None)
@given(xs=st.lists(prices, max_size=150), window=st.integers(2, 12), resync_every=resync)
def test_volatility_equals_reference_on_random_data(xs: list[float], window: int, resync_every: int) -> None:
    actual = run(RollingVolatility(window, resync_every=resync_every), xs)
    expected = ref_volatility(xs, window)
    returns = [0.0, *np.log(np.asarray(xs[1:]) / np.asarray(xs[:-1])).tolist()] if xs else []
    for t, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert (a is None) == (e is None)
        if a is not None and e is not None and _well_conditioned(returns[1:], window, t - 1):
            assert abs(a - e) <= REL * e, (t, a, e)


@given(xs=series, period=st.integers(1, 20))
def test_rsi_stays_within_0_and_100(xs: list[float], period: int) -> None:
    assert all(0.0 <= v <= 100.0 for v in run(RSI(period), xs) if v is not None)


@given(c=finite, period=st.integers(1, 30), n=st.integers(1, 80))
def test_ema_of_a_constant_is_the_constant(c: float, period: int, n: int) -> None:
    values = run(EMA(period), [c] * n)
    assert all(v == c for v in values if v is not None)
    assert values.count(None) == min(n, period - 1)


@given(c=finite, window=st.integers(2, 10), n=st.integers(1, 40), before=st.lists(finite, max_size=20))
def test_a_constant_window_has_exact_mean_and_no_spread(c: float, window: int, n: int, before: list[float]) -> None:
    xs = [*before, *([c] * n)]
    sma, z = SMA(window), ZScore(window)
    run(sma, xs), run(z, xs)
    if n >= window:
        assert sma.value == c and z.value == 0.0


# -- the pipeline ------------------------------------------------------------------------------


def ema(name: str, period: int, version: int = 1, input: str = "mid") -> FeatureSpec:
    return FeatureSpec(name=name, indicator="ema", input=input, params={"period": period}, version=version)


SIX = [
    ema("ema_fast", 10),
    ema("ema_slow", 20),
    FeatureSpec(name="sma_20", indicator="sma", input="mid", params={"period": 20}),
    FeatureSpec(name="rsi_14", indicator="rsi", input="mid", params={"period": 14}),
    FeatureSpec(name="vol_20", indicator="volatility", input="mid", params={"window": 20}),
    FeatureSpec(name="z_20", indicator="zscore", input="mid", params={"window": 20}),
]
ALL = [
    *SIX,
    FeatureSpec(name="vwap", indicator="vwap", input="trade"),
    FeatureSpec(name="vwap_100", indicator="vwap", input="trade", params={"window": 100}),
    FeatureSpec(name="atr_14", indicator="atr", input="bar", params={"period": 14}),
    FeatureSpec(name="sma_trade", indicator="sma", input="trade_price", params={"period": 5}),
    FeatureSpec(name="ema_close", indicator="ema", input="bar_close", params={"period": 3}),
]


def test_two_strategies_share_one_instance_updated_once() -> None:
    pipeline = merge({"a": [ema("ema_slow", 20), ema("ema_fast", 10)], "b": [ema("trend", 20), ema("ema_fast", 10)]})
    assert pipeline.names == ("ema_fast", "ema_slow", "trend")
    assert pipeline.computations == 2
    shared = pipeline.indicator("IBM", "ema_slow")
    assert pipeline.indicator("IBM", "trend") is shared
    assert pipeline.indicator("MSFT", "trend") is not shared, "one instance per symbol"
    for i in range(30):
        pipeline.on_mid("IBM", 100.0 + i)
    assert shared.count == 30, "updated once per mid, not once per name"
    assert pipeline.get("IBM", "trend") == pipeline.get("IBM", "ema_slow") == shared.value is not None
    assert pipeline.get("MSFT", "trend") is None
    assert pipeline.hash_for("a") != pipeline.hash_for("b") != pipeline.pipeline_hash


def test_pipeline_routes_inputs_and_matches_standalone_indicators(
    trades: list[tuple[int, float, float]], bars: list[tuple[float, float, float, float, float]]
) -> None:
    pipeline = FeaturePipeline(ALL)
    mids = [float(p) for _, p, _ in trades[:400]]
    for mid in mids:
        pipeline.on_mid("IBM", mid)
    for _, price, size in trades[:400]:
        pipeline.on_trade("IBM", price, size)
    for o, h, low, c, v in bars[:50]:
        pipeline.on_bar("IBM", o, h, low, c, v)
    expected = {
        "ema_fast": run(EMA(10), mids)[-1],
        "ema_slow": run(EMA(20), mids)[-1],
        "sma_20": run(SMA(20), mids)[-1],
        "rsi_14": run(RSI(14), mids)[-1],
        "vol_20": run(RollingVolatility(20), mids)[-1],
        "z_20": run(ZScore(20), mids)[-1],
        "vwap": run(VWAP(), [(p, s) for _, p, s in trades[:400]])[-1],
        "vwap_100": run(VWAP(100), [(p, s) for _, p, s in trades[:400]])[-1],
        "sma_trade": run(SMA(5), mids)[-1],
        "atr_14": run(ATR(14), [(h, low, c) for _, h, low, c, _ in bars[:50]])[-1],
        "ema_close": run(EMA(3), [c for *_, c, _ in bars[:50]])[-1],
    }
    assert pipeline.snapshot("IBM") == expected
    assert all(v is not None for v in expected.values())
    assert pipeline.snapshot("MSFT") == dict.fromkeys(sorted(expected))
    assert pipeline.indicator("IBM", "vwap").count == 400 and pipeline.indicator("IBM", "atr_14").count == 50


def test_new_session_resets_only_session_features() -> None:
    pipeline = FeaturePipeline(ALL)
    pipeline.on_trade("IBM", 10.0, 100.0)
    pipeline.on_trade("MSFT", 20.0, 100.0)
    for i in range(20):
        pipeline.on_mid("IBM", 100.0 + i % 3)
    pipeline.new_session("IBM")
    assert pipeline.get("IBM", "vwap") is None and pipeline.get("IBM", "vwap_100") is None
    assert pipeline.get("MSFT", "vwap") == 20.0
    assert pipeline.get("IBM", "sma_20") is not None
    pipeline.new_session()
    pipeline.new_session("NOPE")
    assert pipeline.get("MSFT", "vwap") is None


def test_pipeline_reads_and_bad_inputs() -> None:
    pipeline = FeaturePipeline(SIX)
    assert pipeline.get("IBM", "ema_fast") is None
    with pytest.raises(KeyError, match="no feature named 'ema_fats'"):
        pipeline.get("IBM", "ema_fats")
    pipeline.on_mid("IBM", 100.0)
    with pytest.raises(KeyError, match="ema_fats"):
        pipeline.get("IBM", "ema_fats")
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            pipeline.on_mid("IBM", bad)
        with pytest.raises(ValueError, match="finite"):
            pipeline.on_trade("IBM", bad, 1.0)
        with pytest.raises(ValueError, match="finite"):
            pipeline.on_bar("IBM", 1.0, 1.0, 1.0, bad, 1.0)


def test_hash_ignores_order_and_duplicates() -> None:
    forward = FeaturePipeline(ALL).pipeline_hash
    assert FeaturePipeline(list(reversed(ALL))).pipeline_hash == forward
    assert FeaturePipeline([*ALL, *ALL[:3]]).pipeline_hash == forward
    assert merge({"a": ALL[:5], "b": ALL[3:]}).pipeline_hash == forward
    assert pipeline_hash(ALL) == forward
    # Defaults are filled in: an omitted optional param is the same feature as its default.
    bare = FeatureSpec(name="vwap", indicator="vwap", input="trade")
    explicit = FeatureSpec(name="vwap", indicator="vwap", input="trade", params={"window": None})
    assert pipeline_hash([bare]) == pipeline_hash([explicit])


@pytest.mark.parametrize(
    "changed",
    [
        ema("ema_fast", 11),
        ema("ema_fast", 10, version=2),
        ema("ema_fast", 10, input="trade_price"),
        ema("ema_quick", 10),
        FeatureSpec(name="ema_fast", indicator="sma", input="mid", params={"period": 10}),
    ],
    ids=["param", "version", "input", "name", "indicator"],
)
def test_hash_changes_with_any_field(changed: FeatureSpec) -> None:
    assert pipeline_hash([changed, *SIX[1:]]) != pipeline_hash(SIX)


def test_hash_is_pinned() -> None:
    """The canonical encoding is a contract (run manifests hold these hashes): a change here is a new format."""
    assert canonical_json([ema("ema_fast", 10), FeatureSpec(name="vwap", indicator="vwap", input="trade")]) == (
        '{"features":['
        '{"dtype":"float64","indicator":"ema","input":"mid","name":"ema_fast","params":{"period":10},'
        '"shape":[],"version":1},'
        '{"dtype":"float64","indicator":"vwap","input":"trade","name":"vwap","params":{"window":null},'
        '"shape":[],"version":1}'
        '],"format":"kestrel.features/1"}'
    )
    assert pipeline_hash(SIX) == PINNED_SIX
    assert FeaturePipeline(SIX).canonical_json == canonical_json(SIX)


PINNED_SIX = "5391e153c5d9f25ec94f526268e12d45d090a86eba363af236314e79861a8c91"


def test_require_accepts_the_pipeline_a_strategy_was_built_for() -> None:
    pipeline = merge({"cross": SIX[:2], "watch": SIX})
    pipeline.require(pipeline_hash(SIX[:2]), "cross")
    pipeline.require(pipeline_hash(reversed(SIX)), "watch")
    FeaturePipeline(SIX).require(pipeline_hash(SIX), "anyone")


def test_require_refuses_a_different_pipeline_and_names_the_difference() -> None:
    built_for = [ema("ema_fast", 10), ema("ema_slow", 20), SIX[2]]
    pipeline = merge({"cross": [ema("ema_fast", 12), ema("ema_slow", 20, version=2), SIX[3]]})
    expected = pipeline_hash(built_for)
    with pytest.raises(FeaturePipelineMismatch) as caught:
        pipeline.require(expected, "cross", expected_specs=built_for)
    error = caught.value
    assert isinstance(error, ConfigError) and isinstance(error, UserError)
    message = str(error)
    assert error.expected_hash == expected and error.actual_hash == pipeline.hash_for("cross")
    assert expected in message and pipeline.hash_for("cross") in message
    assert "strategy 'cross': features.ema_fast: changed: params.period 10 (expected) -> 12 (this run)" in message
    assert "features.ema_slow: changed: version 1 (expected) -> 2 (this run)" in message
    missing = "features.sma_20: expected sma_20 = sma(period=20) on mid, v1, float64, shape (); this run has no such"
    assert missing in message
    assert "features.rsi_14: not expected: this run has rsi_14 = rsi(period=14) on mid" in message


def test_require_without_the_expected_specs_lists_what_runs() -> None:
    pipeline = FeaturePipeline(SIX[:1])
    runs = r"this run computes: ema_fast = ema\(period=10\) on mid"
    with pytest.raises(FeaturePipelineMismatch, match=runs) as caught:
        pipeline.require("0" * 64, "cross")
    assert "0" * 64 in str(caught.value) and pipeline.pipeline_hash in str(caught.value)
    with pytest.raises(FeaturePipelineMismatch, match="declared no features"):
        merge({"other": SIX}).require(pipeline_hash(SIX), "cross")


def test_one_name_two_definitions_is_refused() -> None:
    with pytest.raises(FeatureConflict) as caught:
        merge({"a": [ema("trend", 20)], "b": [ema("trend", 50)]})
    message = str(caught.value)
    assert "features.trend: defined differently by strategy 'a'" in message
    assert "trend = ema(period=20) on mid" in message and "strategy 'b' (trend = ema(period=50) on mid" in message
    registry = PipelineRegistry()
    assert registry.declare("a", [ema("trend", 20)]) == pipeline_hash([ema("trend", 20)])
    with pytest.raises(FeatureConflict, match=r"features\.trend"):
        registry.declare("b", [ema("trend", 20, version=2)])
    with pytest.raises(ConfigError, match="twice"):
        registry.declare("a", [])
    registry.declare("b", [ema("trend", 20), ema("other", 5)])
    pipeline = registry.build()
    assert pipeline.strategies == ("a", "b") and pipeline.computations == 2
    with pytest.raises(FeatureConflict):
        FeaturePipeline([ema("x", 1), ema("x", 2)])


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"indicator": "macd", "input": "mid"}, "unknown indicator 'macd'"),
        ({"indicator": "atr", "input": "mid", "params": {"period": 14}}, "takes input 'bar', not 'mid'"),
        ({"indicator": "ema", "input": "mid"}, "needs param 'period'"),
        ({"indicator": "ema", "input": "mid", "params": {"period": 0}}, "must be an int >= 1"),
        ({"indicator": "ema", "input": "mid", "params": {"period": True}}, "must be an int >= 1"),
        ({"indicator": "ema", "input": "mid", "params": {"period": 2.0}}, "must be an int >= 1"),
        ({"indicator": "zscore", "input": "mid", "params": {"window": 1}}, "must be an int >= 2"),
        ({"indicator": "ema", "input": "mid", "params": {"period": 3, "k": 2}}, "unknown param(s) k"),
        ({"indicator": "ema", "input": "mid", "params": {"period": 3}, "version": 0}, "version must be"),
        ({"indicator": "ema", "input": "mid", "params": {"period": 3}, "dtype": "float32"}, "dtype must be"),
        ({"indicator": "ema", "input": "mid", "params": {"period": 3}, "shape": (2,)}, "shape must be"),
    ],
)
def test_specs_are_validated(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        FeatureSpec(name="f", **fields)
    # The same from configuration data: a msgspec validation error naming the problem.
    with pytest.raises(msgspec.ValidationError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        msgspec.convert({"name": "f", **fields}, FeatureSpec)


def test_specs_from_configuration_data() -> None:
    data = {"name": "ema_fast", "indicator": "ema", "input": "mid", "params": {"period": 10}}
    spec = msgspec.convert(data, FeatureSpec)
    assert spec == ema("ema_fast", 10) and spec.shape == () and spec.dtype == "float64"
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"name": "x", "indicator": "ema", "input": "mid", "colour": "red"}, FeatureSpec)
