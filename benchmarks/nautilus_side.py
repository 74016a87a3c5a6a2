"""The NautilusTrader side of the peer benchmark: one backtest, one JSON line on stdout.

Runs **inside** ``.bench/nautilus-venv`` (see :mod:`benchmarks.nautilus_env`), never in
Kestrel's virtualenv, and imports nothing from Kestrel: the quote generator
``simulations/synthetic.py`` (numpy only) is loaded by file path, so both sides replay the
very same seeded quotes.

The backtest, NautilusTrader 1.221.0's low-level API:

- a ``BacktestEngine`` (log level ERROR, post-run analysis off) with one simulated venue
  ``SIM`` (L1 book, MARGIN account of USD 10 bn so no order is ever refused for money,
  OMS ``NETTING`` or ``HEDGING``);
- one instrument ``SYNTH.SIM``: an ``Equity`` (price increment 0.01, size increment 1);
- the ``n`` synthetic quotes as ``QuoteTick`` objects, built with
  ``QuoteTick.from_raw_arrays_to_list`` (Cython) and added with ``add_data(sort=False)``;
- one strategy with two ``ExponentialMovingAverage`` (10 and 20, ``PriceType.MID``)
  registered for quote ticks, so Nautilus updates them before ``on_quote_tick``. Nautilus'
  EMA is Kestrel's ``EmaPair``: ``alpha = 2/(p+1)``, seeded with the first mid.

Variants (``--variant``):

- ``data``: the EMAs only, no order (Kestrel's ``ema-watch``);
- ``cross``: Kestrel's ``ema-cross`` decisions exactly: once the slow EMA is warm, on an
  upward cross of the fast EMA over the slow one a market BUY of ``--qty`` (long), on a
  downward cross a market SELL of what is held (flat); a downward cross while flat (only
  possible as the first cross) sends nothing. So one market order per cross, ≈ 45k per 1M
  quotes, and the position flips between flat and long. With NETTING the venue keeps one
  position id that is closed and reopened every round trip; with HEDGING the BUY opens a
  new position and the SELL names it (``position_id``) and closes it, so at most one
  position is ever open. (Opening a new hedging position on *every* order instead would
  leave ≈ 22k positions open at 1M quotes, each revalued on every quote: that measures
  something else.)
- ``flip`` (NETTING only): always in the market — on every cross a market order in the
  cross's direction that reverses the position (``qty`` for the first order, ``2 x qty``
  after), so the one netting position flips long/short and is never flat. Same order count
  as ``cross``; this is the shape of Nautilus' own EMA-cross examples and reproduces the
  DESIGN §11 netting baseline's slowdown (Nautilus' per-order cost grows with the events of
  the position). Kestrel's ``ema-cross`` is long/flat, so ``cross`` is the like-for-like row.

Timing: ``run_s`` is ``engine.run()`` alone (the event loop over the quotes, like Kestrel's
``wall_s``); ``setup_s`` is quote generation + ``QuoteTick`` objects + engine setup;
``import_s`` is importing ``nautilus_trader``; ``total_s`` is all of it from process start.
``ticks_per_s`` = ticks / ``run_s``. ``peak_rss_mb`` is this process' ``ru_maxrss``.

Run: ``.bench/nautilus-venv/bin/python benchmarks/nautilus_side.py --n 200000 --seed 1 --variant cross --oms netting``
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

_T0 = time.perf_counter()

SYNTHETIC = Path(__file__).resolve().parent.parent / "simulations" / "synthetic.py"


def load_synthetic(path: Path = SYNTHETIC) -> ModuleType:
    """Import ``simulations/synthetic.py`` by path (no Kestrel package on this interpreter's path)."""
    spec = importlib.util.spec_from_file_location("kestrel_synthetic", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run(n: int, seed: int, variant: str, oms: str, qty: int) -> dict[str, Any]:
    """Build and run one backtest; return the figures (see the module docstring)."""
    import numpy as np
    from nautilus_trader.backtest.config import BacktestEngineConfig  # type: ignore[import-not-found]
    from nautilus_trader.backtest.engine import BacktestEngine  # type: ignore[import-not-found]
    from nautilus_trader.config import LoggingConfig, StrategyConfig  # type: ignore[import-not-found]
    from nautilus_trader.indicators import ExponentialMovingAverage  # type: ignore[import-not-found]
    from nautilus_trader.model.currencies import USD  # type: ignore[import-not-found]
    from nautilus_trader.model.data import QuoteTick  # type: ignore[import-not-found]
    from nautilus_trader.model.enums import (  # type: ignore[import-not-found]
        AccountType,
        OmsType,
        OrderSide,
        PriceType,
        TimeInForce,
    )
    from nautilus_trader.model.identifiers import InstrumentId, Symbol, TraderId, Venue  # type: ignore[import-not-found]
    from nautilus_trader.model.instruments import Equity  # type: ignore[import-not-found]
    from nautilus_trader.model.objects import Money, Price, Quantity  # type: ignore[import-not-found]
    from nautilus_trader.trading.strategy import Strategy  # type: ignore[import-not-found]

    imported = time.perf_counter()
    synthetic = load_synthetic()

    class EmaConfig(StrategyConfig, frozen=True):  # type: ignore[misc,call-arg]
        instrument_id: InstrumentId
        trade: bool
        flip: bool
        hedging: bool
        qty: int
        fast: int = 10
        slow: int = 20

    class EmaStrategy(Strategy):  # type: ignore[misc]
        """EMA 10/20 on the mid; with ``trade`` a market order on every cross."""

        def __init__(self, config: EmaConfig) -> None:
            super().__init__(config)
            self.fast = ExponentialMovingAverage(config.fast, PriceType.MID)
            self.slow = ExponentialMovingAverage(config.slow, PriceType.MID)
            self.above: bool | None = None
            self.long = False
            self.hedging = config.hedging
            self.position_id: Any = None
            self.crosses = 0
            self.submitted = 0
            self.filled = 0

        def on_start(self) -> None:
            self.instrument = self.cache.instrument(self.config.instrument_id)
            self.quantity = Quantity.from_int(self.config.qty)
            self.flip_qty = Quantity.from_int(2 * self.config.qty)
            self.register_indicator_for_quote_ticks(self.config.instrument_id, self.fast)
            self.register_indicator_for_quote_ticks(self.config.instrument_id, self.slow)
            self.subscribe_quote_ticks(self.config.instrument_id)

        def on_quote_tick(self, tick: Any) -> None:
            if not self.slow.initialized:
                return
            above = self.fast.value > self.slow.value
            previous, self.above = self.above, above
            if previous is None or above == previous:
                return
            self.crosses += 1
            if not self.config.trade:
                return
            if self.config.flip:  # always in the market: reverse the position (2 x qty after the first order)
                side = OrderSide.BUY if above else OrderSide.SELL
                self._submit(side, None, self.flip_qty if self.submitted else None)
                return
            if above and not self.long:  # buy: opens a position
                self._submit(OrderSide.BUY, None)
                self.long = True
            elif not above and self.long:  # sell what is held: closes that position
                self._submit(OrderSide.SELL, self.position_id if self.hedging else None)
                self.long = False

        def _submit(self, side: Any, position_id: Any, quantity: Any = None) -> None:
            order = self.order_factory.market(
                instrument_id=self.config.instrument_id,
                order_side=side,
                quantity=quantity or self.quantity,
                time_in_force=TimeInForce.GTC,
            )
            self.submit_order(order, position_id=position_id)
            self.submitted += 1

        def on_position_opened(self, event: Any) -> None:
            self.position_id = event.position_id

        def on_order_filled(self, event: Any) -> None:
            self.filled += 1

    venue = Venue("SIM")
    instrument = Equity(
        instrument_id=InstrumentId(Symbol(synthetic.SYMBOL), venue),
        raw_symbol=Symbol(synthetic.SYMBOL),
        currency=USD,
        price_precision=2,
        price_increment=Price.from_str(synthetic.PRICE_INCREMENT),
        lot_size=Quantity.from_int(1),
        ts_event=0,
        ts_init=0,
    )
    quotes = synthetic.random_walk_quotes(n, seed)
    ts = quotes.ts_ns.astype(np.uint64)
    ticks = QuoteTick.from_raw_arrays_to_list(
        instrument.id,
        2,
        0,
        quotes.bid_cents.astype(np.float64) / 100.0,  # float -> Price(value, 2): exact to the cent
        quotes.ask_cents.astype(np.float64) / 100.0,
        quotes.bid_size.astype(np.float64),
        quotes.ask_size.astype(np.float64),
        ts,
        ts,
    )
    del quotes, ts

    engine = BacktestEngine(
        config=BacktestEngineConfig(
            trader_id=TraderId("BENCH-001"),
            logging=LoggingConfig(log_level="ERROR"),
            run_analysis=False,
        )
    )
    engine.add_venue(
        venue=venue,
        oms_type=OmsType.NETTING if oms == "netting" else OmsType.HEDGING,
        account_type=AccountType.MARGIN,
        starting_balances=[Money(10_000_000_000, USD)],
        base_currency=USD,
        default_leverage=Decimal(1),
    )
    engine.add_instrument(instrument)
    engine.add_data(ticks, sort=False)  # already in time order
    del ticks
    strategy = EmaStrategy(
        EmaConfig(
            instrument_id=instrument.id,
            trade=variant != "data",
            flip=variant == "flip",
            hedging=oms == "hedging",
            qty=qty,
        )
    )
    engine.add_strategy(strategy)

    set_up = time.perf_counter()
    engine.run()
    ran = time.perf_counter()
    cache = engine.cache
    result = {
        "side": "nautilus",
        "nautilus_version": _version(),
        "variant": variant,
        "oms": oms,
        "n": n,
        "seed": seed,
        "ticks": n,
        "crosses": strategy.crosses,
        "orders": strategy.submitted,
        "fills": strategy.filled,
        "orders_in_cache": cache.orders_total_count(),
        "positions": cache.positions_total_count(),
        "run_s": round(ran - set_up, 3),
        "wall_s": round(ran - set_up, 3),  # the name Kestrel's summary uses for the same span
        "setup_s": round(set_up - imported, 3),
        "import_s": round(imported - _T0, 3),
        "ticks_per_s": round(n / (ran - set_up), 1) if ran > set_up else 0.0,
    }
    engine.dispose()
    result["total_s"] = round(time.perf_counter() - _T0, 3)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux
    return result


def _version() -> str:
    from importlib.metadata import version

    return version("nautilus_trader")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=200_000, help="number of quotes")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--variant", choices=("data", "cross", "flip"), default="cross")
    parser.add_argument("--oms", choices=("netting", "hedging"), default="netting")
    parser.add_argument("--qty", type=int, default=10, help="shares per order (Kestrel's ema-cross default)")
    args = parser.parse_args(argv)
    if args.n < 1 or args.qty < 1:
        parser.error("--n >= 1 and --qty >= 1")
    if args.variant == "flip" and args.oms != "netting":
        parser.error("--variant flip is a NETTING workload (HEDGING would open a new position per order)")
    print(json.dumps(run(args.n, args.seed, args.variant, args.oms, args.qty)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
