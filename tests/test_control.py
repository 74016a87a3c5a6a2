"""The operator control channel: the HTTP server, the control file and ``kestrel halt|resume|flatten``.

Real aiohttp servers on 127.0.0.1, real files in ``tmp_path``; the CLI runs its blocking
urllib client in a worker thread against the test server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
import structlog

from adapters.control_http import (
    MAX_CONTROL_FILE_BYTES,
    MAX_REASON_CHARS,
    ControlEndpoint,
    ControlError,
    ControlFileError,
    ControlServer,
    generate_token,
    read_control_file,
    remove_control_file,
    write_control_file,
)
from engine.logs import configure_logging
from engine.messages import OperatorAction, OperatorCommand, OperatorReply, TradingState
from kestrel.control_cli import add_control_commands

TS = 1_700_000_000_123_456_789
TOKEN = generate_token()


@pytest.fixture(autouse=True)
def _quiet_logs() -> Iterator[None]:
    configure_logging(None)
    yield
    configure_logging(None)


class FakeEngine:
    """Stands in for risk behind ``dispatch``: records commands, answers as told."""

    def __init__(self) -> None:
        self.commands: list[OperatorCommand] = []
        self.accept = True
        self.raise_: BaseException | None = None
        self.hang = False
        self.intents: list[str] = []

    async def dispatch(self, command: OperatorCommand) -> OperatorReply:
        self.commands.append(command)
        if self.raise_ is not None:
            raise self.raise_
        if self.hang:
            await asyncio.Event().wait()
        if not self.accept:
            return OperatorReply(accepted=False, state=TradingState.RECOVERING, detail="still recovering")
        state = {
            OperatorAction.HALT: TradingState.HALTED,
            OperatorAction.RESUME: TradingState.ACTIVE,
            OperatorAction.FLATTEN: TradingState.REDUCING,
        }[command.action]
        return OperatorReply(accepted=True, state=state, detail=f"by {command.operator}", intents=self.intents)

    async def state(self) -> dict[str, Any]:
        return {"trading_state": "active", "cash": Decimal("100.50")}


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
async def server(engine: FakeEngine) -> AsyncIterator[ControlServer]:
    srv = ControlServer(engine.dispatch, TOKEN, lambda: TS, state=engine.state, dispatch_timeout_s=0.2)
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def post(
    http: aiohttp.ClientSession, server: ControlServer, action: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = auth() if headers is None else headers
    async with http.post(f"{server.url}/control/{action}", data=data, headers=headers) as r:
        assert r.content_type == "application/json"
        return r.status, await r.json()


# ================================================================ the server


async def test_an_accepted_halt_reaches_dispatch_and_returns_the_reply(
    server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession
) -> None:
    assert server.url.startswith("http://127.0.0.1:") and not server.url.endswith(":0")
    status, body = await post(http, server, "halt", {"reason": "feed looks wrong", "operator": "alice@desk"})
    assert status == 200
    assert engine.commands == [
        OperatorCommand(action=OperatorAction.HALT, reason="feed looks wrong", operator="alice@desk", ts_init=TS)
    ]
    reply = msgspec.json.decode(json.dumps(body), type=OperatorReply)
    assert reply == OperatorReply(accepted=True, state=TradingState.HALTED, detail="by alice@desk")


@pytest.mark.parametrize("action", list(OperatorAction))
async def test_every_action_has_its_route_and_the_operator_defaults_to_cli(
    action: OperatorAction, server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession
) -> None:
    status, _ = await post(http, server, action.value, {"reason": "r"})
    assert status == 200
    assert [(c.action, c.operator) for c in engine.commands] == [(action, "cli")]


async def test_a_refused_command_is_409_with_the_reply(
    server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession
) -> None:
    engine.accept = False
    status, body = await post(http, server, "resume", {"reason": "go"})
    assert status == 409
    assert body["accepted"] is False and body["state"] == "recovering" and body["detail"] == "still recovering"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        auth("x" + TOKEN[1:]),
        auth(TOKEN + "x"),
        auth(""),
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": "Bearer héllo-ünicode-token"},
    ],
    ids=["missing", "wrong", "longer", "empty", "no-scheme", "basic", "non-ascii"],
)
async def test_a_missing_or_wrong_token_is_401_and_never_reaches_dispatch(
    headers: dict[str, str], server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, server, "flatten", {"reason": "r"}, headers=headers)
    assert status == 401 and body["error"] == "unauthorized"
    async with http.get(f"{server.url}/control/state", headers=headers) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.get(f"{server.url}/elsewhere", headers=headers) as r:
        assert r.status == 401  # unknown paths give nothing away without the token either
    assert engine.commands == []


async def test_tokens_never_reach_a_log_line_or_an_answer(
    server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    wrong = generate_token()

    async def exchange() -> list[Any]:
        engine.raise_ = None
        answers = [
            (await post(http, server, "halt", {"reason": "r"}, headers=auth(wrong)))[1],
            (await post(http, server, "halt", {"reason": "r"}, headers={}))[1],
            (await post(http, server, "halt", {"reason": "r"}))[1],
        ]
        engine.raise_ = RuntimeError("boom")
        answers.append((await post(http, server, "halt", {"reason": "r"}))[1])
        return answers

    log_file = tmp_path / "k.jsonl"
    configure_logging(log_file, "debug")
    answers = await exchange()
    configure_logging(None)
    with structlog.testing.capture_logs() as raw:  # before redaction: nothing to redact in the first place
        answers += await exchange()
    text = log_file.read_text()
    assert TOKEN not in text and wrong not in text
    assert "***" not in text  # never logged at all, rather than redacted
    assert TOKEN not in repr(raw) and wrong not in repr(raw)
    assert TOKEN not in json.dumps(answers) and wrong not in json.dumps(answers)
    warnings = [e for e in raw if e["event"] == "control_unauthorized"]
    assert [w["credential"] for w in warnings] == ["wrong", "missing"]
    assert all(w["log_level"] == "warning" and w["remote"] == "127.0.0.1" for w in warnings)
    assert warnings[0]["path"] == "/control/halt" and warnings[0]["method"] == "POST"


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"", "empty body"),
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "Expected `object`"),
        ({}, "missing required field `reason`"),
        ({"reason": 7}, "Expected `str`"),
        ({"reason": ""}, "reason must not be empty"),
        ({"reason": "   "}, "reason must not be empty"),
        ({"reason": "x" * (MAX_REASON_CHARS + 1)}, "at most 500"),
        ({"reason": "r", "operator": ""}, "operator must not be empty"),
        ({"reason": "r", "reson": "typo"}, "unknown field `reson`"),
    ],
    ids=["empty", "bad-json", "not-object", "no-reason", "reason-type", "empty-reason", "blank-reason",
         "long-reason", "empty-operator", "unknown-field"],
)
async def test_a_bad_body_is_400_with_a_clear_message(
    body: Any, says: str, server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession
) -> None:
    status, answer = await post(http, server, "halt", body)
    assert status == 400 and answer["error"] == "bad_request"
    assert says in answer["message"]
    assert engine.commands == []


async def test_a_reason_of_exactly_the_limit_is_accepted(
    server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession
) -> None:
    status, _ = await post(http, server, "halt", {"reason": "x" * MAX_REASON_CHARS})
    assert status == 200 and len(engine.commands) == 1


async def test_dispatch_raising_is_500_with_its_type_and_message_and_logged_with_the_traceback(
    server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    log_file = tmp_path / "k.jsonl"
    configure_logging(log_file, "info")
    engine.raise_ = RuntimeError("risk is gone")
    status, body = await post(http, server, "halt", {"reason": "r"})
    assert status == 500
    assert body == {"error": "internal_error", "message": "dispatch failed: RuntimeError: risk is gone"}
    # A TimeoutError from inside dispatch is a failure, not the channel's own timeout.
    engine.raise_ = TimeoutError("bus request timed out")
    status, body = await post(http, server, "halt", {"reason": "r"})
    assert status == 500 and "TimeoutError: bus request timed out" in body["message"]
    configure_logging(None)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    failed = [line for line in lines if line["event"] == "control_dispatch_failed"]
    assert len(failed) == 2 and failed[0]["level"] == "error"
    assert "Traceback" in failed[0]["exception"] and "risk is gone" in failed[0]["exception"]


async def test_a_slow_dispatch_is_504(server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession) -> None:
    engine.hang = True
    status, body = await post(http, server, "flatten", {"reason": "r"})
    assert status == 504 and body["error"] == "timeout" and "may still take effect" in body["message"]


async def test_state_is_served_as_json_or_404_without_a_provider(
    server: ControlServer, engine: FakeEngine, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{server.url}/control/state", headers=auth()) as r:
        assert r.status == 200 and await r.json() == {"trading_state": "active", "cash": "100.50"}
    bare = ControlServer(engine.dispatch, TOKEN, lambda: TS)
    await bare.start()
    try:
        async with http.get(f"{bare.url}/control/state", headers=auth()) as r:
            assert r.status == 404 and (await r.json())["error"] == "not_found"
        async with http.get(f"{bare.url}/control/halt", headers=auth()) as r:
            assert r.status == 405 and (await r.json())["error"] == "method_not_allowed"
    finally:
        await bare.stop()
        await bare.stop()  # idempotent


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_a_non_loopback_host_is_refused_unless_allowed(host: str, engine: FakeEngine) -> None:
    with pytest.raises(ControlError, match="not a loopback address"):
        ControlServer(engine.dispatch, TOKEN, lambda: TS, host=host)
    ControlServer(engine.dispatch, TOKEN, lambda: TS, host=host, allow_remote=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LOCALHOST"])
def test_loopback_hosts_are_accepted(host: str, engine: FakeEngine) -> None:
    ControlServer(engine.dispatch, TOKEN, lambda: TS, host=host)


@pytest.mark.parametrize("token", ["", "short", "changeme"])
def test_a_weak_token_is_refused(token: str, engine: FakeEngine) -> None:
    with pytest.raises(ControlError, match="token"):
        ControlServer(engine.dispatch, token, lambda: TS)


async def test_a_port_in_use_is_a_clear_error(server: ControlServer, engine: FakeEngine) -> None:
    port = int(server.url.rsplit(":", 1)[1])
    other = ControlServer(engine.dispatch, TOKEN, lambda: TS, port=port)
    with pytest.raises(ControlError, match=f"cannot listen on 127.0.0.1:{port}"):
        await other.start()
    with pytest.raises(RuntimeError, match="not started"):
        _ = other.url


# ================================================================ the control file


def test_the_control_file_is_0600_from_creation_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "run" / "control.json"
    old_umask = os.umask(0)  # even a permissive umask cannot widen it
    try:
        write_control_file(path, "http://127.0.0.1:4321", TOKEN, 4242)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"url": "http://127.0.0.1:4321", "pid": 4242, "token": TOKEN}
    endpoint = read_control_file(path)
    assert endpoint == ControlEndpoint(url="http://127.0.0.1:4321", pid=4242, token=TOKEN)
    assert TOKEN not in repr(endpoint) and TOKEN not in str(endpoint) and TOKEN not in f"{endpoint}"
    assert repr(endpoint) == "ControlEndpoint(url='http://127.0.0.1:4321', pid=4242, token='***')"
    assert os.listdir(path.parent) == ["control.json"]
    remove_control_file(path)
    remove_control_file(path)  # already gone: fine
    assert not path.exists()


def test_writing_replaces_the_file_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "control.json"
    write_control_file(path, "http://127.0.0.1:1", TOKEN, 1)
    before = path.read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(ControlFileError, match="No space left on device"):
        write_control_file(path, "http://127.0.0.1:2", generate_token(), 2)
    assert path.read_bytes() == before  # the old file, whole
    assert os.listdir(tmp_path) == ["control.json"]  # no temporary file left behind
    monkeypatch.undo()
    path.chmod(0o644)
    write_control_file(path, "http://127.0.0.1:3", TOKEN, 3)  # a new inode, 0600 again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and read_control_file(path).pid == 3


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o666])
def test_a_control_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "control.json"
    write_control_file(path, "http://127.0.0.1:1", TOKEN, 1)
    path.chmod(mode)
    with pytest.raises(ControlFileError, match=f"permissions {mode:04o} are too open") as caught:
        read_control_file(path)
    assert "chmod 600" in str(caught.value) and TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", "not a control file"),
        ("{", "not a control file"),
        ('{"url": "http://127.0.0.1:1", "pid": 1}', "missing required field `token`"),
        ('{"url": "http://127.0.0.1:1", "pid": "x", "token": "TOKEN"}', "Expected `int`"),
        ('{"url": "file:///etc/passwd", "pid": 1, "token": "TOKEN"}', "not http"),
        ('{"url": "http://127.0.0.1:1", "pid": 1, "token": "abc"}', "token is too short"),
    ],
    ids=["empty", "truncated", "no-token", "bad-pid", "file-url", "short-token"],
)
def test_a_malformed_control_file_is_refused_with_a_clear_message(tmp_path: Path, content: str, says: str) -> None:
    path = tmp_path / "control.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(content.replace("TOKEN", TOKEN))
    with pytest.raises(ControlFileError, match=says) as caught:
        read_control_file(path)
    assert TOKEN not in str(caught.value)


def test_a_missing_or_unreadable_control_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ControlFileError, match="no control file: is `kestrel run` running"):
        read_control_file(tmp_path / "nope.json")
    with pytest.raises(ControlFileError, match="not a regular file"):
        read_control_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ControlFileError, match="not a regular file"):  # and does not hang waiting for a writer
        read_control_file(fifo)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_CONTROL_FILE_BYTES + 1))
    big.chmod(0o600)
    with pytest.raises(ControlFileError, match="larger than"):
        read_control_file(big)


# ================================================================ the CLI


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="kestrel")
    add_control_commands(root.add_subparsers(dest="command"))
    return root


async def cli(*argv: str) -> int:
    args = parser().parse_args(list(argv))
    code: int = await asyncio.to_thread(args.func, args)
    return code


@pytest.fixture
def control(server: ControlServer, tmp_path: Path) -> Path:
    path = tmp_path / "control.json"
    write_control_file(path, server.url, TOKEN, os.getpid())
    return path


async def test_cli_halt_accepted_exits_0(
    control: Path, engine: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await cli("halt", "--reason", "fat finger", "--operator", "bob", "--control", str(control)) == 0
    assert capsys.readouterr().out == "halted: halted — by bob\n"
    assert engine.commands[0].action is OperatorAction.HALT and engine.commands[0].reason == "fat finger"


async def test_cli_resume_defaults_and_json_output(
    control: Path, engine: FakeEngine, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KESTREL_CONTROL_FILE", str(control))
    monkeypatch.setenv("USER", "carol")
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # ignored: the token never goes through a proxy
    assert await cli("resume", "--json") == 0
    command = engine.commands[0]
    assert command.reason == "operator resume" and command.operator.startswith("carol@")
    reply = msgspec.json.decode(capsys.readouterr().out, type=OperatorReply)
    assert reply.accepted and reply.state is TradingState.ACTIVE


async def test_cli_flatten_lists_its_orders(
    control: Path, engine: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    engine.intents = ["I-1", "I-2"]
    assert await cli("flatten", "--reason", "eod", "--operator", "dan", "--control", str(control)) == 0
    assert capsys.readouterr().out == "flattening: reducing — by dan (2 orders: I-1, I-2)\n"


async def test_cli_refused_exits_3(control: Path, engine: FakeEngine, capsys: pytest.CaptureFixture[str]) -> None:
    engine.accept = False
    assert await cli("halt", "--reason", "r", "--control", str(control)) == 3
    assert capsys.readouterr().out == "halt refused: recovering — still recovering\n"


async def test_cli_errors_exit_2_with_one_line_saying_what_to_do(
    server: ControlServer, engine: FakeEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "stale.json"
    write_control_file(stale, server.url, generate_token(), os.getpid())
    assert await cli("halt", "--reason", "r", "--control", str(stale)) == 2
    err = capsys.readouterr().err
    assert err.startswith("kestrel: error: the engine at http://127.0.0.1:") and "refused the token" in err

    assert await cli("halt", "--reason", "r", "--control", str(tmp_path / "missing.json")) == 2
    assert "no control file: is `kestrel run` running" in capsys.readouterr().err

    assert await cli("halt", "--reason", "  ", "--control", str(stale)) == 2
    assert "--reason must not be empty" in capsys.readouterr().err

    engine.raise_ = RuntimeError("risk is gone")
    good = tmp_path / "good.json"
    write_control_file(good, server.url, TOKEN, os.getpid())
    assert await cli("halt", "--reason", "r", "--control", str(good)) == 2
    assert "failed to handle the halt: dispatch failed: RuntimeError: risk is gone" in capsys.readouterr().err

    engine.raise_ = None
    engine.hang = True
    assert await cli("halt", "--reason", "r", "--control", str(good)) == 2  # server gives up after 0.2 s: 504
    assert "did not handle the halt in time: it may still take effect" in capsys.readouterr().err

    assert await cli("halt", "--reason", "r", "--control", str(good), "--timeout", "0.05") == 2  # client gives up
    assert "no answer from the engine at http://127.0.0.1:" in capsys.readouterr().err

    insecure = tmp_path / "insecure.json"
    write_control_file(insecure, server.url, TOKEN, os.getpid())
    insecure.chmod(0o644)
    assert await cli("halt", "--reason", "r", "--control", str(insecure)) == 2
    assert "too open" in capsys.readouterr().err
    assert all(c.reason == "r" for c in engine.commands) and len(engine.commands) == 3


async def test_cli_with_no_engine_listening_exits_2(
    engine: FakeEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = ControlServer(engine.dispatch, TOKEN, lambda: TS)
    await gone.start()
    url = gone.url
    await gone.stop()
    path = tmp_path / "control.json"
    write_control_file(path, url, TOKEN, 2**30)  # a pid no process has
    assert await cli("flatten", "--reason", "r", "--control", str(path)) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"kestrel: error: no engine is listening at {url} (the engine that wrote {path}, pid {2**30}, is no longer "
        "running): is `kestrel run` running with the control channel on?\n"
    )


async def test_cli_output_never_shows_the_token(
    control: Path, engine: FakeEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["halt", "--reason", "r"], ["resume", "--json"]):
        await cli(*argv, "--control", str(control))
    engine.raise_ = RuntimeError("x")
    await cli("halt", "--reason", "r", "--control", str(control))
    captured = capsys.readouterr()
    assert TOKEN not in captured.out and TOKEN not in captured.err


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["halt"], ["flatten"], ["halt", "--reason", "r", "--timeout", "0"]):
        with pytest.raises(SystemExit) as caught:
            parser().parse_args(argv)
        assert caught.value.code == 2
    args = parser().parse_args(["resume"])
    assert args.reason == "operator resume" and args.timeout == 15.0 and args.control is None and not args.json
