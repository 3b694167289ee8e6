"""The Grafana dashboard in the repository (gateway/grafana/tryfleet-dashboard.json) is one
Grafana can import, and every metric its queries name is one /metrics really exports: read
from a fleet in this process after a small batch, so histograms have samples."""

import json
import re
from pathlib import Path

import pytest

import tryfleet.gateway
from tryfleet.gateway.keys import Scope

from .metricsfleet import fleet_after_a_batch, names

DASHBOARD = Path(tryfleet.gateway.__file__).parent / "grafana" / "tryfleet-dashboard.json"
ROWS = ["Fleet overview", "Hosts", "Suites", "API", "Guardrails"]
METRIC = re.compile(r"\btryfleet_[a-zA-Z0-9_:]*")
EGRESS = {"tryfleet_egress_decisions_total", "tryfleet_egress_bytes_total",
          "tryfleet_egress_connections"}


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD.read_text())


def queries(dash):
    """Every PromQL query of the dashboard: its panels' and its variables'."""
    found = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    found += [v["query"]["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return found


def test_the_dashboard_has_its_rows_and_every_panel_reads_the_chosen_prometheus(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert [p["title"] for p in dashboard["panels"] if p["type"] == "row"] == ROWS
    (ds,) = [v for v in dashboard["templating"]["list"] if v["name"] == "DS_PROMETHEUS"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    for p in panels:
        assert p["targets"], p["title"]
        for ref in [p["datasource"], *(t["datasource"] for t in p["targets"])]:
            assert ref == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]


def test_the_metric_pattern_finds_every_name_of_a_query():
    expr = ('histogram_quantile(0.95, sum by (le) (rate(tryfleet_a_seconds_bucket[5m]))) / '
            'tryfleet_b{host=~"$host"}')
    assert METRIC.findall(expr) == ["tryfleet_a_seconds_bucket", "tryfleet_b"]


def declared(text):
    """The metrics an exposition declares (`# TYPE` lines), samples or not."""
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def test_every_metric_the_dashboard_queries_is_exported_by_metrics(dashboard, tmp_path):
    wanted = {m for q in queries(dashboard) for m in METRIC.findall(q)}
    assert len(wanted) >= 20
    with fleet_after_a_batch(tmp_path) as api:
        got = api.get("/metrics", headers=api.key("ops", Scope.METRICS))
    assert got.status_code == 200
    # Each has samples after a batch, but the egress proxy's: those come with a guest's
    # network traffic (the batch's guests have none), so they are declared, not yet counted.
    assert sorted(wanted - names(got.text) - (EGRESS & declared(got.text))) == []
