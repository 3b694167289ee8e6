"""The control room's server side: the page and its files (served to a hostile web: a strict
Content-Security-Policy, no sniffing, out of the OpenAPI document and the audit trail), and
the endpoints it reads beyond the existing ones, /v1/live (server-sent events) and
/v1/throughput, with their tenancy and their answers to no key, an expired key, another
tenant's view and malformed requests. Over real HTTP on loopback (httpfleet.py: the real
scheduler and ledger, a node agent on the fake hypervisor, the audit trail on)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.waiting import until
from tryfleet.gateway.keys import Scope

from .httpfleet import HttpFleet, http_fleet

TERMINAL = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED", "INFRA_ERROR"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFleet]:
    with http_fleet(tmp_path_factory.mktemp("room"), audit=True) as f:
        yield f


def key(f: HttpFleet, tenant: str, *scopes: Scope, **kw: Any) -> dict[str, str]:
    _, token = f.keys.create(tenant, frozenset(scopes or {Scope.BATCH, Scope.SANDBOX}),
                             created_by="test", **kw)
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def work(fleet: HttpFleet) -> dict[str, dict[str, str]]:
    """Tenant acme's suite `ac` (2 iterations, ended) and bolt's `bo` (1, ended); their keys
    and an admin's."""
    keys = {"acme": key(fleet, "acme"), "bolt": key(fleet, "bolt"),
            "admin": key(fleet, "default", Scope.ADMIN)}
    with httpx.Client(base_url=fleet.url, timeout=30) as c:
        for tenant, suite, n in (("acme", "ac", 2), ("bolt", "bo", 1)):
            r = c.post("/v1/batches", headers=keys[tenant], json={"suite": suite, "iterations": [
                {"id": f"{suite}-{i}", "image": "base", "command": ["echo", str(i)]}
                for i in range(n)]})
            assert r.status_code == 201, r.text

        def ended() -> bool:
            got = c.get("/v1/iterations", headers=keys["admin"]).json()["items"]
            return len(got) == 3 and all(i["state"] in TERMINAL for i in got)

        until(ended, timeout_s=60, explain=lambda: c.get("/v1/iterations",
                                                        headers=keys["admin"]).text)
    return keys


def events(url: str, headers: dict[str, str], wanted: int, params: dict[str, str] | None = None
           ) -> list[tuple[str, Any]]:
    """The first `wanted` events of GET /v1/live (or fewer, if it ends first)."""
    got: list[tuple[str, Any]] = []
    with httpx.Client(base_url=url, timeout=10) as c, \
            c.stream("GET", "/v1/live", headers=headers, params=params) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        name = ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                got.append((name, json.loads(line[5:])))
                if len(got) >= wanted:
                    break
    return got


def first(got: list[tuple[str, Any]], name: str) -> Any:
    return next(data for event, data in got if event == name)


# ---- the page ------------------------------------------------------------------------------
def test_the_page_is_served_with_a_strict_content_security_policy(fleet: HttpFleet) -> None:
    r = httpx.get(fleet.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp and "'unsafe-inline'" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script src=\"/controlroom/app.js\"" in r.text and "<script>" not in r.text
    assert " style=" not in r.text and "<style" not in r.text  # no inline style either


@pytest.mark.parametrize(("name", "kind"), [("app.js", "text/javascript"),
                                            ("style.css", "text/css"),
                                            ("icon.svg", "image/svg+xml")])
def test_its_files_are_served_with_their_types(fleet: HttpFleet, name: str, kind: str) -> None:
    r = httpx.get(f"{fleet.url}/controlroom/{name}")
    assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("name", ["index.htm", "..%2Fapp.py", "%2E%2E%2F__init__.py",
                                  "../auth.py"])
def test_no_other_file_is_reachable(fleet: HttpFleet, name: str) -> None:
    r = httpx.get(f"{fleet.url}/controlroom/{name}")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


def test_the_page_is_not_in_the_openapi_document_and_the_live_routes_are(
        fleet: HttpFleet) -> None:
    paths = httpx.get(fleet.url + "/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/controlroom") for p in paths)
    assert {"/v1/live", "/v1/throughput"} <= set(paths)


def test_the_page_holds_no_key_and_needs_none(fleet: HttpFleet) -> None:
    r = httpx.get(fleet.url + "/")
    assert "tf_" not in r.text.replace('placeholder="tf_..."', "")


# ---- /v1/live: tenancy ---------------------------------------------------------------------
def test_a_tenant_sees_its_own_suites_and_records_only(fleet: HttpFleet, work: Any) -> None:
    got = events(fleet.url, work["bolt"], 2)
    snap, audit = first(got, "snapshot"), first(got, "audit")
    assert [s["name"] for s in snap["suites"]] == ["bo"]
    assert snap["counts"] == {"SUCCEEDED": 1} and snap["tenant"] == "bolt"
    assert "fleet" not in snap and "switches" not in snap and "tenants" not in snap
    assert {r["tenant"] for r in audit["items"]} == {"bolt"}
    assert "acme" not in json.dumps(got)


def test_an_admin_sees_every_tenant_the_hosts_and_the_switches(fleet: HttpFleet,
                                                               work: Any) -> None:
    snap = first(events(fleet.url, work["admin"], 1), "snapshot")
    assert {(s["tenant"], s["name"]) for s in snap["suites"]} >= {("acme", "ac"), ("bolt", "bo")}
    assert [h["host"] for h in snap["fleet"]["hosts"]] == ["h1"]
    assert snap["switches"] == [] and snap["counts"] == {"SUCCEEDED": 3}


