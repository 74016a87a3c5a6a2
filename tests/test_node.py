"""The composition root under failure: an engine whose supervisor gives up stops cleanly, non-zero."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from actors.strategies import STRATEGIES
from actors.strategies.base import Strategy
from engine.clock import LiveClock
from engine.config import parse_config
from engine.errors import SupervisorGaveUp
from engine.journal import Journal
from engine.messages import BestBidOffer, OrderIntent, OrderSubmitting
from kestrel import cli
from kestrel.node import SessionOptions, run_replay_session
from tests.helpers import random_walk_day


class AlwaysBroken(Strategy):
    def __init__(self, name: str, params: Mapping[str, Any]) -> None:
        self.name = name

    def on_bbo(self, bbo: BestBidOffer, now_ns: int) -> list[OrderIntent]:
        raise ZeroDivisionError("every quote breaks this strategy")


async def test_a_crash_loop_makes_the_root_give_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(STRATEGIES, "broken", AlwaysBroken)
    files = random_walk_day(tmp_path, quotes=200)
    config = parse_config(
        {"data": {"files": [str(f) for f in files]}, "strategy": {"name": "broken"}}, "test"
    )
    with pytest.raises(SupervisorGaveUp, match="gave up: more than 5 restarts"):
        await run_replay_session(config, SessionOptions())


def test_the_cli_exits_3_with_one_line_and_the_tracebacks_in_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(STRATEGIES, "broken", AlwaysBroken)
    files = random_walk_day(tmp_path, quotes=200)
    config = tmp_path / "k.toml"
    config.write_text(
        f'[data]\nfiles = {orjson.dumps([str(f) for f in files]).decode()}\n[strategy]\nname = "broken"\n'
    )
    log = tmp_path / "k.jsonl"
    assert cli.main(["replay", "--config", str(config), "--log", str(log)]) == cli.EXIT_GAVE_UP
    err = capsys.readouterr().err
    assert "kestrel: error: engine stopped: supervisor 'root' gave up" in err and "Traceback" not in err
    lines = [orjson.loads(line) for line in log.read_text().splitlines()]
    crashes = [line for line in lines if line["event"] == "actor_crashed"]
    assert len(crashes) == 6  # the first start and five restarts
    assert all("ZeroDivisionError" in c["exception"] and c["actor"] == "strategy" for c in crashes)
    assert all(c["msg_type"] == "BestBidOffer" and c["symbol"] == "TEST" for c in crashes)
    assert any(line["event"] == "supervisor_gave_up" for line in lines)


def test_a_progress_line_is_drawn_on_a_terminal(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, quotes=6000)
    config = tmp_path / "k.toml"
    config.write_text(f"[data]\nfiles = {orjson.dumps([str(f) for f in files]).decode()}\n")
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "kestrel.cli",
                "replay",
                "--config",
                str(config),
                "--log",
                str(tmp_path / "l.jsonl"),
            ],
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=60,
        )
        os.close(terminal)
        terminal = -1
        chunks = []
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        if terminal >= 0:
            os.close(terminal)
        os.close(controller)
    assert done.returncode == 0
    shown = b"".join(chunks).decode(errors="replace")
    assert "\r[kestrel]" in shown and "ticks" in shown and "sim time 2024-01-02" in shown
    assert b"Kestrel replay session" in done.stdout


async def test_a_replay_on_a_journal_recovers_from_it_and_never_reuses_an_id(tmp_path: Path) -> None:
    files = random_walk_day(tmp_path, quotes=1500, seed=4)
    config = parse_config(
        {"data": {"files": [str(f) for f in files]}, "strategy": {"params": {"fast": 3, "slow": 7}}}, "test"
    )
    journal = tmp_path / "replay.db"
    first = await run_replay_session(config, SessionOptions(journal=journal))
    second = await run_replay_session(config, SessionOptions(journal=journal))
    assert first.orders > 5 and second.orders > 5
    assert first.recovery is not None and second.recovery is not None
    assert second.recovery.journal_seq > first.recovery.journal_seq  # the second run started from the first's book
    assert second.journal == str(journal)
    async with await Journal.open_readonly(journal, LiveClock()) as reader:
        submitted = [e.record async for e in reader.read() if isinstance(e.record, OrderSubmitting)]
    client_ids = [r.order.client_order_id for r in submitted]
    intent_ids = [r.order.intent_id for r in submitted]
    assert len(client_ids) == first.orders + second.orders
    assert len(set(client_ids)) == len(client_ids)
    assert len(set(intent_ids)) == len(intent_ids)  # intent ids carry the boot number
