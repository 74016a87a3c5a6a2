"""The write-ahead journal, on real SQLite files: round trips, seqs, group commit, locking,
corruption, full disk, read-only access, kill -9 and crash points, and a property test."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.clock import NS_PER_S, SimClock
from engine.journal import (
    SCHEMA_VERSION,
    Durability,
    Journal,
    JournalBackpressure,
    JournalClosed,
    JournalCorrupt,
    JournalEntry,
    JournalError,
    JournalLocked,
    JournalReadOnly,
    JournalTooNew,
    JournalWriteFailed,
)
from engine.logs import configure_logging
from engine.messages import (
    AccountBaseline,
    Fill,
    Message,
    OrderReconciled,
    OrderStatus,
    OrderSubmitting,
    OrderType,
    OrderUpdate,
    RiskRejected,
    Side,
    SubmitOrder,
    TimeInForce,
    TradingState,
    TradingStateChanged,
)

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000 * NS_PER_S


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    configure_logging(None)
    yield


@pytest.fixture
def clock() -> SimClock:
    return SimClock(T0)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "journal.sqlite"


# ---------------------------------------------------------------- records


def submitting(i: int, qty: str = "10", price: str | None = "189.12") -> OrderSubmitting:
    order = SubmitOrder(
        client_order_id=f"kst-test-{i:06d}",
        intent_id=f"intent-{i}",
        symbol="AAPL",
        side=Side.BUY,
        qty=Decimal(qty),
        order_type=OrderType.LIMIT if price is not None else OrderType.MARKET,
        limit_price=Decimal(price) if price is not None else None,
        time_in_force=TimeInForce.DAY,
        ts_init=T0 + i,
    )
    return OrderSubmitting(order=order, strategy="s1", sequence=i, ts_init=T0 + i)


def fill(i: int, qty: Decimal = Decimal("3.5"), price: Decimal = Decimal("189.1234")) -> Fill:
    return Fill(
        client_order_id=f"kst-test-{i:06d}",
        venue_order_id=f"v-{i}",
        execution_id=f"x-{i}",
        intent_id=f"intent-{i}",
        strategy="s1",
        symbol="AAPL",
        side=Side.SELL,
        qty=qty,
        price=price,
        fee=Decimal("0.000000001"),
        ts_event=T0 + i,
        ts_recv=T0 + i + 1,
    )


def every_journal_record() -> list[Message]:
    """One of each record the order manager journals, with Decimals that must survive exactly."""
    return [
        submitting(1, qty="0.000000001", price="123456789.123456789"),
        submitting(2, qty="1E+3", price=None),
        OrderUpdate(
            client_order_id="kst-test-000001",
            venue_order_id="v-1",
            status=OrderStatus.PARTIALLY_FILLED,
            reason=None,
            filled_qty=Decimal("2.50"),
            intent_id="intent-1",
            strategy="s1",
            ts_event=T0 + 10,
            ts_recv=T0 + 11,
        ),
        fill(1, qty=Decimal("2.50"), price=Decimal("189.1200")),
        RiskRejected(
            intent_id="intent-3",
            strategy="s1",
            symbol="MSFT",
            reason="NOTIONAL_CAP",
            detail="order notional 1000000.00 > cap 250000",
            inputs={"notional": "1000000.00", "cap": "250000", "empty": ""},
            ts_init=T0 + 12,
        ),
        AccountBaseline(
            cash=Decimal("-0.00"),
            positions={"AAPL": Decimal("100"), "MSFT": Decimal("-3.141592653589793238462643383"), "Z": Decimal("0E-8")},
            source="venue",
            ts_init=T0 + 13,
        ),
        OrderReconciled(
            client_order_id="kst-test-000002",
            venue_order_id="v-2",
            status=OrderStatus.FILLED,
            filled_qty=Decimal("1000"),
            reason="adopted after restart",
            ts_init=T0 + 14,
        ),
        TradingStateChanged(state=TradingState.HALTED, reason="kill switch", ts_init=T0 + 15),
    ]


async def read_all(journal: Journal, after_seq: int = 0, batch: int = 10_000) -> list[JournalEntry]:
    return [entry async for entry in journal.read(after_seq, batch=batch)]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corrupt_a_middle_page(path: Path, offset: int, data: bytes) -> str:
    """Overwrite bytes of a page in the middle of a many-page, cleanly closed journal; return the digest."""
    assert not Path(f"{path}-wal").exists()  # a clean close checkpointed everything into the file
    pages = path.stat().st_size // 4096
    assert pages > 100
    with path.open("r+b") as file:
        file.seek(pages // 2 * 4096 + offset)
        file.write(data)
    return digest(path)


# ---------------------------------------------------------------- round trip, seqs, group commit


def test_aiosqlite_still_offers_what_the_journal_relies_on() -> None:
    """``Journal._hop`` uses the private ``Connection._execute`` (one hop per transaction) and the
    flusher ``Connection.stop()`` (0.22+); an aiosqlite upgrade that drops either must fail here."""
    import inspect

    import aiosqlite

    assert inspect.iscoroutinefunction(aiosqlite.Connection._execute)
    assert callable(aiosqlite.Connection.stop)


async def test_every_journal_record_round_trips_exactly(path: Path, clock: SimClock) -> None:
    records = every_journal_record()
    async with await Journal.open(path, clock) as journal:
        seqs = []
        for record in records:
            clock.advance_to(clock.time_ns() + 1000)
            seqs.append(await journal.write(record))
        assert seqs == list(range(1, len(records) + 1))
        entries = await read_all(journal)
    assert [e.seq for e in entries] == seqs
    assert [e.ts_ns for e in entries] == [T0 + 1000 * (i + 1) for i in range(len(records))]
    for entry, record in zip(entries, records, strict=True):
        assert type(entry.record) is type(record)
        assert entry.record == record
        # repr shows every Decimal's exact digits and exponent: 2.50 stays 2.50, 1E+3 stays 1E+3.
        assert repr(entry.record) == repr(record)
    baseline = entries[5].record
    assert isinstance(baseline, AccountBaseline)
    assert str(baseline.cash) == "-0.00"
    assert str(baseline.positions["Z"]) == "0E-8"

    # The index columns, as the CLI or a human with sqlite3 sees them.
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT seq, kind, client_order_id, intent_id FROM events ORDER BY seq").fetchall()
    assert rows == [
        (1, "OrderSubmitting", "kst-test-000001", "intent-1"),
        (2, "OrderSubmitting", "kst-test-000002", "intent-2"),
        (3, "OrderUpdate", "kst-test-000001", "intent-1"),
        (4, "Fill", "kst-test-000001", "intent-1"),
        (5, "RiskRejected", None, "intent-3"),
        (6, "AccountBaseline", None, None),
        (7, "OrderReconciled", "kst-test-000002", None),
        (8, "TradingStateChanged", None, None),
    ]


async def test_seqs_are_gap_free_and_in_append_order_across_concurrent_writers(path: Path, clock: SimClock) -> None:
    rng = random.Random(7)
    written: dict[int, Message] = {}

    async with await Journal.open(path, clock) as journal:

        async def writer(k: int) -> None:
            for i in range(40):
                record = fill(k * 1000 + i, qty=Decimal(rng.randint(1, 10**6)) / 1000)
                if rng.random() < 0.5:
                    seq = await journal.write(record)
                else:
                    seq = await journal.append(record)
                assert seq not in written
                written[seq] = record
                if rng.random() < 0.3:
                    await asyncio.sleep(0)

        await asyncio.gather(*(writer(k) for k in range(50)))
        assert journal.last_seq == journal.committed_seq == 2000
        assert journal.stats["commits"] < 2000  # grouped
        entries = await read_all(journal, batch=333)
    assert [e.seq for e in entries] == list(range(1, 2001))
    assert all(written[e.seq] == e.record for e in entries)


async def test_appends_in_one_loop_turn_share_one_commit(path: Path, clock: SimClock) -> None:
    # The first append leaves at once (a lone write-ahead record waits for one hop); the
    # other 999, queued while it is in flight, go together in the next transaction.
    async with await Journal.open(path, clock) as journal:
        futures = [journal.append(fill(i)) for i in range(1000)]
        assert journal.last_seq == 1000 and journal.committed_seq == 0
        assert await asyncio.gather(*futures) == list(range(1, 1001))
        assert journal.stats["commits"] == 2
        assert journal.stats["max_group"] == 999
        assert journal.committed_seq == 1000

        # Rows appended while a commit is in flight wait for it and share the next one: 800
        # rows in three turns take at most three commits (1, then 499, then 300 if the 499
        # were still in flight when the 300 came; else 799 together).
        before = journal.stats["commits"]
        first = [journal.append(fill(i)) for i in range(500)]
        await asyncio.sleep(0)
        second = [journal.append(fill(i)) for i in range(300)]
        await journal.flush()
        assert all(f.done() for f in first + second)
        assert 2 <= journal.stats["commits"] - before <= 3
        assert journal.stats["rows"] == 1800


@pytest.mark.parametrize(("durability", "level"), [(Durability.PROCESS, 1), (Durability.POWER, 2)])
async def test_durability_sets_wal_and_synchronous(
    path: Path, clock: SimClock, durability: Durability, level: int
) -> None:
    async with await Journal.open(path, clock, durability) as journal:
        assert journal.durability is durability

        def pragmas(conn: sqlite3.Connection) -> tuple[str, int]:
            return conn.execute("PRAGMA journal_mode").fetchone()[0], conn.execute("PRAGMA synchronous").fetchone()[0]

        assert await journal._hop(pragmas) == ("wal", level)
        assert journal.settings["journal_mode"] == "wal"
        assert journal.settings["synchronous"] == level
    assert Durability("process") is Durability.PROCESS  # config spells it as a string


async def test_reopen_continues_the_sequence(path: Path, clock: SimClock) -> None:
    async with await Journal.open(path, clock) as journal:
        for i in range(10):
            await journal.write(fill(i))
    async with await Journal.open(path, clock) as journal:
        assert journal.last_seq == journal.committed_seq == 10
        assert await journal.write(fill(10)) == 11
        assert [e.seq for e in await read_all(journal)] == list(range(1, 12))
        assert [e.seq for e in await read_all(journal, after_seq=9)] == [10, 11]
        assert await read_all(journal, after_seq=11) == []


async def test_a_waiter_that_gives_up_does_not_withdraw_its_row(path: Path, clock: SimClock) -> None:
    async with await Journal.open(path, clock) as journal:
        future = journal.append(fill(1))
        future.cancel()
        await journal.flush()
        assert journal.committed_seq == 1
        assert [e.record for e in await read_all(journal)] == [fill(1)]


async def test_append_refuses_what_is_not_a_message(path: Path, clock: SimClock) -> None:
    class Stranger(msgspec.Struct, tag=True):
        x: int

    async with await Journal.open(path, clock) as journal:
        with pytest.raises(TypeError, match="Stranger"):
            journal.append(Stranger(1))  # type: ignore[arg-type]
        assert journal.last_seq == 0
        assert await journal.write(fill(1)) == 1


# ---------------------------------------------------------------- snapshots and meta


async def test_snapshots_are_durable_and_never_replace_events(path: Path, clock: SimClock) -> None:
    async with await Journal.open(path, clock) as journal:
        for i in range(5):
            await journal.write(fill(i))
        assert await journal.latest_snapshot("ledger") is None
        await journal.write_snapshot("ledger", b"state@5", upto_seq=5)
        for i in range(5, 8):
            journal.append(fill(i))  # not awaited: write_snapshot flushes first
        await journal.write_snapshot("ledger", b"state@8", upto_seq=8)
        await journal.write_snapshot("orders", b"orders@3", upto_seq=3)
        with pytest.raises(JournalError, match="up to seq 9"):
            await journal.write_snapshot("ledger", b"future", upto_seq=9)
        assert journal.stats["snapshots"] == 3
    async with await Journal.open(path, clock) as journal:
        ledger = await journal.latest_snapshot("ledger")
        assert ledger is not None
        assert (ledger.seq, ledger.kind, ledger.payload, ledger.ts_ns) == (8, "ledger", b"state@8", T0)
        orders = await journal.latest_snapshot("orders")
        assert orders is not None and orders.payload == b"orders@3"
        assert [e.seq for e in await read_all(journal)] == list(range(1, 9))  # history intact
        assert await read_all(journal, ledger.seq) == []


async def test_meta_round_trips_and_persists(path: Path, clock: SimClock) -> None:
    async with await Journal.open(path, clock) as journal:
        assert await journal.read_meta("run_id") is None
        await journal.write_meta("run_id", "r1")
        await journal.write_meta("run_id", "r2")
        await journal.write_meta("prefix", "kst")
    async with await Journal.open_readonly(path, clock) as journal:
        assert await journal.read_meta("run_id") == "r2"
        assert await journal.read_meta("prefix") == "kst"


# ---------------------------------------------------------------- locking


async def test_a_second_open_is_locked_until_the_first_closes(path: Path, clock: SimClock) -> None:
    first = await Journal.open(path, clock)
    with pytest.raises(JournalLocked, match=str(path)) as raised:
        await Journal.open(path, clock)
    assert f"pid {os.getpid()}" in str(raised.value)
    await first.close()
    second = await Journal.open(path, clock)
    await second.close()


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from engine.clock import LiveClock
    from engine.journal import Journal
    from engine.logs import configure_logging

    async def main():
        configure_logging(None)
        journal = await Journal.open(sys.argv[1], LiveClock())
        print("holding", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await journal.close()

    asyncio.run(main())
    """
)


