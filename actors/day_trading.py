"""The day-trading rule as a dated policy: FINRA's pattern-day-trader rule, then its replacement.

Why dated: FINRA amended Rule 4210 to replace the pattern-day-trader (PDT) provisions
with intraday margin requirements. The amendments are effective on 4 June 2026 and
firms phase them in until 20 October 2027; each firm switches on a date of its own in
between. A backtest of 2025 must apply the PDT rule, one of 2028 must not, and a live
account follows its broker's adoption date — so the policy in force is a function of the
trading day (:func:`policy_in_force`), never a global switch.

The two policies, as :func:`check_day_trade` applies them to one order:

PDT (:attr:`DayTradePolicy.PDT`)
    A margin account whose equity is below ``pdt_min_equity`` ($25,000) may make at most
    ``pdt_max_day_trades`` (3) day trades in ``window_business_days`` (5) business days:
    a fourth would make it a pattern day trader. So an order that would close quantity
    opened the same trading day (a day trade, see :mod:`actors.ledger`) is refused with
    ``PATTERN_DAY_TRADER`` when the window already holds ``pdt_max_day_trades``. At or
    above the minimum equity there is no count limit. Orders that only open, or close
    quantity held overnight, are never refused by this rule.

Intraday margin (:attr:`DayTradePolicy.INTRADAY_MARGIN`), simplified
    No day-trade count limit (the ledger still counts them). Instead, intraday exposure
    must be covered by margin *during* the day, not only at the close. The simplified
    model: the caller supplies the account's intraday buying power (the broker's figure,
    or its own equity-based estimate); an order's *opening* notional — its notional ×
    the share of its quantity beyond what it closes of the current position — must not
    exceed it, else ``INTRADAY_MARGIN``. Closing quantity consumes no buying power, so a
    purely closing order always passes. When the caller has no buying power figure
    (``None``) nothing is checked.

Cash accounts are outside both: they cannot day trade on credit, and the good-faith rules
of :mod:`actors.ledger` govern them instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from decimal import Decimal
from typing import Final

from actors.ledger import AccountType
from engine.messages import Side

REPLACEMENT_EFFECTIVE: Final = dt.date(2026, 6, 4)
"""The Rule 4210 amendments replacing the PDT rule take effect."""
PHASE_IN_END: Final = dt.date(2027, 10, 20)
"""The last day a firm may adopt them."""
PATTERN_DAY_TRADER: Final = "PATTERN_DAY_TRADER"
INTRADAY_MARGIN: Final = "INTRADAY_MARGIN"

Rejection = tuple[str, str, dict[str, str]]
"""(reason code, human detail, the inputs the decision read) — what risk puts in ``RiskRejected``."""


class DayTradePolicy(enum.StrEnum):
    PDT = "pdt"
    INTRADAY_MARGIN = "intraday-margin"


AUTO: Final = "auto"


@dataclasses.dataclass(frozen=True)
class DayTradingConfig:
    """The account's day-trading parameters. ``policy`` is ``"auto"`` (by date) or a forced policy."""

    account_type: AccountType | str
    pdt_min_equity: Decimal = Decimal(25000)
    pdt_max_day_trades: int = 3
    """Day trades allowed in the window below the minimum equity; one more makes a pattern day trader."""
    window_business_days: int = 5
    replacement_effective: dt.date = REPLACEMENT_EFFECTIVE
    replacement_adopted_on: dt.date = PHASE_IN_END
    """The day this firm applies the replacement (between ``replacement_effective`` and 20 Oct 2027)."""
    policy: str = AUTO

    def __post_init__(self) -> None:
        object.__setattr__(self, "account_type", AccountType(self.account_type))
        if self.policy != AUTO and self.policy not in {p.value for p in DayTradePolicy}:
            raise ValueError(f"day-trading policy must be 'auto', 'pdt' or 'intraday-margin', not {self.policy!r}")
        if not self.replacement_effective <= self.replacement_adopted_on <= PHASE_IN_END:
            raise ValueError(
                f"replacement_adopted_on {self.replacement_adopted_on} must be within "
                f"[{self.replacement_effective}, {PHASE_IN_END}]"
            )
        if self.pdt_max_day_trades < 0 or self.window_business_days < 1:
            raise ValueError("pdt_max_day_trades must be >= 0 and window_business_days >= 1")
        if self.pdt_min_equity < 0:
            raise ValueError("pdt_min_equity must be >= 0")


