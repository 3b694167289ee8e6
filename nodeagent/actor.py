"""The node agent as a Ray actor, one per host, pinned to its Ray node, named
`tryfleet-node-<host>` in the `tryfleet` namespace (wire.NODE_ACTOR_PREFIX, wire.NAMESPACE).

It implements wire.NodeProtocol for exactly one host: every call takes and returns wire
records packed as msgpack bytes, so nothing pickled crosses between scheduler and host; a call
naming another host is refused (wire.WrongHost). The interactive-sandbox calls (the gateway's,
and the scheduler's open, extend, list and close) follow the same rule, and refuse a sandbox
that is not open here with wire.SandboxGone.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tryfleet.logs import LogSetup
from tryfleet.wire import (
    NAMESPACE,
    NODE_ACTOR_PREFIX,
    AttemptKey,
    ExecRequest,
    ProcStart,
    SandboxOpen,
    StartRequest,
    pack,
    unpack,
    unpack_list,
)

from . import exporter
from .node import NodeConfig, PoolTarget
from .service import NodeService


class NodeActor:
    """Ray-facing wrapper: wire bytes in and out, NodeService underneath."""

    def __init__(self, data_dir: str, host: str | None = None, fake: bool = False,
                 uri: str = "qemu:///system", fake_images: tuple[str, ...] = ("base",),
                 pool: tuple[str, ...] | None = None, pool_max_per_key: int = 4,
                 log: LogSetup | None = None) -> None:
        """log: how this process logs (None: as it is set up already), to its own file
        <data_dir>/logs/nodeagent-<host>.jsonl."""
        if log is not None:
            name = host or socket.gethostname()
            log.apply("nodeagent", data_dir, name=f"nodeagent-{name}", host=name)
        hypervisor = build = None
        if fake:  # a host without VMs: the guest agent in threads (see fake_hv.py)
            from .fake_hv import FakeHypervisor, make_fake_image

            for image in fake_images:
                make_fake_image(Path(data_dir), image)
            hypervisor = FakeHypervisor()

            def build(name: str) -> object:  # a simulated build: the fake image layout
                return make_fake_image(Path(data_dir), name)
        # A real host keeps warm pools (demand-driven, plus `pool` targets like "base=2");
        # a fake one only when given targets.
        targets = tuple(PoolTarget.parse(t) for t in pool or ())
        config = NodeConfig(data_dir=Path(data_dir), uri=uri, accel="tcg" if fake else None,
                            warm_pool=bool(targets) or not fake, pool_targets=targets,
                            pool_max_per_key=pool_max_per_key)
        self.svc = NodeService(config, host, hypervisor, build_image=build)

    # ---- wire.NodeProtocol -----------------------------------------------------------------
    def status_all(self) -> bytes:
        return pack(self.svc.status_all())

    def start_many(self, host: str, requests: bytes) -> bytes:
        """Packed [StartRequest] in, packed [bool] out (False: already known here)."""
        return pack(self.svc.start_many(host, unpack_list(StartRequest, requests)))

    def collect(self, host: str, acks: bytes, timeout_s: float, linger_s: float = 0.0) -> bytes:
        """The scheduler's long-poll: acknowledge (packed [AttemptKey]), then every finished
        outcome not yet acknowledged, packed [Outcome]."""
        return pack(self.svc.collect(host, unpack_list(AttemptKey, acks), timeout_s, linger_s))

    def attempts(self, host: str) -> bytes:
        return pack(self.svc.attempts(host))

    def output(self, host: str, key: bytes, out_offset: int, err_offset: int) -> bytes | None:
        got = self.svc.output(host, unpack(AttemptKey, key), out_offset, err_offset)
        return None if got is None else pack(got)

    def cancel(self, host: str, iid: str, attempt: int | None = None) -> int:
        return self.svc.cancel(host, iid, attempt)

    def cancel_all(self, host: str) -> int:
        return self.svc.cancel_all(host)

    def shutdown(self) -> None:
        self.svc.close()

    def metrics(self) -> bytes:
        """Packed wire.Exposition: this process's Prometheus metrics (exporter.py)."""
        return exporter.exposition()

    # ---- the SDK's calls -------------------------------------------------------------------
    def ping(self) -> str:
        return self.svc.ping()

    def sandbox_open(self, host: str, request: bytes) -> str:
        return self.svc.sandbox_open(host, unpack(SandboxOpen, request))

    def sandbox_list(self, host: str) -> bytes:
        """Packed [str]: the ids of the sandboxes open on this host."""
        return pack(self.svc.sandbox_list(host))

    def sandbox_extend(self, host: str, sid: str, timeout_s: float) -> None:
        self.svc.sandbox_extend(host, sid, timeout_s)

    def sandbox_exec(self, host: str, sid: str, request: bytes) -> bytes:
        return pack(self.svc.sandbox_exec(host, sid, unpack(ExecRequest, request)))

    def sandbox_exec_stream(self, host: str, sid: str, request: bytes,
                            exec_id: str = "") -> Iterator[bytes]:
        """Packed ExecChunk items; the last one carries the reply. With an exec_id,
        sandbox_exec_cancel kills the command (when its reader went away)."""
        for chunk in self.svc.sandbox_exec_stream(host, sid, unpack(ExecRequest, request),
                                                  exec_id):
            yield pack(chunk)

    def sandbox_exec_cancel(self, host: str, sid: str, exec_id: str) -> bool:
        return self.svc.sandbox_exec_cancel(host, sid, exec_id)

    def sandbox_proc_start(self, host: str, sid: str, request: bytes) -> bytes:
        """Packed ProcStart in, packed ProcInfo (with its pid) out, as soon as it runs."""
        return pack(self.svc.sandbox_proc_start(host, sid, unpack(ProcStart, request)))

    def sandbox_proc_run(self, host: str, sid: str, request: bytes, follow_id: str = "",
                         keepalive_s: float = 0.0) -> Iterator[bytes]:
        """Packed ProcEvent items: START (with its pid), OUTPUT, KEEPALIVE, END."""
        for event in self.svc.sandbox_proc_run(host, sid, unpack(ProcStart, request),
                                               follow_id, keepalive_s):
            yield pack(event)

    def sandbox_proc_list(self, host: str, sid: str) -> bytes:
        """Packed [ProcInfo]."""
        return pack(self.svc.sandbox_proc_list(host, sid))

    def sandbox_proc_follow(self, host: str, sid: str, pid: int, replay: bool = True,
                            keepalive_s: float = 0.0, follow_id: str = "") -> Iterator[bytes]:
        """Packed ProcEvent items; with a follow_id, sandbox_proc_unfollow ends them."""
        for event in self.svc.sandbox_proc_follow(host, sid, pid, replay, keepalive_s,
                                                  follow_id):
            yield pack(event)

    def sandbox_proc_unfollow(self, host: str, sid: str, follow_id: str) -> bool:
        return self.svc.sandbox_proc_unfollow(host, sid, follow_id)

    def sandbox_proc_signal(self, host: str, sid: str, pid: int, signum: int) -> None:
        self.svc.sandbox_proc_signal(host, sid, pid, signum)

    def sandbox_proc_input(self, host: str, sid: str, pid: int, data: bytes,
                           eof: bool = False) -> None:
        self.svc.sandbox_proc_input(host, sid, pid, data, eof)

    def sandbox_proc_close_stdin(self, host: str, sid: str, pid: int) -> None:
        self.svc.sandbox_proc_close_stdin(host, sid, pid)

    def sandbox_write(self, host: str, sid: str, path: str, data: bytes,
                      mode: int = 0o644, append: bool = False) -> None:
        self.svc.sandbox_write(host, sid, path, data, mode, append)

    def sandbox_read(self, host: str, sid: str, path: str, offset: int = 0,
                     length: int | None = None) -> bytes:
        """The whole file (length None), or up to `length` bytes from offset (fewer only at
        its end)."""
        return self.svc.sandbox_read(host, sid, path, offset, length)

    def sandbox_stat(self, host: str, sid: str, path: str) -> bytes:
        """Packed FileInfo."""
        return pack(self.svc.sandbox_stat(host, sid, path))

    def sandbox_list_dir(self, host: str, sid: str, path: str, depth: int = 1) -> bytes:
        """Packed Listing."""
        return pack(self.svc.sandbox_list_dir(host, sid, path, depth))

    def sandbox_mkdir(self, host: str, sid: str, path: str, parents: bool = True) -> bool:
        return self.svc.sandbox_mkdir(host, sid, path, parents)

    def sandbox_remove(self, host: str, sid: str, path: str, recursive: bool = False) -> None:
        self.svc.sandbox_remove(host, sid, path, recursive)

    def sandbox_move(self, host: str, sid: str, src: str, dst: str) -> bytes:
        """Packed FileInfo of dst."""
        return pack(self.svc.sandbox_move(host, sid, src, dst))

    def sandbox_close(self, host: str, sid: str) -> bool:
        return self.svc.sandbox_close(host, sid)


def start_node_actor(data_dir: str, host: str, node_id: str | None = None, fake: bool = False,
                     detached: bool = True, fake_images: tuple[str, ...] = ("base",),
                     pool: tuple[str, ...] | None = None, pool_max_per_key: int = 4) -> Any:
    """Create (or find) the node agent actor of `host`, pinned to Ray node `node_id`;
    pool_max_per_key bounds the warm VMs kept ready of one image and size."""
    node_id = node_id or ray.get_runtime_context().get_node_id()
    options: dict[str, Any] = {
        "name": NODE_ACTOR_PREFIX + host, "namespace": NAMESPACE, "get_if_exists": True,
        "num_cpus": 0, "max_concurrency": 256, "max_restarts": -1,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    }
    if detached:
        options["lifetime"] = "detached"
    actor: Any = ray.remote(NodeActor).options(**options).remote(
        data_dir, host, fake, fake_images=fake_images, pool=pool,
        pool_max_per_key=pool_max_per_key, log=LogSetup.from_env())
    ray.get(actor.ping.remote())
    return actor
