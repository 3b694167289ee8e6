"""/metrics: the whole fleet's Prometheus metrics, behind a key, with bounded labels, from a
fleet in this process that ran a small batch (metricsfleet.py)."""

import asyncio
import types

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from tryfleet.errors import FleetUnavailable
from tryfleet.gateway.keys import Scope
from tryfleet.gateway.metrics import exposition
from tryfleet.scheduler import exporter
from tryfleet.wire import NODE_ACTOR_PREFIX

from .apifleet import HOST
from .metricsfleet import (
    fleet_after_a_batch,
    names,
    readme_metrics,
    readme_scrape_config,
    samples,
)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with fleet_after_a_batch(tmp_path_factory.mktemp("metrics")) as api:
        yield api


@pytest.fixture(scope="module")
def scraper(api):
    return api.key("ops", Scope.METRICS)


def scrape(api, headers):
    got = api.get("/metrics", headers=headers)
    assert got.status_code == 200, got.text
    return got.text


# ---- access ----------------------------------------------------------------------------------
def test_without_a_key_metrics_are_refused_with_401(api):
    got = api.get("/metrics")
    assert got.status_code == 401
    assert got.json()["type"] == "urn:tryfleet:problem:unauthorized"


def test_a_tenants_key_without_the_metrics_scope_is_refused_with_403_naming_it(api):
    got = api.get("/metrics", headers=api.key("acme", Scope.SANDBOX, Scope.BATCH, Scope.READ))
    assert got.status_code == 403
    assert got.json()["scopes"] == ["metrics"]


def test_a_metrics_key_reads_them_in_prometheus_text_format_and_so_does_an_admin(api, scraper):
    got = api.get("/metrics", headers=scraper)
    assert got.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert "tryfleet_iterations_total" in names(got.text)
    assert api.get("/metrics", headers=api.key("ops", Scope.ADMIN)).status_code == 200


def test_a_metrics_key_may_do_nothing_else(api, scraper):
    assert api.get("/v1/iterations", headers=scraper).status_code == 403
    assert api.post("/v1/sandboxes", headers=scraper, json={}).status_code == 403
    assert api.get("/v1/fleet", headers=scraper).status_code == 403


# ---- what is in them -------------------------------------------------------------------------
def test_iterations_are_counted_by_terminal_state_and_by_suite(api, scraper):
    got = samples(scrape(api, scraper))
    assert got[("tryfleet_iterations_total", (("state", "SUCCEEDED"),))] >= 1
    assert got[("tryfleet_iterations_total", (("state", "FAILED"),))] >= 1
    in_s1 = (("state", "FAILED"), ("suite", "s1"), ("tenant", "acme"))
    assert got[("tryfleet_suite_iterations", in_s1)] == 1
    assert got[("tryfleet_ledger_iterations", (("state", "SUCCEEDED"),))] == 1
    assert got[("tryfleet_queued_iterations", ())] == 0


def test_sandbox_start_times_are_a_histogram_by_image_and_origin_and_execs_one_by_host(
        api, scraper):
    got = samples(scrape(api, scraper))
    starts = {dict(labels)["origin"]: v for (name, labels), v in got.items()
              if name == "tryfleet_sandbox_start_seconds_count"
              and dict(labels)["image"] == "base" and dict(labels)["host"] == HOST}
    assert sum(starts.values()) >= 2 and set(starts) <= {"pool", "restore", "boot"}
    assert got[("tryfleet_exec_duration_seconds_count", (("host", HOST),))] >= 2
    assert got[("tryfleet_sandbox_start_seconds_bucket",
                (("host", HOST), ("image", "base"), ("le", "+Inf"),
                 ("origin", next(iter(starts)))))] >= 1


def test_each_host_has_its_capacity_pressure_and_vms(api, scraper):
    got = samples(scrape(api, scraper))
    assert got[("tryfleet_host_up", (("host", HOST),))] == 1
    assert got[("tryfleet_host_cpus", (("host", HOST),))] >= 1
    assert got[("tryfleet_host_memory_bytes", (("host", HOST),))] >= 2**20
    assert ("tryfleet_host_pressure_ratio", (("host", HOST), ("kind", "some"),
                                             ("resource", "cpu"))) in got
    assert ("tryfleet_host_vms", (("host", HOST),)) in got


def test_switches_admission_waits_and_the_audit_head_are_there(api, scraper):
    got = samples(scrape(api, scraper))
    assert got[("tryfleet_switches_on", (("level", "tenant"), ("strength", "freeze")))] == 0
    assert got[("tryfleet_admission_waiting_iterations", (("reason", "frozen"),))] == 0
    assert got[("tryfleet_audit_head_seq", ())] > 0
    assert got[("tryfleet_audit_appends_total", (("writer", "scheduler"),))] > 0


def test_api_requests_are_labelled_by_route_template_never_by_the_path(api, scraper):
    api.get("/v1/iterations/it-secret-1234", headers=scraper)
    api.get("/no/such/place-5678", headers=scraper)
    text = scrape(api, scraper)
    assert "it-secret-1234" not in text and "place-5678" not in text
    got = samples(text)
    assert got[("tryfleet_api_requests_total", (("method", "GET"),
                                                ("route", "/v1/iterations/{iid}"),
                                                ("status", "403")))] >= 1
    assert got[("tryfleet_api_requests_total", (("method", "GET"), ("route", "unmatched"),
                                                ("status", "404")))] >= 1


