"""Structured logs (tryfleet/logs.py): one JSON object a line with the bound ids, exceptions as
a field, ids that follow their asyncio task and never another's, text for people, `tryfleet
--log-format`, and the JSON file each actor writes in the data directory."""

import asyncio
import io
import json
import logging
import os
import re
import stat
import threading

import pytest

from tryfleet import cli, logs
from tryfleet.wire import Ids

from . import loglines
from .loglines import parsed

log = logging.getLogger("tryfleet.test")
lines = loglines.lines  # the fixture


@pytest.fixture
def restored_logging(monkeypatch):
    """configure() runs freely; the root logger and the environment are put back after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for name in (logs.ENV_FORMAT, logs.ENV_LEVEL):  # unset now, and again after (the CLI
        monkeypatch.setenv(name, "")                # sets them): setenv records to restore
        monkeypatch.delenv(name)
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def test_each_line_is_one_json_object_with_the_fixed_fields(lines):
    log.info("two\nlines %s", "in one")
    (line,) = lines()
    got = json.loads(line)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", got["ts"])
    assert {k: got[k] for k in ("level", "logger", "msg", "role", "host", "pid")} == {
        "level": "info", "logger": "tryfleet.test", "msg": "two\nlines in one",
        "role": "gateway", "host": "h1", "pid": os.getpid()}


def test_bound_ids_and_a_lines_extra_fields_are_fields(lines):
    with logs.bind(tenant="acme", request_id="req_1", sandbox=None, suite=""):
        log.warning("x", extra={"status": 200, "route": "/v1/x"})
    (got,) = parsed(lines())
    assert got["tenant"] == "acme" and got["request_id"] == "req_1"
    assert got["status"] == 200 and got["route"] == "/v1/x"
    assert "sandbox" not in got and "suite" not in got  # unset ids are left out


def test_an_exception_is_a_structured_field(lines):
    try:
        raise KeyError("gone")
    except KeyError:
        log.exception("failed")
    (got,) = parsed(lines())
    assert got["level"] == "error" and got["msg"] == "failed"
    assert got["exc"]["type"] == "KeyError" and got["exc"]["message"] == "'gone'"
    assert got["exc"]["stack"].startswith("Traceback") and "raise KeyError" in \
        got["exc"]["stack"]


def test_an_api_keys_secret_and_secret_fields_never_reach_a_line(lines):
    token = "tf_0123456789ab_" + "S" * 43
    log.warning("key %s refused", token, extra={"api_key": token, "secret_value": "v"})
    (line,) = lines()
    assert "S" * 43 not in line and '"v"' not in line
    assert json.loads(line)["msg"] == "key tf_0123456789ab_<redacted> refused"


def test_nested_binds_add_to_the_outer_ones_and_end_with_their_block(lines):
    with logs.bind(tenant="acme", suite="s"):
        with logs.bind(iteration="it-1", suite="s2"):
            log.info("inner")
        log.info("outer")
    log.info("none")
    inner, outer, none = parsed(lines())
    assert (inner["tenant"], inner["suite"], inner["iteration"]) == ("acme", "s2", "it-1")
    assert (outer["suite"], "iteration" in outer) == ("s", False)
    assert "tenant" not in none


def test_two_concurrent_tasks_keep_their_own_ids(lines):
    async def serve(rid, mine, other):
        with logs.bind(request_id=rid):
            mine.set()
            await other.wait()  # both bound now, each in its own task
            await asyncio.sleep(0)
            log.info(rid)

    async def both():
        a, b = asyncio.Event(), asyncio.Event()
        await asyncio.gather(serve("req_a", a, b), serve("req_b", b, a))

    asyncio.run(both())
    assert sorted((g["msg"], g["request_id"]) for g in parsed(lines())) == [
        ("req_a", "req_a"), ("req_b", "req_b")]


def test_a_task_started_inside_a_bind_inherits_its_ids(lines):
    async def main():
        with logs.bind(tenant="acme"):
            task = asyncio.create_task(asyncio.sleep(0, log.info("in the task")))
        await task

    asyncio.run(main())
    assert parsed(lines())[0]["tenant"] == "acme"


def test_bind_decorates_functions_coroutines_and_generators(lines):
    @logs.bind(sandbox="sb1")
    def plain():
        log.info("plain")

    @logs.bind(sandbox="sb2")
    async def coro():
        log.info("coro")

    @logs.bind(sandbox="sb3")
    def gen():
        log.info("gen")
        yield 1
        log.info("gen again")

    plain()
    asyncio.run(coro())
    for _ in gen():
        log.info("between")  # a generator's binding does not leak to who iterates it
    assert [(g["msg"], g.get("sandbox")) for g in parsed(lines())] == [
        ("plain", "sb1"), ("coro", "sb2"), ("gen", "sb3"), ("between", None),
        ("gen again", "sb3")]


def test_a_wire_ids_record_binds_what_it_sets(lines):
    with logs.bind(**logs.ids_of(Ids(tenant="acme", suite="s", iteration="i", attempt=2,
                                     host="h1"))):
        log.info("x")
    (got,) = parsed(lines())
    assert {k: got.get(k) for k in ("tenant", "suite", "iteration", "attempt", "trace_id")} \
        == {"tenant": "acme", "suite": "s", "iteration": "i", "attempt": 2, "trace_id": None}


def test_a_thread_binds_its_own(lines):
    def work():
        with logs.bind(iteration="it-9"):
            log.info("in thread")

    with logs.bind(tenant="acme"):
        t = threading.Thread(target=work)
        t.start()
        t.join()
    (got,) = parsed(lines())
    assert got["iteration"] == "it-9" and "tenant" not in got  # a thread inherits nothing


def test_text_format_is_one_readable_line_with_the_ids(restored_logging):
    out = io.StringIO()
    logs.configure("cli", "text", "info", stream=out)
    with logs.bind(tenant="acme", request_id="req_1"):
        log.warning("slow answer")
    assert re.fullmatch(r"\S+Z WARNING tryfleet\.test: slow answer  tenant=acme "
                        r"request_id=req_1\n", out.getvalue())


def test_configure_replaces_its_own_handlers_only(restored_logging):
    root = logging.getLogger()
    theirs = logging.NullHandler()
    root.addHandler(theirs)
    try:
        logs.configure("cli", "json", "info", stream=io.StringIO())
        out = io.StringIO()
        logs.configure("cli", "json", "info", stream=out)
        log.info("once")
        assert theirs in root.handlers and len(out.getvalue().splitlines()) == 1
        assert sum(getattr(h, "tryfleet", False) for h in root.handlers) == 1
    finally:
        root.removeHandler(theirs)


def test_cli_log_format_text_sets_the_format_and_passes_it_on(restored_logging, capsys,
                                                              tmp_path):
    cli.main(["--log-format", "text", "--log-level", "info", "--data-dir",
                     str(tmp_path), "audit", "verify"])
    (ours,) = [h for h in logging.getLogger().handlers if getattr(h, "tryfleet", False)]
    assert isinstance(ours.formatter, logs.TextFormatter)
    assert logs.LogSetup.from_env() == logs.LogSetup("text", "info")  # for the actors


def test_cli_default_for_a_pipe_is_json(restored_logging, capsys, tmp_path):
    cli.main(["--data-dir", str(tmp_path), "audit", "verify"])
    (ours,) = [h for h in logging.getLogger().handlers if getattr(h, "tryfleet", False)]
    assert type(ours.formatter) is logs.JsonFormatter
    assert logs.LogSetup.from_env() == logs.LogSetup("json", "info")  # daemons: json


def test_an_actors_log_file_is_json_lines_readable_by_its_owner_only(restored_logging,
                                                                   tmp_path):
    old = os.umask(0o022)
    try:
        logs.LogSetup("text").apply("nodeagent", tmp_path, name="nodeagent-h1", host="h1")
    finally:
        os.umask(old)
    with logs.bind(attempt=3):
        log.info("to the file")
    path = logs.log_file(tmp_path, "nodeagent-h1")
    (got,) = parsed(path.read_text().splitlines())
    assert (got["msg"], got["role"], got["host"], got["attempt"]) == (
        "to the file", "nodeagent", "h1", 3)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_a_full_log_file_is_rotated_and_its_successor_is_private_too(tmp_path):
    handler = logs._PrivateRotatingFile(tmp_path / "r.jsonl", maxBytes=100, backupCount=2)
    handler.setFormatter(logs.JsonFormatter("scheduler"))
    try:
        for n in range(3):
            handler.emit(logging.LogRecord("tryfleet.test", logging.INFO, "", 0, f"line {n}",
                                           (), None))
    finally:
        handler.close()
    older, newer = (tmp_path / "r.jsonl.1", tmp_path / "r.jsonl")
    assert [json.loads(x)["msg"] for x in newer.read_text().splitlines()] == ["line 2"]
    assert older.exists() and stat.S_IMODE(newer.stat().st_mode) == 0o600
