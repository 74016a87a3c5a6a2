"""What a strategy is: plain code reacting to market data, its own order events and its timers.

A strategy never touches the bus, a socket or the wall clock. The strategy actor
(:mod:`actors.strategy_host`) calls its hooks and publishes what they return; ``now_ns`` is
the engine clock's time. The same strategy code therefore runs unchanged in replay and live.

The hooks (override the ones you need; each returns a list, empty for "nothing" — a hook
returning ``None`` is a bug the host refuses with a ``TypeError``, never a silent no-op):

- market data: :meth:`Strategy.on_bbo`, :meth:`Strategy.on_trade`, :meth:`Strategy.on_bar`
  (time bars from the pricing actor, ``[pricing] bar_interval_s``);
- the outcome of its own orders — **this is the result path**: an intent is published and
  the hook returns at once; what became of it comes back as a message to a hook:
  :meth:`Strategy.on_rejected` (risk refused it: a ``RiskRejected`` with the reason),
  :meth:`Strategy.on_order_update` (the venue accepted, cancelled, rejected … it) and
  :meth:`Strategy.on_fill`. There is no blocking "send and wait": a strategy that waits
  for an outcome keeps the intent id and reacts when the outcome arrives (see ``ema-cross``);
- time: :meth:`Strategy.on_timer`, for the timers it asked for with :meth:`Strategy.schedule`;
- data health: :meth:`Strategy.on_market_status` (every status), whose default calls
  :meth:`Strategy.on_stale` when a symbol's data turns stale.

What a hook returns, in any mix:

- :class:`~engine.messages.OrderIntent` values: an order, as is;
- :class:`TargetPosition` values ("hold this much"), which the host turns into the order for
  the difference between the target and what the strategy holds plus what it has in flight;
- :class:`~engine.messages.CancelIntent` values (:meth:`Strategy.cancel`): cancel one of the
  strategy's orders, named by its intent id. It takes the intent's path through risk to the
  order manager; a cancel that cannot be carried out comes back to
  :meth:`Strategy.on_cancel_rejected`, the venue's confirmation to :meth:`Strategy.on_order_update`;
- an :class:`~actors.execution.ExecutionAlgo` (TWAP, VWAP, limit chaser, bracket) built with
  ``strategy=self.name`` and ``make_intent_id=self.next_intent_id``: the host runs it — feeds
  it quotes, trades, its children's fills and updates, arms its timers, sends its children
  through risk and its cancels as ``CancelIntent``s — and calls :meth:`Strategy.on_execution_done`
  when it has finished and none of its children works any more.

Features: a strategy declares the features it reads (:attr:`Strategy.features`, a tuple
of :class:`~actors.features.FeatureSpec`). The host builds one
:class:`~actors.features.FeaturePipeline` for the strategies it hosts, updates it on every
quote (the mid), trade and bar *before* calling the hooks, and gives each strategy a
read-only view of its own features: ``self.feature_values.get(symbol, name)``. A strategy
may pin the pipeline it was built for (:attr:`Strategy.pipeline_hash`, or ``[strategy]
pipeline_hash`` in the config): a run that would compute anything else refuses to start.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from actors.execution import ExecutionAlgo
from actors.features import FeaturePipeline, FeatureSpec
from engine.errors import ConfigError
from engine.messages import (
    Bar,
    BestBidOffer,
    CancelIntent,
    CancelRejected,
    Fill,
    MarketDataStatus,
    OrderIntent,
    OrderUpdate,
    ProviderSwitched,
    RiskRejected,
    SymbolTradingStatus,
    TradeTick,
)

P = TypeVar("P", bound=msgspec.Struct)


def parse_params(params: Mapping[str, Any], params_type: type[P], strategy: str) -> P:
    """Validate ``[strategy.params]`` into ``params_type``; errors name ``strategy.params.KEY``."""
    try:
        return msgspec.convert(dict(params), params_type)
    except msgspec.ValidationError as exc:
        message = str(exc)
        problem, _, where = message.partition(" - at `$")
        key = where.rstrip("`").lstrip(".")
        path = "strategy.params" + (f".{key}" if key else "")
        raise ConfigError(f"strategy {strategy!r}", [(path, problem.replace("`", ""))]) from None


def feature(value: Decimal | float | int | str) -> str:
    """A feature value as an exact string: a decimal or an int as it is, a float as its shortest
    round-trip repr (``float(feature(x)) == x``: the very value the strategy compared)."""
    return repr(value) if isinstance(value, float) else str(value)


class TargetPosition(msgspec.Struct, frozen=True, kw_only=True):
    """What a hook may return instead of an order: "hold ``qty`` of ``symbol``" (negative: short).

    The host orders the difference at market: ``qty`` minus the strategy's position (the
    ledger's at start, plus its fills since) minus what its orders still in flight would
    add. A target already met, or already on its way, orders nothing, so a strategy may
    repeat its target on every bar: after a rejection the next repeat tries again. The
    intent's audit trail (``SignalRecorded``) holds ``features`` plus the target, position
    and in-flight quantity the order was computed from.
    """

    symbol: str
    qty: Decimal
    features: dict[str, str] = {}
    """Feature values that produced the target (see :func:`feature`), for the audit trail."""


Decision = OrderIntent | TargetPosition | CancelIntent | ExecutionAlgo
"""What a hook may return items of."""


class FeatureView:
    """A strategy's read-only window on the shared pipeline: only the features it declared.

    Reading a feature one did not declare is a ``KeyError``: what a strategy reads must be
    what its pinned hash covers.
    """

    __slots__ = ("_names", "_pipeline")

    def __init__(self, pipeline: FeaturePipeline, names: Sequence[str]) -> None:
        self._pipeline = pipeline
        self._names = frozenset(names)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._names))

    @property
    def pipeline(self) -> FeaturePipeline:
        """The shared pipeline behind the view: a composite strategy (``allocation``) gives each
        of its members a view of its own features on the very pipeline its host built."""
        return self._pipeline

    def get(self, symbol: str, name: str) -> float | None:
        """Feature ``name`` of ``symbol`` after the update being handled: ``None`` until warm."""
        if name not in self._names:
            raise KeyError(f"feature {name!r} was not declared (declared: {', '.join(self.names) or 'none'})")
        return self._pipeline.get(symbol, name)

    def snapshot(self, symbol: str) -> dict[str, float | None]:
        """Every declared feature of ``symbol``, by name."""
        return {name: self._pipeline.get(symbol, name) for name in self.names}


EMPTY_FEATURES = FeatureView(FeaturePipeline(), ())
"""The view of a strategy no host has attached a pipeline to (it declared nothing readable)."""


class Strategy:
    """Base class: override the hooks you need; each returns the intents / targets to send.

    For the audit trail, a hook may say what produced an intent with :meth:`note_features`
    (indicator values, the quote it reacted to …); the host journals them with the intent
    as a ``SignalRecorded``. An intent without noted features is journaled with none.
    """

    name: str
    intent_prefix: str = ""
    """Set by the host before any hook runs: makes intent ids unique across restarts."""
    features: tuple[FeatureSpec, ...] = ()
    """The features this strategy reads. A class attribute, or set in ``__init__`` when they
    depend on the parameters; read by the host once, when it builds the pipeline."""
    pipeline_hash: str | None = None
    """The hash of the feature pipeline this strategy was built (researched, backtested) for:
    the host refuses to start it on any other (:class:`~actors.features.FeaturePipelineMismatch`).
    ``None``: not pinned (``[strategy] pipeline_hash`` in the config may still pin it)."""
    pipeline_specs: tuple[FeatureSpec, ...] | None = None
    """The specs :attr:`pipeline_hash` was computed from, if known: the refusal then names
    exactly which features differ, not only the two hashes."""
    feature_values: FeatureView = EMPTY_FEATURES
    """Set by the host: the current values of the declared features (read-only)."""
    _noted_features: dict[str, dict[str, str]]
    _timer_requests: list[tuple[str, int | None]] | None = None

    def next_intent_id(self) -> str:
        self._intent_seq = getattr(self, "_intent_seq", 0) + 1
        return f"{self.intent_prefix or self.name}-{self._intent_seq}"

    def note_features(self, intent: OrderIntent, features: Mapping[str, str]) -> OrderIntent:
        """Record the feature values that produced ``intent`` (see :func:`feature`); returns ``intent``.

        Kept beside the intent, not in it: the order path carries no audit payload.
        """
        noted: dict[str, dict[str, str]] | None = getattr(self, "_noted_features", None)
        if noted is None:
            noted = self._noted_features = {}
        noted[intent.intent_id] = dict(features)
        return intent

    def take_features(self) -> dict[str, dict[str, str]]:
        """The features noted since the last call, by intent id (the host calls it after every hook)."""
        noted: dict[str, dict[str, str]] | None = getattr(self, "_noted_features", None)
        if not noted:
            return {}
        self._noted_features = {}
        return noted

    def cancel(self, intent_id: str, now_ns: int, reason: str = "") -> CancelIntent:
        """A cancel of this strategy's order placed for ``intent_id``, to return from a hook.

        Works before the order is acknowledged (even before it has a client order id): the
        cancel follows the intent through risk to the order manager, which resolves it.
        """
        return CancelIntent(intent_id=intent_id, strategy=self.name, reason=reason, ts_init=now_ns)

    # -- timers -----------------------------------------------------------------------

    def schedule(self, name: str, at_ns: int) -> None:
        """Call :meth:`on_timer` with ``name`` once the engine clock reaches ``at_ns``.

        One pending timer per name: scheduling a name again replaces its earlier time. The
        host arms it (a clock timer of the actor) after the current hook returns; in replay
        it fires at exactly ``at_ns`` of simulated time, in the same order every run. A time
        already past fires at once. Timers do not survive a restart of the strategy (its new
        instance knows nothing of them): schedule again from the first hook after it.
        """
        requests = self._timer_requests
        if requests is None:
            requests = self._timer_requests = []
        requests.append((name, at_ns))

    def cancel_timer(self, name: str) -> None:
        """Forget the pending timer ``name`` (nothing if there is none)."""
        requests = self._timer_requests
        if requests is None:
            requests = self._timer_requests = []
        requests.append((name, None))

    # -- state ------------------------------------------------------------------------

    def restore_positions(self, positions: Mapping[str, Decimal]) -> None:
        """After a restart: the positions the ledger holds (the strategy's state is gone)."""

    # -- hooks ------------------------------------------------------------------------

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        return []

    def on_trade(self, trade: TradeTick, now_ns: int) -> Sequence[Decision]:
        return []

    def on_bar(self, bar: Bar, now_ns: int) -> Sequence[Decision]:
        """A time bar closed (see :class:`~engine.messages.Bar`; ``bar.trades == 0``: a quote bar)."""
        return []

    def on_timer(self, name: str, now_ns: int) -> Sequence[Decision]:
        """The timer ``name`` (:meth:`schedule`) is due; ``now_ns`` is its time, or a hair later live."""
        return []

    def on_fill(self, fill: Fill, now_ns: int) -> Sequence[Decision]:
        return []

    def on_order_update(self, update: OrderUpdate, now_ns: int) -> Sequence[Decision]:
        return []

    def on_rejected(self, rejection: RiskRejected, now_ns: int) -> Sequence[Decision]:
        return []

    def on_cancel_rejected(self, rejection: CancelRejected, now_ns: int) -> Sequence[Decision]:
        """A cancel of ours was not carried out (``rejection.reason``: a stable code, e.g.
        ``NOT_WORKING`` when the order had already ended)."""
        return []

    def on_execution_done(self, algo: ExecutionAlgo, now_ns: int) -> Sequence[Decision]:
        """An execution algorithm this strategy started has finished (``algo.reason`` says how,
        ``algo.filled_qty`` how much) and none of its children works any more."""
        return []

    def on_market_status(
        self, status: MarketDataStatus | ProviderSwitched | SymbolTradingStatus, now_ns: int
    ) -> Sequence[Decision]:
        """A symbol's data turned stale or fresh, moved to another provider, or its trading
        status changed (halt, LULD bands). Risk already refuses orders in a stale or halted
        symbol; a strategy hears of it so it can stop quoting or reset its signals.

        The default passes a turn to stale on to :meth:`on_stale` and ignores the rest."""
        if type(status) is MarketDataStatus and not status.fresh:
            return self.on_stale(status, now_ns)
        return []

    def on_stale(self, status: MarketDataStatus, now_ns: int) -> Sequence[Decision]:
        """``status.symbol``'s data went stale (``status.reason`` says why); called by the
        default :meth:`on_market_status`. The next fresh quote says it recovered."""
        return []
