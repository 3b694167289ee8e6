"""Every error the API answers is RFC 9457 problem+json: what was wrong and what to do.

    {"type": "urn:tryfleet:problem:not-found", "title": "Not found", "status": 404,
     "detail": "no sandbox 'sbx-1'", "instance": "/v1/sandboxes/sbx-1", "request_id": "..."}

tryfleet's own errors map to a status by their family (errors.py); bad input of any kind is a
4xx, never a 500; a 500 is a bug, and says only that and the request id.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tryfleet.audit.errors import AuditUnavailable
from tryfleet.errors import (
    BadRequest,
    CannotPlace,
    FleetUnavailable,
    Frozen,
    InfrastructureError,
    NoRoom,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    TryfleetError,
)

from .metrics import denied_for

log = logging.getLogger("tryfleet.gateway")
MEDIA_TYPE = "application/problem+json"


class Problem(Exception):
    """An answer other than success: raised anywhere in a request, turned into problem+json."""

    def __init__(self, status: int, slug: str, detail: str, *, title: str | None = None,
                 headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail = status, slug, detail
        self.title = title or slug.replace("-", " ").capitalize()
        self.headers = headers or {}
        self.extra = extra


def unauthorized(detail: str) -> Problem:
    return Problem(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


def forbidden(detail: str, **extra: Any) -> Problem:
    return Problem(403, "forbidden", detail, **extra)


def not_found(what: str) -> Problem:
    return Problem(404, "not-found", f"no {what}")


def of_error(err: TryfleetError) -> Problem:
    """The problem a tryfleet error is, by its family."""
    detail = str(err)
    denied_for(err)
    if isinstance(err, QuotaExceeded):
        return Problem(429, "quota-exceeded", detail, limit=err.limit, value=err.value,
                       headers={"Retry-After": "5"})
    if isinstance(err, Frozen):  # a kill switch: names it, who flipped it, when and why
        return Problem(403, "frozen", detail, rule=err.rule, switch=err.switch)
    if isinstance(err, PolicyDenied):
        return Problem(403, "policy-denied", detail, rule=err.rule)
    if isinstance(err, NotFound):
        return Problem(404, "not-found", detail)
    if isinstance(err, CannotPlace):
        return Problem(422, "cannot-place", detail, reason=err.reason)
    if isinstance(err, BadRequest):
        return Problem(400, "bad-request", detail)
    if isinstance(err, AuditUnavailable):  # fail closed: nothing was done
        return Problem(503, "audit-unavailable", detail, title="Audit unavailable",
                       headers={"Retry-After": "5"})
    if isinstance(err, NoRoom):
        return Problem(503, "no-room", detail, headers={"Retry-After": "5"})
    if isinstance(err, (FleetUnavailable, InfrastructureError)):
        return Problem(503, "unavailable", detail, headers={"Retry-After": "1"})
    return Problem(500, "internal", "tryfleet failed to handle this request; the request id "
                   "says where in its logs")


def body(request: Request, p: Problem) -> dict[str, Any]:
    """The problem+json document (also the data of an SSE `error` event)."""
    return {"type": f"urn:tryfleet:problem:{p.slug}", "title": p.title, "status": p.status,
            "detail": p.detail, "instance": request.url.path,
            "request_id": getattr(request.state, "request_id", None), **p.extra}


def response(request: Request, p: Problem) -> JSONResponse:
    """The problem's answer (its X-Request-Id header comes from app.RequestIds, as on every
    answer)."""
    return JSONResponse(body(request, p), status_code=p.status, media_type=MEDIA_TYPE,
                        headers=dict(p.headers))


class ProblemBody(BaseModel):
    """RFC 9457 problem details, as every error answers (more members by problem type)."""

    model_config = ConfigDict(extra="allow")
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, each a problem+json document."""
    schema = ProblemBody.model_json_schema()
    return {s: {"content": {MEDIA_TYPE: {"schema": schema}},
                "description": "a problem (RFC 9457)"} for s in statuses}


