"""Builders for unit tests: small real objects with the defaults spelled out."""

import hashlib
import json
import subprocess
from pathlib import Path


def make_image(data_dir: Path, name: str = "base", disk_mib: int = 64) -> Path:
    """A complete image build in the store's layout; its rootfs is a real (empty) qcow2."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    folder = data_dir / "images" / name / digest
    folder.mkdir(parents=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(folder / "rootfs.qcow2"),
                    f"{disk_mib}M"], check=True)
    (folder / "vmlinuz").write_bytes(b"kernel")
    (folder / "initrd.img").write_bytes(b"initrd")
    (folder / "manifest.json").write_text(json.dumps({
        "name": name, "digest": digest, "disk_mib": disk_mib,
        "built_at": "2026-01-01T00:00:00Z", "kernel_version": "6.1.0-test-cloud-amd64"}))
    return folder
