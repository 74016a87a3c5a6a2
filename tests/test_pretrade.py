"""The pure pre-trade checks: one boundary test per reason code, windows, and properties.

Boundaries: exactly at a limit passes, just over it rejects. The property tests compare
the checker with an independent oracle written the plain way (exact fractions, division,
brute force over fill scenarios), over random intent streams and random limits.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from fractions import Fraction
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import pretrade
from actors.pretrade import (
    ADV_PARTICIPATION,
    BUYING_POWER,
    CANCEL_RATE,
    CHECK_ORDER,
    DUPLICATE_ORDER,
    FRACTIONAL_NOT_ALLOWED,
    GROSS_EXPOSURE,
    INVALID_PRICE,
    INVALID_QTY,
    LEVERAGE,
    LOT_SIZE,
    MAX_OPEN_ORDERS,
    MAX_ORDER_NOTIONAL,
    MAX_ORDER_QTY,
    MAX_POSITION,
    NET_EXPOSURE,
    ORDER_RATE,
    PRICE_COLLAR,
    REASON_CODES,
    SECTOR_CONCENTRATION,
    SELF_TRADE,
    SHORT_NOT_LOCATED,
    SYMBOL_CONCENTRATION,
    UNSUPPORTED_ORDER_TYPE,
    AccountView,
    Approval,
    Asset,
    Limits,
    PreTradeChecker,
    Rejection,
    WorkingOrder,
    reduces_exposure,
)
from engine.messages import OrderIntent, OrderType, Side

D = Decimal
F = Fraction
T = TypeVar("T")
BUY, SELL = Side.BUY, Side.SELL
PLAIN = Asset("AAA", shortable=True, easy_to_borrow=True)
NO_LIMITS = Limits()
RICH = AccountView(equity=D(10**9), buying_power=D(10**9), positions={}, marks={})


def order(
    qty: str | Decimal = "10",
    side: Side = BUY,
    limit: str | None = None,
    *,
    symbol: str = "AAA",
    strategy: str = "s1",
    order_type: OrderType | None = None,
) -> OrderIntent:
    kind = order_type or (OrderType.MARKET if limit is None else OrderType.LIMIT)
    return OrderIntent(
        intent_id="i", strategy=strategy, symbol=symbol, side=side, qty=D(qty), order_type=kind,
        limit_price=None if limit is None else D(limit), ts_init=0,
    )


def working_order(
    symbol: str = "AAA",
    side: Side = SELL,
    qty: str = "10",
    limit: str | None = None,
    ref: str = "100",
    name: str = "w1",
) -> WorkingOrder:
    return WorkingOrder(
        client_order_id=name, strategy="s9", symbol=symbol, side=side, remaining_qty=D(qty),
        limit_price=None if limit is None else D(limit), reference_price=D(ref),
    )


def account(
    equity: str = "1000000000",
    buying_power: str = "1000000000",
    positions: Mapping[str, str] | None = None,
    marks: Mapping[str, str] | None = None,
) -> AccountView:
    return AccountView(
        equity=D(equity), buying_power=D(buying_power),
        positions={k: D(v) for k, v in (positions or {}).items()},
        marks={k: D(v) for k, v in (marks or {}).items()},
    )


def run(
    intent: OrderIntent,
    limits: Limits = NO_LIMITS,
    *,
    ref: str = "100",
    asset: Asset = PLAIN,
    acct: AccountView = RICH,
    working: Sequence[WorkingOrder] = (),
    now: int = 0,
    checker: PreTradeChecker | None = None,
    sectors: Mapping[str, str] | None = None,
) -> Rejection | Approval:
    checker = checker or PreTradeChecker()
    return checker.check(intent, D(ref), now, limits, asset, acct, working, sectors=sectors or {})


def code(result: Rejection | Approval) -> str | None:
    return result.code if isinstance(result, Rejection) else None


def assert_boundary(at: Rejection | Approval, over: Rejection | Approval, expected: str) -> None:
    assert isinstance(at, Approval), at
    assert isinstance(over, Rejection), over
    assert over.code == expected, over
    assert over.detail and all(isinstance(v, str) for v in over.inputs.values())


# ---------------------------------------------------------------- one rule at a time


def test_invalid_qty() -> None:
    assert_boundary(run(order("1")), run(order("0")), INVALID_QTY)
    assert code(run(order("-5"))) == INVALID_QTY
    assert code(run(order("NaN"))) == INVALID_QTY


def test_fractional_not_allowed_is_checked_before_lot_size() -> None:
    coarse = Asset("AAA", lot_size=D(10))
    assert code(run(order("1.5"), asset=coarse)) == FRACTIONAL_NOT_ALLOWED
    assert_boundary(run(order("2")), run(order("2.5")), FRACTIONAL_NOT_ALLOWED)
    fractional = Asset("AAA", fractionable=True, lot_size=D("0.5"))
    assert isinstance(run(order("2.5"), asset=fractional), Approval)


def test_lot_size_and_min_qty() -> None:
    board_lot = Asset("AAA", lot_size=D(100))
    assert_boundary(run(order("200"), asset=board_lot), run(order("150"), asset=board_lot), LOT_SIZE)
    minimum = Asset("AAA", min_qty=D(5))
    assert_boundary(run(order("5"), asset=minimum), run(order("4"), asset=minimum), LOT_SIZE)
    cents = Asset("AAA", fractionable=True, lot_size=D("0.01"))
    assert_boundary(run(order("0.01"), asset=cents), run(order("0.015"), asset=cents), LOT_SIZE)
    rejected = run(order("1E+40"), asset=Asset("AAA", fractionable=True, lot_size=D("1E-10")))
    assert code(rejected) == LOT_SIZE  # the remainder cannot be computed exactly: refused, not crashed


def test_unsupported_order_type_and_invalid_price() -> None:
    assert code(run(order(order_type=OrderType.STOP))) == UNSUPPORTED_ORDER_TYPE
    assert code(run(order(order_type=OrderType.LIMIT))) == INVALID_PRICE  # a limit order without a price
    assert code(run(order(limit="0"))) == INVALID_PRICE
    assert code(run(order(limit="10", order_type=OrderType.MARKET))) == INVALID_PRICE
    assert_boundary(run(order(), ref="0.0001"), run(order(), ref="0"), INVALID_PRICE)


def test_max_order_qty() -> None:
    limits = Limits(max_order_qty=D(100))
    assert_boundary(run(order("100"), limits), run(order("101"), limits), MAX_ORDER_QTY)


def test_max_order_notional() -> None:
    limits = Limits(max_order_notional=D(1000))
    assert_boundary(run(order("10"), limits, ref="100"), run(order("10"), limits, ref="100.01"), MAX_ORDER_NOTIONAL)
    rejected = run(order("10"), limits, ref="100.01")
    assert isinstance(rejected, Rejection)
    assert rejected.inputs["notional"] == "1000.10" and rejected.inputs["max_order_notional"] == "1000"


def test_price_collar_either_way() -> None:
    limits = Limits(collar_pct=D(5))
    assert_boundary(run(order(limit="105"), limits), run(order(limit="105.01"), limits), PRICE_COLLAR)
    assert_boundary(run(order(side=SELL, limit="95"), limits), run(order(side=SELL, limit="94.99"), limits),
                    PRICE_COLLAR)
    assert code(run(order(limit="94.99"), limits)) == PRICE_COLLAR  # a buy far below is refused too
    assert isinstance(run(order(), limits), Approval)  # a market order has no price to collar


def test_adv_participation() -> None:
    limits = Limits(max_adv_participation_pct=D(10))
    liquid = Asset("AAA", adv=D(1000))
    assert_boundary(run(order("100"), limits, asset=liquid), run(order("101"), limits, asset=liquid),
                    ADV_PARTICIPATION)
    assert isinstance(run(order("101"), limits), Approval)  # volume unknown: not checked


def test_duplicate_order_and_its_window() -> None:
    limits = Limits(duplicate_window_ns=1_000)
    checker = PreTradeChecker()
    checker.record_approved(order("10", limit="100"), 0)
    again = order("10", limit="100.0")  # the same price, written differently
    assert_boundary(run(again, limits, now=1_000, checker=checker), run(again, limits, now=999, checker=checker),
                    DUPLICATE_ORDER)
    for different in (order("11", limit="100"), order("10", limit="100.01"), order("10", SELL, limit="100"),
                      order("10", limit="100", strategy="s2"), order("10")):
        assert isinstance(run(different, limits, now=999, checker=checker), Approval)
    assert isinstance(run(again, Limits(), now=1, checker=checker), Approval)  # no window set


def test_a_duplicate_repeats_the_previous_order_not_an_older_one() -> None:
    """A strategy that flips (buy, sell, buy the same size) is not stuck in a loop."""
    limits = Limits(duplicate_window_ns=1_000)
    checker = PreTradeChecker()
    checker.record_approved(order("10", BUY), 0)
    checker.record_approved(order("10", SELL), 10)
    assert isinstance(run(order("10", BUY), limits, now=20, checker=checker), Approval)
    assert code(run(order("10", SELL), limits, now=20, checker=checker)) == DUPLICATE_ORDER
    checker.record_approved(order("10", BUY, symbol="BBB"), 15)  # another symbol is another stream
    assert code(run(order("10", SELL), limits, now=20, checker=checker)) == DUPLICATE_ORDER


def test_order_rate_per_strategy_and_its_window() -> None:
    limits = Limits(max_orders_per_window=2, rate_window_ns=1_000)
    checker = PreTradeChecker()
    checker.record_approved(order("1"), 0)
    checker.record_approved(order("2"), 500)
    assert_boundary(run(order("3"), limits, now=1_000, checker=checker),
                    run(order("3"), limits, now=999, checker=checker), ORDER_RATE)
    assert isinstance(run(order("3", strategy="s2"), limits, now=999, checker=checker), Approval)
    assert isinstance(run(order("3"), limits, now=1_499, checker=checker), Approval)  # only 500 is in the window
    checker.record_approved(order("4"), 1_200)
    assert code(run(order("5"), limits, now=1_499, checker=checker)) == ORDER_RATE
    assert isinstance(run(order("5"), limits, now=1_500, checker=checker), Approval)


def test_cancel_rate_and_its_window() -> None:
    limits = Limits(max_cancels_per_window=2, rate_window_ns=1_000)
    checker = PreTradeChecker()
    assert checker.check_cancel(0, limits) is None
    checker.record_cancel(0)
    assert checker.check_cancel(10, limits) is None
    checker.record_cancel(10)
    rejected = checker.check_cancel(999, limits)
    assert rejected is not None and rejected.code == CANCEL_RATE
    assert rejected.inputs["cancels_in_window"] == "2" and rejected.inputs["max_cancels_per_window"] == "2"
    assert checker.check_cancel(1_000, limits) is None  # the first one left the window
    assert checker.check_cancel(999, Limits()) is None


def test_max_open_orders_counts_every_symbol() -> None:
    limits = Limits(max_open_orders=2)
    one = [working_order("BBB")]
    two = [*one, working_order("CCC", name="w2")]
    assert_boundary(run(order(), limits, working=one), run(order(), limits, working=two), MAX_OPEN_ORDERS)


def test_self_trade() -> None:
    sell_at_100 = [working_order(side=SELL, limit="100")]
    assert_boundary(run(order(limit="99.99"), working=sell_at_100), run(order(limit="100"), working=sell_at_100),
                    SELF_TRADE)
    buy_at_100 = [working_order(side=BUY, limit="100")]
    assert_boundary(run(order(side=SELL, limit="100.01"), working=buy_at_100),
                    run(order(side=SELL, limit="100"), working=buy_at_100), SELF_TRADE)
    assert code(run(order(), working=[working_order(side=SELL, limit="500")])) == SELF_TRADE  # market vs any
    assert code(run(order(limit="1"), working=[working_order(side=SELL)])) == SELF_TRADE  # vs a working market
    assert isinstance(run(order(), working=[working_order(side=BUY)]), Approval)  # same side
    assert isinstance(run(order(), working=[working_order("BBB", side=SELL)]), Approval)  # other symbol


def test_short_not_located() -> None:
    long_ten = account(positions={"AAA": "10"})
    selling = [working_order(side=SELL, qty="4", limit="200")]
    unshortable = Asset("AAA")
    assert_boundary(
        run(order("6", SELL), asset=unshortable, acct=long_ten, working=selling),
        run(order("7", SELL), asset=unshortable, acct=long_ten, working=selling),
        SHORT_NOT_LOCATED,
    )
    hard_to_borrow = Asset("AAA", shortable=True, borrow_rate_pct=D("35.5"))
    rejected = run(order("7", SELL), asset=hard_to_borrow, acct=long_ten, working=selling)
    assert isinstance(rejected, Rejection) and rejected.code == SHORT_NOT_LOCATED
    assert rejected.inputs["short_qty"] == "1" and "hard to borrow" in rejected.detail
    easy = Asset("AAA", shortable=True, easy_to_borrow=True, borrow_rate_pct=D("0.25"))
    approved = run(order("7", SELL), asset=easy, acct=long_ten, working=selling)
    assert isinstance(approved, Approval)
    assert approved.inputs["short_qty"] == "1" and approved.inputs["borrow_rate_pct"] == "0.25"
    closing = run(order("6", SELL), asset=easy, acct=long_ten, working=selling)
    assert isinstance(closing, Approval) and "short_qty" not in closing.inputs


def test_buying_power_counts_working_orders_that_add_exposure() -> None:
    acct = account(buying_power="1000", positions={"BBB": "5"})
    assert_boundary(run(order("10"), acct=acct), run(order("10"), ref="100.01", acct=acct), BUYING_POWER)
    adds = [working_order("CCC", BUY, qty="1", ref="0.01")]
    assert code(run(order("10"), acct=acct, working=adds)) == BUYING_POWER
    closes = [working_order("BBB", SELL, qty="5", ref="50")]  # reduces BBB: needs no buying power
    assert isinstance(run(order("10"), acct=acct, working=closes), Approval)
    flips = [working_order("BBB", SELL, qty="6", ref="50")]  # crosses zero: it adds exposure
    assert code(run(order("10"), acct=acct, working=flips)) == BUYING_POWER
    broke = account(buying_power="0", positions={"AAA": "10"})
    assert isinstance(run(order("10", SELL), acct=broke), Approval)  # a reducing order needs none


def test_max_position_qty_and_notional() -> None:
    acct = account(positions={"AAA": "50"})
    buying = [working_order(side=BUY, qty="20", limit="90")]
    limits = Limits(max_position_qty=D(100))
    assert_boundary(run(order("30"), limits, acct=acct, working=buying),
                    run(order("31"), limits, acct=acct, working=buying), MAX_POSITION)
    assert_boundary(run(order("100", SELL), limits), run(order("101", SELL), limits), MAX_POSITION)
    notional = Limits(max_position_notional=D(1000))
    marked = account(positions={"AAA": "5"}, marks={"AAA": "100"})
    assert_boundary(run(order("5"), notional, acct=marked), run(order("6"), notional, acct=marked), MAX_POSITION)
    over = account(positions={"AAA": "500"})
    assert isinstance(run(order("10", SELL), limits, acct=over), Approval)  # reducing is always allowed


def test_gross_exposure() -> None:
    acct = account(positions={"BBB": "-10"}, marks={"BBB": "10"})
    limits = Limits(max_gross_exposure=D(1100))
    assert_boundary(run(order("10"), limits, acct=acct), run(order("10"), limits, ref="100.01", acct=acct),
                    GROSS_EXPOSURE)
    covering = [working_order("BBB", BUY, qty="30", limit="9")]  # worst case: BBB ends long 20 → 200
    assert code(run(order("10"), limits, acct=acct, working=covering)) == GROSS_EXPOSURE
    assert isinstance(run(order("9"), limits, acct=acct, working=covering), Approval)


def test_net_exposure() -> None:
    acct = account(positions={"BBB": "5"}, marks={"BBB": "10"})
    limits = Limits(max_net_exposure=D(100))
    assert_boundary(run(order("1"), limits, ref="50", acct=acct), run(order("1"), limits, ref="50.01", acct=acct),
                    NET_EXPOSURE)
    assert code(run(order("1", SELL), limits, ref="1000", acct=acct)) == NET_EXPOSURE  # net 50 → -950
    over = account(positions={"BBB": "-20"}, marks={"BBB": "10"})  # net -200: already over the cap
    assert isinstance(run(order("1"), limits, ref="50", acct=over), Approval)  # → -150: smaller, allowed
    assert code(run(order("1", SELL), limits, ref="50", acct=over)) == NET_EXPOSURE  # → -250
    hedged = account(positions={"AAA": "10", "BBB": "-10"}, marks={"AAA": "10", "BBB": "10"})
    assert isinstance(run(order("10", SELL), Limits(max_net_exposure=D(0)), acct=hedged), Approval)  # reduces


def test_leverage() -> None:
    acct = account(equity="1000", positions={"BBB": "10"}, marks={"BBB": "100"})
    limits = Limits(max_leverage=D(2))
    assert_boundary(run(order("10"), limits, acct=acct), run(order("10"), limits, ref="100.01", acct=acct), LEVERAGE)
    broke = account(equity="0")
    rejected = run(order("1"), limits, acct=broke)
    assert isinstance(rejected, Rejection) and rejected.code == LEVERAGE and "equity is 0" in rejected.detail
    short = account(equity="-5", positions={"AAA": "3"})
    assert isinstance(run(order("3", SELL), limits, acct=short), Approval)


def test_symbol_concentration() -> None:
    acct = account(equity="1000")
    limits = Limits(max_symbol_concentration_pct=D(10))
    assert_boundary(run(order("1"), limits, acct=acct), run(order("1"), limits, ref="100.01", acct=acct),
                    SYMBOL_CONCENTRATION)
    negative = account(equity="-1")
    rejected = run(order("1"), limits, acct=negative)
    assert isinstance(rejected, Rejection) and rejected.code == SYMBOL_CONCENTRATION
    assert "equity is -1" in rejected.detail


def test_sector_concentration() -> None:
    tech = Asset("AAA", sector="tech")
    acct = account(equity="1000", positions={"BBB": "-10", "CCC": "50"}, marks={"BBB": "10", "CCC": "10"})
    limits = Limits(max_sector_concentration_pct=D(20))
    sectors = {"BBB": "tech", "CCC": "energy"}
    assert_boundary(
        run(order("1"), limits, asset=tech, acct=acct, sectors=sectors),
        run(order("1"), limits, ref="100.01", asset=tech, acct=acct, sectors=sectors),
        SECTOR_CONCENTRATION,
    )
    assert isinstance(run(order("2"), limits, asset=tech, acct=acct, sectors={}), Approval)  # BBB's sector unknown
    assert isinstance(run(order("2"), limits, acct=acct, sectors=sectors), Approval)  # AAA's own sector unknown


def test_other_symbols_count_at_their_worst_case() -> None:
    """BBB is flat with 30 to sell working: if they fill it is short 30 × 10 = 300, and that is what counts."""
    acct = account(equity="1000", positions={"BBB": "0"}, marks={"BBB": "10"})
    selling_bbb = [working_order("BBB", SELL, qty="30", limit="10")]
    gross = Limits(max_gross_exposure=D(1300))
    assert_boundary(run(order("10"), gross, acct=acct, working=selling_bbb),
                    run(order("10"), gross, ref="100.01", acct=acct, working=selling_bbb), GROSS_EXPOSURE)
    net = Limits(max_net_exposure=D(400))  # a sell of AAA adds to BBB's worst case: -300 - 100
    assert_boundary(run(order("1", SELL), net, acct=acct, working=selling_bbb),
                    run(order("1", SELL), net, ref="100.01", acct=acct, working=selling_bbb), NET_EXPOSURE)
    assert isinstance(run(order("4"), net, acct=acct, working=selling_bbb), Approval)  # a buy offsets it
    sector = Limits(max_sector_concentration_pct=D(40))
    tech = Asset("AAA", sector="tech")
    assert_boundary(
        run(order("1"), sector, asset=tech, acct=acct, working=selling_bbb, sectors={"BBB": "tech"}),
        run(order("1"), sector, ref="100.01", asset=tech, acct=acct, working=selling_bbb, sectors={"BBB": "tech"}),
        SECTOR_CONCENTRATION,
    )


def test_missing_mark_fails_closed_for_exposure_but_not_for_reducing_orders() -> None:
    acct = account(positions={"AAA": "10", "BBB": "3"})
    limits = Limits(max_gross_exposure=D(10**9))
    rejected = run(order("1"), limits, acct=acct)
    assert isinstance(rejected, Rejection) and rejected.code == GROSS_EXPOSURE
    assert rejected.inputs["missing_marks"] == "BBB"
    assert isinstance(run(order("1", SELL), limits, acct=acct), Approval)


def test_first_failing_rule_wins() -> None:
    limits = Limits(max_order_qty=D(1), max_order_notional=D(1), max_position_qty=D(1))
    assert code(run(order("1.5"), limits)) == FRACTIONAL_NOT_ALLOWED
    assert code(run(order("5"), limits)) == MAX_ORDER_QTY
    assert code(run(order("1"), limits)) == MAX_ORDER_NOTIONAL


def test_approval_inputs() -> None:
    approved = run(order("3", limit="99"), ref="99.5")
    assert isinstance(approved, Approval)
    assert approved.inputs["qty"] == "3" and approved.inputs["reference_price"] == "99.5"
    assert approved.inputs["notional"] == "298.5"


def test_reduces_exposure() -> None:
    assert reduces_exposure(order("10", SELL), D(10), [])
    assert not reduces_exposure(order("11", SELL), D(10), [])
    assert not reduces_exposure(order("1", BUY), D(10), [])
    assert not reduces_exposure(order("1", SELL), D(0), [])
    assert reduces_exposure(order("10", BUY), D(-10), [])
    assert not reduces_exposure(order("11", BUY), D(-10), [])
    selling = [working_order(side=SELL, qty="4"), working_order("BBB", SELL, qty="100", name="w2")]
    assert reduces_exposure(order("6", SELL), D(10), selling)
    assert not reduces_exposure(order("7", SELL), D(10), selling)
    assert reduces_exposure(order("10", SELL), D(10), [working_order(side=BUY, qty="50")])  # buys don't count
    assert not reduces_exposure(order("0", SELL), D(10), [])


def test_tighten() -> None:
    account_level = Limits(max_order_qty=D(100), duplicate_window_ns=1_000, max_leverage=D(4), max_open_orders=10)
    symbol_level = Limits(max_order_qty=D(50), duplicate_window_ns=500, collar_pct=D(3), max_open_orders=20)
    both = account_level.tighten(symbol_level)
    assert both == Limits(
        max_order_qty=D(50), duplicate_window_ns=1_000, max_leverage=D(4), collar_pct=D(3), max_open_orders=10
    )
    assert symbol_level.tighten(account_level) == both
    assert Limits().tighten(Limits()) == Limits()
    windowed = Limits(rate_window_ns=5_000)
    assert windowed.tighten(Limits()).rate_window_ns == 5_000
    assert Limits().tighten(windowed).rate_window_ns == 5_000
    assert windowed.tighten(Limits(rate_window_ns=2_000)).rate_window_ns == 2_000


def test_misuse_is_refused_loudly() -> None:
    with pytest.raises(ValueError, match="asset"):
        run(order(symbol="BBB"))
    checker = PreTradeChecker()
    checker.record_approved(order(), 10)
    with pytest.raises(ValueError, match="backwards"):
        checker.record_cancel(9)
    with pytest.raises(ValueError):
        Limits(rate_window_ns=0)
    with pytest.raises(ValueError):
        Asset("AAA", lot_size=D(0))


# ---------------------------------------------------------------- the oracle


def same_order(a: OrderIntent, b: OrderIntent) -> bool:
    return (a.strategy, a.symbol, a.side, a.qty, a.limit_price) == (b.strategy, b.symbol, b.side, b.qty, b.limit_price)



@dataclass
class Oracle:
    """The rules written the plain way: exact fractions, ratios by division, scenarios by brute force."""

    approved: list[tuple[int, OrderIntent]] = field(default_factory=list)

    def first_violation(
        self,
        intent: OrderIntent,
        reference: Decimal,
        now: int,
        limits: Limits,
        asset: Asset,
        acct: AccountView,
        working: Sequence[WorkingOrder],
        sectors: Mapping[str, str],
    ) -> str | None:
        qty = intent.qty
        if not qty.is_finite() or qty <= 0:
            return INVALID_QTY
        if qty % 1 != 0 and not asset.fractionable:
            return FRACTIONAL_NOT_ALLOWED
        if qty < asset.min_qty or Fraction(qty) / Fraction(asset.lot_size) % 1 != 0:
            return LOT_SIZE
        if intent.order_type not in (OrderType.MARKET, OrderType.LIMIT):
            return UNSUPPORTED_ORDER_TYPE
        limit = intent.limit_price
        if reference <= 0 or (intent.order_type is OrderType.LIMIT) != (limit is not None) or (limit or 1) <= 0:
            return INVALID_PRICE
        rules = CHECK_ORDER[CHECK_ORDER.index(INVALID_PRICE) + 1 :]
        breached = [c for c in rules if self.breaches(c, intent, reference, now, limits, asset, acct, working, sectors)]
        return breached[0] if breached else None

    def breaches(
        self,
        rule: str,
        intent: OrderIntent,
        reference: Decimal,
        now: int,
        limits: Limits,
        asset: Asset,
        acct: AccountView,
        working: Sequence[WorkingOrder],
        sectors: Mapping[str, str],
    ) -> bool:
        q, ref, side, sym = F(intent.qty), F(reference), intent.side, intent.symbol
        equity = F(acct.equity)
        position = F(acct.positions.get(sym, D(0)))
        mine = [w for w in working if w.symbol == sym]
        same = sum((F(w.remaining_qty) for w in mine if w.side is side), F(0))
        sign = 1 if side is BUY else -1
        reducing = position * sign < 0 and q + same <= abs(position)
        before = position + sign * same
        after = before + sign * q
        mark = F(acct.marks.get(sym, reference))

        if rule == MAX_ORDER_QTY:
            return limits.max_order_qty is not None and q > F(limits.max_order_qty)
        if rule == MAX_ORDER_NOTIONAL:
            return limits.max_order_notional is not None and q * ref > F(limits.max_order_notional)
        if rule == PRICE_COLLAR:
            price = intent.limit_price
            return (limits.collar_pct is not None and price is not None
                    and abs(F(price) / ref - 1) * 100 > F(limits.collar_pct))
        if rule == ADV_PARTICIPATION:
            cap, adv = limits.max_adv_participation_pct, asset.adv
            return cap is not None and adv is not None and (adv == 0 or q / F(adv) * 100 > F(cap))
        if rule == DUPLICATE_ORDER:
            window = limits.duplicate_window_ns
            previous = [(ts, i) for ts, i in self.approved if (i.strategy, i.symbol) == (intent.strategy, sym)]
            return window is not None and bool(previous) and (
                now - previous[-1][0] < window and same_order(previous[-1][1], intent)
            )
        if rule == ORDER_RATE:
            span, most = limits.rate_window_ns, limits.max_orders_per_window
            recent = [ts for ts, i in self.approved if i.strategy == intent.strategy and now - ts < span]
            return most is not None and len(recent) >= most
        if rule == MAX_OPEN_ORDERS:
            return limits.max_open_orders is not None and len(working) + 1 > limits.max_open_orders
        if rule == SELF_TRADE:
            price = intent.limit_price
            return any(
                w.side is not side and (
                    price is None or w.limit_price is None
                    or (w.limit_price <= price if side is BUY else w.limit_price >= price)
                )
                for w in mine
            )
        if rule == SHORT_NOT_LOCATED:
            sells = sum((F(w.remaining_qty) for w in mine if w.side is SELL), F(0))
            opens_short = side is SELL and q > max(position - sells, F(0))
            return opens_short and not (asset.shortable and asset.easy_to_borrow)
        if reducing:
            return False  # every rule below exempts an order that only shrinks its position
        if rule == BUYING_POWER:
            needed = q * ref
            for index, w in enumerate(working):
                p = F(acct.positions.get(w.symbol, D(0)))
                w_sign = 1 if w.side is BUY else -1
                ahead = sum(F(o.remaining_qty) for o in working[: index + 1]
                            if (o.symbol, o.side) == (w.symbol, w.side))
                if not (p * w_sign < 0 and ahead <= abs(p)):
                    needed += F(w.remaining_qty) * F(w.reference_price)
            return needed > F(acct.buying_power)
        if rule == MAX_POSITION:
            if abs(after) <= abs(before):
                return False
            cap_qty, cap_notional = limits.max_position_qty, limits.max_position_notional
            return (cap_qty is not None and abs(after) > F(cap_qty)) or (
                cap_notional is not None and abs(after) * mark > F(cap_notional)
            )

        # Across symbols: every other symbol stays, or has all its buys filled, or all its sells.
        outcomes: dict[str, list[Fraction]] = {}
        for other in sorted({*acct.positions, *(w.symbol for w in working)} - {sym}):
            p = F(acct.positions.get(other, D(0)))
            buys = sum((F(w.remaining_qty) for w in working if w.symbol == other and w.side is BUY), F(0))
            sells = sum((F(w.remaining_qty) for w in working if w.symbol == other and w.side is SELL), F(0))
            if p or buys or sells:
                outcomes[other] = [p, p + buys, p - sells]
        unmarked = [s for s in outcomes if s not in acct.marks]
        peers = [s for s in outcomes if asset.sector is not None and sectors.get(s) == asset.sector]

        def worst(figure: str, x: Fraction) -> Fraction:
            """The figure's largest value over every combination of the other symbols' outcomes."""
            counted = peers if figure == "sector" else list(outcomes)
            values = []
            for scenario in itertools.product(*(outcomes[s] for s in counted)):
                notionals = [n * F(acct.marks[s]) for s, n in zip(counted, scenario, strict=True)]
                if figure == "net":
                    values.append(abs(sum(notionals) + x * mark))
                else:
                    values.append(sum(abs(n) for n in notionals) + abs(x * mark))
            return max(values)

        if rule in (GROSS_EXPOSURE, NET_EXPOSURE):
            cap = limits.max_gross_exposure if rule == GROSS_EXPOSURE else limits.max_net_exposure
            figure = "gross" if rule == GROSS_EXPOSURE else "net"
            if cap is None:
                return False
            if unmarked:
                return True
            return worst(figure, after) > worst(figure, before) and worst(figure, after) > F(cap)
        if rule == LEVERAGE:
            cap = limits.max_leverage
            if cap is None:
                return False
            if unmarked:
                return True
            gross = worst("gross", after)
            return gross > worst("gross", before) and (equity <= 0 or gross / equity > F(cap))
        if rule == SYMBOL_CONCENTRATION:
            cap = limits.max_symbol_concentration_pct
            return (cap is not None and abs(after) > abs(before)
                    and (equity <= 0 or abs(after) * mark / equity * 100 > F(cap)))
        if rule == SECTOR_CONCENTRATION:
            cap = limits.max_sector_concentration_pct
            if cap is None or asset.sector is None:
                return False
            if any(s in unmarked for s in peers):
                return True
            sector_after = worst("sector", after)
            return sector_after > worst("sector", before) and (equity <= 0 or sector_after / equity * 100 > F(cap))
        raise AssertionError(rule)


# ---------------------------------------------------------------- properties

SYMBOLS = ("AAA", "BBB", "CCC")


def cents(low: int, high: int) -> st.SearchStrategy[Decimal]:
    return st.integers(low, high).map(lambda n: D(n).scaleb(-2))


def maybe(values: st.SearchStrategy[T]) -> st.SearchStrategy[T | None]:
    """None (no limit) three times in four: a few limits at a time, so orders get far enough to meet them."""
    return st.one_of(st.none(), st.none(), st.none(), values)


limits_st = st.builds(
    Limits,
    max_order_qty=maybe(st.integers(1, 40).map(D)),
    max_order_notional=maybe(cents(1_000, 500_000)),
    collar_pct=maybe(st.integers(0, 20).map(lambda n: D(n) / 2)),
    duplicate_window_ns=maybe(st.integers(0, 3_000)),
    max_orders_per_window=maybe(st.integers(0, 4)),
    max_cancels_per_window=maybe(st.integers(0, 4)),
    rate_window_ns=st.integers(1, 3_000),
    max_open_orders=maybe(st.integers(0, 8)),
    max_position_qty=maybe(st.integers(0, 60).map(D)),
    max_position_notional=maybe(cents(0, 600_000)),
    max_gross_exposure=maybe(cents(0, 2_000_000)),
    max_net_exposure=maybe(cents(0, 1_000_000)),
    max_leverage=maybe(st.integers(1, 40).map(lambda n: D(n) / 4)),
    max_symbol_concentration_pct=maybe(st.integers(0, 120).map(D)),
    max_sector_concentration_pct=maybe(st.integers(0, 120).map(D)),
    max_adv_participation_pct=maybe(st.integers(0, 50).map(D)),
)


@st.composite
def assets_st(draw: st.DrawFn, symbol: str) -> Asset:
    flags = draw(st.integers(0, 2**12 - 1))  # one draw, read as bits: hypothesis favours small values

    def bits(first: int, count: int) -> int:
        return flags >> first & (1 << count) - 1

    fractional = bits(4, 2) == 3
    return Asset(
        symbol,
        shortable=bits(0, 2) != 3,
        easy_to_borrow=bits(2, 2) != 3,
        borrow_rate_pct=D(bits(6, 6)).scaleb(-1),
        fractionable=fractional,
        lot_size=D("0.5") if fractional else D(5) if bits(6, 3) == 7 else D(1),
        min_qty=D(3) if bits(9, 3) == 7 else D(0),
        sector=draw(st.sampled_from([None, "tech", "energy"])),
        adv=draw(maybe(st.integers(0, 2_000).map(D))),
    )


@st.composite
def working_st(draw: st.DrawFn, name: str) -> WorkingOrder:
    price = draw(cents(5_000, 15_000))
    return WorkingOrder(
        client_order_id=name,
        strategy=draw(st.sampled_from(["s1", "s2"])),
        symbol=draw(st.sampled_from(SYMBOLS)),
        side=draw(st.sampled_from([BUY, SELL])),
        remaining_qty=draw(st.integers(1, 20).map(D)),
        limit_price=None if draw(st.integers(0, 4)) == 4 else price,
        reference_price=price,
    )


@dataclass(frozen=True)
class Step:
    gap_ns: int
    intent: OrderIntent
    reference: Decimal


@st.composite
def steps_st(draw: st.DrawFn) -> list[Step]:
    steps: list[Step] = []
    for index in range(12 - draw(st.integers(0, 11))):  # long streams are the interesting ones
        if steps and draw(st.integers(0, 3)) == 0:  # a strategy repeating itself
            last = steps[-1]
            steps.append(Step(draw(st.integers(0, 2_000)), last.intent, last.reference))
            continue
        reference = draw(cents(5_000, 15_000))
        kind = draw(st.sampled_from([OrderType.MARKET] * 4 + [OrderType.LIMIT] * 5 + [OrderType.STOP]))
        limit = reference + draw(cents(-1_500, 1_500)) if kind is OrderType.LIMIT else None
        odd = draw(st.integers(0, 9)) == 9
        qty = draw(st.sampled_from([D(0), D(-1), D("0.5"), D("2.5")]) if odd else st.integers(1, 40).map(D))
        intent = OrderIntent(
            intent_id=f"i{index}", strategy=draw(st.sampled_from(["s1", "s2"])),
            symbol=draw(st.sampled_from(SYMBOLS)), side=draw(st.sampled_from([BUY, SELL])), qty=qty,
            order_type=kind, limit_price=limit, ts_init=0,
        )
        steps.append(Step(draw(st.integers(0, 2_000)), intent, reference))
    return steps


@st.composite
def books_st(draw: st.DrawFn) -> tuple[AccountView, list[WorkingOrder], dict[str, Asset], dict[str, str]]:
    positions = {s: D(draw(st.integers(-30, 30))) for s in SYMBOLS if draw(st.booleans())}
    marks = {s: draw(cents(5_000, 15_000)) for s in SYMBOLS if draw(st.integers(0, 5)) > 0}
    acct = AccountView(
        equity=draw(cents(-50_000, 3_000_000).map(lambda e: e if e < 0 else 3_000 + e)),
        buying_power=draw(cents(0, 1_500_000) if draw(st.integers(0, 3)) == 3 else cents(2_000_000, 5_000_000)),
        positions=positions, marks=marks,
    )
    working = [draw(working_st(f"w{n}")) for n in range(draw(st.integers(0, 4)))]
    assets = {s: draw(assets_st(s)) for s in SYMBOLS}
    sectors = {s: sector for s in SYMBOLS if (sector := draw(st.sampled_from([None, "tech", "energy"])))}
    return acct, working, assets, sectors


@settings(max_examples=80, deadline=None)
@given(limits_st, books_st(), steps_st())
def test_every_decision_matches_the_oracle(
    limits: Limits,
    book: tuple[AccountView, list[WorkingOrder], dict[str, Asset], dict[str, str]],
    steps: list[Step],
) -> None:
    """Approved ⇔ no limit breached; a rejection names the first rule the inputs really breach."""
    acct, working, assets, sectors = book
    checker, oracle, now = PreTradeChecker(horizon_ns=0), Oracle(), 0  # horizon 0: prune as hard as allowed
    for number, step in enumerate(steps):
        now += step.gap_ns
        intent, asset = step.intent, assets[step.intent.symbol]
        result = checker.check(intent, step.reference, now, limits, asset, acct, working, sectors=sectors)
        expected = oracle.first_violation(intent, step.reference, now, limits, asset, acct, working, sectors)
        if isinstance(result, Rejection):
            assert result.code in REASON_CODES
            assert result.code == expected, (result, expected)
            assert result.detail and all(isinstance(v, str) for v in result.inputs.values())
            continue
        assert expected is None, (expected, result)
        assert result.inputs["qty"] == str(intent.qty) and result.inputs["reference_price"] == str(step.reference)
        assert D(result.inputs["notional"]) == intent.qty * step.reference
        sells = sum((w.remaining_qty for w in working if w.symbol == intent.symbol and w.side is SELL), D(0))
        opens_short = intent.side is SELL and intent.qty > max(acct.positions.get(intent.symbol, D(0)) - sells, D(0))
        assert ("short_qty" in result.inputs) == opens_short
        checker.record_approved(intent, now)
        oracle.approved.append((now, intent))
        working = [*working, WorkingOrder(
            client_order_id=f"n{number}", strategy=intent.strategy, symbol=intent.symbol, side=intent.side,
            remaining_qty=intent.qty, limit_price=intent.limit_price, reference_price=step.reference,
        )]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 400), st.integers(0, 400))
def test_rolling_state_stays_bounded(seed: int, rate_window: int, duplicate_window: int) -> None:
    """Long streams: the checker holds exactly the approvals and cancels still inside the longest window."""
    rng = random.Random(seed)
    limits = Limits(rate_window_ns=rate_window, duplicate_window_ns=duplicate_window, max_orders_per_window=10**6,
                    max_cancels_per_window=10**6)
    horizon = max(rate_window, duplicate_window)
    checker = PreTradeChecker(horizon_ns=1)
    checker.check_cancel(0, limits)  # the checker learns the windows
    live: deque[int] = deque()  # the events still inside the horizon, counted the plain way
    now = peak = 0
    intents = [order(str(1 + n % 7), strategy=f"s{n % 3}") for n in range(21)]
    for n in range(1_000):
        now += rng.choice((0, 1, 3, 10, 50))
        if rng.random() < 0.5:
            checker.record_approved(intents[n % 21], now)
        else:
            checker.record_cancel(now)
        live.append(now)
        while now - live[0] >= horizon:
            live.popleft()
        sizes = checker.retained()
        assert sizes["approvals"] + sizes["cancels"] == len(live)
        assert sizes["strategies"] <= 3 and sizes["streams"] <= 3
        assert sizes["duplicate_keys"] <= min(sizes["streams"], sizes["approvals"])
        peak = max(peak, len(live))
    assert peak <= horizon + 1 or peak < 1_000  # never the whole stream unless the window spans it


def test_reason_codes_are_exported_and_distinct() -> None:
    assert len(set(CHECK_ORDER)) == len(CHECK_ORDER)
    assert {*CHECK_ORDER, CANCEL_RATE} == REASON_CODES
    assert all(getattr(pretrade, name) == name for name in REASON_CODES)
    assert {f.name for f in fields(Limits)} >= {"max_order_qty", "rate_window_ns", "max_adv_participation_pct"}
