"""The Python SDK over the real scheduler and ledger in this process (tests/unit/localfleet.py):
waiting by cursor, listings, one iteration's detail and output, following it, errors."""

import itertools
import pickle
import shutil

import pytest
import ray

from tryfleet.errors import BadRequest, CannotPlace, NoRoom, NotFound, TryfleetError, WaitTimeout
from tryfleet.raytransport import scheduler_error
from tryfleet.scheduler.records import Iteration, Result
from tryfleet.wire import State

from .builders import IDS_40000 as IDS
from .builders import end
from .localfleet import FAST, Delays, Printing, SimHostSpec, end_now, local_fleet


def finish(ledger, ids, state="SUCCEEDED"):
    end(ledger, ids, State(state), stdout=str.encode)


def ids_sent(transport):
    """How many ids each ended_since call carried, in order."""
    return [len(args[2] or ()) for method, args in transport.calls if method == "ended_since"]


def test_watching_40000_ids_sends_each_id_once_then_only_a_cursor(tmp_path, queued_40000):
    shutil.copy(queued_40000, tmp_path / "ledger.db")
    n, ids = len(IDS), IDS
    with local_fleet(tmp_path) as (fleet, sched, transport):
        finish(sched.ledger, ids[:20_000])  # these ended before the watch began
        watching = fleet.watch(ids, poll_s=0.01, suite="s")
        first = list(itertools.islice(watching, 20_000))
        finish(sched.ledger, ids[20_000:30_000])
        second = list(itertools.islice(watching, 10_000))
        finish(sched.ledger, ids[30_000:])
        rest = list(watching)
        got = first + second + rest
        assert sorted(r.id for r in got) == ids and {r.state for r in got} == {"SUCCEEDED"}
        assert {r.id for r in first} == set(ids[:20_000])
        assert {r.id for r in second} == set(ids[20_000:30_000])
        sent = ids_sent(transport)
        assert sum(sent) == n  # every id crossed once, in the first sweep
        assert all(s == 0 for s in sent[8:]) and all(s > 0 for s in sent[:8])
        assert all(args[1] == "s" for method, args in transport.calls[8:]
                   if method == "ended_since")


def test_wait_on_40000_ids_without_a_suite_returns_them_in_order(tmp_path, queued_40000):
    shutil.copy(queued_40000, tmp_path / "ledger.db")
    n, ids = len(IDS), IDS
    with local_fleet(tmp_path) as (fleet, sched, transport):
        sched.ledger.submit([Iteration("base", ("true",), id="other")], "s2", "t")
        finish(sched.ledger, [*ids[::-1], "other"])
        got = fleet.wait(ids)
        assert [r.id for r in got] == ids and got[7].stdout == ids[7]
        assert sum(ids_sent(transport)) == n


def test_a_wait_that_times_out_says_what_is_left(tmp_path):
    with local_fleet(tmp_path) as (fleet, sched, _):
        sched.ledger.submit([Iteration("base", ("true",), id="never")], "s", "t")
        with pytest.raises(WaitTimeout, match="never") as err:
            fleet.wait(["never"], timeout_s=0.05)
        assert isinstance(err.value, TimeoutError)


def test_follow_yields_the_output_as_it_comes_then_the_result(tmp_path):
    script = b"line 1\nline 2\n\xff\x00 not text"
    half = len(script) // 2  # what the simulated command has printed while it runs
    sim = Printing([SimHostSpec("a", cpus=4)],
                   Delays(seed=1, boot_median_ms=1, exec_median_ms=600_000, exec_sigma=0.01),
                   script)
    with local_fleet(tmp_path, sim) as (fleet, _, transport):
        (iid,) = fleet.submit([Iteration("base", ("x",), id="f1")], suite="s")
        following = fleet.follow(iid, poll_s=0.01)
        assert next(following) == ("stdout", script[:half])  # while it runs

        async def end():
            return end_now(sim, "a")

        assert transport.loop.run(end()) == 1
        *rest, result = itertools.islice(following, 100)
        assert rest == [("stdout", script[half:])]
        assert isinstance(result, Result) and result.state == "SUCCEEDED"


