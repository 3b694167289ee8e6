"""The Python SDK: `fleet = tryfleet.connect()`, then submit, map, watch, follow, sandbox, cancel.

Everything goes over the fleet's HTTP API (/v1, an API key, see http.py); nothing here imports
Ray. Waiting for results listens to the API's event stream of iterations as they end, resuming
from its cursor after a dropped connection or a restart of the gateway, rather than polling.

Errors are tryfleet's own (tryfleet.errors): BadRequest (and CannotPlace) when a request can
never succeed as given, NotFound, NoRoom, WaitTimeout, AccessDenied (the key), PolicyDenied and
QuotaExceeded (the tenant's limits), FleetUnavailable when the fleet cannot be reached. Each
carries the request id of the call that failed (`err.request_id`).
"""

from __future__ import annotations

import base64
import dataclasses
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from . import local
from .errors import AccessDenied, BadRequest, FleetUnavailable, NotFound, WaitTimeout
from .http import Api, problem_error
from .kill_switches import Switches
from .sandbox import ExecResult, Sandbox
from .scheduler.records import (
    TERMINAL,
    Attempt,
    Iteration,
    IterationDetail,
    LiveOutput,
    Result,
)
from .secretsapi import Secrets

SUBMIT_CHUNK = 500  # iterations sent in one POST /v1/batches
PAGE = 200  # rows asked for per page of a listing
LOOKUP_MAX = 32  # a wait on this many ids or fewer, without a suite, asks for each first
NO_KEY = ("no API key: pass api_key=, or set TRYFLEET_API_KEY (an admin makes one with "
          "`tryfleet key create --tenant T`)")


def _q(name: str) -> str:
    return quote(name, safe="")


_TEXT_FIELDS = ("stdout", "stderr", "trace_id", "suite", "tenant", "request_id", "key_id")


def _count(value: Any) -> int:
    return len(value) if isinstance(value, list) else int(value or 0)


def result_of(data: Mapping[str, Any]) -> Result:
    """A Result from the API's iteration JSON: the fields it has (an iteration without its
    output has stdout and stderr ""); how many attempts from `attempt` (the count, as listings
    and events give it) or `attempts` (the list, in the view of one iteration); the end cursor
    as end_seq. `host` is given to admins only (None otherwise)."""
    output = data.get("output") if isinstance(data.get("output"), Mapping) else {}
    values: dict[str, Any] = {}
    for name in Result.__dataclass_fields__:
        value = data.get(name, output.get(name) if output else None)
        if name in _TEXT_FIELDS:
            value = value if isinstance(value, str) else ""
        elif name in ("stdout_truncated", "stderr_truncated"):
            value = bool(value)
        elif name == "attempts":
            value = _count(data["attempt"]) if "attempt" in data else _count(value)
        elif name == "end_seq" and value is None:
            cursor = data.get("end_cursor")
            value = int(cursor) if isinstance(cursor, str) and cursor.isdigit() else None
        values[name] = value
    return Result(**values)


def attempts_of(data: Mapping[str, Any], iid: str) -> tuple[Attempt, ...]:
    """The attempts of the view of one iteration (their hosts: admins only, else "")."""
    got = data.get("attempts")
    if not isinstance(got, list):
        return ()
    fields = Attempt.__dataclass_fields__
    return tuple(Attempt(**{"iteration_id": iid, "placed_at": 0.0,
                            **{k: v for k, v in a.items() if k in fields},
                            "host": a.get("host") or ""}) for a in got)


def wire_of(it: Iteration) -> dict[str, Any]:
    """An iteration as the API takes it: files of bytes as {"b64": ...}, no null fields."""
    body = {k: v for k, v in it.to_wire().items() if v is not None}
    body["files"] = {path: {"b64": base64.b64encode(data).decode("ascii")}
                     if isinstance(data, bytes) else data for path, data in it.files.items()}
    return body


