"""The strategy actor: hosts one :class:`~actors.strategies.base.Strategy`.

It feeds the strategy market data (quotes, trades, bars), the outcomes of its own orders
and its timers, and publishes what the hooks return on ``order.intent``, each intent
followed on ``audit`` by a ``SignalRecorded``: the intent, the features the strategy noted
for it, and the message it was reacting to. Market data is conflated per symbol when the
strategy falls behind (see the mailbox policy the composition root sets).

What a hook may return (anything else, ``None`` included, is a ``TypeError``: a strategy
bug made loud, never an order silently dropped):

- an :class:`~engine.messages.OrderIntent`, published as it is;
- a :class:`~actors.strategies.base.TargetPosition`, turned into a market order for
  ``target - position - in flight`` (nothing when that is zero). The host keeps the
  strategy's position (the ledger's at start, then its fills) and what each of its intents
  still in flight would add (removed on rejection or the order's final status), so a
  repeated target never orders twice. At start the host asks the order manager (whose book
  the journal has rebuilt by then) for the strategy's working orders, which count as in
  flight: a restarted actor or process does not order again what is already working.

Features: the host builds one :class:`~actors.features.FeaturePipeline` for the strategies
it hosts (through :class:`~actors.features.PipelineRegistry`, so several strategies share
every computation), checks every pin (:func:`build_pipeline`), and updates it on each
quote (mid), trade and bar *before* the strategy's hook, so the hook reads values that
include the message it is handed. Inputs nobody declared cost nothing.

Cancels and execution algorithms: a :class:`~engine.messages.CancelIntent` is published on
``order.intent`` like an order (risk, then the order manager, resolve it); a
``CancelRejected`` comes back to ``on_cancel_rejected``. An
:class:`~actors.execution.ExecutionAlgo` a hook returns is started and run here: it sees
every quote and trade, the fills, updates and rejections of its own children, and its
timers (clock timers of this actor); its children are the strategy's intents (in flight,
journaled with a ``SignalRecorded`` naming the algorithm) and its cancels go out as
``CancelIntent``s. Once it is done and none of its children works any more, the strategy's
``on_execution_done`` hears of it. Algorithms live in memory: after a restart the children
still working are in flight (seeded from the order manager) and the strategy decides.

Timers: :meth:`Strategy.schedule` requests become clock timers of this actor
(``ctx.tell_self_at``), so replay fires them at exact simulated times, in order. A timer
set by an earlier incarnation of the actor (before a restart) is ignored: the strategy
instance that asked for it is gone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import msgspec

from actors.execution import TWAP, Actions, ExecutionAlgo, LimitChaser, OnExhausted, VolumeProfile, VWAPSchedule
from actors.features import FeaturePipeline, PipelineRegistry
from actors.strategies.base import Decision, FeatureView, Strategy, TargetPosition, feature
from engine import topics
from engine.actor import Actor
from engine.clock import NS_PER_S
from engine.config import ExecutionSection
from engine.messages import (
    AccountBaseline,
    ActorStats,
    Bar,
    BestBidOffer,
    CancelIntent,
    CancelRejected,
    Fill,
    MarketDataStatus,
    OrderIntent,
    OrderType,
    OrderUpdate,
    PortfolioQuery,
    PortfolioSnapshot,
    ProviderSwitched,
    RiskRejected,
    Side,
    SignalRecorded,
    StatsQuery,
    SymbolTradingStatus,
    TradeTick,
    WorkingOrders,
    WorkingOrdersQuery,
)

ZERO: Final = Decimal(0)
_TRADE_INPUTS: Final = frozenset({"trade_price", "trade"})
_BAR_INPUTS: Final = frozenset({"bar_close", "bar"})


def build_pipeline(strategies: Sequence[Strategy], pins: Mapping[str, str] | None = None) -> FeaturePipeline:
    """The one feature pipeline for ``strategies``, after checking every pin.

    Each strategy's declared :attr:`~Strategy.features` go through a
    :class:`~actors.features.PipelineRegistry` (one name, two definitions:
    :class:`~actors.features.FeatureConflict`). Then each pin — ``pins[name]`` (the
    config's, which wins) or the strategy's own :attr:`~Strategy.pipeline_hash` — must equal
    the hash of what the pipeline computes for that strategy, else
    :class:`~actors.features.FeaturePipelineMismatch` (a ``ConfigError``) naming both hashes
    and, when the strategy knows the specs of its pin, the differing features.
    """
    registry = PipelineRegistry()
    for strategy in strategies:
        registry.declare(strategy.name, strategy.features)
    pipeline = registry.build()
    for strategy in strategies:
        pinned = (pins or {}).get(strategy.name)
        if pinned:
            pipeline.require(pinned, strategy.name)
        elif strategy.pipeline_hash:
            pipeline.require(strategy.pipeline_hash, strategy.name, strategy.pipeline_specs)
    return pipeline


@dataclass(frozen=True, slots=True)
class StrategyTimer:
    """A timer the strategy asked for is due (a message to the actor itself, never on the bus)."""

    name: str
    token: int
    """Which request armed it: a timer rescheduled or cancelled since is stale."""
    incarnation: int
    """``ctx.restarts`` of the actor that armed it."""
    ts_init: int
    """The time asked for."""


@dataclass(frozen=True, slots=True)
class AlgoTimer:
    """An execution algorithm's timer is due (a message to the actor itself)."""

    algo_id: int
    incarnation: int
    ts_init: int


class _RunningAlgo:
    """An execution algorithm the host runs for the strategy."""

    __slots__ = ("algo", "algo_id", "label", "noted", "target", "timer_ns")

    def __init__(
        self, algo_id: int, algo: ExecutionAlgo, target: Decimal | None = None, noted: dict[str, str] | None = None
    ) -> None:
        self.algo_id = algo_id
        self.algo = algo
        self.label = f"{type(algo).__name__}#{algo_id}"
        self.timer_ns: int | None = None
        """The time of the timer armed for it (``None``: none)."""
        self.target = target
        """For an algorithm working a ``TargetPosition`` (``[strategy.execution]``): the target
        quantity. Its whole signed quantity is one in-flight reservation (keyed by
        :attr:`label`) until it retires, so a repeated target does not start another."""
        self.noted = noted or {}
        """The features its children are journaled with (a target's, plus the algorithm's name)."""


class _InFlight:
    """An intent of ours whose order may still trade: what it would still add to the position."""

    __slots__ = ("counted", "remaining", "symbol")

    def __init__(self, symbol: str, remaining: Decimal, counted: frozenset[str] = frozenset()) -> None:
        self.symbol = symbol
        self.remaining = remaining
        """Signed: positive buys, negative sells."""
        self.counted = counted
        """Execution ids ``remaining`` already accounts for (seeded from the order manager)."""


_HOOKS: Final[Mapping[type, str]] = {
    BestBidOffer: "on_bbo",
    TradeTick: "on_trade",
    Bar: "on_bar",
    StrategyTimer: "on_timer",
    Fill: "on_fill",
    OrderUpdate: "on_order_update",
    RiskRejected: "on_rejected",
    CancelRejected: "on_cancel_rejected",
    MarketDataStatus: "on_market_status",
    ProviderSwitched: "on_market_status",
    SymbolTradingStatus: "on_market_status",
}


class StrategyActor(Actor):
    def __init__(
        self,
        build: Callable[[], Strategy],
        portfolio_address: str,
        boot: int = 0,
        *,
        pipeline_hash: str = "",
        orders_address: str | None = None,
        execution: ExecutionSection | None = None,
        volume_profile: VolumeProfile | None = None,
    ) -> None:
        """``pipeline_hash``: the config's pin (``[strategy] pipeline_hash``; empty: none).
        ``orders_address``: the order manager, asked for working orders at start (None: not asked).
        ``execution``: how a ``TargetPosition``'s order is worked (default: one market order).
        ``volume_profile``: VWAP's profile (built by the composition root from the recordings;
        ``None``: flat)."""
        self.execution = execution if execution is not None else ExecutionSection()
        self.volume_profile = volume_profile
        strategy = self.strategy = build()
        self.portfolio_address = portfolio_address
        self.orders_address = orders_address
        self.boot = boot
        """How many times this engine has started on its journal (0: no journal)."""
        self.pipeline = build_pipeline([strategy], {strategy.name: pipeline_hash} if pipeline_hash else None)
        strategy.feature_values = FeatureView(self.pipeline, [spec.name for spec in strategy.features])
        inputs = {spec.input for spec in self.pipeline.specs}
        self._mid_features = "mid" in inputs
        self._trade_features = bool(inputs & _TRADE_INPUTS)
        self._bar_features = bool(inputs & _BAR_INPUTS)
        # The strategy appends its timer requests to this very list; checked after every hook.
        self._requested: list[tuple[str, int | None]] = []
        strategy._timer_requests = self._requested
        self._timers: dict[str, int] = {}
        self._timer_seq = 0
        self.positions: dict[str, Decimal] = {}
        """The strategy's positions: the ledger's at start, then its own fills."""
        self._in_flight: dict[str, _InFlight] = {}
        self.intents = 0
        self.targets = 0
        self.market_status = 0
        self.bars = 0
        self.timers = 0
        self.cancels = 0
        self.algos_started = 0
        self.execution_refused = 0
        self._algos: dict[int, _RunningAlgo] = {}
        self._target_algos: dict[str, _RunningAlgo] = {}
        """symbol → the algorithm working the strategy's target in it (or being stopped)."""
        self._next_targets: dict[str, tuple[TargetPosition, Any, type]] = {}
        """symbol → a new target waiting for the stopped algorithm's children to end (with the
        message that produced it)."""
        self._flight_of: dict[str, str] = {}
        """Child intent id → the in-flight reservation of the target algorithm that sent it."""
        self._quotes: dict[str, BestBidOffer] = {}
        """The latest quote per symbol, kept only when targets are worked by an algorithm (it
        is handed the quote at its start, so a chaser started from a bar or timer can price)."""

    async def on_start(self) -> None:
        # Intent ids: <strategy>[.b<boot>].<incarnation>-<n>, unique even though a
        # restarted strategy (or a restarted process) counts from 1 again.
        boot = f".b{self.boot}" if self.boot else ""
        self.strategy.intent_prefix = f"{self.strategy.name}{boot}.{self.ctx.restarts}"
        for topic in (
            topics.MD_BBO,
            topics.MD_TRADE,
            topics.MD_BAR,
            topics.MD_STATUS,
            topics.ORDER_FILL,
            topics.ORDER_EVENT,
        ):
            self.ctx.subscribe(topic)
        # A fresh instance (a restarted actor, or a restarted process whose ledger the
        # journal rebuilt) knows nothing: ask the ledger what we hold.
        snapshot: PortfolioSnapshot = await self.ctx.request(self.portfolio_address, PortfolioQuery())
        if snapshot.positions:
            self._restore(snapshot.positions)
            self.ctx.log.info(
                "strategy_state_rebuilt",
                strategy=self.strategy.name,
                source=self.portfolio_address,
                positions={k: str(v) for k, v in snapshot.positions.items()},
            )
        if self.orders_address is not None:
            await self._seed_in_flight(self.orders_address)
        if self._requested:
            self._arm_timers()

    def _restore(self, positions: Mapping[str, Decimal]) -> None:
        self.positions = dict(positions)
        self.strategy.restore_positions(positions)

    async def _seed_in_flight(self, address: str) -> None:
        """At start: the strategy's orders the venue may still fill (the journal's book) are in flight.

        Without this a repeated :class:`TargetPosition` would order again what a working
        order of the previous incarnation is already buying.
        """
        answer: WorkingOrders = await self.ctx.request(address, WorkingOrdersQuery())
        for view in answer.orders:
            if view.strategy != self.strategy.name or view.remaining_qty <= 0:
                continue
            self._in_flight[view.intent_id or view.client_order_id] = _InFlight(
                view.symbol, view.remaining_qty * view.side.sign, frozenset(view.execution_ids)
            )
        if self._in_flight:
            self.ctx.log.info("strategy_in_flight_seeded", strategy=self.strategy.name, orders=len(self._in_flight))

    async def handle(self, message: Any) -> Any:
        strategy = self.strategy
        now = self.ctx.clock.time_ns()
        kind = type(message)
        decisions: Sequence[Decision]
        algos: list[tuple[_RunningAlgo, Actions]] = []
        """What the running execution algorithms make of the message (applied after the hook)."""
        if kind is BestBidOffer:
            if self._mid_features:  # the mid as a float: a feature, not money
                self.pipeline.on_mid(message.symbol, float(message.bid_price + message.ask_price) / 2.0)
            decisions = strategy.on_bbo(message, now)
            if self.execution.algo != "market":
                self._quotes[message.symbol] = message
            if self._algos:
                algos = [(r, r.algo.on_bbo(message, now)) for r in list(self._algos.values())]
        elif kind is TradeTick:
            if self._trade_features:
                self.pipeline.on_trade(message.symbol, float(message.price), float(message.size))
            decisions = strategy.on_trade(message, now)
            if self._algos:
                algos = [(r, r.algo.on_trade(message, now)) for r in list(self._algos.values())]
        elif kind is Bar:
            self.bars += 1
            if self._bar_features:
                self.pipeline.on_bar(
                    message.symbol,
                    float(message.open),
                    float(message.high),
                    float(message.low),
                    float(message.close),
                    float(message.volume),
                )
            decisions = strategy.on_bar(message, now)
        elif kind is StrategyTimer:
            if message.incarnation != self.ctx.restarts or self._timers.get(message.name) != message.token:
                return None  # rescheduled, cancelled, or armed by an incarnation before a restart
            del self._timers[message.name]
            self.timers += 1
            decisions = strategy.on_timer(message.name, now)
        elif kind is AlgoTimer:
            running = self._algos.get(message.algo_id)
            if message.incarnation != self.ctx.restarts or running is None or running.timer_ns != message.ts_init:
                return None  # re-armed for another time since, or the algorithm is gone
            running.timer_ns = None
            decisions = ()
            algos = [(running, running.algo.on_timer(now))]
        elif kind is AccountBaseline:
            # Recovery's first look at the account: what it holds is where we start.
            self._restore(message.positions)
            if self._requested:
                self._arm_timers()
            return None
        elif kind is Fill:
            if message.strategy != strategy.name:
                return None
            self._on_fill(message)
            algos = self._owners(message.intent_id, lambda algo: algo.on_fill(message, now))
            decisions = strategy.on_fill(message, now)
        elif kind is OrderUpdate:
            if message.strategy != strategy.name:
                return None
            if message.status.is_terminal and message.intent_id is not None:
                self._in_flight.pop(message.intent_id, None)
            if message.intent_id is not None:
                algos = self._owners(message.intent_id, lambda algo: algo.on_update(message, now))
            decisions = strategy.on_order_update(message, now)
        elif kind is RiskRejected:
            if message.strategy != strategy.name:
                return None
            self._in_flight.pop(message.intent_id, None)
            algos = self._owners(message.intent_id, lambda algo: algo.on_rejected(message, now))
            for running, _ in list(algos):
                if running.target is not None:
                    # A refused child ends a target's algorithm, as a refused market order ends
                    # the target: the strategy's next target tries again. Slice after slice
                    # refused (a closed market) would otherwise trip risk's runaway guard.
                    algos.append((running, running.algo.stop(now, f"a child was refused: {message.reason}")))
            decisions = strategy.on_rejected(message, now)
        elif kind is CancelRejected:
            if message.strategy != strategy.name:
                return None
            decisions = strategy.on_cancel_rejected(message, now)
        elif kind is MarketDataStatus or kind is ProviderSwitched or kind is SymbolTradingStatus:
            self.market_status += 1
            decisions = strategy.on_market_status(message, now)
        elif kind is StatsQuery:
            return ActorStats(
                counters={
                    "intents": self.intents,
                    "targets": self.targets,
                    "market_status": self.market_status,
                    "bars": self.bars,
                    "timers": self.timers,
                    "cancels": self.cancels,
                    "algos_started": self.algos_started,
                    "algos_running": len(self._algos),
                    "execution_refused": self.execution_refused,
                }
            )
        else:
            raise TypeError(f"strategy actor cannot handle {kind.__name__}")
        await self._decided(_HOOKS.get(kind, "a hook"), decisions, message, kind, now)
        for running, actions in algos:
            await self._apply(running, actions, message, kind, now)
        return None

    async def _decided(
        self, hook: str, decisions: Sequence[Decision] | None, message: Any, kind: type, now: int
    ) -> None:
        """After a hook: refuse a ``None`` (a strategy bug made loud), arm the timers it asked
        for, then carry out its decisions."""
        if decisions is None:
            strategy = self.strategy
            raise TypeError(
                f"strategy {strategy.name!r}: {type(strategy).__name__}.{hook} returned None;"
                " a hook must return a list (empty for nothing to do)"
            )
        if self._requested:
            self._arm_timers()
        if decisions:
            await self._emit(hook, message, kind, decisions, now)

    def _owners(
        self, intent_id: str, call: Callable[[ExecutionAlgo], Actions]
    ) -> list[tuple[_RunningAlgo, Actions]]:
        """``call`` on the running algorithm whose child ``intent_id`` is (none, or one)."""
        for running in self._algos.values():
            if running.algo.owns(intent_id):
                return [(running, call(running.algo))]
        return []

    def _on_fill(self, fill: Fill) -> None:
        signed = fill.qty * fill.side.sign
        self.positions[fill.symbol] = self.positions.get(fill.symbol, ZERO) + signed
        key = self._flight_of.get(fill.intent_id, fill.intent_id)
        flight = self._in_flight.get(key)
        if flight is not None and fill.execution_id not in flight.counted:
            before = flight.remaining
            after = before - signed
            if after == 0 or (after > 0) != (before > 0):
                del self._in_flight[key]  # filled in full (or past it: never flip its side)
            else:
                flight.remaining = after

    def _in_flight_qty(self, symbol: str) -> Decimal:
        return sum((f.remaining for f in self._in_flight.values() if f.symbol == symbol), ZERO)

    async def _emit(self, hook: str, message: Any, kind: type, decisions: Sequence[Decision], now: int) -> None:
        strategy = self.strategy
        features = strategy.take_features()
        for decision in decisions:
            decided = type(decision)
            if decided is OrderIntent:
                assert isinstance(decision, OrderIntent)
                await self._send(decision, features.get(decision.intent_id, {}), message, kind, now)
            elif decided is TargetPosition:
                assert isinstance(decision, TargetPosition)
                if self.execution.algo != "market":
                    await self._target_algo(decision, message, kind, now)
                    continue
                converted = self._target_intent(decision, now)
                if converted is not None:
                    await self._send(*converted, message, kind, now)
            elif decided is CancelIntent:
                assert isinstance(decision, CancelIntent)
                await self._send_cancel(decision)
            elif isinstance(decision, ExecutionAlgo):
                await self._start_algo(decision, message, kind, now)
            else:
                raise TypeError(
                    f"strategy {strategy.name!r}: {type(strategy).__name__}.{hook} returned"
                    f" {decided.__name__}; a hook returns OrderIntent, TargetPosition, CancelIntent and"
                    " ExecutionAlgo values"
                )

    async def _send(
        self,
        intent: OrderIntent,
        noted: dict[str, str],
        message: Any,
        kind: type,
        now: int,
        reservation: str | None = None,
    ) -> None:
        """Publish one intent, then its signal on ``audit``.

        Risk is woken first, so the audit actor's turn is not on the way from the strategy
        to risk. It still comes before the order manager's (woken later, by the approval),
        so the signal is journaled ahead of the decision and the order it explains (see
        actors/audit.py).
        """
        self.intents += 1
        priced_ns = message.ts_init if kind is BestBidOffer else message.ts_recv if kind is TradeTick else 0
        if priced_ns:
            intent = msgspec.structs.replace(intent, ts_trigger=priced_ns)
        if reservation is None:
            self._in_flight[intent.intent_id] = _InFlight(intent.symbol, intent.qty * intent.side.sign)
        else:  # a target algorithm's child: its reservation already counts it
            self._flight_of[intent.intent_id] = reservation
        signal = SignalRecorded(
            intent_id=intent.intent_id,
            strategy=intent.strategy,
            symbol=intent.symbol,
            side=intent.side,
            qty=intent.qty,
            order_type=intent.order_type,
            limit_price=intent.limit_price,
            features=noted,
            trigger=kind.__name__,
            ts_trigger=_event_time(message),
            ts_init=now,
        )
        await self.ctx.publish(topics.ORDER_INTENT, intent)
        await self.ctx.publish(topics.AUDIT, signal)

    async def _send_cancel(self, cancel: CancelIntent) -> None:
        if cancel.strategy != self.strategy.name:
            raise TypeError(
                f"strategy {self.strategy.name!r} returned a CancelIntent of strategy {cancel.strategy!r};"
                " a strategy cancels its own orders (Strategy.cancel)"
            )
        self.cancels += 1
        await self.ctx.publish(topics.ORDER_INTENT, cancel)

    async def _start_algo(self, algo: ExecutionAlgo, message: Any, kind: type, now: int) -> None:
        if algo.strategy != self.strategy.name:
            raise TypeError(
                f"strategy {self.strategy.name!r} returned a {type(algo).__name__} built for strategy"
                f" {algo.strategy!r}; build it with strategy=self.name (its children's fills are routed by it)"
            )
        if algo.started:
            raise TypeError(f"strategy {self.strategy.name!r} returned a {type(algo).__name__} already started")
        self.algos_started += 1
        running = self._algos[self.algos_started] = _RunningAlgo(self.algos_started, algo)
        self.ctx.log.info("execution_started", strategy=self.strategy.name, algo=running.label, symbol=algo.symbol)
        await self._apply(running, algo.start(now), message, kind, now)

    async def _apply(self, running: _RunningAlgo, actions: Actions, message: Any, kind: type, now: int) -> None:
        """Carry out what an algorithm decided: its children, its cancels, its timer; retire it when done."""
        algo = running.algo
        reservation = running.label if running.target is not None else None
        for intent in actions.intents:
            await self._send(intent, {**running.noted, "algo": running.label}, message, kind, now, reservation)
        for intent_id in actions.cancels:
            cancel = CancelIntent(intent_id=intent_id, strategy=algo.strategy, reason=running.label, ts_init=now)
            await self._send_cancel(cancel)
        due = actions.next_timer_ns
        if due is not None and due != running.timer_ns:
            running.timer_ns = due
            self.ctx.tell_self_at(due, AlgoTimer(running.algo_id, self.ctx.restarts, due))
        if actions.done and not algo.children.working() and self._algos.pop(running.algo_id, None) is not None:
            if running.target is not None:
                await self._retire_target_algo(running, now)
            self.ctx.log.info(
                "execution_done",
                strategy=algo.strategy,
                algo=running.label,
                reason=actions.reason,
                filled=str(algo.filled_qty),
            )
            decisions = self.strategy.on_execution_done(algo, now)
            await self._decided("on_execution_done", decisions, message, kind, now)

    async def _target_algo(self, target: TargetPosition, message: Any, kind: type, now: int) -> None:
        """Work the difference to ``target`` with the configured algorithm (``[strategy.execution]``).

        One algorithm per symbol. A repeated target is left to the one already working it. A
        different target stops it (its working children are cancelled) and waits until every
        child has ended: only then is what is missing known exactly (position and in flight),
        so a replaced algorithm can neither leave a child filling behind the new one's back
        nor make the new one overshoot. Meanwhile a still newer target replaces the waiting one.
        """
        symbol = target.symbol
        running = self._target_algos.get(symbol)
        if running is not None:
            if running.target == target.qty and symbol not in self._next_targets:
                return
            self._next_targets[symbol] = (target, message, kind)
            # Even a finished algorithm may have a child working (a chaser's last one): cancel it.
            # Asking again is harmless: a cancel is re-sent at most every cancel_retry_s.
            await self._apply(running, running.algo.stop(now, "replaced by a new target"), message, kind, now)
            return
        converted = self._target_intent(target, now)
        if converted is None:
            return
        intent, noted = converted
        try:
            algo = self._build_algo(intent, now)
        except ValueError as exc:
            # Not an order refused by risk: no order was made. Loud, counted, and the
            # strategy's next target tries again (a VWAP window before the open, say).
            self.execution_refused += 1
            self.ctx.log.error(
                "execution_refused", strategy=self.strategy.name, symbol=symbol, qty=str(intent.qty), error=str(exc)
            )
            return
        self.algos_started += 1
        running = _RunningAlgo(self.algos_started, algo, target.qty, noted)
        self._algos[running.algo_id] = self._target_algos[symbol] = running
        self._in_flight[running.label] = _InFlight(symbol, intent.qty * intent.side.sign)
        self.ctx.log.info(
            "execution_started",
            strategy=self.strategy.name,
            algo=running.label,
            symbol=symbol,
            side=intent.side.value,
            qty=str(intent.qty),
            target=str(target.qty),
        )
        quote = self._quotes.get(symbol)
        if quote is not None:
            algo.on_bbo(quote, now)  # not started yet: only remembered, so a limit child can be priced
        await self._apply(running, algo.start(now), message, kind, now)

    async def _retire_target_algo(self, running: _RunningAlgo, now: int) -> None:
        """A target's algorithm ended with no child working: drop its reservation (the rest of
        its quantity will not be sent), then start the target that was waiting for it, if any."""
        symbol = running.algo.symbol
        if self._target_algos.get(symbol) is running:
            del self._target_algos[symbol]
        self._in_flight.pop(running.label, None)
        for child in running.algo.children:
            self._flight_of.pop(child.intent_id, None)
        waiting = self._next_targets.pop(symbol, None)
        if waiting is not None:
            target, message, kind = waiting
            await self._target_algo(target, message, kind, now)

    def _build_algo(self, order: OrderIntent, now: int) -> ExecutionAlgo:
        config = self.execution
        strategy = self.strategy
        end_ns = now + round(config.duration_s * NS_PER_S)
        if config.algo == "vwap":
            return VWAPSchedule(
                order.symbol,
                order.side,
                order.qty,
                self.volume_profile or VolumeProfile.uniform(config.bucket_minutes),
                now,
                end_ns,
                lot=config.lot,
                strategy=strategy.name,
                make_intent_id=strategy.next_intent_id,
                limit_offset=config.limit_offset,
                tick=config.tick,
            )
        if config.algo == "twap":
            return TWAP(
                order.symbol,
                order.side,
                order.qty,
                now,
                end_ns,
                config.slices,
                lot=config.lot,
                strategy=strategy.name,
                make_intent_id=strategy.next_intent_id,
                limit_offset=config.limit_offset,
                tick=config.tick,
            )
        return LimitChaser(
            order.symbol,
            order.side,
            order.qty,
            max_repegs=config.max_repegs,
            base_timeout_s=config.timeout_s,
            max_timeout_s=config.max_timeout_s,
            min_timeout_s=config.min_timeout_s,
            tick=config.tick,
            strategy=strategy.name,
            make_intent_id=strategy.next_intent_id,
            on_exhausted=OnExhausted(config.on_exhausted),
        )

    def _target_intent(self, target: TargetPosition, now: int) -> tuple[OrderIntent, dict[str, str]] | None:
        """The market order that takes the strategy from where it is (and is going) to ``target``."""
        held = self.positions.get(target.symbol, ZERO)
        in_flight = self._in_flight_qty(target.symbol)
        delta = target.qty - held - in_flight
        if delta == 0:
            return None
        self.targets += 1
        intent = OrderIntent(
            intent_id=self.strategy.next_intent_id(),
            strategy=self.strategy.name,
            symbol=target.symbol,
            side=Side.BUY if delta > 0 else Side.SELL,
            qty=abs(delta),
            order_type=OrderType.MARKET,
            ts_init=now,
        )
        noted = {
            **target.features,
            "target_qty": feature(target.qty),
            "position": feature(held),
            "in_flight": feature(in_flight),
        }
        return intent, noted

    def _arm_timers(self) -> None:
        """Turn the strategy's timer requests into clock timers of this actor (the last request per name wins)."""
        for name, at_ns in self._requested:
            if at_ns is None:
                self._timers.pop(name, None)
                continue
            self._timer_seq += 1
            self._timers[name] = self._timer_seq
            self.ctx.tell_self_at(at_ns, StrategyTimer(name, self._timer_seq, self.ctx.restarts, at_ns))
        self._requested.clear()


def _event_time(message: Any) -> int:
    """When what the strategy reacted to happened: its ``ts_event``; a bar's end; else its ``ts_init``."""
    ts_event: int | None = getattr(message, "ts_event", None)
    if ts_event is not None:
        return ts_event
    if type(message) is Bar:
        return message.end_ns
    ts_init: int = message.ts_init
    return ts_init
