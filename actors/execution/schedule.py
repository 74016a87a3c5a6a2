"""The engine under TWAP and VWAP: work a quantity along a schedule of cumulative targets.

A schedule is a list of ``(time_ns, target)`` steps: by ``time_ns`` the algorithm wants
``target`` executed in total (targets are cumulative and end at the whole quantity). TWAP
and VWAP differ only in how they build the steps (:mod:`actors.execution.twap`,
:mod:`actors.execution.vwap`).

At each step the algorithm cancels whatever child is still working, waits for the
cancel's confirmation (or the fill that beats it), then sends **one** child for
``target - executed``. So:

- an under-filled step is caught up by the next one (targets are cumulative);
- at most one child works at any time, and it is never larger than what is left
  (``total - executed``): filled + in flight never exceeds the total, whatever the venue
  does. "Executed" is the larger of the fills booked and the venue's reported cumulative
  quantity (:attr:`Child.settled`), so a fill still on its way is not sent twice;
- a child refused by risk is not retried at once (a refusal is usually not transient and
  retrying in the same instant would loop): its quantity is caught up at the next step;
- at ``end_ns`` the working child is cancelled, and once it is confirmed the algorithm is
  done and reports the unfilled remainder. It is done earlier when everything is executed.

Children are lot multiples, except the last step's, which takes the exact remainder.
Market children by default; with ``limit_offset`` each child is a limit priced off the
latest quote: a buy at ``ask + limit_offset``, a sell at ``bid - limit_offset`` (an offset
≥ 0 crosses with a bounded price; a negative one rests inside or behind the spread). A
limit child waits for a first quote.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from decimal import Decimal

from actors.execution.common import ExecutionAlgo, MakeIntentId, floor_to, passive_price
from engine.messages import OrderType, Side, TimeInForce


class ScheduledExecution(ExecutionAlgo):
    """Works ``total_qty`` along ``steps`` (see the module docstring); stops at ``end_ns``."""

    def __init__(
        self,
        symbol: str,
        side: Side,
        total_qty: Decimal,
        steps: Sequence[tuple[int, Decimal]],
        end_ns: int,
        *,
        lot: Decimal,
        strategy: str,
        make_intent_id: MakeIntentId,
        limit_offset: Decimal | None = None,
        tick: Decimal = Decimal("0.01"),
        time_in_force: TimeInForce = TimeInForce.DAY,
        cancel_retry_s: float = 5.0,
    ) -> None:
        super().__init__(symbol=symbol, strategy=strategy, make_intent_id=make_intent_id, cancel_retry_s=cancel_retry_s)
        if total_qty <= 0:
            raise ValueError("total_qty must be positive")
        if lot <= 0 or tick <= 0:
            raise ValueError("lot and tick must be positive")
        if not steps:
            raise ValueError("a schedule needs at least one step")
        times = [t for t, _ in steps]
        targets = [q for _, q in steps]
        if times != sorted(times) or targets != sorted(targets) or targets[0] < 0:
            raise ValueError("step times and targets must be non-decreasing")
        if targets[-1] != total_qty:
            raise ValueError("the last step's target must be the total quantity")
        if end_ns <= times[-1]:
            raise ValueError("end_ns must come after the last step")
        self.side = side
        self.total_qty = total_qty
        self.steps: tuple[tuple[int, Decimal], ...] = tuple(steps)
        self.end_ns = end_ns
        self.lot = lot
        self.tick = tick
        self.limit_offset = limit_offset
        self.time_in_force = time_in_force
        self._times = times
        self._boundary = -1
        """Index of the last step whose time has been reached."""
        self._pending: int | None = None
        """Step whose child is still to be sent (waiting for a cancel to confirm, or a quote)."""
        self._stopping = False

    @property
    def unfilled_qty(self) -> Decimal:
        """What is neither filled nor reported executed (the remainder reported at the end)."""
        return self.total_qty - self.children.settled()

    def _step(self, now_ns: int) -> None:
        settled = self.children.settled()
        if not self._stopping and (now_ns >= self.end_ns or settled >= self.total_qty):
            self._stopping = True
        if self._stopping:
            working = self.children.working()
            for child in working:
                self._cancel(child, now_ns)
            if working:
                self.reason = f"stopping: waiting for {len(working)} cancel confirmation(s)"
            else:
                self._finish(self._summary())
            return
        index = bisect.bisect_right(self._times, now_ns) - 1
        if index > self._boundary:
            # A new step: whatever still works was sized for an older one; replace it.
            self._boundary = index
            self._pending = index
            for child in self.children.working():
                self._cancel(child, now_ns)
        if self._pending is None:
            self.reason = "waiting for the next step" if index >= 0 else "waiting for the start"
            return
        if self.children.working():
            self.reason = "waiting for the previous child's cancel confirmation"
            return
        qty = self._child_qty(self._pending, settled)
        if qty <= 0:
            self._pending = None
            self.reason = "ahead of schedule"
            return
        price: Decimal | None = None
        if self.limit_offset is not None:
            if self.bbo is None:
                self.reason = "waiting for a quote to price a limit child"
                return
            bbo, offset = self.bbo, self.limit_offset
            touch = bbo.ask_price + offset if self.side is Side.BUY else bbo.bid_price - offset
            price = passive_price(self.side, touch, self.tick)
            if price <= 0:
                self.reason = "no positive limit price from the quote"
                return
        self._send(
            now_ns,
            self.side,
            qty,
            OrderType.MARKET if price is None else OrderType.LIMIT,
            price,
            self.time_in_force,
            role=f"step-{self._pending}",
        )
        self._pending = None
        self.reason = "child working"

    def _child_qty(self, step: int, settled: Decimal) -> Decimal:
        left = self.total_qty - settled
        if step == len(self.steps) - 1:
            return left
        return min(floor_to(self.steps[step][1] - settled, self.lot), left)

    def _timer_wish(self, now_ns: int) -> int | None:
        if self._stopping:
            return None
        nxt = self._boundary + 1
        return self._times[nxt] if nxt < len(self._times) else self.end_ns

    def _summary(self) -> str:
        settled = self.children.settled()
        if settled >= self.total_qty:
            return f"filled {settled} of {self.total_qty}"
        return f"window ended: executed {settled} of {self.total_qty}, {self.total_qty - settled} unfilled"


def check_window(start_ns: int, end_ns: int) -> None:
    if end_ns <= start_ns:
        raise ValueError("end_ns must be after start_ns")


__all__ = ["ScheduledExecution", "check_window"]
