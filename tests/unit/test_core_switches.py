"""Kill switches in the pure core: what a freeze holds, what a kill destroys, what a drained
host takes, and that a restart keeps them. Events in, actions out, a fake clock; no Ray."""

from dataclasses import replace

from tryfleet.scheduler import core as c
from tryfleet.scheduler.placement import Demand
from tryfleet.scheduler.switches import Level, Strength, Switch, Switches
from tryfleet.wire import State

from .test_core import T0, make_host, make_row, of, started

ONE = Demand(1, 512, 1024, "base")


def switch(level: Level, target: str = "", strength: Strength = Strength.FREEZE,
           sid: int = 1) -> Switch:
    return Switch(sid, level, target, strength, "incident 42", "key:adm cli:ana@box", T0)


def placed(actions: list[c.Action]) -> list[str]:
    return [lc.id for a in of(actions, c.RecordPlacements) for lc in a.launches]


def frozen_core(sw: Switch, *hosts) -> c.Core:
    core = c.Core()
    core.handle(c.HostsSeen(hosts or (make_host(),)))
    core.handle(c.SwitchOn(sw))
    return core


def test_a_frozen_tenants_queued_iterations_stay_queued_and_others_start():
    core = frozen_core(switch(Level.TENANT, "acme"))
    core.handle(c.Submitted((make_row("i-1", tenant="acme"), make_row("i-2", tenant="bolt"))))
    assert placed(core.handle(c.Tick(T0))) == ["i-2"]
    assert core.state.held == {"i-1"} and "i-1" in core.state.work


def test_a_freeze_flipped_after_submission_holds_what_was_already_queued():
    core = c.Core()
    core.handle(c.Submitted((make_row("i-1", tenant="acme"),)))  # no hosts yet: stays queued
    core.handle(c.SwitchOn(switch(Level.TENANT, "acme")))
    core.handle(c.HostsSeen((make_host(),)))
    assert placed(core.handle(c.Tick(T0))) == []


def test_lifting_a_freeze_starts_the_held_iterations():
    core = frozen_core(switch(Level.SUITE, "t/s"))
    core.handle(c.Submitted((make_row("i-1"),)))
    core.handle(c.Tick(T0))
    core.handle(c.SwitchOff(Level.SUITE, "t/s"))
    assert placed(core.handle(c.Tick(T0 + 1))) == ["i-1"] and core.state.held == set()


def test_lifting_one_switch_keeps_work_another_still_covers_held():
    core = frozen_core(switch(Level.TENANT, "t"))
    core.handle(c.SwitchOn(switch(Level.ITERATION, "i-1", sid=2)))
    core.handle(c.Submitted((make_row("i-1"),)))
    core.handle(c.SwitchOff(Level.TENANT, "t"))
    assert placed(core.handle(c.Tick(T0))) == [] and core.state.held == {"i-1"}


def test_a_freeze_lets_running_iterations_run_on():
    core = c.Core()
    started(core, make_row("i-1", tenant="acme"))
    assert core.handle(c.SwitchOn(switch(Level.TENANT, "acme"))) == []
    assert core.state.work["i-1"].host == "h1" and not core.state.work["i-1"].cancel


def test_a_kill_cancels_the_tenants_queued_work_and_stops_its_running_work():
    core = c.Core()
    started(core, make_row("i-1", tenant="acme"), make_row("i-2", tenant="acme", cpus=8),
            make_row("i-3", tenant="bolt"))  # i-2 does not fit beside i-1: queued
    actions = core.handle(c.SwitchOn(switch(Level.TENANT, "acme", Strength.KILL)))
    (finish,) = of(actions, c.Finish)
    assert (finish.id, finish.state, finish.queued) == ("i-2", State.CANCELLED, True)
    assert "switch #1" in (finish.error or "")
    assert [a.attempts for a in of(actions, c.StopOnHost)] == [(("i-1", 1),)]
    assert core.state.work["i-1"].cancel and not core.state.work["i-3"].cancel


def test_a_key_kill_stops_only_what_that_key_submitted():
    core = c.Core()
    started(core, replace(make_row("i-1"), key_id="k1"), replace(make_row("i-2"), key_id="k2"))
    actions = core.handle(c.SwitchOn(switch(Level.KEY, "k1", Strength.KILL)))
    assert [a.attempts for a in of(actions, c.StopOnHost)] == [(("i-1", 1),)]


def test_a_frozen_tenant_cannot_open_a_sandbox_and_the_refusal_names_the_switch():
    sw = switch(Level.TENANT, "acme")
    core = frozen_core(sw)
    (got,) = core.handle(c.LeaseOpened("sbx-1", ONE, T0 + 600, "acme"))
    assert got == c.LeaseFrozen("sbx-1", sw)
    assert core.handle(c.LeaseOpened("sbx-2", ONE, T0 + 600, "bolt")) == [
        c.LeaseGranted("sbx-2", "h1")]