async def test_a_journal_held_by_another_process_is_locked(path: Path, clock: SimClock) -> None:
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(path), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert (await holder.stdout.readline()).strip() == b"holding"
        with pytest.raises(JournalLocked, match=f"pid {holder.pid}"):
            await Journal.open(path, clock)
        # Reading is fine while it writes.
        async with await Journal.open_readonly(path, clock) as reader:
            assert reader.last_seq == 0
        holder.stdin.write(b"\n")
        await holder.stdin.drain()
        assert await asyncio.wait_for(holder.wait(), 10) == 0
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
    async with await Journal.open(path, clock) as journal:
        assert await journal.write(fill(1)) == 1


# ---------------------------------------------------------------- refusing bad files, untouched


async def test_a_newer_schema_is_too_new_and_left_untouched(path: Path, clock: SimClock) -> None:
    async with await Journal.open(path, clock) as journal:
        await journal.write(fill(1))
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = digest(path)
    with pytest.raises(JournalTooNew, match=f"version {SCHEMA_VERSION + 1}"):
        await Journal.open(path, clock)
    with pytest.raises(JournalTooNew):
        await Journal.open_readonly(path, clock)
    assert digest(path) == before
    with pytest.raises(JournalTooNew):  # and the failed open released its lock
        await Journal.open(path, clock)


