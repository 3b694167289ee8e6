#!/usr/bin/env bash
# The main job: set up, build the base image (cached), and run commands in throwaway VMs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
tf=.venv/bin/tryfleet

$tf image build base
$tf image ls
$tf host info
show() { echo; echo "\$ tryfleet $*"; set +e; "$tf" "$@"; echo "[exit code $?]"; set -e; }
show run --image base -- python3 -c 'print(6*7)'
show run --image base -- sh -c 'echo failing on purpose >&2; exit 3'
show run --image base --timeout-s 2 -- sleep 60
show run --image base -- ls /sys/class/net
echo
echo "tryfleet- domains left: $(virsh -c qemu:///system list --all --name | grep -c '^tryfleet-' || true)"
