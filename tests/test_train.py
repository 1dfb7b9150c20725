"""Training end to end on images the test makes (a bundle that loads and beats chance), and
the choices `training.train` makes before it trains (slow: the ones that train)."""

import json
import os

import pytest

from lungclf.bundle import load, verify
from training.data import scan


@pytest.mark.slow
def test_training_writes_a_complete_bundle(tiny_bundle):
    out = tiny_bundle["out"]
    for name in ("model.keras", "classes.json", "metadata.json", "README.md",
                 "figures/confusion_matrix.png", "figures/training_curves.png", "figures/reliability.png"):
        assert os.path.isfile(os.path.join(out, name)), name
    meta, classes = verify(out)
    assert classes.labels == ["blue", "green", "red"]
    assert meta.raw["training"]["command"].startswith("python -m training.train --data ")
    assert tuple(meta.preprocessing.input_size) == (32, 32, 3)


@pytest.mark.slow
def test_training_exports_a_checked_model_onnx_that_the_app_serves(tiny_bundle):
    from lungclf.inference import Classifier

    onnx = tiny_bundle["meta"]["onnx"]
    assert os.path.isfile(os.path.join(tiny_bundle["out"], onnx["file"]))
    assert max(onnx["relative_difference"].values()) <= 1e-3
    assert Classifier(load(tiny_bundle["out"])).engine == "onnx"


def test_trained_model_beats_chance_on_its_held_out_split(tiny_bundle):
    test = tiny_bundle["meta"]["metrics"]["test"]
    assert test["images"] >= 6
    assert test["accuracy"] > 0.6  # chance is 1/3


@pytest.mark.slow
def test_bundle_loads_in_safe_mode(tiny_bundle):
    b = load(tiny_bundle["out"])
    assert b.labels == ["blue", "green", "red"] and b.input_size == 32


@pytest.mark.slow
def test_no_exact_duplicate_crosses_the_split(tiny_bundle):
    """Copies are removed and the split is by group, so no file's bytes are on two sides."""
    from lungclf.bundle import sha256

    meta = tiny_bundle["meta"]
    assert meta["audit"]["exact_duplicate_groups"] == 3  # one per class, made by the test
    assert meta["data"]["images_used"] == meta["data"]["images_found"] - 6
    split_counts = meta["split"]["counts"]
    assert sum(c["images"] for c in split_counts.values()) == meta["data"]["images_used"]
    hashes = {}
    for it in scan(tiny_bundle["data"]):
        hashes.setdefault(sha256(os.path.join(tiny_bundle["data"], it.path)), []).append(it.path)
    assert sum(len(v) > 1 for v in hashes.values()) == 3


@pytest.mark.slow
def test_model_card_has_the_held_out_figures_and_yaml(tiny_bundle):
    from huggingface_hub import ModelCard

    card = ModelCard.load(os.path.join(tiny_bundle["out"], "README.md"))
    data = card.data.to_dict()
    assert data["library_name"] == "keras" and data["pipeline_tag"] == "image-classification"
    acc = tiny_bundle["meta"]["metrics"]["test"]["accuracy"]
    assert f"{acc:.4f}" in card.text
    assert "not for diagnosis" in card.text.lower()
    results = data["model-index"][0]["results"][0]
    assert {m["type"] for m in results["metrics"]} == {"accuracy", "f1"}


def test_published_split_layout_is_scanned_with_its_splits(tmp_path):
    from tests.helpers import make_dataset

    make_dataset(str(tmp_path), per_class=6, layout="split")
    items = scan(str(tmp_path))
    assert {it.label for it in items} == {"red", "green", "blue"}
    assert {it.published_split for it in items} == {"train", "val", "test"}
    json.dumps([it.__dict__ for it in items])


