"""The SDK over HTTP against an in-memory API (tests/unit/fakeapi.py) through httpx's
MockTransport: problems become tryfleet's errors, server-sent events are parsed and resumed,
calls are retried on outages and not on answers, every request carries an id of ours."""

import base64
import json
import pathlib
import re

import httpx
import pytest

import tryfleet
from tryfleet.errors import (
    AccessDenied,
    BadRequest,
    CannotPlace,
    FleetUnavailable,
    InfrastructureError,
    NoRoom,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    TryfleetError,
    WaitTimeout,
)
from tryfleet.fleet import Fleet, result_of, wire_of
from tryfleet.http import Api, Event, error_of, parse_sse
from tryfleet.scheduler.records import Iteration, Result

from .fakeapi import ACME, ADMIN, FakeApi, problem

GATEWAY_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")  # what gateway/app.py keeps


class Sleeps(list):
    """A stand-in for time.sleep that records the pauses instead of taking them."""

    def __call__(self, seconds):
        self.append(seconds)


@pytest.fixture
def fake():
    return FakeApi()


@pytest.fixture
def sleeps():
    return Sleeps()


def fleet_of(fake, key=ACME, sleeps=None, **kw):
    return Fleet("http://fleet.test", key, transport=fake.transport,
                 sleep=sleeps if sleeps is not None else Sleeps(), **kw)


# ---- problems become tryfleet's errors ------------------------------------------------------

@pytest.mark.parametrize("status, slug, extra, kind, attrs", [
    (404, "not-found", {}, NotFound, {}),
    (400, "bad-request", {}, BadRequest, {}),
    (422, "invalid-request", {"errors": []}, BadRequest, {}),
    (422, "cannot-place", {"reason": "h1: cpu"}, CannotPlace, {"reason": "h1: cpu"}),
    (403, "policy-denied", {"rule": "max_cpus"}, PolicyDenied, {"rule": "max_cpus"}),
    (429, "quota-exceeded", {"limit": "max_sandboxes", "value": 5}, QuotaExceeded,
     {"limit": "max_sandboxes", "value": 5}),
    (503, "no-room", {}, NoRoom, {}),
    (503, "unavailable", {}, FleetUnavailable, {}),
    (401, "unauthorized", {}, AccessDenied, {}),
    (403, "forbidden", {"scopes": ["admin"]}, AccessDenied, {"scopes": ("admin",)}),
    (500, "internal", {}, InfrastructureError, {}),
    (418, "something-new", {}, BadRequest, {}),
])
def test_each_problem_type_becomes_its_error(status, slug, extra, kind, attrs):
    resp = problem(status, slug, "what was wrong", rid="req-abc-123", **extra)
    resp.request = httpx.Request("GET", "http://fleet.test/v1/x")
    err = error_of(resp)
    assert type(err) is kind and isinstance(err, TryfleetError)
    assert str(err).startswith("what was wrong")
    assert (err.status, err.request_id, err.problem["type"]) == \
        (status, "req-abc-123", f"urn:tryfleet:problem:{slug}")
    assert {k: getattr(err, k) for k in attrs} == attrs


def test_a_server_error_names_its_request_id_and_a_foreign_answer_its_status():
    resp = problem(500, "internal", "tryfleet failed", rid="req-500-abcdef")
    resp.request = httpx.Request("GET", "http://fleet.test/v1/x")
    assert "req-500-abcdef" in str(error_of(resp))
    html = httpx.Response(502, text="<html>bad gateway</html>",
                          request=httpx.Request("GET", "http://fleet.test/v1/x"))
    err = error_of(html)
    assert isinstance(err, FleetUnavailable) and "HTTP 502" in str(err) and err.status == 502


def test_access_denied_is_a_permission_error():
    assert issubclass(AccessDenied, PermissionError) and issubclass(AccessDenied, TryfleetError)


