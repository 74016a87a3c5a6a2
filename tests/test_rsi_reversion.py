"""The ``rsi-reversion`` sample strategy: its parameters, its declared features, its signals,
and that it trades in replay on the bundled IBM day and on the shared BAC day."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from actors.features import FeatureSpec, pipeline_hash
from actors.strategies import STRATEGIES
from actors.strategies.rsi_reversion import RsiReversion
from engine import topics
from engine.config import parse_config
from engine.errors import ConfigError
from engine.messages import OrderIntent, Side
from kestrel.node import SessionOptions, run_replay_session
from tests.test_strategy_api import T0, Host, bar, fill

S = 1_000_000_000
BAC = Path("/work/shared/data/us-equity-ticks/bac")


def test_selectable_by_name_with_validated_params() -> None:
    assert STRATEGIES["rsi-reversion"] == RsiReversion.from_params
    strategy = RsiReversion.from_params("rsi-reversion", {"period": 7, "low": 25, "high": 75, "qty": "3"})
    assert strategy.params.qty == Decimal(3) and strategy.params.period == 7
    with pytest.raises(ConfigError, match=r"strategy\.params: need 0 <= low < high <= 100"):
        RsiReversion.from_params("rsi-reversion", {"low": 80, "high": 70})
    with pytest.raises(ConfigError, match=r"strategy\.params\.input"):
        RsiReversion.from_params("rsi-reversion", {"input": "volume"})
    with pytest.raises(ConfigError, match="unknown field nope"):
        RsiReversion.from_params("rsi-reversion", {"nope": 1})


def test_declared_features_follow_the_params_and_so_does_the_pipeline_hash() -> None:
    default = RsiReversion.from_params("rsi-reversion", {})
    assert default.features == (FeatureSpec(name="rsi", indicator="rsi", input="bar_close", params={"period": 14}),)
    trend = RsiReversion.from_params("rsi-reversion", {"input": "mid", "trend": 50})
    assert [(f.name, f.indicator, f.input, f.params) for f in trend.features] == [
        ("rsi", "rsi", "mid", {"period": 14}),
        ("rsi_trend_ema", "ema", "mid", {"period": 50}),
    ]
    hashes = {pipeline_hash(s.features) for s in (default, trend, RsiReversion.from_params("r", {"period": 10}))}
    assert len(hashes) == 3


async def test_buys_on_entering_oversold_and_goes_flat_on_entering_overbought() -> None:
    closes = ["10.00", "9.90", "9.80", "9.70", "9.60", "9.65", "9.55", "9.70", "9.90", "10.10", "10.30", "10.20"]
    build = lambda: RsiReversion.from_params("rsi-reversion", {"period": 3, "qty": "5"})  # noqa: E731
    async with Host(build) as host:
        for n, close in enumerate(closes[:5]):
            end = T0 + (n + 1) * 60 * S
            await host.at(end, topics.MD_BAR, bar(end, close))
        # Three falls in a row: RSI 0, oversold: buy 5 (once, though it stays oversold).
        intents: list[OrderIntent] = host.intents()
        assert [(i.side, i.qty) for i in intents] == [(Side.BUY, Decimal(5))]
        await host.at(T0 + 330 * S, topics.ORDER_FILL, fill(intents[0], "5", 1))
        for n, close in enumerate(closes[5:], start=5):
            end = T0 + (n + 1) * 60 * S
            await host.at(end, topics.MD_BAR, bar(end, close))
        intents = host.intents()
        assert [(i.side, i.qty) for i in intents] == [(Side.BUY, Decimal(5)), (Side.SELL, Decimal(5))]
        buy, sell = host.signals()
        assert buy.features["zone"] == "low" and float(buy.features["rsi"]) < 30
        assert sell.features["zone"] == "high" and float(sell.features["rsi"]) > 70
        assert buy.trigger == "Bar" and buy.ts_trigger == T0 + 4 * 60 * S  # the bar's end
        assert sell.features["position"] == "5" and sell.features["target_qty"] == "0"
        assert buy.features["price"] == "9.70" and buy.features["rsi_period"] == "3"


def _replay(*files: Path) -> dict[str, object]:
    config = parse_config({"strategy": {"name": "rsi-reversion"}}, "test")
    summary = asyncio.run(run_replay_session(config, SessionOptions(inputs=tuple(files))))
    return {
        "orders": summary.orders,
        "fills": summary.fills,
        "crashes": summary.actor_crashes,
        "pipeline_hash": summary.manifest.pipeline_hash if summary.manifest else None,
    }


def test_trades_in_replay_on_the_bundled_ibm_day() -> None:
    result = _replay()
    assert result["crashes"] == 0
    assert isinstance(result["orders"], int) and result["orders"] > 0
    assert isinstance(result["fills"], int) and result["fills"] > 0
    assert result["pipeline_hash"] == pipeline_hash(RsiReversion.from_params("rsi-reversion", {}).features)


@pytest.mark.skipif(not (BAC / "20131007_quote.zip").exists(), reason="the shared BAC recording is not here")
def test_trades_in_replay_on_bac_2013_10_07() -> None:
    result = _replay(BAC / "20131007_quote.zip", BAC / "20131007_trade.zip")
    assert result["crashes"] == 0
    assert isinstance(result["orders"], int) and result["orders"] > 0
    assert isinstance(result["fills"], int) and result["fills"] > 0
