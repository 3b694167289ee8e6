"""The tools' backend over the fleet's HTTP API, through the SDK's client (a `tryfleet.Fleet`
with its key): what `tryfleet mcp` serves over stdio. Each operation is one /v1 request (a
batch's results: one per iteration read), sent with a request id of ours so the result can name
it; the SDK's client is blocking, so each runs in a worker thread."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any, TypeVar, cast
from urllib.parse import quote

import anyio
import anyio.to_thread

from tryfleet.errors import TryfleetError
from tryfleet.fleet import Fleet
from tryfleet.http import (
    PROBLEM_PREFIX,
    SSE_READ_TIMEOUT_S,
    Event,
    new_request_id,
    problem_error,
)

from .backend import Refused

T = TypeVar("T")
EXEC_SLACK_S = 30.0  # beyond a command's own timeout, for its answer to come back
_END = object()


def _q(value: str) -> str:
    return quote(value, safe="")


def problem_of(err: TryfleetError) -> dict[str, Any]:
    """The problem a failed call answered with; for a failure on this side of the network (the
    fleet out of reach), one made up in the same shape."""
    if err.problem is not None:
        return {**err.problem, "request_id": err.problem.get("request_id") or err.request_id}
    slug = "unavailable" if isinstance(err, ConnectionError) else "bad-request" \
        if isinstance(err, ValueError) else "internal"
    return {"type": PROBLEM_PREFIX + slug, "title": slug.replace("-", " ").capitalize(),
            "status": err.status, "detail": str(err), "request_id": err.request_id}


class SdkBackend:
    """The Backend over one Fleet (one key), for one tool call (it keeps the id of the call's
    last request: make one per call; they share the Fleet)."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._rid: str | None = None

    def request_id(self) -> str | None:
        return self._rid

    def _headers(self) -> dict[str, str]:
        self._rid = new_request_id()
        return {"X-Request-Id": self._rid}

    async def _call(self, fn: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(fn)
        except TryfleetError as err:
            raise Refused(problem_of(err)) from None

    def _json(self, method: str, path: str, **kw: Any) -> Callable[[], Any]:
        headers = {**kw.pop("headers", {}), **self._headers()}
        return lambda: self.fleet.api.json(method, path, headers=headers, **kw)

    async def open_sandbox(self, body: Mapping[str, Any]) -> dict[str, Any]:
        wait = float(body.get("wait_s") or 0.0) + EXEC_SLACK_S
        got: dict[str, Any] = await self._call(self._json("POST", "/v1/sandboxes",
                                                          json=dict(body), timeout_s=wait))
        return got

    async def close_sandbox(self, sid: str) -> None:
        await self._call(self._json("DELETE", f"/v1/sandboxes/{_q(sid)}"))

    async def exec_stream(self, sid: str, body: Mapping[str, Any]
                          ) -> AsyncGenerator[tuple[str, Any], None]:
        headers = self._headers()
        rid = headers["X-Request-Id"]
        stream = self.fleet.api.stream("POST", f"/v1/sandboxes/{_q(sid)}/exec/stream",
                                       json=dict(body), headers=headers,
                                       read_timeout_s=SSE_READ_TIMEOUT_S)
        events = await self._call(stream.__enter__)
        try:
            while True:  # each event read in a worker thread, as the SDK's reads block
                got = await self._call(lambda: next(events, _END))
                if got is _END:
                    return
                ev = cast("Event | None", got)
                if ev is None or ev.event == "started":
                    continue
                data = ev.json()
                if ev.event in ("stdout", "stderr"):
                    yield ev.event, str(data.get("data") or "")
                elif ev.event == "exit":
                    yield "exit", data
                    return
                elif ev.event == "error":
                    raise Refused(problem_of(problem_error(data, request_id=rid)))
        finally:
            with anyio.CancelScope(shield=True):  # closing it stops the command
                await anyio.to_thread.run_sync(stream.__exit__, None, None, None)

    async def write_file(self, sid: str, path: str, data: bytes, mode: str) -> dict[str, Any]:
        got: dict[str, Any] = await self._call(self._json(
            "PUT", f"/v1/sandboxes/{_q(sid)}/files", params={"path": path, "mode": mode},
            content=data, headers={"Content-Type": "application/octet-stream"}))
        return got

    async def read_file(self, sid: str, path: str, max_bytes: int) -> bytes:
        headers = self._headers()
        resp = await self._call(lambda: self.fleet.api.request(
            "GET", f"/v1/sandboxes/{_q(sid)}/files", params={"path": path}, headers=headers))
        return resp.content[:max_bytes + 1]

    async def list_files(self, sid: str, path: str, depth: int) -> dict[str, Any]:
        got: dict[str, Any] = await self._call(self._json(
            "GET", f"/v1/sandboxes/{_q(sid)}/files/list", params={"path": path, "depth": depth}))
        return got

    async def submit_batch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        got: dict[str, Any] = await self._call(self._json("POST", "/v1/batches", json=dict(body),
                                                          idempotent=True))
        return got

    async def suite(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = await self._call(self._json("GET", f"/v1/suites/{_q(name)}"))
        return got

    async def iterations(self, suite: str, states: list[str] | None, limit: int,
                         cursor: str | None) -> dict[str, Any]:
        params: list[tuple[str, Any]] = [("suite", suite), ("limit", limit)]
        params += [("state", s) for s in states or ()]
        if cursor:
            params.append(("cursor", cursor))
        got: dict[str, Any] = await self._call(self._json("GET", "/v1/iterations",
                                                          params=params))
        return got

    async def iteration(self, iid: str) -> dict[str, Any]:
        got: dict[str, Any] = await self._call(self._json(
            "GET", f"/v1/iterations/{_q(iid)}", params={"encoding": "text"}))
        return got


__all__ = ["SdkBackend", "problem_of"]
