"""Binance frame decoding and depth-book sync, on two real recordings and on synthetic sequences.

The recordings (``/work/shared/data/binance-ws``) are consecutive: the second file
continues the first (depth ``U`` and trade ids follow on), and only the first holds a
REST snapshot. Expected figures below were measured on the files with the standard
library's ``json`` (independently of the decoder) and are asserted as the real figures.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.binance.decode import BinanceDecodeError, BinanceDecoder
from adapters.binance.depth import DepthBook, DepthDiff
from engine.messages import ExchangeQuote, TradeTick

DATA = Path("/work/shared/data/binance-ws")
FILES = ("btcusdt_20240808.gz", "btcusdt_20240809.gz")
D = Decimal

pytestmark = pytest.mark.skipif(not (DATA / FILES[0]).exists(), reason="Binance recordings not available")


def read_recording(name: str) -> list[tuple[int, bytes]]:
    with gzip.open(DATA / name, "rb") as fh:
        rows = []
        for line in fh:
            ts, frame = line.rstrip(b"\n").split(b" ", 1)
            rows.append((int(ts), frame))
        return rows


@pytest.fixture(scope="module")
def day1() -> list[tuple[int, bytes]]:
    return read_recording(FILES[0])


@pytest.fixture(scope="module")
def day2() -> list[tuple[int, bytes]]:
    return read_recording(FILES[1])


def synced(book: DepthBook) -> bool:
    """``book.synced`` read through a call, so mypy does not narrow it across state changes."""
    return book.synced


def needs_resync(book: DepthBook) -> bool:
    return book.needs_resync


def kinds(rows: list[tuple[int, bytes]]) -> dict[str, int]:
    """Frame kinds counted with the standard library, as an independent reference."""
    counts: dict[str, int] = {}
    for _, frame in rows:
        obj = json.loads(frame)
        kind = obj["stream"].split("@", 1)[1] if "stream" in obj else "snapshot"
        counts[kind] = counts.get(kind, 0) + 1
    return counts


# ---------------------------------------------------------------- the recordings


def test_recordings_hold_what_we_think(day1: list[tuple[int, bytes]], day2: list[tuple[int, bytes]]) -> None:
    assert kinds(day1) == {"depth@100ms": 3451, "bookTicker": 28040, "trade": 9757, "snapshot": 1}
    assert kinds(day2) == {"depth@100ms": 3044, "bookTicker": 45134, "trade": 10147}


def test_both_recordings_decode_completely_and_the_book_stays_in_sync(
    day1: list[tuple[int, bytes]], day2: list[tuple[int, bytes]]
) -> None:
    dec = BinanceDecoder()
    quotes = trades = 0
    for ts, frame in day1 + day2:
        for msg in dec.decode(frame, ts):
            if isinstance(msg, ExchangeQuote):
                quotes += 1
            else:
                trades += 1
    c = dec.counters
    assert (quotes, trades) == (28040 + 45134, 9757 + 10147)
    assert c["frames"] == len(day1) + len(day2)
    assert (c["book_tickers"], c["trades"], c["depth_updates"]) == (73174, 19904, 6495)
    # The snapshot (lastUpdateId 50093239218) arrives after three depth events: the first two end
    # before it (stale), the third (U=…208, u=…224) bridges it; every later event follows on exactly.
    assert c["snapshots"] == 1
    assert c["depth_stale_dropped"] == 2
    assert c["depth_applied"] == 6493
    assert (c["depth_gaps"], c["resyncs"], c["depth_buffer_dropped"]) == (0, 0, 0)
    assert (c["trade_gaps"], c["trade_duplicates"]) == (0, 0)
    assert (c["decode_errors"], c["unknown_streams"]) == (0, 0)
    book = dec.book("btcusdt")
    assert book is not None and synced(book) and not book.needs_resync
    assert book.last_update_id == 50093696318
    assert book.best_bid() == (D("61602.01"), D("1.67177"))
    assert book.best_ask() == (D("61602.02"), D("2.66795"))
    assert dec.last_trade_id("BTCUSDT") == 3735703162


def test_decoded_messages_carry_the_exact_fields(day1: list[tuple[int, bytes]]) -> None:
    dec = BinanceDecoder(provider="binance-spot")
    out = [(ts, dec.decode(frame, ts)) for ts, frame in day1[:4]]
    ts, [quote] = out[2]
    assert quote == ExchangeQuote(
        symbol="BTCUSDT", exchange="BINANCE", national=True,
        bid_price=D("61837.63"), bid_size=D("3.78826"), ask_price=D("61837.64"), ask_size=D("1.54698"),
        suspicious=False, provider="binance-spot", ts_event=ts, ts_recv=ts, sequence=50093239212,
    )  # fmt: skip
    ts, [trade] = out[3]
    assert trade == TradeTick(
        symbol="BTCUSDT", exchange="BINANCE", price=D("61837.63"), size=D("0.02"), suspicious=False,
        provider="binance-spot", ts_event=1723161255342_000_000, ts_recv=ts, sequence=3735683259,
    )  # fmt: skip
    assert isinstance(trade.price, Decimal) and isinstance(quote.bid_size, Decimal)
    assert out[0][1] == [] and out[1][1] == []  # depth events: no messages, buffered in the book


def test_depth_book_top_agrees_with_book_ticker_at_the_same_update_id(
    day1: list[tuple[int, bytes]], day2: list[tuple[int, bytes]]
) -> None:
    dec = BinanceDecoder()
    tickers: dict[int, tuple[Any, Any]] = {}
    tops: dict[int, tuple[Any, Any]] = {}
    for ts, frame in day1 + day2:
        msgs = dec.decode(frame, ts)
        if msgs and isinstance(msgs[0], ExchangeQuote):
            q = msgs[0]
            assert q.sequence is not None
            tickers[q.sequence] = ((q.bid_price, q.bid_size), (q.ask_price, q.ask_size))
        elif b"@depth" in frame[:40]:
            book = dec.book("BTCUSDT")
            assert book is not None
            if synced(book):
                assert book.last_update_id is not None
                tops[book.last_update_id] = (book.best_bid(), book.best_ask())
    common = tickers.keys() & tops.keys()
    assert len(common) == 1072  # measured: update ids where a bookTicker and a depth event end together
    disagree = [u for u in common if tickers[u] != tops[u]]
    assert disagree == []


def test_depth_book_equals_an_independent_reference_book(
    day1: list[tuple[int, bytes]], day2: list[tuple[int, bytes]]
) -> None:
    """A ten-line dict book built with ``json`` from the same frames ends identical, level by level."""
    objs = [json.loads(frame) for _, frame in day1 + day2]
    [snap] = [o for o in objs if "lastUpdateId" in o]
    last = snap["lastUpdateId"]
    ref = {"b": {D(p): D(q) for p, q in snap["bids"]}, "a": {D(p): D(q) for p, q in snap["asks"]}}
    for obj in objs:  # events before the snapshot line count too: the book buffered them
        if "stream" in obj and obj["stream"].endswith("depth@100ms") and obj["data"]["u"] > last:
            assert obj["data"]["U"] <= last + 1
            for side in "ba":
                for p, q in obj["data"][side]:
                    if D(q) == 0:
                        ref[side].pop(D(p), None)
                    else:
                        ref[side][D(p)] = D(q)
            last = obj["data"]["u"]
    dec = BinanceDecoder()
    for ts, frame in day1 + day2:
        dec.decode(frame, ts)
    book = dec.book("BTCUSDT")
    assert book is not None
    assert dict(book.bids) == ref["b"] and dict(book.asks) == ref["a"]
    assert book.last_update_id == last


def test_second_recording_alone_never_syncs_and_its_buffer_stays_bounded(day2: list[tuple[int, bytes]]) -> None:
    dec = BinanceDecoder()
    for ts, frame in day2:
        dec.decode(frame, ts)
    book = dec.book("BTCUSDT")
    assert book is not None and not synced(book) and book.needs_resync
    assert book.best_bid() is None and book.best_ask() is None
    assert book.buffered == 1000
    assert dec.counters["depth_buffer_dropped"] == 3044 - 1000
    assert dec.counters["snapshots"] == 0
    # A snapshot taken at the last buffered event's u bridges nothing: the buffered events all predate it.
    dec.on_snapshot("BTCUSDT", {"lastUpdateId": 50093696318, "bids": [["1", "1"]], "asks": [["2", "1"]]})
    assert synced(book) and book.buffered == 0 and dec.counters["depth_stale_dropped"] == 1000


# ---------------------------------------------------------------- synthetic sequences


def depth(u0: int, u1: int, bids: list[list[str]] | None = None, asks: list[list[str]] | None = None) -> bytes:
    data = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": u0, "u": u1, "b": bids or [], "a": asks or []}
    return json.dumps({"stream": "btcusdt@depth@100ms", "data": data}).encode()


def trade(t: int, price: str = "100.5", qty: str = "0.1") -> bytes:
    data = {"e": "trade", "E": 2, "s": "BTCUSDT", "t": t, "p": price, "q": qty, "T": 1_700_000_000_000, "m": True}
    return json.dumps({"stream": "btcusdt@trade", "data": data}).encode()


def snapshot(last: int, bids: list[list[str]], asks: list[list[str]]) -> bytes:
    return json.dumps({"lastUpdateId": last, "bids": bids, "asks": asks}).encode()


def test_buffered_events_are_replayed_after_the_snapshot_and_zero_removes_a_level() -> None:
    dec = BinanceDecoder()
    for frame in (depth(1, 5, [["99", "1"]]), depth(6, 10, [["100", "2"]]), depth(11, 12, [["100", "0"]])):
        assert dec.decode(frame, 1) == []
    book = dec.book("BTCUSDT")
    assert book is not None and not synced(book) and book.buffered == 3
    dec.decode(snapshot(7, [["98", "5"], ["100", "1"]], [["101", "3"]]), 1)
    assert synced(book) and book.last_update_id == 12
    assert dec.counters["depth_stale_dropped"] == 1 and dec.counters["depth_applied"] == 2
    assert book.best_bid() == (D(98), D(5))  # 100 was set to 2, then removed
    dec.decode(depth(13, 13, asks=[["100.5", "1"], ["777", "0"]]), 1)  # removing an unknown level is normal
    assert book.best_ask() == (D("100.5"), D(1))
    dec.decode(depth(14, 14, asks=[["100.5", "0"]]), 1)
    assert book.best_ask() == (D(101), D(3))
    assert dec.counters["depth_gaps"] == 0


def test_a_gap_marks_the_book_for_resync_and_a_new_snapshot_recovers() -> None:
    dec = BinanceDecoder()
    dec.decode(depth(1, 3), 1)
    dec.decode(snapshot(2, [["10", "1"]], [["11", "1"]]), 1)
    book = dec.book("BTCUSDT")
    assert book is not None and synced(book)
    dec.decode(depth(4, 6, [["10.5", "1"]]), 1)
    dec.decode(depth(8, 9, [["10.6", "1"]]), 1)  # 7 is missing
    assert not synced(book) and book.needs_resync and book.best_bid() is None
    assert (dec.counters["depth_gaps"], dec.counters["resyncs"]) == (1, 1)
    dec.decode(depth(10, 12, [["10.7", "1"]]), 1)
    assert book.buffered == 2
    dec.decode(snapshot(9, [["10.6", "1"]], [["11", "1"]]), 1)
    assert synced(book) and not needs_resync(book) and book.last_update_id == 12
    assert book.best_bid() == (D("10.7"), D(1))
    assert dec.counters["snapshots"] == 2


def test_stale_events_are_dropped_and_overlaps_after_sync_are_gaps() -> None:
    book = DepthBook("X")
    book.on_snapshot(100, [(D(1), D(1))], [(D(2), D(1))])
    book.on_diff(DepthDiff(90, 100, [(D("1.5"), D(1))], []))  # already in the snapshot
    assert book.counters["depth_stale_dropped"] == 1 and book.best_bid() == (D(1), D(1))
    book.on_diff(DepthDiff(95, 105, [], []))  # bridges: U <= 101 <= u
    assert book.last_update_id == 105
    book.on_diff(DepthDiff(103, 107, [], []))  # overlaps the previous event: a gap once bridged
    assert not synced(book) and book.counters["depth_gaps"] == 1


def test_a_snapshot_older_than_the_buffered_events_does_not_sync() -> None:
    dec = BinanceDecoder()
    dec.decode(depth(50, 60), 1)
    dec.decode(snapshot(40, [["10", "1"]], [["11", "1"]]), 1)
    book = dec.book("BTCUSDT")
    assert book is not None and not synced(book) and book.needs_resync and book.buffered == 1
    assert (dec.counters["depth_gaps"], dec.counters["resyncs"]) == (1, 1)
    dec.decode(snapshot(55, [["10", "1"]], [["11", "1"]]), 1)
    assert synced(book) and book.last_update_id == 60


def test_buffer_overflow_drops_the_oldest_and_counts() -> None:
    book = DepthBook("X", max_buffer=3)
    for i in range(5):
        book.on_diff(DepthDiff(i * 10 + 1, i * 10 + 10, [], []))
    assert book.buffered == 3 and book.counters["depth_buffer_dropped"] == 2
    book.on_snapshot(10, [], [])  # the event 11..20 was dropped: the first kept (21..30) does not bridge 10
    assert not synced(book) and book.counters["depth_gaps"] == 1


def test_reset_waits_for_a_new_snapshot() -> None:
    dec = BinanceDecoder()
    dec.decode(depth(6, 6), 1)
    dec.on_snapshot("btcusdt", snapshot(5, [["1", "1"]], [["2", "1"]]))
    book = dec.book("BTCUSDT")
    assert book is not None and synced(book)
    dec.reset_books()
    assert not synced(book) and book.needs_resync and dec.counters["resyncs"] == 1
    dec.reset_books()
    assert dec.counters["resyncs"] == 1


def test_trade_ids_duplicates_are_dropped_and_gaps_counted() -> None:
    dec = BinanceDecoder()
    assert len(dec.decode(trade(10), 1)) == 1
    assert len(dec.decode(trade(11), 1)) == 1
    assert dec.decode(trade(11), 1) == []
    assert dec.decode(trade(5), 1) == []
    [tick] = dec.decode(trade(14), 1)
    assert isinstance(tick, TradeTick) and tick.sequence == 14
    assert len(dec.decode(trade(15), 1)) == 1
    c = dec.counters
    assert (c["trades"], c["trade_duplicates"], c["trade_gaps"]) == (6, 2, 1)
    assert dec.last_trade_id("BTCUSDT") == 15


def test_a_bare_snapshot_needs_exactly_one_symbol_or_snapshot_symbol() -> None:
    dec = BinanceDecoder()
    snap = snapshot(5, [["1", "1"]], [["2", "1"]])
    with pytest.raises(BinanceDecodeError, match="set snapshot_symbol"):
        dec.decode(snap, 1)
    dec.snapshot_symbol = "ethusdt"
    dec.decode(snap, 1)
    book = dec.book("ETHUSDT")
    assert book is not None and synced(book)


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"", "not a Binance frame"),
        (b"{", "not a Binance frame"),
        (b"[1,2]", "not a Binance frame"),
        (b'{"result":null,"id":1}', "neither a stream envelope"),
        (b'{"stream":"btcusdt@kline_1m","data":{}}', "unknown stream"),
        (trade(1, price="0"), "not a positive price"),
        (trade(1, price="-1"), "not a positive price"),
        (trade(1, price="NaN"), "not a positive price"),
        (trade(1, qty="sNaN"), "not a quantity"),
        (trade(1, price="abc"), "Invalid decimal"),
        (trade(-1), "Expected `int` >= 0"),
        (depth(5, 4), "after final update id"),
        (depth(1, 2, [["1", "-1"]]), "is not a positive price and a quantity"),
        (depth(1, 2, [["1"]]), "Expected `array` of length 2"),
        (b'{"stream":"ethusdt@trade","data":' + json.dumps(json.loads(trade(1))["data"]).encode() + b"}", "match"),
        (snapshot(1, [["0", "1"]], []), "not a positive price"),
    ],
)
def test_malformed_frames_raise_a_decode_error_that_says_why(frame: bytes, why: str) -> None:
    dec = BinanceDecoder()
    dec.decode(depth(1, 1), 1)  # one symbol seen: bare snapshots have a target
    with pytest.raises(BinanceDecodeError, match=re.escape(why)) as info:
        dec.decode(frame, 1)
    assert len(str(info.value)) < 600
    assert dec.counters["decode_errors"] == 1


def test_a_huge_bad_frame_is_not_quoted_whole() -> None:
    frame = b'{"stream":"btcusdt@trade","data":{"e":"trade","s":"' + b"X" * 100_000 + b'"}}'
    with pytest.raises(BinanceDecodeError) as info:
        BinanceDecoder().decode(frame, 1)
    assert len(str(info.value)) < 600


# ---------------------------------------------------------------- property tests


def state(dec: BinanceDecoder) -> Any:
    books = {}
    for symbol in sorted(dec.symbols):
        book = dec.book(symbol)
        if book is not None:
            books[symbol] = (
                synced(book), book.needs_resync, book.last_update_id, book.buffered, dict(book.bids), dict(book.asks),
            )  # fmt: skip
    return books, {s: dec.last_trade_id(s) for s in dec.symbols}, dec.symbols


class Synced:
    """A decoder fed the first 300 real frames (its book in sync) and real frames to mutate."""

    def __init__(self, rows: list[tuple[int, bytes]]) -> None:
        self.decoder = BinanceDecoder()
        for ts, frame in rows[:300]:
            self.decoder.decode(frame, ts)
        book = self.decoder.book("BTCUSDT")
        assert book is not None and synced(book)
        self.frames = [frame for _, frame in rows[300:400]] + [rows[7][1]]  # the REST snapshot line too

    def __repr__(self) -> str:  # hypothesis prints the fixture on failure: keep it short
        return "Synced(...)"


@pytest.fixture(scope="module")
def synced_decoder(day1: list[tuple[int, bytes]]) -> Iterator[Synced]:
    yield Synced(day1)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_input_only_ever_raises_a_decode_error(raw: bytes | str) -> None:
    dec = BinanceDecoder()
    dec.decode(depth(1, 1), 1)
    before = state(dec)
    try:
        dec.decode(raw, 1)
    except BinanceDecodeError:
        assert state(dec) == before


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=12)
    | st.sampled_from(["0", "-1", "1e999", "NaN", "sNaN", "Infinity", "0.00000000", "61837.63", "", "BTCUSDT"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)  # fmt: skip


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_frames_fail_cleanly_and_leave_state_alone(synced_decoder: Synced, data: st.DataObject) -> None:
    dec = synced_decoder.decoder
    frame = data.draw(st.sampled_from(synced_decoder.frames))
    how = data.draw(st.sampled_from(["field", "bytes", "truncate", "stream"]))
    if how == "field":
        obj = json.loads(frame)
        target = obj.get("data", obj)
        key = data.draw(st.sampled_from(sorted(target)))
        if data.draw(st.booleans()):
            target[key] = data.draw(json_values)
        else:
            del target[key]
        mutated = json.dumps(obj).encode()
    elif how == "bytes":
        i = data.draw(st.integers(0, len(frame) - 1))
        mutated = frame[:i] + data.draw(st.binary(min_size=1, max_size=4)) + frame[i + 1 :]
    elif how == "truncate":
        mutated = frame[: data.draw(st.integers(0, len(frame) - 1))]
    else:
        stream = data.draw(st.sampled_from(["ethusdt@trade", "btcusdt@depth5", "btcusdt@aggTrade", "@", ""]))
        obj = json.loads(frame)
        obj["stream"] = stream
        mutated = json.dumps(obj).encode()
    before = state(dec)
    try:
        dec.decode(mutated, 1)
    except BinanceDecodeError as exc:
        assert state(dec) == before
        assert len(str(exc)) < 600
