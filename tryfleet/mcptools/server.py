"""tryfleet's MCP server: tools to open a sandbox, run commands in it, move files, destroy it,
and to submit batches of iterations and read their status and results. Each tool acts through
a Backend (backend.py) for the caller, so it meets the same keys, tenants, policy, quotas and
request ids as the /v1 API; the gateway serves it at /mcp, `tryfleet mcp` over stdio.

A sandbox an agent opens and forgets is destroyed when its timeout_s passes, as every sandbox
is (the scheduler's lease expiry); the tools say so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Annotated, Any, Literal

from mcp.server.auth.provider import TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.caching import CacheHint
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from tryfleet import __version__

from .backend import Backend, Refused
from .models import (
    ENDED,
    MAX_BATCH,
    MAX_EXEC_S,
    MAX_READ_BYTES,
    MAX_WRITE_BYTES,
    BatchResults,
    BatchStatus,
    BatchSubmitted,
    Command,
    CommandResult,
    Cursor,
    Destroyed,
    DirListing,
    FileContent,
    FileEntry,
    FileWritten,
    GuestPath,
    Image,
    IterationSpec,
    MaybeEnv,
    MaybeSecrets,
    Metadata,
    SandboxId,
    SandboxInfo,
    State,
    SuiteName,
    argv_of,
    as_user,
    b64decode,
)
from .results import Progress, command_result, file_content, iteration_result
from .scopes import ScopedServer
from .text import Capture, pieces, refusal_text

PROGRESS_CHARS = 8000  # the most output one progress notification carries
OPEN_WAIT_S = 30.0  # how long create_sandbox waits for room in a full fleet
INSTRUCTIONS = (
    "tryfleet runs commands in throwaway Linux micro-VMs. For interactive work: create_sandbox, "
    "then run_command, write_file, read_file and list_files with its id, and destroy_sandbox "
    "when done (a sandbox is destroyed anyway, with everything in it, when its timeout_s "
    "passes). For many independent runs (one per candidate fix, say): submit_batch, then "
    "batch_status until done, then batch_results.")


class Tools:
    """The tools, each acting through the caller's Backend (`backend_for(ctx)`)."""

    def __init__(self, backend_for: Callable[[Context[Any, Any]], Backend]) -> None:
        self.backend_for = backend_for

    async def _do(self, ctx: Context[Any, Any], op: Callable[[Backend], Any]) -> Any:
        try:
            return await op(self.backend_for(ctx))
        except Refused as err:
            raise ToolError(refusal_text(err.problem)) from None

    async def create_sandbox(
            self, ctx: Context[Any, Any], image: Image = "base",
            cpus: Annotated[int, Field(ge=1, le=1024, description="vCPUs")] = 1,
            mem_mib: Annotated[int, Field(ge=128, le=1 << 24,
                                          description="memory, MiB")] = 512,
            timeout_s: Annotated[float, Field(gt=0, le=366 * 86400, description=(
                "seconds until it is destroyed, with everything in it, unless you destroy it "
                "before"))] = 600.0,
            metadata: Metadata = None,
    ) -> SandboxInfo:
        """Open a sandbox: a fresh Linux micro-VM held for you until timeout_s passes (then it
        is destroyed with everything in it). Use its id with run_command, write_file,
        read_file and list_files; destroy_sandbox when done, which frees your tenant's quota.
        Waits up to 30 s for room when the fleet is full. Your tenant's policy bounds image,
        cpus, mem_mib and timeout_s, and its quota how many sandboxes you hold at once: a
        refusal names the rule. Returns the sandbox: id, expires_at, request_id."""
        body = {"image": image, "cpus": cpus, "mem_mib": mem_mib, "timeout_s": float(timeout_s),
                "metadata": dict(metadata or {}), "wait_s": OPEN_WAIT_S}

        async def op(b: Backend) -> SandboxInfo:
            got = await b.open_sandbox(body)
            return SandboxInfo(**{k: got[k] for k in SandboxInfo.model_fields})

        result: SandboxInfo = await self._do(ctx, op)
        return result

    async def run_command(
            self, ctx: Context[Any, Any], sandbox_id: SandboxId, command: Command,
            cwd: Annotated[str | None, Field(max_length=4096, pattern=r"^/", description=(
                "absolute working directory; default: the user's home (/root)"))] = None,
            env: MaybeEnv = None,
            timeout_s: Annotated[float, Field(gt=0, le=MAX_EXEC_S, description=(
                "seconds the command may run; then it is killed (timed_out)"))] = 300.0,
            user: Annotated[str | None, Field(max_length=32, pattern=r"^[a-z_][a-z0-9_.-]*$",
                                              description="run as this user of the sandbox "
                                              "(default root)")] = None,
            max_output_chars: Annotated[int, Field(ge=0, le=1_000_000, description=(
                "the most characters of stdout, and of stderr, in the result; longer output "
                "keeps its start and its end"))] = 20_000,
            secrets: MaybeSecrets = None,
    ) -> CommandResult:
        """Run a command in a sandbox and wait for it to end: its exit_code, stdout and stderr.
        Output is also sent as progress notifications while it runs (`stdout: ...`,
        `stderr: ...`; their progress is the seconds it has run, of timeout_s), so long output
        is seen as it comes; the result keeps at most max_output_chars of each stream (its
        start and end, with a note of what was left out). A non-zero exit_code is a result,
        not an error. Each call is a fresh process: `cd` or
        exported variables do not carry over (use cwd and env)."""
        if secrets and user not in (None, "root"):  # its env is reset for the user's
            raise ToolError("secrets reach commands run as root only: leave out user, or "
                            "run `su` yourself in the command")
        argv, extra = as_user(argv_of(command), dict(env or {}), user, cwd)
        body: dict[str, Any] = {"argv": argv, "env": extra, "encoding": "text",
                                "timeout_s": float(timeout_s)}
        if secrets:
            body["secrets"] = list(secrets)
        if cwd is not None:
            body["cwd"] = cwd
        caps = {"stdout": Capture(max_output_chars), "stderr": Capture(max_output_chars)}

        async def op(b: Backend) -> CommandResult:
            end, progress = None, Progress(ctx, timeout_s)
            beat = progress.heartbeat()
            try:
                async with contextlib.aclosing(b.exec_stream(sandbox_id, body)) as events:
                    async for kind, payload in events:
                        if kind == "exit":
                            end = payload
                            break
                        caps[kind].add(payload)
                        for piece in pieces(payload, PROGRESS_CHARS):
                            await progress.say(f"{kind}: {piece}")
            finally:
                beat.cancel()
            if end is None:
                raise ToolError(f"the command's output ended without its exit (request "
                                f"{b.request_id()}); its outcome is unknown")
            return command_result(end, caps, max_output_chars, b.request_id())

        result: CommandResult = await self._do(ctx, op)
        return result

    async def write_file(
            self, ctx: Context[Any, Any], sandbox_id: SandboxId, path: GuestPath,
            content: Annotated[str, Field(max_length=MAX_WRITE_BYTES * 4 // 3 + 4, description=(
                "the file's content: text (written as UTF-8), or base64 with encoding base64; "
                f"{MAX_WRITE_BYTES // (1024 * 1024)} MiB at most"))],
            encoding: Annotated[Literal["text", "base64"], Field(
                description="how content is given")] = "text",
            mode: Annotated[str, Field(pattern=r"^0?[0-7]{3,4}$", description=(
                "permission bits, octal (0755 for a script)"))] = "0644",
    ) -> FileWritten:
        """Write a file in a sandbox (replacing any file there; its folder must exist: make one
        with run_command `mkdir -p`). Returns its size and sha256."""
        try:
            data = content.encode() if encoding == "text" else b64decode(content, "content")
        except ValueError as err:
            raise ToolError(f"{err}: give the file's bytes as base64, or use encoding text "
                            "[bad-request]") from None
        if len(data) > MAX_WRITE_BYTES:
            raise ToolError(f"content is {len(data)} bytes, over the {MAX_WRITE_BYTES}-byte "
                            "limit of one write [too-large]: write it in parts (a command can "
                            "join them)")

        async def op(b: Backend) -> FileWritten:
            got = await b.write_file(sandbox_id, path, data, mode)
            return FileWritten(path=got["path"], size_bytes=got["size"], sha256=got["sha256"],
                               request_id=b.request_id())

        result: FileWritten = await self._do(ctx, op)
        return result

    async def read_file(
            self, ctx: Context[Any, Any], sandbox_id: SandboxId, path: GuestPath,
            encoding: Annotated[Literal["text", "base64"], Field(description=(
                "text: UTF-8 (invalid bytes as U+FFFD); base64: the exact bytes"))] = "text",
            max_bytes: Annotated[int, Field(ge=1, le=MAX_READ_BYTES, description=(
                "the most bytes returned (the file's start)"))] = 65536,
    ) -> FileContent:
        """Read a file from a sandbox: its content as text, or as base64 for binary files. A
        file longer than max_bytes comes back cut (truncated true)."""
        async def op(b: Backend) -> FileContent:
            data = await b.read_file(sandbox_id, path, max_bytes)
            return file_content(path, data, max_bytes, encoding, b.request_id())

        result: FileContent = await self._do(ctx, op)
        return result

    async def list_files(
            self, ctx: Context[Any, Any], sandbox_id: SandboxId, path: GuestPath = "/root",
            depth: Annotated[int, Field(ge=1, le=16, description="levels listed: 1 is the "
                                        "directory's own entries")] = 1,
    ) -> DirListing:
        """List a directory of a sandbox: each entry's name, path, type (file, dir, symlink,
        other), size_bytes, mode and mtime."""
        async def op(b: Backend) -> DirListing:
            got = await b.list_files(sandbox_id, path, depth)
            entries = [FileEntry(name=e["name"], path=e["path"], type=e["type"],
                                 size_bytes=e["size"], mode=f"{e['mode']:04o}",
                                 mtime=e["mtime"], target=e.get("target"))
                       for e in got["entries"]]
            return DirListing(path=got["path"], entries=entries, truncated=got["truncated"],
                              request_id=b.request_id())

        result: DirListing = await self._do(ctx, op)
        return result

    async def destroy_sandbox(self, ctx: Context[Any, Any], sandbox_id: SandboxId
                              ) -> Destroyed:
        """Destroy a sandbox and everything in it, at once; destroying one already destroyed
        does nothing."""
        async def op(b: Backend) -> Destroyed:
            await b.close_sandbox(sandbox_id)
            return Destroyed(sandbox_id=sandbox_id, request_id=b.request_id())

        result: Destroyed = await self._do(ctx, op)
        return result

    async def submit_batch(
            self, ctx: Context[Any, Any],
            iterations: Annotated[list[IterationSpec], Field(min_length=1, max_length=MAX_BATCH,
                                                             description="the iterations")],
            suite: SuiteName = "default",
            max_wall_s: Annotated[float | None, Field(gt=0, le=30 * 86400, description=(
                "the suite's wall-time budget: what is left is cancelled after this many "
                "seconds"))] = None,
    ) -> BatchSubmitted:
        """Submit a batch of iterations to a suite: each runs its command in a fresh VM of its
        own (files written first), as capacity allows, and its VM is thrown away after.
        Recorded durably when this returns; follow with batch_status and batch_results. Give
        each iteration an id to make sending the batch again safe: an id already submitted
        with the same spec is not run twice."""
        body: dict[str, Any] = {"suite": suite, "iterations": [it.to_api() for it in iterations]}
        if max_wall_s is not None:
            body["max_wall_s"] = float(max_wall_s)

        async def op(b: Backend) -> BatchSubmitted:
            got = await b.submit_batch(body)
            return BatchSubmitted(suite=got["suite"], ids=got["ids"],
                                  request_id=got.get("request_id") or b.request_id())

        result: BatchSubmitted = await self._do(ctx, op)
        return result

    async def batch_status(self, ctx: Context[Any, Any], suite: SuiteName) -> BatchStatus:
        """How many of a suite's iterations are in each state (counts), how many have ended,
        and whether all have (done). Poll it while a batch runs (a few seconds apart), then
        read the outcomes with batch_results."""
        async def op(b: Backend) -> BatchStatus:
            got = await b.suite(suite)
            counts = {k: int(v) for k, v in got["counts"].items()}
            ended = sum(counts.get(s, 0) for s in ENDED)
            total = int(got.get("total", sum(counts.values())))
            return BatchStatus(suite=got["suite"], counts=counts, total=total, ended=ended,
                               done=ended == total, request_id=b.request_id())

        result: BatchStatus = await self._do(ctx, op)
        return result

    async def batch_results(
            self, ctx: Context[Any, Any], suite: SuiteName,
            states: Annotated[list[State] | None, Field(max_length=8, description=(
                "only iterations in these states, e.g. [\"FAILED\"]; default all"))] = None,
            limit: Annotated[int, Field(ge=1, le=100, description="iterations per page")] = 20,
            cursor: Cursor = None,
            output_chars: Annotated[int, Field(ge=0, le=100_000, description=(
                "the last this many characters of each ended iteration's stdout and stderr "
                "(0: none)"))] = 2000,
    ) -> BatchResults:
        """A page of a suite's iterations in submission order: state, exit_code, duration_s,
        attempts, error, and the end of the output of those that ended. Pass next_cursor back
        as cursor for the next page."""
        async def op(b: Backend) -> BatchResults:
            page = await b.iterations(suite, list(states) if states else None, limit, cursor)
            rid = b.request_id()
            items = [await iteration_result(b, it, output_chars) for it in page["items"]]
            return BatchResults(suite=suite, items=items, next_cursor=page.get("next_cursor"),
                                request_id=rid)

        result: BatchResults = await self._do(ctx, op)
        return result


_READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
_ANNOTATIONS = {
    "read_file": _READ_ONLY, "list_files": _READ_ONLY, "batch_status": _READ_ONLY,
    "batch_results": _READ_ONLY,
    "destroy_sandbox": ToolAnnotations(destructive_hint=True, idempotent_hint=True,
                                       open_world_hint=False),
    "write_file": ToolAnnotations(destructive_hint=True, idempotent_hint=True,
                                  open_world_hint=False),
}


def build_server(backend_for: Callable[[Context[Any, Any]], Backend],
                 scopes_now: Callable[[], frozenset[str]], *,
                 token_verifier: TokenVerifier | None = None,
                 auth: AuthSettings | None = None) -> ScopedServer:
    """The MCP server: each tool acts through `backend_for(ctx)`, and a caller sees and calls
    only the tools its scopes (`scopes_now()`) allow."""
    server = ScopedServer(
        scopes_now, name="tryfleet", version=__version__, instructions=INSTRUCTIONS,
        token_verifier=token_verifier, auth=auth, log_level="WARNING",
        # the tool list depends on the caller's key: no client may reuse another's
        cache_hints={"tools/list": CacheHint(ttl_ms=0, scope="private")})
    tools = Tools(backend_for)
    for name in ("create_sandbox", "run_command", "write_file", "read_file", "list_files",
                 "destroy_sandbox", "submit_batch", "batch_status", "batch_results"):
        server.add_tool(getattr(tools, name), name=name, annotations=_ANNOTATIONS.get(name),
                        structured_output=True)
    return server


__all__ = ["INSTRUCTIONS", "Tools", "build_server"]
