"""The Alpaca simulator's venue model, driven directly (no sockets) under a SimClock."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from adapters.alpaca import wire
from adapters.alpaca_sim.events import SimQuote, SimTrade
from adapters.alpaca_sim.state import VenueError, VenueSettings, VenueState
from engine.clock import SimClock

START_NS = int(dt.datetime(2024, 1, 2, 14, 40, tzinfo=dt.UTC).timestamp()) * 1_000_000_000
D = Decimal


def make_state(seed: int = 7, **settings: Any) -> tuple[VenueState, SimClock, list[wire.TradeUpdate]]:
    settings.setdefault("symbols", ("IBM", "AAA"))
    settings.setdefault("ack_latency_s", (0.0, 0.0))
    settings.setdefault("fill_latency_s", (0.0, 0.0))
    clock = SimClock(START_NS)
    state = VenueState(VenueSettings(**settings), clock, seed=seed)
    updates: list[wire.TradeUpdate] = []
    state.subscribe(updates.append)
    return state, clock, updates


def quote(state: VenueState, bid: str, ask: str, bid_size: int = 100, ask_size: int = 100,
          symbol: str = "IBM") -> None:
    state.on_quote(
        SimQuote(
            symbol=symbol,
            bid_exchange="N",
            bid_price=D(bid),
            bid_size=bid_size,
            ask_exchange="P",
            ask_price=D(ask),
            ask_size=ask_size,
            ts_ns=state.clock.time_ns(),
        )
    )


def submit(state: VenueState, side: str, qty: Any, type: str = "market", tif: str = "day",
           symbol: str = "IBM", **extra: Any) -> Any:
    return state.submit_order(
        wire.OrderRequest(
            symbol=symbol, side=side, type=type, time_in_force=tif, qty=D(str(qty)), **extra  # type: ignore[arg-type]
        )
    )


def events(updates: list[wire.TradeUpdate], order_id: str | None = None) -> list[str]:
    return [u.event for u in updates if order_id is None or u.order.id == order_id]


# ---------------------------------------------------------------- matching


def test_market_buy_fills_at_the_ask_and_books_position_and_cash() -> None:
    state, _, updates = make_state()
    quote(state, "100.00", "100.05", ask_size=500)
    order = submit(state, "buy", 100)
    assert order.status == "filled"
    assert events(updates) == ["new", "fill"]
    fill = updates[-1]
    assert fill.price == D("100.05") and fill.qty == D(100) and fill.position_qty == D(100)
    assert uuid.UUID(fill.execution_id or "").version == 4
    assert state.cash == D("100000") - D("10005")
    position = state.get_position("IBM")
    assert (position.qty, position.side, position.avg_entry_price) == (D(100), "long", D("100.05"))
    # The frame as it goes on the wire: decimals as strings.
    data = msgspec.json.decode(msgspec.json.encode(fill))
    assert data["price"] == "100.05" and data["qty"] == "100" and data["position_qty"] == "100"
    assert data["order"]["filled_qty"] == "100" and data["order"]["filled_avg_price"] == "100.05"


def test_partial_fills_take_the_displayed_size_once_per_quote() -> None:
    state, _, updates = make_state()
    quote(state, "100.00", "100.10", ask_size=300)
    order = submit(state, "buy", 500)
    assert (order.status, order.filled_qty) == ("partially_filled", D(300))
    quote(state, "100.00", "100.20", ask_size=100)
    assert order.filled_qty == D(400)
    quote(state, "100.00", "100.30", ask_size=1000)
    assert (order.status, order.filled_qty) == ("filled", D(500))
    assert events(updates) == ["new", "partial_fill", "partial_fill", "fill"]
    assert [u.qty for u in updates[1:]] == [D(300), D(100), D(100)]
    assert [u.position_qty for u in updates[1:]] == [D(300), D(400), D(500)]
    expected_avg = (D(300) * D("100.10") + D(100) * D("100.20") + D(100) * D("100.30")) / 500
    assert order.filled_avg_price == expected_avg.quantize(D("1e-9"))


def test_orders_share_a_quote_in_arrival_order() -> None:
    state, _, _ = make_state()
    quote(state, "99.90", "100.00", ask_size=300)
    first = submit(state, "buy", 200)
    second = submit(state, "buy", 200)
    assert (first.filled_qty, second.filled_qty) == (D(200), D(100))
    third = submit(state, "buy", 50)  # the quote's size is used up: waits for the next update
    assert third.filled_qty == 0 and third.status == "new"
    quote(state, "99.90", "100.01", ask_size=120)
    assert (second.filled_qty, third.filled_qty) == (D(200), D(20))


def test_limit_orders_trade_only_at_or_through_their_limit_at_the_quoted_price() -> None:
    state, _, _ = make_state()
    quote(state, "99.90", "100.10")
    buy = submit(state, "buy", 10, "limit", limit_price=D("100.00"))
    sell = submit(state, "sell", 10, "limit", tif="gtc", limit_price=D("100.50"))
    assert buy.status == sell.status == "new"
    quote(state, "99.95", "99.98")
    assert buy.status == "filled" and buy.filled_avg_price == D("99.98")
    quote(state, "100.60", "100.70")
    assert sell.status == "filled" and sell.filled_avg_price == D("100.60")


def test_stop_orders_trigger_on_the_quote_or_a_trade_print() -> None:
    state, clock, _ = make_state()
    quote(state, "99.90", "100.00", ask_size=1000, bid_size=1000)
    stop_buy = submit(state, "buy", 10, "stop", stop_price=D("101.00"))
    stop_sell = submit(state, "sell", 10, "stop", stop_price=D("99.00"))
    stop_limit = submit(state, "buy", 10, "stop_limit", stop_price=D("100.50"), limit_price=D("100.60"))
    assert stop_buy.status == stop_sell.status == stop_limit.status == "new"
    quote(state, "100.40", "100.70", ask_size=1000, bid_size=1000)
    assert stop_buy.status == "new"
    assert stop_limit.triggered and stop_limit.status == "new"  # triggered, but the ask is over the limit
    quote(state, "100.40", "100.55", ask_size=1000, bid_size=1000)
    assert stop_limit.status == "filled" and stop_limit.filled_avg_price == D("100.55")
    state.on_trade(SimTrade(symbol="IBM", trade_id=1, exchange="N", price=D("101.00"), size=100,
                            ts_ns=clock.time_ns()))
    assert stop_buy.status == "filled" and stop_buy.filled_avg_price == D("100.55")
    quote(state, "98.90", "99.00", ask_size=1000, bid_size=1000)
    assert stop_sell.status == "filled" and stop_sell.filled_avg_price == D("98.90")


def test_ioc_cancels_the_rest_and_fok_fills_all_or_nothing() -> None:
    state, _, updates = make_state()
    quote(state, "99.90", "100.00", ask_size=100)
    ioc = submit(state, "buy", 150, tif="ioc")
    assert (ioc.status, ioc.filled_qty) == ("canceled", D(100))
    assert events(updates, ioc.id) == ["new", "partial_fill", "canceled"]
    quote(state, "99.90", "100.00", ask_size=100)
    fok = submit(state, "buy", 150, tif="fok")
    assert (fok.status, fok.filled_qty) == ("canceled", D(0))
    fok_ok = submit(state, "buy", 100, tif="fok")
    assert fok_ok.status == "filled" and len(fok_ok.executions) == 1
    nothing = submit(state, "buy", 10, "limit", tif="ioc", limit_price=D("50"))
    assert nothing.status == "canceled" and nothing.filled_qty == 0


def test_orders_wait_for_a_quote_when_the_symbol_has_none_yet() -> None:
    state, _, _ = make_state()
    order = submit(state, "buy", 5, symbol="AAA")
    assert order.status == "new"
    quote(state, "10.00", "10.01", symbol="AAA")
    assert order.status == "filled"


# ---------------------------------------------------------------- risk


def test_insufficient_buying_power_is_403_with_the_extra_keys() -> None:
    state, _, _ = make_state()
    quote(state, "99.90", "100.00")
    with pytest.raises(VenueError) as refused:
        submit(state, "buy", 1001, "limit", limit_price=D("100.00"))
    exc = refused.value
    assert (exc.status, exc.code, exc.message) == (403, 40310000, "insufficient buying power")
    assert exc.body() == {
        "buying_power": "100000",
        "cost_basis": "100100",
        "code": 40310000,
        "message": "insufficient buying power",
    }
    assert not state.orders


def test_working_buy_orders_count_against_buying_power() -> None:
    state, _, _ = make_state()
    quote(state, "99.90", "100.00")
    submit(state, "buy", 600, "limit", limit_price=D("90"))  # rests: reserves 54,000
    assert state.buying_power() == D(46000)
    with pytest.raises(VenueError, match="insufficient buying power"):
        submit(state, "buy", 500, "limit", limit_price=D("95"))
    assert state.account().buying_power == D(46000)


def test_selling_what_is_held_needs_no_buying_power_and_shorts_do() -> None:
    state, _, _ = make_state(starting_cash=D(20000))
    quote(state, "99.90", "100.00", bid_size=1000, ask_size=1000)
    submit(state, "buy", 150)
    assert state.buying_power() < 5100
    sell = submit(state, "sell", 150, "limit", limit_price=D("200"))  # closes: allowed
    assert sell.status == "new"
    with pytest.raises(VenueError, match="insufficient buying power"):
        submit(state, "sell", 100, "limit", limit_price=D("200"))  # beyond the long: a short


def test_short_sales_of_non_shortable_assets_are_refused() -> None:
    state, _, _ = make_state(non_shortable=("IBM",))
    quote(state, "99.90", "100.00", bid_size=1000, ask_size=1000)
    with pytest.raises(VenueError) as refused:
        submit(state, "sell", 10)
    assert (refused.value.status, refused.value.message) == (403, "asset IBM is not shortable")
    submit(state, "buy", 100)
    with pytest.raises(VenueError) as refused:
        submit(state, "sell", 150)
    assert refused.value.status == 403
    assert refused.value.message == "insufficient qty available for order (requested: 150, available: 100)"
    assert refused.value.extra == {
        "available": "100",
        "existing_qty": "100",
        "held_for_orders": "0",
        "symbol": "IBM",
    }
    assert submit(state, "sell", 100).status == "filled"
    assert not state.asset("IBM").shortable and state.asset("AAA").shortable


def test_shortable_assets_can_be_sold_short_unless_the_account_may_not_short() -> None:
    state, _, updates = make_state()
    quote(state, "99.90", "100.00", bid_size=1000, ask_size=1000)
    sell = submit(state, "sell", 100)
    assert sell.status == "filled" and sell.position_intent == "sell_to_open"
    position = state.get_position("IBM")
    assert (position.qty, position.side) == (D(-100), "short")
    assert updates[-1].position_qty == D(-100)
    assert state.cash == D(100000) + D(9990)
    cover = submit(state, "buy", 100)
    assert cover.position_intent == "buy_to_close" and state.list_positions() == []
    blocked, _, _ = make_state(shorting_enabled=False)
    with pytest.raises(VenueError, match="account is not allowed to short"):
        submit(blocked, "sell", 1)


# ---------------------------------------------------------------- validation and ids


def test_client_order_ids_are_unique_over_the_whole_history_and_at_most_128_chars() -> None:
    state, _, _ = make_state()
    quote(state, "99.90", "100.00")
    first = submit(state, "buy", 1, "limit", limit_price=D("90"), client_order_id="abc")
    state.cancel_order(first.id)
    assert first.status == "canceled"
    with pytest.raises(VenueError) as refused:
        submit(state, "buy", 1, "limit", limit_price=D("90"), client_order_id="abc")
    assert (refused.value.status, refused.value.code) == (422, 40010001)
    assert refused.value.message == "client_order_id must be unique"
    assert len(state.orders) == 1
    with pytest.raises(VenueError) as too_long:
        submit(state, "buy", 1, client_order_id="x" * 129)
    assert too_long.value.status == 422
    assert submit(state, "buy", 1, client_order_id="y" * 128).client_order_id == "y" * 128
    generated = submit(state, "buy", 1)
    assert uuid.UUID(generated.client_order_id)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"type": "limit"}, "limit_price is required"),
        ({"type": "stop"}, "stop_price is required"),
        ({"qty": D(0)}, "qty must be > 0"),
        ({"qty": D("NaN")}, "qty must be > 0"),
        ({"qty": D("1.5"), "type": "limit", "limit_price": D(10)}, "fractional orders must be market"),
        ({"qty": D("1.5"), "time_in_force": "gtc"}, "fractional orders must be DAY"),
        ({"type": "limit", "limit_price": D("10.001")}, "sub-penny"),
        ({"type": "limit", "limit_price": D("0.12345")}, "sub-penny"),
        ({"symbol": "NOPE"}, 'asset "NOPE" not found'),
        ({"type": "trailing_stop", "trail_percent": D(1)}, "not supported"),
        ({"notional": D(100), "qty": None}, "notional orders are not supported"),
        ({"extended_hours": True}, "extended hours order must be DAY limit orders"),
    ],
)
def test_invalid_orders_are_422(extra: dict[str, Any], message: str) -> None:
    state, _, _ = make_state()
    fields: dict[str, Any] = {"symbol": "IBM", "side": "buy", "type": "market", "time_in_force": "day",
                              "qty": D(1)}
    fields.update(extra)
    with pytest.raises(VenueError, match=message) as refused:
        state.submit_order(wire.OrderRequest(**fields))
    assert refused.value.status == 422


def test_fractional_market_day_orders_and_sub_dollar_prices_are_accepted() -> None:
    state, _, _ = make_state()
    quote(state, "0.5000", "0.5001", symbol="AAA")
    assert submit(state, "buy", "0.5", symbol="AAA").filled_qty == D("0.5")
    assert submit(state, "buy", 1, "limit", symbol="AAA", limit_price=D("0.4999")).status == "new"


# ---------------------------------------------------------------- lifecycle with latency


def test_latency_model_drives_pending_new_new_and_fill_on_the_clock() -> None:
    state, clock, updates = make_state(ack_latency_s=(0.002, 0.002), fill_latency_s=(0.003, 0.003))
    quote(state, "99.90", "100.00")
    order = submit(state, "buy", 10)
    assert order.status == "pending_new" and updates == []
    clock.advance_to(START_NS + 1_999_999)
    assert order.status == "pending_new"
    clock.advance_to(START_NS + 2_000_000)
    assert order.status == "new" and events(updates) == ["new"]
    assert order.in_flight == D(10)  # matched at arrival, the report is in flight
    clock.advance_to(START_NS + 5_000_000)
    assert order.status == "filled" and order.filled_at == START_NS + 5_000_000
    assert order.created_at == order.submitted_at == START_NS
    assert order.updated_at == START_NS + 5_000_000


def test_pending_events_are_optional() -> None:
    state, clock, updates = make_state(ack_latency_s=(0.001, 0.001), emit_pending_events=True)
    order = submit(state, "buy", 10, "limit", limit_price=D("90"))
    assert events(updates) == ["pending_new"]
    clock.advance_to(START_NS + 1_000_000)
    state.cancel_order(order.id)
    assert order.status == "pending_cancel"
    clock.advance_to(START_NS + 2_000_000)
    assert events(updates) == ["pending_new", "new", "pending_cancel", "canceled"]


def test_cancel_is_204_style_async_and_can_lose_the_race_against_a_fill() -> None:
    state, clock, updates = make_state(ack_latency_s=(0.001, 0.001), fill_latency_s=(0.002, 0.002))
    quote(state, "99.90", "100.00", ask_size=100)
    order = submit(state, "buy", 300)
    clock.advance_to(START_NS + 1_000_000)  # acked, matched 100 in flight
    assert order.in_flight == D(100)
    state.cancel_order(order.id)
    assert order.status == "pending_cancel"
    state.cancel_order(order.id)  # a second cancel is harmless
    clock.advance_to(START_NS + 10_000_000)
    assert (order.status, order.filled_qty) == ("canceled", D(100))
    assert events(updates) == ["new", "partial_fill", "canceled"]
    assert updates[-1].timestamp is not None and order.canceled_at is not None
    with pytest.raises(VenueError) as refused:
        state.cancel_order(order.id)
    assert (refused.value.status, refused.value.code) == (422, 42210000)


def test_cancel_before_the_ack_means_the_order_never_works() -> None:
    state, clock, updates = make_state(ack_latency_s=(0.005, 0.005))
    quote(state, "99.90", "100.00")
    order = submit(state, "buy", 10)
    state.cancel_order(order.id)
    clock.advance_to(START_NS + 20_000_000)
    assert order.status == "canceled" and order.filled_qty == 0
    assert events(updates) == ["canceled"]


def test_unknown_and_malformed_order_ids() -> None:
    state, _, _ = make_state()
    with pytest.raises(VenueError) as missing:
        state.cancel_order(str(uuid.uuid4()))
    assert missing.value.body() == {"code": 40410000, "message": "order not found"}
    with pytest.raises(VenueError) as malformed:
        state.get_order("not-a-uuid")
    assert (malformed.value.status, malformed.value.code) == (422, 40010001)


def test_replace_creates_a_new_order_and_retires_the_old_one() -> None:
    state, clock, updates = make_state(ack_latency_s=(0.001, 0.001))
    quote(state, "99.90", "100.00")
    old = submit(state, "buy", 10, "limit", limit_price=D("95"), client_order_id="first")
    with pytest.raises(VenueError, match="not replaceable"):
        state.replace_order(old.id, wire.ReplaceRequest(limit_price=D("96")))  # still pending_new
    clock.advance_to(START_NS + 1_000_000)
    with pytest.raises(VenueError, match="order parameters are not changed") as same:
        state.replace_order(old.id, wire.ReplaceRequest(qty=D(10)))
    assert same.value.status == 403
    with pytest.raises(VenueError, match="client_order_id must be unique"):
        state.replace_order(old.id, wire.ReplaceRequest(qty=D(12), client_order_id="first"))
    new = state.replace_order(old.id, wire.ReplaceRequest(qty=D(12), limit_price=D("96")))
    assert new.id != old.id and new.replaces == old.id and new.status == "pending_new"
    assert (old.status, old.replaced_by) == ("replaced", new.id) and old.replaced_at is not None
    assert (new.qty, new.limit_price, new.client_order_id != "first") == (D(12), D(96), True)
    clock.advance_to(START_NS + 2_000_000)
    assert [(u.event, u.order.id) for u in updates] == [("new", old.id), ("replaced", old.id), ("new", new.id)]
    assert updates[1].order.status == "replaced" and updates[1].order.replaced_by == new.id
    with pytest.raises(VenueError, match="not replaceable"):
        state.replace_order(old.id, wire.ReplaceRequest(qty=D(5)))
    stop = submit(state, "buy", 1, "stop", stop_price=D(200))
    clock.advance_to(START_NS + 3_000_000)
    with pytest.raises(VenueError, match="limit_price cannot be set"):
        state.replace_order(stop.id, wire.ReplaceRequest(limit_price=D(1)))


def test_day_orders_expire_at_the_end_of_the_session_gtc_orders_stay() -> None:
    state, _, updates = make_state()
    quote(state, "99.90", "100.00")
    day = submit(state, "buy", 10, "limit", limit_price=D("90"))
    opg = submit(state, "buy", 10, "limit", tif="opg", limit_price=D("90"))
    gtc = submit(state, "buy", 10, "limit", tif="gtc", limit_price=D("90"))
    assert state.expire_day_orders() == 2
    assert (day.status, opg.status, gtc.status) == ("expired", "expired", "new")
    assert day.expired_at is not None and events(updates)[-2:] == ["expired", "expired"]


def test_reject_fault_rejects_asynchronously_at_the_ack() -> None:
    state, _, updates = make_state()
    state.faults.reject_next = 1
    order = submit(state, "buy", 10)
    assert order.status == "rejected" and order.failed_at is not None
    assert events(updates) == ["rejected"]
    assert submit(state, "buy", 10).status == "new"


def test_held_trade_updates_are_queued_then_delivered_or_discarded() -> None:
    state, _, updates = make_state()
    quote(state, "99.90", "100.00", ask_size=1000)
    state.faults.hold_trade_updates = True
    order = submit(state, "buy", 10)
    assert order.status == "filled" and updates == [] and state.faults.held_trade_updates == 2
    state.faults.hold_trade_updates = False
    assert events(updates) == ["new", "fill"]
    state.faults.hold_trade_updates = True
    submit(state, "buy", 10)
    assert state.faults.discard_held_trade_updates() == 2
    state.faults.reset()
    assert len(updates) == 2


# ---------------------------------------------------------------- queries, positions, account


def test_list_orders_filters_and_orders() -> None:
    state, clock, _ = make_state()
    quote(state, "99.90", "100.00", ask_size=1000)
    a = submit(state, "buy", 1)  # filled
    clock.advance_to(START_NS + 1_000)
    b = submit(state, "buy", 1, "limit", limit_price=D("90"))
    clock.advance_to(START_NS + 2_000)
    c = submit(state, "sell", 1, "limit", symbol="AAA", limit_price=D("90"))
    assert [o.id for o in state.list_orders()] == [c.id, b.id]
    assert [o.id for o in state.list_orders("closed")] == [a.id]
    assert [o.id for o in state.list_orders("all", direction="asc")] == [a.id, b.id, c.id]
    assert [o.id for o in state.list_orders("all", after_ns=START_NS)] == [c.id, b.id]
    assert [o.id for o in state.list_orders("all", until_ns=START_NS + 2_000)] == [b.id, a.id]
    assert [o.id for o in state.list_orders("all", limit=1)] == [c.id]
    assert [o.id for o in state.list_orders("all", symbols=["aaa"])] == [c.id]
    assert [o.id for o in state.list_orders("all", side="buy")] == [b.id, a.id]


def test_close_positions_by_qty_percentage_and_all() -> None:
    state, _, _ = make_state()
    quote(state, "99.90", "100.00", bid_size=1000, ask_size=1000)
    quote(state, "9.90", "10.00", bid_size=1000, ask_size=1000, symbol="AAA")
    submit(state, "buy", 100)
    submit(state, "sell", 50, symbol="AAA")
    assert state.close_position("IBM", percentage=D(25)).filled_qty == D(25)
    assert state.close_position("IBM", qty=D(25)).filled_qty == D(25)
    with pytest.raises(VenueError) as too_much:
        state.close_position("IBM", qty=D(500))
    assert too_much.value.status == 403
    with pytest.raises(VenueError) as missing:
        state.close_position("MSFT")
    assert missing.value.status == 404
    results = state.close_all_positions(cancel_orders=True)
    assert [(symbol, getattr(o, "side", None)) for symbol, o in results] == [("AAA", "buy"), ("IBM", "sell")]
    assert state.list_positions() == []


def test_account_values_follow_the_marks() -> None:
    state, _, _ = make_state()
    quote(state, "99.90", "100.00", ask_size=1000)
    submit(state, "buy", 100)
    quote(state, "109.90", "110.10")
    account = state.account()
    assert account.cash == D(90000)
    assert account.long_market_value == D(11000)
    assert account.equity == D(101000)
    assert account.buying_power == D(90000)
    position = state.get_position(state.asset("IBM").id)
    assert position.unrealized_pl == D(1000) and position.current_price == D(110)


def test_calendar_and_clock() -> None:
    state, _, _ = make_state(holidays=("2024-01-15",))
    days = state.calendar.days(dt.date(2024, 1, 12), dt.date(2024, 1, 17))
    assert [d.date for d in days] == ["2024-01-12", "2024-01-16", "2024-01-17"]
    assert (days[0].open, days[0].close) == ("09:30", "16:00")
    clock = state.market_clock()  # 2024-01-02 09:40 New York, a Tuesday
    assert clock.is_open is True
    assert clock.timestamp.startswith("2024-01-02T09:40:00") and clock.timestamp.endswith("-05:00")
    assert clock.next_close == "2024-01-02T16:00:00-05:00"
    assert clock.next_open == "2024-01-03T09:30:00-05:00"
    state.session_open = False  # the feed player ended the replayed session
    closed = state.market_clock()
    assert closed.is_open is False and closed.next_open == "2024-01-03T09:30:00-05:00"
    assert closed.next_close == "2024-01-03T16:00:00-05:00"