class Keys:
    """API keys, for admins: make, list, revoke."""

    def __init__(self, api: Api) -> None:
        self._api = api

    def create(self, tenant: str, scopes: Sequence[str] = ("sandbox", "batch"),
               expires_in_s: float | None = None, name: str = "") -> dict[str, Any]:
        """A new key of tenant: its record and, under "key", the key itself (shown this
        once)."""
        body: dict[str, Any] = {"tenant": tenant, "scopes": list(scopes), "name": name}
        if expires_in_s is not None:
            body["expires_in_s"] = float(expires_in_s)
        got: dict[str, Any] = self._api.json("POST", "/v1/keys", json=body)
        return got

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """The keys (of tenant), without their secrets."""
        params = {"tenant": tenant} if tenant else {}
        return list(self._api.json("GET", "/v1/keys", params=params)["items"])

    def revoke(self, key_id: str) -> None:
        """Refused from its next request on; revoking twice changes nothing."""
        self._api.request("DELETE", f"/v1/keys/{_q(key_id)}")


class Fleet:
    """A connection to a fleet's API with one key (make one with `connect`). Calls are retried
    for up to retry_s while the gateway or the scheduler restarts; waits reconnect to the
    event stream for up to reconnect_s per outage."""

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 60.0,
                 retry_s: float = 30.0, reconnect_s: float = 300.0,
                 transport: httpx.BaseTransport | None = None, embedded: bool = False,
                 on_close: Callable[[], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.url, self.embedded, self.reconnect_s = url.rstrip("/"), embedded, reconnect_s
        self.api = Api(url, api_key, timeout_s=timeout_s, retry_s=retry_s,
                       transport=transport, sleep=sleep)
        self.keys = Keys(self.api)
        self.switches = Switches(self.api)  # kill switches (admins)
        self.secrets = Secrets(self.api)  # admins: tenants' secrets
        self._on_close = on_close
        self._me: dict[str, Any] | None = None

    @property
    def last_request_id(self) -> str | None:
        """The request id of the last answer (X-Request-Id): what to quote to an operator."""
        return self.api.last_request_id

    def me(self) -> dict[str, Any]:
        """The key's id, tenant and scopes."""
        got: dict[str, Any] = self.api.json("GET", "/v1/me")
        self._me = got
        return got

    @property
    def admin(self) -> bool:
        """Whether the key is an admin's (asked once)."""
        me = self._me if self._me is not None else self.me()
        return "admin" in (me.get("scopes") or ())

    # ---- batches ---------------------------------------------------------------------------
    def submit(self, iterations: Iterable[Iteration], suite: str = "default",
               tenant: str | None = None, limits: Mapping[str, int] | None = None,
               max_iterations: int | None = None, max_wall_s: float | None = None
               ) -> list[str]:
        """Record the iterations durably (on disk when this returns); their ids. Iterations
        without an id get one here, so a retried request records nothing twice. BadRequest for
        an invalid one, CannotPlace (with .reason) for one no host of the fleet could ever run
        (then nothing of that request is recorded; more than SUBMIT_CHUNK go in several).
        tenant: an admin's choice (default: the key's). Iterations name the limits they hold
        in Iteration.limits; `limits` gives the sizes expected of them: with an admin key they
        are set first (set_limit, for the whole fleet), with any other the submit is refused
        (BadRequest) unless they are the sizes in force."""
        its = [it if it.id else dataclasses.replace(it, id=uuid.uuid4().hex[:16])
               for it in iterations]
        if limits and self.admin:
            for name, value in limits.items():
                self.set_limit(name, value)
        extra = {k: v for k, v in (("tenant", tenant), ("max_iterations", max_iterations),
                                   ("max_wall_s", max_wall_s),
                                   ("expect_limits", dict(limits) if limits else None))
                 if v is not None}
        ids: list[str] = []
        for i in range(0, len(its), SUBMIT_CHUNK):
            body = {"suite": suite, "iterations": [wire_of(it) for it in
                                                   its[i:i + SUBMIT_CHUNK]], **extra}
            ids += self.api.json("POST", "/v1/batches", json=body, idempotent=True)["ids"]
        return ids

    def map(self, iterations: Iterable[Iteration], suite: str = "default",
            tenant: str | None = None, limits: Mapping[str, int] | None = None,
            timeout_s: float | None = None, output: bool = True) -> Iterator[Result]:
        """Submit, then yield each result as it completes (in completion order)."""
        ids = self.submit(iterations, suite, tenant, limits)
        yield from self.watch(ids, timeout_s=timeout_s, suite=suite, tenant=tenant,
                              output=output)

    def watch(self, ids: Sequence[str], timeout_s: float | None = None,
              suite: str | None = None, tenant: str | None = None,
              output: bool = True) -> Iterator[Result]:
        """Yield each result as its iteration ends (with its output unless output=False: one
        more request each); WaitTimeout after timeout_s. Listens to the suite's stream of
        ended iterations from its start, so what ended before comes first; give `suite` (the
        one all ids are in) when waiting on many ids: without it a wait on more than
        LOOKUP_MAX ids listens to every iteration of the tenant."""
        pending = set(ids)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if suite is None and 0 < len(pending) <= LOOKUP_MAX:
            suites = set()
            for iid in dict.fromkeys(ids):
                now = self.get(iid, tenant=tenant).result
                if now.state in TERMINAL:
                    pending.discard(iid)
                    yield now
                else:
                    suites.add(now.suite)
            suite = suites.pop() if len(suites) == 1 else None
        if not pending:
            return
        for item in self._ended(suite, None, tenant, deadline):
            ended = item[1] if item is not None else None
            if ended is not None and ended.id in pending:
                pending.discard(ended.id)
                yield self.get(ended.id, tenant=tenant).result if output else ended
                if not pending:
                    return
            elif deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"{len(pending)} iteration(s) not finished after "
                                  f"{timeout_s:g}s: {', '.join(sorted(pending)[:10])}")

    def wait(self, ids: Sequence[str], timeout_s: float | None = None,
             suite: str | None = None, tenant: str | None = None,
             output: bool = True) -> list[Result]:
        """The results of ids, in their order, once all have ended; WaitTimeout after
        timeout_s."""
        by_id = {r.id: r for r in self.watch(ids, timeout_s, suite, tenant, output)}
        return [by_id[i] for i in ids]

    def run(self, iteration: Iteration, suite: str = "run", tenant: str | None = None
            ) -> Result:
        """Submit one iteration and wait for its result."""
        return self.wait(self.submit([iteration], suite, tenant), suite=suite, tenant=tenant)[0]

    def events(self, suite: str | None = None, cursor: str | None = None
               ) -> Iterator[tuple[str, Result]]:
        """(cursor, result) of each iteration (of suite) as it ends, after cursor (None: from
        the first that ended), without output; endless. Pass the last cursor to go on later."""
        for item in self._ended(suite, cursor, None, None):
            if item is not None:
                yield item

    def _ended(self, suite: str | None, cursor: str | None, tenant: str | None,
               deadline: float | None) -> Iterator[tuple[str, Result] | None]:
        at = cursor

        def where() -> dict[str, Any]:
            return {k: v for k, v in (("suite", suite), ("tenant", tenant), ("cursor", at),
                                      ("last_event_id", at)) if v is not None}

        for ev in self.api.listen("/v1/events/iterations", where, self.reconnect_s, deadline):
            if ev is None:
                yield None
            elif ev.event == "error":
                raise problem_error(ev.json(), request_id=self.api.last_request_id)
            elif ev.event == "ended":
                at = ev.id or at
                yield (at or "", result_of(ev.json()))

    # ---- one iteration, listings -----------------------------------------------------------
    def get(self, iid: str, tenant: str | None = None) -> IterationDetail:
        """One iteration as it stands (queued, running or ended; its output once ended) and
        its attempts. NotFound for an unknown id."""
        params = {"tenant": tenant} if tenant else {}
        data = self.api.json("GET", f"/v1/iterations/{_q(iid)}", params=params)
        return IterationDetail(result_of(data), attempts_of(data, iid))

    def attempts(self, iid: str) -> list[Attempt]:
        """The attempts of one iteration, first to last. NotFound for an unknown id."""
        return list(self.get(iid).attempts)

    def result(self, iid: str) -> Result | None:
        """The result of one iteration once it has ended; None before. NotFound if unknown."""
        r = self.get(iid).result
        return r if r.state in TERMINAL else None

    def results(self, ids: Sequence[str] | None = None, suite: str | None = None
                ) -> list[Result]:
        """The ended iterations among ids (unknown ones left out), in the order of ids; or of
        suite, in submission order. With their output (a request each)."""
        if ids is None:
            ids = [r.id for r in self._listing(TERMINAL, suite, None)]
        found = []
        for iid in ids:
            try:
                r = self.result(iid)
            except NotFound:
                continue
            if r is not None:
                found.append(r)
        return found

    def iterations(self, states: Iterable[str] | None = None, suite: str | None = None,
                   limit: int = 200) -> list[Result]:
        """Iterations in submission order (what `tryfleet ps` shows), without their output:
        of these states (default: all; e.g. ("QUEUED", "PLACED", "RUNNING")), of suite."""
        if limit < 1:
            raise BadRequest(f"limit must be 1 or more, got {limit}")
        return list(self._listing(None if states is None else tuple(states), suite, limit))

    def _listing(self, states: Sequence[str] | None, suite: str | None, limit: int | None
                 ) -> Iterator[Result]:
        cursor, left = None, limit
        while left is None or left > 0:
            params: list[tuple[str, Any]] = [("state", s) for s in states or ()]
            params += [(k, v) for k, v in (("suite", suite), ("cursor", cursor)) if v]
            params.append(("limit", PAGE if left is None else min(PAGE, left)))
            page = self.api.json("GET", "/v1/iterations", params=params)
            for item in page["items"]:
                yield result_of(item)
            if left is not None:
                left -= len(page["items"])
            cursor = page.get("next_cursor")
            if not cursor or not page["items"]:
                return

    def counts(self, suite: str | None = None) -> dict[str, int]:
        """How many iterations are in each state, in suite (or fleet-wide: admins); {} for a
        suite that has none (the API knows no such suite)."""
        if suite is None:
            return dict(self.status().get("counts") or {})
        try:
            got = self.api.json("GET", f"/v1/suites/{_q(suite)}")
        except NotFound:
            return {}
        if isinstance(got.get("counts"), Mapping):
            got = got["counts"]
        return {k: int(v) for k, v in got.items() if isinstance(v, int) and k.isupper()}

    def output(self, iid: str, out_offset: int = 0, err_offset: int = 0) -> LiveOutput:
        """The iteration's stdout and stderr bytes past the offsets: live from its host while
        it runs, the recorded (capped) output once it has ended (`done`)."""
        got = self.api.json("GET", f"/v1/iterations/{_q(iid)}/output", params={
            "out_offset": out_offset, "err_offset": err_offset, "encoding": "base64"})
        return LiveOutput(base64.b64decode(got.get("stdout") or ""),
                          base64.b64decode(got.get("stderr") or ""), bool(got["done"]),
                          str(got["state"]), int(got.get("attempt") or 0), got.get("host"))

    def follow(self, iid: str) -> Iterator[tuple[str, bytes] | Result]:
        """Yields ("stdout" | "stderr", bytes) as the iteration prints, then its Result; a
        retry prints again from the start of its own output. Streamed (server-sent events),
        picked up where it was after a dropped connection."""
        offsets = {"stdout": 0, "stderr": 0}
        attempt = None

        def where() -> dict[str, Any]:  # on a reconnection: where it got to, in which attempt
            at = {"follow": "true", "encoding": "base64", "out_offset": offsets["stdout"],
                  "err_offset": offsets["stderr"]}
            return at if attempt is None else {**at, "attempt": attempt}

        for ev in self.api.listen(f"/v1/iterations/{_q(iid)}/output", where,
                                  self.reconnect_s):
            if ev is None:
                continue
            data = ev.json()
            if ev.event in offsets:
                if data.get("attempt") is not None and data["attempt"] != attempt:
                    attempt, offsets["stdout"], offsets["stderr"] = data["attempt"], 0, 0
                raw = base64.b64decode(data.get("data") or "")
                offsets[ev.event] += len(raw)
                if raw:
                    yield (ev.event, raw)
            elif ev.event == "ended":
                yield result_of(data) if "stdout" in data else self.get(iid).result
                return
            elif ev.event == "error":
                raise problem_error(data, request_id=self.api.last_request_id)

    # ---- control ---------------------------------------------------------------------------
    def cancel(self, iid: str | None = None, suite: str | None = None,
               tenant: str | None = None, all: bool = False) -> dict[str, int]:
        """Cancel one iteration, a suite, a tenant's (admins), or all (admins: the kill
        switch): queued ones end now, running ones are stopped and their VMs destroyed."""
        if sum(1 for x in (iid, suite, tenant, all) if x) != 1:
            raise BadRequest("cancel needs exactly one of: an id, suite=, tenant=, all=True")
        if iid:
            path, body = f"/v1/iterations/{_q(iid)}/cancel", None
        elif suite:
            path, body = f"/v1/suites/{_q(suite)}/cancel", None
        else:
            path, body = "/v1/fleet/cancel", ({"tenant": tenant} if tenant else {})
        got = self.api.json("POST", path, json=body, idempotent=True)
        return {k: int(v) for k, v in got.items() if isinstance(v, int)}

    def status(self) -> dict[str, Any]:
        """Hosts (capacity, pressure, lost), limits, and counts (admins)."""
        got: dict[str, Any] = self.api.json("GET", "/v1/fleet")
        return got

    def set_limit(self, name: str, value: int) -> dict[str, Any]:
        """Size a shared-resource limit fleet-wide: at most value running iterations hold
        `name` at once (admins)."""
        got = self.api.json("PUT", f"/v1/fleet/limits/{_q(name)}", json={"value": value})
        return dict(got or {})

    def sandbox(self, image: str = "base", cpus: int = 1, mem_mib: int = 512,
                timeout_s: float = 600.0, disk_mib: int | None = None,
                metadata: Mapping[str, str] | None = None, wait_s: float | None = None,
                tenant: str | None = None) -> Sandbox:
        """An interactive VM for up to timeout_s, opened by a `with` block (or open()); opening
        waits up to wait_s (default timeout_s, at most 600 s) for room."""
        return Sandbox(self.api, image, cpus, mem_mib, disk_mib, timeout_s, metadata, wait_s,
                       tenant)

    def close(self) -> None:
        """Disconnect; an embedded fleet also stops (its actors and their VMs)."""
        self.api.close()
        if self._on_close is not None:
            stop, self._on_close = self._on_close, None
            stop()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(url: str | None = None, api_key: str | None = None, *,
            data_dir: str | Path | None = None, timeout_s: float = 60.0, retry_s: float = 30.0,
            reconnect_s: float = 300.0, transport: httpx.BaseTransport | None = None) -> Fleet:
    """The fleet at url (default: $TRYFLEET_URL; else the fleet `tryfleet up` started on this
    host, from its up.json; else an embedded one started in this process: Ray, this host's
    node agent, the scheduler and the API on a free loopback port, stopped by close()). The
    key: api_key, else $TRYFLEET_API_KEY, else the local admin key `tryfleet up` left in the
    data directory (for this host's fleet). Checks both at once: FleetUnavailable when the API
    cannot be reached, AccessDenied when the key is refused. transport: an httpx transport in
    place of the network (tests)."""
    data = Path(data_dir) if data_dir else local.default_data_dir()
    key = api_key or os.environ.get("TRYFLEET_API_KEY") or None
    url = (url or os.environ.get("TRYFLEET_URL") or "").strip() or None
    here = local.api_url(data)
    if url is None and here is None and local.running(data) is not None:
        raise FleetUnavailable(f"the fleet `tryfleet up` started here ({data}/up.json) has no "
                               "HTTP API: stop it with `tryfleet down` and start it again")
    url = url or here
    if url is None:
        return _embedded(data, timeout_s, retry_s, reconnect_s, transport)
    if "://" not in url:
        url = "http://" + url
    if key is None and here is not None and url.rstrip("/") == here.rstrip("/"):
        key = local.admin_key(data)
    if key is None:
        raise AccessDenied(f"{NO_KEY}; the fleet is at {url}")
    return _checked(Fleet(url, key, timeout_s=timeout_s, retry_s=retry_s,
                          reconnect_s=reconnect_s, transport=transport))


def _checked(fleet: Fleet) -> Fleet:
    try:
        fleet.me()
    except BaseException:
        fleet.close()
        raise
    return fleet


def _embedded(data: Path, timeout_s: float, retry_s: float, reconnect_s: float,
              transport: httpx.BaseTransport | None) -> Fleet:
    why = local.needs_fleet_side("starting a fleet in this process (no fleet is running here)")
    if why is not None:
        raise FleetUnavailable(f"{why}; or connect to a fleet by its URL: "
                               "tryfleet.connect('http://HOST:8470', api_key=KEY), or set "
                               "TRYFLEET_URL and TRYFLEET_API_KEY")
    from . import cluster  # the fleet side: Ray and the node agent

    url, key, stop = cluster.start_embedded_api(data)
    # A failed check closes the fleet, which stops what was started.
    return _checked(Fleet(url, key, timeout_s=timeout_s, retry_s=retry_s,
                          reconnect_s=reconnect_s, transport=transport, embedded=True,
                          on_close=stop))


__all__ = ["ExecResult", "Fleet", "Iteration", "Keys", "Result", "Sandbox", "connect",
           "result_of", "wire_of"]
