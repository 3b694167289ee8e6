"""The Python SDK: `fleet = tryfleet.connect()`, then submit, map, sandbox, cancel."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import ray

from tryfleet.nodeagent import default_data_dir
from tryfleet.scheduler.ledger import LedgerError
from tryfleet.scheduler.records import InvalidIteration, Iteration, Result
from tryfleet.wire import (
    NAMESPACE,
    NODE_ACTOR_PREFIX,
    AttemptKey,
    ExecChunk,
    ExecReply,
    ExecRequest,
    Output,
    SandboxOpen,
    pack,
    unpack,
)

from . import cluster


class Fleet:
    def __init__(self, data_dir: Path, embedded: bool, keep: tuple[Any, ...] = ()) -> None:
        self.data_dir = data_dir
        self.embedded = embedded
        self._keep = keep  # an embedded fleet's actors live as long as their handles
        self._sched = cluster.scheduler()

    # ---- plumbing --------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, retry_s: float = 0.0, **kw: Any) -> Any:
        """Call the scheduler; if it is restarting, find it again for up to retry_s."""
        deadline = time.monotonic() + retry_s
        while True:
            try:
                return ray.get(getattr(self._sched, method).remote(*args, **kw))
            except ray.exceptions.RayTaskError as err:
                # The scheduler refused the request: raise its own error, not Ray's wrapper.
                if isinstance(err.cause, (LedgerError, InvalidIteration, ValueError, KeyError)):
                    raise err.cause from None
                raise
            except (ray.exceptions.RayActorError, cluster.FleetError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1.0)
                with contextlib.suppress(cluster.FleetError):
                    self._sched = cluster.scheduler()

    # ---- batches ---------------------------------------------------------------------------
    def submit(self, iterations: Iterable[Iteration], suite: str = "default",
               tenant: str = "default", limits: Mapping[str, int] | None = None,
               max_iterations: int | None = None, max_wall_s: float | None = None) -> list[str]:
        """Record the iterations durably (on disk when this returns); their ids."""
        payload = [it.to_wire() for it in iterations]
        return list(self._call("submit", payload, suite, tenant, dict(limits or {}),
                               max_iterations, max_wall_s))

    def results(self, ids: list[str] | None = None, suite: str | None = None) -> list[Result]:
        return [Result(**r) for r in self._call("results", ids, suite)]

    def result(self, iid: str) -> Result | None:
        got = self.results([iid])
        return got[0] if got else None

    def map(self, iterations: Iterable[Iteration], suite: str = "default",
            tenant: str = "default", limits: Mapping[str, int] | None = None,
            poll_s: float = 0.5, wait_for_scheduler_s: float = 600.0) -> Iterator[Result]:
        """Submit, then yield each result as it completes (in completion order)."""
        ids = self.submit(iterations, suite, tenant, limits)
        yield from self.watch(ids, poll_s, wait_for_scheduler_s)

    def watch(self, ids: list[str], poll_s: float = 0.5, wait_for_scheduler_s: float = 600.0,
              timeout_s: float | None = None) -> Iterator[Result]:
        """Yield each result as it becomes terminal; TimeoutError after `timeout_s`."""
        pending = set(ids)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while pending:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} iteration(s) not finished after "
                                   f"{timeout_s:g}s: {', '.join(sorted(pending)[:10])}")
            done = self._call("results", sorted(pending), retry_s=wait_for_scheduler_s)
            for r in done:
                if r["id"] in pending:
                    pending.discard(r["id"])
                    yield Result(**r)
            if pending:
                time.sleep(poll_s)

    def wait(self, ids: list[str], timeout_s: float | None = None) -> list[Result]:
        by_id = {r.id: r for r in self.watch(ids, timeout_s=timeout_s)}
        return [by_id[i] for i in ids]

    def run(self, iteration: Iteration, suite: str = "run", tenant: str = "default") -> Result:
        return self.wait(self.submit([iteration], suite, tenant))[0]

    # ---- control ---------------------------------------------------------------------------
    def cancel(self, iid: str | None = None, suite: str | None = None,
               tenant: str | None = None, all: bool = False) -> dict[str, int]:
        if not (iid or suite or tenant or all):
            raise ValueError("cancel needs an id, suite=, tenant= or all=True")
        return dict(self._call("cancel", iid, suite, tenant, all))

    def status(self) -> dict[str, Any]:
        return dict(self._call("status"))

    def where(self, iid: str) -> dict[str, Any] | None:
        got: dict[str, Any] | None = self._call("where", iid)
        return got

    def node(self, host: str) -> Any:
        """The node-agent actor of a real host (ValueError if there is none)."""
        return ray.get_actor(NODE_ACTOR_PREFIX + host, namespace=NAMESPACE)

    def output(self, host: str, iid: str, attempt: int, out_offset: int = 0,
               err_offset: int = 0) -> Output | None:
        """What an attempt running on `host` has printed past the offsets so far; None when
        its host does not know it."""
        got = ray.get(self.node(host).output.remote(host, pack(AttemptKey(iid, attempt)),
                                                    out_offset, err_offset))
        return None if got is None else unpack(Output, got)

    def sandbox(self, image: str = "base", cpus: int = 1, mem_mib: int = 512,
                timeout_s: float = 600.0, disk_mib: int | None = None) -> Sandbox:
        return Sandbox(self, image, cpus, mem_mib, disk_mib, timeout_s)

    def close(self) -> None:
        """Disconnect from Ray; an embedded fleet also stops its actors (and their VMs)."""
        if self.embedded and ray.is_initialized():
            cluster.kill_actors()
        # A driver left connected to a cluster that goes away exits its whole process once
        # Ray gives up reconnecting: always let go.
        ray.shutdown()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Files:
    def __init__(self, box: Sandbox) -> None:
        self._box = box

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> None:
        raw = data.encode() if isinstance(data, str) else data
        box = self._box
        ray.get(box._node.sandbox_write.remote(box.host, box.id, path, raw, mode))

    def read(self, path: str) -> bytes:
        box = self._box
        return bytes(ray.get(box._node.sandbox_read.remote(box.host, box.id, path)))


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
        self._node: Any = None
        self.host: str | None = None
        self.vm: str | None = None

    def __enter__(self) -> Sandbox:
        deadline = time.monotonic() + self.timeout_s
        while True:
            got = self.fleet._call("lease", self.id, self.image, self.cpus, self.mem_mib,
                                   self.disk_mib, self.timeout_s)
            if got["verdict"] == "placed":
                break
            if got["verdict"] == "never" or time.monotonic() > deadline:
                raise RuntimeError(f"sandbox cannot be placed: {got['why']}")
            time.sleep(0.5)
        self.host = got["host"]
        self._node = self.fleet.node(got["host"])
        request = SandboxOpen(self.id, self.image, self.cpus, self.mem_mib, self.disk_mib,
                              float(self.timeout_s))
        try:
            self.vm = ray.get(self._node.sandbox_open.remote(self.host, pack(request)))
        except BaseException:
            self.fleet._call("release", self.id)
            raise
        return self

    def exec(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
             stdin: bytes | None = None, timeout_s: float | None = None) -> ExecResult:
        req = _exec_request(argv, env, cwd, stdin, timeout_s)
        reply = ray.get(self._node.sandbox_exec.remote(self.host, self.id, req))
        return ExecResult.of(unpack(ExecReply, reply))

    def exec_stream(self, argv: list[str], env: dict[str, str] | None = None,
                    cwd: str | None = None, timeout_s: float | None = None
                    ) -> Iterator[tuple[str, Any]]:
        """Yields ("stdout"|"stderr", bytes) as output arrives, then ("exit", ExecResult)."""
        req = _exec_request(argv, env, cwd, None, timeout_s)
        gen = self._node.sandbox_exec_stream.options(num_returns="streaming").remote(
            self.host, self.id, req)
        for ref in gen:
            chunk = unpack(ExecChunk, ray.get(ref))
            if chunk.reply is None:
                yield ("stdout" if chunk.stream == 1 else "stderr", chunk.data)
            else:
                yield ("exit", ExecResult.of(chunk.reply))

    def close(self) -> None:
        if self._node is not None:
            try:
                ray.get(self._node.sandbox_close.remote(self.host, self.id))
            finally:
                self.fleet._call("release", self.id)
                self._node = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exec_request(argv: list[str], env: dict[str, str] | None, cwd: str | None,
                  stdin: bytes | None, timeout_s: float | None) -> bytes:
    return pack(ExecRequest(tuple(argv), tuple((env or {}).items()), cwd, stdin,
                            None if timeout_s is None else float(timeout_s)))


def connect(address: str | None = None, data_dir: str | Path | None = None) -> Fleet:
    """No address: use the fleet `tryfleet up` started here, or start an embedded one (a local
    Ray, a node agent and a scheduler in this process's Ray session). With an address: join
    that Ray cluster's fleet."""
    data = Path(data_dir) if data_dir else default_data_dir()
    if address is not None:
        cluster.init(address)
        return Fleet(data, embedded=False)
    running = cluster.running_address(data)
    if running is not None:
        cluster.init(running)
        return Fleet(data, embedded=False)
    if not ray.is_initialized():
        ray.init(namespace=NAMESPACE, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level=logging.WARNING)
    handles = cluster.ensure_actors(data, detached=False)
    return Fleet(data, embedded=True, keep=handles)


__all__ = ["Fleet", "Iteration", "Result", "Sandbox", "connect"]
