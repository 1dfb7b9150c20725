#!/usr/bin/env bash
# Install what training, benchmarks and tests need on a fresh machine (Debian + Python 3.11).
# The README's test command runs this first; CI runs the README's test command.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -r requirements-dev.txt
# Training at scale (JAX for --processes N, faiss for the audit's index): ~110 MB of wheels,
# ~450 MB installed, ~25 s here. Archive prediction (lungclf.predict): Dask and pyarrow,
# ~200 MB more installed.
python -m pip install -q -r requirements-scale.txt
# The browser page's model (python -m training.export): tf2onnx, onnx and onnxruntime, ~40 MB of
# wheels, ~115 MB installed; they leave TensorFlow, numpy and protobuf as they are.
python -m pip install -q -r requirements-web.txt
# Debian packages: headless Chromium for the `browser` tests (driven by Playwright, which
# downloads no browser of its own) and Node.js for the `node` tests (scripts/client.mjs).
apt=()
[ -x /usr/bin/chromium ] || apt+=(chromium)
command -v npm >/dev/null || apt+=(nodejs npm)
if [ ${#apt[@]} -gt 0 ]; then
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt[@]}" >/dev/null
fi
# @gradio/client for scripts/client.mjs, exactly as package-lock.json pins it.
npm ci --no-audit --no-fund --loglevel=error >/dev/null
