"""The Alpaca venue simulator's state: one account, its assets, orders, positions and executions.

Everything the REST server and the trade-updates stream show comes from here, and
everything here happens on the engine :class:`~engine.clock.Clock` and one seeded
:class:`random.Random`, so the same recording, the same requests at the same (clock)
times and the same seed give the same order ids, fills and execution ids.

**Order life** (status / trade-update event):

1. ``POST /v2/orders`` is checked at once (422 invalid, 403 buying power or
   shortability, 422 duplicate ``client_order_id``) and stored as ``pending_new``; the
   response shows it that way unless the acknowledgement latency is zero.
2. After the **ack latency** it becomes ``new`` (event ``new``) and reaches the matching
   engine, which matches it against the current quote (see ``matching.py``) and then
   against every later quote update.
3. A match takes the quoted size at once (nobody else can have it), and its execution is
   reported after the **fill latency**: ``partially_filled`` / ``filled`` with events
   ``partial_fill`` / ``fill`` carrying ``price``, ``qty``, ``position_qty`` and an
   ``execution_id`` (a UUID from the seeded generator).
4. ``DELETE`` answers 204 and marks the order ``pending_cancel``; after the ack latency
   the cancel reaches the matching engine and the order leaves the book. Executions
   already in flight still land (a cancel can lose the race, as on a real venue); then
   the order is ``canceled`` (event ``canceled``) unless it filled completely.
5. ``PATCH`` replaces at once: the old order becomes ``replaced`` (``replaced_by``,
   event ``replaced`` carrying the old order) and a new order with a new id and
   ``replaces`` = old id starts at step 1 (its quantity is the new total; what the old
   order filled stays with the old order). Refused (422) while the order is not
   ``new``/``partially_filled``, has a cancel pending or an execution in flight.
6. ``day`` orders (and ``opg``/``cls``, treated as ``day``) expire (event ``expired``)
   when :meth:`VenueState.expire_day_orders` is called — the feed player does so when
   the recording ends.

Latencies are drawn uniformly from ``[lo, hi]`` seconds (``VenueSettings``); ``(0, 0)``
makes that step synchronous. Under a :class:`~engine.clock.SimClock` the timers fire
when the feed player advances the clock. A ``rejected`` order only comes from the
``Faults.reject_next`` hook; refusals of invalid or unaffordable orders are synchronous
HTTP errors and create no order.

**Money.** Cash starts at ``starting_cash``; a buy pays ``qty × price``, a sell receives
it (no fees). Positions are valued at the quote mid (else the last trade). Equity = cash
+ signed market value. Buying power = max(0, multiplier × equity − gross market value −
the cost of working orders that would add exposure). Per symbol and side, working
orders add exposure with the part of their remaining quantity beyond what closes the
position (sells beyond the long, buys beyond the short), valued at the side's average
reference price: the limit (the stop for stop orders; the current ask/bid for market
orders). A new order is refused with 403 ``insufficient buying power`` (with
``buying_power`` and ``cost_basis``) when its own exposure-adding quantity × its
reference price exceeds the buying power left. A market order for a symbol with no
quote and no trade yet costs nothing. The multiplier defaults to 1 (cash-like);
shorting is still allowed.

**Shorting.** A sell beyond the long quantity not already committed to other sell
orders is a short sale: refused (403) when the account may not short (``account is not
allowed to short``) or the asset is not shortable (``insufficient qty available for
order`` when some shares are held, else ``asset X is not shortable``).
"""

from __future__ import annotations

import collections
import functools
import itertools
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any, Final

import msgspec

from adapters.alpaca import wire
from adapters.alpaca_sim.events import SimQuote, SimTrade
from adapters.alpaca_sim.matching import (
    ZERO,
    Book,
    SimOrder,
    WorkingOrders,
    fok_fillable,
    match,
    plain,
    stop_reached,
)
from adapters.alpaca_sim.sessions import MarketCalendar
from engine.clock import NS_PER_S, Clock, TimerHandle

FAKEPACA: Final = "FAKEPACA"
ASSET_NAMESPACE: Final = uuid.UUID("6b1d3c52-8a0e-4a55-9d1e-6c0f1a9e7b21")
DAY_LIKE: Final = frozenset({"day", "opg", "cls"})
MAX_QTY_PLACES: Final = 9
ONE_CENT: Final = Decimal("0.01")


def decimal_places(value: Decimal) -> int:
    """Digits after the point once trailing zeros are dropped (``1.50`` → 1, ``100`` → 0)."""
    exponent = plain(value).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


def asset_id_for(symbol: str) -> str:
    """A stable asset id per symbol (independent of the seed, like Alpaca's fixed asset ids)."""
    return str(uuid.uuid5(ASSET_NAMESPACE, symbol.upper()))


class VenueSettings(msgspec.Struct, kw_only=True, frozen=True):
    """How the simulated venue behaves. Latencies are ``(lo, hi)`` seconds, drawn uniformly."""

    starting_cash: Decimal = Decimal(100000)
    symbols: tuple[str, ...] = ()
    """Tradable symbols besides ``FAKEPACA`` (the feed's symbols)."""
    non_shortable: tuple[str, ...] = ()
    shorting_enabled: bool = True
    buying_power_multiplier: Decimal = Decimal(1)
    ack_latency_s: tuple[float, float] = (0.001, 0.005)
    fill_latency_s: tuple[float, float] = (0.001, 0.005)
    emit_pending_events: bool = False
    """Also send ``pending_new`` / ``pending_cancel`` trade updates (Alpaca sends them rarely)."""
    default_exchange: str = "NYSE"
    exchanges: dict[str, str] = msgspec.field(default_factory=dict)
    holidays: tuple[str, ...] = ()
    account_number: str = "PA3KESTREL01"
    client_order_id_max_len: int = 128


class VenueError(Exception):
    """A refusal with Alpaca's error envelope: HTTP status, 8-digit code, message, extra keys."""

    def __init__(self, status: int, code: int, message: str, extra: dict[str, Any] | None = None) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.extra = dict(extra or {})
        super().__init__(f"{status} {code} {message}")

    def body(self) -> dict[str, Any]:
        return {**self.extra, "code": self.code, "message": self.message}


def unprocessable(message: str, code: int = wire.CODE_UNPROCESSABLE) -> VenueError:
    return VenueError(422, code, message)


def not_found(message: str) -> VenueError:
    return VenueError(404, wire.CODE_NOT_FOUND, message)


def forbidden(message: str, **extra: Any) -> VenueError:
    return VenueError(403, wire.CODE_FORBIDDEN, message, extra)


