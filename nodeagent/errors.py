"""Errors of the node agent, under tryfleet's one root: each subclass also inherits the builtin
it resembles, and the family that tells the scheduler whether to try again: BadRequest for what
can never run as given, InfrastructureError for what failed this time."""

from __future__ import annotations

from tryfleet import errors


class NodeAgentError(errors.TryfleetError):
    """Root of every error the node agent raises."""


class HypervisorUnavailable(NodeAgentError, errors.InfrastructureError, ConnectionError):
    """libvirtd cannot be reached."""


class HypervisorError(NodeAgentError, errors.InfrastructureError):
    """libvirt refused or failed an operation on a domain."""


class CloneError(NodeAgentError, errors.InfrastructureError, OSError):
    """A copy-on-write overlay could not be made."""


class BadRequest(NodeAgentError, errors.BadRequest):
    """A sandbox or exec request that can never be honoured as given."""


class BootTimeout(NodeAgentError, errors.InfrastructureError, TimeoutError):
    """The guest agent did not answer before the boot deadline."""


class GuestError(NodeAgentError, errors.InfrastructureError):
    """Root of the failures seen on the guest channel."""


class GuestGone(GuestError, ConnectionError):
    """The channel closed: the guest powered off, crashed, or its VM was destroyed."""


class GuestProtocolError(GuestError, ValueError):
    """The guest sent something that is not a well-formed answer."""


class GuestRequestError(GuestError, OSError):
    """The guest agent refused a request (a file that does not exist, a bad path, ...)."""


class GuestPathMissing(GuestRequestError, errors.NotFound):
    """The guest has no such path (ENOENT, ENOTDIR): the caller's mistake, not the fleet's."""


class GuestPathRefused(GuestRequestError, errors.BadRequest):
    """The guest refused a file operation for the path as it stands (it exists, is a
    directory, is not empty, is not allowed, the disk is full)."""


class UnknownUser(GuestRequestError, errors.BadRequest):
    """A command named a user the sandbox does not have (in its /etc/passwd)."""


class GuestUnresponsive(GuestError, TimeoutError):
    """The guest agent did not answer a request in time."""


class Cancelled(NodeAgentError):
    """The iteration was stopped on request before it finished."""
