"""The live dashboard: one web page, served by the engine's HTTP server, that watches it trade.

``GET /dashboard`` is a self-contained page (inline CSS and vanilla JavaScript, no external
asset, no build step) and ``GET /dashboard/events`` a Server-Sent Events stream that pushes
one ``state`` event per tick (1 s by default): trading state and reason, positions, cash,
realised / unrealised P&L and equity, risk's figures and how much of each configured limit
is used, working orders, the last fills, the actor tree with restart counts, circuit
breakers and feed freshness, stamped with a monotonically increasing ``seq`` and the
engine clock's time. The page redraws from those events (and a P&L line chart from the
points they carry); it never reloads.

Why SSE and not a websocket: the stream is one way, EventSource reconnects on its own, and
it is plain HTTP through the server that is already there (no new dependency, no upgrade).

What keeps it cheap and bounded, whatever the browsers do:

- **One snapshot per tick, shared.** A single producer task asks the actors (the same bus
  requests, with short timeouts, as ``/metrics``: an actor that does not answer is listed
  in ``unanswered`` and its section is ``null``, the tick is not stalled), encodes the
  event once and hands the same bytes to every client. It runs only while at least one
  client is connected: nobody watching costs nothing.
- **The newest snapshot, never a backlog.** A client holds no queue: it is told that a new
  snapshot exists and sends the latest one when it is ready to write. A slow reader skips
  ticks (``seq`` jumps) instead of growing memory; one that cannot take a write within
  ``write_timeout_s`` is cut off.
- **A capped audience.** At most ``max_clients`` streams (8 by default); beyond that 503.
- **Streams end promptly.** When the client goes away (its transport closes) or the server
  stops, within ``POLL_S``; the server's own shutdown timeout (2 s) cancels any handler
  still running after that.

The routes need no token, like ``/metrics``: they change nothing and the server listens on
loopback. They do show positions and orders, so a request whose ``Host`` is not a loopback
name is refused (403): a web page the operator visits cannot read them through DNS
rebinding. The page carries a Content-Security-Policy that allows only its own inline
script and style (by hash) and connections to its own origin; it writes every value with
``textContent`` (an operator's halt reason is arbitrary text).

Money is ``Decimal`` in the engine's messages and goes to the browser as strings; the page
formats them for display and converts to numbers only to draw the chart.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, TypeVar

import msgspec
from aiohttp import web

from adapters.control_http import is_loopback
from engine.breaker import BREAKER_CODES
from engine.clock import NS_PER_S, perf_ns
from engine.config import RiskSection
from engine.errors import MailboxClosed, UnknownAddress
from engine.logs import get_logger
from engine.messages import (
    ActorStats,
    Fill,
    FillHistory,
    FillHistoryQuery,
    PortfolioQuery,
    PortfolioSnapshot,
    RiskReport,
    RiskReportQuery,
    StatsQuery,
    TradingStateChanged,
    TradingStateQuery,
    WorkingOrders,
    WorkingOrdersQuery,
)
from kestrel.ops import EngineProbe

__all__ = ["DASHBOARD_PATH", "EVENTS_PATH", "DashboardFeed", "announce_dashboard", "dashboard_routes"]

log = get_logger(actor="dashboard")

DASHBOARD_PATH: Final = "/dashboard"
EVENTS_PATH: Final = "/dashboard/events"
DEFAULT_INTERVAL_S: Final = 1.0
DEFAULT_MAX_CLIENTS: Final = 8
QUERY_TIMEOUT_S: Final = 1.0
"""Per bus request: an actor that has not answered by then is left out of this tick."""
WRITE_TIMEOUT_S: Final = 10.0
"""A client that cannot take one event in this long is disconnected (it would pin a slot)."""
POLL_S: Final = 0.2
"""How often an idle stream checks that its client and the server are still there."""
RECENT_FILLS: Final = 20
HISTORY_POINTS: Final = 600
"""Chart points kept by the server for a page that connects later (10 min at 1 s)."""
RETRY_MS: Final = 2000
"""EventSource's reconnection delay after a dropped stream."""
_FAR_AFTER: Final = 1 << 62
"""``FillHistoryQuery(after=...)`` beyond any book: the reply carries the total and no fill."""
_BREAKER_NAMES: Final = {code: state.value for state, code in BREAKER_CODES.items()}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
R = TypeVar("R")


