"""The ledger: positions, cash, realised P&L, settlement, good faith and day trades, from fills.

Everything here is a pure function of the fills booked, in the order booked (plus an
optional account baseline taken before the first fill), so a ledger can be replayed from
the journal, tested on its own and snapshotted (:meth:`Ledger.encode` /
:meth:`Ledger.decode`). All money is :class:`decimal.Decimal`.

Positions and P&L
    Positions may be long or short, kept as first-in-first-out lots: a fill first closes
    the oldest opposite lots, realising ``(price - lot price) × qty`` in the lot's
    direction, and opens a new lot with what is left. Cash moves by ``∓ price × qty`` and
    fees; realised P&L is net of fees (in total and per symbol). No step of the booking
    divides, so a book that returns to flat has realised exactly its change in cash.
    ``avg_price`` (display only) is the one division.

Settlement (T+1)
    Every fill's cash effect ``-(signed qty × price + fee)`` settles on the date the
    injected ``settle_date(symbol, ts_event)`` gives. :class:`SettlementRule` derives it
    from market calendars: for an exchange calendar the next session strictly after the
    trade date (T+1 business day: weekends and exchange holidays skipped), for the 24/7
    calendar the trade date itself (T+0). The trade date is the fill's calendar day in the
    exchange's time zone (New York for XNYS). ``cash`` is the total;
    ``settled_cash(as_of)`` is the baseline cash plus every effect settling on or before
    ``as_of``. A venue-reported baseline is taken as settled.

Good faith (cash accounts only)
    Under Regulation T a cash account must pay for a purchase with settled funds; buying
    with the proceeds of a sale that has not settled yet is allowed, but selling that
    purchase before those proceeds settle is a *good-faith violation* (FINRA's reading of
    Reg T §220.8). The model, exactly:

    - A sale (any fill with a positive cash effect) creates a *tranche* of unsettled
      proceeds: its amount and settlement date. It stops being unsettled on that date.
    - A purchase (any fill with a negative cash effect) of cost ``c`` on trade date ``T``
      is paid first from *free settled funds*: ``settled_cash(T)`` less every purchase
      still unsettled on ``T`` except the parts of those purchases paid with proceeds
      still unsettled on ``T``. What is left is drawn from the unsettled tranches,
      earliest-settling first; anything beyond that is a debit this model does not
      classify (a free-riding or margin question, for the risk check to prevent).
    - Each draw of ``d`` from a tranche settling on ``S`` restricts
      ``ceil(fill qty × d / c)`` of the quantity the purchase opened (rounded *up* to the
      fill quantity's decimal places: a share paid partly with unsettled money counts as
      restricted; the total restricted never exceeds the quantity opened) until ``S``:
      it is restricted on every day ``as_of < S``.
    - A sale out of a long position sells the symbol's unrestricted quantity first; what
      it takes beyond that is a good-faith violation (recorded in ``violations``), and
      consumes the restrictions that expire soonest first.
    - ``gfv_restricted(as_of)``: per symbol, the quantity whose sale on ``as_of`` would be
      a violation. Margin accounts keep no restrictions (their purchases are financed).

Day trades
    A day trade is opening and closing (any part of) a position in the same symbol on the
    same trade date. Counting convention: a closing fill closes the quantity opened on its
    trade date *first* (whatever the FIFO lots say about P&L — regulators count the
    purchase and the sale on the same day, not which lot a sale came from), and each
    closing fill that closes any same-day-opened quantity counts as **one** day trade,
    however much it closes. A fill that flips a position counts once (if it closed
    same-day quantity) and its excess opens a new same-day quantity. Baseline positions
    were opened before the ledger's first day. Records older than
    :data:`DAY_TRADE_RETENTION_DAYS` before the newest one are dropped.

Fills are assumed to arrive in trade-date order, as the order manager books them;
settled proceeds and expired restrictions are pruned as trade dates advance.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import deque
from collections.abc import Callable, Mapping
from decimal import ROUND_CEILING, Context, Decimal
from typing import Final

import msgspec

from engine.calendar import (
    ALWAYS_OPEN_CALENDAR,
    CalendarRangeError,
    MarketCalendar,
    SessionCalendar,
    local_date,
    utc_date,
)
from engine.messages import AccountState, Fill, PortfolioSnapshot, Side

ZERO: Final = Decimal(0)
SNAPSHOT_VERSION: Final = 1
DAY_TRADE_RETENTION_DAYS: Final = 31
"""Day-trade records are kept this many calendar days back from the newest (a five-business-day
window never spans more than about eleven)."""
VIOLATION_RETENTION_DAYS: Final = 366
"""Good-faith violations are kept a year back (brokers restrict after three in twelve months)."""
_CONTEXT: Final = Context(prec=34)
"""For the one division the good-faith model needs (restricted share of a purchase)."""

SettleDate = Callable[[str, int], dt.date]
"""``(symbol, fill ts_ns) -> settlement date``."""
TradeDate = Callable[[str, int], dt.date]
"""``(symbol, fill ts_ns) -> trade date``."""


class AccountType(enum.StrEnum):
    CASH = "cash"
    """Purchases paid in full with settled funds; good-faith rules apply, PDT does not."""
    MARGIN = "margin"
    """Purchases may be financed; the day-trading rule applies."""


# ---------------------------------------------------------------- settlement dates


def calendar_trade_date(calendar: SessionCalendar, ts_ns: int) -> dt.date:
    """The trade date of ``ts_ns`` on ``calendar``: its local day for an exchange, else the UTC day."""
    if isinstance(calendar, MarketCalendar):
        return calendar.trade_date(ts_ns)
    return utc_date(ts_ns)


def _utc_trade_date(symbol: str, ts_ns: int) -> dt.date:
    return utc_date(ts_ns)


OutOfRange = Callable[[str, int, CalendarRangeError], None]
"""``(what, ts_ns, error)``: told when a rule falls back because a calendar's range ended."""


