"""Alpaca: the wire format (``wire``), the REST and stream clients, and the venue adapter actor."""
