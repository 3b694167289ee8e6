"""The official E2B Python SDK, unmodified, against the gateway served on loopback over a fleet
in this process (httpfleet.py: the real scheduler and node agent, the fake hypervisor, whose
guest agent runs commands as host processes in a scratch root). Each call's answer and each
refusal, fast; the same with real VMs: tests/integration/test_e2b_sdk.py."""

import asyncio
import hashlib
import json
import os
import time

import httpx
import pytest

e2b = pytest.importorskip("e2b")

from e2b import (  # noqa: E402
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    InvalidArgumentException,
    NotFoundException,
    RateLimitException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxQuery,
    TimeoutException,
)

from tests.waiting import until  # noqa: E402
from tryfleet.audit import Filter  # noqa: E402

from .httpfleet import http_fleet  # noqa: E402

POLICY = """
[tenant.solo]
max_sandboxes = 1

[tenant.strict]
images = ["other"]

[tenant.batchonly]
interactive = false
"""


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    os.environ.setdefault("TRYFLEET_ACCEL", "tcg")
    with http_fleet(tmp_path_factory.mktemp("e2b"), POLICY, audit=True) as f:
        yield f


def opts(fleet, key):
    return {"api_key": key, "api_url": fleet.url, "sandbox_url": fleet.url}


@pytest.fixture(scope="module")
def acme(fleet):
    return opts(fleet, fleet.key("acme"))


@pytest.fixture(scope="module")
def sbx(acme):
    box = Sandbox.create(envs={"GREETING": "hello", "SHADOWED": "sandbox"},
                         metadata={"suite": "local"}, timeout=120, **acme)
    yield box
    box.kill()


def test_create_records_the_sandbox_with_the_key_and_the_request(fleet, acme, sbx):
    r = httpx.get(f"{fleet.url}/v1/sandboxes/{sbx.sandbox_id}",
                  headers={"Authorization": f"Bearer {acme['api_key']}"})
    got = r.json()
    assert (got["state"], got["tenant"], got["image"]) == ("open", "acme", "base")
    assert got["metadata"] == {"suite": "local"} and got["key_id"] == acme["api_key"][3:15]
    assert got["request_id"].startswith("req_")


def audited(fleet, sid, action):
    """The records of `action` in sandbox sid, once their requests' answers are recorded."""
    found = until(lambda: fleet.audit.select(Filter(sandbox=sid, action=action)), 10)
    for r in found:
        until(lambda rid=r.request_id: fleet.audit.trace(rid)[-1].action == "api.response",
              10)
    return fleet.audit.select(Filter(sandbox=sid, action=action))


def test_a_process_started_is_audited_with_its_end_and_output_digest(fleet, acme):
    box = Sandbox.create(timeout=60, **acme)
    try:
        box.commands.run("echo audited", envs={"TOKEN": "v4lue"})
        (start,) = audited(fleet, box.sandbox_id, "exec.start")
        actions = [r.action for r in fleet.audit.trace(start.request_id)]
        (end,) = audited(fleet, box.sandbox_id, "exec.end")
    finally:
        box.kill()
    assert actions == ["api.request", "exec.start", "exec.end", "api.response"]
    assert json.loads(end.details)["stdout_sha256"] == hashlib.sha256(b"audited\n").hexdigest()
    assert "TOKEN" in start.details and "v4lue" not in start.details


def test_a_file_written_through_e2b_is_audited_with_its_digest(fleet, acme):
    box = Sandbox.create(timeout=60, **acme)
    try:
        box.files.write("/home/user/n.txt", "noted")
        (wrote,) = audited(fleet, box.sandbox_id, "file.write")
    finally:
        box.kill()
    got = json.loads(wrote.details)
    assert (got["path"], got["sha256"]) == ("/home/user/n.txt",
                                            hashlib.sha256(b"noted").hexdigest())


