"""E2B's `process.Process` service (Connect RPC, JSON): Start and Connect (server streams of
a start event, output, keep-alives and the end), List, SendSignal, SendInput, CloseStdin and
StreamInput, over the gateway's `Processes` (processes.py). PTYs (Update, a Start with `pty`)
are not supported and answer UNIMPLEMENTED.

A command's environment is E2B's: HOME, USER and LOGNAME of its user, E2B_SANDBOX and
E2B_SANDBOX_ID, then the sandbox's envVars, then the call's own `envs`, each over the one
before. Its working directory is the user's home unless the call names one. Its deadline is the
caller's (Connect-Timeout-Ms, which the SDKs set from the command's `timeout`): when it passes
the command is killed and the stream ends with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request, Response

from tryfleet.errors import TryfleetError
from tryfleet.masking import StreamMasker

from ..auditing import Command, call_of, command_started
from ..exposure import mask_values
from ..routes.switches import frozen_sandbox
from . import connect, protojson
from .common import E2BRoute
from .connect import Code, ConnectError
from .envd import RpcTarget, Target, rpc_error
from .processes import Ended, Event, Output, Processes, ProcessSpec, Selector, Started
from .sandbox_env import envs_of

log = logging.getLogger("tryfleet.gateway")
router = APIRouter(route_class=E2BRoute, include_in_schema=False)
KEEPALIVE_S = 50.0  # at most this long without a message on a stream (E2B's proxies need it)
SIGNALS = {"SIGNAL_UNSPECIFIED": 0, "SIGNAL_SIGTERM": 15, "SIGNAL_SIGKILL": 9}
_DONE = object()


def processes(request: Request) -> Processes:
    found: Processes = request.app.state.e2b.processes
    return found


# ---- messages --------------------------------------------------------------------------------
def event_json(ev: Event | None) -> dict[str, Any]:
    """A ProcessEvent (None: a keep-alive), in a StartResponse or ConnectResponse."""
    if ev is None:
        inner: dict[str, Any] = {"keepalive": {}}
    elif isinstance(ev, Started):
        inner = {"start": {"pid": ev.pid}}
    elif isinstance(ev, Output):
        inner = {"data": {"stdout" if ev.stream == 1 else "stderr": protojson.b64(ev.data)}}
    else:
        inner = {"end": protojson.message_json(
            keep=("error",) if ev.error is not None else (), exit_code=ev.exit_code,
            exited=ev.exited, status=ev.status, error=ev.error)}
    return {"event": inner}


def selector_of(msg: dict[str, Any]) -> Selector:
    sel = protojson.message(msg, "process") or {}
    got = protojson.oneof(sel, "pid", "tag")
    if got is None:
        raise ConnectError(Code.INVALID_ARGUMENT, "name the process: process.pid or "
                           "process.tag")
    if got[0] == "pid":
        return Selector(pid=protojson.integer(sel, "pid", protojson.UINT32))
    return Selector(tag=protojson.text(sel, "tag", most=256))


async def spec_of(t: Target, msg: dict[str, Any]) -> ProcessSpec:
    if protojson.message(msg, "pty") is not None:
        raise connect.unimplemented("a PTY", "run the command without one")
    cfg = protojson.message(msg, "process") or {}
    cmd = protojson.text(cfg, "cmd", most=4096)
    if not cmd:
        raise ConnectError(Code.INVALID_ARGUMENT, "process.cmd is empty: name a program")
    cwd = protojson.optional_text(cfg, "cwd", most=4096)
    envs = {"HOME": t.home, "USER": t.user, "LOGNAME": t.user, "E2B_SANDBOX": "true",
            "E2B_SANDBOX_ID": t.box.id, **await envs_of(t.request, t.box),
            **protojson.string_map(cfg, "envs")}
    return ProcessSpec(cmd, tuple(protojson.strings(cfg, "args")), envs,
                       t.path(cwd, "cwd") if cwd else t.home,
                       protojson.optional_text(msg, "tag", most=256),
                       protojson.boolean(msg, "stdin"))


def info_json(pid: int, spec: ProcessSpec) -> dict[str, Any]:
    config = protojson.message_json(keep=("cwd",), cmd=spec.cmd, args=list(spec.args),
                                    envs=spec.envs, cwd=spec.cwd)
    return protojson.message_json(keep=("tag",) if spec.tag is not None else (),
                                  config=config, pid=pid, tag=spec.tag)


# ---- streams ---------------------------------------------------------------------------------
async def with_keepalives(events: AsyncIterator[Event], every_s: float
                          ) -> AsyncIterator[Event | None]:
    """The events as they come, and None whenever every_s passed without one. The events are
    read by a task of their own (an await on them is never cancelled by a keep-alive); when
    this generator is closed, that task is cancelled, and so is what it reads."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)

    async def pump() -> None:
        try:
            async for ev in events:
                await queue.put(ev)
            await queue.put(_DONE)
        except Exception as err:
            await queue.put(err)

    task = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            try:
                async with asyncio.timeout(every_s):
                    item = await queue.get()
            except TimeoutError:
                yield None
                continue
            if item is _DONE:
                return
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def masked(events: AsyncIterator[Event], values: tuple[bytes, ...]
                 ) -> AsyncIterator[Event]:
    """The events with the tenant's secret values masked out of the output (a value split
    across two outputs too: what may be its start waits for the next, or for the end)."""
    maskers = {1: StreamMasker(values), 2: StreamMasker(values)}
    async for ev in events:
        if isinstance(ev, Output) and values:
            shown = maskers[ev.stream].feed(ev.data)
            if shown:
                yield Output(ev.stream, shown)
            continue
        if isinstance(ev, Ended):
            for stream, masker in maskers.items():
                rest = masker.flush()
                if rest:
                    yield Output(stream, rest)
        yield ev


