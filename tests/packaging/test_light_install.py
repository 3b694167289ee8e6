"""`pip install tryfleet` without extras, as a user of the client installs it: into a fresh
venv, from this checkout, with packages from the package registry. It must bring neither Ray
nor libvirt-python (nor anything else of the fleet side, nothing to compile), and give the SDK
and the CLI, which say how to get the fleet side when a command needs it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
FLEET_SIDE = {"ray", "libvirt-python", "psutil", "fastapi", "uvicorn", "httptools", "pydantic",
              "prometheus-client"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """A venv with `pip install <this checkout>` in it, no extras: its bin directory."""
    tmp = tmp_path_factory.mktemp("light")
    where, source = tmp / "venv", tmp / "tryfleet"
    # A copy of the checkout: pip builds in the source tree, and leaves build/ there.
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", "results"))
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=300)
    got = subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "-q",
                          "--no-cache-dir", "--disable-pip-version-check", str(source)],
                         capture_output=True, text=True, timeout=1200, env=_clean_env())
    assert got.returncode == 0, got.stdout[-2000:] + got.stderr[-4000:]
    return where / "bin"


def _clean_env():
    """This process's environment without what points Python at the checkout or its venv."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "TRYFLEET_URL", "TRYFLEET_API_KEY")}


def run(bin_dir, *argv, cwd):
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=_clean_env())


def test_it_installs_neither_ray_nor_libvirt(light, tmp_path):
    listed = run(light, "python", "-m", "pip", "list", "--format=json", cwd=tmp_path)
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"tryfleet", "httpx", "msgpack"} <= names
    assert not names & FLEET_SIDE


def test_the_sdk_is_there_and_imports_nothing_of_the_fleet_side(light, tmp_path):
    probe = ("import sys, tryfleet\n"
             "assert callable(tryfleet.connect) and tryfleet.Fleet and tryfleet.Sandbox\n"
             "print(tryfleet.__file__)\n"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('ray', 'libvirt', 'psutil', 'fastapi')))")
    got = run(light, "python", "-c", probe, cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    where, loaded = got.stdout.splitlines()
    assert "site-packages" in where and loaded == "[]"


def test_the_cli_says_what_needs_the_fleet_side(light, tmp_path):
    assert run(light, "tryfleet", "--help", cwd=tmp_path).returncode == 0
    up = run(light, "tryfleet", "up", cwd=tmp_path)
    assert up.returncode == 125 and "pip install 'tryfleet[fleet]'" in up.stderr
    status = run(light, "tryfleet", "--data-dir", str(tmp_path), "status", cwd=tmp_path)
    assert status.returncode == 125 and "tryfleet up" in status.stderr
