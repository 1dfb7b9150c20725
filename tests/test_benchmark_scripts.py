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


def test_serving_benchmark_measures_classify_predict_and_the_floor(tiny_bundle, tmp_path):
    figures = run_script(["scripts/benchmark_serving.py", "--quick", "--model", tiny_bundle["out"]],
                         tmp_path / "serving.json")
    assert set(figures["runs"]) == {"classify", "predict", "floor"}  # the default apps
    for app, runs in figures["runs"].items():
        assert len(runs) == 1, app  # --quick: one run
        assert runs[0]["cold_start_s"] > 0 and runs[0]["rps"] > 0 and runs[0]["peak_mb"] > 0, app
    assert figures["forward_ms"]["ours"] > 0
    vs = figures["summary"]["against_floor"]
    assert vs["classify"]["p50_over_floor"] > 0 and vs["predict"]["rps_over_floor"] > 0
    assert figures["load"]["max"] >= figures["load"]["min"] >= 0


def test_the_floor_app_answers_one_label_and_nothing_else(tiny_bundle, tmp_path):
    """The floor is app.py's page whose /classify has ONE output, a gr.Label with a constant."""
    from gradio_client import Client, handle_file

    from scripts.app_server import AppServer
    from scripts.benchmark_serving import write_tile

    image = write_tile(str(tmp_path / "tile.jpg"))
    with AppServer({"MODEL_REPO": tiny_bundle["out"]}, [sys.executable, "scripts/benchmark_serving.py",
                                                        "--serve-floor"]) as server:
        answer = Client(server.url, verbose=False).predict(handle_file(image), api_name="/classify")
    assert isinstance(answer, dict) and "confidences" in answer  # one output: the gr.Label value alone
    assert len({c["confidence"] for c in answer["confidences"]}) == 1  # a constant: every class alike


@pytest.mark.train
def test_training_benchmark_times_the_training_command(tmp_path):
    (row,) = run_script(["scripts/benchmark_training.py", "--quick"], tmp_path / "training.json")
    assert (row["input"], row["width"], row["arch"]) == (32, 8, "compact")
    assert len(row["epoch_s"]) == 2 and row["train_images"] > 0 and row["forward_ms"] > 0


@pytest.mark.train
def test_scale_benchmark_measures_a_whole_stream_training_run_to_a_checked_bundle(tmp_path):
    """--what train: `training.train --stream` from scan to written bundle, at two sizes, each
    bundle with its wrong-input check and its ONNX export (the run's peak memory is its own)."""
    figures = run_script(["scripts/benchmark_scale.py", "--quick", "--what", "train"], tmp_path / "scale.json",
                         timeout=600)
    rows = figures["rows"]
    assert [(r["kind"], r["factor"]) for r in rows] == [("train", 1), ("train", 2)]
    assert rows[1]["images"] == 2 * rows[0]["images"]
    assert all(r["wrong_input"] and r["onnx"] and r["peak_mb"] > 0 for r in rows)


def test_decode_benchmark_times_each_step_and_finds_opencvs_pixels_equal_to_pillows(tmp_path):
    figures = run_script(["scripts/benchmark_decode.py", "--quick"], tmp_path / "decode.json")
    assert set(figures["ms_per_image"]) == {"pillow", "read_rgb", "resize", "stats f32", "stats u8"}
    assert all(v > 0 for v in figures["ms_per_image"].values()) and figures["pixels_differ"] == 0


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
    # Three runs as --json writes them: p50 medians 200 ms (classify), 300 ms (predict), 150 ms
    # (floor app); forward pass 10 ms, so the floor for one client is 160 ms.
    p50s = {"classify": (210.0, 200.0, 190.0), "predict": (300.0, 310.0, 290.0), "floor": (150.0, 140.0, 160.0)}
    rps = {"classify": (20.0, 30.0, 25.0), "predict": (10.0, 12.5, 15.0), "floor": (50.0, 40.0, 60.0)}
    runs = {app: [{"p50_ms": p, "rps": r, "server_cpu_ms": 20.0} for p, r in zip(p50s[app], rps[app])]
            for app in p50s}
    record(str(bundle), {"runs": runs, "forward_ms": {"ours": 10.0}, "args": {"clients": 16}, "cores": 2,
                         "load": {"start": 0.5, "end": 2.5, "min": 0.5, "max": 3.0}, "date": "2026-12-05",
                         "command": "python scripts/benchmark_serving.py --model models/lc25000 --record"})

    with open(bundle / "metadata.json") as f:
        serving = json.load(f)["measured"]["serving"]
    assert serving["forward_ms"] == 10.0 and serving["floor"]["p50_ms"] == 160.0  # floor app p50 + forward
    assert serving["floor"]["rps"] == 50.0 and serving["runs"] == 3 and serving["date"] == "2026-12-05"
    assert serving["classify"] == {"p50_ms": 200.0, "p50_over_floor": 1.25, "rps": 25.0, "rps_over_floor": 0.5,
                                   "server_cpu_ms": 20.0}
    assert serving["predict"]["p50_over_floor"] == 1.875 and serving["predict"]["rps_over_floor"] == 0.25
    card = (bundle / "README.md").read_text()
    assert "| `/classify` (the page: label, check, heatmap grid) | 200 | 1.25 | 25.0 | 0.50 | 20.0 |" in card
    assert "load average 0.5 at the start and up to 3.0" in card and "(10.0 ms)" in card
    # metadata.json is covered by no sha256: the bundle still verifies
    from lungclf.bundle import verify

    verify(str(bundle))
