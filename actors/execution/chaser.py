"""A limit-order chaser: rest at the touch, follow it when it leaves, with a hard bound.

The chaser works ``qty`` as one limit order at a time, priced at our side's touch (the
bid for a buy, the ask for a sell, on the tick grid), to earn the spread rather than pay
it. When the touch moves away from our price (a higher bid above our buy, a lower ask
under our sell) or the child's timeout expires, it **re-pegs**: it cancels the child and,
only once the venue has confirmed the cancel (a terminal ``OrderUpdate``) or the child has
filled, sends a new child for what is left at the then-current touch. Waiting for the
confirmation is what rules out double exposure: at no time can two children fill. A
partial fill shrinks the next child.

Adaptive timeout. Child ``k`` (0 for the first, then one per re-peg) gets::

    patience_k = min(base_timeout_s * 2**k, max_timeout_s)
    timeout_k  = max(min_timeout_s, patience_k / (1 + m))

where ``m`` is how many times our side's touch price changed during the last
``base_timeout_s`` before the child was placed. The doubling is an exponential back-off:
every re-peg gives up queue priority and costs a cancel/new pair against the venue's rate
limits, so a chaser that keeps missing waits longer each time rather than churning. The
division by ``1 + m`` is the fast-market rule: when the touch is moving, a resting price
goes stale quickly and its fill becomes more likely to be adverse, so the chaser reacts
sooner; ``min_timeout_s`` (default a quarter of the base) stops it from thrashing.

Hard bound. There are at most ``max_repegs + 1`` children: the first, then ``max_repegs``
replacements. The last child the budget allows is placed either at the touch and left
working (``on_exhausted="leave"``) or as a marketable limit at the far touch
(``on_exhausted="cross"``, the budget's last re-peg pays the spread), and the chaser
reports done right when it places it (it still books that child's fills). Every child
costs one unit of the budget and nothing re-sends without spending one, so the chaser
cannot loop: with timers delivered and cancels confirmed it is done after at most
``max_repegs + 1`` children, within ``Σ_k timeout_k`` (≤ ``max_repegs * max_timeout_s``)
plus the cancels' round trips. It also ends, without re-sending, when a child is refused
(by risk or the venue) or ended by someone else (an operator's halt cancelling working
orders, a DAY order expiring): those are not reasons to chase.
"""

from __future__ import annotations

import enum
from collections import deque
from decimal import Decimal

from actors.execution.common import ExecutionAlgo, MakeIntentId, aggressive_price, passive_price, seconds_to_ns
from engine.messages import BestBidOffer, OrderType, Side, TimeInForce


class OnExhausted(enum.StrEnum):
    """What the chaser's last child (the one the re-peg budget still allows) is."""

    LEAVE = "leave"
    """At the touch like the others, and left working."""
    CROSS = "cross"
    """A marketable limit at the far touch (the ask for a buy): pays the spread to finish."""


