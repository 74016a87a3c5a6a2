"""Typed errors of the Alpaca adapter, split by what the caller should do next.

- :class:`TransientError` — try again later (429, 5xx, timeouts, dropped connections).
- :class:`PermanentError` — the request itself is wrong or refused; retrying cannot help
  (400/401/403/404/422). :class:`OrderRejected` is the order-path flavour.
- :class:`AmbiguousOutcome` — we sent an order and do not know whether the venue took
  it, and could not find out yet. The order must stay pending, never be marked failed
  or sent again under a new id; reconciliation resolves it by client order id.
- :class:`StreamDown` — the trade-updates stream is not live, so orders are not sent.

Messages carry the HTTP status and Alpaca's error code and text, never credentials.
"""

from __future__ import annotations

from engine.errors import KestrelError


class AlpacaError(KestrelError):
    transient: bool = False

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        self.status = status
        self.code = code
        super().__init__(message)


class TransientError(AlpacaError):
    transient = True


class PermanentError(AlpacaError):
    transient = False


class NotFound(PermanentError):
    pass


class OrderRejected(PermanentError):
    """The venue refused the order (403 buying power / shortability, 422 invalid)."""


class AmbiguousOutcome(TransientError):
    def __init__(self, client_order_id: str, detail: str) -> None:
        self.client_order_id = client_order_id
        super().__init__(f"outcome of order {client_order_id} unknown: {detail}")


class StreamDown(TransientError):
    pass


class AuthenticationFailed(PermanentError):
    pass
