"""The engine's message vocabulary.

Every message is a frozen, tagged ``msgspec.Struct``: one decoder handles the whole
:data:`Message` union, and the same struct is what travels on the bus, what the
journal stores and what a log line renders.

Conventions:

- ``ts_event``: when the venue or exchange says it happened; ``ts_recv``: when we
  received it; ``ts_init``: when we created the message. All integer nanoseconds since
  the Unix epoch, read from the engine clock.
- Prices, quantities and cash are :class:`decimal.Decimal`, never binary floats.
- Correlation ids travel end to end: ``intent_id`` from the strategy's intent to the
  fill, ``client_order_id`` from the order manager onwards.
"""

from __future__ import annotations

import enum
from decimal import Decimal

import msgspec


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


class OrderType(enum.StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"
    TRAILING_STOP = "trailing_stop"
    """The last three are never sent by Kestrel; they name venue orders recovery may adopt."""


class TimeInForce(enum.StrEnum):
    DAY = "day"
    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"
    OPG = "opg"
    CLS = "cls"


class OrderStatus(enum.StrEnum):
    """Order states, named exactly as Alpaca names them."""

    PENDING_NEW = "pending_new"
    ACCEPTED = "accepted"
    ACCEPTED_FOR_BIDDING = "accepted_for_bidding"
    NEW = "new"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    DONE_FOR_DAY = "done_for_day"
    PENDING_CANCEL = "pending_cancel"
    PENDING_REPLACE = "pending_replace"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REPLACED = "replaced"
    REJECTED = "rejected"
    STOPPED = "stopped"
    SUSPENDED = "suspended"
    CALCULATED = "calculated"
    HELD = "held"
    PENDING_REVIEW = "pending_review"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        OrderStatus.FILLED,
        OrderStatus.CANCELED,
        OrderStatus.EXPIRED,
        OrderStatus.REJECTED,
        OrderStatus.REPLACED,
    }
)


class Event(msgspec.Struct, frozen=True, tag=True, kw_only=True):
    """Base of every bus message. Subclasses are tagged by class name."""


# ---------------------------------------------------------------- market data


class ExchangeQuote(Event, frozen=True, kw_only=True):
    """A quote update as a provider delivered it, for one exchange.

    Some feeds update one side at a time: a side that did not change has ``None`` for
    price and size. ``national`` says what the update means:

    - ``False``: this exchange's own quote; the NBBO is the best across exchanges.
    - ``True``: the new national best for the side(s) it carries, resting at
      ``exchange``; it replaces the whole side. LEAN/AlgoSeek TAQ rows are of this kind
      (every bid row is paired with an ask row of the same timestamp, often from
      another exchange, and no row ever withdraws an exchange's stale quote).
    """

    symbol: str
    exchange: str
    national: bool
    bid_price: Decimal | None
    bid_size: Decimal | None
    ask_price: Decimal | None
    ask_size: Decimal | None
    suspicious: bool
    provider: str
    ts_event: int
    ts_recv: int
    ask_exchange: str | None = None
    """Where the ask rests, when a national quote names another exchange than the bid's."""
    sequence: int | None = None
    """The provider's update id, where its protocol has one (Binance ``u``): gaps,
    duplicates and reordering are detected on it, per symbol and provider."""


class TradeTick(Event, frozen=True, kw_only=True):
    symbol: str
    exchange: str
    price: Decimal
    size: Decimal
    suspicious: bool
    provider: str
    ts_event: int
    ts_recv: int
    sequence: int | None = None
    """The provider's trade id where it increases by one per trade (Binance ``t``)."""


class BestBidOffer(Event, frozen=True, kw_only=True):
    """The national best bid and offer for a symbol, as the pricing actor builds it."""

    symbol: str
    bid_price: Decimal
    bid_size: Decimal
    ask_price: Decimal
    ask_size: Decimal
    provider: str
    ts_event: int
    ts_init: int

    @property
    def mid(self) -> Decimal:
        return (self.bid_price + self.ask_price) / 2


