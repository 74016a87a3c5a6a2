"""What every execution algorithm shares: the result object, child-order bookkeeping, rounding.

An execution algorithm is a pure state machine. It never reads a clock (the caller passes
``now_ns``, the engine clock's time), never touches the bus and does no I/O, so the same
code runs in replay, in tests with a synthetic clock, and live. Each hook returns an
:class:`Actions`: the intents to send (normal :class:`~engine.messages.OrderIntent`s that go
through risk like any other order), the children to cancel, when it wants ``on_timer``
next, and whether it is done.

Cancels name **intent ids**. The algorithm knows a child's intent id the moment it creates
it, while the client order id exists only once the order manager has journaled the order
and is learned from the first :class:`~engine.messages.OrderUpdate` or
:class:`~engine.messages.Fill`; an algorithm must be able to cancel a child that has not
been acknowledged yet. The order manager's book maps every intent id to its client order
id, so it is the place to resolve them: the strategy host sends each cancel as a
:class:`~engine.messages.CancelIntent`, which follows the child's intent through risk to the
order manager (:mod:`actors.strategy_host`).

Levels, not edges: every hook first books what happened (a fill, an update, a quote) and
then calls the algorithm's single ``_step``, which looks at the whole state and decides.
Deciding in one place is what keeps the invariants (one working child, never more in
flight than is left to do) easy to check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from engine.messages import (
    BestBidOffer,
    Fill,
    OrderIntent,
    OrderStatus,
    OrderType,
    OrderUpdate,
    RiskRejected,
    Side,
    TimeInForce,
    TradeTick,
)

ZERO = Decimal(0)
NS_PER_S = 1_000_000_000

MakeIntentId = Callable[[], str]
"""Mints a fresh intent id (e.g. :meth:`actors.strategies.base.Strategy.next_intent_id`)."""


@dataclass(slots=True)
class Actions:
    """What the caller must do after a hook: never ``None``, even when there is nothing to do.

    ``cancels`` are intent ids of children to cancel (see the module docstring for why not
    client order ids). ``next_timer_ns`` is when the algorithm wants :meth:`ExecutionAlgo.on_timer`
    called (``None``: no timer needed); calling it earlier is harmless. ``done`` means the
    algorithm will send no more intents; ``reason`` says why, or what it is waiting for.
    """

    intents: list[OrderIntent] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    next_timer_ns: int | None = None
    done: bool = False
    reason: str = ""


def seconds_to_ns(seconds: float) -> int:
    """Durations are configured in seconds (they are not money); timers are integer ns."""
    return round(seconds * NS_PER_S)


def floor_to(value: Decimal, step: Decimal) -> Decimal:
    """``value`` rounded down to a multiple of ``step`` (lots, ticks)."""
    return (value / step).to_integral_value(rounding=ROUND_FLOOR) * step


def ceil_to(value: Decimal, step: Decimal) -> Decimal:
    """``value`` rounded up to a multiple of ``step``."""
    return (value / step).to_integral_value(rounding=ROUND_CEILING) * step


def passive_price(side: Side, price: Decimal, tick: Decimal) -> Decimal:
    """``price`` on the tick grid, rounded away from the other side (never more aggressive)."""
    return floor_to(price, tick) if side is Side.BUY else ceil_to(price, tick)


def aggressive_price(side: Side, price: Decimal, tick: Decimal) -> Decimal:
    """``price`` on the tick grid, rounded towards the other side (still marketable)."""
    return ceil_to(price, tick) if side is Side.BUY else floor_to(price, tick)


@dataclass(slots=True)
class Child:
    """One order an algorithm sent, as far as the algorithm knows it.

    ``filled`` counts the fills booked here (de-duplicated by execution id). ``reported``
    is the venue's cumulative filled quantity from the latest update: a cancel confirmation
    can say "canceled, 300 filled" before the last fill has reached us. Sizing anything on
    ``filled`` alone would then re-send quantity the venue already executed, so the
    algorithms size on :attr:`settled`, the larger of the two.
    """

    intent: OrderIntent
    role: str = ""
    client_order_id: str | None = None
    status: OrderStatus | None = None
    """The last status heard (``None``: nothing heard yet)."""
    filled: Decimal = ZERO
    reported: Decimal = ZERO
    terminal: bool = False
    reason: str = ""
    """Why it ended, when it ended other than by filling (risk's code, the venue's reason)."""
    cancel_requested_ns: int | None = None
    """When a cancel was last asked for (``None``: never)."""
    execution_ids: set[str] = field(default_factory=set)

    @property
    def intent_id(self) -> str:
        return self.intent.intent_id

    @property
    def qty(self) -> Decimal:
        return self.intent.qty

    @property
    def settled(self) -> Decimal:
        """Executed quantity: the larger of the fills booked and the venue's cumulative report."""
        return max(self.filled, self.reported)

    @property
    def open_qty(self) -> Decimal:
        """Quantity the venue may still fill (0 once terminal)."""
        return ZERO if self.terminal else max(self.qty - self.settled, ZERO)

    @property
    def committed(self) -> Decimal:
        """What this child can amount to in the end: its qty while working, its fills once terminal."""
        return self.settled if self.terminal else self.qty

    @property
    def working(self) -> bool:
        return not self.terminal


