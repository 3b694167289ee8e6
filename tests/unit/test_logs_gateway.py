"""The gateway's log lines carry the ids of the request they belong to: its request id and
trace id from the start, its tenant and key once its key is checked, the sandbox a route is
about; one access line per request; never the key's secret."""

import logging

from . import loglines
from .apifleet import api_fleet
from .loglines import parsed

lines = loglines.lines  # the fixture
TRACE = "0af7651916cd43dd8448eb211c80319c"


def of_request(got, rid):
    return [g for g in got if g.get("request_id") == rid]


def test_a_requests_lines_carry_its_request_id_trace_id_tenant_and_key(tmp_path, lines):
    with api_fleet(tmp_path) as api:
        key = api.key("acme")
        answer = api.get("/v1/sandboxes", headers={
            **key, "X-Request-Id": "req_logged_0001",
            "traceparent": f"00-{TRACE}-b7ad6b7169203331-01"})
    assert answer.status_code == 200
    (access,) = [g for g in of_request(parsed(lines()), "req_logged_0001")
                 if g["logger"] == "tryfleet.gateway.access"]
    key_id = key["Authorization"].split("_")[1]
    assert {k: access.get(k) for k in ("trace_id", "tenant", "key", "method", "route",
                                       "status")} == {
        "trace_id": TRACE, "tenant": "acme", "key": key_id, "method": "GET",
        "route": "/v1/sandboxes", "status": 200}
    assert access["duration_s"] >= 0 and access["level"] == "info"


def test_what_a_sandbox_request_causes_is_logged_with_its_ids(tmp_path, lines):
    with api_fleet(tmp_path) as api:
        key = api.key("acme")
        opening = api.post("/v1/sandboxes", json={}, headers={
            **key, "X-Request-Id": "req_opening_0001"})
        assert opening.status_code == 201, opening.text
        sid = opening.json()["id"]
        api.delete(f"/v1/sandboxes/{sid}", headers={**key, "X-Request-Id": "req_closing_01"})
    got = parsed(lines())
    # the node agent's line, logged while the gateway's request opened the sandbox (here in
    # this process; in a fleet the request's ids travel with the call, wire.Ids)
    (opened,) = [g for g in got if g["msg"].startswith(f"sandbox {sid} open")]
    assert (opened["request_id"], opened["tenant"], opened["sandbox"]) == (
        "req_opening_0001", "acme", sid)
    (closed,) = [g for g in of_request(got, "req_closing_01")
                 if g["logger"] == "tryfleet.gateway.access"]
    assert (closed["sandbox"], closed["route"], closed["status"]) == (
        sid, "/v1/sandboxes/{sid}", 204)


def test_a_refused_key_is_logged_by_its_request_id_without_its_secret(tmp_path, lines):
    token = "tf_0123456789ab_" + "S" * 43
    with api_fleet(tmp_path) as api:
        api.get("/v1/sandboxes", headers={"Authorization": f"Bearer {token}",
                                          "X-Request-Id": "req_refused_001"})
    got = of_request(parsed(lines()), "req_refused_001")
    assert [(g["status"], "tenant" in g) for g in got
            if g["logger"] == "tryfleet.gateway.access"] == [(401, False)]
    assert "S" * 43 not in "".join(lines())


def test_lines_logged_after_a_request_carry_none_of_its_ids(tmp_path, lines):
    with api_fleet(tmp_path) as api:
        api.get("/v1/sandboxes", headers={**api.key("acme"), "X-Request-Id": "req_before_01"})
    logging.getLogger("tryfleet.test").info("afterwards")
    assert "request_id" not in parsed(lines())[-1]
