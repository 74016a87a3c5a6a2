"""``allocation``: several strategies run as members of one, their targets consolidated into one portfolio.

The engine hosts one strategy per process; this one is a composite. It builds each member
from the strategy registry, forwards it the market data, its timers and the data-health
statuses, and collects what each member *wants to hold*. Every ``rebalance_s`` seconds of
engine time it combines the members' targets by their budgets under an
:class:`~actors.allocation.AllocationPolicy` (:func:`~actors.allocation.consolidate`: caps,
gross limit, cash buffer), sizes the result on ``capital`` the way
:func:`~actors.allocation.orders_for` does, and returns one
:class:`~actors.strategies.base.TargetPosition` per symbol. The host orders the difference
to what the allocation holds and has in flight, so nothing is ordered twice and a
rebalance that changes nothing sends nothing.

Configuration (``[strategy] name = "allocation"``; see ``configs/allocation.toml``)::

    [strategy.params]
    capital = "100000"            # the equity the weights apply to
    rebalance_s = 600             # engine-clock seconds between rebalances
    cash_buffer = "0.05"          # AllocationPolicy: gross ≤ min(max_gross, 1 - cash_buffer)
    max_weight_per_symbol = "0.4" # also max_gross, allow_short, min_trade_notional,
                                  # lot_sizes, fractional, fractional_lot
    [strategy.params.members.inverse-vol]    # the key names the member (and its strategy)
    budget = "0.6"                           # its share of capital
    params = { window = 20 }                 # its own [strategy.params]
    [strategy.params.members.slow-rsi]
    strategy = "rsi-reversion"               # a registered strategy other than the key
    budget = "0.4"

How a member states its targets — it never places an order:

- **weights**: a member with a ``target_weights() -> TargetWeights | None`` method
  (:class:`StatesWeights`, e.g. ``inverse-vol``) is read through it at each rebalance:
  symbol → fraction of *its budget*. The ``TargetPosition`` values it returns (what it would
  trade alone) are then ignored;
- **positions**: any other member returns ``TargetPosition(symbol, qty)`` from its hooks,
  as it does when it runs alone (e.g. ``rsi-reversion``). Its latest quantity per symbol is
  converted at each rebalance, at the mid of that moment, into the weight
  ``qty × mid / (budget × capital)``: read as "``qty`` shares out of my budget's share of
  the capital", so with no cap or scaling binding the allocation holds exactly ``qty``
  (the weight is rounded away from zero at 1e-18 so that consolidation's truncation to
  1e-12 does not cost the last share). A symbol without a mid yet is left out.

A member's targets persist per symbol until it states that symbol again: a symbol left out
of a later statement keeps its weight, and weight (or quantity) 0 is how a member drops
one — the allocation then goes to 0 there unless another member holds it. A member whose
weights add up to more than its budget (gross above 1, e.g. a position member sized on a
larger capital) is scaled down to its budget, its relative views kept, so it cannot crowd
out the others. A member with budget 0 runs but contributes nothing. A short target under
``allow_short = false`` raises :class:`~actors.allocation.ShortNotAllowed` naming the member
where it is stated. A member hook returning an order, a cancel or an execution algorithm is
a ``TypeError`` naming the member: the allocation places the orders.

Timers: a member's :meth:`~actors.strategies.base.Strategy.schedule` becomes the composite's
timer ``member/<key>/<name>`` and fires back as the member's ``on_timer(name)``. At a
rebalance, member timers due by then run first, so the rebalance sees their targets of that
instant whatever order the clock would have fired them in.

Features: the composite declares the union of its members' :class:`~actors.features.FeatureSpec`
values (names are global: two members defining one name differently is a
:class:`~actors.features.FeatureConflict` naming both), and when the host hands it its view
of the pipeline, each member gets a view of its own features on that same pipeline.

Trading what can be traded: a rebalance targets no symbol whose data is stale or which is
halted (the data-health statuses say so; risk would refuse the order), and after risk
rejects an order in a symbol (the market is closed, a limit …) the symbol is left out of
the rebalances for ``rebalance_s × 2^(k-1)`` after its k-th rejection in a row (at most
``2^MAX_BACKOFF_DOUBLINGS`` intervals), until a fill in it. Repeating a doomed target every
interval would otherwise trip risk's runaway guard (``runaway_rejected_streak``) overnight.

Not forwarded: fills, order updates and rejections (the orders are the allocation's, of
every member at once; members have none) and ``restore_positions`` (the positions after a
restart are the allocation's: it keeps them to size ``min_trade_notional`` against, and a
member's targets are gone with its state until it states them again — a held symbol no
member mentions is left alone). ``min_trade_notional`` is measured against the positions
from fills, not counting orders in flight.

Each target's audit record holds the consolidated ``weight``, the portfolio ``scale``,
whether the symbol was ``capped``, the ``mid`` and ``capital`` it was sized on, and for each
member holding the symbol its weight of its budget (``<key>.weight``), its contribution to
the portfolio (``<key>.contribution`` = budget × weight) and, for a position member, the
quantity it stated (``<key>.qty``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any, Final, Protocol, runtime_checkable

import msgspec

from actors.allocation import (
    DEFAULT_FRACTIONAL_LOT,
    AllocationError,
    AllocationPolicy,
    ShortNotAllowed,
    TargetWeights,
    consolidate,
    orders_for,
)
from actors.execution import ExecutionAlgo
from actors.features import FeatureConflict, FeaturePipeline, PipelineRegistry
from actors.strategies.base import (
    EMPTY_FEATURES,
    Decision,
    FeatureView,
    Strategy,
    TargetPosition,
    feature,
    parse_params,
)
from engine.clock import NS_PER_S
from engine.errors import ConfigError
from engine.messages import (
    Bar,
    BestBidOffer,
    CancelIntent,
    Fill,
    MarketDataStatus,
    OrderIntent,
    ProviderSwitched,
    RiskRejected,
    SymbolTradingStatus,
    TradeTick,
)

REBALANCE: Final = "rebalance"
MEMBER_TIMER_PREFIX: Final = "member/"
MEMBER_QUANTUM: Final = Decimal("1e-18")
"""A position member's converted weight is rounded away from zero to this (see the module docstring)."""
MAX_BACKOFF_DOUBLINGS: Final = 5
"""A symbol rejected again and again is retried at least every 2^5 = 32 rebalance intervals."""
_ZERO: Final = Decimal(0)

