"""Pre-trade risk checks (SEC 15c3-5 / FIA style) as pure functions of what the caller passes in.

No actor, no I/O, no clock: the caller (the risk actor) owns the market data, the
account and the working orders, and passes them in with the engine clock's ``now_ns``.
This module only decides, so every rule can be tested exhaustively and a rejection can
be explained from its inputs alone.

:meth:`PreTradeChecker.check` returns the *first* failing rule, in this order (each code
is a stable string; ``inputs`` hold the compared numbers as ``Decimal`` strings):

- ``INVALID_QTY`` — quantity not positive (or not a finite number);
- ``FRACTIONAL_NOT_ALLOWED`` — a non-integer quantity for an asset that is not fractionable;
- ``LOT_SIZE`` — quantity below the asset's minimum or not a whole multiple of its lot
  size (a fractionable asset needs a fractional ``lot_size``: the default is 1);
- ``UNSUPPORTED_ORDER_TYPE`` — only market and limit orders are checked (and sent);
- ``INVALID_PRICE`` — a limit order without a positive limit price, a market order with
  one, or a reference price that is not positive: no notional can be trusted then;
- ``MAX_ORDER_QTY``, ``MAX_ORDER_NOTIONAL`` — the fat-finger caps (notional is qty ×
  reference price);
- ``PRICE_COLLAR`` — a limit price further than ``collar_pct`` percent from the reference,
  either way (a market order has no price to collar);
- ``ADV_PARTICIPATION`` — quantity above a percentage of the asset's average daily
  volume (not checked when the caller does not know the volume);
- ``DUPLICATE_ORDER`` — the strategy's previous approved order in the symbol had the same
  side, quantity and limit price and was approved within the duplicate window (a
  strategy stuck in a loop; one that flips buy, sell, buy is not repeating itself);
- ``ORDER_RATE`` — the strategy's approvals in the rate window reached the cap;
- ``MAX_OPEN_ORDERS`` — the account's working orders reached the cap;
- ``SELF_TRADE`` — the order could execute against one of our own working orders;
- ``SHORT_NOT_LOCATED`` — the order opens or adds to a short in an asset that is not
  shortable, or is hard to borrow (that needs a locate, and we have none);
- ``BUYING_POWER`` — this order and every working order that increases exposure need
  more than the account's buying power (orders that only reduce need none);
- ``MAX_POSITION``, ``GROSS_EXPOSURE``, ``NET_EXPOSURE``, ``LEVERAGE``,
  ``SYMBOL_CONCENTRATION``, ``SECTOR_CONCENTRATION`` — projected figures; see below.

``check_cancel`` has its own code, ``CANCEL_RATE``.

Projection, worst case. For the intent's symbol the projected position is the position
now, plus this order, plus the working orders on the order's side in that symbol (as if
they all filled). Every other symbol counts at its worst case too: its position with all
its working buys filled, or with all its working sells filled, whichever is worse for the
figure (gross: the larger absolute notional; net: the extreme that moves the sum
furthest from zero). Marks value positions (the intent's symbol falls back to the
reference price). A symbol with a position or working orders and no mark makes the
figures that include it unknowable: with a gross, net or leverage limit set (or a
sector limit and the symbol in the order's sector), any order that is not purely
reducing is then refused with that limit's code, the unmarked symbols in ``inputs``.
A sector is known for the intent's symbol from its ``Asset``, for the others from the
``sectors`` argument; symbols whose sector is not given are not counted in any sector,
and an asset without a sector is not checked for sector concentration.

The position, exposure, leverage and concentration rules never refuse an order that
only reduces its symbol's position (:func:`reduces_exposure`): closing risk must always
be possible, even when a limit is already breached or an unrelated figure (net
exposure across symbols) would grow. Any other order is refused only if it breaches a
limit *and* makes that figure larger than it would be without the order. With equity at
or below zero a leverage or concentration ratio is meaningless, so with such a limit set
every order that increases the figure is refused.

Ratios are compared by cross-multiplication (``figure * 100 > pct * equity``), so the
comparisons are exact in ``Decimal`` for ordinary magnitudes; percentages shown in
details are rounded for reading only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Final, NamedTuple

import msgspec

from engine.messages import OrderIntent, OrderType, Side

INVALID_QTY: Final = "INVALID_QTY"
FRACTIONAL_NOT_ALLOWED: Final = "FRACTIONAL_NOT_ALLOWED"
LOT_SIZE: Final = "LOT_SIZE"
UNSUPPORTED_ORDER_TYPE: Final = "UNSUPPORTED_ORDER_TYPE"
INVALID_PRICE: Final = "INVALID_PRICE"
MAX_ORDER_QTY: Final = "MAX_ORDER_QTY"
MAX_ORDER_NOTIONAL: Final = "MAX_ORDER_NOTIONAL"
PRICE_COLLAR: Final = "PRICE_COLLAR"
ADV_PARTICIPATION: Final = "ADV_PARTICIPATION"
DUPLICATE_ORDER: Final = "DUPLICATE_ORDER"
ORDER_RATE: Final = "ORDER_RATE"
MAX_OPEN_ORDERS: Final = "MAX_OPEN_ORDERS"
SELF_TRADE: Final = "SELF_TRADE"
SHORT_NOT_LOCATED: Final = "SHORT_NOT_LOCATED"
BUYING_POWER: Final = "BUYING_POWER"
MAX_POSITION: Final = "MAX_POSITION"
GROSS_EXPOSURE: Final = "GROSS_EXPOSURE"
NET_EXPOSURE: Final = "NET_EXPOSURE"
LEVERAGE: Final = "LEVERAGE"
SYMBOL_CONCENTRATION: Final = "SYMBOL_CONCENTRATION"
SECTOR_CONCENTRATION: Final = "SECTOR_CONCENTRATION"
CANCEL_RATE: Final = "CANCEL_RATE"

CHECK_ORDER: Final[tuple[str, ...]] = (
    INVALID_QTY,
    FRACTIONAL_NOT_ALLOWED,
    LOT_SIZE,
    UNSUPPORTED_ORDER_TYPE,
    INVALID_PRICE,
    MAX_ORDER_QTY,
    MAX_ORDER_NOTIONAL,
    PRICE_COLLAR,
    ADV_PARTICIPATION,
    DUPLICATE_ORDER,
    ORDER_RATE,
    MAX_OPEN_ORDERS,
    SELF_TRADE,
    SHORT_NOT_LOCATED,
    BUYING_POWER,
    MAX_POSITION,
    GROSS_EXPOSURE,
    NET_EXPOSURE,
    LEVERAGE,
    SYMBOL_CONCENTRATION,
    SECTOR_CONCENTRATION,
)
"""The codes :meth:`PreTradeChecker.check` can return, in the order the rules run."""
REASON_CODES: Final[frozenset[str]] = frozenset((*CHECK_ORDER, CANCEL_RATE))

DEFAULT_RATE_WINDOW_NS: Final = 1_000_000_000
NO_SECTORS: Final[Mapping[str, str]] = MappingProxyType({})
ZERO: Final = Decimal(0)
HUNDRED: Final = Decimal(100)

_DupKey = tuple[str, str, Side, Decimal, Decimal | None]
"""strategy, symbol, side, qty, limit price (None = market): what makes an order a repeat."""
_LONGER_IS_STRICTER: Final = frozenset({"duplicate_window_ns"})
"""Limit fields where the larger value restricts more (a longer duplicate window blocks more)."""


@dataclass(frozen=True)
class Limits:
    """Every field None = no limit. Configurable per account, per strategy and per symbol.

    The caller combines the levels with :meth:`tighten`, so a symbol can only be stricter
    than its strategy and account, never looser.
    """

    max_order_qty: Decimal | None = None
    max_order_notional: Decimal | None = None
    collar_pct: Decimal | None = None
    """A limit price must lie within ±pct percent of the reference (market orders: not checked)."""
    duplicate_window_ns: int | None = None
    """The strategy's previous order in the symbol, same side+qty+limit price, approved this
    recently → ``DUPLICATE_ORDER``."""
    max_orders_per_window: int | None = None
    """Approved orders per strategy per ``rate_window_ns`` → ``ORDER_RATE``."""
    max_cancels_per_window: int | None = None
    """Cancels per ``rate_window_ns`` → ``CANCEL_RATE``."""
    rate_window_ns: int = DEFAULT_RATE_WINDOW_NS
    max_open_orders: int | None = None
    """Working orders of the account (all strategies) → ``MAX_OPEN_ORDERS``."""
    max_position_qty: Decimal | None = None
    max_position_notional: Decimal | None = None
    max_gross_exposure: Decimal | None = None
    max_net_exposure: Decimal | None = None
    max_leverage: Decimal | None = None
    """Projected gross exposure / equity."""
    max_symbol_concentration_pct: Decimal | None = None
    max_sector_concentration_pct: Decimal | None = None
    max_adv_participation_pct: Decimal | None = None

    def __post_init__(self) -> None:
        if self.rate_window_ns <= 0:
            raise ValueError(f"rate_window_ns must be positive, not {self.rate_window_ns}")
        if self.duplicate_window_ns is not None and self.duplicate_window_ns < 0:
            raise ValueError(f"duplicate_window_ns must not be negative, not {self.duplicate_window_ns}")

    def tighten(self, other: Limits) -> Limits:
        """The most restrictive of self and other, field by field.

        None loses to any value; caps take the smaller value, the duplicate window the
        longer one. ``rate_window_ns`` is kept from self unless other's differs from the
        default (the rate caps are counted in whichever window wins, so a level that sets
        its own window should set its caps with it).
        """
        merged: dict[str, Any] = {}
        for field in fields(self):
            mine, theirs = getattr(self, field.name), getattr(other, field.name)
            if field.name == "rate_window_ns":
                merged[field.name] = theirs if theirs != DEFAULT_RATE_WINDOW_NS else mine
            elif mine is None or theirs is None:
                merged[field.name] = theirs if mine is None else mine
            elif field.name in _LONGER_IS_STRICTER:
                merged[field.name] = max(mine, theirs)
            else:
                merged[field.name] = min(mine, theirs)
        return replace(self, **merged)


@dataclass(frozen=True)
class Asset:
    """What the venue says about a symbol, as far as the pre-trade checks need it."""

    symbol: str
    shortable: bool = False
    easy_to_borrow: bool = False
    borrow_rate_pct: Decimal = ZERO
    """Annual borrow fee, recorded in the approval of an order that opens or adds to a short."""
    fractionable: bool = False
    lot_size: Decimal = Decimal(1)
    """The quantity must be a whole multiple of it (fractionable assets need a fractional one)."""
    min_qty: Decimal = ZERO
    sector: str | None = None
    adv: Decimal | None = None
    """Average daily volume in shares; None = unknown (the participation check is skipped)."""

    def __post_init__(self) -> None:
        if not self.lot_size.is_finite() or self.lot_size <= 0:
            raise ValueError(f"{self.symbol}: lot_size must be positive, not {self.lot_size}")
        if not self.min_qty.is_finite() or self.min_qty < 0:
            raise ValueError(f"{self.symbol}: min_qty must not be negative, not {self.min_qty}")


class WorkingOrder(msgspec.Struct, frozen=True, kw_only=True):
    """One of our orders the venue may still fill.

    A frozen ``msgspec.Struct``, not a dataclass: risk builds one per approval and per
    partial fill on the order path, and a frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field) cost about 2 µs of the check against 0.3 µs here.
    Replace fields with ``msgspec.structs.replace``.
    """

    client_order_id: str
    strategy: str
    symbol: str
    side: Side
    remaining_qty: Decimal
    limit_price: Decimal | None
    """None = market."""
    reference_price: Decimal
    """The price its notional is counted at."""


@dataclass(frozen=True)
class AccountView:
    """The account as the caller sees it when the intent arrives."""

    equity: Decimal
    """Cash + sum(qty × mark)."""
    buying_power: Decimal
    """Already computed for the account type (cash: settled cash; margin: a multiple of equity)."""
    positions: Mapping[str, Decimal]
    """Signed quantities (short < 0)."""
    marks: Mapping[str, Decimal]
    """Price per symbol for exposure (the caller uses the mid); the intent's symbol falls
    back to the reference price."""


@dataclass(frozen=True)
class Rejection:
    code: str
    """One of :data:`REASON_CODES`."""
    detail: str
    """A sentence with the numbers, for people."""
    inputs: dict[str, str]
    """The figures compared (and those computed before), as ``Decimal`` strings."""


@dataclass(frozen=True)
class Approval:
    inputs: dict[str, str]
    """What the checks looked at, stringified: always ``qty``, ``reference_price`` and
    ``notional``; ``short_qty`` and ``borrow_rate_pct`` when the order opens or adds to a short."""


def reduces_exposure(intent: OrderIntent, position: Decimal, working: Collection[WorkingOrder]) -> bool:
    """True when the order only shrinks the symbol's position.

    Its side is opposite to the position and its qty is at most |position| minus the qty
    of the working orders already reducing it (those on the same side as the order, in
    the same symbol): if they all fill first, this order still cannot cross zero. Used
    for the ``REDUCING`` trading state, and to exempt such orders from the buying-power,
    position, exposure, leverage and concentration limits.
    """
    if position == 0 or intent.side.sign * position > 0 or not intent.qty.is_finite() or intent.qty <= 0:
        return False
    return intent.qty <= abs(position) - _same_side(intent.symbol, intent.side, working)


def _same_side(symbol: str, side: Side, working: Collection[WorkingOrder]) -> Decimal:
    """Remaining quantity of the working orders in ``symbol`` on ``side`` (no generator when there are none)."""
    if not working:
        return ZERO
    return sum((w.remaining_qty for w in working if w.symbol == symbol and w.side is side), ZERO)


def _reduces(intent: OrderIntent, position: Decimal, same_side: Decimal) -> bool:
    """:func:`reduces_exposure` with the same-side working quantity already summed (``_book_checks`` has it)."""
    qty = intent.qty
    if position == 0 or intent.side.sign * position > 0 or not qty.is_finite() or qty <= 0:
        return False
    return qty <= abs(position) - same_side


def _opening_notional(working: Collection[WorkingOrder], positions: Mapping[str, Decimal]) -> Decimal:
    """Notional of the working orders that increase exposure (each needs buying power).

    The rule of :func:`reduces_exposure`, applied to the orders in sequence: an order on
    the side opposite its symbol's position reduces while it fits, together with the
    earlier orders on that side, within |position|; every other order increases.
    """
    used: dict[tuple[str, Side], Decimal] = {}
    total = ZERO
    for order in working:
        position = positions.get(order.symbol, ZERO)
        key = (order.symbol, order.side)
        used[key] = used.get(key, ZERO) + order.remaining_qty
        if position == 0 or order.side.sign * position > 0 or used[key] > abs(position):
            total += order.remaining_qty * order.reference_price
    return total


class _Edges(NamedTuple):
    """A symbol's signed notional with all its working buys filled (high) or all its sells (low).

    A tuple, not a frozen dataclass: one is built per other symbol on every check that needs
    the book's exposure, and the dataclass's ``__init__`` was most of the cost of a wide book.
    """

    symbol: str
    high: Decimal
    low: Decimal
    worst: Decimal
    """max(|high|, |low|): the symbol's contribution to gross exposure."""