@pytest.mark.slow
def test_evaluate_cli_reports_and_writes_metrics(tiny_bundle, tmp_path):
    import subprocess
    import sys

    from tests.helpers import ROOT

    out = tmp_path / "eval"
    p = subprocess.run([sys.executable, "-m", "training.evaluate", "--model", tiny_bundle["out"],
                        "--data", tiny_bundle["data"], "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "precision" in p.stdout and "macro avg" in p.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == tiny_bundle["meta"]["data"]["images_found"]
    assert (out / "confusion_matrix.png").stat().st_size > 1000


@pytest.mark.parametrize("arch, width", [("compact", 32), ("resnet", 16), ("mobilenet", None)])
def test_width_is_recorded_only_for_networks_that_have_one(arch, width):
    from training.recipe import Recipe
    from training.steps import configure

    _, config = configure(Recipe(data="d", arch=arch))
    assert config.width == width


def test_the_benchmark_anchor_is_not_an_arch_choice(capsys):
    from training.train import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--data", "d", "--out", "o", "--arch", "seed"])
    assert "invalid choice: 'seed'" in capsys.readouterr().err


def test_hardware_names_the_cpu_model_not_just_cpu():
    from training.steps import hardware

    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    if cpu is None:
        pytest.skip("no CPU model name in /proc/cpuinfo on this machine")
    assert hardware().startswith(cpu) and f"{os.cpu_count()} cores" in hardware()


@pytest.fixture
def patients(tmp_path):
    """Class folders of distinct images and a group file putting six red ones in one patient."""
    from tests.helpers import make_dataset

    data = make_dataset(str(tmp_path / "data"), per_class=12)
    groups = tmp_path / "patients.csv"
    groups.write_text("path,group\n" + "".join(f"red/red_{i}.png,p1\n" for i in range(6)))
    return data, str(groups)


@pytest.mark.train
def test_prepare_keeps_a_group_files_patient_on_one_side(patients):
    from training.steps import prepare

    data, groups = patients
    prepared = prepare(data, 32, seed=0, groups_file=groups)
    sides = {s for p, s in zip(prepared.paths, prepared.split) if p in {f"red/red_{i}.png" for i in range(6)}}
    assert len(sides) == 1
    assert prepared.report["group_file"]["groups_merged"] == 5


@pytest.mark.slow
@pytest.mark.train
def test_a_group_file_used_in_training_is_recorded_in_the_bundle(patients, tmp_path):
    import hashlib

    from training.train import main

    data, groups = patients
    meta = main(["--data", data, "--out", str(tmp_path / "b"), "--groups", groups, "--image-size", "32",
                 "--width", "8", "--epochs", "1", "--batch-size", "8", "--verbose", "0"])
    recorded = meta["audit"]["group_file"]
    assert recorded["sha256"] == hashlib.sha256(open(groups, "rb").read()).hexdigest()
    assert recorded["groups_merged"] == 5 and recorded["paths_unknown"] == 0
    assert "a group file" in meta["audit"]["method"]


def test_a_failed_wrong_input_fit_exits_non_zero_and_leaves_no_bundle(tiny_bundle, tmp_path, monkeypatch):
    from lungclf.bundle import BundleError, load
    from training import steps
    from training.train import main

    def fails(*args, **kwargs):
        raise MemoryError("out of memory while decoding the validation split")

    monkeypatch.setattr(steps, "fit_wrong_input", fails)
    out = tmp_path / "tiny"
    with pytest.raises(SystemExit) as stop:
        main(["--data", tiny_bundle["data"], "--out", str(out), "--image-size", "32", "--width", "8",
              "--epochs", "1", "--batch-size", "8", "--verbose", "0"])
    message = str(stop.value.code)
    assert message.startswith("error: ") and "MemoryError" in message and f"no bundle written to {out}" in message
    assert not out.exists()
    with pytest.raises(BundleError, match="training did not finish writing this bundle"):
        load(str(tmp_path / "tiny.incomplete"))  # what was written is kept, and never served


def test_a_finished_run_leaves_no_unfinished_folder_behind(tiny_bundle):
    assert not os.path.exists(tiny_bundle["out"] + ".incomplete")
    assert not os.path.exists(os.path.join(tiny_bundle["out"], "INCOMPLETE"))


@pytest.mark.slow
def test_a_streamed_run_writes_the_wrong_input_check_without_decoding_the_data_set(tiny_bundle, tmp_path):
    from training.train import main

    out = str(tmp_path / "streamed")
    meta = main(["--data", tiny_bundle["data"], "--out", out, "--image-size", "32", "--width", "8",
                 "--epochs", "2", "--batch-size", "8", "--verbose", "0", "--stream"])
    assert meta["wrong_input"]["threshold"] > 0 and meta["wrong_input"]["rates"]["test"]["images"] > 0
    assert load(out).reference is not None  # served with its check
