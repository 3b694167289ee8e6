"""The node agent as a long-lived service: attempts run in threads, results are kept until
the scheduler collects them, so a scheduler that restarts can reattach instead of losing work.

Plain Python; `actor.py` makes it a Ray actor pinned to its node. Payloads are msgpack-ready
dicts of plain values.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from .hypervisor import Hypervisor
from .node import NodeAgent, NodeConfig
from .records import IterationOutcome, IterationSpec, SandboxSpec, State

log = logging.getLogger("tryfleet.nodeagent")
KEEP_FINISHED_S = 3600.0


@dataclass
class _Attempt:
    key: tuple[str, int]
    ids: dict[str, Any]
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: dict[str, Any] | None = None
    out: list[bytearray] = field(default_factory=lambda: [bytearray(), bytearray()])
    finished_at: float = 0.0
    vm: str | None = None


def spec_from_wire(it: dict[str, Any]) -> IterationSpec:
    files = tuple((path, text.encode() if isinstance(text, str) else bytes(text))
                  for path, text in (it.get("files") or {}).items())
    return IterationSpec(
        image=it["image"], argv=tuple(it["command"]), env=tuple((it.get("env") or {}).items()),
        cwd=it.get("cwd"), put=files, timeout_s=float(it.get("timeout_s") or 600.0),
        cpus=int(it.get("cpus") or 1), mem_mib=int(it.get("mem_mib") or 512),
        disk_mib=it.get("disk_mib"),
    )


def outcome_to_wire(o: IterationOutcome) -> dict[str, Any]:
    return {
        "state": o.state.value, "exit_code": o.exit_code, "signal": o.signal,
        "stdout": o.stdout, "stderr": o.stderr, "stdout_truncated": o.stdout_truncated,
        "stderr_truncated": o.stderr_truncated, "started_at": o.started_at,
        "ended_at": o.ended_at, "duration_s": o.duration_s, "host": o.host, "error": o.error,
        "vm": o.vm, "kept_logs": str(o.kept_logs) if o.kept_logs else None,
    }


class NodeService:
    def __init__(self, config: NodeConfig, host: str | None = None,
                 hypervisor: Hypervisor | None = None,
                 build_image: Callable[[str], object] | None = None) -> None:
        self.node = NodeAgent(config, hypervisor, build_image=build_image)
        self.host = host or self.node.hostname
        self._attempts: dict[tuple[str, int], _Attempt] = {}
        self._sandboxes: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._finished = threading.Condition()  # notified whenever an attempt ends

    # ---- attempts --------------------------------------------------------------------------
    def start(self, iid: str, attempt: int, iteration: dict[str, Any],
              ids: dict[str, Any]) -> bool:
        """Start an attempt in the background; False if it is already known here."""
        key = (iid, attempt)
        with self._lock:
            if key in self._attempts:
                return False
            att = self._attempts[key] = _Attempt(key, ids)
        threading.Thread(target=self._run, args=(att, iteration), daemon=True,
                         name=f"attempt-{iid}-{attempt}").start()
        return True

    def _run(self, att: _Attempt, iteration: dict[str, Any]) -> None:
        def on_output(stream: int, data: bytes) -> None:
            att.out[stream - 1] += data

        try:
            spec = spec_from_wire(iteration)
            outcome = outcome_to_wire(self.node.run_iteration(
                spec, on_output=on_output, should_stop=att.stop.is_set))
            if att.stop.is_set() and outcome["state"] != State.SUCCEEDED.value:
                outcome["state"] = State.CANCELLED.value
        except Exception as err:  # a request this host can never run, or a bug: reported
            log.exception("attempt %s failed on the host", att.key, extra=att.ids)
            state = State.CANCELLED if att.stop.is_set() else State.INFRA_ERROR
            outcome = {"state": state.value, "error": f"{type(err).__name__}: {err}",
                       "host": self.host, "bad_request": _is_bad_request(err)}
        outcome["host"] = self.host
        att.outcome = outcome
        att.finished_at = time.monotonic()
        att.done.set()
        with self._finished:
            self._finished.notify_all()

    def wait(self, iid: str, attempt: int, timeout_s: float = 30.0) -> dict[str, Any] | None:
        """The outcome once finished; None if still running after timeout_s.
        An attempt this node never heard of is reported as lost."""
        att = self._attempts.get((iid, attempt))
        if att is None:
            return {"state": State.INFRA_ERROR.value, "lost": True, "host": self.host,
                    "error": f"attempt {attempt} of {iid} is unknown on {self.host} "
                             "(its node agent restarted?)"}
        if not att.done.wait(timeout_s):
            return None
        return att.outcome

    def output(self, iid: str, attempt: int, offsets: tuple[int, int] = (0, 0)
               ) -> tuple[bytes, bytes, bool] | None:
        """Live output past the given offsets, and whether the attempt has finished."""
        att = self._attempts.get((iid, attempt))
        if att is None:
            return None
        return (bytes(att.out[0][offsets[0]:]), bytes(att.out[1][offsets[1]:]), att.done.is_set())

    def cancel(self, iid: str, attempt: int | None = None) -> int:
        """Stop matching attempts: the command is killed and the VM destroyed."""
        n = 0
        for (aid, num), att in list(self._attempts.items()):
            if aid == iid and (attempt is None or num == attempt) and not att.done.is_set():
                att.stop.set()
                n += 1
        return n

    def cancel_all(self) -> int:
        n = 0
        for att in list(self._attempts.values()):
            if not att.done.is_set():
                att.stop.set()
                n += 1
        self.node.destroy_all()
        for sid in list(self._sandboxes):
            self.sandbox_destroy(sid)
        return n

    def ack(self, iid: str, attempt: int) -> None:
        self._forget([(iid, attempt)])

    def _forget(self, keys: list[tuple[str, int]]) -> None:
        """Drop acknowledged attempts, and finished ones nobody acknowledged for an hour."""
        with self._lock:
            for iid, attempt in keys:
                self._attempts.pop((iid, attempt), None)
            cutoff = time.monotonic() - KEEP_FINISHED_S
            for key, att in list(self._attempts.items()):
                if att.done.is_set() and att.finished_at < cutoff:
                    del self._attempts[key]

    def start_many(self, requests: list[dict[str, Any]]) -> list[bool]:
        """start() for each request ({id, attempt, iteration, ids}), in order."""
        return [self.start(r["id"], r["attempt"], r["iteration"], r["ids"]) for r in requests]

    def collect(self, acks: list[tuple[str, int]], timeout_s: float = 30.0,
                linger_s: float = 0.0) -> list[dict[str, Any]]:
        """Forget the acknowledged attempts, then return every finished outcome not yet
        acknowledged (each with its id and attempt) as soon as there is one, after linger_s
        more to let others join it; [] after timeout_s. An outcome is kept until acknowledged,
        so a caller that failed to record it gets it again."""
        self._forget(acks)
        deadline = time.monotonic() + timeout_s
        with self._finished:  # checked under it: an attempt ending meanwhile wakes the wait
            while not (done := self._outcomes()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._finished.wait(left)
            until = min(deadline, time.monotonic() + linger_s)
            while (left := until - time.monotonic()) > 0:  # others may join the first
                self._finished.wait(left)
            return self._outcomes()

    def _outcomes(self) -> list[dict[str, Any]]:
        return [{**att.outcome, "id": key[0], "attempt": key[1]}
                for key, att in list(self._attempts.items())
                if att.done.is_set() and att.outcome is not None]

    def attempts(self) -> list[dict[str, Any]]:
        return [{"id": k[0], "attempt": k[1], "done": a.done.is_set()}
                for k, a in list(self._attempts.items())]

    # ---- host ------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        cap, pressure = self.node.capacity(), self.node.pressure()
        pool = self.node.pool.status() if self.node.pool else []
        warm: dict[str, int] = {}
        for row in pool:
            if row["ready"]:
                warm[row["image"]] = warm.get(row["image"], 0) + row["ready"]
        return {
            "host": self.host, "pid": os.getpid(), "accel": self.node.accel().accel,
            "capacity": asdict(cap), "pressure": asdict(pressure),
            "images": [img.name for img in self.node.store.list()],
            "buildable": self.node.store.recipe_names(),
            "running": sum(1 for a in self._attempts.values() if not a.done.is_set()),
            "vms": self.node.live(),
            "warm": warm,
            "pool_mem_mib": sum(row["mem_mib"] * row["ready"] for row in pool),
            "pool": pool,
        }

    def ping(self) -> str:
        return self.host

    # ---- interactive sandboxes -------------------------------------------------------------
    def sandbox_open(self, sid: str, image: str, cpus: int, mem_mib: int,
                     disk_mib: int | None, timeout_s: float) -> str:
        box = self.node.acquire(SandboxSpec(image, cpus, mem_mib, disk_mib))
        self._sandboxes[sid] = (box, time.monotonic() + timeout_s)
        threading.Timer(timeout_s, self.sandbox_destroy, args=(sid,)).start()
        return box.name

    def _box(self, sid: str) -> Any:
        entry = self._sandboxes.get(sid)
        if entry is None:
            raise KeyError(f"sandbox {sid} is not open on {self.host} (closed or timed out)")
        return entry

    def sandbox_exec(self, sid: str, argv: list[str], env: dict[str, str] | None = None,
                     cwd: str | None = None, stdin: bytes | None = None,
                     timeout_s: float | None = None) -> dict[str, Any]:
        box, deadline = self._box(sid)
        limit = max(0.1, deadline - time.monotonic())
        r = box.exec(argv, env=env, cwd=cwd, stdin=stdin,
                     timeout_s=min(timeout_s or limit, limit))
        return asdict(r)

    def sandbox_exec_stream(self, sid: str, argv: list[str], env: dict[str, str] | None = None,
                            cwd: str | None = None, timeout_s: float | None = None) -> Any:
        """A generator: ("out", stream, bytes) items as they come, then ("exit", result)."""
        box, deadline = self._box(sid)
        limit = max(0.1, deadline - time.monotonic())
        chunks: list[tuple[int, bytes]] = []
        cond = threading.Condition()
        result: list[Any] = []

        def sink(stream: int, data: bytes) -> None:
            with cond:
                chunks.append((stream, data))
                cond.notify()

        def work() -> None:
            try:
                r: Any = asdict(box.exec(argv, env=env, cwd=cwd, on_output=sink,
                                         timeout_s=min(timeout_s or limit, limit)))
            except Exception as err:
                r = err
            with cond:
                result.append(r)
                cond.notify()

        threading.Thread(target=work, daemon=True).start()
        while True:
            with cond:
                while not chunks and not result:
                    cond.wait()
                pending, chunks[:] = list(chunks), []
                finished = list(result)
            for stream, data in pending:
                yield ("out", stream, data)
            if finished:
                if isinstance(finished[0], Exception):
                    raise finished[0]
                yield ("exit", finished[0])
                return

    def sandbox_write(self, sid: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self._box(sid)[0].write_file(path, data, mode)

    def sandbox_read(self, sid: str, path: str) -> bytes:
        return bytes(self._box(sid)[0].read_file(path))

    def sandbox_destroy(self, sid: str) -> bool:
        entry = self._sandboxes.pop(sid, None)
        if entry is None:
            return False
        entry[0].destroy()
        return True

    def close(self) -> None:
        self.cancel_all()
        self.node.close()


def _is_bad_request(err: Exception) -> bool:
    from tryfleet.images import ImageError

    from .errors import BadRequest

    return isinstance(err, (BadRequest, ImageError, KeyError, ValueError))
