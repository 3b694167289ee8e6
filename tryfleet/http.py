"""The SDK's one boundary with the fleet: HTTP requests to the gateway's /v1 API, with httpx.

- Every request carries an `X-Request-Id` of ours (kept across the retries of one call), so a
  call can be found in the gateway's logs and the ledger; `Api.last_request_id` is the id the
  last answer carried.
- An answer of problem+json (RFC 9457) becomes tryfleet's own error by its `type`
  (`error_of`), with the status, the problem and the request id on the exception.
- Calls are retried with backoff for up to `retry_s` when the gateway cannot be reached or
  answers 503 `unavailable` (it restarts, or the scheduler does): any call whose request never
  left (connection refused), and idempotent calls after any failure. `no-room` and 429 are
  answers, not outages: they are raised at once.
- Server-sent events are parsed here (`parse_sse`: the format is a few lines of text, and the
  light install depends on httpx and msgpack alone), and `listen` follows an event stream
  across dropped connections, asking each time from where the caller got to.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from tryfleet import __version__
from tryfleet.errors import (
    AccessDenied,
    BadRequest,
    CannotPlace,
    FleetUnavailable,
    Frozen,
    InfrastructureError,
    NoRoom,
    NotFound,
    PolicyDenied,
    QuotaExceeded,
    TryfleetError,
)

log = logging.getLogger("tryfleet.http")

PROBLEM_PREFIX = "urn:tryfleet:problem:"
SSE_READ_TIMEOUT_S = 45.0  # the gateway sends a keep-alive every 15 s: three missed, it is gone
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 2.0
RETRY_AFTER_MAX_S = 5.0
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE"})

Sleep = Callable[[float], None]
Clock = Callable[[], float]


def new_request_id() -> str:
    """An id the gateway keeps as the request's own (it takes 8-128 of [A-Za-z0-9._:-])."""
    return "tf-" + uuid.uuid4().hex


# ---- errors -------------------------------------------------------------------------------

def _access_denied(detail: str, p: Mapping[str, Any]) -> TryfleetError:
    scopes = p.get("scopes")
    return AccessDenied(detail, tuple(str(s) for s in scopes) if isinstance(scopes, list)
                        else ())


_BY_SLUG: dict[str, Callable[[str, Mapping[str, Any]], TryfleetError]] = {
    "not-found": lambda d, p: NotFound(d),
    "bad-request": lambda d, p: BadRequest(d),
    "invalid-request": lambda d, p: BadRequest(d),
    "too-large": lambda d, p: BadRequest(d),
    "method-not-allowed": lambda d, p: BadRequest(d),
    "cannot-place": lambda d, p: CannotPlace(d, str(p.get("reason") or "")),
    "policy-denied": lambda d, p: PolicyDenied(d, str(p.get("rule") or "")),
    "frozen": lambda d, p: Frozen(d, p.get("switch") if isinstance(p.get("switch"), dict)
                                  else None),
    "quota-exceeded": lambda d, p: QuotaExceeded(d, str(p.get("limit") or ""),
                                                 p.get("value") or 0),
    "no-room": lambda d, p: NoRoom(d),
    "unavailable": lambda d, p: FleetUnavailable(d),
    "unauthorized": _access_denied,
    "forbidden": _access_denied,
}


def _by_status(status: int, detail: str, p: Mapping[str, Any]) -> TryfleetError:
    """For an answer whose type we do not know (a proxy's, a newer gateway's): its family."""
    if status in (401, 403):
        return _access_denied(detail, p)
    if status == 404:
        return NotFound(detail)
    if status == 429:
        return QuotaExceeded(detail, str(p.get("limit") or ""), p.get("value") or 0)
    if 400 <= status < 500:
        return BadRequest(detail)
    if status in (502, 503, 504):
        return FleetUnavailable(detail)
    return InfrastructureError(detail)


def problem_error(problem: Mapping[str, Any], status: int | None = None,
                  request_id: str | None = None) -> TryfleetError:
    """The tryfleet error a problem (RFC 9457, as a dict) stands for."""
    kind = problem.get("type")
    slug = kind.removeprefix(PROBLEM_PREFIX) if isinstance(kind, str) else ""
    status = status if status is not None else problem.get("status")
    status = status if isinstance(status, int) else 500
    rid = problem.get("request_id") or request_id
    detail = str(problem.get("detail") or problem.get("title") or f"HTTP {status}")
    if status >= 500 and slug not in ("unavailable", "no-room") and rid:
        detail += f" (request {rid})"
    make = _BY_SLUG.get(slug)
    err = make(detail, problem) if make is not None else _by_status(status, detail, problem)
    err.status, err.problem = status, dict(problem)
    err.request_id = str(rid) if rid else None
    return err


