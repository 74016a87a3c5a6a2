"""Binance spot market-data frames → engine messages, plus per-symbol book and trade-id state.

What arrives (combined streams, ``/stream?streams=…``) is an envelope
``{"stream": "<symbol>@<kind>", "data": {...}}``; the REST depth snapshot
(``/api/v3/depth``) is a bare ``{"lastUpdateId": …, "bids": […], "asks": […]}``. A
recording holds both, one per line, so one :meth:`BinanceDecoder.decode` handles both
and a replay rebuilds exactly the state the live client had.

- ``<s>@bookTicker`` → :class:`~engine.messages.ExchangeQuote` with ``national=True`` (a
  single venue's top of book *is* its best), ``exchange="BINANCE"``, ``sequence=u``. The
  stream has no event time, so ``ts_event = ts_recv``.
- ``<s>@trade`` → :class:`~engine.messages.TradeTick`, ``sequence=t`` (the trade id), ``ts_event``
  from the trade time ``T`` (ms). Per symbol ``t`` goes up by one: ``t <= last`` is a duplicate
  (counted, dropped: ``[]``), ``t > last + 1`` a gap (counted, the trade still delivered).
- ``<s>@depth`` / ``<s>@depth@100ms`` → applied to the symbol's :class:`DepthBook` (returns
  ``[]``: quotes come from bookTicker, which is faster and carries the same top of book).
- a REST snapshot → :meth:`DepthBook.on_snapshot` of :attr:`BinanceDecoder.snapshot_symbol`,
  or of the only symbol seen so far.

Decoding uses msgspec structs (one pass for the envelope with the payload kept raw, one
for the payload), never ``json`` → dict; prices and quantities are Decimal straight from
their strings. Everything is validated *before* any state changes, so a bad frame raises
:class:`BinanceDecodeError` (counted in ``decode_errors``) and leaves books and trade ids
exactly as they were.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Final

import msgspec

from adapters.binance.depth import DEPTH_COUNTERS, DepthBook, DepthDiff, Level
from engine.errors import KestrelError
from engine.messages import ExchangeQuote, TradeTick

EXCHANGE: Final = "BINANCE"
MAX_PRICE: Final = Decimal(10) ** 12
"""Sanity bound: no spot pair trades near a trillion quote units; beyond it the frame is garbage."""
MAX_QTY: Final = Decimal(10) ** 18
MAX_TS_MS: Final = 1 << 43
"""Year 2248 in ms: keeps ``T * 1e6`` inside int64 nanoseconds."""
MAX_SYMBOL_LEN: Final = 20
_SAMPLE_CHARS: Final = 120

COUNTERS: Final = (
    "frames",
    "trades",
    "book_tickers",
    "depth_updates",
    "trade_gaps",
    "trade_duplicates",
    "decode_errors",
    "unknown_streams",
    *DEPTH_COUNTERS,
)

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]


class BinanceDecodeError(KestrelError):
    """A frame that is not valid Binance market data. ``reason`` says why, ``sample`` shows its start."""

    def __init__(self, reason: str, raw: bytes | str | None = None) -> None:
        self.reason = reason
        self.sample = _sample(raw) if raw is not None else ""
        super().__init__(f"{reason} (frame starts {self.sample})" if self.sample else reason)


def _sample(raw: bytes | str | memoryview) -> str:
    text = bytes(raw[:_SAMPLE_CHARS]) if isinstance(raw, bytes | memoryview) else raw[:_SAMPLE_CHARS]
    more = "…" if len(raw) > _SAMPLE_CHARS else ""
    return f"{text!r}{more}"


# ---------------------------------------------------------------- wire structs


class _Envelope(msgspec.Struct):
    """A combined-stream envelope or a REST snapshot: whichever keys are present say which."""

    stream: str | None = None
    data: msgspec.Raw = msgspec.Raw()
    """Empty when absent (msgspec.Raw cannot be optional)."""
    lastUpdateId: NonNegInt | None = None
    bids: list[Level] | None = None
    asks: list[Level] | None = None


class _Snapshot(msgspec.Struct):
    lastUpdateId: NonNegInt
    bids: list[Level]
    asks: list[Level]


class _BookTicker(msgspec.Struct):
    u: NonNegInt
    s: str
    b: Decimal
    B: Decimal
    a: Decimal
    A: Decimal


class _Trade(msgspec.Struct):
    e: str
    s: str
    t: NonNegInt
    p: Decimal
    q: Decimal
    T: NonNegInt


class _Depth(msgspec.Struct):
    e: str
    s: str
    U: NonNegInt
    u: NonNegInt
    b: list[Level]
    a: list[Level]


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_SNAPSHOT = msgspec.json.Decoder(_Snapshot)
_BOOK_TICKER = msgspec.json.Decoder(_BookTicker)
_TRADE = msgspec.json.Decoder(_Trade)
_DEPTH = msgspec.json.Decoder(_Depth)

_DEPTH_KINDS: Final = frozenset({"depth", "depth@100ms", "depth@1000ms"})


# ---------------------------------------------------------------- validation


def _price(value: Decimal, what: str) -> Decimal:
    if not value.is_finite() or not 0 < value < MAX_PRICE:
        raise BinanceDecodeError(f"{what} {value} is not a positive price")
    return value


def _qty(value: Decimal, what: str) -> Decimal:
    if not value.is_finite() or not 0 <= value < MAX_QTY:
        raise BinanceDecodeError(f"{what} {value} is not a quantity")
    return value


def _levels(levels: list[Level], what: str) -> list[Level]:
    # Inlined checks (depth frames carry dozens of levels); is_finite first: NaN/sNaN do not compare.
    for price, qty in levels:
        if not (price.is_finite() and qty.is_finite() and 0 < price < MAX_PRICE and 0 <= qty < MAX_QTY):
            raise BinanceDecodeError(f"{what} level [{price}, {qty}] is not a positive price and a quantity")
    return levels


def _symbol(value: str, stream_symbol: str | None) -> str:
    if not (0 < len(value) <= MAX_SYMBOL_LEN and value.isascii() and value.isalnum() and value == value.upper()):
        raise BinanceDecodeError(f"bad symbol {value[:40]!r}")
    if stream_symbol is not None and stream_symbol.upper() != value:
        raise BinanceDecodeError(f"symbol {value!r} does not match its stream {stream_symbol[:40]!r}")
    return value


# ---------------------------------------------------------------- the decoder


class BinanceDecoder:
    """Decodes frames of one Binance connection (or recording) and keeps its per-symbol state.

    Not thread-safe and not shared between connections of different providers: its trade
    ids and books are the continuity of *one* feed.
    """

    def __init__(self, provider: str = "binance") -> None:
        self.provider = provider
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.snapshot_symbol: str | None = None
        """The symbol a bare REST snapshot in :meth:`decode` belongs to; None: the only symbol seen."""
        self.max_buffer = 1000
        """Depth events buffered per symbol while waiting for a snapshot (for books created later)."""
        self._books: dict[str, DepthBook] = {}
        self._last_trade: dict[str, int] = {}
        self._symbols: set[str] = set()

    # ------------------------------------------------------------ public

    def decode(self, raw: bytes | str, ts_recv: int) -> list[ExchangeQuote | TradeTick]:
        """Decode one frame; raise :class:`BinanceDecodeError` (state untouched) if it is not valid."""
        self.counters["frames"] += 1
        try:
            return self._decode(raw, ts_recv)
        except BinanceDecodeError:
            self.counters["decode_errors"] += 1
            raise

    def on_snapshot(self, symbol: str, snapshot: bytes | str | Mapping[str, Any]) -> None:
        """Apply a REST ``/api/v3/depth`` result (body, or already parsed) to ``symbol``'s book."""
        try:
            if isinstance(snapshot, bytes | str):
                snap = _SNAPSHOT.decode(snapshot)
            else:
                snap = msgspec.convert(snapshot, _Snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError) as exc:
            self.counters["decode_errors"] += 1
            raw = snapshot if isinstance(snapshot, bytes | str) else repr(snapshot)
            raise BinanceDecodeError(f"depth snapshot for {symbol}: {exc}", raw) from None
        try:
            self._apply_snapshot(_symbol(symbol.upper(), None), snap.lastUpdateId, snap.bids, snap.asks)
        except BinanceDecodeError:
            self.counters["decode_errors"] += 1
            raise

    def book(self, symbol: str) -> DepthBook | None:
        return self._books.get(symbol.upper())

    def last_trade_id(self, symbol: str) -> int | None:
        """The last trade id delivered for ``symbol`` (duplicates are checked against it)."""
        return self._last_trade.get(symbol.upper())

    @property
    def symbols(self) -> frozenset[str]:
        """Every symbol seen in a valid frame so far."""
        return frozenset(self._symbols)

    def reset_books(self) -> None:
        """Every book waits for a new snapshot (after a reconnect: diff events were missed)."""
        for book in self._books.values():
            book.reset()

    # ------------------------------------------------------------ internals

    def _decode(self, raw: bytes | str, ts_recv: int) -> list[ExchangeQuote | TradeTick]:
        try:
            env = _ENVELOPE.decode(raw)
        except (msgspec.DecodeError, UnicodeError) as exc:
            raise BinanceDecodeError(f"not a Binance frame: {exc}", raw) from None
        stream, data = env.stream, env.data
        if stream is None or not data:
            if env.lastUpdateId is not None and env.bids is not None and env.asks is not None:
                self._apply_snapshot(self._snapshot_target(), env.lastUpdateId, env.bids, env.asks)
                return []
            raise BinanceDecodeError("neither a stream envelope nor a depth snapshot", raw)
        stream_symbol, _, kind = stream.partition("@")
        try:
            if kind == "bookTicker":
                return [self._book_ticker(_BOOK_TICKER.decode(data), stream_symbol, ts_recv)]
            if kind == "trade":
                return self._trade(_TRADE.decode(data), stream_symbol, ts_recv)
            if kind in _DEPTH_KINDS:
                self._depth(_DEPTH.decode(data), stream_symbol)
                return []
        except (msgspec.DecodeError, UnicodeError) as exc:  # ValidationError included; bad UTF-8 in a string
            raise BinanceDecodeError(f"{stream[:60]}: {exc}", raw) from None
        except BinanceDecodeError as exc:
            raise BinanceDecodeError(f"{stream[:60]}: {exc.reason}", raw) from None
        self.counters["unknown_streams"] += 1
        raise BinanceDecodeError(f"unknown stream {stream[:60]!r}", raw)

    def _book_ticker(self, bt: _BookTicker, stream_symbol: str, ts_recv: int) -> ExchangeQuote:
        symbol = _symbol(bt.s, stream_symbol)
        quote = ExchangeQuote(
            symbol=symbol,
            exchange=EXCHANGE,
            national=True,
            bid_price=_price(bt.b, "bid price"),
            bid_size=_qty(bt.B, "bid size"),
            ask_price=_price(bt.a, "ask price"),
            ask_size=_qty(bt.A, "ask size"),
            suspicious=False,
            provider=self.provider,
            ts_event=ts_recv,
            ts_recv=ts_recv,
            sequence=bt.u,
        )
        self._symbols.add(symbol)
        self.counters["book_tickers"] += 1
        return quote

    def _trade(self, tr: _Trade, stream_symbol: str, ts_recv: int) -> list[ExchangeQuote | TradeTick]:
        if tr.e != "trade":
            raise BinanceDecodeError(f"event type {tr.e[:40]!r} on a trade stream")
        if not 0 < tr.T < MAX_TS_MS:
            raise BinanceDecodeError(f"trade time {tr.T} ms out of range")
        symbol = _symbol(tr.s, stream_symbol)
        tick = TradeTick(
            symbol=symbol,
            exchange=EXCHANGE,
            price=_price(tr.p, "trade price"),
            size=_qty(tr.q, "trade quantity"),
            suspicious=False,
            provider=self.provider,
            ts_event=tr.T * 1_000_000,
            ts_recv=ts_recv,
            sequence=tr.t,
        )
        self._symbols.add(symbol)
        self.counters["trades"] += 1
        last = self._last_trade.get(symbol)
        if last is not None:
            if tr.t <= last:
                self.counters["trade_duplicates"] += 1
                return []
            if tr.t != last + 1:
                self.counters["trade_gaps"] += 1
        self._last_trade[symbol] = tr.t
        return [tick]

    def _depth(self, d: _Depth, stream_symbol: str) -> None:
        if d.e != "depthUpdate":
            raise BinanceDecodeError(f"event type {d.e[:40]!r} on a depth stream")
        if d.u < d.U:
            raise BinanceDecodeError(f"first update id {d.U} after final update id {d.u}")
        symbol = _symbol(d.s, stream_symbol)
        diff = DepthDiff(d.U, d.u, _levels(d.b, "bid"), _levels(d.a, "ask"))
        self._symbols.add(symbol)
        self.counters["depth_updates"] += 1
        self._book_for(symbol).on_diff(diff)

    def _snapshot_target(self) -> str:
        if self.snapshot_symbol is not None:
            return self.snapshot_symbol.upper()
        if len(self._symbols) == 1:
            return next(iter(self._symbols))
        raise BinanceDecodeError(
            f"a depth snapshot names no symbol and {len(self._symbols)} symbols were seen; set snapshot_symbol"
        )

    def _apply_snapshot(self, symbol: str, last_update_id: int, bids: list[Level], asks: list[Level]) -> None:
        _levels(bids, "snapshot bid")
        _levels(asks, "snapshot ask")
        self._book_for(symbol).on_snapshot(last_update_id, bids, asks)

    def _book_for(self, symbol: str) -> DepthBook:
        book = self._books.get(symbol)
        if book is None:
            book = self._books[symbol] = DepthBook(symbol, self.max_buffer, self.counters)
        return book
