"""The audit trail's one error: a record that could not be written. What it was to record is
then refused (fail closed): the API answers 503 and does nothing."""

from __future__ import annotations

from tryfleet.errors import InfrastructureError


class AuditUnavailable(InfrastructureError):
    """The audit record could not be made durable (the file is read-only, gone, locked past
    the wait, or the disk failed); the action it was to record must not happen."""


__all__ = ["AuditUnavailable"]