def policy_in_force(day: dt.date, cfg: DayTradingConfig) -> DayTradePolicy:
    """The policy on trading day ``day``: PDT before the firm's adoption date, intraday margin from it.

    A forced ``cfg.policy`` wins regardless of the date.
    """
    if cfg.policy != AUTO:
        return DayTradePolicy(cfg.policy)
    return DayTradePolicy.PDT if day < cfg.replacement_adopted_on else DayTradePolicy.INTRADAY_MARGIN


def closing_qty(position: Decimal, side: Side, qty: Decimal) -> Decimal:
    """How much of an order of ``qty`` on ``side`` reduces the signed ``position``."""
    if not position or (position > 0) == (side.sign > 0):
        return Decimal(0)
    return min(qty, abs(position))


def check_day_trade(
    cfg: DayTradingConfig,
    day: dt.date,
    *,
    intent_side: Side,
    intent_qty: Decimal,
    notional: Decimal,
    position: Decimal,
    opened_today: Decimal,
    day_trades: int,
    equity: Decimal,
    intraday_buying_power: Decimal | None = None,
    symbol: str = "",
) -> Rejection | None:
    """Whether the day-trading rule in force on ``day`` refuses this order (None: it does not).

    The order is ``intent_qty`` on ``intent_side`` worth ``notional`` (qty × reference
    price). ``position`` is the symbol's signed position, ``opened_today`` the signed
    quantity of it opened on ``day`` (``AccountState.opened_today``; pass 0 when the state
    is of another day), ``day_trades`` the count in the window ending on ``day`` and
    ``equity`` the account's equity at the caller's marks.
    """
    account_type = cfg.account_type  # an AccountType: DayTradingConfig converts it
    if account_type == AccountType.CASH or intent_qty <= 0:
        return None
    policy = policy_in_force(day, cfg)
    closing = closing_qty(position, intent_side, intent_qty)
    # The inputs are built only for a refusal: this runs on every intent, and nearly all pass.
    if policy is DayTradePolicy.PDT:
        day_trade = bool(closing) and bool(opened_today) and (opened_today > 0) == (position > 0)
        if not day_trade or equity >= cfg.pdt_min_equity or day_trades < cfg.pdt_max_day_trades:
            return None
        inputs = _inputs(cfg, policy, day, position, opened_today, equity, symbol) | {
            "day_trades": str(day_trades),
            "max_day_trades": str(cfg.pdt_max_day_trades),
            "window_business_days": str(cfg.window_business_days),
            "min_equity": str(cfg.pdt_min_equity),
        }
        detail = (
            f"closing {symbol or 'a position'} opened today would be day trade {day_trades + 1} in "
            f"{cfg.window_business_days} business days with equity {equity} below {cfg.pdt_min_equity}"
        )
        return PATTERN_DAY_TRADER, detail, inputs
    opening = intent_qty - closing
    # opening notional = notional × opening / qty, compared without dividing.
    if intraday_buying_power is None or not opening or notional * opening <= intraday_buying_power * intent_qty:
        return None
    inputs = _inputs(cfg, policy, day, position, opened_today, equity, symbol) | {
        "notional": str(notional),
        "opening_qty": str(opening),
        "intent_qty": str(intent_qty),
        "intraday_buying_power": str(intraday_buying_power),
    }
    detail = (
        f"opening {opening} of {intent_qty} (notional {notional}) exceeds intraday buying power {intraday_buying_power}"
    )
    return INTRADAY_MARGIN, detail, inputs


def _inputs(
    cfg: DayTradingConfig,
    policy: DayTradePolicy,
    day: dt.date,
    position: Decimal,
    opened_today: Decimal,
    equity: Decimal,
    symbol: str,
) -> dict[str, str]:
    """What every refusal of :func:`check_day_trade` reports, before its rule's own figures."""
    inputs = {
        "policy": policy.value,
        "day": day.isoformat(),
        "account_type": AccountType(cfg.account_type).value,
        "position": str(position),
        "opened_today": str(opened_today),
        "equity": str(equity),
    }
    if symbol:
        inputs["symbol"] = symbol
    return inputs