class ChildBook:
    """The children of one algorithm, by intent id: books fills, updates and rejections."""

    __slots__ = ("_by_client_id", "_by_intent", "_order")

    def __init__(self) -> None:
        self._by_intent: dict[str, Child] = {}
        self._by_client_id: dict[str, Child] = {}
        self._order: list[Child] = []

    def __iter__(self) -> Iterator[Child]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def add(self, intent: OrderIntent, role: str = "") -> Child:
        child = Child(intent=intent, role=role)
        if intent.intent_id in self._by_intent:
            raise ValueError(f"intent id {intent.intent_id!r} issued twice")
        self._by_intent[intent.intent_id] = child
        self._order.append(child)
        return child

    def get(self, intent_id: str) -> Child | None:
        return self._by_intent.get(intent_id)

    def last(self) -> Child | None:
        return self._order[-1] if self._order else None

    def working(self) -> list[Child]:
        return [c for c in self._order if c.working]

    def filled(self) -> Decimal:
        return sum((c.filled for c in self._order), ZERO)

    def settled(self) -> Decimal:
        return sum((c.settled for c in self._order), ZERO)

    def open_qty(self) -> Decimal:
        return sum((c.open_qty for c in self._order), ZERO)

    def client_order_id(self, intent_id: str) -> str | None:
        child = self._by_intent.get(intent_id)
        return child.client_order_id if child is not None else None

    def _find(self, intent_id: str | None, client_order_id: str) -> Child | None:
        child = self._by_intent.get(intent_id) if intent_id is not None else None
        if child is None:
            child = self._by_client_id.get(client_order_id)
        if child is not None and child.client_order_id is None:
            child.client_order_id = client_order_id
            self._by_client_id[client_order_id] = child
        return child

    def on_fill(self, fill: Fill) -> Child | None:
        """Book a fill of one of ours; ``None`` when it is not ours or already booked."""
        child = self._find(fill.intent_id, fill.client_order_id)
        if child is None or fill.execution_id in child.execution_ids:
            return None
        child.execution_ids.add(fill.execution_id)
        child.filled += fill.qty
        if child.filled >= child.qty and not child.terminal:
            child.terminal = True
            child.status = OrderStatus.FILLED
        return child

    def on_update(self, update: OrderUpdate) -> Child | None:
        """Apply a status report of one of ours; ``None`` when it is not ours."""
        child = self._find(update.intent_id, update.client_order_id)
        if child is None:
            return None
        if child.terminal and not update.status.is_terminal:
            return child  # a late "new" after "filled": the final state stands
        child.status = update.status
        child.reported = max(child.reported, update.filled_qty)
        if update.status.is_terminal:
            child.terminal = True
            if update.status is not OrderStatus.FILLED:
                child.reason = update.reason or update.status.value
        return child

    def on_rejected(self, rejection: RiskRejected) -> Child | None:
        """Risk (or the order manager) refused one of ours: it never reached the venue."""
        child = self._by_intent.get(rejection.intent_id)
        if child is None:
            return None
        child.terminal = True
        child.status = OrderStatus.REJECTED
        child.reason = rejection.reason
        return child


