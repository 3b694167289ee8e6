"""The SDK and the CLI over real HTTP on loopback against a real fleet in this process's Ray:
the scheduler, simulated hosts for iterations (image "sim"), this host's real node agent for
sandboxes and the README's example (image "base"), and the gateway as `tryfleet up` runs it (a
Ray actor that Ray restarts), reached with API keys like any client."""

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray

import tryfleet
from tests.waiting import until
from tryfleet import cluster
from tryfleet.errors import AccessDenied, BadRequest, CannotPlace, NotFound
from tryfleet.gateway.actor import start_gateway
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.local import free_port
from tryfleet.nodeagent.actor import start_node_actor
from tryfleet.nodeagent.simhost import Delays, SimHostSpec, start_sim_hosts
from tryfleet.scheduler.records import Iteration
from tryfleet.wire import NAMESPACE

from .conftest import TRYFLEET, own_data_dir

README = Path(__file__).parents[2] / "README.md"
SIM = "sim"  # the image only the simulated hosts have: iterations of it never boot a VM


@dataclass
class Front:
    url: str
    admin: str  # an admin key
    gateway: Any  # the gateway's actor handle
    data: Path
    handles: tuple[Any, ...]  # actors that are not detached live as long as their handles

    def fleet(self, key: str | None = None, **kw: Any) -> tryfleet.Fleet:
        return tryfleet.connect(self.url, api_key=key or self.admin, **kw)

    def tenant_key(self, tenant: str, *scopes: str) -> str:
        with self.fleet() as admin:
            return str(admin.keys.create(tenant, scopes or ("sandbox", "batch"))["key"])


