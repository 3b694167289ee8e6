"""Named secrets per tenant, kept on the head only: `<data>/secrets/<tenant>.json`, a file of
mode 0600 in a directory of mode 0700, written whole and atomically (a temporary file renamed
over it). Never in the ledger nor in the audit trail: requests name secrets, and their values
are read here when a command that exposes them starts.

    store = SecretStore(data_dir)
    store.set("acme", "GITHUB_TOKEN", "ghp_...", by="key:k1")
    store.values("acme", ["GITHUB_TOKEN"])      # {"GITHUB_TOKEN": "ghp_..."}
    store.mask_values("acme")                   # every value of acme's, to mask output with
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import BadRequest, NotFound
from .private import FILE_MODE, private_dir, write_private

SECRETS_DIR = "secrets"
MIN_VALUE_BYTES = 4  # shorter values would mask ordinary output ("1", "ok") everywhere
MAX_VALUE_BYTES = 64 * 1024
MAX_SECRETS = 256  # per tenant
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class SecretInfo:
    """A secret without its value."""

    tenant: str
    name: str
    set_at: float
    set_by: str


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequest(f"secret name {str(name)[:80]!r} must be an environment variable "
                         "name: letters, digits and '_', not starting with a digit, "
                         "at most 128")
    return name


def check_value(name: str, value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    if not MIN_VALUE_BYTES <= len(raw) <= MAX_VALUE_BYTES:
        raise BadRequest(f"secret {name}: the value must be {MIN_VALUE_BYTES} to "
                         f"{MAX_VALUE_BYTES} bytes (shorter ones could not be told apart "
                         f"from ordinary output when masked), got {len(raw)}")
    if "\x00" in value:
        raise BadRequest(f"secret {name}: the value cannot hold a NUL byte (an environment "
                         "variable cannot)")
    return raw


class SecretStore:
    def __init__(self, data_dir: Path | str) -> None:
        self.dir = Path(data_dir) / SECRETS_DIR
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int], dict[str, dict[str, object]]]] = {}

    def _path(self, tenant: str) -> Path:
        if not isinstance(tenant, str) or not _TENANT.match(tenant):
            raise BadRequest(f"tenant {str(tenant)[:80]!r} must be 1-64 lowercase letters, "
                             "digits, '.', '_' or '-', starting with a letter or digit")
        return self.dir / f"{tenant}.json"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time across threads and processes (the gateway, a second one)."""
        private_dir(self.dir)
        with self._lock:
            fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _read(self, tenant: str) -> dict[str, dict[str, object]]:
        path = self._path(tenant)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self._cache.get(tenant)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        got: dict[str, dict[str, object]] = json.loads(path.read_bytes())
        self._cache[tenant] = (stamp, got)
        return got

    def _write(self, tenant: str, entries: dict[str, dict[str, object]]) -> None:
        body = json.dumps(entries, sort_keys=True, ensure_ascii=False).encode()
        write_private(self._path(tenant), body)
        self._cache.pop(tenant, None)

    def set(self, tenant: str, name: str, value: str, by: str = "") -> SecretInfo:
        """Store (or replace) a secret; BadRequest for a bad name or value."""
        check_name(name)
        check_value(name, value)
        with self._locked():
            entries = dict(self._read(tenant))
            if name not in entries and len(entries) >= MAX_SECRETS:
                raise BadRequest(f"tenant {tenant} has {MAX_SECRETS} secrets, the most it "
                                 "may: remove one first")
            entries[name] = {"value": value, "set_at": time.time(), "set_by": by}
            self._write(tenant, entries)
        return self._info(tenant, name, entries[name])

    def remove(self, tenant: str, name: str) -> None:
        """NotFound when the tenant has no secret of that name."""
        with self._locked():
            entries = dict(self._read(tenant))
            if entries.pop(name, None) is None:
                raise NotFound(f"tenant {tenant} has no secret {name!r}")
            self._write(tenant, entries)

    def list(self, tenant: str) -> list[SecretInfo]:
        """The tenant's secrets, by name, without their values."""
        entries = self._read(tenant)
        return [self._info(tenant, n, entries[n]) for n in sorted(entries)]

    def values(self, tenant: str, names: Iterable[str]) -> dict[str, str]:
        """name -> value for each name; NotFound naming those the tenant does not have."""
        entries = self._read(tenant)
        names = list(names)
        missing = [n for n in names if n not in entries]
        if missing:
            raise NotFound(f"tenant {tenant} has no secret {', '.join(map(repr, missing))} "
                           "(an admin stores one with `tryfleet secret set`)")
        return {n: str(entries[n]["value"]) for n in names}

    def mask_values(self, tenant: str) -> tuple[bytes, ...]:
        """Every value of the tenant's secrets, longest first: what output is masked with."""
        try:
            entries = self._read(tenant)
        except BadRequest:
            return ()
        raw = {str(e["value"]).encode("utf-8", "surrogatepass") for e in entries.values()}
        return tuple(sorted(raw, key=len, reverse=True))

    @staticmethod
    def _info(tenant: str, name: str, entry: dict[str, object]) -> SecretInfo:
        set_at = entry.get("set_at", 0.0)
        return SecretInfo(tenant, name, float(set_at) if isinstance(set_at, (int, float))
                          else 0.0, str(entry.get("set_by", "")))


__all__ = ["MAX_VALUE_BYTES", "MIN_VALUE_BYTES", "SECRETS_DIR", "SecretInfo", "SecretStore",
           "check_name"]
