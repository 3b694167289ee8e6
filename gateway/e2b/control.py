"""E2B's control plane (its REST API, as the official SDKs call it) over tryfleet's sandboxes:
create, connect, get, list, set the timeout, kill. A template is a tryfleet image.

The same sandboxes as /v1/sandboxes, opened and closed the same way (routes/sandboxes.py:
policy, quotas, the ledger with the key and request ids), for the same keys (`X-API-KEY`),
each tenant seeing only its own: another tenant's sandbox, a closed one and an id nobody used
all answer 404, which the SDKs raise as their not-found error. What tryfleet does not do
(pause and resume, snapshots, forks, network rules, volumes, metrics) answers 501 naming it.
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from tryfleet.scheduler.core import DEFAULT_DISK_MIB
from tryfleet.scheduler.sandboxes import OPEN, SandboxRecord

from ..auditing import call_of, sandbox_closing
from ..auth import needs
from ..keys import Principal, Scope
from ..routes.sandboxes import book, extend_for, open_for, seen_by, utf8
from . import protojson
from .common import CLIENT_ID, ENVD_VERSION, ApiError, E2BRoute, access_token
from .sandbox_env import ensure_home, prepare

router = APIRouter(route_class=E2BRoute, include_in_schema=False)
Caller = Annotated[Principal, Depends(needs(Scope.SANDBOX))]
Reader = Annotated[Principal, Depends(needs(Scope.SANDBOX, Scope.READ))]
SandboxId = Annotated[str, Path(min_length=1, max_length=64)]
DEFAULT_TIMEOUT_S = 300  # the SDKs' documented default (they send none when not given)
CPUS, MEM_MIB = 1, 512  # a template fixes no size: tryfleet's defaults
WAIT_S = 30.0  # how long a create waits for room when the fleet is full
MAX_TIMEOUT_S = 366 * 86400
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetaValue = Annotated[str, StringConstraints(max_length=1024)]
EnvKey = Annotated[str, StringConstraints(min_length=1, max_length=256,
                                          pattern=r"^[^=\x00]+$")]
EnvValue = Annotated[str, StringConstraints(max_length=128 * 1024, pattern=r"^[^\x00]*$")]
Template = Annotated[str, StringConstraints(min_length=1, max_length=128)]


class NewSandbox(BaseModel):
    """E2B's NewSandbox. Unknown fields are ignored (E2B adds some with each release); the
    ones for what tryfleet does not do are refused when they ask for it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    template_id: Template = Field(alias="templateID")
    timeout: int | None = Field(None, ge=1, le=MAX_TIMEOUT_S)
    metadata: dict[MetaKey, MetaValue] | None = Field(None, max_length=64)
    env_vars: dict[EnvKey, EnvValue] | None = Field(None, alias="envVars", max_length=1024)
    auto_pause: bool | None = Field(None, alias="autoPause")
    auto_resume: dict[str, Any] | None = Field(None, alias="autoResume")
    allow_internet_access: bool | None = None
    network: dict[str, Any] | None = None
    mcp: dict[str, Any] | None = None
    volume_mounts: list[Any] | None = Field(None, alias="volumeMounts")
    iam: dict[str, Any] | None = None

    def refuse_unsupported(self) -> None:
        network = self.network or {}
        asked = {
            "pausing on timeout (lifecycle on_timeout='pause')": self.auto_pause,
            "auto-resume": (self.auto_resume or {}).get("enabled"),
            "internet access (a tryfleet sandbox has no network unless its tenant's policy "
            "grants the egress proxy)": self.allow_internet_access,
            "network rules": any(network.get(k) for k in (
                "allowOut", "rules", "egressProxy", "allowPublicTraffic", "dnsServers")),
            "MCP servers in the sandbox": self.mcp,
            "volume mounts": self.volume_mounts,
            "workload identity (iam)": self.iam,
        }
        for what, value in asked.items():
            if value:
                raise ApiError(400, f"{what} is not supported by tryfleet's E2B API")