# ---------------------------------------------------------------- the snapshot


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def _iso(ts_ns: int) -> str:
    return datetime.fromtimestamp(ts_ns / NS_PER_S, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _pct(used: Decimal, limit: Decimal) -> float:
    """Share of a limit used, in percent (a ratio for a progress bar, not money)."""
    return float((used / limit * 100).quantize(Decimal("0.1")))


def limits_used(report: RiskReport, limits: RiskSection) -> list[dict[str, Any]]:
    """How much of each configured account-level limit risk's figures use now.

    Only limits that are set appear. The daily loss limit is ``daily_loss_limit`` or, unset,
    ``daily_loss_limit_pct`` of the day's starting equity (equity − the day's P&L), as risk
    applies it.
    """
    rows: list[dict[str, Any]] = []

    def add(name: str, used: Decimal, limit: Decimal | int | None) -> None:
        if limit is None or limit <= 0:
            return
        rows.append({"name": name, "used": str(used), "limit": str(limit), "pct": _pct(used, Decimal(limit))})

    add("gross exposure", report.gross_exposure, limits.max_gross_exposure)
    add("net exposure", abs(report.net_exposure), limits.max_net_exposure)
    add("leverage", report.leverage, limits.max_leverage)
    loss = max(Decimal(0), -report.daily_pnl)
    start_equity = report.equity - report.daily_pnl
    daily_limit = limits.daily_loss_limit
    if daily_limit is None and start_equity > 0:
        daily_limit = (start_equity * limits.daily_loss_limit_pct / 100).quantize(Decimal("0.01"))
    add("daily loss", loss, daily_limit)
    add("drawdown %", report.drawdown_pct, limits.max_drawdown_pct)
    add("open orders", Decimal(report.working_orders), limits.max_open_orders)
    top = max(report.concentration_pct.values(), default=Decimal(0))
    add("symbol concentration %", top, limits.max_symbol_concentration_pct)
    return rows


def _actor_rows(tree: dict[str, Any], mailboxes: dict[str, int], depth: int = 0) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for child in tree.get("children", []):
        name = child["name"]
        rows.append(
            {
                "name": name,
                "depth": depth,
                "supervisor": "children" in child,
                "running": child["running"],
                "starts": child["starts"],
                "crashes": child["crashes"],
                "restarts": child["restarts"],
                "mailbox": mailboxes.get(name),
            }
        )
        rows.extend(_actor_rows(child, mailboxes, depth + 1))
    return rows


def _fill_row(fill: Fill) -> dict[str, Any]:
    return {
        "ts_ns": fill.ts_event,
        "time": _iso(fill.ts_event),
        "symbol": fill.symbol,
        "side": fill.side.value,
        "qty": str(fill.qty),
        "price": str(fill.price),
        "fee": str(fill.fee),
        "strategy": fill.strategy,
        "client_order_id": fill.client_order_id,
        "execution_id": fill.execution_id,
    }


class DashboardFeed:
    """Builds the dashboard's snapshot once per tick and streams it to a bounded set of clients.

    ``limits`` (the config's ``[risk]``) adds "limits used" to the snapshot; without it the
    snapshot has risk's figures only. ``interval_s`` is the tick (tests shorten it).
    """

    def __init__(
        self,
        probe: EngineProbe,
        limits: RiskSection | None = None,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        query_timeout_s: float = QUERY_TIMEOUT_S,
        write_timeout_s: float = WRITE_TIMEOUT_S,
    ) -> None:
        if not interval_s > 0 or max_clients < 1 or not query_timeout_s > 0 or not write_timeout_s > 0:
            raise ValueError("dashboard: interval_s, query_timeout_s and write_timeout_s must be > 0, max_clients >= 1")
        self.probe = probe
        self.limits = limits
        self.interval_s = interval_s
        self.max_clients = max_clients
        self.query_timeout_s = query_timeout_s
        self.write_timeout_s = write_timeout_s
        self.clients = 0
        self.seq = 0
        """The latest snapshot's sequence number (0: none yet); it only grows, across producers."""
        self._frame: bytes | None = None
        self._changed = asyncio.Event()
        self._producer: asyncio.Task[None] | None = None
        self._failure: str | None = None
        self._fills_total: int | None = None
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_POINTS)

    # ------------------------------------------------------------ reading the engine

    async def _ask(self, role: str, query: object, expect: type[R], unanswered: set[str]) -> R | None:
        address = self.probe.addresses.get(role)
        if address is None:
            return None
        try:
            reply = await self.probe.bus.request(address, query, timeout_s=self.query_timeout_s)
        except (TimeoutError, UnknownAddress, MailboxClosed):
            unanswered.add(role)  # restarting, busy or stopping: this tick shows it as unanswered
            return None
        if not isinstance(reply, expect):
            raise TypeError(f"{role} answered {type(query).__name__} with {type(reply).__name__}")
        return reply

    async def _fill_history(self, unanswered: set[str]) -> FillHistory | None:
        """The last :data:`RECENT_FILLS` fills, without copying the whole book every tick.

        The order manager answers ``after=N`` with the fills after the N-th (and the total),
        so after the first look only the last few travel. A reply whose total is below what
        was skipped (a book that shrank: an order manager restarted without a journal) is
        asked again from its own total.
        """
        known = self._fills_total
        after = _FAR_AFTER if known is None else max(0, known - RECENT_FILLS)
        reply = await self._ask("order_manager", FillHistoryQuery(after=after), FillHistory, unanswered)
        if reply is not None and reply.total < after:
            after = max(0, reply.total - RECENT_FILLS)
            reply = await self._ask("order_manager", FillHistoryQuery(after=after), FillHistory, unanswered)
        if reply is not None:
            self._fills_total = reply.total
        return reply

    async def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, now (``seq`` is set by the producer)."""
        probe = self.probe
        unanswered: set[str] = set()
        (report, portfolio, trading), (working, history, pricing, venue) = await asyncio.gather(
            asyncio.gather(
                self._ask("risk", RiskReportQuery(), RiskReport, unanswered),
                self._ask("settlement", PortfolioQuery(), PortfolioSnapshot, unanswered),
                self._ask("order_manager", TradingStateQuery(), TradingStateChanged, unanswered),
            ),
            asyncio.gather(
                self._ask("order_manager", WorkingOrdersQuery(), WorkingOrders, unanswered),
                self._fill_history(unanswered),
                self._ask("pricing", StatsQuery(), ActorStats, unanswered),
                self._ask("venue", StatsQuery(), ActorStats, unanswered),
            ),
        )  # all at once (two groups: typeshed types gather up to six awaitables)
        now = probe.clock.time_ns()
        # Risk applies a halt at once; the order manager's state follows once journaled.
        if report is not None:
            trading_state: dict[str, Any] = {"state": report.trading_state, "reason": report.trading_reason}
        elif trading is not None:
            trading_state = {"state": trading.state.value, "reason": trading.reason}
        else:
            trading_state = {"state": None, "reason": None}
        return {
            "ts_ns": now,
            "time": _iso(now),
            "trading": trading_state,
            "portfolio": self._portfolio(portfolio, report, history),
            "risk": self._risk(report),
            "limits": limits_used(report, self.limits) if report is not None and self.limits is not None else None,
            "orders": None if working is None else [
                {
                    "client_order_id": o.client_order_id,
                    "strategy": o.strategy,
                    "symbol": o.symbol,
                    "side": o.side.value,
                    "type": o.order_type.value,
                    "remaining_qty": str(o.remaining_qty),
                    "limit_price": _money(o.limit_price),
                }
                for o in working.orders
            ],
            "fills": None if history is None else [_fill_row(f) for f in reversed(history.fills[-RECENT_FILLS:])],
            "fills_total": None if history is None else history.total,
            "actors": _actor_rows(
                probe.root.tree(), {name: len(box) for name, box in probe.bus.mailboxes.items()}
            ),
            "breakers": None if venue is None else {
                name: _BREAKER_NAMES.get(code, str(code))
                for name, code in sorted(venue.breakdown.get("breaker_state", {}).items())
            },
            "feeds": None if pricing is None else self._feeds(pricing, now),
            "unanswered": sorted(unanswered),
        }  # fmt: skip

    @staticmethod
    def _portfolio(
        portfolio: PortfolioSnapshot | None, report: RiskReport | None, history: FillHistory | None
    ) -> dict[str, Any] | None:
        """Cash and P&L from the ledger, equity from risk's marks.

        Unrealised P&L is equity − starting cash − realised P&L: the ledger books cash as
        ``-(signed qty × price + fee)`` per fill and realised P&L net of fees, so that is
        Σ (mark − lot price) × lot qty over the open lots (positions of unknown cost, from
        an account baseline, count at zero cost, as in the ledger). Equity and the ledger
        come from two actors a few microseconds apart: a fill between the two answers can
        show for one tick.
        """
        if portfolio is None:
            return None
        equity = report.equity if report is not None else None
        start_cash = history.baseline_cash if history is not None else None
        total = equity - start_cash if equity is not None and start_cash is not None else None
        concentration = report.concentration_pct if report is not None else {}
        return {
            "cash": str(portfolio.cash),
            "equity": _money(equity),
            "starting_cash": _money(start_cash),
            "realized_pnl": str(portfolio.realized_pnl),
            "unrealized_pnl": _money(total - portfolio.realized_pnl if total is not None else None),
            "total_pnl": _money(total),
            "fees": str(portfolio.fees),
            "fills": portfolio.fills,
            "positions": [
                {"symbol": symbol, "qty": str(qty), "concentration_pct": _money(concentration.get(symbol))}
                for symbol, qty in sorted(portfolio.positions.items())
                if qty
            ],
        }

    @staticmethod
    def _risk(report: RiskReport | None) -> dict[str, Any] | None:
        if report is None:
            return None
        return {
            "equity": str(report.equity),
            "long_exposure": str(report.long_exposure),
            "short_exposure": str(report.short_exposure),
            "gross_exposure": str(report.gross_exposure),
            "net_exposure": str(report.net_exposure),
            "leverage": str(report.leverage),
            "daily_pnl": str(report.daily_pnl),
            "drawdown_pct": str(report.drawdown_pct),
            "high_water": str(report.high_water),
            "var_95": _money(report.var_95),
            "es_95": _money(report.es_95),
            "var_samples": report.var_samples,
            "working_orders": report.working_orders,
            "paused_strategies": list(report.paused_strategies),
        }

    @staticmethod
    def _feeds(pricing: ActorStats, now_ns: int) -> dict[str, Any]:
        seen = pricing.breakdown.get("provider_seen_ns", {})
        down = pricing.breakdown.get("provider_down", {})
        return {
            "providers": [
                {"provider": p, "age_s": round(max(0, now_ns - ns) / NS_PER_S, 1), "down": bool(down.get(p))}
                for p, ns in sorted(seen.items())
            ],
            "stale_symbols": sorted(pricing.breakdown.get("stale", {})),
        }

    # ------------------------------------------------------------ the producer

    def _ensure_producer(self) -> None:
        if self._producer is None or self._producer.done():
            self._failure = None
            self._producer = asyncio.create_task(self._produce(), name="dashboard-producer")

    def _stop_producer(self) -> None:
        producer, self._producer = self._producer, None
        self._frame = None  # the next viewer waits for a fresh snapshot rather than seeing a stale one
        if producer is not None:
            producer.cancel()  # nobody is watching: no more bus round trips

    def _publish(self, frame: bytes) -> None:
        self._frame = frame
        self._wake()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # every waiting client wakes and sends the newest frame (or the failure)

    async def _produce(self) -> None:
        """One snapshot per tick while anyone watches. A failure to build one is a bug: it is
        logged with its traceback and reported to the clients, whose streams then end (a
        page that reconnects starts a new producer)."""
        while True:
            started = perf_ns()
            try:
                snapshot = await self.snapshot()
            except Exception as exc:
                log.error("dashboard_snapshot_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
                self._failure = f"{type(exc).__name__}: {exc}"
                self._wake()
                return
            self.seq += 1
            snapshot["seq"] = self.seq
            portfolio = snapshot["portfolio"]
            if portfolio is not None and portfolio["equity"] is not None:
                self._history.append(
                    {
                        "seq": self.seq,
                        "ts_ns": snapshot["ts_ns"],
                        "equity": portfolio["equity"],
                        "total_pnl": portfolio["total_pnl"],
                        "realized_pnl": portfolio["realized_pnl"],
                    }
                )
            self._publish(_event("state", msgspec.json.encode(snapshot), self.seq))
            elapsed_s = (perf_ns() - started) / NS_PER_S
            await self.probe.clock.sleep(max(0.0, self.interval_s - elapsed_s))

    # ------------------------------------------------------------ HTTP

    async def page(self, request: web.Request) -> web.StreamResponse:
        refused = _refuse_foreign_host(request)
        if refused is not None:
            return refused
        return web.Response(
            body=PAGE,
            content_type="text/html",
            charset="utf-8",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
        )

    async def events(self, request: web.Request) -> web.StreamResponse:
        """The SSE stream: a ``history`` event (the chart so far), then ``state`` events."""
        refused = _refuse_foreign_host(request)
        if refused is not None:
            return refused
        if request.method == "HEAD":  # the headers a stream would have, and no stream to hold open
            return web.Response(content_type="text/event-stream", headers={"Cache-Control": "no-store"})
        if self.clients >= self.max_clients:
            log.warning("dashboard_clients_refused", clients=self.clients, max_clients=self.max_clients)
            return web.json_response(
                {"error": "busy", "message": f"at most {self.max_clients} dashboard streams at once"},
                status=503,
                headers={"Retry-After": "5"},
            )
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                "X-Accel-Buffering": "no",  # a buffering proxy in front would hold events back
            }
        )
        self.clients += 1
        try:
            self._ensure_producer()
            await response.prepare(request)
            if not await self._stream(request, response):
                _abort(request)  # a stuck client: drop what it has not read
        except ConnectionResetError:
            log.debug("dashboard_client_gone")  # it went away mid-write: nothing more to send
        finally:
            self.clients -= 1
            if self.clients == 0:
                self._stop_producer()
        return response

    async def _stream(self, request: web.Request, response: web.StreamResponse) -> bool:
        """Send events until the client or the server goes away; False if a write timed out."""
        history = msgspec.json.encode(list(self._history))
        if not await self._send(response, f"retry: {RETRY_MS}\n\n".encode() + _event("history", history)):
            return False
        sent = 0
        while not _closing(request):
            frame = self._frame
            if self.seq > sent and frame is not None:
                sent = self.seq
                if not await self._send(response, frame):
                    return False
                continue
            if self._failure is not None:
                await self._send(response, _event("failure", msgspec.json.encode({"error": self._failure})))
                return True
            changed = self._changed
            try:
                async with asyncio.timeout(POLL_S):
                    await changed.wait()
            except TimeoutError:
                continue  # no new snapshot yet: look at the connection again
        return True

    async def _send(self, response: web.StreamResponse, data: bytes) -> bool:
        try:
            async with asyncio.timeout(self.write_timeout_s):
                await response.write(data)
        except TimeoutError:
            log.warning("dashboard_client_too_slow", write_timeout_s=self.write_timeout_s)
            return False
        return True

    def routes(self) -> dict[str, Handler]:
        return {DASHBOARD_PATH: self.page, EVENTS_PATH: self.events}


def _event(kind: str, data: bytes, seq: int | None = None) -> bytes:
    head = f"id: {seq}\nevent: {kind}\n" if seq is not None else f"event: {kind}\n"
    return head.encode() + b"data: " + data + b"\n\n"  # compact JSON: never a newline inside


def _closing(request: web.Request) -> bool:
    """The client left (its transport is closing), or the server is stopping.

    aiohttp marks every connection closing before it waits for the handlers in flight
    (``RequestHandler.close()`` at the server's pre-shutdown) but offers no public flag for
    it; read through ``getattr`` so an aiohttp without it falls back to the server's own
    shutdown timeout, which cancels the handler.
    """
    transport = request.transport
    if transport is None or transport.is_closing():
        return True
    return bool(getattr(request.protocol, "_close", False))


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _refuse_foreign_host(request: web.Request) -> web.StreamResponse | None:
    """403 unless the ``Host`` names a loopback address (or ``localhost``): DNS rebinding."""
    try:
        host = request.url.host or ""
    except ValueError:
        host = ""  # an unparseable Host header is not a loopback name
    if is_loopback(host):
        return None
    log.warning("dashboard_foreign_host", host=request.host, remote=request.remote)
    return web.json_response(
        {"error": "forbidden", "message": "the dashboard answers only to a loopback Host (127.0.0.1, ::1, localhost)"},
        status=403,
    )


def dashboard_routes(
    probe: EngineProbe,
    limits: RiskSection | None = None,
    *,
    interval_s: float = DEFAULT_INTERVAL_S,
    max_clients: int = DEFAULT_MAX_CLIENTS,
) -> dict[str, Handler]:
    """``GET /dashboard`` and ``GET /dashboard/events`` for the engine's HTTP server (public, read-only)."""
    return DashboardFeed(probe, limits, interval_s=interval_s, max_clients=max_clients).routes()


def announce_dashboard(server_url: str, *, embedded: bool) -> str:
    """Log the dashboard's URL; for the embedded demo also tell the person at the terminal.

    Written to stderr, never stdout: ``kestrel run --json`` keeps stdout for its summary.
    One short line, once per session: a blocking write that cannot stall the loop.
    """
    url = f"{server_url}{DASHBOARD_PATH}"
    log.info("dashboard_url", url=url)
    if embedded:
        sys.stderr.write(f"dashboard: {url}\n")
        sys.stderr.flush()
    return url


# ---------------------------------------------------------------- the page

_STYLE = """
:root { color-scheme: dark; --bg:#0f1419; --card:#172029; --line:#2a3743; --text:#d8e0e8; --dim:#8796a5;
  --ok:#3fb950; --warn:#d29922; --bad:#f85149; --accent:#58a6ff; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--text); font:14px/1.4 system-ui, sans-serif; }
header { display:flex; flex-wrap:wrap; gap:16px; align-items:center; padding:10px 16px;
  border-bottom:1px solid var(--line); }
header h1 { font-size:18px; margin:0 8px 0 0; }
.meta { color:var(--dim); font-variant-numeric:tabular-nums; }
#conn.live { color:var(--ok); } #conn.down { color:var(--bad); }
main { display:grid; grid-template-columns:repeat(auto-fit, minmax(420px, 1fr)); gap:12px; padding:12px; }
section { background:var(--card); border:1px solid var(--line); border-radius:6px; padding:10px 12px; min-width:0; }
section h2 { font-size:13px; text-transform:uppercase; letter-spacing:.06em; color:var(--dim); margin:0 0 8px; }
section table + h2 { margin-top:16px; }
.wide { grid-column:1 / -1; }
.badge { display:inline-block; padding:2px 10px; border-radius:4px; font-weight:700; background:var(--line); }
.badge.active { background:var(--ok); color:#04140a; } .badge.reducing { background:var(--warn); color:#1d1400; }
.badge.halted { background:var(--bad); color:#fff; } .badge.recovering { background:var(--dim); color:#000; }
#reason { margin-left:8px; }
.kv { display:grid; grid-template-columns:auto 1fr; gap:2px 16px; }
.kv dt { color:var(--dim); } .kv dd { margin:0; text-align:right; font-variant-numeric:tabular-nums; }
table { width:100%; border-collapse:collapse; font-variant-numeric:tabular-nums; }
th, td { text-align:left; padding:3px 6px; border-bottom:1px solid var(--line); white-space:nowrap; }
th { color:var(--dim); font-weight:600; }
td.num, th.num { text-align:right; }
.pos { color:var(--ok); } .neg { color:var(--bad); } .dim { color:var(--dim); }
.bar { height:8px; background:var(--line); border-radius:4px; overflow:hidden; min-width:80px; }
.bar > div { height:100%; background:var(--accent); }
.bar > div.warn { background:var(--warn); } .bar > div.bad { background:var(--bad); }
.scroll { max-height:320px; overflow:auto; }
svg { width:100%; height:200px; display:block; }
#chart .axis { stroke:var(--line); } #chart text { fill:var(--dim); font-size:11px; }
#line-total { stroke:var(--accent); } #line-realized { stroke:var(--warn); }
.legend span { margin-right:12px; } .legend .t { color:var(--accent); } .legend .r { color:var(--warn); }
"""

_BODY = """
<header>
  <h1>Kestrel</h1>
  <span class="badge" id="state">…</span><span id="reason" class="dim"></span>
  <span class="meta">engine time <span id="clock">—</span></span>
  <span class="meta">seq <span id="seq">—</span></span>
  <span class="meta" id="conn">connecting…</span>
</header>
<main>
  <section id="portfolio-section">
    <h2>Portfolio</h2>
    <dl class="kv">
      <dt>Equity</dt><dd id="equity">—</dd>
      <dt>Cash</dt><dd id="cash">—</dd>
      <dt>Realised P&amp;L</dt><dd id="realized">—</dd>
      <dt>Unrealised P&amp;L</dt><dd id="unrealized">—</dd>
      <dt>Total P&amp;L</dt><dd id="total">—</dd>
      <dt>Fees</dt><dd id="fees">—</dd>
      <dt>Fills</dt><dd id="fill-count">—</dd>
    </dl>
  </section>
  <section id="positions-section">
    <h2>Positions</h2>
    <table><thead><tr><th>Symbol</th><th class="num">Qty</th><th class="num">% of equity</th></tr></thead>
    <tbody id="positions"></tbody></table>
  </section>
  <section id="chart-section" class="wide">
    <h2>P&amp;L</h2>
    <div class="legend"><span class="t">— total</span><span class="r">— realised</span>
      <span class="dim" id="chart-range"></span></div>
    <svg id="chart" viewBox="0 0 1000 200" preserveAspectRatio="none" role="img" aria-label="P&amp;L over time">
      <line class="axis" id="zero-line" x1="0" x2="1000" y1="100" y2="100" vector-effect="non-scaling-stroke"/>
      <polyline id="line-realized" fill="none" stroke-width="1.5" vector-effect="non-scaling-stroke" points=""/>
      <polyline id="line-total" fill="none" stroke-width="2" vector-effect="non-scaling-stroke" points=""/>
    </svg>
  </section>
  <section id="risk-section">
    <h2>Risk</h2>
    <dl class="kv" id="risk"></dl>
  </section>
  <section id="limits-section">
    <h2>Limits used</h2>
    <table><thead><tr><th>Limit</th><th class="num">Used</th><th class="num">Limit</th><th></th>
      <th class="num">%</th></tr></thead>
    <tbody id="limits"></tbody></table>
  </section>
  <section id="orders-section" class="wide">
    <h2>Working orders</h2>
    <div class="scroll"><table><thead><tr><th>Client order id</th><th>Strategy</th><th>Symbol</th><th>Side</th>
      <th>Type</th><th class="num">Remaining</th><th class="num">Limit</th></tr></thead>
    <tbody id="orders"></tbody></table></div>
  </section>
  <section id="fills-section" class="wide">
    <h2>Recent fills <span class="dim" id="fills-total"></span></h2>
    <div class="scroll"><table><thead><tr><th>Time</th><th>Symbol</th><th>Side</th><th class="num">Qty</th>
      <th class="num">Price</th><th class="num">Fee</th><th>Strategy</th><th>Client order id</th></tr></thead>
    <tbody id="fills"></tbody></table></div>
  </section>
  <section id="actors-section">
    <h2>Actors</h2>
    <table><thead><tr><th>Actor</th><th>Running</th><th class="num">Restarts</th><th class="num">Crashes</th>
      <th class="num">Mailbox</th></tr></thead>
    <tbody id="actors"></tbody></table>
  </section>
  <section id="venue-section">
    <h2>Circuit breakers</h2>
    <table><thead><tr><th>Breaker</th><th>State</th></tr></thead><tbody id="breakers"></tbody></table>
    <h2>Feed freshness</h2>
    <table><thead><tr><th>Provider</th><th class="num">Last event (s ago)</th><th>Down</th></tr></thead>
    <tbody id="feeds"></tbody></table>
    <p class="dim" id="stale"></p>
    <p class="dim" id="unanswered"></p>
  </section>
</main>
"""

_SCRIPT = r"""
"use strict";
const MAX_POINTS = 600;
const $ = (id) => document.getElementById(id);
let points = [];
let source = null;

function text(id, value) { $(id).textContent = value === null || value === undefined ? "—" : String(value); }
function money(value) {
  if (value === null || value === undefined) return "—";
  const n = Number(value);
  return Number.isFinite(n) ? n.toLocaleString("en-US", {minimumFractionDigits: 2, maximumFractionDigits: 2}) : value;
}
function signed(id, value) {
  const el = $(id);
  el.textContent = money(value);
  const n = Number(value);
  el.className = value === null || value === undefined || n === 0 ? "" : (n > 0 ? "pos" : "neg");
}
function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "—" : String(value);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}
function rows(id, items, columns, empty) {
  const body = $(id);
  body.replaceChildren();
  if (items === null || items === undefined) { items = []; empty = "no answer this tick"; }
  if (items.length === 0) {
    const tr = document.createElement("tr");
    const td = cell(tr, empty, "dim");
    td.colSpan = columns;
    body.appendChild(tr);
    return;
  }
  return items;
}

function render(s) {
  text("seq", s.seq);
  text("clock", s.time);
  const state = s.trading.state;
  const badge = $("state");
  badge.textContent = state ? state.toUpperCase() : "UNKNOWN";
  badge.className = "badge " + (state || "");
  text("reason", s.trading.reason || "");

  const p = s.portfolio;
  if (p) {
    text("equity", money(p.equity)); text("cash", money(p.cash)); text("fees", money(p.fees));
    signed("realized", p.realized_pnl); signed("unrealized", p.unrealized_pnl); signed("total", p.total_pnl);
    text("fill-count", p.fills);
  }
  const positions = rows("positions", p ? p.positions : null, 3, "flat");
  if (positions) for (const pos of positions) {
    const tr = document.createElement("tr");
    cell(tr, pos.symbol); cell(tr, pos.qty, "num");
    cell(tr, pos.concentration_pct === null ? null : Number(pos.concentration_pct).toFixed(1), "num");
    $("positions").appendChild(tr);
  }

  const risk = $("risk");
  risk.replaceChildren();
  if (s.risk) {
    const r = s.risk;
    const entries = [["Equity", money(r.equity)], ["Long exposure", money(r.long_exposure)],
      ["Short exposure", money(r.short_exposure)], ["Gross exposure", money(r.gross_exposure)],
      ["Net exposure", money(r.net_exposure)], ["Leverage", Number(r.leverage).toFixed(3)],
      ["Day's P&L", money(r.daily_pnl)], ["Drawdown %", Number(r.drawdown_pct).toFixed(2)],
      ["High water", money(r.high_water)], ["VaR 95%", money(r.var_95)], ["ES 95%", money(r.es_95)],
      ["VaR samples", r.var_samples], ["Working orders", r.working_orders],
      ["Paused strategies", r.paused_strategies.length ? r.paused_strategies.join(", ") : "none"]];
    for (const [k, v] of entries) {
      const dt = document.createElement("dt"); dt.textContent = k;
      const dd = document.createElement("dd"); dd.textContent = String(v);
      risk.append(dt, dd);
    }
  }

  const limits = rows("limits", s.limits, 5, "no account limit configured");
  if (limits) for (const l of limits) {
    const tr = document.createElement("tr");
    cell(tr, l.name); cell(tr, l.used, "num"); cell(tr, l.limit, "num");
    const td = document.createElement("td");
    const bar = document.createElement("div"); bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = Math.max(0, Math.min(100, l.pct)) + "%";
    fill.className = l.pct >= 90 ? "bad" : (l.pct >= 70 ? "warn" : "");
    bar.appendChild(fill); td.appendChild(bar); tr.appendChild(td);
    cell(tr, l.pct.toFixed(1), "num");
    $("limits").appendChild(tr);
  }

  const orders = rows("orders", s.orders, 7, "none");
  if (orders) for (const o of orders) {
    const tr = document.createElement("tr");
    cell(tr, o.client_order_id); cell(tr, o.strategy); cell(tr, o.symbol); cell(tr, o.side); cell(tr, o.type);
    cell(tr, o.remaining_qty, "num"); cell(tr, o.limit_price === null ? "market" : o.limit_price, "num");
    $("orders").appendChild(tr);
  }

  text("fills-total", s.fills_total === null ? "" : "(" + s.fills_total + " in all)");
  const fills = rows("fills", s.fills, 8, "none yet");
  if (fills) for (const f of fills) {
    const tr = document.createElement("tr");
    cell(tr, f.time.replace("T", " ").replace("Z", "")); cell(tr, f.symbol);
    cell(tr, f.side, f.side === "buy" ? "pos" : "neg");
    cell(tr, f.qty, "num"); cell(tr, f.price, "num"); cell(tr, f.fee, "num"); cell(tr, f.strategy);
    cell(tr, f.client_order_id);
    $("fills").appendChild(tr);
  }

  const actors = rows("actors", s.actors, 5, "none");
  if (actors) for (const a of actors) {
    const tr = document.createElement("tr");
    const name = cell(tr, (a.supervisor ? "▾ " : "") + a.name);
    name.style.paddingLeft = (6 + 16 * a.depth) + "px";
    cell(tr, a.running ? "yes" : "NO", a.running ? "pos" : "neg");
    cell(tr, a.restarts, a.restarts ? "num neg" : "num"); cell(tr, a.crashes, "num"); cell(tr, a.mailbox, "num");
    $("actors").appendChild(tr);
  }

  const breakers = rows("breakers", s.breakers === null ? null : Object.entries(s.breakers), 2, "none");
  if (breakers) for (const [name, state] of breakers) {
    const tr = document.createElement("tr");
    cell(tr, name); cell(tr, state, state === "closed" ? "pos" : "neg");
    $("breakers").appendChild(tr);
  }
  const feeds = rows("feeds", s.feeds ? s.feeds.providers : null, 3, "no provider has spoken yet");
  if (feeds) for (const f of feeds) {
    const tr = document.createElement("tr");
    cell(tr, f.provider); cell(tr, f.age_s.toFixed(1), f.age_s > 5 ? "num neg" : "num");
    cell(tr, f.down ? "DOWN" : "no", f.down ? "neg" : "");
    $("feeds").appendChild(tr);
  }
  text("stale", s.feeds && s.feeds.stale_symbols.length ? "stale: " + s.feeds.stale_symbols.join(", ") : "");
  text("unanswered", s.unanswered.length ? "did not answer this tick: " + s.unanswered.join(", ") : "");

  if (p && p.equity !== null) {
    points.push({ts_ns: s.ts_ns, total_pnl: p.total_pnl, realized_pnl: p.realized_pnl});
    if (points.length > MAX_POINTS) points = points.slice(-MAX_POINTS);
    drawChart();
  }
}

function drawChart() {
  const usable = points.filter((q) => q.total_pnl !== null);
  const W = 1000, H = 200, PAD = 8;
  if (usable.length === 0) return;
  const t0 = usable[0].ts_ns, t1 = usable[usable.length - 1].ts_ns;
  let lo = 0, hi = 0;
  for (const q of usable) {
    lo = Math.min(lo, Number(q.total_pnl), Number(q.realized_pnl));
    hi = Math.max(hi, Number(q.total_pnl), Number(q.realized_pnl));
  }
  if (hi === lo) { hi += 1; lo -= 1; }
  const x = (t) => (t1 === t0 ? W : (t - t0) / (t1 - t0) * W).toFixed(1);
  const y = (v) => (PAD + (hi - Number(v)) / (hi - lo) * (H - 2 * PAD)).toFixed(1);
  $("line-total").setAttribute("points", usable.map((q) => x(q.ts_ns) + "," + y(q.total_pnl)).join(" "));
  $("line-realized").setAttribute("points", usable.map((q) => x(q.ts_ns) + "," + y(q.realized_pnl)).join(" "));
  const zero = y(0);
  $("zero-line").setAttribute("y1", zero); $("zero-line").setAttribute("y2", zero);
  const seconds = Math.round((t1 - t0) / 1e9);
  text("chart-range", usable.length + " points over " + seconds + " s · range " + money(lo) + " … " + money(hi));
}

function connect() {
  const conn = $("conn");
  source = new EventSource("/dashboard/events");
  source.onopen = () => { conn.textContent = "live"; conn.className = "meta live"; };
  source.addEventListener("history", (e) => { points = JSON.parse(e.data).slice(-MAX_POINTS); drawChart(); });
  source.addEventListener("state", (e) => render(JSON.parse(e.data)));
  source.addEventListener("failure", (e) => {
    conn.textContent = "engine error: " + JSON.parse(e.data).error; conn.className = "meta down";
  });
  source.onerror = () => {
    conn.className = "meta down";
    if (source.readyState === EventSource.CLOSED) {
      // Refused (503: too many viewers) or the engine is gone: EventSource gives up; try again later.
      conn.textContent = "disconnected — retrying in 5 s";
      source.close();
      setTimeout(connect, 5000);
    } else {
      conn.textContent = "reconnecting…";
    }
  };
}
connect();
"""


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


PAGE: Final = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
    '<meta name="viewport" content="width=device-width, initial-scale=1">'
    '<link rel="icon" href="data:,">'  # no /favicon.ico request (the server would answer 401)
    "<title>Kestrel dashboard</title><style>" + _STYLE + "</style></head><body>" + _BODY
    + "<script>" + _SCRIPT + "</script></body></html>\n"
).encode()
CSP: Final = (
    f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""Only this page's own inline script and style run; it may connect only to its origin."""
