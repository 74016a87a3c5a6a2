"""The day-trading rule as a dated policy: PDT until the firm adopts FINRA's replacement, then intraday margin."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest

from actors.day_trading import (
    INTRADAY_MARGIN,
    PATTERN_DAY_TRADER,
    DayTradePolicy,
    DayTradingConfig,
    check_day_trade,
    closing_qty,
    policy_in_force,
)
from actors.ledger import AccountType
from engine.messages import Side

D = Decimal
BEFORE = dt.date(2026, 3, 2)
ADOPTED = dt.date(2027, 1, 4)


def margin(**kw: Any) -> DayTradingConfig:
    return DayTradingConfig("margin", replacement_adopted_on=ADOPTED, **kw)


def check(cfg: DayTradingConfig, day: dt.date, **kw: Any) -> tuple[str, str, dict[str, str]] | None:
    """A sale of 10 of a 10-share long opened today, 3 day trades so far, $10,000 of equity — unless overridden."""
    order: dict[str, Any] = {
        "intent_side": Side.SELL,
        "intent_qty": D(10),
        "notional": D(1000),
        "position": D(10),
        "opened_today": D(10),
        "day_trades": 3,
        "equity": D(10_000),
        "symbol": "IBM",
    }
    order.update(kw)
    return check_day_trade(cfg, day, **order)


def test_the_policy_in_force_depends_on_the_firms_adoption_date() -> None:
    cfg = margin()
    assert policy_in_force(BEFORE, cfg) is DayTradePolicy.PDT
    assert policy_in_force(dt.date(2026, 6, 4), cfg) is DayTradePolicy.PDT  # effective, not yet adopted
    assert policy_in_force(ADOPTED - dt.timedelta(days=1), cfg) is DayTradePolicy.PDT
    assert policy_in_force(ADOPTED, cfg) is DayTradePolicy.INTRADAY_MARGIN
    # By default a firm adopts on the last day of the phase-in.
    default = DayTradingConfig("margin")
    assert policy_in_force(dt.date(2027, 10, 19), default) is DayTradePolicy.PDT
    assert policy_in_force(dt.date(2027, 10, 20), default) is DayTradePolicy.INTRADAY_MARGIN


def test_a_forced_policy_ignores_the_date() -> None:
    assert policy_in_force(dt.date(2030, 1, 1), margin(policy="pdt")) is DayTradePolicy.PDT
    assert policy_in_force(dt.date(2020, 1, 1), margin(policy="intraday-margin")) is DayTradePolicy.INTRADAY_MARGIN
    assert check(margin(policy="pdt"), dt.date(2030, 1, 1)) is not None


@pytest.mark.parametrize(
    "kw",
    [
        {"replacement_adopted_on": dt.date(2026, 6, 3)},  # before the amendments are effective
        {"replacement_adopted_on": dt.date(2027, 10, 21)},  # after the phase-in ends
        {"policy": "none"},
        {"account_type": "portfolio"},
        {"window_business_days": 0},
    ],
)
def test_invalid_configurations_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DayTradingConfig(**{"account_type": "margin", **kw})


def test_pdt_refuses_a_fourth_day_trade_below_the_minimum_equity() -> None:
    found = check(margin(), BEFORE)
    assert found is not None
    code, detail, inputs = found
    assert code == PATTERN_DAY_TRADER and "day trade 4" in detail
    assert inputs["day_trades"] == "3" and inputs["max_day_trades"] == "3" and inputs["policy"] == "pdt"
    assert inputs["equity"] == "10000" and inputs["min_equity"] == "25000" and inputs["symbol"] == "IBM"


def test_pdt_allows_what_is_not_a_fourth_day_trade_under_25k() -> None:
    cfg = margin()
    assert check(cfg, BEFORE, day_trades=2) is None  # the third is allowed
    assert check(cfg, BEFORE, equity=D(25_000)) is None  # at the minimum equity: no count limit
    assert check(cfg, BEFORE, equity=D("24999.99")) is not None
    assert check(cfg, BEFORE, opened_today=D(0)) is None  # closing an overnight position
    assert check(cfg, BEFORE, intent_side=Side.BUY) is None  # adding to the position
    assert check(cfg, BEFORE, position=D(-10), opened_today=D(-10)) is None  # a sale deepens a short
    assert check(cfg, BEFORE, position=D(-10), opened_today=D(-10), intent_side=Side.BUY) is not None  # covering it


def test_cash_accounts_are_exempt_from_pdt() -> None:
    cfg = DayTradingConfig("cash", replacement_adopted_on=ADOPTED)
    assert cfg.account_type is AccountType.CASH
    assert check(cfg, BEFORE, day_trades=10, equity=D(100)) is None
    assert check(cfg, ADOPTED, intraday_buying_power=D(0)) is None


def test_after_adoption_there_is_no_count_limit_but_intraday_margin() -> None:
    cfg = margin()
    assert check(cfg, ADOPTED, day_trades=50) is None
    # A purely closing order consumes no buying power.
    assert check(cfg, ADOPTED, day_trades=50, intraday_buying_power=D(0)) is None
    # Opening: a buy of 10 worth 1000 against 999 of buying power.
    found = check(cfg, ADOPTED, intent_side=Side.BUY, intraday_buying_power=D(999))
    assert found is not None and found[0] == INTRADAY_MARGIN
    assert found[2]["opening_qty"] == "10" and found[2]["intraday_buying_power"] == "999"
    assert check(cfg, ADOPTED, intent_side=Side.BUY, intraday_buying_power=D(1000)) is None
    # A flip: selling 30 of a 10 long closes 10 and opens 20, i.e. 2000 of a 3000 notional.
    flip = {"intent_qty": D(30), "notional": D(3000)}
    assert check(cfg, ADOPTED, **flip, intraday_buying_power=D(2000)) is None
    assert check(cfg, ADOPTED, **flip, intraday_buying_power=D("1999.99")) is not None
    # Without a buying power figure nothing is checked.
    assert check(cfg, ADOPTED, intent_side=Side.BUY) is None


def test_closing_quantity() -> None:
    assert closing_qty(D(10), Side.SELL, D(4)) == D(4)
    assert closing_qty(D(10), Side.SELL, D(40)) == D(10)
    assert closing_qty(D(10), Side.BUY, D(4)) == D(0)
    assert closing_qty(D(-3), Side.BUY, D(4)) == D(3)
    assert closing_qty(D(0), Side.SELL, D(4)) == D(0)
