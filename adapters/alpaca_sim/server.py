"""The simulator's HTTP side: Alpaca's Trading API v2 over aiohttp, plus the two websockets.

Routes (``shared/protocols/alpaca.md`` §1.3): orders (POST/GET ``/v2/orders``, GET/PATCH/
DELETE ``/v2/orders/{id}``, GET ``/v2/orders:by_client_order_id``, DELETE ``/v2/orders``
→ 207), positions (GET ``/v2/positions``, GET/DELETE ``/v2/positions/{symbol_or_asset_id}``,
DELETE ``/v2/positions`` → 207), GET ``/v2/account``, ``/v2/clock``, ``/v2/calendar``,
``/v2/assets``, ``/v2/assets/{symbol_or_asset_id}``; the trade-updates websocket at
``GET /stream`` and, when a market-data hub is given, its websocket at ``GET /v2/{feed}``.

Every REST request passes, in this order:

1. the fault hooks (``Faults.fail_next`` answers at once with the given status);
2. authentication: ``APCA-API-KEY-ID`` + ``APCA-API-SECRET-KEY`` must match, else 401
   ``{"code":40110000,"message":"request is not authorized"}``;
3. the rate limit: at most ``rate_limit_per_minute`` requests per key in any sliding
   60 s window of the engine clock, else 429 ``{"code":42910000,...}``
   (``X-RateLimit-Limit``/``-Remaining``/``-Reset`` headers on every answer);
4. the handler; a :class:`VenueError` becomes Alpaca's error envelope, a body that does
   not decode into the request struct a 422 with code 40010001;
5. ``Faults.delay_response_s`` holds the response (engine clock).

Every error body is JSON (also 404/405 for unknown routes, and 500 for a bug, which is
logged with its traceback). Decimals in answers are strings; requests may carry numbers
or strings.
"""

from __future__ import annotations

import collections
import datetime as dt
import hmac
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Protocol

import msgspec
from aiohttp import web

from adapters.alpaca import wire
from adapters.alpaca_sim.events import SimQuote, SimTrade
from adapters.alpaca_sim.state import VenueError, VenueState, unprocessable
from adapters.alpaca_sim.trade_stream import TradeStreamHub
from engine.clock import NS_PER_S, Clock
from engine.logs import get_logger

log = get_logger(actor="alpaca-sim-http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WINDOW_NS: Final = 60 * NS_PER_S
_encoder = msgspec.json.Encoder()
_ERROR_TEXT: Final = {
    400: "bad request",
    401: "request is not authorized",
    403: "forbidden",
    404: "not found",
    408: "request timeout",
    422: "unprocessable entity",
    429: "rate limit exceeded",
    500: "internal server error",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
}


class MarketDataEndpoint(Protocol):
    """The market-data hub as the server uses it (``adapters/alpaca_sim/market_data.py``)."""

    def publish_quote(self, quote: SimQuote) -> None: ...

    def publish_trade(self, trade: SimTrade) -> None: ...

    async def handle(self, request: web.Request) -> web.StreamResponse: ...

    async def close_all(self) -> None: ...


class SlidingWindowLimiter:
    """At most ``limit`` hits per key in any ``window_ns`` window of the clock."""

    def __init__(self, limit: int, clock: Clock, window_ns: int = WINDOW_NS) -> None:
        self.limit = limit
        self.clock = clock
        self.window_ns = window_ns
        self._hits: dict[str, collections.deque[int]] = {}

    def hit(self, key: str) -> tuple[bool, int, int]:
        """Count a request: (allowed, remaining, reset time in epoch ns)."""
        now = self.clock.time_ns()
        hits = self._hits.setdefault(key, collections.deque())
        while hits and hits[0] <= now - self.window_ns:
            hits.popleft()
        allowed = len(hits) < self.limit
        if allowed:
            hits.append(now)
        reset = (hits[0] if hits else now) + self.window_ns
        return allowed, self.limit - len(hits), reset


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json")


def error_response(status: int, code: int, message: str, extra: dict[str, Any] | None = None) -> web.Response:
    return json_response({**(extra or {}), "code": code, "message": message}, status)


def fail_kind(status: int) -> str:
    """The ``Faults.injected`` name of a ``fail_next`` answer: ``http_429``, ``http_5xx`` or ``http_error``."""
    if status == 429:
        return "http_429"
    if 500 <= status <= 599:
        return "http_5xx"
    return "http_error"


def _status_code(status: int) -> int:
    """Alpaca-style 8-digit code for a bare HTTP status (e.g. 503 → 50310000)."""
    return status * 100_000 + 10_000


STATE: Final = web.AppKey("alpaca_sim_state", VenueState)
TRADE_HUB: Final = web.AppKey("alpaca_sim_trade_hub", TradeStreamHub)


# ---------------------------------------------------------------- request parsing


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise unprocessable(str(exc), wire.CODE_MALFORMED) from None
    except msgspec.DecodeError:
        raise unprocessable("request body format is invalid", wire.CODE_MALFORMED) from None


def _query_time(request: web.Request, name: str) -> int | None:
    text = request.query.get(name)
    if not text:
        return None
    text = text.replace(" ", "+")  # an unescaped "+" of an offset arrives as a space
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) * NS_PER_S
        return wire.parse_timestamp(text)
    except ValueError:
        raise unprocessable(f"invalid {name}: {text!r}", wire.CODE_MALFORMED) from None