def test_an_unknown_id_and_a_wrong_key_over_the_wire(fake):
    with pytest.raises(NotFound, match="no iteration 'nosuch'") as err:
        fleet_of(fake).get("nosuch")
    assert err.value.request_id == fake.requests[-1].headers["x-request-id"]
    with pytest.raises(AccessDenied, match="not valid") as denied:
        fleet_of(fake, key="tf_badbadbadbad_" + "x" * 43).me()
    assert denied.value.status == 401


# ---- request ids and retries ------------------------------------------------------------------

def test_every_request_carries_an_id_the_gateway_keeps_and_a_retry_keeps_it(fake, sleeps):
    fake.fault("GET /v1/me", problem(503, "unavailable", "scheduler restarting"))
    fleet = fleet_of(fake, sleeps=sleeps)
    fleet.me()
    first, retry = fake.requests
    rid = first.headers["x-request-id"]
    assert GATEWAY_REQUEST_ID.match(rid) and retry.headers["x-request-id"] == rid
    assert fleet.last_request_id == rid  # the fake sends back what it was sent
    fleet.me()
    assert fake.requests[-1].headers["x-request-id"] != rid


def test_reads_are_retried_through_an_outage_honouring_retry_after(fake, sleeps):
    away = problem(503, "unavailable", "restarting")
    away.headers["retry-after"] = "1"
    fake.fault("GET /v1/iterations", away)
    fake.fault("GET /v1/iterations", httpx.ReadError("reset"))
    fake.fault("GET /v1/iterations", httpx.ConnectError("refused"))
    assert fleet_of(fake, sleeps=sleeps).iterations() == []
    assert len(fake.sent("GET /v1/iterations")) == 4 and sleeps[0] == 1.0


def test_an_outage_longer_than_the_window_raises_fleet_unavailable(fake, sleeps):
    for _ in range(100):
        fake.fault("GET /v1/me", httpx.ConnectError("connection refused"))
    clock = iter(range(0, 10_000)).__next__  # one second a look
    fleet = fleet_of(fake, sleeps=sleeps)
    fleet.api.clock = clock
    fleet.api.retry_s = 5
    with pytest.raises(FleetUnavailable, match="cannot reach the tryfleet API") as err:
        fleet.me()
    assert isinstance(err.value, ConnectionError) and 1 < len(fake.requests) < 10


def test_a_write_that_may_have_happened_is_not_sent_again(fake, sleeps):
    fake.fault("POST /v1/sandboxes", httpx.ReadError("reset after sending"))
    with pytest.raises(FleetUnavailable):
        fleet_of(fake, sleeps=sleeps).sandbox().open()
    assert len(fake.sent("POST /v1/sandboxes")) == 1 and not fake.sandboxes


def test_a_write_that_never_left_is_sent_again(fake, sleeps):
    fake.fault("POST /v1/sandboxes", httpx.ConnectError("refused"))
    box = fleet_of(fake, sleeps=sleeps).sandbox().open()
    assert box.id == "sbx-1" and len(fake.sent("POST /v1/sandboxes")) == 2


def test_a_submit_is_retried_and_records_nothing_twice(fake, sleeps):
    fake.fault("POST /v1/batches", httpx.ReadError("reset"))
    fake.fault("POST /v1/batches", problem(503, "unavailable", "scheduler restarting"))
    ids = fleet_of(fake, sleeps=sleeps).submit([Iteration("base", ["true"])], suite="s")
    sent = [json.loads(r.content)["iterations"][0]["id"] for r in fake.sent("POST /v1/batches")]
    assert len(sent) == 3 and len(set(sent)) == 1 and ids == sent[:1]
    assert len(fake.its) == 1


@pytest.mark.parametrize("answer", [problem(503, "no-room", "no room in 30s"),
                                    problem(429, "quota-exceeded", "max_sandboxes 2",
                                            limit="max_sandboxes", value=2)])
def test_answers_that_are_not_outages_are_raised_at_once(fake, sleeps, answer):
    fake.fault("POST /v1/sandboxes", answer)
    with pytest.raises((NoRoom, QuotaExceeded)):
        fleet_of(fake, sleeps=sleeps).sandbox().open()
    assert len(fake.requests) == 1 and sleeps == []


# ---- server-sent events ---------------------------------------------------------------------