class Bar(Event, frozen=True, kw_only=True):
    """A time bar of one symbol, built by the pricing actor from what it published (``md.bar``).

    It covers event time ``[start_ns, end_ns)``, aligned to ``interval_s`` on the epoch.
    From trades when the interval had any: open/high/low/close are trade prices, ``volume``
    the summed sizes, ``trades`` their count. An interval with quotes but no trade gives a
    *quote bar*: OHLC of the mid, ``volume`` 0 and ``trades`` 0 (``trades == 0`` is the flag).
    ``provider`` is the provider of the last event folded in. See actors/pricing.py for when
    a bar closes.
    """

    symbol: str
    interval_s: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int
    start_ns: int
    end_ns: int
    provider: str
    ts_init: int



class FeedState(Event, frozen=True, kw_only=True):
    """A feed adapter's connection to its provider went up or down (feed adapters → pricing)."""

    provider: str
    connected: bool
    reason: str
    ts_init: int


class SymbolTradingStatus(Event, frozen=True, kw_only=True):
    """A provider's trading status for a symbol (halt / resume) and/or its LULD price bands.

    ``halted`` is ``None`` when the message carries only bands (an Alpaca ``l`` message).
    Feed adapters publish it on ``md.raw``; pricing forwards it on ``md.status``.
    """

    symbol: str
    halted: bool | None
    reason: str
    provider: str
    ts_event: int
    ts_recv: int
    luld_lower: Decimal | None = None
    luld_upper: Decimal | None = None


class MarketDataStatus(Event, frozen=True, kw_only=True):
    """Pricing's verdict on one symbol's data: fresh or stale, and which provider is active.

    Published on ``md.status`` whenever a symbol turns stale (silence beyond its SLA, its
    provider disconnected, the whole feed silent) or fresh again. Risk refuses new orders
    in a stale symbol; strategies are told.
    """

    symbol: str
    fresh: bool
    provider: str | None
    reason: str
    ts_init: int


class ProviderSwitched(Event, frozen=True, kw_only=True):
    """Pricing moved a symbol to another provider (failover, or back after hysteresis)."""

    symbol: str
    from_provider: str | None
    to_provider: str
    reason: str
    ts_init: int

# ---------------------------------------------------------------- order path


class OrderIntent(Event, frozen=True, kw_only=True):
    """A strategy's wish to trade; risk decides whether it becomes an order."""

    intent_id: str
    strategy: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType
    limit_price: Decimal | None = None
    time_in_force: TimeInForce = TimeInForce.DAY
    ts_init: int
    ts_trigger: int = 0
    """Engine-clock time the market data behind it was priced (its ``ts_init``; set by the
    strategy host): where ``kestrel_tick_to_order_seconds`` starts. 0: not market data."""


class RiskRejected(Event, frozen=True, kw_only=True):
    """Risk refused an intent. ``reason`` is a stable code; ``inputs`` what it looked at."""

    intent_id: str
    strategy: str
    symbol: str
    reason: str
    detail: str
    inputs: dict[str, str]
    ts_init: int


class ApprovedOrder(Event, frozen=True, kw_only=True):
    """An intent that passed every pre-trade check, with the reference price risk used."""

    intent: OrderIntent
    reference_price: Decimal
    ts_init: int
    inputs: dict[str, str] = {}
    """What the checks looked at (notional, projected position, borrow rate of a short …)."""


class SubmitOrder(Event, frozen=True, kw_only=True):
    """The order manager's instruction to a venue adapter."""

    client_order_id: str
    intent_id: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    time_in_force: TimeInForce
    ts_init: int


class CancelOrder(Event, frozen=True, kw_only=True):
    client_order_id: str
    ts_init: int


