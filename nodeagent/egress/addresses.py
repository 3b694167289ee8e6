"""Addresses the egress proxy never connects to, whatever the allowlist says: the host's own
services and networks (loopback, private, link-local, CGNAT, unique-local), cloud metadata
endpoints, multicast and reserved ranges, and the fleet hosts' own addresses; also when one of
them hides inside an IPv6 form (IPv4-mapped, IPv4-compatible, NAT64, 6to4, Teredo).

Written out range by range rather than with ipaddress's is_private/is_global: those put the
documentation ranges (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24) with the private ones,
and the tests serve from 198.51.100.0/24, which must stay reachable (a fleet host's own address
in such a range is refused as its own, through `own`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection

import psutil

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# What each kind of refused address is called in messages ("... resolves to 10.0.0.5, a
# private address: refused"); the kind itself is the end of the decision's reason
# ("blocked-address:private").
KINDS = {
    "metadata": "a cloud metadata address",
    "own": "an address of a fleet host",
    "loopback": "a loopback address",
    "unspecified": "an unspecified address",
    "private": "a private address",
    "link-local": "a link-local address",
    "cgnat": "a carrier-grade NAT (shared) address",
    "unique-local": "a unique-local (private) IPv6 address",
    "multicast": "a multicast address",
    "reserved": "a reserved or broadcast address",
}

_METADATA = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
    "169.254.170.2",  # AWS ECS task metadata
    "100.100.100.200",  # Alibaba Cloud
    "fd00:ec2::254",  # AWS over IPv6
))
_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), kind) for net, kind in (
        ("0.0.0.0/8", "unspecified"),  # "this network": Linux connects 0.0.0.0 to itself
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("169.254.0.0/16", "link-local"),
        ("100.64.0.0/10", "cgnat"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),  # with 255.255.255.255, the limited broadcast
    ))
_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), kind) for net, kind in (
        ("::1/128", "loopback"),
        ("::/128", "unspecified"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "private"),  # site-local, deprecated but still routed by some
        ("fc00::/7", "unique-local"),
        ("ff00::/8", "multicast"),
        ("64:ff9b:1::/48", "reserved"),  # local-use NAT64: where the IPv4 sits is not fixed
    ))
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def blocked_reason(ip: IPAddress, own: Collection[IPAddress]) -> str | None:
    """The kind of address ip is if the proxy must refuse it (a key of KINDS), or None when it
    may connect to it. own: the fleet hosts' own addresses."""
    ip = _without_scope(ip)
    if ip in _METADATA:
        return "metadata"
    if ip in own:
        return "own"
    if isinstance(ip, ipaddress.IPv4Address):
        for net, kind in _V4:
            if ip in net:
                return kind
        return None
    inner = embedded_ipv4(ip)
    if inner is not None:
        return blocked_reason(inner, own)
    for net6, kind in _V6:
        if ip in net6:
            return kind
    return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and reaches (IPv4-mapped, IPv4-compatible,
    NAT64 well-known prefix, 6to4, Teredo client), or None."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or (ip in _V4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def describe(kind: str) -> str:
    """A refused address's kind in words, for the refusal's message."""
    return KINDS.get(kind, f"a {kind} address")


def host_addresses() -> frozenset[IPAddress]:
    """Every address of this machine's network interfaces (without IPv6 zone ids)."""
    out: set[IPAddress] = set()
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    out.add(ipaddress.ip_address(addr.address.split("%", 1)[0]))
                except ValueError:
                    continue
    return frozenset(out)


def _without_scope(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        return ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    return ip


__all__ = ["KINDS", "IPAddress", "blocked_reason", "describe", "embedded_ipv4",
           "host_addresses"]
