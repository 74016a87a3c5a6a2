"""TWAP: a quantity in equal slices on a fixed clock, from ``start_ns`` to ``end_ns``.

Slice ``i`` of ``n`` starts at ``start_ns + i * (end_ns - start_ns) // n`` and brings the
cumulative target to ``(i + 1) * base`` where ``base`` is ``total_qty / n`` rounded down to
the lot; the last slice takes the remainder (target = ``total_qty``). Equal slices on a
clock are the simplest schedule that spreads market impact evenly over time, and one
nobody can front-run better than any other. Everything about sending, catching up and
stopping is :class:`~actors.execution.schedule.ScheduledExecution`.
"""

from __future__ import annotations

from decimal import Decimal

from actors.execution.common import MakeIntentId, floor_to
from actors.execution.schedule import ScheduledExecution, check_window
from engine.messages import Side, TimeInForce


def twap_steps(total_qty: Decimal, start_ns: int, end_ns: int, slices: int, lot: Decimal) -> list[tuple[int, Decimal]]:
    """The TWAP schedule: ``slices`` equal lot-rounded slices, the remainder on the last one."""
    check_window(start_ns, end_ns)
    if slices < 1:
        raise ValueError("slices must be at least 1")
    if lot <= 0:
        raise ValueError("lot must be positive")
    base = floor_to(total_qty / slices, lot)
    span = end_ns - start_ns
    steps = [(start_ns + i * span // slices, base * (i + 1)) for i in range(slices - 1)]
    steps.append((start_ns + (slices - 1) * span // slices, total_qty))
    return steps


class TWAP(ScheduledExecution):
    """Time-weighted slices of ``total_qty`` between ``start_ns`` and ``end_ns`` (see the module docstring)."""

    def __init__(
        self,
        symbol: str,
        side: Side,
        total_qty: Decimal,
        start_ns: int,
        end_ns: int,
        slices: int,
        *,
        lot: Decimal,
        strategy: str,
        make_intent_id: MakeIntentId,
        limit_offset: Decimal | None = None,
        tick: Decimal = Decimal("0.01"),
        time_in_force: TimeInForce = TimeInForce.DAY,
        cancel_retry_s: float = 5.0,
    ) -> None:
        super().__init__(
            symbol,
            side,
            total_qty,
            twap_steps(total_qty, start_ns, end_ns, slices, lot),
            end_ns,
            lot=lot,
            strategy=strategy,
            make_intent_id=make_intent_id,
            limit_offset=limit_offset,
            tick=tick,
            time_in_force=time_in_force,
            cancel_retry_s=cancel_retry_s,
        )
        self.start_ns = start_ns
        self.slices = slices