class LimitChaser(ExecutionAlgo):
    """Works ``qty`` at the touch with bounded re-pegs (see the module docstring)."""

    def __init__(
        self,
        symbol: str,
        side: Side,
        qty: Decimal,
        *,
        max_repegs: int,
        base_timeout_s: float,
        max_timeout_s: float,
        tick: Decimal,
        strategy: str,
        make_intent_id: MakeIntentId,
        min_timeout_s: float | None = None,
        on_exhausted: OnExhausted = OnExhausted.LEAVE,
        time_in_force: TimeInForce = TimeInForce.DAY,
        cancel_retry_s: float = 5.0,
    ) -> None:
        super().__init__(symbol=symbol, strategy=strategy, make_intent_id=make_intent_id, cancel_retry_s=cancel_retry_s)
        minimum = base_timeout_s / 4 if min_timeout_s is None else min_timeout_s
        if qty <= 0:
            raise ValueError("qty must be positive")
        if max_repegs < 0:
            raise ValueError("max_repegs must not be negative")
        if tick <= 0:
            raise ValueError("tick must be positive")
        if not 0 < minimum <= base_timeout_s <= max_timeout_s:
            raise ValueError("need 0 < min_timeout_s <= base_timeout_s <= max_timeout_s")
        self.side = side
        self.qty = qty
        self.max_repegs = max_repegs
        self.tick = tick
        self.on_exhausted = OnExhausted(on_exhausted)
        self.time_in_force = time_in_force
        self.base_timeout_ns = seconds_to_ns(base_timeout_s)
        self.max_timeout_ns = seconds_to_ns(max_timeout_s)
        self.min_timeout_ns = seconds_to_ns(minimum)
        self._deadline_ns: int | None = None
        self._touch: Decimal | None = None
        self._moves: deque[int] = deque()
        """When our side's touch price changed, within the last ``base_timeout_ns``."""
        self.timeouts_ns: list[int] = []
        """The timeout each child was given (for logs and tests)."""

    @property
    def repegs(self) -> int:
        """Re-pegs so far (children after the first)."""
        return max(len(self.children) - 1, 0)

    @property
    def working_intent_id(self) -> str | None:
        child = self.children.last()
        return child.intent_id if child is not None and child.working else None

    def timeout_ns(self, k: int, now_ns: int) -> int:
        """Child ``k``'s timeout placed at ``now_ns``: the module docstring's rule."""
        self._forget_old_moves(now_ns)
        patience = min(self.base_timeout_ns << k, self.max_timeout_ns)
        return max(self.min_timeout_ns, patience // (1 + len(self._moves)))

    def _forget_old_moves(self, now_ns: int) -> None:
        while self._moves and self._moves[0] < now_ns - self.base_timeout_ns:
            self._moves.popleft()

    def _on_quote(self, bbo: BestBidOffer, now_ns: int) -> None:
        touch = bbo.bid_price if self.side is Side.BUY else bbo.ask_price
        if self._touch is not None and touch != self._touch:
            self._moves.append(now_ns)
        self._touch = touch
        self._forget_old_moves(now_ns)

    def _near(self, bbo: BestBidOffer) -> Decimal:
        return passive_price(self.side, bbo.bid_price if self.side is Side.BUY else bbo.ask_price, self.tick)

    def _moved_away(self, price: Decimal | None) -> bool:
        if self.bbo is None or price is None:
            return False
        near = self._near(self.bbo)
        return near > price if self.side is Side.BUY else near < price

    def _step(self, now_ns: int) -> None:
        settled = self.children.settled()
        remaining = self.qty - settled
        if remaining <= 0:
            self._finish(f"filled {settled} of {self.qty} with {len(self.children)} child(ren)")
            return
        child = self.children.last()
        if child is not None and child.working:
            if child.cancel_requested_ns is not None:
                self.reason = "re-peg: waiting for the cancel confirmation"
                return
            deadline = self._deadline_ns
            if self._moved_away(child.intent.limit_price):
                self._cancel(child, now_ns)
                self.reason = "re-peg: the touch moved away"
            elif deadline is not None and now_ns >= deadline:
                self._cancel(child, now_ns)
                self.reason = "re-peg: timeout"
            else:
                self.reason = "child working"
            return
        if child is not None and child.cancel_requested_ns is None:
            # Ended without our asking and not filled: refused, or cancelled by someone else.
            self._finish(f"child {child.intent_id} ended ({child.reason}); executed {settled} of {self.qty}")
            return
        if self.bbo is None:
            self.reason = "waiting for a quote"
            return
        k = len(self.children)
        final = k >= self.max_repegs
        cross = final and self.on_exhausted is OnExhausted.CROSS
        if cross:
            far = self.bbo.ask_price if self.side is Side.BUY else self.bbo.bid_price
            price = aggressive_price(self.side, far, self.tick)
        else:
            price = self._near(self.bbo)
        if price <= 0:
            self.reason = "waiting for a quote with a positive price"
            return
        child = self._send(now_ns, self.side, remaining, OrderType.LIMIT, price, self.time_in_force, role=f"peg-{k}")
        timeout = self.timeout_ns(k, now_ns)
        self.timeouts_ns.append(timeout)
        self._deadline_ns = now_ns + timeout
        if cross:
            self._finish(f"re-peg budget ({self.max_repegs}) exhausted: crossed the spread at {price} for {remaining}")
        elif final:
            self._finish(f"re-peg budget ({self.max_repegs}) exhausted: {child.intent_id} left working at {price}")
        else:
            self.reason = "child working"

    def _timer_wish(self, now_ns: int) -> int | None:
        child = self.children.last()
        if child is not None and child.working and child.cancel_requested_ns is None:
            return self._deadline_ns
        return None
