"""Config validation, profiles, credentials and redaction."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from engine.config import (
    CONFIRM_LIVE_ENV,
    KEY_ENV,
    SECRET_ENV,
    check_live_confirmation,
    load_config,
    load_credentials,
    parse_config,
    render_config,
)
from engine.errors import ConfigError, LiveTradingNotConfirmed
from engine.logs import configure_logging, get_logger, shutdown_logging
from engine.secrets import Secret, scrub

REAL_KEY = "PKTESTKEY7Q2Z9X"
REAL_SECRET = "s3cr3t-VALUE-that-must-never-leak-91f2"


def _write(tmp_path: Path, text: str, name: str = "kestrel.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_paper_and_valid() -> None:
    config, path = load_config(None)
    assert path is None
    assert config.engine.mode == "paper"
    assert config.strategy.name == "ema-cross"


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[engine]
mode = "sometimes"
colour = "blue"
[risk]
max_order_qty = "lots"
[venue]
starting_cash = -5
[nonsense]
x = 1
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    lines = str(info.value).splitlines()
    assert f"{path}: engine.mode: expected one of 'paper', 'live', got 'sometimes'" in lines
    assert any(line.startswith(f"{path}: engine.colour: unknown key") for line in lines)
    assert any(line.startswith(f"{path}: risk.max_order_qty: ") for line in lines)
    assert f"{path}: venue.starting_cash: must not be negative" in lines
    assert any(line.startswith(f"{path}: nonsense: unknown key") for line in lines)
    assert len(lines) == 5


def test_malformed_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="malformed TOML"):
        load_config(_write(tmp_path, "[engine\nmode = 'paper'"))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_profiles_deep_merge_over_the_base(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[risk]
max_order_qty = 100
max_order_notional = 5000
[profiles.tight.risk]
max_order_qty = 5
""",
    )
    base, _ = load_config(path)
    tight, _ = load_config(path, profile="tight")
    assert base.risk.max_order_qty == 100
    assert tight.risk.max_order_qty == 5
    assert tight.risk.max_order_notional == 5000
    assert tight.profile == "tight"
    with pytest.raises(ConfigError, match="no profile named 'loose'"):
        load_config(path, profile="loose")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = _write(tmp_path, '[log]\npath = "out/k.jsonl"\n[data]\nfiles = ["d/20240102_quote.zip"]\n')
    config, _ = load_config(path)
    assert config.log.path == str(tmp_path / "out" / "k.jsonl")
    assert config.data.files == [str(tmp_path / "d" / "20240102_quote.zip")]


