"""The book's working-order indexes agree with a scan of every order, however records arrive."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.order_book import Book, BookOrder
from engine.messages import (
    Fill,
    Message,
    OrderReconciled,
    OrderStatus,
    OrderSubmitting,
    OrderType,
    OrderUpdate,
    Side,
    SubmitOrder,
    TimeInForce,
)

IDS = [f"k-{i}" for i in range(6)]


def _submitting(cid: str) -> OrderSubmitting:
    order = SubmitOrder(
        client_order_id=cid,
        intent_id=f"i-{cid}",
        symbol="SYNTH",
        side=Side.BUY,
        qty=Decimal(10),
        order_type=OrderType.MARKET,
        limit_price=None,
        time_in_force=TimeInForce.DAY,
        ts_init=1,
    )
    return OrderSubmitting(order=order, strategy="s", sequence=int(cid[2:]) + 1, ts_init=1)


def _record(kind: str, cid: str, status: OrderStatus, n: int) -> Message:
    if kind == "submit":
        return _submitting(cid)
    if kind == "update":
        return OrderUpdate(client_order_id=cid, venue_order_id=f"v-{cid}", status=status, ts_event=n, ts_recv=n)
    if kind == "reconciled":
        return OrderReconciled(
            client_order_id=cid, venue_order_id=f"v-{cid}", status=status, filled_qty=Decimal(0), reason="r", ts_init=n
        )
    return Fill(
        client_order_id=cid, venue_order_id=f"v-{cid}", execution_id=f"e-{n}", intent_id=f"i-{cid}",
        strategy="s", symbol="SYNTH", side=Side.BUY, qty=Decimal(1), price=Decimal("1.5"), fee=Decimal(0),
        ts_event=n, ts_recv=n,
    )


records = st.lists(
    st.tuples(
        st.sampled_from(["submit", "update", "reconciled", "fill"]),
        st.sampled_from(IDS),
        st.sampled_from(list(OrderStatus)),
    ),
    max_size=60,
)


def _scan(book: Book) -> tuple[list[str], list[str]]:
    working = [o for o in book.orders.values() if not o.status.is_terminal]
    return sorted(o.client_order_id for o in working), sorted(o.client_order_id for o in working if not o.acknowledged)


def _indexed(book: Book) -> tuple[list[str], list[str]]:
    def ids(orders: list[BookOrder]) -> list[str]:
        return sorted(o.client_order_id for o in orders)

    return ids(book.working()), ids(book.unacknowledged())


@settings(max_examples=300, deadline=None)
@given(records)
def test_indexes_match_a_full_scan_after_every_record_and_after_a_snapshot(
    stream: list[tuple[str, str, OrderStatus]],
) -> None:
    book = Book()
    for n, (kind, cid, status) in enumerate(stream, start=1):
        book.apply(n, _record(kind, cid, status, n))
        assert _indexed(book) == _scan(book)
        assert book.working_count == len(_scan(book)[0])
        assert book.has_unacknowledged == bool(_scan(book)[1])
    restored = Book.decode(book.encode())
    assert _indexed(restored) == _scan(book)


def test_a_new_order_is_working_and_unacknowledged_until_the_venue_speaks() -> None:
    book = Book()
    book.apply(1, _submitting("k-1"))
    assert [o.client_order_id for o in book.unacknowledged()] == ["k-1"]
    book.apply(2, _record("update", "k-1", OrderStatus.NEW, 2))
    assert book.unacknowledged() == [] and [o.client_order_id for o in book.working()] == ["k-1"]
    book.apply(3, _record("update", "k-1", OrderStatus.FILLED, 3))
    assert book.working() == [] and book.working_count == 0
