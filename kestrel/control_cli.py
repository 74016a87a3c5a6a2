"""``kestrel halt|resume|flatten``: act on a running engine through its control channel.

Each command reads the engine's control file (``--control FILE``, else
``$KESTREL_CONTROL_FILE``, else ``run/control.json``) for the URL and the bearer token,
POSTs ``{"reason", "operator"}`` to ``/control/<action>`` and prints the engine's reply:
one line (``halted: halted — <detail>``), or the reply as JSON with ``--json``.

Exit codes: 0 the engine accepted the command; 3 it refused (its trading state did not
allow it: the reply says why); 2 anything that kept the command from being judged — a
bad flag, a missing or insecure control file, no engine listening, a stale token, a bad
request, no answer in time, an engine-side failure — with one line on stderr saying what
to do.

The HTTP client is the standard library's ``urllib.request``, with proxies and redirects
switched off: the token goes to the URL in the control file, in the ``Authorization``
header, and nowhere else (never into an argument, a message or an output).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Final

import msgspec

from adapters.control_http import (
    MAX_OPERATOR_CHARS,
    MAX_REASON_CHARS,
    ControlEndpoint,
    ControlFileError,
    read_control_file,
)
from engine.messages import OperatorAction, OperatorReply
from engine.secrets import scrub

EXIT_ACCEPTED: Final = 0
EXIT_USAGE: Final = 2
EXIT_REFUSED: Final = 3
DEFAULT_CONTROL_FILE: Final = Path("run/control.json")
CONTROL_FILE_ENV: Final = "KESTREL_CONTROL_FILE"
DEFAULT_TIMEOUT_S: Final = 15.0
DEFAULT_RESUME_REASON: Final = "operator resume"

_HELP: Final = {
    OperatorAction.HALT: "kill switch: stop new orders and cancel working ones (survives restarts)",
    OperatorAction.RESUME: "back to active trading after a halt or a flatten",
    OperatorAction.FLATTEN: "reduce-only, then close every open position",
}
_DONE: Final = {
    OperatorAction.HALT: "halted",
    OperatorAction.RESUME: "resumed",
    OperatorAction.FLATTEN: "flattening",
}


def _positive_seconds(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {value!r}")
    return seconds


def add_control_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``halt``, ``resume`` and ``flatten``; each sets ``func`` (``args -> exit code``) and ``action``."""
    for action in OperatorAction:
        sub = subparsers.add_parser(action.value, help=f"{_HELP[action]} (on a running engine)")
        if action is OperatorAction.RESUME:
            sub.add_argument(
                "--reason", default=DEFAULT_RESUME_REASON, metavar="TEXT",
                help=f"why, journaled with the command (default: {DEFAULT_RESUME_REASON!r})",
            )
        else:
            sub.add_argument("--reason", required=True, metavar="TEXT", help="why, journaled with the command")
        sub.add_argument(
            "--control", type=Path, default=None, metavar="FILE",
            help=f"the engine's control file (default: ${CONTROL_FILE_ENV}, else {DEFAULT_CONTROL_FILE})",
        )
        sub.add_argument("--operator", default=None, metavar="NAME", help="who is acting (default: $USER@hostname)")
        sub.add_argument("--json", action="store_true", help="print the engine's reply as JSON")
        sub.add_argument(
            "--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT_S, metavar="S",
            help=f"give up waiting for the engine after S seconds (default: {DEFAULT_TIMEOUT_S:g})",
        )
        sub.set_defaults(func=run_control_command, action=action)


def default_operator(environ: dict[str, str] | None = None) -> str:
    """``$USER@hostname``: who is acting, as far as this machine can say."""
    env = os.environ if environ is None else environ
    user = env.get("USER") or env.get("USERNAME") or "unknown"
    return f"{user}@{socket.gethostname()}"


