"""The public surface of each package is what its __all__ says, and it is pinned here."""

from tryfleet import nodeagent


def test_nodeagent_public_api_is_pinned():
    assert set(nodeagent.__all__) == {
        "DOMAIN_PREFIX", "AccelReport", "BadRequest", "BootTimeout", "Capacity", "CloneError",
        "Cloner", "DomainSpec", "ExecResult", "GuestChannel", "GuestError", "GuestGone",
        "GuestProtocolError", "GuestRequestError", "GuestUnresponsive", "Hypervisor",
        "HypervisorError", "HypervisorUnavailable", "IterationOutcome", "IterationSpec",
        "NodeAgent", "NodeAgentError", "NodeConfig", "Pressure", "Sandbox", "SandboxSpec",
        "State", "default_data_dir", "qemu_img_clone", "read_capacity", "read_pressure",
    }
    assert all(hasattr(nodeagent, name) for name in nodeagent.__all__)


def test_guest_agent_imports_nothing_of_the_host_side():
    import ast
    import pathlib

    from tryfleet.images import guestagent as ga

    for path in pathlib.Path(ga.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                assert not any(n.split(".")[0] in {"nodeagent", "scheduler", "tryfleet", "images"}
                               for n in names), f"{path.name} imports {names}"


def test_fake_hypervisor_implements_the_boundary():
    from tryfleet.nodeagent.fake_hv import FakeHypervisor
    from tryfleet.nodeagent.hypervisor import Hypervisor

    assert isinstance(FakeHypervisor(), Hypervisor)
