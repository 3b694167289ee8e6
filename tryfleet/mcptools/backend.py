"""The one interface the MCP tools act through: the /v1 operations they need, with /v1's own
bodies in and /v1's own JSON out. Two backends implement it: inside the gateway, the route
functions themselves (tryfleet.gateway.mcp_gateway), for the caller's key and tenant with the
request's id; for `tryfleet mcp` over stdio, the HTTP API through the SDK's client (sdk.py).

A refusal is `Refused` carrying the API's problem (RFC 9457: what was wrong, and the request
id), whichever backend it came from; the tools turn it into an MCP tool error."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol


class Refused(Exception):
    """The fleet refused or failed an operation; `problem` is its problem+json document."""

    def __init__(self, problem: Mapping[str, Any]) -> None:
        super().__init__(str(problem.get("detail") or problem.get("title") or "refused"))
        self.problem = dict(problem)


class Backend(Protocol):
    """One caller's view of the fleet (its key, its tenant). Each call may raise Refused."""

    def request_id(self) -> str | None:
        """The id of the request that did the last thing (what an operator looks up)."""
        ...

    async def open_sandbox(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/sandboxes: the Sandbox."""
        ...

    async def close_sandbox(self, sid: str) -> None:
        """DELETE /v1/sandboxes/{sid}."""
        ...

    def exec_stream(self, sid: str, body: Mapping[str, Any]
                    ) -> AsyncGenerator[tuple[str, Any], None]:
        """POST /v1/sandboxes/{sid}/exec/stream with encoding text: ("stdout" | "stderr",
        text) as the command prints, then ("exit", the exit event's JSON). Closing it before
        the exit stops the command."""
        ...

    async def write_file(self, sid: str, path: str, data: bytes, mode: str) -> dict[str, Any]:
        """PUT /v1/sandboxes/{sid}/files: {path, size, sha256}."""
        ...

    async def read_file(self, sid: str, path: str, max_bytes: int) -> bytes:
        """GET /v1/sandboxes/{sid}/files: the file's first max_bytes + 1 bytes at most (one
        more than asked tells that there is more)."""
        ...

    async def list_files(self, sid: str, path: str, depth: int) -> dict[str, Any]:
        """GET /v1/sandboxes/{sid}/files/list: {path, entries, truncated}."""
        ...

    async def submit_batch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST /v1/batches: {suite, ids, request_id}."""
        ...

    async def suite(self, name: str) -> dict[str, Any]:
        """GET /v1/suites/{name}: {suite, counts, total, ...}."""
        ...

    async def iterations(self, suite: str, states: list[str] | None, limit: int,
                         cursor: str | None) -> dict[str, Any]:
        """GET /v1/iterations?suite=: {items, next_cursor} (no output)."""
        ...

    async def iteration(self, iid: str) -> dict[str, Any]:
        """GET /v1/iterations/{iid} with encoding text: the iteration with its output."""
        ...


__all__ = ["Backend", "Refused"]
