"""What a strategy is: plain code reacting to market data and its own order events.

A strategy never touches the bus, a socket or the wall clock. The strategy actor calls
its hooks and publishes the intents they return; ``now_ns`` is the engine clock's time.
The same strategy code therefore runs unchanged in replay and live.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any, TypeVar

import msgspec

from engine.errors import ConfigError
from engine.messages import (
    BestBidOffer,
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


class Strategy:
    """Base class: override the hooks you need; each returns the intents to send.

    For the audit trail, a hook may say what produced an intent with :meth:`note_features`
    (indicator values, the quote it reacted to …); the host journals them with the intent
    as a ``SignalRecorded``. An intent without noted features is journaled with none.
    """

    name: str
    intent_prefix: str = ""
    """Set by the host before any hook runs: makes intent ids unique across restarts."""
    _noted_features: dict[str, dict[str, str]]

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

    def restore_positions(self, positions: Mapping[str, Decimal]) -> None:
        """After a restart: the positions the ledger holds (the strategy's state is gone)."""

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> list[OrderIntent]:
        return []

    def on_trade(self, trade: TradeTick, now_ns: int) -> list[OrderIntent]:
        return []

    def on_fill(self, fill: Fill, now_ns: int) -> list[OrderIntent]:
        return []

    def on_order_update(self, update: OrderUpdate, now_ns: int) -> list[OrderIntent]:
        return []

    def on_rejected(self, rejection: RiskRejected, now_ns: int) -> list[OrderIntent]:
        return []

    def on_market_status(
        self, status: MarketDataStatus | ProviderSwitched | SymbolTradingStatus, now_ns: int
    ) -> list[OrderIntent]:
        """A symbol's data turned stale or fresh, moved to another provider, or its trading
        status changed (halt, LULD bands). Risk already refuses orders in a stale or halted
        symbol; a strategy hears of it so it can stop quoting or reset its signals."""
        return []
