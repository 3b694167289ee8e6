"""The scheduler's pure core: events in, actions out, with a fake clock (the `now` of Tick).
No Ray, no threads, no sleeps."""

import random

import pytest

from tests.unit.builders import banned_imports
from tryfleet.errors import CannotPlace
from tryfleet.scheduler import core as c
from tryfleet.scheduler.placement import Demand, HostView
from tryfleet.scheduler.records import Iteration, Row
from tryfleet.wire import Failure, Outcome, State

T0 = 1_000_000.0  # the fake clock's start


def make_row(iid: str, suite: str = "s", tenant: str = "t", cpus: int = 1, mem_mib: int = 512,
             retries: int = 0, priority: int = 0, seq: int = 0, image: str = "base",
             max_attempts: int = 3, state: str = "QUEUED", attempt: int = 0,
             host: str | None = None) -> Row:
    it = Iteration(image, ("true",), cpus=cpus, mem_mib=mem_mib, retries=retries,
                   priority=priority, id=iid)
    # key=iid: the core needs its keys unique, nothing more (the ledger makes them tenant/id).
    return Row(key=iid, id=iid, seq=seq or int(iid.rsplit("-", 1)[-1]), tenant=tenant, suite=suite,
               trace_id="trace-" + iid, priority=priority, iteration=it, limits=(),
               state=state, attempt=attempt, max_attempts=max_attempts, runs_left=retries + 1,
               host=host, cancel_requested=False)


def make_host(name: str = "h1", cpus: int = 8, mem_mib: int = 32768) -> HostView:
    return HostView(name=name, cpus=cpus, mem_mib=mem_mib, disk_mib=100_000,
                    images=frozenset({"base"}))


def started(core: c.Core, *rows: Row, hosts: tuple[HostView, ...] = (make_host(),),
            now: float = T0) -> list[c.Action]:
    """Submit rows to a core that sees hosts, and run one pass."""
    core.handle(c.HostsSeen(hosts))
    core.handle(c.Submitted(tuple(rows)))
    return core.handle(c.Tick(now))


def outcome(iid: str, attempt: int, state: State, host: str = "h1",
            failure: Failure | None = None) -> Outcome:
    return Outcome(iid, attempt, state, host, exit_code=0 if state is State.SUCCEEDED else 1,
                   error=None if state is State.SUCCEEDED else f"{state.value} on {host}",
                   failure=failure)


def of(actions: list[c.Action], kind: type) -> list:
    return [a for a in actions if isinstance(a, kind)]


def test_a_pass_records_every_placement_in_one_action_before_one_start_per_host():
    core = c.Core()
    rows = [make_row(f"i-{n}", cpus=4) for n in range(1, 5)]
    actions = started(core, *rows, hosts=(make_host("h1"), make_host("h2")))
    assert [type(a) for a in actions] == [c.RecordPlacements, c.StartOnHost, c.StartOnHost]
    (record,) = of(actions, c.RecordPlacements)
    # 4 iterations x 4 cpus on two 8-cpu hosts: fullest first, two on each.
    assert sorted((lc.id, lc.attempt, lc.host) for lc in record.launches) == [
        ("i-1", 1, "h1"), ("i-2", 1, "h1"), ("i-3", 1, "h2"), ("i-4", 1, "h2")]
    assert {a.host: len(a.launches) for a in of(actions, c.StartOnHost)} == {"h1": 2, "h2": 2}


def test_what_does_not_fit_now_waits_in_the_queue_for_the_next_pass():
    core = c.Core()
    actions = started(core, *(make_row(f"i-{n}", cpus=4) for n in range(1, 4)))
    assert len(of(actions, c.RecordPlacements)[0].launches) == 2  # 8 cpus: two of three
    assert core.handle(c.Tick(T0 + 1)) == []
    core.handle(c.OutcomesCollected("h1", (outcome("i-1", 1, State.SUCCEEDED),)))
    (record, _start) = core.handle(c.Tick(T0 + 2))
    assert [lc.id for lc in record.launches] == ["i-3"]


