"""Name resolution for the egress proxy: the proxy resolves every name itself, so that it checks
the very addresses it then connects to (a name that resolves again between the check and the
connect could point elsewhere: DNS rebinding).

A name listed in the hosts file (hosts(5): "ADDRESS NAME [NAME...]", '#' comments) resolves
only from it, never from DNS: that is how a fleet maps names to staging services, and how the
tests map theirs. The file is read again when its modification time changes. Other names go
to the system resolver (getaddrinfo) in the resolver's own threads, under a deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tryfleet.errors import InfrastructureError

from .addresses import IPAddress
from .rules import canonical_host

log = logging.getLogger(__name__)

Lookup = Callable[[str], Iterable[str]]


class ResolveFailed(InfrastructureError):
    """A name did not resolve (no such name, no address, or no answer before the deadline);
    the message names it and why."""


def system_lookup(host: str) -> list[str]:
    """The addresses the system resolver gives for host (TCP), as text."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def parse_hosts(text: str) -> dict[str, tuple[IPAddress, ...]]:
    """Names to addresses from hosts(5) text; lines that do not parse are skipped (and
    logged), a name listed on several lines gets all their addresses."""
    out: dict[str, list[IPAddress]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            address = ipaddress.ip_address(fields[0].split("%", 1)[0])
            names = [canonical_host(name) for name in fields[1:]]
        except ValueError as err:
            log.warning("egress hosts file line %d skipped: %s", n, err)
            continue
        for name in names:
            if address not in out.setdefault(name, []):
                out[name].append(address)
    return {name: tuple(addrs) for name, addrs in out.items()}


class Resolver:
    """Resolves host names for the egress proxy: hosts file first, then the system resolver.
    lookup replaces the system resolver (tests, which must send no DNS query)."""

    def __init__(self, hosts_file: Path | None, *, timeout_s: float = 5.0,
                 lookup: Lookup = system_lookup, threads: int = 4) -> None:
        self.hosts_file = hosts_file
        self.timeout_s = timeout_s
        self._lookup = lookup
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="egress-resolve")
        self._stamp: tuple[int, int, int] | None = None
        self._hosts: dict[str, tuple[IPAddress, ...]] = {}

    def listed(self, host: str) -> tuple[IPAddress, ...] | None:
        """The hosts file's addresses for a canonical name (None: the file does not list it),
        the file read again first if it changed."""
        if self.hosts_file is None:
            return None
        try:
            st = os.stat(self.hosts_file)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            try:
                text = self.hosts_file.read_text(errors="replace") if stamp else ""
            except OSError as err:  # keep what it said last, and try again next time
                log.warning("egress hosts file %s unreadable: %s", self.hosts_file, err)
            else:
                self._hosts, self._stamp = parse_hosts(text), stamp
        return self._hosts.get(host)

    async def resolve(self, host: str) -> tuple[IPAddress, ...]:
        """Every address of a canonical host name; raises ResolveFailed."""
        listed = self.listed(host)
        if listed is not None:
            return listed
        loop = asyncio.get_running_loop()
        try:
            # the thread may go on after the deadline (getaddrinfo cannot be cancelled): it
            # ends with the system resolver's own timeout, and its answer is dropped
            found = await asyncio.wait_for(
                loop.run_in_executor(self._pool, lambda: list(self._lookup(host))),
                self.timeout_s)
        except TimeoutError:
            raise ResolveFailed(f"{host} did not resolve within {self.timeout_s:g} s") from None
        except OSError as err:
            raise ResolveFailed(f"{host} does not resolve: {err.strerror or err}") from None
        out: list[IPAddress] = []
        for text in found:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if address not in out:
                out.append(address)
        if not out:
            raise ResolveFailed(f"{host} has no address")
        return tuple(out)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Lookup", "ResolveFailed", "Resolver", "parse_hosts", "system_lookup"]
