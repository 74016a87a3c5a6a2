"""Market-data provider failover end to end: a real ``kestrel run`` against the in-process simulator.

The engine is a child process (``kestrel run --venue-url``, started as chaos runs start it)
talking to the simulator over sockets on 127.0.0.1. Its config
(:func:`simulations.engine_config.write_engine_config` with ``failover=True``) prices IBM
from ``alpaca-iex`` with ``alpaca-sip`` as the fallback, so the live tree runs two feed
actors, one per feed. The test silences iex at the simulator (``Faults.silence_feed``: the
socket stays up and answers pings, no quotes come) and reads the engine's log and journal:

- pricing switches IBM to alpaca-sip about one SLA after iex went quiet, and the engine
  trades meanwhile (orders journaled after the switch fill while sip is the only source);
- after the silence, it switches back to alpaca-iex, and not before iex has been fresh
  for ``failback_s``;
- the ``--json`` summary counts the failovers and failbacks the log shows.

A live session given a provider nothing can feed is refused at start-up (a ConfigError,
exit 2) before it opens a simulator or a journal.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapters.alpaca_sim.cli import SimulatorConfig, start_simulator
from engine.clock import LiveClock
from simulations.engine_config import FAILBACK_S, SLA_S, write_engine_config
from simulations.engine_process import CLI, EngineKeys, EngineProcess
from simulations.journal_probe import journal_max_seq, traded_since
from simulations.lean_feed import write_lean_zip

KEYS = EngineKeys("PKFAILOVERTEST01", "failover-secret-0001")
SILENCE_S = 4.0
WAIT_S = 12.0
TOLERANCE_S = 0.25
"""The test and the engine read the same wall clock; this covers log and polling delays."""

Event = dict[str, Any]


def _zigzag_session(folder: Path, quotes: int = 3000) -> list[Path]:
    """IBM around $180: a quote pair every 100 ms (5 minutes, never quiet), the mid 5 cents up
    three times, then down three times, over and over.

    Not :func:`~simulations.lean_feed.chaos_session`: its quiet spells and slow swings make
    EMA 2/4 trade every few seconds, so a few seconds on the secondary may see no order.
    Here it crosses every three quotes, and the engine trades several times a second
    whichever provider prices IBM.
    """
    mid = 1_800_000  # $180.0000 (LEAN prices are dollars x 10,000)
    ms = 34_200_000  # 09:30 New York
    quote_rows: list[tuple[object, ...]] = []
    trade_rows: list[tuple[object, ...]] = []
    for i in range(quotes):
        mid += 500 if (i // 3) % 2 == 0 else -500
        quote_rows.append((ms, mid - 100, 500, 0, 0, "P", 1, 0))
        quote_rows.append((ms, 0, 0, mid + 100, 500, "N", 1, 0))
        if i % 10 == 0:
            trade_rows.append((ms, mid, 100, "D", 0, 0))
        ms += 100
    day = folder / "ibm"
    return [
        write_lean_zip(day / "20240102_quote.zip", quote_rows),
        write_lean_zip(day / "20240102_trade.zip", trade_rows),
    ]


def _at(event: Event) -> float:
    return dt.datetime.fromisoformat(event["ts"]).timestamp()


def _now() -> float:
    return dt.datetime.now(dt.UTC).timestamp()


def _switch_to(provider: str) -> Callable[[Event], bool]:
    return lambda e: e.get("event") == "md_provider_switched" and e.get("to_provider") == provider


def _switches(events: list[Event], provider: str) -> int:
    return sum(1 for e in events if _switch_to(provider)(e))


async def _wait_for(engine: EngineProcess, match: Callable[[Event], bool], what: str, after: int = 0) -> int:
    """Poll the engine's log until an event after index ``after`` matches; its index."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        events = await asyncio.to_thread(engine.events)
        for index in range(after, len(events)):
            if match(events[index]):
                return index
        if not engine.running:
            pytest.fail(f"the engine stopped waiting for {what}: {engine.describe()}")
        if loop.time() > deadline:
            pytest.fail(f"no {what} within {WAIT_S} s: {engine.describe()}")
        await asyncio.sleep(0.05)


