"""Per-tenant policy: what each tenant may ask for, in one TOML file an admin edits
(`policy.toml` in the data directory). Read again when it changes; a file that does not
validate is refused with the line and field at fault, and the last good one stays in force.

    [default]                      # every tenant without a section of its own
    images = ["*"]                 # glob patterns of image names
    max_cpus = 8                   # per request
    max_mem_mib = 16384
    max_disk_mib = 65536
    max_timeout_s = 86400
    max_sandboxes = 20             # at once
    max_vcpus_in_use = 32          # sandboxes and running iterations together
    max_mem_mib_in_use = 65536
    interactive = true             # whether it may open sandboxes at all
    secrets = []                   # names or glob patterns of its secrets it may expose
    network = "none"               # "none": no network device in its VMs at all

    [tenant.acme]                  # only what differs from [default]
    images = ["base"]
    max_cpus = 1
    secrets = ["GITHUB_*"]
    network = "egress"             # its VMs reach the hosts below, through the node's proxy
    egress = ["pypi.org:443", "*.pythonhosted.org:443", "api.staging.test:*"]

`egress` rules are "HOST:PORT" (tryfleet.nodeagent.egress.rules: an exact name or "*.domain",
a port or "*"); each is checked here and a bad one refused with its line. network = "egress"
needs at least one rule, and rules under network = "none" are refused (set network = "egress").
A section that sets network = "none" drops the rules it would inherit. The policy is the only
source of a VM's rules: every iteration and sandbox of the tenant gets them, whatever the
request says.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import threading
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from tryfleet.errors import BadRequest, PolicyDenied
from tryfleet.nodeagent.egress.rules import parse_rules

POLICY_FILE = "policy.toml"
RECHECK_S = 1.0


class PolicyError(BadRequest):
    """The policy file does not validate; the message names the line and field."""


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    images: tuple[str, ...] = ("*",)
    max_cpus: int = 16
    max_mem_mib: int = 65536
    max_disk_mib: int = 262144
    max_timeout_s: float = 7 * 86400
    max_sandboxes: int = 50
    max_vcpus_in_use: int = 256
    max_mem_mib_in_use: int = 1 << 20
    interactive: bool = True
    secrets: tuple[str, ...] = ()
    network: str = "none"
    egress: tuple[str, ...] = ()  # canonical "HOST:PORT" rules; only with network = "egress"

    def egress_rules(self) -> tuple[str, ...]:
        """The rules every VM of this tenant gets: () (no network device) unless its network
        is "egress"."""
        return self.egress if self.network == "egress" else ()

    def image_allowed(self, image: str) -> bool:
        return any(fnmatch.fnmatchcase(image, pattern) for pattern in self.images)

    def check(self, *, image: str, cpus: int, mem_mib: int, disk_mib: int | None,
              timeout_s: float, what: str) -> None:
        """PolicyDenied naming the rule this request breaks, if any."""
        if not self.image_allowed(image):
            raise PolicyDenied(f"{what}: image {image!r} is not allowed for this tenant "
                               f"(images = {list(self.images)})", "images")
        for rule, asked, most in (("max_cpus", cpus, self.max_cpus),
                                  ("max_mem_mib", mem_mib, self.max_mem_mib),
                                  ("max_disk_mib", disk_mib or 0, self.max_disk_mib),
                                  ("max_timeout_s", timeout_s, self.max_timeout_s)):
            if asked > most:
                field = rule.removeprefix("max_")
                raise PolicyDenied(f"{what}: {field} {asked:g} is over this tenant's "
                                   f"{rule} = {most:g}", rule)


    def check_interactive(self, what: str = "sandbox") -> None:
        """PolicyDenied unless the tenant may open sandboxes."""
        if not self.interactive:
            raise PolicyDenied(f"{what}: this tenant may not open interactive sandboxes "
                               "(interactive = false)", "interactive")

    def check_secrets(self, names: Iterable[str], what: str) -> None:
        """PolicyDenied naming the first secret the tenant may not expose."""
        for name in names:
            if not any(fnmatch.fnmatchcase(name, pattern) for pattern in self.secrets):
                raise PolicyDenied(f"{what}: secret {name!r} may not be exposed by this "
                                   f"tenant (secrets = {list(self.secrets)})", "secrets")


_FIELDS = {f.name: f for f in fields(TenantPolicy)}
NETWORKS = ("none", "egress")


def _line_of(text: str, section: str, key: str | None) -> int:
    """The line of `key` in [section] (or of the section header), 1-based; 0 if not found."""
    lines = text.splitlines()
    header = re.compile(r"^\s*\[\s*" + re.escape(section).replace(r"\.", r"\s*\.\s*") +
                        r"\s*\]")
    start = next((n for n, line in enumerate(lines) if header.match(line)), None)
    if start is None:
        return 0
    if key is None:
        return start + 1
    for n in range(start + 1, len(lines)):
        if re.match(r"^\s*\[", lines[n]):
            break
        if re.match(r"^\s*" + re.escape(key) + r"\s*=", lines[n]):
            return n + 1
    return start + 1


def _section(raw: Any, base: TenantPolicy, text: str, name: str) -> TenantPolicy:
    if not isinstance(raw, dict):
        raise PolicyError(f"line {_line_of(text, name, None)}: [{name}] must be a table")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"line {_line_of(text, name, key)}: [{name}] {key}"
        if key not in _FIELDS:
            raise PolicyError(f"{where}: unknown field; known: {', '.join(sorted(_FIELDS))}")
        if key in ("images", "secrets"):
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                what = key.removesuffix("s")
                raise PolicyError(f"{where}: must be a list of {what} names or glob patterns")
            values[key] = tuple(value)
        elif key == "interactive":
            if not isinstance(value, bool):
                raise PolicyError(f"{where}: must be true or false, got {value!r}")
            values[key] = value
        elif key == "network":
            if value not in NETWORKS:
                raise PolicyError(f"{where}: must be \"none\" (no network device) or "
                                  f"\"egress\" (the hosts of `egress` only), got {value!r}")
            values[key] = value
        elif key == "egress":
            values[key] = _egress(value, where)
        elif key == "max_timeout_s":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise PolicyError(f"{where}: must be a number of seconds > 0, got {value!r}")
            values[key] = float(value)
        elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise PolicyError(f"{where}: must be a whole number >= 0, got {value!r}")
        else:
            values[key] = value
    return _network(dataclasses.replace(base, **values), values, text, name)


def _egress(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise PolicyError(f'{where}: must be a list of "HOST:PORT" rules, '
                          f'e.g. ["pypi.org:443", "*.pythonhosted.org:443"]')
    try:
        return tuple(str(rule) for rule in parse_rules(value))
    except BadRequest as err:
        raise PolicyError(f"{where}: {err}") from None


def _network(policy: TenantPolicy, values: dict[str, Any], text: str,
             name: str) -> TenantPolicy:
    """The section's network and egress rules, checked together."""
    if policy.network == "none":
        if values.get("egress"):
            raise PolicyError(f"line {_line_of(text, name, 'egress')}: [{name}] egress: rules "
                              f"have no effect while network = \"none\"; set network = "
                              f"\"egress\" in [{name}] to grant them")
        return dataclasses.replace(policy, egress=())
    if not policy.egress:
        key = "egress" if "egress" in values else "network"
        raise PolicyError(f"line {_line_of(text, name, key)}: [{name}] {key}: network = "
                          f"\"egress\" needs at least one rule in egress, e.g. "
                          f'egress = ["pypi.org:443"]')
    return policy


