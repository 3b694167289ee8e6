#!/usr/bin/env bash
# Set up, lint and type-check, build the base image (cached), and run the whole test suite:
# unit and real-VM tests. A lint or type finding fails the run before any test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy --strict -p tryfleet
.venv/bin/tryfleet image build base
exec .venv/bin/python -m pytest tests -q -rfE --tb=short -p no:cacheprovider "$@"
