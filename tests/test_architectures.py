"""The networks, starting weights, test-time augmentation and MLflow tracking.

Every network must survive the bundle's round trip (save, load with Keras safe mode, same
outputs); a weights file made here must really be loaded; ImageNet weights, which this
machine cannot download, must fail at once with a message that says what to do.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lungclf.inference import VIEWS, predict_logits, tta_mean, tta_views
from tests.helpers import (COMMITTED_MODEL, ROOT, AppServer, confidences, free_port, halves, make_dataset,
                           predict, write_bundle)
from training.errors import ModelError, TrainingError
from training.model import ARCHITECTURES, build


def left_half_model(size, kernel, bias):
    """A network that sees only the left half of the image: its logits are the mean colour
    of that half @ kernel + bias, so mirroring an image changes its answer."""
    import keras

    inputs = keras.Input((size, size, 3))
    left = keras.layers.Cropping2D(((0, 0), (0, size - size // 2)))(inputs)
    head = keras.layers.Dense(kernel.shape[1], activation="softmax")
    model = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(left)))
    head.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])
    return model


def left_half_logits(x, kernel, bias):
    """left_half_model's logits, worked out with numpy."""
    x = np.asarray(x, np.float64)
    return x[:, :, : x.shape[2] // 2].mean(axis=(1, 2)) @ kernel + bias


def softmax_by_hand(z):
    e = np.exp(z - np.max(z, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_network_loads_in_safe_mode_with_the_same_outputs(arch, tmp_path):
    import keras

    model = build(arch, 32, 3, width=8, colour_mode="grey" if arch == "resnet" else "rgb")
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.saving.load_model(path, safe_mode=True, compile=False)
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(again(x)), atol=1e-5)
    assert np.asarray(model(x)).shape == (2, 3)


def test_an_unknown_network_is_refused_with_the_choices():
    with pytest.raises(ModelError, match="compact, resnet, mobilenet, lite0, lite2, astra, lite0\\+astra, anchor"):
        build("vgg", 32, 3)


def test_library_functions_raise_typed_errors_not_exits():
    with pytest.raises(ModelError, match="Unknown architecture 'nope'") as stop:
        build("nope", 32, 2)
    assert isinstance(stop.value, TrainingError) and not isinstance(stop.value, SystemExit)
    assert issubclass(ModelError, TrainingError) and not issubclass(ModelError, SystemExit)


def test_a_mobilenet_backbone_weights_file_is_loaded(tmp_path):
    import keras

    backbone = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False,
                                                   weights=None, include_preprocessing=True)
    for w in backbone.weights:  # distinct from any fresh initialisation
        w.assign(np.full(w.shape, 0.0123, np.float32))
    path = str(tmp_path / "backbone.weights.h5")
    backbone.save_weights(path)
    model = build("mobilenet", 32, 3, weights=path)
    loaded = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    assert all(np.allclose(np.asarray(w), 0.0123) for w in loaded.weights)


@pytest.mark.parametrize("arch", ["compact", "mobilenet"])  # mobilenet: a backbone nested in the model
def test_a_whole_network_weights_file_is_loaded_and_a_wrong_one_refused(arch, tmp_path):
    import warnings

    first = build(arch, 32, 3, width=8)
    rng = np.random.default_rng(0)
    for w in first.weights:  # every weight, batch-norm statistics included, unlike any fresh one
        w.assign(rng.uniform(0.5, 1.5, w.shape).astype(w.dtype))
    path = str(tmp_path / "run1.weights.h5")
    first.save_weights(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras only warns when it skips a nested layer
        second = build(arch, 32, 3, width=8, weights=path)
    assert len(second.weights) == len(first.weights)
    for a, b in zip(first.weights, second.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{b.path} was not loaded")
    wrong = "does not fit a compact network of width 16" if arch == "compact" else "neither a no-top"
    with pytest.raises(ModelError, match=wrong):
        build(arch, 32, 3, width=16, weights=path) if arch == "compact" else build(arch, 32, 4, weights=path)
    with pytest.raises(ModelError, match="no such file"):
        build(arch, 32, 3, width=8, weights=str(tmp_path / "missing.weights.h5"))


def test_imagenet_weights_are_only_offered_for_mobilenet():
    with pytest.raises(ModelError, match="ImageNet weights exist only for mobilenet.*efficientnet-lite0"):
        build("compact", 64, 3, weights="imagenet")


def test_imagenet_weights_that_cannot_be_downloaded_fail_fast_with_what_to_do(tmp_path):
    """Downloads go through a proxy that refuses (as here: no internet), and no cached copy."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "https_proxy": closed, "HTTPS_PROXY": closed,
           "http_proxy": closed, "HTTP_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}
    p = subprocess.run([sys.executable, "-c", "from training.errors import cli_errors\n"
                        "from training.model import build\n"
                        "with cli_errors():\n"
                        "    build('mobilenet', 64, 3, weights='imagenet')"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)  # a hang guard
    assert p.returncode != 0
    assert "Cannot get the ImageNet weights for mobilenet" in p.stderr
    assert "pass its path as --weights" in p.stderr and "Traceback" not in p.stderr


def test_tta_views_are_the_eight_symmetries_of_a_square():
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    stacked = tta_views(x, list(VIEWS))
    assert stacked.shape == (16, 4, 4, 1)
    views = {stacked[i * 2].tobytes() for i in range(8)}
    assert len(views) == 8  # all different
    with pytest.raises(ValueError, match="unknown test-time augmentation views"):
        tta_views(x, ["identity", "shear"])


def test_tta_averages_the_logits_of_each_image_over_its_views():
    rng = np.random.default_rng(1)
    kernel, bias = rng.normal(0, 0.05, (3, 4)), rng.normal(0, 0.1, 4)
    model = left_half_model(8, kernel, bias)
    x = rng.uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    plain, mirrored = left_half_logits(x, kernel, bias), left_half_logits(x[:, :, ::-1], kernel, bias)
    assert np.abs(plain - mirrored).max() > 0.5  # the views really differ
    np.testing.assert_allclose(predict_logits(model, x), plain, atol=1e-4)
    np.testing.assert_allclose(predict_logits(model, x, views=["identity", "flip_lr"], batch_size=2),
                               (plain + mirrored) / 2, atol=1e-4)
    stacked = np.concatenate([np.full((3, 2), 1.0), np.full((3, 2), 3.0)])  # view 1 rows, then view 2 rows
    np.testing.assert_array_equal(tta_mean(stacked, 2), np.full((3, 2), 2.0))


@pytest.mark.slow
@pytest.mark.train
def test_training_from_a_weights_file_records_it(tmp_path):
    """--weights PATH through the real training command (a backbone file made here)."""
    import keras

    from training.train import main

    backbone = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False,
                                                   weights=None, include_preprocessing=True)
    path = str(tmp_path / "backbone.weights.h5")
    backbone.save_weights(path)
    data = make_dataset(str(tmp_path / "data"), per_class=12)
    meta = main(["--data", data, "--out", str(tmp_path / "b"), "--arch", "mobilenet", "--weights", path,
                 "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--verbose", "0"])
    assert meta["model"]["architecture"] == "mobilenet" and meta["model"]["initial_weights"] == path


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.mlflow
def test_mlflow_run_has_params_per_epoch_metrics_and_the_bundle(tmp_path, monkeypatch):
    import mlflow

    from training.train import main

    monkeypatch.chdir(tmp_path)  # the default store is ./mlruns/
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    data = make_dataset(str(tmp_path / "data"), per_class=12)
    main(["--data", data, "--out", str(tmp_path / "b"), "--image-size", "32", "--width", "8",
          "--epochs", "3", "--patience", "5", "--batch-size", "8", "--verbose", "0", "--tta", "--mlflow"])
    assert (tmp_path / "mlruns").is_dir()
    client = mlflow.tracking.MlflowClient(tracking_uri=(tmp_path / "mlruns").as_uri())
    run = client.search_runs([client.get_experiment_by_name("lung-image-classifier").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["arch"] == "compact" and run.data.params["epochs"] == "3"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1, 2]
    assert "test_macro_f1" in run.data.metrics and "test_tta_macro_f1" in run.data.metrics
    files = {f.path for f in client.list_artifacts(run.info.run_id, "bundle")}
    assert {"bundle/model.keras", "bundle/metadata.json", "bundle/README.md"} <= files


@pytest.mark.slow
def test_app_with_tta_on_answers_with_the_views_averaged(tmp_path):
    """TTA=1: the running app averages the logits of the bundle's views (identity and
    mirror) and calibrates them with the TTA temperature. The bundle's network sees only the
    left half of the image, and the image is green on the left and red on the right, so the
    mirrored view answers differently: the plain and TTA answers differ by far more than
    rounding, and the expected answers are worked out here with numpy."""
    size, plain_t, tta_t = 32, 0.8, 1.7
    labels = json.load(open(os.path.join(COMMITTED_MODEL, "classes.json")))["labels"]
    # Red, green and blue mean colours push the first, second and third class; not saturated.
    kernel, bias = (np.eye(3) - 1 / 3) / 40, np.zeros(3)
    folder = write_bundle(str(tmp_path / "left-half"), left_half_model(size, kernel, bias), COMMITTED_MODEL,
                          "left-half", calibration={"temperature": plain_t, "method": "set by the test"},
                          tta={"views": ["identity", "flip_lr"], "temperature": tta_t})
    path = str(tmp_path / "green-red.png")
    halves("green", "red", seed=11, size=size).save(path)  # the model's input size: no resizing
    x = np.asarray(Image.open(path), np.float64)[None]
    views = [left_half_logits(x, kernel, bias), left_half_logits(x[:, :, ::-1], kernel, bias)]
    plain = dict(zip(labels, softmax_by_hand(views[0] / plain_t)[0]))
    expected = dict(zip(labels, softmax_by_hand((views[0] + views[1]) / 2 / tta_t)[0]))
    assert max(abs(plain[k] - expected[k]) for k in labels) > 0.3  # TTA must change this answer

    with AppServer({"MODEL_REPO": folder, "TTA": "1"}) as server:
        got = confidences(predict(server.url, path))
    assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
@pytest.mark.train
def test_measured_tta_and_the_selection_notes_reach_the_model_card(tmp_path):
    from training.train import main

    data = make_dataset(str(tmp_path / "data"), per_class=12)
    out = tmp_path / "b"
    meta = main(["--data", data, "--out", str(out), "--preset", "lc25000", "--image-size", "32", "--width", "8",
                 "--epochs", "2", "--batch-size", "8", "--verbose", "0", "--tta",
                 "--notes", "Tried compact and resnet; compact was best."])
    tta = meta["metrics"]["test_tta"]
    assert meta["tta"]["views"] == ["identity", "flip_lr", "flip_ud", "rot90", "rot180", "rot270",
                                    "transpose", "transverse"] and meta["tta"]["temperature"] > 0
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Test-time augmentation: 8 views averaged" in card and f"macro F1 {tta['macro_f1']:.4f}" in card
    assert "## How this model was chosen\n\nTried compact and resnet; compact was best." in card
