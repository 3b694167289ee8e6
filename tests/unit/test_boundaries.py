"""The scheduler <-> node-agent boundary: the scheduler knows the node side only through
tryfleet.wire, its pure modules import no runtime, and real and simulated hosts implement the
one node protocol with the same records."""

import asyncio
import inspect
import pathlib
import pkgutil

import pytest

import tryfleet.scheduler
from tests.unit.builders import banned_imports, imported_names
from tryfleet import wire
from tryfleet.nodeagent.actor import NodeActor
from tryfleet.nodeagent.simhost import SimHosts, SimHostSpec
from tryfleet.scheduler import (
    admission,
    backlog,
    core,
    events,
    metrics,
    placement,
    retry,
    switches,
    switching,
    waits,
)

SCHEDULER_DIR = pathlib.Path(tryfleet.scheduler.__file__).parent
NODE_SIDE = {"tryfleet.nodeagent", "tryfleet.images"}


def test_the_scheduler_imports_nothing_of_the_node_side():
    modules = [m.name for m in pkgutil.iter_modules([str(SCHEDULER_DIR)])]
    assert {"engine", "dispatch", "hosts", "placement"} <= set(modules)
    for name in modules:
        found = imported_names(SCHEDULER_DIR / f"{name}.py", "tryfleet.scheduler")
        assert not {n for n in found for b in NODE_SIDE if n == b or n.startswith(b + ".")}, \
            f"scheduler/{name}.py imports {sorted(found)}"


def test_the_import_check_sees_full_dotted_and_relative_names(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from tryfleet import nodeagent\nfrom ..images import store\n"
                   "from .placement import Demand\nimport sqlite3\n")
    found = imported_names(src, "tryfleet.scheduler")
    assert {"tryfleet.nodeagent", "tryfleet.images.store", "tryfleet.scheduler.placement",
            "sqlite3"} <= found


@pytest.mark.parametrize("module", [core, events, retry, placement, admission, backlog, metrics,
                                    switches, switching, waits])
def test_pure_scheduler_modules_import_no_runtime(module):
    assert banned_imports(module) == set()


PROTOCOL = [name for name, _ in inspect.getmembers(wire.NodeProtocol, inspect.isfunction)
            if not name.startswith("_")]


@pytest.mark.parametrize("impl", [NodeActor, SimHosts])
def test_real_and_simulated_hosts_implement_the_one_node_protocol(impl):
    assert {"status_all", "start_many", "collect", "cancel", "shutdown"} <= set(PROTOCOL)
    for name in PROTOCOL:
        want = list(inspect.signature(getattr(wire.NodeProtocol, name)).parameters)
        # Ray adds a tracing parameter to an actor class's methods once any actor of it
        # has been created in this process; it is Ray's, not part of the protocol.
        got = [p for p in inspect.signature(getattr(impl, name)).parameters
               if p != "_ray_trace_ctx"]
        assert got == want, f"{impl.__name__}.{name}{got} is not NodeProtocol.{name}{want}"


def test_a_node_agent_and_simulated_hosts_answer_status_all_with_host_status(
        tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    real = NodeActor(str(tmp_path), "h1", fake=True)
    try:
        from_real = wire.unpack_map(wire.HostStatus, real.status_all())
    finally:
        real.shutdown()
    sim = SimHosts([SimHostSpec("s1"), SimHostSpec("s2")])
    from_sim = wire.unpack_map(wire.HostStatus, asyncio.run(sim.status_all()))
    assert sorted(from_real) == ["h1"] and sorted(from_sim) == ["s1", "s2"]
    assert all(name == st.host for name, st in [*from_real.items(), *from_sim.items()])
    assert (from_real["h1"].accel, from_sim["s1"].accel) == ("tcg", "sim")


def test_a_node_agent_refuses_a_call_naming_another_host(tmp_path, monkeypatch):
    monkeypatch.setenv("TRYFLEET_ACCEL", "tcg")
    real = NodeActor(str(tmp_path), "h1", fake=True)
    try:
        with pytest.raises(wire.WrongHost, match="serves host 'h1', not 'h2'"):
            real.start_many("h2", wire.pack([]))
        assert wire.unpack_list(wire.AttemptInfo, real.attempts("h1")) == []
    finally:
        real.shutdown()
