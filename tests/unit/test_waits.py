"""Why queued iterations wait, by the bounded reasons of the metric
tryfleet_admission_waiting_iterations: a pure count over the core's state."""

from dataclasses import replace

from tryfleet.scheduler import core as c
from tryfleet.scheduler.admission import Policy
from tryfleet.scheduler.switches import Level
from tryfleet.scheduler.waits import REASONS, waiting

from .test_core import T0, make_host, make_row
from .test_core_switches import switch


def test_every_reason_is_counted_even_at_zero_and_running_work_is_not():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(cpus=1),)))
    core.handle(c.Submitted((make_row("i-1"),)))
    core.handle(c.Tick(T0))  # i-1 runs: the host's one cpu is taken
    assert waiting(core.state) == dict.fromkeys(REASONS, 0)


def test_a_queue_behind_a_full_host_a_full_limit_and_a_freeze_waits_for_each_reason():
    core = c.Core(Policy(limits={"ci-db": 1}))
    core.handle(c.HostsSeen((make_host(cpus=2),)))
    core.handle(c.SwitchOn(switch(Level.TENANT, "frozen-co")))
    db = ("ci-db",)
    core.handle(c.Submitted((replace(make_row("i-1"), limits=db), make_row("i-2"),
                             replace(make_row("i-3"), limits=db), make_row("i-4"),
                             make_row("i-5", tenant="frozen-co"))))
    core.handle(c.Tick(T0))  # i-1 and i-2 take both cpus; i-1 holds ci-db
    assert waiting(core.state) == {**dict.fromkeys(REASONS, 0), "limit": 1, "no_room": 1,
                                   "frozen": 1}


def test_queued_work_waits_for_pressure_when_every_host_is_under_it():
    core = c.Core()
    core.handle(c.HostsSeen((replace(make_host(), pressured=True),
                             replace(make_host("h2"), draining=True))))
    core.handle(c.Submitted((make_row("i-1"),)))
    core.handle(c.Tick(T0))
    assert waiting(core.state)["pressure"] == 1


def test_a_host_drained_by_its_switch_counts_as_unable_to_take_work():
    core = c.Core()
    core.handle(c.HostsSeen((replace(make_host(), pressured=True), make_host("h2"))))
    core.handle(c.SwitchOn(switch(Level.HOST, "h2")))
    core.handle(c.Submitted((make_row("i-1"),)))
    core.handle(c.Tick(T0))
    assert waiting(core.state)["pressure"] == 1