class CancelIntent(Event, frozen=True, kw_only=True):
    """A strategy asks for one of its orders to be cancelled, named by the intent id it chose.

    Strategies (and execution algorithms) know an order's intent id the moment they create
    it; its client order id exists only once the order manager has journaled the order. So
    a cancel names the intent, takes the intent's path (``order.intent`` → risk →
    ``order.approved`` → order manager) and, travelling behind the order it cancels through
    the same FIFO mailboxes, always finds that order already in the order manager's book.
    The order manager resolves it to a client order id, journals a ``CancelRequested`` and
    only then sends ``CancelOrder``. A cancel that cannot be carried out comes back as a
    :class:`CancelRejected`; the venue's confirmation is the order's ``OrderUpdate``.
    """

    intent_id: str
    strategy: str
    reason: str = ""
    ts_init: int


class CancelRequested(Event, frozen=True, kw_only=True):
    """Journal record: the order manager is about to send ``CancelOrder`` for this order.

    Written before the cancel leaves, like an order before its submit: after a crash,
    recovery sends the cancel again for an order the venue still has working.
    """

    client_order_id: str
    intent_id: str
    strategy: str
    reason: str
    ts_init: int


class CancelRejected(Event, frozen=True, kw_only=True):
    """A :class:`CancelIntent` that was not carried out, and why (``order.event``).

    ``reason`` is a stable code: ``CANCEL_RATE`` (risk's cancel-rate cap), ``NOT_WORKING``
    (the order is already final, or was never sent), ``UNKNOWN_INTENT`` (no order has that
    intent id), ``NOT_OWNER`` (another strategy's order) or ``JOURNAL_FAILED``.
    """

    intent_id: str
    strategy: str
    reason: str
    detail: str
    ts_init: int


class OrderUpdate(Event, frozen=True, kw_only=True):
    """A venue's report of an order's new state (ack, cancel, reject, expiry)."""

    client_order_id: str
    venue_order_id: str
    status: OrderStatus
    reason: str | None = None
    filled_qty: Decimal = Decimal(0)
    intent_id: str | None = None
    """Filled in by the order manager when it forwards the update to strategies."""
    strategy: str | None = None
    authoritative: bool = False
    """The venue's answer to a reconciliation lookup: its truth, applied even where the
    transition table would not allow it (and then logged loudly)."""
    ts_event: int
    ts_recv: int


class VenueExecution(Event, frozen=True, kw_only=True):
    """An execution as the venue reports it: the venue knows our client order id, not our intents."""

    client_order_id: str
    venue_order_id: str
    execution_id: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal
    ts_event: int
    ts_recv: int
    cum_qty: Decimal | None = None
    """The order's cumulative filled quantity after this execution, when the venue says it.

    The order manager books only what raises the cumulative quantity, so an execution
    reported twice under different ids (a live event and a REST catch-up) counts once.
    """


class Fill(Event, frozen=True, kw_only=True):
    """One execution. ``execution_id`` is the venue's, and unique per fill."""

    client_order_id: str
    venue_order_id: str
    execution_id: str
    intent_id: str
    strategy: str
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal
    ts_event: int
    ts_recv: int


# ---------------------------------------------------------------- journal records
#
# What the order manager writes to the journal besides the messages above (OrderUpdate,
# Fill, RiskRejected): the write-ahead intent to send, the account baseline cash and
# positions are counted from, venue truth adopted during reconciliation, and the
# trading state (the kill switch).


class OrderSubmitting(Event, frozen=True, kw_only=True):
    """Committed to the journal *before* the venue sees the order (the write-ahead rule)."""

    order: SubmitOrder
    strategy: str
    sequence: int
    """The order manager's client-order-id sequence number; never reused across restarts."""
    ts_init: int


class AccountBaseline(Event, frozen=True, kw_only=True):
    """Cash and positions as the venue reported them; the journal's book counts from here."""

    cash: Decimal
    positions: dict[str, Decimal]
    source: str
    ts_init: int


class OrderAdopted(Event, frozen=True, kw_only=True):
    """A venue order carrying our client-order-id prefix that the journal did not know."""

    order: SubmitOrder
    sequence: int
    """Its sequence number, parsed from the client order id: never to be issued again."""
    reason: str
    ts_init: int


