from decimal import Decimal
from pathlib import Path

import pytest

from adapters.lean_ticks import read_batches, read_events
from engine.errors import DataError
from engine.messages import ExchangeQuote, TradeTick
from simulations.sample_data import SAMPLE_FILES
from tests.helpers import write_lean_zip


def test_rows_become_exact_time_ordered_ticks(tmp_path: Path) -> None:
    quotes = write_lean_zip(
        tmp_path / "ibm" / "20131010_quote.zip",
        [
            (34200000, 1831500, 100, 0, 0, "P", 1, 0),
            (34200000, 0, 0, 1832500, 300, "N", 1, 0),
            (34200500, 1831600, 200, 0, 0, "Q", 1, 1),
        ],
    )
    trades = write_lean_zip(
        tmp_path / "ibm" / "20131010_trade.zip",
        [(34200000, 1832000, 50, "D", 0, 0), (34200100, 1832100, 5, "K", 0, 0)],
    )
    ticks = list(read_events([quotes, trades]))
    assert [type(t) for t in ticks] == [ExchangeQuote, ExchangeQuote, TradeTick, TradeTick, ExchangeQuote]
    first = ticks[0]
    assert isinstance(first, ExchangeQuote)
    assert first.symbol == "IBM" and first.national
    assert first.bid_price == Decimal("183.15") and first.bid_size == 100
    assert first.ask_price is None and first.ask_size is None
    # 09:30 New York on 10 Oct 2013 is 13:30 UTC (daylight saving time).
    assert first.ts_event == 1381411800 * 10**9
    assert ticks[2].price == Decimal("183.2")  # type: ignore[union-attr]
    assert ticks[-1].suspicious
    assert [t.ts_event for t in ticks] == sorted(t.ts_event for t in ticks)


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ((34200000, 1831500, 100, 0, 0, "P", 1), "7 fields"),
        ((34200000, "abc", 100, 0, 0, "P", 1, 0), "not an integer"),
        ((34200000, -5, 100, 0, 0, "P", 1, 0), "negative"),
        ((34200000, 1831500, 100, 0, 0, "P", 1, 7), "suspicious flag"),
    ],
)
def test_a_corrupt_row_names_file_and_line(tmp_path: Path, row: tuple[object, ...], problem: str) -> None:
    good = (34100000, 1831500, 100, 0, 0, "P", 1, 0)
    path = write_lean_zip(tmp_path / "ibm" / "20131010_quote.zip", [good, good, row])
    with pytest.raises(DataError) as info:
        list(read_events([path]))
    assert info.value.line == 3
    assert str(path) in str(info.value) and problem in str(info.value)


def test_time_going_backwards_is_an_error(tmp_path: Path) -> None:
    path = write_lean_zip(
        tmp_path / "x" / "20131010_trade.zip", [(2000, 100, 1, "D", 0, 0), (1000, 100, 1, "D", 0, 0)]
    )
    with pytest.raises(DataError, match="backwards"):
        list(read_events([path]))


def test_bad_file_names_and_archives(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a LEAN tick file"):
        list(read_events([tmp_path / "ticks.csv"]))
    with pytest.raises(DataError, match="no such file"):
        list(read_events([tmp_path / "ibm" / "20131010_quote.zip"]))
    broken = tmp_path / "ibm" / "20131011_quote.zip"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(DataError, match="zip"):
        list(read_events([broken]))


def test_a_truncated_archive_is_a_data_error(tmp_path: Path) -> None:
    data = SAMPLE_FILES[1].read_bytes()
    truncated = tmp_path / "ibm" / "20131010_trade.zip"
    truncated.parent.mkdir(parents=True)
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError):
        list(read_events([truncated]))


async def test_batches_stream_the_whole_sample_day_off_the_loop() -> None:
    total = 0
    sizes = []
    async for batch in read_batches(SAMPLE_FILES, batch_size=10_000):
        total += len(batch)
        sizes.append(len(batch))
    assert total == 127_843  # 105,428 quote rows + 22,415 trade rows of IBM on 2013-10-10
    assert max(sizes) == 10_000
