"""The scheduler's queries, which the API's iteration routes serve, over the real scheduler and
ledger in this process (tests/unit/localfleet.py): one iteration's detail, attempts and output,
listings, counts, results by cursor, and its refusals as tryfleet's errors."""

import pickle

import pytest

from tests.waiting import until
from tryfleet.errors import (
    AccessDenied,
    BadRequest,
    CannotPlace,
    NotFound,
    TryfleetError,
    WaitTimeout,
)
from tryfleet.scheduler.records import Iteration

from .localfleet import FAST, Delays, Printing, SimHostSpec, end_now, local_scheduler


def test_one_iteration_its_detail_attempts_output_and_listings(tmp_path):
    sim = Printing([SimHostSpec("a", cpus=4)], FAST, b"out")
    with local_scheduler(tmp_path, sim) as (s, _):
        s.call("submit", [Iteration("base", ("x",), id=f"d{i}").to_wire() for i in range(3)],
               "s", "t")
        until(lambda: s.call("counts", "s") == {"SUCCEEDED": 3})
        detail = s.call("get", "d1")
        assert (detail["result"]["id"], detail["result"]["state"],
                detail["result"]["stdout"]) == ("d1", "SUCCEEDED", "out")
        assert [(a["attempt"], a["host"], a["outcome"]) for a in detail["attempts"]] == \
            [(1, "a", "SUCCEEDED")]
        assert s.call("attempts", "d1") == detail["attempts"]
        out = s.call("output", "d1", 1, 0)
        assert (out["stdout"], out["done"], out["state"], out["attempt"]) == \
            (b"ut", True, "SUCCEEDED", 1)
        listed = s.call("iterations", ["SUCCEEDED"], "s", 2)
        assert [r["id"] for r in listed] == ["d0", "d1"] and listed[0]["stdout"] == ""
        assert s.call("iterations", ["QUEUED", "RUNNING"], None, 200) == []
        ended = s.call("ended_since", 0, "s", None, 2)
        assert len(ended["results"]) == 2 and ended["cursor"] > 0
        rest = s.call("ended_since", ended["cursor"], "s", None, 100)
        assert len(rest["results"]) == 1


def test_output_is_live_while_it_runs_then_the_rest_once_it_ended(tmp_path):
    script = b"line 1\nline 2\n\xff\x00 not text"
    half = len(script) // 2  # what the simulated command has printed while it runs
    sim = Printing([SimHostSpec("a", cpus=4)],
                   Delays(seed=1, boot_median_ms=1, exec_median_ms=600_000, exec_sigma=0.01),
                   script)
    with local_scheduler(tmp_path, sim) as (s, _):
        s.call("submit", [Iteration("base", ("x",), id="f1").to_wire()], "s", "t")
        until(lambda: s.call("counts", "s", "t") == {"RUNNING": 1})
        live = until(lambda: s.call("output", "f1", 0, 0, "t")["stdout"])
        assert live == script[:half]
        assert s.call("output", "f1", 0, 0, "t")["done"] is False

        async def end():
            return end_now(sim, "a")

        assert s.loop.run(end()) == 1
        until(lambda: s.call("counts", "s", "t") == {"SUCCEEDED": 1})
        rest = s.call("output", "f1", half, 0, "t")
        assert (rest["stdout"], rest["done"], rest["state"]) == (script[half:], True,
                                                                 "SUCCEEDED")


@pytest.mark.parametrize("method, args", [("get", ("nosuch",)), ("attempts", ("nosuch",)),
                                          ("output", ("nosuch", 0, 0))])
def test_an_unknown_id_is_not_found(tmp_path, method, args):
    with local_scheduler(tmp_path) as (s, _), pytest.raises(NotFound, match="nosuch"):
        s.call(method, *args)


@pytest.mark.parametrize("method, args, match", [
    ("iterations", (["DONE"], None, 200), "unknown state"),
    ("iterations", (None, None, 0), "limit"),
    ("ended_since", (-1,), "cursor"),
])
def test_bad_queries_are_bad_requests(tmp_path, method, args, match):
    with local_scheduler(tmp_path) as (s, _), pytest.raises(BadRequest, match=match):
        s.call(method, *args)


def test_submit_of_what_no_host_could_run_raises_cannot_place_with_the_reason(tmp_path):
    with local_scheduler(tmp_path, Printing([SimHostSpec("a", cpus=2)], FAST)) as (s, _):
        with pytest.raises(CannotPlace, match="can never run") as err:
            s.call("submit", [Iteration("base", ("true",), cpus=64).to_wire()], "s", "t")
        assert "cpu" in err.value.reason and isinstance(err.value, ValueError)
        assert s.call("counts", "s") == {}


@pytest.mark.parametrize("err", [CannotPlace("m", "h1: cpu"), NotFound("no such"),
                                 WaitTimeout("late"), AccessDenied("no key", ("admin",))])
def test_errors_cross_processes_whole(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    for attr in ("reason", "scopes"):
        assert getattr(back, attr, None) == getattr(err, attr, None)
    assert isinstance(back, TryfleetError)