def error_of(resp: httpx.Response) -> TryfleetError:
    """The tryfleet error an answer of 400 or more stands for."""
    rid = resp.headers.get("x-request-id")
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = resp.text.strip()[:300] if resp.content else ""
        body = {"detail": f"HTTP {resp.status_code} from {resp.request.url}"
                          + (f": {text}" if text else "")}
    return problem_error(body, resp.status_code, rid)


def _slug(resp: httpx.Response) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        kind = resp.json().get("type")
        if isinstance(kind, str):
            return kind.removeprefix(PROBLEM_PREFIX)
    return ""


def _outage(resp: httpx.Response) -> bool:
    """An answer that says the fleet is away for now, not that the request was wrong."""
    if resp.status_code in (502, 504):
        return True
    return resp.status_code == 503 and _slug(resp) in ("unavailable", "")


def _retry_after_s(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), RETRY_AFTER_MAX_S)
    except ValueError:
        return None


class Disconnected(FleetUnavailable):
    """The connection failed or dropped, or the gateway answered that the fleet is away for
    now: trying again later may work. `timed_out`: nothing came within the read timeout."""

    def __init__(self, message: str, retry_after_s: float | None = None,
                 timed_out: bool = False) -> None:
        super().__init__(message)
        self.retry_after_s, self.timed_out = retry_after_s, timed_out


class Backoff:
    """Pauses between tries, doubling from BACKOFF_FIRST_S to BACKOFF_MAX_S (with jitter, or
    as the server's Retry-After says), for at most window_s in all."""

    def __init__(self, window_s: float, sleep: Sleep, clock: Clock) -> None:
        self.deadline = clock() + window_s
        self.tries = 0
        self._sleep, self._clock = sleep, clock

    def wait(self, err: BaseException, retry_after_s: float | None = None) -> None:
        """Sleep before the next try; raise err once the window is over."""
        pause = retry_after_s if retry_after_s is not None else \
            min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** self.tries) * random.uniform(0.5, 1.0)
        if self._clock() + pause > self.deadline:
            raise err
        self.tries += 1
        self._sleep(pause)


