"""Iteration ids and suite names are per tenant, through the ledger, the core and the scheduler's
API; limit sizes are an admin's, kept in the ledger; request and key ids go with what a request
made, out to the hosts."""

import sqlite3
from dataclasses import replace

import msgpack
import pytest

from tests.waiting import until
from tryfleet.errors import BadRequest
from tryfleet.scheduler import core as c
from tryfleet.scheduler.ledger import Ledger
from tryfleet.scheduler.ledger_reads import AmbiguousId, LedgerView
from tryfleet.scheduler.records import Iteration
from tryfleet.wire import State

from .localfleet import FAST, Delays, Printing, SimHostSpec, local_scheduler
from .test_core import make_host, make_row
from .test_ledger_reads import OLD_SCHEMA

SLOW = Delays(seed=1, boot_median_ms=1, exec_median_ms=60_000, exec_sigma=0.01)


def it(iid, *command, **kw):
    return Iteration("base", command or ("true",), id=iid, **kw)


@pytest.fixture
def ledger(tmp_path):
    led = Ledger(tmp_path / "ledger.db")
    yield led
    led.close()


# ---- the ledger ------------------------------------------------------------------------------
def test_two_tenants_use_the_same_id_and_suite_without_meeting(ledger):
    assert ledger.submit([it("t1", "a")], "fix-1", "acme") == ["t1"]
    assert ledger.submit([it("t1", "b")], "fix-1", "bolt") == ["t1"]  # not IdReused
    a, b = ledger.get_row("t1", "acme"), ledger.get_row("t1", "bolt")
    assert (a.key, b.key) == ("acme/t1", "bolt/t1")
    assert (a.iteration.command, b.iteration.command) == (("a",), ("b",))
    assert [r.tenant for r in ledger.results(tenant="bolt", suite="fix-1")] == ["bolt"]
    assert ledger.counts("fix-1", "acme") == {"QUEUED": 1}
    assert ledger.get_row("t1", "nobody") is None


def test_an_id_asked_for_without_a_tenant_is_ambiguous_when_two_tenants_use_it(ledger):
    ledger.submit([it("t1")], "s", "acme")
    assert ledger.get_row("t1").tenant == "acme"  # one tenant has it: found
    ledger.submit([it("t1")], "s", "bolt")
    with pytest.raises(AmbiguousId, match="acme, bolt") as err:
        ledger.get_row("t1")
    assert isinstance(err.value, BadRequest)


def test_what_a_tenant_sees_end_is_its_own_and_the_cursor_moves_past_the_others(ledger):
    ledger.submit([it("x")], "s", "acme")
    ledger.submit([it("x"), it("y")], "s", "bolt")
    for key in ("bolt/x", "acme/x", "bolt/y"):
        row = ledger.get_row(*reversed(key.split("/")))
        assert ledger.launch([c.Launch(key, 1, "h1", row)]) == [True]
        assert ledger.commit([c.Finish(key, 1, State.SUCCEEDED)]) == [True]
    got, cursor = ledger.ended_since(0, tenant="acme", output=False)
    assert [(r.tenant, r.id, r.end_seq) for r in got] == [("acme", "x", 2)] and cursor == 3


def test_submitting_records_the_request_and_the_key(ledger):
    ledger.submit([it("a")], "s", "acme", request_id="req_1234567890", key_id="k1")
    assert ledger.get_row("a", "acme").request_id == "req_1234567890"
    r = ledger.result("a", "acme")
    assert (r.request_id, r.key_id) == ("req_1234567890", "k1")


def test_tenant_and_suite_names_that_would_break_keys_are_refused(ledger):
    with pytest.raises(BadRequest, match="tenant"):
        ledger.submit([it("a")], "s", "ac/me")
    with pytest.raises(BadRequest, match="suite"):
        ledger.submit([it("a")], "fix/1", "acme")


OLD_TABLES = OLD_SCHEMA + """
CREATE TABLE attempts (iteration_id TEXT NOT NULL, attempt INTEGER NOT NULL, host TEXT NOT NULL,
    placed_at REAL NOT NULL, ended_at REAL, outcome TEXT, error TEXT,
    PRIMARY KEY (iteration_id, attempt));
CREATE TABLE suites (name TEXT PRIMARY KEY, tenant TEXT NOT NULL, created_at REAL NOT NULL,
    max_iterations INTEGER, max_wall_s REAL);
"""


