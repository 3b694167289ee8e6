"""The egress benchmark's measurement runs end to end (a few fetches) and reports each way."""

from benchmarks.egress import proxy_overhead


def test_proxy_overhead_reports_percentiles_of_every_way_and_the_overhead():
    got = proxy_overhead(n=3)
    for way in ("direct", "proxy", "proxy_audit", "relay_audit"):
        assert 0 < got[f"{way}_p50_ms"] <= got[f"{way}_p99_ms"], way
    assert got["egress_overhead_p50_ms"] == \
        round(got["relay_audit_p50_ms"] - got["direct_p50_ms"], 3)
    assert got["n"] == 3 and isinstance(got["egress_overhead_met"], bool)
