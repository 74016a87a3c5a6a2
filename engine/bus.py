"""The in-process message bus: addresses, topics, request/reply and quiescence.

- An *address* names one actor's mailbox. ``send(address, msg)`` delivers to it.
- A *topic* is a string; ``publish(topic, msg)`` delivers to every address subscribed
  to it, in subscription order.
- ``request(address, msg)`` delivers a message together with a reply future; the actor's
  ``handle`` return value answers it.
- ``idle()`` returns once every message accepted by any mailbox has been handled. The
  replay driver awaits it between recorded events, which makes a replay deterministic.

Delivery never blocks when there is room: ``offer`` first, ``await put`` only when the
mailbox is full and its policy for that message says backpressure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Final

from engine.errors import UnknownAddress
from engine.mailbox import BACKPRESSURE, InflightCounter, Mailbox, Policy


class Request:
    """A message travelling with the future that receives its reply."""

    __slots__ = ("future", "message")

    def __init__(self, message: object, future: asyncio.Future[Any]) -> None:
        self.message = message
        self.future = future


DEFAULT_CAPACITY: Final = 1024


class Bus:
    def __init__(self) -> None:
        self.inflight = InflightCounter()
        self._mailboxes: dict[str, Mailbox] = {}
        self._topics: dict[str, list[Mailbox]] = {}

    # ------------------------------------------------------------ wiring

    def register(
        self,
        address: str,
        capacity: int = DEFAULT_CAPACITY,
        policies: Mapping[type, Policy] | None = None,
        default: Policy = BACKPRESSURE,
    ) -> Mailbox:
        """Create the mailbox for ``address``, or return the existing one.

        Registering an address twice returns the first mailbox unchanged: that is how a
        restarted actor finds the messages queued for its predecessor.
        """
        mailbox = self._mailboxes.get(address)
        if mailbox is None:
            mailbox = Mailbox(address, capacity, self.inflight, policies, default)
            self._mailboxes[address] = mailbox
        return mailbox

    def mailbox(self, address: str) -> Mailbox:
        try:
            return self._mailboxes[address]
        except KeyError:
            raise UnknownAddress(f"no actor is registered at {address!r}") from None

    @property
    def mailboxes(self) -> Mapping[str, Mailbox]:
        return self._mailboxes

    def subscribe(self, topic: str, address: str) -> None:
        """Subscribe ``address`` to ``topic``; subscribing twice has no further effect."""
        mailbox = self.mailbox(address)
        subscribers = self._topics.setdefault(topic, [])
        if mailbox not in subscribers:
            subscribers.append(mailbox)

    def unsubscribe(self, topic: str, address: str) -> None:
        subscribers = self._topics.get(topic)
        mailbox = self._mailboxes.get(address)
        if subscribers and mailbox in subscribers:
            subscribers.remove(mailbox)

    def subscribers(self, topic: str) -> list[str]:
        return [m.address for m in self._topics.get(topic, ())]

    # ------------------------------------------------------------ delivery

    async def publish(self, topic: str, message: object) -> None:
        for mailbox in self._topics.get(topic, ()):
            if not mailbox.offer(message):
                await mailbox.put(message)

    async def send(self, address: str, message: object) -> None:
        mailbox = self._mailboxes.get(address)
        if mailbox is None:
            raise UnknownAddress(f"no actor is registered at {address!r}")
        if not mailbox.offer(message):
            await mailbox.put(message)

    async def request(self, address: str, message: object, timeout_s: float = 5.0) -> Any:
        """Send ``message`` and wait for the actor's reply (``TimeoutError`` after ``timeout_s``)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        # The timeout covers delivery too: waiting for room in a full mailbox counts.
        async with asyncio.timeout(timeout_s):
            await self.send(address, Request(message, future))
            return await future

    async def idle(self) -> None:
        """Wait until no message is queued or being handled anywhere."""
        await self.inflight.wait_idle()
