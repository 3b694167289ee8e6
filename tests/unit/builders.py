"""Builders for unit tests: small real objects with the defaults spelled out."""

import ast
import pathlib
from types import ModuleType

from tryfleet.nodeagent.fake_hv import make_fake_image as make_image

__all__ = ["NOT_IN_PURE_MODULES", "imported_modules", "make_image"]
NOT_IN_PURE_MODULES = {"ray", "libvirt", "sqlite3", "prometheus_client", "threading",
                       "tryfleet.nodeagent", "tryfleet.images"}


def imported_modules(module: ModuleType) -> set[str]:
    """Every module the module's source imports, relative imports resolved, with each of its
    parents: `from tryfleet.nodeagent import x` gives tryfleet and tryfleet.nodeagent."""
    package = (module.__package__ or "").split(".")
    names: list[str] = []
    for node in ast.walk(ast.parse(pathlib.Path(module.__file__ or "").read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            names.append(".".join([*base, *([node.module] if node.module else [])]))
    return {".".join(n.split(".")[:k]) for n in names for k in range(1, n.count(".") + 2)}
