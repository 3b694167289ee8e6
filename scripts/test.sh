#!/usr/bin/env bash
# Set up, build the base image (cached), and run the whole test suite: unit and real-VM tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/tryfleet image build base
exec .venv/bin/python -m pytest tests -q -rfE --tb=short -p no:cacheprovider "$@"