class OrderReconciled(Event, frozen=True, kw_only=True):
    """The venue's view of an order, adopted after a restart, a gap or an impossible transition."""

    client_order_id: str
    venue_order_id: str
    status: OrderStatus
    filled_qty: Decimal
    reason: str
    ts_init: int


class TradingState(enum.StrEnum):
    """Risk's trading states (DESIGN §6)."""

    RECOVERING = "recovering"
    """Starting up: the journal and the venue are being reconciled; no new orders."""
    ACTIVE = "active"
    REDUCING = "reducing"
    """Only orders that shrink exposure."""
    HALTED = "halted"
    """No new orders."""


class TradingStateChanged(Event, frozen=True, kw_only=True):
    """The kill switch: who changed the trading state and why. Journaled; survives restarts."""

    state: TradingState
    reason: str
    ts_init: int
    cause: str = ""
    """What moved it: ``recovery``, ``operator``, ``daily_loss``, ``drawdown``, ``journal``,
    ``unacknowledged_order`` … (empty in journals written before causes were recorded)."""


class TradingStateRequest(Event, frozen=True, kw_only=True):
    """Risk → order manager (``trading.request``): journal this state, then announce it on
    ``trading.state``. The order manager is the journal's only writer; a state takes effect
    when risk hears it back, so a state that could not be journaled is still announced (and
    logged as not durable) rather than lost."""

    state: TradingState
    reason: str
    cause: str
    ts_init: int


class OperatorAction(enum.StrEnum):
    HALT = "halt"
    """Kill switch: no new orders, working orders cancelled. Survives restarts."""
    RESUME = "resume"
    """Back to ``ACTIVE`` (only from ``HALTED`` or ``REDUCING`` set by an operator or a limit)."""
    FLATTEN = "flatten"
    """``REDUCING``, then an order closing every open position (risk-reducing orders only)."""


class OperatorCommand(Event, frozen=True, kw_only=True):
    """An operator's instruction from the control channel (``kestrel halt|resume|flatten``)."""

    action: OperatorAction
    reason: str
    operator: str
    """Who, as the control channel identified them (never a credential)."""
    ts_init: int


class OperatorReply(Event, frozen=True, kw_only=True):
    accepted: bool
    state: TradingState
    """The trading state after the command."""
    detail: str
    intents: list[str] = []
    """Intent ids of the orders a flatten emitted."""


# ---------------------------------------------------------------- reconciliation


class ReconcileOrders(Event, frozen=True, kw_only=True):
    """Order manager → venue adapter: look these orders up and report what the venue has.

    The adapter answers on ``venue.report`` through the normal path: missed executions
    (with cumulative quantities), then an ``OrderUpdate`` with ``authoritative=True``;
    an order the venue does not have after its visibility delay is reported ``rejected``
    with the reason.
    """

    client_order_ids: list[str]
    reason: str
    ts_init: int


class VenueOrder(Event, frozen=True, kw_only=True):
    """One order as the venue has it."""

    client_order_id: str
    venue_order_id: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType
    limit_price: Decimal | None
    time_in_force: TimeInForce
    status: OrderStatus
    filled_qty: Decimal
    filled_avg_price: Decimal | None
    updated_ns: int


class VenueSnapshotQuery(Event, frozen=True, kw_only=True):
    """Recovery asks the venue adapter (request/reply) for its view of our business."""

    client_order_ids: list[str]
    """Orders the journal thinks are working or unacknowledged: each is looked up."""
    prefix: str
    """Our client-order-id prefix: open venue orders carrying it are reported too."""
    ts_init: int


class VenueSnapshot(Event, frozen=True, kw_only=True):
    orders: list[VenueOrder]
    missing: list[str]
    """Asked for, and not at the venue after its visibility delay."""
    positions: dict[str, Decimal] | None
    """Signed quantities; None when the venue cannot say (the in-process replay venue)."""
    cash: Decimal | None
    ts_init: int
    unavailable: str = ""
    """Why the venue could not be asked just now (a 5xx or 429 storm, an open breaker); when
    set, nothing above is meaningful and the requester asks again later."""


