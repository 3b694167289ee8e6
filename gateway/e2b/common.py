"""What the E2B adapter's routes share: the version of E2B's in-sandbox daemon ("envd") it
speaks, the access tokens of its data plane, and its error answers.

E2B's REST answers its errors as `{"code": <HTTP status>, "message": "..."}` (its SDKs parse
nothing else: a problem+json body crashes the Python SDK's parser), its in-sandbox RPCs as
Connect errors. `E2BRoute` turns whatever a route raises (tryfleet's errors, the gateway's
problems, a body that does not validate, a ConnectError) into the shape its caller parses.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from tryfleet.errors import (
    BadRequest,
    CannotPlace,
    FleetUnavailable,
    InfrastructureError,
    NoRoom,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    TryfleetError,
)

from ..keys import KeyStore, Principal
from ..metrics import denied_for
from ..problems import Problem
from . import connect

log = logging.getLogger("tryfleet.gateway")

# The envd version a sandbox claims. The SDKs gate features on it: >= 0.5.7 uploads with
# octet-stream, >= 0.5.2 closes stdin, >= 0.4.0 leaves the user to the daemon's default; below
# 0.6.2 they refuse file metadata themselves, with a message that names the version (tryfleet
# keeps no extended attributes), rather than sending it to be refused here.
ENVD_VERSION = "0.6.1"
CLIENT_ID = "tryfleet"
TOKEN_PURPOSE = "e2b-envd"
_TOKEN = re.compile(r"^tfe_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")


class ApiError(Exception):
    """An answer in E2B's REST error shape: the status, and {"code": status, "message"}."""

    def __init__(self, status: int, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def sandbox_missing(sid: str) -> ApiError:
    """What E2B's proxy answers for a sandbox that is not running: the SDKs raise their
    "sandbox not running" error when a 502 says the sandbox "was not found"."""
    return ApiError(502, f"The sandbox {sid} was not found: it was killed, its timeout "
                    "passed, or it never existed")


def access_token(keys: KeyStore, sid: str, key_id: str) -> str:
    """The data plane's credential for one sandbox and one key (E2B's envdAccessToken): it
    names the key, so every in-sandbox call is the key's, and stops working with it."""
    return f"tfe_{key_id}_{keys.sign(TOKEN_PURPOSE, sid, key_id)}"


def token_principal(keys: KeyStore, token: str, sid: str) -> Principal | None:
    """The caller an access token stands for, if it was made for this sandbox and its key is
    still valid; None otherwise."""
    m = _TOKEN.match(token)
    if m is None or not hmac.compare_digest(keys.sign(TOKEN_PURPOSE, sid, m[1]), m[2]):
        return None
    return keys.active(m[1])


def api_error(err: BaseException) -> ApiError:
    """The E2B REST answer for an error raised by a route."""
    if isinstance(err, ApiError):
        return err
    if isinstance(err, Problem):
        headers = {k: v for k, v in err.headers.items() if k != "WWW-Authenticate"}
        if err.status in (429, 503) and err.slug != "unavailable":
            headers["Should-Retry"] = "false"
        return ApiError(err.status, err.detail, headers)
    if isinstance(err, RequestValidationError):
        first = err.errors()[:3]
        detail = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()) if x != 'body')}: "
                           f"{e.get('msg', 'invalid')}" for e in first)
        return ApiError(400, f"the request does not fit E2B's schema: {detail}")
    if isinstance(err, StarletteHTTPException):
        return ApiError(err.status_code, str(err.detail))
    if isinstance(err, TryfleetError):
        return _of_tryfleet(err)
    return ApiError(500, "tryfleet failed to handle this request; the X-Request-Id header "
                    "says where in its logs")


def _of_tryfleet(err: TryfleetError) -> ApiError:
    text = str(err)
    denied_for(err)
    final = {"Should-Retry": "false"}  # the SDKs retry 429 and 503 unless told not to
    if isinstance(err, QuotaExceeded):
        return ApiError(429, text, final)
    if isinstance(err, PolicyDenied):
        return ApiError(403, text)
    if isinstance(err, NotFound):
        return ApiError(404, text)
    if isinstance(err, (CannotPlace, BadRequest)):
        return ApiError(400, text)
    if isinstance(err, NoRoom):
        return ApiError(503, text, final)
    if isinstance(err, (FleetUnavailable, InfrastructureError)):
        return ApiError(503, text, {"Retry-After": "1"})
    return ApiError(500, "tryfleet failed to handle this request; the X-Request-Id header "
                    "says where in its logs")


def api_answer(err: ApiError) -> Response:
    return Response(json.dumps({"code": err.status, "message": err.message}),
                    status_code=err.status, media_type="application/json",
                    headers=err.headers)


class E2BRoute(APIRoute):
    """A route whose errors answer in E2B's shapes: a ConnectError as a Connect error, any
    other as E2B's REST error (logged when it is a bug)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except connect.ConnectError as err:
                return connect.error_answer(err)
            except Exception as err:
                answer = api_error(err)
                if answer.status == 500:
                    log.exception("%s %s failed", request.method, request.url.path)
                elif answer.status >= 500 and answer.status != 502:  # 502: sandbox not running
                    log.warning("%s %s: %s", request.method, request.url.path, err)
                return api_answer(answer)

        return handle


__all__ = ["CLIENT_ID", "ENVD_VERSION", "ApiError", "E2BRoute", "access_token", "api_answer",
           "api_error", "sandbox_missing", "token_principal"]
