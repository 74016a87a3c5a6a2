"""The ledger: properties over random fill streams (hypothesis), good faith, day trades, snapshots, the CLI."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors import settlement
from actors.ledger import AccountType, Ledger, SettleDate
from engine.clock import LiveClock
from engine.journal import Journal
from engine.messages import AccountBaseline, Fill, Side
from kestrel import journal_cli

D = Decimal
DAY_NS = 86_400_000_000_000
MON = dt.date(2026, 11, 23)

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


def make(i: int, symbol: str, side: Side, qty: Decimal, price: Decimal, fee: Decimal, ts: int | None = None) -> Fill:
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
        ts_event=i if ts is None else ts,
        ts_recv=i if ts is None else ts,
    )


# A settlement calendar of its own, independent of exchange_calendars: the fill's "day" is
# ts // DAY_NS days after MON, and it settles the next weekday (T+1 skipping Sat/Sun).
def day_of(ts: int) -> dt.date:
    return MON + dt.timedelta(days=ts // DAY_NS)


def next_weekday(day: dt.date) -> dt.date:
    day += dt.timedelta(days=1)
    while day.weekday() >= 5:
        day += dt.timedelta(days=1)
    return day


def t1(symbol: str, ts: int) -> dt.date:
    return next_weekday(day_of(ts))


def trade_day(symbol: str, ts: int) -> dt.date:
    return day_of(ts)


def t1_ledger(cash: Decimal, account_type: str = "cash", settle: SettleDate = t1) -> Ledger:
    return Ledger(cash, settle, account_type, trade_date=trade_day)


def at(day: dt.date, minute: int = 0) -> int:
    """A timestamp on ``day`` of the test calendar."""
    return (day - MON).days * DAY_NS + minute * 60_000_000_000


# ---------------------------------------------------------------- properties


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
        assert ledger.quantities().get(symbol, Decimal(0)) == expected
        if position is not None:
            assert sum((lot[0] for lot in position.lots), Decimal(0)) == expected
            assert all((lot[0] > 0) == (expected > 0) for lot in position.lots)
            assert position.fees == sum((f.fee for f in made if f.symbol == symbol), Decimal(0))
    assert ledger.cash == Decimal(1000) - sum((f.qty * f.side.sign * f.price + f.fee for f in made), Decimal(0))
    assert ledger.fees == sum((f.fee for f in made), Decimal(0))
    assert ledger.realized_pnl == sum((p.realized_pnl for p in ledger.positions.values()), Decimal(0))


# Fills spread over two weeks of the test calendar, for cash and margin accounts.
dated_fills = st.lists(
    st.tuples(st.sampled_from(["AAA", "BBB"]), st.sampled_from(list(Side)), qtys, prices, st.integers(0, 13)),
    max_size=40,
).map(lambda rows: sorted(rows, key=lambda r: r[4]))


@settings(max_examples=200, deadline=None)
@given(dated_fills, st.sampled_from(["cash", "margin"]), st.integers(0, 16))
def test_settled_cash_is_exactly_what_has_settled(
    stream: list[tuple[str, Side, Decimal, Decimal, int]], account_type: str, as_of_offset: int
) -> None:
    ledger = t1_ledger(D(50_000), account_type)
    made = [
        make(i, s, side, q, p, D("0.01"), at(MON + dt.timedelta(days=d), i))
        for i, (s, side, q, p, d) in enumerate(stream)
    ]
    for fill in made:
        ledger.apply(fill)
    as_of = MON + dt.timedelta(days=as_of_offset)
    settled = [f for f in made if t1(f.symbol, f.ts_event) <= as_of]
    unsettled = [f for f in made if t1(f.symbol, f.ts_event) > as_of]

    def effect(f: Fill) -> Decimal:
        return -(f.qty * f.side.sign * f.price + f.fee)

    assert ledger.settled_cash(as_of) == D(50_000) + sum((effect(f) for f in settled), D(0))
    # What has not settled is exactly the difference from total cash: nothing is counted twice or lost.
    assert ledger.cash - ledger.settled_cash(as_of) == sum((effect(f) for f in unsettled), D(0))
    # Before any fill settles, only the baseline; once all have, all of the cash.
    assert ledger.settled_cash(MON) == D(50_000)
    assert ledger.settled_cash(MON + dt.timedelta(days=30)) == ledger.cash
    # Restrictions never exceed the long position, and a margin account keeps none.
    for symbol, qty in ledger.gfv_restricted(as_of).items():
        assert D(0) < qty <= ledger.positions[symbol].qty
    if account_type == "margin":
        assert ledger.gfv_restricted(as_of) == {} and ledger.violations == []
    # The day-trade tracker: what is open today is at most the position, in its direction.
    for symbol, opened in ledger.opened_today(day_of(made[-1].ts_event) if made else MON).items():
        position = ledger.positions[symbol].qty
        assert (opened > 0) == (position > 0) and abs(opened) <= abs(position)


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


@settings(max_examples=150, deadline=None)
@given(dated_fills, st.sampled_from(["cash", "margin"]), st.integers(0, 40))
def test_a_snapshot_restarts_to_the_same_ledger(
    stream: list[tuple[str, Side, Decimal, Decimal, int]], account_type: str, cut: int
) -> None:
    made = [
        make(i, s, side, q, p, D("0.01"), at(MON + dt.timedelta(days=d), i))
        for i, (s, side, q, p, d) in enumerate(stream)
    ]
    cut = min(cut, len(made))
    straight = t1_ledger(D(20_000), account_type)
    for fill in made:
        straight.apply(fill)
    first = t1_ledger(D(20_000), account_type)
    for fill in made[:cut]:
        first.apply(fill)
    payload = first.encode()
    resumed = Ledger.decode(payload, t1, trade_date=trade_day)
    assert resumed.encode() == payload
    # Execution ids survive: what was booked before the snapshot is not booked again.
    assert all(not resumed.apply(fill) for fill in made[:cut])
    for fill in made[cut:]:
        resumed.apply(fill)
    assert resumed.encode() == straight.encode()
    last = MON + dt.timedelta(days=14)
    window = [last - dt.timedelta(days=k) for k in range(7)]
    assert resumed.state(1, last, window) == straight.state(1, last, window)


# ---------------------------------------------------------------- examples


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


def test_unrealised_pnl_and_equity_at_marks() -> None:
    ledger = Ledger(D(10_000))
    ledger.apply(make(1, "AAA", Side.BUY, D(10), D(100), D("0.1")))  # fee 1
    ledger.apply(make(2, "AAA", Side.BUY, D(10), D(110), D(0)))
    ledger.apply(make(3, "BBB", Side.SELL, D(5), D(50), D(0)))  # short 5 @ 50
    assert ledger.cash == D(10_000) - 1000 - 1 - 1100 + 250
    marks = {"AAA": D(120), "BBB": D(40)}
    # AAA: (120-100)*10 + (120-110)*10 = 300; BBB short: (40-50) * -5 = 50.
    assert ledger.unrealized_pnl(marks) == D(350)
    assert ledger.equity(marks) == ledger.cash + 20 * 120 - 5 * 40
    assert ledger.equity(marks) == D(10_000) - 1 + ledger.unrealized_pnl(marks)  # nothing realised but the fee
    with pytest.raises(KeyError):
        ledger.equity({"AAA": D(1)})


def test_the_settlement_module_still_exports_the_ledger() -> None:
    assert settlement.Ledger is Ledger
    assert Ledger(D(1)).account_type is AccountType.MARGIN
    with pytest.raises(ValueError):
        Ledger(D(1), account_type="portfolio-margin")


# ---------------------------------------------------------------- good faith


def test_buying_with_unsettled_proceeds_restricts_until_they_settle() -> None:
    tue, wed = MON + dt.timedelta(days=1), MON + dt.timedelta(days=2)
    ledger = t1_ledger(D(1000))
    ledger.apply(make(1, "X", Side.BUY, D(10), D(100), D(0), at(MON)))  # all the settled cash; settles Tue
    assert ledger.gfv_restricted(MON) == {}
    ledger.apply(make(2, "X", Side.SELL, D(10), D(100), D(0), at(tue)))  # paid for with settled cash: fine
    assert ledger.violations == []
    ledger.apply(make(3, "Y", Side.BUY, D(10), D(100), D(0), at(tue, 1)))  # with Tuesday's unsettled proceeds
    assert ledger.gfv_restricted(tue) == {"Y": D(10)}
    assert ledger.gfv_restricted(wed) == {}  # the proceeds settle Wednesday
    assert ledger.settled_cash(tue) == D(0) and ledger.settled_cash(wed) == D(0) and ledger.cash == D(0)
    ledger.apply(make(4, "Y", Side.SELL, D(4), D(101), D(0), at(tue, 2)))  # selling it the same day: a violation
    assert [(v.symbol, v.qty, v.trade_date) for v in ledger.violations] == [("Y", D(4), tue)]
    assert ledger.gfv_restricted(tue) == {"Y": D(6)}
    ledger.apply(make(5, "Y", Side.SELL, D(6), D(101), D(0), at(wed)))  # Wednesday: settled, fine
    assert len(ledger.violations) == 1 and ledger.gfv_restricted(wed) == {}
    # Risk reads the count in the account state: the last twelve months, then it drops out.
    assert ledger.state(at(wed), wed, [wed]).good_faith_violations == 1
    next_year = tue + dt.timedelta(days=366)
    assert ledger.state(at(wed), next_year, [next_year]).good_faith_violations == 0


def test_a_purchase_partly_paid_with_settled_cash_restricts_only_the_rest() -> None:
    ledger = t1_ledger(D(400))
    ledger.apply(make(1, "X", Side.SELL, D(6), D(100), D(0), at(MON)))  # short sale proceeds, unsettled until Tue
    ledger.apply(make(2, "Y", Side.BUY, D(10), D(100), D(0), at(MON, 1)))  # 400 settled + 600 unsettled
    assert ledger.gfv_restricted(MON) == {"Y": D(6)}
    # The 4 paid with settled cash may be sold; a fifth share is a violation of 1.
    ledger.apply(make(3, "Y", Side.SELL, D(4), D(100), D(0), at(MON, 2)))
    assert ledger.violations == []
    ledger.apply(make(4, "Y", Side.SELL, D(1), D(100), D(0), at(MON, 3)))
    assert [v.qty for v in ledger.violations] == [D(1)]
    assert ledger.gfv_restricted(MON) == {"Y": D(5)}


def test_restricted_quantity_rounds_up_to_the_fills_places() -> None:
    ledger = t1_ledger(D(100))
    ledger.apply(make(1, "X", Side.SELL, D(1), D(250), D(0), at(MON)))  # 250 unsettled
    ledger.apply(make(2, "Y", Side.BUY, D(3), D(100), D(0), at(MON, 1)))  # 100 settled, 200 unsettled: 2 shares
    assert ledger.gfv_restricted(MON) == {"Y": D(2)}
    ledger.apply(make(3, "Z", Side.BUY, D("0.5"), D(100), D(0), at(MON, 2)))  # 50 unsettled of 50: all of it
    assert ledger.gfv_restricted(MON) == {"Y": D(2), "Z": D("0.5")}
    ledger.apply(make(4, "W", Side.BUY, D(3), D(10), D(0), at(MON, 3)))  # nothing left to draw: a debit, not restricted
    assert "W" not in ledger.gfv_restricted(MON)


def test_settled_funds_committed_to_a_pending_purchase_are_not_free_twice() -> None:
    ledger = t1_ledger(D(1000))
    ledger.apply(make(1, "A", Side.BUY, D(6), D(100), D(0), at(MON)))  # 600 of the 1000, settles Tue
    ledger.apply(make(2, "A", Side.SELL, D(6), D(100), D(0), at(MON, 1)))  # 600 unsettled proceeds
    assert ledger.free_settled_funds(MON) == D(400)
    ledger.apply(make(3, "B", Side.BUY, D(8), D(100), D(0), at(MON, 2)))  # 400 settled + 400 unsettled
    assert ledger.gfv_restricted(MON) == {"B": D(4)}
    assert ledger.free_settled_funds(MON) == D(0)


def test_margin_accounts_keep_no_good_faith_restrictions() -> None:
    ledger = t1_ledger(D(1000), "margin")
    ledger.apply(make(1, "X", Side.SELL, D(10), D(100), D(0), at(MON)))
    ledger.apply(make(2, "Y", Side.BUY, D(10), D(100), D(0), at(MON, 1)))
    ledger.apply(make(3, "Y", Side.SELL, D(10), D(100), D(0), at(MON, 2)))
    assert ledger.gfv_restricted(MON) == {} and ledger.violations == []


def test_same_day_settlement_never_restricts() -> None:
    ledger = Ledger(D(100), account_type="cash")  # 24/7: T+0, proceeds settle at once
    ledger.apply(make(1, "BTCUSDT", Side.BUY, D(1), D(100), D(0)))
    ledger.apply(make(2, "BTCUSDT", Side.SELL, D(1), D(100), D(0)))
    ledger.apply(make(3, "ETHUSDT", Side.BUY, D(1), D(100), D(0)))
    assert ledger.gfv_restricted(dt.date(1970, 1, 1)) == {}


# ---------------------------------------------------------------- day trades


def test_day_trades_count_one_per_closing_fill_of_same_day_quantity() -> None:
    tue = MON + dt.timedelta(days=1)
    ledger = t1_ledger(D(100_000), "margin")
    ledger.apply(make(1, "X", Side.BUY, D(10), D(10), D(0), at(MON)))
    assert ledger.opened_today(MON) == {"X": D(10)}
    assert ledger.would_day_trade("X", Side.SELL, MON) and not ledger.would_day_trade("X", Side.BUY, MON)
    ledger.apply(make(2, "X", Side.SELL, D(3), D(10), D(0), at(MON, 1)))  # closes 3 opened today: 1 day trade
    ledger.apply(make(3, "X", Side.SELL, D(3), D(10), D(0), at(MON, 2)))  # another closing fill: 2
    assert ledger.opened_today(MON) == {"X": D(4)}
    assert ledger.day_trades_in_window(MON, [MON]) == 2
    # Overnight, the 4 left are no longer "today's": closing them is not a day trade.
    assert ledger.opened_today(tue) == {} and not ledger.would_day_trade("X", Side.SELL, tue)
    ledger.apply(make(4, "X", Side.BUY, D(2), D(10), D(0), at(tue)))  # opens 2 today on top of 4 overnight
    ledger.apply(make(5, "X", Side.SELL, D(1), D(10), D(0), at(tue, 1)))  # same-day quantity closes first
    assert ledger.opened_today(tue) == {"X": D(1)}
    ledger.apply(make(6, "X", Side.SELL, D(3), D(10), D(0), at(tue, 2)))  # 1 of today's, 2 overnight: one trade
    assert ledger.opened_today(tue) == {} and ledger.positions["X"].qty == D(2)
    ledger.apply(make(7, "X", Side.SELL, D(2), D(10), D(0), at(tue, 3)))  # overnight only: not a day trade
    assert ledger.day_trades_in_window(tue, [MON, tue]) == 4
    assert ledger.day_trades_in_window(tue, [tue]) == 2
    assert ledger.day_trades_in_window(MON, [MON, tue]) == 2  # nothing after the trade date counts


def test_a_flip_counts_once_and_opens_the_other_side_today() -> None:
    ledger = t1_ledger(D(100_000), "margin")
    ledger.apply(make(1, "X", Side.SELL, D(5), D(10), D(0), at(MON)))  # short 5 today
    ledger.apply(make(2, "X", Side.BUY, D(8), D(10), D(0), at(MON, 1)))  # covers 5 (a day trade), long 3
    assert ledger.opened_today(MON) == {"X": D(3)}
    assert ledger.day_trades_in_window(MON, [MON]) == 1
    ledger.apply(make(3, "X", Side.SELL, D(3), D(10), D(0), at(MON, 2)))
    assert ledger.day_trades_in_window(MON, [MON]) == 2 and ledger.opened_today(MON) == {}


def test_baseline_positions_were_not_opened_today() -> None:
    ledger = t1_ledger(D(0), "margin")
    ledger.set_baseline(D(5000), {"X": D(10), "Y": D(0)})
    assert ledger.quantities() == {"X": D(10)} and ledger.cash == ledger.settled_cash(MON) == D(5000)
    ledger.apply(make(1, "X", Side.SELL, D(10), D(10), D(0), at(MON)))
    assert ledger.day_trades == [] and ledger.opened_today(MON) == {}


def test_the_account_state_message() -> None:
    tue = MON + dt.timedelta(days=1)
    ledger = t1_ledger(D(1000))
    ledger.apply(make(1, "X", Side.BUY, D(10), D(100), D("0.1"), at(MON)))  # fee 1: cash -1, settled Tue
    ledger.apply(make(2, "X", Side.SELL, D(4), D(101), D(0), at(MON, 1)))
    state = ledger.state(123, MON, [MON])
    assert state.account_type == "cash" and state.ts_init == 123 and state.trade_date == "2026-11-23"
    assert state.cash == D(1000) - 1000 - 1 + 404 and state.settled_cash == D(1000)
    assert state.positions == {"X": D(6)} and state.avg_prices == {"X": D(100)}
    assert state.realized_pnl == D(4) - 1 and state.fees == D(1) and state.fills == 2
    assert state.opened_today == {"X": D(6)} and state.day_trades == 1 and state.gfv_restricted == {}
    assert ledger.state(124, tue, [MON, tue]).settled_cash == ledger.cash
    assert ledger.state(124, tue, [MON, tue]).opened_today == {}


# ---------------------------------------------------------------- `kestrel journal positions`


def test_journal_positions_shows_what_the_ledger_derives(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "journal.db"

    async def write() -> None:
        async with await Journal.open(path, LiveClock()) as journal:
            await journal.write(AccountBaseline(cash=D(1000), positions={"AAA": D(1)}, source="venue", ts_init=0))
            for fill in (
                make(1, "AAA", Side.BUY, D(10), D(10), D("0.01")),
                make(2, "AAA", Side.BUY, D(10), D(12), D(0)),
                make(3, "AAA", Side.SELL, D(5), D(13), D(0)),
                make(4, "BBB", Side.SELL, D(2), D(50), D(0)),
                make(5, "BBB", Side.BUY, D(2), D(45), D(0)),
            ):
                await journal.write(fill)

    asyncio.run(write())
    args = argparse.Namespace(journal_command="positions", path=path, json=True)
    assert journal_cli.cmd_journal(args) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])  # after the journal's log lines
    # The baseline lot (cost unknown: 0) is closed first, then 4 of the 10 @ 10.
    assert out["positions"] == {"AAA": "16"}
    assert out["cash"] == str(D(1000) - D("100.10") - 120 + 65 + 100 - 90)
    assert out["fees"] == "0.10" and out["fills"] == 5
    assert out["symbols"]["AAA"] == {
        "qty": "16",
        "avg_price": str((D(6) * 10 + D(10) * 12) / 16),
        "realized_pnl": str(D(13) + 4 * 3 - D("0.10")),
        "fees": "0.10",
    }
    assert out["symbols"]["BBB"]["qty"] == "0" and out["symbols"]["BBB"]["realized_pnl"] == "10"
    assert D(out["realized_pnl"]) == D(13) + 12 - D("0.10") + 10
    args.json = False
    assert journal_cli.cmd_journal(args) == 0
    lines = capsys.readouterr().out.splitlines()
    text = lines[next(i for i, line in enumerate(lines) if line.startswith("symbol")) :]
    assert text[0].split() == ["symbol", "qty", "avg", "cost", "realised", "P&L"]
    assert text[1].split()[:2] == ["AAA", "16"] and text[1].split()[3] == out["symbols"]["AAA"]["realized_pnl"]
    assert text[3].split() == ["cash", out["cash"]]
