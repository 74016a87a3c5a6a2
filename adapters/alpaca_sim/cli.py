"""Running the Alpaca venue simulator: in-process (:func:`start_simulator`) or as a service (:func:`serve`).

One simulator = one :class:`~adapters.alpaca_sim.state.VenueState` (the account and its
orders), an aiohttp server on ``host:port`` (REST v2, ``/stream``, ``/v2/{feed}``), the
market-data hub and, when recording files are given, a :class:`FeedPlayer` replaying
them. Port 0 picks a free port; :attr:`RunningSimulator.url` says which.

Keys: ``SimulatorConfig`` takes ``key_id``/``secret_key`` from the environment
(``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``) when set, else the documented defaults
``kestrel-sim-key`` / ``kestrel-sim-secret``. The secret is registered with the log
redaction (:class:`engine.secrets.Secret`) and never shown by ``repr``.

Faults: :attr:`RunningSimulator.faults` (``state.py``) plus the server-restart fault
:meth:`RunningSimulator.restart_server` (built from :meth:`~RunningSimulator.stop_serving`
and :meth:`~RunningSimulator.start_serving`): the listening socket closes and every
connection (websockets and keep-alive HTTP) is aborted, so clients get connection
refused; then the server listens again on the same host and port with the venue's state
(account, orders, positions, feed) intact. The venue keeps running while it is down.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Final

import msgspec
from aiohttp import web

from adapters.alpaca_sim.feed import FeedPlayer
from adapters.alpaca_sim.market_data import MarketDataHub
from adapters.alpaca_sim.server import TRADE_HUB, build_app, make_authorizer
from adapters.alpaca_sim.state import Faults, VenueSettings, VenueState
from adapters.alpaca_sim.trade_stream import TradeStreamHub
from adapters.lean_ticks import symbol_for
from engine.clock import Clock, LiveClock
from engine.logs import get_logger
from engine.secrets import REDACTED, Secret

DEFAULT_KEY_ID: Final = "kestrel-sim-key"
DEFAULT_SECRET_KEY: Final = "kestrel-sim-secret"

log = get_logger(actor="alpaca-sim")


def default_key_id() -> str:
    return os.environ.get("APCA_API_KEY_ID") or DEFAULT_KEY_ID


def default_secret_key() -> str:
    return os.environ.get("APCA_API_SECRET_KEY") or DEFAULT_SECRET_KEY


class SimulatorConfig(msgspec.Struct, kw_only=True):
    """Everything a simulator run needs; every field has a default.

    ``speed``: replay speed (× real time), None = as fast as possible. Latencies are
    ``(lo, hi)`` seconds drawn uniformly from the seeded generator. ``exit_when_done``:
    :func:`serve` returns once the recording has been played.
    ``feed_files`` are LEAN tick zips; decoding this struct from JSON/TOML needs a
    ``dec_hook`` that builds :class:`~pathlib.Path` from ``str``.
    """

    host: str = "127.0.0.1"
    port: int = 0
    feed_files: list[Path] = msgspec.field(default_factory=list)
    speed: float | None = 1.0
    key_id: str = msgspec.field(default_factory=default_key_id)
    secret_key: str = msgspec.field(default_factory=default_secret_key)
    seed: int = 0
    symbols: tuple[str, ...] = ()
    """Tradable symbols besides the feed's and ``FAKEPACA`` (they have no market until quoted)."""
    starting_cash: Decimal = Decimal(100000)
    non_shortable: tuple[str, ...] = ()
    shorting_enabled: bool = True
    buying_power_multiplier: Decimal = Decimal(1)
    ack_latency_s: tuple[float, float] = (0.001, 0.005)
    fill_latency_s: tuple[float, float] = (0.001, 0.005)
    emit_pending_events: bool = False
    holidays: tuple[str, ...] = ()
    rate_limit_per_minute: int = 200
    stream_queue_limit: int = 1024
    exit_when_done: bool = False
    expire_day_orders_at_end: bool = True
    market_data: bool = True
    hold_feed: bool = False
    """Do not start replaying until :meth:`RunningSimulator.start_feed` (the embedded demo
    waits for its engine to subscribe, so no quote is played to nobody)."""
    """Serve the market-data websocket (``/v2/{feed}``)."""

    def __repr__(self) -> str:
        fields = {f: getattr(self, f) for f in self.__struct_fields__}
        fields["secret_key"] = REDACTED
        return "SimulatorConfig(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"

    def venue_settings(self) -> VenueSettings:
        return VenueSettings(
            starting_cash=self.starting_cash,
            symbols=tuple(
                sorted({symbol_for(path, None) for path in self.feed_files} | {s.upper() for s in self.symbols})
            ),
            non_shortable=self.non_shortable,
            shorting_enabled=self.shorting_enabled,
            buying_power_multiplier=self.buying_power_multiplier,
            ack_latency_s=self.ack_latency_s,
            fill_latency_s=self.fill_latency_s,
            emit_pending_events=self.emit_pending_events,
            holidays=self.holidays,
        )


