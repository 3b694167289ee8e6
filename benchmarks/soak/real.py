"""The real-VM soak: the real scheduler (restartable) and this host's real node agent on Ray,
short commands in 256 MiB guests, while VMs are destroyed under the agent (`virsh destroy`)
and the agent's process is killed (Ray restarts it; the restarted agent reaps what the dead
one left).

The node agent uses the default data dir (images, saved guests and the accel probe's cache are
there, as for suites50) and so its `run/` folder, where every node agent of this host registers
as an owner. What belongs to this run is told apart by owner: the owner ids registered by the
process ids this run's agent had. At every start a node agent reaps the VMs of owners not alive
in its `run/`: before starting or killing the agent, the run checks that no VM of an agent that
uses another data dir is there to be reaped, and stops (or skips the kill) if one is.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tryfleet.wire import HostStatus

from ..onray import local_ray, start_scheduler
from .chaos import Chaos, Event, plan
from .checks import check, timing
from .drive import Progress, call, chunks_of, drive, keep_ledger

MEM_MIB = 256
TIMEOUT_S = 60.0
VIRSH = ("virsh", "-c", "qemu:///system")
LEAK_WAIT_S = 5.0
CONFIRM_S = 3.0  # a leak is seen twice, this far apart
DESTROY_WAIT_S = 30.0  # a destroy waits this long for one of our VMs to be running
OWN_FILES = ("owner.json", "canary-console.log")  # an agent's own files in its owner dir


def work(n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    return [{"image": "base", "command": ["sh", "-c", f"sleep {rng.uniform(0.1, 0.9):.2f}; "
                                                      "echo ok"],
             "cpus": 1, "mem_mib": MEM_MIB, "timeout_s": TIMEOUT_S, "id": f"soak-real-{i:04d}"}
            for i in range(n)]


# ---- libvirt, through virsh ----------------------------------------------------------------
def virsh(*args: str) -> str:
    return subprocess.run([*VIRSH, *args], capture_output=True, text=True, check=True).stdout


class _Virsh:
    """What reaper.owner_of asks of a hypervisor: a domain's XML."""

    def domain_xml(self, name: str) -> str | None:
        try:
            return virsh("dumpxml", name)
        except subprocess.CalledProcessError:
            return None


def domains(running_only: bool = True) -> dict[str, str | None]:
    """tryfleet's domains on this host and their owner ids (None: no owner found)."""
    from tryfleet.nodeagent.hypervisor import DOMAIN_PREFIX
    from tryfleet.nodeagent.reaper import owner_of

    names = virsh("list", "--name", *(() if running_only else ("--all",))).split()
    hv: Any = _Virsh()  # all owner_of uses of a Hypervisor
    return {n: owner_of(n, hv) for n in names if n.startswith(DOMAIN_PREFIX)}


def at_risk(found: dict[str, str | None], run_dir: Path, ours: set[str]) -> list[str]:
    """Domains an agent with this run_dir would reap although they may be alive elsewhere:
    owned by no owner, or by one not registered in run_dir (an agent of another data dir)."""
    return sorted(n for n, owner in found.items()
                  if owner not in ours and (owner is None or not (run_dir / owner).is_dir()))


def owners_of(run_dir: Path, pids: set[int]) -> set[str]:
    """Owner ids in run_dir registered by one of these processes."""
    out = set()
    for entry in run_dir.glob("*/owner.json"):
        try:
            if int(json.loads(entry.read_text())["pid"]) in pids:
                out.add(entry.parent.name)
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


