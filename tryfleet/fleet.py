"""The Python SDK: `fleet = tryfleet.connect()`, then submit, map, watch, follow, sandbox, cancel.

Every method is one request and one answer of plain values (ids, cursors, offsets, records), so
it can be served over HTTP as it is. How requests travel is the Transport's business: Ray today
(raytransport.py, the only client module that imports Ray), an in-process stand-in in tests.

Errors are tryfleet's own (tryfleet.errors): BadRequest (and CannotPlace) when a request can
never succeed as given, NotFound, NoRoom when no room came free in time, WaitTimeout,
FleetUnavailable when the fleet cannot be reached.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from tryfleet.errors import BadRequest, CannotPlace, NoRoom, WaitTimeout
from tryfleet.scheduler.records import (
    Attempt,
    Iteration,
    IterationDetail,
    LiveOutput,
    Result,
)
from tryfleet.wire import ExecChunk, ExecReply, ExecRequest, SandboxOpen, pack, unpack

WATCH_IDS_PER_CALL = 5_000  # ids sent in one call of watch's first sweep
PAGE = 1_000  # results asked for per page of ended iterations
LEASE_POLL_S = 0.5


class Transport(Protocol):
    """How requests reach the fleet: the scheduler's API by method name, and the node agent of
    a sandbox's host. Errors arrive as tryfleet's own."""

    def call(self, method: str, *args: Any, retry_s: float = 0.0) -> Any: ...

    def node(self, host: str, method: str, *args: Any) -> Any: ...

    def node_stream(self, host: str, method: str, *args: Any) -> Iterator[Any]: ...

    def close(self, stop_fleet: bool) -> None: ...


class Fleet:
    """A connection to a fleet. Reads (results, listings, output) are retried for up to
    `wait_for_scheduler_s` while the scheduler restarts; writes are not."""

    def __init__(self, data_dir: Path, embedded: bool, keep: tuple[Any, ...] = (),
                 transport: Transport | None = None, wait_for_scheduler_s: float = 0.0) -> None:
        self.data_dir = data_dir
        self.embedded = embedded
        self.wait_for_scheduler_s = wait_for_scheduler_s
        self._keep = keep  # an embedded fleet's actors live as long as their handles
        if transport is None:
            from .raytransport import RayTransport

            transport = RayTransport()
        self._transport: Transport = transport

    def _read(self, method: str, *args: Any, retry_s: float | None = None) -> Any:
        wait = self.wait_for_scheduler_s if retry_s is None else retry_s
        return self._transport.call(method, *args, retry_s=wait)

    # ---- batches ---------------------------------------------------------------------------
    def submit(self, iterations: Iterable[Iteration], suite: str = "default",
               tenant: str = "default", limits: Mapping[str, int] | None = None,
               max_iterations: int | None = None, max_wall_s: float | None = None) -> list[str]:
        """Record the iterations durably (on disk when this returns); their ids. Raises
        BadRequest for an invalid one, CannotPlace (with .reason) for one no host of the fleet
        could ever run; then nothing is recorded."""
        payload = [it.to_wire() for it in iterations]
        return list(self._transport.call("submit", payload, suite, tenant, dict(limits or {}),
                                         max_iterations, max_wall_s))

    def results(self, ids: Sequence[str] | None = None, suite: str | None = None
                ) -> list[Result]:
        """The ended iterations among ids (or of suite), in submission order."""
        got = self._read("results", None if ids is None else list(ids), suite)
        return [Result(**r) for r in got]

    def result(self, iid: str) -> Result | None:
        """The result of one iteration once it has ended; None before."""
        got = self.results([iid])
        return got[0] if got else None

    def get(self, iid: str) -> IterationDetail:
        """One iteration as it stands (queued, running or ended; its output once ended) and
        its attempts. NotFound for an unknown id."""
        return IterationDetail.from_json(self._read("get", iid))

    def attempts(self, iid: str) -> list[Attempt]:
        """The attempts of one iteration, first to last. NotFound for an unknown id."""
        return [Attempt(**a) for a in self._read("attempts", iid)]

    def iterations(self, states: Iterable[str] | None = None, suite: str | None = None,
                   limit: int = 200) -> list[Result]:
        """Iterations in submission order (what `tryfleet ps` shows), without their output:
        of these states (default: all; e.g. ("QUEUED", "PLACED", "RUNNING")), of suite."""
        got = self._read("iterations", None if states is None else list(states), suite, limit)
        return [Result(**r) for r in got]

    def counts(self, suite: str | None = None) -> dict[str, int]:
        """How many iterations are in each state, fleet-wide or in suite."""
        return dict(self._read("counts", suite))

    def ended_since(self, cursor: int = 0, suite: str | None = None,
                    ids: Sequence[str] | None = None, limit: int = PAGE
                    ) -> tuple[list[Result], int]:
        """The iterations (of suite, among ids) that ended after cursor, in the order they
        ended, and the cursor to pass next time. Start with 0; a full page (limit results)
        means more may be waiting."""
        got = self._read("ended_since", cursor, suite, None if ids is None else list(ids),
                         limit)
        return [Result(**r) for r in got["results"]], int(got["cursor"])

    def output(self, iid: str, out_offset: int = 0, err_offset: int = 0) -> LiveOutput:
        """The iteration's stdout and stderr bytes past the offsets: live from its host while
        it runs, the recorded (capped) output once it has ended (`done`)."""
        return LiveOutput(**self._read("output", iid, out_offset, err_offset))

    def follow(self, iid: str, poll_s: float = 0.2) -> Iterator[tuple[str, bytes] | Result]:
        """Yields ("stdout" | "stderr", bytes) as the iteration prints, then its Result. A retry
        prints again from the start of its own output."""
        offsets, attempt = [0, 0], None
        while True:
            got = self.output(iid, *offsets)
            if got.attempt != attempt:
                moved = attempt is not None and offsets != [0, 0]
                attempt, offsets = got.attempt, [0, 0]
                if moved:  # those offsets were into another attempt's output: ask again
                    continue
            for n, (name, data) in enumerate((("stdout", got.stdout), ("stderr", got.stderr))):
                if data:
                    offsets[n] += len(data)
                    yield (name, data)
            if got.done:
                result = self.result(iid)
                if result is not None:
                    yield result
                    return
            time.sleep(poll_s)

    def map(self, iterations: Iterable[Iteration], suite: str = "default",
            tenant: str = "default", limits: Mapping[str, int] | None = None,
            poll_s: float = 0.5, wait_for_scheduler_s: float = 600.0) -> Iterator[Result]:
        """Submit, then yield each result as it completes (in completion order)."""
        ids = self.submit(iterations, suite, tenant, limits)
        yield from self.watch(ids, poll_s, wait_for_scheduler_s, suite=suite)

    def watch(self, ids: Sequence[str], poll_s: float = 0.5, wait_for_scheduler_s: float = 600.0,
              timeout_s: float | None = None, suite: str | None = None) -> Iterator[Result]:
        """Yield each result as its iteration ends; WaitTimeout after timeout_s. Each id is
        sent once (what has already ended comes back then); after that a poll sends only a
        cursor, filtered by suite when given (the suite all the ids belong to)."""
        pending = set(ids)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        cursor: int | None = None
        order = list(dict.fromkeys(ids))
        for i in range(0, len(order), WATCH_IDS_PER_CALL):
            chunk = order[i:i + WATCH_IDS_PER_CALL]
            got, at = self._ended(0, None, chunk, len(chunk), wait_for_scheduler_s)
            cursor = at if cursor is None else min(cursor, at)
            yield from _take(got, pending)
        while pending:
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeout(f"{len(pending)} iteration(s) not finished after "
                                  f"{timeout_s:g}s: {', '.join(sorted(pending)[:10])}")
            got, cursor = self._ended(cursor or 0, suite, None, PAGE, wait_for_scheduler_s)
            yield from _take(got, pending)
            if pending and len(got) < PAGE:
                time.sleep(poll_s)

    def _ended(self, cursor: int, suite: str | None, ids: list[str] | None, limit: int,
               retry_s: float) -> tuple[list[Result], int]:
        got = self._read("ended_since", cursor, suite, ids, limit, retry_s=retry_s)
        return [Result(**r) for r in got["results"]], int(got["cursor"])

    def wait(self, ids: Sequence[str], timeout_s: float | None = None,
             suite: str | None = None) -> list[Result]:
        """The results of ids, in their order, once all have ended; WaitTimeout after
        timeout_s."""
        by_id = {r.id: r for r in self.watch(ids, timeout_s=timeout_s, suite=suite)}
        return [by_id[i] for i in ids]

    def run(self, iteration: Iteration, suite: str = "run", tenant: str = "default") -> Result:
        return self.wait(self.submit([iteration], suite, tenant), suite=suite)[0]

    # ---- control ---------------------------------------------------------------------------
    def cancel(self, iid: str | None = None, suite: str | None = None,
               tenant: str | None = None, all: bool = False) -> dict[str, int]:
        """Cancel one iteration, a suite, a tenant's, or all (the kill switch): queued ones
        end now, running ones are stopped and their VMs destroyed."""
        if not (iid or suite or tenant or all):
            raise BadRequest("cancel needs an id, suite=, tenant= or all=True")
        return dict(self._transport.call("cancel", iid, suite, tenant, all))

    def status(self) -> dict[str, Any]:
        """Hosts (capacity, pressure, lost), limits, and counts per suite."""
        return dict(self._read("status"))

    def sandbox(self, image: str = "base", cpus: int = 1, mem_mib: int = 512,
                timeout_s: float = 600.0, disk_mib: int | None = None) -> Sandbox:
        """An interactive VM for up to timeout_s (also how long entering it waits for room)."""
        return Sandbox(self, image, cpus, mem_mib, disk_mib, timeout_s)

    def close(self) -> None:
        """Disconnect; an embedded fleet also stops its actors (and their VMs)."""
        self._transport.close(stop_fleet=self.embedded)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _take(got: list[Result], pending: set[str]) -> Iterator[Result]:
    for r in got:
        if r.id in pending:
            pending.discard(r.id)
            yield r


def _exec_request(argv: list[str], env: dict[str, str] | None, cwd: str | None,
                  stdin: bytes | None, timeout_s: float | None) -> bytes:
    return pack(ExecRequest(tuple(argv), tuple((env or {}).items()), cwd, stdin,
                            None if timeout_s is None else float(timeout_s)))


class _Files:
    def __init__(self, box: Sandbox) -> None:
        self._box = box

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self._box._node("sandbox_write", self._box.id, path, raw, mode)

    def read(self, path: str) -> bytes:
        return bytes(self._box._node("sandbox_read", self._box.id, path))


class ExecResult(dict):  # type: ignore[type-arg]
    """exit_code, signal, stdout, stderr (bytes), *_truncated, timed_out, duration_s."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def of(cls, reply: ExecReply) -> ExecResult:
        return cls(asdict(reply))


