"""Portfolio risk numbers from the ledger's positions and the caller's marks.

Two kinds of numbers, kept apart on purpose:

- *Accounting* numbers — exposure, concentration, daily P&L, drawdown — are exact
  :class:`~decimal.Decimal`, computed from signed positions (``Ledger.quantities()`` or
  ``AccountState.positions``) and marks (risk's latest NBBO mids, say). Concentration is a
  ratio, so it divides; nothing else does.
- *Statistics* — historical VaR and expected shortfall — are estimates from a sample of
  P&L outcomes; they use numpy floats, and never feed back into the books.

Definitions
    gross exposure  Σ |qty × mark|;   net exposure  Σ qty × mark
    concentration   |qty × mark| / equity × 100, per symbol or summed per sector (%)
    daily P&L       equity − start-of-day equity (:class:`EquityTracker`)
    drawdown        high-water mark − equity (≥ 0), and as a % of the high-water mark
    VaR / ES        see :func:`historical_var_es`
"""

from __future__ import annotations

import datetime as dt
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

ZERO: Final = Decimal(0)
HUNDRED: Final = Decimal(100)
UNKNOWN_SECTOR: Final = "unknown"

FloatArray = npt.NDArray[np.float64]


# ---------------------------------------------------------------- exposure and concentration


class Exposure(NamedTuple):
    long: Decimal
    """Σ qty × mark over long positions (≥ 0)."""
    short: Decimal
    """Σ |qty × mark| over short positions (≥ 0)."""
    gross: Decimal
    net: Decimal


def _open(positions: Mapping[str, Decimal]) -> Iterable[tuple[str, Decimal]]:
    return ((symbol, qty) for symbol, qty in sorted(positions.items()) if qty)


def exposure(positions: Mapping[str, Decimal], marks: Mapping[str, Decimal]) -> Exposure:
    """Long, short, gross and net market value. KeyError for an open symbol without a mark."""
    long = short = ZERO
    for symbol, qty in _open(positions):
        value = qty * marks[symbol]
        if value > 0:
            long += value
        else:
            short -= value
    return Exposure(long, short, long + short, long - short)


def _check_equity(equity: Decimal) -> None:
    if equity <= 0:
        raise ValueError(f"concentration is undefined for non-positive equity {equity}")


def concentration(
    positions: Mapping[str, Decimal], marks: Mapping[str, Decimal], equity: Decimal
) -> dict[str, Decimal]:
    """Per symbol, |qty × mark| as a percentage of ``equity`` (ValueError when equity ≤ 0)."""
    _check_equity(equity)
    return {symbol: abs(qty * marks[symbol]) * HUNDRED / equity for symbol, qty in _open(positions)}


def sector_concentration(
    positions: Mapping[str, Decimal],
    marks: Mapping[str, Decimal],
    equity: Decimal,
    sector_of: Mapping[str, str] | Callable[[str], str],
) -> dict[str, Decimal]:
    """Per sector, the gross market value of its symbols as a percentage of ``equity``.

    Symbols a mapping does not know go to ``"unknown"``; longs and shorts in one sector
    add up (gross), since offsetting them would hide a concentrated book.
    """
    _check_equity(equity)
    lookup: Callable[[str], str] = (
        (lambda symbol: sector_of.get(symbol, UNKNOWN_SECTOR)) if isinstance(sector_of, Mapping) else sector_of
    )
    gross: dict[str, Decimal] = {}
    for symbol, qty in _open(positions):
        sector = lookup(symbol)
        gross[sector] = gross.get(sector, ZERO) + abs(qty * marks[symbol])
    return {sector: value * HUNDRED / equity for sector, value in sorted(gross.items())}


# ---------------------------------------------------------------- equity over time


class EquitySample(NamedTuple):
    ts_ns: int
    trade_date: dt.date
    equity: Decimal


class EquityTracker:
    """Equity over time: high-water mark, start-of-day equity and a bounded ring of samples.

    Fed by the caller (``update``) whenever it revalues the account. Start-of-day equity is
    the last equity seen before the trading day changed (yesterday's close, so an overnight
    gap is today's P&L, as brokers report it); for the very first day, the first sample.
    """

    def __init__(self, capacity: int = 4096) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.samples: deque[EquitySample] = deque(maxlen=capacity)
        self.high_water: Decimal | None = None
        self.start_of_day: Decimal | None = None
        self.trade_date: dt.date | None = None
        self.equity: Decimal | None = None

    def update(self, ts_ns: int, trade_date: dt.date, equity: Decimal) -> None:
        if self.trade_date != trade_date:
            self.start_of_day = self.equity if self.equity is not None else equity
            self.trade_date = trade_date
        self.equity = equity
        if self.high_water is None or equity > self.high_water:
            self.high_water = equity
        self.samples.append(EquitySample(ts_ns, trade_date, equity))

    @property
    def daily_pnl(self) -> Decimal:
        """Equity − start-of-day equity (0 before the first sample)."""
        if self.equity is None or self.start_of_day is None:
            return ZERO
        return self.equity - self.start_of_day

    @property
    def drawdown(self) -> Decimal:
        """High-water mark − equity: how far below its best the account is (≥ 0)."""
        if self.equity is None or self.high_water is None:
            return ZERO
        return self.high_water - self.equity

    @property
    def drawdown_pct(self) -> Decimal:
        """The drawdown as a percentage of the high-water mark (0 when that is not positive)."""
        if self.high_water is None or self.high_water <= 0:
            return ZERO
        return self.drawdown * HUNDRED / self.high_water