def test_a_command_gets_the_sandboxs_env_vars_under_its_own(sbx):
    r = sbx.commands.run("echo $GREETING $SHADOWED $HOME $USER; pwd",
                         envs={"SHADOWED": "command"})
    lines = r.stdout.splitlines()
    assert (r.exit_code, lines[0]) == (0, "hello command /home/user user")
    assert lines[1].endswith("/home/user")  # the fake's scratch root, then the home


def test_output_reaches_on_stdout_while_the_command_runs(sbx):
    seen = []
    sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.3; done",
                     on_stdout=lambda s: seen.append((time.monotonic(), s)))
    assert "".join(s for _, s in seen) == "1\n2\n3\n"
    assert seen[-1][0] - seen[0][0] > 0.4  # the first came before the command ended


def test_a_non_zero_exit_raises_the_sdks_exception_with_code_and_stderr(sbx):
    with pytest.raises(CommandExitException) as err:
        sbx.commands.run("echo partial; echo broken >&2; exit 3")
    assert (err.value.exit_code, err.value.stderr, err.value.stdout) == (3, "broken\n",
                                                                         "partial\n")


def test_a_background_command_is_listed_and_killed(sbx):
    handle = sbx.commands.run("sleep 60", background=True)
    listed = {p.pid: p for p in sbx.commands.list()}
    assert listed[handle.pid].args == ["-l", "-c", "sleep 60"]
    assert sbx.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as err:
        handle.wait()
    assert err.value.exit_code == -1
    assert handle.pid not in {p.pid for p in sbx.commands.list()}
    assert sbx.commands.kill(handle.pid) is False


def test_several_commands_run_at_once_and_outlive_their_streams(sbx):
    slow = sbx.commands.run("sleep 60", background=True)
    assert sbx.commands.run("echo meanwhile").stdout == "meanwhile\n"  # not behind `slow`
    slow.disconnect()  # the stream goes; the process runs on, as in E2B
    assert slow.pid in {p.pid for p in sbx.commands.list()}
    again = sbx.commands.connect(slow.pid)
    assert again.kill() is True
    with pytest.raises(CommandExitException):
        again.wait()


def test_stdin_is_sent_and_closed(sbx):
    handle = sbx.commands.run("cat; echo end", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "one\n")
    handle.send_stdin(b"two\n")
    handle.close_stdin()
    result = handle.wait()
    assert (result.stdout, result.exit_code) == ("one\ntwo\nend\n", 0)
    streamed = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(streamed.pid, ["a\n", b"b\n"])  # a client stream
    streamed.close_stdin()
    assert streamed.wait().stdout == "a\nb\n"


def test_commands_run_as_the_user_named(sbx):
    assert sbx.commands.run("echo $USER $HOME; pwd", user="root").stdout.split()[:2] == [
        "root", "/root"]
    assert sbx.commands.run("echo $USER $HOME").stdout == "user /home/user\n"


def test_the_commands_timeout_kills_it(sbx):
    with pytest.raises(TimeoutException):
        sbx.commands.run("sleep 30", timeout=1)


def test_files_round_trip_byte_for_byte(sbx):
    blob = os.urandom(200_000) + bytes(range(256))
    info = sbx.files.write("data/blob.bin", blob)
    assert (info.path, info.name) == ("/home/user/data/blob.bin", "blob.bin")
    assert bytes(sbx.files.read("/home/user/data/blob.bin", format="bytes")) == blob
    sbx.files.write("data/t.txt", "héllo")
    assert sbx.files.read("~/data/t.txt") == "héllo"


def test_several_files_at_once_and_each_upload_kind(sbx):
    written = sbx.files.write_files([{"path": "many/a.txt", "data": "a"},
                                     {"path": "/home/user/many/b.txt", "data": b"bb"}])
    assert [w.path for w in written] == ["/home/user/many/a.txt", "/home/user/many/b.txt"]
    sbx.files.write("many/c.bin", b"c" * 10, use_octet_stream=True)
    sbx.files.write("many/d.txt", "zipped", gzip=True)
    entries = {e.name: e.size for e in sbx.files.list("many")}
    assert entries == {"a.txt": 1, "b.txt": 2, "c.bin": 10, "d.txt": 6}