def _query_choice(
    request: web.Request, name: str, choices: tuple[str, ...], default: str | None
) -> str | None:
    value = request.query.get(name, default)
    if value is not None and value not in choices:
        raise unprocessable(f"invalid {name}: {value!r} (expected one of {', '.join(choices)})")
    return value


def _query_decimal(request: web.Request, name: str) -> Decimal | None:
    text = request.query.get(name)
    if text is None or text == "":
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise unprocessable(f"invalid {name}: {text!r}", wire.CODE_MALFORMED) from None
    if not value.is_finite() or value <= 0:
        raise unprocessable(f"{name} must be > 0")
    return value


def _query_bool(request: web.Request, name: str) -> bool:
    return request.query.get(name, "false").lower() in ("true", "1", "yes")


# ---------------------------------------------------------------- handlers


async def post_order(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    order = state.submit_order(_decode(await request.read(), wire.OrderRequest))
    faults = state.faults
    if faults.drop_submit_response_next > 0:
        faults.drop_submit_response_next -= 1
        faults.count("submit_reply_lost")
        log.info("fault_drop_submit_response", order_id=order.id, client_order_id=order.client_order_id)
        transport = request.transport
        if transport is not None:
            transport.abort()
    return json_response(order.to_wire())


async def get_orders(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    status = _query_choice(request, "status", ("open", "closed", "all"), "open")
    direction = _query_choice(request, "direction", ("asc", "desc"), "desc")
    side = _query_choice(request, "side", ("buy", "sell"), None)
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        raise unprocessable("limit must be an integer", wire.CODE_MALFORMED) from None
    if not 1 <= limit <= 500:
        raise unprocessable("limit must be between 1 and 500")
    symbols_text = request.query.get("symbols")
    symbols = [s.strip() for s in symbols_text.split(",") if s.strip()] if symbols_text else None
    orders = state.list_orders(
        status=status or "open",
        limit=limit,
        after_ns=_query_time(request, "after"),
        until_ns=_query_time(request, "until"),
        direction=direction or "desc",
        symbols=symbols,
        side=side,
    )
    return json_response([o.to_wire() for o in orders])


async def get_order(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE].get_order(request.match_info["order_id"]).to_wire())


async def get_order_by_client_id(request: web.Request) -> web.StreamResponse:
    client_order_id = request.query.get("client_order_id")
    if not client_order_id:
        raise unprocessable("client_order_id is required", wire.CODE_MALFORMED)
    return json_response(request.app[STATE].get_order_by_client_id(client_order_id).to_wire())


async def patch_order(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    replace = _decode(await request.read(), wire.ReplaceRequest)
    return json_response(state.replace_order(request.match_info["order_id"], replace).to_wire())


async def delete_order(request: web.Request) -> web.StreamResponse:
    request.app[STATE].cancel_order(request.match_info["order_id"])
    return web.Response(status=204)


async def delete_orders(request: web.Request) -> web.StreamResponse:
    results = []
    for order, error in request.app[STATE].cancel_all_orders():
        body = None if error is None else wire.ErrorBody(error.code, error.message)
        status = 200 if error is None else error.status
        results.append(wire.MultiStatus(id=order.id, status=status, body=body))
    return json_response(results, 207)


async def get_positions(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE].list_positions())


async def get_position(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE].get_position(request.match_info["symbol_or_asset_id"]))


async def delete_position(request: web.Request) -> web.StreamResponse:
    order = request.app[STATE].close_position(
        request.match_info["symbol_or_asset_id"],
        qty=_query_decimal(request, "qty"),
        percentage=_query_decimal(request, "percentage"),
    )
    return json_response(order.to_wire())


async def delete_positions(request: web.Request) -> web.StreamResponse:
    items: list[dict[str, Any]] = []
    for symbol, outcome in request.app[STATE].close_all_positions(_query_bool(request, "cancel_orders")):
        if isinstance(outcome, VenueError):
            items.append({"symbol": symbol, "status": outcome.status, "body": outcome.body()})
        else:
            items.append({"symbol": symbol, "status": 200, "order_id": outcome.id, "body": outcome.to_wire()})
    return json_response(items, 207)


async def get_account(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE].account())


async def get_clock(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE].market_clock())


