"""A property-based fuzz of the whole HTTP API, as /openapi.json describes it (schemathesis),
over real HTTP on loopback against a real fleet: Ray started in this process, the real
scheduler and ledger, the gateway actor on a free port, simulated hosts for iterations (image
"sim", done in milliseconds) and one real node agent on the fake hypervisor for sandboxes
(image "base": the real node actor and guest agent over their real wire protocol, with
commands run as processes in a scratch directory, so a sandbox opens in milliseconds where a
real VM takes seconds under TCG; the fuzz is about the gateway's handling of what it is sent,
which a VM would not change). Every operation is fuzzed twice, with an admin key and with a
tenant key (acme: sandbox, batch and read scopes).

What must hold for every request, valid or not (CHECKS): no 5xx; the status is one the
operation documents; the content type is the documented one (problem+json for every error);
the body and headers match their documented schema (the problem schema for every error, 422
included); invalid input is refused with a 4xx; a method the path does not serve is a 405 whose
Allow names exactly the methods it does. Deterministic: hypothesis is derandomized (the same
examples every run) and the examples per operation bounded (EXAMPLES, plus schemathesis'
coverage phase: boundary values of every parameter), so this takes about two minutes here.

Left out or limited, and why:
- schemathesis' positive_data_acceptance check (a schema-valid request must not be a 4xx) is
  not run: some refusals depend on more than one value's shape, which JSON Schema cannot say
  or says only in ways clients would not read: a cursor this API never gave out (400), a file
  path that is not absolute or names `..` (400), both `stdin` and `stdin_b64` (422), an image,
  a sandbox or an iteration nobody has (404, 422), a tenant key acting for another tenant
  (403), a size no host can hold (422). Those answers are still checked in full: a documented
  4xx, problem+json, matching the problem schema;
- the E2B-compatible API (/e2b, E2B's control plane and envd routes) and the MCP server (/mcp)
  are not in /openapi.json (their contracts are E2B's and MCP's, tested by their own SDKs in
  test_e2b_*.py and test_mcp.py), so schemathesis does not see them;
- the server-sent event endpoints (POST /v1/sandboxes/{sid}/exec/stream, GET
  /v1/events/iterations, GET /v1/iterations/{iid}/output?follow=true, GET /v1/live) are read
  for at most STREAM_READ_S: the ending stream and the live view never end by themselves.
  Their answers are checked for status and content type, and each event's data must be a
  JSON object; their refusals are checked in full, as any other answer;
- what cannot be fuzzed safely is pinned, and only that, in a way that keeps a valid body
  valid and an invalid one invalid: a command (exec's argv, an iteration's command) runs
  `echo` with what was generated as its arguments (the fake hypervisor runs commands as
  processes on this host, and a generated argv must not run whatever program it happens to
  name; argv's other values, env, cwd, stdin, timeout and encoding stay fuzzed), a sandbox
  request waits at most 1 s for room (`wait_s`: a full fleet would otherwise hold a request for
  up to 600 s), and a sandbox a fuzzed request opened is closed at once (the one host would be
  full after a few);
- the scheduler is never "under pressure": the fake host reports this shared machine's PSI and
  memory readings, which would refuse sandboxes whenever something else runs here;
- path ids: a share of the valid examples aim at things that exist (the tenant's open sandbox,
  an ended iteration, its suite), or every sandbox and iteration route would only ever answer
  404. A sandbox closed or expired by an example is replaced before the next.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tryfleet.gateway.keys import KeyStore, Scope

EXAMPLES = 25  # per operation and key
STREAM_READ_S = 0.5
STREAMS = {("POST", "/v1/sandboxes/{sid}/exec/stream"), ("GET", "/v1/events/iterations"),
           ("GET", "/v1/iterations/{iid}/output"), ("GET", "/v1/live")}
SANDBOX = {"image": "base", "cpus": 1, "mem_mib": 256, "timeout_s": 3600, "wait_s": 10}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance, negative_data_rejection,
          unsupported_method]
STREAM_CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


@dataclasses.dataclass
class Fuzzed:
    url: str
    keys: KeyStore
    admin: str
    acme: str
    http: httpx.Client
    live: str = ""  # acme's open sandbox, opened again whenever an example closed it
    known: dict[str, str] = dataclasses.field(default_factory=dict)

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def live_sandbox(self) -> str:
        if self.live:
            got = self.http.get(f"/v1/sandboxes/{self.live}", headers=self.headers(self.acme))
            if got.status_code == 200 and got.json()["state"] == "open":
                return self.live
        r = self.http.post("/v1/sandboxes", json=SANDBOX, headers=self.headers(self.acme))
        assert r.status_code == 201, r.text
        self.live = r.json()["id"]
        return self.live


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    from tryfleet import cluster

    cluster.secure_ray()
    import ray

    from tryfleet.gateway.actor import start_gateway
    from tryfleet.nodeagent.actor import start_node_actor
    from tryfleet.nodeagent.simhost import SIM_GROUP_PREFIX, Delays, SimHosts, SimHostSpec
    from tryfleet.scheduler.admission import PressureLimits
    from tryfleet.scheduler.service import SCHEDULER_NAME, Scheduler
    from tryfleet.wire import NAMESPACE

    data = tmp_path_factory.mktemp("fuzz")
    ray.init(address="local", num_cpus=os.cpu_count() or 1, namespace=NAMESPACE,
             include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    keys = KeyStore(cluster.ledger_path(data), data)
    try:
        sim = ray.remote(SimHosts).options(
            name=SIM_GROUP_PREFIX + "fuzz", namespace=NAMESPACE, num_cpus=0,
            max_concurrency=1000).remote(
                [dataclasses.asdict(SimHostSpec("q1", cpus=8, images=("sim",)))],
                dataclasses.asdict(Delays(seed=1, boot_median_ms=5, exec_median_ms=10)))
        node = start_node_actor(str(data / "node"), "fz1", fake=True, detached=False)
        # Never "under pressure": the host's PSI and memory readings are those of a shared
        # machine, whatever else runs on it, and would refuse sandboxes at random.
        never = {f.name: 101.0 for f in dataclasses.fields(PressureLimits)}
        sched = ray.remote(Scheduler).options(
            name=SCHEDULER_NAME, namespace=NAMESPACE, num_cpus=0, max_concurrency=1000).remote(
                str(cluster.ledger_path(data)), pressure=never)
        deadline = time.monotonic() + 60
        while len([h for h in ray.get(sched.status.remote())["hosts"] if h["cpus"]]) < 2:
            assert time.monotonic() < deadline, "the scheduler did not see its hosts"
            time.sleep(0.1)
        gateway, url = start_gateway(data, cluster.ledger_path(data), "127.0.0.1:0",
                                     detached=False)
        _, admin = keys.create("default", frozenset({Scope.ADMIN}), created_by="test")
        _, acme = keys.create("acme", frozenset({Scope.SANDBOX, Scope.BATCH, Scope.READ}),
                              created_by="test")
        with httpx.Client(base_url=url, timeout=30) as http:
            f = Fuzzed(url, keys, admin, acme, http)
            served = http.get("/openapi.json")
            assert served.json() == DOCUMENT, "the served document is not the app's"
            f.known = _known(f)
            yield f
        del gateway, sched, sim
        ray.get(node.shutdown.remote(), timeout=60)
    finally:
        keys.close()
        ray.shutdown()
        shutil.rmtree(data, ignore_errors=True)


def _known(f: Fuzzed) -> dict[str, str]:
    """Things that exist, for path ids to aim at: an ended iteration of acme's and its suite."""
    r = f.http.post("/v1/iterations", headers=f.headers(f.acme), json={
        "id": "fz-1", "suite": "fz", "image": "sim", "command": ["true"]})
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 30
    while f.http.get("/v1/iterations/fz-1", headers=f.headers(f.acme)).json()["state"] in (
            "QUEUED", "PLACED", "RUNNING"):
        assert time.monotonic() < deadline, "the iteration did not end"
        time.sleep(0.05)
    return {"iid": "fz-1", "suite": "fz"}