def test_a_success_is_committed_once_and_a_stale_attempt_changes_nothing():
    core = c.Core()
    started(core, make_row("i-1"))
    stale = core.handle(c.OutcomesCollected("h1", (outcome("i-1", 7, State.FAILED),)))
    assert stale == []
    done = core.handle(c.OutcomesCollected("h1", (outcome("i-1", 1, State.SUCCEEDED),) * 2))
    assert [(type(a), a.id, a.attempt, a.state) for a in done] == [
        (c.Finish, "i-1", 1, State.SUCCEEDED)]
    assert core.state.work == {} and len(core.state.reservations) == 0


def test_an_infrastructure_error_is_retried_on_another_host_until_the_attempts_run_out():
    core = c.Core()
    hosts = (make_host("h1", cpus=1), make_host("h2", cpus=1))
    first = of(started(core, make_row("i-1"), hosts=hosts), c.RecordPlacements)[0].launches[0]
    seen = [first.host]
    for attempt in (1, 2):
        acts = core.handle(c.OutcomesCollected(
            seen[-1], (outcome("i-1", attempt, State.INFRA_ERROR, seen[-1], Failure.INFRA),)))
        assert [(type(a), a.infra_tries) for a in acts] == [(c.Requeue, attempt)]
        launch = of(core.handle(c.Tick(T0 + attempt)), c.RecordPlacements)[0].launches[0]
        assert launch.attempt == attempt + 1
        seen.append(launch.host)
    assert seen[0] != seen[1]  # the retry went elsewhere
    last = core.handle(c.OutcomesCollected(
        seen[-1], (outcome("i-1", 3, State.INFRA_ERROR, seen[-1], Failure.INFRA),)))
    assert [(type(a), a.state) for a in last] == [(c.Finish, State.INFRA_ERROR)]


def test_a_request_the_host_can_never_run_is_not_retried():
    core = c.Core()
    started(core, make_row("i-1"))
    acts = core.handle(c.OutcomesCollected(
        "h1", (outcome("i-1", 1, State.INFRA_ERROR, failure=Failure.BAD_REQUEST),)))
    assert [(type(a), a.state) for a in acts] == [(c.Finish, State.INFRA_ERROR)]


def test_a_failed_command_runs_again_only_as_often_as_its_retries_ask():
    core = c.Core()
    started(core, make_row("i-1", retries=1))
    again = core.handle(c.OutcomesCollected("h1", (outcome("i-1", 1, State.FAILED),)))
    assert [(type(a), a.runs_left) for a in again] == [(c.Requeue, 1)]
    core.handle(c.Tick(T0 + 1))
    final = core.handle(c.OutcomesCollected("h1", (outcome("i-1", 2, State.FAILED),)))
    assert [(type(a), a.state) for a in final] == [(c.Finish, State.FAILED)]


@pytest.mark.parametrize(("state", "failure", "budget", "expected"), [
    # infra_tries counts attempts lost to infrastructure before this one: 1 + 1 < 3 -> retry
    (State.INFRA_ERROR, Failure.INFRA, c.Budget(1, 1, 3), c.Retry(1, 2)),
    (State.INFRA_ERROR, Failure.INFRA, c.Budget(1, 2, 3), State.INFRA_ERROR),  # 3rd of 3
    (State.INFRA_ERROR, Failure.LOST, c.Budget(1, 0, 3), c.Retry(1, 1)),
    (State.INFRA_ERROR, Failure.BAD_REQUEST, c.Budget(1, 0, 3), State.INFRA_ERROR),
    (State.FAILED, None, c.Budget(3, 0, 3), c.Retry(2, 0)),  # runs left 3 -> 2
    (State.FAILED, None, c.Budget(1, 0, 3), State.FAILED),
    (State.TIMED_OUT, None, c.Budget(3, 0, 3), State.TIMED_OUT),  # never retried
    (State.FAILED, None, c.Budget(3, 0, 3, cancel_requested=True), State.CANCELLED),
    (State.INFRA_ERROR, Failure.INFRA, c.Budget(1, 0, 3, True), State.CANCELLED),
    (State.SUCCEEDED, None, c.Budget(1, 0, 3, cancel_requested=True), State.SUCCEEDED),
])
def test_retry_policy(state, failure, budget, expected):
    assert c.retry_policy(state, failure, budget) == expected