async def test_a_silent_primary_fails_over_to_sip_keeps_trading_and_fails_back_after_failback_s(
    tmp_path: Path,
) -> None:
    feed = await asyncio.to_thread(_zigzag_session, tmp_path / "feed")
    sim = await start_simulator(
        SimulatorConfig(feed_files=feed, speed=1.0, seed=5, key_id=KEYS.key_id, secret_key=KEYS.secret_key),
        LiveClock(),
    )
    config = write_engine_config(tmp_path / "engine.toml", run_id="failover", qty=100, failover=True)
    journal = tmp_path / "journal.db"
    engine = await EngineProcess.start("engine", tmp_path, sim.url, journal, config, KEYS)
    try:
        hub = sim.hub
        assert hub is not None
        await _wait_for(engine, lambda e: e.get("event") == "md_fresh" and e.get("symbol") == "IBM", "IBM priced")
        # At start-up the secondary may speak first (pricing then starts on it and fails back
        # after failback_s): wait until IBM is priced from its primary.
        while True:
            events = await asyncio.to_thread(engine.events)
            switched = [e for e in events if e.get("event") == "md_provider_switched"]
            if not switched or switched[-1]["to_provider"] == "alpaca-iex":
                break
            await _wait_for(engine, _switch_to("alpaca-iex"), "the start-up failback", after=len(events))
        assert hub.subscribers("quotes", "IBM", "iex") == 1 and hub.subscribers("quotes", "IBM", "sip") == 1
        start = len(events)

        silenced_at = _now()
        assert sim.faults.silence_feed("iex", SILENCE_S) == 1
        over = await _wait_for(engine, _switch_to("alpaca-sip"), "a failover to alpaca-sip", after=start)
        events = await asyncio.to_thread(engine.events)
        switch = events[over]
        assert (switch["symbol"], switch["from_provider"]) == ("IBM", "alpaca-iex")
        # Due one SLA after the last iex quote (at most one quote interval before the silence);
        # the upper bound leaves room for a loaded machine, and is still well inside the silence.
        assert SLA_S - TOLERANCE_S <= _at(switch) - silenced_at <= SLA_S + 1.0, switch
        traded_before = await asyncio.to_thread(journal_max_seq, journal)

        back = await _wait_for(engine, _switch_to("alpaca-iex"), "a failback to alpaca-iex", after=over)
        events = await asyncio.to_thread(engine.events)
        failback = events[back]
        assert failback["from_provider"] == "alpaca-sip"
        assert _at(failback) - (silenced_at + SILENCE_S) >= FAILBACK_S - TOLERANCE_S, failback
        # Orders sent while sip priced IBM reached the venue and filled: trading went on.
        assert await asyncio.to_thread(traded_since, journal, traded_before) >= 1
        switches = [e for e in events[start:] if e.get("event") == "md_provider_switched"]
        assert [e["to_provider"] for e in switches] == ["alpaca-sip", "alpaca-iex"]  # over and back, no flapping

        assert await engine.terminate() == 0, engine.describe()
        summary = orjson.loads(await asyncio.to_thread(engine.stdout.read_bytes))
        events = await asyncio.to_thread(engine.events)
        assert summary["provider_failovers"] == _switches(events, "alpaca-sip") >= 1
        assert summary["provider_failbacks"] == _switches(events, "alpaca-iex") >= 1
        assert summary["actor_crashes"] == 0
        assert sim.faults.injected["provider_silent"] == 1
        assert hub.counters.frames_dropped_silenced > 0
    finally:
        await engine.kill()
        await sim.stop()


def test_a_provider_nothing_can_feed_is_refused_at_start_up(tmp_path: Path) -> None:
    config = write_engine_config(tmp_path / "engine.toml", run_id="failover", failover=True)
    config.write_text(config.read_text().replace('"alpaca-sip"', '"polygon"'))
    done = subprocess.run(
        [*CLI, "run", "--config", str(config), "--journal", str(tmp_path / "journal.db")],
        capture_output=True, timeout=60, cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert b"pricing.providers.IBM: unknown provider 'polygon'" in done.stderr, done.stderr
    assert not (tmp_path / "journal.db").exists()  # refused before anything was opened
