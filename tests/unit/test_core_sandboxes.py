"""The pure core's leases (interactive sandboxes): quotas, expiry, recovery from the ledger.
Events in, actions out, a fake clock; no Ray, no threads, no sleeps."""

from tryfleet.scheduler import core as c
from tryfleet.scheduler.placement import Demand

from .test_core import T0, make_host, make_row, of, started

ONE = Demand(1, 512, 1024, "base")
NO_QUOTA = c.Quota()


def opened(core: c.Core, lease_id: str, tenant: str = "acme", demand: Demand = ONE,
           quota: c.Quota = NO_QUOTA, expires_at: float = T0 + 600) -> list[c.Action]:
    return core.handle(c.LeaseOpened(lease_id, demand, expires_at, tenant, quota))


def test_a_tenant_at_its_sandbox_count_is_refused_naming_the_limit_and_its_value():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(),)))
    quota = c.Quota(max_sandboxes=2)
    assert [type(a) for a in opened(core, "a", quota=quota) + opened(core, "b", quota=quota)] \
        == [c.LeaseGranted, c.LeaseGranted]
    (refused,) = opened(core, "c", quota=quota)
    assert (type(refused), refused.limit, refused.value) == (c.LeaseOverQuota, "max_sandboxes", 2)
    assert "acme" in refused.why and "c" not in core.state.leases


def test_quota_counts_only_the_tenants_own_sandboxes():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(),)))
    opened(core, "other", tenant="globex")
    assert opened(core, "mine", quota=c.Quota(max_sandboxes=1)) == [
        c.LeaseGranted("mine", "h1")]


def test_vcpus_in_use_count_running_iterations_and_open_sandboxes_together():
    core = c.Core()
    started(core, make_row("i-1", tenant="acme", cpus=2))  # 2 vCPUs running
    opened(core, "a", demand=Demand(1, 512, 1024, "base"))  # 3 in use
    # 3 + 2 > 4: refused; 3 + 1 = 4: granted.
    (refused,) = opened(core, "b", demand=Demand(2, 512, 1024, "base"),
                        quota=c.Quota(max_vcpus_in_use=4))
    assert (refused.limit, refused.value) == ("max_vcpus_in_use", 4)
    assert opened(core, "c", quota=c.Quota(max_vcpus_in_use=4)) == [c.LeaseGranted("c", "h1")]


def test_memory_in_use_is_checked_before_placement():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(),)))
    opened(core, "a", demand=Demand(1, 1024, 1024, "base"))
    (refused,) = opened(core, "b", demand=Demand(1, 1024, 1024, "base"),
                        quota=c.Quota(max_mem_mib_in_use=1536))
    assert (refused.limit, refused.value) == ("max_mem_mib_in_use", 1536)
    # The quota is checked first: refused for it even where no host has room.
    full = c.Core()
    full.handle(c.HostsSeen((make_host(cpus=1),)))
    opened(full, "x")
    (refused,) = opened(full, "y", quota=c.Quota(max_sandboxes=1))
    assert isinstance(refused, c.LeaseOverQuota)


def test_an_expired_lease_is_closed_at_the_tick_and_frees_its_capacity():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(cpus=1),)))
    opened(core, "a", expires_at=T0 + 10)
    assert isinstance(opened(core, "b")[0], c.LeaseRefused)  # the one cpu is held
    assert core.handle(c.Tick(T0 + 9)) == []
    assert core.handle(c.Tick(T0 + 10)) == [c.CloseSandbox("a", "h1", "its timeout passed")]
    assert opened(core, "b") == [c.LeaseGranted("b", "h1")]


def test_recovered_leases_hold_capacity_and_those_on_a_gone_host_are_closed():
    core = c.Core()
    core.handle(c.HostsSeen((make_host("h1", cpus=1),)))
    leases = (("a", c.Lease("h1", ONE, T0 + 600, "acme")),
              ("b", c.Lease("h9", ONE, T0 + 600, "acme")))
    acts = core.handle(c.Recovered((), (), leases))
    assert acts == [c.CloseSandbox("b", "h9", "its host h9 is gone")]
    assert list(core.state.leases) == ["a"]
    assert isinstance(opened(core, "c")[0], c.LeaseRefused)  # "a" holds the only cpu
    assert isinstance(opened(core, "d", quota=c.Quota(max_sandboxes=1))[0], c.LeaseOverQuota)


def test_a_host_that_no_longer_holds_a_sandbox_ends_its_lease():
    core = c.Core()
    core.handle(c.HostsSeen((make_host("h1"), make_host("h2", cpus=1))))
    opened(core, "a")  # placed on h1 (fullest first: equal, alphabetical)
    opened(core, "b")
    assert {k: v.host for k, v in core.state.leases.items()} == {"a": "h2", "b": "h1"}
    assert core.handle(c.HostSandboxes("h1", None)) == []  # cannot say: nothing ends
    acts = core.handle(c.HostSandboxes("h1", frozenset({"x"})))
    assert [(a.lease_id, a.host) for a in of(acts, c.CloseSandbox)] == [("b", "h1")]
    assert "no longer open on h1" in acts[0].why and list(core.state.leases) == ["a"]


def test_extending_moves_the_expiry_and_closing_twice_is_harmless():
    core = c.Core()
    core.handle(c.HostsSeen((make_host(),)))
    opened(core, "a", expires_at=T0 + 10)
    core.handle(c.LeaseExtended("a", T0 + 100))
    assert core.handle(c.Tick(T0 + 50)) == []
    assert core.handle(c.LeaseClosed("a")) == [] and core.handle(c.LeaseClosed("a")) == []
    assert core.state.leases == {} and len(core.state.reservations) == 0


def test_with_no_host_seen_yet_a_lease_waits_rather_than_never_fits():
    (refused,) = opened(c.Core(), "a")
    assert isinstance(refused, c.LeaseRefused) and not refused.never