def _document() -> dict[str, Any]:
    """The gateway's OpenAPI document, from its app over no fleet (the fixture checks that the
    served one is the same): schemathesis makes one test per operation at collection."""
    from tryfleet.gateway.app import create_app
    from tryfleet.gateway.policy import Policies

    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger.db"
        keys = KeyStore(ledger, Path(tmp))
        try:
            app = create_app(None, keys, Policies(Path(tmp)), ledger)
            app.state.sandboxes.close()
            return app.openapi()
        finally:
            keys.close()


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.hook
def map_body(ctx: Any, body: Any) -> Any:
    """What cannot be fuzzed safely pinned (see the module's docstring), so that neither a
    valid body turns invalid nor an invalid one valid: `echo` put before whatever a command
    names, and a sandbox's wait for room at most 1 s."""
    op = ctx.operation
    if op is None or not isinstance(body, dict):
        return body
    if op.path.endswith("/exec") or op.path.endswith("/exec/stream"):
        _echo(body, "argv")
    elif op.path == "/v1/iterations" and op.method.upper() == "POST":
        _echo(body, "command")
    elif op.path == "/v1/batches" and isinstance(body.get("iterations"), list):
        for one in body["iterations"]:
            if isinstance(one, dict):
                _echo(one, "command")
    elif op.path == "/v1/sandboxes" and op.method.upper() == "POST":
        wait = body.get("wait_s", 30)
        if isinstance(wait, int | float) and not isinstance(wait, bool) and wait > 1:
            body["wait_s"] = 1
    return body


