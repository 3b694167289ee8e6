"""Starting, joining and stopping the fleet on Ray: the head, node agents, the scheduler.

`tryfleet up` starts a Ray head bound to loopback (unless told otherwise) with its own temp
directory, so `tryfleet down` can stop exactly what `up` started and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from tryfleet.errors import FleetUnavailable
from tryfleet.logs import LogSetup
from tryfleet.nodeagent.actor import start_node_actor
from tryfleet.private import TRAVERSE_MODE, private_dir, write_private
from tryfleet.scheduler.service import SCHEDULER_NAME, Scheduler
from tryfleet.wire import NAMESPACE, NODE_ACTOR_PREFIX

from . import local

RAY_PORT = 6390
RAY_TEMP_DIR = "/tmp/tryfleet-ray"  # short: Ray puts unix sockets under it
STATE_FILE = local.STATE_FILE


def ray_temp_dir(port: int) -> str:
    """Ray's temp dir for the fleet whose head listens on port: one per port, so two fleets on
    one machine (another port, another data dir) never stop each other's processes."""
    return RAY_TEMP_DIR if port == RAY_PORT else f"{RAY_TEMP_DIR}-{port}"


def ledger_path(data_dir: Path) -> Path:
    return Path(os.environ.get("TRYFLEET_LEDGER") or data_dir / "ledger.db")


def state(data_dir: Path) -> dict[str, Any] | None:
    return local.state(data_dir)


def secure_ray() -> None:
    """Ray's ports run code for whoever reaches them: always require Ray's auth token
    (~/.ray/auth_token, made on first use; copy it to every host of a multi-host fleet)."""
    token = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    if os.environ["RAY_AUTH_MODE"] == "token" and not os.environ.get("RAY_AUTH_TOKEN") \
            and not token.exists():
        subprocess.run([_ray_bin(), "get-auth-token", "--generate"], capture_output=True,
                       check=True)


def _ray_bin() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _head_alive(address: str) -> bool:
    return local.head_alive(address)


def node_ip(bind: str | None) -> str:
    """Ray turns a loopback address into the host's own; ask it which one it will use."""
    if bind and not bind.startswith("127."):
        return bind
    from ray._private.services import get_node_ip_address

    return str(get_node_ip_address())  # type: ignore[no-untyped-call]


