"""The MCP tools without a fleet: their schemas (what an agent reads), the scope filter, and
what they make of a backend's answers and refusals (a stand-in backend, reached with the mcp
SDK's in-process client, which skips HTTP and its auth: tests/unit/test_mcp_served.py and
tests/integration/test_mcp.py cover those)."""

import asyncio
import base64
import json

import pytest
from mcp import Client

from tryfleet.mcptools.backend import Refused
from tryfleet.mcptools.models import IterationSpec, as_user
from tryfleet.mcptools.scopes import TOOL_SCOPES, may_use
from tryfleet.mcptools.server import build_server
from tryfleet.mcptools.text import Capture, refusal_text, tail

SANDBOX_TOOLS = {"create_sandbox", "run_command", "write_file", "read_file", "list_files",
                 "destroy_sandbox"}
BATCH_TOOLS = {"submit_batch", "batch_status", "batch_results"}
ALL = sorted(SANDBOX_TOOLS | BATCH_TOOLS)


class Stand:
    """A Backend that answers as told and keeps what it was asked."""

    def __init__(self, chunks=(), file=b"", refusal=None, gate=None):
        self.chunks, self.file, self.refusal = list(chunks), file, refusal
        self.gate = gate  # an asyncio.Event the command waits for before it ends
        self.asked = []

    def request_id(self):
        return "req-stand-1"

    def _ask(self, *what):
        self.asked.append(what)
        if self.refusal is not None:
            raise Refused(self.refusal)

    async def open_sandbox(self, body):
        self._ask("open", body)
        return {"id": "sbx-1", "image": body["image"], "cpus": body["cpus"],
                "mem_mib": body["mem_mib"], "state": "open", "created_at": 1.0,
                "expires_at": 1.0 + body["timeout_s"], "metadata": body["metadata"],
                "request_id": "req-open", "tenant": "acme", "key_id": "k"}

    async def exec_stream(self, sid, body):
        self._ask("exec", sid, body)
        for kind, text in self.chunks:
            yield kind, text
        if self.gate is not None:
            await self.gate.wait()
        yield "exit", {"exit_code": 3, "signal": None, "timed_out": False, "duration_s": 0.5,
                       "stdout_truncated": False, "stderr_truncated": False}

    async def read_file(self, sid, path, max_bytes):
        self._ask("read", sid, path, max_bytes)
        return self.file[:max_bytes + 1]

    async def submit_batch(self, body):
        self._ask("submit", body)
        return {"suite": body["suite"], "ids": [it["id"] for it in body["iterations"]],
                "request_id": "req-submit"}


def call(backend, scopes, tool, args, on_message=None):
    """Call tool on a server over `backend` for a key with `scopes`; (result, progress as
    (value, total, message))."""
    server = build_server(lambda ctx: backend, lambda: frozenset(scopes))
    seen = []

    async def on_progress(value, total, message):
        seen.append((value, total, message))
        if on_message is not None:
            on_message(message)

    async def main():
        async with Client(server) as client:
            return await client.call_tool(tool, args, progress_callback=on_progress)

    return asyncio.run(main()), seen


def listed(scopes):
    server = build_server(lambda ctx: Stand(), lambda: frozenset(scopes))
    return {t.name: t for t in asyncio.run(server.list_tools())}


# ---- what an agent reads ---------------------------------------------------------------------

def test_every_tool_says_what_it_does_and_what_it_returns():
    for name, tool in listed({"admin"}).items():
        assert len(tool.description) > 100, name
        assert tool.output_schema and tool.output_schema["properties"], name


def test_every_argument_of_every_tool_is_described():
    for name, tool in listed({"admin"}).items():
        for arg, schema in tool.input_schema["properties"].items():
            assert schema.get("description"), f"{name}.{arg}"


def test_run_command_takes_a_shell_line_or_an_argv_with_bounded_time_and_output():
    schema = listed({"admin"})["run_command"].input_schema
    props = schema["properties"]
    assert schema["required"] == ["sandbox_id", "command"]
    assert [k["type"] for k in props["command"]["anyOf"]] == ["string", "array"]
    assert props["timeout_s"]["default"] == 300.0 and props["timeout_s"]["exclusiveMinimum"] == 0
    assert props["max_output_chars"]["default"] == 20_000
    assert {"cwd", "env", "user"} <= set(props)


def test_create_sandbox_defaults_to_the_base_image_one_cpu_and_512_mib():
    props = listed({"admin"})["create_sandbox"].input_schema["properties"]
    assert (props["image"]["default"], props["cpus"]["default"], props["mem_mib"]["default"],
            props["timeout_s"]["default"]) == ("base", 1, 512, 600.0)
    assert props["mem_mib"]["minimum"] == 128  # what the /v1 API takes at least