# ---- this host's node agent: every direct call to it ---------------------------------------
class RealHost:
    """The run's node agent and what belongs to it: its process ids (a new one after each
    restart) and the owner ids they registered."""

    def __init__(self, data_dir: Path) -> None:
        from tryfleet.nodeagent.actor import start_node_actor

        self.run_dir = data_dir / "run"
        self.pids: set[int] = set()
        self.owners: set[str] = set()
        self.node = start_node_actor(str(data_dir), socket.gethostname(), detached=False)

    def status(self) -> HostStatus:
        from tryfleet.wire import unpack_map

        (status,) = unpack_map(HostStatus, call(self.node.status_all)).values()
        return status

    def track(self) -> int:
        """The agent's pid now; its owner id is remembered as this run's."""
        pid = self.status().pid
        self.pids.add(pid)
        self.owners |= owners_of(self.run_dir, self.pids)
        return pid

    def kill(self) -> dict[str, Any]:
        pid = self.track()
        risky = at_risk(domains(False), self.run_dir, self.owners)
        if risky:
            return {"skipped": True, "why": f"its restart would reap VMs of another data dir: "
                                            f"{', '.join(risky[:5])}"}
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        while (new := self.track()) == pid:
            time.sleep(0.1)
        return {"pid": pid, "new_pid": new, "recover_s": round(time.time() - killed_at, 3)}

    def destroy_one(self, rng: random.Random) -> dict[str, Any]:
        """virsh destroy one running VM of this run, picked at random (another pick when it
        went away meanwhile, for up to DESTROY_WAIT_S)."""
        until = time.monotonic() + DESTROY_WAIT_S
        missed = []
        while time.monotonic() < until:
            self.track()
            mine = sorted(n for n, o in domains().items() if o in self.owners)
            if not mine:
                time.sleep(0.2)
                continue
            name = rng.choice(mine)
            try:
                virsh("destroy", name)
            except subprocess.CalledProcessError:  # gone between the list and the destroy
                missed.append(name)
                continue
            return {"domain": name, "running_then": len(mine), "missed": missed}
        return {"skipped": True, "why": f"none of ours could be destroyed for "
                                        f"{DESTROY_WAIT_S:g} s", "missed": missed}

    def leftovers(self) -> tuple[list[str], list[str], dict[str, Any]]:
        """This run's domains and files the live agent does not account for, in two looks
        CONFIRM_S apart: only what both looks find counts (a VM being made between them is
        not a leak). Also the agent's status at the second look."""
        first = self._unaccounted(self.status())
        time.sleep(CONFIRM_S)
        status = self.status()
        second = self._unaccounted(status)
        return (sorted(set(first[0]) & set(second[0])), sorted(set(first[1]) & set(second[1])),
                status)

    def _unaccounted(self, status: HostStatus) -> tuple[list[str], list[str]]:
        """This run's domains the live agent does not hold (status.vms), but for a guest it
        is saving as a new slot; and the files under this run's owner dirs but for the live
        agent's own and those of the VMs it holds."""
        held = set(status.vms)
        live = owners_of(self.run_dir, {status.pid})
        snapshots = self.run_dir.parent / "snapshots"
        keep, doms = set(), []
        for name, owner in domains(False).items():
            if owner not in self.owners:
                continue
            disk = disk_of(name)
            if name in held:
                keep.update([disk.parent] if disk is not None else [])
            elif not (owner in live and disk is not None and snapshots in disk.parents):
                doms.append(name)
        files = []
        for owner in self.owners:
            for path in (self.run_dir / owner).rglob("*"):
                own = owner in live and path.parent.name == owner and path.name in OWN_FILES
                if path.is_file() and not own and path.parent not in keep:
                    files.append(str(path.relative_to(self.run_dir)))
        return doms, files

    def after_stop(self) -> tuple[list[str], list[str]]:
        """This run's domains and files once its agent has shut down: there should be none."""
        doms = sorted(n for n, o in domains(False).items() if o in self.owners)
        files = [str(p.relative_to(self.run_dir)) for owner in self.owners
                 for p in (self.run_dir / owner).rglob("*") if p.is_file()]
        return doms, sorted(files)


def disk_of(name: str) -> Path | None:
    """The file behind a domain's disk (its overlay), from its XML."""
    found = re.search(r"<source file=['\"]([^'\"]+)['\"]", _Virsh().domain_xml(name) or "")
    return Path(found.group(1)) if found else None


def unaccounted(status: HostStatus) -> int:
    """VMs the agent holds beyond its running attempts and its warm pool (ready or filling)."""
    allowed = status.running + sum(r.ready + int(r.filling) for r in status.pool)
    return max(0, len(status.vms) - allowed)


# ---- the run ---------------------------------------------------------------------------------
def events(size: Any, seed: int) -> list[Event]:
    return plan(seed, size.iterations, {"node": size.node_kills, "destroy": size.destroys})


