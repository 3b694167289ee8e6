"""The backlog: admission order per suite, a bounded head, lazy removal."""

import pytest

from tests.unit.builders import banned_imports
from tryfleet.scheduler import backlog as bl
from tryfleet.scheduler import metrics as mt
from tryfleet.scheduler.admission import Candidate
from tryfleet.scheduler.backlog import Backlog
from tryfleet.scheduler.placement import Demand


def cand(iid, seq, suite="s", priority=0, tenant="t"):
    return Candidate(iid, suite, tenant, priority, seq, (), Demand(1, 512, 1024, "base"))


def ids(cands):
    return [c.id for c in cands]


def test_each_suite_in_priority_then_submission_order():
    b = Backlog()
    for c in [cand("a3", 3), cand("a1", 1), cand("hi", 5, priority=9), cand("a2", 2),
              cand("x1", 4, suite="x")]:
        assert b.add(c)
    assert ids(b.heads(10)) == ["hi", "a1", "a2", "a3", "x1"]
    assert len(b) == 5 and "a2" in b


def test_heads_takes_at_most_k_from_each_suite():
    b = Backlog()
    for n in range(100):
        b.add(cand(f"s{n}", n))
        b.add(cand(f"x{n}", 1000 + n, suite="x"))
    assert ids(b.heads(2)) == ["s0", "s1", "x0", "x1"]


def test_adding_twice_holds_once_and_discard_is_idempotent():
    b = Backlog()
    assert b.add(cand("a", 1)) and not b.add(cand("a", 1))
    assert b.discard("a").id == "a" and b.discard("a") is None
    assert b.heads(5) == [] and len(b) == 0


def test_a_retried_iteration_goes_back_to_its_place_in_line_once():
    b = Backlog()
    for n in range(5):
        b.add(cand(f"i{n}", n))
    b.discard("i0")
    b.discard("i2")
    assert ids(b.heads(10)) == ["i1", "i3", "i4"]
    b.add(cand("i2", 2))  # back for another attempt: same seq, same place
    assert ids(b.heads(10)) == ["i1", "i2", "i3", "i4"]


@pytest.mark.parametrize("n", [10, 5000])
def test_removal_in_the_middle_and_compaction_keep_the_order(n):
    b = Backlog()
    for i in range(n):
        b.add(cand(f"i{i}", i))
    for i in range(0, n, 2):
        b.discard(f"i{i}")
    for i in range(0, n, 4):
        b.add(cand(f"i{i}", i))
    want = [f"i{i}" for i in range(n) if i % 2 or i % 4 == 0]
    assert ids(b.heads(n)) == want
    assert sorted(c.id for c in b) == sorted(want)


def test_metrics_percentiles_are_nearest_rank():
    samples = [i / 1000 for i in range(1, 101)]
    assert mt.percentile(samples, 50) == 0.05 and mt.percentile(samples, 99) == 0.099
    assert mt.percentile([], 99) == 0.0


@pytest.mark.parametrize("module", [bl, mt])
def test_backlog_and_metrics_are_pure(module):
    assert banned_imports(module) == set()
