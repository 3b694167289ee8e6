"""The MCP server against a real fleet, reached with the official `mcp` SDK's own clients:
over streamable HTTP to the gateway actor's /mcp (a real uvicorn on loopback, with keys), and
over stdio to `tryfleet mcp` run as a subprocess with TRYFLEET_URL and TRYFLEET_API_KEY. Ray in
this process, the real node agent with real VMs of the base image (few, small), the scheduler,
the gateway on a free port, as tests/integration/test_api_sandboxes.py has them."""

import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.mcpclients import over_http, over_stdio, refusal, tool, tool_names, using
from tryfleet.gateway.keys import KeyStore, Scope
from tryfleet.wire import unpack_list

from .vmfleet import vm_fleet  # the base image of this code's guest agent

HOST = "mcptest"
SANDBOX_TOOLS = {"create_sandbox", "run_command", "write_file", "read_file", "list_files",
                 "destroy_sandbox"}
BATCH_TOOLS = {"submit_batch", "batch_status", "batch_results"}
pytestmark = pytest.mark.vm


@dataclass
class Front:
    url: str
    keys: KeyStore
    node: Any
    actors: tuple[Any, ...]  # not detached: alive while a handle is held

    def key(self, tenant: str, *scopes: str) -> str:
        _, token = self.keys.create(tenant, frozenset(Scope(s) for s in scopes),
                                    created_by="test")
        return token

    def sandbox(self, key: str, sid: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/v1/sandboxes/{sid}", headers={
            "Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        got: dict[str, Any] = r.json()
        return got


@pytest.fixture(scope="module")
def front(data_dir):
    with vm_fleet(data_dir, HOST) as v:
        yield Front(v.url, v.keys, v.node, v.actors)


def test_over_http_a_key_lists_the_tools_runs_a_command_and_reads_a_file_back(front):
    key = front.key("acme", "sandbox", "batch")

    async def work(c):
        names = await tool_names(c)
        box = await tool(c, "create_sandbox", mem_mib=256, timeout_s=300)
        progress = []
        try:
            ran = await tool(c, "run_command", progress, sandbox_id=box["id"],
                             command="python3 -c 'print(6*7)'")
            await tool(c, "write_file", sandbox_id=box["id"], path="/root/notes.txt",
                       content="hi from an agent\n")
            read = await tool(c, "read_file", sandbox_id=box["id"], path="/root/notes.txt")
            listed = await tool(c, "list_files", sandbox_id=box["id"], path="/root")
            who = await tool(c, "run_command", sandbox_id=box["id"], command="id -un",
                             user="nobody")
        finally:
            await tool(c, "destroy_sandbox", sandbox_id=box["id"])
        return names, box, ran, progress, read, listed, who

    names, box, ran, progress, read, listed, who = using(over_http(front.url, key), work)
    assert names == SANDBOX_TOOLS | BATCH_TOOLS
    assert (ran["exit_code"], ran["stdout"]) == (0, "42\n")
    assert [m for _, m in progress] == ["stdout: 42\n"]
    assert read["content"] == "hi from an agent\n"
    assert "notes.txt" in {e["name"] for e in listed["entries"]}
    assert who["stdout"] == "nobody\n"
    recorded = front.sandbox(key, box["id"])
    assert recorded["request_id"] == box["request_id"] and recorded["state"] == "closed"


def test_over_http_a_key_lacking_a_scope_neither_sees_nor_calls_its_tools(front):
    async def sandbox_only(c):
        return await tool_names(c), await refusal(c, "submit_batch",
                                                  iterations=[{"command": "true"}])

    async def read_only(c):
        return await tool_names(c), await refusal(c, "create_sandbox")

    names, refused = using(over_http(front.url, front.key("acme", "sandbox")), sandbox_only)
    assert names == SANDBOX_TOOLS and "`batch`" in refused
    names, refused = using(over_http(front.url, front.key("acme", "read")), read_only)
    assert names == {"read_file", "list_files", "batch_status", "batch_results"}
    assert "`sandbox`" in refused


def test_over_http_no_key_is_refused_with_401(front):
    r = httpx.post(f"{front.url}/mcp", headers={"Accept": "application/json, text/event-stream"},
                   json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_tryfleet_mcp_over_stdio_runs_a_command_and_reads_a_file(front):
    key = front.key("acme", "sandbox")

    async def work(c):
        names = await tool_names(c)
        box = await tool(c, "create_sandbox", mem_mib=256, timeout_s=300)
        try:
            ran = await tool(c, "run_command", sandbox_id=box["id"],
                             command=["python3", "-c", "print(6*7)"])
            await tool(c, "write_file", sandbox_id=box["id"], path="/root/b.bin",
                       content="AP8=", encoding="base64")
            read = await tool(c, "read_file", sandbox_id=box["id"], path="/root/b.bin",
                              encoding="base64")
        finally:
            await tool(c, "destroy_sandbox", sandbox_id=box["id"])
        return names, ran, read

    names, ran, read = using(over_stdio(front.url, key), work)
    assert names == SANDBOX_TOOLS  # the key's scopes, over stdio too
    assert ran["stdout"] == "42\n" and read["content"] == "AP8="


def test_a_sandbox_an_agent_forgets_is_destroyed_when_its_timeout_passes(front):
    import ray

    key = front.key("acme", "sandbox")

    async def open_and_forget(c):
        return await tool(c, "create_sandbox", mem_mib=256, timeout_s=3)

    box = using(over_http(front.url, key), open_and_forget)
    deadline = time.monotonic() + 60
    while (got := front.sandbox(key, box["id"]))["state"] == "open":
        assert time.monotonic() < deadline, "not closed 60 s after its timeout"
        time.sleep(0.5)
    assert got["close_reason"] == "its timeout passed"
    assert box["id"] not in unpack_list(str, ray.get(front.node.sandbox_list.remote(HOST)))

    async def use_it(c):
        return await refusal(c, "run_command", sandbox_id=box["id"], command="true")

    assert "its timeout passed" in using(over_http(front.url, key), use_it)
