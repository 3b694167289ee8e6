"""What `import tryfleet` offers is what its __all__ says, pinned here; and the client stays
light: `import tryfleet`, the SDK and the CLI's fleet commands load nothing of the fleet side
(Ray, libvirt, psutil, the gateway's FastAPI), which a light install (`pip install tryfleet`)
does not have."""

import os
import pathlib
import subprocess
import sys

import tryfleet

ROOT = pathlib.Path(tryfleet.__file__).parents[1]  # this checkout, whatever is installed


def test_the_public_names_are_pinned():
    assert tryfleet.__all__ == [
        "AccessDenied", "Attempt", "BadRequest", "CannotPlace", "ExecResult", "Fleet",
        "FleetUnavailable", "Frozen", "InfrastructureError", "Iteration", "IterationDetail",
        "LiveOutput", "NoRoom", "NotFound", "PolicyDenied", "QuotaExceeded", "Result", "Sandbox",
        "TryfleetError", "WaitTimeout", "__version__", "connect",
    ]


def test_every_public_name_resolves():
    for name in tryfleet.__all__:
        assert getattr(tryfleet, name) is not None, name


def test_every_error_is_a_tryfleet_error():
    errors = ["AccessDenied", "BadRequest", "CannotPlace", "FleetUnavailable", "Frozen",
              "InfrastructureError", "NoRoom", "NotFound", "PolicyDenied", "QuotaExceeded",
              "WaitTimeout"]
    for name in errors:
        assert issubclass(getattr(tryfleet, name), tryfleet.TryfleetError), name
    assert issubclass(tryfleet.CannotPlace, tryfleet.BadRequest)


def _modules_after(code):
    """The modules a fresh interpreter has loaded after running code (with this checkout's
    tryfleet)."""
    probe = f"import sys\n{code}\nprint(tryfleet.__file__)\nprint(' '.join(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env=env, cwd=ROOT).stdout.splitlines()
    assert out[0] == tryfleet.__file__
    return set(out[1].split())


def test_import_tryfleet_imports_neither_ray_nor_libvirt():
    loaded = _modules_after("import tryfleet")
    assert not {m for m in loaded if m.split(".")[0] in ("ray", "libvirt")}


def test_the_records_and_errors_need_no_ray_either():
    loaded = _modules_after("import tryfleet\ntryfleet.Iteration, tryfleet.Result, "
                            "tryfleet.CannotPlace, tryfleet.Fleet")
    assert not {m for m in loaded if m.split(".")[0] in ("ray", "libvirt")}


FLEET_SIDE = ("ray", "libvirt", "psutil", "fastapi", "starlette", "uvicorn", "pydantic",
              "prometheus_client")


def _fleet_side(loaded):
    return {m for m in loaded if m.split(".")[0] in FLEET_SIDE}


def test_the_sdk_loads_nothing_of_the_fleet_side():
    loaded = _modules_after("import tryfleet\nimport tryfleet.fleet, tryfleet.http, "
                            "tryfleet.sandbox\ntryfleet.connect, tryfleet.Fleet, "
                            "tryfleet.Sandbox, tryfleet.AccessDenied")
    assert _fleet_side(loaded) == set()
    assert "httpx" in loaded


def test_the_clis_fleet_commands_load_nothing_of_the_fleet_side():
    loaded = _modules_after("import tryfleet\nfrom tryfleet import cli\n"
                            "from tryfleet.commands import batch, fleetcmds, keys, run, runfleet"
                            "\ncli._parser().parse_args(['status'])")
    assert _fleet_side(loaded) == set()