class Recover(Event, frozen=True, kw_only=True):
    """The composition root → order manager (request/reply), once every actor has started."""


class RecoveryReport(Event, frozen=True, kw_only=True):
    """What recovery found and did; ``state`` is the trading state it left risk in."""

    state: TradingState
    reason: str
    journal_seq: int
    orders_known: int
    orders_checked: int
    adopted: list[str]
    missed_fills: int
    not_at_venue: list[str]
    mismatches: list[str]
    """One line per position or cash difference beyond tolerance (empty when the books agree)."""


class VenueStatus(Event, frozen=True, kw_only=True):
    """Whether a venue can take orders now, per component of its order path.

    Published by a venue adapter on ``venue.status`` whenever a component changes state:
    ``component`` is e.g. ``"orders"`` (the order endpoint's circuit breaker) or
    ``"trade_updates"`` (the order-event stream). ``available`` False means an order sent
    now would be refused or could not be followed; risk refuses intents until the venue
    says otherwise. ``retry_at_ns``, when set, is the engine-clock time after which a
    trial order may be let through (a breaker turns half-open then, and only traffic can
    close it again).
    """

    venue: str
    component: str
    available: bool
    state: str
    reason: str
    retry_at_ns: int | None = None
    ts_event: int


# ---------------------------------------------------------------- queries


class PortfolioQuery(Event, frozen=True, kw_only=True):
    """Ask the settlement actor for its current book (request/reply)."""


class PortfolioSnapshot(Event, frozen=True, kw_only=True):
    cash: Decimal
    positions: dict[str, Decimal]
    realized_pnl: Decimal
    fees: Decimal
    fills: int


class AccountState(Event, frozen=True, kw_only=True):
    """The ledger's view after a fill (``account.state``): what risk's account checks read.

    Quantities are signed (short < 0). Money is exact. Prices for exposure come from the
    reader's own marks (risk keeps the latest NBBO), not from here.
    """

    account_type: str
    """``cash`` or ``margin``."""
    cash: Decimal
    settled_cash: Decimal
    """Cash whose trades have settled (T+1 for US equities on the exchange calendar)."""
    positions: dict[str, Decimal]
    avg_prices: dict[str, Decimal]
    realized_pnl: Decimal
    fees: Decimal
    fills: int
    trade_date: str
    """ISO date of the engine clock's trading day (New York) this state was computed for."""
    opened_today: dict[str, Decimal]
    """Per symbol, signed quantity opened on ``trade_date`` and still open: closing it is a day trade."""
    day_trades: int
    """Day trades in the last five business days, ``trade_date`` included."""
    gfv_restricted: dict[str, Decimal]
    """Cash accounts: per symbol, quantity bought with unsettled proceeds whose sale before
    those proceeds settle would be a good-faith violation."""
    ts_init: int
    good_faith_violations: int = 0
    """Cash accounts: good-faith violations in the twelve months up to ``trade_date`` (brokers
    restrict an account to settled cash after three)."""


class FillHistoryQuery(Event, frozen=True, kw_only=True):
    """Ask the order manager for the fills it has booked (a restarted ledger rebuilds from them)."""

    after: int = 0
    """Skip the first ``after`` fills (a ledger restored from a snapshot already holds them)."""


class FillHistory(Event, frozen=True, kw_only=True):
    fills: list[Fill]
    baseline_cash: Decimal | None = None
    """The cash the fills count from, when the order manager knows it (from the journal)."""
    baseline_positions: dict[str, Decimal] = {}
    skipped_last_execution_id: str | None = None
    """The execution id of the last fill skipped (``after`` > 0): the asker checks it holds it."""
    total: int = 0
    """How many fills the order manager has booked in all."""


