"""`tryfleet run` flag checking: bad input is refused before any VM starts, and says why."""

import pytest

from tryfleet.cli import _parser
from tryfleet.commands.run import UsageError, build_spec


def spec(*argv):
    return build_spec(_parser().parse_args(["run", *argv]))


def test_a_full_command_line(tmp_path):
    local = tmp_path / "patch.diff"
    local.write_bytes(b"diff")
    s = spec("--image", "base", "--cpus", "2", "--mem-mib", "1024", "--timeout-s", "5",
             "--put", f"{local}:/root/patch.diff", "--get", "/root/out.xml:./out.xml",
             "--env", "A=1=2", "--cwd", "/src", "--", "pytest", "-q")
    assert s.argv == ("pytest", "-q") and (s.cpus, s.mem_mib, s.timeout_s) == (2, 1024, 5.0)
    assert s.put == (("/root/patch.diff", b"diff"),) and s.get == ("/root/out.xml",)
    assert s.env == (("A", "1=2"),) and s.cwd == "/src"


@pytest.mark.parametrize("argv, message", [
    (["--image", "base"], "no command given"),
    (["--image", "base", "--"], "no command given"),
    (["--image", "base", "--put", "nocolon", "--", "true"], "LOCAL:REMOTE"),
    (["--image", "base", "--put", "/no/such:/x", "--", "true"], "cannot read /no/such"),
    (["--image", "base", "--get", "relative:out", "--", "true"], "absolute"),
    (["--image", "base", "--env", "NOEQUALS", "--", "true"], "KEY=VALUE"),
    (["--image", "base", "--cpus", "0", "--", "true"], "--cpus"),
    (["--image", "base", "--timeout-s", "0", "--", "true"], "--timeout-s"),
])
def test_bad_flags_say_what_is_wrong(argv, message):
    with pytest.raises(UsageError, match=message):
        spec(*argv)


def test_image_is_required():
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--", "true"])
