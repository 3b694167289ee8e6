"""The node agent: VMs on one host, cloned copy-on-write from golden images."""

from tryfleet.wire import Capacity, Pressure

from .clone import Cloner, qemu_img_clone
from .errors import (
    BadRequest,
    BootTimeout,
    CloneError,
    GuestError,
    GuestGone,
    GuestProtocolError,
    GuestRequestError,
    GuestUnresponsive,
    HypervisorError,
    HypervisorUnavailable,
    NodeAgentError,
)
from .guest import GuestChannel
from .host import AccelReport, read_capacity, read_pressure
from .hypervisor import DOMAIN_PREFIX, DomainSpec, Hypervisor
from .node import NodeAgent, NodeConfig, default_data_dir
from .records import ExecResult, IterationOutcome, IterationSpec, SandboxSpec, State
from .sandbox import Sandbox

__all__ = [
    "DOMAIN_PREFIX",
    "AccelReport",
    "BadRequest",
    "BootTimeout",
    "Capacity",
    "CloneError",
    "Cloner",
    "DomainSpec",
    "ExecResult",
    "GuestChannel",
    "GuestError",
    "GuestGone",
    "GuestProtocolError",
    "GuestRequestError",
    "GuestUnresponsive",
    "Hypervisor",
    "HypervisorError",
    "HypervisorUnavailable",
    "IterationOutcome",
    "IterationSpec",
    "NodeAgent",
    "NodeAgentError",
    "NodeConfig",
    "Pressure",
    "Sandbox",
    "SandboxSpec",
    "State",
    "default_data_dir",
    "qemu_img_clone",
    "read_capacity",
    "read_pressure",
]
