"""Egress allowlist rules: parsing "HOST:PORT", their canonical text, and matching."""

import importlib

import pytest

from tests.unit.builders import banned_imports
from tryfleet.errors import BadRequest
from tryfleet.nodeagent import egress
from tryfleet.nodeagent.egress import Rule, allowed, parse_rule, parse_rules, rules


def test_the_public_names_are_pinned():
    assert {"Rule", "allowed", "parse_rule", "parse_rules"} <= set(egress.__all__)
    for name in egress.__all__:
        assert getattr(egress, name) is not None, name


def test_rules_are_pure():
    assert banned_imports(rules, {"ray", "libvirt", "sqlite3", "prometheus_client",
                                  "threading", "asyncio", "psutil"}) == set()


@pytest.mark.parametrize("name", ["addresses", "connection", "httphead", "metrics", "proxy",
                                  "resolver", "rules"])
def test_egress_imports_nothing_of_the_scheduler_or_the_gateway(name):
    module = importlib.import_module(f"tryfleet.nodeagent.egress.{name}")
    assert banned_imports(module, {"tryfleet.scheduler", "tryfleet.gateway", "ray"}) == set()


@pytest.mark.parametrize(("text", "rule", "canonical"), [
    ("allowed.test:80", Rule("allowed.test", False, 80), "allowed.test:80"),
    ("PyPI.org.:443", Rule("pypi.org", False, 443), "pypi.org:443"),
    ("*.Example.com:*", Rule("example.com", True, None), "*.example.com:*"),
    ("  api.test:65535 ", Rule("api.test", False, 65535), "api.test:65535"),
    ("bücher.de:443", Rule("xn--bcher-kva.de", False, 443), "xn--bcher-kva.de:443"),
    ("xn--bcher-kva.de:1", Rule("xn--bcher-kva.de", False, 1), "xn--bcher-kva.de:1"),
    ("localhost:8080", Rule("localhost", False, 8080), "localhost:8080"),
])
def test_a_rule_parses_to_its_canonical_form(text, rule, canonical):
    got = parse_rule(text)
    assert got == rule
    assert str(got) == canonical
    assert parse_rule(str(got)) == got


@pytest.mark.parametrize(("text", "says"), [
    ("allowed.test", "has no port"),
    (":80", "has no port"),
    ("allowed.test:0", "1 to 65535"),
    ("allowed.test:65536", "1 to 65535"),
    ("allowed.test:http", "1 to 65535"),
    ("allowed.test:+80", "1 to 65535"),
    ("allowed.test:٨٠", "1 to 65535"),  # Arabic-Indic digits
    ("10.0.0.5:80", "IP address"),
    ("127.1:80", "IP address"),
    ("0x7f000001:80", "IP address"),
    ("[::1]:80", "IP address"),
    ("::1:80", "IP address"),
    ("1.2.3.4.5:80", "all digits"),
    ("under_score.test:80", "not a DNS label"),
    ("-bad.test:80", "not a DNS label"),
    ("a..b.test:80", "not a DNS label"),
    ("sp ace.test:80", "not a DNS label"),
    ("x" * 64 + ".test:80", "not a DNS label"),
    (("a" * 60 + ".") * 5 + "test:80", "longer than 253"),
    ("xn--a.test:80", "IDNA"),
    ("xn--abc.test:80", "IDNA"),
    ("*:80", "first label"),
    ("*.com:443", "two labels"),
    ("api.*.test:443", "first label"),
    ("**.test:443", "first label"),
    ("*example.com:443", "first label"),
])
def test_a_wrong_rule_is_refused_saying_what_is_wrong_and_what_to_write(text, says):
    with pytest.raises(BadRequest, match="HOST:PORT") as err:
        parse_rule(text)
    assert says in str(err.value)


def test_a_rule_that_is_not_text_is_refused():
    with pytest.raises(BadRequest, match="must be text"):
        parse_rule(80)  # type: ignore[arg-type]


def test_rules_parse_in_order_without_duplicates_and_refuse_one_string():
    got = parse_rules(["b.test:80", "a.test:*", "B.test.:80"])
    assert [str(r) for r in got] == ["b.test:80", "a.test:*"]
    with pytest.raises(BadRequest, match="list of texts"):
        parse_rules("a.test:80")
    with pytest.raises(BadRequest, match="'nope'"):
        parse_rules(["a.test:80", "nope"])


@pytest.mark.parametrize(("host", "port", "ok"), [
    ("allowed.test", 80, True),
    ("ALLOWED.test.", 80, True),
    ("allowed.test", 443, False),
    ("sub.allowed.test", 80, False),  # an exact rule covers no subdomain
    ("notallowed.test", 80, False),
    ("api.example.com", 1234, True),
    ("a.b.example.com", 1, True),
    ("example.com", 443, False),  # a wildcard does not cover its apex
    ("badexample.com", 443, False),
    ("example.com.evil.test", 443, False),
    ("bücher.de", 443, True),
    ("xn--bcher-kva.de", 443, True),
    ("10.0.0.5", 80, False),
    ("", 80, False),
    ("allowed.test", 0, False),
    ("allowed.test", 70000, False),
    ("under_score.example.com", 443, False),
])
def test_allowed_matches_canonical_names_and_ports(host, port, ok):
    rules = parse_rules(["allowed.test:80", "*.example.com:*", "bücher.de:443"])
    assert allowed(rules, host, port) is ok


def test_nothing_is_allowed_by_no_rules():
    assert not allowed((), "allowed.test", 80)