MemberFactory = Callable[[str, Mapping[str, Any]], Strategy]
"""How a member is built: ``(name, params) -> Strategy``, the registry's factories."""


@runtime_checkable
class StatesWeights(Protocol):
    """A member that states weights rather than quantities (see the module docstring)."""

    def target_weights(self) -> TargetWeights | None:
        """Its latest target: symbol → fraction of its budget (``None``: nothing yet)."""
        ...


class MemberParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    budget: Decimal
    """Share of ``capital`` the member steers, in [0, 1]; the budgets sum to at most 1."""
    strategy: str = ""
    """The registered strategy it runs (default: the member's key)."""
    params: dict[str, Any] = {}
    """Its own parameters, as its ``[strategy.params]`` would be when it runs alone."""


class AllocatorParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    capital: Decimal
    """The equity the weights apply to (the account may hold more)."""
    members: dict[str, dict[str, Any]]
    """Member key → :class:`MemberParams` (validated per member, so errors name the key)."""
    rebalance_s: float = 600.0
    cash_buffer: Decimal = _ZERO
    max_weight_per_symbol: Decimal = Decimal(1)
    max_gross: Decimal = Decimal(1)
    allow_short: bool = False
    min_trade_notional: Decimal = _ZERO
    lot_sizes: dict[str, Decimal] = {}
    fractional: list[str] = []
    fractional_lot: Decimal = DEFAULT_FRACTIONAL_LOT


@dataclass(eq=False)
class _Member:
    """One member and what it has stated so far."""

    key: str
    strategy: Strategy
    budget: Decimal
    timers: list[tuple[str, int | None]] = field(default_factory=list)
    """The member's own timer requests (its ``_timer_requests``), drained after each of its hooks."""
    positions: dict[str, Decimal] = field(default_factory=dict)
    """Latest ``TargetPosition`` quantity per symbol (position members)."""
    weights: dict[str, Decimal] = field(default_factory=dict)
    """Latest stated weight per symbol (weight members)."""
    states_weights: bool = field(init=False)
    """Read through ``target_weights()`` (:class:`StatesWeights`), its target positions ignored."""

    def __post_init__(self) -> None:
        self.states_weights = isinstance(self.strategy, StatesWeights)


