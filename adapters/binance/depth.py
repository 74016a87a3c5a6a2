"""A local Binance order book kept in sync from a REST snapshot plus the diff-depth stream.

Binance's diff-depth stream (``<symbol>@depth@100ms``) only says how levels *changed*; a
book is only correct once it is anchored on a REST snapshot (``/api/v3/depth``) and
every diff after it has been applied without a hole. The procedure is Binance's own
("How to manage a local order book correctly"):

1. Until a snapshot arrives, buffer the diff events (bounded: the oldest is dropped and
   counted when the buffer is full; a snapshot that arrives too late then fails to
   bridge and is simply fetched again).
2. On a snapshot with ``lastUpdateId`` L: replace the book, drop buffered events with
   ``u <= L`` (already inside the snapshot), and require the first event kept to bridge
   the snapshot: ``U <= L + 1 <= u``.
3. Afterwards every event must continue exactly: ``U == previous u + 1``. Events with
   ``u <= previous u`` are stale (a replay or duplicate) and dropped. Anything else is a
   gap: the book is discarded, marked ``needs_resync`` and buffers again (starting
   with the event that revealed the gap) until a new snapshot comes.

An event that overlaps the previous one (``U <= previous u < u``) cannot happen on one
connection; it is treated as a gap too, the conservative choice: a resync costs one REST
call, applying a diff out of order could leave a phantom level for good.

Quantities are absolute (the new size of the level), so a quantity of ``0`` removes the
level; removing a level we never had is normal (it was outside the snapshot's depth).

The book does no I/O and never reads a clock: the decoder feeds it, the live client
fetches snapshots when :attr:`DepthBook.needs_resync` says so, and a replay of a
recording reproduces the same book bit for bit.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import deque
from collections.abc import Iterable, Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Final

import msgspec

DEFAULT_MAX_BUFFER: Final = 1000
"""About 100 s of ``@depth@100ms`` events: far longer than a snapshot takes to fetch."""

Level = tuple[Decimal, Decimal]
"""(price, quantity)."""

DEPTH_COUNTERS: Final = (
    "snapshots",
    "depth_applied",
    "depth_gaps",
    "depth_stale_dropped",
    "depth_buffer_dropped",
    "resyncs",
)


class DepthDiff(msgspec.Struct, frozen=True):
    """One validated ``depthUpdate`` event: update ids ``first_id`` (U) to ``final_id`` (u)."""

    first_id: int
    final_id: int
    bids: list[Level]
    asks: list[Level]


class _Side:
    """Price → quantity for one side, plus the prices kept sorted (ascending) for the best.

    A level is inserted or removed with a binary search and one ``list`` memmove, so the top of
    the book is O(1) to read even right after the best level was taken out (which happens on most
    depth events of a busy symbol; recomputing ``max`` over thousands of levels each time would
    cost tens of microseconds).
    """

    __slots__ = ("_is_bid", "levels", "prices")

    def __init__(self, is_bid: bool) -> None:
        self._is_bid = is_bid
        self.levels: dict[Decimal, Decimal] = {}
        self.prices: list[Decimal] = []

    def clear(self) -> None:
        self.levels.clear()
        self.prices.clear()

    def load(self, levels: Iterable[Level]) -> None:
        self.levels = {price: qty for price, qty in levels if qty != 0}
        self.prices = sorted(self.levels)

    def apply(self, levels: Iterable[Level]) -> None:
        book = self.levels
        prices = self.prices
        for price, qty in levels:
            if qty == 0:
                if book.pop(price, None) is not None:
                    del prices[bisect_left(prices, price)]
            else:
                if price not in book:
                    insort(prices, price)
                book[price] = qty

    def best(self) -> Level | None:
        prices = self.prices
        if not prices:
            return None
        price = prices[-1] if self._is_bid else prices[0]
        return price, self.levels[price]


class DepthBook:
    """One symbol's local order book, synchronised from a snapshot plus diffs.

    ``counters`` is shared with the owner (the decoder passes its own dict) so totals
    across symbols live in one place; the keys are :data:`DEPTH_COUNTERS`.

    - ``snapshots``: snapshots applied.
    - ``depth_applied``: diff events applied to a synced book.
    - ``depth_gaps``: holes in the update ids (including a snapshot the buffered events
      do not bridge), each followed by a resync.
    - ``depth_stale_dropped``: events already contained in the book (``u`` <= the book's id).
    - ``depth_buffer_dropped``: buffered events dropped because the buffer was full.
    - ``resyncs``: times a book was invalidated and asked for a new snapshot (a gap, a
      snapshot that does not bridge, or :meth:`reset` after a reconnect). A new book's
      first snapshot is not a resync.
    """

    def __init__(
        self, symbol: str, max_buffer: int = DEFAULT_MAX_BUFFER, counters: dict[str, int] | None = None
    ) -> None:
        if max_buffer < 1:
            raise ValueError("max_buffer must be >= 1")
        self.symbol = symbol
        self.max_buffer = max_buffer
        self.counters = counters if counters is not None else {}
        for key in DEPTH_COUNTERS:
            self.counters.setdefault(key, 0)
        self._bids = _Side(is_bid=True)
        self._asks = _Side(is_bid=False)
        self._buffer: deque[DepthDiff] = deque(maxlen=max_buffer)
        self._last_id: int | None = None
        self._synced = False
        self._bridged = False
        """False right after a snapshot: the next event kept must bridge it (U <= L+1 <= u)."""
        self._needs_resync = True

    # ------------------------------------------------------------ state

    @property
    def synced(self) -> bool:
        """True when the book reflects a snapshot plus every diff since (its prices can be used)."""
        return self._synced

    @property
    def needs_resync(self) -> bool:
        """True when the book waits for a (new) snapshot: at start, after a gap, after :meth:`reset`."""
        return self._needs_resync

    @property
    def last_update_id(self) -> int | None:
        """The update id the book is at (the snapshot's ``lastUpdateId``, then each event's ``u``)."""
        return self._last_id

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    @property
    def bids(self) -> Mapping[Decimal, Decimal]:
        return MappingProxyType(self._bids.levels)

    @property
    def asks(self) -> Mapping[Decimal, Decimal]:
        return MappingProxyType(self._asks.levels)

    def best_bid(self) -> Level | None:
        """(price, quantity) of the highest bid, or None when unsynced or empty."""
        return self._bids.best() if self._synced else None

    def best_ask(self) -> Level | None:
        """(price, quantity) of the lowest ask, or None when unsynced or empty."""
        return self._asks.best() if self._synced else None

    # ------------------------------------------------------------ input

    def on_diff(self, diff: DepthDiff) -> None:
        """Apply one diff event, or buffer it while the book waits for a snapshot."""
        if not self._synced:
            self._buffer_event(diff)
            return
        last = self._last_id
        assert last is not None
        if diff.final_id <= last:
            self.counters["depth_stale_dropped"] += 1
            return
        if (diff.first_id <= last + 1) if not self._bridged else (diff.first_id == last + 1):
            self._bids.apply(diff.bids)
            self._asks.apply(diff.asks)
            self._last_id = diff.final_id
            self._bridged = True
            self.counters["depth_applied"] += 1
            return
        self.counters["depth_gaps"] += 1
        self._invalidate()
        self._buffer.append(diff)

    def on_snapshot(self, last_update_id: int, bids: Iterable[Level], asks: Iterable[Level]) -> None:
        """Anchor the book on a REST snapshot and replay the buffered events after it."""
        self._bids.load(bids)
        self._asks.load(asks)
        self._last_id = last_update_id
        self._synced = True
        self._bridged = False
        self._needs_resync = False
        self.counters["snapshots"] += 1
        pending = list(self._buffer)
        self._buffer.clear()
        for i, diff in enumerate(pending):
            self.on_diff(diff)
            if not self._synced:  # a gap: on_diff buffered the culprit; keep what follows it too
                self._buffer.extend(pending[i + 1 :])
                break

    def reset(self) -> None:
        """Forget the book and wait for a new snapshot (the stream was reconnected: events were missed)."""
        if not self._needs_resync:
            self._invalidate()
        self._buffer.clear()

    # ------------------------------------------------------------ internals

    def _buffer_event(self, diff: DepthDiff) -> None:
        if len(self._buffer) == self.max_buffer:
            self.counters["depth_buffer_dropped"] += 1
        self._buffer.append(diff)

    def _invalidate(self) -> None:
        self._synced = False
        self._bridged = False
        self._bids.clear()
        self._asks.clear()
        self._buffer.clear()
        if not self._needs_resync:
            self.counters["resyncs"] += 1
        self._needs_resync = True
