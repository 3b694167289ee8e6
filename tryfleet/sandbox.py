"""Interactive sandboxes over the HTTP API: a VM held for up to timeout_s, commands run in it
(whole, or streamed as server-sent events), files written, read and listed; gone on close.

Output crosses as base64 (the API's lossless encoding), so stdout and stderr are the command's
bytes exactly."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Self
from urllib.parse import quote

from .errors import InfrastructureError
from .http import SSE_READ_TIMEOUT_S, Api, Disconnected, problem_error

WAIT_MAX_S = 600.0  # the longest the API waits for room before it answers no-room
EXEC_SLACK_S = 30.0  # beyond a command's own timeout, for the reply to come back


class ExecResult(dict):  # type: ignore[type-arg]
    """exit_code, signal, stdout, stderr (bytes), stdout_truncated, stderr_truncated,
    timed_out, duration_s; request_id (the exec's, in the gateway's logs). Keys or attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def of(cls, reply: Mapping[str, Any], request_id: str | None = None) -> ExecResult:
        got = cls(reply)
        got.pop("encoding", None)
        for name in ("stdout", "stderr"):
            got[name] = base64.b64decode(got.get(name) or "")
        got["request_id"] = request_id
        return got


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _exec_body(argv: list[str], env: Mapping[str, str] | None, cwd: str | None,
               stdin: bytes | None, timeout_s: float | None,
               secrets: Sequence[str] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {"argv": list(argv), "env": dict(env or {}), "encoding": "base64"}
    if secrets:
        body["secrets"] = list(secrets)
    if cwd is not None:
        body["cwd"] = cwd
    if stdin is not None:
        body["stdin_b64"] = _b64(stdin)
    if timeout_s is not None:
        body["timeout_s"] = float(timeout_s)
    return body


class Files:
    """A sandbox's files: absolute, normalised guest paths (`..` is refused)."""

    def __init__(self, box: Sandbox) -> None:
        self._box = box

    def write(self, path: str, data: str | bytes, mode: int = 0o644) -> dict[str, Any]:
        """Write data (text as UTF-8) at path; {"path", "size", "sha256"}."""
        raw = data.encode() if isinstance(data, str) else data
        got: dict[str, Any] = self._box._api.json(
            "PUT", self._box._path("/files"), params={"path": path, "mode": f"{mode:04o}"},
            content=raw, headers={"Content-Type": "application/octet-stream"})
        return got

    def read(self, path: str) -> bytes:
        """The bytes of the file at path; NotFound if there is none."""
        return self._box._api.request("GET", self._box._path("/files"),
                                      params={"path": path}).content

    def list(self, path: str = "/") -> list[dict[str, Any]]:
        """The entries of the directory at path: name, path, type (file, dir, symlink, other),
        size, mode, mtime."""
        got = self._box._api.json("GET", self._box._path("/files/list"), params={"path": path})
        return list(got["entries"])

    def remove(self, path: str, recursive: bool = False) -> None:
        """Remove the file at path (a directory with everything in it: recursive=True);
        NotFound if there is none."""
        self._box._api.request("DELETE", self._box._path("/files"),
                               params={"path": path, "recursive": str(recursive).lower()})


class Sandbox:
    """A VM held for up to timeout_s: open it (a `with` block, or open() and close()), run
    commands, move files; closing destroys it. Opening waits up to wait_s for room (default:
    timeout_s, at most 600 s): CannotPlace when no host of the fleet could ever take it, NoRoom
    when none had room in time, QuotaExceeded or PolicyDenied when the tenant may not."""

    def __init__(self, api: Api, image: str = "base", cpus: int = 1, mem_mib: int = 512,
                 disk_mib: int | None = None, timeout_s: float = 600.0,
                 metadata: Mapping[str, str] | None = None, wait_s: float | None = None,
                 tenant: str | None = None) -> None:
        self._api = api
        self.image, self.cpus, self.mem_mib, self.disk_mib = image, cpus, mem_mib, disk_mib
        self.timeout_s, self.metadata, self.tenant = timeout_s, dict(metadata or {}), tenant
        self.wait_s = min(timeout_s, WAIT_MAX_S) if wait_s is None else wait_s
        self.id: str | None = None
        self.info: dict[str, Any] = {}  # the API's view of it: state, expires_at, request_id...
        self.files = Files(self)

    def _path(self, tail: str = "") -> str:
        if self.id is None:
            raise InfrastructureError("the sandbox is not open: use it in a `with` block, or "
                                      "call open() first")
        return f"/v1/sandboxes/{quote(self.id, safe='')}{tail}"

    @property
    def host(self) -> str | None:
        """The host it runs on (the API tells admins only)."""
        host = self.info.get("host")
        return str(host) if host else None

    @property
    def request_id(self) -> str | None:
        """The id of the request that opened it."""
        rid = self.info.get("request_id")
        return str(rid) if rid else None

    def open(self) -> Self:
        body: dict[str, Any] = {"image": self.image, "cpus": self.cpus, "mem_mib": self.mem_mib,
                                "timeout_s": float(self.timeout_s), "metadata": self.metadata,
                                "wait_s": float(self.wait_s)}
        if self.disk_mib is not None:
            body["disk_mib"] = self.disk_mib
        if self.tenant is not None:
            body["tenant"] = self.tenant
        # Not retried once sent: a second POST would open a second sandbox.
        self.info = self._api.json("POST", "/v1/sandboxes", json=body,
                                   timeout_s=self.wait_s + EXEC_SLACK_S)
        self.id = str(self.info["id"])
        return self

    def __enter__(self) -> Self:
        return self.open()

    def exec(self, argv: list[str], env: Mapping[str, str] | None = None,
             cwd: str | None = None, stdin: bytes | None = None,
             timeout_s: float | None = None, secrets: Sequence[str] = ()) -> ExecResult:
        """Run argv to its end: exit_code, signal, stdout and stderr (bytes), ...
        `secrets`: names of the tenant's secrets to expose as environment variables (their
        values come back masked)."""
        wait = (timeout_s if timeout_s is not None else self.timeout_s) + EXEC_SLACK_S
        reply = self._api.json("POST", self._path("/exec"), timeout_s=wait,
                               json=_exec_body(argv, env, cwd, stdin, timeout_s, secrets))
        return ExecResult.of(reply, self._api.last_request_id)

    def exec_stream(self, argv: list[str], env: Mapping[str, str] | None = None,
                    cwd: str | None = None, timeout_s: float | None = None,
                    stdin: bytes | None = None, secrets: Sequence[str] = ()
                    ) -> Iterator[tuple[str, Any]]:
        """Yields ("stdout" | "stderr", bytes) as the command prints, then ("exit",
        ExecResult) (its output bodies empty: they came before). A dropped connection raises
        FleetUnavailable: the command's outcome is then unknown."""
        body = _exec_body(argv, env, cwd, stdin, timeout_s, secrets)
        try:
            with self._api.stream("POST", self._path("/exec/stream"), json=body,
                                  read_timeout_s=SSE_READ_TIMEOUT_S) as events:
                for ev in events:
                    if ev is None or ev.event == "started":
                        continue
                    data = ev.json()
                    if ev.event in ("stdout", "stderr"):
                        yield (ev.event, base64.b64decode(data.get("data") or ""))
                    elif ev.event == "exit":
                        yield ("exit", ExecResult.of(data, self._api.last_request_id))
                        return
                    elif ev.event == "error":
                        raise problem_error(data, request_id=self._api.last_request_id)
        except Disconnected as err:
            raise Disconnected(f"the exec stream of {argv[:3]} in sandbox {self.id} broke off "
                               f"before the command ended; its outcome is unknown: {err}") \
                from err
        raise Disconnected(f"the exec stream of {argv[:3]} in sandbox {self.id} ended without "
                           "the command's exit")

    def set_timeout(self, timeout_s: float) -> dict[str, Any]:
        """Hold it timeout_s from now (expires_at moves); the sandbox as the API has it."""
        self.info = self._api.json("POST", self._path("/timeout"),
                                   json={"timeout_s": float(timeout_s)}, idempotent=True)
        return self.info

    def describe(self) -> dict[str, Any]:
        """The sandbox as the API has it now: state, expires_at, closed_at, close_reason..."""
        self.info = self._api.json("GET", self._path())
        return self.info

    def close(self) -> None:
        """Destroy it (closing a closed one does nothing)."""
        if self.id is not None:
            self._api.request("DELETE", self._path())
            self.info["state"] = "closed"

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ExecResult", "Files", "Sandbox"]
