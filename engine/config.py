"""Configuration: TOML files into typed, validated structs.

- Every problem in a file is reported at once, each as ``FILE: key.path: problem``.
- ``[profiles.NAME]`` tables hold overrides, deep-merged over the base when a profile is
  selected (``--profile NAME`` or ``KESTREL_PROFILE``).
- Relative paths are relative to the config file's folder.
- Secrets never live in a config file: credentials come from the environment
  (``APCA_API_KEY_ID`` / ``APCA_API_SECRET_KEY``) or from a secrets file the config
  names. Placeholder values are refused; loaded values are :class:`~engine.secrets.Secret`.
- Paper trading is the default. ``mode = "live"`` is refused unless confirmed with
  ``--confirm-live`` or ``KESTREL_CONFIRM_LIVE=yes``.
"""

from __future__ import annotations

import datetime as dt
import re
import tomllib
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, get_args, get_origin

import msgspec

from engine.errors import ConfigError, LiveTradingNotConfirmed
from engine.secrets import Secret, is_placeholder

KEY_ENV: Final = "APCA_API_KEY_ID"
SECRET_ENV: Final = "APCA_API_SECRET_KEY"
CONFIRM_LIVE_ENV: Final = "KESTREL_CONFIRM_LIVE"
PROFILE_ENV: Final = "KESTREL_PROFILE"
_RUN_ID = re.compile(r"^[A-Za-z0-9]{1,16}$")
_SHA256_HEX: Final = re.compile(r"[0-9a-f]{64}")
_SECRET_LOOKING_KEYS: Final = frozenset(
    {"secret", "password", "token", "api_key", "key_id", "secret_key", "api_secret"}
)
_SECRET_LOOKING_SUFFIXES: Final = ("_secret", "_token", "_password", "_key_id", "_secret_key")
_LOADER_FIELDS: Final = frozenset({"profile"})


class EngineSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mode: Literal["paper", "live"] = "paper"
    run_id: str = "kestrel"
    """Prefix of every client order id this engine sends: letters and digits, at most 16."""
    seed: int = 7
    """Seed of the run's random generator (forked per actor); recorded in the run summary."""

    def __post_init__(self) -> None:
        if not _RUN_ID.match(self.run_id):
            raise ValueError("run_id: must be 1-16 letters or digits (it prefixes client order ids)")


class LogSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str | None = "logs/kestrel.jsonl"
    level: Literal["debug", "info", "warning", "error"] = "info"


class DataSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    format: Literal["lean-ticks"] = "lean-ticks"
    files: list[str] = msgspec.field(default_factory=list)
    """Recording files; empty means the bundled sample day."""
    symbol: str | None = None
    """Symbol of lean-ticks files (their rows do not name it); default: the parent folder's name."""
    symbols: list[str] = msgspec.field(default_factory=list)
    """Live and paper sessions against a venue: the symbols to subscribe to; empty means the
    symbols of ``files`` (the recording the embedded simulator replays)."""


class ExecutionSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How the strategy host works the order a ``TargetPosition`` calls for.

    ``market``: one market order for the difference. ``twap``: a TWAP of the difference
    over ``duration_s`` in ``slices`` children (market children, or limits ``limit_offset``
    through the quote). ``vwap``: the same window, sliced by the intraday volume profile of
    the LEAN trade recordings ``vwap_trades`` (``bucket_minutes`` buckets of the regular
    session; none: a flat profile), so more is done when more trades; a window with no
    session volume (a target before the open) is refused, logged, and not ordered.
    ``chaser``: a limit at our side's touch, re-pegged at most
    ``max_repegs`` times with adaptive timeouts from ``timeout_s`` up to ``max_timeout_s``;
    the last child crosses the spread (``on_exhausted = "cross"``) or rests (``"leave"``).
    Every child goes through risk like any order; re-pegs cancel through risk too.
    """

    algo: Literal["market", "twap", "vwap", "chaser"] = "market"
    duration_s: float = 300.0
    slices: int = 5
    limit_offset: Decimal | None = None
    vwap_trades: list[str] = msgspec.field(default_factory=list)
    bucket_minutes: int = 30
    max_repegs: int = 3
    timeout_s: float = 2.0
    max_timeout_s: float = 10.0
    min_timeout_s: float | None = None
    """The chaser's shortest timeout (a fast market shortens them). Unset: a quarter of
    ``timeout_s``, but never under ``[risk] duplicate_window_s``: a re-peg at an unchanged
    touch is the same order again, which risk's duplicate guard would refuse."""
    on_exhausted: Literal["leave", "cross"] = "cross"
    tick: Decimal = Decimal("0.01")
    lot: Decimal = Decimal(1)

    def __post_init__(self) -> None:
        if not self.duration_s > 0:
            raise ValueError("duration_s: must be positive")
        if self.slices < 1:
            raise ValueError("slices: must be at least 1")
        if self.max_repegs < 0:
            raise ValueError("max_repegs: must not be negative")
        if not 0 < self.timeout_s <= self.max_timeout_s:
            raise ValueError("timeout_s: need 0 < timeout_s <= max_timeout_s")
        if self.min_timeout_s is not None and not 0 < self.min_timeout_s <= self.timeout_s:
            raise ValueError("min_timeout_s: need 0 < min_timeout_s <= timeout_s")
        if self.bucket_minutes < 1:
            raise ValueError("bucket_minutes: must be at least 1")
        if not (self.tick > 0 and self.lot > 0):
            raise ValueError("tick and lot: must be positive")


