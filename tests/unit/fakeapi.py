"""An in-memory stand-in for the gateway's /v1 API, as ISSUE9 fixes its paths and shapes, served
through httpx.MockTransport: the SDK and the CLI run against it in unit tests with no Ray and
no socket. It keeps what it was asked (`requests`), can be told to fail (`fault`) or to cut an
event stream after some events (`cut_streams_after`), and ends iterations on its own
(`outcome`) or when a test says (`auto_end=False`, then start() and end()).

It is the client's reading of the contract, not the gateway: tests/integration/test_sdk_http.py
runs the same SDK against the real one."""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

ADMIN = "tf_000000000000_" + "a" * 43
ACME = "tf_111111111111_" + "b" * 43
TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELLED", "INFRA_ERROR")
MAX_CPUS = 64


class Refused(Exception):
    def __init__(self, status: int, slug: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.slug, self.detail, self.extra = status, slug, detail, extra


def problem(status: int, slug: str, detail: str, rid: str = "req-fake-1", **extra: Any
            ) -> httpx.Response:
    body = {"type": f"urn:tryfleet:problem:{slug}", "title": slug, "status": status,
            "detail": detail, "request_id": rid, **extra}
    return httpx.Response(status, json=body, headers={
        "content-type": "application/problem+json", "x-request-id": rid})


@dataclass
class It:
    id: str
    suite: str
    tenant: str
    spec: dict[str, Any]
    request_id: str
    state: str = "QUEUED"
    exit_code: int | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    error: str | None = None
    host: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    end_cursor: str | None = None

    def json(self, output: bool = False) -> dict[str, Any]:
        """As the gateway answers it (routes/iteration_models.py): `attempt` the count; the
        view of one iteration also its output and `attempts`, the list."""
        d = {"id": self.id, "suite": self.suite, "tenant": self.tenant, "state": self.state,
             "exit_code": self.exit_code, "error": self.error, "host": self.host,
             "submitted_at": 0.0, "started_at": self.started_at, "ended_at": self.ended_at,
             "duration_s": None if self.ended_at is None else 0.5, "trace_id": "t-" + self.id,
             "stdout_truncated": False, "stderr_truncated": False, "attempt": len(self.attempts),
             "request_id": self.request_id, "key_id": "k", "end_cursor": self.end_cursor}
        if output:
            return {**d, "stdout": self.stdout.decode(errors="replace"),
                    "stderr": self.stderr.decode(errors="replace"), "encoding": "text",
                    "attempts": self.attempts}
        return d


def sse(event: str, data: Any, eid: str | None = None) -> bytes:
    lines = [f"event: {event}", f"data: {json.dumps(data)}"] + ([f"id: {eid}"] if eid else [])
    return ("\n".join(lines) + "\n\n").encode()


Outcome = Callable[[dict[str, Any]], dict[str, Any]]


def succeed(spec: dict[str, Any]) -> dict[str, Any]:
    return {"state": "SUCCEEDED", "exit_code": 0, "stdout": b"ok\n"}


class FakeApi:
    def __init__(self, outcome: Outcome = succeed, auto_end: bool = True,
                 idle_s: float = 5.0) -> None:
        self.outcome, self.auto_end, self.idle_s = outcome, auto_end, idle_s
        self.keys: dict[str, dict[str, Any]] = {
            ADMIN: {"id": "000000000000", "tenant": "default", "scopes": ["admin"]},
            ACME: {"id": "111111111111", "tenant": "acme", "scopes": ["sandbox", "batch"]}}
        self.its: dict[tuple[str, str], It] = {}
        self.ended: list[tuple[str, str]] = []  # in the order they ended: cursor = index + 1
        self.limits: dict[str, int] = {}
        self.files: dict[str, bytes] = {}
        self.sandboxes: dict[str, dict[str, Any]] = {}
        self.requests: list[httpx.Request] = []
        self.faults: list[tuple[str, Any]] = []
        self.cut_streams_after: int | None = None
        self.cond = threading.Condition()
        self.transport = httpx.MockTransport(self.handle)
        self.routes: list[tuple[str, re.Pattern[str], Callable[..., Any]]] = [
            (m, re.compile(f"^{p}$"), fn) for m, p, fn in (
                ("GET", "/v1/me", self.me),
                ("POST", "/v1/batches", self.batches),
                ("GET", "/v1/iterations", self.listing),
                ("GET", "/v1/iterations/([^/]+)", self.get_it),
                ("GET", "/v1/iterations/([^/]+)/output", self.output),
                ("POST", "/v1/iterations/([^/]+)/cancel", self.cancel_it),
                ("GET", "/v1/suites/([^/]+)", self.suite),
                ("POST", "/v1/suites/([^/]+)/cancel", self.cancel_suite),
                ("GET", "/v1/events/iterations", self.events),
                ("GET", "/v1/fleet", self.fleet),
                ("PUT", "/v1/fleet/limits/([^/]+)", self.set_limit),
                ("POST", "/v1/fleet/cancel", self.cancel_fleet),
                ("POST", "/v1/keys", self.create_key),
                ("GET", "/v1/keys", self.list_keys),
                ("DELETE", "/v1/keys/([^/]+)", self.revoke_key),
                ("POST", "/v1/sandboxes", self.open_sandbox),
                ("DELETE", "/v1/sandboxes/([^/]+)", self.close_sandbox),
                ("POST", "/v1/sandboxes/([^/]+)/exec", self.exec),
                ("POST", "/v1/sandboxes/([^/]+)/exec/stream", self.exec_stream),
                ("PUT", "/v1/sandboxes/([^/]+)/files", self.put_file),
                ("GET", "/v1/sandboxes/([^/]+)/files", self.get_file),
                ("GET", "/v1/sandboxes/([^/]+)/files/list", self.list_files))]

    # ---- plumbing ------------------------------------------------------------------------
    def fault(self, route: str, answer: Any) -> None:
        """The next request to `route` ("METHOD /path-prefix") gets `answer` (a Response) or
        raises it (an exception) instead of its real answer; or, a function, calls it first
        (what happens in the fleet as the request arrives)."""
        self.faults.append((route, answer))

    def sent(self, route: str) -> list[httpx.Request]:
        method, _, prefix = route.partition(" ")
        return [r for r in self.requests if r.method == method and r.url.path.startswith(prefix)]

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for n, (route, answer) in enumerate(self.faults):
            method, _, prefix = route.partition(" ")
            if request.method == method and request.url.path.startswith(prefix):
                del self.faults[n]
                if isinstance(answer, BaseException):
                    raise answer
                if isinstance(answer, httpx.Response):
                    return answer
                answer()  # something that happens as the request arrives
                break
        rid = request.headers.get("x-request-id") or "req-fake-" + secrets.token_hex(4)
        try:
            who = self.keys.get(request.headers.get("authorization", "").removeprefix("Bearer "))
            if who is None:
                raise Refused(401, "unauthorized", "the key is not valid: unknown, revoked or "
                              "expired")
            for method, pattern, fn in self.routes:
                m = pattern.match(request.url.path)
                if m and method == request.method:
                    got = fn(request, who, *m.groups())
                    if isinstance(got, httpx.Response):
                        got.headers["x-request-id"] = rid
                        return got
                    return httpx.Response(200 if request.method != "POST" or got is None
                                          else 201, json=got, headers={"x-request-id": rid})
            raise Refused(404, "not-found", f"no route {request.url.path}")
        except Refused as err:
            return problem(err.status, err.slug, err.detail, rid, **err.extra)

    @staticmethod
    def need(who: dict[str, Any], scope: str) -> None:
        if scope not in who["scopes"] and "admin" not in who["scopes"]:
            raise Refused(403, "forbidden", f"this key lacks the scope this needs: `{scope}`",
                          scopes=[scope])

    def tenant(self, who: dict[str, Any], asked: str | None) -> str:
        if asked and asked != who["tenant"]:
            self.need(who, "admin")
            return asked
        return str(who["tenant"])

    def whose(self, who: dict[str, Any], asked: str | None) -> str | None:
        """Whose things a read is about: a tenant key's own; an admin's choice, or None for
        every tenant's (as gateway/ledger.read_tenant)."""
        if "admin" in who["scopes"]:
            return asked or None
        return self.tenant(who, asked)

    def it(self, request: httpx.Request, who: dict[str, Any], iid: str) -> It:
        tenant = self.whose(who, request.url.params.get("tenant"))
        found = [it for (t, i), it in self.its.items() if i == iid and tenant in (None, t)]
        if len(found) > 1:
            raise Refused(400, "bad-request", f"iteration {iid!r} exists for several tenants: "
                          "name one with ?tenant=")
        if not found:
            raise Refused(404, "not-found", f"no iteration {iid!r}")
        return found[0]

    # ---- iterations ----------------------------------------------------------------------
    def start(self, tenant: str, iid: str, printed: bytes = b"") -> None:
        with self.cond:
            it = self.its[(tenant, iid)]
            it.state, it.host, it.started_at, it.stdout = "RUNNING", "h1", time.time(), printed
            it.attempts.append({"attempt": len(it.attempts) + 1, "host": "h1",
                                "placed_at": time.time(), "ended_at": None, "outcome": None,
                                "error": None})
            self.cond.notify_all()

    def end(self, tenant: str, iid: str, state: str = "SUCCEEDED", exit_code: int | None = 0,
            stdout: bytes = b"", stderr: bytes = b"", error: str | None = None) -> None:
        with self.cond:
            it = self.its[(tenant, iid)]
            if it.state not in ("RUNNING", "PLACED"):
                self.start(tenant, iid)
            it.state, it.exit_code, it.error, it.ended_at = state, exit_code, error, time.time()
            it.stdout, it.stderr = it.stdout + stdout, stderr
            it.attempts[-1].update(ended_at=it.ended_at, outcome=state, error=error)
            self.ended.append((tenant, iid))
            it.end_cursor = str(len(self.ended))
            self.cond.notify_all()

    def batches(self, request: httpx.Request, who: dict[str, Any]) -> dict[str, Any]:
        self.need(who, "batch")
        body = json.loads(request.content)
        tenant = self.tenant(who, body.get("tenant"))
        differ = {k: v for k, v in (body.get("expect_limits") or {}).items()
                  if self.limits.get(k) != v}
        if differ:
            raise Refused(400, "bad-request", f"limit sizes are set by admins, not by a batch: "
                          f"{differ} differ from the sizes in force ({self.limits})")
        for spec in body["iterations"]:
            if spec.get("cpus", 1) > MAX_CPUS:
                raise Refused(422, "cannot-place", f"iteration {spec['id']} can never run on "
                              f"this fleet: no host has {spec['cpus']} cpus",
                              reason=f"h1: {MAX_CPUS} cpus")
        ids = []
        for spec in body["iterations"]:
            key = (tenant, spec["id"])
            if key not in self.its:
                self.its[key] = It(spec["id"], body["suite"], tenant, spec,
                                   request.headers.get("x-request-id", ""))
                if self.auto_end:
                    self.end(tenant, spec["id"], **self.outcome(spec))
            ids.append(spec["id"])
        return {"suite": body["suite"], "ids": ids}

    def listing(self, request: httpx.Request, who: dict[str, Any]) -> dict[str, Any]:
        params = request.url.params
        tenant = self.whose(who, params.get("tenant"))
        states, suite = params.get_list("state"), params.get("suite")
        rows = [it for (t, _), it in self.its.items() if tenant in (None, t) and
                (not states or it.state in states) and (not suite or it.suite == suite)]
        start, limit = int(params.get("cursor") or 0), int(params["limit"])
        page = rows[start:start + limit]
        more = start + limit < len(rows)
        return {"items": [it.json() for it in page],
                "next_cursor": str(start + limit) if more else None}

    def get_it(self, request: httpx.Request, who: dict[str, Any], iid: str) -> dict[str, Any]:
        return self.it(request, who, iid).json(output=True)

    def output(self, request: httpx.Request, who: dict[str, Any], iid: str) -> Any:
        it, params = self.it(request, who, iid), request.url.params
        assert params["encoding"] == "base64"
        offsets = [int(params.get("out_offset", 0)), int(params.get("err_offset", 0))]
        if params.get("follow") != "true":
            return {"stdout": _b64(it.stdout[offsets[0]:]), "stderr": _b64(it.stderr[offsets[1]:]),
                    "done": it.state in TERMINAL, "state": it.state,
                    "attempt": len(it.attempts), "host": it.host}
        return _stream(self._follow(it, offsets))

    def _follow(self, it: It, offsets: list[int]) -> Iterator[bytes]:
        while True:
            with self.cond:
                done = it.state in TERMINAL
                chunks = [("stdout", it.stdout[offsets[0]:]), ("stderr", it.stderr[offsets[1]:])]
            for n, (name, data) in enumerate(chunks):
                if data:
                    offsets[n] += len(data)
                    yield sse(name, {"data": _b64(data), "attempt": len(it.attempts)})
            if done:
                yield sse("ended", it.json())
                return
            with self.cond:
                self.cond.wait(self.idle_s)
            yield b": ping\n\n"

    def cancel_it(self, request: httpx.Request, who: dict[str, Any], iid: str
                  ) -> dict[str, int]:
        self.need(who, "batch")
        it = self.it(request, who, iid)
        if it.state not in TERMINAL:
            self.end(it.tenant, iid, "CANCELLED", None, error="cancelled")
            return {"queued_cancelled": 1, "running_stopped": 0}
        return {"queued_cancelled": 0, "running_stopped": 0}

    def suite(self, request: httpx.Request, who: dict[str, Any], name: str) -> dict[str, Any]:
        tenant = self.tenant(who, request.url.params.get("tenant"))
        counts: dict[str, int] = {}
        for (t, _), it in self.its.items():
            if t == tenant and it.suite == name:
                counts[it.state] = counts.get(it.state, 0) + 1
        if not counts:  # (suites come with their iterations)
            raise Refused(404, "not-found", f"no suite {name!r}")
        return {"suite": name, "tenant": tenant, "created_at": 0.0, "max_iterations": None,
                "max_wall_s": None, "counts": counts, "total": sum(counts.values())}

    def cancel_suite(self, request: httpx.Request, who: dict[str, Any], name: str
                     ) -> dict[str, int]:
        self.need(who, "batch")
        live = [it for it in self.its.values() if it.suite == name and it.state not in TERMINAL
                and it.tenant == who["tenant"]]
        for it in live:
            self.end(it.tenant, it.id, "CANCELLED", None, error="cancelled")
        return {"queued_cancelled": len(live), "running_stopped": 0}

    def events(self, request: httpx.Request, who: dict[str, Any]) -> httpx.Response:
        params = request.url.params
        tenant, suite = self.whose(who, params.get("tenant")), params.get("suite")
        cursor = int(params.get("cursor") or request.headers.get("last-event-id") or 0)
        return _stream(self._ended(tenant, suite, cursor))

    def _ended(self, tenant: str | None, suite: str | None, cursor: int) -> Iterator[bytes]:
        sent = 0
        while True:
            with self.cond:
                if len(self.ended) <= cursor:
                    self.cond.wait(self.idle_s)
                new = list(enumerate(self.ended[cursor:], cursor + 1))
            if not new:
                yield b": ping\n\n"
            for seq, key in new:
                cursor = seq
                it = self.its[key]
                if tenant not in (None, key[0]) or (suite and it.suite != suite):
                    continue
                if self.cut_streams_after is not None and sent >= self.cut_streams_after:
                    self.cut_streams_after = None
                    raise httpx.ReadError("connection reset by peer")
                sent += 1
                yield sse("ended", it.json(), str(seq))

    # ---- fleet and keys (admin) ----------------------------------------------------------
    def fleet(self, request: httpx.Request, who: dict[str, Any]) -> dict[str, Any]:
        self.need(who, "admin")
        counts: dict[str, int] = {}
        tenants: dict[str, dict[str, int]] = {}
        for it in self.its.values():
            counts[it.state] = counts.get(it.state, 0) + 1
            per = tenants.setdefault(it.tenant, {})
            per[it.state] = per.get(it.state, 0) + 1
        return {"pid": 4242, "ledger": "/fake/ledger.db", "in_flight": 0,
                "limits": {k: {"size": v, "in_use": 0} for k, v in self.limits.items()},
                "hosts": [{"host": "h1", "lost": False, "pressured": False, "accel": "tcg",
                           "running": 0, "cpus": 2, "mem_mib": 4096, "images": ["base"],
                           "pressure": None}],
                "counts": counts, "tenants": tenants, "as_of": time.time()}

    def set_limit(self, request: httpx.Request, who: dict[str, Any], name: str
                  ) -> dict[str, Any]:
        self.need(who, "admin")
        self.limits[name] = json.loads(request.content)["value"]
        return {"name": name, "value": self.limits[name], "limits": dict(self.limits)}

    def cancel_fleet(self, request: httpx.Request, who: dict[str, Any]) -> dict[str, int]:
        self.need(who, "admin")
        tenant = json.loads(request.content or b"{}").get("tenant")
        live = [it for it in self.its.values() if it.state not in TERMINAL
                and (tenant is None or it.tenant == tenant)]
        for it in live:
            self.end(it.tenant, it.id, "CANCELLED", None, error="cancelled")
        return {"queued_cancelled": len(live), "running_stopped": 0}

    def create_key(self, request: httpx.Request, who: dict[str, Any]) -> dict[str, Any]:
        self.need(who, "admin")
        body = json.loads(request.content)
        kid = secrets.token_hex(6)
        token = f"tf_{kid}_" + secrets.token_urlsafe(32)
        self.keys[token] = {"id": kid, "tenant": body["tenant"], "scopes": body["scopes"]}
        expires = body.get("expires_in_s")
        return {**self.keys[token], "name": body.get("name", ""), "state": "active",
                "created_at": time.time(), "created_by": f"key:{who['id']}",
                "expires_at": None if expires is None else time.time() + expires,
                "revoked_at": None, "key": token}

    def list_keys(self, request: httpx.Request, who: dict[str, Any]) -> dict[str, Any]:
        self.need(who, "admin")
        tenant = request.url.params.get("tenant")
        return {"items": [{**k, "name": "", "state": "active", "created_at": 0.0,
                           "created_by": "x", "expires_at": None, "revoked_at": None}
                          for k in self.keys.values() if not tenant or k["tenant"] == tenant]}

    def revoke_key(self, request: httpx.Request, who: dict[str, Any], kid: str
                   ) -> httpx.Response:
        self.need(who, "admin")
        self.keys = {t: k for t, k in self.keys.items() if k["id"] != kid}
        return httpx.Response(204)

    # ---- sandboxes -----------------------------------------------------------------------
    def open_sandbox(self, request: httpx.Request, who: dict[str, Any]) -> dict[str, Any]:
        self.need(who, "sandbox")
        body = json.loads(request.content)
        if body["cpus"] > MAX_CPUS:
            raise Refused(422, "cannot-place", "a sandbox of 99 cpus can never be placed",
                          reason="h1: cpu")
        sid = f"sbx-{len(self.sandboxes) + 1}"
        self.sandboxes[sid] = {"id": sid, "tenant": who["tenant"], "state": "open",
                               "request_id": request.headers.get("x-request-id"), **body}
        return self.sandboxes[sid]

    def close_sandbox(self, request: httpx.Request, who: dict[str, Any], sid: str
                      ) -> httpx.Response:
        self.sandboxes[sid]["state"] = "closed"
        return httpx.Response(204)

    def exec(self, request: httpx.Request, who: dict[str, Any], sid: str) -> dict[str, Any]:
        body = json.loads(request.content)
        stdin = base64.b64decode(body.get("stdin_b64", ""))
        return {"exit_code": 0, "signal": None, "stdout": _b64(" ".join(body["argv"]).encode()
                                                             + stdin),
                "stderr": _b64(b"\xff"), "encoding": body["encoding"],
                "stdout_truncated": False, "stderr_truncated": False, "timed_out": False,
                "duration_s": 0.01}

    def exec_stream(self, request: httpx.Request, who: dict[str, Any], sid: str
                    ) -> httpx.Response:
        argv = json.loads(request.content)["argv"]
        parts = [sse("started", {"sandbox": sid, "argv": argv}), b": ping\n\n"]
        parts += [sse("stdout", {"data": _b64(f"{a}\n".encode())}) for a in argv]
        parts.append(sse("exit", {"exit_code": 0, "signal": None, "stdout_truncated": False,
                                  "stderr_truncated": False, "timed_out": False,
                                  "duration_s": 0.01}))
        return _stream(iter(parts))

    def put_file(self, request: httpx.Request, who: dict[str, Any], sid: str
                 ) -> dict[str, Any]:
        path = request.url.params["path"]
        self.files[path] = request.content
        return {"path": path, "size": len(request.content), "sha256": "x",
                "mode": request.url.params["mode"]}

    def get_file(self, request: httpx.Request, who: dict[str, Any], sid: str) -> httpx.Response:
        path = request.url.params["path"]
        if path not in self.files:
            raise Refused(404, "not-found", f"no file {path} in sandbox {sid}")
        return httpx.Response(200, content=self.files[path])

    def list_files(self, request: httpx.Request, who: dict[str, Any], sid: str
                   ) -> dict[str, Any]:
        return {"path": request.url.params["path"], "entries": [
            {"name": p.rsplit("/", 1)[1], "path": p, "type": "file", "size": len(d),
             "mode": 0o644, "mtime": 0.0} for p, d in self.files.items()]}

    def me(self, request: httpx.Request, who: dict[str, Any]) -> dict[str, Any]:
        return {"key_id": who["id"], "tenant": who["tenant"], "scopes": who["scopes"]}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _stream(parts: Iterator[bytes]) -> httpx.Response:
    return httpx.Response(200, content=parts, headers={"content-type": "text/event-stream"})


__all__ = ["ACME", "ADMIN", "FakeApi", "It", "problem", "sse"]
