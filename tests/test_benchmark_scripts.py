"""Smoke runs of the benchmark and soak scripts: they run and report, in seconds.

These check that the scripts work (servers start, clients get answers, tables print);
their figures mean nothing at this size and are not checked.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(args, timeout=300):
    p = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout


def test_serving_benchmark_measures_ours_the_anchor_and_the_floor(tiny_bundle, tmp_path):
    out = _run(["scripts/benchmark_serving.py", "--quick", "--model", tiny_bundle["out"],
                "--json", str(tmp_path / "serving.json")])
    figures = json.load(open(tmp_path / "serving.json"))
    assert set(figures["runs"]) == {"ours", "anchor", "floor"}
    for app, runs in figures["runs"].items():
        assert runs[0]["cold_start_s"] > 0 and runs[0]["rps"] > 0 and runs[0]["peak_mb"] > 0, app
    assert "| ours |" in out and "ours p50 / floor" in out and "throughput ours / anchor" in out


def test_training_benchmark_times_the_training_command(tmp_path):
    out = _run(["scripts/benchmark_training.py", "--quick", "--json", str(tmp_path / "training.json")])
    (row,) = json.load(open(tmp_path / "training.json"))
    assert len(row["epoch_s"]) == 2 and row["train_images"] > 0 and row["forward_ms"] > 0
    assert "| 32 | 8 | compact |" in out


def test_soak_reports_memory_and_cleans_up_uploads(tiny_bundle):
    out = _run(["scripts/soak.py", "--model", tiny_bundle["out"], "--requests", "40", "--warmup", "10",
                "--upload-ttl", "2"])
    assert "'failed': 0" in out and "'refused_bad_file': 4" in out
    assert "server memory (RSS)" in out and "left on disk after clean-up: 0 " in out
