"""The node agent of one host as a long-lived service: attempts run in threads, and their
outcomes are kept until the scheduler collects them, so a scheduler that restarts can reattach
instead of losing work.

Plain Python over `tryfleet.wire` records; `actor.py` makes it a Ray actor pinned to its node
and turns the records into bytes. Every per-host call names its host, as wire.NodeProtocol says,
and a call that names another host is refused (wire.WrongHost): one service, one host.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from tryfleet import errors, logs
from tryfleet.wire import (
    AttemptInfo,
    AttemptKey,
    ExecChunk,
    ExecReply,
    ExecRequest,
    Failure,
    FileInfo,
    HostStatus,
    Ids,
    IterationSpec,
    Listing,
    Outcome,
    Output,
    ProcEvent,
    ProcInfo,
    ProcStart,
    SandboxOpen,
    StartRequest,
    State,
    WrongHost,
)

from .hypervisor import Hypervisor
from .interactive import OpenSandboxes
from .node import NodeAgent, NodeConfig
from .records import IterationOutcome, SandboxSpec

log = logging.getLogger("tryfleet.nodeagent")
KEEP_FINISHED_S = 3600.0


@dataclass
class _Attempt:
    key: AttemptKey
    ids: Ids
    stop: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: Outcome | None = None
    out: list[bytearray] = field(default_factory=lambda: [bytearray(), bytearray()])
    finished_at: float = 0.0


def failure_of(err: BaseException) -> Failure:
    """Why an attempt that raised ended in INFRA_ERROR. BAD_REQUEST, never tried again, only
    for a request that can never run as given: the BadRequest family (the node's BadRequest,
    RecipeError, UnknownImage). Anything else (an image build that failed, a guest that sent
    nonsense, a hypervisor error, a bug) is INFRA: it may work next time, elsewhere."""
    return Failure.BAD_REQUEST if isinstance(err, errors.BadRequest) else Failure.INFRA


def _outcome(key: AttemptKey, host: str, o: IterationOutcome, stopped: bool) -> Outcome:
    state = State.CANCELLED if stopped and o.state is not State.SUCCEEDED else o.state
    return Outcome(
        key.id, key.attempt, state, host, exit_code=o.exit_code, signal=o.signal,
        stdout=o.stdout, stderr=o.stderr, stdout_truncated=o.stdout_truncated,
        stderr_truncated=o.stderr_truncated, started_at=o.started_at, ended_at=o.ended_at,
        duration_s=o.duration_s, error=o.error,
        failure=Failure.INFRA if state is State.INFRA_ERROR else None, vm=o.vm,
        kept_logs=str(o.kept_logs) if o.kept_logs else None,
        stdout_bytes=len(o.stdout), stdout_sha256=hashlib.sha256(o.stdout).hexdigest(),
        stderr_bytes=len(o.stderr), stderr_sha256=hashlib.sha256(o.stderr).hexdigest())


class NodeService:
    def __init__(self, config: NodeConfig, host: str | None = None,
                 hypervisor: Hypervisor | None = None,
                 build_image: Callable[[str], object] | None = None) -> None:
        self.node = NodeAgent(config, hypervisor, build_image=build_image, host=host)
        self.host = host or self.node.hostname
        self._attempts: dict[AttemptKey, _Attempt] = {}
        self.boxes = OpenSandboxes(self.host)
        self._lock = threading.Lock()
        self._finished = threading.Condition()  # notified whenever an attempt ends

    def _check(self, host: str) -> None:
        if host != self.host:
            raise WrongHost(f"this node agent serves host {self.host!r}, not {host!r}")

    # ---- attempts --------------------------------------------------------------------------
    def start_many(self, host: str, requests: Sequence[StartRequest]) -> list[bool]:
        """Start each attempt in the background, in order; False for one already known here."""
        self._check(host)
        return [self._start(r) for r in requests]

    def _start(self, req: StartRequest) -> bool:
        key = AttemptKey(req.id, req.attempt)
        with self._lock:
            if key in self._attempts:
                return False
            att = self._attempts[key] = _Attempt(key, req.ids)
        threading.Thread(target=self._run, args=(att, req.spec), daemon=True,
                         name=f"attempt-{req.id}-{req.attempt}").start()
        return True

    def _run(self, att: _Attempt, spec: IterationSpec) -> None:
        def on_output(stream: int, data: bytes) -> None:
            att.out[stream - 1] += data

        # its own thread: the attempt's ids bound for all it logs (a thread inherits none)
        with logs.bind(**logs.ids_of(att.ids)):
            log.debug("attempt started in image %s", spec.image)
            try:
                outcome = _outcome(att.key, self.host, self.node.run_iteration(
                    spec, on_output=on_output, should_stop=att.stop.is_set, ids=att.ids),
                    att.stop.is_set())
            except Exception as err:  # a request this host can never run, or a failure
                outcome = self._failed(att, err)
            log.info("attempt ended %s in %.3f s (exit %s)", outcome.state.value,
                     outcome.duration_s or 0.0, outcome.exit_code,
                     extra={"state": outcome.state.value, "exit_code": outcome.exit_code,
                            "duration_s": outcome.duration_s, "vm": outcome.vm})
        att.outcome = outcome
        att.finished_at = time.monotonic()
        att.done.set()
        with self._finished:
            self._finished.notify_all()

    def _failed(self, att: _Attempt, err: Exception) -> Outcome:
        failure = failure_of(err)
        if failure is Failure.BAD_REQUEST:
            log.warning("attempt %s refused: %s", att.key, err)
        else:
            log.exception("attempt %s failed on the host", att.key)
        stopped = att.stop.is_set()
        return Outcome(att.key.id, att.key.attempt,
                       State.CANCELLED if stopped else State.INFRA_ERROR, self.host,
                       error=f"{type(err).__name__}: {err}", failure=None if stopped else failure)

    def collect(self, host: str, acks: Sequence[AttemptKey], timeout_s: float = 30.0,
                linger_s: float = 0.0) -> list[Outcome]:
        """Forget the acknowledged attempts, then return every finished outcome not yet
        acknowledged as soon as there is one, after linger_s more to let others join it; []
        after timeout_s. An outcome is kept until acknowledged, so a caller that failed to
        record it gets it again."""
        self._check(host)
        self._forget(acks)
        deadline = time.monotonic() + timeout_s
        with self._finished:  # checked under it: an attempt ending meanwhile wakes the wait
            while not self._outcomes():
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._finished.wait(left)
            until = min(deadline, time.monotonic() + linger_s)
            while (left := until - time.monotonic()) > 0:  # others may join the first
                self._finished.wait(left)
            return self._outcomes()

    def _forget(self, keys: Sequence[AttemptKey]) -> None:
        """Drop acknowledged attempts, and finished ones nobody acknowledged for an hour."""
        with self._lock:
            for key in keys:
                self._attempts.pop(key, None)
            cutoff = time.monotonic() - KEEP_FINISHED_S
            for key, att in list(self._attempts.items()):
                if att.done.is_set() and att.finished_at < cutoff:
                    del self._attempts[key]

    def _outcomes(self) -> list[Outcome]:
        return [att.outcome for att in list(self._attempts.values())
                if att.done.is_set() and att.outcome is not None]

    def attempts(self, host: str) -> list[AttemptInfo]:
        self._check(host)
        return [AttemptInfo(k.id, k.attempt, a.done.is_set())
                for k, a in list(self._attempts.items())]

    def output(self, host: str, key: AttemptKey, out_offset: int = 0,
               err_offset: int = 0) -> Output | None:
        """Live output past the given offsets, and whether the attempt has finished; None for
        an attempt unknown here."""
        self._check(host)
        att = self._attempts.get(key)
        if att is None:
            return None
        return Output(bytes(att.out[0][out_offset:]), bytes(att.out[1][err_offset:]),
                      att.done.is_set())

    def cancel(self, host: str, iid: str, attempt: int | None = None) -> int:
        """Stop matching attempts: the command is killed and the VM destroyed."""
        self._check(host)
        n = 0
        for key, att in list(self._attempts.items()):
            if key.id == iid and attempt in (None, key.attempt) and not att.done.is_set():
                att.stop.set()
                n += 1
        return n

    def cancel_all(self, host: str) -> int:
        """The kill switch: every attempt stopped, every VM and sandbox destroyed."""
        self._check(host)
        n = 0
        for att in list(self._attempts.values()):
            if not att.done.is_set():
                att.stop.set()
                n += 1
        self.node.destroy_all()
        self.boxes.close_all()
        return n

    # ---- host ------------------------------------------------------------------------------
    def status(self) -> HostStatus:
        node = self.node
        return HostStatus(
            host=self.host, pid=os.getpid(), accel=node.accel().accel,
            capacity=node.capacity(), pressure=node.pressure(),
            images=tuple(img.name for img in node.store.list()),
            buildable=tuple(node.store.recipe_names()),
            running=sum(1 for a in list(self._attempts.values()) if not a.done.is_set()),
            vms=tuple(node.live()), pool=tuple(node.pool.status() if node.pool else ()))

    def status_all(self) -> dict[str, HostStatus]:
        return {self.host: self.status()}

    def ping(self) -> str:
        return self.host

    # ---- interactive sandboxes (each call refused with wire.SandboxGone once it is not open)
    def sandbox_open(self, host: str, req: SandboxOpen) -> str:
        """A VM held as sandbox `req.sid` for up to req.timeout_s; its VM's name. Asked again
        for a sandbox it holds, the same VM."""
        self._check(host)
        vm = self.boxes.vm_of(req.sid)
        if vm is not None:
            return vm
        with logs.bind(**logs.ids_of(req.ids), sandbox=req.sid):
            box = self.node.acquire(SandboxSpec(req.image, req.cpus, req.mem_mib, req.disk_mib,
                                                egress=req.egress), ids=req.ids, sandbox=req.sid)
            self.boxes.add(req.sid, box, req.timeout_s)
            log.info("sandbox %s open in %s (%s)", req.sid, box.name, box.origin)
        return box.name

    def sandbox_list(self, host: str) -> list[str]:
        """The ids of the sandboxes open here."""
        self._check(host)
        return self.boxes.ids()

    def sandbox_extend(self, host: str, sid: str, timeout_s: float) -> None:
        self._check(host)
        self.boxes.extend(sid, timeout_s)

    def sandbox_exec(self, host: str, sid: str, req: ExecRequest) -> ExecReply:
        self._check(host)
        with logs.bind(sandbox=sid):
            return self.boxes.exec(sid, req)

    def sandbox_exec_stream(self, host: str, sid: str, req: ExecRequest,
                            exec_id: str = "") -> Iterator[ExecChunk]:
        """ExecChunk items with output as it comes, then one carrying the reply; with an
        exec_id, sandbox_exec_cancel kills it."""
        self._check(host)
        return logs.bound_steps(self.boxes.exec_stream(sid, req, exec_id), sandbox=sid)

    def sandbox_exec_cancel(self, host: str, sid: str, exec_id: str) -> bool:
        self._check(host)
        return self.boxes.cancel_exec(sid, exec_id)

    # ---- processes that outlive the call that started them (each refused with
    # wire.ProcessGone when the pid names none of the sandbox's, or one that ended when it
    # must run)
    def sandbox_proc_start(self, host: str, sid: str, req: ProcStart) -> ProcInfo:
        """Start a process; returns as soon as it runs, with its pid in the guest."""
        self._check(host)
        return self.boxes.proc_start(sid, req)

    def sandbox_proc_run(self, host: str, sid: str, req: ProcStart, follow_id: str = "",
                         keepalive_s: float = 0.0) -> Iterator[ProcEvent]:
        """Start a process and follow it: START (with its pid), OUTPUT, KEEPALIVE, END."""
        self._check(host)
        return self.boxes.proc_run(sid, req, follow_id, keepalive_s)

    def sandbox_proc_list(self, host: str, sid: str) -> list[ProcInfo]:
        """The processes running, and the last ones that ended, oldest first."""
        self._check(host)
        return self.boxes.proc_list(sid)

    def sandbox_proc_follow(self, host: str, sid: str, pid: int, replay: bool = True,
                            keepalive_s: float = 0.0,
                            follow_id: str = "") -> Iterator[ProcEvent]:
        """A process's events: START, its output (from its start, as far as it is kept, with
        replay), KEEPALIVE after keepalive_s (> 0) of silence, END once it ended. With a
        follow_id, sandbox_proc_unfollow ends the stream (the process runs on)."""
        self._check(host)
        return self.boxes.proc_follow(sid, pid, replay, keepalive_s, follow_id)

    def sandbox_proc_unfollow(self, host: str, sid: str, follow_id: str) -> bool:
        self._check(host)
        return self.boxes.proc_unfollow(sid, follow_id)

    def sandbox_proc_signal(self, host: str, sid: str, pid: int, signum: int) -> None:
        self._check(host)
        self.boxes.proc_signal(sid, pid, signum)

    def sandbox_proc_input(self, host: str, sid: str, pid: int, data: bytes,
                           eof: bool = False) -> None:
        """Data for its stdin (started with ProcStart.stdin); eof closes its stdin after."""
        self._check(host)
        self.boxes.proc_input(sid, pid, data, eof)

    def sandbox_proc_close_stdin(self, host: str, sid: str, pid: int) -> None:
        self._check(host)
        self.boxes.proc_input(sid, pid, b"", eof=True)

    def sandbox_write(self, host: str, sid: str, path: str, data: bytes,
                      mode: int = 0o644, append: bool = False) -> None:
        self._check(host)
        self.boxes.write(sid, path, data, mode, append)

    def sandbox_read(self, host: str, sid: str, path: str, offset: int = 0,
                     length: int | None = None) -> bytes:
        self._check(host)
        return self.boxes.read(sid, path, offset, length)

    def sandbox_stat(self, host: str, sid: str, path: str) -> FileInfo:
        self._check(host)
        return self.boxes.stat(sid, path)

    def sandbox_list_dir(self, host: str, sid: str, path: str, depth: int = 1) -> Listing:
        self._check(host)
        return self.boxes.list_dir(sid, path, depth)

    def sandbox_mkdir(self, host: str, sid: str, path: str, parents: bool = True) -> bool:
        self._check(host)
        return self.boxes.mkdir(sid, path, parents)

    def sandbox_remove(self, host: str, sid: str, path: str, recursive: bool = False) -> None:
        self._check(host)
        self.boxes.remove(sid, path, recursive)

    def sandbox_move(self, host: str, sid: str, src: str, dst: str) -> FileInfo:
        self._check(host)
        return self.boxes.move(sid, src, dst)

    def sandbox_close(self, host: str, sid: str) -> bool:
        self._check(host)
        with logs.bind(sandbox=sid):
            return self.boxes.close(sid)

    def close(self) -> None:
        self.cancel_all(self.host)
        self.node.close()