def test_directories_are_made_listed_moved_and_removed(sbx):
    assert sbx.files.make_dir("tree/a/b") is True
    assert sbx.files.make_dir("tree/a/b") is False
    sbx.files.write("tree/a/b/f.txt", "f")
    assert [e.path for e in sbx.files.list("tree", depth=3)] == [
        "/home/user/tree/a", "/home/user/tree/a/b", "/home/user/tree/a/b/f.txt"]
    moved = sbx.files.rename("tree/a/b/f.txt", "tree/elsewhere/g.txt")
    assert moved.path == "/home/user/tree/elsewhere/g.txt" and moved.type.value == "file"
    info = sbx.files.get_info("tree/elsewhere")
    assert (info.type.value, info.permissions[0]) == ("dir", "d")
    sbx.files.remove("tree")
    sbx.files.remove("tree")  # removing what is not there is no error
    assert sbx.files.exists("tree") is False


def test_a_command_that_cannot_start_raises_and_says_why(sbx):
    with pytest.raises(InvalidArgumentException, match="nowhere"):
        sbx.commands.run("true", cwd="/nowhere")


def test_missing_files_and_bad_paths_raise_the_sdks_errors(sbx):
    with pytest.raises(FileNotFoundException):
        sbx.files.read("nope.txt")
    with pytest.raises(FileNotFoundException):
        sbx.files.get_info("/nope")
    with pytest.raises(InvalidArgumentException):
        sbx.files.read("/home")  # a directory
    with pytest.raises(InvalidArgumentException):
        sbx.files.list("/x", user="nobody")


def test_get_info_set_timeout_and_list_with_filters_and_pages(acme, sbx):
    before = sbx.get_info()
    assert (before.sandbox_id, before.template_id, before.state.value) == (
        sbx.sandbox_id, "base", "running")
    sbx.set_timeout(600)
    assert (sbx.get_info().end_at - before.end_at).total_seconds() > 400
    other = Sandbox.create(metadata={"suite": "local", "n": "2"}, **acme)
    try:
        found = Sandbox.list(query=SandboxQuery(metadata={"suite": "local"}), **acme)
        page = found.next_items()
        assert {s.sandbox_id for s in page} >= {sbx.sandbox_id, other.sandbox_id}
        paged = Sandbox.list(query=SandboxQuery(metadata={"n": "2"}), limit=1, **acme)
        assert [s.sandbox_id for s in paged.next_items()] == [other.sandbox_id]
        assert not paged.has_next
        first = Sandbox.list(limit=1, **acme)
        assert len(first.next_items()) == 1 and first.has_next
    finally:
        other.kill()


def test_a_killed_sandbox_is_not_running_and_not_found(acme):
    box = Sandbox.create(**acme)
    assert box.kill() is True and box.is_running() is False
    with pytest.raises(TimeoutException, match="was not found"):  # SandboxNotRunning
        box.commands.run("true")
    with pytest.raises(TimeoutException, match="was not found"):
        box.files.read("/etc/hostname")
    with pytest.raises(SandboxNotFoundException):
        box.get_info()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(box.sandbox_id, **acme)
    assert Sandbox.kill(box.sandbox_id, **acme) is False


def test_connect_gives_another_client_the_same_sandbox(acme, sbx):
    again = Sandbox.connect(sbx.sandbox_id, **acme)
    again.files.write("connected.txt", "yes")
    assert sbx.files.read("connected.txt") == "yes"