def _validation_errors(err: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for e in err.errors():
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        out.append({"field": where, "problem": e.get("msg", "invalid")})
    return out


def _not_json(request: Request, err: RequestValidationError) -> bool:
    """Whether the body as a whole was refused because it did not come as JSON (as curl's -d
    sends it: form-encoded), which FastAPI then does not parse."""
    kind = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    json_type = kind == "application/json" or kind.endswith("+json")
    return not json_type and any(tuple(e.get("loc", ())) == ("body",) for e in err.errors())


def _of_http(request: Request, err: StarletteHTTPException) -> Problem:
    """The problem a Starlette/FastAPI HTTP exception is, its headers kept."""
    headers = dict(err.headers or {})
    if err.status_code == 405:
        # Allow lists every method of the resource (RFC 9110), not only those of the first
        # route whose path matched: GET and DELETE /v1/sandboxes/{sid} are two routes
        headers["Allow"] = ", ".join(_allowed(request))
    if err.status_code == 400 and err.detail == _UNPARSED:
        # a body FastAPI could not even decode (not UTF-8, say); a JSON syntax error is a 422
        return Problem(400, "bad-request", "the body could not be read as JSON: send UTF-8 "
                       "JSON with Content-Type: application/json", headers=headers)
    slug = {400: "bad-request", 404: "not-found", 405: "method-not-allowed",
            413: "too-large"}.get(err.status_code, "http-error")
    return Problem(err.status_code, slug, str(err.detail), headers=headers)


_UNPARSED = "There was an error parsing the body"  # FastAPI's detail (fastapi/routing.py)


def _allowed(request: Request) -> list[str]:
    """Every method some route of the app serves at the request's path (asked of the routes
    themselves, which also answer for the routers included in the app)."""
    routes = request.app.router.routes
    return [m for m in _METHODS
            if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)]


_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def complete_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI document made true to what the app answers, for every operation: its 422
    is a problem (FastAPI documents its own HTTPValidationError there, which this app never
    sends), and one that takes a body may answer 400 (a body that is not even text)."""
    problem = documented(400, 422)
    for operation in _operations(doc):
        answers = operation.setdefault("responses", {})
        if "422" in answers:
            answers["422"] = problem[422]
        if "requestBody" in operation:
            answers.setdefault("400", problem[400])
    schemas = doc.get("components", {}).get("schemas", {})
    if "HTTPValidationError" not in json.dumps(doc.get("paths", {})):
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
    return doc


def _operations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    return [op for item in doc.get("paths", {}).values() for m, op in item.items()
            if m in methods]


def install(app: FastAPI) -> None:
    """The problem handlers, and the app's OpenAPI document completed (complete_openapi)."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_openapi(plain())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(Problem)
    async def _problem(request: Request, err: Problem) -> JSONResponse:
        return response(request, err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        errors = _validation_errors(err)
        detail = "; ".join(f"{e['field']}: {e['problem']}" for e in errors[:5])
        if _not_json(request, err):
            detail = (f"this takes a JSON body, sent as Content-Type: application/json (the "
                      f"request's is {request.headers.get('content-type') or 'missing'}; with "
                      "curl: --json '{...}', or -H 'Content-Type: application/json'); "
                      + detail)
        return response(request, Problem(422, "invalid-request", f"the request does not fit "
                                         f"its schema (see /openapi.json): {detail}",
                                         errors=errors))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return response(request, _of_http(request, err))

    @app.exception_handler(TryfleetError)
    async def _ours(request: Request, err: TryfleetError) -> JSONResponse:
        p = of_error(err)
        if p.status >= 500:
            log.warning("%s %s failed: %s", request.method, request.url.path, err)
        return response(request, p)

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return response(request, Problem(500, "internal", "tryfleet failed to handle this "
                                         "request; the request id says where in its logs"))


__all__ = ["MEDIA_TYPE", "Problem", "ProblemBody", "body", "complete_openapi", "documented",
           "forbidden", "install", "not_found", "of_error", "response", "unauthorized"]