@pytest.mark.parametrize(
    ("offset", "data", "says"),
    [
        (0, random.Random(1).randbytes(4096), "malformed"),  # a whole page of garbage
        (5, b"\xff\xff\xff\xff", "quick_check"),  # a leaf page's cell-content offset: quick_check reports it
    ],
)
async def test_a_corrupt_file_is_refused_and_left_untouched(
    path: Path, clock: SimClock, offset: int, data: bytes, says: str
) -> None:
    async with await Journal.open(path, clock) as journal:
        for i in range(3000):
            journal.append(fill(i))
        await journal.flush()
    before = corrupt_a_middle_page(path, offset, data)
    with pytest.raises(JournalCorrupt, match=f"{re.escape(str(path))}.*{says}"):
        await Journal.open(path, clock)
    assert digest(path) == before
    with pytest.raises(JournalCorrupt):  # not JournalLocked: the failed open let go of the lock
        await Journal.open(path, clock)
    assert digest(path) == before


async def test_files_that_are_not_journals_are_refused(tmp_path: Path, clock: SimClock) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 500)
    with pytest.raises(JournalCorrupt, match=re.escape("notes.txt")):
        await Journal.open(text, clock)

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE prices (symbol TEXT, price TEXT)")
    before = digest(other)
    with pytest.raises(JournalError, match="not a Kestrel journal"):
        await Journal.open(other, clock)
    assert digest(other) == before