_OS_CLOCK: Final = LiveClock()
"""Real time, for waiting on the operating system (a port to be free) whatever the venue's clock."""


class RunningSimulator:
    """A started simulator: its address, state, feed player and fault hooks."""

    def __init__(
        self,
        url: str,
        state: VenueState,
        player: FeedPlayer | None,
        hub: MarketDataHub | None,
        runner: web.AppRunner,
        player_task: asyncio.Task[None] | None,
        site: web.TCPSite | None = None,
        listen_host: str | None = None,
    ) -> None:
        self.url = url
        """``http://HOST:PORT`` (the REST base, without ``/v2``)."""
        self.stream_url = url.replace("http://", "ws://", 1) + "/stream"
        self.state = state
        self.player = player
        self.hub = hub
        self.player_task = player_task
        self.trade_hub: TradeStreamHub = runner.app[TRADE_HUB]
        self._runner = runner
        self._site = site
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self._host = listen_host or host
        """What :meth:`start_serving` binds (the configured host, e.g. ``localhost``)."""
        self._port = int(port)
        self._stopped = False

    @property
    def serving(self) -> bool:
        """Listening for connections (False between :meth:`stop_serving` and :meth:`start_serving`)."""
        return self._site is not None

    async def stop_serving(self) -> None:
        """Go down like a crashed gateway: close the listening socket (new connections are
        refused) and abort every open connection — both websocket kinds and keep-alive HTTP
        connections, in-flight requests included. The venue state and the feed keep
        running. Idempotent."""
        site, self._site = self._site, None
        if site is None:
            return
        await site.stop()
        self.trade_hub.disconnect_all()
        if self.hub is not None:
            await self.hub.disconnect_all()
        server = self._runner.server
        if server is not None:
            for handler in server.connections:
                transport = handler.transport
                if transport is not None:
                    transport.abort()
        log.info("simulator_down", url=self.url)

    async def start_serving(self, attempts: int = 50) -> None:
        """Listen again on the same host and port (after :meth:`stop_serving`). Idempotent.

        The port is bound with ``SO_REUSEADDR`` (asyncio's default on POSIX), so the
        connections just aborted do not block it; if the port is still busy (another
        process took it meanwhile) it retries every 20 ms of real time, ``attempts`` times,
        then raises the ``OSError``.
        """
        if self._stopped:
            raise RuntimeError("the simulator was stopped")
        if self._site is not None:
            return
        for attempt in range(attempts):
            site = web.TCPSite(self._runner, self._host, self._port)
            try:
                await site.start()
            except OSError as exc:
                await site.stop()
                if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                    raise
                await _OS_CLOCK.sleep(0.02)  # waiting on the OS, not on the engine clock
                continue
            self._site = site
            log.info("simulator_up", url=self.url)
            return

    async def restart_server(self, downtime_s: float = 0.0) -> None:
        """The server-restart fault (counted as ``server_restart``): :meth:`stop_serving`,
        wait ``downtime_s`` on the engine clock (clients meanwhile get connection refused),
        :meth:`start_serving` on the same port. Orders, positions and cash are kept."""
        self.faults.count("server_restart")
        await self.stop_serving()
        if downtime_s > 0:
            await self.state.clock.sleep(downtime_s)
        await self.start_serving()

    def start_feed(self) -> None:
        """Start replaying the recording (once; a simulator built with ``hold_feed``)."""
        if self.player is None:
            raise RuntimeError("this simulator has no recording to play")
        if self.player_task is None:
            self.player_task = asyncio.create_task(self.player.run(), name="alpaca-sim-feed")

    @property
    def faults(self) -> Faults:
        return self.state.faults

    def data_url(self, feed: str = "iex") -> str:
        return self.url.replace("http://", "ws://", 1) + f"/v2/{feed}"

    async def stop(self) -> None:
        """Stop the feed, close every websocket and the listening socket. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._site = None
        task = self.player_task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            log.error("feed_failed", error=repr(task.exception()))
        await self._runner.cleanup()
        log.info("simulator_stopped", url=self.url)


async def start_simulator(config: SimulatorConfig, clock: Clock) -> RunningSimulator:
    """Start a simulator on ``config.host:config.port`` (0 = any free port) and its feed, if any."""
    Secret(config.secret_key)  # registers the text with the log redaction
    state = VenueState(config.venue_settings(), clock, seed=config.seed)
    authorize = make_authorizer(config.key_id, config.secret_key)
    hub = (
        MarketDataHub(authorize, clock, rng=random.Random(f"market-data:{config.seed}"), faults=state.faults)
        if config.market_data
        else None
    )
    app = build_app(
        state,
        hub,
        config.key_id,
        config.secret_key,
        rate_limit_per_minute=config.rate_limit_per_minute,
        stream_queue_limit=config.stream_queue_limit,
    )
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    url = f"http://{host}:{port}"
    player = None
    player_task = None
    if config.feed_files:
        player = FeedPlayer(
            config.feed_files,
            state,
            hub,
            clock,
            config.speed,
            expire_day_orders_at_end=config.expire_day_orders_at_end,
        )
        if not config.hold_feed:
            player_task = asyncio.create_task(player.run(), name="alpaca-sim-feed")
    log.info("simulator_started", url=url, feed_files=len(config.feed_files), seed=config.seed)
    return RunningSimulator(url, state, player, hub, runner, player_task, site, listen_host=config.host)


async def serve(
    host: str,
    port: int,
    feed_files: list[Path],
    speed: float | None,
    key_id: str,
    secret_key: str,
    seed: int,
    ready: Callable[[str], None],
    *,
    exit_when_done: bool = False,
    config: SimulatorConfig | None = None,
) -> None:
    """Run a simulator on a :class:`LiveClock` until cancelled (or, with ``exit_when_done``,
    until the recording has been played). ``ready`` gets the ``http://HOST:PORT`` URL once
    the socket listens. ``config`` supplies the other settings (its host, port, feed, speed,
    keys and seed are replaced by the arguments). A feed that fails raises here.
    """
    base = config or SimulatorConfig()
    settings = msgspec.structs.replace(
        base,
        host=host,
        port=port,
        feed_files=list(feed_files),
        speed=speed,
        key_id=key_id,
        secret_key=secret_key,
        seed=seed,
        exit_when_done=exit_when_done,
    )
    simulator = await start_simulator(settings, LiveClock())
    try:
        ready(simulator.url)
        if simulator.player_task is not None:
            await simulator.player_task
        if not settings.exit_when_done:
            await asyncio.Event().wait()
    finally:
        await simulator.stop()