class TradingStateQuery(Event, frozen=True, kw_only=True):
    """Ask the order manager for the trading state in force (request/reply: a
    :class:`TradingStateChanged` with cause ``query``; ``RECOVERING`` until recovery is done).
    A risk actor restarted alone resumes from it instead of its initial state."""


class WorkingOrdersQuery(Event, frozen=True, kw_only=True):
    """Ask the order manager for every order the venue may still fill (a restarted risk
    actor seeds its working-order view from it)."""


class WorkingOrderView(msgspec.Struct, frozen=True, kw_only=True):
    """One working order as the order manager's book has it (part of :class:`WorkingOrders`)."""

    client_order_id: str
    intent_id: str
    strategy: str
    symbol: str
    side: Side
    order_type: OrderType
    remaining_qty: Decimal
    """Quantity minus what has been booked filled."""
    limit_price: Decimal | None
    execution_ids: list[str] = []
    """The executions ``remaining_qty`` already accounts for: a ``Fill`` carrying one of
    them, still on its way to the reader, must not be subtracted again."""


class WorkingOrders(Event, frozen=True, kw_only=True):
    orders: list[WorkingOrderView]
    """Oldest first."""


class RiskReportQuery(Event, frozen=True, kw_only=True):
    """Ask the risk actor for its view of the account's risk (request/reply: a :class:`RiskReport`)."""


class RiskReport(Event, frozen=True, kw_only=True):
    """Risk's figures now: the trading state and the account marked at the latest mids.

    Money is exact where it comes from the ledger and the marks. VaR and expected
    shortfall are statistical estimates (historical, over risk's mark samples: one per
    ``mark_interval_s`` while positions are open), computed in floats and reported rounded
    to the cent; None until enough samples exist.
    """

    trading_state: str
    trading_reason: str
    equity: Decimal
    long_exposure: Decimal
    short_exposure: Decimal
    gross_exposure: Decimal
    net_exposure: Decimal
    leverage: Decimal
    """Gross exposure / equity (0 when equity ≤ 0)."""
    concentration_pct: dict[str, Decimal]
    """Per symbol, |market value| as a percentage of equity."""
    daily_pnl: Decimal
    drawdown_pct: Decimal
    high_water: Decimal
    var_95: Decimal | None
    es_95: Decimal | None
    var_samples: int
    working_orders: int
    paused_strategies: list[str]
    ts_init: int


class StatsQuery(Event, frozen=True, kw_only=True):
    """Ask any actor for its counters (request/reply)."""


class ActorStats(Event, frozen=True, kw_only=True):
    counters: dict[str, int]
    breakdown: dict[str, dict[str, int]] = {}


# ---------------------------------------------------------------- audit records
#
# Why an order exists, why it was or was not let through, what an operator did. Published
# on ``audit`` (strategy host, risk) and journaled by the audit actor (actors/audit.py),
# not by the order manager, which stays the only writer of order records. They explain the
# order book and are never part of it: actors/order_book.py skips them. Correlation: the
# ``intent_id`` links a signal and its risk decision to the order manager's
# ``OrderSubmitting``, which holds the client order id every later order record carries.


class SignalRecorded(Event, frozen=True, kw_only=True):
    """A strategy returned an intent: what it asked for, and the feature values that produced it."""

    intent_id: str
    strategy: str
    symbol: str
    side: Side
    qty: Decimal
    order_type: OrderType
    limit_price: Decimal | None = None
    features: dict[str, str]
    """Feature name → value as an exact string: decimals as they are, floats (EMAs …) as their
    shortest round-trip repr (``float(value)`` gives the very value the strategy compared)."""
    trigger: str
    """The message the strategy was reacting to (``BestBidOffer``, ``Fill`` …)."""
    ts_trigger: int
    """That message's event time (its ``ts_event``; its ``ts_init`` when it has none)."""
    ts_init: int


