#!/usr/bin/env bash
# Install what training, benchmarks and tests need on a fresh machine (Debian + Python 3.11).
# The README's test command runs this first; CI runs the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt
