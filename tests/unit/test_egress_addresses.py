"""The addresses the egress proxy always refuses, whatever the allowlist says."""

import ipaddress

import pytest

from tryfleet.nodeagent.egress.addresses import blocked_reason, describe, host_addresses

ip = ipaddress.ip_address
OWN = frozenset({ip("192.0.2.10"), ip("2001:db8::10")})


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("10.0.0.5", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("100.64.0.1", "cgnat"),
    ("100.127.255.254", "cgnat"),
    ("169.254.169.254", "metadata"),
    ("169.254.170.2", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("fec0::1", "private"),
    ("192.0.2.10", "own"),
    ("2001:db8::10", "own"),
    # IPv6 forms of the IPv4 ones
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.5", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:192.0.2.10", "own"),
    ("::127.0.0.1", "loopback"),  # IPv4-compatible
    ("64:ff9b::a00:5", "private"),  # NAT64 of 10.0.0.5
    ("64:ff9b::a9fe:a9fe", "metadata"),  # NAT64 of 169.254.169.254
    ("64:ff9b:1::1", "reserved"),  # local-use NAT64
    ("2002:7f00:1::1", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:c0a8:101::1", "private"),  # 6to4 of 192.168.1.1
    ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "private"),  # Teredo client 10.0.0.1
])
def test_refused_addresses_are_named_by_their_kind(address, kind):
    assert blocked_reason(ip(address), OWN) == kind
    assert describe(kind).startswith("a")


@pytest.mark.parametrize("address", [
    "198.51.100.7",  # documentation: the tests' servers
    "203.0.113.9",
    "192.0.2.11",  # documentation, and not a fleet host's
    "93.184.216.34",
    "8.8.8.8",
    "172.32.0.1",  # just past 172.16/12
    "100.128.0.1",  # just past 100.64/10
    "2001:db8::11",
    "2606:4700::1111",
    "::ffff:198.51.100.7",
    "64:ff9b::c633:6407",  # NAT64 of 198.51.100.7
    "2002:c633:6407::1",  # 6to4 of 198.51.100.7
])
def test_public_and_documentation_addresses_are_not_refused(address):
    assert blocked_reason(ip(address), OWN) is None


def test_an_own_address_is_refused_only_when_it_is_in_own():
    assert blocked_reason(ip("198.51.100.1"), frozenset()) is None
    assert blocked_reason(ip("198.51.100.1"), {ip("198.51.100.1")}) == "own"


def test_this_machines_addresses_include_loopback_and_carry_no_zone_ids():
    mine = host_addresses()
    assert ip("127.0.0.1") in mine
    assert all(getattr(a, "scope_id", None) is None for a in mine)