def start_head(data_dir: Path, bind: str | None = None, port: int = RAY_PORT,
               autoscaling_config: str | None = None) -> str:
    secure_ray()
    ip = node_ip(bind)
    address = f"{ip}:{port}"
    if _head_alive(address):
        return address
    cmd = [_ray_bin(), "start", "--head", f"--node-ip-address={ip}", f"--port={port}",
           "--include-dashboard=false", "--disable-usage-stats",
           f"--temp-dir={ray_temp_dir(port)}",
           f"--num-cpus={os.cpu_count() or 1}"]
    if autoscaling_config:
        cmd.append(f"--autoscaling-config={autoscaling_config}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise FleetUnavailable(f"`ray start --head` failed: {proc.stderr.strip()[-2000:]}")
    private_dir(data_dir, TRAVERSE_MODE)  # QEMU passes through to images; nobody lists it
    write_private(data_dir / STATE_FILE, json.dumps(
        {"address": address, "started_head": True, "temp_dir": ray_temp_dir(port),
         "started_at": time.time()}).encode())
    return address


def start_front_door(data_dir: Path, listen: str, detached: bool = True) -> tuple[str, str]:
    """The gateway on this node (started if missing) and the local admin key: (url, key).
    The URL is recorded in up.json for the CLI and the SDK on this host. Not detached, the
    gateway goes as soon as its handle does: use open_front_door, which gives the handle."""
    _, url, key = open_front_door(data_dir, listen, detached)
    return url, key


def open_front_door(data_dir: Path, listen: str, detached: bool = True
                    ) -> tuple[Any, str, str]:
    """As start_front_door, with the gateway's actor handle first: (gateway, url, key)."""
    from tryfleet.audit import Audit
    from tryfleet.gateway.actor import start_gateway
    from tryfleet.gateway.keys import KeyStore, ensure_local_admin

    audit = Audit(data_dir)  # a new local admin key is recorded (key.create) first
    store = KeyStore(ledger_path(data_dir), data_dir, audit=audit)
    try:
        key = ensure_local_admin(store, data_dir)
    finally:
        store.close()
        audit.close()
    gateway, url = start_gateway(data_dir, ledger_path(data_dir), listen, detached=detached)
    st = state(data_dir)
    if detached and st is not None:
        write_private(data_dir / STATE_FILE, json.dumps({**st, "api_url": url}).encode())
    return gateway, url, key


def api_url(data_dir: Path) -> str | None:
    """The gateway URL of the fleet `tryfleet up` started here, if it is still up."""
    return local.api_url(data_dir)


def start_embedded_api(data_dir: Path) -> tuple[str, str, Callable[[], None]]:
    """An embedded fleet (start_embedded) with its gateway on a free loopback port, all in
    this process's Ray session: (the API's URL, an admin key, a function that stops them and
    lets go of Ray if this started it). The port is chosen here, not by the gateway, so that a
    gateway Ray restarts listens where its clients reconnect."""
    started_ray = not ray.is_initialized()
    handles = start_embedded(data_dir)
    try:
        gateway, url, key = open_front_door(data_dir, f"127.0.0.1:{local.free_port()}",
                                            detached=False)
    except BaseException:
        _stop_embedded(handles, started_ray)
        raise
    held = (*handles, gateway)
    return url, key, lambda: _stop_embedded(held, started_ray)


def _stop_embedded(handles: tuple[Any, ...], started_ray: bool) -> None:
    """Stop the embedded fleet's actors (their VMs first); let go of a Ray this started. The
    handles are held until now: an actor that is not detached lives as long as its handles,
    named or not."""
    if ray.is_initialized():
        kill_actors()
        if started_ray:
            ray.shutdown()


def join(address: str) -> None:
    """Make this machine a Ray worker of the cluster at `address`."""
    secure_ray()
    cmd = [_ray_bin(), "start", f"--address={address}", "--disable-usage-stats",
           f"--temp-dir={ray_temp_dir(int(address.rpartition(':')[2] or RAY_PORT))}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "already" not in proc.stderr:
        raise FleetUnavailable(f"`ray start --address={address}` failed: "
                               f"{proc.stderr.strip()[-2000:]}")


def init(address: str) -> None:
    if ray.is_initialized():
        return
    secure_ray()
    try:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                 logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as err:
        raise FleetUnavailable(f"cannot reach the Ray cluster at {address}: {err}. Is the "
                               "fleet up (`tryfleet up`), and does this host have the "
                               "cluster's auth token in ~/.ray/auth_token?") from err


def ensure_actors(data_dir: Path, host: str | None = None, detached: bool = True,
                  limits: dict[str, int] | None = None,
                  pool: tuple[str, ...] | None = None) -> tuple[Any, Any]:
    """The node agent of this Ray node and the fleet's scheduler, created if missing."""
    host = host or socket.gethostname()
    node = start_node_actor(str(data_dir), host, detached=detached, pool=pool)
    return node, ensure_scheduler(data_dir, detached, limits)


def start_embedded(data_dir: Path) -> tuple[Any, Any]:
    """A fleet inside this process's Ray session (started on loopback if there is none): this
    host's node agent and a scheduler, not detached, so they go when the process does."""
    if not ray.is_initialized():
        ray.init(namespace=NAMESPACE, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False, logging_level=logging.WARNING)
    return ensure_actors(data_dir, detached=False)


def ensure_scheduler(data_dir: Path, detached: bool = True,
                     limits: dict[str, int] | None = None) -> Any:
    # Pinned to this node: the ledger is a file on this node's disk, and a restart elsewhere
    # would open an empty one.
    here = ray.get_runtime_context().get_node_id()
    options: dict[str, Any] = {
        "name": SCHEDULER_NAME, "namespace": NAMESPACE, "get_if_exists": True, "num_cpus": 0,
        "max_restarts": -1, "max_concurrency": 1000,
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=here, soft=False)}
    if detached:
        options["lifetime"] = "detached"
    sched: Any = ray.remote(Scheduler).options(**options).remote(
        str(ledger_path(data_dir)), audit_dir=str(data_dir),  # it records in the audit trail
        log=LogSetup.from_env())
    deadline = time.monotonic() + 120
    while True:  # right after a crash Ray may still be restarting it: wait, do not fail
        try:
            ray.get(sched.ping.remote(), timeout=120)
            # Sized as an admin does (kept in the ledger), also on a scheduler already running.
            for name, value in (limits or {}).items():
                ray.get(sched.set_limit.remote(name, value, "tryfleet up"), timeout=120)
            return sched
        except ray.exceptions.RayActorError as err:  # includes ActorUnavailableError
            if time.monotonic() > deadline:
                raise FleetUnavailable(f"the scheduler did not come back within 120 s: "
                                       f"{err}") from err
            time.sleep(0.5)


def scheduler(timeout_s: float = 0) -> Any:
    """The running scheduler's handle; waits up to timeout_s for it to (re)appear."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
        except ValueError:
            if time.monotonic() >= deadline:
                raise FleetUnavailable("no tryfleet scheduler is running: start one with "
                                       "`tryfleet up`") from None
            time.sleep(0.5)


def stop(data_dir: Path) -> list[str]:
    """Stop what `up` started: the actors (destroying their VMs), then our Ray processes."""
    done: list[str] = []
    st = state(data_dir)
    if st is None:
        return done
    if _head_alive(st["address"]):
        with contextlib.suppress(FleetUnavailable):  # the processes are stopped below anyway
            init(st["address"])
    if ray.is_initialized():
        done += kill_actors()
        ray.shutdown()
    if st.get("started_head"):
        done += _kill_ray_processes(st.get("temp_dir", RAY_TEMP_DIR), st["address"])
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    shutil.rmtree(st.get("temp_dir", RAY_TEMP_DIR), ignore_errors=True)
    return done


def kill_actors() -> list[str]:
    """Stop tryfleet's actors in the connected Ray: node agents (real or simulated hosts alike)
    first destroy their VMs."""
    done = []
    for name in ray.util.list_named_actors(all_namespaces=False):
        if name.startswith("tryfleet-"):
            actor = ray.get_actor(name, namespace=NAMESPACE)
            if name.startswith(NODE_ACTOR_PREFIX):
                # The VMs die with the process anyway (auto-destroy) if this fails.
                with contextlib.suppress(Exception):
                    ray.get(actor.shutdown.remote(), timeout=30)
            ray.kill(actor, no_restart=True)
            done.append(name)
    return done


def running_address(data_dir: Path) -> str | None:
    """The Ray address of the fleet `tryfleet up` started here, if it is still up."""
    st = state(data_dir)
    return st["address"] if st is not None and _head_alive(st["address"]) else None


def _names(cmd: str, temp_dir: str, address: str) -> bool:
    """Whether a command line is of the Ray instance with this temp dir or address (the temp
    dir as a whole path: /tmp/tryfleet-ray is not /tmp/tryfleet-ray-6391)."""
    own = re.search(re.escape(temp_dir) + r"(/|\s|$)", cmd)
    return own is not None or re.search(re.escape(f"--address={address}") + r"(\s|$)",
                                         cmd) is not None


def _kill_ray_processes(temp_dir: str, address: str) -> list[str]:
    """The processes of the Ray instance `up` started: those naming its temp dir or its
    address on their command line, and everything they started."""
    roots = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if _names(cmd, temp_dir, address) and proc.pid != os.getpid():
            roots.append(proc)
    found = {p.pid: p for p in roots}
    for proc in roots:
        try:
            found.update({c.pid: c for c in proc.children(recursive=True)})
        except psutil.Error:
            continue
    mine = [p for pid, p in found.items() if pid != os.getpid()]
    for proc in mine:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(mine, timeout=10)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return [f"ray process {p.pid}" for p in mine]
