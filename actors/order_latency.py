"""The order path's latencies, timed by the order manager on the engine clock.

- ``tick_to_order``: from the market data that triggered an intent (its receive time, as
  the intent carries it) to the order leaving for the venue, journal commit included;
- ``submit_to_ack``: from the order leaving to the first thing the venue says about it
  (an acknowledgement, a rejection, or a fill that overtook the ack);
- ``ack_to_fill``: from that first word to each fill.

Only orders sent by this process are timed: an order recovered from the journal was sent
by an earlier process, whose clock reading is not comparable. The composition root
creates one :class:`OrderPathLatency` and hands it to every incarnation of the order
manager, so a restarted actor keeps counting (Prometheus histograms must not go back).
Entries are dropped when an order finishes, so the maps hold working orders only.
"""

from __future__ import annotations

from engine.metrics import Histogram

__all__ = ["OrderPathLatency"]


class OrderPathLatency:
    def __init__(self) -> None:
        self.tick_to_order = Histogram()
        self.submit_to_ack = Histogram()
        self.ack_to_fill = Histogram()
        self._sent_ns: dict[str, int] = {}
        self._heard_ns: dict[str, int] = {}

    def sent(self, client_order_id: str, now_ns: int, trigger_ns: int = 0) -> None:
        """The order left for the venue; ``trigger_ns`` is its market data's receive time (0: unknown)."""
        self._sent_ns[client_order_id] = now_ns
        if trigger_ns > 0:
            self.tick_to_order.observe(now_ns - trigger_ns)

    def heard(self, client_order_id: str, now_ns: int) -> None:
        """The venue said something about the order (only the first time counts)."""
        sent = self._sent_ns.pop(client_order_id, None)
        if sent is not None:
            self.submit_to_ack.observe(now_ns - sent)
            self._heard_ns[client_order_id] = now_ns

    def filled(self, client_order_id: str, now_ns: int) -> None:
        self.heard(client_order_id, now_ns)
        heard = self._heard_ns.get(client_order_id)
        if heard is not None:
            self.ack_to_fill.observe(now_ns - heard)

    def finished(self, client_order_id: str) -> None:
        self._sent_ns.pop(client_order_id, None)
        self._heard_ns.pop(client_order_id, None)

    @property
    def tracked(self) -> int:
        """Orders being timed (sent by this process and not finished)."""
        return len(self._sent_ns) + len(self._heard_ns)