async def test_rows_that_do_not_decode_or_go_missing_are_corruption(path: Path, clock: SimClock) -> None:
    async with await Journal.open(path, clock) as journal:
        for i in range(10):
            journal.append(fill(i))
        await journal.flush()
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET payload = x'c1c1' WHERE seq = 4")
    async with await Journal.open(path, clock) as journal:
        with pytest.raises(JournalCorrupt, match="seq 4 does not decode"):
            await read_all(journal)
        assert len(await read_all(journal, after_seq=4)) == 6
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM events WHERE seq = 7")
    async with await Journal.open_readonly(path, clock) as journal:
        with pytest.raises(JournalCorrupt, match="seq 7 is missing"):
            await read_all(journal, after_seq=5)


# ---------------------------------------------------------------- write failures


async def test_a_full_disk_fails_every_waiter_and_stays_failed(path: Path, clock: SimClock) -> None:
    big = RiskRejected(intent_id="i", strategy="s", symbol="X", reason="R", detail="x" * 20_000, inputs={}, ts_init=T0)
    journal = await Journal.open(path, clock)
    for i in range(10):
        await journal.write(fill(i))
    await journal.limit_pages(1)  # SQLite keeps the cap at the current size: no room to grow
    futures = [journal.append(big) for _ in range(5)]
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, JournalWriteFailed) for r in results), results
    message = str(results[0])
    assert str(path) in message and "database or disk is full" in message and "writing events 11.." in message
    assert isinstance(results[0], BaseException) and isinstance(results[0].__cause__, sqlite3.OperationalError)
    assert journal.failed
    assert journal.committed_seq == 10
    # Sticky: nothing else gets in, whatever the size.
    with pytest.raises(JournalWriteFailed, match="database or disk is full"):
        journal.append(fill(99))
    with pytest.raises(JournalWriteFailed):
        await journal.write(fill(99))
    with pytest.raises(JournalWriteFailed):
        await journal.flush()
    with pytest.raises(JournalWriteFailed):
        await journal.write_snapshot("ledger", b"", upto_seq=10)
    with pytest.raises(JournalWriteFailed):
        await journal.write_meta("k", "v")
    with pytest.raises(JournalWriteFailed):
        await journal.wait_for_room()
    assert [e.seq for e in await read_all(journal)] == list(range(1, 11))  # reads still work
    await journal.close()  # a failed journal closes quietly and lets go of the lock

    async with await Journal.open(path, clock) as journal:
        assert journal.last_seq == 10
        assert await journal.write(big) == 11