def run(size: Any, seed: int) -> dict[str, Any]:
    from tryfleet.nodeagent import default_data_dir

    data_dir = default_data_dir()
    risky = at_risk(domains(False), data_dir / "run", set())
    if risky:
        sys.exit("soak --real: this host runs tryfleet VMs of another data dir, which the "
                 f"run's node agent would reap: {', '.join(risky[:5])}; run it later")
    with local_ray("bench-soak-real-") as tmp:
        ledger = tmp / "ledger.db"
        host = _start_host(data_dir)
        try:
            sched = start_scheduler(ledger, 1, restartable=True)
            rng = random.Random(seed)
            actions = {"node": lambda ev: host.kill(),
                       "destroy": lambda ev: host.destroy_one(rng)}
            progress = Progress(ledger)
            chaos = Chaos(events(size, seed), actions, progress)
            try:
                tl = drive(sched, ledger, chunks_of(work(size.iterations, seed), size.chunks),
                           size.lead, chaos, size.grace_s, size.deadline_s)
            finally:
                progress.close()
            time.sleep(LEAK_WAIT_S)
            leaks = _leaks(host, sched)
            final = check(ledger, tl.submitted)
            marks = timing(ledger, [r["killed_at"] for r in chaos.records if "killed_at" in r])
            kept = keep_ledger(ledger) if final.not_terminal or final.double_committed \
                or tl.stuck else None
            stats = {**call(sched.stats), "in_flight_at_end": call(sched.status)["in_flight"]}
        finally:
            _stop(host)
        leaks.update(_after_stop(host, leaks))
        return {"timeline": tl, "chaos": chaos.records, "planned": chaos.events,
                "final": final, "timing": marks, "kept_ledger": kept, "scheduler_stats": stats,
                "leaked_domains": leaks.pop("leaked_domains"),
                "leaked_overlays": leaks.pop("leaked_overlays"), "leaks": leaks,
                "setup": {"hosts": 1, "data_dir": str(data_dir), "owners": sorted(host.owners),
                          "iteration": f"1 vcpu, {MEM_MIB} MiB, sh -c 'sleep 0.1-0.9; "
                                       f"echo ok', timeout {TIMEOUT_S:g} s"}}


def libvirt_alive() -> bool:
    return subprocess.run([*VIRSH, "version"], capture_output=True).returncode == 0


def _leaks(host: RealHost, sched: Any) -> dict[str, Any]:
    """What the run left, with the agent still up (see leftovers); when libvirt cannot be
    asked (libvirtd died), the counts are None: the soak fails and says why."""
    try:
        doms, files, end = host.leftovers()
    except (subprocess.CalledProcessError, RuntimeError) as err:
        stderr = getattr(err, "stderr", "") or ""
        return {"leaked_domains": None, "leaked_overlays": None, "libvirtd_alive":
                libvirt_alive(), "error": f"{err} {stderr.strip()[-300:]}"}
    extra = unaccounted(end)
    return {"leaked_domains": len(doms) + extra, "leaked_overlays": len(files),
            "domains": doms, "files": files, "node_running_at_end": end.running,
            "node_vms_at_end": list(end.vms), "node_vms_unaccounted": extra,
            "node_pool_at_end": [dataclasses.asdict(r) for r in end.pool], "libvirtd_alive": True}


def _stop(host: RealHost) -> None:
    """The node agent shut down as `tryfleet down` does it (its VMs destroyed), then gone."""
    import ray

    try:
        call(host.node.shutdown, within_s=30)
    finally:
        ray.kill(host.node, no_restart=True)


def _after_stop(host: RealHost, leaks: dict[str, Any]) -> dict[str, Any]:
    """The run's domains and files once its agent shut down, added to the leaks not counted
    yet (nothing of the run should be left)."""
    if not libvirt_alive():
        return {"libvirtd_alive": False, "leaked_domains": None}
    doms, files = host.after_stop()
    out: dict[str, Any] = {"domains_after_stop": doms, "files_after_stop": files}
    if leaks["leaked_domains"] is not None:
        out["leaked_domains"] = leaks["leaked_domains"] + len(set(doms) - set(leaks["domains"]))
        out["leaked_overlays"] = leaks["leaked_overlays"] + len(set(files) - set(leaks["files"]))
    return out


def _start_host(data_dir: Path) -> RealHost:
    from ..vmbench import SETUP_HINT

    try:
        host = RealHost(data_dir)
        images = host.status().images
    except Exception as err:  # no libvirtd, no permission: say what to do
        sys.exit(f"soak --real needs libvirtd and the base image: {err}\n{SETUP_HINT}")
    if "base" not in images:
        sys.exit(f"soak --real needs the base image, and {data_dir} has none; {SETUP_HINT}")
    host.track()
    return host
