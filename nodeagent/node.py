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

from tryfleet.images import BuiltImage, ImageError, ImageNotBuilt, ImageStore
from tryfleet.private import harden, private_dir
from tryfleet.wire import Capacity, Ids, Pressure

from . import exporter
from .clone import Cloner
from .cpuweight import CpuWeights
from .egress_node import EgressGrant, NodeEgress
from .endings import explain
from .errors import BadRequest, Cancelled, GuestError, NodeAgentError
from .guest import GuestChannel, OutputSink
from .host import AccelReport, probe_accel, read_capacity, read_pressure
from .hypervisor import DOMAIN_PREFIX, DomainSpec, Hypervisor, RestoreSpec
from .pool import WarmPool
from .reaper import ReapReport, reap, register_owner
from .records import ExecResult, IterationOutcome, IterationSpec, SandboxSpec, State
from .sandbox import Sandbox, prune_logs
from .snapshots import PoolKey, Slot, Snapshots

log = logging.getLogger("tryfleet.nodeagent")

DEFAULT_DATA_DIR = Path("/var/lib/tryfleet")
BOOT_TIMEOUT_S = {"kvm": 30.0, "tcg": 120.0}
MAX_GET_BYTES = 64 * 1024 * 1024
RESTORE_TIMEOUT_S = 30.0
WARM_TIMEOUT_S = 120.0


def default_data_dir() -> Path:
    return Path(os.environ.get("TRYFLEET_DATA") or DEFAULT_DATA_DIR)


@dataclass(frozen=True, slots=True)
class NodeConfig:
    data_dir: Path
    uri: str = "qemu:///system"
    keep_failed_logs: int = 50
    accel: str | None = None  # None: probe (see host.py); "kvm" or "tcg" to skip the probe
    warm_pool: bool = False  # keep VMs ready ahead (see pool.py); off for one-shot runs
    pool_targets: tuple[PoolTarget, ...] = ()  # fixed ready counts, besides the demand-driven
    pool_budget_mib: int | None = None  # guest memory all pooled VMs may hold; None: 25% of RAM
    pool_max_per_key: int = 4
    restore: bool = True  # restore saved guests instead of booting when a slot is ready


@dataclass(frozen=True, slots=True)
class PoolTarget:
    image: str
    cpus: int = 1
    mem_mib: int = 512
    disk_mib: int | None = None
    ready: int = 1

    @classmethod
    def parse(cls, text: str) -> PoolTarget:
        """`IMAGE[:CPUSxMEM_MIB]=N`, e.g. `base=2` or `base:2x1024=1`."""
        try:
            what, _, count = text.partition("=")
            image, _, size = what.partition(":")
            cpus, mem = (size.split("x") if size else ("1", "512"))
            target = cls(image, int(cpus), int(mem), None, int(count or "1"))
        except ValueError:
            raise BadRequest(f"bad pool target {text!r}: write IMAGE[:CPUSxMEM_MIB]=N, "
                             "e.g. base=2 or base:2x1024=1") from None
        if not image or target.ready < 0:
            raise BadRequest(f"bad pool target {text!r}: write IMAGE[:CPUSxMEM_MIB]=N")
        return target