async def test_backpressure_and_waiting_for_room(path: Path, clock: SimClock) -> None:
    async with await Journal.open(path, clock, max_pending=10) as journal:
        # The first row leaves for the thread at once; ten more may wait behind it.
        futures = [journal.append(fill(i)) for i in range(11)]
        with pytest.raises(JournalBackpressure, match="max_pending"):
            journal.append(fill(11))
        assert journal.last_seq == 11
        assert journal.stats["backpressure"] == 1
        await journal.wait_for_room()  # the next group took the ten
        futures.append(journal.append(fill(11)))
        # write() waits for room instead of raising.
        more = [journal.append(fill(i)) for i in range(12, 21)]
        assert await journal.write(fill(21)) == 22
        assert await asyncio.gather(*futures, *more) == list(range(1, 22))


async def test_closed_journals_refuse_work(path: Path, clock: SimClock) -> None:
    journal = await Journal.open(path, clock)
    pending = journal.append(fill(1))
    await journal.close()  # flushes first
    assert pending.result() == 1
    await journal.close()  # idempotent
    assert journal.closed
    with pytest.raises(JournalClosed):
        journal.append(fill(2))
    with pytest.raises(JournalClosed):
        await read_all(journal)
    with pytest.raises(JournalClosed):
        await journal.read_meta("x")


async def test_a_cancelled_close_still_closes_and_releases_the_lock(path: Path, clock: SimClock) -> None:
    journal = await Journal.open(path, clock)
    pending = journal.append(fill(1))
    closing = asyncio.ensure_future(journal.close())
    await asyncio.sleep(0)
    closing.cancel()
    await journal.close()  # joins the close already under way
    assert pending.result() == 1 and journal.closed
    async with await Journal.open(path, clock) as again:
        assert again.last_seq == 1


# ---------------------------------------------------------------- read-only


