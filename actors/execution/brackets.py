"""Brackets: an entry with a stop-loss and a take-profit, the exits one-cancels-other.

Native or emulated. Alpaca has ``order_class=bracket`` (shared/protocols/alpaca.md §1.4:
the exit legs activate once the entry fills completely; cancelling one leg cancels the
rest), but the venue simulator refuses every class other than ``simple``, the adapter
sends only simple orders, and :class:`~engine.messages.OrderIntent` has no field for an
order class or legs. :meth:`Bracket.venue_order_class` reports what the venue could do
(the ``native_brackets`` capability flag, off by default); only the emulation is
implemented, and :meth:`Bracket.start` refuses to run a native bracket rather than
silently emulating one the caller believes the venue holds.

The emulation, for a long (a buy entry; a short mirrors every comparison):

- The entry intent is sent as given. Its fills make the position the exits protect, so
  a partially filled entry is protected for what it filled, and the exits are sized by it.
- The **stop** is virtual: Kestrel never sends stop orders (the venue would hold our risk
  where we cannot see it, and the simulator has none). It fires when the bid is at or
  under the stop, or a trade prints there (:meth:`on_bbo`, :meth:`on_trade`), and sends a
  market order for the open position.
- The **take-profit** rests at the venue as a limit at the take-profit price
  (``take_profit_mode="resting"``, the default: it keeps its place in the queue and fills
  at its price, which a virtual trigger cannot promise), placed once the entry is
  finished (filled, or ended with a partial fill) and sized by what the entry filled. Not
  resting — before the entry finishes, in ``"virtual"`` mode, or after the venue ended
  the resting order (a DAY order expiring) — it is a virtual trigger: when the bid
  reaches the price a limit at that price is sent.
- One cancels the other: when the stop fires, the resting take-profit is cancelled and the
  stop's market order is sent only once the cancel is confirmed (or the take-profit has
  filled in the meantime), so the two can never both sell. When the take-profit has
  filled the whole position the bracket is done and the virtual stop is disarmed; while it
  is only partly filled the stop stays armed for what is left (a falling market must not
  leave a remainder unprotected). The stop outranks the take-profit: a take-profit exit
  still working when the stop fires is cancelled too.
- If an exit fires while the entry is still working, the entry's remainder is cancelled;
  fills it still gets are exited as well.
- Exits are reduce-only by construction: at most one exit order works at any time, sized
  at most the open position (entry fills minus exit executions), so it can never cross
  zero. ``OrderIntent`` has no reduce-only flag; risk recognises such orders as reducing
  (:func:`actors.pretrade.reduces_exposure`), which also lets them through ``REDUCING``.
- Bounded: an exit that ends unfilled (refused by risk, expired) is replaced, at most
  ``max_exit_orders`` times in all; after that the bracket reports done with the open
  position in its reason, for a human to handle.
"""

from __future__ import annotations

import enum
from decimal import Decimal

from actors.execution.common import ZERO, Actions, Child, ExecutionAlgo, MakeIntentId
from engine.messages import BestBidOffer, OrderIntent, OrderType, Side, TimeInForce, TradeTick

STOP = "stop_loss"
TAKE_PROFIT = "take_profit"
ENTRY = "entry"


class TakeProfitMode(enum.StrEnum):
    RESTING = "resting"
    """A limit order at the venue once the entry has finished (virtual before)."""
    VIRTUAL = "virtual"
    """Always a virtual trigger: a limit at the price is sent when the touch reaches it."""