class RiskDecision(Event, frozen=True, kw_only=True):
    """Risk's verdict on one intent, approved or rejected, with what the checks looked at.

    Risk does not assign client order ids (the order manager does, when it journals
    ``OrderSubmitting``): the decision links to its order through ``intent_id``.
    """

    intent_id: str
    strategy: str
    symbol: str
    side: Side
    qty: Decimal
    approved: bool
    reason: str = ""
    """The rejection's stable code (``MAX_ORDER_QTY``, ``TRADING_HALTED`` …); empty when approved."""
    detail: str = ""
    """The rejection in words; empty when approved."""
    reference_price: Decimal | None = None
    """The price an approved order was checked at (None when rejected)."""
    trading_state: TradingState
    """The trading state the intent was checked in."""
    inputs: dict[str, str] = {}
    """What the checks looked at: the values compared and the limits they were compared with."""
    ts_init: int


class OperatorActionRecorded(Event, frozen=True, kw_only=True):
    """An operator command (halt, resume, flatten) and risk's answer. Never holds a credential:
    ``operator`` is who the control channel says sent it, never its token."""

    action: OperatorAction
    operator: str
    reason: str
    accepted: bool
    result: str
    """Risk's answer in words (the reply's ``detail``)."""
    state: TradingState
    """The trading state after the command."""
    intents: list[str] = []
    """Intent ids of the closing orders a flatten sent."""
    ts_command: int
    """When the control channel received the command."""
    ts_init: int


AuditRecord = SignalRecorded | RiskDecision | OperatorActionRecorded


class DataFileDigest(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    bytes: int
    sha256: str


class RunManifest(Event, frozen=True, kw_only=True):
    """What a run was made of, journaled first at every start (``kestrel journal show --manifest``).

    Enough to reproduce it or to tell two runs apart: the code (version and source
    revision), the effective config (canonical JSON and its sha256), the data files with
    their hashes, every seed, and the feature pipeline's hash. Never a credential: the
    config holds none (keys come from the environment or a secrets file, named by path).
    """

    run_id: str
    mode: str
    """``replay``, ``paper`` or ``live``."""
    boot: int
    """This start's number on the journal (1, 2, ...); 0 without a journal."""
    version: str
    source_revision: str
    """``git`` commit of the source tree (``+dirty`` with uncommitted changes); ``unknown`` outside a checkout."""
    python: str
    platform: str
    config_sha256: str
    config_json: str
    """The effective config (profile applied), as canonical JSON with sorted keys."""
    data_files: list[DataFileDigest]
    seeds: dict[str, int]
    pipeline_hash: str = ""
    """The feature pipeline's hash; empty while no strategy declares features."""
    strategy: str
    ts_init: int
"""What the audit actor journals (``isinstance(record, AuditRecord)`` tells them from order records)."""


Message = (
    ExchangeQuote
    | TradeTick
    | BestBidOffer
    | Bar
    | FeedState
    | SymbolTradingStatus
    | MarketDataStatus
    | ProviderSwitched
    | OrderIntent
    | RiskRejected
    | ApprovedOrder
    | SubmitOrder
    | CancelOrder
    | CancelIntent
    | CancelRequested
    | CancelRejected
    | OrderUpdate
    | VenueExecution
    | Fill
    | OrderSubmitting
    | OrderAdopted
    | AccountBaseline
    | OrderReconciled
    | ReconcileOrders
    | VenueOrder
    | VenueSnapshotQuery
    | VenueSnapshot
    | Recover
    | RecoveryReport
    | TradingStateChanged
    | TradingStateRequest
    | OperatorCommand
    | OperatorReply
    | AccountState
    | VenueStatus
    | PortfolioQuery
    | PortfolioSnapshot
    | FillHistoryQuery
    | FillHistory
    | TradingStateQuery
    | WorkingOrdersQuery
    | WorkingOrders
    | RiskReportQuery
    | RiskReport
    | StatsQuery
    | ActorStats
    | SignalRecorded
    | RiskDecision
    | OperatorActionRecorded
    | RunManifest
)
"""Every message the engine knows: ``msgspec.json.decode(data, type=Message)`` picks the class by tag."""
