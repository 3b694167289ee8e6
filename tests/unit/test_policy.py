"""policy.toml: what it allows, and refusals of a file that does not validate, each naming
the line and the field."""

import pytest

from tryfleet.errors import PolicyDenied
from tryfleet.gateway.policy import Policies, PolicyError, TenantPolicy, parse


def test_a_tenant_section_overrides_the_default():
    default, tenants = parse('[default]\nsecrets = ["CI_*"]\n\n[tenant.acme]\n'
                             'interactive = false\nnetwork = "none"\n')
    assert default.secrets == ("CI_*",) and default.interactive
    assert tenants["acme"].secrets == ("CI_*",) and not tenants["acme"].interactive


@pytest.mark.parametrize(("text", "where"), [
    ('[default]\nnetwork = "open"\n', 'line 2: [default] network: must be "none"'),
    ('[default]\nnetwork = "egress"\negress = ["ok.test:80", "10.0.0.1:80"]\n',
     "line 3: [default] egress: egress rule '10.0.0.1:80'"),
    ('[default]\nnetwork = "egress"\negress = "ok.test:80"\n',
     'line 3: [default] egress: must be a list of "HOST:PORT" rules'),
    ('[tenant.acme]\nnetwork = "egress"\negress = []\n',
     'line 3: [tenant.acme] egress: network = "egress" needs at least one rule'),
    ('[tenant.acme]\nnetwork = "egress"\n',
     'line 2: [tenant.acme] network: network = "egress" needs at least one rule'),
    ('[tenant.acme]\negress = ["ok.test:80"]\n',
     'line 2: [tenant.acme] egress: rules have no effect while network = "none"; '
     'set network = "egress"'),
    ('[default]\n\n[tenant.acme]\nimages = ["base"]\nnetwork = 1\n',
     "line 5: [tenant.acme] network"),
    ("[default]\ninteractive = 1\n", "line 2: [default] interactive: must be true or false"),
    ('[default]\nsecrets = "CI_*"\n', "line 2: [default] secrets: must be a list of secret"),
    ("[default]\nsecrets = [3]\n", "line 2: [default] secrets"),
    ("[default]\nmax_sandboxes = -1\n", "line 2: [default] max_sandboxes"),
])
def test_a_bad_value_is_refused_naming_its_line_and_field(text, where):
    with pytest.raises(PolicyError) as err:
        parse(text)
    assert str(err.value).startswith(where)


def test_the_default_exposes_no_secret():
    with pytest.raises(PolicyDenied) as err:
        TenantPolicy().check_secrets(["TOKEN"], "sandbox s1")
    assert err.value.rule == "secrets"


def test_a_glob_allows_the_secrets_it_matches_only():
    policy = TenantPolicy(secrets=("GITHUB_*",))
    policy.check_secrets(["GITHUB_TOKEN"], "x")
    with pytest.raises(PolicyDenied, match="'AWS_KEY'"):
        policy.check_secrets(["GITHUB_TOKEN", "AWS_KEY"], "x")


def test_a_tenant_without_interactive_may_not_open_sandboxes():
    with pytest.raises(PolicyDenied) as err:
        TenantPolicy(interactive=False).check_interactive()
    assert err.value.rule == "interactive"


def test_cpus_over_the_most_is_denied_naming_max_cpus():
    with pytest.raises(PolicyDenied) as err:
        TenantPolicy(images=("base",), max_cpus=1).check(
            image="base", cpus=2, mem_mib=512, disk_mib=None, timeout_s=60, what="sandbox")
    assert err.value.rule == "max_cpus" and "cpus 2" in str(err.value)


def test_a_bad_file_keeps_the_last_good_one_in_force_and_says_why(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text("[tenant.acme]\ninteractive = false\n")
    policies = Policies(tmp_path)
    path.write_text('[tenant.acme]\ninteractive = false\nnetwork = "any"\n')
    policies.reload()
    assert not policies.for_tenant("acme").interactive
    assert policies.error is not None and "line 3: [tenant.acme] network" in policies.error


def test_egress_rules_are_kept_in_their_canonical_form():
    default, _ = parse('[default]\nnetwork = "egress"\n'
                       'egress = ["Allowed.Test.:80", "*.pythonhosted.org:443", "x.test:*"]\n')
    assert default.egress_rules() == ("allowed.test:80", "*.pythonhosted.org:443", "x.test:*")


def test_a_tenant_setting_network_none_drops_the_rules_it_inherits():
    _, tenants = parse('[default]\nnetwork = "egress"\negress = ["a.test:80"]\n\n'
                       '[tenant.acme]\nnetwork = "none"\n\n[tenant.bolt]\nmax_cpus = 1\n')
    assert tenants["acme"].egress_rules() == ()
    assert tenants["bolt"].egress_rules() == ("a.test:80",)


def test_the_default_grants_no_network():
    assert TenantPolicy().network == "none" and TenantPolicy().egress_rules() == ()