def _convert(raw: Mapping[str, Any], params_type: type[MemberParams], path: str, source: str) -> MemberParams:
    """Like :func:`~actors.strategies.base.parse_params`, for a member's table: errors name ``path.KEY``."""
    try:
        return msgspec.convert(dict(raw), params_type)
    except msgspec.ValidationError as exc:
        problem, _, where = str(exc).partition(" - at `$")
        key = where.rstrip("`").lstrip(".")
        raise ConfigError(source, [(path + (f".{key}" if key else ""), problem.replace("`", ""))]) from None


def _policy_problem(key: str, budgets: Mapping[str, Decimal], **settings: Any) -> list[tuple[str, str]]:
    """What :class:`AllocationPolicy` says of these settings alone, filed under ``strategy.params.KEY``.

    The library stays the one place the rules live; building a policy per setting tells
    which key broke which rule.
    """
    try:
        AllocationPolicy(budgets, **settings)
    except AllocationError as exc:
        return [(f"strategy.params.{key}", str(exc))]
    return []


def _rekeyed(error: ConfigError, prefix: str) -> list[tuple[str, str]]:
    """A member's own errors (``strategy.params.X``) as keys of the allocation's config."""
    problems = []
    for path, message in error.problems:
        if path == "strategy.params" or path.startswith("strategy.params."):
            problems.append((prefix + path.removeprefix("strategy.params"), message))
        else:
            problems.append((prefix, f"{path}: {message}" if path else message))
    return problems


def _toward_zero(value: Fraction, quantum: Decimal) -> Decimal:
    return (math.trunc(value / Fraction(quantum)) * quantum).normalize()


def _away_from_zero(value: Fraction, quantum: Decimal) -> Decimal:
    units = value / Fraction(quantum)
    return ((math.ceil(units) if units > 0 else math.floor(units)) * quantum).normalize()


