"""The records that cross between the scheduler and the node agents, and their codec."""

import msgpack
import pytest

from tryfleet import wire


def _status() -> wire.HostStatus:
    return wire.HostStatus(
        host="h1", pid=7, accel="tcg", capacity=wire.Capacity("h1", 8, 32768, 100_000),
        pressure=wire.Pressure(cpu_some_avg10=12.5), images=("base",), buildable=("base",),
        pool=(wire.PoolRow("base", 1, 512, None, ready=2, wanted=3, filling=True),))


def test_records_round_trip_with_nested_records_enums_and_bytes():
    out = wire.Outcome("it-1", 2, wire.State.INFRA_ERROR, "h1", stdout=b"\x00\xff",
                       failure=wire.Failure.LOST, duration_s=1.5)
    assert wire.unpack(wire.Outcome, wire.pack(out)) == out
    assert wire.unpack_map(wire.HostStatus, wire.pack({"h1": _status()})) == {"h1": _status()}
    req = wire.StartRequest("it-1", 1, wire.IterationSpec("base", ("true",),
                                                          put=(("/a", b"x"),)))
    assert wire.unpack_list(wire.StartRequest, wire.pack([req])) == [req]


def test_host_status_derives_warm_vms_and_pooled_memory_from_its_pool_rows():
    st = _status()
    assert st.warm == {"base": 2}
    assert st.pool_mem_mib == 1024


def test_a_field_of_the_wrong_type_is_refused_naming_the_field():
    raw = wire.pack(wire.AttemptKey("it-1", 3)).replace(b"\x03", b"\xa13")  # 3 -> "3"
    with pytest.raises(wire.WireError, match=r"AttemptKey\.attempt: expected int, got str"):
        wire.unpack(wire.AttemptKey, raw)


def test_a_missing_required_field_is_refused_and_an_unknown_one_ignored():
    with pytest.raises(wire.WireError, match="field 'attempt' is missing"):
        wire.unpack(wire.AttemptKey, msgpack.packb({"id": "x"}))
    got = wire.unpack(wire.AttemptKey, msgpack.packb({"id": "x", "attempt": 1, "new": 2}))
    assert got == wire.AttemptKey("x", 1)


def test_an_unknown_enum_value_is_refused_with_the_allowed_ones():
    data = msgpack.packb({"id": "x", "attempt": 1, "state": "MAYBE", "host": "h"})
    with pytest.raises(wire.WireError, match="'MAYBE' is not one of SUCCEEDED"):
        wire.unpack(wire.Outcome, data)


def test_bytes_that_are_not_msgpack_are_a_wire_error():
    with pytest.raises(wire.WireError, match="not a msgpack message"):
        wire.unpack(wire.AttemptKey, b"\xc1")


def test_a_wrong_value_deep_inside_is_named_by_its_whole_path():
    req = wire.StartRequest("it-1", 1, wire.IterationSpec("base", ("true",),
                                                          put=(("/a", b"x"),)))
    raw = msgpack.unpackb(wire.pack([req, req]))
    raw[1]["spec"]["put"][0][1] = "text, not bytes"
    with pytest.raises(wire.WireError,
                       match=r"^StartRequest\[1\]\.spec\.put\[0\]\[1\]: expected bytes, got str$"):
        wire.unpack_list(wire.StartRequest, msgpack.packb(raw, use_bin_type=True))


def test_an_optional_field_takes_none_or_its_type_and_nothing_else():
    ok = wire.Outcome("it-1", 1, wire.State.FAILED, "h1", exit_code=None, duration_s=2)
    got = wire.unpack(wire.Outcome, wire.pack(ok))
    assert got.exit_code is None and got.duration_s == 2.0 and type(got.duration_s) is float
    raw = msgpack.unpackb(wire.pack(ok))
    raw["exit_code"] = "0"
    with pytest.raises(wire.WireError, match=r"Outcome\.exit_code: expected int, got str"):
        wire.unpack(wire.Outcome, msgpack.packb(raw))


def test_an_egress_event_round_trips_with_its_ids_and_counts():
    ev = wire.EgressEvent("vm-1", wire.Ids(tenant="t1", iteration="it-1"), "end",
                          "allowed.test", 443, "198.51.100.7", "allow", "allowlisted",
                          bytes_up=10, bytes_down=2048, duration_s=0.25,
                          request="CONNECT allowed.test:443")
    assert wire.unpack(wire.EgressEvent, wire.pack(ev)) == ev
    assert wire.unpack_list(wire.EgressEvent, wire.pack([ev, ev])) == [ev, ev]


def test_an_egress_event_needs_no_counts_and_refuses_a_port_that_is_not_a_number():
    ev = wire.EgressEvent("vm-1", wire.Ids(), "decision", "x.test", 80, "", "deny",
                          "not-allowlisted")
    got = wire.unpack(wire.EgressEvent, wire.pack(ev))
    assert (got.bytes_up, got.bytes_down, got.duration_s, got.request) == (0, 0, 0.0, "")
    raw = msgpack.unpackb(wire.pack(ev))
    raw["port"] = "80"
    with pytest.raises(wire.WireError, match=r"EgressEvent\.port: expected int, got str"):
        wire.unpack(wire.EgressEvent, msgpack.packb(raw))
