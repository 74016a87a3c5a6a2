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

Trading states (DESIGN §6). ``ACTIVE`` trades; ``REDUCING`` approves only orders that
shrink a position (:func:`actors.pretrade.reduces_exposure`), refusing the rest with
``TRADING_REDUCING``; ``HALTED`` approves nothing, and entering it cancels every working
order (the order manager does that when it journals the state). Risk moves the state by
asking the order manager (``TradingStateRequest`` on ``trading.request``), which journals
it with its cause and announces it; so every transition survives a restart. Causes:

- an operator (``kestrel halt|resume|flatten`` through the control channel: an
  ``OperatorCommand`` request to this actor). Flatten moves to ``REDUCING`` and sends a
  market order closing every open position, checked like any other intent;
- the day's loss (realised and unrealised, from the day's first equity) reaching
  ``daily_loss_limit`` → ``daily_loss_action`` (``REDUCING`` by default);
- a drawdown from the equity high-water mark reaching ``max_drawdown_pct`` → ``HALTED``.

A more restrictive state applies at once, before the order manager's announcement
arrives (it cannot be wrong to refuse more); ``resume`` takes effect when it is journaled.

Pre-trade checks after the gates (:mod:`actors.pretrade`, limits resolved per account,
strategy and symbol by :class:`actors.risk_policy.RiskPolicy`): quantity, notional, price
collar, lot size and fractionability, ADV participation, duplicates, order rate, open
orders, self-trade, short sale without a locate, buying power counting working orders,
position, gross and net exposure, leverage, symbol and sector concentration. Then the
account rules from the ledger's ``AccountState``: ``GOOD_FAITH_VIOLATION`` (cash accounts:
selling what unsettled proceeds bought) and the day-trading rule in force on the engine
clock's date (``PATTERN_DAY_TRADER`` / ``INTRADAY_MARGIN``, :mod:`actors.day_trading`).

The runaway guard runs first: a strategy sending more than ``runaway_intents_per_s``
intents in a second, or with ``runaway_rejected_streak`` rejections in a row, is paused
(``STRATEGY_PAUSED``) until an operator resumes trading.

The audit trail (``audit``, journaled by :mod:`actors.audit`): a ``RiskDecision`` for every
intent decided, approved or rejected, with the inputs the checks used, published just
before the ``ApprovedOrder`` or ``RiskRejected`` it goes with; an ``OperatorActionRecorded``
for every operator command, with the answer.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, deque
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final
from zoneinfo import ZoneInfo

import msgspec

from actors.calendars import DEFAULT_CALENDAR, SymbolCalendars
from actors.day_trading import DayTradingConfig, check_day_trade
from actors.pretrade import AccountView, PreTradeChecker, Rejection, WorkingOrder, reduces_exposure
from actors.risk_metrics import EquityTracker, ReturnsWindow, exposure
from actors.risk_policy import RiskPolicy
from engine import topics
from engine.actor import Actor
from engine.calendar import (
    CalendarRangeError,
    MarketSession,
    SessionCalendar,
    local_date,
)
from engine.clock import NS_PER_S
from engine.config import RiskSection
from engine.messages import (
    AccountBaseline,
    AccountState,
    ActorStats,
    ApprovedOrder,
    BestBidOffer,
    CancelIntent,
    CancelRejected,
    Fill,
    MarketDataStatus,
    OperatorAction,
    OperatorActionRecorded,
    OperatorCommand,
    OperatorReply,
    OrderIntent,
    OrderType,
    OrderUpdate,
    PortfolioQuery,
    PortfolioSnapshot,
    ProviderSwitched,
    RiskDecision,
    RiskRejected,
    RiskReport,
    RiskReportQuery,
    Side,
    StatsQuery,
    SymbolTradingStatus,
    TimeInForce,
    TradingState,
    TradingStateChanged,
    TradingStateQuery,
    TradingStateRequest,
    VenueStatus,
    WorkingOrders,
    WorkingOrdersQuery,
    WorkingOrderView,
)

