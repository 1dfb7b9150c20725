"""The engine that answers: ONNX Runtime on a bundle's checked model.onnx, else TensorFlow.

Both give the same answers (lungclf.inference.Classifier): probabilities within the export's
1e-3, the same wrong-input verdict and the same heatmap grid, on every committed example.
"""

import glob
import json
import os
import shutil

import numpy as np
import pytest

from lungclf.bundle import load, write_json
from lungclf.inference import Classifier, EngineError
from lungclf.wrong_input import Reference
from tests.helpers import COMMITTED_MODEL, ROOT

COMMITTED = [os.path.join(ROOT, "models", n) for n in ("lc25000", "iq_othnccd", "chest_ct")]


@pytest.mark.parametrize("folder", COMMITTED, ids=os.path.basename)
def test_a_bundle_with_model_onnx_is_served_by_onnx_runtime_with_the_answers_of_keras(folder):
    bundle = load(folder)
    onnx, keras = Classifier(bundle, threads=1), Classifier(bundle, engine="keras")
    assert (onnx.engine, keras.engine) == ("onnx", "keras")
    examples = sorted(glob.glob(os.path.join(folder, "examples", "*")))
    assert examples
    # the export's tolerance: 1e-3 (float32 weights, on the logits), or the bound it holds
    # float16 weights to (chest CT: 0.02 in probability, features and maps; training/export.py)
    tolerance = bundle.meta.onnx.tolerance
    for path in examples:
        a, b = onnx.analyse(path), keras.analyse(path)
        assert list(a.probabilities) == list(b.probabilities)
        p, q = np.array(list(a.probabilities.values())), np.array(list(b.probabilities.values()))
        assert np.abs(p - q).max() < tolerance.get("probabilities", 1e-3), path
        assert a.verdict.wrong_input == b.verdict.wrong_input
        assert abs(a.verdict.score - b.verdict.score) < tolerance["features"] * b.verdict.threshold
        assert np.abs(a.cam - b.cam).max() <= tolerance["maps"] * max(1.0, np.abs(b.cam).max())


def test_a_bundle_without_model_onnx_is_served_by_tensorflow(tmp_path):
    folder = tmp_path / "bundle"
    shutil.copytree(COMMITTED_MODEL, folder)
    os.remove(folder / "model.onnx")
    meta = folder / "metadata.json"
    data = json.load(open(meta, encoding="utf-8"))
    del data["onnx"]
    write_json(meta, data)
    bundle = load(str(folder))
    assert Classifier(bundle).engine == "keras"
    with pytest.raises(EngineError, match="has no model.onnx"):
        Classifier(bundle, engine="onnx")


def test_an_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="engine must be one of"):
        Classifier(load(COMMITTED_MODEL), engine="tflite")


def test_the_feature_distance_equals_the_direct_formula_to_one_part_in_a_million():
    rng = np.random.default_rng(0)
    d, c = 64, 4
    a = rng.normal(size=(d, d))
    precision = a @ a.T / d + np.eye(d)
    means = rng.normal(size=(c, d)) * 3
    ref = Reference(means, precision, np.zeros(8), np.eye(8))
    features = means[rng.integers(0, c, 50)] + rng.normal(size=(50, d)) * 2
    diff = features[:, None] - means[None]
    direct = np.sqrt(np.einsum("ncd,de,nce->nc", diff, precision, diff).min(axis=1))
    np.testing.assert_allclose(ref.distances(features), direct, rtol=1e-6)
