"""Guest egress by allowlist: the host-side proxy a guest's HTTP_PROXY points at (proxy.py),
the rules it enforces (rules.py), the addresses it always refuses (addresses.py) and how it
resolves names (resolver.py). rules.py is pure; the rest is the node side's."""

from .addresses import IPAddress, blocked_reason, host_addresses
from .proxy import EgressProxy, EgressTotals
from .resolver import ResolveFailed, Resolver
from .rules import Rule, allowed, canonical_host, host_problem, parse_rule, parse_rules

__all__ = ["EgressProxy", "EgressTotals", "IPAddress", "ResolveFailed", "Resolver", "Rule",
           "allowed", "blocked_reason", "canonical_host", "host_addresses", "host_problem",
           "parse_rule", "parse_rules"]
