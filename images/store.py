"""Where built images live: `<data_dir>/images/<name>/<digest>/`.

A build directory holds rootfs.qcow2, vmlinuz, initrd.img and manifest.json. It is complete
only when it carries its final name and its manifest: builds are written into
`<digest>.tmp-<pid>` and renamed at the end, so an interrupted build never looks complete.
Everything is world-readable (files 0644, directories 0755): QEMU runs as libvirt-qemu.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ImageError, ImageNotBuilt, UnknownImage
from .recipe import RECIPES_DIR, Recipe, load_recipe, recipe_names, recipe_path, valid_name

ROOTFS, KERNEL, INITRD, MANIFEST = "rootfs.qcow2", "vmlinuz", "initrd.img", "manifest.json"
CURRENT = "current"  # images/<name>/current: the digest the last build of <name> stands for
DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
STALE_RE = re.compile(r"^(?:[0-9a-f]{64}\.(?:tmp|old)|build-.+)-(\d+)$")
# Directories QEMU passes through (never lists); golden images readable by it, whatever
# user libvirt runs it as. Images hold no tenant data.
DIR_MODE, FILE_MODE = 0o711, 0o644


@dataclass(frozen=True, slots=True)
class BuiltImage:
    name: str
    digest: str
    rootfs: Path
    kernel: Path
    initrd: Path
    size_bytes: int  # bytes on disk of the image directory
    disk_mib: int  # virtual size of rootfs.qcow2
    built_at: str  # ISO 8601, UTC
    kernel_version: str  # uname -r of the guest kernel
    warm: tuple[str, ...] = ()  # the recipe's warm-up command (see recipe.py), if any

    @property
    def path(self) -> Path:
        return self.rootfs.parent


class ImageStore:
    def __init__(self, data_dir: Path, recipes_dir: Path = RECIPES_DIR) -> None:
        self.data_dir = Path(data_dir)
        self.recipes_dir = recipes_dir
        self.images_dir = self.data_dir / "images"
        self.tmp_dir = self.data_dir / "tmp"

    def recipe_names(self) -> list[str]:
        return recipe_names(self.recipes_dir)

    def recipe(self, name: str) -> Recipe:
        path = recipe_path(name, self.recipes_dir)
        if path is None:
            raise UnknownImage(name, self.recipe_names())
        return load_recipe(path)

    def get(self, name: str) -> BuiltImage:
        """The build `name` stands for: the current one (see make_current) when it is
        complete, else the newest complete build. Called for every VM: the current build is
        read alone, without listing the others."""
        current = self._current(name)
        built = self.find(name, current) if current else None
        if built is not None:
            return built
        builds = self.builds(name)
        if builds:
            return builds[0]
        if recipe_path(name, self.recipes_dir) is not None:
            raise ImageNotBuilt(name, self.data_dir)
        raise UnknownImage(name, self.recipe_names())

    def builds(self, name: str) -> list[BuiltImage]:
        """Every complete build of `name`: the one the last build made current first (see
        make_current), then newest first."""
        folder = self.images_dir / name
        if not valid_name(name) or not folder.is_dir():
            return []
        found = [self._read(name, p) for p in folder.iterdir() if DIGEST_RE.match(p.name)]
        current = self._current(name)
        return sorted((b for b in found if b is not None),
                      key=lambda b: (b.digest == current, b.built_at, b.digest), reverse=True)

    def _current(self, name: str) -> str:
        if not valid_name(name):
            return ""
        try:
            return (self.images_dir / name / CURRENT).read_text().strip()
        except OSError:
            return ""

    def make_current(self, name: str, digest: str) -> None:
        """`name` means this build from now on, even when a newer one exists (as after going
        back to an older recipe or agent: the build is found up to date, not made again)."""
        tmp = self.images_dir / name / f"{CURRENT}.tmp-{os.getpid()}"
        tmp.write_text(digest + "\n")
        os.replace(tmp, self.images_dir / name / CURRENT)

    def find(self, name: str, digest: str) -> BuiltImage | None:
        if not valid_name(name) or not DIGEST_RE.match(digest):
            return None
        return self._read(name, self.images_dir / name / digest)

    def _read(self, name: str, folder: Path) -> BuiltImage | None:
        try:
            # Its real place: a VM's overlay, and a saved guest's, names its backing file by
            # this path, and must outlive a data dir that reaches the build by a symlink.
            digest, folder = folder.name, folder.resolve(strict=True)
            manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
            files = [folder / f for f in (ROOTFS, KERNEL, INITRD)]
            if not all(f.is_file() for f in files):
                return None
            return BuiltImage(
                name=name, digest=digest, rootfs=files[0], kernel=files[1],
                initrd=files[2], size_bytes=dir_bytes(folder), disk_mib=int(manifest["disk_mib"]),
                built_at=str(manifest["built_at"]),
                kernel_version=str(manifest["kernel_version"]),
                warm=tuple(str(a) for a in manifest.get("warm") or ()))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # incomplete or damaged: not a build

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise builds of one name across processes."""
        folder = make_dirs(self.images_dir / name)
        with open(folder / ".build.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            yield

    @contextlib.contextmanager
    def workspace(self, name: str) -> Iterator[Path]:
        """A scratch directory for one build under data_dir/tmp, removed afterwards."""
        path = make_dirs(self.tmp_dir) / f"build-{name}-{os.getpid()}"
        remove_tree(path)
        path.mkdir(mode=DIR_MODE)
        try:
            yield path
        finally:
            remove_tree(path)

    def staging_dir(self, name: str, digest: str) -> Path:
        path = make_dirs(self.images_dir / name) / f"{digest}.tmp-{os.getpid()}"
        remove_tree(path)
        path.mkdir()
        path.chmod(DIR_MODE)
        return path

    def commit(self, staging: Path, name: str, digest: str, replace: bool) -> BuiltImage:
        """Give a finished staging directory its final name (replacing an older build if asked)."""
        target = self.images_dir / name / digest
        for child in staging.iterdir():
            child.chmod(FILE_MODE)
        if target.exists() and replace:
            old = target.with_name(f"{digest}.old-{os.getpid()}")
            os.rename(target, old)
            os.rename(staging, target)
            remove_tree(old)
        elif target.exists():
            remove_tree(staging)
        else:
            os.rename(staging, target)
        built = self.find(name, digest)
        if built is None:
            raise ImageError(f"build {target} is incomplete after commit")
        return built

    def clean_stale(self) -> list[Path]:
        """Remove the tmp directories of builds whose process is gone; return what was removed."""
        candidates = list(self.tmp_dir.glob("build-*")) if self.tmp_dir.is_dir() else []
        if self.images_dir.is_dir():
            candidates += [p for p in self.images_dir.glob("*/*") if p.is_dir()]
        removed = []
        for path in candidates:
            match = STALE_RE.match(path.name)
            if match and not pid_alive(int(match.group(1))):
                remove_tree(path)
                removed.append(path)
        return removed

    # Last in the class: above it, `list` in annotations is still the builtin.
    def list(self) -> list[BuiltImage]:
        """The newest complete build of every name, by name."""
        if not self.images_dir.is_dir():
            return []
        names = sorted(p.name for p in self.images_dir.iterdir() if valid_name(p.name))
        return [builds[0] for builds in map(self.builds, names) if builds]


def make_dirs(path: Path) -> Path:
    """mkdir -p with every directory it creates passable by QEMU (0711, whatever the umask)."""
    missing = [p for p in [path, *path.parents] if not p.exists()]
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
        p.chmod(DIR_MODE)
    return path


def dir_bytes(folder: Path) -> int:
    return sum(e.stat().st_blocks * 512 for e in os.scandir(folder) if e.is_file())


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (debootstrap mounts /proc and /sys in its target)."""
    root = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
              for line in lines if len(line.split()) > 4]
    return [p for p in points if p == root or p.startswith(root.rstrip("/") + "/")]


def remove_tree(path: Path) -> None:
    """rm -rf that first unmounts whatever is mounted inside, and refuses if that fails."""
    if not path.exists() and not path.is_symlink():
        return
    for point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    still = mounts_under(path)
    if still:
        raise ImageError(f"cannot remove {path}: {still[0]} is still mounted; unmount it")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
