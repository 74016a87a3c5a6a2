"""Exposure, concentration, equity tracking and historical VaR/ES, against hand-computed numbers."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.ledger import Ledger
from actors.risk_metrics import (
    EquityTracker,
    Exposure,
    ReturnsWindow,
    concentration,
    exposure,
    historical_var_es,
    sector_concentration,
)
from engine.messages import Fill, Side

D = Decimal
POSITIONS = {"AAA": D(10), "BBB": D(-5), "CCC": D(0)}
MARKS = {"AAA": D(100), "BBB": D(40)}


def test_exposure_from_the_ledger_and_marks() -> None:
    ledger = Ledger(D(10_000))
    for i, (symbol, side, qty, price) in enumerate(
        [("AAA", Side.BUY, 10, 90), ("BBB", Side.SELL, 5, 50), ("CCC", Side.BUY, 1, 1), ("CCC", Side.SELL, 1, 1)]
    ):
        ledger.apply(
            Fill(
                client_order_id=f"c{i}", venue_order_id="v", execution_id=f"e{i}", intent_id="i", strategy="s",
                symbol=symbol, side=side, qty=D(qty), price=D(price), fee=D(0), ts_event=i, ts_recv=i,
            )
        )  # fmt: skip
    assert ledger.quantities() == {"AAA": D(10), "BBB": D(-5)}
    assert exposure(ledger.quantities(), MARKS) == Exposure(long=D(1000), short=D(200), gross=D(1200), net=D(800))
    assert exposure({}, {}) == Exposure(D(0), D(0), D(0), D(0))
    with pytest.raises(KeyError):
        exposure({"ZZZ": D(1)}, MARKS)


def test_concentration_is_a_percentage_of_equity() -> None:
    assert concentration(POSITIONS, MARKS, D(4000)) == {"AAA": D(25), "BBB": D(5)}
    sectors = {"AAA": "tech", "BBB": "tech"}
    assert sector_concentration(POSITIONS, MARKS, D(4000), sectors) == {"tech": D(30)}  # gross: long and short add
    assert sector_concentration({**POSITIONS, "DDD": D(1)}, {**MARKS, "DDD": D(400)}, D(4000), sectors) == {
        "tech": D(30),
        "unknown": D(10),
    }
    assert sector_concentration(POSITIONS, MARKS, D(4000), lambda s: s[0]) == {"A": D(25), "B": D(5)}
    with pytest.raises(ValueError):
        concentration(POSITIONS, MARKS, D(0))


def test_equity_tracker_daily_pnl_and_drawdown() -> None:
    mon, tue = dt.date(2026, 11, 23), dt.date(2026, 11, 24)
    tracker = EquityTracker(capacity=3)
    assert tracker.daily_pnl == 0 and tracker.drawdown == 0
    tracker.update(1, mon, D(1000))
    tracker.update(2, mon, D(1100))
    tracker.update(3, mon, D(1050))
    assert (tracker.start_of_day, tracker.daily_pnl) == (D(1000), D(50))
    assert (tracker.high_water, tracker.drawdown) == (D(1100), D(50))
    tracker.update(4, tue, D(990))  # the overnight gap is Tuesday's P&L: start of day is Monday's last
    assert (tracker.start_of_day, tracker.daily_pnl) == (D(1050), D(-60))
    assert tracker.drawdown == D(110) and tracker.drawdown_pct == D(10)
    tracker.update(5, tue, D(1200))
    assert tracker.high_water == D(1200) and tracker.drawdown == 0
    assert [s.ts_ns for s in tracker.samples] == [3, 4, 5]  # bounded ring


def test_var_and_es_hand_computed() -> None:
    pnl = [-10.0, -8.0, -6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0]
    # 80 %: tail of ceil(10 × 0.2) = 2 worst, -10 and -8: VaR is the 2nd worst loss, ES their mean.
    assert historical_var_es(pnl, 0.80) == (8.0, 9.0)
    # 95 %: ceil(0.5) = 1: VaR = ES = the worst loss.
    assert historical_var_es(pnl, 0.95) == (10.0, 10.0)
    # 70 %: 3 worst: -10, -8, -6; unsorted input and numpy arrays give the same.
    shuffled = np.array([4.0, -6.0, 0.0, 8.0, -10.0, 2.0, -2.0, 6.0, -8.0, -4.0])
    assert historical_var_es(shuffled, 0.70) == (6.0, 8.0)
    # 20 outcomes at 95 %: exactly one in the tail (no float fuzz making it two).
    assert historical_var_es([float(x) for x in range(-10, 10)], 0.95) == (10.0, 10.0)
    # A tail that made money gives negative losses.
    assert historical_var_es([1.0, 2.0, 3.0], 0.5) == (-2.0, -1.5)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            historical_var_es(pnl, bad)
    with pytest.raises(ValueError):
        historical_var_es([], 0.9)
    with pytest.raises(ValueError):
        historical_var_es([1.0, float("nan")], 0.9)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=200),
    st.floats(min_value=0.5, max_value=0.999),
)
def test_es_is_never_below_var(pnl: list[float], confidence: float) -> None:
    var, es = historical_var_es(pnl, confidence)
    assert es >= var - 1e-6 * max(1.0, abs(var))
    assert var <= -min(pnl) + 1e-9 and es <= -min(pnl) + 1e-6 * max(1.0, abs(min(pnl)))


def test_returns_window_gives_the_portfolio_pnl_distribution() -> None:
    window = ReturnsWindow(capacity=4)
    for aaa, bbb in ((100, 50), (110, 50), (99, 55), (99, 44)):
        window.sample({"AAA": D(aaa), "BBB": D(bbb)})
    assert len(window) == 4
    np.testing.assert_allclose(window.returns("AAA"), [0.1, -0.1, 0.0])
    np.testing.assert_allclose(window.returns("BBB"), [0.0, 0.1, -0.2])
    # 10 AAA long at 99, 5 BBB short at 44: Σ qty × price × return.
    expected = [990 * 0.1 + -220 * 0.0, 990 * -0.1 + -220 * 0.1, 990 * 0.0 + -220 * -0.2]
    np.testing.assert_allclose(window.pnl_distribution({"AAA": D(10), "BBB": D(-5)}), expected)
    var, es = window.var_es({"AAA": D(10), "BBB": D(-5)}, 0.6)  # tail of ceil(1.2) = 2: -121, 44
    assert var == pytest.approx(-44.0) and es == pytest.approx((121 - 44) / 2)
    # Marks given override the newest sample.
    np.testing.assert_allclose(window.pnl_distribution({"AAA": D(1)}, {"AAA": D(200)}), [20.0, -20.0, 0.0])
    # The ring keeps the newest `capacity` samples.
    window.sample({"AAA": D(198), "BBB": D(44)})
    np.testing.assert_allclose(window.returns("AAA"), [-0.1, 0.0, 1.0])
    with pytest.raises(KeyError):
        window.pnl_distribution({"ZZZ": D(1)})


def test_intervals_with_a_missing_mark_are_left_out_for_held_symbols() -> None:
    window = ReturnsWindow(capacity=10)
    window.sample({"AAA": D(100), "BBB": D(10)})
    window.sample({"AAA": D(101)})  # no BBB
    window.sample({"AAA": D(102), "BBB": D(12), "CCC": D(5)})  # CCC appears
    np.testing.assert_allclose(window.pnl_distribution({"AAA": D(1)}), [102 * 0.01, 102 * (102 / 101 - 1)])
    assert window.pnl_distribution({"BBB": D(1)}).size == 0  # both intervals touch the missing sample
    assert window.pnl_distribution({}).tolist() == [0.0, 0.0]
    assert window.symbols == ["AAA", "BBB", "CCC"]