def test_an_admin_may_look_through_one_tenants_eyes(fleet: HttpFleet, work: Any) -> None:
    got = events(fleet.url, work["admin"], 2, {"tenant": "acme"})
    assert [s["name"] for s in first(got, "snapshot")["suites"]] == ["ac"]
    assert {r["tenant"] for r in first(got, "audit")["items"]} == {"acme"}


def test_a_sandbox_only_key_gets_its_sandboxes_but_no_iterations(fleet: HttpFleet,
                                                                 work: Any) -> None:
    snap = first(events(fleet.url, key(fleet, "acme", Scope.SANDBOX), 1), "snapshot")
    assert "sandboxes" in snap and "suites" not in snap and "counts" not in snap


def test_the_audit_feed_resumes_after_its_cursor(fleet: HttpFleet, work: Any) -> None:
    backlog = first(events(fleet.url, work["acme"], 2), "audit")["items"]
    seq = backlog[-2]["seq"]
    resumed = first(events(fleet.url, work["acme"], 2, {"audit_cursor": str(seq)}), "audit")
    assert resumed["items"][0]["seq"] > seq


# ---- /v1/live: what others get -------------------------------------------------------------
def problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = r.json()
    return body


def test_no_key_and_an_expired_key_get_401(fleet: HttpFleet) -> None:
    problem(httpx.get(fleet.url + "/v1/live"), 401)
    ends = time.time() + 0.5
    expired = key(fleet, "acme", expires_at=ends)
    until(lambda: time.time() > ends + 0.01)
    assert "expired" in problem(httpx.get(fleet.url + "/v1/live", headers=expired), 401
                                )["detail"]


def test_another_tenants_view_is_refused(fleet: HttpFleet, work: Any) -> None:
    r = httpx.get(fleet.url + "/v1/live", headers=work["bolt"], params={"tenant": "acme"})
    assert "acts only for that tenant" in problem(r, 403)["detail"]


@pytest.mark.parametrize("params", [{"audit_cursor": "abc"}, {"audit_cursor": "-1"},
                                    {"tenant": "x" * 65}])
def test_a_malformed_request_is_a_4xx_problem_before_any_event(fleet: HttpFleet, work: Any,
                                                               params: dict[str, str]) -> None:
    r = httpx.get(fleet.url + "/v1/live", headers=work["acme"], params=params)
    assert r.status_code in (400, 422) and problem(r, r.status_code)["status"] == r.status_code


def test_a_key_revoked_meanwhile_ends_the_stream_with_a_problem(fleet: HttpFleet) -> None:
    info, token = fleet.keys.create("acme", frozenset({Scope.READ}), created_by="test")
    got: list[str] = []
    with httpx.Client(base_url=fleet.url, timeout=10) as c, c.stream(
            "GET", "/v1/live", headers={"Authorization": f"Bearer {token}"}) as r:
        for line in r.iter_lines():
            if line.startswith("event:"):
                got.append(line[6:].strip())
                if got == ["snapshot"]:
                    fleet.keys.revoke(info.id, by="test")
    assert got[-1] == "error" and got.count("error") == 1


def test_the_stream_is_recorded_in_the_audit_trail(fleet: HttpFleet, work: Any) -> None:
    events(fleet.url, {**work["acme"], "X-Request-Id": "req-live-audited"}, 1)
    with httpx.Client(base_url=fleet.url, timeout=10) as c:
        def traced() -> list[str]:
            r = c.get("/v1/audit/trace/req-live-audited", headers=work["acme"])
            return [x["action"] for x in r.json()["items"]] if r.status_code == 200 else []

        until(lambda: traced() == ["api.request", "api.response"], timeout_s=10,
              explain=traced)


# ---- /v1/throughput ------------------------------------------------------------------------
def test_throughput_counts_a_tenants_endings_per_minute(fleet: HttpFleet, work: Any) -> None:
    r = httpx.get(fleet.url + "/v1/throughput", headers=work["acme"])
    got = r.json()
    assert r.status_code == 200 and got["step_s"] == 60 and len(got["points"]) == 60
    assert sum(p["counts"].get("SUCCEEDED", 0) for p in got["points"]) == 2
    everyone = httpx.get(fleet.url + "/v1/throughput", headers=work["admin"]).json()
    assert sum(sum(p["counts"].values()) for p in everyone["points"]) == 3


def test_throughput_refuses_another_tenant_and_a_bad_window(fleet: HttpFleet,
                                                           work: Any) -> None:
    problem(httpx.get(fleet.url + "/v1/throughput", headers=work["bolt"],
                      params={"tenant": "acme"}), 403)
    problem(httpx.get(fleet.url + "/v1/throughput", headers=work["acme"],
                      params={"minutes": 0}), 422)
    problem(httpx.get(fleet.url + "/v1/throughput", headers=key(fleet, "acme", Scope.SANDBOX)),
            403)


def test_the_package_data_ships_every_file_of_the_page() -> None:
    import fnmatch
    import tomllib

    root = Path(__file__).parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["tryfleet.gateway.controlroom"]
    files = [p.name for p in (root / "gateway" / "controlroom" / "static").iterdir()]
    assert files and all(any(fnmatch.fnmatch(f"static/{n}", pat) for pat in data)
                         for n in files)
