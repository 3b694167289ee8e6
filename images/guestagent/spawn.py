"""What an exec request asks for, checked: the command, its environment, its directory, and the
user it runs as (from the guest's own /etc/passwd and /etc/group).

A request that names a user runs as that user: its uid, gid and groups, HOME, USER, LOGNAME
and SHELL, and its home as the default directory; one that names none runs as root with the
agent's default environment, as it always has. Copied into every guest image beside agent.py;
imports nothing of the host side.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

try:
    from . import fsops
except ImportError:  # run as a script inside the guest
    import fsops  # type: ignore[no-redef,import-not-found]

DEFAULT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
}
# On the kernel command line of a guest granted egress: the proxy's address in the guest
# (a host-side allowlisting proxy, reached through QEMU's guestfwd; nothing else is reachable).
EGRESS_ARG = "tryfleet.egress="
NO_PROXY = "localhost,127.0.0.1"
DEFAULT_CWD = "/root"
DEFAULT_OUTPUT_CAP = 16 * 1024 * 1024
MAX_ACCOUNT_FILE_BYTES = 4 * 1024 * 1024
_field = fsops.field


class Account(NamedTuple):
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one among them
    home: str
    shell: str


class Spec(NamedTuple):
    argv: list[str]
    env: dict[str, str]
    cwd: str  # the guest path
    stdin: bytes | None
    stdin_open: bool
    timeout_s: float | None
    cap: int
    account: Account | None


def _lines(root: str, name: str) -> list[list[str]]:
    try:
        with open(os.path.join(root, "etc", name), encoding="utf-8", errors="replace") as fh:
            text = fh.read(MAX_ACCOUNT_FILE_BYTES)
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if not line.startswith("#")]


def lookup(root: str, name: str) -> Account:
    """The account called `name` in root/etc/passwd (root is "/" in a VM)."""
    for fields in _lines(root, "passwd"):
        if len(fields) < 7 or fields[0] != name:
            continue
        try:
            uid, gid = int(fields[2]), int(fields[3])
        except ValueError:
            continue
        groups = {gid}
        for group in _lines(root, "group"):
            if len(group) >= 4 and name in group[3].split(","):
                try:
                    groups.add(int(group[2]))
                except ValueError:
                    continue
        return Account(name, uid, gid, tuple(sorted(groups)), fields[5] or "/",
                       fields[6] or "/bin/sh")
    raise fsops.RequestError(f"no user {name!r} in the sandbox (/etc/passwd)",
                             code="unknown_user")


def egress_env(cmdline: str) -> dict[str, str]:
    """The proxy variables every command of a guest granted egress gets (both spellings:
    curl reads only the lower-case http_proxy), from the kernel command line; {} without."""
    proxy = ""
    for word in cmdline.split():
        if word.startswith(EGRESS_ARG):
            proxy = word[len(EGRESS_ARG):]
    host, _, port = proxy.rpartition(":")
    if not host or not port.isdigit() or not all(c.isdigit() or c == "." for c in host):
        return {}
    url = f"http://{host}:{port}"
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "http_proxy": url, "https_proxy": url,
            "NO_PROXY": NO_PROXY, "no_proxy": NO_PROXY}


def parse(msg: dict[str, Any], root: str, base_env: dict[str, str] | None = None) -> Spec:
    """The exec request in msg, checked; RequestError for what cannot be run as given.
    base_env (the proxy's variables) comes under the request's own env: a caller's wins."""
    argv = _field(msg, "argv", list)
    if not argv or not all(isinstance(a, str) for a in argv):
        raise fsops.RequestError("argv must be a non-empty list of strings")
    user = _field(msg, "user", str, None)
    account = lookup(root, user) if user is not None else None
    env = {**DEFAULT_ENV, **(base_env or {})}
    if account is not None:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name,
                   SHELL=account.shell)
    extra = _field(msg, "env", dict, None) or {}
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
            raise fsops.RequestError(f"bad environment entry {key!r}")
        env[key] = value
    cwd = _field(msg, "cwd", str, None) or (account.home if account else DEFAULT_CWD)
    return Spec(argv, env, cwd, _field(msg, "stdin", bytes, None),
                bool(_field(msg, "stdin_open", bool, False)),
                _field(msg, "timeout_s", (int, float), None),
                _field(msg, "max_output", int, None) or DEFAULT_OUTPUT_CAP, account)


def identity(spec: Spec, switch_user: bool) -> dict[str, Any]:
    """Popen's arguments that make the child the request's user (none for root's default,
    nor where the agent cannot switch users: the fake hypervisor's)."""
    acct = spec.account
    if acct is None or not switch_user:
        return {}
    return {"user": acct.uid, "group": acct.gid, "extra_groups": list(acct.groups)}


__all__ = ["DEFAULT_CWD", "DEFAULT_ENV", "EGRESS_ARG", "Account", "Spec", "egress_env", "identity",
           "lookup", "parse"]