def _other_edges(
    symbol: str, account: AccountView, working: Collection[WorkingOrder]
) -> tuple[list[_Edges], list[str]]:
    """Worst-case notionals of every symbol but ``symbol``, and those that have no mark."""
    buys: dict[str, Decimal] = {}
    sells: dict[str, Decimal] = {}
    for order in working:
        book = buys if order.side is Side.BUY else sells
        book[order.symbol] = book.get(order.symbol, ZERO) + order.remaining_qty
    edges: list[_Edges] = []
    missing: list[str] = []
    positions, marks = account.positions, account.marks
    for other in sorted({*positions, *buys, *sells} - {symbol}):
        position = positions.get(other, ZERO)
        high, low = position + buys.get(other, ZERO), position - sells.get(other, ZERO)
        if high == 0 and low == 0:
            continue
        mark = marks.get(other)
        if mark is None:
            missing.append(other)
        else:
            high, low = high * mark, low * mark
            edges.append(_Edges(other, high, low, max(abs(high), abs(low))))
    return edges, missing


def _unmarked(code: str, symbols: list[str], inputs: dict[str, str]) -> Rejection:
    """The figure includes symbols without a mark: unknowable, so refused (fail closed)."""
    return Rejection(
        code,
        f"no mark for {', '.join(symbols)}: exposure cannot be computed, so only orders that reduce a position "
        "are allowed",
        {**inputs, "missing_marks": ",".join(symbols)},
    )


