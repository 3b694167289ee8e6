#!/usr/bin/env bash
# The main job: set up, build the base image (cached), run commands in throwaway VMs, then
# start the fleet and run a small campaign of iterations in several suites through it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
tf=.venv/bin/tryfleet

$tf image build base
$tf image ls
$tf host info
show() { echo; echo "\$ tryfleet $*"; set +e; "$tf" "$@"; echo "[exit code $?]"; set -e; }
show run --local --image base -- python3 -c 'print(6*7)'
show run --local --image base -- sh -c 'echo failing on purpose >&2; exit 3'
show run --local --image base --timeout-s 2 -- sleep 60
show run --local --image base -- ls /sys/class/net

echo; echo "== the fleet: Ray, a node agent, the scheduler, a demo campaign"
$tf up
work=$(mktemp -d)
trap '$tf down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
pids=()
for specs in $(.venv/bin/python scripts/demo_campaign.py "$work/demo"); do
    suite=$(basename "$specs" .jsonl); suite=${suite#demo.}
    $tf batch "$specs" --suite "demo-$suite-$$" --limit ci-db=1 --out "$work/$suite.results.jsonl" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
echo; $tf status
echo; $tf down
trap 'rm -rf "$work"' EXIT
echo
echo "tryfleet- domains left: $(virsh -c qemu:///system list --all --name | grep -c '^tryfleet-' || true)"