async def frames(events: AsyncIterator[Event], keepalive_s: float) -> AsyncIterator[bytes]:
    """The stream's messages, then its end (with the error that ended it, if one did)."""
    error: ConnectError | None = None
    try:
        async for ev in with_keepalives(events, keepalive_s):
            yield connect.envelope(event_json(ev))
            if isinstance(ev, Ended) and ev.timed_out:
                error = ConnectError(Code.DEADLINE_EXCEEDED, "the command's timeout passed: it "
                                     "was killed")
    except ConnectError as err:
        error = err
    except TryfleetError as err:
        error = rpc_error(err)
    except Exception:
        log.exception("a process stream failed")
        error = ConnectError(Code.INTERNAL, "tryfleet failed to run this; the X-Request-Id "
                             "header says where in its logs")
    yield connect.end_of_stream(error)


def keepalive_of(request: Request) -> float:
    raw = request.headers.get("keepalive-ping-interval", "")
    return float(min(max(int(raw), 1), KEEPALIVE_S)) if raw.isdigit() and len(raw) < 6 \
        else KEEPALIVE_S


async def _only(frame: bytes) -> AsyncIterator[bytes]:
    yield frame


def failed_stream(err: ConnectError) -> Response:
    """A server stream refused before it began: 200 and the end-of-stream with the error."""
    return connect.stream_answer(_only(connect.end_of_stream(err)))


async def _start(t: Target, request: Request) -> Response:
    try:
        frozen_sandbox(request, t.box.id, "a new command")
        spec = await spec_of(t, await connect.single_message(request))
        timeout_s = connect.timeout_s(request)
    except ConnectError as err:
        return failed_stream(err)
    except TryfleetError as err:
        return failed_stream(rpc_error(err))
    cmd = await command_started(call_of(request), t.box, (spec.cmd, *spec.args), cwd=spec.cwd,
                                user=t.user, env=spec.envs, via="e2b")
    events = masked(audited(cmd, processes(request).start(t, spec, timeout_s)),
                    mask_values(request, t.box.tenant))
    return connect.stream_answer(frames(events, keepalive_of(request)))


