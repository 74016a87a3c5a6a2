"""Incremental indicators: each update is O(1) (amortized; see the drift guard below).

Every indicator folds one observation per ``update(...)`` call, returns its new value —
``None`` until it is warmed up — and keeps that value in :attr:`Indicator.value`, so a
reader never recomputes anything. :attr:`Indicator.count` is the number of updates seen.
They are plain objects: no clock, no I/O, no bus; the feature pipeline
(:mod:`actors.features.pipeline`) owns one instance per symbol and feature and shares it
between every strategy that asks for it.

Floats, on purpose: indicators are statistics of prices, not money. Inputs are ``float``;
a caller holding a :class:`~decimal.Decimal` converts once at the call site
(:func:`actors.features.pipeline.as_float`). Inputs must be finite (the pipeline checks).

Conventions (each class repeats its own):

- ``EMA``: ``alpha = 2 / (period + 1)``, seeded with the simple mean of the first
  ``period`` values (the TA-Lib / "SMA seed" convention), so its first value appears at the
  ``period``-th update. This is *not* :class:`actors.strategies.ema_cross.EmaPair`, which
  seeds with the first value and reports from the first update.
- ``RSI`` and ``ATR``: Wilder's smoothing, ``avg += (x - avg) / period``, seeded with the
  simple mean of the first ``period`` gains/losses or true ranges.
- Rolling statistics (``SMA``, ``ZScore``, ``RollingVolatility``, rolling ``VWAP``) report
  only once their window is full.

The drift guard of the rolling statistics. Running sums updated by adding the new value and
subtracting the evicted one are O(1) but accumulate rounding error, and they cancel
catastrophically when large values have left the window or the window's spread is tiny
compared with its level. :class:`_WindowMoments` therefore keeps sums of values *shifted* by a
reference close to the window's mean (so the variance is a difference of small numbers),
tracks a running upper bound of the rounding error it has accumulated, and recomputes the
sums exactly from the ring buffer (two-pass, O(window)) whenever that bound could exceed
``2**-36`` (≈1.5e-11) of the quantity it protects — the mean against the window's magnitude,
the deviation of the newest value against the window's standard deviation, the centered sum of
squares against itself — and in any case every ``resync_every`` updates. On market data the
guard fires rarely (the tests count it), so the cost is O(1) amortized; it degrades to
O(window) per update only on a numerically degenerate window (spread within ~1e-11 of the
level, yet not exactly constant), where no O(1) scheme can be accurate. A window whose values
are all exactly equal is detected in O(1) (run length) and reported exactly: mean = the
value, spread = 0.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Final

from actors.features.ring import RingBuffer

_UNIT: Final = 2.0**-53
"""Unit roundoff of float64: one rounding errs by at most this fraction of its result."""
_GUARD: Final = 4.0 * _UNIT
"""Error-bound multiplier: a few roundings per operation (subtract the shift, square, add)."""
_TOL: Final = 2.0**-36
"""Resynchronize when the rounding-error bound could exceed this fraction (≈1.5e-11)."""
_TOL2: Final = _TOL * _TOL
DEFAULT_RESYNC_EVERY: Final = 10_000
"""Backstop: rolling sums are recomputed exactly at least this often (amortized O(window/10k))."""


def _positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class Indicator(ABC):
    """What every indicator has: its current value (``None`` until warm), an update count, ``reset``."""

    __slots__ = ("count",)

    count: int
    """Updates seen since construction or the last :meth:`reset`."""

    @property
    @abstractmethod
    def value(self) -> float | None:
        """The value after the last update, ``None`` until the indicator is warmed up."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything, as if just constructed."""


class ScalarIndicator(Indicator):
    """An indicator of one series of floats (a mid, a trade price, a bar close)."""

    __slots__ = ()

    @abstractmethod
    def update(self, x: float) -> float | None:
        """Fold in ``x``; return the new value (``None`` while warming up)."""