@pytest.fixture(scope="module")
def front(data_dir):
    saved = os.environ.pop("TRYFLEET_LEDGER", None)
    with own_data_dir(data_dir) as own:
        ray.init(namespace=NAMESPACE, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
        try:
            handles = (
                start_sim_hosts("sdk", [SimHostSpec(f"sim-{n}", cpus=8, mem_mib=16384,
                                                    images=(SIM,)) for n in "ab"],
                                Delays(seed=7, boot_median_ms=20, exec_median_ms=1500,
                                       exec_sigma=0.6)),
                start_node_actor(str(own), "real", detached=False),
                cluster.ensure_scheduler(own, detached=False))
            # A port of our own, not 0: the gateway Ray restarts must listen where it did.
            gateway, url = start_gateway(own, cluster.ledger_path(own),
                                         f"127.0.0.1:{free_port()}", detached=False)
            store = KeyStore(cluster.ledger_path(own), own)
            _, admin = store.create("default", frozenset({Scope.ADMIN}), created_by="test")
            store.close()
            front = Front(url, admin, gateway, own, handles)
            with front.fleet() as f:  # every host reported: none is taken for missing
                until(lambda: {h["host"] for h in f.status()["hosts"] if h["cpus"]} == {
                    "sim-a", "sim-b", "real"}, 120, explain=lambda: f.status()["hosts"])
            yield front
        finally:
            cluster.kill_actors()
            ray.shutdown()
            if saved is not None:
                os.environ["TRYFLEET_LEDGER"] = saved


def sims(n, prefix, **kw):
    return [Iteration(SIM, ("true",), id=f"{prefix}-{i}", **kw) for i in range(n)]


def test_the_readme_sdk_example_runs_with_a_url_and_a_tenants_key(front, capsys):
    key = front.tenant_key("readme", "sandbox", "batch")
    (code,) = re.findall(r"\*\*Python SDK\*\*.*?```python\n(.*?)```", README.read_text(),
                         re.S)
    assert "tryfleet.connect(" in code
    code = re.sub(r"tryfleet\.connect\([^)]*\)", "tryfleet.connect(URL, api_key=KEY)", code,
                  count=1)
    exec(compile(code, "README.md", "exec"), {"URL": front.url, "KEY": key})
    out = capsys.readouterr().out
    assert "b'hi\\n'" in out and "stdout b'1\\n'" in out and "stdout b'2\\n'" in out
    assert len(re.findall(r"SUCCEEDED|FAILED", out)) >= 10


def test_waits_survive_the_gateway_killed_with_sigkill(front):
    fleet = front.fleet(front.tenant_key("kill", "batch"), reconnect_s=120)
    ids = fleet.submit(sims(8, "k"), suite="killed")
    watching = fleet.watch(ids, suite="killed", output=False, timeout_s=300)
    first = next(watching)
    old = ray.get(front.gateway.ping.remote())["pid"]
    killed_at = time.time()
    os.kill(old, signal.SIGKILL)
    rest = list(watching)
    assert sorted(r.id for r in [first, *rest]) == sorted(ids)
    assert {r.state for r in [first, *rest]} == {"SUCCEEDED"}
    assert ray.get(front.gateway.ping.remote())["pid"] != old  # Ray restarted it
    assert any(r.ended_at and r.ended_at > killed_at for r in rest), \
        "everything had ended before the kill: the wait did not span it"


def test_a_revoked_key_is_refused_at_once(front):
    with front.fleet() as admin:
        made = admin.keys.create("revoked", ["read"])
        mine = front.fleet(made["key"])
        assert mine.me()["tenant"] == "revoked"
        admin.keys.revoke(made["id"])
    started = time.monotonic()
    with pytest.raises(AccessDenied) as err:
        mine.me()
    assert err.value.status == 401 and time.monotonic() - started < 1.0
    with pytest.raises(AccessDenied):
        front.fleet(made["key"])


def test_problems_come_back_as_tryfleets_errors_with_their_request_ids(front):
    fleet = front.fleet(front.tenant_key("errors", "batch", "read"))
    with pytest.raises(NotFound) as err:
        fleet.get("no-such-iteration")
    assert err.value.request_id and err.value.request_id == fleet.last_request_id
    with pytest.raises(CannotPlace) as err:
        fleet.submit([Iteration(SIM, ("true",), cpus=16)], suite="huge")
    assert err.value.reason
    with pytest.raises(BadRequest):
        fleet.iterations(states=["NOT-A-STATE"])
    with pytest.raises(AccessDenied):
        fleet.status()  # admins only
    assert fleet.counts("huge") == {}


def test_another_tenants_iterations_do_not_exist_for_a_key(front):
    a = front.fleet(front.tenant_key("tenant-a", "batch"))
    b = front.fleet(front.tenant_key("tenant-b", "batch"))
    a.wait(a.submit(sims(1, "same"), suite="mine"), suite="mine", timeout_s=120)
    with pytest.raises(NotFound):
        b.get("same-0")
    assert b.iterations(suite="mine") == [] and b.counts("mine") == {}
    (mine,) = b.wait(b.submit(sims(1, "same"), suite="mine"), suite="mine", timeout_s=120)
    assert mine.tenant == "tenant-b"


def test_follow_then_cancel_a_suite(front):
    fleet = front.fleet(front.tenant_key("follow", "batch"))
    (iid,) = fleet.submit(sims(1, "fo"), suite="fo")
    *_, last = list(fleet.follow(iid))
    assert isinstance(last, tryfleet.Result) and last.state == "SUCCEEDED"
    slow = [Iteration(SIM, ("true",), id=f"slow-{i}", cpus=8) for i in range(6)]
    ids = fleet.submit(slow, suite="cancelled")
    got = fleet.cancel(suite="cancelled")
    assert got["queued_cancelled"] + got["running_stopped"] >= 1
    results = fleet.wait(ids, suite="cancelled", timeout_s=120)
    assert "CANCELLED" in {r.state for r in results}


def test_a_sandbox_on_the_real_host_exec_stream_and_files(front):
    fleet = front.fleet(front.tenant_key("boxes", "sandbox"))
    with fleet.sandbox(image="base", timeout_s=300) as sb:
        r = sb.exec(["python3", "-c", "print(6*7)"])
        assert (r.exit_code, r.stdout) == (0, b"42\n")
        seen = []
        for kind, data in sb.exec_stream(["sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; "
                                                      "done"]):
            seen.append((kind, data, time.monotonic()))
        out = [(d, t) for k, d, t in seen if k == "stdout"]
        assert b"".join(d for d, _ in out) == b"1\n2\n3\n" and len(out) == 3
        assert out[2][1] - out[0][1] > 1.5  # as they came, not all at the end
        assert seen[-1][0] == "exit" and seen[-1][1].exit_code == 0
        sb.files.write("/root/blob", bytes(range(256)))
        assert sb.files.read("/root/blob") == bytes(range(256))
        assert "blob" in {e["name"] for e in sb.files.list("/root")}
        sid = sb.id
    with pytest.raises(NotFound):
        front.fleet(front.tenant_key("others", "sandbox")).api.json("GET",
                                                                     f"/v1/sandboxes/{sid}")


def cli(front, *argv, key=None):
    n = 2 if argv[0] == "key" else 1
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRYFLEET_")}
    return subprocess.run([TRYFLEET, *argv[:n], "--url", front.url, "--api-key",
                           key or front.admin, *argv[n:]], capture_output=True, text=True,
                          timeout=600, env=env)


def test_the_cli_through_the_api(front, tmp_path):
    made = cli(front, "key", "create", "--tenant", "cli", "--scope", "batch", "--scope", "read")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    specs = tmp_path / "specs.jsonl"
    specs.write_text("".join(f'{{"image": "{SIM}", "command": ["true"]}}\n' for _ in range(5)))
    out = tmp_path / "results.jsonl"
    r = cli(front, "batch", str(specs), "--suite", "c", "--out", str(out), key=key)
    assert r.returncode == 0, r.stderr
    assert len(out.read_text().splitlines()) == 5 and "SUCCEEDED" in r.stdout
    ps = cli(front, "ps", "--all", key=key)
    assert ps.returncode == 0 and "c-1" in ps.stdout
    assert cli(front, "logs", "c-1", key=key).returncode == 0
    assert cli(front, "status", key=key).returncode == 2  # admins only
    assert cli(front, "status").returncode == 0


def test_connect_with_nothing_up_starts_an_embedded_fleet_and_close_stops_it(front):
    """In a process of its own (it starts its own Ray), on a data dir of its own."""
    probe = ("import tryfleet\n"
             "f = tryfleet.connect()\n"
             "assert f.embedded and f.url.startswith('http://127.0.0.1:'), f.url\n"
             "print(f.me()['scopes'])\n"
             "f.close()\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TRYFLEET_")},
           "TRYFLEET_DATA": str(front.data / "embedded")}
    (front.data / "embedded").mkdir()
    for shared in ("images", "snapshots", "run"):
        (front.data / "embedded" / shared).symlink_to(front.data / shared)
    got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         timeout=300, env=env)
    assert got.returncode == 0, got.stderr[-3000:]
    assert "admin" in got.stdout
