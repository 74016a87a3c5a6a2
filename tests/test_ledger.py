"""The settlement ledger: properties over random fill streams (hypothesis)."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from actors.settlement import Ledger
from engine.messages import Fill, Side

prices = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1000"), places=2)
qtys = st.integers(min_value=1, max_value=500).map(Decimal)
fills = st.lists(
    st.tuples(
        st.sampled_from(["AAA", "BBB"]),
        st.sampled_from(list(Side)),
        qtys,
        prices,
        st.sampled_from([Decimal(0), Decimal("0.01")]),
    ),
    max_size=60,
)


def make(i: int, symbol: str, side: Side, qty: Decimal, price: Decimal, fee: Decimal) -> Fill:
    return Fill(
        client_order_id=f"c{i}",
        venue_order_id=f"v{i}",
        execution_id=f"e{i}",
        intent_id=f"i{i}",
        strategy="s",
        symbol=symbol,
        side=side,
        qty=qty,
        price=price,
        fee=fee * qty,
        ts_event=i,
        ts_recv=i,
    )


@settings(max_examples=300, deadline=None)
@given(fills)
def test_positions_and_cash_are_the_sum_of_the_fills(
    stream: list[tuple[str, Side, Decimal, Decimal, Decimal]],
) -> None:
    ledger = Ledger(Decimal(1000))
    made = [make(i, *f) for i, f in enumerate(stream)]
    for fill in made:
        assert ledger.apply(fill)
    for symbol in ("AAA", "BBB"):
        expected = sum((f.qty * f.side.sign for f in made if f.symbol == symbol), Decimal(0))
        position = ledger.positions.get(symbol)
        assert (position.qty if position else Decimal(0)) == expected
        if position is not None:
            assert sum((lot[0] for lot in position.lots), Decimal(0)) == expected
            assert all((lot[0] > 0) == (expected > 0) for lot in position.lots)
    assert ledger.cash == Decimal(1000) - sum(
        (f.qty * f.side.sign * f.price + f.fee for f in made), Decimal(0)
    )
    assert ledger.fees == sum((f.fee for f in made), Decimal(0))


@settings(max_examples=300, deadline=None)
@given(fills)
def test_flat_books_have_realised_exactly_the_cash_change(
    stream: list[tuple[str, Side, Decimal, Decimal, Decimal]],
) -> None:
    ledger = Ledger(Decimal(0))
    made = [make(i, *f) for i, f in enumerate(stream)]
    # Close every position at the last price seen, so the book ends flat.
    for fill in made:
        ledger.apply(fill)
    n = len(made)
    for symbol, position in list(ledger.positions.items()):
        if position.qty:
            last = next(f.price for f in reversed(made) if f.symbol == symbol)
            side = Side.SELL if position.qty > 0 else Side.BUY
            ledger.apply(make(n, symbol, side, abs(position.qty), last, Decimal(0)))
            n += 1
    assert all(p.qty == 0 for p in ledger.positions.values())
    # Flat: every dollar that left or entered the account is realised P&L (net of fees).
    assert ledger.realized_pnl == ledger.cash


def test_a_duplicated_execution_is_booked_once() -> None:
    ledger = Ledger(Decimal(100))
    fill = make(1, "AAA", Side.BUY, Decimal(2), Decimal("10.5"), Decimal(0))
    assert ledger.apply(fill)
    assert not ledger.apply(fill)
    assert ledger.positions["AAA"].qty == 2 and ledger.cash == Decimal("79.0") and ledger.fills == 1


def test_fifo_lots_and_flips() -> None:
    ledger = Ledger(Decimal(0))
    ledger.apply(make(1, "AAA", Side.BUY, Decimal(10), Decimal(10), Decimal(0)))
    ledger.apply(make(2, "AAA", Side.BUY, Decimal(10), Decimal(12), Decimal(0)))
    assert ledger.positions["AAA"].avg_price == Decimal(11)
    ledger.apply(
        make(3, "AAA", Side.SELL, Decimal(25), Decimal(13), Decimal(0))
    )  # close 10 at +3, 10 at +1, open 5 short
    assert ledger.realized_pnl == Decimal(40)
    assert ledger.positions["AAA"].qty == -5 and ledger.positions["AAA"].avg_price == Decimal(13)
    ledger.apply(make(4, "AAA", Side.BUY, Decimal(5), Decimal(12), Decimal(0)))  # short covered 1 lower
    assert ledger.realized_pnl == Decimal(45) and ledger.positions["AAA"].qty == 0
