"""The data plane's common ground: which sandbox a call is for, who makes it, as which user,
and what its paths mean.

With `E2B_SANDBOX_URL` set, E2B's SDKs send every in-sandbox call to that one address and say
which sandbox it is for in the `E2b-Sandbox-Id` header, with the sandbox's access token in
`X-Access-Token` (common.access_token: it names a key, which must still be valid; a tryfleet
key in `X-API-KEY` does as well). A sandbox that is closed, unknown or another tenant's answers
what E2B's proxy answers for one that is not running: 502, "The sandbox X was not found".

Users are E2B's: `user` (the default, home /home/user) and `root`, named by the call (HTTP
Basic with an empty password for RPCs, `?username=` for files). Relative paths and `~` are
relative to the user's home, as in E2B's daemon; `..` is resolved, and the result must be a
normalised absolute path (wire.guest_path_problem) before anything reaches the guest.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import posixpath
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request

from tryfleet import logs
from tryfleet.errors import BadRequest, NotFound, PolicyDenied, TryfleetError
from tryfleet.scheduler.sandboxes import OPEN, SandboxRecord
from tryfleet.wire import ExecReply, ExecRequest, SandboxGone, guest_path_problem, pack, unpack

from ..auditing import call_of, sandbox_closing
from ..keys import KeyStore, Principal, Scope
from ..metrics import denied
from ..routes.sandboxes import book, seen_by
from .common import ApiError, sandbox_missing, token_principal
from .connect import HTTP_STATUS, Code, ConnectError
from .sandbox_env import DEFAULT_USER, HOMES

log = logging.getLogger("tryfleet.gateway")
GIVE_TIMEOUT_S = 30.0


@dataclass(frozen=True, slots=True)
class Target:
    """One in-sandbox call: its sandbox (open, the caller's), its caller, its user, and
    whether it is an RPC (its refusals are Connect errors) or plain HTTP (E2B REST errors)."""

    request: Request
    box: SandboxRecord
    who: Principal
    user: str
    rpc: bool

    @property
    def home(self) -> str:
        return HOMES[self.user]

    def refuse(self, code: Code, message: str) -> Exception:
        if self.rpc:
            return ConnectError(code, message)
        return ApiError(HTTP_STATUS[code], message)

    def path(self, raw: str, what: str = "path") -> str:
        """`raw` as an absolute, normalised guest path (relative to the user's home)."""
        if not raw:
            raise self.refuse(Code.INVALID_ARGUMENT, f"{what} is empty: name a path")
        if raw == "~" or raw.startswith("~/"):
            raw = self.home + raw[1:]
        elif not raw.startswith("/"):
            raw = f"{self.home}/{raw}"
        path = "/" + posixpath.normpath(raw).lstrip("/")
        why = guest_path_problem(path)
        if why is not None:
            raise self.refuse(Code.INVALID_ARGUMENT, f"{what} {raw[:200]!r} is refused: {why}")
        return path

    async def node(self, method: str, *args: Any) -> Any:
        """A call to the node agent holding the sandbox; a sandbox its host no longer holds
        is closed, and answers as a sandbox that is not running."""
        try:
            return await self.request.app.state.fleet.node(self.box.host, method, self.box.id,
                                                           *args)
        except SandboxGone as err:
            raise await self.gone(err) from None

    async def give(self, path: str) -> None:
        """A path this call made given to its user, with the directories above it inside the
        user's home (E2B's daemon makes them as the user; the guest's file operations run as
        root). Nothing for root; a failure is logged, not raised: the file is there."""
        if self.user == "root":
            return
        paths, parent = [path], posixpath.dirname(path)
        while parent.startswith(self.home + "/"):
            paths.append(parent)
            parent = posixpath.dirname(parent)
        # relative to cwd "/", so that on the fake hypervisor they stay in its scratch root
        req = ExecRequest(("chown", "-h", f"{self.user}:", "--", *(p[1:] for p in paths)),
                          cwd="/", timeout_s=GIVE_TIMEOUT_S)
        try:
            reply = unpack(ExecReply, await self.node("sandbox_exec", pack(req)))
        except TryfleetError as err:
            log.warning("sandbox %s: %s not given to %s: %s", self.box.id, path, self.user, err)
            return
        if reply.exit_code != 0:
            log.info("sandbox %s: %s not given to %s: %s", self.box.id, path, self.user,
                     reply.stderr[:300].decode(errors="replace").strip())

    async def gone(self, err: Exception) -> Exception:
        with contextlib.suppress(TryfleetError):  # else its timeout or host loss ends it
            why = f"gone from its host: {err}"
            await sandbox_closing(call_of(self.request), self.box, why)
            await self.request.app.state.fleet.sched("close_sandbox", self.box.id, None, why)
        missing = sandbox_missing(self.box.id)
        return ConnectError(Code.UNAVAILABLE, missing.message) if self.rpc else missing


def _caller(request: Request, sid: str) -> Principal:
    keys: KeyStore = request.app.state.keys
    token = request.headers.get("x-access-token")
    key = request.headers.get("x-api-key")
    if token:
        who = token_principal(keys, token, sid)
    elif key:
        who = keys.verify(key)
    else:
        denied("no_key")
        raise ApiError(401, "this sandbox needs its access token (X-Access-Token, as the "
                       "E2B SDK sends it) or a tryfleet key (X-API-KEY)")
    if who is None:
        denied("bad_key")
        raise ApiError(401, "the access token or key is not valid for this sandbox: "
                       "unknown, revoked, expired, or made for another sandbox")
    if not who.may(Scope.SANDBOX):
        denied("scope")
        raise ApiError(403, "this key lacks the scope this needs: `sandbox`")
    return who


def _open_box(request: Request, sid: str, who: Principal) -> SandboxRecord:
    try:
        rec = book(request).get(sid, seen_by(who))
    except TryfleetError:
        raise sandbox_missing(sid) from None
    if rec.state != OPEN:
        raise sandbox_missing(sid)
    if rec.vm is None:
        raise ApiError(503, f"sandbox {sid} is still being opened on its host; try again in "
                       "a moment", {"Retry-After": "1"})
    return rec


def user_of(name: str | None) -> str:
    if not name:
        return DEFAULT_USER
    if name not in HOMES:
        raise ApiError(400, f"user {name[:64]!r} does not exist in a tryfleet sandbox: use "
                       f"{' or '.join(map(repr, HOMES))} (the default is {DEFAULT_USER!r})")
    return name


def _basic_user(request: Request) -> str | None:
    """The user an RPC names: HTTP Basic with the user and an empty password."""
    kind, _, value = request.headers.get("authorization", "").partition(" ")
    if kind.lower() != "basic":
        return None
    try:
        return base64.b64decode(value.strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        raise ApiError(400, "the Authorization header must be Basic base64('USER:')") from None


def _sandbox_id(request: Request) -> str:
    sid = request.headers.get("e2b-sandbox-id", "")
    if not sid or len(sid) > 64:
        raise ApiError(400, "this is E2B's in-sandbox API: say which sandbox in the "
                       "E2b-Sandbox-Id header (the E2B SDK does when E2B_SANDBOX_URL is set)")
    return sid


async def rpc_target(request: Request) -> Target:
    sid = _sandbox_id(request)
    who = _caller(request, sid)
    call_of(request).admit(who)  # its key on the request's audit records
    logs.add(sandbox=sid)
    return Target(request, _open_box(request, sid, who), who,
                  user_of(_basic_user(request)), rpc=True)


async def http_target(request: Request, username: Annotated[
        str | None, Query(max_length=64)] = None) -> Target:
    sid = _sandbox_id(request)
    who = _caller(request, sid)
    call_of(request).admit(who)
    logs.add(sandbox=sid)
    return Target(request, _open_box(request, sid, who), who,
                  user_of(username or _basic_user(request)), rpc=False)


RpcTarget = Annotated[Target, Depends(rpc_target)]
HttpTarget = Annotated[Target, Depends(http_target)]


def rpc_error(err: TryfleetError) -> ConnectError:
    """A node agent's error as the Connect error an SDK turns into its own exception."""
    if isinstance(err, NotFound):
        return ConnectError(Code.NOT_FOUND, str(err))
    if isinstance(err, BadRequest):
        return ConnectError(Code.INVALID_ARGUMENT, str(err))
    if isinstance(err, PolicyDenied):  # a kill switch on the sandbox
        return ConnectError(Code.PERMISSION_DENIED, str(err))
    return ConnectError(Code.INTERNAL, f"tryfleet could not do this in the sandbox: {err}")


__all__ = ["HttpTarget", "RpcTarget", "Target", "http_target", "rpc_error", "rpc_target",
           "user_of"]
