"""The engine config crash tests and chaos runs give ``kestrel run``: EMA 2/4 on the test session.

EMA 2/4 trades about once a second on :func:`simulations.lean_feed.chaos_session`; 500
shares is more than about half the quotes show (100-900), so many orders fill in several
pieces. ``trade=False`` caps orders at one share, so risk refuses every intent: an audit
engine that recovers and reconciles but cannot trade. The control file goes next to the
config, so engines started side by side (tests, chaos jobs) never share one.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_engine_config"]


def write_engine_config(
    path: Path, *, run_id: str, qty: int = 500, snapshot_every: int = 10_000, trade: bool = True
) -> Path:
    path.write_text(
        f"""
[engine]
run_id = "{run_id}"
[log]
level = "info"
[strategy.params]
fast = 2
slow = 4
qty = {qty}
[risk]
max_order_qty = {qty if trade else 1}
[journal]
snapshot_every = {snapshot_every}
[control]
file = "{path.parent / "control.json"}"
"""
    )
    return path