def test_a_batch_holds_1_to_1000_iterations_that_need_a_command_and_take_no_stray_field():
    schema = listed({"admin"})["submit_batch"].input_schema
    its = schema["properties"]["iterations"]
    assert (its["minItems"], its["maxItems"]) == (1, 1000)
    spec = schema["$defs"]["IterationSpec"]
    assert spec["required"] == ["command"] and spec["additionalProperties"] is False
    assert {"image", "files", "files_b64", "env", "timeout_s", "cpus", "mem_mib", "limits",
            "retries"} <= set(spec["properties"])


def test_an_iteration_goes_to_the_api_as_argv_with_binary_files_as_b64():
    got = IterationSpec(command="pytest -q", files={"/a": "x"},
                        files_b64={"/b": base64.b64encode(b"\0").decode()}).to_api()
    assert got["command"] == ["bash", "-c", "pytest -q"]
    assert got["files"] == {"/a": "x", "/b": {"b64": "AA=="}}
    assert got["id"]  # made up, so a call sent again records nothing twice


# ---- scopes ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("scopes", "seen"), [
    ({"sandbox"}, SANDBOX_TOOLS),
    ({"batch"}, BATCH_TOOLS),
    ({"read"}, {"read_file", "list_files", "batch_status", "batch_results"}),
    ({"sandbox", "batch"}, SANDBOX_TOOLS | BATCH_TOOLS),
    ({"admin"}, SANDBOX_TOOLS | BATCH_TOOLS),
    (set(), set()),
])
def test_a_key_is_shown_only_the_tools_its_scopes_allow(scopes, seen):
    assert set(listed(scopes)) == seen


def test_every_tool_names_the_scopes_it_needs():
    assert set(TOOL_SCOPES) == set(ALL)
    assert not may_use("no_such_tool", {"sandbox", "batch", "read"})


def test_a_tool_the_key_lacks_is_refused_naming_the_scope_and_never_runs():
    stand = Stand()
    result, _ = call(stand, {"read"}, "create_sandbox", {})
    assert result.is_error
    assert "`sandbox`" in result.content[0].text and "[forbidden]" in result.content[0].text
    assert stand.asked == []


# ---- results and refusals --------------------------------------------------------------------

def test_output_comes_as_progress_while_it_runs_and_the_result_keeps_its_start_and_end():
    chunks = [("stdout", "a" * 3000), ("stderr", "warn\n"), ("stdout", "b" * 3000)]
    result, progress = call(Stand(chunks), {"sandbox"}, "run_command",
                            {"sandbox_id": "sbx-1", "command": "make",
                             "max_output_chars": 1000})
    assert [m for _, _, m in progress] == ["stdout: " + "a" * 3000, "stderr: warn\n",
                                           "stdout: " + "b" * 3000]
    values = [v for v, _, _ in progress]  # seconds run so far, of its timeout
    assert values == sorted(set(values)) and {t for _, t, _ in progress} == {300.0}
    got = result.structured_content
    assert got["exit_code"] == 3 and not result.is_error  # a failing command is a result
    assert got["stdout"].startswith("a" * 250) and got["stdout"].endswith("b" * 750)
    assert got["stdout_cut_chars"] == 5000 and "max_output_chars=1000" in got["note"]
    assert got["stderr"] == "warn\n" and got["stderr_cut_chars"] == 0


def test_a_silent_command_still_reports_progress_saying_it_runs(monkeypatch):
    import tryfleet.mcptools.results as results

    monkeypatch.setattr(results, "HEARTBEAT_S", 0.02)
    gate = asyncio.Event()
    stand = Stand(chunks=[("stdout", "start\n")], gate=gate)
    result, progress = call(stand, {"sandbox"}, "run_command", {
        "sandbox_id": "sbx-1", "command": "sleep 600"},
        on_message=lambda m: m.startswith("still running") and gate.set())
    assert not result.is_error
    assert progress[0][2] == "stdout: start\n"
    assert progress[1][2].startswith("still running after ")
    assert progress[0][0] < progress[1][0]


def test_a_shell_line_runs_under_bash_with_its_env_and_cwd():
    stand = Stand()
    call(stand, {"sandbox"}, "run_command", {"sandbox_id": "sbx-1", "command": "ls | wc -l",
                                             "env": {"A": "1"}, "cwd": "/tmp"})
    (_, sid, body), = stand.asked
    assert (sid, body["argv"], body["env"], body["cwd"], body["encoding"]) == (
        "sbx-1", ["bash", "-c", "ls | wc -l"], {"A": "1"}, "/tmp", "text")


def test_a_command_for_another_user_switches_to_it_with_its_env_and_home():
    assert as_user(["id"], {"A": "1"}, None, None) == (["id"], {"A": "1"})
    assert as_user(["id"], {"A": "1"}, "root", None) == (["id"], {"A": "1"})
    argv, env = as_user(["id"], {"A": "1"}, "user", None)
    assert env == {} and argv[:2] == ["sh", "-c"] and "setpriv" in argv[2]
    assert argv[3:] == ["sh", "user", "sh", "-c", 'cd "$HOME" 2>/dev/null; exec "$@"', "sh",
                        "env", "A=1", "id"]
    argv, _ = as_user(["id"], {}, "user", "/srv")  # a cwd given: stays there
    assert argv[3:] == ["sh", "user", "env", "id"]