def test_authorization_denials_are_counted_by_reason(api, scraper):
    def count(reason):
        return samples(scrape(api, scraper))[
            ("tryfleet_authorization_denials_total", (("reason", reason),))]

    before = {r: count(r) for r in ("no_key", "bad_key", "scope")}
    api.get("/v1/iterations")
    api.get("/v1/iterations", headers={"Authorization": "Bearer tf_000000000000_" + "x" * 43})
    api.get("/v1/iterations", headers=scraper)
    assert {r: count(r) - n for r, n in before.items()} == {"no_key": 1, "bad_key": 1,
                                                             "scope": 1}


def test_a_fleet_in_one_process_gives_each_sample_once(api, scraper):
    text = scrape(api, scraper)
    samples(text)  # fails on a sample met twice
    assert text.count("# TYPE process_cpu_seconds_total counter") == 1


# ---- when a part does not answer -------------------------------------------------------------
class _Mute:
    """A node agent's handle whose `metrics` call fails; every other call goes through."""

    def __init__(self, handle):
        self._handle = handle

    def __getattr__(self, name):
        if name != "metrics":
            return getattr(self._handle, name)

        async def fail():
            raise TimeoutError("no answer")

        return types.SimpleNamespace(remote=lambda: asyncio.ensure_future(fail()))


def test_a_host_whose_agent_does_not_answer_is_down_and_the_scrape_still_answers(
        api, scraper, monkeypatch):
    agents = api.fleet.scheduler.engine.hosts.agents
    name = NODE_ACTOR_PREFIX + HOST
    monkeypatch.setitem(agents, name, _Mute(agents[name]))
    got = samples(scrape(api, scraper))
    assert got[("tryfleet_host_up", (("host", HOST),))] == 0
    assert got[("tryfleet_scheduler_up", ())] == 1


def test_without_the_scheduler_the_gateway_still_answers_with_its_own(api, scraper,
                                                                       monkeypatch):
    async def gone(method, *args):
        raise FleetUnavailable("the scheduler did not answer")

    monkeypatch.setattr(api.fleet, "sched", gone)
    got = samples(scrape(api, scraper))
    assert got[("tryfleet_scheduler_up", ())] == 0
    assert "tryfleet_api_requests_total" in {name for name, _ in got}
    assert "tryfleet_host_up" not in {name for name, _ in got}


def test_of_a_family_another_process_serves_the_gateways_own_copy_is_left_out():
    """A gateway in a process of its own imports the scheduler's modules: its copy of the
    scheduler's counters (zeros) must not stand in for the scheduler's."""
    theirs = CollectorRegistry()
    Counter("tryfleet_iterations", "ended", ["state"], registry=theirs).labels(
        "SUCCEEDED").inc(5)
    exporter.counters().ended.labels("SUCCEEDED")  # this process has the family too

    class Elsewhere:
        async def sched(self, method, *args):
            return {"pid": -1, "shared": generate_latest(theirs), "fleet": b"", "nodes": []}

    got = samples(asyncio.run(exposition(Elsewhere(), None)).decode())
    assert got[("tryfleet_iterations_total", (("state", "SUCCEEDED"),))] == 5
    assert got[("tryfleet_scheduler_up", ())] == 1


# ---- suites, named by users, are bounded -----------------------------------------------------
def _engine(live, recent):
    work = {f"w{n}": types.SimpleNamespace(row=types.SimpleNamespace(tenant=t, suite=s))
            for n, (t, s) in enumerate(live)}
    ledger = types.SimpleNamespace(recent_suites=lambda limit: recent[:limit])
    return types.SimpleNamespace(core=types.SimpleNamespace(
        state=types.SimpleNamespace(work=work)), ledger=ledger)


def test_suites_with_work_come_first_up_to_a_cap_then_only_the_most_recent_others(
        monkeypatch):
    monkeypatch.setattr(exporter, "MAX_LIVE_SUITES", 2)
    monkeypatch.setattr(exporter, "RECENT_SUITES", 1)
    recent = [("a", "new-done"), ("a", "live-1"), ("a", "old-done"), ("b", "live-2")]
    live = [("a", "live-1"), ("b", "live-2"), ("b", "live-3")]  # live-3: older than recent
    chosen = exporter.FleetCollector(_engine(live, recent))._suites()
    assert chosen == [("a", "live-1"), ("b", "live-2"), ("a", "new-done")]


# ---- the README says how to scrape them ------------------------------------------------------
def test_the_readmes_scrape_config_sends_a_key_file_as_a_bearer_token_to_the_gateway():
    (job,) = readme_scrape_config()["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].endswith(".key")
    assert job["static_configs"] == [{"targets": ["127.0.0.1:8470"]}]


def test_the_readme_gives_the_bounds_the_code_keeps():
    text = " ".join(readme_metrics().split())
    assert f"within {exporter.NODE_TIMEOUT_S:g} s" in text
    assert f"(the {exporter.MAX_LIVE_SUITES} newest)" in text
    assert f"the {exporter.RECENT_SUITES} most recent others" in text
