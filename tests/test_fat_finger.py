"""The adversarial sample strategy against the whole pipeline: every mistake is caught.

``--strategy fat-finger`` sends oversized, fractional, off-collar, duplicate, self-crossing,
short-without-locate, too-fast and runaway intents (actors/strategies/fat_finger.py). Run
through a replay with the real risk, order manager (with the SQLite journal), simulated
venue and ledger, each lands on the rule meant to catch it, the day's loss moves trading
to REDUCING (journaled with its cause), and nothing that breaks a rule reaches the venue.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from engine.clock import LiveClock
from engine.config import parse_config
from engine.journal import Journal
from engine.messages import OrderStatus, OrderSubmitting, OrderUpdate, TradingState, TradingStateChanged
from kestrel.node import SessionOptions, run_replay_session

CONFIG: dict[str, Any] = {
    "engine": {"seed": 3},
    "log": {"path": None},
    "venue": {"starting_cash": 20_000, "fee_per_share": "0.5"},
    "risk": {
        "account_type": "cash",
        "daily_loss_limit": 40,
        "strategies": {
            "fat-finger": {
                "max_order_notional": 40_000,
                "max_position_qty": 100,
                "max_orders_per_s": 3,
                "max_open_orders": 5,
            }
        },
    },
    "strategy": {
        "params": {"notional_qty": 450, "buying_power_qty": 300, "position_qty": 150, "churn_qty": 50},
    },
}

EXPECTED = {
    "MAX_ORDER_QTY": "oversized",
    "FRACTIONAL_NOT_ALLOWED": "fractional",
    "MAX_ORDER_NOTIONAL": "notional",
    "BUYING_POWER": "buying_power",
    "MAX_POSITION": "position",
    "PRICE_COLLAR": "off_collar",
    "DUPLICATE_ORDER": "duplicate",
    "SELF_TRADE": "self_trade",
    "SHORT_NOT_LOCATED": "short",
    "TRADING_REDUCING": "grow",
    "ORDER_RATE": "burst",
    "MAX_OPEN_ORDERS": "open_orders",
    "STRATEGY_PAUSED": "runaway",
}


async def test_fat_finger_trips_every_rule_and_the_loss_limit(tmp_path: Path) -> None:
    config = parse_config(CONFIG, "test")
    journal = tmp_path / "journal.db"
    summary = await run_replay_session(
        config, SessionOptions(strategy="fat-finger", synthetic=3000, journal=journal)
    )
    rejections = summary.rejections_by_reason
    assert set(EXPECTED) <= set(rejections), f"rules never tripped: {set(EXPECTED) - set(rejections)}"
    for reason in ("MAX_ORDER_QTY", "FRACTIONAL_NOT_ALLOWED", "MAX_ORDER_NOTIONAL", "BUYING_POWER",
                   "MAX_POSITION", "PRICE_COLLAR", "DUPLICATE_ORDER", "SELF_TRADE", "SHORT_NOT_LOCATED",
                   "MAX_OPEN_ORDERS"):
        assert rejections[reason] == 1, (reason, rejections)  # exactly the one intent of its step
    assert rejections["ORDER_RATE"] == 5  # a burst of 8: 3 approved, 5 refused
    assert summary.trading_state == TradingState.REDUCING.value

    states: list[TradingStateChanged] = []
    sent: list[OrderSubmitting] = []
    async with await Journal.open_readonly(journal, LiveClock()) as reader:
        async for entry in reader.read():
            if isinstance(entry.record, TradingStateChanged):
                states.append(entry.record)
            elif isinstance(entry.record, OrderSubmitting):
                sent.append(entry.record)
    assert [(s.state, s.cause) for s in states][-1] == (TradingState.REDUCING, "daily_loss"), states
    assert "daily loss" in states[-1].reason
    # The summary tells the latest reason (not recovery's), and risk's figures at the end.
    assert summary.trading_reason == states[-1].reason
    report = summary.risk
    assert report is not None and report.trading_state == "reducing"
    assert report.net_exposure == report.long_exposure == report.gross_exposure > 0  # long 10 SYNTH
    assert report.daily_pnl < 0 and report.drawdown_pct > 0
    share = report.gross_exposure * 100 / report.equity
    assert report.concentration_pct["SYNTH"] == share.quantize(Decimal("0.0001"))
    # What reached the venue: the open, one of the duplicate pair, the churn pair, the
    # reducing sell and the three burst sells. Nothing oversized, nothing short.
    assert len(sent) == summary.orders == 8
    assert all(o.order.qty <= 50 for o in sent)
    assert summary.positions["SYNTH"] == "10"  # the open; the churn bought and sold 50; the rest rests
    assert msgspec.json.decode(msgspec.json.encode(summary.rejections_by_reason)) == rejections


async def test_a_drawdown_halts_trading_and_cancels_the_working_orders(tmp_path: Path) -> None:
    """Same script, no daily-loss limit, a 0.2 % drawdown limit: the churn's fees (about 0.28 %
    of the account) halt trading; the passive orders left working are cancelled at the venue."""
    risk = {k: v for k, v in CONFIG["risk"].items() if k != "daily_loss_limit"} | {"max_drawdown_pct": "0.2"}
    config = parse_config({**CONFIG, "risk": risk}, "test")
    journal = tmp_path / "journal.db"
    summary = await run_replay_session(
        config, SessionOptions(strategy="fat-finger", synthetic=3000, journal=journal)
    )
    assert summary.trading_state == TradingState.HALTED.value
    assert summary.rejections_by_reason.get("TRADING_HALTED", 0) > 0
    assert "TRADING_REDUCING" not in summary.rejections_by_reason
    states: list[TradingStateChanged] = []
    canceled_after_halt = 0
    async with await Journal.open_readonly(journal, LiveClock()) as reader:
        async for entry in reader.read():
            record = entry.record
            if isinstance(record, TradingStateChanged):
                states.append(record)
            elif isinstance(record, OrderUpdate) and record.status is OrderStatus.CANCELED and states:
                canceled_after_halt += states[-1].state is TradingState.HALTED
    assert (states[-1].state, states[-1].cause) == (TradingState.HALTED, "drawdown"), states
    assert canceled_after_halt >= 1  # the passive orders the script left working
    assert "drawdown" in states[-1].reason