async def test_read_only_works_while_a_writer_holds_the_lock(path: Path, clock: SimClock) -> None:
    async with await Journal.open(path, clock) as writer:
        for i in range(5):
            await writer.write(fill(i))
        async with await Journal.open_readonly(path, clock) as reader:
            assert reader.readonly and reader.last_seq == 5
            assert [e.record for e in await read_all(reader)] == [fill(i) for i in range(5)]
            with pytest.raises(JournalReadOnly):
                reader.append(fill(5))
            with pytest.raises(JournalClosed):
                await reader.write_snapshot("ledger", b"", upto_seq=1)
            with pytest.raises(JournalClosed):
                await reader.write_meta("k", "v")
            await writer.write(fill(5))
            assert [e.seq for e in await read_all(reader, after_seq=4)] == [5, 6]  # sees new commits


async def test_read_only_open_of_a_missing_file_says_so(tmp_path: Path, clock: SimClock) -> None:
    missing = tmp_path / "nope" / "journal.sqlite"
    with pytest.raises(JournalError, match="not found") as raised:
        await Journal.open_readonly(missing, clock)
    assert str(missing) in str(raised.value)
    assert not missing.parent.exists()


# ---------------------------------------------------------------- kill -9 and crash points

KILLED_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from decimal import Decimal
    from engine.clock import LiveClock
    from engine.journal import Journal
    from engine.logs import configure_logging
    from engine.messages import Fill, Side

    async def main():
        configure_logging(None)
        journal = await Journal.open(sys.argv[1], LiveClock())

        async def producer(k):
            i = 0
            while True:
                record = Fill(
                    client_order_id=f"c{k}-{i}", venue_order_id="v", execution_id=f"x{k}-{i}", intent_id="i",
                    strategy="s", symbol="AAPL", side=Side.BUY, qty=Decimal(i) / 7, price=Decimal("1.01"),
                    fee=Decimal(0), ts_event=i, ts_recv=i,
                )
                seq = await journal.write(record)
                sys.stdout.write(f"{seq} {k} {i}\\n")
                sys.stdout.flush()
                i += 1

        await asyncio.gather(*(producer(k) for k in range(8)))

    asyncio.run(main())
    """
)


async def test_kill_9_loses_nothing_that_was_reported_committed(path: Path, clock: SimClock) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_WRITER, str(path), cwd=ROOT, stdout=subprocess.PIPE
    )
    reported: dict[int, tuple[int, int]] = {}
    try:
        assert child.stdout is not None
        while len(reported) < 3000:
            line = await asyncio.wait_for(child.stdout.readline(), 10)
            assert line, f"the writer died early (exit {child.returncode})"
            seq, k, i = map(int, line.split())
            reported[seq] = (k, i)
        child.send_signal(signal.SIGKILL)
        rest = await child.stdout.read()  # lines written before it died count too
        for line in rest.splitlines():
            if line.count(b" ") == 2:  # the kill can cut the last line short: it was not reported
                seq, k, i = map(int, line.split())
                reported[seq] = (k, i)
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    # We sent the SIGKILL. Its exit status is -9, unless another child watcher in this
    # test process reaped the pid first (asyncio then reports 255, "unknown child"): the
    # property under test is the journal's content below, not the status code.
    assert child.returncode in (-signal.SIGKILL, 255)
    with pytest.raises(ProcessLookupError):
        os.kill(child.pid, 0)  # gone, not merely detached

    async with await Journal.open(path, clock) as journal:
        entries = await read_all(journal)
        assert journal.last_seq == len(entries) >= max(reported)
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
        for entry in entries:
            record = entry.record
            assert isinstance(record, Fill)
            if entry.seq in reported:
                k, i = reported[entry.seq]
                assert record.client_order_id == f"c{k}-{i}" and record.qty == Decimal(i) / 7
        # And the journal takes writes again after the crash.
        assert await journal.write(fill(0)) == len(entries) + 1


CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, os, sys
    from decimal import Decimal
    from engine import crashpoints
    from engine.clock import LiveClock
    from engine.journal import Journal
    from engine.logs import configure_logging
    from engine.messages import TradingState, TradingStateChanged

    async def main():
        configure_logging(None)
        crashpoints.arm_from_env(os.environ)
        journal = await Journal.open(sys.argv[1], LiveClock())
        record = TradingStateChanged(state=TradingState.ACTIVE, reason="go", ts_init=0)
        for group in range(5):
            await asyncio.gather(*(journal.write(record) for _ in range(10)))
            print(journal.committed_seq, flush=True)
        await journal.write_snapshot("ledger", b"at 50", upto_seq=50)
        print("snapshot", flush=True)
        await journal.close()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize(
    ("point", "events", "snapshot"),
    # Each gather of 10 writes commits 1 row, then the 9 queued behind it: the 5th commit is
    # the first of the third ten, so the crash leaves exactly 20.
    [("journal.before_commit:5", 20, False), ("journal.during_snapshot", 50, False), ("", 50, True)],
)
async def test_crash_points_leave_only_whole_commits(
    path: Path, clock: SimClock, point: str, events: int, snapshot: bool
) -> None:
    env = {**os.environ, "KESTREL_CRASH_AT": point}
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASHING_WRITER, str(path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == (0 if not point else -signal.SIGKILL), child.stderr
    async with await Journal.open(path, clock) as journal:
        assert journal.last_seq == events
        assert [e.seq for e in await read_all(journal)] == list(range(1, events + 1))
        assert (await journal.latest_snapshot("ledger") is not None) is snapshot


ABANDONING_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from engine.clock import LiveClock
    from engine.journal import Journal
    from engine.logs import configure_logging
    from engine.messages import TradingState, TradingStateChanged

    async def main():
        configure_logging(None)
        journal = await Journal.open(sys.argv[1], LiveClock())
        await journal.write(TradingStateChanged(state=TradingState.ACTIVE, reason="go", ts_init=0))
        # returns without close(): asyncio.run cancels the flusher

    asyncio.run(main())
    """
)


