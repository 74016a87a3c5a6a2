"""The risk actor: every intent passes here before it can become an order.

Checks in this version (each rejection carries a stable reason code and the inputs it
used, and is published on ``order.event`` for the strategy and counted):

- ``TRADING_RECOVERING`` / ``TRADING_HALTED`` / ``TRADING_REDUCING`` — the trading state
  (``TradingStateChanged`` on ``trading.state``, journaled by the order manager) is not
  ``ACTIVE``. A live node starts ``RECOVERING``: nothing trades until recovery has
  reconciled the journal with the venue. ``REDUCING`` refuses every intent until risk
  tracks exposure (it cannot yet tell which orders shrink it);
- ``VENUE_UNAVAILABLE`` — the venue adapter said (``VenueStatus`` on ``venue.status``)
  that a component of its order path cannot take orders: the order endpoint's circuit
  breaker is open, or the order-event stream is down, so an order could not be sent or
  its fills could not be followed. A status with ``retry_at_ns`` stops blocking at that
  time, so the breaker's half-open trial order can go through;
- ``INVALID_QTY`` — quantity not positive;
- ``MAX_ORDER_QTY`` — quantity above the cap;
- ``MAX_ORDER_NOTIONAL`` — quantity × reference price above the cap. The reference is
  the price the order would pay: the ask for a buy, the bid for a sell, or the limit
  price when that is worse for us.

Market-data and session gates (DESIGN §6–§7). They run after the trading state and the
venue, before the price and size checks, in this order:

- ``SYMBOL_HALTED`` — the last ``SymbolTradingStatus`` for the symbol (on ``md.status``,
  forwarded by pricing from the feed) said ``halted=True``; it blocks until one says
  ``halted=False``. Statuses with ``halted=None`` (bands only, imbalances …) change nothing.
- ``STALE_DATA`` — pricing's last ``MarketDataStatus`` for the symbol said ``fresh=False``
  (until one says ``fresh=True``), or no NBBO has been seen for the symbol at all (this
  replaces the former ``NO_REFERENCE_PRICE``: "never quoted" is the stalest data there is).
- ``MARKET_CLOSED`` — the symbol's calendar (``engine.calendar``; per-symbol names with
  ``*`` patterns, ``XNYS`` by default, ``"24/7"`` for SYNTH and ``*USDT``) is not in an
  allowed session at the engine clock's time. Allowed: the regular session, plus pre- and
  post-market when ``extended_hours`` is on — and then only for limit orders with
  time-in-force ``day`` (Alpaca's rule for extended-hours orders). A time outside the
  calendar's loaded range is refused too.
- ``LULD`` — the symbol's limit-up/limit-down band (the latest ``SymbolTradingStatus``
  carrying ``luld_lower``/``luld_upper``, published during the current regular session)
  does not contain the limit price, or, for a market order, the price it would pay (ask
  for a buy, bid for a sell). Bands apply in the regular session only (that is when the
  plan runs), so yesterday's bands never block a post-market limit order.

There is no bypass: a gate is lifted only by the message that says the condition ended.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any, Final

from engine import topics
from engine.actor import Actor
from engine.calendar import ALWAYS_OPEN, CalendarRangeError, MarketSession, SessionCalendar, load_calendar
from engine.config import RiskSection
from engine.messages import (
    ActorStats,
    ApprovedOrder,
    BestBidOffer,
    MarketDataStatus,
    OrderIntent,
    OrderType,
    ProviderSwitched,
    RiskRejected,
    Side,
    StatsQuery,
    SymbolTradingStatus,
    TimeInForce,
    TradingState,
    TradingStateChanged,
    VenueStatus,
)

DEFAULT_CALENDAR: Final = "XNYS"
"""US equities: the NYSE calendar (sessions, holidays, early closes)."""
DEFAULT_SYMBOL_CALENDARS: Final[Mapping[str, str]] = {"SYNTH": ALWAYS_OPEN, "*USDT": ALWAYS_OPEN}
"""The synthetic symbol and crypto pairs trade around the clock."""


class RiskActor(Actor):
    """Pre-trade checks; see the module docstring for the gates and their reason codes.

    ``calendars`` maps symbols (exact, or ``fnmatch`` patterns such as ``*USDT``) to
    calendar names; it is laid over :data:`DEFAULT_SYMBOL_CALENDARS`, and symbols matching
    nothing use ``default_calendar``. Calendars load in :meth:`on_start` (in a worker
    thread the first time in the process), so the order path only does a cached lookup.
    ``extended_hours`` lets limit orders through in pre- and post-market.
    """

    def __init__(
        self,
        limits: RiskSection,
        state: TradingState = TradingState.ACTIVE,
        *,
        calendars: Mapping[str, str] | None = None,
        default_calendar: str = DEFAULT_CALENDAR,
        extended_hours: bool = False,
    ) -> None:
        self.limits = limits
        self.state = state
        self.state_reason = "initial state"
        self.quotes: dict[str, BestBidOffer] = {}
        self.venue_unavailable: dict[tuple[str, str], VenueStatus] = {}
        """(venue, component) → the status that made it unavailable."""
        self.symbol_calendars = {**DEFAULT_SYMBOL_CALENDARS, **(calendars or {})}
        self.default_calendar = default_calendar
        self.extended_hours = extended_hours
        self.halts: dict[str, SymbolTradingStatus] = {}
        """symbol → the status that halted it, until one resumes it."""
        self.bands: dict[str, SymbolTradingStatus] = {}
        """symbol → the latest status carrying LULD bands."""
        self.stale: dict[str, MarketDataStatus] = {}
        """symbol → pricing's status that called it stale, until one calls it fresh."""
        self._calendars: dict[str, SessionCalendar] = {}
        self._calendar_of: dict[str, SessionCalendar] = {}
        """symbol → its calendar, resolved once (patterns are not matched per order)."""
        self.approved = 0
        self.rejections: Counter[str] = Counter()

    async def on_start(self) -> None:
        names = {self.default_calendar, *self.symbol_calendars.values()}
        for name in sorted(names):
            self._calendars[name] = await load_calendar(name)
        self.ctx.subscribe(topics.MD_BBO)
        self.ctx.subscribe(topics.MD_STATUS)
        self.ctx.subscribe(topics.ORDER_INTENT)
        self.ctx.subscribe(topics.VENUE_STATUS)
        self.ctx.subscribe(topics.TRADING_STATE)

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is BestBidOffer:
            self.quotes[message.symbol] = message
        elif kind is OrderIntent:
            await self._check(message)
        elif kind is SymbolTradingStatus:
            self._trading_status(message)
        elif kind is MarketDataStatus:
            self._data_status(message)
        elif kind is ProviderSwitched:
            pass  # lineage only; freshness comes with MarketDataStatus
        elif kind is VenueStatus:
            self._venue_status(message)
        elif kind is TradingStateChanged:
            self._trading_state(message)
        elif kind is StatsQuery:
            return ActorStats(
                counters={
                    "approved": self.approved,
                    "rejected": sum(self.rejections.values()),
                    "active": int(self.state is TradingState.ACTIVE),
                    "symbols_halted": len(self.halts),
                    "symbols_stale": len(self.stale),
                },
                breakdown={"rejections_by_reason": dict(self.rejections), "trading_state": {self.state.value: 1}},
            )
        else:
            raise TypeError(f"risk actor cannot handle {kind.__name__}")
        return None

    # ------------------------------------------------------------ state from other actors

    def _trading_state(self, change: TradingStateChanged) -> None:
        if change.state is not self.state:
            log = self.ctx.log.warning if change.state is not TradingState.ACTIVE else self.ctx.log.info
            log("trading_state_changed", old=self.state.value, new=change.state.value, reason=change.reason)
        self.state, self.state_reason = change.state, change.reason

    def _venue_status(self, status: VenueStatus) -> None:
        key = (status.venue, status.component)
        if status.available:
            if self.venue_unavailable.pop(key, None) is not None:
                self.ctx.log.info("venue_available", venue=status.venue, component=status.component)
        else:
            self.venue_unavailable[key] = status
            self.ctx.log.warning(
                "venue_unavailable", venue=status.venue, component=status.component, reason=status.reason
            )

    def _trading_status(self, status: SymbolTradingStatus) -> None:
        symbol = status.symbol
        if status.halted is True:
            if symbol not in self.halts:
                self.ctx.log.warning("symbol_halted", symbol=symbol, reason=status.reason, provider=status.provider)
            self.halts[symbol] = status
        elif status.halted is False and self.halts.pop(symbol, None) is not None:
            self.ctx.log.info("symbol_resumed", symbol=symbol, reason=status.reason, provider=status.provider)
        if status.luld_lower is not None or status.luld_upper is not None:
            self.bands[symbol] = status

    def _data_status(self, status: MarketDataStatus) -> None:
        symbol = status.symbol
        if not status.fresh:
            if symbol not in self.stale:
                self.ctx.log.warning("symbol_data_stale", symbol=symbol, reason=status.reason)
            self.stale[symbol] = status
        elif self.stale.pop(symbol, None) is not None:
            self.ctx.log.info("symbol_data_fresh", symbol=symbol, provider=status.provider)

    def _blocking_status(self) -> VenueStatus | None:
        now = self.ctx.clock.time_ns()
        for status in self.venue_unavailable.values():
            if status.retry_at_ns is None or now < status.retry_at_ns:
                return status
        return None

    def calendar_for(self, symbol: str) -> SessionCalendar:
        """The symbol's calendar: an exact mapping, else the first matching pattern, else the default."""
        found = self._calendar_of.get(symbol)
        if found is not None:
            return found
        name = self.symbol_calendars.get(symbol)
        if name is None:
            name = next(
                (cal for pattern, cal in self.symbol_calendars.items() if fnmatchcase(symbol, pattern)),
                self.default_calendar,
            )
        found = self._calendar_of[symbol] = self._calendars[name]
        return found

    # ------------------------------------------------------------ the checks

    async def _check(self, intent: OrderIntent) -> None:
        limits = self.limits
        if self.state is not TradingState.ACTIVE:
            code = f"TRADING_{self.state.name}"
            await self._reject(intent, code, f"trading is {self.state.value}: {self.state_reason}", {})
            return
        blocking = self._blocking_status()
        if blocking is not None:
            inputs = {"venue": blocking.venue, "component": blocking.component, "state": blocking.state}
            await self._reject(intent, "VENUE_UNAVAILABLE", blocking.reason, inputs)
            return
        symbol = intent.symbol
        halt = self.halts.get(symbol)
        if halt is not None:
            inputs = {"halt_reason": halt.reason, "provider": halt.provider, "halted_at_ns": str(halt.ts_event)}
            await self._reject(intent, "SYMBOL_HALTED", f"{symbol} is halted: {halt.reason}", inputs)
            return
        stale = self.stale.get(symbol)
        if stale is not None:
            inputs = {"provider": str(stale.provider), "stale_reason": stale.reason, "stale_at_ns": str(stale.ts_init)}
            await self._reject(intent, "STALE_DATA", f"{symbol} market data is stale: {stale.reason}", inputs)
            return
        bbo = self.quotes.get(symbol)
        if bbo is None:
            await self._reject(intent, "STALE_DATA", "no fresh quote seen for the symbol yet", {"quote_seen": "false"})
            return
        now = self.ctx.clock.time_ns()
        calendar = self.calendar_for(symbol)
        try:
            interval = calendar.interval_at(now)
        except CalendarRangeError as exc:
            inputs = {"calendar": calendar.name, "now_ns": str(now), "session": "unknown"}
            await self._reject(intent, "MARKET_CLOSED", str(exc), inputs)
            return
        session = interval.session
        if session is not MarketSession.REGULAR:
            extended = session in (MarketSession.PRE_MARKET, MarketSession.POST_MARKET)
            if not (extended and self.extended_hours):
                why = f"{calendar.name} is {session.value}"
            elif intent.order_type is not OrderType.LIMIT or intent.time_in_force is not TimeInForce.DAY:
                why = f"{calendar.name} is {session.value}: extended hours take day limit orders only"
            else:
                why = ""
            if why:
                inputs = {
                    "calendar": calendar.name,
                    "session": session.value,
                    "now_ns": str(now),
                    "session_start_ns": str(interval.start_ns),
                    "session_end_ns": str(interval.end_ns),
                    "extended_hours": str(self.extended_hours).lower(),
                    "order_type": intent.order_type.value,
                    "time_in_force": intent.time_in_force.value,
                }
                await self._reject(intent, "MARKET_CLOSED", why, inputs)
                return
        quoted = bbo.ask_price if intent.side is Side.BUY else bbo.bid_price
        band = self.bands.get(symbol)
        if band is not None and session is MarketSession.REGULAR and band.ts_event >= interval.start_ns:
            checked, what = (
                (intent.limit_price, "limit_price") if intent.limit_price is not None else (quoted, "reference_price")
            )
            lower, upper = band.luld_lower, band.luld_upper
            if (lower is not None and checked < lower) or (upper is not None and checked > upper):
                inputs = {
                    what: str(checked),
                    "luld_lower": str(lower),
                    "luld_upper": str(upper),
                    "bands_at_ns": str(band.ts_event),
                    "provider": band.provider,
                }
                await self._reject(intent, "LULD", f"{what} {checked} outside LULD band [{lower}, {upper}]", inputs)
                return
        reference = quoted
        if intent.limit_price is not None:
            reference = (
                max(reference, intent.limit_price)
                if intent.side is Side.BUY
                else min(reference, intent.limit_price)
            )
        inputs = {"qty": str(intent.qty), "reference_price": str(reference)}
        if intent.qty <= 0:
            await self._reject(intent, "INVALID_QTY", "quantity must be positive", inputs)
            return
        if intent.qty > limits.max_order_qty:
            inputs["max_order_qty"] = str(limits.max_order_qty)
            await self._reject(intent, "MAX_ORDER_QTY", f"qty {intent.qty} > {limits.max_order_qty}", inputs)
            return
        notional = intent.qty * reference
        if notional > limits.max_order_notional:
            inputs.update(notional=str(notional), max_order_notional=str(limits.max_order_notional))
            await self._reject(
                intent, "MAX_ORDER_NOTIONAL", f"notional {notional} > {limits.max_order_notional}", inputs
            )
            return
        self.approved += 1
        await self.ctx.publish(
            topics.ORDER_APPROVED,
            ApprovedOrder(intent=intent, reference_price=reference, ts_init=self.ctx.clock.time_ns()),
        )

    async def _reject(self, intent: OrderIntent, reason: str, detail: str, inputs: dict[str, str]) -> None:
        self.rejections[reason] += 1
        self.ctx.log.info("intent_rejected", reason=reason, detail=detail, **inputs)
        await self.ctx.publish(
            topics.ORDER_EVENT,
            RiskRejected(
                intent_id=intent.intent_id,
                strategy=intent.strategy,
                symbol=intent.symbol,
                reason=reason,
                detail=detail,
                inputs=inputs,
                ts_init=self.ctx.clock.time_ns(),
            ),
        )
