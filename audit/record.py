"""One audit record, its canonical form and its place in the chain.

The canonical content of a record is the JSON object of every field but the two hashes, keys
sorted, no spaces, UTF-8 (non-ASCII characters as themselves):

    {"action":"exec.start","actor":"key:k1","at":1767225600.123456,"details":{...},
     "host":"h1","iteration":"","outcome":"","request_id":"req_...","sandbox":"sbx-1",
     "seq":12,"suite":"","tenant":"acme","trace_id":""}

`details` is itself canonical JSON (an object), stored as that text and embedded as is; `at` is
seconds since the epoch as Python writes a float (its shortest round-trip form). A record's
hash is SHA-256 over the previous record's hash (its 32 raw bytes; 32 zero bytes before the
first record) followed by the canonical content:

    hash = sha256(bytes.fromhex(prev_hash) + content).hexdigest()

Anyone can recompute it from an export with `json.dumps(obj, sort_keys=True,
separators=(",", ":"), ensure_ascii=False)`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring as _json_str
from typing import Any

from tryfleet.errors import BadRequest

GENESIS = "0" * 64  # the prev_hash of record 1
MAX_DETAILS_BYTES = 1 << 20  # a record's details, as canonical JSON
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
_SURROGATE = re.compile("[\ud800-\udfff]")
# The canonical content with its fields in sorted order (see the module's docstring); written
# out rather than left to json.dumps so that `details` goes in as the stored text, byte for
# byte, and verify does not parse it again (twice as fast).
_CONTENT = ('{{"action":{},"actor":{},"at":{!r},"details":{},"host":{},"iteration":{},'
            '"outcome":{},"request_id":{},"sandbox":{},"seq":{:d},"suite":{},"tenant":{},'
            '"trace_id":{}}}')
FIELDS = ("seq", "at", "tenant", "actor", "request_id", "trace_id", "action", "sandbox",
          "iteration", "suite", "host", "outcome", "details", "prev_hash", "hash")


def canonical_json(value: Mapping[str, Any]) -> str:
    """Sorted keys, no spaces, non-ASCII as itself; a lone surrogate (a path or argument that
    was not valid UTF-8) written as its \\uXXXX escape, so the text is valid UTF-8 and decodes
    to the same value. ValueError/TypeError for what JSON cannot hold (NaN, bytes, ...)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    return text


def content(seq: int, at: float, tenant: str, actor: str, request_id: str, trace_id: str,
            action: str, sandbox: str, iteration: str, suite: str, host: str, outcome: str,
            details: str) -> bytes:
    """The canonical content of a record (details: its stored canonical JSON text)."""
    s = _json_str
    return _CONTENT.format(s(action), s(actor), float(at), details, s(host), s(iteration),
                           s(outcome), s(request_id), s(sandbox), seq, s(suite), s(tenant),
                           s(trace_id)).encode("utf-8")


def chain_hash(prev_hash: str, content_bytes: bytes) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + content_bytes).hexdigest()


def _text(name: str, value: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"audit field {name} must be a str, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # ids are never like this; keep the record, mark the spot
        value = _SURROGATE.sub("\ufffd", value)
    return value


@dataclass(frozen=True, slots=True)
class Entry:
    """What a caller records; the store gives it its seq, time and hashes."""

    action: str
    tenant: str
    actor: str
    request_id: str
    trace_id: str = ""
    sandbox: str = ""
    iteration: str = ""
    suite: str = ""
    host: str = ""
    outcome: str = ""
    details: str = "{}"  # canonical JSON of an object

    @classmethod
    def of(cls, action: str, *, tenant: str, actor: str, request_id: str, trace_id: str = "",
           sandbox: str = "", iteration: str = "", suite: str = "", host: str = "",
           outcome: str = "", details: Mapping[str, Any] | None = None) -> Entry:
        """Checked: action dotted lowercase (`exec.start`), every field text, details an
        object of at most MAX_DETAILS_BYTES as canonical JSON."""
        if not isinstance(action, str) or not _ACTION.match(action) or len(action) > 64:
            raise BadRequest(f"audit action {action!r} is not a dotted lowercase name like "
                             "exec.start")
        if details is not None and not isinstance(details, Mapping):
            raise TypeError(f"audit details must be a mapping, not {type(details).__name__}")
        text = canonical_json(details or {})
        if len(text) > MAX_DETAILS_BYTES // 4 and len(text.encode()) > MAX_DETAILS_BYTES:
            raise BadRequest(f"the details of an audit record ({action}) are over "
                             f"{MAX_DETAILS_BYTES} bytes")
        f = _text
        return cls(action, f("tenant", tenant), f("actor", actor),
                   f("request_id", request_id), f("trace_id", trace_id),
                   f("sandbox", sandbox), f("iteration", iteration), f("suite", suite),
                   f("host", host), f("outcome", outcome), text)

    def content(self, seq: int, at: float) -> bytes:
        return content(seq, at, self.tenant, self.actor, self.request_id, self.trace_id,
                       self.action, self.sandbox, self.iteration, self.suite, self.host,
                       self.outcome, self.details)


@dataclass(frozen=True, slots=True)
class Record:
    """One row of the audit trail, as stored."""

    seq: int
    at: float
    tenant: str
    actor: str
    request_id: str
    trace_id: str
    action: str
    sandbox: str
    iteration: str
    suite: str
    host: str
    outcome: str
    details: str  # canonical JSON text
    prev_hash: str
    hash: str

    def content(self) -> bytes:
        return content(self.seq, self.at, self.tenant, self.actor, self.request_id,
                       self.trace_id, self.action, self.sandbox, self.iteration, self.suite,
                       self.host, self.outcome, self.details)

    def to_json(self) -> dict[str, Any]:
        """Every field, details as the object it holds (as export and the API give it)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in FIELDS}
        try:
            out["details"] = json.loads(self.details)
        except ValueError:  # tampered with: show what is there
            out["details"] = self.details
        return out


__all__ = ["FIELDS", "GENESIS", "MAX_DETAILS_BYTES", "Entry", "Record", "canonical_json",
           "chain_hash", "content"]