# ---- server-sent events -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Event:
    """One server-sent event: its type (`event:`, "message" if none), its data, and the last
    event id the stream gave (`id:`), which is where to resume from."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data) if self.data else None


def parse_sse(lines: Iterable[str]) -> Iterator[Event | None]:
    """The events of a text/event-stream, given its lines without their ends, as they come
    (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation);
    None for each comment line (a keep-alive), so a reader can look at its clock while the
    stream is quiet. `retry:` is ignored: the client has its own backoff."""
    kind, last_id = "", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Event(kind or "message", "\n".join(data), last_id)
            kind, data = "", []
            continue
        if line.startswith(":"):
            yield None
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            kind = value
        elif name == "id" and "\0" not in value:
            last_id = value


# ---- the client ---------------------------------------------------------------------------

class Api:
    """Requests to one gateway with one key. `transport` replaces httpx's (tests give an
    httpx.MockTransport); `sleep` and `clock` the pauses between retries."""

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 60.0,
                 retry_s: float = 30.0, transport: httpx.BaseTransport | None = None,
                 sleep: Sleep = time.sleep, clock: Clock = time.monotonic) -> None:
        self.url, self.timeout_s, self.retry_s = url.rstrip("/"), timeout_s, retry_s
        self.sleep, self.clock = sleep, clock
        self.last_request_id: str | None = None
        self._http = httpx.Client(
            base_url=self.url, transport=transport, timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json",
                     "User-Agent": f"tryfleet/{__version__}"})

    def close(self) -> None:
        self._http.close()

    def backoff(self, window_s: float) -> Backoff:
        return Backoff(window_s, self.sleep, self.clock)

    def _unreachable(self, err: httpx.TransportError, method: str, path: str) -> Disconnected:
        return Disconnected(f"cannot reach the tryfleet API at {self.url} ({method} {path}: "
                            f"{type(err).__name__}: {err or 'no answer'}); is the fleet up "
                            "(`tryfleet status`), and is the URL right?",
                            timed_out=isinstance(err, httpx.ReadTimeout))

    def request(self, method: str, path: str, *, idempotent: bool | None = None,
                timeout_s: float | None = None, retry_s: float | None = None,
                **kw: Any) -> httpx.Response:
        """Send one request (retried as the module says) and return its answer below 400;
        raise tryfleet's error for the rest. kw: params, json, content, headers."""
        idem = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        rid = new_request_id()
        kw["headers"] = {"X-Request-Id": rid, **kw.get("headers", {})}
        timeout = self.timeout_s if timeout_s is None else timeout_s
        backoff = self.backoff(self.retry_s if retry_s is None else retry_s)
        while True:
            started = self.clock()
            try:
                resp = self._http.request(method, path, timeout=timeout, **kw)
            except httpx.TransportError as err:
                failure = self._unreachable(err, method, path)
                never_sent = isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout,
                                              httpx.PoolTimeout))
                if not (idem or never_sent):
                    raise failure from err
                log.debug("%s %s failed (request %s): %s; trying again", method, path, rid, err,
                          extra={"request_id": rid})
                backoff.wait(failure)
                continue
            self.last_request_id = resp.headers.get("x-request-id", rid)
            log.debug("%s %s -> %d in %.1f ms (request %s)", method, path, resp.status_code,
                      (self.clock() - started) * 1000, self.last_request_id,
                      extra={"request_id": self.last_request_id})
            if resp.status_code < 400:
                return resp
            refused = error_of(resp)
            if idem and _outage(resp):
                backoff.wait(refused, _retry_after_s(resp))
                continue
            raise refused

    def json(self, method: str, path: str, **kw: Any) -> Any:
        """request(), then the answer's JSON (None for 204)."""
        resp = self.request(method, path, **kw)
        return None if resp.status_code == 204 or not resp.content else resp.json()

    @contextlib.contextmanager
    def stream(self, method: str, path: str, *, read_timeout_s: float = SSE_READ_TIMEOUT_S,
               **kw: Any) -> Iterator[Iterator[Event | None]]:
        """An event stream (one connection, no retry). Disconnected when it cannot be opened
        or drops, or the gateway answers that the fleet is away; tryfleet's error for any
        other answer of 400 or more."""
        rid = new_request_id()
        headers = {"X-Request-Id": rid, "Accept": "text/event-stream", **kw.pop("headers", {})}
        req = self._http.build_request(method, path, headers=headers, timeout=httpx.Timeout(
            self.timeout_s, read=read_timeout_s), **kw)
        try:
            resp = self._http.send(req, stream=True)
        except httpx.TransportError as err:
            raise self._unreachable(err, method, path) from err
        try:
            self.last_request_id = resp.headers.get("x-request-id", rid)
            if resp.status_code >= 400:
                resp.read()
                refused = error_of(resp)
                if _outage(resp):
                    raise Disconnected(str(refused), _retry_after_s(resp)) from refused
                raise refused
            yield self._events(resp, method, path)
        finally:
            resp.close()

    def _events(self, resp: httpx.Response, method: str, path: str) -> Iterator[Event | None]:
        try:
            yield from parse_sse(resp.iter_lines())
        except httpx.TransportError as err:
            raise self._unreachable(err, method, path) from err

    def listen(self, path: str, where: Callable[[], Mapping[str, Any]], window_s: float,
               deadline: float | None = None) -> Iterator[Event | None]:
        """The events of the GET event stream at path, across dropped connections and
        restarts of the gateway: each (re)connection asks with the params where() gives then
        (the cursor or offsets the caller got to), after a backoff of at most window_s per
        outage. Yields None on keep-alives and when `deadline` (clock time) has passed, so
        the caller can give up; FleetUnavailable once an outage outlasts window_s."""
        backoff: Backoff | None = None
        while True:
            params = dict(where())
            last = params.pop("last_event_id", None)
            headers = {"Last-Event-ID": str(last)} if last else {}
            read_s = SSE_READ_TIMEOUT_S if deadline is None else \
                min(SSE_READ_TIMEOUT_S, max(0.05, deadline - self.clock()))
            heard = False
            try:
                with self.stream("GET", path, params=params, headers=headers,
                                 read_timeout_s=read_s) as events:
                    for ev in events:
                        heard, backoff = True, None
                        yield ev
            except Disconnected as err:
                if err.timed_out and deadline is not None and self.clock() >= deadline:
                    yield None
                    continue
                backoff = backoff or self.backoff(window_s)
                log.info("event stream %s: %s; connecting again", path, err)
                backoff.wait(FleetUnavailable(f"lost the event stream {path} for over "
                                              f"{window_s:g}s: {err}"), err.retry_after_s)
                continue
            if not heard:  # closed at once, without a word: do not spin
                backoff = backoff or self.backoff(window_s)
                backoff.wait(FleetUnavailable(f"the gateway keeps closing the event stream "
                                              f"{path} at once"))


__all__ = ["PROBLEM_PREFIX", "Api", "Backoff", "Disconnected", "Event", "error_of",
           "new_request_id", "parse_sse", "problem_error"]
