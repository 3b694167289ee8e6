"""Builders for unit tests: small real objects with the defaults spelled out."""

import ast
import pathlib
from types import ModuleType

from tryfleet.nodeagent.fake_hv import make_fake_image as make_image
from tryfleet.scheduler.core import Finish, Launch
from tryfleet.wire import Outcome, State

__all__ = ["IDS_40000", "NOT_IN_PURE_MODULES", "banned_imports", "end", "imported_names",
           "make_image"]
IDS_40000 = [f"w-{i:05d}" for i in range(40_000)]  # more than SQLite's 32,766 parameters
# What the scheduler's pure modules (core, placement, admission, backlog, metrics) never
# import.
NOT_IN_PURE_MODULES = {"ray", "libvirt", "sqlite3", "prometheus_client", "threading",
                       "tryfleet.nodeagent", "tryfleet.images"}


def imported_names(path: pathlib.Path, package: str) -> set[str]:
    """The full dotted name of everything the source at `path` imports, relative imports
    resolved against `package` (the module's own package); `from a import b` names both a and
    a.b, since b may be a module."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{a.name}" for a in node.names)
    return names


def banned_imports(module: ModuleType, banned: set[str] = NOT_IN_PURE_MODULES) -> set[str]:
    """What the module's source imports of `banned` (a name or anything under it)."""
    package = module.__name__.rpartition(".")[0]
    found = imported_names(pathlib.Path(module.__file__ or ""), package)
    return {n for n in found for b in banned if n == b or n.startswith(b + ".")}


def end(ledger, ids, state=State.SUCCEEDED, stdout=lambda iid: b"", **outcome):
    """Start the next attempt of each id on h1, then commit its ending (one transaction each
    way, in the order given), as the scheduler would. stdout(id) gives each one's output;
    outcome: other Outcome fields."""
    rows = [ledger.get_row(i) for i in ids]
    launches = [Launch(r.key, r.attempt + 1, "h1", r) for r in rows]
    assert all(ledger.launch(launches))
    out = {"exit_code": 0 if state is State.SUCCEEDED else 1, **outcome}
    assert all(ledger.commit([Finish(lc.id, lc.attempt, state, outcome=Outcome(
        lc.id, lc.attempt, state, "h1", stdout=stdout(lc.row.id), **out)) for lc in launches]))