def test_cancelling_a_queued_iteration_ends_it_at_once_and_it_never_starts():
    core = c.Core()
    core.handle(c.Submitted((make_row("i-1"),)))
    acts = core.handle(c.CancelRequested(c.Scope.ITERATION, "i-1"))
    assert [(type(a), a.state, a.attempt) for a in acts] == [(c.Finish, State.CANCELLED, 0)]
    core.handle(c.HostsSeen((make_host(),)))
    assert core.handle(c.Tick(T0)) == []


def test_cancelling_a_running_suite_stops_it_on_its_host_and_it_ends_cancelled():
    core = c.Core()
    started(core, make_row("i-1", suite="a"), make_row("i-2", suite="b"))
    acts = core.handle(c.CancelRequested(c.Scope.SUITE, "t/a"))
    assert acts == [c.MarkCancelled(("i-1",), "cancelled by request"),
                    c.StopOnHost("h1", (("i-1", 1),))]
    end = core.handle(c.OutcomesCollected("h1", (outcome("i-1", 1, State.FAILED),)))
    assert [(a.id, a.state) for a in end] == [("i-1", State.CANCELLED)]
    assert list(core.state.work) == ["i-2"]


def test_the_kill_switch_ends_the_queue_and_stops_every_host():
    core = c.Core()
    started(core, *(make_row(f"i-{n}", cpus=8) for n in range(1, 3)))  # one runs, one waits
    acts = core.handle(c.CancelRequested(c.Scope.EVERYTHING))
    assert [type(a) for a in acts] == [c.Finish, c.MarkCancelled, c.StopOnHost,
                                       c.StopEverywhere]


def test_a_lost_host_sends_its_work_elsewhere_and_closes_its_sandboxes():
    core = c.Core()
    started(core, make_row("i-1"), hosts=(make_host("h1"),))
    core.handle(c.LeaseOpened("sbx-1", Demand(1, 512, 1024, "base"), T0 + 600))
    acts = core.handle(c.HostLost("h1", "host h1 lost"))
    assert [type(a) for a in acts] == [c.Requeue, c.CloseSandbox]
    core.handle(c.HostsSeen((make_host("h2"),)))
    (record, _) = core.handle(c.Tick(T0 + 1))
    assert [(lc.id, lc.attempt, lc.host) for lc in record.launches] == [("i-1", 2, "h2")]


def test_after_a_restart_attempts_their_host_still_runs_are_kept_and_the_rest_requeued():
    core = c.Core()
    rows = (make_row("i-1", state="RUNNING", attempt=1, host="h1"),
            make_row("i-2", state="RUNNING", attempt=2, host="h1"),
            make_row("i-3"))
    assert core.handle(c.Recovered(rows)) == []
    acts = core.handle(c.HostAttempts("h1", frozenset({("i-1", 1)})))
    assert [(type(a), a.id, a.infra_tries) for a in acts] == [(c.Requeue, "i-2", 1)]
    assert core.state.flying("i-1", 1)
    assert sorted(cand.id for cand in core.state.backlog) == ["i-2", "i-3"]


def test_a_sandbox_lease_holds_capacity_until_its_timeout_then_closes():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(cpus=2),)))
    assert core.handle(c.LeaseOpened("sbx-1", Demand(2, 512, 1024, "base"), T0 + 60)) == [
        c.LeaseGranted("sbx-1", "h1")]
    core.handle(c.Submitted((make_row("i-1"),)))
    assert core.handle(c.Tick(T0 + 30)) == []  # the lease holds both cpus
    core.handle(c.LeaseExtended("sbx-1", T0 + 90))
    assert core.handle(c.Tick(T0 + 61)) == []
    acts = core.handle(c.Tick(T0 + 91))
    assert acts[0] == c.CloseSandbox("sbx-1", "h1", "its timeout passed")
    assert isinstance(acts[1], c.RecordPlacements)  # the freed cpus go to the queue