class _WindowMoments:
    """Mean and centered sum of squares of the last ``window`` values, O(1) amortized per push.

    State: ``s1 = Σ(x - shift)`` and ``s2 = Σ(x - shift)²`` over the window, with
    ``shift`` the window mean at the last exact recomputation, and ``err1``/``err2``: sums of
    the magnitudes every rounding in ``s1``/``s2`` was relative to since then (the error of
    ``s1`` is at most ``_GUARD * err1``). ``mean = shift + s1/n`` and
    ``m2 = Σ(x - mean)² = s2 - s1²/n``. See the module docstring for when it resynchronizes.
    ``centered`` asks for the stricter guard of consumers of the spread (z-score, volatility).
    """

    __slots__ = (
        "centered",
        "err1",
        "err2",
        "last",
        "n",
        "resync_every",
        "resyncs",
        "ring",
        "run",
        "s1",
        "s2",
        "shift",
        "since_resync",
        "window",
    )

    def __init__(self, window: int, centered: bool, resync_every: int = DEFAULT_RESYNC_EVERY) -> None:
        self.window = window
        self.centered = centered
        self.resync_every = _positive_int("resync_every", resync_every)
        self.ring = RingBuffer(window)
        self.resyncs = 0
        """Exact recomputations so far (a health figure: should stay rare on market data)."""
        self.clear()

    def clear(self) -> None:
        self.ring.clear()
        self.n = 0
        """Values in the window (the ring's length, kept here: read on every push)."""
        self.shift = 0.0
        self.s1 = self.s2 = self.err1 = self.err2 = 0.0
        self.last = math.nan
        self.run = 0
        """How many of the newest values are equal (``>= window``: the window is constant)."""
        self.since_resync = 0

    def push(self, x: float) -> None:
        evicted = self.ring.push(x)
        if evicted is None:
            self.n += 1
        if x == self.last:
            self.run += 1
        else:
            self.last = x
            self.run = 1
        if self.run >= self.window:
            # Every value in the window equals x: the sums are known exactly. Reset them,
            # which also wipes any drift accumulated so far, for free.
            self.shift = x
            self.s1 = self.s2 = self.err1 = self.err2 = 0.0
            self.since_resync = 0
            return
        shift = self.shift
        d = x - shift
        s1 = self.s1 + d
        s2 = self.s2 + d * d
        err1 = self.err1 + abs(s1) + abs(d)
        err2 = self.err2 + s2
        if evicted is not None:
            # The evicted term is recomputed bit for bit as it was added (same value, same shift).
            e = evicted - shift
            s1 -= e
            s2 -= e * e
            err1 += abs(s1)
            err2 += abs(s2)
        self.s1, self.s2, self.err1, self.err2 = s1, s2, err1, err2
        # Still accurate? (Inlined: this runs on every update.)
        n = self.n
        dev = s1 / n
        m2 = s2 - s1 * dev
        bound1 = _GUARD * err1 / n  # bounds the error of dev (and of the mean, whose own rounding is less)
        if self.centered:
            bound2 = _GUARD * (err2 + 2.0 * abs(dev) * err1 + s2)
            accurate = bound2 <= _TOL * m2 and bound1 * bound1 * n <= _TOL2 * m2
        else:
            mean = shift + dev
            accurate = bound1 * bound1 <= _TOL2 * (mean * mean + (m2 / n if m2 > 0.0 else 0.0))
        self.since_resync += 1
        if not accurate or self.since_resync >= self.resync_every:
            self.resync()

    def resync(self) -> None:
        """Recompute the sums exactly (two-pass, from the ring), re-centring the shift on the mean."""
        values = self.ring.values()
        self.resyncs += 1
        self.since_resync = 0
        if values.size == 0:
            self.s1 = self.s2 = self.err1 = self.err2 = 0.0
            return
        shift = float(values.mean())
        d = values - shift
        self.shift = shift
        self.s1 = float(d.sum())
        self.s2 = float(d @ d)
        self.err1 = float(abs(d).sum())
        self.err2 = self.s2

    def mean(self) -> float:
        if self.run >= self.window:
            return self.shift
        return self.shift + self.s1 / self.n

    def m2(self) -> float:
        """``Σ(x - mean)²`` over the window (never negative)."""
        if self.run >= self.window:
            return 0.0
        m2 = self.s2 - self.s1 * self.s1 / self.n
        return m2 if m2 > 0.0 else 0.0


