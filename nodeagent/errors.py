"""Errors of the node agent: one root, subclasses that also inherit the builtin they resemble."""

from __future__ import annotations


class NodeAgentError(Exception):
    """Root of every error the node agent raises."""


class HypervisorUnavailable(NodeAgentError, ConnectionError):
    """libvirtd cannot be reached."""


class HypervisorError(NodeAgentError, RuntimeError):
    """libvirt refused or failed an operation on a domain."""


class CloneError(NodeAgentError, OSError):
    """A copy-on-write overlay could not be made."""


class BadRequest(NodeAgentError, ValueError):
    """A sandbox or exec request that can never be honoured as given."""


class BootTimeout(NodeAgentError, TimeoutError):
    """The guest agent did not answer before the boot deadline."""


class GuestError(NodeAgentError):
    """Root of the failures seen on the guest channel."""


class GuestGone(GuestError, ConnectionError):
    """The channel closed: the guest powered off, crashed, or its VM was destroyed."""


class GuestProtocolError(GuestError, ValueError):
    """The guest sent something that is not a well-formed answer."""


class GuestRequestError(GuestError, OSError):
    """The guest agent refused a request (a file that does not exist, a bad path, ...)."""


class GuestUnresponsive(GuestError, TimeoutError):
    """The guest agent did not answer a request in time."""


class Cancelled(NodeAgentError):
    """The iteration was stopped on request before it finished."""
