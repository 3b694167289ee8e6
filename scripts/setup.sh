#!/usr/bin/env bash
# Installs everything tryfleet needs on Debian 12 and starts the daemons. Safe to run again.
#   system packages (QEMU, libvirt, debootstrap, ...), a venv in .venv with tryfleet in it (with
#   its fleet side: the `fleet` extra, and what the tests and benchmarks use),
#   virtlogd and libvirtd started when not running (no systemd needed).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "setup: run as root (it installs packages and starts libvirtd): sudo bash $0" >&2
    exit 1
fi

# Without their recommends (--no-install-recommends below): those pull in 230-300 packages of GUI,
# audio and video codecs that a headless VM host never uses (qemu-system-gui, ovmf, GStreamer),
# and dnsmasq, which only serves libvirt's default network (tryfleet's guests have no NIC).
# What a bare Debian 12 needs besides its base system, checked by tests/unit/test_setup_script.py:
#   QEMU (x86 system emulator with SeaBIOS; qemu-img), libvirtd with its QEMU driver and virsh,
#   libvirt-python's build (libvirt-dev, pkg-config, gcc, python3-dev), the venv,
#   image builds (debootstrap and wget, busybox-static for the initramfs, mkfs.ext4),
#   the sqlite3 shell (to read the ledger and the audit trail by hand),
#   socat (QEMU runs it for each connection a guest with egress opens to the host's proxy),
#   iproute2 (the tests' network namespaces), Chromium and its driver (the control room's tests),
#   Prometheus (the metrics' test scrapes a real one).
packages=(qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients libvirt-dev
          pkg-config gcc python3-venv python3-dev debootstrap busybox-static e2fsprogs
          ca-certificates sqlite3 socat iproute2 chromium chromium-driver prometheus)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The venv is (re)installed when it is missing or pyproject.toml changed since the last install.
stamp=.venv/.tryfleet-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: creating .venv and installing tryfleet"
    python3 -m venv .venv
    # pip's own chatter goes to a log, shown only when the install fails.
    if ! { .venv/bin/pip install -q --upgrade pip \
            && .venv/bin/pip install -q -e '.[fleet,test,bench]'; } > .venv/pip.log 2>&1; then
        grep -v "^WARNING: Location" .venv/pip.log | tail -40 >&2
        echo "setup: installing the Python packages failed (full log: .venv/pip.log)" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi

# virtlogd, and libvirtd under a subreaper that reaps QEMU the moment it exits.
.venv/bin/python -m tryfleet.nodeagent.daemons start
echo "setup: ready ($(virsh -c qemu:///system version | grep -i 'running hypervisor'))"