def control_file_path(explicit: Path | None, environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit
    from_env = env.get(CONTROL_FILE_ENV)
    return Path(from_env) if from_env else DEFAULT_CONTROL_FILE


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect would carry the Authorization header elsewhere: treated as an error instead."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        return None


# No proxies (an http_proxy variable would send the token through the proxy), no redirects.
_opener: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


class _Failed(Exception):
    """One line for stderr; the command exits 2."""


def _fail(message: str) -> int:
    sys.stderr.write(f"kestrel: error: {scrub(message)}\n")
    return EXIT_USAGE


def _engine_gone(endpoint: ControlEndpoint) -> bool:
    """True when the process that wrote the control file is known to be gone (a stale file)."""
    if os.name != "posix" or endpoint.pid <= 0:
        return False
    try:
        os.kill(endpoint.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive under another user, or cannot tell
        return False
    return False


def _error_message(body: bytes) -> str:
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", "replace").strip() or "(no message)"
    if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
        return str(decoded["message"])
    return "(no message)"


def _post(endpoint: ControlEndpoint, path: Path, action: OperatorAction, payload: bytes, timeout_s: float) -> bytes:
    """POST the command; the reply's body for 200 and 409, else :class:`_Failed` with what to do."""
    url = f"{endpoint.url}/control/{action.value}"
    request = urllib.request.Request(
        url,
        data=payload,
        method="POST",
        headers={
            "Authorization": f"Bearer {endpoint.token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        },
    )
    try:
        with _opener.open(request, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        finally:
            exc.close()
        status = exc.code
        if status == 409:
            return body
        message = _error_message(body)
        if status == 401:
            raise _Failed(
                f"the engine at {endpoint.url} refused the token in {path}: the file is stale or belongs to "
                "another engine; point --control at the running engine's control file"
            ) from None
        if status == 400:
            raise _Failed(f"the engine refused the request: {message}") from None
        if status == 504:
            raise _Failed(
                f"the engine at {endpoint.url} did not handle the {action.value} in time: it may still take "
                "effect; check the engine's log before trying again"
            ) from None
        if status == 500:
            raise _Failed(f"the engine failed to handle the {action.value}: {message} (see the engine's log)") from None
        raise _Failed(
            f"unexpected answer from {endpoint.url}: HTTP {status}: {message} (is it a Kestrel control channel?)"
        ) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise _Failed(_timed_out(endpoint, action, timeout_s)) from None
        if isinstance(reason, ConnectionRefusedError):
            raise _Failed(_not_listening(endpoint, path)) from None
        raise _Failed(f"cannot reach the engine at {endpoint.url}: {reason}") from None
    except TimeoutError:
        raise _Failed(_timed_out(endpoint, action, timeout_s)) from None
    except ConnectionError as exc:
        raise _Failed(f"the connection to the engine at {endpoint.url} failed: {exc.strerror or exc}") from None
    except OSError as exc:
        raise _Failed(f"cannot reach the engine at {endpoint.url}: {exc.strerror or exc}") from None


def _timed_out(endpoint: ControlEndpoint, action: OperatorAction, timeout_s: float) -> str:
    return (
        f"no answer from the engine at {endpoint.url} within {timeout_s:g} s: the {action.value} may still take "
        "effect; check the engine's log (or retry with a longer --timeout)"
    )


def _not_listening(endpoint: ControlEndpoint, path: Path) -> str:
    stale = (
        f" (the engine that wrote {path}, pid {endpoint.pid}, is no longer running)" if _engine_gone(endpoint) else ""
    )
    return (
        f"no engine is listening at {endpoint.url}{stale}: is `kestrel run` running with the control channel on?"
    )


def _summary(action: OperatorAction, reply: OperatorReply) -> str:
    verb = _DONE[action] if reply.accepted else f"{action.value} refused"
    line = f"{verb}: {reply.state.value} — {reply.detail}"
    if reply.intents:
        line += f" ({len(reply.intents)} order{'s' if len(reply.intents) != 1 else ''}: {', '.join(reply.intents)})"
    return line


def run_control_command(args: argparse.Namespace) -> int:
    """Send ``args.action`` to the engine; the exit code (0 accepted, 3 refused, 2 otherwise)."""
    action: OperatorAction = args.action
    reason: str = args.reason
    if not reason.strip():
        return _fail("--reason must not be empty: say why (it is journaled with the command)")
    if len(reason) > MAX_REASON_CHARS:
        return _fail(f"--reason is {len(reason)} characters; at most {MAX_REASON_CHARS}")
    operator: str = args.operator if args.operator is not None else default_operator()
    if not operator.strip() or len(operator) > MAX_OPERATOR_CHARS:
        return _fail(f"--operator must be 1 to {MAX_OPERATOR_CHARS} characters")
    path = control_file_path(args.control)
    try:
        endpoint = read_control_file(path)
    except ControlFileError as exc:
        return _fail(str(exc))
    payload = msgspec.json.encode({"reason": reason, "operator": operator})
    try:
        body = _post(endpoint, path, action, payload, args.timeout)
        reply = _decode_reply(endpoint, body)
    except _Failed as exc:
        return _fail(str(exc))
    sys.stdout.write((msgspec.json.encode(reply).decode() if args.json else _summary(action, reply)) + "\n")
    sys.stdout.flush()
    return EXIT_ACCEPTED if reply.accepted else EXIT_REFUSED


def _decode_reply(endpoint: ControlEndpoint, body: bytes) -> OperatorReply:
    try:
        return msgspec.json.decode(body, type=OperatorReply)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise _Failed(f"the engine at {endpoint.url} answered something that is not a reply: {exc}") from None
