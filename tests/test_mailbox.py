"""Mailbox policies: backpressure, drop, conflate; close, interrupt, counters."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import MailboxClosed
from engine.mailbox import (
    BACKPRESSURE,
    DROP,
    WAKEUP,
    Delivery,
    InflightCounter,
    Mailbox,
    Policy,
    conflate_by,
)


@dataclass(frozen=True)
class Quote:
    symbol: str
    px: int


@dataclass(frozen=True)
class Order:
    n: int


QUOTE_POLICY = {Quote: conflate_by(lambda q: q.symbol)}


def make(capacity: int = 4, **kwargs: object) -> Mailbox:
    return Mailbox("box", capacity, InflightCounter(), **kwargs)  # type: ignore[arg-type]


def drain(mailbox: Mailbox) -> list[object]:
    out: list[object] = []
    while len(mailbox):
        out.append(mailbox.get_nowait())
    return out


async def spin(times: int = 5) -> None:
    """Let every ready task run a few steps (no wall-clock time passes)."""
    for _ in range(times):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("capacity", [0, -1, -100])
def test_capacity_below_one_is_rejected(capacity: int) -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        make(capacity)


def test_capacity_one_is_accepted() -> None:
    mailbox = make(1)
    assert mailbox.capacity == 1
    assert mailbox.offer(Order(1)) is True
    assert mailbox.offer(Order(2)) is False


def test_policy_validation() -> None:
    with pytest.raises(ValueError):
        Policy(Delivery.CONFLATE)
    with pytest.raises(ValueError):
        Policy(Delivery.BACKPRESSURE, key=lambda m: m)
    with pytest.raises(ValueError):
        Policy(Delivery.DROP, key=lambda m: m)
    assert conflate_by(lambda m: m).delivery is Delivery.CONFLATE
    assert BACKPRESSURE.delivery is Delivery.BACKPRESSURE
    assert DROP.delivery is Delivery.DROP


# ---------------------------------------------------------------- backpressure


async def test_fifo_order_and_depth() -> None:
    mailbox = make(8)
    for i in range(5):
        await mailbox.put(Order(i))
    assert len(mailbox) == mailbox.depth == 5
    assert [await mailbox.get() for _ in range(5)] == [Order(i) for i in range(5)]
    assert len(mailbox) == 0


def test_get_nowait_on_empty_raises_index_error() -> None:
    with pytest.raises(IndexError):
        make().get_nowait()


async def test_backpressure_sender_waits_until_consumer_takes_one() -> None:
    mailbox = make(2)
    await mailbox.put(Order(0))
    await mailbox.put(Order(1))
    assert mailbox.offer(Order(99)) is False  # full: backpressure refuses without waiting

    putter = asyncio.create_task(mailbox.put(Order(2)))
    await spin()
    assert not putter.done(), "the sender must wait while the mailbox is full"
    assert len(mailbox) == 2

    assert mailbox.get_nowait() == Order(0)
    await spin()
    assert putter.done()
    await putter
    assert drain(mailbox) == [Order(1), Order(2)]
    assert mailbox.dropped == 0


async def test_backpressure_waiting_senders_resume_in_arrival_order() -> None:
    mailbox = make(1)
    await mailbox.put(Order(0))
    putters = []
    for i in range(1, 5):
        putters.append(asyncio.create_task(mailbox.put(Order(i))))
        await spin(1)
    await spin()
    assert not any(p.done() for p in putters)

    received = []
    for _ in range(5):
        received.append(await mailbox.get())
        await spin()
    assert received == [Order(i) for i in range(5)]
    assert all(p.done() and p.exception() is None for p in putters)
    assert mailbox.dropped == 0
    assert mailbox.high_water == 1


async def test_cancelled_waiting_putter_is_forgotten() -> None:
    mailbox = make(1)
    await mailbox.put(Order(0))
    cancelled = asyncio.create_task(mailbox.put(Order(1)))
    waiting = asyncio.create_task(mailbox.put(Order(2)))
    await spin()
    cancelled.cancel()
    await spin()
    assert cancelled.cancelled()

    assert mailbox.get_nowait() == Order(0)
    await spin()
    assert waiting.done()
    assert drain(mailbox) == [Order(2)]


async def test_putter_cancelled_after_being_woken_passes_the_place_on() -> None:
    mailbox = make(1)
    await mailbox.put(Order(0))
    first = asyncio.create_task(mailbox.put(Order(1)))
    second = asyncio.create_task(mailbox.put(Order(2)))
    await spin()

    mailbox.get_nowait()  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it can use the free place
    await spin()
    assert first.cancelled()
    assert second.done(), "the free place must be handed to the next waiting sender"
    assert drain(mailbox) == [Order(2)]


# ---------------------------------------------------------------- drop


async def test_drop_discards_new_messages_and_counts_them() -> None:
    mailbox = make(2, default=DROP)
    for i in range(5):
        assert mailbox.offer(Order(i)) is True  # accepted for delivery decisions, never False
    await mailbox.put(Order(5))  # never waits
    assert mailbox.dropped == 4
    assert drain(mailbox) == [Order(0), Order(1)]
    assert mailbox.inflight.count == 2  # only delivered messages are in flight


async def test_drop_is_per_message_type() -> None:
    mailbox = make(1, policies={Quote: DROP})
    await mailbox.put(Order(0))
    assert mailbox.offer(Quote("A", 1)) is True
    assert mailbox.dropped == 1
    assert mailbox.offer(Order(1)) is False  # orders still backpressure
    assert drain(mailbox) == [Order(0)]


async def test_drop_and_conflate_in_one_mailbox() -> None:
    mailbox = make(1, policies={Quote: conflate_by(lambda q: q.symbol), Order: DROP})
    assert mailbox.offer(Order(0)) is True
    assert mailbox.offer(Order(1)) is True  # full: dropped
    assert mailbox.offer(Quote("A", 1)) is True
    assert mailbox.offer(Quote("A", 2)) is True
    assert mailbox.offer("other") is False  # default policy: backpressure
    assert (mailbox.dropped, mailbox.conflated) == (1, 1)
    assert drain(mailbox) == [Order(0), Quote("A", 2)]


# ---------------------------------------------------------------- conflate


def test_conflate_keeps_one_pending_message_per_key_replacing_in_place() -> None:
    mailbox = make(4, policies=QUOTE_POLICY)
    mailbox.offer(Quote("A", 1))
    mailbox.offer(Quote("B", 1))
    mailbox.offer(Quote("A", 2))
    mailbox.offer(Quote("A", 3))
    assert len(mailbox) == 2
    assert mailbox.conflated == 2
    assert mailbox.dropped == 0
    # A keeps its place in the queue (before B) but carries the newest price.
    assert mailbox.get_nowait() == Quote("A", 3)
    # Once taken, a new A is a new entry at the back.
    mailbox.offer(Quote("A", 4))
    assert drain(mailbox) == [Quote("B", 1), Quote("A", 4)]
    assert mailbox.conflated == 2


def test_conflate_replacement_is_not_counted_in_flight() -> None:
    mailbox = make(4, policies=QUOTE_POLICY)
    for px in range(10):
        mailbox.offer(Quote("A", px))
    assert mailbox.inflight.count == 1
    assert mailbox.high_water == 1


async def test_conflatable_messages_never_block_when_bounded_part_is_full() -> None:
    mailbox = make(1, policies=QUOTE_POLICY)
    await mailbox.put(Order(0))
    assert mailbox.offer(Order(1)) is False  # the bounded part is full

    for i, symbol in enumerate("ABCDE"):
        await asyncio.wait_for(mailbox.put(Quote(symbol, i)), timeout=1.0)
    await asyncio.wait_for(mailbox.put(Quote("A", 99)), timeout=1.0)
    assert len(mailbox) == 6
    assert mailbox.dropped == 0
    assert mailbox.conflated == 1

    # Quotes do not use bounded room: taking the order makes room for exactly one order.
    assert mailbox.get_nowait() == Order(0)
    assert mailbox.offer(Order(1)) is True
    assert mailbox.offer(Order(2)) is False
    assert drain(mailbox) == [
        Quote("A", 99),
        Quote("B", 1),
        Quote("C", 2),
        Quote("D", 3),
        Quote("E", 4),
        Order(1),
    ]


async def test_taking_a_conflated_message_does_not_release_a_waiting_sender() -> None:
    mailbox = make(1, policies=QUOTE_POLICY)
    mailbox.offer(Quote("A", 1))
    await mailbox.put(Order(0))
    putter = asyncio.create_task(mailbox.put(Order(1)))
    await spin()
    assert not putter.done()
    assert mailbox.get_nowait() == Quote("A", 1)
    await spin()
    assert not putter.done(), "a quote held no bounded place, so no order may be admitted"
    assert mailbox.get_nowait() == Order(0)
    await spin()
    assert putter.done()
    assert drain(mailbox) == [Order(1)]


# ---------------------------------------------------------------- counters


async def test_high_water_tracks_maximum_depth() -> None:
    mailbox = make(10)
    assert mailbox.high_water == 0
    for i in range(3):
        mailbox.offer(Order(i))
    mailbox.get_nowait()
    mailbox.get_nowait()
    mailbox.offer(Order(3))
    assert len(mailbox) == 2
    assert mailbox.high_water == 3
    for i in range(4, 9):
        mailbox.offer(Order(i))
    assert mailbox.high_water == 7


def test_inflight_counter_counts_accepted_messages_and_is_shared() -> None:
    counter = InflightCounter()
    a = Mailbox("a", 2, counter)
    b = Mailbox("b", 2, counter)
    a.offer(1)
    b.offer(2)
    b.offer(3)
    assert counter.count == 3
    a.get_nowait()
    # Taking a message does not finish it: the handler calls done().
    assert counter.count == 3
    counter.done()
    assert counter.count == 2


async def test_inflight_wait_idle_wakes_when_count_reaches_zero() -> None:
    counter = InflightCounter()
    await asyncio.wait_for(counter.wait_idle(), 0.5)  # idle already
    counter.count = 2
    waiter = asyncio.create_task(counter.wait_idle())
    await spin()
    counter.done()
    await spin()
    assert not waiter.done()
    counter.done()
    await spin()
    assert waiter.done()


# ---------------------------------------------------------------- get / interrupt / close


async def test_get_waits_for_a_message() -> None:
    mailbox = make()
    getter = asyncio.create_task(mailbox.get())
    await spin()
    assert not getter.done()
    mailbox.offer(Order(7))
    assert await getter == Order(7)


async def test_interrupt_wakes_a_waiting_reader_with_wakeup() -> None:
    mailbox = make()
    getter = asyncio.create_task(mailbox.get())
    await spin()
    mailbox.interrupt()
    assert await getter is WAKEUP
    # The mailbox still works afterwards.
    mailbox.offer(Order(1))
    assert await mailbox.get() == Order(1)


async def test_interrupt_without_a_waiting_reader_is_not_remembered() -> None:
    mailbox = make()
    mailbox.interrupt()
    getter = asyncio.create_task(mailbox.get())
    await spin()
    assert not getter.done()
    mailbox.offer(Order(1))
    assert await getter == Order(1)


async def test_close_fails_waiting_senders_and_refuses_new_messages() -> None:
    mailbox = make(1)
    await mailbox.put(Order(0))
    putters = [asyncio.create_task(mailbox.put(Order(i))) for i in (1, 2)]
    await spin()
    mailbox.close()
    for putter in putters:
        with pytest.raises(MailboxClosed, match="'box' is closed"):
            await putter
    with pytest.raises(MailboxClosed):
        mailbox.offer(Order(3))
    with pytest.raises(MailboxClosed):
        await mailbox.put(Order(4))
    with pytest.raises(MailboxClosed):
        mailbox.offer(Quote("A", 1))  # conflatable ones too
    # What was accepted before closing is still there to read.
    assert drain(mailbox) == [Order(0)]


async def test_close_wakes_a_waiting_reader() -> None:
    mailbox = make()
    getter = asyncio.create_task(mailbox.get())
    await spin()
    mailbox.close()
    assert await getter is WAKEUP


# ---------------------------------------------------------------- properties


async def _backpressure_scenario(
    capacity: int, producers: int, per_producer: int, pauses: list[int]
) -> tuple[list[tuple[int, int]], Mailbox]:
    mailbox = make(capacity)

    async def produce(pid: int) -> None:
        for i in range(per_producer):
            await mailbox.put((pid, i))

    tasks = [asyncio.create_task(produce(p)) for p in range(producers)]
    received: list[tuple[int, int]] = []
    total = producers * per_producer
    for n in range(total):
        for _ in range(pauses[n % len(pauses)] if pauses else 0):
            await asyncio.sleep(0)
        item = await mailbox.get()
        assert isinstance(item, tuple)
        received.append(item)
        assert len(mailbox) <= capacity
    await asyncio.gather(*tasks)
    return received, mailbox


@settings(max_examples=150, deadline=None)
@given(
    capacity=st.integers(1, 5),
    per_producer=st.integers(0, 40),
    pauses=st.lists(st.integers(0, 4), max_size=20),
)
def test_property_backpressure_delivers_every_message_in_order(
    capacity: int, per_producer: int, pauses: list[int]
) -> None:
    received, mailbox = asyncio.run(_backpressure_scenario(capacity, 1, per_producer, pauses))
    assert received == [(0, i) for i in range(per_producer)]
    assert mailbox.dropped == 0
    assert len(mailbox) == 0
    assert mailbox.high_water <= capacity


@settings(max_examples=100, deadline=None)
@given(
    capacity=st.integers(1, 4),
    producers=st.integers(2, 4),
    per_producer=st.integers(0, 25),
    pauses=st.lists(st.integers(0, 3), max_size=20),
)
def test_property_backpressure_many_senders_each_in_order_none_lost(
    capacity: int, producers: int, per_producer: int, pauses: list[int]
) -> None:
    received, mailbox = asyncio.run(_backpressure_scenario(capacity, producers, per_producer, pauses))
    assert sorted(received) == [(p, i) for p in range(producers) for i in range(per_producer)]
    for p in range(producers):
        assert [i for q, i in received if q == p] == list(range(per_producer))
    assert mailbox.dropped == 0
    assert mailbox.high_water <= capacity


_conflate_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from("ABCD"), st.integers(0, 1000)),
        st.tuples(st.just("order"), st.just(""), st.integers(0, 1000)),
        st.tuples(st.just("get"), st.just(""), st.just(0)),
    ),
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(ops=_conflate_ops, capacity=st.integers(1, 4))
def test_property_conflate_matches_model_and_last_value_wins(
    ops: list[tuple[str, str, int]], capacity: int
) -> None:
    """Against an exact model: queue order, in-place replacement, counters, last value per key."""
    mailbox = make(capacity, policies=QUOTE_POLICY)
    # model: a list of entries, each ["quote", symbol, px] (mutable) or ["order", n]
    model: list[list[object]] = []
    pending: dict[str, list[object]] = {}
    conflated = 0
    last_put: dict[str, int] = {}
    last_seen: dict[str, int] = {}

    def take() -> None:
        entry = model.pop(0)
        got = mailbox.get_nowait()
        if entry[0] == "quote":
            symbol, px = entry[1], entry[2]
            del pending[symbol]  # type: ignore[arg-type]
            assert got == Quote(symbol, px)  # type: ignore[arg-type]
            last_seen[symbol] = px  # type: ignore[index, assignment]
        else:
            assert got == Order(entry[1])  # type: ignore[arg-type]

    for op, symbol, value in ops:
        if op == "put":
            assert mailbox.offer(Quote(symbol, value)) is True  # never refused
            last_put[symbol] = value
            if symbol in pending:
                pending[symbol][2] = value
                conflated += 1
            else:
                entry: list[object] = ["quote", symbol, value]
                pending[symbol] = entry
                model.append(entry)
        elif op == "order":
            bounded = sum(1 for e in model if e[0] == "order")
            accepted = mailbox.offer(Order(value))
            assert accepted is (bounded < capacity)
            if accepted:
                model.append(["order", value])
        elif model:
            take()
        assert len(mailbox) == len(model)
        assert mailbox.conflated == conflated

    while model:
        take()
    assert len(mailbox) == 0
    assert last_seen == last_put
    assert mailbox.dropped == 0
