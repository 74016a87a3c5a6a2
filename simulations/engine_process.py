"""A ``kestrel run`` child process talking to a simulator: what chaos and load runs start.

The engine runs as a real process (so ``kill -9`` is a real kill and its memory is its
own) with ``--venue-url``, a journal, a config and a JSON log; the parent reads the log
back incrementally, off its event loop, to see what the engine did.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

__all__ = ["CLI", "EngineKeys", "EngineProcess"]

CLI: Final = [sys.executable, "-m", "kestrel.cli"]


@dataclass(frozen=True)
class EngineKeys:
    """The key pair the engine presents to the simulator (test keys, never real ones)."""

    key_id: str
    secret_key: str

    def __repr__(self) -> str:
        return f"EngineKeys(key_id={self.key_id!r}, secret_key=***)"


class EngineProcess:
    """One ``kestrel run`` child; its JSON log is read back for what it did."""

    def __init__(
        self, name: str, proc: asyncio.subprocess.Process, log: Path, stdout: Path, stderr: Path, armed: bool
    ) -> None:
        self.name, self.proc, self.log, self.stdout, self.stderr, self.armed = name, proc, log, stdout, stderr, armed
        self.killed_by_us = False
        self._events: list[dict[str, Any]] = []
        self._read_to = 0

    @classmethod
    async def start(
        cls,
        name: str,
        workdir: Path,
        url: str,
        journal: Path,
        config: Path,
        keys: EngineKeys,
        extra_env: dict[str, str] | None = None,
        args: Sequence[str] = (),
    ) -> EngineProcess:
        """Start ``kestrel run --venue-url URL`` with ``extra_env`` (``KESTREL_FAULTS`` arms faults)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREL_")}
        env |= {"APCA_API_KEY_ID": keys.key_id, "APCA_API_SECRET_KEY": keys.secret_key, **(extra_env or {})}
        log, out, err = workdir / f"{name}.jsonl", workdir / f"{name}.stdout", workdir / f"{name}.stderr"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *CLI, "run", "--venue-url", url, "--journal", str(journal), "--config", str(config),
                "--log", str(log), "--json", *args,
                stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, start_new_session=True,
            )
        return cls(name, proc, log, out, err, armed=bool(extra_env))

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def events(self) -> list[dict[str, Any]]:
        """Every log event so far. Only the bytes written since the last call are read and
        parsed, up to the last complete line (the engine may be mid-line)."""
        if self.log.exists():
            with self.log.open("rb") as file:
                file.seek(self._read_to)
                chunk = file.read()
            complete = chunk.rfind(b"\n") + 1
            self._read_to += complete
            for line in chunk[:complete].splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):  # a line cut short by SIGKILL
                    self._events.append(orjson.loads(line))
        return self._events

    async def has_event(self, name: str) -> bool:
        """Whether the log has an event called ``name`` (read in a worker thread, off the loop)."""
        events = await asyncio.to_thread(self.events)
        return any(e.get("event") == name for e in events)

    def describe(self) -> str:
        tail = [e.get("event") for e in self.events()[-12:]]
        err = self.stderr.read_text(errors="replace")[-600:] if self.stderr.exists() else ""
        return f"{self.name} exit {self.proc.returncode}; last events {tail}; stderr {err!r}"

    async def kill(self) -> None:
        if self.running:
            self.killed_by_us = True
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        await self.proc.wait()

    async def terminate(self, timeout_s: float = 30.0) -> int:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            await self.kill()
            return -signal.SIGKILL
