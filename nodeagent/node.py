"""The node agent: one per host. Acquire a VM cloned from a golden image, run, destroy.

`run_iteration` is the whole life of one iteration and always ends with the VM and its overlay
gone, whatever happened: success, failure, timeout, guest crash, or an exception on the host.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from images import BuiltImage, ImageNotBuilt, ImageStore

from .clone import Cloner
from .errors import BadRequest, Cancelled, GuestError, NodeAgentError
from .guest import GuestChannel, OutputSink
from .host import AccelReport, Capacity, Pressure, probe_accel, read_capacity, read_pressure
from .hypervisor import DOMAIN_PREFIX, DomainSpec, Hypervisor
from .reaper import ReapReport, reap, register_owner
from .records import ExecResult, IterationOutcome, IterationSpec, SandboxSpec, State
from .sandbox import Sandbox, prune_logs

log = logging.getLogger("tryfleet.nodeagent")

DEFAULT_DATA_DIR = Path("/var/lib/tryfleet")
BOOT_TIMEOUT_S = {"kvm": 30.0, "tcg": 120.0}
MAX_GET_BYTES = 64 * 1024 * 1024


def default_data_dir() -> Path:
    return Path(os.environ.get("TRYFLEET_DATA") or DEFAULT_DATA_DIR)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path
    uri: str = "qemu:///system"
    keep_failed_logs: int = 50
    accel: str | None = None  # None: probe (see host.py); "kvm" or "tcg" to skip the probe


class NodeAgent:
    def __init__(self, config: NodeConfig, hypervisor: Hypervisor | None = None,
                 reap_on_start: bool = True,
                 build_image: Callable[[str], object] | None = None) -> None:
        if hypervisor is None:
            from .libvirt_hv import LibvirtHypervisor

            hypervisor = LibvirtHypervisor(config.uri)
        self.config = config
        self.hv = hypervisor
        self.store = ImageStore(config.data_dir)
        self.cloner = Cloner()
        self.run_dir = config.data_dir / "run"
        self.logs_dir = config.data_dir / "logs"
        self.owner = register_owner(self.run_dir)
        self.reaped = ReapReport((), ())
        if reap_on_start:
            self.reaped = reap(self.hv, self.run_dir, keep=self.owner.id)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._live: dict[str, Sandbox] = {}
        self._accel: AccelReport | None = None
        self._build_image = build_image or self._build_from_recipe
        self._build_lock = threading.Lock()
        self.hostname = socket.gethostname()

    # ---- host ------------------------------------------------------------------------------
    def accel(self) -> AccelReport:
        if self._accel is None and self.config.accel is not None:
            self._accel = AccelReport(self.config.accel, "set in the node configuration", "", "",
                                      time.time())
        if self._accel is None:
            image = self._any_image()
            self._accel = probe_accel(
                self.hv, image.kernel if image else None, image.initrd if image else None,
                self.owner.dir, f"{DOMAIN_PREFIX}{self.owner.id}-canary",
                cache=self.config.data_dir / "host" / "accel.json",
            )
        return self._accel

    def _any_image(self) -> BuiltImage | None:
        images = self.store.list()
        return images[0] if images else None

    def capacity(self) -> Capacity:
        return read_capacity(self.config.data_dir)

    def pressure(self) -> Pressure:
        return read_pressure()

    # ---- sandboxes -------------------------------------------------------------------------
    def acquire(self, spec: SandboxSpec,
                should_stop: Callable[[], bool] | None = None) -> Sandbox:
        """A booted VM whose guest agent answers; raises if it cannot be had."""
        _check_sizes(spec)
        image = self.image(spec.image)
        if spec.disk_mib is not None and spec.disk_mib < image.disk_mib:
            raise BadRequest(f"disk_mib={spec.disk_mib} is smaller than image {spec.image!r} "
                             f"({image.disk_mib} MiB); ask for at least that much")
        accel = self.accel().accel
        name = f"{DOMAIN_PREFIX}{self.owner.id}-{next(self._seq)}"
        vm_dir = self.owner.dir / name
        vm_dir.mkdir(mode=0o755)
        sandbox = Sandbox(name, vm_dir, self.hv, self.logs_dir, on_destroy=self._forget)
        with self._lock:
            self._live[name] = sandbox
        try:
            overlay = vm_dir / "disk.qcow2"
            self.cloner.clone(image.rootfs, overlay, spec.disk_mib)
            self.hv.start(DomainSpec(
                name=name, vcpus=spec.cpus, mem_mib=spec.mem_mib, kernel=image.kernel,
                initrd=image.initrd, disk=overlay, backing=image.rootfs,
                console_log=sandbox.console_log, accel=accel,
                metadata={"owner": self.owner.id, "image": image.digest},
            ))
            channel = GuestChannel(self.hv.open_channel(name))
            sandbox.attach(channel)
            boot_timeout = spec.boot_timeout_s or BOOT_TIMEOUT_S[accel]
            channel.wait_ready(time.monotonic() + boot_timeout, should_stop=should_stop)
        except BaseException as err:
            kept = sandbox.destroy(keep_logs=not isinstance(err, Cancelled),
                                   details={"phase": "boot", "error": str(err)})
            if isinstance(err, GuestError):
                raise type(err)(f"{name} did not boot: {err}; console log kept in {kept}") from err
            raise
        return sandbox

    def image(self, name: str) -> BuiltImage:
        """The built image; one this host has a recipe for but has not built is built now
        (placement sends work to hosts that can build its image)."""
        try:
            return self.store.get(name)
        except ImageNotBuilt:
            with self._build_lock:
                try:
                    return self.store.get(name)
                except ImageNotBuilt:
                    log.info("building image %s on demand", name)
                    self._build_image(name)
            return self.store.get(name)

    def _build_from_recipe(self, name: str) -> object:
        from images.builder import build

        return build(name, self.store, progress=lambda line: log.info("%s", line))

    def _forget(self, sandbox: Sandbox) -> None:
        with self._lock:
            self._live.pop(sandbox.name, None)

    def live(self) -> list[str]:
        with self._lock:
            return sorted(self._live)

    def destroy_all(self) -> None:
        with self._lock:
            live = list(self._live.values())
        for sandbox in live:
            sandbox.destroy()

    def close(self) -> None:
        """Destroy what is still running and let go of this owner's directory."""
        try:
            self.destroy_all()
        finally:
            self.hv.close()
            shutil.rmtree(self.owner.dir, ignore_errors=True)

    # ---- iterations ------------------------------------------------------------------------
    def run_iteration(self, it: IterationSpec, on_output: OutputSink | None = None,
                      should_stop: Callable[[], bool] | None = None) -> IterationOutcome:
        return _IterationRun(self, it, on_output, should_stop).run()


