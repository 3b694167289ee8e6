"""The MCP tools' backend inside the gateway: each operation is the /v1 route function itself,
called with the body it would have parsed, for the caller's key (its Principal), on a request
that carries the id of the HTTP request the tool call came in (the /mcp POST: its X-Request-Id,
recorded with whatever the call makes). So an MCP tool meets exactly the checks, policy,
quotas, ledger records and problems of the API call it stands for; nothing is done twice.

Bodies go through the route's own model from JSON, as an HTTP body would; a refusal of any
kind becomes `Refused` with the problem the API would have answered."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any

from fastapi import FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.types import Message

from tryfleet.errors import TryfleetError
from tryfleet.mcptools.backend import Refused

from . import problems
from .app import new_request_id
from .auth import needs
from .keys import Principal, Scope
from .problems import Problem
from .routes import iterations as iteration_routes
from .routes import sandbox_files, sandboxes
from .routes import suites as suite_routes
from .routes.iteration_models import BatchIn

log = logging.getLogger("tryfleet.gateway")
MCP_PATH = "/mcp"


def _json(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


class GatewayBackend:
    """The Backend for one tool call of `who`, inside the app. `base`: the HTTP request the
    call came in (its scope: headers, path and the request id); None makes up an id."""

    def __init__(self, app: FastAPI, who: Principal, base: Request | None = None) -> None:
        self.who = who
        if base is not None:
            self._scope: dict[str, Any] = {**base.scope, "app": app}
        else:
            self._scope = {"type": "http", "method": "POST", "scheme": "http", "path": MCP_PATH,
                           "root_path": "", "query_string": b"", "headers": [], "app": app,
                           "server": None, "state": {}}
        state = self._scope.setdefault("state", {})
        state.setdefault("request_id", new_request_id())

    def request_id(self) -> str | None:
        rid: str = self._scope["state"]["request_id"]
        return rid

    def _request(self, body: bytes = b"") -> Request:
        """A request the route functions read as theirs: the app, the request id, and a body
        (an upload's) as its stream."""
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return Request(self._scope, receive)

    @contextlib.contextmanager
    def _refusals(self) -> Iterator[None]:
        """Whatever the routes raise, as the problem the API answers for it."""
        try:
            yield
        except Problem as p:
            raise Refused(problems.body(self._request(), p)) from None
        except TryfleetError as err:
            answer = problems.of_error(err)
            if answer.status >= 500:
                log.warning("%s (MCP) failed: %s", MCP_PATH, err)
            raise Refused(problems.body(self._request(), answer)) from None
        except ValidationError as err:
            detail = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ())) or 'body'}: "
                               f"{e.get('msg', 'invalid')}" for e in err.errors()[:5])
            raise Refused(problems.body(self._request(), Problem(
                422, "invalid-request", f"the request does not fit its schema: {detail}"))
            ) from None

    async def _caller(self, *scopes: Scope) -> Principal:
        """The caller, who must hold one of scopes, as the route's dependency requires."""
        who: Principal = await needs(*scopes)(self.who)
        return who

    # ---- sandboxes ---------------------------------------------------------------------------
    async def open_sandbox(self, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._refusals():
            who = await self._caller(Scope.SANDBOX)
            got = await sandboxes.create(sandboxes.SandboxCreate.model_validate_json(
                json.dumps(dict(body))), who, self._request())
            return _json(got)

    async def close_sandbox(self, sid: str) -> None:
        with self._refusals():
            await sandboxes.delete(sid, await self._caller(Scope.SANDBOX), self._request())

    async def exec_stream(self, sid: str, body: Mapping[str, Any]
                          ) -> AsyncGenerator[tuple[str, Any], None]:
        with self._refusals():
            who = await self._caller(Scope.SANDBOX)
            request = self._request()
            job = await sandboxes.exec_job(sandboxes.ExecBody.model_validate_json(
                json.dumps(dict(body))), None)
            box = await sandboxes.open_box(sid, who, request)
            # closed early (the tool call was cancelled), the route's stream stops the command
            req = await job.for_box(request, who, box)  # its secrets, where policy allows
            stream: Any = sandboxes.exec_stream(job, box, request, req)  # an async generator
            async with contextlib.aclosing(stream) as events:
                async for ev in events:
                    if ev.event in ("stdout", "stderr"):
                        yield ev.event, ev.data["data"]
                    elif ev.event == "exit":
                        yield "exit", _json(ev.data)
                        return
                    elif ev.event == "error":
                        raise Refused(ev.data)

    async def write_file(self, sid: str, path: str, data: bytes, mode: str) -> dict[str, Any]:
        with self._refusals():
            request = self._request(data)
            box = await sandboxes.open_box(sid, await self._caller(Scope.SANDBOX), request)
            return _json(await sandbox_files.upload(box, request, path, mode))

    async def read_file(self, sid: str, path: str, max_bytes: int) -> bytes:
        with self._refusals():
            request = self._request()
            who = await self._caller(Scope.SANDBOX, Scope.READ)
            box = await sandboxes.readable_box(sid, who, request)
            resp = await sandbox_files.download(box, request, path)
            got = bytearray()
            chunks: Any = resp.body_iterator
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    got += chunk
                    if len(got) > max_bytes:
                        break
            return bytes(got[:max_bytes + 1])

    async def list_files(self, sid: str, path: str, depth: int) -> dict[str, Any]:
        with self._refusals():
            request = self._request()
            who = await self._caller(Scope.SANDBOX, Scope.READ)
            box = await sandboxes.readable_box(sid, who, request)
            return _json(await sandbox_files.list_files(box, request, path, depth))

    # ---- batches -----------------------------------------------------------------------------
    async def submit_batch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        with self._refusals():
            who = await self._caller(Scope.BATCH)
            return _json(await iteration_routes.submit_batch(
                BatchIn.model_validate_json(json.dumps(dict(body))), who, self._request()))

    async def suite(self, name: str) -> dict[str, Any]:
        with self._refusals():
            who = await self._caller(Scope.READ, Scope.BATCH)
            return _json(await suite_routes.get_suite(name, who, self._request(), None))

    async def iterations(self, suite: str, states: list[str] | None, limit: int,
                         cursor: str | None) -> dict[str, Any]:
        with self._refusals():
            who = await self._caller(Scope.READ, Scope.BATCH)
            return _json(await iteration_routes.list_iterations(
                who, self._request(), suite=suite, state=states,  # type: ignore[arg-type]
                limit=limit, cursor=cursor, tenant=None))

    async def iteration(self, iid: str) -> dict[str, Any]:
        with self._refusals():
            who = await self._caller(Scope.READ, Scope.BATCH)
            return _json(await iteration_routes.get_iteration(iid, who, self._request(),
                                                              encoding="text", tenant=None))


__all__ = ["MCP_PATH", "GatewayBackend"]