class Sandbox:
    """An interactive VM held for up to timeout_s: exec, files, then gone on exit."""

    def __init__(self, fleet: Fleet, image: str, cpus: int, mem_mib: int,
                 disk_mib: int | None, timeout_s: float) -> None:
        self.fleet, self.image, self.cpus, self.mem_mib = fleet, image, cpus, mem_mib
        self.disk_mib, self.timeout_s = disk_mib, timeout_s
        self.id = "sbx-" + uuid.uuid4().hex[:12]
        self.files = _Files(self)
        self.host: str | None = None
        self.vm: str | None = None

    def _node(self, method: str, *args: Any) -> Any:
        if self.host is None:
            raise RuntimeError("the sandbox is not open: use it in a `with` block")
        return self.fleet._transport.node(self.host, method, *args)

    def __enter__(self) -> Sandbox:
        """Hold room for the VM, then start it. CannotPlace when no host of the fleet could
        ever take it; NoRoom when none had room before timeout_s passed."""
        calls = self.fleet._transport
        deadline = time.monotonic() + self.timeout_s
        what = f"a sandbox of {self.image} ({self.cpus} cpus, {self.mem_mib} MiB)"
        while True:
            got = calls.call("lease", self.id, self.image, self.cpus, self.mem_mib,
                             self.disk_mib, self.timeout_s)
            if got["verdict"] == "placed":
                break
            if got["verdict"] == "never":
                raise CannotPlace(f"{what} can never be placed on this fleet: {got['why']}",
                                  got["why"])
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoRoom(f"no room for {what} came free within {self.timeout_s:g}s: "
                             f"{got['why']}")
            time.sleep(min(LEASE_POLL_S, left))
        self.host = got["host"]
        try:
            self.vm = self._node("sandbox_open", pack(SandboxOpen(
                self.id, self.image, self.cpus, self.mem_mib, self.disk_mib,
                float(self.timeout_s))))
        except BaseException:
            self.host = None
            calls.call("release", self.id)
            raise
        return self

    def exec(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
             stdin: bytes | None = None, timeout_s: float | None = None) -> ExecResult:
        req = _exec_request(argv, env, cwd, stdin, timeout_s)
        return ExecResult.of(unpack(ExecReply, self._node("sandbox_exec", self.id, req)))

    def exec_stream(self, argv: list[str], env: dict[str, str] | None = None,
                    cwd: str | None = None, timeout_s: float | None = None
                    ) -> Iterator[tuple[str, Any]]:
        """Yields ("stdout"|"stderr", bytes) as output arrives, then ("exit", ExecResult)."""
        if self.host is None:
            raise RuntimeError("the sandbox is not open: use it in a `with` block")
        req = _exec_request(argv, env, cwd, None, timeout_s)
        for raw in self.fleet._transport.node_stream(self.host, "sandbox_exec_stream",
                                                     self.id, req):
            chunk = unpack(ExecChunk, raw)
            if chunk.reply is None:
                yield ("stdout" if chunk.stream == 1 else "stderr", chunk.data)
            else:
                yield ("exit", ExecResult.of(chunk.reply))

    def close(self) -> None:
        if self.host is not None:
            try:
                self._node("sandbox_close", self.id)
            finally:
                self.fleet._transport.call("release", self.id)
                self.host = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(address: str | None = None, data_dir: str | Path | None = None,
            wait_for_scheduler_s: float = 0.0) -> Fleet:
    """No address: use the fleet `tryfleet up` started here, or start an embedded one (a local
    Ray, a node agent and a scheduler in this process's Ray session). With an address: join
    that Ray cluster's fleet. FleetUnavailable when it cannot be reached. Reads wait up to
    wait_for_scheduler_s for a restarting scheduler."""
    from tryfleet.nodeagent import default_data_dir

    from . import cluster

    data = Path(data_dir) if data_dir else default_data_dir()
    address = address or cluster.running_address(data)
    if address is not None:
        cluster.init(address)
        return Fleet(data, embedded=False, wait_for_scheduler_s=wait_for_scheduler_s)
    handles = cluster.start_embedded(data)
    return Fleet(data, embedded=True, keep=handles, wait_for_scheduler_s=wait_for_scheduler_s)


__all__ = ["ExecResult", "Fleet", "Iteration", "Result", "Sandbox", "Transport", "connect"]