def test_sse_parsing_follows_the_spec():
    text = (": ping\n"
            "event: ended\ndata: {\"a\":\ndata: 1}\nid: 7\n\n"
            "data:no space\r\n\r\n"
            "event: lonely\n\n"
            " data: a field named ' data' is no field\n\n"
            "id: 9\nevent: x\ndata: \n\n")
    lines = httpx.Response(200, content=text.encode()).iter_lines()
    assert list(parse_sse(lines)) == [
        None, Event("ended", '{"a":\n1}', "7"), Event("message", "no space", "7"),
        Event("x", "", "9")]


def test_sse_data_lines_join_with_newlines_and_decode_as_json():
    lines = ["event: e", 'data: {"x":', "data: 2}", ""]
    (ev,) = parse_sse(lines)
    assert ev.json() == {"x": 2}


def test_wait_resumes_the_event_stream_after_a_dropped_connection_and_a_503(fake, sleeps):
    fake.auto_end = False
    fleet = fleet_of(fake, sleeps=sleeps)
    ids = fleet.submit([Iteration("base", ["true"], id=f"w{i}") for i in range(5)], suite="s")
    for iid in ids:
        fake.end("acme", iid, stdout=iid.encode())
    fake.cut_streams_after = 2
    fake.fault("GET /v1/events/iterations", problem(503, "unavailable", "gateway restarting"))
    got = fleet.wait(ids, suite="s")
    assert [r.id for r in got] == ids and got[3].stdout == "w3"
    streams = fake.sent("GET /v1/events/iterations")
    cursors = [r.url.params.get("cursor") for r in streams]
    assert cursors == [None, None, "2"]  # the 503, the stream cut after 2 events, the rest
    assert streams[-1].headers["last-event-id"] == "2" and len(sleeps) == 2


def test_a_wait_that_times_out_says_what_is_left(fake):
    fake.auto_end, fake.idle_s = False, 0.01
    fleet = fleet_of(fake)
    (iid,) = fleet.submit([Iteration("base", ["true"], id="never")], suite="s")
    with pytest.raises(WaitTimeout, match="never") as err:
        fleet.wait([iid], timeout_s=0.05)
    assert isinstance(err.value, TimeoutError)


def test_a_small_wait_without_a_suite_asks_for_each_then_listens_to_its_suite(fake):
    fake.auto_end = False
    fleet = fleet_of(fake)
    fleet.submit([Iteration("base", ["true"], id="a")], suite="one")
    fake.end("acme", "a", stdout=b"done")
    fleet.submit([Iteration("base", ["true"], id="b")], suite="one")
    fake.start("acme", "b")
    fake.fault("GET /v1/events", lambda: fake.end("acme", "b"))  # it ends as the wait listens
    got = fleet.wait(["a", "b"])
    assert [r.state for r in got] == ["SUCCEEDED", "SUCCEEDED"] and got[0].stdout == "done"
    assert {r.url.params.get("suite") for r in fake.sent("GET /v1/events")} == {"one"}


def test_map_yields_results_with_their_output_or_without(fake):
    fleet = fleet_of(fake)
    its = [Iteration("base", ["sh", "-c", f"exit {i % 2}"]) for i in range(4)]
    got = list(fleet.map(its, suite="m"))
    assert len(got) == 4 and {r.stdout for r in got} == {"ok\n"}
    bare = list(fleet.map([Iteration("base", ["true"])], suite="m2", output=False))
    assert bare[0].stdout == "" and bare[0].state == "SUCCEEDED"


def test_follow_streams_output_and_resumes_from_its_offsets(fake):
    fake.auto_end = False
    fleet = fleet_of(fake)
    (iid,) = fleet.submit([Iteration("base", ["x"], id="f")], suite="s")
    fake.start("acme", iid, printed=b"first \xff|")
    fake.end("acme", iid, stdout=b"second", stderr=b"err")
    fake.fault("GET /v1/iterations/f/output", httpx.ConnectError("refused"))
    items = list(fleet.follow(iid))
    *chunks, result = items
    assert b"".join(d for n, d in chunks if n == "stdout") == b"first \xff|second"
    assert [d for n, d in chunks if n == "stderr"] == [b"err"]
    assert isinstance(result, Result) and result.stdout.startswith("first")