class Faults:
    """Fault hooks for adapter and chaos tests. All off by default; off, they change nothing.

    Every injected fault is counted in :attr:`injected` under its kind (in brackets
    below), so a chaos run can report what it did; ``injected`` is a record and
    :meth:`reset` keeps it.

    REST (``server.py``):

    - ``drop_submit_response_next`` [``submit_reply_lost``, per dropped reply]: the next N
      ``POST /v2/orders`` are accepted and stored, then the connection is dropped without
      a response (an ambiguous outcome).
    - ``fail_next`` [``http_429`` for 429, ``http_5xx`` for 500-599, ``http_error`` for any
      other status; per answer]: the next requests (one per entry) are answered with these
      HTTP statuses (e.g. 429, 500, 503) and a JSON error body, without being processed.
    - ``delay_response_s`` [``response_delayed``, per response]: every REST response is
      held this long after the request was processed (on the engine clock: under a
      SimClock it waits until the clock moves).

    Orders (this module):

    - ``reject_next`` [``order_rejected``]: the next N accepted orders are rejected
      asynchronously at acknowledgement (status ``rejected``, event ``rejected``).
    - ``late_fill_after_cancel_next`` [``late_fill_after_cancel``]: the next N cancels of a
      *working* order (acknowledged, not already being cancelled, stop triggered, some
      quantity not yet matched) whose side of the quote has a price get a fill that races
      the cancel: REST answers 204 as usual, but the venue first executes half of the
      unmatched quantity (rounded down to whole shares; all of it when that is 0) at the
      current touch (the ask for a buy, the bid for a sell), or at the order's limit when
      the touch is through it, and reports that fill (``partial_fill``, or ``fill`` when
      it completes the order: then the cancel lost and no ``canceled`` follows) before
      the ``canceled`` update, which carries the filled part. Position, cash, executions
      and ``filled_qty`` are booked as for any fill (after the fill latency). Cancels of
      orders that do not qualify leave the counter alone.

    Trade updates (``/stream``). A venue update passes the hold, then duplicate/reorder,
    then goes to every connection's queue (where a stall can keep it):

    - ``hold_trade_updates`` [``trade_updates_held``, per switch from False to True]:
      while True, trade updates are queued instead of sent (as if the client were
      disconnected); setting it back to False sends them in order, and
      :meth:`discard_held_trade_updates` drops them instead (they were missed for good —
      the orders' state is still visible through REST).
    - ``duplicate_trade_updates_next`` [``trade_update_duplicate``, per update]: the next
      N updates are each sent twice, back to back (the same payload).
    - ``reorder_trade_updates_next`` [``trade_update_reorder``, per held-back update]: the
      next N pairs of consecutive updates are swapped: an update is held back and sent
      right after the next one (which is not itself held back: pairs do not overlap). A
      held-back update with no successor within ``reorder_max_hold_s`` (engine clock;
      0 = wait for ever) is sent alone.
    - :meth:`disconnect_streams` [``stream_drop``, per call]: drops every ``/stream``
      websocket abruptly (market data is :meth:`disconnect_market_data`).

    Market data (``/v2/{feed}``, ``market_data.py``), decided once per published quote or
    trade frame (one message per frame) that has at least one subscriber, and applied to
    every subscriber of that frame alike; a frame with no subscriber consumes nothing:

    - ``md_drop_next`` [``md_drop``, per frame]: the next N frames are not sent (a gap).
    - ``md_duplicate_next`` [``md_duplicate``, per frame]: the next N frames are sent twice.
    - ``md_reorder_next`` [``md_reorder``, per held-back frame]: N times, a frame is held
      back per connection and sent right after the next frame that connection gets (any
      frame, control frames included). A frame is only held back when none of its
      subscribers still holds one.
    - :meth:`disconnect_market_data` [``md_stream_drop``, per call]: drops every
      market-data websocket abruptly.
    - :meth:`silence_feed` [``provider_silent``, per call]: one feed (``iex`` or ``sip``)
      goes quiet for ``seconds`` of engine clock: its connections stay open, answer pings
      and get control frames, but no quote/trade frames (dropped, not queued), and a
      connection made meanwhile is just as quiet. A provider with an outage upstream looks
      like this: nothing a client can see at the socket says it is down, so only the
      absence of data can (pricing's freshness SLA). The other feeds are untouched;
      :meth:`reset` does not end a silence.

    Both websockets:

    - :meth:`stall_streams` [``stream_stall``, per call]: the connections open at the call
      go half-open for ``seconds`` of engine clock: nothing is sent on them and their
      pings are not answered. Trade updates wait in the connection's queue and follow in
      order afterwards (none lost, unless the queue limit is reached: then the
      connection is dropped as a slow client); market-data quote/trade frames for a
      stalled connection are dropped (a gap), its control frames wait. Connections made
      during the stall are served normally; :meth:`reset` does not end a stall.

    Whole server: ``RunningSimulator.restart_server`` (``cli.py``) [``server_restart``].
    """

    def __init__(self, deliver: Callable[[wire.TradeUpdate], None], clock: Clock | None = None) -> None:
        self.drop_submit_response_next = 0
        self.fail_next: list[int] = []
        self.delay_response_s = 0.0
        self.reject_next = 0
        self.late_fill_after_cancel_next = 0
        self.duplicate_trade_updates_next = 0
        self.reorder_trade_updates_next = 0
        self.reorder_max_hold_s = 1.0
        self.md_duplicate_next = 0
        self.md_drop_next = 0
        self.md_reorder_next = 0
        self.injected: collections.Counter[str] = collections.Counter()
        """Faults injected so far, per kind (see the class docstring for the names)."""
        self._clock = clock
        self._hold = False
        self._held: list[wire.TradeUpdate] = []
        self._reordered: wire.TradeUpdate | None = None
        self._reorder_timer: TimerHandle | None = None
        self._deliver = deliver
        self._disconnectors: list[Callable[[], int]] = []
        self._md_disconnectors: list[Callable[[], Awaitable[int]]] = []
        self._stall_targets: list[Callable[[int], int]] = []
        self._silence_targets: list[Callable[[str, int], int]] = []

    def count(self, kind: str, n: int = 1) -> None:
        """Record ``n`` injected faults of ``kind``."""
        self.injected[kind] += n

    @property
    def hold_trade_updates(self) -> bool:
        return self._hold

    @hold_trade_updates.setter
    def hold_trade_updates(self, value: bool) -> None:
        if value and not self._hold:
            self.count("trade_updates_held")
        self._hold = value
        if not value:
            held, self._held = self._held, []
            for update in held:
                self._send(update)

    def intercept(self, update: wire.TradeUpdate) -> bool:
        """Take over the delivery of ``update`` when a trade-update fault applies; True if taken.

        Held updates are queued; duplicated or reordered ones are delivered from here.
        """
        if self._hold:
            self._held.append(update)
            return True
        if self._reordered is None and self.duplicate_trade_updates_next <= 0 and self.reorder_trade_updates_next <= 0:
            return False
        self._send(update)
        return True

    def _send(self, update: wire.TradeUpdate) -> None:
        """Deliver ``update`` through the duplicate/reorder faults."""
        held = self._reordered
        if held is not None:  # the pair's second update goes first, then the held-back one
            self._reordered = None
            if self._reorder_timer is not None:
                self._reorder_timer.cancel()
                self._reorder_timer = None
            self._pass(update)
            self._deliver(held)
        elif self.duplicate_trade_updates_next > 0:
            self._pass(update)
        elif self.reorder_trade_updates_next > 0:
            self.reorder_trade_updates_next -= 1
            self.count("trade_update_reorder")
            self._reordered = update
            if self._clock is not None and self.reorder_max_hold_s > 0:
                self._reorder_timer = self._clock.call_later(self.reorder_max_hold_s, self._release_reordered)
        else:
            self._deliver(update)

    def _pass(self, update: wire.TradeUpdate) -> None:
        self._deliver(update)
        if self.duplicate_trade_updates_next > 0:
            self.duplicate_trade_updates_next -= 1
            self.count("trade_update_duplicate")
            self._deliver(update)

    def _release_reordered(self) -> None:
        """No successor came in time: the held-back update goes alone (behind a hold, if any)."""
        self._reorder_timer = None
        held, self._reordered = self._reordered, None
        if held is None:
            return
        if self._hold:
            self._held.insert(0, held)
        else:
            self._deliver(held)

    @property
    def held_trade_updates(self) -> int:
        return len(self._held)

    def discard_held_trade_updates(self) -> int:
        """Drop the queued trade updates (the client missed them); returns how many."""
        count = len(self._held)
        self._held.clear()
        return count

    def add_stream_disconnector(self, disconnect: Callable[[], int]) -> None:
        """Register what :meth:`disconnect_streams` calls (the trade-stream hub does)."""
        self._disconnectors.append(disconnect)

    def add_market_data_disconnector(self, disconnect: Callable[[], Awaitable[int]]) -> None:
        """Register what :meth:`disconnect_market_data` calls (the market-data hub does)."""
        self._md_disconnectors.append(disconnect)

    def add_stall_target(self, stall: Callable[[int], int]) -> None:
        """Register what :meth:`stall_streams` calls with the stall's end (epoch ns); it
        returns how many connections it stalled (both websocket hubs register)."""
        self._stall_targets.append(stall)

    def add_silence_target(self, silence: Callable[[str, int], int]) -> None:
        """Register what :meth:`silence_feed` calls with the feed and the silence's end (epoch
        ns); it returns how many of that feed's connections are open (the market-data hub does)."""
        self._silence_targets.append(silence)

    async def disconnect_streams(self) -> int:
        """Abort every trade-updates websocket without a close handshake; returns how many."""
        self.count("stream_drop")
        return sum(disconnect() for disconnect in self._disconnectors)

    async def disconnect_market_data(self) -> int:
        """Abort every market-data websocket without a close handshake; returns how many."""
        self.count("md_stream_drop")
        dropped = 0
        for disconnect in self._md_disconnectors:
            dropped += await disconnect()
        return dropped

    def stall_streams(self, seconds: float) -> int:
        """Stall the open trade-update and market-data websockets for ``seconds`` (engine
        clock); returns how many connections were stalled. See the class docstring."""
        if self._clock is None:
            raise RuntimeError("stall_streams needs the faults' clock")
        if not seconds > 0:
            return 0
        self.count("stream_stall")
        until_ns = self._clock.time_ns() + round(seconds * NS_PER_S)
        return sum(stall(until_ns) for stall in self._stall_targets)

    def silence_feed(self, feed: str, seconds: float) -> int:
        """Silence market-data feed ``feed`` for ``seconds`` of engine clock; returns how many of
        its connections were open (all of them go quiet, and new ones too). See the class
        docstring. An unknown feed is a ``ValueError`` from the hub, before anything is counted."""
        if self._clock is None:
            raise RuntimeError("silence_feed needs the faults' clock")
        if not seconds > 0:
            return 0
        until_ns = self._clock.time_ns() + round(seconds * NS_PER_S)
        silenced = sum(silence(feed, until_ns) for silence in self._silence_targets)
        self.count("provider_silent")
        return silenced

    def next_md_fault(self, can_reorder: bool) -> str | None:
        """The fault for the next market-data frame, consumed and counted: ``"drop"``,
        ``"duplicate"``, ``"reorder"`` (only when ``can_reorder``) or None."""
        if self.md_drop_next > 0:
            self.md_drop_next -= 1
            self.count("md_drop")
            return "drop"
        if self.md_duplicate_next > 0:
            self.md_duplicate_next -= 1
            self.count("md_duplicate")
            return "duplicate"
        if self.md_reorder_next > 0 and can_reorder:
            self.md_reorder_next -= 1
            self.count("md_reorder")
            return "reorder"
        return None

    def reset(self) -> None:
        """Every fault off (held and held-back trade updates are delivered; a stall or a silence runs on)."""
        self.drop_submit_response_next = 0
        self.fail_next.clear()
        self.delay_response_s = 0.0
        self.reject_next = 0
        self.late_fill_after_cancel_next = 0
        self.duplicate_trade_updates_next = 0
        self.reorder_trade_updates_next = 0
        self.md_duplicate_next = 0
        self.md_drop_next = 0
        self.md_reorder_next = 0
        self.hold_trade_updates = False
        if self._reorder_timer is not None:
            self._reorder_timer.cancel()
        self._release_reordered()


