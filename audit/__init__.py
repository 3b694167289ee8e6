"""The audit trail: an append-only, tamper-evident record of every action tryfleet takes, kept
apart from the ledger in `<data>/audit.db`, with signed checkpoints of its head in
`<data>/audit-checkpoints.jsonl` (key `<data>/audit.key`, public half `<data>/audit.pub`).

    audit = Audit(data_dir)
    audit.record("exec.start", tenant=..., actor="key:k1", request_id=rid, sandbox=sid,
                 details=command_details(argv, cwd=cwd, env=env))   # before the action
    ...
    audit.record("exec.end", ..., outcome=command_outcome(code, sig),
                 details=command_result(exit_code=code, duration_s=d,
                                        stdout=Digest.of(out), stderr=Digest.of(err)))

record.py the record and its hash, store.py the SQLite file, writer.py group commit and
checkpoints, checkpoints.py the signing key and the checkpoint file, verifier.py the check,
query.py the reads, details.py the command and file details, trail.py `Audit`.
"""

from .checkpoints import AuditPaths, Checkpoint
from .details import (
    Digest,
    Digester,
    command_details,
    command_outcome,
    command_result,
    env_names,
    file_details,
)
from .errors import AuditUnavailable
from .query import Filter, export, parse_since, select, trace
from .record import GENESIS, Entry, Record, canonical_json
from .trail import Audit
from .verifier import Problem, Report, verify

__all__ = ["GENESIS", "Audit", "AuditPaths", "AuditUnavailable", "Checkpoint", "Digest",
           "Digester", "Entry", "Filter", "Problem", "Record", "Report", "canonical_json",
           "command_details", "command_outcome", "command_result", "env_names", "export",
           "file_details", "parse_since", "select", "trace", "verify"]
