"""Egress allowlist rules: which host names and ports a guest may reach through the proxy.

A rule is "HOST:PORT". HOST is an exact DNS name (case does not matter, a trailing dot is
ignored, a non-ASCII name stands for its IDNA A-label form) or "*.example.com", which covers
every name under example.com at any depth but not example.com itself. PORT is 1-65535 or "*"
(any port). IP addresses are refused as HOST: an allowlist names hosts, and the proxy resolves
them itself so that it can refuse what they resolve to.

Pure: no I/O (the proxy, the node agent and policy parsing on the head all use it).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from tryfleet.errors import BadRequest

MAX_HOST_CHARS = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_EXAMPLE = 'write "HOST:PORT", e.g. "pypi.org:443", "*.example.com:443" or "api.test:*"'


@dataclass(frozen=True, slots=True)
class Rule:
    """One allowlist entry. host is canonical (lower-case ASCII, no trailing dot); when
    wildcard is set it is the domain whose subdomains the rule covers. port None: any port."""

    host: str
    wildcard: bool = False
    port: int | None = None

    def __str__(self) -> str:
        port = "*" if self.port is None else str(self.port)
        return f"{'*.' if self.wildcard else ''}{self.host}:{port}"

    def matches(self, host: str, port: int) -> bool:
        """Whether this rule covers a canonical host name and a port."""
        if self.port is not None and port != self.port:
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host


def host_problem(text: str) -> str | None:
    """Why text is not a host name an allowlist can hold (None: it is one). Checked on the
    canonical form (see canonical_host)."""
    if not text:
        return "the host name is empty"
    if len(text) > MAX_HOST_CHARS:
        return f"the host name is longer than {MAX_HOST_CHARS} characters"
    if _is_ip_literal(text):
        return "it is an IP address; an allowlist names hosts (the proxy resolves them itself)"
    for label in text.split("."):
        if not _LABEL.match(label):
            return (f"its label {label!r} is not a DNS label (1-63 letters, digits or '-', "
                    "neither first nor last a '-')")
        if label.startswith("xn--") and not _valid_a_label(label):
            return f"its label {label!r} is not a valid IDNA (punycode) label"
    if text.rsplit(".", 1)[-1].isdigit():
        return "its last label is all digits, which no DNS name has (an IP address?)"
    return None


def canonical_host(text: str) -> str:
    """The canonical form of a host name: lower-case, no trailing dot, IDNA A-labels for
    non-ASCII names. Raises BadRequest naming what is wrong."""
    raw = text
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if not text.isascii():
        try:
            text = text.encode("idna").decode("ascii")
        except UnicodeError:
            raise BadRequest(f"{raw!r} is not a valid host name: its non-ASCII form has no "
                             "IDNA (punycode) equivalent") from None
    text = text.lower()
    problem = host_problem(text)
    if problem:
        raise BadRequest(f"{raw!r} is not a valid host name: {problem}")
    return text


def parse_rule(text: str) -> Rule:
    """A rule from its text, "HOST:PORT". Raises BadRequest saying what is wrong and what to
    write."""
    if not isinstance(text, str):
        raise BadRequest(f"an egress rule must be text, not {type(text).__name__}; {_EXAMPLE}")
    raw = text.strip()
    if raw.startswith("[") or raw.count(":") > 1:
        raise BadRequest(f"egress rule {text!r}: HOST is an IP address; an allowlist names "
                         f"hosts (the proxy resolves them itself); {_EXAMPLE}")
    host, sep, port_text = raw.rpartition(":")
    if not sep or not host:
        raise BadRequest(f"egress rule {text!r} has no port; {_EXAMPLE}")
    port = _parse_port(text, port_text)
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if "*" in host:
        raise BadRequest(f"egress rule {text!r}: a '*' may only stand as the first label "
                         f"(\"*.example.com\": any name under example.com); {_EXAMPLE}")
    try:
        name = canonical_host(host)
    except BadRequest as err:
        raise BadRequest(f"egress rule {text!r}: {err}; {_EXAMPLE}") from None
    if wildcard and "." not in name:
        raise BadRequest(f"egress rule {text!r}: a wildcard must be under a domain of at least "
                         f"two labels (\"*.example.com\", not \"*.com\"); {_EXAMPLE}")
    return Rule(name, wildcard, port)


def parse_rules(texts: Iterable[str]) -> tuple[Rule, ...]:
    """Rules from their texts, in order, duplicates dropped; raises BadRequest on the first
    wrong one."""
    if isinstance(texts, str):
        raise BadRequest(f"egress rules must be a list of texts, not one text; {_EXAMPLE}")
    out: dict[Rule, None] = {}
    for text in texts:
        out.setdefault(parse_rule(text))
    return tuple(out)


def allowed(rules: Iterable[Rule], host: str, port: int) -> bool:
    """Whether any rule covers host (any spelling: it is made canonical; a name that is not a
    valid host name is never allowed) and port."""
    if not isinstance(port, int) or not 0 < port < 65536:
        return False
    try:
        name = canonical_host(host)
    except BadRequest:
        return False
    return any(rule.matches(name, port) for rule in rules)


def _parse_port(text: str, port_text: str) -> int | None:
    if port_text == "*":
        return None
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise BadRequest(f"egress rule {text!r}: the port {port_text!r} must be a number from "
                         f"1 to 65535 or '*' (any port); {_EXAMPLE}")
    return int(port_text)


def _is_ip_literal(text: str) -> bool:
    """An IP address in any form a resolver would take: dotted, IPv6, or the short, octal and
    hex forms inet_aton accepts ("127.1", "0x7f000001")."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(text)
        return True
    except OSError:
        return False


def _valid_a_label(label: str) -> bool:
    """An A-label that decodes (punycode, then nameprep) and encodes back to itself."""
    try:
        return label.encode("ascii").decode("idna").encode("idna") == label.encode("ascii")
    except UnicodeError:
        return False


__all__ = ["Rule", "allowed", "canonical_host", "host_problem", "parse_rule", "parse_rules"]
