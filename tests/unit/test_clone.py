import json
import subprocess

import pytest

from tryfleet.nodeagent import CloneError, Cloner, qemu_img_clone


@pytest.fixture
def golden(tmp_path):
    path = tmp_path / "golden.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1G"], check=True)
    return path


def info(path):
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_clone_is_byte_identical_to_qemu_img(golden, tmp_path):
    Cloner().clone(golden, tmp_path / "ours.qcow2")
    qemu_img_clone(golden, tmp_path / "theirs.qcow2")
    assert (tmp_path / "ours.qcow2").read_bytes() == (tmp_path / "theirs.qcow2").read_bytes()
    assert subprocess.run(["qemu-img", "check", "-q", str(tmp_path / "ours.qcow2")]).returncode == 0


def test_clone_with_a_bigger_virtual_size(golden, tmp_path):
    Cloner().clone(golden, tmp_path / "big.qcow2", size_mib=4096)
    meta = info(tmp_path / "big.qcow2")
    assert meta["virtual-size"] == 4096 * 1024 * 1024
    assert meta["backing-filename"] == str(golden)


def test_many_clones_share_one_template(golden, tmp_path):
    cloner = Cloner()
    for i in range(20):
        cloner.clone(golden, tmp_path / f"c{i}.qcow2")
    assert len(cloner._templates) == 1
    assert all(info(tmp_path / f"c{i}.qcow2")["format"] == "qcow2" for i in (0, 19))


def test_clone_never_overwrites(golden, tmp_path):
    target = tmp_path / "exists.qcow2"
    target.write_text("precious")
    with pytest.raises(CloneError, match="exists"):
        Cloner().clone(golden, target)
    assert target.read_text() == "precious"


def test_missing_golden_names_it(tmp_path):
    with pytest.raises(CloneError, match=r"nope\.qcow2"):
        Cloner().clone(tmp_path / "nope.qcow2", tmp_path / "o.qcow2")
