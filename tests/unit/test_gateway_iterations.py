"""The gateway's iteration routes served by uvicorn on loopback in this process, over a real
ledger and a stand-in for the scheduler: what needs no fleet (keep-alives of the event stream,
its wake-up on an ending, the fleet status cache). The full behaviour runs against a real fleet
in tests/integration/test_api_iterations.py."""

import asyncio
import threading
import time

import fastapi.routing
import httpx
import pytest
import uvicorn

from tryfleet.gateway.app import create_app
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.gateway.policy import Policies
from tryfleet.gateway.routes.fleet import ShortCache
from tryfleet.scheduler.core import Finish
from tryfleet.scheduler.ledger import Ledger
from tryfleet.scheduler.records import Iteration
from tryfleet.wire import State

STATUS = {"hosts": [], "limits": {"ci-db": 2}, "limits_in_use": {"ci-db": 1},
          "counts": {"QUEUED": 1}, "tenants": {"acme": {"QUEUED": 1}}, "in_flight": 0}


class StubFleet:
    """The scheduler's calls the routes under test make, counted."""

    def __init__(self):
        self.calls = []

    async def sched(self, method, *args):
        self.calls.append(method)
        if method == "status":
            return STATUS
        if method == "set_limit":
            return {args[0]: args[1]}
        raise AssertionError(f"unexpected call {method}")


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setattr(fastapi.routing, "_PING_INTERVAL", 0.2)  # FastAPI's keep-alive period
    ledger = Ledger(tmp_path / "ledger.db")
    keys = KeyStore(tmp_path / "ledger.db", tmp_path)
    fleet = StubFleet()
    app = create_app(fleet, keys, Policies(tmp_path), tmp_path / "ledger.db")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}", ledger, keys, fleet
    server.should_exit = True
    thread.join(10)
    keys.close()
    ledger.close()


def client(url, keys, tenant, *scopes):
    _, token = keys.create(tenant, frozenset(scopes), created_by="test")
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


@pytest.mark.parametrize("key", [True, False])
def test_an_answer_carries_one_request_id_also_when_it_is_a_problem(served, key):
    url, _, keys, _ = served
    with client(url, keys, "acme", Scope.READ) as c:
        if not key:
            del c.headers["Authorization"]
        r = c.get("/v1/iterations/nosuch", headers={"X-Request-Id": "req-from-the-client"})
    assert r.status_code == (404 if key else 401)
    assert r.headers.get_list("x-request-id") == ["req-from-the-client"]
    assert r.json()["request_id"] == "req-from-the-client"


def test_the_stream_keeps_alive_while_nothing_ends_and_wakes_on_an_ending(served):
    url, ledger, keys, _ = served
    ledger.submit([Iteration("base", ("true",), id="a")], "s", "acme")
    with client(url, keys, "acme", Scope.READ) as c, \
            c.stream("GET", "/v1/events/iterations", params={"suite": "s"}) as r:
        lines = r.iter_lines()
        assert next(lines) == ": ping"  # nothing has ended: a keep-alive comment
        ledger.commit([Finish("acme/a", 0, State.CANCELLED, "cancelled", queued=True)])
        got = []
        for line in lines:
            if line.startswith(("event:", "id:")):
                got.append(line)
            if len(got) == 2:
                break
        assert got == ["event: ended", "id: 1"]


def test_fleet_status_is_asked_of_the_scheduler_once_per_short_while(served):
    url, _, keys, fleet = served
    with client(url, keys, "default", Scope.ADMIN) as c:
        answers = [c.get("/v1/fleet") for _ in range(20)]
        assert {r.status_code for r in answers} == {200}
        assert answers[0].json()["limits"] == {"ci-db": {"size": 2, "in_use": 1}}
        assert fleet.calls.count("status") == 1  # 20 requests within 200 ms: one call
        assert c.put("/v1/fleet/limits/ci-db", json={"value": 3}).status_code == 200
        c.get("/v1/fleet")
        assert fleet.calls.count("status") == 2  # a new size: asked again at once


def test_callers_who_come_during_a_fetch_share_it():
    fetches = []

    async def fetch():
        fetches.append(1)
        await asyncio.sleep(0.01)
        return b"status"

    async def go():
        cache = ShortCache(60.0)
        got = await asyncio.gather(*(cache.get(fetch) for _ in range(10)))
        assert got == [b"status"] * 10 and len(fetches) == 1

    asyncio.run(go())