ZERO: Final = Decimal(0)



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
        starting_cash: Decimal = Decimal(100_000),
        ledger_address: str | None = None,
        orders_address: str | None = None,
    ) -> None:
        self.ledger_address = ledger_address
        """Where to ask, at start, for the positions and cash a restart begins with."""
        self.orders_address = orders_address
        """The order manager: asked, at start and when recovery ends, for the orders still working."""
        self.section = limits
        self.policy = RiskPolicy(limits)
        self.sectors = self.policy.sectors()
        self.checker = PreTradeChecker()
        rule = limits.day_trading
        self.day_trading = DayTradingConfig(
            account_type=limits.account_type,
            pdt_min_equity=rule.pdt_min_equity,
            pdt_max_day_trades=rule.pdt_max_day_trades,
            replacement_adopted_on=rule.replacement_adopted_on,
            policy=rule.policy,
        )
        self.account = AccountState(
            account_type=limits.account_type,
            cash=starting_cash,
            settled_cash=starting_cash,
            positions={},
            avg_prices={},
            realized_pnl=ZERO,
            fees=ZERO,
            fills=0,
            trade_date="",
            opened_today={},
            day_trades=0,
            gfv_restricted={},
            ts_init=0,
        )
        """The ledger's latest word (``account.state``); until the first, the starting cash."""
        self.working: dict[str, WorkingOrder] = {}
        """Approved orders not yet done, by intent id (from approvals, fills and order events,
        and at start from the order manager's book: :meth:`_seed_working`)."""
        self._seeded: dict[str, frozenset[str]] = {}
        """Entries of ``working`` taken from the order manager → the execution ids their
        remaining quantity already accounts for (a Fill carrying one is not counted again)."""
        self._unpriced: set[str] = set()
        """Seeded market orders with no quote to price them yet: priced at the symbol's next NBBO."""
        self.paused: dict[str, str] = {}
        """strategy → why the runaway guard paused it (until an operator resumes trading)."""
        self.rejected_streak: dict[str, int] = {}
        self._intent_times: dict[str, deque[int]] = {}
        self.equity = EquityTracker(capacity=1)
        self.returns = ReturnsWindow(capacity=VAR_WINDOW)
        """The mids at each mark (one per ``mark_interval_s`` while positions are open): VaR's history."""
        self._mark_armed = False
        self._flattens = 0
        self._latest_ns = 0
        self.state = state
        self.state_reason = "initial state"
        self.quotes: dict[str, BestBidOffer] = {}
        self._mids: dict[str, Decimal] = {}
        """symbol → the mid of its latest quote, as of the last :meth:`_marks` (kept in ``quotes``' order)."""
        self._requoted: dict[str, None] = {}
        """Symbols quoted since the last :meth:`_marks`, in arrival order: their mids are recomputed then."""
        self._marks_view: Mapping[str, Decimal] = MappingProxyType(self._mids)
        self._view: AccountView | None = None
        """The cached :meth:`_account_view`; see there for what it depends on."""
        self._view_account: AccountState | None = None
        """The ``account`` the cached view was computed from."""
        self._day: tuple[int, int, dt.date, str] = (0, 0, dt.date.min, "")
        """New York's current trading day: [start ns, end ns), the date, its ISO string (:meth:`_new_york_day`)."""
        self.venue_unavailable: dict[tuple[str, str], VenueStatus] = {}
        """(venue, component) → the status that made it unavailable."""
        self.calendars = SymbolCalendars(calendars, default_calendar)
        self.extended_hours = extended_hours
        self.halts: dict[str, SymbolTradingStatus] = {}
        """symbol → the status that halted it, until one resumes it."""
        self.bands: dict[str, SymbolTradingStatus] = {}
        """symbol → the latest status carrying LULD bands."""
        self.stale: dict[str, MarketDataStatus] = {}
        """symbol → pricing's status that called it stale, until one calls it fresh."""
        self.approved = 0
        self.rejections: Counter[str] = Counter()

    async def on_start(self) -> None:
        await self.calendars.load()
        self.ctx.subscribe(topics.MD_BBO)
        self.ctx.subscribe(topics.MD_STATUS)
        self.ctx.subscribe(topics.ORDER_INTENT)
        self.ctx.subscribe(topics.VENUE_STATUS)
        self.ctx.subscribe(topics.TRADING_STATE)
        self.ctx.subscribe(topics.ACCOUNT_STATE)
        if self.ledger_address is not None:
            # A restart begins with positions: without them every sell would look like a short.
            book: PortfolioSnapshot = await self.ctx.request(self.ledger_address, PortfolioQuery())
            self.account = msgspec.structs.replace(
                self.account, cash=book.cash, settled_cash=book.cash, positions=dict(book.positions)
            )
        self.ctx.subscribe(topics.ORDER_FILL)
        self.ctx.subscribe(topics.ORDER_EVENT)
        if self.orders_address is not None:
            # A risk actor restarted alone resumes the trading state in force (HALTED stays
            # halted; after recovery, ACTIVE trades again) instead of its initial state.
            self._trading_state(await self.ctx.request(self.orders_address, TradingStateQuery()))
            # A restart begins with working orders too: without them buying power, the open
            # order cap and self-trade prevention would not count what the venue may still fill.
            # Subscribed first, so a fill or final report published while the order manager
            # answers is handled after the answer (a fill it already counts is recognised).
            await self._seed_working(self.orders_address)

    async def handle(self, message: Any) -> Any:
        kind = type(message)
        if kind is BestBidOffer:
            self.quotes[message.symbol] = message
            self._requoted[message.symbol] = None  # its mid is recomputed when next read (_marks)
            if self._unpriced:
                self._price_seeded(message)
        elif kind is OrderIntent:
            await self._check(message)
        elif kind is CancelIntent:
            await self._check_cancel(message)
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
            if message.cause == "recovery" and self.orders_address is not None:
                # Recovery adopts venue orders, and ends or fills orders without publishing
                # an OrderUpdate for them: take the reconciled book's working orders again.
                await self._seed_working(self.orders_address)
        elif kind is AccountState:
            self.account = message
            await self._mark()
        elif kind is Fill:
            self._filled(message)
        elif kind is OrderUpdate:
            if message.status.is_terminal and message.intent_id is not None:
                self._forget(message.intent_id)
        elif kind is RiskRejected:
            self._forget(message.intent_id)  # ours, or the order manager's refusal
        elif kind is CancelRejected:
            pass  # ours or the order manager's: a refused cancel changes nothing risk counts
        elif kind is AccountBaseline:
            pass  # the ledger's AccountState follows it
        elif kind is _MarkTick:
            self._mark_armed = False
            marks = self._marks()
            if marks:
                self.returns.sample(marks)  # at a regular interval, not per fill: VaR's horizon
            await self._mark()
        elif kind is OperatorCommand:
            reply = await self._operator(message)
            await self._audit_operator(message, reply)
            return reply
        elif kind is RiskReportQuery:
            return self._report()
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
        """The symbol's calendar (:class:`~actors.calendars.SymbolCalendars`)."""
        return self.calendars.calendar_for(symbol)

    # ------------------------------------------------------------ the checks

    async def _check(self, intent: OrderIntent) -> None:
        if self._runaway(intent):
            paused = self.paused[intent.strategy]
            await self._reject(intent, "STRATEGY_PAUSED", f"strategy {intent.strategy} is paused: {paused}", {})
            return
        if self.state is not TradingState.ACTIVE and self.state is not TradingState.REDUCING:
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
        now = self._now()
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
        if self.state is TradingState.REDUCING:
            position = self.account.positions.get(symbol, ZERO)
            if not reduces_exposure(intent, position, self._working_in(symbol)):
                inputs = {"position": str(position), "qty": str(intent.qty), "side": intent.side.value}
                why = f"trading is reducing ({self.state_reason}): only orders that shrink a position"
                await self._reject(intent, "TRADING_REDUCING", why, inputs)
                return
        view = self._account_view()
        decision = self.checker.check(
            intent,
            quoted,  # the market's price: a limit is collared against it, not against itself
            now,
            self.policy.limits(intent.strategy, symbol),
            self.policy.asset(symbol),
            view,
            self.working.values(),  # no copy: the check is synchronous, nothing changes ``working`` meanwhile
            sectors=self.sectors,
        )
        if isinstance(decision, Rejection):
            await self._reject(intent, decision.code, decision.detail, decision.inputs)
            return
        account_rule = self._account_rules(intent, reference, view, now)
        if account_rule is not None:
            await self._reject(intent, *account_rule)
            return
        self.checker.record_approved(intent, now)
        self.working[intent.intent_id] = WorkingOrder(
            client_order_id=intent.intent_id,
            strategy=intent.strategy,
            symbol=symbol,
            side=intent.side,
            remaining_qty=intent.qty,
            limit_price=intent.limit_price,
            reference_price=reference,
        )
        self.approved += 1
        self.rejected_streak.pop(intent.strategy, None)
        # The decision on ``audit`` before the order: the audit actor is woken first, so the
        # decision is journaled ahead of the order manager's OrderSubmitting (actors/audit.py).
        await self.ctx.publish(
            topics.AUDIT,
            RiskDecision(
                intent_id=intent.intent_id,
                strategy=intent.strategy,
                symbol=symbol,
                side=intent.side,
                qty=intent.qty,
                approved=True,
                reference_price=reference,
                trading_state=self.state,
                inputs=decision.inputs,
                ts_init=now,
            ),
        )
        await self.ctx.publish(
            topics.ORDER_APPROVED,
            ApprovedOrder(intent=intent, reference_price=reference, ts_init=now, inputs=decision.inputs),
        )

    async def _check_cancel(self, cancel: CancelIntent) -> None:
        """A cancel takes risk off: no trading state, halt, stale quote or pause blocks it.

        Only the account-wide cancel-rate cap (``max_cancels_per_s``: a strategy or an
        algorithm cancelling in a loop floods the venue) refuses one, with a
        ``CancelRejected`` the strategy hears on ``order.event``. The order manager decides
        whether there is anything to cancel.
        """
        now = self._now()
        refusal = self.checker.check_cancel(now, self.policy.account)
        if refusal is not None:
            self.rejections[refusal.code] += 1
            self.ctx.log.warning(
                "cancel_refused", intent_id=cancel.intent_id, strategy=cancel.strategy, reason=refusal.code,
                detail=refusal.detail,
            )
            rejected = CancelRejected(
                intent_id=cancel.intent_id,
                strategy=cancel.strategy,
                reason=refusal.code,
                detail=refusal.detail,
                ts_init=now,
            )
            await self.ctx.publish(topics.ORDER_EVENT, rejected)
            return
        self.checker.record_cancel(now)
        await self.ctx.publish(topics.ORDER_APPROVED, cancel)

    def _now(self) -> int:
        """The engine clock, never earlier than the last time the checks saw: a wall clock
        stepped back (NTP) must not reopen a duplicate or rate window, nor crash the checks."""
        now = self._latest_ns = max(self.ctx.clock.time_ns(), self._latest_ns)
        return now

    # ------------------------------------------------------------ account, working orders, marks

    def _filled(self, fill: Fill) -> None:
        order = self.working.get(fill.intent_id)
        if order is None:
            return
        seeded = self._seeded.get(fill.intent_id)
        if seeded is not None and fill.execution_id in seeded:
            return  # the order manager's answer already counted it
        remaining = order.remaining_qty - fill.qty
        if remaining > 0:
            self.working[fill.intent_id] = msgspec.structs.replace(order, remaining_qty=remaining)
        else:
            self._forget(fill.intent_id)

    def _forget(self, key: str) -> None:
        self.working.pop(key, None)
        if self._seeded:
            self._seeded.pop(key, None)
            self._unpriced.discard(key)

    async def _seed_working(self, address: str) -> None:
        """Take the order manager's working orders (its book, rebuilt from the journal) as ours.

        Keyed by intent id like approvals are (the book always has one: an adopted venue
        order's is ``adopted:<client order id>``; an empty one falls back to the client
        order id). Priced as :meth:`_check` prices an approval: the side of the NBBO the
        order would pay, or its limit when that is worse for us; with no quote yet, the
        limit; a market order with neither counts at 0 until the symbol's next NBBO
        (:meth:`_price_seeded`). Asked again when recovery ends, entries an earlier answer
        seeded and this one lacks are dropped (recovery found them done); an approval of
        ours the answer lacks stays (its ``ApprovedOrder`` may not have reached the order
        manager yet; its final report or refusal removes it). With the default request
        timeout: an order manager busy recovering makes a restarting risk actor fail and
        be restarted until it answers.
        """
        answer: WorkingOrders = await self.ctx.request(address, WorkingOrdersQuery())
        keys = {view.intent_id or view.client_order_id for view in answer.orders}
        for key in [k for k in self._seeded if k not in keys]:
            self._forget(key)
        for view in answer.orders:
            key = view.intent_id or view.client_order_id
            if view.remaining_qty <= 0:
                self._forget(key)  # filled in full; its final status is on its way
                continue
            existing = self.working.get(key)
            if existing is not None and key not in self._unpriced:
                reference: Decimal | None = existing.reference_price
            else:
                reference = self._seed_reference(view)
            if reference is None:
                self._unpriced.add(key)
            else:
                self._unpriced.discard(key)
            self.working[key] = WorkingOrder(
                client_order_id=view.client_order_id,
                strategy=view.strategy,
                symbol=view.symbol,
                side=view.side,
                remaining_qty=view.remaining_qty,
                limit_price=view.limit_price,
                reference_price=ZERO if reference is None else reference,
            )
            self._seeded[key] = frozenset(view.execution_ids)
        self.ctx.log.info("working_orders_seeded", orders=len(answer.orders), working=len(self.working),
                          unpriced=len(self._unpriced))

    def _seed_reference(self, view: WorkingOrderView) -> Decimal | None:
        bbo = self.quotes.get(view.symbol)
        limit = view.limit_price
        if bbo is None:
            return limit
        quoted = bbo.ask_price if view.side is Side.BUY else bbo.bid_price
        if limit is None:
            return quoted
        return max(quoted, limit) if view.side is Side.BUY else min(quoted, limit)

    def _price_seeded(self, bbo: BestBidOffer) -> None:
        for key in list(self._unpriced):
            order = self.working.get(key)
            if order is None:
                self._unpriced.discard(key)
            elif order.symbol == bbo.symbol:
                self._unpriced.discard(key)
                price = bbo.ask_price if order.side is Side.BUY else bbo.bid_price
                self.working[key] = msgspec.structs.replace(order, reference_price=price)

    def _working_in(self, symbol: str) -> list[WorkingOrder]:
        return [o for o in self.working.values() if o.symbol == symbol]

    def _marks(self) -> Mapping[str, Decimal]:
        """Every quoted symbol's mid, (bid + ask) / 2 of its latest quote (read-only, live).

        Mids are recomputed here for the symbols quoted since the last call only, not on
        every quote (most quotes are not followed by an intent) nor for every symbol on
        every intent. A recomputed mid of a symbol the account holds that differs from the
        one before (value or representation: ``compare_total``) drops the cached account
        view, whose equity and buying power were computed from it.
        """
        requoted = self._requoted
        if requoted:
            mids, quotes, held = self._mids, self.quotes, self.account.positions
            for symbol in requoted:
                quote = quotes[symbol]
                mid = (quote.bid_price + quote.ask_price) / 2
                before = mids.get(symbol)
                mids[symbol] = mid
                if symbol in held and (before is None or before.compare_total(mid)):
                    self._view = None
            requoted.clear()
        return self._marks_view

    def _equity(self, marks: Mapping[str, Decimal]) -> Decimal:
        account = self.account
        value = account.cash
        for symbol, qty in account.positions.items():
            mark = marks.get(symbol, account.avg_prices.get(symbol, ZERO))
            value += qty * mark
        return value

    def _account_view(self) -> AccountView:
        """Equity, buying power, positions and marks as the pre-trade checks read them: cached.

        Computed from exactly these inputs, and recomputed when one of them changes:

        - ``self.account`` (cash, positions, average prices): the ledger's ``AccountState``,
          which replaces it on every fill and baseline, or the restart's portfolio
          (:meth:`on_start`). The view remembers which object it was computed from and is
          recomputed when ``self.account`` is another one, whatever replaced it;
        - the mid of every symbol in ``account.positions`` (equity, and the gross exposure
          of a margin account's buying power); an unquoted one counts at its average price.
          :meth:`_marks` drops the view when such a mid changes, or when such a symbol gets
          its first quote;
        - the account type and margin multiplier: configuration, fixed for the actor's life.

        Nothing else enters it. Working orders do not (the checks take them apart, fresh on
        each intent), nor does a ``Fill`` by itself: the account moves when the ledger's
        ``AccountState`` for it arrives, as it did before the view was cached. ``marks`` is a
        live read-only mapping of every quoted symbol's mid, brought up to date by the
        :meth:`_marks` call here, so the checks always see the latest quotes of the symbols
        the view's figures do not depend on too. The result is the same, value and
        representation, as computing the view afresh (``tests/test_risk_cache.py``).
        """
        marks = self._marks()  # first: it may drop the view
        view = self._view
        account = self.account
        if view is not None and self._view_account is account:
            return view
        if self.section.account_type == "cash":
            equity = self._equity(marks)
            buying_power = max(account.cash, ZERO)
        else:
            # Equity and gross exposure in one pass (the same sums, in the same order, as _equity's).
            equity, gross, avg_prices = account.cash, ZERO, account.avg_prices
            for symbol, qty in account.positions.items():
                mark = marks.get(symbol, avg_prices.get(symbol, ZERO))
                equity += qty * mark
                gross += abs(qty) * mark
            buying_power = max(equity * self.section.margin_multiplier - gross, ZERO)
        view = self._view = AccountView(equity=equity, buying_power=buying_power, positions=account.positions,
                                        marks=marks)
        self._view_account = account
        return view

    def _new_york_day(self, now: int) -> tuple[dt.date, str]:
        """``local_date(now, New York)`` and its ISO string, computed once per day, not per intent.

        The day is kept with its bounds in ns, [local midnight, next local midnight): any
        ``now`` outside them (a new day, or a clock stepped back) is computed afresh.
        """
        start, end, day, iso = self._day
        if not start <= now < end:
            day = local_date(now, _NEW_YORK)
            iso = day.isoformat()
            self._day = (_midnight_ns(day), _midnight_ns(day + dt.timedelta(days=1)), day, iso)
        return day, iso

    def _account_rules(
        self, intent: OrderIntent, reference: Decimal, view: AccountView, now: int
    ) -> tuple[str, str, dict[str, str]] | None:
        """Good-faith violations (cash accounts) and the day-trading rule in force today."""
        account = self.account
        symbol = intent.symbol
        position = account.positions.get(symbol, ZERO)
        if self.section.account_type == "cash" and intent.side is Side.SELL:
            restricted = account.gfv_restricted.get(symbol, ZERO)
            sellable = max(position - restricted, ZERO)
            if restricted > 0 and intent.qty > sellable:
                inputs = {"qty": str(intent.qty), "position": str(position), "gfv_restricted": str(restricted)}
                why = (f"selling {intent.qty} {symbol} would sell shares bought with unsettled proceeds "
                       f"({restricted} restricted until they settle): a good-faith violation")
                return "GOOD_FAITH_VIOLATION", why, inputs
        day, iso = self._new_york_day(now)
        same_day = account.trade_date == iso
        return check_day_trade(
            self.day_trading,
            day,
            intent_side=intent.side,
            intent_qty=intent.qty,
            notional=intent.qty * reference,
            position=position,
            opened_today=account.opened_today.get(symbol, ZERO) if same_day else ZERO,
            day_trades=account.day_trades,
            equity=view.equity,
            intraday_buying_power=view.buying_power,
            symbol=symbol,
        )

    async def _mark(self) -> None:
        """Mark the book to market: the day's loss and the drawdown limits may move the state.

        Its equity is the account view's (computed here after an ``AccountState``, so the next
        intent finds the view cached).
        """
        equity = self._account_view().equity
        now = self.ctx.clock.time_ns()
        watch = self.equity
        watch.update(now, self._new_york_day(now)[0], equity)
        section = self.section
        if self.state is TradingState.ACTIVE:
            limit = section.daily_loss_limit
            if limit is None:
                limit = (watch.start_of_day or ZERO) * section.daily_loss_limit_pct / 100
            loss = -watch.daily_pnl
            if loss >= limit > 0:
                state = TradingState.HALTED if section.daily_loss_action == "halted" else TradingState.REDUCING
                await self._request_state(state, f"daily loss {loss} reached the limit {limit}", "daily_loss")
        if self.state is not TradingState.HALTED and section.max_drawdown_pct is not None:
            drawdown_pct = watch.drawdown_pct
            if drawdown_pct >= section.max_drawdown_pct:
                why = (f"drawdown {drawdown_pct:.2f}% from the high-water mark {watch.high_water} "
                       f"(limit {section.max_drawdown_pct}%)")
                await self._request_state(TradingState.HALTED, why, "drawdown")
        if self.account.positions and not self._mark_armed:
            self._mark_armed = True
            self.ctx.tell_self_at(now + round(section.mark_interval_s * NS_PER_S), _MARK)

    def _report(self) -> RiskReport:
        equity = self._account_view().equity
        marks = self._marks()
        account = self.account
        priced = {s: marks.get(s, account.avg_prices.get(s, ZERO)) for s in account.positions}
        held = exposure(account.positions, priced)
        var = es = None
        if len(self.returns) >= VAR_MIN_SAMPLES:
            try:
                loss_var, loss_es = self.returns.var_es(account.positions, 0.95, priced)
                var, es = _cents(loss_var), _cents(loss_es)
            except (KeyError, ValueError):
                var = es = None  # a held symbol never sampled, or no complete interval yet
        watch = self.equity
        return RiskReport(
            trading_state=self.state.value,
            trading_reason=self.state_reason,
            equity=equity,
            long_exposure=held.long,
            short_exposure=held.short,
            gross_exposure=held.gross,
            net_exposure=held.net,
            leverage=(held.gross / equity).quantize(_REPORT_PLACES) if equity > 0 else ZERO,
            concentration_pct={
                s: (abs(q * priced[s]) * 100 / equity).quantize(_REPORT_PLACES)
                for s, q in sorted(account.positions.items())
                if q and equity > 0
            },
            daily_pnl=watch.daily_pnl,
            drawdown_pct=watch.drawdown_pct,
            high_water=watch.high_water if watch.high_water is not None else equity,
            var_95=var,
            es_95=es,
            var_samples=len(self.returns),
            working_orders=len(self.working),
            paused_strategies=sorted(self.paused),
            ts_init=self.ctx.clock.time_ns(),
        )

    # ------------------------------------------------------------ trading state and operators

    async def _request_state(self, state: TradingState, reason: str, cause: str) -> None:
        if _RESTRICTIVENESS[state] > _RESTRICTIVENESS[self.state]:
            self.ctx.log.warning("trading_state_requested", old=self.state.value, new=state.value, reason=reason,
                                 cause=cause)
            self.state, self.state_reason = state, reason  # refusing more at once is never wrong
        await self.ctx.publish(
            topics.TRADING_REQUEST,
            TradingStateRequest(state=state, reason=reason, cause=cause, ts_init=self.ctx.clock.time_ns()),
        )

    async def _operator(self, command: OperatorCommand) -> OperatorReply:
        who = f"{command.operator}: {command.reason}"
        self.ctx.log.warning("operator_command", action=command.action.value, operator=command.operator,
                             reason=command.reason)
        if self.state is TradingState.RECOVERING:
            return OperatorReply(accepted=False, state=self.state, detail="still recovering: try again when it is done")
        if command.action is OperatorAction.HALT:
            await self._request_state(TradingState.HALTED, f"operator halt ({who})", "operator")
            return OperatorReply(accepted=True, state=self.state, detail="halted; working orders are being cancelled")
        if command.action is OperatorAction.RESUME:
            paused = sorted(self.paused)
            self.paused.clear()
            self.rejected_streak.clear()
            await self._request_state(TradingState.ACTIVE, f"operator resume ({who})", "operator")
            detail = "resuming" + (f"; strategies unpaused: {', '.join(paused)}" if paused else "")
            return OperatorReply(accepted=True, state=TradingState.ACTIVE, detail=detail)
        if self.state is TradingState.HALTED:
            return OperatorReply(accepted=False, state=self.state, detail="halted: resume before flattening")
        await self._request_state(TradingState.REDUCING, f"operator flatten ({who})", "operator")
        intents = []
        now = self.ctx.clock.time_ns()
        for symbol, qty in sorted(self.account.positions.items()):
            pending = sum((o.remaining_qty for o in self._working_in(symbol)
                           if (o.side is Side.SELL) == (qty > 0)), ZERO)
            close = abs(qty) - pending
            if close <= 0:
                continue
            self._flattens += 1
            intent = OrderIntent(
                intent_id=f"operator-flatten.{now}-{self._flattens}",
                strategy=OPERATOR,
                symbol=symbol,
                side=Side.SELL if qty > 0 else Side.BUY,
                qty=close,
                order_type=OrderType.MARKET,
                ts_init=now,
            )
            intents.append(intent.intent_id)
            await self._check(intent)
        return OperatorReply(
            accepted=True, state=self.state, detail=f"reducing; {len(intents)} closing orders", intents=intents
        )

    def _runaway(self, intent: OrderIntent) -> bool:
        """The runaway guard: True when the strategy is (now) paused."""
        strategy = intent.strategy
        if strategy in self.paused:
            return True
        limit = self.section.runaway_intents_per_s
        if limit is None or strategy == OPERATOR:
            return False
        now = self.ctx.clock.time_ns()
        times = self._intent_times.get(strategy)
        if times is None:
            times = self._intent_times[strategy] = deque()
        times.append(now)
        while times and times[0] <= now - NS_PER_S:
            times.popleft()
        if len(times) > limit:
            self._pause(strategy, f"{len(times)} intents within a second (limit {limit})")
            return True
        return False

    def _pause(self, strategy: str, why: str) -> None:
        self.paused[strategy] = why
        self._intent_times.pop(strategy, None)
        self.ctx.log.error("strategy_paused", strategy=strategy, reason=why)

    async def _reject(self, intent: OrderIntent, reason: str, detail: str, inputs: dict[str, str]) -> None:
        self.rejections[reason] += 1
        streak = self.rejected_streak[intent.strategy] = self.rejected_streak.get(intent.strategy, 0) + 1
        limit = self.section.runaway_rejected_streak
        if limit is not None and streak >= limit and intent.strategy not in self.paused:
            self._pause(intent.strategy, f"{streak} rejected intents in a row")
        self.ctx.log.info("intent_rejected", reason=reason, detail=detail, **inputs)
        now = self.ctx.clock.time_ns()
        await self.ctx.publish(
            topics.AUDIT,
            RiskDecision(
                intent_id=intent.intent_id,
                strategy=intent.strategy,
                symbol=intent.symbol,
                side=intent.side,
                qty=intent.qty,
                approved=False,
                reason=reason,
                detail=detail,
                trading_state=self.state,
                inputs=inputs,
                ts_init=now,
            ),
        )
        await self.ctx.publish(
            topics.ORDER_EVENT,
            RiskRejected(
                intent_id=intent.intent_id,
                strategy=intent.strategy,
                symbol=intent.symbol,
                reason=reason,
                detail=detail,
                inputs=inputs,
                ts_init=now,
            ),
        )

    async def _audit_operator(self, command: OperatorCommand, reply: OperatorReply) -> None:
        """Every operator command, granted or refused, goes on the audit trail with risk's answer.

        Built from the command and the reply only: neither holds the control token (the
        control channel checks it and never passes it on), so the journal never sees one.
        """
        await self.ctx.publish(
            topics.AUDIT,
            OperatorActionRecorded(
                action=command.action,
                operator=command.operator,
                reason=command.reason,
                accepted=reply.accepted,
                result=reply.detail,
                state=reply.state,
                intents=list(reply.intents),
                ts_command=command.ts_init,
                ts_init=self.ctx.clock.time_ns(),
            ),
        )


