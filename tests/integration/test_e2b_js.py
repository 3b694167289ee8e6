"""The official E2B JavaScript SDK (npm `e2b`), unmodified, run by the machine's Node.js
against a real fleet with a real VM (e2bfleet.py): tests/e2b-js/smoke.mjs walks the smoke
path (create, run, a non-zero exit, a background command, files, timeout, info, list, another
tenant, kill, a killed sandbox), one JSON line per step. `npm install` runs first when
node_modules is missing."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .e2bfleet import e2b_fleet

pytestmark = pytest.mark.vm
JS = Path(__file__).resolve().parents[1] / "e2b-js"


@pytest.fixture(scope="module")
def node_sdk():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("the JavaScript SDK test needs Node.js and npm")
    if not (JS / "node_modules" / "e2b").is_dir():
        r = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=JS,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    return JS


@pytest.fixture(scope="module")
def fleet(data_dir):
    with e2b_fleet(data_dir, "e2bjs") as f:
        yield f


def test_the_js_sdk_smoke_path(fleet, node_sdk):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("E2B_")},
           **fleet.env(fleet.key("acme")), "E2B_OTHER_KEY": fleet.key("globex")}
    r = subprocess.run(["node", "smoke.mjs"], cwd=node_sdk, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, (r.stdout, r.stderr[-3000:])
    steps = {s["step"]: s["value"] for s in map(json.loads, r.stdout.splitlines())}
    assert steps["run"]["stdout"] == "42\nhello\n" and steps["run"]["exitCode"] == 0
    assert steps["nonzero"] == {"exitCode": 7, "stderr": "boom\n"}
    assert steps["background"] == {"listed": True, "whoami": "user\n", "killed": True}
    assert steps["files"] == {"same": True, "text": "hi from js", "exists": [True, False],
                              "list": [["blob.bin", "file", 70000], ["hi.txt", "file", 10]]}
    assert steps["removed"] is False
    assert steps["info"]["state"] == "running" and steps["info"]["metadata"] == {"suite": "js"}
    assert 500 < steps["info"]["endsInS"] <= 600
    assert steps["list"] == [steps["create"]]
    assert steps["other-tenant"] == {"hidden": True, "killed": False}
    assert steps["kill"] is True and steps["after-kill"] == "SandboxNotFoundError"