def test_a_ledger_made_before_tenant_keys_keeps_every_row_with_its_tenant(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(OLD_TABLES)
    for n, (iid, tenant, state) in enumerate([("a", "acme", "SUCCEEDED"),
                                              ("b", "bolt", "QUEUED")]):
        spec = msgpack.packb(it(iid).to_wire())
        db.execute("INSERT INTO iterations (id, seq, tenant, suite, trace_id, priority, spec, "
                   "limits, state, max_attempts, runs_left, submitted_at, ended_at) VALUES "
                   "(?, ?, ?, 'fix', 'x', 0, ?, '', ?, 3, 1, ?, ?)",
                   (iid, n, tenant, spec, state, n, n if state == "SUCCEEDED" else None))
    db.execute("INSERT INTO attempts VALUES ('a', 1, 'h1', 0, 1, 'SUCCEEDED', NULL)")
    db.execute("INSERT INTO suites VALUES ('fix', 'acme', 0, 5, 60)")
    db.commit()
    db.close()
    led = Ledger(path)
    assert led.get_row("a", "acme").key == "acme/a" and led.get_row("b", "acme") is None
    assert [(x["iteration_id"], x["outcome"]) for x in led.attempts("a", "acme")] == [
        ("a", "SUCCEEDED")]
    assert led.suite("acme", "fix")["max_wall_s"] == 60  # the budget stays with its maker
    assert led.suite("bolt", "fix")["max_wall_s"] is None  # bolt's iterations: its own suite
    assert led.ended_since(0, tenant="acme")[0][0].end_seq == 1
    led.close()
    assert Ledger(path).get_row("b", "bolt").state == "QUEUED"  # migrated once, kept


def test_limit_sizes_are_kept_until_an_admin_changes_them(tmp_path, ledger):
    ledger.set_limit("ci-db", 8, by="key:k1")
    ledger.set_limit("gpu", 2)
    ledger.set_limit("gpu", None)
    assert Ledger(tmp_path / "ledger.db").limits() == {"ci-db": 8}
    for name, value in (("bad name", 1), ("ci-db", -1), ("ci-db", "8"), ("ci-db", True)):
        with pytest.raises(BadRequest):
            ledger.set_limit(name, value)


def test_a_read_only_view_reads_what_the_ledger_writes_and_writes_nothing(tmp_path, ledger):
    view = LedgerView(tmp_path / "ledger.db")
    ledger.submit([it(f"i{n}") for n in range(600)], "s", "acme")  # past IN_LIST_MAX
    got = view.results(tenant="acme", ids=[f"i{n}" for n in range(600)], output=False)
    assert len(got) == 600 and view.counts(tenant="acme") == {"QUEUED": 600}
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        view._db.execute("DELETE FROM iterations")
    view.close()


# ---- the core --------------------------------------------------------------------------------
def test_the_core_cancels_one_tenants_suite_and_not_anothers_of_the_same_name():
    core = c.Core()
    rows = [make_row("i-1", suite="fix", tenant="acme"), make_row("i-2", suite="fix",
                                                                   tenant="bolt")]
    rows = [replace(r, key="") for r in rows]  # keyed as the ledger keys them: tenant/id
    core.handle(c.HostsSeen((make_host(),)))
    core.handle(c.Submitted(tuple(rows)))
    core.handle(c.Tick(0))
    acts = core.handle(c.CancelRequested(c.Scope.SUITE, "acme/fix"))
    assert [a for a in acts if isinstance(a, c.MarkCancelled)] == [
        c.MarkCancelled(("acme/i-1",), "cancelled by request")]
    assert not core.state.work["bolt/i-2"].cancel


# ---- the scheduler's API ---------------------------------------------------------------------
def test_hosts_get_the_tenants_own_names_and_the_request_id(tmp_path):
    sim = Printing([SimHostSpec("a")], FAST)
    with local_scheduler(tmp_path, sim) as (transport, sched):
        transport.loop.run(sched.submit([it("t1").to_wire()], "fix", "acme", None, None, None,
                                        "req_abcdef12", "k1"))
        until(lambda: sim.requests)
        (req,) = sim.requests
        assert req.id == "acme/t1"  # what the host knows the attempt by: unique fleet-wide
        assert (req.ids.tenant, req.ids.suite, req.ids.iteration, req.ids.request_id) == (
            "acme", "fix", "t1", "req_abcdef12")


def test_a_batch_names_limits_but_only_an_admin_sizes_them_and_the_size_survives(tmp_path):
    with local_scheduler(tmp_path, Printing([SimHostSpec("a")], FAST)) as (transport, sched):
        run = transport.loop.run
        wire = [it("t1", limits=("ci-db",)).to_wire()]
        with pytest.raises(BadRequest, match="set by admins"):
            run(sched.submit(wire, "s", "acme", {"ci-db": 2}))
        assert run(sched.set_limit("ci-db", 2, "key:admin")) == {"ci-db": 2}
        assert run(sched.submit(wire, "s", "acme", {"ci-db": 2})) == ["t1"]  # agrees: fine
        assert run(sched.submit(wire, "s", "acme")) == ["t1"]
    with local_scheduler(tmp_path) as (transport, again):
        assert transport.loop.run(again.limits()) == {"ci-db": 2}


def test_a_cancel_by_suite_reaches_only_that_tenants_suite(tmp_path):
    sim = Printing([SimHostSpec("a", cpus=1)], SLOW)
    with local_scheduler(tmp_path, sim) as (transport, sched):
        run = transport.loop.run
        for tenant in ("acme", "bolt"):
            run(sched.submit([it("t1").to_wire(), it("t2").to_wire()], "fix", tenant))
        until(lambda: len(sim.requests) == 1)
        with pytest.raises(AmbiguousId):
            run(sched.cancel(suite="fix"))
        runs = sim.requests[0].ids.tenant == "acme"
        got = run(sched.cancel(suite="fix", tenant="acme"))
        assert got == {"queued_cancelled": 1 if runs else 2, "running_stopped": int(runs)}
        assert run(sched.counts("fix", "bolt")).get("CANCELLED") is None
        assert run(sched.cancel("t2", None, "bolt")) == {"queued_cancelled": 1,
                                                         "running_stopped": 0}
        assert run(sched.get("t2", "acme"))["result"]["state"] == "CANCELLED"
