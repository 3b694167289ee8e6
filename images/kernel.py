"""The guest kernel: Debian's linux-image package, resolved with apt-cache, unpacked with dpkg -x.

A metapackage such as linux-image-cloud-amd64 is resolved to the versioned package it depends on
(linux-image-6.1.0-NN-cloud-amd64) and that package's candidate version; both go into the image
digest, so a new kernel upload means a new image.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import BuildError, ImageError
from .steps import run

VERSIONED_RE = re.compile(r"^linux-image-(\d[\w.+~-]*)$")
Runner = Callable[..., subprocess.CompletedProcess[str]]  # the signature of steps.run
NO_CANDIDATE = ("Unable to locate package", "has no installation candidate",
                "Can't select candidate version", "was not found", "No packages found")


@dataclass(frozen=True, slots=True)
class KernelPackage:
    package: str  # linux-image-6.1.0-56-cloud-amd64
    version: str  # 6.1.192-2

    @property
    def release(self) -> str:
        """The kernel release (`uname -r`, the lib/modules directory): 6.1.0-56-cloud-amd64."""
        return self.package.removeprefix("linux-image-")

    @property
    def spec(self) -> str:
        return f"{self.package}={self.version}"


@dataclass(frozen=True, slots=True)
class KernelTree:
    """An unpacked kernel package."""

    root: Path
    release: str

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules_dir(self) -> Path:
        return self.root / "lib" / "modules" / self.release


class Apt:
    """apt-cache and apt-get on the host; `apt-get update` at most once, when a lookup fails."""

    def __init__(self, runner: Runner = run) -> None:
        self.run = runner
        self.updated = False

    def resolve(self, package: str) -> KernelPackage:
        versioned = package if VERSIONED_RE.match(package) else self._depends_on(package)
        version = self._candidate(versioned)
        return KernelPackage(versioned, version)

    def download(self, kernel: KernelPackage, dest: Path) -> Path:
        dest.mkdir(parents=True, exist_ok=True)
        self._retrying("kernel", ["apt-get", "download", "-q", kernel.spec], dest)
        debs = sorted(dest.glob(f"{kernel.package}_*.deb"))
        if len(debs) != 1:
            raise BuildError("kernel", f"apt-get download left {len(debs)} .deb files of "
                             f"{kernel.package} in {dest}, expected 1")
        return debs[0]

    def _depends_on(self, metapackage: str) -> str:
        out = self._retrying("resolve kernel", ["apt-cache", "depends", metapackage])
        for line in out.splitlines():
            key, _, dep = line.strip().partition(":")
            if key.strip() == "Depends" and VERSIONED_RE.match(dep.strip()):
                return dep.strip()
        raise ImageError(f"kernel package {metapackage!r} does not depend on a versioned "
                         "linux-image-<version> package (apt-cache depends); name a kernel "
                         "package such as linux-image-cloud-amd64 in the recipe")

    def _candidate(self, package: str) -> str:
        for attempt in range(2):
            out = self.run("resolve kernel", ["apt-cache", "policy", package]).stdout
            match = re.search(r"^\s*Candidate:\s*(\S+)", out, re.MULTILINE)
            if match and match.group(1) != "(none)":
                return match.group(1)
            if attempt == 0 and not self._update():
                break
        raise ImageError(f"no installable version of {package} in the host's apt sources "
                         "(apt-cache policy); check /etc/apt/sources.list.d and run apt-get update")

    def _retrying(self, step: str, argv: list[str], cwd: Path | None = None) -> str:
        try:
            return str(self.run(step, argv, cwd=cwd, timeout_s=600).stdout)
        except BuildError as err:
            if not any(marker in err.stderr for marker in NO_CANDIDATE) or not self._update():
                raise
        return str(self.run(step, argv, cwd=cwd, timeout_s=600).stdout)

    def _update(self) -> bool:
        """Run `apt-get update` unless it already ran; True when it ran now."""
        if self.updated:
            return False
        self.updated = True
        self.run("apt-get update", ["apt-get", "update", "-q"], timeout_s=900)
        return True


def unpack(deb: Path, dest: Path, release: str) -> KernelTree:
    run("kernel", ["dpkg", "-x", str(deb), str(dest)])
    tree = KernelTree(dest, release)
    if not tree.vmlinuz.is_file():
        raise BuildError("kernel", f"{deb.name} holds no boot/vmlinuz-{release}")
    if not tree.modules_dir.is_dir():
        raise BuildError("kernel", f"{deb.name} holds no lib/modules/{release}")
    return tree
