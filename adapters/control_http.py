"""The operator's control channel: authenticated HTTP on loopback, into a running engine.

``kestrel halt|resume|flatten`` (:mod:`kestrel.control_cli`) reach the engine through
this small aiohttp server. It knows nothing of risk or the bus: each request becomes an
:class:`~engine.messages.OperatorCommand` handed to ``dispatch`` (the composition root
routes it to risk), and the :class:`~engine.messages.OperatorReply` goes back as JSON.

Control routes (every one needs ``Authorization: Bearer <token>``):

- ``POST /control/halt``, ``/control/resume``, ``/control/flatten`` with the JSON body
  ``{"reason": str, "operator": str (optional, default "cli")}``: 200 + the reply when
  accepted, 409 + the reply when the engine refused, 400 for a bad body, 504 when the
  engine did not answer within ``dispatch_timeout_s``, 500 (type and message) when
  ``dispatch`` raised;
- ``GET /control/state``: ``await state()`` as JSON, 404 when no ``state`` was given.

``public`` adds read-only GET routes that need no token (the composition root's
``/metrics``, ``/healthz`` and ``/readyz``): a monitoring system scrapes them, and
they can neither change the engine nor reveal more than its figures.

Errors are JSON too: ``{"error": CODE, "message": TEXT}``. A missing or wrong token is
401; the request goes no further, and the warning logged names the remote address,
never a token (neither the one presented nor the one expected).

Why loopback, a bearer token and a 0600 file: anyone who can reach the port could halt
or flatten the account, so the server binds to loopback only (a remote bind needs
``allow_remote=True``) and asks for a random token that only the engine's user can read,
from the control file the engine writes at start (:func:`write_control_file`). The CLI
reads the URL and the token from that file (:func:`read_control_file`), and refuses a
file others can read, as ssh refuses a private key.

The control-file functions do blocking file I/O: the composition root calls them
through ``asyncio.to_thread``. The CLI, which has no event loop, calls them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import os
import secrets
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec
from aiohttp import web

from engine.errors import UserError
from engine.logs import get_logger
from engine.messages import OperatorAction, OperatorCommand, OperatorReply
from engine.secrets import Secret, is_placeholder, scrub

log = get_logger(actor="control")

MAX_REASON_CHARS: Final = 500
MAX_OPERATOR_CHARS: Final = 100
DEFAULT_OPERATOR: Final = "cli"
DEFAULT_DISPATCH_TIMEOUT_S: Final = 10.0
MIN_TOKEN_CHARS: Final = 16
MAX_CONTROL_FILE_BYTES: Final = 64 * 1024
_MAX_BODY_BYTES: Final = 64 * 1024
_ACTIONS: Final = {action.value: action for action in OperatorAction}

T = TypeVar("T")
Dispatch = Callable[[OperatorCommand], Awaitable[OperatorReply]]
StateProvider = Callable[[], Awaitable[dict[str, Any]]]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_encoder = msgspec.json.Encoder()


# ---------------------------------------------------------------- errors


class ControlError(UserError):
    """The control channel cannot be set up or used as asked (a bind, a token, a file)."""


class ControlFileError(ControlError):
    """The control file is missing, unreadable, malformed or readable by others."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# ---------------------------------------------------------------- tokens and the control file


def generate_token() -> str:
    """A fresh random bearer token (256 bits, URL-safe), one per engine run."""
    return secrets.token_urlsafe(32)


@dataclasses.dataclass(frozen=True, repr=False)
class ControlEndpoint:
    """Where a running engine's control channel listens, and the token it wants."""

    url: str
    """``http://HOST:PORT``, without a path."""
    pid: int
    """The engine's process id when it wrote the file (to tell a stale file from a live one)."""
    token: str
    """The bearer token. Never shown by ``repr``/``str``; registered with the log redaction."""

    def __repr__(self) -> str:
        return f"ControlEndpoint(url={self.url!r}, pid={self.pid}, token='***')"


class _ControlFileBody(msgspec.Struct, frozen=True):
    url: str
    pid: int
    token: str


def write_control_file(path: Path, url: str, token: str, pid: int) -> None:
    """Write ``{"url", "pid", "token"}`` to ``path``, readable by this user only, atomically.

    The file is created 0600 from the start (``os.open`` with a mode, never a ``chmod``
    after the token is in it) under a temporary name in the same folder, flushed to disk,
    then renamed over ``path``: a reader sees the old file or the whole new one. A missing
    folder is created 0700. Blocking: call it through ``asyncio.to_thread`` from a loop.
    """
    Secret(token)  # registers the text with the log redaction
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{pid}.{secrets.token_hex(4)}.tmp")
    data = _encoder.encode(_ControlFileBody(url=url, pid=pid, token=token)) + b"\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # the error worth reporting is the first one
            tmp.unlink(missing_ok=True)
        raise ControlFileError(path, f"cannot write the control file: {exc.strerror or exc}") from None


