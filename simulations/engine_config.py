"""The engine config crash tests and chaos runs give ``kestrel run``: EMA 2/4 on the test session.

EMA 2/4 trades about once a second on :func:`simulations.lean_feed.chaos_session`; 500
shares is more than about half the quotes show (100-900), so many orders fill in several
pieces. ``trade=False`` caps orders at one share, so risk refuses every intent: an audit
engine that recovers and reconciles but cannot trade. ``strategy`` (TOML text) runs another
strategy or execution algorithm instead (tests/test_crash_recovery.py's cancel scenario).
The control file goes next to the config, so engines started side by side (tests, chaos
jobs) never share one.

``failover=True`` (chaos runs, tests/test_feed_failover.py) streams both of the
simulator's feeds and prices IBM from :data:`PRIMARY_FEED`, with :data:`SECONDARY_FEED`
as its fallback, on an SLA short enough that a provider silent for a few seconds
(``Faults.silence_feed``) is failed over from and back to within one run. The SLA must
outlast the chaos session's quiet spells (1.6 s of market time between bursts: about
1.1 s at the chaos replay speed of 1.5). At 1.0 s both providers would go stale in each
spell, and whichever spoke first afterwards would take over: prices would flap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

__all__ = ["FAILBACK_S", "PRIMARY_FEED", "SECONDARY_FEED", "SLA_S", "write_engine_config"]

PRIMARY_FEED: Final = "iex"
SECONDARY_FEED: Final = "sip"
SLA_S: Final = 1.5
"""``[pricing] sla_s`` with ``failover``: iex silent this long and IBM's prices come from sip."""
FAILBACK_S: Final = 2.0
"""``[pricing] failback_s`` with ``failover``: iex fresh again this long and they come from iex."""


def write_engine_config(
    path: Path,
    *,
    run_id: str,
    qty: int = 500,
    snapshot_every: int = 10_000,
    trade: bool = True,
    failover: bool = False,
    strategy: str | None = None,
) -> Path:
    """Write the config at ``path`` and return it.

    ``strategy``: TOML for the ``[strategy]`` tables (``[strategy]``, ``[strategy.params]``,
    ``[strategy.execution]`` ...) in place of the default EMA 2/4 of ``qty`` shares; ``qty``
    still caps orders (``[risk] max_order_qty``).
    """
    strategy_toml = f"[strategy.params]\nfast = 2\nslow = 4\nqty = {qty}\n" if strategy is None else strategy
    pricing = (
        f"[pricing]\nsla_s = {SLA_S}\nfailback_s = {FAILBACK_S}\n"
        f'[pricing.providers]\nIBM = ["alpaca-{PRIMARY_FEED}", "alpaca-{SECONDARY_FEED}"]\n'
        if failover
        else ""
    )
    path.write_text(
        f"""
[engine]
run_id = "{run_id}"
[log]
level = "info"
{strategy_toml}[risk]
max_order_qty = {qty if trade else 1}
[journal]
snapshot_every = {snapshot_every}
[control]
file = "{path.parent / "control.json"}"
{pricing}"""
    )
    return path
