"""What the hostile-guest tests share: a real fleet (vmfleet.py) and the checks every attack
ends with. Contained: the attack's state and error say what happened; nothing left behind:
no domain or VM folder of the fleet's node agent that it does not hold (a pooled VM or an open
sandbox); the host side survives: the node agent, the scheduler and the gateway answer, from
the processes they ran in before the attack (the node actor restarts on a crash, which would
hide one), and a neighbour sandbox on the same host still runs commands."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import ray

import tryfleet
from tests.waiting import until
from tryfleet.gateway.keys import Scope
from tryfleet.scheduler.records import Iteration, Result

from .conftest import domains_of
from .vmfleet import VmFleet

GUEST = {"image": "base", "cpus": 1, "mem_mib": 256, "timeout_s": 900}


def _node_facts(actor: Any) -> tuple[int, str, str]:
    return (os.getpid(), actor.svc.node.owner.id, str(actor.svc.node.owner.dir))


def _held(actor: Any) -> tuple[list[str], list[str]]:
    """The VMs (names) and VM folders the node agent holds: pooled, running, open."""
    live = list(actor.svc.node._live.items())
    return [box.name for _, box in live], [folder for folder, _ in live]


def _vm_dir_of(actor: Any, sid: str) -> str:
    name = actor.svc.boxes.vm_of(sid)
    return next(str(b.vm_dir) for b in actor.svc.node._live.values() if b.name == name)


@dataclass
class Hostile:
    fleet: VmFleet
    token: str
    http: httpx.Client = field(init=False)
    pids: dict[str, int] = field(init=False)
    owner: str = field(init=False)
    owner_dir: Path = field(init=False)
    neighbour: str = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.fleet.url, timeout=600,
                                 headers={"Authorization": f"Bearer {self.token}"})
        self.sdk = tryfleet.connect(self.fleet.url, self.token)
        node_pid, self.owner, owner_dir = ray.get(
            self.fleet.node.__ray_call__.remote(_node_facts))
        self.owner_dir = Path(owner_dir)
        sched, gateway = self.fleet.actors
        self.pids = {"node agent": node_pid,
                     "scheduler": ray.get(sched.ping.remote())["pid"],
                     "gateway": ray.get(gateway.ping.remote())["pid"]}
        self.neighbour = self.open()

    @classmethod
    def start(cls, fleet: VmFleet, tenant: str = "acme") -> Hostile:
        _, token = fleet.keys.create(tenant, frozenset({Scope.SANDBOX, Scope.BATCH,
                                                        Scope.READ}), created_by="test")
        return cls(fleet, token)

    def close(self) -> None:
        self.http.delete(f"/v1/sandboxes/{self.neighbour}")
        self.http.close()

    # ---- attacks ---------------------------------------------------------------------------
    def run(self, script: str, timeout_s: float = 60, **kw: Any) -> Result:
        """One iteration of `sh -c script` in a fresh 256 MiB guest."""
        return self.sdk.run(Iteration(image="base", command=("sh", "-c", script), cpus=1,
                                      mem_mib=256, timeout_s=timeout_s, **kw))

    def open(self) -> str:
        r = self.http.post("/v1/sandboxes", json=GUEST)
        assert r.status_code == 201, r.text
        sid: str = r.json()["id"]
        return sid

    @contextlib.contextmanager
    def sandbox(self) -> Iterator[str]:
        """A sandbox of its own, closed afterwards, its VM gone."""
        sid = self.open()
        vm = self.vm_of(sid)
        try:
            yield sid
        finally:
            self.http.delete(f"/v1/sandboxes/{sid}")
        until(lambda: vm not in domains_of({self.owner}), timeout_s=60,
              explain=lambda: domains_of({self.owner}))

    def exec(self, sid: str, script: str, timeout_s: float = 60, **kw: Any) -> httpx.Response:
        return self.http.post(f"/v1/sandboxes/{sid}/exec", json={
            "argv": ["sh", "-c", script], "timeout_s": timeout_s, **kw})

    def put(self, sid: str, path: str, data: bytes) -> None:
        r = self.http.put(f"/v1/sandboxes/{sid}/files", params={"path": path}, content=data)
        assert r.status_code == 200, r.text

    def vm_of(self, sid: str) -> str:
        name: str = ray.get(self.fleet.node.__ray_call__.remote(
            lambda actor: actor.svc.boxes.vm_of(sid)))
        return name

    def vm_dir_of(self, sid: str) -> Path:
        return Path(ray.get(self.fleet.node.__ray_call__.remote(_vm_dir_of, sid)))

    # ---- after every attack ----------------------------------------------------------------
    def leftovers(self) -> list[str]:
        """Domains and VM folders of this fleet's node agent that it does not hold, and the
        network namespaces and taps of egress guests it no longer runs."""
        names, folders = ray.get(self.fleet.node.__ray_call__.remote(_held))
        extra = [d for d in domains_of({self.owner}) if d not in names]
        extra += [p.name for p in self.owner_dir.iterdir() if p.is_dir() and p.name not in
                  folders]
        seqs = {n.rsplit("-", 1)[1] for n in names if n.startswith(f"tryfleet-{self.owner}-")}
        extra += [n for n in self.networks() if n.rsplit("-", 1)[1] not in seqs]
        return extra + self.loose_taps()

    def networks(self) -> list[str]:
        """The egress network namespaces of this fleet's node agent (guestnet.py)."""
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return re.findall(rf"^(tfeg-{self.owner}-\d+)", out, re.MULTILINE)

    def loose_taps(self) -> list[str]:
        """Taps of this fleet's node agent in the host's namespace: made for a guest and never
        moved into its own (or left behind)."""
        out = subprocess.run(["ip", "-o", "link", "show", "type", "tun"], capture_output=True,
                             text=True).stdout
        return re.findall(rf"^\d+: (tf{self.owner}[0-9a-z]+)", out, re.MULTILINE)

    def survived(self) -> None:
        """Nothing left behind, and the host side answers as before the attack."""
        until(lambda: not self.leftovers(), timeout_s=60, explain=self.leftovers)
        sched, gateway = self.fleet.actors
        pids = {"node agent": ray.get(self.fleet.node.__ray_call__.remote(_node_facts))[0],
                "scheduler": ray.get(sched.ping.remote(), timeout=30)["pid"],
                "gateway": ray.get(gateway.ping.remote(), timeout=30)["pid"]}
        assert pids == self.pids, f"a host-side process was restarted: {pids} != {self.pids}"
        assert self.http.get("/healthz").status_code == 200
        r = self.exec(self.neighbour, "echo neighbour")
        assert r.status_code == 200 and r.json()["stdout"] == "neighbour\n", r.text


class RssPeak:
    """The highest resident memory of some processes while it runs (sampled every 0.1 s)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.before = self._now()
        self.peak = dict(self.before)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _now(self) -> dict[str, int]:
        return {name: p.memory_info().rss for name, p in self.procs.items()}

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            for name, rss in self._now().items():
                self.peak[name] = max(self.peak[name], rss)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth_mib(self) -> dict[str, float]:
        return {n: (self.peak[n] - self.before[n]) / 2**20 for n in self.procs}


__all__ = ["GUEST", "Hostile", "RssPeak"]