class SettlementRule:
    """Settlement dates from market calendars: T+1 session on an exchange, T+0 on 24/7.

    ``calendar_for`` resolves a symbol's calendar (as the risk actor does); a calendar with
    sessions (:class:`MarketCalendar`) settles on the next session strictly after the trade
    date, any other (the 24/7 calendar) on the trade date. ``account_calendar`` is the
    calendar the account's own trading day and its business-day window are counted in
    (XNYS for a US equities account; 24/7 counts calendar days).

    Dates beyond a calendar's loaded range raise :class:`~engine.calendar.CalendarRangeError`
    — unless ``on_out_of_range`` is given: then the rule tells it and falls back to the
    calendar's local day, settled the same day, with calendar days as business days. A
    running ledger must book a fill it cannot date exactly (the fill happened; refusing it
    would crash the actor on every restart, as the fill is replayed), and the caller logs
    the fallback loudly.
    """

    def __init__(
        self,
        calendar_for: Callable[[str], SessionCalendar],
        account_calendar: SessionCalendar = ALWAYS_OPEN_CALENDAR,
        *,
        on_out_of_range: OutOfRange | None = None,
    ) -> None:
        self.calendar_for = calendar_for
        self.account_calendar = account_calendar
        self.on_out_of_range = on_out_of_range

    def __call__(self, symbol: str, ts_ns: int) -> dt.date:
        calendar = self.calendar_for(symbol)
        try:
            day = calendar_trade_date(calendar, ts_ns)
            if isinstance(calendar, MarketCalendar):
                return calendar.next_session_after(day)
            return day
        except CalendarRangeError as exc:
            return self._fallback_day(symbol, calendar, ts_ns, exc)

    def trade_date(self, symbol: str, ts_ns: int) -> dt.date:
        calendar = self.calendar_for(symbol)
        try:
            return calendar_trade_date(calendar, ts_ns)
        except CalendarRangeError as exc:
            return self._fallback_day(symbol, calendar, ts_ns, exc)

    def account_trade_date(self, ts_ns: int) -> dt.date:
        try:
            return calendar_trade_date(self.account_calendar, ts_ns)
        except CalendarRangeError as exc:
            return self._fallback_day("account", self.account_calendar, ts_ns, exc)

    def business_days(self, day: dt.date, count: int) -> list[dt.date]:
        """The last ``count`` business days up to and including ``day``, oldest first."""
        calendar = self.account_calendar
        if isinstance(calendar, MarketCalendar):
            try:
                return calendar.sessions_until(day, count)
            except CalendarRangeError as exc:
                if self.on_out_of_range is None:
                    raise
                self.on_out_of_range("business days", 0, exc)
        return calendar_days(day, count)

    def _fallback_day(self, what: str, calendar: SessionCalendar, ts_ns: int, exc: CalendarRangeError) -> dt.date:
        if self.on_out_of_range is None:
            raise exc
        self.on_out_of_range(what, ts_ns, exc)
        if isinstance(calendar, MarketCalendar):
            return local_date(ts_ns, calendar.tz)
        return utc_date(ts_ns)