def test_one_iteration_its_detail_attempts_output_and_listings(tmp_path):
    sim = Printing([SimHostSpec("a", cpus=4)], FAST, b"out")
    with local_fleet(tmp_path, sim) as (fleet, _, _):
        ids = fleet.submit([Iteration("base", ("x",), id=f"d{i}") for i in range(3)], "s")
        fleet.wait(ids, suite="s", timeout_s=30)
        detail = fleet.get("d1")
        assert (detail.result.id, detail.result.state, detail.result.stdout) == \
            ("d1", "SUCCEEDED", "out")
        assert [(a.attempt, a.host, a.outcome) for a in detail.attempts] == \
            [(1, "a", "SUCCEEDED")]
        assert fleet.attempts("d1") == list(detail.attempts)
        out = fleet.output("d1", 1)
        assert (out.stdout, out.done, out.state, out.attempt) == (b"ut", True, "SUCCEEDED", 1)
        listed = fleet.iterations(states=["SUCCEEDED"], suite="s", limit=2)
        assert [r.id for r in listed] == ["d0", "d1"] and listed[0].stdout == ""
        assert fleet.iterations(states=["QUEUED", "RUNNING"]) == []
        assert fleet.counts("s") == {"SUCCEEDED": 3}


@pytest.mark.parametrize("call", [
    lambda f: f.get("nosuch"), lambda f: f.attempts("nosuch"), lambda f: f.output("nosuch"),
])
def test_an_unknown_id_is_not_found(tmp_path, call):
    with local_fleet(tmp_path) as (fleet, _, _), pytest.raises(NotFound, match="nosuch"):
        call(fleet)


@pytest.mark.parametrize("call, match", [
    (lambda f: f.iterations(states=["DONE"]), "unknown state"),
    (lambda f: f.iterations(limit=0), "limit"),
    (lambda f: f.ended_since(-1), "cursor"),
    (lambda f: f.cancel(), "cancel needs"),
])
def test_bad_queries_are_bad_requests(tmp_path, call, match):
    with local_fleet(tmp_path) as (fleet, _, _), pytest.raises(BadRequest, match=match):
        call(fleet)


def test_submit_of_what_no_host_could_run_raises_cannot_place_with_the_reason(tmp_path):
    with local_fleet(tmp_path, Printing([SimHostSpec("a", cpus=2)], FAST)) as (fleet, _, _):
        with pytest.raises(CannotPlace, match="can never run") as err:
            fleet.submit([Iteration("base", ("true",), cpus=64)], suite="s")
        assert "cpu" in err.value.reason and isinstance(err.value, ValueError)
        assert fleet.counts("s") == {}


def test_a_sandbox_that_can_never_be_placed_raises_cannot_place(tmp_path):
    with local_fleet(tmp_path, Printing([SimHostSpec("a", cpus=2)], FAST)) as (fleet, _, _):
        with pytest.raises(CannotPlace, match="never be placed") as err:
            fleet.sandbox(cpus=4, timeout_s=5).__enter__()
        assert "cpu" in err.value.reason


def test_a_sandbox_with_no_room_before_its_deadline_raises_no_room(tmp_path):
    with local_fleet(tmp_path, Printing([SimHostSpec("a", cpus=2)], FAST)) as (fleet, _, t):
        assert t.call("lease", "holder", "base", 2, 512, None, 60.0)["verdict"] == "placed"
        with pytest.raises(NoRoom, match=r"within 0\.2s") as err:
            fleet.sandbox(cpus=1, timeout_s=0.2).__enter__()
        assert isinstance(err.value, TimeoutError) and not isinstance(err.value, BadRequest)


def test_the_schedulers_own_errors_come_out_of_rays_wrapper():
    refused = CannotPlace("can never fit", "h1: cpu")
    wrapped = ray.exceptions.RayTaskError("submit", "traceback", refused)
    assert scheduler_error(wrapped) is refused
    bug = ray.exceptions.RayTaskError("submit", "traceback", KeyError("x"))
    assert scheduler_error(bug) is bug  # not tryfleet's: Ray's error, traceback and all


@pytest.mark.parametrize("err", [CannotPlace("m", "h1: cpu"), NotFound("no such"),
                                 WaitTimeout("late")])
def test_errors_cross_processes_whole(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert getattr(back, "reason", None) == getattr(err, "reason", None)
    assert isinstance(back, TryfleetError)
