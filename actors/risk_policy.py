"""Risk configuration resolved for one order: the limits of its account, strategy and symbol, its asset.

The ``[risk]`` section holds the account's limits; ``[risk.strategies.NAME]`` and
``[risk.symbols.SYMBOL]`` may tighten them. The limits an order is checked against are
the most restrictive of the three levels, field by field (:meth:`Limits.tighten`): a
strategy or symbol setting can only make a limit stricter, never lift one. Both
resolutions are cached per key, so the order path does dictionary lookups only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Final

from actors.pretrade import Asset, Limits
from engine.clock import NS_PER_S
from engine.config import AssetSection, LimitsSection, RiskSection

DEFAULT_ASSETS: Final[Mapping[str, AssetSection]] = {
    "*USDT": AssetSection(fractionable=True, lot_size=Decimal("0.00001")),
}
"""Crypto pairs trade in fractions; nothing else is shortable or fractionable unless configured."""


def _limits(section: LimitsSection | RiskSection) -> Limits:
    return Limits(
        max_order_qty=section.max_order_qty,
        max_order_notional=section.max_order_notional,
        collar_pct=section.collar_pct,
        max_orders_per_window=section.max_orders_per_s,
        max_open_orders=section.max_open_orders,
        max_position_qty=section.max_position_qty,
        max_position_notional=section.max_position_notional,
        max_gross_exposure=section.max_gross_exposure,
        max_net_exposure=section.max_net_exposure,
        max_leverage=section.max_leverage,
        max_symbol_concentration_pct=section.max_symbol_concentration_pct,
        max_sector_concentration_pct=section.max_sector_concentration_pct,
        max_adv_participation_pct=section.max_adv_participation_pct,
        rate_window_ns=NS_PER_S,
    )


class RiskPolicy:
    """Resolves limits per (strategy, symbol) and asset data per symbol, once each."""

    def __init__(self, section: RiskSection) -> None:
        self.section = section
        # Duplicates and cancels are account-wide settings only.
        self.account = dataclasses.replace(
            _limits(section),
            duplicate_window_ns=round(section.duplicate_window_s * NS_PER_S) or None,
            max_cancels_per_window=section.max_cancels_per_s,
        )
        self._strategies = {name: _limits(s) for name, s in section.strategies.items()}
        self._symbols = {name: _limits(s) for name, s in section.symbols.items()}
        self._assets = {**DEFAULT_ASSETS, **section.assets}
        self._limits: dict[tuple[str, str], Limits] = {}
        self._asset: dict[str, Asset] = {}

    def limits(self, strategy: str, symbol: str) -> Limits:
        key = (strategy, symbol)
        found = self._limits.get(key)
        if found is None:
            found = self.account
            for extra in (self._strategies.get(strategy), self._symbols.get(symbol)):
                if extra is not None:
                    found = found.tighten(extra)
            self._limits[key] = found
        return found

    def asset(self, symbol: str) -> Asset:
        found = self._asset.get(symbol)
        if found is None:
            section = self._assets.get(symbol)
            if section is None:
                section = next(
                    (a for pattern, a in self._assets.items() if fnmatchcase(symbol, pattern)), AssetSection()
                )
            found = self._asset[symbol] = Asset(
                symbol=symbol,
                shortable=section.shortable,
                easy_to_borrow=section.easy_to_borrow,
                borrow_rate_pct=section.borrow_rate_pct,
                fractionable=section.fractionable,
                lot_size=section.lot_size,
                min_qty=section.min_qty,
                sector=section.sector,
                adv=section.adv,
            )
        return found

    def sectors(self) -> dict[str, str]:
        """Every configured symbol's sector (for sector concentration across the book)."""
        return {symbol: a.sector for symbol, a in self.section.assets.items() if a.sector is not None}
