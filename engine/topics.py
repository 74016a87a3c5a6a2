"""Bus topic names: the one list of who talks to whom.

=================  ==========================================  ===========================
topic              messages                                    from → to
=================  ==========================================  ===========================
``md.raw``         ExchangeQuote, TradeTick, FeedState,        feed adapters → pricing
                   SymbolTradingStatus
``md.bbo``         BestBidOffer                                pricing → strategies, risk, venue
``md.trade``       TradeTick (clean)                           pricing → strategies
``md.bar``         Bar (time bars of what pricing published)   pricing → strategies
``md.status``      MarketDataStatus, ProviderSwitched,         pricing → strategies, risk
                   SymbolTradingStatus
``order.intent``   OrderIntent, CancelIntent                   strategies → risk
``order.approved`` ApprovedOrder, CancelIntent                 risk → order manager
``venue.command``  SubmitOrder, CancelOrder                    order manager → venue adapter
``venue.report``   OrderUpdate, VenueExecution                 venue adapter → order manager
``order.fill``     Fill, AccountBaseline                       order manager → settlement, strategies
``order.event``    RiskRejected, OrderUpdate, CancelRejected   risk, order manager → strategies
``venue.status``   VenueStatus                                 venue adapter → risk
``trading.state``  TradingStateChanged                         order manager (journal) → risk, strategies
``trading.request`` TradingStateRequest                        risk → order manager (which journals it)
``account.state``  AccountState                                settlement → risk
``audit``          SignalRecorded, RiskDecision,               strategies, risk → audit (which journals them)
                   OperatorActionRecorded
=================  ==========================================  ===========================
"""

from typing import Final

MD_RAW: Final = "md.raw"
MD_BBO: Final = "md.bbo"
MD_TRADE: Final = "md.trade"
MD_BAR: Final = "md.bar"
MD_STATUS: Final = "md.status"
ORDER_INTENT: Final = "order.intent"
ORDER_APPROVED: Final = "order.approved"
VENUE_COMMAND: Final = "venue.command"
VENUE_REPORT: Final = "venue.report"
ORDER_FILL: Final = "order.fill"
ORDER_EVENT: Final = "order.event"
VENUE_STATUS: Final = "venue.status"
TRADING_STATE: Final = "trading.state"
TRADING_REQUEST: Final = "trading.request"
ACCOUNT_STATE: Final = "account.state"
AUDIT: Final = "audit"
