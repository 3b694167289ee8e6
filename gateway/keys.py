"""API keys: who is calling, for which tenant, allowed to do what.

A key is `tf_<id>_<secret>`, shown once when it is made. The ledger keeps only its id, tenant,
scopes, expiry and an HMAC-SHA256 of the secret under a server secret (`keys.secret` in the
data directory, mode 0600, never in the ledger), so a stolen ledger yields no usable key and a
check costs microseconds, not the hundred milliseconds of a slow password hash (the secret is
32 random bytes: there is nothing to guess). A revoked or expired key is refused on its next
request: every check reads the ledger.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tryfleet.errors import BadRequest, NotFound
from tryfleet.private import private_db

if TYPE_CHECKING:
    from tryfleet.audit import Audit

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    scopes TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    digest TEXT NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    revoked_by TEXT
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys(tenant);
"""
_TOKEN = re.compile(r"^tf_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
SECRET_FILE = "keys.secret"


class Scope(enum.StrEnum):
    SANDBOX = "sandbox"  # open, use and close sandboxes
    BATCH = "batch"  # submit and cancel iterations
    READ = "read"  # see the tenant's sandboxes, iterations and suites
    ADMIN = "admin"  # everything, every tenant: keys, fleet, limits
    METRICS = "metrics"  # read /metrics (the whole fleet's, every tenant's suites); nothing else


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request comes from."""

    key_id: str
    tenant: str
    scopes: frozenset[Scope]

    @property
    def admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def may(self, scope: Scope) -> bool:
        return self.admin or scope in self.scopes


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    tenant: str
    scopes: tuple[str, ...]
    name: str
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None

    @property
    def state(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= time.time():
            return "expired"
        return "active"


def check_tenant(name: str) -> str:
    if not isinstance(name, str) or not _TENANT.match(name):
        raise BadRequest(f"tenant {name!r} must be 1-64 lowercase letters, digits, '.', '_' "
                         "or '-', starting with a letter or digit")
    return name


def parse_scopes(values: list[str] | tuple[str, ...]) -> frozenset[Scope]:
    known = {s.value for s in Scope}
    bad = [v for v in values if v not in known]
    if bad or not values:
        raise BadRequest(f"scopes must be some of {', '.join(sorted(known))}; got "
                         f"{', '.join(map(repr, bad)) or 'none'}")
    return frozenset(Scope(v) for v in values)


def server_secret(data_dir: Path) -> bytes:
    """The HMAC key, made on first use (mode 0600)."""
    path = data_dir / SECRET_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


def cli_actor() -> str:
    """The person at this host's CLI, as the audit trail names an actor: cli:<user>@<host>."""
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"cli:{user}@{socket.gethostname()}"


class KeyStore:
    """The API keys in the ledger. With an audit trail, a key's creation and revocation are
    recorded there first (key.create, key.revoke: AuditUnavailable refuses them)."""

    def __init__(self, ledger_path: Path, data_dir: Path, audit: Audit | None = None) -> None:
        self.audit = audit
        self._secret = server_secret(data_dir)
        self._lock = threading.Lock()
        private_db(ledger_path)
        self._db = sqlite3.connect(str(ledger_path), timeout=30, isolation_level=None,
                                   check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _digest(self, secret: str) -> str:
        return hmac.new(self._secret, secret.encode(), hashlib.sha256).hexdigest()

    def create(self, tenant: str, scopes: frozenset[Scope], *, created_by: str,
               expires_at: float | None = None, name: str = "", request_id: str = "",
               trace_id: str = "") -> tuple[KeyInfo, str]:
        """A new key: its record and the token, which is never shown again. created_by: who
        (key:<id>, cli:<user>@<host>), the actor of its audit record."""
        check_tenant(tenant)
        if expires_at is not None and expires_at <= time.time():
            raise BadRequest("expires_at must be in the future")
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        info = KeyInfo(key_id, tenant, tuple(sorted(scopes)), name[:200], time.time(),
                       created_by, expires_at, None)
        if self.audit is not None:
            self.audit.record("key.create", tenant=tenant, actor=created_by,
                              request_id=request_id, trace_id=trace_id, details={
                                  "key_id": key_id, "scopes": list(info.scopes),
                                  "name": info.name, "expires_at": expires_at})
        with self._lock:
            self._db.execute(
                "INSERT INTO api_keys (id, tenant, scopes, name, digest, created_at, "
                "created_by, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key_id, tenant, ",".join(info.scopes), info.name, self._digest(secret),
                 info.created_at, created_by, expires_at))
        return info, f"tf_{key_id}_{secret}"

    def verify(self, token: str) -> Principal | None:
        """The caller a token names, or None: unknown, wrong, revoked or expired."""
        m = _TOKEN.match(token)
        if m is None:
            return None
        return self._active(m[1], lambda digest: hmac.compare_digest(
            digest, self._digest(m[2])))

    def active(self, key_id: str) -> Principal | None:
        """The caller of key `key_id` if that key is still valid (not revoked, not expired),
        for a credential derived from a key (see `sign`) rather than the key itself."""
        return self._active(key_id, lambda digest: True)

    def _active(self, key_id: str, secret_ok: Callable[[str], bool]) -> Principal | None:
        with self._lock:
            row = self._db.execute("SELECT tenant, scopes, digest, expires_at, revoked_at "
                                   "FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None or not secret_ok(row["digest"]):
            return None
        if row["revoked_at"] is not None:
            return None
        if row["expires_at"] is not None and row["expires_at"] <= time.time():
            return None
        return Principal(key_id, row["tenant"],
                         frozenset(Scope(s) for s in row["scopes"].split(",") if s))

    def sign(self, purpose: str, *parts: str) -> str:
        """An HMAC-SHA256 under the server secret of `purpose` and `parts` (URL-safe base64,
        43 characters): credentials derived from a key, such as the access token the E2B
        data plane hands out per sandbox and key, are checked by making them again."""
        text = "\x00".join((purpose, *parts)).encode()
        mac = hmac.new(self._secret, text, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).decode().rstrip("=")

    def list(self, tenant: str | None = None) -> list[KeyInfo]:
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant else ("", ())
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM api_keys {where} ORDER BY created_at",
                                    args).fetchall()
        return [_info(r) for r in rows]

    def get(self, key_id: str) -> KeyInfo:
        with self._lock:
            row = self._db.execute("SELECT * FROM api_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            raise NotFound(f"no API key {key_id!r}")
        return _info(row)

    def revoke(self, key_id: str, by: str, request_id: str = "",
               trace_id: str = "") -> KeyInfo:
        """Revoked at once; revoking twice keeps the first time (and records it once)."""
        info = self.get(key_id)
        if info.revoked_at is not None:
            return info
        if self.audit is not None:
            self.audit.record("key.revoke", tenant=info.tenant, actor=by,
                              request_id=request_id, trace_id=trace_id,
                              details={"key_id": key_id})
        with self._lock:
            self._db.execute("UPDATE api_keys SET revoked_at = ?, revoked_by = ? WHERE id = ? "
                             "AND revoked_at IS NULL", (time.time(), by, key_id))
        return self.get(key_id)


def _info(r: sqlite3.Row) -> KeyInfo:
    return KeyInfo(r["id"], r["tenant"], tuple(s for s in r["scopes"].split(",") if s),
                   r["name"], r["created_at"], r["created_by"], r["expires_at"],
                   r["revoked_at"])




ADMIN_KEY_FILE = "admin.key"


def ensure_local_admin(store: KeyStore, data_dir: Path) -> str:
    """The local admin key that `tryfleet up` leaves in the data directory (mode 0600) for
    the CLI and the SDK on this host; made anew when missing or no longer valid."""
    path = data_dir / ADMIN_KEY_FILE
    try:
        token = path.read_text().strip()
        if store.verify(token) is not None:
            return token
    except FileNotFoundError:
        pass
    _, token = store.create("default", frozenset({Scope.ADMIN}), created_by=cli_actor(),
                            name="local admin key")
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.replace(tmp, path)
    return token


__all__ = ["ADMIN_KEY_FILE", "KeyInfo", "KeyStore", "Principal", "Scope", "check_tenant",
           "cli_actor", "ensure_local_admin", "parse_scopes", "server_secret"]