class EMA(ScalarIndicator):
    """Exponential moving average, ``alpha = 2 / (period + 1)``, seeded with the SMA of the first ``period`` values.

    ``None`` for the first ``period - 1`` updates; at update ``period`` the value is the mean of
    the values so far; afterwards ``ema += alpha * (x - ema)``. The seed mean is summed shifted
    by the first value, so an EMA of a constant series is that constant exactly.
    """

    __slots__ = ("_ema", "_seed_shift", "_seed_sum", "alpha", "period")

    def __init__(self, period: int) -> None:
        self.period = _positive_int("EMA period", period)
        self.alpha = 2.0 / (period + 1)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._ema = 0.0
        self._seed_shift = 0.0
        self._seed_sum = 0.0

    @property
    def value(self) -> float | None:
        return self._ema if self.count >= self.period else None

    def update(self, x: float) -> float | None:
        count = self.count = self.count + 1
        if count > self.period:
            ema = self._ema
            ema += self.alpha * (x - ema)
            self._ema = ema
            return ema
        if count == 1:
            self._seed_shift = x
        else:
            self._seed_sum += x - self._seed_shift
        if count == self.period:
            self._ema = self._seed_shift + self._seed_sum / count
            return self._ema
        return None


class SMA(ScalarIndicator):
    """Simple moving average of the last ``period`` values (``None`` until ``period`` values).

    A running (shifted) sum over a ring buffer, guarded against float drift: see the module
    docstring. Accurate to ~1e-11 of the window's root-mean-square magnitude.
    """

    __slots__ = ("_moments", "_value", "period")

    def __init__(self, period: int, resync_every: int = DEFAULT_RESYNC_EVERY) -> None:
        self.period = _positive_int("SMA period", period)
        self._moments = _WindowMoments(period, centered=False, resync_every=resync_every)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._value: float | None = None
        self._moments.clear()

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def resyncs(self) -> int:
        """Exact recomputations of the running sum so far."""
        return self._moments.resyncs

    def update(self, x: float) -> float | None:
        self.count += 1
        moments = self._moments
        moments.push(x)
        if self.count < self.period:
            return None
        value = self._value = moments.mean()
        return value


class RSI(ScalarIndicator):
    """Relative strength index with Wilder's smoothing, in ``[0, 100]``.

    Changes ``x[t] - x[t-1]`` split into gains and losses; the first average gain/loss is the
    simple mean over the first ``period`` changes (so the first value appears at update
    ``period + 1``), then ``avg += (change - avg) / period``.
    ``RSI = 100 * (avg_gain / (avg_gain + avg_loss))`` (the same as ``100 - 100 / (1 + RS)``,
    without the division by zero); when both averages are zero — a flat series — it is 50:
    no evidence either way.
    """

    __slots__ = ("_gain", "_loss", "_prev", "_value", "period")

    def __init__(self, period: int) -> None:
        self.period = _positive_int("RSI period", period)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._prev = 0.0
        self._gain = 0.0
        self._loss = 0.0
        self._value: float | None = None

    @property
    def value(self) -> float | None:
        return self._value

    def update(self, x: float) -> float | None:
        count = self.count = self.count + 1
        change = x - self._prev
        self._prev = x
        if count == 1:
            return None
        gain = change if change > 0.0 else 0.0
        loss = -change if change < 0.0 else 0.0
        period = self.period
        if count > period + 1:
            self._gain += (gain - self._gain) / period
            self._loss += (loss - self._loss) / period
        else:
            self._gain += gain
            self._loss += loss
            if count <= period:
                return None
            self._gain /= period
            self._loss /= period
        total = self._gain + self._loss
        value = self._value = 100.0 * (self._gain / total) if total > 0.0 else 50.0  # gain/total <= 1: never > 100
        return value


