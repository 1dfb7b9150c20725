"""The networks, starting weights, test-time augmentation and MLflow tracking.

Every network must survive the bundle's round trip (save, load with Keras safe mode, same
outputs); a weights file made here must really be loaded; ImageNet weights, which this
machine cannot download, must fail at once with a message that says what to do.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, free_port
from lungclf.inference import VIEWS, predict_logits, softmax, tta_mean, tta_views
from training.model import ARCHITECTURES, build


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
    with pytest.raises(SystemExit, match="compact, resnet, mobilenet, seed"):
        build("vgg", 32, 3)


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


def test_a_whole_network_weights_file_is_loaded_and_a_wrong_one_refused(tmp_path):
    first = build("compact", 32, 3, width=8)
    path = str(tmp_path / "run1.weights.h5")
    first.save_weights(path)
    second = build("compact", 32, 3, width=8, weights=path)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit, match="does not fit a compact network of width 16"):
        build("compact", 32, 3, width=16, weights=path)
    with pytest.raises(SystemExit, match="no such file"):
        build("compact", 32, 3, width=8, weights=str(tmp_path / "missing.weights.h5"))


def test_imagenet_weights_are_only_offered_for_mobilenet():
    with pytest.raises(SystemExit, match="ImageNet weights exist only for mobilenet"):
        build("compact", 64, 3, weights="imagenet")


def test_imagenet_weights_that_cannot_be_downloaded_fail_fast_with_what_to_do(tmp_path):
    """Downloads go through a proxy that refuses (as here: no internet), and no cached copy."""
    closed = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "KERAS_HOME": str(tmp_path), "https_proxy": closed, "HTTPS_PROXY": closed,
           "http_proxy": closed, "HTTP_PROXY": closed, "no_proxy": "", "NO_PROXY": ""}
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", "from training.model import build; "
                        "build('mobilenet', 64, 3, weights='imagenet')"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and time.time() - t0 < 60
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


def test_tta_averages_each_image_over_its_views():
    import keras

    # A model that sees only the left half of the image: mirroring changes its answer.
    inputs = keras.Input((4, 4, 1))
    left = keras.layers.Cropping2D(((0, 0), (0, 2)))(inputs)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(left))
    model = keras.Model(inputs, out)
    x = np.random.default_rng(1).uniform(0, 1, (3, 4, 4, 1)).astype(np.float32)
    plain, mirrored = predict_logits(model, x), predict_logits(model, x[:, :, ::-1])
    assert np.abs(plain - mirrored).max() > 0.01  # the views really differ
    np.testing.assert_allclose(predict_logits(model, x, views=["identity", "flip_lr"]), (plain + mirrored) / 2,
                               atol=1e-5)
    assert tta_mean(np.ones((6, 2)), 2).shape == (3, 2)


@pytest.mark.slow
def test_training_from_a_weights_file_records_it(tmp_path):
    """--weights PATH through the real training command (a backbone file made here)."""
    import keras

    from tests.conftest import make_dataset
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
def test_mlflow_run_has_params_per_epoch_metrics_and_the_bundle(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="mlflow-skinny is in requirements-dev.txt")
    from tests.conftest import make_dataset
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
def test_app_with_tta_on_answers_with_the_views_averaged(tiny_bundle, tmp_path):
    """TTA=1: the running app's answer is the bundle's views averaged and calibrated."""
    from gradio_client import Client, handle_file

    from lungclf.bundle import load
    from lungclf.preprocess import load_image
    from tests.conftest import AppServer, blob_image, label_id, temperature_scaled

    path = str(tmp_path / "green-red.png")  # half and half: mirroring changes what a model sees
    halves = [np.asarray(blob_image(c, 11, size=64))[:, :32] for c in ("green", "red")]
    Image.fromarray(np.concatenate(halves, axis=1)).save(path)
    b = load(tiny_bundle["out"])
    views, temperature = b.meta.tta.views, b.meta.tta.temperature or b.temperature
    x = load_image(path, b.input_size)[None]
    # The mean of the views' logits is the log of the geometric mean of their probabilities.
    per_view = np.stack([np.asarray(b.model(np.ascontiguousarray(v), training=False), np.float64)
                         for v in (x, x[:, :, ::-1])])
    geo = np.exp(np.log(per_view).mean(axis=0))
    expected = dict(zip(b.labels, temperature_scaled(geo / geo.sum(), temperature)[0]))
    plain = dict(zip(b.labels, temperature_scaled(b.model(x, training=False), b.temperature)[0]))
    server = AppServer({"MODEL_REPO": tiny_bundle["out"], "TTA": "1"})
    try:
        result = Client(server.url, verbose=False).predict(handle_file(path), api_name="/predict")
    finally:
        server.stop()
    got = {label_id(c["label"]): c["confidence"] for c in result["confidences"]}
    assert got == pytest.approx(expected, abs=1e-4)
    assert max(abs(np.log(got[k] + 1e-30) - np.log(plain[k] + 1e-30)) for k in plain) > 1e-3  # not the plain answer


@pytest.mark.slow
def test_measured_tta_and_the_selection_notes_reach_the_model_card(tmp_path):
    from tests.conftest import make_dataset
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
