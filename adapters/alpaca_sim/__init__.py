"""A venue simulator that speaks Alpaca's wire protocol (REST v2, trade_updates, market data v2)."""
