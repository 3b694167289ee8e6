"""The api benchmark's pure parts: reading server-sent events, the targets' verdicts, the
chart (no fleet, no HTTP)."""

from benchmarks import api
from benchmarks.chart import bars


def test_events_are_read_as_their_blank_line_closes_them_and_keepalives_are_skipped():
    lines = ["event: started", 'data: {"sandbox": "s1"}', "", ": ping", "",
             "event: stdout", 'data: {"data": "hi\\n"}', ""]
    got = api.sse_events(iter(lines))
    assert next(got) == ("started", {"sandbox": "s1"})  # before the later lines are read
    assert list(got) == [("stdout", {"data": "hi\n"})]


def test_an_event_with_several_data_lines_joins_them():
    lines = ["event: exit", "data: {\"exit_code\":", "data: 0}", ""]
    assert list(api.sse_events(lines)) == [("exit", {"exit_code": 0})]


def test_each_target_is_met_or_missed_on_its_bound():
    figures = {"exec_true_p50_ms": {"http_minus_in_cluster": 3.0},
               "sandbox_create_p50_ms": 15.01, "status_requests_per_s": 1000.0}
    got = api.verdicts(figures)
    assert [got[k]["met"] for k in ("exec_true_http_minus_in_cluster_p50_ms",
                                    "sandbox_create_p50_ms", "status_requests_per_s")] == [
        True, False, True]


def test_no_pool_hit_at_all_misses_the_create_target():
    figures = {"exec_true_p50_ms": {"http_minus_in_cluster": 1.0},
               "sandbox_create_p50_ms": None, "status_requests_per_s": 2000.0}
    assert api.verdicts(figures)["sandbox_create_p50_ms"]["met"] is False


def test_stats_of_no_samples_is_only_their_count():
    assert api.stats([]) == {"n": 0}
    assert api.stats([1.0, 2.0, 3.0])["p50"] == 2.0


def test_chart_sets_http_beside_the_in_cluster_path():
    result = {"exec_true_p50_ms": {"http": 40.0, "in_cluster": 38.0},
              "sandbox_create_p50_ms": 12.0, "sse_first_event_ms": 5.0,
              "sandbox_create_ms": {"http": {"p50": 12.0}, "in_cluster": {"n": 0}},
              "status_requests_per_s": 1100.0}
    drawn = {(b.series, b.metric): b.value for b in bars(api.CHART, result)}
    assert drawn[("HTTP", "exec true p50")] == 40.0
    assert drawn[("in-cluster", "exec true p50")] == 38.0
    assert ("in-cluster", "sandbox create, pool hit p50") not in drawn  # no hit: no bar


def test_a_create_is_a_hit_only_when_it_took_a_vm_held_before_on_a_calm_host():
    pooled = {"tryfleet-snap-1", "tryfleet-snap-2"}
    assert api.create_kind("tryfleet-snap-1", pooled, calm=True) == "hit"
    assert api.create_kind("tryfleet-snap-3", pooled, calm=True) == "miss"  # made for it
    assert api.create_kind("tryfleet-snap-1", pooled, calm=False) == "pressured"