def test_secrets_written_into_a_config_file_are_refused_without_echoing_them(tmp_path: Path) -> None:
    path = _write(tmp_path, f'[venue]\nsecret_key = "{REAL_SECRET}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "venue.secret_key: secrets are never read from config files" in str(info.value)
    assert REAL_SECRET not in str(info.value)


@pytest.mark.parametrize("placeholder", ["", "changeme", "your_key_here", "  CHANGEME "])
def test_placeholder_credentials_are_refused(placeholder: str) -> None:
    config = parse_config({}, "x")
    with pytest.raises(ConfigError) as info:
        load_credentials(config, {KEY_ENV: REAL_KEY, SECRET_ENV: placeholder}, required=False)
    assert SECRET_ENV in str(info.value)
    assert "placeholder" in str(info.value)


def test_credentials_from_env_and_file_are_secrets(tmp_path: Path) -> None:
    secrets = _write(tmp_path, f'key_id = "{REAL_KEY}"\nsecret_key = "{REAL_SECRET}"\n', "secrets.toml")
    config, _ = load_config(_write(tmp_path, '[secrets]\nfile = "secrets.toml"\n'))
    assert config.secrets.file == str(secrets)
    from_file = load_credentials(config, {}, required=True)
    assert from_file is not None
    assert from_file.secret_key.reveal() == REAL_SECRET
    assert REAL_SECRET not in repr(from_file) and REAL_SECRET not in str(from_file)
    from_env = load_credentials(
        config, {KEY_ENV: "PKOTHERKEY123", SECRET_ENV: "another-secret-xyz"}, required=True
    )
    assert from_env is not None and from_env.key_id.reveal() == "PKOTHERKEY123"
    with pytest.raises(ConfigError, match="secret_key is missing"):
        load_credentials(parse_config({}, "x"), {KEY_ENV: REAL_KEY}, required=False)
    with pytest.raises(ConfigError, match="none found"):
        load_credentials(parse_config({}, "x"), {}, required=True)
    assert load_credentials(parse_config({}, "x"), {}, required=False) is None


def test_a_broken_secrets_file_error_does_not_quote_it(tmp_path: Path) -> None:
    _write(tmp_path, f'key_id = "{REAL_KEY}"\nsecret_key = {REAL_SECRET}\n', "secrets.toml")
    config, _ = load_config(_write(tmp_path, '[secrets]\nfile = "secrets.toml"\n'))
    with pytest.raises(ConfigError) as info:
        load_credentials(config, {}, required=True)
    assert "line 2" in str(info.value)
    assert REAL_SECRET not in str(info.value)


def test_render_config_never_shows_credentials() -> None:
    config = parse_config({}, "x")
    credentials = load_credentials(config, {KEY_ENV: REAL_KEY, SECRET_ENV: REAL_SECRET}, required=True)
    text = render_config(config, credentials)
    assert REAL_KEY not in text and REAL_SECRET not in text
    assert orjson.loads(text)["credentials"] == {
        "key_id": "***",
        "secret_key": "***",
        "source": "environment",
    }


def test_a_secret_never_reaches_a_log_line_or_an_error(tmp_path: Path) -> None:
    secret = Secret(REAL_SECRET)
    log_path = tmp_path / "k.jsonl"
    configure_logging(log_path, "debug")
    try:
        log = get_logger(actor="test")
        log.info(
            "credentials_loaded",
            secret_key=secret,
            api_key=REAL_KEY,
            note=f"raw {secret.reveal()} inside text",
        )
        log.info(
            "nested",
            payload={"headers": {"APCA-API-SECRET-KEY": secret.reveal()}, "items": [secret.reveal()]},
        )
        try:
            raise RuntimeError(f"venue refused key {secret.reveal()}")
        except RuntimeError as exc:
            log.error("venue_error", exc_info=exc)
    finally:
        shutdown_logging()
    text = log_path.read_text()
    assert REAL_SECRET not in text
    assert REAL_KEY not in text
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert lines[0]["secret_key"] == "***" and lines[0]["note"] == "raw *** inside text"
    assert "Traceback" in lines[2]["exception"] and "venue refused key ***" in lines[2]["exception"]
    assert scrub(f"x{REAL_SECRET}y") == "x***y"
    assert f"{secret}" == "***" and repr(secret) == "Secret('***')"


def test_live_mode_needs_an_explicit_confirmation() -> None:
    live = parse_config({"engine": {"mode": "live"}}, "x")
    with pytest.raises(LiveTradingNotConfirmed, match="--confirm-live"):
        check_live_confirmation(live, confirmed_flag=False, environ={})
    check_live_confirmation(live, confirmed_flag=True, environ={})
    check_live_confirmation(live, confirmed_flag=False, environ={CONFIRM_LIVE_ENV: "yes"})
    check_live_confirmation(parse_config({}, "x"), confirmed_flag=False, environ={})


def _kestrel(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kestrel.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_check_config_prints_the_effective_config_redacted(tmp_path: Path) -> None:
    import os

    path = _write(tmp_path, "[risk]\nmax_order_qty = 7\n[profiles.p.risk]\nmax_order_qty = 3\n")
    env = {**os.environ, KEY_ENV: REAL_KEY, SECRET_ENV: REAL_SECRET}
    done = _kestrel("check-config", str(path), "--profile", "p", env=env)
    assert done.returncode == 0, done.stderr
    shown = orjson.loads(done.stdout)
    assert shown["risk"]["max_order_qty"] == "3"
    assert shown["credentials"]["secret_key"] == "***"
    assert REAL_SECRET not in done.stdout + done.stderr and REAL_KEY not in done.stdout + done.stderr


def test_check_config_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, '[engine]\nmode = "maybe"\n[risk]\nmax_order_qty = 0\n')
    done = _kestrel("check-config", str(path))
    assert done.returncode == 2
    assert f"{path}: engine.mode: expected one of 'paper', 'live', got 'maybe'" in done.stderr
    assert f"{path}: risk.max_order_qty: must be positive" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_builds_the_strategy_so_its_parameters_are_checked_too(tmp_path: Path) -> None:
    members = '[strategy.params.members.inverse-vol]\nbudget = "0.7"\n[strategy.params.members.rsi-reversion]\n'
    head = '[strategy]\nname = "allocation"\n[strategy.params]\ncapital = "1000"\n'
    path = _write(tmp_path, f'{head}{members}budget = "0.4"\n')
    done = _kestrel("check-config", str(path))
    assert done.returncode == 2
    assert "strategy.params.members: strategy budgets sum to 1.1, more than 1" in done.stderr
    shipped = Path(__file__).resolve().parent.parent / "configs"
    for good in ("paper.toml", "allocation.toml"):
        assert _kestrel("check-config", str(shipped / good)).returncode == 0


def test_the_shipped_config_lists_every_key_at_its_default() -> None:
    import msgspec

    shipped, _ = load_config(Path(__file__).resolve().parent.parent / "configs" / "paper.toml")
    defaults = msgspec.to_builtins(parse_config({}, "defaults"))
    documented = msgspec.to_builtins(shipped)
    documented["log"]["path"] = defaults["log"]["path"]
    documented["strategy"]["params"] = {}
    assert documented == defaults
    assert shipped.strategy.params == {"fast": 10, "slow": 20, "qty": 10}
