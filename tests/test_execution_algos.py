"""Execution algorithms (actors/execution): TWAP, VWAP, the limit chaser, emulated brackets.

Each algorithm is a pure state machine, driven here by a synthetic clock and a synthetic
venue (:class:`Harness`): the venue takes the intents and cancels the algorithm returns,
and sends back fills, status updates and risk rejections the way the order manager
forwards them to a strategy (intent id and client order id filled in).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import ROUND_FLOOR, Decimal
from typing import Generic, TypeVar
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.execution import (
    TWAP,
    Actions,
    Bracket,
    ExecutionAlgo,
    LimitChaser,
    OnExhausted,
    TakeProfitMode,
    VolumeProfile,
    VWAPSchedule,
    vwap_steps,
)
from engine.messages import (
    BestBidOffer,
    Fill,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RiskRejected,
    Side,
    TradeTick,
)
from simulations.volume_profile import SHARED_TICKS, volume_profile

S = 1_000_000_000
D = Decimal
NY = ZoneInfo("America/New_York")
DAY = dt.date(2013, 10, 10)


def at(hour: int, minute: int = 0, second: int = 0, day: dt.date = DAY) -> int:
    return int(dt.datetime.combine(day, dt.time(hour, minute, second), NY).timestamp()) * S


def id_maker(prefix: str = "algo") -> Callable[[], str]:
    counter = iter(range(1, 1_000_000))
    return lambda: f"{prefix}-{next(counter)}"


@dataclass
class VenueOrder:
    intent: OrderIntent
    client_order_id: str
    filled: Decimal = field(default_factory=Decimal)
    open: bool = True
    cancel_requested: bool = False


A = TypeVar("A", bound=ExecutionAlgo)


class Harness(Generic[A]):
    """A synthetic clock and venue around one algorithm: applies its Actions, reports back."""

    def __init__(self, algo: A, now: int = 0, symbol: str = "IBM") -> None:
        self.algo = algo
        self.now = now
        self.symbol = symbol
        self.orders: dict[str, VenueOrder] = {}
        self.sent: list[OrderIntent] = []
        self.cancels: list[str] = []
        self.late: list[Fill] = []
        self.last = Actions()
        self.seq = 0
        self.max_open = 0

    # -------------------------------------------------- the algorithm's side

    def apply(self, actions: Actions) -> Actions:
        assert actions is not None
        self.last = actions
        for intent in actions.intents:
            assert intent.intent_id not in self.orders
            self.sent.append(intent)
            self.orders[intent.intent_id] = VenueOrder(intent, f"c-{len(self.orders) + 1}")
        for intent_id in actions.cancels:
            self.cancels.append(intent_id)
            self.orders[intent_id].cancel_requested = True
        self.max_open = max(self.max_open, len(self.open_orders()))
        return actions

    def start(self) -> Actions:
        return self.apply(self.algo.start(self.now))

    def timer(self, at_ns: int | None = None) -> Actions:
        target = self.last.next_timer_ns if at_ns is None else at_ns
        assert target is not None
        self.now = max(self.now, target)
        return self.apply(self.algo.on_timer(self.now))

    def quote(self, bid: str | Decimal, ask: str | Decimal) -> Actions:
        bbo = BestBidOffer(
            symbol=self.symbol,
            bid_price=D(bid),
            bid_size=D(100),
            ask_price=D(ask),
            ask_size=D(100),
            provider="test",
            ts_event=self.now,
            ts_init=self.now,
        )
        return self.apply(self.algo.on_bbo(bbo, self.now))

    def trade(self, price: str) -> Actions:
        tick = TradeTick(
            symbol=self.symbol,
            exchange="D",
            price=D(price),
            size=D(100),
            suspicious=False,
            provider="test",
            ts_event=self.now,
            ts_recv=self.now,
        )
        return self.apply(self.algo.on_trade(tick, self.now))

    # -------------------------------------------------- the venue's side

    def open_orders(self) -> list[VenueOrder]:
        return [o for o in self.orders.values() if o.open]

    def _update(self, order: VenueOrder, status: OrderStatus) -> Actions:
        update = OrderUpdate(
            client_order_id=order.client_order_id,
            venue_order_id=f"v-{order.client_order_id}",
            status=status,
            filled_qty=order.filled,
            intent_id=order.intent.intent_id,
            strategy=order.intent.strategy,
            ts_event=self.now,
            ts_recv=self.now,
        )
        return self.apply(self.algo.on_update(update, self.now))

    def fill(self, intent_id: str, qty: Decimal | str | int, price: str = "10", deliver: bool = True) -> Actions:
        order = self.orders[intent_id]
        qty = D(qty)
        assert order.open and order.filled + qty <= order.intent.qty
        order.filled += qty
        self.seq += 1
        fill = Fill(
            client_order_id=order.client_order_id,
            venue_order_id=f"v-{order.client_order_id}",
            execution_id=f"x-{self.seq}",
            intent_id=intent_id,
            strategy=order.intent.strategy,
            symbol=order.intent.symbol,
            side=order.intent.side,
            qty=qty,
            price=D(price),
            fee=D(0),
            ts_event=self.now,
            ts_recv=self.now,
        )
        if order.filled == order.intent.qty:
            order.open = False
        if not deliver:
            self.late.append(fill)
            return self.last
        actions = self.apply(self.algo.on_fill(fill, self.now))
        if not order.open:
            after = self._update(order, OrderStatus.FILLED)
            actions = Actions(
                [*actions.intents, *after.intents],
                [*actions.cancels, *after.cancels],
                after.next_timer_ns,
                after.done,
                after.reason,
            )
            self.last = actions
        return actions

    def deliver_late(self) -> Actions:
        actions = self.last
        while self.late:
            fill = self.late.pop(0)
            actions = self.apply(self.algo.on_fill(fill, self.now))
        return actions

    def confirm_cancel(self, intent_id: str) -> Actions:
        order = self.orders[intent_id]
        assert order.open
        order.open = False
        return self._update(order, OrderStatus.CANCELED)

    def venue_status(self, intent_id: str, status: OrderStatus) -> Actions:
        order = self.orders[intent_id]
        order.open = False
        return self._update(order, status)

    def reject(self, intent_id: str, reason: str = "MAX_ORDER_QTY") -> Actions:
        order = self.orders[intent_id]
        order.open = False
        rejection = RiskRejected(
            intent_id=intent_id,
            strategy=order.intent.strategy,
            symbol=order.intent.symbol,
            reason=reason,
            detail="test",
            inputs={},
            ts_init=self.now,
        )
        return self.apply(self.algo.on_rejected(rejection, self.now))

    # -------------------------------------------------- venue truth

    def executed(self) -> Decimal:
        return sum((o.filled for o in self.orders.values()), D(0))

    def committed(self) -> Decimal:
        """Filled + in flight, as the venue knows it: what could still end up executed."""
        return sum((o.intent.qty if o.open else o.filled for o in self.orders.values()), D(0))


def twap(total: str = "1003", slices: int = 4, lot: str = "1", limit_offset: Decimal | None = None) -> TWAP:
    return TWAP(
        "IBM",
        Side.BUY,
        D(total),
        at(10),
        at(11),
        slices,
        lot=D(lot),
        strategy="s",
        make_intent_id=id_maker(),
        limit_offset=limit_offset,
    )


# ---------------------------------------------------------------- TWAP


def test_twap_sends_equal_slices_on_its_clock_with_the_remainder_last() -> None:
    h = Harness(twap(), now=at(10))
    first = h.start()
    assert [i.qty for i in first.intents] == [D(250)]
    assert first.intents[0].order_type is OrderType.MARKET and first.intents[0].strategy == "s"
    assert first.next_timer_ns == at(10, 15)
    for expected_qty, expected_next in ((250, at(10, 30)), (250, at(10, 45)), (253, at(11))):
        done = h.fill(h.sent[-1].intent_id, h.sent[-1].qty)
        assert not done.intents and not done.done
        actions = h.timer()
        assert [i.qty for i in actions.intents] == [D(expected_qty)]
        assert actions.next_timer_ns == expected_next
    final = h.fill(h.sent[-1].intent_id, h.sent[-1].qty)
    assert final.done and "filled 1003 of 1003" in final.reason and final.next_timer_ns is None
    assert [i.ts_init for i in h.sent] == [at(10), at(10, 15), at(10, 30), at(10, 45)]


def test_twap_rounds_slices_to_the_lot() -> None:
    h = Harness(twap(total="1000", slices=3, lot="100"), now=at(10))
    h.start()
    for _ in range(2):
        h.fill(h.sent[-1].intent_id, h.sent[-1].qty)
        h.timer()
    assert [i.qty for i in h.sent] == [D(300), D(300), D(400)]


def test_twap_catches_up_an_under_filled_slice_after_the_cancel_confirms() -> None:
    h = Harness(twap(total="1000", slices=4), now=at(10))
    h.start()
    first = h.sent[0].intent_id
    h.fill(first, 100)
    boundary = h.timer()
    assert boundary.cancels == [first] and not boundary.intents  # never two children at once
    caught_up = h.confirm_cancel(first)
    assert [i.qty for i in caught_up.intents] == [D(400)]  # 500 due by slice 2, 100 done


def test_twap_counts_a_fill_still_on_its_way_and_never_over_fills() -> None:
    h = Harness(twap(total="1000", slices=4), now=at(10))
    h.start()
    first = h.sent[0].intent_id
    h.fill(first, 100)
    h.fill(first, 50, deliver=False)  # executed at the venue, the Fill not here yet
    h.timer()
    resent = h.confirm_cancel(first)  # "canceled, 150 filled"
    assert [i.qty for i in resent.intents] == [D(350)]
    h.deliver_late()
    assert h.algo.filled_qty == D(150)
    assert h.committed() <= D(1000)


def test_twap_stops_at_the_end_and_reports_the_unfilled_remainder() -> None:
    h = Harness(twap(total="400", slices=2, limit_offset=D("0.02")), now=at(10))
    waiting = h.start()
    assert not waiting.intents and "quote" in waiting.reason  # a limit child needs a price
    priced = h.quote("10.00", "10.04")
    assert [(i.order_type, i.limit_price, i.qty) for i in priced.intents] == [(OrderType.LIMIT, D("10.06"), D(200))]
    h.fill(h.sent[0].intent_id, 120)
    h.timer()  # 10:30: cancel slice 0
    h.confirm_cancel(h.sent[0].intent_id)
    assert h.sent[-1].qty == D(280)
    assert h.last.next_timer_ns == at(11)
    stopping = h.timer()
    assert stopping.cancels == [h.sent[-1].intent_id] and not stopping.done
    done = h.confirm_cancel(h.sent[-1].intent_id)
    assert done.done and "280 unfilled" in done.reason
    assert h.algo.unfilled_qty == D(280)


def test_twap_does_not_retry_a_refused_child_at_once() -> None:
    h = Harness(twap(total="1000", slices=4), now=at(10))
    h.start()
    refused = h.reject(h.sent[0].intent_id)
    assert not refused.intents and refused.next_timer_ns == at(10, 15)
    caught_up = h.timer()
    assert [i.qty for i in caught_up.intents] == [D(500)]


def test_twap_waits_for_its_start_time() -> None:
    h = Harness(twap(), now=at(9, 59))
    early = h.start()
    assert not early.intents and early.next_timer_ns == at(10)
    assert [i.qty for i in h.timer().intents] == [D(250)]


_twap_events = st.lists(
    st.one_of(
        st.tuples(st.just("fill"), st.integers(1, 100)),
        st.tuples(st.just("late_fill"), st.integers(1, 100)),
        st.tuples(st.just("tick"), st.integers(1, 20 * 60)),
        st.tuples(st.just("confirm"), st.just(0)),
        st.tuples(st.just("reject"), st.just(0)),
        st.tuples(st.just("deliver"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=_twap_events, slices=st.integers(1, 8), total=st.integers(1, 5000), lot=st.sampled_from([1, 10, 100]))
def test_twap_never_over_fills_whatever_the_venue_does(
    events: list[tuple[str, int]], slices: int, total: int, lot: int
) -> None:
    algo = TWAP("IBM", Side.SELL, D(total), at(10), at(11), slices, lot=D(lot), strategy="s", make_intent_id=id_maker())
    h = Harness(algo, now=at(10))
    h.start()

    def check() -> None:
        assert h.executed() <= D(total)
        assert h.committed() <= D(total)  # in flight + filled never beyond the total
        assert algo.filled_qty <= D(total)
        assert h.max_open <= 1

    for kind, n in events:
        open_orders = h.open_orders()
        if kind in ("fill", "late_fill") and open_orders:
            order = open_orders[0]
            left = order.intent.qty - order.filled
            qty = max(D(1), (left * n / 100).to_integral_value())
            h.fill(order.intent.intent_id, min(qty, left), deliver=kind == "fill")
        elif kind == "tick":
            h.timer(h.now + n * S)
        elif kind == "confirm":
            for order in open_orders:
                if order.cancel_requested:
                    h.confirm_cancel(order.intent.intent_id)
        elif kind == "reject" and open_orders and open_orders[0].filled == 0:
            h.reject(open_orders[0].intent.intent_id)
        elif kind == "deliver":
            h.deliver_late()
        check()
    # Drain: past the end, the venue confirms every cancel and delivers every fill.
    h.deliver_late()
    h.timer(max(h.now, at(11)))
    for order in h.open_orders():
        h.confirm_cancel(order.intent.intent_id)
    check()
    assert h.last.done
    assert algo.filled_qty == h.executed()
    assert len(h.sent) <= slices


# ---------------------------------------------------------------- VWAP


@pytest.fixture(scope="module")
def recorded_profiles() -> dict[str, VolumeProfile]:
    if not (SHARED_TICKS / "ibm").is_dir() or not (SHARED_TICKS / "bac").is_dir():
        pytest.skip(f"no shared recordings under {SHARED_TICKS}")
    return {symbol: volume_profile(SHARED_TICKS, symbol) for symbol in ("IBM", "BAC")}


@pytest.mark.parametrize("symbol", ["IBM", "BAC"])
def test_vwap_profile_from_recordings_sums_to_one_and_is_u_shaped(
    recorded_profiles: dict[str, VolumeProfile], symbol: str
) -> None:
    profile = recorded_profiles[symbol]
    fractions = profile.fractions
    assert sum(fractions) == 1
    assert len(fractions) == 13 and profile.days == 5  # 09:30-16:00 in 30 minutes, five recorded days
    midday = fractions[4:9]  # 11:30-14:00
    assert fractions[0] > max(midday) and fractions[-1] > max(midday)
    assert fractions[0] > 2 * min(midday) and fractions[-1] > 2 * min(midday)


def _trade(ts: int, size: int, suspicious: bool = False) -> TradeTick:
    return TradeTick(
        symbol="T",
        exchange="D",
        price=D(10),
        size=D(size),
        suspicious=suspicious,
        provider="test",
        ts_event=ts,
        ts_recv=ts,
    )


def test_vwap_profile_averages_normalised_days_and_keeps_to_the_session() -> None:
    day2 = DAY + dt.timedelta(days=1)
    trades = [
        _trade(at(9, 0), 10_000),  # pre-market: left out
        _trade(at(9, 30), 300),
        _trade(at(10, 29, 59), 100),
        _trade(at(12, 0), 5_000, suspicious=True),  # flagged by the feed: left out
        _trade(at(15, 59, 59), 400),
        _trade(at(16, 0), 50_000),  # closing auction print: left out
        _trade(at(9, 45, day=day2), 1_000),  # a heavier day weighs the same as a light one
        _trade(at(15, 30, day=day2), 1_000),
    ]
    profile = VolumeProfile.from_trades(trades, bucket_minutes=60)
    assert profile.days == 2 and len(profile.fractions) == 7  # 09:30-16:00 in hours: the last is 30 minutes
    # day 1: 400/800 in the first hour, 400/800 in the last; day 2: 1/2 and 1/2.
    assert profile.fractions[0] == D("0.5") and profile.fractions[-1] == D("0.5")
    assert sum(profile.fractions) == 1
    with pytest.raises(ValueError, match="no trade"):
        VolumeProfile.from_trades([_trade(at(8), 100)])


def _profile() -> VolumeProfile:
    weights = [D(w) for w in (16, 10, 8, 7, 6, 5, 4, 5, 4, 5, 5, 8, 17)]
    total = sum(weights, D(0))
    head = [w / total for w in weights[:-1]]
    return VolumeProfile((*head, 1 - sum(head, D(0))))


def test_vwap_schedule_follows_the_profile() -> None:
    profile = _profile()
    algo = VWAPSchedule(
        "IBM", Side.BUY, D(10_000), profile, at(9, 30), at(16), lot=D(1), strategy="s", make_intent_id=id_maker()
    )
    h = Harness(algo, now=at(9, 30))
    h.start()
    times = [at(9, 30)]
    while not h.last.done:
        h.fill(h.sent[-1].intent_id, h.sent[-1].qty)
        if not h.last.done:
            h.timer()
            times.append(h.now)
    sizes = [i.qty for i in h.sent]
    assert sum(sizes) == D(10_000) and len(sizes) == 13
    assert [i.ts_init for i in h.sent] == [at(9, 30) + k * 30 * 60 * S for k in range(13)]
    for size, fraction in zip(sizes, profile.fractions, strict=True):
        assert abs(size - D(10_000) * fraction) <= 1  # lot rounding only
    assert sizes[0] > sizes[6] < sizes[-1]


def test_vwap_schedule_renormalises_to_the_window() -> None:
    profile = _profile()
    f = profile.fractions
    steps = vwap_steps(D(1000), profile, at(10), at(11, 15), D(1))
    assert [t for t, _ in steps] == [at(10), at(10, 30), at(11)]
    weights = [f[1], f[2], f[3] / 2]  # the 11:00-11:30 bucket is half inside the window
    total = sum(weights, D(0))
    assert steps[0][1] == (D(1000) * weights[0] / total).to_integral_value(rounding=ROUND_FLOOR)
    assert steps[-1][1] == D(1000)
    with pytest.raises(ValueError, match="no volume"):
        vwap_steps(D(1000), profile, at(17), at(18), D(1))
    with pytest.raises(ValueError):
        VolumeProfile((D("0.5"), D("0.4")) + (D(0),) * 11)


# ---------------------------------------------------------------- chaser


def chaser(
    side: Side = Side.BUY,
    qty: str = "100",
    max_repegs: int = 3,
    on_exhausted: OnExhausted = OnExhausted.LEAVE,
    min_timeout_s: float | None = None,
) -> LimitChaser:
    return LimitChaser(
        "IBM",
        side,
        D(qty),
        max_repegs=max_repegs,
        base_timeout_s=1.0,
        max_timeout_s=4.0,
        min_timeout_s=min_timeout_s,
        tick=D("0.01"),
        on_exhausted=on_exhausted,
        strategy="s",
        make_intent_id=id_maker(),
    )


def test_chaser_rests_at_the_touch_and_repegs_when_it_moves_away() -> None:
    h = Harness(chaser(), now=at(10))
    assert "quote" in h.start().reason
    placed = h.quote("10.00", "10.02")
    assert [(i.order_type, i.limit_price, i.qty) for i in placed.intents] == [(OrderType.LIMIT, D("10.00"), D(100))]
    assert placed.next_timer_ns == at(10) + S
    towards = h.quote("9.99", "10.01")  # the bid fell under us: we are still the best, no chase
    assert not towards.cancels and not towards.intents
    away = h.quote("10.01", "10.03")
    assert away.cancels == [h.sent[0].intent_id] and not away.intents
    assert not h.quote("10.02", "10.04").intents  # no new child before the cancel is confirmed
    repeg = h.confirm_cancel(h.sent[0].intent_id)
    assert [(i.limit_price, i.qty) for i in repeg.intents] == [(D("10.02"), D(100))]  # the touch now
    assert h.max_open == 1


def test_chaser_sell_pegs_the_ask_and_repegs_on_timeout() -> None:
    h = Harness(chaser(side=Side.SELL), now=at(10))
    h.quote("10.00", "10.02")
    h.start()
    assert h.sent[0].limit_price == D("10.02") and h.sent[0].side is Side.SELL
    assert not h.timer(at(10) + S // 2).cancels  # called early: nothing
    expired = h.timer(at(10) + S)
    assert expired.cancels == [h.sent[0].intent_id] and "timeout" in expired.reason


def test_chaser_timeout_doubles_up_to_the_cap_and_shrinks_in_a_fast_market() -> None:
    h = Harness(chaser(max_repegs=4), now=at(10))
    h.quote("10.00", "10.02")
    h.start()
    for _ in range(4):
        h.timer()
        h.confirm_cancel(h.sent[-1].intent_id)
    assert h.algo.timeouts_ns == [1 * S, 2 * S, 4 * S, 4 * S, 4 * S]

    fast = Harness(chaser(max_repegs=4), now=at(10))
    fast.quote("10.00", "10.02")
    fast.start()
    for k in range(3):  # the bid ticks down three times within a second
        fast.now += S // 10
        fast.quote(D("9.99") - D("0.01") * k, "10.02")
    fast.timer()
    fast.confirm_cancel(fast.sent[-1].intent_id)
    # patience 2 s divided by 1 + 3 recent moves
    assert fast.algo.timeouts_ns == [S, S // 2]
    slow_floor = chaser(max_repegs=4, min_timeout_s=0.75)
    for k in range(10):
        slow_floor.on_bbo(_bbo(D("10.00") - D("0.01") * k, D("10.02"), at(10) + k), at(10) + k)
    assert slow_floor.timeout_ns(0, at(10) + 10) == int(0.75 * S)


def _bbo(bid: Decimal, ask: Decimal, now: int) -> BestBidOffer:
    return BestBidOffer(
        symbol="IBM",
        bid_price=bid,
        bid_size=D(1),
        ask_price=ask,
        ask_size=D(1),
        provider="t",
        ts_event=now,
        ts_init=now,
    )


@pytest.mark.parametrize("mode", [OnExhausted.LEAVE, OnExhausted.CROSS])
def test_chaser_stops_after_max_repegs(mode: OnExhausted) -> None:
    h = Harness(chaser(max_repegs=2, on_exhausted=mode), now=at(10))
    h.quote("10.00", "10.02")
    h.start()
    for _ in range(2):
        h.timer()
        last = h.confirm_cancel(h.sent[-1].intent_id)
    assert len(h.sent) == 3 and last.done and "exhausted" in last.reason
    final = h.sent[-1]
    assert final.limit_price == (D("10.00") if mode is OnExhausted.LEAVE else D("10.02"))
    assert h.orders[final.intent_id].open  # left working (or marketable), never cancelled by the chaser
    assert not h.quote("10.05", "10.07").intents and not h.last.cancels
    assert h.last.next_timer_ns is None
    after = h.fill(final.intent_id, 100)  # fills are still booked after done
    assert after.done and h.algo.filled_qty == D(100)


def test_chaser_partial_fill_shrinks_the_next_child() -> None:
    h = Harness(chaser(), now=at(10))
    h.quote("10.00", "10.02")
    h.start()
    h.fill(h.sent[0].intent_id, 30)
    h.quote("10.01", "10.03")
    h.fill(h.sent[0].intent_id, 10, deliver=False)  # executed while the cancel travels
    repeg = h.confirm_cancel(h.sent[0].intent_id)  # "canceled, 40 filled"
    assert [i.qty for i in repeg.intents] == [D(60)]
    h.deliver_late()
    done = h.fill(h.sent[1].intent_id, 60)
    assert done.done and "filled 100 of 100" in done.reason


def test_chaser_fill_beating_the_cancel_ends_it_without_a_new_child() -> None:
    h = Harness(chaser(), now=at(10))
    h.quote("10.00", "10.02")
    h.start()
    h.quote("10.01", "10.03")
    done = h.fill(h.sent[0].intent_id, 100)
    assert done.done and not done.intents and len(h.sent) == 1


@pytest.mark.parametrize("how", ["risk", "venue_rejected", "operator_cancel", "expired"])
def test_chaser_gives_up_when_a_child_is_refused_or_ended_by_someone_else(how: str) -> None:
    h = Harness(chaser(), now=at(10))
    h.quote("10.00", "10.02")
    h.start()
    child = h.sent[0].intent_id
    if how == "risk":
        end = h.reject(child)
    elif how == "venue_rejected":
        end = h.venue_status(child, OrderStatus.REJECTED)
    elif how == "operator_cancel":
        end = h.confirm_cancel(child)  # cancelled, but not by the chaser (a halt)
    else:
        end = h.venue_status(child, OrderStatus.EXPIRED)
    assert end.done and not end.intents and "ended" in end.reason and len(h.sent) == 1


_chaser_events = st.lists(
    st.one_of(
        st.tuples(st.just("quote"), st.integers(-3, 3)),
        st.tuples(st.just("tick"), st.integers(1, 3000)),
        st.tuples(st.just("confirm"), st.just(0)),
        st.tuples(st.just("fill"), st.integers(1, 100)),
        st.tuples(st.just("late_fill"), st.integers(1, 100)),
        st.tuples(st.just("deliver"), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    events=_chaser_events,
    max_repegs=st.integers(0, 6),
    mode=st.sampled_from(list(OnExhausted)),
    side=st.sampled_from(list(Side)),
)
def test_chaser_is_bounded_and_never_doubles_exposure(
    events: list[tuple[str, int]], max_repegs: int, mode: OnExhausted, side: Side
) -> None:
    algo = chaser(side=side, qty="500", max_repegs=max_repegs, on_exhausted=mode)
    h = Harness(algo, now=at(10))
    bid = D("10.00")
    h.quote(bid, bid + D("0.02"))
    h.start()

    def check() -> None:
        assert len(h.sent) <= max_repegs + 1
        assert h.max_open <= 1  # never two working children
        assert h.executed() <= D(500) and h.committed() <= D(500)

    for kind, n in events:
        open_orders = h.open_orders()
        if kind == "quote":
            bid += D("0.01") * n
            h.quote(bid, bid + D("0.02"))
        elif kind == "tick":
            h.timer(h.now + n * S // 1000)
        elif kind == "confirm":
            for order in open_orders:
                if order.cancel_requested:
                    h.confirm_cancel(order.intent.intent_id)
        elif kind in ("fill", "late_fill") and open_orders:
            order = open_orders[0]
            left = order.intent.qty - order.filled
            qty = min(left, max(D(1), (left * n / 100).to_integral_value()))
            h.fill(order.intent.intent_id, qty, deliver=kind == "fill")
        elif kind == "deliver":
            h.deliver_late()
        check()
    # Termination: with timers delivered and cancels confirmed, done within a bounded number of events.
    h.deliver_late()
    steps = 0
    while not h.last.done:
        steps += 1
        assert steps <= 2 * (max_repegs + 1) + 1, "the chaser did not terminate"
        pending = [o for o in h.open_orders() if o.cancel_requested]
        if pending:
            h.confirm_cancel(pending[0].intent.intent_id)
        else:
            h.timer()
        check()
    assert algo.filled_qty == h.executed()


# ---------------------------------------------------------------- brackets


def entry(side: Side = Side.BUY, qty: str = "100") -> OrderIntent:
    return OrderIntent(
        intent_id="s-entry",
        strategy="s",
        symbol="IBM",
        side=side,
        qty=D(qty),
        order_type=OrderType.LIMIT,
        limit_price=D("10.00"),
        ts_init=at(10),
    )


def bracket(
    side: Side = Side.BUY,
    *,
    native_brackets: bool = False,
    take_profit_mode: TakeProfitMode = TakeProfitMode.RESTING,
    max_exit_orders: int = 5,
) -> Bracket:
    stop, take = (D("9.50"), D("11.00")) if side is Side.BUY else (D("10.50"), D("9.00"))
    return Bracket(
        entry(side),
        stop,
        take,
        make_intent_id=id_maker("exit"),
        native_brackets=native_brackets,
        take_profit_mode=take_profit_mode,
        max_exit_orders=max_exit_orders,
    )


def test_bracket_is_emulated_unless_the_venue_has_native_brackets() -> None:
    assert bracket().venue_order_class() == "simple" and bracket().emulated
    native = bracket(native_brackets=True)
    assert native.venue_order_class() == "bracket"
    with pytest.raises(NotImplementedError):
        native.start(at(10))
    with pytest.raises(ValueError):
        Bracket(entry(), D("11"), D("10"), make_intent_id=id_maker())


def test_bracket_stop_fires_and_cancels_the_take_profit() -> None:
    h = Harness(bracket(), now=at(10))
    started = h.start()
    assert [i.intent_id for i in started.intents] == ["s-entry"]
    resting = h.fill("s-entry", 100)
    (take,) = resting.intents
    assert (take.side, take.order_type, take.limit_price, take.qty) == (Side.SELL, OrderType.LIMIT, D("11.00"), D(100))
    assert not h.quote("9.60", "9.62").intents  # above the stop
    fired = h.quote("9.50", "9.52")
    assert fired.cancels == [take.intent_id] and not fired.intents  # the market exit waits for the cancel
    exit_ = h.confirm_cancel(take.intent_id)
    (stop,) = exit_.intents
    assert (stop.side, stop.order_type, stop.qty) == (Side.SELL, OrderType.MARKET, D(100))
    done = h.fill(stop.intent_id, 100, price="9.49")
    assert done.done and done.reason.startswith("stop_loss") and h.max_open <= 2


def test_bracket_take_profit_fills_and_disarms_the_stop() -> None:
    h = Harness(bracket(), now=at(10))
    h.start()
    (take,) = h.fill("s-entry", 100).intents
    h.fill(take.intent_id, 40, price="11.00")
    assert not h.last.done
    done = h.fill(take.intent_id, 60, price="11.00")
    assert done.done and "take-profit filled" in done.reason
    after = h.quote("9.00", "9.02")
    assert not after.intents and not after.cancels


def test_bracket_stop_covers_what_a_partly_filled_take_profit_left() -> None:
    h = Harness(bracket(), now=at(10))
    h.start()
    (take,) = h.fill("s-entry", 100).intents
    h.fill(take.intent_id, 30, price="11.00")
    h.trade("9.40")  # a print through the stop fires it too
    assert h.last.cancels == [take.intent_id]
    (stop,) = h.confirm_cancel(take.intent_id).intents
    assert stop.qty == D(70)


def test_bracket_exits_are_sized_by_the_entry_fill() -> None:
    h = Harness(bracket(), now=at(10))
    h.start()
    assert not h.fill("s-entry", 40).intents  # entry still working: stop armed for 40, no resting exit yet
    (take,) = h.confirm_cancel("s-entry").intents  # entry ends with 40 filled
    assert take.qty == D(40)
    h.quote("9.40", "9.45")
    (stop,) = h.confirm_cancel(take.intent_id).intents
    assert stop.qty == D(40)


def test_bracket_stop_while_the_entry_works_cancels_it_and_exits_late_fills_too() -> None:
    h = Harness(bracket(), now=at(10))
    h.start()
    h.fill("s-entry", 40)
    fired = h.quote("9.45", "9.50")
    assert fired.cancels == ["s-entry"]
    (first_exit,) = fired.intents
    assert first_exit.qty == D(40)
    h.fill("s-entry", 10, deliver=False)  # the entry filled more while its cancel travelled
    h.confirm_cancel("s-entry")
    h.fill(first_exit.intent_id, 40)
    assert not h.last.done  # 10 more executed: waiting for that fill
    (second_exit,) = h.deliver_late().intents
    assert second_exit.qty == D(10) and h.algo.position == D(10)
    done = h.fill(second_exit.intent_id, 10)
    assert done.done and h.algo.position == 0


def test_bracket_virtual_take_profit_fires_on_the_touch() -> None:
    h = Harness(bracket(take_profit_mode=TakeProfitMode.VIRTUAL), now=at(10))
    h.start()
    assert not h.fill("s-entry", 100).intents  # nothing rests at the venue
    (take,) = h.quote("11.00", "11.02").intents
    assert (take.order_type, take.limit_price, take.qty) == (OrderType.LIMIT, D("11.00"), D(100))
    # It did not fill and the market fell to the stop: the stop outranks it.
    fired = h.quote("9.50", "9.52")
    assert fired.cancels == [take.intent_id]
    (stop,) = h.confirm_cancel(take.intent_id).intents
    assert stop.order_type is OrderType.MARKET and stop.qty == D(100)


def test_bracket_short_mirrors_the_triggers() -> None:
    h = Harness(bracket(side=Side.SELL), now=at(10))
    h.start()
    (take,) = h.fill("s-entry", 100).intents
    assert take.side is Side.BUY and take.limit_price == D("9.00")
    assert not h.quote("10.40", "10.49").intents and not h.last.cancels
    assert h.quote("10.45", "10.50").cancels == [take.intent_id]  # ask at the stop


def test_bracket_entry_unfilled_or_exits_refused_end_it() -> None:
    h = Harness(bracket(), now=at(10))
    h.start()
    gone = h.reject("s-entry")
    assert gone.done and "unfilled" in gone.reason
    h = Harness(bracket(max_exit_orders=2, take_profit_mode=TakeProfitMode.VIRTUAL), now=at(10))
    h.start()
    h.fill("s-entry", 100)
    h.quote("9.00", "9.02")
    h.reject(h.sent[-1].intent_id)
    gave_up = h.reject(h.sent[-1].intent_id)
    assert gave_up.done and "gave up" in gave_up.reason and "100 still open" in gave_up.reason
    assert len(h.sent) == 3
