"""The data-only ``ema-watch`` strategy: its EMAs match a numpy reference, and it never trades."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import numpy.typing as npt
import pytest

from actors.strategies import STRATEGIES
from actors.strategies.ema_cross import EmaCross, EmaCrossParams
from actors.strategies.ema_watch import EmaWatch, EmaWatchParams
from engine.errors import ConfigError
from engine.messages import BestBidOffer, Fill
from simulations.synthetic import SYMBOL, random_walk_quotes

N = 3_000
SEED = 7


def _bbos(n: int, seed: int, symbol: str = SYMBOL) -> list[BestBidOffer]:
    quotes = random_walk_quotes(n, seed)
    return [
        BestBidOffer(
            symbol=symbol,
            bid_price=Decimal(int(quotes.bid_cents[i])) / 100,
            bid_size=Decimal(int(quotes.bid_size[i])),
            ask_price=Decimal(int(quotes.ask_cents[i])) / 100,
            ask_size=Decimal(int(quotes.ask_size[i])),
            provider="synthetic",
            ts_event=int(quotes.ts_ns[i]),
            ts_init=int(quotes.ts_ns[i]),
        )
        for i in range(n)
    ]


def _reference_ema(values: npt.NDArray[np.float64], period: int) -> npt.NDArray[np.float64]:
    """EMA in closed form: ``ema[n] = (1-a)^n x[0] + sum_{k=1..n} a (1-a)^(n-k) x[k]``, as one matrix product.

    Independent of the recursive update under test (no loop, different rounding path).
    """
    alpha = 2.0 / (period + 1)
    n = values.shape[0]
    lag = np.arange(n)[:, None] - np.arange(n)[None, :]  # n - k
    weights = np.where(lag >= 0, alpha * (1 - alpha) ** np.maximum(lag, 0), 0.0)
    weights[:, 0] = (1 - alpha) ** np.arange(n)  # the seed: the first value carries the remaining weight
    return np.asarray(weights @ values, dtype=np.float64)


def test_emas_match_a_numpy_reference_on_the_synthetic_stream() -> None:
    quotes = random_walk_quotes(N, SEED)
    mids = (quotes.bid_cents + quotes.ask_cents).astype(np.float64) / 200.0
    strategy = EmaWatch("ema-watch", EmaWatchParams())
    fast, slow = np.empty(N), np.empty(N)
    for i, bbo in enumerate(_bbos(N, SEED)):
        assert strategy.on_bbo(bbo, bbo.ts_init) == []
        fast[i], slow[i] = strategy.emas[SYMBOL].fast, strategy.emas[SYMBOL].slow
    np.testing.assert_allclose(fast, _reference_ema(mids, 10), rtol=1e-12, atol=0)
    np.testing.assert_allclose(slow, _reference_ema(mids, 20), rtol=1e-12, atol=0)
    assert strategy.emas[SYMBOL].count == N

    # Crosses counted from the first tick both EMAs are warm (index slow - 1), like ema-cross.
    above = _reference_ema(mids, 10)[19:] > _reference_ema(mids, 20)[19:]
    expected_crosses = int(np.count_nonzero(above[1:] != above[:-1]))
    assert expected_crosses > 50  # the walk does cross, so the count means something
    assert strategy.crosses == expected_crosses


def test_it_sees_the_crosses_ema_cross_trades_on_and_never_sends_an_intent() -> None:
    watch = EmaWatch("ema-watch", EmaWatchParams())
    cross = EmaCross("ema-cross", EmaCrossParams())
    intents = 0
    for bbo in _bbos(N, SEED):
        assert watch.on_bbo(bbo, 0) == []
        for intent in cross.on_bbo(bbo, 0):  # filled at once, so ema-cross is never blocked by a pending order
            intents += 1
            fill = Fill(
                client_order_id=f"k-{intents}", venue_order_id=f"v-{intents}", execution_id=f"x-{intents}",
                intent_id=intent.intent_id, strategy="ema-cross", symbol=intent.symbol, side=intent.side,
                qty=intent.qty, price=bbo.ask_price, fee=Decimal(0), ts_event=0, ts_recv=0,
            )
            cross.on_fill(fill, 0)
            assert watch.on_fill(fill, 0) == []
            cross._states[intent.symbol].pending = None
    assert cross._states[SYMBOL].ema.fast == watch.emas[SYMBOL].fast  # the same EmaPair maths
    # ema-cross starts flat and long-only: it skips a first downward cross, then trades every cross.
    assert watch.crosses - 1 <= intents <= watch.crosses


def test_symbol_filter_and_registration() -> None:
    strategy = STRATEGIES["ema-watch"]("ema-watch", {"symbol": "OTHER"})
    assert isinstance(strategy, EmaWatch)
    for bbo in _bbos(100, SEED):
        assert strategy.on_bbo(bbo, 0) == []
    assert strategy.emas == {}
    with pytest.raises(ConfigError):
        STRATEGIES["ema-watch"]("ema-watch", {"fast": 20, "slow": 10})
    with pytest.raises(ConfigError):
        STRATEGIES["ema-watch"]("ema-watch", {"qty": 10})