class NodeAgent:
    def __init__(self, config: NodeConfig, hypervisor: Hypervisor | None = None,
                 reap_on_start: bool = True,
                 build_image: Callable[[str], object] | None = None,
                 host: str | None = None) -> None:
        """host: the name this host goes by in the fleet (its metrics' `host` label); this
        machine's hostname unless given."""
        if hypervisor is None:
            from .libvirt_hv import LibvirtHypervisor

            hypervisor = LibvirtHypervisor(config.uri)
        self.config = config
        self.hv = hypervisor
        self.store = ImageStore(config.data_dir)
        self.cloner = Cloner()
        self.run_dir = config.data_dir / "run"
        self.logs_dir = config.data_dir / "logs"
        harden(config.data_dir)  # outputs, kept logs and records: their owner's only
        private_dir(self.logs_dir)
        self.owner = register_owner(self.run_dir)
        self.reaped = ReapReport((), ())
        if reap_on_start:
            self.reaped = reap(self.hv, self.run_dir, keep=self.owner.id)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._live: dict[str, Sandbox] = {}
        self._accel: AccelReport | None = None
        self._accel_lock = threading.Lock()
        self._build_image = build_image or self._build_from_recipe
        self._build_lock = threading.Lock()
        self.hostname = socket.gethostname()
        self.label = host or self.hostname
        self.egress = NodeEgress(config.data_dir, self.label)
        self._snapshots: Snapshots | None = None
        self._snapshots_lock = threading.Lock()
        self.cpu_weights = CpuWeights(self.hv, self._live_boxes)
        self.cpu_weights.start()
        self.pool: WarmPool | None = None
        if config.warm_pool:
            self.pool = WarmPool(self._fill, self._pool_budget(), self._pool_targets(),
                                 max_per_key=config.pool_max_per_key)

    def _pool_budget(self) -> int:
        if self.config.pool_budget_mib is not None:
            return self.config.pool_budget_mib
        return self.capacity().mem_mib // 4

    def _pool_targets(self) -> dict[PoolKey, int]:
        out = {}
        for t in self.config.pool_targets:
            try:
                out[self._key(SandboxSpec(t.image, t.cpus, t.mem_mib, t.disk_mib))] = t.ready
            except (NodeAgentError, ImageError) as err:  # an unknown image, a failed build
                log.warning("warm pool target %s left out: %s", t, err)
        return out

    def _key(self, spec: SandboxSpec, image: BuiltImage | None = None) -> PoolKey:
        image = image or self.image(spec.image)
        return PoolKey(spec.image, image.digest, spec.cpus, spec.mem_mib, spec.disk_mib)

    @property
    def snapshots(self) -> Snapshots | None:
        # One instance per agent, whichever thread asks first (the pool's refill or a miss):
        # it alone knows which slots are in use.
        with self._snapshots_lock:
            if self._snapshots is None and self.config.restore:
                snaps = Snapshots(self.config.data_dir / "snapshots", self.accel().accel)
                for folder in snaps.prune({img.digest for img in self.store.list()}):
                    log.info("removed saved guests of an image build no longer current: %s",
                             folder)
                self._snapshots = snaps
            return self._snapshots

    # ---- host ------------------------------------------------------------------------------
    def accel(self) -> AccelReport:
        with self._accel_lock:  # one probe (one canary domain name) per agent
            if self._accel is None and self.config.accel is not None:
                self._accel = AccelReport(self.config.accel, "set in the node configuration",
                                          "", "", time.time())
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
    def acquire(self, spec: SandboxSpec, should_stop: Callable[[], bool] | None = None, *,
                ids: Ids | None = None, sandbox: str = "") -> Sandbox:
        """A VM whose guest agent answers: from the warm pool, else restored from a saved
        guest, else booted. One granted egress (spec.egress: its rules; ids and sandbox say
        whose it is, for the audit) is always booted: a pooled or saved guest has no NIC.
        Raises if it cannot be had."""
        t0 = time.monotonic()
        check_sizes(spec, self.capacity())
        image = self.image(spec.image)
        if spec.disk_mib is not None and spec.disk_mib < image.disk_mib:
            raise BadRequest(f"disk_mib={spec.disk_mib} is smaller than image {spec.image!r} "
                             f"({image.disk_mib} MiB); ask for at least that much")
        key = self._key(spec, image)
        box = None
        if spec.egress:
            grant = EgressGrant(tuple(spec.egress), ids or Ids(), sandbox)
            box = self._boot(key, image, spec.boot_timeout_s, should_stop, grant)
        elif self.pool is not None and (box := self.pool.take(key)) is not None:
            box.origin = "pool"
        if box is None:
            box = self._restore_any(key, image, should_stop) \
                or self._boot(key, image, spec.boot_timeout_s, should_stop)
        exporter.started(self.label, spec.image, box.origin, time.monotonic() - t0)
        return box

    def _fill(self, key: PoolKey, should_stop: Callable[[], bool]) -> Sandbox:
        """One VM for the warm pool: restored when a slot is (or can be made) ready."""
        image = self.image(key.image)
        box = self._restore_any(key, image, should_stop)
        if box is None and self.snapshots is not None and self.snapshots.can_make(key):
            self._make_slot(key, image, should_stop)
            box = self._restore_any(key, image, should_stop)
        return box or self._boot(key, image, None, should_stop)

    def _new_sandbox(self, name: str, on_destroy: Callable[[Sandbox], None] | None = None
                     ) -> Sandbox:
        vm_dir = self.owner.dir / f"vm-{next(self._seq)}"
        vm_dir.mkdir(mode=0o711)  # QEMU reaches its overlay (0600, libvirt hands it over)

        def forget(box: Sandbox) -> None:
            self._forget(box)
            if on_destroy is not None:
                on_destroy(box)

        sandbox = Sandbox(name, vm_dir, self.hv, self.logs_dir, on_destroy=forget)
        sandbox.host = self.label
        with self._lock:
            self._live[vm_dir.name] = sandbox
        return sandbox

    def _boot(self, key: PoolKey, image: BuiltImage, boot_timeout_s: float | None,
              should_stop: Callable[[], bool] | None,
              egress: EgressGrant | None = None) -> Sandbox:
        name = f"{DOMAIN_PREFIX}{self.owner.id}-{next(self._seq)}"
        def detach(_box: Sandbox) -> None:  # also when its boot failed
            self.egress.detach(name)

        sandbox = self._new_sandbox(name, on_destroy=None if egress is None else detach)
        sandbox.origin = "boot"
        try:
            overlay = sandbox.vm_dir / "disk.qcow2"
            self.cloner.clone(image.rootfs, overlay, key.disk_mib)
            sock = None if egress is None else self.egress.attach(name, egress)
            self._start_and_wait(sandbox, key, image, overlay, image.rootfs, boot_timeout_s,
                                 should_stop, sock)
        except BaseException as err:
            kept = sandbox.destroy(keep_logs=not isinstance(err, Cancelled),
                                   details={"phase": "boot", "error": str(err)})
            if isinstance(err, GuestError):
                raise type(err)(f"{sandbox.name} did not boot: {err}; console log kept in "
                                f"{kept}") from err
            raise
        return sandbox

    def _start_and_wait(self, sandbox: Sandbox, key: PoolKey, image: BuiltImage, disk: Path,
                        backing: Path, boot_timeout_s: float | None,
                        should_stop: Callable[[], bool] | None,
                        egress_socket: Path | None = None) -> None:
        accel = self.accel().accel
        self.hv.start(DomainSpec(
            name=sandbox.name, vcpus=key.cpus, mem_mib=key.mem_mib, kernel=image.kernel,
            initrd=image.initrd, disk=disk, backing=backing,
            console_log=sandbox.console_log, accel=accel,
            metadata={"owner": self.owner.id, "image": image.digest},
            egress_socket=egress_socket,
        ))
        channel = GuestChannel(self.hv.open_channel(sandbox.name))
        sandbox.attach(channel)
        channel.wait_ready(time.monotonic() + (boot_timeout_s or BOOT_TIMEOUT_S[accel]),
                           should_stop=should_stop)

    def _make_slot(self, key: PoolKey, image: BuiltImage,
                   should_stop: Callable[[], bool] | None = None) -> None:
        """Boot a guest once and save it as a new slot (see snapshots.py)."""
        snaps = self.snapshots
        assert snaps is not None
        slot = snaps.new_slot(key)
        box = Sandbox(slot.name, slot.dir, self.hv, self.logs_dir)
        box.host = self.label
        try:
            self.cloner.clone(image.rootfs, slot.disk, key.disk_mib)
            self._start_and_wait(box, key, image, slot.disk, image.rootfs, None, should_stop)
            if image.warm:
                _warm(box, image, should_stop)
            box.channel.close()  # the guest goes back to waiting for a host: save it so
            self.hv.save(slot.name, slot.dir / "state.tmp")
            (slot.dir / "state.tmp").rename(slot.state)
        except BaseException:
            try:
                self.hv.destroy(slot.name)
            finally:
                snaps.abandon(slot)
            raise
        snaps.finish(slot)
        log.info("saved %s for restores of %s", slot.name, key.image)

    def _restore_any(self, key: PoolKey, image: BuiltImage,
                     should_stop: Callable[[], bool] | None) -> Sandbox | None:
        """A VM restored from a free slot of `key`; None when there is none (or it failed:
        the slot is dropped and the caller boots instead)."""
        snaps = self.snapshots
        slot = snaps.take(key) if snaps is not None else None
        if slot is None:
            return None
        assert snaps is not None
        try:
            return self._restore(slot, image, should_stop)
        except Cancelled:
            snaps.release(slot)
            raise
        except NodeAgentError as err:
            log.warning("restore of %s failed (%s); dropping that slot", slot.name, err)
            snaps.discard(slot)
            return None

    def _restore(self, slot: Slot, image: BuiltImage,
                 should_stop: Callable[[], bool] | None) -> Sandbox:
        snaps = self.snapshots
        assert snaps is not None
        sandbox = self._new_sandbox(slot.name, on_destroy=lambda _box: snaps.release(slot))
        sandbox.origin = "restore"
        try:
            overlay = sandbox.vm_dir / "disk.qcow2"
            self.cloner.clone(slot.disk, overlay)
            # The console log starts with the slot's boot; the restored guest appends to it.
            boot_log = slot.dir / "console.log"
            sandbox.console_log.write_bytes(
                (boot_log.read_bytes() if boot_log.exists() else b"")
                + f"\n[tryfleet: restored from {slot.name}]\n".encode())
            self.hv.restore(slot.state, RestoreSpec(
                disk=overlay, chain=(slot.disk, image.rootfs), console_log=sandbox.console_log,
                metadata={"owner": self.owner.id, "image": image.digest}))
            channel = GuestChannel(self.hv.open_channel(slot.name))
            sandbox.attach(channel)
            channel.wait_ready(time.monotonic() + RESTORE_TIMEOUT_S, interval_s=0.05,
                               should_stop=should_stop)
            channel.refresh(os.urandom(64))
        except BaseException:
            sandbox.destroy(keep_logs=False)
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
        from tryfleet.images.builder import build

        return build(name, self.store, progress=lambda line: log.info("%s", line))

    def _forget(self, sandbox: Sandbox) -> None:
        with self._lock:
            self._live.pop(sandbox.vm_dir.name, None)

    def _live_boxes(self) -> list[Sandbox]:
        with self._lock:
            return list(self._live.values())

    def live(self) -> list[str]:
        """Names of this agent's VMs: running iterations, sandboxes, and pooled ones."""
        return sorted(box.name for box in self._live_boxes())

    def destroy_all(self) -> None:
        """The kill switch: every VM goes, pooled ones too, and the pools stay empty until
        work asks for VMs again."""
        if self.pool is not None:
            self.pool.drain()
        for sandbox in self._live_boxes():
            sandbox.destroy()

    def close(self) -> None:
        """Destroy what is still running and let go of this owner's directory."""
        try:
            self.cpu_weights.close()
            if self.pool is not None:
                self.pool.close()
            self.destroy_all()
        finally:
            self.egress.close()
            self.hv.close()
            shutil.rmtree(self.owner.dir, ignore_errors=True)

    # ---- iterations ------------------------------------------------------------------------
    def run_iteration(self, it: IterationSpec, on_output: OutputSink | None = None,
                      should_stop: Callable[[], bool] | None = None,
                      ids: Ids | None = None) -> IterationOutcome:
        return _IterationRun(self, it, on_output, should_stop, ids).run()