async def get_calendar(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    today = state.calendar.local_date(state.clock.time_ns())

    def date_arg(name: str, default: dt.date) -> dt.date:
        text = request.query.get(name)
        if not text:
            return default
        try:
            return dt.date.fromisoformat(text[:10])
        except ValueError:
            raise unprocessable(f"invalid {name}: {text!r}", wire.CODE_MALFORMED) from None

    start = date_arg("start", today)
    end = date_arg("end", start + dt.timedelta(days=30))
    try:
        days = state.calendar.days(start, end)
    except ValueError as exc:
        raise unprocessable(str(exc)) from None
    return json_response(days)


async def get_assets(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    return json_response(
        state.list_assets(status=request.query.get("status"), asset_class=request.query.get("asset_class"))
    )


async def get_asset(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[STATE].asset(request.match_info["symbol_or_asset_id"]))


# ---------------------------------------------------------------- the application


def make_authorizer(key_id: str, secret_key: str) -> Callable[[str, str], bool]:
    """``authorize(key, secret)``: both match (compared in constant time)."""
    expected_key, expected_secret = key_id.encode(), secret_key.encode()

    def authorize(key: str, secret: str) -> bool:
        key_ok = hmac.compare_digest(key.encode(), expected_key)
        secret_ok = hmac.compare_digest(secret.encode(), expected_secret)
        return key_ok and secret_ok

    return authorize


def build_app(
    state: VenueState,
    hub: MarketDataEndpoint | None,
    key_id: str,
    secret_key: str,
    *,
    rate_limit_per_minute: int = 200,
    stream_queue_limit: int = 1024,
) -> web.Application:
    """The simulator's aiohttp application (REST v2, ``/stream`` and, with ``hub``, ``/v2/{feed}``)."""
    authorize = make_authorizer(key_id, secret_key)
    limiter = SlidingWindowLimiter(rate_limit_per_minute, state.clock)
    trade_hub = TradeStreamHub(state, authorize, stream_queue_limit)

    def rest(handler: Handler) -> Handler:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            faults = state.faults
            if faults.fail_next:
                status = faults.fail_next.pop(0)
                faults.count(fail_kind(status))
                log.info("fault_fail_request", path=request.path, status=status)
                message = _ERROR_TEXT.get(status, "injected failure")
                return error_response(status, _status_code(status), message)
            key = request.headers.get("APCA-API-KEY-ID", "")
            secret = request.headers.get("APCA-API-SECRET-KEY", "")
            if not authorize(key, secret):
                return error_response(401, wire.CODE_UNAUTHORIZED, "request is not authorized")
            allowed, remaining, reset_ns = limiter.hit(key)
            headers = {
                "X-RateLimit-Limit": str(limiter.limit),
                "X-RateLimit-Remaining": str(max(0, remaining)),
                "X-RateLimit-Reset": str(-(-reset_ns // NS_PER_S)),
            }
            response: web.StreamResponse
            if not allowed:
                response = error_response(429, wire.CODE_RATE_LIMIT, "rate limit exceeded")
            else:
                try:
                    response = await handler(request)
                except VenueError as exc:
                    response = error_response(exc.status, exc.code, exc.message, exc.extra)
            response.headers.update(headers)
            if faults.delay_response_s > 0:
                faults.count("response_delayed")
                await state.clock.sleep(faults.delay_response_s)
            return response

        return wrapped

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = wire.CODE_NOT_FOUND if exc.status == 404 else _status_code(exc.status)
            message = "endpoint not found" if exc.status == 404 else exc.reason.lower()
            return error_response(exc.status, code, message)
        except Exception:
            log.exception("request_failed", method=request.method, path=request.path)
            return error_response(500, wire.CODE_INTERNAL, "internal server error")

    app = web.Application(middlewares=[json_errors])
    app[STATE] = state
    app[TRADE_HUB] = trade_hub
    routes = app.router
    routes.add_post("/v2/orders", rest(post_order))
    routes.add_get("/v2/orders", rest(get_orders))
    routes.add_delete("/v2/orders", rest(delete_orders))
    routes.add_get("/v2/orders:by_client_order_id", rest(get_order_by_client_id))
    routes.add_get("/v2/orders/{order_id}", rest(get_order))
    routes.add_patch("/v2/orders/{order_id}", rest(patch_order))
    routes.add_delete("/v2/orders/{order_id}", rest(delete_order))
    routes.add_get("/v2/positions", rest(get_positions))
    routes.add_delete("/v2/positions", rest(delete_positions))
    routes.add_get("/v2/positions/{symbol_or_asset_id}", rest(get_position))
    routes.add_delete("/v2/positions/{symbol_or_asset_id}", rest(delete_position))
    routes.add_get("/v2/account", rest(get_account))
    routes.add_get("/v2/clock", rest(get_clock))
    routes.add_get("/v2/calendar", rest(get_calendar))
    routes.add_get("/v2/assets", rest(get_assets))
    routes.add_get("/v2/assets/{symbol_or_asset_id}", rest(get_asset))
    routes.add_get("/stream", trade_hub.handle)
    if hub is not None:
        routes.add_get("/v2/{feed}", hub.handle)  # after every static /v2 route: they win

    async def on_shutdown(_: web.Application) -> None:
        await trade_hub.close_all()
        if hub is not None:
            await hub.close_all()

    async def on_cleanup(_: web.Application) -> None:
        trade_hub.detach()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