class ATR(Indicator):
    """Average true range over bars (high, low, close), Wilder's smoothing; O(1).

    True range: ``max(high - low, |high - prev_close|, |low - prev_close|)``; the first bar has
    no previous close, so its true range is ``high - low`` (Wilder's own convention; TA-Lib
    instead drops the first bar and reports one bar later). The first ATR, at bar ``period``,
    is the mean of the first ``period`` true ranges; then ``atr += (tr - atr) / period``.
    """

    __slots__ = ("_atr", "_prev_close", "period")

    def __init__(self, period: int) -> None:
        self.period = _positive_int("ATR period", period)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._atr = 0.0
        self._prev_close = 0.0

    @property
    def value(self) -> float | None:
        return self._atr if self.count >= self.period else None

    def update(self, high: float, low: float, close: float) -> float | None:
        if high < low:
            raise ValueError(f"bar high {high!r} is below its low {low!r}")
        count = self.count = self.count + 1
        tr = high - low
        if count > 1:
            prev = self._prev_close
            tr = max(tr, abs(high - prev), abs(low - prev))
        self._prev_close = close
        period = self.period
        if count > period:
            self._atr += (tr - self._atr) / period
            return self._atr
        self._atr += tr
        if count == period:
            self._atr /= period
            return self._atr
        return None


class RollingVolatility(ScalarIndicator):
    """Sample standard deviation (``ddof=1``) of the last ``window`` log returns ``ln(x[t] / x[t-1])``.

    Per update, not annualized (scale by ``sqrt(updates per year)`` yourself). Needs
    ``window + 1`` prices before its first value; prices must be positive. Running moments with
    the drift guard of the module docstring; relative accuracy ~1e-11 of the value.
    """

    __slots__ = ("_moments", "_prev", "_value", "window")

    def __init__(self, window: int, resync_every: int = DEFAULT_RESYNC_EVERY) -> None:
        self.window = _positive_int("volatility window", window, minimum=2)
        self._moments = _WindowMoments(window, centered=True, resync_every=resync_every)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._prev = 0.0
        self._value: float | None = None
        self._moments.clear()

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def resyncs(self) -> int:
        return self._moments.resyncs

    def update(self, x: float) -> float | None:
        if not x > 0.0:
            raise ValueError(f"volatility of log returns needs positive prices, got {x!r}")
        count = self.count = self.count + 1
        prev = self._prev
        self._prev = x
        if count == 1:
            return None
        moments = self._moments
        moments.push(math.log(x / prev))
        if count <= self.window:
            return None
        value = self._value = math.sqrt(moments.m2() / (self.window - 1))
        return value


class ZScore(ScalarIndicator):
    """``(x - mean) / std`` of the newest value against the last ``window`` values, *including* it.

    ``std`` is the population standard deviation (``ddof=0``): the z-score describes where
    the newest value sits in the window it belongs to, not an estimate of a wider
    population, and with ``ddof=0`` it is bounded, ``|z| <= sqrt(window - 1)``. A window
    with no spread (all values equal) has z-score 0: the newest value *is* the mean.
    The deviation is computed from the shifted sums (never as the difference of two large
    numbers), so it is accurate to ~1e-11 of ``std``.
    """

    __slots__ = ("_moments", "_value", "window")

    def __init__(self, window: int, resync_every: int = DEFAULT_RESYNC_EVERY) -> None:
        self.window = _positive_int("z-score window", window, minimum=2)
        self._moments = _WindowMoments(window, centered=True, resync_every=resync_every)
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._value: float | None = None
        self._moments.clear()

    @property
    def value(self) -> float | None:
        return self._value

    @property
    def resyncs(self) -> int:
        return self._moments.resyncs

    def update(self, x: float) -> float | None:
        self.count += 1
        moments = self._moments
        moments.push(x)
        if self.count < self.window:
            return None
        m2 = moments.m2()
        if m2 == 0.0:
            value = 0.0
        else:
            deviation = (x - moments.shift) - moments.s1 / self.window
            value = deviation / math.sqrt(m2 / self.window)
        self._value = value
        return value


