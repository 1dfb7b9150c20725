#!/usr/bin/env bash
# Install what training, benchmarks and tests need on a fresh machine (Debian + Python 3.11).
# The README's test command runs this first; CI runs the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt
# Headless Chromium for tests/test_browser.py: Debian's package, driven by Playwright
# (which downloads no browser of its own).
if [ ! -x /usr/bin/chromium ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
# @gradio/client for scripts/client.mjs, exactly as package-lock.json pins it.
npm ci --no-audit --no-fund --loglevel=error >/dev/null
