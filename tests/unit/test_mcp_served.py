"""The MCP server as the gateway serves it at /mcp, reached with the official `mcp` SDK's own
client over real HTTP on loopback (servedapi.py: the real app, scheduler and ledger, a node
agent on the fake hypervisor, which runs commands on this machine; no Ray, no VM), and as
`tryfleet mcp` serves it over stdio (a subprocess of this checkout, over the same API). Keys
and scopes are checked over HTTP only: the SDK's in-process client skips HTTP auth."""

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from tests.mcpclients import over_http, over_stdio, refusal, tool, tool_names, using
from tests.waiting import until, until_async
from tryfleet.audit import Filter

from .servedapi import served_api

ALL = {"create_sandbox", "run_command", "write_file", "read_file", "list_files",
       "destroy_sandbox", "submit_batch", "batch_status", "batch_results"}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {},
    "clientInfo": {"name": "probe", "version": "0"}}}
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRYFLEET_ACCEL", "tcg")
        with served_api(tmp_path_factory.mktemp("mcp"), audit=True) as s:
            (s.data_dir / "policy.toml").write_text('[default]\nsecrets = ["MCP_*"]\n')
            yield s


@pytest.fixture(scope="module")
def acme(served):
    return served.key("acme", "sandbox", "batch")


def sandbox_of(served, key, sid):
    r = httpx.get(f"{served.url}/v1/sandboxes/{sid}", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


# ---- the path ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["legacy", "auto"])  # the 2025 handshake, and 2026's discover
def test_a_key_lists_the_tools_runs_a_command_and_reads_a_file_back(served, acme, mode):
    async def work(c):
        names = await tool_names(c)
        assert (c.protocol_version in MODERN_PROTOCOL_VERSIONS) == (mode == "auto")
        box = await tool(c, "create_sandbox", mem_mib=256)
        progress = []
        ran = await tool(c, "run_command", progress, sandbox_id=box["id"],
                         command="python3 -c 'print(6*7)'")
        await tool(c, "write_file", sandbox_id=box["id"], path="/root/a.txt", content="hi")
        read = await tool(c, "read_file", sandbox_id=box["id"], path="/root/a.txt")
        await tool(c, "destroy_sandbox", sandbox_id=box["id"])
        return names, ran, progress, read

    names, ran, progress, read = using(over_http(served.url, acme, mode), work)
    assert names == ALL
    assert (ran["exit_code"], ran["stdout"]) == (0, "42\n")
    assert [m for _, m in progress] == ["stdout: 42\n"]
    assert read["content"] == "hi"


def test_what_a_tool_makes_is_recorded_with_its_request_id_key_and_tenant(served, acme):
    async def work(c):
        box = await tool(c, "create_sandbox", mem_mib=256, metadata={"by": "agent"})
        await tool(c, "destroy_sandbox", sandbox_id=box["id"])
        return box

    box = using(over_http(served.url, acme), work)
    recorded = sandbox_of(served, acme, box["id"])
    assert recorded["request_id"] == box["request_id"] and box["request_id"].startswith("req_")
    assert recorded["tenant"] == "acme" and recorded["metadata"] == {"by": "agent"}
    assert recorded["key_id"] == acme.split("_")[1]
    assert recorded["state"] == "closed"


def test_a_tools_command_is_in_the_audit_trail_under_its_mcp_request(served, acme):
    async def work(c):
        box = await tool(c, "create_sandbox", mem_mib=256)
        await tool(c, "run_command", sandbox_id=box["id"], command="echo audited")
        return box

    box = using(over_http(served.url, acme), work)
    audit = served.audit
    (start,) = until(lambda: audit.select(Filter(sandbox=box["id"], action="exec.start")))
    rid = start.request_id
    until(lambda: audit.trace(rid)[-1].action == "api.response")
    got = [(r.action, r.actor, r.details if r.action == "api.request" else "")
           for r in audit.trace(rid)]
    key = f"key:{acme.split('_')[1]}"
    assert got == [("api.request", key, '{"method":"POST","route":"/mcp"}'),
                   ("exec.start", key, ""), ("exec.end", key, ""), ("api.response", key, "")]


def test_a_batch_is_submitted_and_its_status_and_results_read(served, acme):
    async def work(c):
        sent = await tool(c, "submit_batch", suite="mcp-batch", iterations=[
            {"id": "ok", "command": "echo fine"}, {"id": "bad", "command": ["false"]}])
        async def status_when_done():
            got = await tool(c, "batch_status", suite="mcp-batch")
            return got if got["done"] else None

        status = await until_async(status_when_done, 60)
        first = await tool(c, "batch_results", suite="mcp-batch", limit=1)
        rest = await tool(c, "batch_results", suite="mcp-batch", cursor=first["next_cursor"])
        return sent, status, first, rest

    sent, status, first, rest = using(over_http(served.url, acme), work)
    assert sent["ids"] == ["ok", "bad"]
    assert status["counts"] == {"SUCCEEDED": 1, "FAILED": 1} and status["total"] == 2
    assert [(i["id"], i["state"], i["stdout"]) for i in first["items"]] == [
        ("ok", "SUCCEEDED", "fine\n")]
    assert [(i["id"], i["exit_code"]) for i in rest["items"]] == [("bad", 1)]
    assert rest["next_cursor"] is None
    r = httpx.get(f"{served.url}/v1/iterations/ok", headers={"Authorization": f"Bearer {acme}"})
    assert r.json()["request_id"] == sent["request_id"]


# ---- keys and scopes -------------------------------------------------------------------------

def test_a_request_without_a_key_is_refused_with_401(served):
    r = httpx.post(f"{served.url}/mcp", json=INIT, headers=MCP_HEADERS)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_a_request_with_an_unknown_key_is_refused_with_401(served):
    r = httpx.post(f"{served.url}/mcp", json=INIT, headers={
        **MCP_HEADERS, "Authorization": "Bearer tf_000000000000_" + "x" * 43})
    assert r.status_code == 401


def leaves(err):
    inner = getattr(err, "exceptions", None)
    return [x for e in inner for x in leaves(e)] if inner else [err]


def test_the_sdk_client_without_a_key_gets_no_answer_but_an_error(served):
    with pytest.raises(Exception) as refused:  # (the 401 itself: the tests above)
        using(over_http(served.url, None), tool_names, timeout_s=30)
    assert [type(e) for e in leaves(refused.value)] == [MCPError]


def test_a_sandbox_key_neither_sees_nor_calls_the_batch_tools(served):
    async def work(c):
        return await tool_names(c), await refusal(c, "submit_batch", iterations=[
            {"command": "true"}])

    names, refused = using(over_http(served.url, served.key("acme", "sandbox")), work)
    assert names == ALL - {"submit_batch", "batch_status", "batch_results"}
    assert "needs a key with the `batch` scope" in refused


def test_a_read_key_neither_sees_nor_calls_the_tools_that_change_things(served):
    async def work(c):
        return await tool_names(c), await refusal(c, "create_sandbox")

    names, refused = using(over_http(served.url, served.key("acme", "read")), work)
    assert names == {"read_file", "list_files", "batch_status", "batch_results"}
    assert "`sandbox`" in refused


def test_another_tenants_sandbox_does_not_exist_for_a_key(served, acme):
    async def work(c):
        return await tool(c, "create_sandbox", mem_mib=256)

    box = using(over_http(served.url, acme), work)

    async def other(c):
        return await refusal(c, "run_command", sandbox_id=box["id"], command="true")

    refused = using(over_http(served.url, served.key("globex", "sandbox")), other)
    assert f"no sandbox {box['id']!r}" in refused and "[not-found, HTTP 404]" in refused
    assert sandbox_of(served, acme, box["id"])["state"] == "open"
    httpx.delete(f"{served.url}/v1/sandboxes/{box['id']}",
                 headers={"Authorization": f"Bearer {acme}"})


def test_the_tenants_policy_holds_as_for_the_api(served, acme):
    async def work(c):
        return await refusal(c, "create_sandbox", cpus=64)

    refused = using(over_http(served.url, acme), work)
    assert "max_cpus" in refused and "[policy-denied, HTTP 403]" in refused


def test_a_secret_named_in_run_command_is_set_and_comes_back_masked(served, acme):
    from tryfleet.secretstore import SecretStore

    SecretStore(served.data_dir).set("acme", "MCP_TOKEN", "mcp-s3cret")

    async def work(c):
        box = await tool(c, "create_sandbox", mem_mib=256)
        try:
            return await tool(c, "run_command", sandbox_id=box["id"],
                              command='echo "<$MCP_TOKEN>"', secrets=["MCP_TOKEN"])
        finally:
            await tool(c, "destroy_sandbox", sandbox_id=box["id"])

    ran = using(over_http(served.url, acme), work)
    assert ran["stdout"] == "<" + "*" * len("mcp-s3cret") + ">\n"


# ---- tryfleet mcp over stdio -----------------------------------------------------------------

def test_tryfleet_mcp_over_stdio_runs_a_command_and_reads_a_file_for_its_key(served):
    async def work(c):
        names = await tool_names(c)
        box = await tool(c, "create_sandbox", mem_mib=256)
        ran = await tool(c, "run_command", sandbox_id=box["id"], command=[
            "python3", "-c", "print(6*7)"])
        await tool(c, "write_file", sandbox_id=box["id"], path="/root/b.txt", content="hey")
        read = await tool(c, "read_file", sandbox_id=box["id"], path="/root/b.txt")
        await tool(c, "destroy_sandbox", sandbox_id=box["id"])
        return names, box, ran, read

    key = served.key("acme", "sandbox")
    names, box, ran, read = using(over_stdio(served.url, key), work)
    assert names == ALL - {"submit_batch", "batch_status", "batch_results"}
    assert ran["stdout"] == "42\n" and read["content"] == "hey"
    assert sandbox_of(served, key, box["id"])["request_id"] == box["request_id"]