class ExecutionAlgo:
    """Base of the execution algorithms: routes the hooks, keeps the child book and the result.

    Subclasses implement :meth:`_step` (decide, given the whole state) and
    :meth:`_timer_wish` (when they next need :meth:`on_timer`). The base re-sends a cancel
    that has not been confirmed after ``cancel_retry_s``: a cancel lost on the way must not
    leave an algorithm waiting for ever, and cancelling twice is harmless.
    """

    def __init__(
        self,
        *,
        symbol: str,
        strategy: str,
        make_intent_id: MakeIntentId,
        cancel_retry_s: float = 5.0,
    ) -> None:
        if cancel_retry_s <= 0:
            raise ValueError("cancel_retry_s must be positive")
        self.symbol = symbol
        self.strategy = strategy
        self.make_intent_id = make_intent_id
        self.cancel_retry_ns = seconds_to_ns(cancel_retry_s)
        self.children = ChildBook()
        self.bbo: BestBidOffer | None = None
        self.started = False
        self.done = False
        self.reason = ""
        self._out = Actions()
        self._timer: int | None = None

    # ------------------------------------------------------------ hooks

    def start(self, now_ns: int) -> Actions:
        self.started = True
        return self._run(now_ns)

    def on_timer(self, now_ns: int) -> Actions:
        return self._run(now_ns)

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Actions:
        if bbo.symbol != self.symbol:
            return self._idle()
        self.bbo = bbo
        self._on_quote(bbo, now_ns)
        return self._run(now_ns)

    def on_trade(self, trade: TradeTick, now_ns: int) -> Actions:
        if trade.symbol != self.symbol:
            return self._idle()
        self._on_trade(trade, now_ns)
        return self._run(now_ns)

    def on_fill(self, fill: Fill, now_ns: int) -> Actions:
        if self.children.on_fill(fill) is None:
            return self._idle()
        return self._run(now_ns)

    def on_update(self, update: OrderUpdate, now_ns: int) -> Actions:
        if self.children.on_update(update) is None:
            return self._idle()
        return self._run(now_ns)

    def on_rejected(self, rejection: RiskRejected, now_ns: int) -> Actions:
        if self.children.on_rejected(rejection) is None:
            return self._idle()
        return self._run(now_ns)

    def stop(self, now_ns: int, reason: str) -> Actions:
        """Finish now: send nothing more, cancel every child still working.

        The cancels are re-sent every ``cancel_retry_s`` until confirmed (the usual
        :meth:`on_timer` path), so an owner replacing an algorithm with a new one waits for
        ``children.working()`` to empty before it can be sure nothing of the old one fills.
        """
        self._out = out = Actions()
        if not self.done:
            self._finish(reason)
        for child in self.children.working():
            self._cancel(child, now_ns)
        out.next_timer_ns = self._timer = self._next_timer(now_ns)
        out.done = True
        out.reason = self.reason
        return out

    # ------------------------------------------------------------ queries

    @property
    def filled_qty(self) -> Decimal:
        """Fills booked across every child."""
        return self.children.filled()

    def owns(self, intent_id: str) -> bool:
        return self.children.get(intent_id) is not None

    def client_order_id(self, intent_id: str) -> str | None:
        """The client order id of a child, once an update or fill has told it (for ``CancelOrder``)."""
        return self.children.client_order_id(intent_id)

    # ------------------------------------------------------------ for subclasses

    def _on_quote(self, bbo: BestBidOffer, now_ns: int) -> None:
        """A quote of our symbol arrived (already stored in :attr:`bbo`)."""

    def _on_trade(self, trade: TradeTick, now_ns: int) -> None:
        """A trade print of our symbol arrived."""

    def _step(self, now_ns: int) -> None:
        raise NotImplementedError

    def _timer_wish(self, now_ns: int) -> int | None:
        return None

    def _send(
        self,
        now_ns: int,
        side: Side,
        qty: Decimal,
        order_type: OrderType,
        limit_price: Decimal | None = None,
        time_in_force: TimeInForce = TimeInForce.DAY,
        role: str = "",
    ) -> Child:
        intent = OrderIntent(
            intent_id=self.make_intent_id(),
            strategy=self.strategy,
            symbol=self.symbol,
            side=side,
            qty=qty,
            order_type=order_type,
            limit_price=limit_price,
            time_in_force=time_in_force,
            ts_init=now_ns,
        )
        self._out.intents.append(intent)
        return self.children.add(intent, role)

    def _cancel(self, child: Child, now_ns: int) -> None:
        """Ask for ``child`` to be cancelled: once, then again every ``cancel_retry_ns`` until it ends."""
        if child.terminal:
            return
        last = child.cancel_requested_ns
        if last is None or now_ns - last >= self.cancel_retry_ns:
            child.cancel_requested_ns = now_ns
            self._out.cancels.append(child.intent_id)

    def _finish(self, reason: str) -> None:
        self.done = True
        self.reason = reason

    # ------------------------------------------------------------ plumbing

    def _idle(self) -> Actions:
        """Nothing of ours happened: report the standing state without deciding anything."""
        return Actions(next_timer_ns=self._timer, done=self.done, reason=self.reason)

    def _run(self, now_ns: int) -> Actions:
        self._out = out = Actions()
        if self.started and not self.done:
            self._step(now_ns)
        if self.started:
            # Cancels are re-sent while their children work, even after done (a stopping TWAP).
            for child in self.children.working():
                if child.cancel_requested_ns is not None:
                    self._cancel(child, now_ns)
        out.next_timer_ns = self._timer = self._next_timer(now_ns)
        out.done = self.done
        out.reason = self.reason
        return out

    def _next_timer(self, now_ns: int) -> int | None:
        wishes: list[int] = []
        if not self.done and self.started:
            wish = self._timer_wish(now_ns)
            if wish is not None:
                wishes.append(wish)
        for child in self.children.working():
            if child.cancel_requested_ns is not None:
                wishes.append(child.cancel_requested_ns + self.cancel_retry_ns)
        return min(wishes) if wishes else None