class Bracket(ExecutionAlgo):
    """An entry, a stop-loss and a take-profit, emulated as a virtual OCO (see the module docstring)."""

    def __init__(
        self,
        entry: OrderIntent,
        stop_loss_price: Decimal,
        take_profit_price: Decimal,
        *,
        make_intent_id: MakeIntentId,
        native_brackets: bool = False,
        take_profit_mode: TakeProfitMode = TakeProfitMode.RESTING,
        exit_time_in_force: TimeInForce = TimeInForce.DAY,
        max_exit_orders: int = 5,
        cancel_retry_s: float = 5.0,
    ) -> None:
        super().__init__(
            symbol=entry.symbol, strategy=entry.strategy, make_intent_id=make_intent_id, cancel_retry_s=cancel_retry_s
        )
        self.long = entry.side is Side.BUY
        if entry.qty <= 0:
            raise ValueError("the entry's qty must be positive")
        if not (stop_loss_price < take_profit_price if self.long else stop_loss_price > take_profit_price):
            raise ValueError("the stop must be on the losing side of the take-profit")
        if max_exit_orders < 1:
            raise ValueError("max_exit_orders must be at least 1")
        self.entry_intent = entry
        self.stop_loss_price = stop_loss_price
        self.take_profit_price = take_profit_price
        self.native_brackets = native_brackets
        self.take_profit_mode = TakeProfitMode(take_profit_mode)
        self.exit_time_in_force = exit_time_in_force
        self.max_exit_orders = max_exit_orders
        self.exit_side = Side.SELL if self.long else Side.BUY
        self.fired: str | None = None
        """``None`` until an exit fires: then ``stop_loss`` or ``take_profit`` (the stop can
        take over from a take-profit, never the other way)."""
        self._entry: Child | None = None
        self._resting_placed = False

    def venue_order_class(self) -> str:
        """The order class the entry would carry at the venue: ``bracket``, or ``simple`` (emulated)."""
        return "bracket" if self.native_brackets else "simple"

    @property
    def emulated(self) -> bool:
        return self.venue_order_class() == "simple"

    @property
    def entry_filled(self) -> Decimal:
        return self._entry.filled if self._entry is not None else ZERO

    @property
    def position(self) -> Decimal:
        """Open quantity in the entry's direction: entry fills booked minus exit executions.

        Exits count what the venue reports executed even before its fill arrives, the entry
        only its booked fills: both err towards a smaller position, so an exit sized on it
        can never cross zero.
        """
        exits = sum((c.settled for c in self._exits()), ZERO)
        return self.entry_filled - exits

    def _exits(self) -> list[Child]:
        return [c for c in self.children if c.role != ENTRY]

    def start(self, now_ns: int) -> Actions:
        """Send the entry. A native bracket is refused: nothing can express it yet (module docstring)."""
        if not self.emulated:
            raise NotImplementedError(
                "native brackets need an order class and exit legs on OrderIntent and in the venue adapter; "
                "construct the Bracket with native_brackets=False to emulate"
            )
        return super().start(now_ns)

    # ------------------------------------------------------------ triggers

    def _on_quote(self, bbo: BestBidOffer, now_ns: int) -> None:
        # What we would exit into: the bid for a long, the ask for a short.
        price = bbo.bid_price if self.long else bbo.ask_price
        self._check(price)

    def _on_trade(self, trade: TradeTick, now_ns: int) -> None:
        self._check(trade.price)

    def _check(self, price: Decimal) -> None:
        if self.position <= 0 or self.fired == STOP:
            return
        stop_hit = price <= self.stop_loss_price if self.long else price >= self.stop_loss_price
        take_hit = price >= self.take_profit_price if self.long else price <= self.take_profit_price
        if stop_hit:
            self.fired = STOP
        elif take_hit and self.fired is None and not self._resting_take_profit_working():
            self.fired = TAKE_PROFIT

    def _resting_take_profit_working(self) -> bool:
        return any(c.working and c.role == TAKE_PROFIT for c in self.children)

    # ------------------------------------------------------------ decisions

    def _step(self, now_ns: int) -> None:
        if self._entry is None:
            self._out.intents.append(self.entry_intent)
            self._entry = self.children.add(self.entry_intent, ENTRY)
            self.reason = "entry working"
            return
        entry = self._entry
        position = self.position
        exits = self._exits()
        if self.fired is None:
            if entry.working:
                self.reason = "entry working" + (f"; stop armed for {position}" if position > 0 else "")
            elif entry.settled == 0:
                self._finish(f"entry ended unfilled ({entry.reason})")
            elif entry.filled < entry.settled:
                self.reason = "waiting for the entry's last fills to size the exits"
            elif position <= 0 and not any(c.working for c in exits):
                self._finish(f"take-profit filled: {self._summary()}")
            elif self.take_profit_mode is TakeProfitMode.RESTING and not self._resting_placed:
                self._resting_placed = True
                self._exit(now_ns, TAKE_PROFIT, position)
                self.reason = f"take-profit resting for {position}; stop armed"
            else:
                self.reason = f"stop armed for {position}; take-profit " + (
                    "resting" if self._resting_take_profit_working() else "virtual"
                )
            return
        # An exit fired: the entry's remainder and the other side go; one exit at a time.
        self._cancel(entry, now_ns)
        others = [c for c in exits if c.working and c.role != self.fired]
        for child in others:
            self._cancel(child, now_ns)
        if others:
            self.reason = f"{self.fired} fired: waiting for the {others[0].role} cancel confirmation"
        elif any(c.working for c in exits):
            self.reason = f"{self.fired} exit working"
        elif position > 0:
            if len(exits) >= self.max_exit_orders:
                self._finish(f"{self.fired}: gave up after {len(exits)} exit orders; {position} still open")
            else:
                self._exit(now_ns, self.fired, position)
                self.reason = f"{self.fired} exit working"
        elif entry.working or entry.filled < entry.settled:
            self.reason = f"{self.fired} exit done: waiting for the entry's cancel confirmation"
        else:
            self._finish(f"{self.fired} exit complete: {self._summary()}")

    def _exit(self, now_ns: int, role: str, qty: Decimal) -> None:
        if role == STOP:
            self._send(now_ns, self.exit_side, qty, OrderType.MARKET, None, self.exit_time_in_force, role)
        else:
            price = self.take_profit_price
            self._send(now_ns, self.exit_side, qty, OrderType.LIMIT, price, self.exit_time_in_force, role)

    def _summary(self) -> str:
        exits = self._exits()
        by_role = {role: sum((c.settled for c in exits if c.role == role), ZERO) for role in (TAKE_PROFIT, STOP)}
        return (
            f"entry filled {self.entry_filled}, take-profit executed {by_role[TAKE_PROFIT]}, "
            f"stop executed {by_role[STOP]}, open {self.position}"
        )
