"""Smoke runs of the benchmark and soak scripts: they run and report, in seconds.

These check that the scripts work (servers start, clients get answers, figures are
written): the tests read the --json file each script writes, not its printed table. The
figures mean nothing at this size; only that they were measured is checked.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow


def run_script(args, json_path, timeout=300):
    """Run a script as a user does, with --json json_path; returns what it wrote there."""
    p = subprocess.run([sys.executable, *args, "--json", str(json_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    with open(json_path) as f:
        return json.load(f)


def test_serving_benchmark_measures_ours_the_anchor_and_the_floor(tiny_bundle, tmp_path):
    figures = run_script(["scripts/benchmark_serving.py", "--quick", "--model", tiny_bundle["out"]],
                         tmp_path / "serving.json")
    assert set(figures["runs"]) == {"ours", "anchor", "floor"}
    for app, runs in figures["runs"].items():
        assert len(runs) == 1, app  # --quick: one run
        assert runs[0]["cold_start_s"] > 0 and runs[0]["rps"] > 0 and runs[0]["peak_mb"] > 0, app
    assert set(figures["forward_ms"]) == {"ours", "anchor"} and min(figures["forward_ms"].values()) > 0
    assert set(figures["summary"]) == {"p50 / floor", "throughput / anchor", "anchor file / ours"}


@pytest.mark.train
def test_training_benchmark_times_the_training_command(tmp_path):
    (row,) = run_script(["scripts/benchmark_training.py", "--quick"], tmp_path / "training.json")
    assert (row["input"], row["width"], row["arch"]) == (32, 8, "compact")
    assert len(row["epoch_s"]) == 2 and row["train_images"] > 0 and row["forward_ms"] > 0


def test_soak_answers_good_images_refuses_bad_files_and_cleans_up_uploads(tiny_bundle, tmp_path):
    report = run_script(["scripts/soak.py", "--model", tiny_bundle["out"], "--requests", "40", "--warmup", "10",
                         "--upload-ttl", "2"], tmp_path / "soak.json")
    # One request in ten is a text file: requests 9, 19, 29 and 39 of the 40.
    assert report["counts"] == {"answered": 36, "refused_bad_file": 4, "failed": 0}
    assert report["warmup"]["failed"] == 0 and report["uploads_left"] == 0 and report["problems"] == []
    assert len(report["chunks"]) == 6 and all(c["rss_mb"] > 0 for c in report["chunks"])


@pytest.mark.hub  # the card is rendered with huggingface_hub.ModelCard
def test_serving_figures_are_recorded_in_the_bundle_and_its_card(tmp_path):
    import shutil

    from scripts.benchmark_serving import record

    bundle = shutil.copytree(os.path.join(ROOT, "models", "lc25000"), tmp_path / "lc25000")
    # Three runs as --json writes them: medians 200 ms (ours) and 150 ms (floor); forward 10 ms.
    runs = {app: [{"p50_ms": p, "rps": r} for p, r in zip(p50s, (20.0, 30.0, 25.0))]
            for app, p50s in {"ours": (210.0, 200.0, 190.0), "floor": (150.0, 140.0, 160.0)}.items()}
    record(str(bundle), {"runs": runs, "forward_ms": {"ours": 10.0}, "load": [[1.0, 1, 1], [1.5, 1, 1]]})

    with open(bundle / "metadata.json") as f:
        serving = json.load(f)["measured"]["serving"]
    assert serving["p50_ms"] == 200.0 and serving["floor_ms"] == 160.0  # floor app p50 + forward pass
    assert serving["p50_over_floor"] == 1.25 and serving["runs"] == 3 and serving["load"] == [1.0, 1.5]
    assert serving["rps_16_clients"] == 25.0
    card = (bundle / "README.md").read_text()
    assert "p50 200 ms against a floor of 160 ms (1.25x" in card