def test_a_refusal_is_a_tool_error_with_the_problem_and_what_to_do():
    problem = {"type": "urn:tryfleet:problem:quota-exceeded", "title": "Quota exceeded",
               "status": 429, "detail": "max_sandboxes = 1 reached", "limit": "max_sandboxes",
               "value": 1, "request_id": "req-9"}
    result, _ = call(Stand(refusal=problem), {"sandbox"}, "create_sandbox", {})
    text = result.content[0].text
    assert result.is_error
    assert "max_sandboxes = 1 reached [quota-exceeded, HTTP 429]" in text
    assert "destroy_sandbox" in text and "(request req-9)" in text
    assert json.loads(text.split("\nproblem: ", 1)[1]) == problem


def test_a_file_longer_than_max_bytes_comes_back_cut_and_says_so():
    result, _ = call(Stand(file=b"0123456789"), {"read"}, "read_file",
                     {"sandbox_id": "sbx-1", "path": "/root/f", "max_bytes": 4})
    got = result.structured_content
    assert (got["content"], got["bytes_read"], got["truncated"]) == ("0123", 4, True)
    assert "max_bytes=4" in got["note"]


def test_a_binary_file_read_as_text_says_to_read_it_as_base64():
    stand = Stand(file=b"\xff\xfe\x00x")
    got = call(stand, {"read"}, "read_file", {"sandbox_id": "s", "path": "/b"})[0]
    assert "encoding base64" in got.structured_content["note"]
    got = call(stand, {"read"}, "read_file", {"sandbox_id": "s", "path": "/b",
                                             "encoding": "base64"})[0]
    assert base64.b64decode(got.structured_content["content"]) == b"\xff\xfe\x00x"


def test_a_batch_is_sent_as_the_api_takes_it():
    stand = Stand()
    result, _ = call(stand, {"batch"}, "submit_batch", {
        "suite": "fix-1", "iterations": [{"id": "t1", "command": ["pytest"], "limits": ["db"]}],
        "max_wall_s": 60})
    (_, body), = stand.asked
    assert body["suite"] == "fix-1" and body["max_wall_s"] == 60.0
    assert body["iterations"][0]["command"] == ["pytest"]
    assert body["iterations"][0]["limits"] == ["db"]
    assert result.structured_content == {"suite": "fix-1", "ids": ["t1"],
                                         "request_id": "req-submit"}


# ---- text ------------------------------------------------------------------------------------

def test_capture_keeps_a_quarter_of_the_start_and_the_rest_from_the_end():
    cap = Capture(8)
    for piece in ("abc", "defgh", "ijkl"):
        cap.add(piece)
    assert (cap.head, cap.tail, cap.cut, cap.total) == ("ab", "ghijkl", 4, 12)
    assert cap.text() == "ab\n[... 4 characters left out ...]\nghijkl"


def test_capture_of_short_output_is_the_output():
    cap = Capture(100)
    cap.add("hello\n")
    assert (cap.text(), cap.cut) == ("hello\n", 0)


def test_capture_of_nothing_allowed_counts_everything_out():
    cap = Capture(0)
    cap.add("abc")
    assert cap.cut == 3 and cap.head == cap.tail == ""


def test_tail_keeps_the_end():
    assert tail("abcdef", 2) == ("ef", 4)
    assert tail("ab", 5) == ("ab", 0)
    assert tail("ab", 0) == ("", 2)


def test_refusal_text_of_an_unknown_kind_still_has_detail_and_problem():
    text = refusal_text({"detail": "odd", "status": 418})
    assert text.startswith("odd [error, HTTP 418]") and '"detail": "odd"' in text


# ---- the command -----------------------------------------------------------------------------

def test_tryfleet_mcp_without_the_mcp_package_says_what_to_install(monkeypatch, capsys):
    from tryfleet.cli import main
    from tryfleet.commands import mcp as command

    monkeypatch.setattr(command.importlib.util, "find_spec", lambda name: None)
    assert main(["mcp"]) == 125
    out, err = capsys.readouterr()
    assert out == "" and "pip install 'tryfleet[mcp]'" in err


def test_tryfleet_mcp_with_no_fleet_to_reach_says_so_and_writes_nothing_on_stdout(
        monkeypatch, capsys, tmp_path):
    from tryfleet.cli import main

    monkeypatch.delenv("TRYFLEET_URL", raising=False)
    monkeypatch.setenv("TRYFLEET_DATA", str(tmp_path))  # no fleet of this host's either
    assert main(["mcp"]) == 125
    out, err = capsys.readouterr()
    assert out == "" and "tryfleet up" in err
