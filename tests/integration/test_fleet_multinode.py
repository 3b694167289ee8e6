"""A real multi-node Ray cluster on one machine: one head and three hosts, each with its own
node agent (on the fake hypervisor: no VM boots here, so nothing is marked vm), the real
scheduler, and the gateway that the test reaches over HTTP like any client."""

import pytest
import ray
from ray.cluster_utils import Cluster

import tryfleet
from tests.waiting import until
from tryfleet import cluster as fleet_cluster
from tryfleet.errors import CannotPlace
from tryfleet.local import free_port
from tryfleet.nodeagent.actor import start_node_actor
from tryfleet.scheduler.records import Iteration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """The fleet through its API, as any client has it: the gateway on the head, an admin key."""
    data = tmp_path_factory.mktemp("fleet")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes = {f"host{i}": c.add_node(num_cpus=1) for i in range(3)}
    ray.init(address=c.address, namespace="tryfleet", log_to_driver=False)
    images = {"host0": (), "host1": ("base",), "host2": ("base", "special")}
    handles = [start_node_actor(str(data / name), name, node_id=node.node_id, fake=True,
                                detached=False, fake_images=images[name])
               for name, node in nodes.items()]
    handles.append(fleet_cluster.ensure_scheduler(data, detached=False))
    gateway, url, key = fleet_cluster.open_front_door(data, f"127.0.0.1:{free_port()}",
                                                      detached=False)
    f = tryfleet.connect(url, api_key=key)
    # actors that are not detached live as long as their handles
    f.cluster, f.nodes, f.handles = c, nodes, (*handles, gateway)
    until(lambda: len([h for h in f.status()["hosts"] if h["cpus"]]) == 3, 60,
          explain=lambda: f.status()["hosts"])
    yield f
    f.close()
    ray.shutdown()
    c.shutdown()


def its(n, image="base", secs=2, prefix="it"):
    return [Iteration(image, ("sh", "-c", f"sleep {secs}; echo {i}"), id=f"{prefix}-{i}")
            for i in range(n)]


def test_image_filter_sends_work_only_where_the_image_is(fleet):
    results = fleet.wait(fleet.submit(its(2, image="special", secs=0, prefix="sp"), suite="sp"))
    assert {r.host for r in results} == {"host2"}
    assert all(r.state == "SUCCEEDED" for r in results)


def test_bin_packing_fills_one_host_before_the_next(fleet):
    # Each simulated host offers this machine's cpus; 1-cpu iterations pack onto as few
    # hosts as hold them, the fuller host first (host0 has no image: never used).
    cpus = next(h["cpus"] for h in fleet.status()["hosts"] if h["host"] == "host1")
    results = fleet.wait(fleet.submit(its(cpus, prefix="pack"), suite="pack"))
    assert all(r.state == "SUCCEEDED" for r in results)
    assert len({r.host for r in results}) == 1


def test_host_lost_mid_run_its_iterations_finish_elsewhere(fleet):
    ids = fleet.submit(its(8, secs=4, prefix="lost"), suite="lost")
    until(lambda: [r for r in fleet.iterations(states=["PLACED", "RUNNING"], suite="lost")
                   if r.host == "host1"], 30, explain=lambda: fleet.counts("lost"))
    fleet.cluster.remove_node(fleet.nodes["host1"])
    try:
        results = fleet.wait(ids, timeout_s=90)
    except TimeoutError:
        pytest.fail(f"not finished: {fleet.iterations(states=['QUEUED', 'PLACED', 'RUNNING'])}"
                    f" hosts: {fleet.status()['hosts']}")
    assert [r.state for r in results] == ["SUCCEEDED"] * 8, [(r.host, r.error) for r in results]
    # what started on host1 ran again elsewhere; nothing else ran twice
    first_on_host1 = {r.id for r in results if fleet.attempts(r.id)[0].host == "host1"}
    assert first_on_host1 and {r.id for r in results if r.attempts > 1} == first_on_host1
    assert all(r.host != "host1" for r in results)
    assert sorted(r.stdout for r in results) == sorted(f"{i}\n" for i in range(8))
    lost = next(h for h in fleet.status()["hosts"] if h["host"] == "host1")
    assert lost["lost"]


def test_sdk_sandbox_exec_files_and_streaming(fleet):
    with fleet.sandbox(image="special", timeout_s=120) as sb:
        assert sb.host == "host2"
        sb.files.write("/root/in.txt", "hello")
        assert sb.files.read("/root/in.txt") == b"hello"
        # the fake runs commands in the guest's /root
        r = sb.exec(["sh", "-c", "cat in.txt; exit 4"])
        assert (r.exit_code, r.stdout) == (4, b"hello")
        events = list(sb.exec_stream(["sh", "-c", "echo a; sleep 0.3; echo b >&2"]))
        assert events[:2] == [("stdout", b"a\n"), ("stderr", b"b\n")]
        assert events[-1][0] == "exit" and events[-1][1].exit_code == 0


def test_map_yields_results_as_they_complete(fleet):
    items = [Iteration("base", ("sh", "-c", f"sleep {s}; echo {s}"), id=f"map-{s}")
             for s in (3, 0)]
    order = [r.id for r in fleet.map(items, suite="map")]
    assert order == ["map-0", "map-3"]


def test_an_iteration_that_can_never_fit_is_refused_at_submit(fleet):
    with pytest.raises(CannotPlace, match="can never run"):
        fleet.submit([Iteration("base", ("true",), cpus=16)], suite="huge")
    with pytest.raises(CannotPlace, match="can never run"):
        fleet.submit([Iteration("no-such-image", ("true",))], suite="huge")


def test_cancel_a_suite(fleet):
    # A bare `sleep`: the fake guest signals the command's own process, not a shell's child.
    ids = fleet.submit([Iteration("base", ("sleep", "30"), id=f"cx-{i}") for i in range(6)],
                       suite="cx")
    fleet.cancel(suite="cx")
    assert {r.state for r in fleet.wait(ids)} == {"CANCELLED"}