class StrategySection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str = "ema-cross"
    params: dict[str, Any] = msgspec.field(default_factory=dict)
    execution: ExecutionSection = msgspec.field(default_factory=ExecutionSection)
    pipeline_hash: str = ""
    """Pin: the feature-pipeline hash the strategy was built for (overrides the strategy's own
    pin); a run whose pipeline for it differs refuses to start. Empty: no pin from the config."""

    def __post_init__(self) -> None:
        if self.pipeline_hash and not _SHA256_HEX.fullmatch(self.pipeline_hash):
            raise ValueError("pipeline_hash: must be 64 lowercase hex digits (a sha256) or empty")


class LimitsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Limits that can be set per strategy (``[risk.strategies.NAME]``) or per symbol
    (``[risk.symbols.SYMBOL]``) over the account's (``[risk]``); the most restrictive
    value set at any of the three levels applies. Unset: no limit at that level."""

    max_order_qty: Decimal | None = None
    max_order_notional: Decimal | None = None
    collar_pct: Decimal | None = None
    max_orders_per_s: int | None = None
    max_open_orders: int | None = None
    max_position_qty: Decimal | None = None
    max_position_notional: Decimal | None = None
    max_gross_exposure: Decimal | None = None
    max_net_exposure: Decimal | None = None
    max_leverage: Decimal | None = None
    max_symbol_concentration_pct: Decimal | None = None
    max_sector_concentration_pct: Decimal | None = None
    max_adv_participation_pct: Decimal | None = None

    def __post_init__(self) -> None:
        for field in msgspec.structs.fields(self):
            value = getattr(self, field.name)
            if value is not None and value <= 0:
                raise ValueError(f"{field.name}: must be positive")


class AssetSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What risk knows about a symbol (``[risk.assets.SYMBOL]``; patterns such as ``*USDT``).
    Alpaca's asset endpoint says the same things for equities."""

    shortable: bool = False
    easy_to_borrow: bool = False
    borrow_rate_pct: Decimal = Decimal(0)
    """Annual borrow fee, recorded with every approved short sale."""
    fractionable: bool = False
    lot_size: Decimal = Decimal(1)
    min_qty: Decimal = Decimal(0)
    sector: str | None = None
    adv: Decimal | None = None
    """Average daily volume (shares), for the ADV participation cap."""

    def __post_init__(self) -> None:
        if self.lot_size <= 0:
            raise ValueError("lot_size: must be positive")
        if self.min_qty < 0 or self.borrow_rate_pct < 0:
            raise ValueError("min_qty and borrow_rate_pct: must not be negative")
        if self.adv is not None and self.adv <= 0:
            raise ValueError("adv: must be positive")


class DayTradingSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The day-trading rule as a dated policy (DESIGN §6): the pattern-day-trader rule until
    the firm adopts FINRA's amendments (effective 4 Jun 2026, phased in to 20 Oct 2027)."""

    policy: Literal["auto", "pdt", "intraday-margin"] = "auto"
    """``auto``: the rule in force on the engine clock's date, by ``replacement_adopted_on``."""
    replacement_adopted_on: dt.date = dt.date(2027, 10, 20)
    """When this account's broker applies the new rule (between 2026-06-04 and 2027-10-20)."""
    pdt_min_equity: Decimal = Decimal(25_000)
    pdt_max_day_trades: int = 3
    """Day trades allowed in five business days under the PDT rule before the next is refused."""

    def __post_init__(self) -> None:
        if not dt.date(2026, 6, 4) <= self.replacement_adopted_on <= dt.date(2027, 10, 20):
            raise ValueError("replacement_adopted_on: FINRA's phase-in runs from 2026-06-04 to 2027-10-20")
        if self.pdt_min_equity < 0 or self.pdt_max_day_trades < 0:
            raise ValueError("pdt_min_equity and pdt_max_day_trades: must not be negative")


class RiskSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    max_order_qty: Decimal = Decimal(500)
    max_order_notional: Decimal = Decimal(100_000)
    account_type: Literal["cash", "margin"] = "margin"
    """``cash``: buys use settled cash and a sale that would be a good-faith violation is
    refused; ``margin``: buying power is ``margin_multiplier`` × equity, PDT rules apply."""
    margin_multiplier: Decimal = Decimal(2)
    collar_pct: Decimal | None = Decimal(10)
    """A limit price further than this from the reference price is refused (fat fingers)."""
    duplicate_window_s: float = 1.0
    """The same strategy, symbol, side, quantity and price approved within this window is a duplicate."""
    max_orders_per_s: int | None = 50
    """Approved orders per strategy per second."""
    max_cancels_per_s: int | None = 50
    max_open_orders: int | None = 200
    max_position_qty: Decimal | None = None
    max_position_notional: Decimal | None = None
    max_gross_exposure: Decimal | None = None
    max_net_exposure: Decimal | None = None
    max_leverage: Decimal | None = Decimal(4)
    max_symbol_concentration_pct: Decimal | None = None
    max_sector_concentration_pct: Decimal | None = None
    max_adv_participation_pct: Decimal | None = Decimal(5)
    daily_loss_limit: Decimal | None = None
    """Money lost today (realised + unrealised, from the day's starting equity) that moves
    trading to ``daily_loss_action``. Unset: ``daily_loss_limit_pct`` of the starting equity."""
    daily_loss_limit_pct: Decimal = Decimal(10)
    daily_loss_action: Literal["reducing", "halted"] = "reducing"
    max_drawdown_pct: Decimal | None = Decimal(25)
    """Equity this far below its high-water mark halts trading."""
    mark_interval_s: float = 1.0
    """How often risk marks the book to market for the loss and drawdown limits."""
    runaway_intents_per_s: int | None = 100
    """A strategy sending more intents than this per second is paused (runaway guard)."""
    runaway_rejected_streak: int | None = 50
    """... or this many rejected intents in a row."""
    strategies: dict[str, LimitsSection] = msgspec.field(default_factory=dict)
    symbols: dict[str, LimitsSection] = msgspec.field(default_factory=dict)
    assets: dict[str, AssetSection] = msgspec.field(default_factory=dict)
    day_trading: DayTradingSection = msgspec.field(default_factory=DayTradingSection)
    extended_hours: bool = False
    """Allow orders in pre- and post-market sessions (then only day limit orders, as Alpaca requires)."""
    default_calendar: str | None = None
    """The market calendar of symbols not in ``calendars`` (an exchange_calendars name such as
    ``XNYS``, or ``24/7``). Unset: ``24/7`` against the simulator, whose market is open whenever it
    plays, and ``XNYS`` against Alpaca; replays of recorded equity days use ``XNYS``."""
    calendars: dict[str, str] = msgspec.field(default_factory=dict)
    """Per symbol or pattern (``*USDT``): its calendar. SYNTH and ``*USDT`` are ``24/7`` by default."""

    def __post_init__(self) -> None:
        if self.max_order_qty <= 0:
            raise ValueError("max_order_qty: must be positive")
        if self.max_order_notional <= 0:
            raise ValueError("max_order_notional: must be positive")
        for name in (
            "collar_pct", "max_orders_per_s", "max_cancels_per_s", "max_open_orders", "max_position_qty",
            "max_position_notional", "max_gross_exposure", "max_net_exposure", "max_leverage",
            "max_symbol_concentration_pct", "max_sector_concentration_pct", "max_adv_participation_pct",
            "daily_loss_limit", "max_drawdown_pct", "runaway_intents_per_s", "runaway_rejected_streak",
        ):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name}: must be positive (or unset)")
        if self.margin_multiplier < 1:
            raise ValueError("margin_multiplier: must be at least 1")
        if not self.daily_loss_limit_pct > 0:
            raise ValueError("daily_loss_limit_pct: must be positive")
        if self.duplicate_window_s < 0 or not self.mark_interval_s > 0:
            raise ValueError("duplicate_window_s must not be negative and mark_interval_s must be positive")


class PricingSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Market-data health: freshness SLAs, the feed watchdog, failover, sanity filters."""

    sla_s: float = 10.0
    """A symbol whose active provider is silent longer than this is stale: no new orders in it."""
    symbol_sla_s: dict[str, float] = msgspec.field(default_factory=dict)
    """Per-symbol SLA overrides, e.g. ``{ IBM = 5.0 }``."""
    feed_silence_s: float = 30.0
    """A provider silent on every symbol this long is treated as down."""
    providers: dict[str, list[str]] = msgspec.field(default_factory=dict)
    """Per symbol, ``[primary, secondary]`` providers for failover, e.g. ``{ IBM = ["alpaca-sip", "alpaca-iex"] }``."""
    failback_s: float = 30.0
    """The primary must be fresh this long before prices move back to it (hysteresis)."""
    outlier_pct: Decimal = Decimal(10)
    """A quote whose mid jumps more than this % from the last is held back ..."""
    outlier_confirmations: int = 5
    """... unless this many such quotes come in a row."""
    bar_interval_s: int = 60
    """Time bars (``md.bar``) of this many seconds, aligned on the epoch; 0 turns bars off."""
    bar_grace_s: float = 2.0
    """A bar with no later event closes once the engine clock passes its end plus this."""

    def __post_init__(self) -> None:
        if not self.sla_s > 0:
            raise ValueError("sla_s: must be positive")
        for symbol, sla in self.symbol_sla_s.items():
            if not sla > 0:
                raise ValueError(f"symbol_sla_s: {symbol} must be positive")
        if not self.feed_silence_s > 0:
            raise ValueError("feed_silence_s: must be positive")
        for symbol, pair in self.providers.items():
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"providers: {symbol} must name two different providers, got {pair}")
        if self.failback_s < 0:
            raise ValueError("failback_s: must not be negative")
        if not self.outlier_pct > 0:
            raise ValueError("outlier_pct: must be positive")
        if self.outlier_confirmations < 1:
            raise ValueError("outlier_confirmations: must be at least 1")
        if self.bar_interval_s < 0:
            raise ValueError("bar_interval_s: must not be negative (0 turns bars off)")
        if not self.bar_grace_s >= 0:
            raise ValueError("bar_grace_s: must not be negative")


class VenueSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    kind: Literal["simulator", "alpaca-paper", "alpaca-live"] = "simulator"
    """``simulator``: Kestrel's Alpaca simulator (embedded, or the one at ``url``);
    ``alpaca-paper`` / ``alpaca-live``: Alpaca itself (keys from the environment)."""
    url: str | None = None
    """A running simulator's ``http://HOST:PORT`` (``kestrel venue``); empty = start one in-process."""
    data_feed: Literal["iex", "sip"] = "iex"
    data_statuses: bool = False
    """Subscribe to trading status (halts) and LULD bands on the market data stream."""
    rate_limit_per_minute: int = 200
    starting_cash: Decimal = Decimal(100_000)
    fee_per_share: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        if self.rate_limit_per_minute < 1:
            raise ValueError("rate_limit_per_minute: must be at least 1")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError("url: must start with http:// or https://")
        if self.starting_cash < 0:
            raise ValueError("starting_cash: must not be negative")
        if self.fee_per_share < 0:
            raise ValueError("fee_per_share: must not be negative")


class JournalSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str | None = None
    """The write-ahead order journal (SQLite). Unset: none — fine for the embedded simulator
    and replays, refused for Alpaca itself. Restarting on an existing journal recovers from it."""
    durability: Literal["process", "power"] = "process"
    """``process``: survives any crash of the process (kill -9); ``power``: also power loss (slower)."""
    snapshot_every: int = 10_000
    """Journal events between snapshots of the order book (restart replays at most this many)."""
    cash_tolerance: Decimal = Decimal("0.01")
    """Recovery halts trading when journal cash and venue cash differ by more than this."""
    ack_sla_s: float = 5.0
    """An order without venue acknowledgement this long is looked up (then escalated)."""

    def __post_init__(self) -> None:
        if self.snapshot_every < 1:
            raise ValueError("snapshot_every: must be at least 1")
        if self.cash_tolerance < 0:
            raise ValueError("cash_tolerance: must not be negative")
        if not self.ack_sla_s > 0:
            raise ValueError("ack_sla_s: must be positive")


class ControlSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The operator control channel of a running engine (``kestrel halt|resume|flatten``)."""

    enabled: bool = True
    """Live and paper sessions listen for operator commands (loopback only, behind a token)."""
    host: str = "127.0.0.1"
    port: int = 0
    """0: any free port (the control file says which)."""
    file: str = "run/control.json"
    """Where the engine writes its URL and a fresh token (mode 0600) for the CLI to find;
    relative to the working directory, where ``kestrel halt`` looks by default."""

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError("port: must be 0-65535")


class SecretsSection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    file: str | None = None
    """A TOML file with ``key_id`` and ``secret_key``; the environment wins over it."""


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    engine: EngineSection = msgspec.field(default_factory=EngineSection)
    log: LogSection = msgspec.field(default_factory=LogSection)
    data: DataSection = msgspec.field(default_factory=DataSection)
    strategy: StrategySection = msgspec.field(default_factory=StrategySection)
    risk: RiskSection = msgspec.field(default_factory=RiskSection)
    pricing: PricingSection = msgspec.field(default_factory=PricingSection)
    venue: VenueSection = msgspec.field(default_factory=VenueSection)
    journal: JournalSection = msgspec.field(default_factory=JournalSection)
    secrets: SecretsSection = msgspec.field(default_factory=SecretsSection)
    control: ControlSection = msgspec.field(default_factory=ControlSection)
    profile: str | None = None
    """The profile that was applied (set by the loader, not by files)."""


class Credentials(msgspec.Struct, frozen=True):
    key_id: Secret
    secret_key: Secret
    source: str


# ---------------------------------------------------------------- loading

S = TypeVar("S", bound=msgspec.Struct)


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _looks_secret(key: str) -> bool:
    lowered = key.lower()
    return lowered in _SECRET_LOOKING_KEYS or lowered.endswith(_SECRET_LOOKING_SUFFIXES)


def _struct_problems(data: Any, struct_type: type[S], path: str) -> tuple[S | None, list[tuple[str, str]]]:
    """Convert ``data`` to ``struct_type``, collecting every problem instead of the first."""
    if not isinstance(data, Mapping):
        return None, [(path, f"expected a table, got {type(data).__name__}")]
    problems: list[tuple[str, str]] = []
    fields = {f.name: f for f in msgspec.structs.fields(struct_type)}
    values: dict[str, Any] = {}
    settable = {name: f for name, f in fields.items() if name not in _LOADER_FIELDS}
    for key, value in data.items():
        key_path = f"{path}.{key}" if path else key
        if _looks_secret(key) and not isinstance(value, Mapping):
            problems.append(
                (key_path, "secrets are never read from config files; use the environment or [secrets] file")
            )
            continue
        field = settable.get(key)
        if field is None:
            expected = ", ".join(sorted(settable))
            problems.append((key_path, f"unknown key (expected one of: {expected})"))
            continue
        ftype = field.type
        if isinstance(ftype, type) and issubclass(ftype, msgspec.Struct):
            sub, sub_problems = _struct_problems(value, ftype, key_path)
            problems.extend(sub_problems)
            if sub is not None:
                values[key] = sub
            continue
        try:
            values[key] = msgspec.convert(value, ftype)
        except msgspec.ValidationError as exc:
            choices = get_args(ftype) if get_origin(ftype) is Literal else ()
            if choices:
                problems.append((key_path, f"expected one of {', '.join(map(repr, choices))}, got {value!r}"))
            else:
                problems.append((key_path, _plain(str(exc))))
    if problems:
        return None, problems
    try:
        return struct_type(**values), []
    except (ValueError, TypeError) as exc:
        message = str(exc)
        field_name, _, rest = message.partition(": ")
        if field_name in fields:
            return None, [(f"{path}.{field_name}" if path else field_name, rest)]
        return None, [(path, message)]


def _plain(message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$...`"; the path is ours to give.
    return message.split(" - at `", 1)[0].replace("`", "")


def parse_config(data: Mapping[str, Any], source: str, profile: str | None = None) -> Config:
    """Validate a config mapping (already parsed TOML), applying ``profile`` if given."""
    raw = dict(data)
    profiles = raw.pop("profiles", {})
    problems: list[tuple[str, str]] = []
    if not isinstance(profiles, Mapping):
        problems.append(("profiles", "expected a table of profile tables"))
        profiles = {}
    if profile is not None:
        if profile not in profiles:
            known = ", ".join(sorted(profiles)) or "none defined"
            raise ConfigError(source, [("profiles", f"no profile named {profile!r} (known: {known})")])
        raw = _merge(raw, profiles[profile])
    config, struct_problems = _struct_problems(raw, Config, "")
    problems.extend(struct_problems)
    if config is not None and config.venue.kind != "simulator" and not config.journal.path:
        problems.append(("journal.path", f"trading on {config.venue.kind} needs a journal: set journal.path"))
    if problems or config is None:
        raise ConfigError(source, problems)
    return msgspec.structs.replace(config, profile=profile)


def load_config(path: Path | None, profile: str | None = None) -> tuple[Config, Path | None]:
    """Read and validate a config file; ``None`` gives the embedded defaults.

    Returns the config with relative paths resolved against the file's folder.
    """
    if path is None:
        return parse_config({}, "<defaults>", profile), None
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, [("", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [("", f"cannot read: {exc}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("", f"malformed TOML: {exc}")]) from None
    config = parse_config(data, source, profile)
    return _resolve_paths(config, path.parent), path


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None:
        return None
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p))


def _resolve_paths(config: Config, base: Path) -> Config:
    return msgspec.structs.replace(
        config,
        log=msgspec.structs.replace(config.log, path=_resolve(base, config.log.path)),
        data=msgspec.structs.replace(config.data, files=[str(_resolve(base, f)) for f in config.data.files]),
        secrets=msgspec.structs.replace(config.secrets, file=_resolve(base, config.secrets.file)),
        journal=msgspec.structs.replace(config.journal, path=_resolve(base, config.journal.path)),
    )


def check_live_confirmation(config: Config, confirmed_flag: bool, environ: Mapping[str, str]) -> None:
    """Refuse live trading unless it was asked for twice: in config and at the command line/env."""
    if config.engine.mode != "live":
        return
    if confirmed_flag or environ.get(CONFIRM_LIVE_ENV, "").strip().lower() in ("yes", "1", "true"):
        return
    raise LiveTradingNotConfirmed(
        f'config says mode = "live", which trades real money; confirm with --confirm-live '
        f'or {CONFIRM_LIVE_ENV}=yes (or use mode = "paper")'
    )


def load_credentials(config: Config, environ: Mapping[str, str], required: bool) -> Credentials | None:
    """Venue credentials from the environment, else from the secrets file.

    A placeholder value (empty, ``changeme``, ``your_key_here`` ...) is an error, as is
    a half-set pair. The error names the variable or file key, never the value.
    """
    found: dict[str, tuple[str, str]] = {}
    file = config.secrets.file
    if file is not None:
        path = Path(file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(file, [("", "secrets file not found")]) from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            # Say only where it failed: a parser message could one day quote the file's text.
            where = re.search(r"line \d+", str(exc)) if isinstance(exc, tomllib.TOMLDecodeError) else None
            detail = type(exc).__name__ + (f" at {where.group(0)}" if where else "")
            raise ConfigError(file, [("", f"cannot read secrets file ({detail})")]) from None
        for name in ("key_id", "secret_key"):
            if name in data:
                if not isinstance(data[name], str):
                    raise ConfigError(file, [(name, "must be a string")])
                found[name] = (data[name], f"{file}: {name}")
    for name, env in (("key_id", KEY_ENV), ("secret_key", SECRET_ENV)):
        if env in environ:
            found[name] = (environ[env], f"environment variable {env}")
    problems = [
        (where, "placeholder value; set the real credential")
        for value, where in found.values()
        if is_placeholder(value)
    ]
    if problems:
        raise ConfigError("credentials", [("", f"{where}: {msg}") for where, msg in problems])
    if len(found) == 1:
        missing = ({"key_id", "secret_key"} - found.keys()).pop()
        raise ConfigError(
            "credentials", [("", f"{missing} is missing (set {KEY_ENV} and {SECRET_ENV} together)")]
        )
    if not found:
        if required:
            raise ConfigError(
                "credentials", [("", f"none found: set {KEY_ENV} and {SECRET_ENV}, or [secrets] file")]
            )
        return None
    sources = sorted(
        {where.split(":")[0] if "environment" not in where else "environment" for _, where in found.values()}
    )
    return Credentials(Secret(found["key_id"][0]), Secret(found["secret_key"][0]), source=", ".join(sources))


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Secret):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def render_config(config: Config, credentials: Credentials | None) -> str:
    """The effective config as indented JSON, with credentials shown only as ``***``."""
    document: dict[str, Any] = msgspec.to_builtins(config, enc_hook=_enc_hook)
    document["credentials"] = (
        {"key_id": "***", "secret_key": "***", "source": credentials.source} if credentials else None
    )
    return msgspec.json.format(msgspec.json.encode(document), indent=2).decode()