def test_a_frozen_key_cannot_open_a_sandbox():
    core = frozen_core(switch(Level.KEY, "k1"))
    (got,) = core.handle(c.LeaseOpened("sbx-1", ONE, T0 + 600, "acme", key_id="k1"))
    assert isinstance(got, c.LeaseFrozen)


def test_a_freeze_leaves_open_sandboxes_open():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(),)))
    core.handle(c.LeaseOpened("sbx-1", ONE, T0 + 600, "acme"))
    assert core.handle(c.SwitchOn(switch(Level.TENANT, "acme"))) == []
    assert "sbx-1" in core.state.leases


def test_a_kill_closes_the_sandboxes_it_covers():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(),)))
    core.handle(c.LeaseOpened("sbx-1", ONE, T0 + 600, "acme"))
    core.handle(c.LeaseOpened("sbx-2", ONE, T0 + 600, "bolt"))
    actions = core.handle(c.SwitchOn(switch(Level.SANDBOX, "sbx-1", Strength.KILL)))
    assert [a.lease_id for a in of(actions, c.CloseSandbox)] == ["sbx-1"]
    assert set(core.state.leases) == {"sbx-2"}


def test_a_drained_host_takes_no_new_iteration_or_sandbox():
    core = frozen_core(switch(Level.HOST, "h1"), make_host("h1"), make_host("h2"))
    core.handle(c.Submitted((make_row("i-1"),)))
    (record, _start) = core.handle(c.Tick(T0))
    assert [lc.host for lc in record.launches] == ["h2"]
    assert core.handle(c.LeaseOpened("sbx-1", ONE, T0 + 600, "acme")) == [
        c.LeaseGranted("sbx-1", "h2")]


def test_a_drain_lets_what_runs_on_the_host_finish():
    core = c.Core()
    started(core, make_row("i-1"))
    assert core.handle(c.SwitchOn(switch(Level.HOST, "h1"))) == []
    assert core.state.work["i-1"].host == "h1"


def test_a_killed_hosts_running_iterations_are_stopped_and_retried_elsewhere():
    core = c.Core()
    started(core, make_row("i-1"), hosts=(make_host("h1"),))
    core.handle(c.HostsSeen((make_host("h1"), make_host("h2"))))
    actions = core.handle(c.SwitchOn(switch(Level.HOST, "h1", Strength.KILL)))
    assert [type(a) for a in actions] == [c.Requeue, c.StopOnHost]
    assert of(actions, c.StopOnHost)[0] == c.StopOnHost("h1", (("i-1", 1),), settled=True)
    (record, _start) = core.handle(c.Tick(T0 + 1))
    assert [(lc.id, lc.host) for lc in record.launches] == [("i-1", "h2")]


def test_killing_everything_stops_every_host_and_closes_every_sandbox():
    core = c.Core()
    started(core, make_row("i-1"))
    core.handle(c.LeaseOpened("sbx-1", ONE, T0 + 600, "acme"))
    actions = core.handle(c.SwitchOn(switch(Level.EVERYTHING, "", Strength.KILL)))
    assert {type(a) for a in actions} == {c.MarkCancelled, c.StopOnHost, c.CloseSandbox,
                                          c.StopEverywhere}


def test_a_restarted_core_holds_the_switches_in_force():
    sw = switch(Level.TENANT, "acme")
    core = c.Core()
    core.handle(c.HostsSeen((make_host(),)))
    core.handle(c.Recovered((make_row("i-1", tenant="acme"),), switches=(sw,)))
    assert placed(core.handle(c.Tick(T0))) == [] and core.state.held == {"i-1"}


def test_a_kill_is_applied_again_to_what_a_restart_finds_still_running():
    sw = switch(Level.TENANT, "acme", Strength.KILL)
    core = c.Core()
    core.handle(c.HostsSeen((make_host(),)))
    row = make_row("i-1", tenant="acme", state="RUNNING", attempt=1, host="h1")
    actions = core.handle(c.Recovered((row,), switches=(sw,)))
    assert [a.attempts for a in of(actions, c.StopOnHost)] == [(("i-1", 1),)]


def test_a_kill_wins_over_a_freeze_that_covers_the_same_work():
    kill = switch(Level.TENANT, "acme", Strength.KILL, sid=2)
    found = Switches([switch(Level.ITERATION, "acme/i-1"), kill])
    assert found.over_work("acme", "acme/s", "acme/i-1") is kill


def test_a_refusal_names_the_switch_who_flipped_it_when_and_how_to_lift_it():
    err = switch(Level.TENANT, "acme").refusal("opening a sandbox for tenant 'acme'")
    text = str(err)
    assert "switch #1" in text and "key:adm cli:ana@box" in text
    assert "1970-01-12T13:46:40Z" in text and "tryfleet thaw --tenant acme" in text
    assert err.switch["level"] == "tenant" and err.rule == "switch:1"
