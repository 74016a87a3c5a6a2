"""Binance spot market data: frame decoding (``decode``), the local order book (``depth``), the live
websocket/REST client (``stream``) and its feed actor (``feed``)."""