async def test_a_journal_left_open_does_not_keep_the_process_alive(path: Path, clock: SimClock) -> None:
    child = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", ABANDONING_WRITER, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,  # aiosqlite's thread is not a daemon: left running, the child would never exit
    )
    assert child.returncode == 0, child.stderr
    async with await Journal.open(path, clock) as journal:
        assert journal.last_seq == 1


# ---------------------------------------------------------------- property: what was committed is what is read

decimals = st.decimals(allow_nan=False, allow_infinity=False, places=None)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.lists(st.tuples(decimals, decimals), min_size=1, max_size=25)),
        st.tuples(st.just("flush"), st.none()),
        st.tuples(st.just("reopen"), st.none()),
        st.tuples(st.just("snapshot"), st.none()),
    ),
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, batch=st.integers(1, 40))
def test_reads_return_exactly_what_was_committed_in_order(ops: list[tuple[str, Any]], batch: int) -> None:
    async def scenario(path: Path) -> None:
        clock = SimClock(T0)
        model: list[Message] = []  # every record appended, in seq order (all get committed)
        snapshot_at = 0
        futures: list[tuple[int, asyncio.Future[int]]] = []
        journal = await Journal.open(path, clock, max_pending=1000)
        try:
            for op, arg in ops:
                if op == "append":
                    for qty, price in arg:
                        record = fill(len(model), qty=qty, price=price)
                        model.append(record)
                        futures.append((len(model), journal.append(record)))
                elif op == "flush":
                    await journal.flush()
                    assert journal.committed_seq == len(model)
                elif op == "reopen":
                    await journal.close()
                    journal = await Journal.open(path, clock, max_pending=1000)
                    assert journal.last_seq == journal.committed_seq == len(model)
                else:
                    await journal.flush()
                    snapshot_at = journal.committed_seq
                    await journal.write_snapshot("ledger", str(snapshot_at).encode(), snapshot_at)
            await journal.flush()
            assert [await f for _, f in futures] == [seq for seq, _ in futures]
            entries = await read_all(journal, batch=batch)
            assert [e.seq for e in entries] == list(range(1, len(model) + 1))
            assert [repr(e.record) for e in entries] == [repr(r) for r in model]
            latest = await journal.latest_snapshot("ledger")
            assert (latest.seq if latest else 0) == snapshot_at
            tail = await read_all(journal, snapshot_at, batch=batch)
            assert [e.record for e in tail] == model[snapshot_at:]
        finally:
            await journal.close()

    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(scenario(Path(folder) / "journal.sqlite"))
