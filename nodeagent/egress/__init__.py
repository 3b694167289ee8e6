"""Guest egress by allowlist: the host-side proxy a guest's HTTP_PROXY points at, the rules it
enforces and the addresses it always refuses. See rules.py for the rule syntax."""

from .rules import Rule, allowed, canonical_host, host_problem, parse_rule, parse_rules

__all__ = ["Rule", "allowed", "canonical_host", "host_problem", "parse_rule", "parse_rules"]