def test_exec_stream_yields_output_then_the_exit_and_raises_a_midway_error(fake):
    with fleet_of(fake).sandbox() as sb:
        got = list(sb.exec_stream(["a", "b"]))
        assert got[:2] == [("stdout", b"a\n"), ("stdout", b"b\n")]
        assert got[2][0] == "exit" and got[2][1].exit_code == 0
        fake.fault("POST /v1/sandboxes/sbx-1/exec/stream", httpx.Response(
            200, content=b'event: error\ndata: {"type": "urn:tryfleet:problem:unavailable", '
                         b'"detail": "host h1 did not answer", "status": 503}\n\n',
            headers={"content-type": "text/event-stream"}))
        with pytest.raises(FleetUnavailable, match="h1 did not answer"):
            list(sb.exec_stream(["x"]))


# ---- the rest of the surface ------------------------------------------------------------------

def test_a_sandbox_exec_files_timeout_and_close(fake):
    with fleet_of(fake).sandbox(image="base", cpus=1, mem_mib=512, timeout_s=60,
                                metadata={"who": "t"}) as sb:
        opened = json.loads(fake.sent("POST /v1/sandboxes")[0].content)
        assert opened == {"image": "base", "cpus": 1, "mem_mib": 512, "timeout_s": 60.0,
                          "metadata": {"who": "t"}, "wait_s": 60.0}
        r = sb.exec(["echo", "hi"], stdin=b"\x00")
        assert (r.exit_code, r.stdout, r.stderr) == (0, b"echo hi\x00", b"\xff")
        assert r["request_id"] == fake.requests[-1].headers["x-request-id"]
        assert sb.files.write("/root/a.bin", b"\x00\xff", mode=0o600)["mode"] == "0600"
        assert sb.files.read("/root/a.bin") == b"\x00\xff"
        assert [e["path"] for e in sb.files.list("/root")] == ["/root/a.bin"]
        with pytest.raises(NotFound):
            sb.files.read("/root/none")
    assert fake.sandboxes["sbx-1"]["state"] == "closed"


def test_a_sandbox_that_can_never_be_placed_raises_cannot_place(fake):
    with pytest.raises(CannotPlace) as err:
        fleet_of(fake).sandbox(cpus=99).open()
    assert err.value.reason == "h1: cpu" and isinstance(err.value, ValueError)


def test_files_of_bytes_cross_as_base64_and_ids_are_given_before_sending():
    it = Iteration("base", ["cat"], files={"/a": "text", "/b": b"\x00\xff"})
    body = wire_of(it)
    assert body["files"] == {"/a": "text", "/b": {"b64": base64.b64encode(b"\x00\xff").decode()}}
    assert "disk_mib" not in body and "cwd" not in body


def test_an_iteration_json_reads_attempts_as_a_count_or_a_list():
    base = {"id": "x", "state": "RUNNING", "suite": "s", "tenant": "t"}
    assert result_of({**base, "attempt": 2}).attempts == 2  # a listing's, an event's
    assert result_of({**base, "attempt": 2, "attempts": [{}, {}]}).attempts == 2  # one's view
    assert result_of({**base, "attempts": [{}, {}, {}]}).attempts == 3
    assert result_of({**base, "output": {"stdout": "o"}}).stdout == "o"


def test_an_iteration_json_gives_the_result_its_request_id_and_end_cursor():
    got = result_of({"id": "x", "state": "SUCCEEDED", "request_id": "req_1234abcd",
                     "key_id": "k1", "end_cursor": "17"})
    assert (got.request_id, got.key_id, got.end_seq) == ("req_1234abcd", "k1", 17)
    assert result_of({"id": "x", "state": "QUEUED"}).request_id == ""


