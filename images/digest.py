"""The content address of an image: what went into it, hashed.

sha256 over the builder version, the recipe file, every guest agent file (images/guestagent/*.py,
by name), every file in images/boot/ (by name) and the resolved kernel package. Each input is
framed by its label and length, so moving bytes from one input to another changes the digest.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
GUESTAGENT_DIR = PACKAGE_DIR / "guestagent"
BOOT_DIR = PACKAGE_DIR / "boot"
# Bump when the builder makes a different image from the same inputs.
BUILDER_VERSION = "2"


def guestagent_files(guestagent_dir: Path = GUESTAGENT_DIR) -> list[Path]:
    return sorted(guestagent_dir.glob("*.py"), key=lambda p: p.name)


def boot_files(boot_dir: Path = BOOT_DIR) -> list[Path]:
    return sorted((p for p in boot_dir.iterdir() if p.is_file()), key=lambda p: p.name)


def digest_inputs(recipe_file: Path, kernel_spec: str, *, guestagent_dir: Path = GUESTAGENT_DIR,
                  boot_dir: Path = BOOT_DIR,
                  builder_version: str = BUILDER_VERSION) -> list[tuple[str, bytes]]:
    inputs = [("builder", builder_version.encode()), ("recipe", recipe_file.read_bytes())]
    inputs += [(f"guestagent/{p.name}", p.read_bytes()) for p in guestagent_files(guestagent_dir)]
    inputs += [(f"boot/{p.name}", p.read_bytes()) for p in boot_files(boot_dir)]
    inputs.append(("kernel", kernel_spec.encode()))
    return inputs


def compute_digest(recipe_file: Path, kernel_spec: str, *, guestagent_dir: Path = GUESTAGENT_DIR,
                   boot_dir: Path = BOOT_DIR, builder_version: str = BUILDER_VERSION) -> str:
    """Hex sha256 of the inputs; `kernel_spec` is the resolved `package=version`."""
    h = hashlib.sha256()
    for label, data in digest_inputs(recipe_file, kernel_spec, guestagent_dir=guestagent_dir,
                                     boot_dir=boot_dir, builder_version=builder_version):
        h.update(b"%d:%s\0%d:" % (len(label), label.encode(), len(data)))
        h.update(data)
    return h.hexdigest()