def test_a_lease_is_refused_as_never_or_as_not_now():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(cpus=2),)))
    never = core.handle(c.LeaseOpened("a", Demand(4, 512, 1024, "base"), T0 + 60))
    assert never[0].never and "insufficient-cpu" in never[0].why
    core.handle(c.LeaseOpened("b", Demand(2, 512, 1024, "base"), T0 + 60))
    later = core.handle(c.LeaseOpened("c", Demand(1, 512, 1024, "base"), T0 + 60))
    assert isinstance(later[0], c.LeaseRefused) and not later[0].never


def test_a_suite_past_its_wall_budget_is_cancelled_at_the_next_tick():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(cpus=1),)))
    core.handle(c.Submitted((make_row("i-1"), make_row("i-2")), suite="t/s", created_at=T0,
                            max_wall_s=30))
    core.handle(c.Tick(T0 + 1))
    acts = core.handle(c.Tick(T0 + 31))
    assert [type(a) for a in acts] == [c.Finish, c.MarkCancelled, c.StopOnHost]
    assert "wall-time budget of 30s" in acts[0].error


def test_queued_work_no_host_can_ever_take_is_abandoned_with_the_reason():
    core = c.Core()
    acts = started(core, make_row("i-1", cpus=16))
    assert [type(a) for a in acts] == [c.Abandon]
    assert "insufficient-cpu" in acts[0].why and core.state.work == {}


def test_check_fits_names_the_iteration_and_the_reason_it_can_never_run():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(cpus=8),)))
    core.check_fits([Iteration("base", ("true",), cpus=8)])
    with pytest.raises(CannotPlace, match=r"iteration 2 \(big\).*insufficient-cpu") as err:
        core.check_fits([Iteration("base", ("true",)), Iteration("base", ("x",), cpus=9,
                                                                 id="big")])
    assert "insufficient-cpu" in err.value.reason


def test_no_host_ever_takes_more_than_its_capacity_and_nothing_is_lost():
    """A seeded random walk of submits, outcomes, losses and cancels: at every step each
    iteration is in exactly one place and no host holds more than it has."""
    rng = random.Random(7)
    core = c.Core()
    hosts = {f"h{n}": make_host(f"h{n}", cpus=4, mem_mib=4096) for n in range(3)}
    core.handle(c.HostsSeen(tuple(hosts.values())))
    ended: set[str] = set()
    submitted = 0
    for step in range(400):
        roll = rng.random()
        if roll < 0.3:
            submitted += 1
            core.handle(c.Submitted((make_row(f"i-{submitted}", cpus=rng.randint(1, 3),
                                              mem_mib=rng.choice([512, 1024, 2048]),
                                              retries=rng.randint(0, 1)),)))
        elif roll < 0.75:
            flying = [w for w in core.state.work.values() if w.host]
            if flying:
                w = rng.choice(flying)
                state = rng.choice(list(State))
                acts = core.handle(c.OutcomesCollected(w.host, (outcome(
                    w.row.id, w.attempt, state, w.host, Failure.INFRA),)))
                ended |= {a.id for a in acts if isinstance(a, c.Finish)}
        elif roll < 0.8:
            ended |= {a.id for a in core.handle(c.CancelRequested(
                c.Scope.ITERATION, f"i-{rng.randint(1, max(1, submitted))}"))
                if isinstance(a, c.Finish)}
        elif roll < 0.83:
            ended |= {a.id for a in core.handle(c.HostLost(rng.choice(list(hosts)), "gone"))
                      if isinstance(a, c.Finish)}
            core.handle(c.HostsSeen(tuple(hosts.values())))
        ended |= {a.id for a in core.handle(c.Tick(T0 + step))
                  if isinstance(a, (c.Finish, c.Abandon))}
        s = core.state
        queued = {cand.id for cand in s.backlog}
        flying_ids = {i for i, w in s.work.items() if w.host}
        assert queued.isdisjoint(flying_ids) and queued | flying_ids == set(s.work)
        assert ended.isdisjoint(s.work)
        for view in hosts.values():
            used = s.reservations.apply(view)
            assert used.used_cpus <= view.cpus and used.used_mem_mib <= view.mem_mib
    assert len(ended) + len(core.state.work) == submitted


def test_the_core_is_pure():
    assert banned_imports(c) == set()