def test_listings_page_by_cursor(fake):
    fleet = fleet_of(fake)
    fleet.submit([Iteration("base", ["true"], id=f"p{i:03}") for i in range(450)], suite="s")
    got = fleet.iterations(states=["SUCCEEDED"], suite="s", limit=420)
    assert [r.id for r in got] == [f"p{i:03}" for i in range(420)]
    assert len(fake.sent("GET /v1/iterations")) == 3
    assert fleet.counts("s") == {"SUCCEEDED": 450}


def test_cancel_takes_exactly_one_scope_and_the_kill_switch_needs_an_admin(fake):
    fake.auto_end = False
    fleet = fleet_of(fake)
    with pytest.raises(BadRequest, match="exactly one"):
        fleet.cancel()
    with pytest.raises(BadRequest, match="exactly one"):
        fleet.cancel("x", suite="s")
    fleet.submit([Iteration("base", ["true"], id="c1")], suite="s")
    assert fleet.cancel(suite="s") == {"queued_cancelled": 1, "running_stopped": 0}
    with pytest.raises(AccessDenied, match="admin"):
        fleet.cancel(all=True)
    assert fleet_of(fake, ADMIN).cancel(all=True)["queued_cancelled"] == 0


def test_limit_sizes_are_set_by_admins_and_only_checked_for_others(fake):
    with pytest.raises(BadRequest, match="set by admins"):
        fleet_of(fake).submit([Iteration("base", ["true"])], limits={"ci-db": 2})
    assert not fake.its and not fake.limits and not fake.sent("PUT /v1/fleet/limits")
    fleet_of(fake, ADMIN).submit([Iteration("base", ["true"], limits=("ci-db",))],
                                 limits={"ci-db": 2})
    assert fake.limits == {"ci-db": 2}
    fleet_of(fake).submit([Iteration("base", ["true"], limits=("ci-db",))], limits={"ci-db": 2})
    assert json.loads(fake.sent("POST /v1/batches")[-1].content)["expect_limits"] == {
        "ci-db": 2}
    assert len(fake.sent("PUT /v1/fleet/limits")) == 1  # the admin's only


def test_admins_manage_keys_and_a_revoked_key_is_refused_at_once(fake):
    admin = fleet_of(fake, ADMIN)
    made = admin.keys.create("acme", ["read"], expires_in_s=60, name="ci")
    assert made["key"].startswith("tf_") and made["scopes"] == ["read"]
    mine = fleet_of(fake, made["key"])
    assert mine.me()["tenant"] == "acme"
    assert made["id"] in {k["id"] for k in admin.keys.list("acme")}
    admin.keys.revoke(made["id"])
    with pytest.raises(AccessDenied):
        mine.me()


def test_the_public_surface_has_what_the_readme_shows():
    names = {"submit", "map", "watch", "wait", "run", "cancel", "status", "iterations", "get",
             "attempts", "counts", "output", "follow", "results", "result", "sandbox", "events",
             "set_limit", "close", "keys"}
    assert names <= set(dir(tryfleet.Fleet)) | {"keys"}
    assert {"exec", "exec_stream", "files", "open", "close", "set_timeout"} <= \
        set(dir(tryfleet.Sandbox)) | {"files"}


def test_api_closes_its_connections():
    api = Api("http://fleet.test", ACME, transport=FakeApi().transport)
    api.close()
    with pytest.raises(RuntimeError):
        api.request("GET", "/v1/me")


def test_the_readme_sdk_example_runs_against_the_api(fake, capsys):
    readme = pathlib.Path(tryfleet.__file__).parents[1] / "README.md"
    (code,) = re.findall(r"\*\*Python SDK\*\*.*?```python\n(.*?)```", readme.read_text(), re.S)
    code = re.sub(r"tryfleet\.connect\([^)]*\)",
                  "tryfleet.connect(URL, api_key=KEY, transport=TRANSPORT)", code, count=1)
    exec(compile(code, "README.md", "exec"),
         {"URL": "http://fleet.test", "KEY": ACME, "TRANSPORT": fake.transport})
    out = capsys.readouterr().out
    assert "b'python3 /root/a.py'" in out and out.count("SUCCEEDED") >= 10
    assert fake.files == {"/root/a.py": b"print('hi')"}
