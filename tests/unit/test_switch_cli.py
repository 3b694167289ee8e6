"""`tryfleet freeze | kill | thaw`: which switch the flags name (no fleet needed)."""

import pytest

from tryfleet.cli import _parser
from tryfleet.commands.switches import target_of
from tryfleet.errors import BadRequest


def target(*argv):
    return target_of(_parser().parse_args(["freeze", *argv]))


def test_a_tenant_alone_is_the_tenant_level():
    assert target("--tenant", "acme") == ("tenant", "acme", None)


def test_a_tenant_beside_a_suite_says_whose_suite_it_is():
    assert target("--suite", "fix-1", "--tenant", "acme") == ("suite", "fix-1", "acme")


def test_all_is_everything_without_a_target():
    assert target("--all") == ("everything", "", None)


@pytest.mark.parametrize("argv", [(), ("--host", "h1", "--key", "k1"), ("--all", "--host", "h1"),
                                  ("--host", "h1", "--tenant", "acme")])
def test_anything_but_one_target_is_refused(argv):
    with pytest.raises(BadRequest):
        target(*argv)