def test_another_tenants_key_cannot_see_or_touch_the_sandbox(fleet, sbx):
    other = opts(fleet, fleet.key("globex"))
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id, **other)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id, **other)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout(sbx.sandbox_id, 30, **other)
    assert Sandbox.kill(sbx.sandbox_id, **other) is False
    assert sbx.sandbox_id not in {s.sandbox_id for s in Sandbox.list(**other).next_items()}
    headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "X-API-KEY": other["api_key"]}
    r = httpx.get(f"{fleet.url}/files", params={"path": "/etc/hostname"}, headers=headers)
    assert r.status_code == 502 and "was not found" in r.json()["message"]
    token = sbx._envd_access_token
    r = httpx.get(f"{fleet.url}/health", headers={"E2b-Sandbox-Id": "sbx-0", "X-Access-Token":
                                                  token})
    assert r.status_code == 401  # a sandbox's token opens no other
    assert sbx.is_running()


def test_quota_and_policy_are_the_tenants(fleet):
    solo = opts(fleet, fleet.key("solo"))
    first = Sandbox.create(**solo)
    try:
        with pytest.raises(RateLimitException, match="max_sandboxes"):
            Sandbox.create(**solo)
    finally:
        first.kill()
    with pytest.raises(SandboxException, match=r"403.*images"):
        Sandbox.create(**opts(fleet, fleet.key("strict")))
    with pytest.raises(AuthenticationException, match="not valid"):
        Sandbox.create(**opts(fleet, "tf_000000000000_" + "x" * 43))


def test_a_tenant_without_interactive_sandboxes_is_refused_naming_the_rule(fleet):
    with pytest.raises(SandboxException, match=r"403.*interactive"):
        Sandbox.create(**opts(fleet, fleet.key("batchonly")))


def test_a_secret_value_a_command_prints_comes_back_masked(fleet, sbx):
    from tryfleet.secretstore import SecretStore

    SecretStore(fleet.data).set("acme", "E2B_SECRET", "e2b-s3cret-value")
    got = sbx.commands.run("printf 'e2b-s3cret'; sleep 0.1; echo '-value!'")
    assert got.stdout == "*" * len("e2b-s3cret-value") + "!\n"


def test_what_tryfleet_does_not_do_is_refused_by_name(acme, sbx):
    with pytest.raises(SandboxException, match="pausing a sandbox is not supported"):
        sbx.pause()
    with pytest.raises(SandboxException, match="not supported"):
        sbx.pty.create(e2b.PtySize(rows=24, cols=80))
    with pytest.raises(SandboxException, match="not supported"):
        sbx.files.watch_dir("/home/user")
    with pytest.raises(SandboxException, match="internet access"):
        Sandbox.create(allow_internet_access=True, **acme)


def test_the_async_client(acme):
    async def main():
        box = await AsyncSandbox.create(envs={"X": "1"}, **acme)
        try:
            seen = []
            r = await box.commands.run("echo $X; echo e >&2", on_stdout=seen.append)
            assert (r.stdout, r.stderr, seen) == ("1\n", "e\n", ["1\n"])
            await box.files.write("/tmp/z.bin", b"\x00\xff")
            assert bytes(await box.files.read("/tmp/z.bin", format="bytes")) == b"\x00\xff"
            assert [e.name for e in await box.files.list("/tmp")] == ["z.bin"]
            with pytest.raises(CommandExitException):
                await box.commands.run("exit 2")
            handle = await box.commands.run("sleep 30", background=True)
            assert handle.pid in {p.pid for p in await box.commands.list()}
            assert await handle.kill()
        finally:
            await box.kill()
        with pytest.raises(NotFoundException):
            await AsyncSandbox.get_info(box.sandbox_id, **acme)

    asyncio.run(main())


def test_a_sandbox_opened_over_v1_is_usable_from_the_sdk(fleet, acme):
    r = httpx.post(f"{fleet.url}/v1/sandboxes", json={"timeout_s": 60},
                   headers={"Authorization": f"Bearer {acme['api_key']}"})
    assert r.status_code == 201, r.text
    box = Sandbox.connect(r.json()["id"], **acme)
    try:
        assert box.commands.run("echo $HOME").stdout == "/home/user\n"
    finally:
        box.kill()