@dataclass
class Execution:
    """One execution (a fill or partial fill) as the venue recorded it."""

    id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    ts_ns: int
    position_qty: Decimal


def _fixed_price(order: SimOrder) -> Decimal | None:
    """The price an order's buying-power cost is computed at, if it does not move with the market."""
    if order.type in ("limit", "stop_limit"):
        return order.limit_price
    if order.type == "stop":
        return order.stop_price
    return None


@dataclass
class _SideTotals:
    qty: Decimal = ZERO
    priced_qty: Decimal = ZERO
    notional: Decimal = ZERO


@dataclass
class _Position:
    symbol: str
    asset_id: str
    qty: Decimal = ZERO
    avg_entry_price: Decimal = ZERO

    def apply(self, signed_qty: Decimal, price: Decimal) -> None:
        """Book an execution: average in when adding, keep the average when reducing."""
        held = self.qty
        if held == 0 or (held > 0) == (signed_qty > 0):
            total = abs(held) + abs(signed_qty)
            self.avg_entry_price = (abs(held) * self.avg_entry_price + abs(signed_qty) * price) / total
        elif abs(signed_qty) > abs(held):
            self.avg_entry_price = price  # flipped: the rest opens at this price
        self.qty = held + signed_qty
        if self.qty == 0:
            self.avg_entry_price = ZERO


