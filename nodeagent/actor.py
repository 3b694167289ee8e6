"""The node agent as a Ray actor, one per host, pinned to its Ray node.

Calls carry msgpack payloads (bytes) so nothing pickled crosses between scheduler and host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .node import NodeConfig, PoolTarget
from .service import NodeService

NAMESPACE = "tryfleet"
ACTOR_PREFIX = "tryfleet-node-"


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


class NodeActor:
    """Ray-facing wrapper: msgpack in and out, NodeService underneath."""

    def __init__(self, data_dir: str, host: str | None = None, fake: bool = False,
                 uri: str = "qemu:///system", fake_images: tuple[str, ...] = ("base",),
                 pool: tuple[str, ...] | None = None) -> None:
        hypervisor = build = None
        if fake:  # a simulated host: no VMs, the guest agent in threads (see fake_hv.py)
            from .fake_hv import FakeHypervisor, make_fake_image

            for image in fake_images:
                make_fake_image(Path(data_dir), image)
            hypervisor = FakeHypervisor()

            def build(name: str) -> object:  # a simulated build: the fake image layout
                return make_fake_image(Path(data_dir), name)
        # A real host keeps warm pools (demand-driven, plus `pool` targets like "base=2");
        # a simulated one only when given targets.
        targets = tuple(PoolTarget.parse(t) for t in pool or ())
        config = NodeConfig(data_dir=Path(data_dir), uri=uri, accel="tcg" if fake else None,
                            warm_pool=bool(targets) or not fake, pool_targets=targets)
        self.svc = NodeService(config, host, hypervisor, build_image=build)

    def start(self, payload: bytes) -> bool:
        p = unpack(payload)
        return self.svc.start(p["id"], p["attempt"], p["iteration"], p["ids"])

    def wait(self, iid: str, attempt: int, timeout_s: float) -> bytes | None:
        out = self.svc.wait(iid, attempt, timeout_s)
        return None if out is None else pack(out)

    def output(self, iid: str, attempt: int, out_offset: int, err_offset: int) -> bytes | None:
        got = self.svc.output(iid, attempt, (out_offset, err_offset))
        return None if got is None else pack(list(got))

    def cancel(self, iid: str, attempt: int | None = None) -> int:
        return self.svc.cancel(iid, attempt)

    def cancel_all(self) -> int:
        return self.svc.cancel_all()

    def ack(self, iid: str, attempt: int) -> None:
        self.svc.ack(iid, attempt)

    def start_many(self, payload: bytes) -> bytes:
        """Start several attempts in one call: a packed list of start requests in, a packed
        list of booleans (False: already known here) out."""
        return pack(self.svc.start_many(unpack(payload)))

    def collect(self, acks: bytes, timeout_s: float, linger_s: float = 0.0) -> bytes:
        """The scheduler's long-poll: acknowledge (packed [[id, attempt], ...]), then every
        finished outcome not yet acknowledged, packed."""
        return pack(self.svc.collect([(a[0], a[1]) for a in unpack(acks)], timeout_s, linger_s))

    def attempts(self) -> bytes:
        return pack(self.svc.attempts())

    def status(self) -> bytes:
        return pack(self.svc.status())

    def ping(self) -> str:
        return self.svc.ping()

    def sandbox_open(self, sid: str, image: str, cpus: int, mem_mib: int,
                     disk_mib: int | None, timeout_s: float) -> str:
        return self.svc.sandbox_open(sid, image, cpus, mem_mib, disk_mib, timeout_s)

    def sandbox_exec(self, sid: str, request: bytes) -> bytes:
        return pack(self.svc.sandbox_exec(sid, **unpack(request)))

    def sandbox_exec_stream(self, sid: str, request: bytes) -> Any:
        for item in self.svc.sandbox_exec_stream(sid, **unpack(request)):
            yield pack(list(item))

    def sandbox_write(self, sid: str, path: str, data: bytes, mode: int = 0o644) -> None:
        self.svc.sandbox_write(sid, path, data, mode)

    def sandbox_read(self, sid: str, path: str) -> bytes:
        return self.svc.sandbox_read(sid, path)

    def sandbox_close(self, sid: str) -> bool:
        return self.svc.sandbox_destroy(sid)

    def shutdown(self) -> None:
        self.svc.close()


def start_node_actor(data_dir: str, host: str, node_id: str | None = None, fake: bool = False,
                     detached: bool = True, fake_images: tuple[str, ...] = ("base",),
                     pool: tuple[str, ...] | None = None) -> Any:
    """Create (or find) the node agent actor of `host`, pinned to Ray node `node_id`."""
    node_id = node_id or ray.get_runtime_context().get_node_id()
    options: dict[str, Any] = dict(
        name=ACTOR_PREFIX + host, namespace=NAMESPACE, get_if_exists=True, num_cpus=0,
        max_concurrency=256, max_restarts=-1,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
    )
    if detached:
        options["lifetime"] = "detached"
    actor = ray.remote(NodeActor).options(**options).remote(data_dir, host, fake,
                                                            fake_images=fake_images, pool=pool)
    ray.get(actor.ping.remote())
    return actor