def _lot_inputs(asset: Asset, inputs: dict[str, str]) -> dict[str, str]:
    """A lot-size rejection's inputs (built only when refusing: most orders pass)."""
    return {**inputs, "min_qty": str(asset.min_qty), "lot_size": str(asset.lot_size)}


def _price(limit: Decimal | None) -> str:
    """A limit price for people: the number, or ``market``."""
    return "market" if limit is None else str(limit)


def _pct(numerator: Decimal, denominator: Decimal) -> str:
    """numerator / denominator in percent, rounded for a detail sentence (never compared)."""
    return f"{numerator * HUNDRED / denominator:.4f}"


class PreTradeChecker:
    """Holds the rolling state the stateful checks need, and runs the checks.

    The state is the recent approvals (duplicates; order rate, per strategy) and the
    recent cancels. It is bounded: entries older than the longest window seen (in the
    ``horizon_ns`` given here, or in any ``Limits`` passed since) are pruned on every
    call. An entry counts in a window while ``now_ns - recorded_ns < window``. Times must
    not go backwards (the engine clock's never do): recording an earlier time than the
    last is refused with ``ValueError``.
    """

    def __init__(self, horizon_ns: int = DEFAULT_RATE_WINDOW_NS) -> None:
        self._horizon_ns = horizon_ns
        self._latest_ns: int | None = None
        self._approvals: deque[tuple[int, str, _DupKey]] = deque()
        """(approved at, strategy, duplicate key), oldest first: the log pruning walks."""
        self._by_strategy: dict[str, deque[int]] = {}
        self._last_approved: dict[_DupKey, int] = {}
        self._last_key: dict[tuple[str, str], _DupKey] = {}
        """(strategy, symbol) → the duplicate key of its last approved order."""
        self._cancels: deque[int] = deque()

    # ------------------------------------------------------------ rolling state

    def retained(self) -> dict[str, int]:
        """How much rolling state is held (for stats, and to show it stays bounded)."""
        return {
            "approvals": len(self._approvals),
            "strategies": len(self._by_strategy),
            "duplicate_keys": len(self._last_approved),
            "streams": len(self._last_key),
            "cancels": len(self._cancels),
        }

    def record_approved(self, intent: OrderIntent, now_ns: int) -> None:
        """Count an approval the caller acted on (duplicates, order rate)."""
        self._advance(now_ns)
        key = self._duplicate_key(intent)
        self._approvals.append((now_ns, intent.strategy, key))
        self._by_strategy.setdefault(intent.strategy, deque()).append(now_ns)
        # A duplicate repeats the strategy's *previous* order in the symbol: a different
        # order approved in between (buy, sell, buy of a strategy that flips) is not one.
        stream = (intent.strategy, intent.symbol)
        previous = self._last_key.get(stream)
        if previous is not None and previous != key:
            self._last_approved.pop(previous, None)
        self._last_key[stream] = key
        self._last_approved[key] = now_ns
        self._prune(now_ns)

    def record_cancel(self, now_ns: int) -> None:
        """Count a cancel the caller sent."""
        self._advance(now_ns)
        self._cancels.append(now_ns)
        self._prune(now_ns)

    def check_cancel(self, now_ns: int, limits: Limits) -> Rejection | None:
        """``CANCEL_RATE`` when the cancels in the rate window reached the cap, else None."""
        self._widen(limits)
        self._prune(now_ns)
        cap = limits.max_cancels_per_window
        if cap is None:
            return None
        recent = sum(1 for ts in self._cancels if now_ns - ts < limits.rate_window_ns)
        if recent < cap:
            return None
        inputs = {"cancels_in_window": str(recent), "max_cancels_per_window": str(cap),
                  "rate_window_ns": str(limits.rate_window_ns)}
        return Rejection(
            CANCEL_RATE, f"{recent} cancels in the last {limits.rate_window_ns} ns reached the cap of {cap}", inputs
        )

    @staticmethod
    def _duplicate_key(intent: OrderIntent) -> _DupKey:
        return (intent.strategy, intent.symbol, intent.side, intent.qty, intent.limit_price)

    def _advance(self, now_ns: int) -> None:
        if self._latest_ns is not None and now_ns < self._latest_ns:
            raise ValueError(f"time went backwards: {now_ns} < {self._latest_ns}")
        self._latest_ns = now_ns

    def _widen(self, limits: Limits) -> None:
        self._horizon_ns = max(self._horizon_ns, limits.rate_window_ns, limits.duplicate_window_ns or 0)

    def _prune(self, now_ns: int) -> None:
        cutoff = now_ns - self._horizon_ns
        approvals = self._approvals
        while approvals and approvals[0][0] <= cutoff:
            ts, strategy, key = approvals.popleft()
            times = self._by_strategy[strategy]
            times.popleft()
            if not times:
                del self._by_strategy[strategy]
            if self._last_approved.get(key) == ts:
                del self._last_approved[key]
                stream = (key[0], key[1])
                if self._last_key.get(stream) == key:
                    del self._last_key[stream]
        cancels = self._cancels
        while cancels and cancels[0] <= cutoff:
            cancels.popleft()

    # ------------------------------------------------------------ the checks

    def check(
        self,
        intent: OrderIntent,
        reference_price: Decimal,
        now_ns: int,
        limits: Limits,
        asset: Asset,
        account: AccountView,
        working: Collection[WorkingOrder],
        *,
        sectors: Mapping[str, str] = NO_SECTORS,
    ) -> Rejection | Approval:
        """The first failing rule (module docstring), or an approval with what was looked at.

        ``working`` is every working order of the account; ``sectors`` maps other symbols
        to their sectors (the intent's own comes from ``asset``). Approving records
        nothing: call :meth:`record_approved` for an approval that is acted on.
        """
        if intent.symbol != asset.symbol:
            raise ValueError(f"intent for {intent.symbol} checked against the asset {asset.symbol}")
        self._widen(limits)
        self._prune(now_ns)
        qty, reference = intent.qty, reference_price
        inputs = {"qty": str(qty), "reference_price": str(reference)}

        rejection = self._static_checks(intent, reference, limits, asset, inputs)
        if rejection is None:
            rejection = self._flow_checks(intent, now_ns, limits, working, inputs)
        if rejection is None:
            rejection = self._book_checks(intent, reference, limits, asset, account, working, sectors, inputs)
        return rejection if rejection is not None else Approval(inputs)

    def _static_checks(
        self, intent: OrderIntent, reference: Decimal, limits: Limits, asset: Asset, inputs: dict[str, str]
    ) -> Rejection | None:
        """What the order alone, the asset and the reference price decide."""
        qty = intent.qty
        if not qty.is_finite() or qty <= 0:
            return Rejection(INVALID_QTY, f"quantity {qty} is not a positive number", inputs)
        if not asset.fractionable and qty != qty.to_integral_value():
            return Rejection(
                FRACTIONAL_NOT_ALLOWED, f"quantity {qty} is fractional and {asset.symbol} is not fractionable", inputs
            )
        if qty < asset.min_qty:
            return Rejection(
                LOT_SIZE, f"quantity {qty} is below the minimum {asset.min_qty}", _lot_inputs(asset, inputs)
            )
        try:
            off_lot = qty % asset.lot_size != 0
        except InvalidOperation:  # the quotient has more digits than the context holds
            off_lot = True
        if off_lot:
            return Rejection(LOT_SIZE, f"quantity {qty} is not a whole multiple of the lot size {asset.lot_size}",
                             _lot_inputs(asset, inputs))
        if intent.order_type not in (OrderType.MARKET, OrderType.LIMIT):
            return Rejection(
                UNSUPPORTED_ORDER_TYPE, f"{intent.order_type.value} orders are not checked (market and limit only)",
                {**inputs, "order_type": intent.order_type.value},
            )
        limit = intent.limit_price
        if limit is not None:
            inputs["limit_price"] = str(limit)
        if not reference.is_finite() or reference <= 0:
            return Rejection(INVALID_PRICE, f"reference price {reference} is not a positive price", inputs)
        if intent.order_type is OrderType.MARKET and limit is not None:
            return Rejection(INVALID_PRICE, f"a market order carries a limit price ({limit})", inputs)
        if intent.order_type is OrderType.LIMIT and (limit is None or not limit.is_finite() or limit <= 0):
            return Rejection(INVALID_PRICE, f"limit price {limit} is not a positive price", inputs)

        notional = qty * reference
        inputs["notional"] = str(notional)
        if limits.max_order_qty is not None and qty > limits.max_order_qty:
            return Rejection(
                MAX_ORDER_QTY, f"quantity {qty} is above the cap of {limits.max_order_qty}",
                {**inputs, "max_order_qty": str(limits.max_order_qty)},
            )
        if limits.max_order_notional is not None and notional > limits.max_order_notional:
            return Rejection(
                MAX_ORDER_NOTIONAL,
                f"notional {notional} ({qty} × {reference}) is above the cap of {limits.max_order_notional}",
                {**inputs, "max_order_notional": str(limits.max_order_notional)},
            )
        if limits.collar_pct is not None and limit is not None:
            deviation = abs(limit - reference)
            if deviation * HUNDRED > limits.collar_pct * reference:
                return Rejection(
                    PRICE_COLLAR,
                    f"limit price {limit} is {_pct(deviation, reference)}% from the reference {reference}, "
                    f"outside the ±{limits.collar_pct}% collar",
                    {**inputs, "deviation": str(deviation), "collar_pct": str(limits.collar_pct)},
                )
        if limits.max_adv_participation_pct is not None and asset.adv is not None:
            cap = limits.max_adv_participation_pct
            if qty * HUNDRED > cap * asset.adv:
                share = _pct(qty, asset.adv) if asset.adv > 0 else "unbounded"
                return Rejection(
                    ADV_PARTICIPATION,
                    f"quantity {qty} is {share}% of the average daily volume {asset.adv}, above {cap}%",
                    {**inputs, "adv": str(asset.adv), "max_adv_participation_pct": str(cap)},
                )
        return None

    def _flow_checks(
        self, intent: OrderIntent, now_ns: int, limits: Limits, working: Collection[WorkingOrder],
        inputs: dict[str, str],
    ) -> Rejection | None:
        """What the recent approvals and the working orders decide: duplicates, rates, crossing ourselves."""
        window = limits.duplicate_window_ns
        if window is not None:
            last = self._last_approved.get(self._duplicate_key(intent))
            if last is not None and now_ns - last < window:
                return Rejection(
                    DUPLICATE_ORDER,
                    f"the same order ({intent.side.value} {intent.qty} {intent.symbol} at "
                    f"{_price(intent.limit_price)}) was approved {now_ns - last} ns ago, "
                    f"within the {window} ns duplicate window",
                    {**inputs, "last_approved_ns": str(last), "now_ns": str(now_ns),
                     "duplicate_window_ns": str(window)},
                )
        cap = limits.max_orders_per_window
        if cap is not None:
            span = limits.rate_window_ns
            recent = sum(1 for ts in self._by_strategy.get(intent.strategy, ()) if now_ns - ts < span)
            if recent >= cap:
                return Rejection(
                    ORDER_RATE,
                    f"strategy {intent.strategy} had {recent} orders approved in the last {span} ns, "
                    f"the cap is {cap}",
                    {**inputs, "orders_in_window": str(recent), "max_orders_per_window": str(cap),
                     "rate_window_ns": str(span)},
                )
        if limits.max_open_orders is not None and len(working) >= limits.max_open_orders:
            return Rejection(
                MAX_OPEN_ORDERS,
                f"{len(working)} orders are working, the cap is {limits.max_open_orders}",
                {**inputs, "open_orders": str(len(working)), "max_open_orders": str(limits.max_open_orders)},
            )
        limit = intent.limit_price
        for order in working:
            if order.symbol != intent.symbol or order.side is intent.side:
                continue
            if limit is None or order.limit_price is None:
                crosses = True
            elif intent.side is Side.BUY:
                crosses = order.limit_price <= limit
            else:
                crosses = order.limit_price >= limit
            if crosses:
                return Rejection(
                    SELF_TRADE,
                    f"{intent.side.value} {intent.symbol} at {_price(limit)} could trade against our working "
                    f"{order.side.value} {order.client_order_id} at {_price(order.limit_price)}",
                    {**inputs, "working_order": order.client_order_id,
                     "working_limit_price": _price(order.limit_price)},
                )
        return None

    def _book_checks(
        self,
        intent: OrderIntent,
        reference: Decimal,
        limits: Limits,
        asset: Asset,
        account: AccountView,
        working: Collection[WorkingOrder],
        sectors: Mapping[str, str],
        inputs: dict[str, str],
    ) -> Rejection | None:
        """What the account decides: shorting, buying power, position, exposure, concentration."""
        symbol, qty, sign = intent.symbol, intent.qty, intent.side.sign
        position = account.positions.get(symbol, ZERO)
        same_side = _same_side(symbol, intent.side, working)
        inputs["position"] = str(position)
        inputs["working_same_side_qty"] = str(same_side)

        if intent.side is Side.SELL:
            short_qty = max(qty - max(position - same_side, ZERO), ZERO)
            if short_qty > 0:
                inputs.update(short_qty=str(short_qty), borrow_rate_pct=str(asset.borrow_rate_pct))
                why = (
                    f"{symbol} is not shortable" if not asset.shortable
                    else f"{symbol} is hard to borrow and needs a locate we do not have"
                    if not asset.easy_to_borrow else ""
                )
                if why:
                    return Rejection(
                        SHORT_NOT_LOCATED,
                        f"selling {qty} opens or adds a short of {short_qty}: {why}",
                        {**inputs, "shortable": str(asset.shortable).lower(),
                         "easy_to_borrow": str(asset.easy_to_borrow).lower()},
                    )

        reducing = _reduces(intent, position, same_side)  # reduces_exposure, without summing again
        inputs["reduces_exposure"] = "true" if reducing else "false"
        if reducing:
            return None  # buying power and every exposure limit let a reducing order through

        working_notional = _opening_notional(working, account.positions)
        required = qty * reference + working_notional
        inputs["buying_power_required"] = str(required)
        inputs["buying_power"] = str(account.buying_power)
        if required > account.buying_power:
            return Rejection(
                BUYING_POWER,
                f"this order ({qty * reference}) and the working orders that add exposure ({working_notional}) "
                f"need {required}, more than the buying power {account.buying_power}",
                {**inputs, "working_opening_notional": str(working_notional)},
            )

        mark = account.marks.get(symbol, reference)
        before = position + sign * same_side
        after = before + sign * qty
        grows = abs(after) > abs(before)
        inputs["mark"] = str(mark)
        inputs["projected_position"] = str(after)
        rejection = self._position_checks(symbol, limits, before, after, mark, grows, inputs)
        if rejection is not None:
            return rejection
        return self._exposure_checks(intent, limits, asset, account, working, sectors, before, after, mark, inputs)

    @staticmethod
    def _position_checks(
        symbol: str, limits: Limits, before: Decimal, after: Decimal, mark: Decimal, grows: bool,
        inputs: dict[str, str],
    ) -> Rejection | None:
        if not grows:
            return None
        cap = limits.max_position_qty
        if cap is not None and abs(after) > cap:
            return Rejection(
                MAX_POSITION,
                f"projected {symbol} position {after} (from {before} with working orders) exceeds the cap of {cap}",
                {**inputs, "max_position_qty": str(cap)},
            )
        cap = limits.max_position_notional
        notional = abs(after) * mark
        if cap is not None and notional > cap:
            return Rejection(
                MAX_POSITION,
                f"projected {symbol} position notional {notional} ({after} × {mark}) exceeds the cap of {cap}",
                {**inputs, "projected_position_notional": str(notional), "max_position_notional": str(cap)},
            )
        return None

    @staticmethod
    def _exposure_checks(
        intent: OrderIntent,
        limits: Limits,
        asset: Asset,
        account: AccountView,
        working: Collection[WorkingOrder],
        sectors: Mapping[str, str],
        before: Decimal,
        after: Decimal,
        mark: Decimal,
        inputs: dict[str, str],
    ) -> Rejection | None:
        """Gross, net, leverage and concentration, projected over every symbol (module docstring)."""
        sector = asset.sector
        needs_others = (
            limits.max_gross_exposure is not None
            or limits.max_net_exposure is not None
            or limits.max_leverage is not None
            or (limits.max_sector_concentration_pct is not None and sector is not None)
        )
        if not needs_others and limits.max_symbol_concentration_pct is None:
            return None
        equity = account.equity
        inputs["equity"] = str(equity)
        mine_before, mine_after = before * mark, after * mark
        edges, missing = _other_edges(intent.symbol, account, working) if needs_others else ([], [])

        unmarked_peers: list[str] = []
        if missing:  # rare: every symbol with a position or working orders is normally quoted
            unmarked_peers = [s for s in missing if sector is not None and sectors.get(s) == sector]
            for code, cap in (
                (GROSS_EXPOSURE, limits.max_gross_exposure),
                (NET_EXPOSURE, limits.max_net_exposure),
                (LEVERAGE, limits.max_leverage),
            ):
                if cap is not None:
                    return _unmarked(code, missing, inputs)

        gross_others = sum((e.worst for e in edges), ZERO) if edges else ZERO
        gross_before, gross_after = gross_others + abs(mine_before), gross_others + abs(mine_after)
        if needs_others:
            inputs["gross_exposure"] = str(gross_after)
            inputs["gross_exposure_before"] = str(gross_before)
        cap = limits.max_gross_exposure
        if cap is not None and gross_after > gross_before and gross_after > cap:
            return Rejection(
                GROSS_EXPOSURE,
                f"projected gross exposure {gross_after} (from {gross_before}) exceeds the cap of {cap}",
                {**inputs, "max_gross_exposure": str(cap)},
            )

        cap = limits.max_net_exposure
        if cap is not None:
            high, low = sum((e.high for e in edges), ZERO), sum((e.low for e in edges), ZERO)
            net_before = max(abs(high + mine_before), abs(low + mine_before))
            net_after = max(abs(high + mine_after), abs(low + mine_after))
            inputs.update(net_exposure=str(net_after), net_exposure_before=str(net_before))
            if net_after > net_before and net_after > cap:
                return Rejection(
                    NET_EXPOSURE, f"projected net exposure {net_after} (from {net_before}) exceeds the cap of {cap}",
                    {**inputs, "max_net_exposure": str(cap)},
                )

        cap = limits.max_leverage
        if cap is not None and gross_after > gross_before:
            if equity <= 0:
                return Rejection(
                    LEVERAGE,
                    f"equity is {equity}: leverage is unbounded, so no order may add exposure "
                    f"(gross {gross_before} → {gross_after})",
                    {**inputs, "max_leverage": str(cap)},
                )
            if gross_after > cap * equity:
                return Rejection(
                    LEVERAGE,
                    f"projected leverage {gross_after / equity:.4f} (gross {gross_after} / equity {equity}) "
                    f"exceeds the cap of {cap}",
                    {**inputs, "max_leverage": str(cap)},
                )

        for code, cap, figure_before, figure_after, what in PreTradeChecker._concentrations(
            intent.symbol, limits, sector, sectors, edges, mine_before, mine_after
        ):
            if code == SECTOR_CONCENTRATION and unmarked_peers:
                return _unmarked(code, unmarked_peers, inputs)
            inputs[f"{what}_notional"] = str(figure_after)
            if figure_after <= figure_before:
                continue
            if equity <= 0:
                return Rejection(
                    code,
                    f"equity is {equity}: {what} concentration is unbounded, so no order may add to it "
                    f"({figure_before} → {figure_after})",
                    {**inputs, f"max_{what}_concentration_pct": str(cap)},
                )
            if figure_after * HUNDRED > cap * equity:
                return Rejection(
                    code,
                    f"projected {what} notional {figure_after} is {_pct(figure_after, equity)}% of equity {equity}, "
                    f"above the cap of {cap}%",
                    {**inputs, f"max_{what}_concentration_pct": str(cap)},
                )
        return None

    @staticmethod
    def _concentrations(
        symbol: str,
        limits: Limits,
        sector: str | None,
        sectors: Mapping[str, str],
        edges: list[_Edges],
        mine_before: Decimal,
        mine_after: Decimal,
    ) -> list[tuple[str, Decimal, Decimal, Decimal, str]]:
        """(code, cap, figure before, figure after, name) for each concentration limit that applies.

        A sector's figure is the sum of its symbols' worst-case absolute notionals: a long
        and a short in one sector both concentrate the book in it.
        """
        found: list[tuple[str, Decimal, Decimal, Decimal, str]] = []
        if limits.max_symbol_concentration_pct is not None:
            found.append(
                (SYMBOL_CONCENTRATION, limits.max_symbol_concentration_pct, abs(mine_before), abs(mine_after), "symbol")
            )
        if limits.max_sector_concentration_pct is not None and sector is not None:
            peers = sum((e.worst for e in edges if e.symbol != symbol and sectors.get(e.symbol) == sector), ZERO)
            found.append(
                (SECTOR_CONCENTRATION, limits.max_sector_concentration_pct, peers + abs(mine_before),
                 peers + abs(mine_after), "sector")
            )
        return found
