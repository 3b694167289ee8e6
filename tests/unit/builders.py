"""Builders for unit tests: small real objects with the defaults spelled out."""

import ast
import pathlib
from types import ModuleType

from tryfleet.nodeagent.fake_hv import make_fake_image as make_image

__all__ = ["IDS_40000", "imported_roots", "make_image"]
IDS_40000 = [f"w-{i:05d}" for i in range(40_000)]  # more than SQLite's 32,766 parameters
NOT_IN_PURE_MODULES = {"ray", "libvirt", "prometheus_client", "nodeagent"}


def imported_roots(module: ModuleType) -> set[str]:
    """The top-level package of everything the module's source imports."""
    names: list[str] = []
    for node in ast.walk(ast.parse(pathlib.Path(module.__file__ or "").read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.append(node.module or "")
    return {n.split(".")[0] for n in names}