class ConnectSandbox(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout: int | None = Field(None, ge=1, le=MAX_TIMEOUT_S)


class TimeoutBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    timeout: int = Field(ge=1, le=MAX_TIMEOUT_S)


class RefreshBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    duration: int | None = Field(None, ge=0, le=3600)


# ---- answers ---------------------------------------------------------------------------------
def created(rec: SandboxRecord, token: str) -> dict[str, Any]:
    """E2B's Sandbox (what create and connect answer)."""
    return {"templateID": rec.image, "sandboxID": rec.id, "alias": rec.image,
            "clientID": CLIENT_ID, "envdVersion": ENVD_VERSION, "envdAccessToken": token,
            "domain": None}


def detail(rec: SandboxRecord) -> dict[str, Any]:
    """E2B's ListedSandbox and SandboxDetail."""
    return {"templateID": rec.image, "sandboxID": rec.id, "alias": rec.image,
            "clientID": CLIENT_ID, "startedAt": protojson.timestamp(rec.created_at),
            "endAt": protojson.timestamp(rec.expires_at), "cpuCount": rec.cpus,
            "memoryMB": rec.mem_mib, "diskSizeMB": rec.disk_mib or DEFAULT_DISK_MIB,
            "state": "running", "envdVersion": ENVD_VERSION, "metadata": dict(rec.metadata),
            "domain": None}


def running(request: Request, sid: str, who: Principal) -> SandboxRecord:
    """The caller's open sandbox; 404 for a closed one, another tenant's or an unknown id."""
    rec = book(request).get(sid, seen_by(who))
    if rec.state != OPEN:
        raise ApiError(404, f"sandbox {sid} is not running: {rec.close_reason}")
    return rec


# ---- routes ----------------------------------------------------------------------------------
@router.post("/v2/sandboxes", status_code=201)
async def create(body: NewSandbox, who: Caller, request: Request) -> JSONResponse:
    body.refuse_unsupported()
    metadata, envs = body.metadata or {}, body.env_vars or {}
    utf8("metadata", *metadata, *metadata.values())
    utf8("envVars", *envs, *envs.values())
    rec = await open_for(request, who, who.tenant, body.template_id, CPUS, MEM_MIB, None,
                         float(body.timeout or DEFAULT_TIMEOUT_S), metadata, WAIT_S)
    await prepare(request, rec, envs)
    return JSONResponse(created(rec, access_token(request.app.state.keys, rec.id, who.key_id)),
                        status_code=201)


@router.post("/v2/sandboxes/{sid}/connect")
async def connect_sandbox(sid: SandboxId, body: ConnectSandbox, who: Caller,
                          request: Request) -> JSONResponse:
    """A running sandbox for this caller; its timeout moved later only, as E2B does."""
    rec = running(request, sid, who)
    if body.timeout is not None and time.time() + body.timeout > rec.expires_at:
        rec = await extend_for(request, who, sid, float(body.timeout))
    if rec.id not in request.app.state.e2b.envs:  # not made or seen by this gateway
        await ensure_home(request, rec)
    return JSONResponse(created(rec, access_token(request.app.state.keys, rec.id, who.key_id)))


@router.get("/v2/sandboxes")
async def list_sandboxes(
        who: Reader, request: Request, response: Response,
        metadata: Annotated[str | None, Query(max_length=16384)] = None,
        state: Annotated[list[str] | None, Query(max_length=8)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        next_token: Annotated[str | None, Query(alias="nextToken", max_length=32)] = None,
        template: Annotated[str | None, Query(max_length=128)] = None,
        started_after: Annotated[str | None, Query(alias="startedAfter", max_length=64)] = None,
        order: Annotated[str | None, Query(max_length=8)] = None,
) -> list[dict[str, Any]]:
    states = {s.strip() for v in state or [] for s in v.split(",") if s.strip()}
    if states - {"running", "paused"}:
        raise ApiError(400, f"state must be running or paused, got {sorted(states)}")
    if order not in (None, "asc"):
        raise ApiError(400, "order: tryfleet lists sandboxes oldest first (asc) only")
    if states == {"paused"}:  # tryfleet pauses none
        return []
    items, nxt = book(request).page(seen_by(who), "open", limit, next_token,
                                    metadata=_metadata_filter(metadata), image=template,
                                    created_after=_instant(started_after))
    if nxt is not None:
        response.headers["x-next-token"] = nxt
    return [detail(r) for r in items]


def _metadata_filter(raw: str | None) -> dict[str, str]:
    """The SDKs send the pairs as one query string of percent-encoded keys and values
    (encoded twice over, with the parameter itself)."""
    if not raw:
        return {}
    pairs = urllib.parse.parse_qsl(raw, keep_blank_values=True, max_num_fields=64)
    return {urllib.parse.unquote(k): urllib.parse.unquote(v) for k, v in pairs}


def _instant(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        return dt.datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ApiError(400, f"startedAfter must be an RFC 3339 time, got {raw!r}") from None


@router.get("/sandboxes/metrics")
async def metrics_of_many() -> None:
    raise ApiError(501, "sandbox metrics are not supported by tryfleet's E2B API: use "
                   "GET /v1/fleet (admins) for host capacity and pressure")


@router.get("/sandboxes/{sid}")
async def get_sandbox(sid: SandboxId, who: Reader, request: Request) -> dict[str, Any]:
    return detail(running(request, sid, who))


@router.post("/sandboxes/{sid}/timeout", status_code=204)
async def set_timeout(sid: SandboxId, body: TimeoutBody, who: Caller,
                      request: Request) -> Response:
    running(request, sid, who)
    await extend_for(request, who, sid, float(body.timeout))
    return Response(status_code=204)


@router.post("/sandboxes/{sid}/refreshes", status_code=204)
async def refresh(sid: SandboxId, body: RefreshBody, who: Caller, request: Request) -> Response:
    """Keep it alive `duration` seconds more from now (never earlier than it would end)."""
    rec = running(request, sid, who)
    duration = body.duration or 60
    if time.time() + duration > rec.expires_at:
        await extend_for(request, who, sid, float(duration))
    return Response(status_code=204)


@router.delete("/sandboxes/{sid}", status_code=204)
async def kill(sid: SandboxId, who: Caller, request: Request) -> Response:
    rec = running(request, sid, who)
    await sandbox_closing(call_of(request), rec, "killed by request")
    await request.app.state.fleet.sched("close_sandbox", sid, seen_by(who))
    request.app.state.e2b.forget(sid)
    return Response(status_code=204)


_UNSUPPORTED = [
    ("POST", "/sandboxes/{sid}/pause", "pausing a sandbox"),
    ("POST", "/sandboxes/{sid}/resume", "resuming a paused sandbox"),
    ("POST", "/sandboxes/{sid}/snapshots", "snapshots"),
    ("GET", "/snapshots", "snapshots"),
    ("POST", "/sandboxes/{sid}/fork", "forking a sandbox"),
    ("PUT", "/sandboxes/{sid}/network", "network rules"),
    ("GET", "/sandboxes/{sid}/metrics", "sandbox metrics"),
    ("GET", "/sandboxes/{sid}/logs", "sandbox logs"),
    ("GET", "/v2/sandboxes/{sid}/logs", "sandbox logs"),
    ("POST", "/v3/templates", "building templates (tryfleet builds images from its recipes: "
                              "`tryfleet image build NAME`)"),
    ("GET", "/templates", "listing templates (`tryfleet image list`)"),
]


def _refuse(what: str) -> Any:
    async def refuse() -> None:
        raise ApiError(501, f"{what} is not supported by tryfleet's E2B API")
    return refuse


for _method, _path, _what in _UNSUPPORTED:
    router.add_api_route(_path, _refuse(_what), methods=[_method], status_code=501)

__all__ = ["DEFAULT_TIMEOUT_S", "NewSandbox", "router"]