class Allocator(Strategy):
    """The composite strategy (see the module docstring)."""

    def __init__(
        self, name: str, params: AllocatorParams, policy: AllocationPolicy, members: Sequence[tuple[str, Strategy]]
    ) -> None:
        """``members``: (key, strategy built with name = key), each with a budget in ``policy``."""
        self.name = name
        self.params = params
        self.policy = policy
        self._members = [_Member(key, strategy, policy.budgets[key]) for key, strategy in members]
        self._by_key = {member.key: member for member in self._members}
        registry = PipelineRegistry()
        for member in self._members:
            member.strategy._timer_requests = member.timers
            try:
                registry.declare(member.key, member.strategy.features)
            except FeatureConflict as exc:
                raise FeatureConflict(
                    [
                        (path, f"{message} (members of an allocation share one feature namespace)")
                        for path, message in exc.problems
                    ]
                ) from None
        pipeline = registry.build()
        for member in self._members:
            if member.strategy.pipeline_hash:  # a member pinned to its features: check them as its host would
                pipeline.require(member.strategy.pipeline_hash, member.key, member.strategy.pipeline_specs)
        self.features = pipeline.specs
        self._view = EMPTY_FEATURES
        self._mids: dict[str, Decimal] = {}
        self._held: dict[str, Decimal] = {}
        """The allocation's positions: the ledger's at start, then its fills."""
        self._member_timers: dict[str, int] = {}
        """Pending member timers by their namespaced name → time."""
        self._unavailable: dict[str, set[str]] = {}
        """Symbol → why it cannot trade now ("stale", "halted"): not targeted until it can."""
        self._backoff: dict[str, tuple[int, int]] = {}
        """Symbol → (rejections in a row, not targeted before this time)."""
        self._scheduled = False
        self.rebalances = 0

    @classmethod
    def from_params(cls, name: str, params: Mapping[str, Any], registry: Mapping[str, MemberFactory]) -> Allocator:
        """Validate ``[strategy.params]`` and build the members through ``registry`` (the strategy
        registry, passed in: it lists this class, so importing it here would be circular)."""
        parsed = parse_params(params, AllocatorParams, name)
        source = f"strategy {name!r}"
        problems: list[tuple[str, str]] = []
        if not parsed.capital.is_finite() or parsed.capital <= 0:
            problems.append(("strategy.params.capital", f"must be a positive amount, not {parsed.capital}"))
        if not (math.isfinite(parsed.rebalance_s) and parsed.rebalance_s > 0):
            seconds = parsed.rebalance_s
            problems.append(("strategy.params.rebalance_s", f"must be a positive number of seconds, not {seconds}"))
        if not parsed.members:
            problems.append(("strategy.params.members", "no members: name at least one strategy"))
        specs: dict[str, MemberParams] = {}
        for key in sorted(parsed.members):
            path = f"strategy.params.members.{key}"
            if not key or "/" in key:
                problems.append((path, "a member's key must be non-empty and without '/' (it names its timers)"))
                continue
            try:
                spec = specs[key] = _convert(parsed.members[key], MemberParams, path, source)
            except ConfigError as exc:
                problems.extend(exc.problems)
                continue
            problems.extend(_policy_problem(f"members.{key}.budget", {key: spec.budget}))
            kind = spec.strategy or key
            if kind not in registry:
                known = ", ".join(sorted(registry))
                where = f"{path}.strategy" if spec.strategy else path
                problems.append((where, f"unknown strategy {kind!r} (known: {known})"))
        budgets = {key: spec.budget for key, spec in specs.items()}
        if not any(path.startswith("strategy.params.members") for path, _ in problems):
            problems.extend(_policy_problem("members", budgets))  # their sum, once each is valid
        for key in ("max_weight_per_symbol", "max_gross", "cash_buffer", "min_trade_notional", "fractional_lot"):
            problems.extend(_policy_problem(key, {}, **{key: getattr(parsed, key)}))
        lots = {"lot_sizes": parsed.lot_sizes, "fractional": frozenset(parsed.fractional)}
        problems.extend(_policy_problem("lot_sizes", {}, fractional_lot=DEFAULT_FRACTIONAL_LOT, **lots))
        members: list[tuple[str, Strategy]] = []
        for key, spec in specs.items():
            make = registry.get(spec.strategy or key)
            if make is None:
                continue  # reported above
            try:
                members.append((key, make(key, spec.params)))
            except ConfigError as exc:
                problems.extend(_rekeyed(exc, f"strategy.params.members.{key}.params"))
        if problems:
            raise ConfigError(source, problems)
        policy = AllocationPolicy(
            budgets,
            max_weight_per_symbol=parsed.max_weight_per_symbol,
            max_gross=parsed.max_gross,
            cash_buffer=parsed.cash_buffer,
            allow_short=parsed.allow_short,
            min_trade_notional=parsed.min_trade_notional,
            lot_sizes=parsed.lot_sizes,
            fractional=frozenset(parsed.fractional),
            fractional_lot=parsed.fractional_lot,
        )
        return cls(name, parsed, policy, members)

    # -- members, features ------------------------------------------------------------

    @property
    def members(self) -> Mapping[str, Strategy]:
        """The member strategies by key."""
        return {member.key: member.strategy for member in self._members}

    @property
    def feature_values(self) -> FeatureView:
        """The host sets the composite's view; each member then gets its own, on the same pipeline."""
        return self._view

    @feature_values.setter
    def feature_values(self, view: FeatureView) -> None:
        self._view = view
        pipeline: FeaturePipeline = view.pipeline
        for member in self._members:
            member.strategy.feature_values = FeatureView(pipeline, [spec.name for spec in member.strategy.features])

    # -- state --------------------------------------------------------------------------

    def restore_positions(self, positions: Mapping[str, Decimal]) -> None:
        """Kept, not forwarded: the positions are the allocation's, not any one member's."""
        self._held = dict(positions)

    def on_fill(self, fill: Fill, now_ns: int) -> Sequence[Decision]:
        self._held[fill.symbol] = self._held.get(fill.symbol, _ZERO) + fill.qty * fill.side.sign
        self._backoff.pop(fill.symbol, None)  # it trades again
        return []

    def on_rejected(self, rejection: RiskRejected, now_ns: int) -> Sequence[Decision]:
        """Back off the symbol (see the module docstring): the next rebalances would repeat the order."""
        count = self._backoff.get(rejection.symbol, (0, 0))[0] + 1
        wait = self._interval_ns() * 2 ** min(count - 1, MAX_BACKOFF_DOUBLINGS)
        self._backoff[rejection.symbol] = (count, now_ns + wait)
        return []

    # -- forwarded hooks ----------------------------------------------------------------

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> Sequence[Decision]:
        if bbo.bid_price > 0 and bbo.ask_price >= bbo.bid_price:  # a one-sided or crossed quote prices nothing
            self._mids[bbo.symbol] = (bbo.bid_price + bbo.ask_price) / 2
        for member in self._members:
            self._take(member, "on_bbo", member.strategy.on_bbo(bbo, now_ns))
        if not self._scheduled:  # after the members' timers: at an equal time theirs fire first
            self._scheduled = True
            self.schedule(REBALANCE, now_ns + self._interval_ns())
        return []

    def on_trade(self, trade: TradeTick, now_ns: int) -> Sequence[Decision]:
        for member in self._members:
            self._take(member, "on_trade", member.strategy.on_trade(trade, now_ns))
        return []

    def on_bar(self, bar: Bar, now_ns: int) -> Sequence[Decision]:
        for member in self._members:
            self._take(member, "on_bar", member.strategy.on_bar(bar, now_ns))
        return []

    def on_market_status(
        self, status: MarketDataStatus | ProviderSwitched | SymbolTradingStatus, now_ns: int
    ) -> Sequence[Decision]:
        if type(status) is MarketDataStatus:
            self._available(status.symbol, "stale", status.fresh)
        elif type(status) is SymbolTradingStatus and status.halted is not None:
            self._available(status.symbol, "halted", not status.halted)
        for member in self._members:
            self._take(member, "on_market_status", member.strategy.on_market_status(status, now_ns))
        return []

    def _available(self, symbol: str, why: str, ok: bool) -> None:
        reasons = self._unavailable.setdefault(symbol, set())
        if ok:
            reasons.discard(why)
            if not reasons:
                del self._unavailable[symbol]
        else:
            reasons.add(why)

    def on_timer(self, name: str, now_ns: int) -> Sequence[Decision]:
        if name == REBALANCE:
            return self._rebalance(now_ns)
        if name.startswith(MEMBER_TIMER_PREFIX):
            self._fire_member_timer(name, now_ns)
        return []

    # -- members' statements and timers -------------------------------------------------

    def _take(self, member: _Member, hook: str, decisions: Sequence[Decision] | None) -> None:
        """Record what a member hook returned; refuse anything but targets; forward its timer requests."""
        if decisions is None:
            raise TypeError(
                f"allocation {self.name!r}: member {member.key!r}: {type(member.strategy).__name__}.{hook} returned"
                " None; a hook must return a list (empty for nothing to do)"
            )
        for decision in decisions:
            if type(decision) is TargetPosition:
                if member.states_weights:
                    continue  # read through target_weights(): its quantities are what it would trade alone
                if decision.qty < 0 and not self.policy.allow_short:
                    raise ShortNotAllowed(
                        f"allocation {self.name!r}: member {member.key!r} targets {decision.qty} of"
                        f" {decision.symbol!r}, and the allocation allows no shorts (allow_short = false)"
                    )
                member.positions[decision.symbol] = decision.qty
            elif isinstance(decision, OrderIntent | CancelIntent | ExecutionAlgo):
                raise TypeError(
                    f"allocation {self.name!r}: member {member.key!r} ({type(member.strategy).__name__}.{hook})"
                    f" returned {type(decision).__name__}; members of an allocation state targets"
                    " (TargetPosition, or target_weights()); the allocation places the orders"
                )
            else:
                raise TypeError(
                    f"allocation {self.name!r}: member {member.key!r} ({type(member.strategy).__name__}.{hook})"
                    f" returned {type(decision).__name__}; a member returns TargetPosition values"
                )
        if member.timers:
            self._forward_timers(member)

    def _forward_timers(self, member: _Member) -> None:
        """The member's timer requests, namespaced, become the composite's own (the host arms them)."""
        for name, at_ns in member.timers:
            full = f"{MEMBER_TIMER_PREFIX}{member.key}/{name}"
            if at_ns is None:
                self._member_timers.pop(full, None)
                self.cancel_timer(full)
            else:
                self._member_timers[full] = at_ns
                self.schedule(full, at_ns)
        member.timers.clear()

    def _fire_member_timer(self, full: str, now_ns: int) -> None:
        key, _, name = full.removeprefix(MEMBER_TIMER_PREFIX).partition("/")
        member = self._by_key.get(key)
        if member is None or not name:
            return  # not a name this composite ever armed
        self._member_timers.pop(full, None)
        self._take(member, "on_timer", member.strategy.on_timer(name, now_ns))

    def _run_due_member_timers(self, now_ns: int) -> None:
        """Fire (and disarm) the member timers due by ``now_ns``, in time order, before a rebalance."""
        for at_ns, full in sorted((at, name) for name, at in self._member_timers.items() if at <= now_ns):
            if self._member_timers.get(full) != at_ns:
                continue  # rescheduled by a member timer fired just before
            self.cancel_timer(full)
            self._fire_member_timer(full, now_ns)

    # -- rebalance ----------------------------------------------------------------------

    def _interval_ns(self) -> int:
        return round(self.params.rebalance_s * NS_PER_S)

    def _member_weights(self, member: _Member) -> dict[str, Decimal]:
        """The member's current weights (fractions of its budget), gross at most 1."""
        if member.states_weights:
            assert isinstance(member.strategy, StatesWeights)
            stated = member.strategy.target_weights()
            if stated is not None:
                for symbol, weight in stated.weights.items():
                    if weight < 0 and not self.policy.allow_short:
                        raise ShortNotAllowed(
                            f"allocation {self.name!r}: member {member.key!r} states weight {weight} for"
                            f" {symbol!r}, and the allocation allows no shorts (allow_short = false)"
                        )
                    member.weights[symbol] = weight
            exact = {symbol: Fraction(weight) for symbol, weight in member.weights.items()}
        else:
            share = Fraction(member.budget) * Fraction(self.params.capital)
            exact = {
                symbol: Fraction(qty) * Fraction(self._mids[symbol]) / share
                for symbol, qty in member.positions.items()
                if symbol in self._mids
            }
        gross = sum((abs(w) for w in exact.values()), Fraction(0))
        if gross > 1:  # over its budget: scaled down to it, never into the others' share
            return {symbol: _toward_zero(w / gross, MEMBER_QUANTUM) for symbol, w in exact.items()}
        rounded = {symbol: _away_from_zero(w, MEMBER_QUANTUM) for symbol, w in exact.items()}
        if sum((abs(w) for w in rounded.values()), _ZERO) > 1:
            return {symbol: _toward_zero(w, MEMBER_QUANTUM) for symbol, w in exact.items()}
        return rounded

    def _rebalance(self, now_ns: int) -> Sequence[Decision]:
        self.schedule(REBALANCE, now_ns + self._interval_ns())
        self._run_due_member_timers(now_ns)
        self.rebalances += 1
        stated: dict[str, TargetWeights] = {}
        for member in self._members:
            if member.budget == 0:
                continue  # contributes nothing (and a position cannot be converted against no budget)
            weights = self._member_weights(member)
            if weights:
                stated[member.key] = TargetWeights(member.key, weights, now_ns)
        if not stated:
            return []
        portfolio = consolidate(stated, self.policy)
        capital = self.params.capital
        plan = orders_for(
            portfolio,
            capital,
            self._mids,
            self._held,
            self.policy,
            strategy=self.name,
            make_intent_id=lambda: f"{self.name}-sizing",  # only the sizes are used: the host orders
            ts_init=now_ns,
        )
        targets: list[Decision] = []
        for symbol, qty in plan.target_qty.items():
            if symbol in plan.skipped:
                continue  # below min_trade_notional, or under a lot away: leave it as it is
            if symbol in self._unavailable or now_ns < self._backoff.get(symbol, (0, 0))[1]:
                continue  # stale, halted, or rejected lately: the order would be refused
            noted = {
                "weight": feature(portfolio[symbol]),
                "scale": feature(portfolio.scale),
                "capped": "true" if symbol in portfolio.capped else "false",
                "mid": feature(self._mids[symbol]),
                "capital": feature(capital),
            }
            for key, target in stated.items():
                weight = target.weights.get(symbol)
                if weight is None:
                    continue
                noted[f"{key}.weight"] = feature(weight)
                noted[f"{key}.contribution"] = feature((self._by_key[key].budget * weight).normalize())
                qty_stated = self._by_key[key].positions.get(symbol)
                if qty_stated is not None and not self._by_key[key].states_weights:
                    noted[f"{key}.qty"] = feature(qty_stated)
            targets.append(TargetPosition(symbol=symbol, qty=qty, features=noted))
        return targets


def allocation_factory(registry: Callable[[], Mapping[str, MemberFactory]]) -> MemberFactory:
    """The registry entry: an ``allocation`` whose members are looked up in ``registry()`` when it
    is built. Resolved lazily because the registry lists this very factory."""

    def build(name: str, params: Mapping[str, Any]) -> Strategy:
        return Allocator.from_params(name, params, registry())

    return build