class VenueState:
    """The venue: validation, risk checks, order state machine, matching, account.

    Public entry points are synchronous and run on the event loop; the REST server and
    the feed player call them, timers scheduled on the clock continue their work.
    """

    def __init__(self, settings: VenueSettings, clock: Clock, seed: int = 0) -> None:
        self.settings = settings
        self.clock = clock
        self.rng = random.Random(seed)
        self.faults = Faults(self._deliver, clock)
        self.calendar = MarketCalendar(settings.holidays)
        self.session_open: bool | None = None
        """Set by the feed player while it replays (overrides the calendar for ``/v2/clock``)."""
        self.trade_stream_down_since_ns: int | None = clock.time_ns()
        """Since when no client has listened to ``trade_updates`` (None while one does); kept
        by the trade-stream hub. A stalled (half-open) connection still counts as listening."""
        self.accepted_without_stream: dict[str, float] = {}
        """Client order id → how long (s) no client had been listening to trade updates when
        the order was accepted: what the chaos invariant "no order sent while the order
        stream is down" is checked against."""
        self.account_id = self._new_uuid()
        self.created_at = clock.time_ns()
        self.cash = settings.starting_cash
        self.last_equity = settings.starting_cash
        self.assets: dict[str, wire.Asset] = {}
        self._asset_ids: dict[str, str] = {}
        self.books: dict[str, Book] = {}
        self.orders: dict[str, SimOrder] = {}
        self._by_client_id: dict[str, SimOrder] = {}
        self._open: dict[str, SimOrder] = {}
        """Orders not yet in a final status, in arrival order."""
        self._totals: dict[tuple[str, str], _SideTotals] = {}
        """Per (symbol, side): remaining quantity of the working orders (see ``_sync_reservation``)."""
        self._working: dict[str, WorkingOrders] = {}
        self._positions: dict[str, _Position] = {}
        self.executions: list[Execution] = []
        self._listeners: list[Callable[[wire.TradeUpdate], None]] = []
        self._seq = itertools.count(1)
        self.counters: dict[str, int] = {
            "orders": 0,
            "refused": 0,
            "executions": 0,
            "canceled": 0,
            "replaced": 0,
            "expired": 0,
            "rejected": 0,
            "quotes": 0,
            "trades": 0,
        }
        for symbol in (*settings.symbols, FAKEPACA):
            self.add_symbol(symbol)

    # ------------------------------------------------------------ infrastructure

    def _new_uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _draw(self, bounds: tuple[float, float]) -> float:
        lo, hi = bounds
        if hi <= 0:
            return 0.0
        return self.rng.uniform(lo, hi)

    def _schedule(self, delay_s: float, callback: Callable[[], None]) -> None:
        if delay_s <= 0:
            callback()
        else:
            self.clock.call_later(delay_s, callback)

    def subscribe(self, listener: Callable[[wire.TradeUpdate], None]) -> Callable[[], None]:
        """Receive every trade update (in order); returns the unsubscribe function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _emit(self, event: str, order: SimOrder, execution: Execution | None = None) -> None:
        update = wire.TradeUpdate(
            event=event,
            order=order.to_wire(),
            timestamp=wire.timestamp(self.clock.time_ns()),
        )
        if execution is not None:
            update.execution_id = execution.id
            update.price = plain(execution.price)
            update.qty = plain(execution.qty)
            update.position_qty = plain(execution.position_qty)
        if not self.faults.intercept(update):
            self._deliver(update)

    def _deliver(self, update: wire.TradeUpdate) -> None:
        for listener in list(self._listeners):
            listener(update)

    # ------------------------------------------------------------ assets

    def add_symbol(self, symbol: str) -> wire.Asset:
        symbol = symbol.upper()
        found = self.assets.get(symbol)
        if found is not None:
            return found
        shortable = symbol not in {s.upper() for s in self.settings.non_shortable}
        asset = wire.Asset(
            id=asset_id_for(symbol),
            asset_class="us_equity",
            exchange=self.settings.exchanges.get(symbol, self.settings.default_exchange),
            symbol=symbol,
            name=f"{symbol} (Kestrel simulator)",
            status="active",
            tradable=True,
            marginable=True,
            shortable=shortable,
            easy_to_borrow=shortable,
            fractionable=True,
        )
        self.assets[symbol] = asset
        self._asset_ids[asset.id] = symbol
        self.books[symbol] = Book(symbol)
        return asset

    def find_asset(self, symbol_or_id: str) -> wire.Asset | None:
        symbol = self._asset_ids.get(symbol_or_id.lower(), symbol_or_id.upper())
        return self.assets.get(symbol)

    def asset(self, symbol_or_id: str) -> wire.Asset:
        found = self.find_asset(symbol_or_id)
        if found is None:
            raise not_found(f"asset not found for {symbol_or_id}")
        return found

    def list_assets(self, status: str | None = None, asset_class: str | None = None) -> list[wire.Asset]:
        return [
            a
            for a in self.assets.values()
            if (status is None or a.status == status)
            and (asset_class is None or a.asset_class == asset_class)
        ]

    # ------------------------------------------------------------ market data

    def on_quote(self, quote: SimQuote) -> None:
        """A new NBBO: offer its size to working orders, in arrival order."""
        if quote.symbol not in self.assets:
            self.add_symbol(quote.symbol)
        self.counters["quotes"] += 1
        self.books[quote.symbol].update(quote)
        self._match_symbol(quote.symbol, None)

    def on_trade(self, trade: SimTrade) -> None:
        """A trade print: it can trigger stops (it never fills orders itself)."""
        if trade.symbol not in self.assets:
            self.add_symbol(trade.symbol)
        self.counters["trades"] += 1
        self.books[trade.symbol].last_trade = trade.price
        self._match_symbol(trade.symbol, trade.price)

    def _match_symbol(self, symbol: str, trade_price: Decimal | None) -> None:
        working = self._working.get(symbol)
        if not working:
            return
        book = self.books[symbol]
        working.trigger(book, trade_price)
        for side in ("buy", "sell"):
            price, left = book.touch(side)
            if price is None or left <= 0:
                continue
            for order in working.marketable(side, price):
                self._try_match(order, book)
                if book.touch(side)[1] <= 0:
                    break

    # ------------------------------------------------------------ validation helpers

    def _check_qty(self, qty: Decimal | None, order_type: str, tif: str) -> Decimal:
        if qty is None:
            raise unprocessable("qty or notional is required")
        if not qty.is_finite() or qty <= 0:
            raise unprocessable("qty must be > 0")
        if decimal_places(qty) > MAX_QTY_PLACES:
            raise unprocessable(f"qty must have at most {MAX_QTY_PLACES} decimal places")
        if qty != qty.to_integral_value():
            if tif != "day":
                raise unprocessable("fractional orders must be DAY orders")
            if order_type != "market":
                raise unprocessable("fractional orders must be market orders")
        return plain(qty)

    @staticmethod
    def _check_price(name: str, value: Decimal) -> Decimal:
        if not value.is_finite() or value <= 0:
            raise unprocessable(f"invalid {name} {value}: must be > 0")
        if decimal_places(value) > (2 if value >= 1 else 4):
            raise unprocessable(
                f"invalid {name} {value}. sub-penny increment does not fulfill minimum pricing criteria"
            )
        return plain(value)

    def _check_client_order_id(self, client_order_id: str | None) -> str:
        if client_order_id is None or client_order_id == "":
            return self._new_uuid()
        if len(client_order_id) > self.settings.client_order_id_max_len:
            raise unprocessable(
                f"client_order_id must be no more than {self.settings.client_order_id_max_len} characters",
                wire.CODE_MALFORMED,
            )
        if client_order_id in self._by_client_id:
            raise unprocessable("client_order_id must be unique", wire.CODE_MALFORMED)
        return client_order_id

    # ------------------------------------------------------------ risk

    def _open_orders(self, symbol: str | None = None) -> Iterable[SimOrder]:
        for order in self._open.values():
            if order.pending_final is None and (symbol is None or order.symbol == symbol):
                yield order

    def _reference_price(self, symbol: str, side: str, order_type: str, limit: Decimal | None,
                         stop: Decimal | None) -> Decimal:
        if order_type in ("limit", "stop_limit") and limit is not None:
            return limit
        if order_type == "stop" and stop is not None:
            return stop
        book = self.books[symbol]
        touch, _ = book.touch(side)
        return touch or book.mark or ZERO

    def _position_qty(self, symbol: str) -> Decimal:
        position = self._positions.get(symbol)
        return ZERO if position is None else position.qty

    def _side_totals(self, symbol: str, side: str, exclude: SimOrder | None) -> tuple[Decimal, Decimal, Decimal]:
        """(working qty, of it with a fixed price, their notional) of one side, minus ``exclude``."""
        totals = self._totals.get((symbol, side))
        if totals is None:
            return ZERO, ZERO, ZERO
        qty, priced_qty, notional = totals.qty, totals.priced_qty, totals.notional
        if exclude is not None and (exclude.symbol, exclude.side) == (symbol, side) and exclude.counted_qty:
            qty -= exclude.counted_qty
            price = _fixed_price(exclude)
            if price is not None:
                priced_qty -= exclude.counted_qty
                notional -= exclude.counted_qty * price
        return qty, priced_qty, notional

    def _closable(self, symbol: str, side: str) -> Decimal:
        held = self._position_qty(symbol)
        return max(ZERO, held) if side == "sell" else max(ZERO, -held)

    def _adding_qty(self, symbol: str, side: str, qty: Decimal, exclude: SimOrder | None) -> Decimal:
        """How much of a new ``qty`` would add exposure, after the position and the working orders."""
        committed, _, _ = self._side_totals(symbol, side, exclude)
        return max(ZERO, qty - max(ZERO, self._closable(symbol, side) - committed))

    def _reserved(self, exclude: SimOrder | None) -> Decimal:
        """Cost of working orders that would add exposure (what buying power must cover).

        Per symbol and side: the working quantity beyond what closes the position, valued
        at the side's average reference price (limit; stop for stop orders; the current
        touch for market orders).
        """
        total = ZERO
        for symbol, side in self._totals:
            qty, priced_qty, notional = self._side_totals(symbol, side, exclude)
            adding = qty - self._closable(symbol, side)
            if qty <= 0 or adding <= 0:
                continue
            market_qty = qty - priced_qty
            if market_qty > 0:
                notional += market_qty * self._reference_price(symbol, side, "market", None, None)
            total += adding * notional / qty
        return total

    def _sync_reservation(self, order: SimOrder) -> None:
        """Keep the per-side working totals equal to the open orders' remaining quantities."""
        target = order.remaining if order.id in self._open and order.pending_final is None else ZERO
        delta = target - order.counted_qty
        if delta == 0:
            return
        totals = self._totals.setdefault((order.symbol, order.side), _SideTotals())
        totals.qty += delta
        price = _fixed_price(order)
        if price is not None:
            totals.priced_qty += delta
            totals.notional += delta * price
        order.counted_qty = target

    def _market_values(self) -> tuple[Decimal, Decimal]:
        long_value = short_value = ZERO
        for position in self._positions.values():
            mark = self.books[position.symbol].mark or position.avg_entry_price
            value = position.qty * mark
            if value >= 0:
                long_value += value
            else:
                short_value += value
        return long_value, short_value

    def equity(self) -> Decimal:
        long_value, short_value = self._market_values()
        return self.cash + long_value + short_value

    def buying_power(self, exclude: SimOrder | None = None) -> Decimal:
        long_value, short_value = self._market_values()
        equity = self.cash + long_value + short_value
        gross = long_value - short_value
        return max(ZERO, equity * self.settings.buying_power_multiplier - gross - self._reserved(exclude))

    def _check_risk(self, asset: wire.Asset, side: str, qty: Decimal, order_type: str,
                    limit: Decimal | None, stop: Decimal | None, exclude: SimOrder | None) -> None:
        symbol = asset.symbol
        adding = self._adding_qty(symbol, side, qty, exclude)
        if side == "sell" and adding > 0:
            held = self._position_qty(symbol)
            if not self.settings.shorting_enabled:
                raise forbidden("account is not allowed to short")
            if not asset.shortable:
                if held > 0:
                    held_for_orders, _, _ = self._side_totals(symbol, "sell", exclude)
                    available = max(ZERO, held - held_for_orders)
                    raise forbidden(
                        f"insufficient qty available for order (requested: {plain(qty)}, "
                        f"available: {plain(available)})",
                        available=str(plain(available)),
                        existing_qty=str(plain(held)),
                        held_for_orders=str(plain(held_for_orders)),
                        symbol=symbol,
                    )
                raise forbidden(f"asset {symbol} is not shortable")
        if adding > 0:
            cost = adding * self._reference_price(symbol, side, order_type, limit, stop)
            power = self.buying_power(exclude)
            if cost > power:
                raise forbidden(
                    "insufficient buying power",
                    buying_power=str(plain(power)),
                    cost_basis=str(plain(cost)),
                )

    # ------------------------------------------------------------ orders: queries

    def get_order(self, order_id: str) -> SimOrder:
        try:
            canonical = str(uuid.UUID(order_id))
        except ValueError:
            raise unprocessable("order_id is missing", wire.CODE_MALFORMED) from None
        order = self.orders.get(canonical)
        if order is None:
            raise not_found("order not found")
        return order

    def get_order_by_client_id(self, client_order_id: str) -> SimOrder:
        order = self._by_client_id.get(client_order_id)
        if order is None:
            raise not_found("order not found")
        return order

    def list_orders(
        self,
        status: str = "open",
        limit: int = 50,
        after_ns: int | None = None,
        until_ns: int | None = None,
        direction: str = "desc",
        symbols: Iterable[str] | None = None,
        side: str | None = None,
    ) -> list[SimOrder]:
        """``GET /v2/orders``: filter on status class, submission time (exclusive), symbols, side."""
        wanted = None if symbols is None else {s.upper() for s in symbols}
        found = [
            o
            for o in self.orders.values()
            if (status == "all" or (status == "open") == o.is_open)
            and (after_ns is None or o.submitted_at > after_ns)
            and (until_ns is None or o.submitted_at < until_ns)
            and (wanted is None or o.symbol in wanted)
            and (side is None or o.side == side)
        ]
        found.sort(key=lambda o: (o.submitted_at, o.seq), reverse=direction == "desc")
        return found[:limit]

    # ------------------------------------------------------------ orders: commands

    def submit_order(self, request: wire.OrderRequest) -> SimOrder:
        """``POST /v2/orders``: validate, check risk, store as ``pending_new``, schedule the ack."""
        try:
            order = self._submit(request)
        except VenueError:
            self.counters["refused"] += 1
            raise
        down_since = self.trade_stream_down_since_ns
        if down_since is not None:
            self.accepted_without_stream[order.client_order_id] = (self.clock.time_ns() - down_since) / 1e9
        return order

    def _submit(self, request: wire.OrderRequest) -> SimOrder:
        asset = self.find_asset(request.symbol)
        if asset is None:
            raise unprocessable(f'asset "{request.symbol}" not found')
        if not asset.tradable:
            raise unprocessable(f"asset {asset.symbol} is not tradable")
        if request.order_class not in (None, "", "simple"):
            raise unprocessable(f"order_class {request.order_class} is not supported by the simulator")
        if request.type == "trailing_stop":
            raise unprocessable("trailing_stop orders are not supported by the simulator")
        if request.notional is not None:
            if request.qty is not None:
                raise unprocessable("qty and notional cannot both be specified", wire.CODE_MALFORMED)
            raise unprocessable("notional orders are not supported by the simulator")
        qty = self._check_qty(request.qty, request.type, request.time_in_force)
        limit = stop = None
        if request.type in ("limit", "stop_limit"):
            if request.limit_price is None:
                raise unprocessable(f"limit_price is required for {request.type} orders")
            limit = self._check_price("limit_price", request.limit_price)
        elif request.limit_price is not None:
            raise unprocessable(f"limit_price must not be given for {request.type} orders")
        if request.type in ("stop", "stop_limit"):
            if request.stop_price is None:
                raise unprocessable(f"stop_price is required for {request.type} orders")
            stop = self._check_price("stop_price", request.stop_price)
        elif request.stop_price is not None:
            raise unprocessable(f"stop_price must not be given for {request.type} orders")
        if request.extended_hours and (request.type != "limit" or request.time_in_force != "day"):
            raise unprocessable("extended hours order must be DAY limit orders")
        client_order_id = self._check_client_order_id(request.client_order_id)
        self._check_risk(asset, request.side, qty, request.type, limit, stop, None)
        order = self._new_order(
            asset=asset,
            client_order_id=client_order_id,
            side=request.side,
            order_type=request.type,
            tif=request.time_in_force,
            qty=qty,
            limit=limit,
            stop=stop,
            extended_hours=request.extended_hours,
            replaces=None,
        )
        self._start(order)
        return order

    def _new_order(self, *, asset: wire.Asset, client_order_id: str, side: str, order_type: str, tif: str,
                   qty: Decimal, limit: Decimal | None, stop: Decimal | None, extended_hours: bool,
                   replaces: str | None) -> SimOrder:
        now = self.clock.time_ns()
        held = self._position_qty(asset.symbol)
        if side == "buy":
            intent = "buy_to_close" if held < 0 else "buy_to_open"
        else:
            intent = "sell_to_close" if held > 0 else "sell_to_open"
        order = SimOrder(
            id=self._new_uuid(),
            client_order_id=client_order_id,
            seq=next(self._seq),
            symbol=asset.symbol,
            asset_id=asset.id,
            side=side,
            type=order_type,
            time_in_force=tif,
            qty=qty,
            limit_price=limit,
            stop_price=stop,
            extended_hours=extended_hours,
            position_intent=intent,
            created_at=now,
            submitted_at=now,
            updated_at=now,
            replaces=replaces,
        )
        self.orders[order.id] = order
        self._by_client_id[client_order_id] = order
        self._open[order.id] = order
        self._sync_reservation(order)
        self.counters["orders"] += 1
        return order

    def _start(self, order: SimOrder) -> None:
        """Send ``order`` on its way to the matching engine (it arrives after the ack latency)."""
        reject = self.faults.reject_next > 0
        if reject:
            self.faults.reject_next -= 1
            self.faults.count("order_rejected")
        if self.settings.emit_pending_events:
            self._emit("pending_new", order)
        self._schedule(self._draw(self.settings.ack_latency_s), functools.partial(self._ack, order, reject))

    def _ack(self, order: SimOrder, reject: bool) -> None:
        if order.status != "pending_new":
            return  # canceled or expired before it reached the matching engine
        order.updated_at = self.clock.time_ns()
        if reject:
            order.status = "rejected"
            order.failed_at = order.updated_at
            self._retire(order)
            self.counters["rejected"] += 1
            self._emit("rejected", order)
            return
        order.status = "new"
        order.live = True
        self._emit("new", order)
        self._arrive(order)

    def _arrive(self, order: SimOrder) -> None:
        book = self.books[order.symbol]
        if order.stop_price is not None and stop_reached(order, book):
            order.triggered = True
        working = self._working.get(order.symbol)
        if working is None:
            working = self._working[order.symbol] = WorkingOrders()
        working.add(order)
        if order.time_in_force == "fok":
            if fok_fillable(order, book):
                self._try_match(order, book)
            else:
                self._request_final(order, "canceled")
            return
        self._try_match(order, book)
        if order.time_in_force == "ioc":
            self._request_final(order, "canceled")

    def _try_match(self, order: SimOrder, book: Book) -> None:
        found = match(order, book)
        if found is None:
            return
        qty, price = found
        book.take(order.side, qty)
        order.in_flight += qty
        self._schedule(
            self._draw(self.settings.fill_latency_s), functools.partial(self._report_fill, order, qty, price)
        )

    def _report_fill(self, order: SimOrder, qty: Decimal, price: Decimal) -> None:
        now = self.clock.time_ns()
        order.in_flight -= qty
        order.filled_qty += qty
        order.filled_notional += qty * price
        order.updated_at = now
        self._sync_reservation(order)
        position = self._positions.get(order.symbol)
        if position is None:
            position = self._positions[order.symbol] = _Position(order.symbol, order.asset_id)
        signed = qty if order.side == "buy" else -qty
        position.apply(signed, price)
        self.cash += -signed * price
        if position.qty == 0:
            del self._positions[order.symbol]
        execution = Execution(
            id=self._new_uuid(),
            order_id=order.id,
            client_order_id=order.client_order_id,
            symbol=order.symbol,
            side=order.side,
            qty=qty,
            price=price,
            ts_ns=now,
            position_qty=position.qty,
        )
        self.executions.append(execution)
        order.executions.append(execution.id)
        self.counters["executions"] += 1
        if order.remaining == 0:
            order.status = "filled"
            order.filled_at = now
            self._retire(order)
            self._emit("fill", order, execution)
            return
        if order.cancel_requested_at is None:
            order.status = "partially_filled"
        self._emit("partial_fill", order, execution)
        if order.pending_final is not None and order.in_flight == 0:
            self._finish(order, order.pending_final)

    def _leave_book(self, order: SimOrder) -> None:
        working = self._working.get(order.symbol)
        if working is not None:
            working.remove(order)

    def _retire(self, order: SimOrder) -> None:
        """``order`` reached a final status: off the book and out of the open set."""
        self._leave_book(order)
        self._open.pop(order.id, None)
        self._sync_reservation(order)

    def _request_final(self, order: SimOrder, final: str) -> None:
        """Take ``order`` off the book; it ends as ``final`` once nothing is in flight."""
        self._leave_book(order)
        order.pending_final = final
        self._sync_reservation(order)
        if order.in_flight == 0:
            self._finish(order, final)

    def _finish(self, order: SimOrder, final: str) -> None:
        if order.is_terminal or order.remaining == 0:
            return
        now = self.clock.time_ns()
        order.status = final
        order.updated_at = now
        order.live = False
        self._retire(order)
        if final == "canceled":
            order.canceled_at = now
            self.counters["canceled"] += 1
        else:
            order.expired_at = now
            self.counters["expired"] += 1
        self._emit(final, order)

    def cancel_order(self, order_id: str) -> SimOrder:
        """``DELETE /v2/orders/{id}``: 422 unless the order is still open; else the cancel is on its way."""
        order = self.get_order(order_id)
        self._cancel(order)
        return order

    def _cancel(self, order: SimOrder) -> None:
        if not order.is_open:
            raise unprocessable(f"order is not cancelable (status {order.status})")
        if order.cancel_requested_at is not None or order.pending_final is not None:
            return  # already on its way
        if self.faults.late_fill_after_cancel_next > 0:
            self._late_fill(order)
            if order.remaining == 0:
                return  # the late fill completed the order: the cancel lost the race
        now = self.clock.time_ns()
        order.cancel_requested_at = now
        delay = self._draw(self.settings.ack_latency_s)
        if delay > 0:
            order.status = "pending_cancel"
            order.updated_at = now
            if self.settings.emit_pending_events:
                self._emit("pending_cancel", order)
        self._schedule(delay, functools.partial(self._land_cancel, order))

    def _late_fill(self, order: SimOrder) -> None:
        """Fault ``late_fill_after_cancel_next``: a fill that races the cancel of ``order``.

        Half the unmatched quantity (whole shares; all of it when that rounds to 0) trades
        at the touch, or at the limit when the touch is through it; it is reported after
        the fill latency like any execution, so it lands before the ``canceled`` update.
        """
        if not order.live or order.open_qty <= 0 or (order.stop_price is not None and not order.triggered):
            return
        touch, _ = self.books[order.symbol].touch(order.side)
        if touch is None:
            return
        limit = order.working_limit
        price = touch
        if limit is not None and (touch > limit if order.side == "buy" else touch < limit):
            price = limit
        qty = (order.open_qty / 2).to_integral_value(rounding=ROUND_FLOOR)
        if qty <= 0:
            qty = order.open_qty
        self.faults.late_fill_after_cancel_next -= 1
        self.faults.count("late_fill_after_cancel")
        order.in_flight += qty
        self._schedule(
            self._draw(self.settings.fill_latency_s), functools.partial(self._report_fill, order, qty, price)
        )

    def _land_cancel(self, order: SimOrder) -> None:
        if order.is_terminal or order.pending_final is not None:
            return
        self._request_final(order, "canceled")

    def cancel_all_orders(self) -> list[tuple[SimOrder, VenueError | None]]:
        """``DELETE /v2/orders``: try to cancel every open order; one result per order."""
        results: list[tuple[SimOrder, VenueError | None]] = []
        for order in list(self._open_orders()):
            try:
                self._cancel(order)
            except VenueError as exc:
                results.append((order, exc))
            else:
                results.append((order, None))
        return results

    def replace_order(self, order_id: str, request: wire.ReplaceRequest) -> SimOrder:
        """``PATCH /v2/orders/{id}``: the old order becomes ``replaced``; returns the new one."""
        old = self.get_order(order_id)
        if old.status not in ("new", "partially_filled") or old.cancel_requested_at is not None:
            raise unprocessable(f"order is not replaceable (status {old.status})")
        if old.in_flight > 0:
            raise unprocessable("order is not replaceable while an execution is being reported")
        if request.trail is not None:
            raise unprocessable("trail can only be replaced on trailing_stop orders")
        tif = request.time_in_force or old.time_in_force
        qty = self._check_qty(request.qty, old.type, tif) if request.qty is not None else old.remaining
        limit, stop = old.limit_price, old.stop_price
        if request.limit_price is not None:
            if old.type not in ("limit", "stop_limit"):
                raise unprocessable(f"limit_price cannot be set on {old.type} orders")
            limit = self._check_price("limit_price", request.limit_price)
        if request.stop_price is not None:
            if old.type not in ("stop", "stop_limit"):
                raise unprocessable(f"stop_price cannot be set on {old.type} orders")
            stop = self._check_price("stop_price", request.stop_price)
        before = (old.remaining, old.time_in_force, old.limit_price, old.stop_price)
        unchanged = (qty, tif, limit, stop) == before
        if unchanged and request.client_order_id is None:
            raise forbidden("order parameters are not changed")
        client_order_id = self._check_client_order_id(request.client_order_id)
        asset = self.assets[old.symbol]
        self._check_risk(asset, old.side, qty, old.type, limit, stop, old)
        now = self.clock.time_ns()
        new = self._new_order(
            asset=asset,
            client_order_id=client_order_id,
            side=old.side,
            order_type=old.type,
            tif=tif,
            qty=qty,
            limit=limit,
            stop=stop,
            extended_hours=old.extended_hours,
            replaces=old.id,
        )
        old.status = "replaced"
        old.replaced_at = now
        old.replaced_by = new.id
        old.updated_at = now
        old.live = False
        self._retire(old)
        self.counters["replaced"] += 1
        self._emit("replaced", old)
        self._start(new)
        return new

    def expire_day_orders(self) -> int:
        """End of session: every open ``day``/``opg``/``cls`` order expires. Returns how many."""
        expiring = [o for o in self._open_orders() if o.time_in_force in DAY_LIKE]
        for order in expiring:
            self._request_final(order, "expired")
        return len(expiring)

    # ------------------------------------------------------------ positions

    def _wire_position(self, position: _Position) -> wire.Position:
        asset = self.assets[position.symbol]
        book = self.books[position.symbol]
        mark = book.mark or position.avg_entry_price
        qty = position.qty
        market_value = qty * mark
        cost_basis = qty * position.avg_entry_price
        pl = market_value - cost_basis
        plpc = pl / abs(cost_basis) if cost_basis != 0 else ZERO
        side = "sell" if qty > 0 else "buy"
        held_for_orders, _, _ = self._side_totals(position.symbol, side, None)
        available = max(ZERO, abs(qty) - held_for_orders)
        return wire.Position(
            asset_id=asset.id,
            symbol=asset.symbol,
            exchange=asset.exchange,
            asset_class=asset.asset_class,
            asset_marginable=asset.marginable,
            avg_entry_price=plain(position.avg_entry_price.quantize(Decimal("1e-9"))),
            qty=plain(qty),
            qty_available=plain(available if qty > 0 else -available),
            side="long" if qty > 0 else "short",
            market_value=plain(market_value),
            cost_basis=plain(cost_basis.quantize(Decimal("1e-9"))),
            unrealized_pl=plain(pl.quantize(Decimal("1e-9"))),
            unrealized_plpc=plain(plpc.quantize(Decimal("1e-9"))),
            unrealized_intraday_pl=plain(pl.quantize(Decimal("1e-9"))),
            unrealized_intraday_plpc=plain(plpc.quantize(Decimal("1e-9"))),
            current_price=plain(mark),
            lastday_price=None,
            change_today=None,
        )

    def list_positions(self) -> list[wire.Position]:
        return [self._wire_position(self._positions[s]) for s in sorted(self._positions)]

    def position_qty(self, symbol: str) -> Decimal:
        """The signed quantity held (0 when flat)."""
        return self._position_qty(symbol.upper())

    def get_position(self, symbol_or_id: str) -> wire.Position:
        asset = self.find_asset(symbol_or_id)
        position = None if asset is None else self._positions.get(asset.symbol)
        if position is None:
            raise not_found("position does not exist")
        return self._wire_position(position)

    def close_position(self, symbol_or_id: str, qty: Decimal | None = None,
                       percentage: Decimal | None = None) -> SimOrder:
        """``DELETE /v2/positions/{symbol}``: a market day order for all, ``qty`` or ``percentage`` of it."""
        if qty is not None and percentage is not None:
            raise unprocessable("only one of qty or percentage may be specified", wire.CODE_MALFORMED)
        asset = self.find_asset(symbol_or_id)
        position = None if asset is None else self._positions.get(asset.symbol)
        if asset is None or position is None:
            raise not_found("position does not exist")
        held = abs(position.qty)
        if percentage is not None:
            if not percentage.is_finite() or not 0 < percentage <= 100:
                raise unprocessable("percentage must be between 0 and 100")
            amount = (held * percentage / 100).quantize(Decimal("1e-9"))
        elif qty is not None:
            amount = qty
        else:
            amount = held
        if amount > held:
            raise forbidden(
                f"insufficient qty available for order (requested: {plain(amount)}, "
                f"available: {plain(held)})",
                available=str(plain(held)),
                existing_qty=str(plain(position.qty)),
                held_for_orders="0",
                symbol=asset.symbol,
            )
        request = wire.OrderRequest(
            symbol=asset.symbol,
            side="sell" if position.qty > 0 else "buy",
            type="market",
            time_in_force="day",
            qty=amount,
        )
        return self.submit_order(request)

    def close_all_positions(self, cancel_orders: bool = False) -> list[tuple[str, SimOrder | VenueError]]:
        """``DELETE /v2/positions``: one close order (or the refusal) per position."""
        if cancel_orders:
            self.cancel_all_orders()
        results: list[tuple[str, SimOrder | VenueError]] = []
        for symbol in sorted(self._positions):
            try:
                results.append((symbol, self.close_position(symbol)))
            except VenueError as exc:
                results.append((symbol, exc))
        return results

    # ------------------------------------------------------------ account

    def account(self) -> wire.Account:
        long_value, short_value = self._market_values()
        equity = self.cash + long_value + short_value
        gross = long_value - short_value
        power = self.buying_power()
        multiplier = self.settings.buying_power_multiplier
        margin = gross / multiplier if multiplier > 0 else gross
        return wire.Account(
            id=self.account_id,
            account_number=self.settings.account_number,
            status="ACTIVE",
            crypto_status="INACTIVE",
            currency="USD",
            cash=plain(self.cash),
            buying_power=plain(power),
            regt_buying_power=plain(power),
            non_marginable_buying_power=plain(max(ZERO, min(power, self.cash))),
            options_buying_power=plain(power),
            equity=plain(equity),
            last_equity=plain(self.last_equity),
            portfolio_value=plain(equity),
            long_market_value=plain(long_value),
            short_market_value=plain(short_value),
            initial_margin=plain(margin),
            maintenance_margin=plain(gross * Decimal("0.25")),
            last_maintenance_margin=ZERO,
            sma=ZERO,
            multiplier=str(plain(multiplier)),
            accrued_fees=ZERO,
            pending_transfer_in=ZERO,
            pending_transfer_out=ZERO,
            created_at=wire.timestamp(self.created_at),
            trading_blocked=False,
            transfers_blocked=False,
            account_blocked=False,
            trade_suspended_by_user=False,
            shorting_enabled=self.settings.shorting_enabled,
        )

    def market_clock(self) -> wire.MarketClock:
        return self.calendar.clock(self.clock.time_ns(), self.session_open)
