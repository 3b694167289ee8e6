"""What the tools make of the API's answers: a command's result (its output within a budget,
notes of what was left out), a file's content, an iteration's outcome; and the progress a
running command reports."""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any, Literal

from mcp.server.mcpserver import Context

from .backend import Backend
from .models import ENDED, CommandResult, FileContent, IterationResult
from .text import Capture, tail

HEARTBEAT_S = 15.0  # a silent command's progress says it still runs this often


class Progress:
    """Progress notifications of one running command (sent only when the client asked for
    them): the seconds it has run so far, out of its timeout_s, each with the output that came
    (`stdout: ...`) or, after HEARTBEAT_S of silence, that it still runs; a client that
    resets its own timeout on progress keeps waiting for a long, quiet command."""

    def __init__(self, ctx: Context[Any, Any], timeout_s: float) -> None:
        self.ctx, self.timeout_s = ctx, timeout_s
        self.started = self.said_at = time.monotonic()
        self.last = 0.0

    async def say(self, message: str) -> None:
        now = time.monotonic()
        self.last = max(round(now - self.started, 3), self.last + 0.001)  # rising, always
        self.said_at = now
        await self.ctx.report_progress(self.last, self.timeout_s, message)

    async def _beat(self) -> None:
        while True:
            quiet = time.monotonic() - self.said_at
            if quiet >= HEARTBEAT_S:
                await self.say(f"still running after {time.monotonic() - self.started:.0f} s")
            else:
                await asyncio.sleep(HEARTBEAT_S - quiet)

    def heartbeat(self) -> asyncio.Task[None]:
        """Start the notifications of silence; cancel the task when the command ended."""
        return asyncio.get_running_loop().create_task(self._beat())


def cut_note(name: str, cap: Capture, max_chars: int) -> str:
    return (f"{name} had {cap.total} characters, more than max_output_chars={max_chars}: the "
            f"{cap.cut} in the middle are left out here (they came as progress notifications "
            "while it ran). To see them, run it again with the output redirected to a file and "
            "read_file it in parts, or filter it (grep, head, tail).")


def command_result(end: dict[str, Any], caps: dict[str, Capture], max_chars: int,
                   request_id: str | None) -> CommandResult:
    notes = [cut_note(name, cap, max_chars) for name, cap in caps.items() if cap.cut]
    notes += [f"the sandbox kept only the first part of {name} (its output cap)"
              for name in caps if end.get(f"{name}_truncated")]
    return CommandResult(
        exit_code=end.get("exit_code"), signal=end.get("signal"),
        timed_out=bool(end.get("timed_out")), duration_s=float(end.get("duration_s") or 0.0),
        stdout=caps["stdout"].text(), stderr=caps["stderr"].text(),
        stdout_cut_chars=caps["stdout"].cut, stderr_cut_chars=caps["stderr"].cut,
        note=" ".join(notes) or None, request_id=request_id)


def file_content(path: str, data: bytes, max_bytes: int, encoding: Literal["text", "base64"],
                 request_id: str | None) -> FileContent:
    """The file's first max_bytes (data holds one more when there is more)."""
    truncated = len(data) > max_bytes
    data = data[:max_bytes]
    note = (f"the file is longer than max_bytes={max_bytes}: this is its start; read more "
            "with a larger max_bytes, or run_command `tail -c`/`sed -n`") if truncated else None
    if encoding == "base64":
        return FileContent(path=path, encoding="base64", bytes_read=len(data),
                           content=base64.b64encode(data).decode("ascii"), truncated=truncated,
                           note=note, request_id=request_id)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        if not (truncated and err.start >= len(data) - 3):  # not only a character cut in two
            note = ((note + "; ") if note else "") + ("it is not UTF-8 text (invalid bytes "
                                                      "shown as U+FFFD): read it with encoding "
                                                      "base64 for its exact bytes")
    return FileContent(path=path, encoding="text", content=data.decode("utf-8", "replace"),
                       bytes_read=len(data), truncated=truncated, note=note,
                       request_id=request_id)


async def iteration_result(b: Backend, it: dict[str, Any], output_chars: int
                           ) -> IterationResult:
    """An iteration of a listing, with the end of its output once it ended (one more read)."""
    got = IterationResult(id=it["id"], state=it["state"], exit_code=it.get("exit_code"),
                          duration_s=it.get("duration_s"), attempts=int(it.get("attempt") or 0),
                          error=it.get("error"))
    if output_chars and it["state"] in ENDED:
        full = await b.iteration(it["id"])
        got.stdout, got.stdout_cut_chars = tail(full.get("stdout") or "", output_chars)
        got.stderr, got.stderr_cut_chars = tail(full.get("stderr") or "", output_chars)
    return got


__all__ = ["HEARTBEAT_S", "Progress", "command_result", "cut_note", "file_content",
           "iteration_result"]