def _echo(body: dict[str, Any], field: str) -> None:
    argv = body.get(field)
    if isinstance(argv, list) and argv:
        body[field] = ["echo", *argv]


STRICT = settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))


def _aim(f: Fuzzed, case: Any) -> None:
    """A share of the valid examples aimed at what exists (see the module's docstring)."""
    if case.meta is None or case.meta.generation.mode is not GenerationMode.POSITIVE:
        return
    params = case.path_parameters or {}
    if zlib.crc32(repr(sorted(params.items())).encode()) % 3 == 0:
        return
    if "sid" in params:
        params["sid"] = f.live_sandbox()
    if "iid" in params:
        params["iid"] = f.known["iid"]
    if "suite" in params:
        params["suite"] = f.known["suite"]


def _stream(f: Fuzzed, case: Any, token: str) -> None:
    """An event stream read for at most STREAM_READ_S: its status and content type checked,
    and each event's data a JSON object; a refusal checked in full."""
    kw = case.as_transport_kwargs(base_url=f.url, headers=f.headers(token))
    kw.pop("timeout", None)
    kw.pop("allow_redirects", None)
    req = f.http.build_request(kw.pop("method"), kw.pop("url"), params=kw.pop("params", None),
                               headers=kw.pop("headers", None), json=kw.pop("json", None),
                               content=kw.pop("data", None))
    resp = f.http.send(req, stream=True)
    try:
        ctype = resp.headers.get("content-type", "")
        if resp.status_code != 200 or not ctype.startswith("text/event-stream"):
            resp.read()
            case.validate_response(resp, checks=CHECKS, headers=f.headers(token),
                                   transport_kwargs={"base_url": f.url})
            return
        got = _read_for(resp, req, STREAM_READ_S)
    finally:
        resp.close()
    done = httpx.Response(resp.status_code, headers=resp.headers, content=bytes(got),
                          request=req)
    done.elapsed = resp.elapsed
    case.validate_response(done, checks=STREAM_CHECKS)
    for block in bytes(got).decode("utf-8", "replace").split("\n\n")[:-1]:
        for line in block.splitlines():
            if line.startswith("data:"):
                assert isinstance(json.loads(line[5:]), dict), block


def _read_for(resp: httpx.Response, req: httpx.Request, seconds: float) -> bytes:
    """What a stream sends within `seconds`, however silent it is: the read timeout, which
    httpx keeps in the request's `timeout` extension, is lowered to `seconds` once the headers
    are in (the body is read with the timeout the extension holds when its reading starts)."""
    got = bytearray()
    deadline = time.monotonic() + seconds
    req.extensions["timeout"] = {**req.extensions["timeout"], "read": seconds}
    try:
        for piece in resp.iter_raw():
            got += piece
            if time.monotonic() > deadline:
                break
    except httpx.ReadTimeout:
        pass
    return bytes(got)


def _one(f: Fuzzed, case: Any, token: str) -> None:
    _aim(f, case)
    if (case.method.upper(), case.path) in STREAMS and _streams(case):
        _stream(f, case, token)
        return
    headers = f.headers(token)
    resp = case.call(base_url=f.url, headers=headers, timeout=60)
    try:
        case.validate_response(resp, checks=CHECKS, headers=headers,
                               transport_kwargs={"base_url": f.url, "headers": headers})
    finally:
        if (case.method.upper(), case.path) == ("POST", "/v1/sandboxes") and \
                resp.status_code == 201:
            # closed at once: the fuzz's sandboxes would fill the one host in a few examples
            f.http.delete(f"/v1/sandboxes/{resp.json()['id']}", headers=f.headers(f.admin))


def _streams(case: Any) -> bool:
    if case.path != "/v1/iterations/{iid}/output":
        return True
    follow = (case.query or {}).get("follow")
    return follow in (True, "true", "True", "1", 1)


@schema.parametrize()
@STRICT
def test_fuzz_as_admin(case: Any, fuzzed: Fuzzed) -> None:
    _one(fuzzed, case, fuzzed.admin)


@schema.parametrize()
@STRICT
def test_fuzz_as_tenant(case: Any, fuzzed: Fuzzed) -> None:
    _one(fuzzed, case, fuzzed.acme)