async def audited(cmd: Command, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """The events of a process started here, its output digested, its end recorded
    (exec.end) when this stream sees it (a process followed no more ends unseen)."""
    async for ev in events:
        if isinstance(ev, Output):
            cmd.output(ev.stream, ev.data)
        elif isinstance(ev, Ended):
            signal = None if ev.exited else ev.status.removeprefix("signal: ")
            cmd.ended(ev.exit_code if ev.exited else None, signal, timed_out=ev.timed_out,
                      error=ev.error or "")
        yield ev


async def _connect(t: Target, request: Request) -> Response:
    try:
        which = selector_of(await connect.single_message(request))
    except ConnectError as err:
        return failed_stream(err)
    events = masked(processes(request).connect(t, which), mask_values(request, t.box.tenant))
    return connect.stream_answer(frames(events, keepalive_of(request)))


async def _stream_input(t: Target, request: Request) -> Response:
    """A client stream: `start` naming the process, then `data` (stdin) and `keepalive`."""
    which: Selector | None = None
    try:
        async for msg in connect.stream_messages(request):
            got = protojson.oneof(msg, "start", "data", "keepalive")
            kind, body = got if got is not None else ("", {})
            if kind == "start":
                which = selector_of(body)
            elif kind == "data":
                if which is None:
                    raise ConnectError(Code.FAILED_PRECONDITION, "send `start` first")
                await _input(t, request, which, protojson.message(body, "input") or {})
    except TryfleetError as err:
        return failed_stream(rpc_error(err))
    except ConnectError as err:
        return failed_stream(err)
    return connect.stream_answer(_two(connect.envelope({}), connect.end_of_stream()))


async def _two(first: bytes, second: bytes) -> AsyncIterator[bytes]:
    yield first
    yield second


async def _input(t: Target, request: Request, which: Selector, inp: dict[str, Any]) -> None:
    got = protojson.oneof(inp, "stdin", "pty")
    if got is not None and got[0] == "pty":
        raise connect.unimplemented("PTY input", "tryfleet runs commands without a PTY")
    await processes(request).send_input(t, which, protojson.data(inp, "stdin"))


# ---- unary calls -----------------------------------------------------------------------------
async def _unary(method: str, t: Target, request: Request) -> dict[str, Any]:
    msg = await connect.unary_request(request)
    procs = processes(request)
    if method == "List":
        return {"processes": [info_json(p.pid, p.spec) for p in await procs.list(t)]}
    if method == "SendSignal":
        signum = protojson.enum(msg, "signal", SIGNALS)
        if not signum:
            raise ConnectError(Code.INVALID_ARGUMENT, "signal must be SIGNAL_SIGTERM or "
                               "SIGNAL_SIGKILL")
        await procs.signal(t, selector_of(msg), signum)
    elif method == "SendInput":
        await _input(t, request, selector_of(msg), protojson.message(msg, "input") or {})
    elif method == "CloseStdin":
        await procs.close_stdin(t, selector_of(msg))
    elif method == "Update":
        raise connect.unimplemented("resizing a PTY", "tryfleet runs commands without a PTY")
    else:
        raise ConnectError(Code.UNIMPLEMENTED, f"process.Process has no method {method!r}")
    return {}


@router.post("/process.Process/{method}")
async def process(method: str, target: RpcTarget, request: Request) -> Response:
    if method == "Start":
        return await _start(target, request)
    if method == "Connect":
        return await _connect(target, request)
    if method == "StreamInput":
        return await _stream_input(target, request)
    try:
        return connect.unary_answer(await _unary(method, target, request))
    except TryfleetError as err:
        raise rpc_error(err) from None


__all__ = ["KEEPALIVE_S", "event_json", "frames", "info_json", "router", "spec_of",
           "with_keepalives"]
