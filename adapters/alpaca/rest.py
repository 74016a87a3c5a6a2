"""Alpaca Trading API v2 over one pooled aiohttp session.

Every call goes through, in order: the token-bucket rate limiter (Alpaca allows 200
requests a minute per key), the circuit breaker of its endpoint group (``orders`` for
calls that change orders, ``queries`` for reads), then HTTP with connect and read
timeouts.

Retries: only idempotent calls (GETs) are retried, with full jitter, on transient
errors. Order submission follows the *ambiguous-outcome rule*: after a timeout, a
dropped connection or a 5xx, the order may or may not exist at the venue, so we never
resend blindly and never report failure. We look it up by client order id; if it is
not there after the venue's visibility delay, we resend with the **same** client order
id, which the venue refuses if the first one did arrive after all (422 "client_order_id
must be unique" — and then we look it up again). What cannot be settled within the
deadline is raised as :class:`~adapters.alpaca.errors.AmbiguousOutcome`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Final, TypeVar

import aiohttp
import msgspec

from adapters.alpaca import wire
from adapters.alpaca.errors import (
    AlpacaError,
    AmbiguousOutcome,
    AuthenticationFailed,
    NotFound,
    OrderRejected,
    PermanentError,
    TransientError,
)
from engine.backoff import full_jitter
from engine.breaker import BreakerOpen, CircuitBreaker
from engine.clock import Clock
from engine.logs import get_logger
from engine.ratelimit import RateLimited, per_minute
from engine.secrets import Secret

T = TypeVar("T")

DUPLICATE_MESSAGE: Final = "client_order_id must be unique"
_ORDER_DECODER: Final = msgspec.json.Decoder(wire.Order)
_ORDERS_DECODER: Final = msgspec.json.Decoder(list[wire.Order])
_ERROR_DECODER: Final = msgspec.json.Decoder(wire.ErrorBody)
_ENCODER: Final = msgspec.json.Encoder()
_CONNECTION_ERRORS: Final = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)


class RestSettings(msgspec.Struct, frozen=True, kw_only=True):
    rate_per_minute: int = 200
    connect_timeout_s: float = 2.0
    read_timeout_s: float = 5.0
    max_retries: int = 3
    retry_base_s: float = 0.05
    retry_cap_s: float = 2.0
    visibility_delay_s: float = 0.5
    """How long a just-accepted order may stay invisible to a lookup."""
    ambiguity_deadline_s: float = 10.0
    rate_limit_wait_s: float = 5.0


def _error(status: int, body: bytes) -> AlpacaError:
    try:
        parsed = _ERROR_DECODER.decode(body)
        code, message = parsed.code, parsed.message
    except msgspec.DecodeError:
        code, message = None, body[:200].decode("utf-8", "replace")
    text = f"HTTP {status}: {message}"
    if status == 401:
        return AuthenticationFailed(text, status, code)
    if status == 404:
        return NotFound(text, status, code)
    if status in (403, 422):
        return OrderRejected(text, status, code)
    if status == 429 or status >= 500:
        return TransientError(text, status, code)
    return PermanentError(text, status, code)


class AlpacaRest:
    def __init__(
        self,
        base_url: str,
        key_id: Secret,
        secret_key: Secret,
        clock: Clock,
        rng: random.Random,
        settings: RestSettings | None = None,
        on_breaker_change: Any = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.settings = settings or RestSettings()
        self.clock = clock
        self._rng = rng
        self._headers = {"APCA-API-KEY-ID": key_id.reveal(), "APCA-API-SECRET-KEY": secret_key.reveal()}
        self._session: aiohttp.ClientSession | None = None
        s = self.settings
        # At most rate_per_minute in any 60 s window, bursts included (see per_minute).
        self.rate = per_minute(s.rate_per_minute, clock)
        self.breakers = {
            "orders": CircuitBreaker("alpaca.orders", clock, on_change=on_breaker_change),
            "queries": CircuitBreaker("alpaca.queries", clock, on_change=on_breaker_change),
        }
        self.log = get_logger(actor="alpaca.rest")
        self.counters = {"requests": 0, "retries": 0, "ambiguous": 0, "resolved_by_lookup": 0, "resent": 0}

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._session is None:
            s = self.settings
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=s.connect_timeout_s, sock_read=s.read_timeout_s
                ),
                connector=aiohttp.TCPConnector(limit=16, keepalive_timeout=30),
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AlpacaRest:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------ transport

    async def _request(
        self,
        method: str,
        path: str,
        group: str,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, bytes]:
        """One HTTP exchange through rate limiter and breaker; raises typed errors for non-2xx."""
        if self._session is None:
            await self.open()
        assert self._session is not None
        headers = {"Content-Type": "application/json"} if body is not None else None
        # The breaker refuses first (no token spent on a refused call); inside its guard,
        # transient failures count against the venue, permanent 4xx answers do not.
        async with self.breakers[group].guard(counts=(TransientError,)):
            await self.rate.acquire(1, max_wait_s=self.settings.rate_limit_wait_s)
            self.counters["requests"] += 1
            try:
                async with self._session.request(
                    method,
                    f"{self.base_url}/v2{path}",
                    params=params,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                ) as response:
                    payload = await response.read()
                    status = response.status
            except _CONNECTION_ERRORS as exc:
                raise TransientError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if status >= 400:
                raise _error(status, payload)
        return status, payload

    async def _get(
        self, path: str, decoder: msgspec.json.Decoder[T], params: Mapping[str, str] | None = None
    ) -> T:
        """An idempotent read: retried with full jitter on transient errors."""
        attempt = 0
        while True:
            try:
                _, payload = await self._request("GET", path, "queries", params)
                return decoder.decode(payload)
            except TransientError:
                if attempt >= self.settings.max_retries:
                    raise
                self.counters["retries"] += 1
                await self.clock.sleep(
                    full_jitter(attempt, self.settings.retry_base_s, self.settings.retry_cap_s, self._rng)
                )
                attempt += 1

    # ------------------------------------------------------------ reads

    async def get_account(self) -> wire.Account:
        return await self._get("/account", msgspec.json.Decoder(wire.Account))

    async def list_positions(self) -> list[wire.Position]:
        return await self._get("/positions", msgspec.json.Decoder(list[wire.Position]))

    async def get_order(self, order_id: str) -> wire.Order:
        return await self._get(f"/orders/{order_id}", _ORDER_DECODER)

    async def find_order(self, client_order_id: str) -> wire.Order | None:
        """The order with this client order id, or None if the venue does not know it."""
        try:
            return await self._get(
                "/orders:by_client_order_id", _ORDER_DECODER, {"client_order_id": client_order_id}
            )
        except NotFound:
            return None

    async def list_orders(
        self, status: str = "open", after: str | None = None, limit: int = 500
    ) -> list[wire.Order]:
        params = {"status": status, "limit": str(limit), "direction": "asc"}
        if after is not None:
            params["after"] = after
        return await self._get("/orders", _ORDERS_DECODER, params)

    # ------------------------------------------------------------ order path

    async def submit_order(self, request: wire.OrderRequest) -> wire.Order:
        """Submit under the ambiguous-outcome rule (see the module docstring).

        ``request.client_order_id`` is required: it is what makes lookups and resends safe.
        """
        client_order_id = request.client_order_id
        if not client_order_id:
            raise ValueError("submit_order needs a client_order_id")
        body = _ENCODER.encode(request)
        try:
            _, payload = await self._request("POST", "/orders", "orders", body=body)
            return _ORDER_DECODER.decode(payload)
        except OrderRejected as exc:
            if DUPLICATE_MESSAGE in str(exc):
                # Our id is already there: an earlier attempt did arrive. That order is ours.
                found = await self.find_order(client_order_id)
                if found is not None:
                    self.counters["resolved_by_lookup"] += 1
                    return found
            raise
        except TransientError as exc:
            if exc.status == 429:
                raise  # refused before acceptance: nothing is at the venue
            self.counters["ambiguous"] += 1
            self.log.warning("submit_outcome_ambiguous", client_order_id=client_order_id, error=str(exc))
            return await self._resolve(request, body)

    async def _resolve(self, request: wire.OrderRequest, body: bytes) -> wire.Order:
        client_order_id = request.client_order_id
        assert client_order_id is not None
        settings = self.settings
        deadline = self.clock.time_ns() + int(settings.ambiguity_deadline_s * 1e9)
        resent = False
        attempt = 0
        while self.clock.time_ns() < deadline:
            try:
                found = await self.find_order(client_order_id)
                if found is None and not resent:
                    # Give a just-accepted order time to become visible before concluding.
                    await self.clock.sleep(settings.visibility_delay_s)
                    found = await self.find_order(client_order_id)
                if found is not None:
                    self.counters["resolved_by_lookup"] += 1
                    self.log.info(
                        "submit_resolved_by_lookup", client_order_id=client_order_id, status=found.status
                    )
                    return found
                # Not at the venue: resend under the same id (a duplicate would be refused).
                resent = True
                self.counters["resent"] += 1
                _, payload = await self._request("POST", "/orders", "orders", body=body)
                return _ORDER_DECODER.decode(payload)
            except OrderRejected as exc:
                if DUPLICATE_MESSAGE not in str(exc):
                    raise
            except (TransientError, BreakerOpen, RateLimited) as exc:
                self.log.warning("resolve_attempt_failed", client_order_id=client_order_id, error=str(exc))
            await self.clock.sleep(
                full_jitter(attempt, settings.retry_base_s, settings.retry_cap_s, self._rng)
            )
            attempt += 1
        raise AmbiguousOutcome(client_order_id, f"not settled within {settings.ambiguity_deadline_s:g} s")

    async def cancel_order(self, order_id: str) -> None:
        """DELETE /v2/orders/{id}: 204 on success; 422 when it is no longer cancelable."""
        await self._request("DELETE", f"/orders/{order_id}", "orders")