def _cents(estimate: float) -> Decimal:
    """A float estimate (VaR, ES) as money rounded to the cent, never "-0.00"."""
    return Decimal(repr(estimate)).quantize(Decimal("0.01")) + ZERO


_REPORT_PLACES: Final = Decimal("0.0001")
"""Ratios in a report (leverage, concentration) are shown to four places."""
VAR_WINDOW: Final = 501
"""Mark samples kept for historical VaR: 500 intervals."""
VAR_MIN_SAMPLES: Final = 21
"""VaR and ES are reported from 20 intervals on (at 95 %, the tail is then one outcome)."""

OPERATOR: Final = "operator"
"""The strategy name of orders an operator's flatten sends."""

_RESTRICTIVENESS: Final = {
    TradingState.ACTIVE: 0,
    TradingState.REDUCING: 1,
    TradingState.RECOVERING: 2,
    TradingState.HALTED: 3,
}


class _MarkTick:
    """Sent to itself every ``mark_interval_s`` while positions are open."""


_MARK: Final = _MarkTick()


_NEW_YORK: Final = ZoneInfo("America/New_York")
"""The trading day of the loss limit and of the day-trading rule is New York's."""
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _midnight_ns(day: dt.date) -> int:
    """New York's midnight starting ``day``, in ns since the epoch (integer arithmetic, as ``local_date``)."""
    moment = dt.datetime.combine(day, dt.time(), _NEW_YORK)
    return (moment - _EPOCH) // dt.timedelta(microseconds=1) * 1000
