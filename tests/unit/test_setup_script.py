"""scripts/setup.sh installs what a bare Debian 12 host needs, and not the recommends of those
packages (hundreds of GUI, audio and video packages a headless VM host never uses)."""

import pathlib
import re

from tryfleet.images.builder import TOOLS

SETUP = pathlib.Path(__file__).parents[2] / "scripts" / "setup.sh"
# Tools the base system of Debian 12 has (dpkg, apt, coreutils, mount) need no package here.
BASE = {"dpkg", "apt", "coreutils", "mount"}


def packages():
    found = re.search(r"^packages=\(([^)]*)\)", SETUP.read_text(), re.M)
    assert found, "setup.sh no longer lists its packages in packages=(...)"
    return set(found.group(1).split())


def test_apt_installs_without_recommends():
    installs = [line for line in SETUP.read_text().splitlines()
                if "apt-get install" in line and not line.lstrip().startswith("#")]
    assert installs and all("--no-install-recommends" in line for line in installs)


def test_the_packages_cover_vms_libvirt_and_image_builds():
    wanted = {"qemu-system-x86", "qemu-utils", "libvirt-daemon-system", "libvirt-clients",
              "libvirt-dev", "pkg-config", "gcc", "python3-dev", "python3-venv",
              "debootstrap", "busybox-static", "e2fsprogs", "ca-certificates"}
    assert wanted <= packages()
    assert {pkg for pkg in TOOLS.values() if pkg not in BASE} <= packages()


def test_the_venv_gets_the_fleet_side_and_what_tests_and_benchmarks_use():
    installs = [line for line in SETUP.read_text().splitlines()
                if "pip install" in line and "-e" in line]
    assert installs and all("'.[fleet,test,bench]'" in line for line in installs)