SAME_DAY_SETTLEMENT: Final = SettlementRule(lambda _symbol: ALWAYS_OPEN_CALENDAR)
"""T+0 on UTC days for every symbol: the default when no calendars are wired."""


def calendar_days(day: dt.date, count: int) -> list[dt.date]:
    """The ``count`` calendar days up to and including ``day``, oldest first."""
    return [day - dt.timedelta(days=back) for back in range(count - 1, -1, -1)]


def account_trade_date(settle_date: SettleDate, ts_ns: int) -> dt.date:
    """The account's trading day at ``ts_ns``: the rule's account calendar, else the UTC day."""
    if isinstance(settle_date, SettlementRule):
        return settle_date.account_trade_date(ts_ns)
    return utc_date(ts_ns)


def business_days(settle_date: SettleDate, day: dt.date, count: int) -> list[dt.date]:
    """The day-trade window ending on ``day``: the rule's business days, else calendar days."""
    if isinstance(settle_date, SettlementRule):
        return settle_date.business_days(day, count)
    return calendar_days(day, count)


# ---------------------------------------------------------------- records (also the snapshot)


class Tranche(msgspec.Struct, array_like=True):
    """Proceeds of a sale that has not settled: what purchases may draw on until then."""

    settle_date: dt.date
    amount: Decimal
    used: Decimal = ZERO


class PendingPayment(msgspec.Struct, array_like=True):
    """A purchase whose cost has not settled, and the parts of it paid with unsettled proceeds."""

    settle_date: dt.date
    cost: Decimal
    unsettled: list[tuple[dt.date, Decimal]]
    """(the proceeds' settlement date, amount drawn)."""


class Restriction(msgspec.Struct, array_like=True):
    """Quantity bought with proceeds settling on ``until``: selling it on a day before is a violation."""

    until: dt.date
    qty: Decimal
    trade_date: dt.date
    execution_id: str


class GoodFaithViolation(msgspec.Struct, frozen=True, array_like=True):
    trade_date: dt.date
    symbol: str
    qty: Decimal
    """How much of the sale was restricted quantity."""
    execution_id: str


class DayTrade(msgspec.Struct, frozen=True, array_like=True):
    trade_date: dt.date
    symbol: str
    qty: Decimal
    """Same-day-opened quantity the closing fill closed."""
    execution_id: str


class OpenedToday(msgspec.Struct, array_like=True):
    trade_date: dt.date
    qty: Decimal
    """Signed quantity opened on ``trade_date`` and still open."""


class PositionState(msgspec.Struct, array_like=True):
    qty: Decimal
    lots: list[tuple[Decimal, Decimal]]
    realized_pnl: Decimal
    fees: Decimal


class LedgerState(msgspec.Struct, kw_only=True):
    """Everything a ledger knows, as a snapshot payload (msgpack)."""

    version: int
    account_type: AccountType
    baseline_cash: Decimal
    cash: Decimal
    realized_pnl: Decimal
    fees: Decimal
    fills: int
    positions: dict[str, PositionState]
    cash_by_settlement: list[tuple[dt.date, Decimal]]
    tranches: list[Tranche]
    pending_payments: list[PendingPayment]
    restrictions: dict[str, list[Restriction]]
    opened: dict[str, OpenedToday]
    day_trades: list[DayTrade]
    violations: list[GoodFaithViolation]
    execution_ids: list[str]