def parse(text: str) -> tuple[TenantPolicy, dict[str, TenantPolicy]]:
    """(the default policy, each tenant's) from the file's text; PolicyError when invalid."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise PolicyError(f"not valid TOML: {err}") from None
    unknown = set(raw) - {"default", "tenant"}
    if unknown:
        raise PolicyError(f"unknown section(s) {', '.join(sorted(unknown))}: the file has "
                          "[default] and [tenant.NAME] sections")
    default = _section(raw.get("default", {}), TenantPolicy(), text, "default")
    tenants_raw = raw.get("tenant", {})
    if not isinstance(tenants_raw, dict):
        raise PolicyError("tenant must be tables: [tenant.NAME]")
    tenants = {name: _section(body, default, text, f"tenant.{name}")
               for name, body in tenants_raw.items()}
    return default, tenants


class Policies:
    """The policy file, read again (at most once a second) when it changes."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / POLICY_FILE
        self._lock = threading.Lock()
        self._default = TenantPolicy()
        self._tenants: dict[str, TenantPolicy] = {}
        self._seen: tuple[int, int] | None = None
        self._checked = 0.0
        self.error: str | None = None  # why the file on disk is not the one in force
        self.reload()

    def reload(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._default, self._tenants, self._seen, self.error = TenantPolicy(), {}, None, None
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._seen:
            return
        self._seen = stamp
        try:
            self._default, self._tenants = parse(self.path.read_text())
            self.error = None
        except (PolicyError, OSError, UnicodeDecodeError) as err:
            self.error = f"{self.path}: {err}"

    def for_tenant(self, tenant: str) -> TenantPolicy:
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            with self._lock:
                self._checked = now
                self.reload()
        return self._tenants.get(tenant, self._default)


__all__ = ["NETWORKS", "POLICY_FILE", "Policies", "PolicyError", "TenantPolicy", "parse"]
