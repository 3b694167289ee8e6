"""Signed checkpoints of the chain's head, kept outside the database.

Each line of `audit-checkpoints.jsonl` is one checkpoint, canonical JSON:

    {"at":1767225600.5,"hash":"<head hash>","seq":1234,"sig":"<base64 Ed25519 signature>"}

The signature is over `tryfleet-audit-checkpoint/1\\n` followed by the canonical JSON of
{"at", "hash", "seq"}. The key is `audit.key` (PKCS#8 PEM, mode 0600) and its public half
`audit.pub` (PEM), both made on first use; keep a copy of audit.pub elsewhere to check the
trail against (`tryfleet audit verify --public-key FILE`). A checkpoint commits to every record
up to its seq: records cut off after it, or rewritten before it, no longer match it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .record import canonical_json

DOMAIN = b"tryfleet-audit-checkpoint/1\n"


@dataclass(frozen=True, slots=True)
class AuditPaths:
    """Where the audit trail lives in a data directory."""

    db: Path
    key: Path
    pub: Path
    checkpoints: Path

    @classmethod
    def of(cls, data_dir: Path | str) -> AuditPaths:
        d = Path(data_dir)
        return cls(d / "audit.db", d / "audit.key", d / "audit.pub",
                   d / "audit-checkpoints.jsonl")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    at: float
    sig: str = ""  # base64

    def message(self) -> bytes:
        return DOMAIN + canonical_json({"at": self.at, "hash": self.hash,
                                        "seq": self.seq}).encode()

    def line(self) -> str:
        return canonical_json({"at": self.at, "hash": self.hash, "seq": self.seq,
                               "sig": self.sig}) + "\n"

    @classmethod
    def parse(cls, line: str) -> Checkpoint:
        """ValueError saying what is wrong with the line."""
        got = json.loads(line)
        if not isinstance(got, dict) or set(got) != {"at", "hash", "seq", "sig"}:
            raise ValueError("expected an object with at, hash, seq and sig")
        seq, at, h, sig = got["seq"], got["at"], got["hash"], got["sig"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError(f"seq {seq!r} is not a positive integer")
        if not isinstance(at, (int, float)) or isinstance(at, bool):
            raise ValueError(f"at {at!r} is not a time")
        if not isinstance(h, str) or len(h) != 64 or not all(c in "0123456789abcdef"
                                                            for c in h):
            raise ValueError("hash is not 64 hex digits")
        if not isinstance(sig, str):
            raise ValueError("sig is not text")
        return cls(seq, h, at, sig)

    def valid(self, public: Ed25519PublicKey) -> bool:
        try:
            public.verify(base64.b64decode(self.sig, validate=True), self.message())
        except (InvalidSignature, ValueError):
            return False
        return True


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Write path whole, or not at all if it exists (another process won): never a partial
    file under its name. True when this call wrote it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def load_or_make_key(paths: AuditPaths) -> Ed25519PrivateKey:
    """The signing key, made (with audit.pub) on first use. OSError/ValueError when it cannot
    be read or made."""
    if not paths.key.exists():
        new = Ed25519PrivateKey.generate()
        pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _write_new(paths.key, pem, 0o600)
    key = serialization.load_pem_private_key(paths.key.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{paths.key} is not an Ed25519 key")
    if not paths.pub.exists():
        _write_new(paths.pub, _public_pem(key), 0o644)
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """OSError/ValueError when it cannot be read or is not an Ed25519 public key."""
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


class Signer:
    """Signs the head and appends the checkpoint (one write, fsynced)."""

    def __init__(self, paths: AuditPaths) -> None:
        self.paths = paths
        self._key: Ed25519PrivateKey | None = None

    def sign(self, seq: int, head_hash: str, at: float) -> Checkpoint:
        if self._key is None:
            self._key = load_or_make_key(self.paths)
        cp = Checkpoint(seq, head_hash, round(at, 6))
        sig = base64.b64encode(self._key.sign(cp.message())).decode("ascii")
        return Checkpoint(seq, head_hash, cp.at, sig)

    def append(self, cp: Checkpoint) -> None:
        fd = os.open(self.paths.checkpoints, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, cp.line().encode())  # one write: lines of processes never interleave
            os.fsync(fd)
        finally:
            os.close(fd)


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-empty line; none when the file does not exist."""
    try:
        f = path.open(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return
    with f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line


__all__ = ["DOMAIN", "AuditPaths", "Checkpoint", "Signer", "load_or_make_key",
           "load_public_key", "read_lines"]