def _warm(box: Sandbox, image: BuiltImage, should_stop: Callable[[], bool] | None) -> None:
    """The image's warm-up command, in a guest about to be saved: what it reads stays in the
    page cache of every guest restored from it. A warm-up that fails costs only speed."""
    r = box.exec(list(image.warm), timeout_s=WARM_TIMEOUT_S, max_output=64 * 1024,
                 should_stop=should_stop)
    if should_stop is not None and should_stop():
        raise Cancelled(f"saving a guest of {image.name} was stopped during its warm-up")
    if r.exit_code != 0:
        log.warning("warm-up %s of image %s failed (exit %s%s): %s; saving the guest anyway",
                    list(image.warm), image.name, r.exit_code,
                    ", timed out" if r.timed_out else "", r.stderr[-500:].decode(errors="replace"))


def check_sizes(spec: SandboxSpec, host: Capacity) -> None:
    """BadRequest for a VM size no VM on this host can ever have, before any VM starts."""
    if spec.cpus < 1:
        raise BadRequest(f"cpus must be at least 1, got {spec.cpus}")
    if spec.mem_mib < 128:
        raise BadRequest(f"mem_mib must be at least 128 (the guest kernel needs it), "
                         f"got {spec.mem_mib}")
    if spec.mem_mib > host.mem_mib:
        raise BadRequest(f"a guest of {spec.mem_mib} MiB (--mem-mib, mem_mib) cannot run on "
                         f"{host.hostname}: it has {host.mem_mib} MiB of memory in all. Ask for "
                         f"at most {host.mem_mib} MiB, or run it on a bigger host")


class _IterationRun:
    def __init__(self, node: NodeAgent, it: IterationSpec, on_output: OutputSink | None,
                 should_stop: Callable[[], bool] | None, ids: Ids | None = None) -> None:
        self.node, self.it, self.on_output, self.should_stop = node, it, on_output, should_stop
        self.ids = ids
        self.started_at = time.time()
        self.t0 = time.monotonic()
        self.phases: list[tuple[str, float]] = []

    def _phase(self, name: str, since: float) -> float:
        now = time.monotonic()
        self.phases.append((name, now - since))
        return now

    def run(self) -> IterationOutcome:
        it = self.it
        spec = SandboxSpec(it.image, it.cpus, it.mem_mib, it.disk_mib, egress=it.egress)
        try:
            sandbox = self.node.acquire(spec, should_stop=self.should_stop, ids=self.ids)
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
            error = explain(state, result, it.timeout_s, it.mem_mib, sandbox.console_log)
            if not result.timed_out and state is not State.CANCELLED:
                files, problems = self._fetch(sandbox)
                error = "; ".join(e for e in (error, problems) if e) or None
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
