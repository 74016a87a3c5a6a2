"""Client-side rate limiting with a token bucket on the engine clock.

A :class:`TokenBucket` holds at most ``burst`` tokens and gains ``rate_per_s`` tokens a
second; each request spends one (or ``n``). Over any window of ``W`` seconds it grants
at most ``burst + rate_per_s × W`` tokens, and a full bucket lets a burst of ``burst``
requests go at once.

The bucket is kept as *credit* in integer nanoseconds: one token is worth
``interval_ns = ceil(1e9 / rate_per_s)`` ns of refill time and the bucket holds at most
``burst × interval_ns``. Credit grows by the time elapsed on the engine clock, so
refilling needs no timer, and the arithmetic is exact — no drift over a long session,
and the bound above holds to the nanosecond (rounding the interval up can only make the
bucket slightly slower than asked, never faster).

- :meth:`TokenBucket.try_acquire` takes tokens if they are there and never waits.
- :meth:`TokenBucket.acquire` *reserves* its tokens at once, letting the credit go
  negative, and then sleeps on the clock until the debt has been refilled. Waiters are
  therefore served first come, first served: later callers (``try_acquire`` included)
  see the debt and queue behind. With ``max_wait_s``, a caller whose wait would be
  longer is refused at once with :class:`RateLimited` and reserves nothing. A waiter that
  is cancelled gives its tokens back if nobody has queued behind it; otherwise they are
  forfeited (handing them to a later caller could break the bound above).

All times come from the :class:`~engine.clock.Clock` passed in; a backwards step of a
live wall clock pauses refilling until the clock has caught up.
"""

from __future__ import annotations

import math
from fractions import Fraction

from engine.clock import NS_PER_S, Clock
from engine.errors import KestrelError


class RateLimited(KestrelError):
    """Tokens could not be had within the caller's ``max_wait_s``; nothing was reserved.

    ``wait_s`` is how long the caller would have had to wait, as of the refusal.
    """

    def __init__(self, n: int, wait_s: float, max_wait_s: float) -> None:
        self.n = n
        self.wait_s = wait_s
        self.max_wait_s = max_wait_s
        super().__init__(
            f"rate limited: {n} token(s) available in {wait_s:.3f} s, more than the {max_wait_s:g} s allowed"
        )


class TokenBucket:
    """A token bucket: ``burst`` tokens at most, refilled at ``rate_per_s``; starts full.

    See the module docstring for the model. Not thread-safe; meant for one event loop.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Clock) -> None:
        if not (math.isfinite(rate_per_s) and rate_per_s > 0):
            raise ValueError(f"need a finite rate_per_s > 0, got {rate_per_s}")
        if burst < 1:
            raise ValueError(f"need burst >= 1, got {burst}")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.interval_ns = max(1, math.ceil(Fraction(NS_PER_S) / Fraction(rate_per_s)))
        """Refill time of one token, in ns (rounded up)."""
        self._capacity = burst * self.interval_ns
        self._credit = self._capacity  # ns of refill; negative while waiters hold reservations
        self._last_ns = clock.time_ns()
        self._reservations = 0  # sequence number of the latest waiting reservation
        self._tail = 0  # the reservation that may still be refunded, or 0

    def __repr__(self) -> str:
        return f"<TokenBucket {self.rate_per_s:g}/s burst={self.burst} available={self.available:.3f}>"

    @property
    def available(self) -> float:
        """Tokens that could be taken now (fractional; 0.0 while waiters are queued)."""
        self._refill(self.clock.time_ns())
        return max(0, self._credit) / self.interval_ns

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens if they are available now; never waits."""
        self._check_n(n)
        self._refill(self.clock.time_ns())
        need = n * self.interval_ns
        if self._credit >= need:
            self._credit -= need
            return True
        return False

    async def acquire(self, n: int = 1, max_wait_s: float | None = None) -> None:
        """Take ``n`` tokens, waiting on the engine clock until they have been refilled.

        Returns without yielding if the tokens are there. Raises :class:`RateLimited`,
        without waiting or reserving anything, if the wait would exceed ``max_wait_s``
        (``0`` makes this a raising :meth:`try_acquire`).
        """
        self._check_n(n)
        if max_wait_s is not None and not max_wait_s >= 0:  # NaN too
            raise ValueError(f"need max_wait_s >= 0, got {max_wait_s}")
        now = self.clock.time_ns()
        self._refill(now)
        need = n * self.interval_ns
        wait_ns = need - self._credit
        if wait_ns <= 0:
            self._credit -= need
            return
        if max_wait_s is not None and not math.isinf(max_wait_s) and wait_ns > round(max_wait_s * NS_PER_S):
            raise RateLimited(n, wait_ns / NS_PER_S, max_wait_s)
        self._credit -= need
        self._reservations += 1
        ticket = self._tail = self._reservations
        wake_ns = self._last_ns + wait_ns  # refill counts from _last_ns, which a backwards clock leaves ahead
        try:
            await self.clock.sleep_until(wake_ns)
        except BaseException:
            # Cancelled. Refund only the latest reservation, and only before it fell due:
            # then the ledger is exactly what it would be had we never asked.
            now = self.clock.time_ns()
            if self._tail == ticket and now < wake_ns:
                self._refill(now)
                self._credit += need
                self._tail = ticket - 1
            raise

    def _check_n(self, n: int) -> None:
        if not 1 <= n <= self.burst:
            raise ValueError(f"n must be between 1 and burst={self.burst}, got {n}")

    def _refill(self, now: int) -> None:
        if now > self._last_ns:
            self._credit = min(self._capacity, self._credit + (now - self._last_ns))
            self._last_ns = now


def per_minute(n: int, clock: Clock, *, burst: int | None = None) -> TokenBucket:
    """A bucket that never grants more than ``n`` requests in any 60-second window.

    Venue limits such as Alpaca's "200 requests per minute" are counted over a window, so
    a bucket refilling at ``n / 60`` per second with a burst on top would overshoot by
    the burst. This one refills at ``(n - burst) / 60`` per second instead, so that
    ``burst + rate × 60 <= n``. ``burst`` defaults to a tenth of ``n`` (at least 1): for
    ``per_minute(200, clock)``, 20 requests at once and 180 a minute sustained.
    """
    if n < 2:
        raise ValueError(f"need n >= 2 requests per minute, got {n}")
    if burst is None:
        burst = max(1, n // 10)
    if not 1 <= burst < n:
        raise ValueError(f"need 1 <= burst < n, got burst={burst}, n={n}")
    return TokenBucket((n - burst) / 60.0, burst, clock)