def _check_sizes(spec: SandboxSpec) -> None:
    if spec.cpus < 1:
        raise BadRequest(f"cpus must be at least 1, got {spec.cpus}")
    if spec.mem_mib < 128:
        raise BadRequest(f"mem_mib must be at least 128 (the guest kernel needs it), "
                         f"got {spec.mem_mib}")


class _IterationRun:
    def __init__(self, node: NodeAgent, it: IterationSpec, on_output: OutputSink | None,
                 should_stop: Callable[[], bool] | None) -> None:
        self.node, self.it, self.on_output, self.should_stop = node, it, on_output, should_stop
        self.started_at = time.time()
        self.t0 = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    def _phase(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.phases.append((name, now - since))
        return now

    def run(self) -> IterationOutcome:
        it = self.it
        spec = SandboxSpec(it.image, it.cpus, it.mem_mib, it.disk_mib)
        try:
            sandbox = self.node.acquire(spec, should_stop=self.should_stop)
        except Cancelled as err:
            return self._outcome(State.CANCELLED, error=str(err))
        except NodeAgentError as err:
            if isinstance(err, BadRequest):
                raise
            return self._outcome(State.INFRA_ERROR, error=str(err))
        t = self._phase("acquire", self.t0)
        state, error, kept = State.INFRA_ERROR, None, None
        result = None
        files: list[tuple[str, bytes]] = []
        try:
            for path, data in it.put:
                sandbox.write_file(path, data)
            t = self._phase("put", t)
            result = sandbox.exec(list(it.argv), env=dict(it.env), cwd=it.cwd, stdin=it.stdin,
                                  timeout_s=it.timeout_s, max_output=it.max_output,
                                  on_output=self.on_output, should_stop=self.should_stop)
            t = self._phase("exec", t)
            state = _state_of(result, self.should_stop)
            if not result.timed_out and state is not State.CANCELLED:
                files, error = self._fetch(sandbox)
            self._phase("get", t)
        except GuestError as err:
            error = f"guest failed during the iteration: {err}"
        finally:
            keep = state in (State.FAILED, State.TIMED_OUT, State.INFRA_ERROR)
            kept = sandbox.destroy(keep_logs=keep, details={
                "state": state.value, "argv": list(it.argv), "error": error})
            if keep:
                prune_logs(self.node.logs_dir, self.node.config.keep_failed_logs)
        return self._outcome(state, result=result, error=error, files=files, kept=kept,
                             vm=sandbox.name)

    def _fetch(self, sandbox: Sandbox) -> tuple[list[tuple[str, bytes]], str | None]:
        files, problems = [], []
        for path in self.it.get:
            try:
                files.append((path, sandbox.read_file(path, MAX_GET_BYTES)))
            except GuestError as err:
                if isinstance(err, ConnectionError):
                    raise
                problems.append(f"could not fetch {path}: {err}")
        return files, "; ".join(problems) or None

    def _outcome(self, state: State, result: ExecResult | None = None, error: str | None = None,
                 files: Sequence[tuple[str, bytes]] = (), kept: Path | None = None,
                 vm: str | None = None) -> IterationOutcome:
        return IterationOutcome(
            state=state,
            exit_code=result.exit_code if result else None,
            signal=result.signal if result else None,
            stdout=result.stdout if result else b"",
            stderr=result.stderr if result else b"",
            stdout_truncated=result.stdout_truncated if result else False,
            stderr_truncated=result.stderr_truncated if result else False,
            started_at=self.started_at, ended_at=time.time(),
            duration_s=time.monotonic() - self.t0, host=self.node.hostname,
            error=error, files=tuple(files), kept_logs=kept, vm=vm, phases_s=tuple(self.phases),
        )


def _state_of(result: ExecResult, should_stop: Callable[[], bool] | None) -> State:
    if result.timed_out:
        return State.TIMED_OUT
    if result.exit_code != 0 and should_stop is not None and should_stop():
        return State.CANCELLED
    if result.exit_code is None and result.signal is None:
        return State.INFRA_ERROR
    if result.exit_code == 0:
        return State.SUCCEEDED
    return State.FAILED