_ENCODER: Final = msgspec.msgpack.Encoder()
_DECODER: Final = msgspec.msgpack.Decoder(LedgerState)


# ---------------------------------------------------------------- the ledger


class Position:
    """A position as first-in-first-out lots of (signed quantity, price), and its realised P&L."""

    __slots__ = ("fees", "lots", "qty", "realized_pnl")

    def __init__(self) -> None:
        self.qty = ZERO
        self.lots: deque[list[Decimal]] = deque()
        self.realized_pnl = ZERO
        """Net of this symbol's fees."""
        self.fees = ZERO

    @property
    def avg_price(self) -> Decimal:
        """Average price of the open lots (for display; realised P&L never divides)."""
        if not self.qty:
            return ZERO
        return sum((q * p for q, p in self.lots), ZERO) / self.qty


def _ceil_to_places_of(value: Decimal, like: Decimal) -> Decimal:
    exponent = like.as_tuple().exponent
    places = min(exponent, 0) if isinstance(exponent, int) else 0
    return value.quantize(Decimal((0, (1,), places)), rounding=ROUND_CEILING, context=_CONTEXT)


class Ledger:
    """Pure bookkeeping, separate from the actor so it can be tested and replayed on its own.

    ``settle_date`` gives each fill's settlement date; ``trade_date`` its trade date
    (default: the rule's own when ``settle_date`` is a :class:`SettlementRule`, else the
    UTC date). Both are read before anything changes, so a fill whose date cannot be
    known (a calendar's range error) leaves the ledger untouched.
    """

    def __init__(
        self,
        cash: Decimal,
        settle_date: SettleDate = SAME_DAY_SETTLEMENT,
        account_type: AccountType | str = AccountType.MARGIN,
        *,
        trade_date: TradeDate | None = None,
    ) -> None:
        self.settle_date = settle_date
        if trade_date is None:
            trade_date = settle_date.trade_date if isinstance(settle_date, SettlementRule) else _utc_trade_date
        self.trade_date = trade_date
        self.account_type = AccountType(account_type)
        self.baseline_cash = cash
        self.cash = cash
        self.positions: dict[str, Position] = {}
        self.realized_pnl = ZERO
        self.fees = ZERO
        self.fills = 0
        self.execution_ids: set[str] = set()
        self.cash_by_settlement: dict[dt.date, Decimal] = {}
        """Settlement date → net cash effect of the fills settling that day."""
        self.tranches: list[Tranche] = []
        self.pending_payments: list[PendingPayment] = []
        self.restrictions: dict[str, list[Restriction]] = {}
        self.opened: dict[str, OpenedToday] = {}
        self.day_trades: list[DayTrade] = []
        self.violations: list[GoodFaithViolation] = []

    # ------------------------------------------------------------ booking

    def set_baseline(self, cash: Decimal, positions: Mapping[str, Decimal]) -> None:
        """Start from an account as the venue reported it: cash, and positions of unknown cost.

        A baseline position's cost is unknown to us, so its lot is priced at zero and
        realised P&L on closing it is not meaningful; cash and quantities are exact. The
        cash is taken as settled, the positions as unrestricted and opened before today.
        """
        self.baseline_cash = cash
        self.cash = cash
        for symbol, qty in positions.items():
            if qty:
                position = self.positions[symbol] = Position()
                position.qty = qty
                position.lots.append([qty, ZERO])

    def apply(self, fill: Fill) -> bool:
        """Book a fill; False (and no change) if its execution id was booked before."""
        if fill.execution_id in self.execution_ids:
            return False
        symbol = fill.symbol
        day = self.trade_date(symbol, fill.ts_event)
        settles = self.settle_date(symbol, fill.ts_event)
        self.execution_ids.add(fill.execution_id)
        signed = fill.qty * fill.side.sign
        price = fill.price
        effect = -(signed * price + fill.fee)
        position = self.positions.get(symbol)
        if position is None:
            position = self.positions[symbol] = Position()
        before = position.qty
        closed = min(abs(signed), abs(before)) if before and (before > 0) != (signed > 0) else ZERO
        if self.account_type is AccountType.CASH:
            self._good_faith(fill, day, settles, before, signed, closed, effect)
        self.cash += effect
        self.cash_by_settlement[settles] = self.cash_by_settlement.get(settles, ZERO) + effect
        self.fees += fill.fee
        self.realized_pnl -= fill.fee
        position.fees += fill.fee
        position.realized_pnl -= fill.fee
        self.fills += 1
        lots = position.lots
        remaining = signed
        # Close opposite lots first, oldest first: exact, no division anywhere.
        while remaining and lots and (lots[0][0] > 0) != (remaining > 0):
            lot = lots[0]
            closing = min(abs(remaining), abs(lot[0]))
            direction = 1 if lot[0] > 0 else -1
            gain = (price - lot[1]) * closing * direction
            self.realized_pnl += gain
            position.realized_pnl += gain
            lot[0] -= closing * direction
            remaining += closing * direction
            if not lot[0]:
                lots.popleft()
        if remaining:
            lots.append([remaining, price])
        position.qty += signed
        self._track_day_trade(symbol, day, signed, closed, fill.execution_id)
        return True

    # ------------------------------------------------------------ day trades

    def _track_day_trade(self, symbol: str, day: dt.date, signed: Decimal, closed: Decimal, execution_id: str) -> None:
        opened = self.opened.get(symbol)
        if opened is not None and opened.trade_date != day:
            opened = None
            del self.opened[symbol]
        if closed and opened is not None and opened.qty:
            taken = min(closed, abs(opened.qty))
            opened.qty -= taken if opened.qty > 0 else -taken
            self.day_trades.append(DayTrade(day, symbol, taken, execution_id))
            horizon = day - dt.timedelta(days=DAY_TRADE_RETENTION_DAYS)
            if self.day_trades[0].trade_date < horizon:
                self.day_trades = [t for t in self.day_trades if t.trade_date >= horizon]
        opening = abs(signed) - closed
        if opening:
            added = opening if signed > 0 else -opening
            if opened is None:
                self.opened[symbol] = OpenedToday(day, added)
            else:
                opened.qty += added  # zero after a flip closed it, or the same direction

    def opened_today(self, trade_date: dt.date) -> dict[str, Decimal]:
        """Per symbol, signed quantity opened on ``trade_date`` and still open: closing it is a day trade."""
        return {symbol: o.qty for symbol, o in sorted(self.opened.items()) if o.trade_date == trade_date and o.qty}

    def would_day_trade(self, symbol: str, side: Side, trade_date: dt.date) -> bool:
        """Whether an order would close same-day-opened quantity (closing fills close it first)."""
        opened = self.opened.get(symbol)
        if opened is None or opened.trade_date != trade_date or not opened.qty:
            return False
        return (opened.qty > 0) != (side.sign > 0)

    def day_trades_in_window(self, trade_date: dt.date, business_days: list[dt.date]) -> int:
        """Day trades on the given business days, none after ``trade_date``."""
        days = {d for d in business_days if d <= trade_date}
        return sum(1 for t in self.day_trades if t.trade_date in days)

    # ------------------------------------------------------------ settlement and good faith

    def settled_cash(self, as_of: dt.date) -> Decimal:
        """Baseline cash plus the cash effects settling on or before ``as_of``."""
        return self.baseline_cash + sum(
            (amount for day, amount in self.cash_by_settlement.items() if day <= as_of), ZERO
        )

    def gfv_restricted(self, as_of: dt.date) -> dict[str, Decimal]:
        """Per symbol, the quantity whose sale on ``as_of`` would be a good-faith violation."""
        found: dict[str, Decimal] = {}
        for symbol, restrictions in sorted(self.restrictions.items()):
            qty = sum((r.qty for r in restrictions if r.until > as_of), ZERO)
            if qty:
                found[symbol] = qty
        return found

    def _prune(self, day: dt.date) -> None:
        """Forget proceeds and purchases settled by ``day``, and restrictions expired by then."""
        self.tranches = [t for t in self.tranches if t.settle_date > day]
        self.pending_payments = [p for p in self.pending_payments if p.settle_date > day]
        for symbol, restrictions in list(self.restrictions.items()):
            active = [r for r in restrictions if r.until > day]
            if active:
                self.restrictions[symbol] = active
            else:
                del self.restrictions[symbol]

    def free_settled_funds(self, day: dt.date) -> Decimal:
        """Settled cash on ``day`` not already committed to purchases still settling.

        A purchase still unsettled on ``day`` commits its cost except the parts paid with
        proceeds that are themselves still unsettled on ``day``.
        """
        committed = sum(
            (
                p.cost - sum((a for d, a in p.unsettled if d > day), ZERO)
                for p in self.pending_payments
                if p.settle_date > day
            ),
            ZERO,
        )
        return self.settled_cash(day) - committed

    def _good_faith(
        self,
        fill: Fill,
        day: dt.date,
        settles: dt.date,
        before: Decimal,
        signed: Decimal,
        closed: Decimal,
        effect: Decimal,
    ) -> None:
        """Cash accounts: check a sale against restrictions; fund a purchase, restricting what
        unsettled proceeds paid for. Runs before the fill's cash effect is booked."""
        self._prune(day)
        if signed < 0 < before and closed:
            self._sell(fill, day, before, closed)
        if effect > 0:
            if settles > day:
                self.tranches.append(Tranche(settles, effect))
        elif effect < 0:
            opened_long = signed - closed if signed > 0 else ZERO
            self._pay(fill, day, settles, -effect, opened_long)

    def _sell(self, fill: Fill, day: dt.date, long_before: Decimal, sold: Decimal) -> None:
        restrictions = self.restrictions.get(fill.symbol)
        if not restrictions:
            return
        restricted = sum((r.qty for r in restrictions), ZERO)  # pruned: all active on `day`
        over = sold - max(long_before - restricted, ZERO)
        if over <= 0:
            return
        self.violations.append(GoodFaithViolation(day, fill.symbol, over, fill.execution_id))
        horizon = day - dt.timedelta(days=VIOLATION_RETENTION_DAYS)
        self.violations = [v for v in self.violations if v.trade_date >= horizon]
        restrictions.sort(key=lambda r: r.until)
        for restriction in restrictions:
            taken = min(over, restriction.qty)
            restriction.qty -= taken
            over -= taken
            if not over:
                break
        kept = [r for r in restrictions if r.qty]
        if kept:
            self.restrictions[fill.symbol] = kept
        else:
            del self.restrictions[fill.symbol]

    def _pay(self, fill: Fill, day: dt.date, settles: dt.date, cost: Decimal, opened_long: Decimal) -> None:
        rest = cost - min(max(self.free_settled_funds(day), ZERO), cost)
        draws: list[tuple[dt.date, Decimal]] = []
        for tranche in sorted(self.tranches, key=lambda t: t.settle_date):
            if not rest:
                break
            free = tranche.amount - tranche.used
            if free <= 0:
                continue
            taken = min(free, rest)
            tranche.used += taken
            rest -= taken
            draws.append((tranche.settle_date, taken))
        if settles > day:
            self.pending_payments.append(PendingPayment(settles, cost, draws))
        restricted = ZERO
        for until, taken in draws:
            share = _CONTEXT.divide(_CONTEXT.multiply(fill.qty, taken), cost)
            qty = min(_ceil_to_places_of(share, fill.qty), opened_long - restricted)
            if qty > 0:
                self.restrictions.setdefault(fill.symbol, []).append(Restriction(until, qty, day, fill.execution_id))
                restricted += qty

    # ------------------------------------------------------------ valuation

    def quantities(self) -> dict[str, Decimal]:
        """Non-zero signed positions, by symbol."""
        return {symbol: p.qty for symbol, p in sorted(self.positions.items()) if p.qty}

    def unrealized_pnl(self, marks: Mapping[str, Decimal]) -> Decimal:
        """Σ over open lots of (mark − lot price) × signed lot qty. KeyError for an open symbol without a mark."""
        total = ZERO
        for symbol, position in self.positions.items():
            if position.qty:
                mark = marks[symbol]
                total += sum(((mark - price) * qty for qty, price in position.lots), ZERO)
        return total

    def equity(self, marks: Mapping[str, Decimal]) -> Decimal:
        """Cash + Σ qty × mark. KeyError for an open symbol without a mark."""
        return self.cash + sum((p.qty * marks[s] for s, p in self.positions.items() if p.qty), ZERO)

    # ------------------------------------------------------------ messages

    def snapshot(self) -> PortfolioSnapshot:
        return PortfolioSnapshot(
            cash=self.cash,
            positions={symbol: p.qty for symbol, p in sorted(self.positions.items())},
            realized_pnl=self.realized_pnl,
            fees=self.fees,
            fills=self.fills,
        )

    def state(self, now_ns: int, trade_date: dt.date, window: list[dt.date]) -> AccountState:
        """The account as risk reads it, for ``trade_date`` and the business-day ``window``."""
        positions = self.quantities()
        return AccountState(
            account_type=self.account_type.value,
            cash=self.cash,
            settled_cash=self.settled_cash(trade_date),
            positions=positions,
            avg_prices={symbol: self.positions[symbol].avg_price for symbol in positions},
            realized_pnl=self.realized_pnl,
            fees=self.fees,
            fills=self.fills,
            trade_date=trade_date.isoformat(),
            opened_today=self.opened_today(trade_date),
            day_trades=self.day_trades_in_window(trade_date, window),
            gfv_restricted=self.gfv_restricted(trade_date),
            ts_init=now_ns,
            good_faith_violations=self.violations_since(trade_date - dt.timedelta(days=VIOLATION_RETENTION_DAYS - 1)),
        )

    def violations_since(self, day: dt.date) -> int:
        """Good-faith violations on or after ``day``."""
        return sum(1 for v in self.violations if v.trade_date >= day)

    # ------------------------------------------------------------ snapshots

    def encode(self) -> bytes:
        """The full ledger state as msgpack (the calendars are not part of it: pass them to decode)."""
        state = LedgerState(
            version=SNAPSHOT_VERSION,
            account_type=self.account_type,
            baseline_cash=self.baseline_cash,
            cash=self.cash,
            realized_pnl=self.realized_pnl,
            fees=self.fees,
            fills=self.fills,
            positions={
                symbol: PositionState(p.qty, [(q, price) for q, price in p.lots], p.realized_pnl, p.fees)
                for symbol, p in self.positions.items()
            },
            cash_by_settlement=sorted(self.cash_by_settlement.items()),
            tranches=self.tranches,
            pending_payments=self.pending_payments,
            restrictions=self.restrictions,
            opened=self.opened,
            day_trades=self.day_trades,
            violations=self.violations,
            execution_ids=sorted(self.execution_ids),
        )
        return _ENCODER.encode(state)

    @classmethod
    def decode(
        cls, payload: bytes, settle_date: SettleDate = SAME_DAY_SETTLEMENT, *, trade_date: TradeDate | None = None
    ) -> Ledger:
        """A ledger from :meth:`encode`'s payload, dating later fills with ``settle_date``."""
        state = _DECODER.decode(payload)
        if state.version != SNAPSHOT_VERSION:
            raise ValueError(f"ledger snapshot version {state.version}, expected {SNAPSHOT_VERSION}")
        ledger = cls(state.baseline_cash, settle_date, state.account_type, trade_date=trade_date)
        ledger.cash = state.cash
        ledger.realized_pnl = state.realized_pnl
        ledger.fees = state.fees
        ledger.fills = state.fills
        for symbol, saved in state.positions.items():
            position = ledger.positions[symbol] = Position()
            position.qty = saved.qty
            position.lots.extend([q, price] for q, price in saved.lots)
            position.realized_pnl = saved.realized_pnl
            position.fees = saved.fees
        ledger.cash_by_settlement = dict(state.cash_by_settlement)
        ledger.tranches = state.tranches
        ledger.pending_payments = state.pending_payments
        ledger.restrictions = state.restrictions
        ledger.opened = state.opened
        ledger.day_trades = state.day_trades
        ledger.violations = state.violations
        ledger.execution_ids = set(state.execution_ids)
        return ledger
