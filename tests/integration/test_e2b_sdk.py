"""The official E2B Python SDK (sync and async clients), unmodified, against a real fleet with
real VMs (e2bfleet.py): the gateway's E2B-compatible API end to end. Three VMs in all: one
shared by most tests, one for the issue's snippet run as a new user would, one for the async
client (killed at its end). The same calls over the fake hypervisor, with every refusal:
tests/unit/test_e2b_local.py."""

import asyncio
import os
import subprocess
import sys
import time

import pytest

e2b = pytest.importorskip("e2b")

from e2b import (  # noqa: E402
    AsyncSandbox,
    CommandExitException,
    FileNotFoundException,
    Sandbox,
    SandboxNotFoundException,
    SandboxQuery,
    TimeoutException,
)

from .e2bfleet import e2b_fleet  # noqa: E402

pytestmark = pytest.mark.vm
SNIPPET = ("from e2b import Sandbox; sbx = Sandbox.create(); "
           "print(sbx.commands.run(\"python3 -c 'print(6*7)'\").stdout); "
           "sbx.files.write(\"/home/user/a.txt\", \"hi\"); "
           "print(sbx.files.read(\"/home/user/a.txt\")); sbx.kill()")


@pytest.fixture(scope="module")
def fleet(data_dir):
    with e2b_fleet(data_dir, "e2bsdk") as f:
        yield f


@pytest.fixture(scope="module")
def acme(fleet):
    return fleet.opts(fleet.key("acme"))


@pytest.fixture(scope="module")
def sbx(acme):
    box = Sandbox.create(envs={"GREETING": "hello"}, metadata={"suite": "e2b-sdk"},
                         timeout=600, **acme)
    yield box
    box.kill()


def test_the_issues_snippet_prints_42_and_hi_with_only_env_vars_set(fleet):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "TRYFLEET_"))}
    r = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True,
                       timeout=300, env={**env, **fleet.env(fleet.key("newcomer"))})
    assert (r.returncode, r.stdout) == (0, "42\n\nhi\n"), r.stderr[-2000:]


def test_commands_run_in_the_vm_with_the_sandboxs_env_vars(sbx):
    r = sbx.commands.run("echo $GREETING; python3 -c 'print(6*7)'; uname -s")
    assert (r.exit_code, r.stdout) == (0, "hello\n42\nLinux\n")


def test_on_stdout_receives_output_while_the_command_runs(sbx):
    seen = []
    r = sbx.commands.run("for i in 1 2 3; do echo $i; sleep 1; done",
                         on_stdout=lambda s: seen.append((time.monotonic(), s)))
    assert r.stdout == "1\n2\n3\n" and "".join(s for _, s in seen) == r.stdout
    assert seen[-1][0] - seen[0][0] > 1.0  # the first arrived a while before the last


def test_a_non_zero_exit_raises_command_exit_exception(sbx):
    with pytest.raises(CommandExitException) as err:
        sbx.commands.run("echo to-stderr >&2; exit 42")
    assert (err.value.exit_code, err.value.stderr) == (42, "to-stderr\n")


def test_a_background_command_is_listed_and_killed(sbx):
    handle = sbx.commands.run("sleep 120", background=True)
    assert handle.pid in {p.pid for p in sbx.commands.list()}
    assert handle.kill() is True
    with pytest.raises(CommandExitException):
        handle.wait()
    assert handle.pid not in {p.pid for p in sbx.commands.list()}
    assert sbx.commands.run("echo after").stdout == "after\n"  # the sandbox is free again


def test_several_commands_at_once_and_stdin(sbx):
    slow = sbx.commands.run("sleep 120", background=True)
    assert sbx.commands.run("echo meanwhile").stdout == "meanwhile\n"  # not behind `slow`
    cat = sbx.commands.run("cat", background=True, stdin=True)
    cat.send_stdin("piped\n")
    cat.close_stdin()
    assert cat.wait().stdout == "piped\n"
    assert slow.kill() is True


def test_commands_run_as_the_user_named_who_owns_what_it_writes(sbx):
    assert sbx.commands.run("whoami; pwd").stdout == "user\n/home/user\n"
    assert sbx.commands.run("whoami; pwd", user="root").stdout == "root\n/root\n"
    sbx.files.write("proj/src/main.py", "print(1)")
    r = sbx.commands.run("stat -c %U proj proj/src proj/src/main.py && "
                         "python3 proj/src/main.py > proj/src/out.txt && cat proj/src/out.txt")
    assert r.stdout == "user\nuser\nuser\n1\n"
    sbx.files.write("/root/only-root.txt", "r", user="root")
    assert sbx.commands.run("stat -c %U /root/only-root.txt", user="root").stdout == "root\n"


def test_files_written_read_back_byte_for_byte_listed_and_removed(sbx):
    blob = os.urandom(5 * 1024 * 1024 + 17)  # over one chunk: written beside, then moved
    sbx.files.write("/home/user/data/blob.bin", blob)
    sbx.files.write_files([{"path": "data/a.txt", "data": "a"},
                           {"path": "data/b.txt", "data": b"\x00\xff"}])
    assert bytes(sbx.files.read("/home/user/data/blob.bin", format="bytes")) == blob
    assert bytes(sbx.files.read("data/b.txt", format="bytes")) == b"\x00\xff"
    assert sbx.commands.run("sha256sum data/blob.bin").stdout.split()[0] == \
        __import__("hashlib").sha256(blob).hexdigest()
    assert [(e.name, e.size) for e in sbx.files.list("/home/user/data")] == [
        ("a.txt", 1), ("b.txt", 2), ("blob.bin", len(blob))]
    sbx.files.remove("/home/user/data/blob.bin")
    assert not sbx.files.exists("data/blob.bin")
    with pytest.raises(FileNotFoundException):
        sbx.files.read("data/blob.bin")


def test_set_timeout_get_info_and_list(acme, sbx):
    before = sbx.get_info()
    assert (before.template_id, before.metadata, before.state.value) == (
        "base", {"suite": "e2b-sdk"}, "running")
    sbx.set_timeout(900)
    assert (sbx.get_info().end_at - before.end_at).total_seconds() > 200
    listed = Sandbox.list(query=SandboxQuery(metadata={"suite": "e2b-sdk"}), **acme)
    assert [s.sandbox_id for s in listed.next_items()] == [sbx.sandbox_id]


def test_another_tenants_key_cannot_see_or_touch_it(fleet, sbx):
    other = fleet.opts(fleet.key("globex"))
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id, **other)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id, **other)
    assert Sandbox.kill(sbx.sandbox_id, **other) is False
    assert Sandbox.list(**other).next_items() == []
    assert sbx.is_running()


def test_the_async_client_and_a_killed_sandbox(acme):
    async def main():
        box = await AsyncSandbox.create(**acme)
        seen = []
        r = await box.commands.run("echo a; sleep 1; echo b", on_stdout=seen.append)
        assert (r.stdout, seen) == ("a\nb\n", ["a\n", "b\n"])
        await box.files.write("/tmp/x.bin", b"\x01\x02")
        assert bytes(await box.files.read("/tmp/x.bin", format="bytes")) == b"\x01\x02"
        assert await box.kill() is True
        with pytest.raises(TimeoutException, match="was not found"):  # not running
            await box.commands.run("true")
        with pytest.raises(SandboxNotFoundException):
            await AsyncSandbox.connect(box.sandbox_id, **acme)
        return box.sandbox_id

    sid = asyncio.run(main())
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sid, **acme)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect("sbx-0123456789abcdef", **acme)