def read_control_file(path: Path) -> ControlEndpoint:
    """The endpoint a running engine wrote to ``path``; :class:`ControlFileError` says why not.

    Refused, like ssh refuses a private key, when the group or others may read or write it:
    the token in it is as good as the operator's own hands on the engine.
    """
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the CLI (no effect on a regular file).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise ControlFileError(
            path, "no control file: is `kestrel run` running with the control channel on? (or give --control FILE)"
        ) from None
    except OSError as exc:
        raise ControlFileError(path, f"cannot read the control file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ControlFileError(path, "not a regular file")
        if os.name == "posix" and info.st_mode & 0o077:
            raise ControlFileError(
                path,
                f"permissions {stat.S_IMODE(info.st_mode):04o} are too open: the token in it must be readable "
                f"by its owner only (chmod 600 {path})",
            )
        data = b""
        while len(data) <= MAX_CONTROL_FILE_BYTES and (chunk := os.read(fd, MAX_CONTROL_FILE_BYTES + 1 - len(data))):
            data += chunk
    except OSError as exc:
        raise ControlFileError(path, f"cannot read the control file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONTROL_FILE_BYTES:
        raise ControlFileError(path, f"not a control file (larger than {MAX_CONTROL_FILE_BYTES} bytes)")
    try:
        body = msgspec.json.decode(data, type=_ControlFileBody)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        # msgspec's messages name the field and the expected type, never the value.
        raise ControlFileError(path, f"not a control file ({scrub(str(exc))})") from None
    Secret(body.token)
    if not body.url.startswith(("http://", "https://")):
        raise ControlFileError(path, "not a control file (url is not http:// or https://)")
    if len(body.token) < MIN_TOKEN_CHARS:
        raise ControlFileError(path, "not a control file (the token is too short)")
    return ControlEndpoint(url=body.url.rstrip("/"), pid=body.pid, token=body.token)


def remove_control_file(path: Path) -> None:
    """Remove the control file, if it is there. Blocking: call it through ``asyncio.to_thread``."""
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise ControlFileError(path, f"cannot remove the control file: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- the server


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for any other name."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Refused(Exception):
    """A request answered with an error status: turned into a JSON body by the middleware."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class _CommandBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    reason: str
    operator: str | None = None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=_encoder.encode(data), status=status, content_type="application/json", headers=headers)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return _json({"error": code, "message": scrub(message)}, status, headers)


def _parse_command_body(raw: bytes) -> _CommandBody:
    usage = 'expected a JSON object {"reason": "...", "operator": "..." (optional)}'
    if not raw.strip():
        raise _Refused(400, "bad_request", f"empty body: {usage}")
    try:
        body = msgspec.json.decode(raw, type=_CommandBody)
    except msgspec.ValidationError as exc:
        raise _Refused(400, "bad_request", f"{exc}: {usage}") from None
    except msgspec.DecodeError:
        raise _Refused(400, "bad_request", f"the body is not valid JSON: {usage}") from None
    if not body.reason.strip():
        raise _Refused(400, "bad_request", "reason must not be empty: say why (it is journaled with the command)")
    if len(body.reason) > MAX_REASON_CHARS:
        raise _Refused(400, "bad_request", f"reason is {len(body.reason)} characters; at most {MAX_REASON_CHARS}")
    if body.operator is not None and not body.operator.strip():
        raise _Refused(400, "bad_request", "operator must not be empty (leave it out for the default)")
    if body.operator is not None and len(body.operator) > MAX_OPERATOR_CHARS:
        raise _Refused(400, "bad_request", f"operator is {len(body.operator)} characters; at most {MAX_OPERATOR_CHARS}")
    return body


class ControlServer:
    """The control channel's HTTP server. ``start()``, then ``url``; ``stop()`` when done.

    ``dispatch`` carries a command into the engine and returns its reply; ``clock_ns``
    stamps ``ts_init`` (the engine clock); ``state``, when given, answers
    ``GET /control/state``. ``token`` is compared in constant time and registered with the
    log redaction. A ``host`` that is not loopback is refused unless ``allow_remote``:
    the token then crosses the network in clear text.
    """

    def __init__(
        self,
        dispatch: Dispatch,
        token: str,
        clock_ns: Callable[[], int],
        host: str = "127.0.0.1",
        port: int = 0,
        state: StateProvider | None = None,
        *,
        allow_remote: bool = False,
        dispatch_timeout_s: float = DEFAULT_DISPATCH_TIMEOUT_S,
        public: Mapping[str, Handler] | None = None,
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ControlError(
                f"control channel: refusing to listen on {host!r}, which is not a loopback address "
                "(anyone who reaches it with the token could halt or flatten the account; "
                "use 127.0.0.1, or allow_remote=True behind TLS)"
            )
        if len(token) < MIN_TOKEN_CHARS or is_placeholder(token):
            raise ControlError(f"control channel: the token must be random and at least {MIN_TOKEN_CHARS} characters")
        if not dispatch_timeout_s > 0:
            raise ControlError(f"control channel: dispatch_timeout_s must be > 0, got {dispatch_timeout_s!r}")
        Secret(token)  # registers the text with the log redaction
        self._dispatch = dispatch
        self._expected = token.encode()
        self._clock_ns = clock_ns
        self._host = host
        self._port = port
        self._state = state
        self._public = dict(public or {})
        self._timeout_s = dispatch_timeout_s
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return f"ControlServer(host={self._host!r}, port={self._port}, url={self._url!r})"

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` once started (the port actually bound when 0 was asked for)."""
        if self._url is None:
            raise RuntimeError("ControlServer.url: the server is not started")
        return self._url

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=_MAX_BODY_BYTES)
        for action in OperatorAction:
            app.router.add_post(f"/control/{action.value}", self._command)
        app.router.add_get("/control/state", self._get_state)
        for path, handler in self._public.items():
            app.router.add_get(path, handler)
        return app

    async def start(self) -> None:
        """Listen on ``host:port``; :class:`ControlError` when the address cannot be bound."""
        if self._runner is not None:
            raise RuntimeError("ControlServer.start: already started")
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError as exc:
            await runner.cleanup()
            raise ControlError(
                f"control channel: cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from None
        host, port = runner.addresses[0][:2]
        self._runner = runner
        self._url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        log.info("control_listening", url=self._url)

    async def stop(self) -> None:
        """Close the listening socket and finish the requests in flight (2 s at most). Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await runner.cleanup()
        log.info("control_stopped", url=self._url)

    # ------------------------------------------------------------ request path

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # Bytes, not str: compare_digest refuses non-ASCII str, and a header is attacker-chosen.
        return hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), self._expected)

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method in ("GET", "HEAD") and request.path in self._public:
            return await handler(request)  # read-only: metrics, health, readiness
        if not self._authorized(request):
            problem = "missing" if "Authorization" not in request.headers else "wrong"
            log.warning(
                "control_unauthorized",
                remote=request.remote,
                method=request.method,
                path=request.path,
                credential=problem,
            )
            return _error(
                401,
                "unauthorized",
                "missing or wrong bearer token: send the token from the engine's control file",
                {"WWW-Authenticate": 'Bearer realm="kestrel-control"'},
            )
        try:
            return await handler(request)
        except _Refused as exc:
            return _error(exc.status, exc.code, exc.message, exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            code = exc.reason.lower().replace(" ", "_")
            return _error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")

    async def _bounded(self, call: Callable[[], Awaitable[T]], what: str, **context: Any) -> T:
        """Await ``call()`` for at most the dispatch timeout: 504 when late, 500 when it raised."""
        scope = asyncio.timeout(self._timeout_s)
        try:
            async with scope:
                return await call()
        except TimeoutError as exc:
            if scope.expired():
                log.error(f"control_{what}_timeout", timeout_s=self._timeout_s, **context)
                raise _Refused(
                    504,
                    "timeout",
                    f"the engine did not answer within {self._timeout_s:g} s; the command may still take "
                    "effect: check the engine's log and GET /control/state",
                ) from None
            raise self._failed(exc, what, context) from exc
        except Exception as exc:
            raise self._failed(exc, what, context) from exc

    @staticmethod
    def _failed(exc: Exception, what: str, context: dict[str, Any]) -> _Refused:
        log.error(f"control_{what}_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc, **context)
        return _Refused(500, "internal_error", f"{what} failed: {type(exc).__name__}: {exc}")

    async def _command(self, request: web.Request) -> web.StreamResponse:
        action = _ACTIONS[request.path.rsplit("/", 1)[-1]]
        body = _parse_command_body(await request.read())
        command = OperatorCommand(
            action=action,
            reason=body.reason,
            operator=body.operator or DEFAULT_OPERATOR,
            ts_init=self._clock_ns(),
        )
        context = {"action": action.value, "operator": command.operator, "remote": request.remote}
        log.info("control_command", reason=command.reason, **context)
        reply = await self._bounded(lambda: self._dispatch(command), "dispatch", **context)
        log.info(
            "control_reply", accepted=reply.accepted, state=reply.state.value, detail=reply.detail, **context
        )
        return _json(reply, 200 if reply.accepted else 409)

    async def _get_state(self, request: web.Request) -> web.StreamResponse:
        provider = self._state
        if provider is None:
            raise _Refused(404, "not_found", "this engine does not report its state on the control channel")
        snapshot = await self._bounded(provider, "state", remote=request.remote)
        return _json(snapshot)