# ---------------------------------------------------------------- VaR and expected shortfall


def historical_var_es(pnl: Sequence[float] | FloatArray, confidence: float) -> tuple[float, float]:
    """Historical value at risk and expected shortfall at ``confidence``, as losses (loss > 0).

    With ``n`` P&L outcomes sorted from worst, the tail is the ``k = ceil(n × (1 −
    confidence))`` worst (at least one). VaR is the loss of the k-th worst outcome — no
    interpolation — and ES the mean loss over those ``k``, so ES ≥ VaR. Both are ``−pnl``:
    positive for losses, negative if even the tail made money. E.g. ten outcomes
    −10, −8, …, 8 at 80 %: k = 2, VaR = 8, ES = 9.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    values = np.asarray(pnl, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("need a non-empty one-dimensional sample of P&L outcomes")
    if not np.all(np.isfinite(values)):
        raise ValueError("P&L outcomes must be finite")
    n = values.size
    # round() first: 0.95 is not exactly 0.95, and 20 × 0.05 must give a tail of 1, not 2.
    k = max(1, math.ceil(round(n * (1.0 - confidence), 9)))
    tail = np.sort(values)[:k]
    return float(-tail[-1]), float(-tail.mean())


class ReturnsWindow:
    """A bounded ring of per-symbol marks the caller samples (e.g. once a minute or a day).

    Consecutive samples give each symbol's simple returns ``p_t / p_{t−1} − 1``. For the
    current positions, :meth:`pnl_distribution` replays them: outcome ``t`` is
    ``Σ qty × price × return_t`` with ``price`` the latest mark — the P&L the portfolio
    would have had over each past interval. A symbol missing from a sample has no return
    for the two intervals around it; those intervals are left out of the distribution when
    the portfolio holds that symbol.
    """

    def __init__(self, capacity: int = 501) -> None:
        if capacity < 2:
            raise ValueError("capacity must be >= 2 (a return needs two samples)")
        self.capacity = capacity
        self._columns: dict[str, int] = {}
        self._prices: FloatArray = np.full((capacity, 0), np.nan)
        self._count = 0

    def __len__(self) -> int:
        """Samples held (at most ``capacity``)."""
        return min(self._count, self.capacity)

    @property
    def symbols(self) -> list[str]:
        return list(self._columns)

    def sample(self, marks: Mapping[str, Decimal]) -> None:
        """Record one sample of marks (symbols not given are missing from this sample)."""
        for symbol in marks:
            if symbol not in self._columns:
                self._columns[symbol] = len(self._columns)
                self._prices = np.hstack((self._prices, np.full((self.capacity, 1), np.nan)))
        row = self._count % self.capacity
        self._prices[row, :] = np.nan
        for symbol, price in marks.items():
            self._prices[row, self._columns[symbol]] = float(price)
        self._count += 1

    def _ordered(self) -> FloatArray:
        """The samples held, oldest first."""
        held = len(self)
        if self._count <= self.capacity:
            return self._prices[:held]
        start = self._count % self.capacity
        return np.concatenate((self._prices[start:], self._prices[:start]))

    def returns(self, symbol: str) -> FloatArray:
        """The symbol's simple returns between consecutive samples, oldest first (NaN where missing)."""
        column = self._columns.get(symbol)
        if column is None:
            return np.full(max(len(self) - 1, 0), np.nan)
        prices = self._ordered()[:, column]
        result: FloatArray = prices[1:] / prices[:-1] - 1.0
        return result

    def latest(self, symbol: str) -> float | None:
        """The newest sampled mark of ``symbol``, if the newest sample has one."""
        column = self._columns.get(symbol)
        if column is None or not self._count:
            return None
        value = float(self._prices[(self._count - 1) % self.capacity, column])
        return None if math.isnan(value) else value

    def pnl_distribution(
        self, positions: Mapping[str, Decimal], marks: Mapping[str, Decimal] | None = None
    ) -> FloatArray:
        """P&L outcomes of the current ``positions`` over each past interval (see the class doc).

        ``marks`` prices the positions (default: the newest sample). KeyError for a held
        symbol with no price either way.
        """
        held = [(symbol, qty) for symbol, qty in _open(positions)]
        intervals = max(len(self) - 1, 0)
        total: FloatArray = np.zeros(intervals)
        for symbol, qty in held:
            if marks is not None and symbol in marks:
                price = float(marks[symbol])
            else:
                latest = self.latest(symbol)
                if latest is None:
                    raise KeyError(symbol)
                price = latest
            total = total + float(qty) * price * self.returns(symbol)
        kept: FloatArray = total[np.isfinite(total)]
        return kept

    def var_es(
        self, positions: Mapping[str, Decimal], confidence: float, marks: Mapping[str, Decimal] | None = None
    ) -> tuple[float, float]:
        """:func:`historical_var_es` of :meth:`pnl_distribution`."""
        return historical_var_es(self.pnl_distribution(positions, marks), confidence)
