"""The ``kestrel`` command.

Exit codes: 0 success; 1 ``kestrel journal verify`` found a problem; 2 a user error
(bad flag, file, config key or data row, or a journal refused: one line on stderr, no
traceback); 3 the engine stopped itself because a supervisor gave up;
70 an internal error (a bug: the traceback is in the log file).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, NoReturn

import msgspec

from adapters.alpaca_sim.cli import default_key_id, default_secret_key, serve
from adapters.replay_sources import FILE_FORMATS
from engine import crashpoints, faults
from engine.config import Config, check_live_confirmation, load_config, load_credentials, render_config
from engine.errors import SupervisorGaveUp, UserError
from engine.journal import JournalError
from engine.logs import configure_logging, console_for_stderr, get_logger, shutdown_logging
from engine.secrets import scrub
from kestrel import journal_cli
from kestrel.chaos_cli import add_chaos_command, cmd_chaos
from kestrel.control_cli import add_control_commands, run_control_command
from kestrel.load_cli import add_load_command, cmd_load
from kestrel.node import (
    RecordPlan,
    SessionOptions,
    SessionSummary,
    run_live_session,
    run_recorder,
    run_replay_session,
    strategy_factory,
)
from kestrel.tail_cli import add_tail_command, cmd_tail

EXIT_USER_ERROR: Final = 2
EXIT_GAVE_UP: Final = 3
EXIT_INTERNAL: Final = 70


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USER_ERROR, f"kestrel: error: {message}\n")


def _speed(value: str) -> float | None:
    if value == "max":
        return None
    try:
        speed = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'max' or a positive number, got {value!r}") from None
    if not speed > 0:
        raise argparse.ArgumentTypeError(f"expected 'max' or a positive number, got {value!r}")
    return speed


def _count(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kestrel", description="Kestrel: an actor-based trading engine that never loses an order.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser(
        "run", help="trade through the Alpaca adapter (default: paper, against the embedded simulator and bundled day)"
    )
    replay = commands.add_parser("replay", help="replay a recording deterministically under simulated time, in process")
    for sub in (run, replay):
        sub.add_argument("--config", type=Path, help="TOML config file (default: the embedded defaults)")
        sub.add_argument("--profile", help="apply [profiles.NAME] from the config")
        sub.add_argument("--strategy", help="strategy name (overrides [strategy] name)")
        sub.add_argument("--log", type=Path, help="JSON log file (overrides [log] path)")
        sub.add_argument("--speed", type=_speed, default=None, metavar="max|FACTOR", help="replay speed (default: max)")
        sub.add_argument("--json", action="store_true", help="print the summary as one JSON object")
        sub.add_argument("--confirm-live", action="store_true", help='required with mode = "live"')
        sub.add_argument(
            "--journal", type=Path, metavar="PATH",
            help="write-ahead order journal (overrides [journal] path); an existing one is recovered from",
        )
    run.add_argument("--venue-url", help="trade against a running simulator (kestrel venue) at this http://HOST:PORT")
    run.add_argument(
        "--http", type=_host_port, metavar="HOST:PORT",
        help="serve /metrics, /healthz, /readyz and the control channel here (overrides [control] host and port; "
        "loopback only; port 0 = any free port)",
    )
    replay.add_argument(
        "files", nargs="*", type=Path, metavar="FILE",
        help="recordings to replay, merged by receive time (default: [data] files, else the bundled day)",
    )
    replay.add_argument(
        "--format", dest="input_format", default="auto", choices=["auto", *FILE_FORMATS],
        help="format of FILE (default: auto, detected per file)",
    )
    replay.add_argument("--seed", type=int, help="overrides [engine] seed (and seeds --synthetic)")
    replay.add_argument("--synthetic", type=_count, metavar="N", help="replay N quotes of the seeded random walk")
    replay.add_argument(
        "--strict", action="store_true", help="stop at the first bad input line (default: count it and go on)"
    )

    record = commands.add_parser("record", help="record live market-data frames as they arrive (gzip, rotating)")
    record.add_argument("--provider", choices=["alpaca", "binance"], default="binance")
    record.add_argument("--symbols", nargs="+", default=None, metavar="SYMBOL", help="symbols to subscribe")
    record.add_argument("--out", type=Path, default=Path("recordings"), metavar="DIR", help="(default: recordings)")
    record.add_argument("--rotate-mb", type=float, default=None, metavar="N", help="start a new file after N MB")
    record.add_argument("--rotate-s", type=float, default=None, metavar="S", help="start a new file every S seconds")
    record.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    record.add_argument("--venue-url", help="market-data websocket URL (default: the provider's public endpoint)")
    record.add_argument("--config", type=Path, help="TOML config file (credentials for Alpaca)")
    record.add_argument("--profile", help="apply [profiles.NAME] from the config")
    record.add_argument("--log", type=Path, help="JSON log file (default: none)")

    venue = commands.add_parser("venue", help="run the Alpaca venue simulator")
    venue.add_argument("--host", default="127.0.0.1")
    venue.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    venue.add_argument("--feed", type=Path, action="append", default=[], metavar="FILE", help="recording to replay")
    venue.add_argument("--speed", type=_speed, default=1.0, metavar="max|FACTOR", help="feed speed (default: 1)")
    venue.add_argument("--key", help="API key id (default: $APCA_API_KEY_ID, else the documented default)")
    venue.add_argument("--secret", help="API secret (default: $APCA_API_SECRET_KEY, else the documented default)")
    venue.add_argument("--seed", type=int, default=0)
    venue.add_argument("--exit-when-done", action="store_true", help="stop once the recording has been played")
    venue.add_argument("--log", type=Path, help="JSON log file (default: none)")

    journal_cli.add_parser(commands)
    add_control_commands(commands)
    add_chaos_command(commands)
    add_tail_command(commands)
    add_load_command(commands)

    check = commands.add_parser("check-config", help="validate a config file and print the effective config")
    check.add_argument("file", type=Path)
    check.add_argument("--profile", help="apply [profiles.NAME] from the config")
    return parser


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"kestrel: error: {scrub(message)}\n")
    return code


def _load(args: argparse.Namespace) -> Config:
    profile = args.profile or os.environ.get("KESTREL_PROFILE") or None
    config, _ = load_config(args.file if args.command == "check-config" else args.config, profile)
    return config


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args)
    # The strategy's own parameters (and an allocation's members, budgets and pins) are
    # validated by building it, exactly as a run would: a ConfigError here is exit 2.
    strategy_factory(config, config.strategy.name)
    credentials = load_credentials(config, os.environ, required=False)
    sys.stdout.write(render_config(config, credentials) + "\n")
    return 0


class _Progress:
    """A single self-rewriting status line on a terminal."""

    def __init__(self) -> None:
        self.stream = sys.stderr

    def __call__(self, ticks: int, sim_ns: int) -> None:
        when = dt.datetime.fromtimestamp(sim_ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        self.stream.write(f"\r[kestrel] {ticks:>10,} ticks  sim time {when}")
        self.stream.flush()

    def done(self) -> None:
        self.stream.write("\r" + " " * 60 + "\r")
        self.stream.flush()


def _print_summary(summary: SessionSummary) -> None:
    out = sys.stdout
    positions = ", ".join(f"{s} {q}" for s, q in summary.positions.items()) or "flat"
    reasons = ", ".join(f"{r} {n}" for r, n in sorted(summary.rejections_by_reason.items())) or "none"
    out.write(
        f"Kestrel {summary.mode} session: {summary.strategy}, seed {summary.seed}\n"
        f"  ticks          {summary.ticks:,} in {summary.wall_s:.2f} s ({summary.ticks_per_s:,.0f} ticks/s)\n"
        f"  orders         {summary.orders:,}\n"
        f"  fills          {summary.fills:,}\n"
        f"  rejected       {summary.rejected:,} ({reasons})\n"
        f"  positions      {positions}\n"
        f"  cash           {summary.cash}\n"
        f"  realized P&L   {summary.realized_pnl} (fees {summary.fees})\n"
        f"  filtered       {summary.quotes_suspicious} suspicious, {summary.quotes_crossed} crossed quotes\n"
        f"  trading        {summary.trading_state} ({summary.trading_reason})\n"
        f"  journal        {summary.journal or 'none (in memory only)'}\n"
    )
    if summary.event_log_sha256 is not None:
        out.write(f"  event log      sha256 {summary.event_log_sha256}\n")
    if summary.journal_sha256 is not None:
        out.write(f"  journal events sha256 {summary.journal_sha256}\n")
    if summary.input_errors:
        counts = ", ".join(f"{kind} {n:,}" for kind, n in summary.input_errors.items())
        out.write(f"  bad input      {counts} (skipped)\n")
        for sample in summary.input_error_samples[:5]:
            where = f"{sample.file}:{sample.line}" if sample.line is not None else sample.file
            out.write(f"                 {where}: {sample.error}\n")


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency everywhere but Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def cmd_venue(args: argparse.Namespace) -> int:
    configure_logging(args.log, "info", console_for_stderr())
    for path in args.feed:
        if not path.exists():
            raise UserError(f"{path}: no such file")

    def ready(url: str) -> None:
        sys.stdout.write(f"listening on {url}\n")
        sys.stdout.flush()

    key = args.key or default_key_id()
    secret = args.secret or default_secret_key()
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        try:
            runner.run(
                serve(
                    args.host,
                    args.port,
                    list(args.feed),
                    args.speed,
                    key,
                    secret,
                    args.seed,
                    ready,
                    exit_when_done=args.exit_when_done,
                )
            )
        except OSError as exc:
            raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


def _host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:9464), got {value!r}")
    return host.strip("[]"), int(port)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    http = getattr(args, "http", None)
    if http is not None:
        control = msgspec.structs.replace(config.control, enabled=True, host=http[0], port=http[1])
        config = msgspec.structs.replace(config, control=control)
    check_live_confirmation(config, args.confirm_live, os.environ)
    # Credentials are optional for the simulator, but a placeholder is refused even so.
    credentials = load_credentials(config, os.environ, required=False)
    log_path = args.log or (Path(config.log.path) if config.log.path else None)
    configure_logging(log_path, config.log.level, console_for_stderr())
    if credentials is not None:
        log = get_logger(actor="cli")
        log.info("credentials_loaded", source=credentials.source, key_id=credentials.key_id)
    # Crash tests only: KESTREL_CRASH_AT=<point>[:n] kills this process at that point (engine/crashpoints.py).
    if crashpoints.arm_from_env(os.environ) is not None:
        get_logger(actor="cli").warning("crash_point_armed", point=os.environ[crashpoints.ENV_VAR])
    faults.arm_from_env(os.environ)  # Chaos runs only: KESTREL_FAULTS='{...}' (engine/faults.py); logs faults_armed.
    progress = _Progress() if sys.stderr.isatty() and not args.json and args.command == "replay" else None
    options = SessionOptions(
        strategy=args.strategy,
        speed=args.speed,
        progress=progress,
        venue_url=getattr(args, "venue_url", None),
        journal=args.journal,
    )
    if args.command == "replay":
        if args.synthetic is not None and args.files:
            raise UserError("--synthetic replays the random walk: give either FILE... or --synthetic, not both")
        if args.seed is not None:
            config = msgspec.structs.replace(config, engine=msgspec.structs.replace(config.engine, seed=args.seed))
        options = dataclasses.replace(
            options,
            inputs=tuple(args.files),
            input_format=args.input_format,
            synthetic=args.synthetic,
            strict=args.strict,
        )
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        if args.command == "replay":
            summary = runner.run(run_replay_session(config, options))
        else:
            summary = runner.run(run_live_session(config, options, credentials))
    if progress is not None:
        progress.done()
    if args.json:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
    else:
        _print_summary(summary)
    return 0


def cmd_record(args: argparse.Namespace) -> int:
    configure_logging(args.log, "info", console_for_stderr())
    rotate_bytes = round(args.rotate_mb * 1_000_000) if args.rotate_mb is not None else None
    plan = RecordPlan(
        provider=args.provider,
        symbols=[s.upper() for s in args.symbols] if args.symbols else None,
        out=args.out,
        rotate_bytes=rotate_bytes,
        rotate_s=args.rotate_s,
        duration_s=args.duration,
        url=args.venue_url,
    )
    with asyncio.Runner(loop_factory=_new_loop) as runner:
        result = runner.run(run_recorder(plan))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    return 0


def _cmd_chaos(args: argparse.Namespace) -> int:
    configure_logging(None, "warning", console_for_stderr())
    return cmd_chaos(args, _new_loop)


def _cmd_load(args: argparse.Namespace) -> int:
    configure_logging(None, "warning", console_for_stderr())
    return cmd_load(args, _new_loop)


def _cmd_journal(args: argparse.Namespace) -> int:
    configure_logging(None, "warning", console_for_stderr())
    return journal_cli.cmd_journal(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USER_ERROR
    handlers: dict[str, Any] = {
        "run": cmd_run,
        "replay": cmd_run,
        "venue": cmd_venue,
        "record": cmd_record,
        "check-config": cmd_check_config,
        "journal": _cmd_journal,
        "halt": run_control_command,
        "resume": run_control_command,
        "flatten": run_control_command,
        "chaos": _cmd_chaos,
        "tail": cmd_tail,
        "load": _cmd_load,
    }
    log = get_logger(actor="cli")
    try:
        code: int = handlers[args.command](args)
        return code
    except (UserError, JournalError) as exc:
        # A journal that is corrupt, locked by a live engine or too new: refused, said why.
        log.error("user_error", error=str(exc))
        return _fail(str(exc), EXIT_USER_ERROR)
    except SupervisorGaveUp as exc:
        return _fail(f"engine stopped: {exc}", EXIT_GAVE_UP)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log.critical("internal_error", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
        return _fail(f"internal error: {type(exc).__name__}: {exc} (the traceback is in the log file)", EXIT_INTERNAL)
    finally:
        shutdown_logging()


if __name__ == "__main__":
    sys.exit(main())
