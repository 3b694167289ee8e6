"""The egress proxy's resolver: names in its hosts file resolve only from it (read again when it
changes), others through the lookup it was given (never DNS in these tests)."""

import asyncio
import ipaddress
import os
import socket
import threading

import pytest

from tryfleet.nodeagent.egress import ResolveFailed, Resolver
from tryfleet.nodeagent.egress.resolver import parse_hosts

ip = ipaddress.ip_address


def resolve(resolver, host):
    return asyncio.run(resolver.resolve(host))


def test_hosts_text_maps_canonical_names_to_all_their_addresses_and_skips_bad_lines():
    got = parse_hosts("# comment\n198.51.100.7 A.test. b.test # trailing\n\n"
                      "198.51.100.8 a.test\nnot-an-address c.test\n198.51.100.9 bad_name\n"
                      "2001:db8::1 a.test\n")
    assert got == {"a.test": (ip("198.51.100.7"), ip("198.51.100.8"), ip("2001:db8::1")),
                   "b.test": (ip("198.51.100.7"),)}


def test_a_listed_name_resolves_only_from_the_file_which_is_read_again_when_it_changes(
        tmp_path):
    hosts, asked = tmp_path / "hosts", []
    hosts.write_text("198.51.100.7 allowed.test\n")
    resolver = Resolver(hosts, lookup=lambda h: asked.append(h) or ["198.51.100.99"])
    try:
        assert resolve(resolver, "allowed.test") == (ip("198.51.100.7"),)
        hosts.write_text("198.51.100.8 allowed.test\n")
        os.utime(hosts, ns=(1, 1))  # a new modification time, whatever the clock's grain
        assert resolve(resolver, "allowed.test") == (ip("198.51.100.8"),)
        assert asked == []
        assert resolve(resolver, "other.test") == (ip("198.51.100.99"),)
        assert asked == ["other.test"]
    finally:
        resolver.close()


def test_a_name_the_lookup_does_not_know_or_that_times_out_fails_saying_so():
    def nxdomain(host):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    answer = threading.Event()
    resolver = Resolver(None, lookup=nxdomain)
    slow = Resolver(None, lookup=lambda h: answer.wait() and [], timeout_s=0.05)
    try:
        with pytest.raises(ResolveFailed, match=r"x\.test does not resolve: Name or service"):
            resolve(resolver, "x.test")
        with pytest.raises(ResolveFailed, match=r"x\.test did not resolve within 0\.05 s"):
            resolve(slow, "x.test")
    finally:
        answer.set()
        resolver.close()
        slow.close()


def test_a_lookup_with_no_address_fails_and_duplicates_are_dropped():
    resolver = Resolver(None, lookup=lambda h: {"none.test": [],
                                                "dup.test": ["198.51.100.7"] * 3}[h])
    try:
        with pytest.raises(ResolveFailed, match=r"none\.test has no address"):
            resolve(resolver, "none.test")
        assert resolve(resolver, "dup.test") == (ip("198.51.100.7"),)
    finally:
        resolver.close()