class VWAP(Indicator):
    """Volume-weighted average price ``Σ price·size / Σ size`` of trades; O(1).

    Without ``window``: cumulative over the session; call :meth:`reset` when a new session
    starts (the pipeline's ``new_session``). With ``window``: over the last ``window``
    *trades* (a count, not a duration: the pipeline reads no clock), with running sums over
    two ring buffers, recomputed exactly when their rounding-error bound could pass ~1.5e-11
    of the sum, and at least every ``resync_every`` trades. ``None`` until some size is seen
    (and, with a window, whenever the window holds no size at all).
    Sizes must not be negative; a zero-size trade counts as an update and weighs nothing.
    The cumulative sums are plain float sums: relative error below ``n * 1.1e-16`` after
    ``n`` trades (1e-10 after a million).
    """

    __slots__ = (
        "_err",
        "_err_v",
        "_pv",
        "_pv_ring",
        "_resync_every",
        "_since_resync",
        "_v",
        "_v_ring",
        "_value",
        "resyncs",
        "window",
    )

    def __init__(self, window: int | None = None, resync_every: int = DEFAULT_RESYNC_EVERY) -> None:
        self.window = None if window is None else _positive_int("VWAP window", window)
        self._resync_every = _positive_int("resync_every", resync_every)
        self._pv_ring = RingBuffer(window) if window is not None else None
        self._v_ring = RingBuffer(window) if window is not None else None
        self.resyncs = 0
        self.reset()

    def reset(self) -> None:
        """Start a new session (or forget the window)."""
        self.count = 0
        self._pv = 0.0
        self._v = 0.0
        self._err = 0.0
        self._err_v = 0.0
        self._since_resync = 0
        self._value: float | None = None
        if self._pv_ring is not None and self._v_ring is not None:
            self._pv_ring.clear()
            self._v_ring.clear()

    @property
    def value(self) -> float | None:
        return self._value

    def update(self, price: float, size: float) -> float | None:
        if size < 0.0:
            raise ValueError(f"trade size must not be negative, got {size!r}")
        self.count += 1
        pv = price * size
        self._pv += pv
        self._v += size
        if self._pv_ring is not None and self._v_ring is not None:
            old_pv = self._pv_ring.push(pv)
            old_v = self._v_ring.push(size)
            self._err += abs(self._pv) + abs(pv)
            self._err_v += self._v
            if old_pv is not None and old_v is not None:
                self._pv -= old_pv
                self._v -= old_v
                self._err += abs(self._pv)
                self._err_v += abs(self._v)
            self._since_resync += 1
            if (
                self._since_resync >= self._resync_every
                or _GUARD * self._err > _TOL * abs(self._pv)
                or _GUARD * self._err_v > _TOL * abs(self._v)
            ):
                self._resync(self._pv_ring, self._v_ring)
        v = self._v
        if v > 0.0:
            self._value = self._pv / v
        elif self.window is not None:
            self._value = None  # the window holds no volume: no price to speak of
        return self._value

    def _resync(self, pv_ring: RingBuffer, v_ring: RingBuffer) -> None:
        self.resyncs += 1
        self._since_resync = 0
        self._pv = float(pv_ring.values().sum())
        self._v = float(v_ring.values().sum())
        self._err = abs(self._pv)
        self._err_v = abs(self._v)
