"""Builders for unit tests: small real objects with the defaults spelled out."""

import ast
import pathlib
from types import ModuleType

from tryfleet.nodeagent.fake_hv import make_fake_image as make_image

__all__ = ["NOT_IN_PURE_MODULES", "banned_imports", "imported_names", "make_image"]
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
