"""python -m training.export: each committed bundle's network as ONNX, with the outputs the
browser page needs, equal to what the app computes.

The references here are the app's own answers (lungclf.inference.Classifier: calibrated
probabilities, the wrong-input verdict, the heatmap of the top class), not the export's own
check. Needs requirements-web.txt (scripts/install_dev.sh installs it); without those
packages every test here skips, saying so (and CI, which installs them, counts a skip as a
failure).
"""

import hashlib
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import ROOT

MISSING = [m for m in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"Python package(s) {', '.join(MISSING)} not installed "
                                "(pip install -r requirements-web.txt; scripts/install_dev.sh does)")

BUNDLES = ["lc25000", "chest_ct", "iq_othnccd"]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope="module", params=BUNDLES)
def exported(request, tmp_path_factory):
    """(bundle, export's dict, path of the ONNX file) for each committed bundle, exported once."""
    from lungclf.bundle import load
    from training.export import export

    folder = os.path.join(ROOT, "models", request.param)
    out = str(tmp_path_factory.mktemp(request.param) / "model.onnx")
    return load(folder), export(folder, out), out


def session(path):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def run(sess, x):
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"image": np.asarray(x, np.float32)})))


@pytest.mark.slow
def test_the_graph_is_what_the_page_reads(exported):
    import onnx

    bundle, result, path = exported
    proto = onnx.load(path)

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    size, classes = bundle.input_size, len(bundle.labels)
    features = bundle.reference.feature_dim
    assert [(i.name, dims(i)) for i in proto.graph.input] == [("image", ["batch", size, size, 3])]
    out = {o.name: dims(o) for o in proto.graph.output}
    assert out["logits"] == ["batch", classes] and out["features"] == ["batch", features]
    assert out["maps"][0] == "batch" and out["maps"][3] == classes and out["maps"][1] == out["maps"][2] > 1
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)] == [("", result["opset"])]
    assert {n.domain for n in proto.graph.node} == {""}  # standard operators: any runtime
    assert sum(n.op_type == "Transpose" for n in proto.graph.node) <= 2  # NHWC in and out, no more
    assert {p.key: p.value for p in proto.metadata_props}["model.keras sha256"] == bundle.meta.model.sha256
    onnx.checker.check_model(proto, full_check=True)


@pytest.mark.slow
def test_the_dict_for_metadata(exported):
    from training.recipe import Recipe

    bundle, result, path = exported
    assert result["file"] == "model.onnx" and result["opset"] == 17
    assert result["sha256"] == sha256(path) and result["bytes"] == os.path.getsize(path)
    assert result["source_sha256"] == bundle.meta.model.sha256
    assert result["scale"]["logits"] == min(t for t in (bundle.temperature, bundle.meta.tta.temperature) if t)
    examples = len(os.listdir(os.path.join(bundle.folder, "examples")))
    assert result["checked_on"] >= examples + 10
    # the conversion within 1e-3 of Keras; float16 weights (chest CT's recipe) then within their own bound
    conversion = result.get("conversion", result)
    for k in ("logits", "features", "maps"):
        assert 0 <= conversion["relative_difference"][k] <= conversion["tolerance"][k] == 1e-3
    assert result["weights"] == Recipe.from_bundle(bundle.folder).stored_weights  # float16 for chest CT
    if result["weights"] == "float16":
        from training.export import FLOAT16_TOLERANCE

        assert result["tolerance"] == FLOAT16_TOLERANCE
        assert result["probabilities_difference"] <= FLOAT16_TOLERANCE["probabilities"]
        for k in ("features", "maps"):
            assert result["relative_difference"][k] <= FLOAT16_TOLERANCE[k]
    else:
        assert "conversion" not in result and result["probabilities_difference"] < 5e-4
    assert result["same_label"] == result["checked_on"]
    assert result["wrong_input"]["same_verdict"] == result["checked_on"]
    assert set(result["versions"]) == {"tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy"}
    if bundle.meta.task.modality == "CT":  # the page's target: a CT model's download <= 20 MB
        assert result["bytes"] <= 20_000_000


@pytest.mark.slow
def test_onnx_answers_as_the_app_does(exported):
    """The app's answer (Classifier.analyse) for each example against the ONNX outputs with the
    page's arithmetic: calibrated probabilities, the wrong-input verdict on the ONNX features,
    the top class's map; and with test-time augmentation, the views as one batch."""
    from lungclf.inference import Classifier, calibrate, tta_mean, tta_views
    from lungclf.preprocess import load_image

    bundle, _, path = exported
    sess = session(path)
    app, app_tta = Classifier(bundle), Classifier(bundle, tta=True)
    examples = os.path.join(bundle.folder, "examples")
    for name in sorted(os.listdir(examples)):
        file = os.path.join(examples, name)
        answer = app.analyse(file)
        x = load_image(file, bundle.input_size)[None]
        out = run(sess, x)
        probs = calibrate(out["logits"], bundle.temperature)[0]
        np.testing.assert_allclose(probs, list(answer.probabilities.values()), atol=1e-4, err_msg=name)
        verdict = bundle.reference.check(x, out["features"])[0]
        assert verdict.wrong_input == answer.verdict.wrong_input, name
        assert verdict.score == pytest.approx(answer.verdict.score, rel=1e-4), name
        cam = out["maps"][0, :, :, int(probs.argmax())]
        np.testing.assert_allclose(cam, answer.cam, atol=1e-3 * np.abs(answer.cam).max(), err_msg=name)
        views = app_tta.views
        logits = run(sess, tta_views(x, views))["logits"]
        np.testing.assert_allclose(calibrate(tta_mean(logits, len(views)), app_tta.temperature),
                                   app_tta.probabilities(x), atol=1e-4, err_msg=name)


@pytest.mark.slow
def test_a_wrong_conversion_fails_and_writes_nothing(tmp_path, monkeypatch):
    """A conversion that changes a number (here the logits' bias, by 0.01) fails the export with
    the export's own error, names the output, and leaves no file; the same bundle exported
    again gives the same bytes first (the sha256 in metadata.json is reproducible)."""
    import onnx
    from onnx import numpy_helper

    from training import export as ex
    from training.errors import ExportError

    folder = os.path.join(ROOT, "models", "lc25000")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = tmp_path / "a" / "model.onnx", tmp_path / "b" / "model.onnx"
    ex.export(folder, str(first))
    real = ex.to_onnx

    def damaged(model, path, *args, **kwargs):
        real(model, path, *args, **kwargs)
        damaged.sha256 = sha256(path)
        proto = onnx.load(path)
        gemm = next(n for n in proto.graph.node if n.op_type == "Gemm")
        bias = next(t for t in proto.graph.initializer if t.name == gemm.input[2])
        bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.01), bias.name))
        onnx.save(proto, path)

    monkeypatch.setattr(ex, "to_onnx", damaged)
    with pytest.raises(ExportError, match=r"differ by more than the tolerance on logits .*nothing written"):
        ex.export(folder, str(second))
    assert damaged.sha256 == sha256(first)
    assert os.listdir(tmp_path / "a") == ["model.onnx"]  # the page reads the bundle's own wrong_input.npz
    assert os.listdir(tmp_path / "b") == []


def test_float16_storage_halves_large_constants_and_keeps_small_ones(tmp_path):
    """store_float16: a constant of 4,096 values or more is stored as float16 and read back by
    a Cast; a small one (a bias) stays float32; the graph computes what it did, within
    float16's rounding, in half the bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from training.export import store_float16

    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(128, 64)).astype(np.float32), rng.normal(size=(64,)).astype(np.float32)
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 128])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    path = str(tmp_path / "float16.onnx")
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)
    x = rng.normal(size=(1, 128)).astype(np.float32)
    before, size = session(path).run(None, {"x": x})[0], os.path.getsize(path)
    assert store_float16(path) == 1
    proto = onnx.load(path)
    stored = {t.name: t.data_type for t in proto.graph.initializer}
    assert stored == {"w_float16": TensorProto.FLOAT16, "b": TensorProto.FLOAT}
    assert [(n.op_type, list(n.input), list(n.output)) for n in proto.graph.node][0] == ("Cast", ["w_float16"], ["w"])
    after = session(path).run(None, {"x": x})[0]
    assert after.dtype == np.float32
    np.testing.assert_allclose(after, before, atol=2e-3 * np.abs(before).max())
    assert not np.array_equal(after, before)  # rounded: float16 keeps 11 bits
    assert os.path.getsize(path) < 0.55 * size


@pytest.mark.slow
def test_a_float16_export_records_both_checks_and_its_recipe(tmp_path):
    """--weights float16 on a copy of the default bundle: model.onnx in about half the bytes,
    the float32 conversion held to 1e-3 and the stored weights to FLOAT16_TOLERANCE, every check
    image with the same label and verdict; recorded, the bundle still verifies, its recipe.json
    says stored_weights = "float16", and its card says how the file is stored."""
    import shutil

    from lungclf.bundle import verify
    from training import export as ex
    from training.recipe import Recipe

    folder = tmp_path / "bundle"
    shutil.copytree(os.path.join(ROOT, "models", "lc25000"), folder)
    before = os.path.getsize(folder / "model.onnx")
    result = ex.export(str(folder), weights="float16")
    assert result["weights"] == "float16" and result["bytes"] < 0.6 * before
    assert max(result["conversion"]["relative_difference"].values()) <= 1e-3
    assert result["probabilities_difference"] <= ex.FLOAT16_TOLERANCE["probabilities"]
    assert result["same_label"] == result["wrong_input"]["same_verdict"] == result["checked_on"]
    # model.keras rounded the same way, recorded, and checked: the served file against the trained network
    keras_before = os.path.getsize(ROOT + "/models/lc25000/model.keras")
    assert result["keras"]["weights"] == "float16" and result["keras"]["stored"] > 0
    assert result["keras"]["bytes"] == os.path.getsize(folder / "model.keras") < 0.7 * keras_before  # the config stays
    assert result["source_sha256"] == result["keras"]["sha256"] == sha256(folder / "model.keras")
    trained = result["trained"]
    assert trained["probabilities_difference"] <= ex.FLOAT16_TOLERANCE["probabilities"]
    assert trained["same_label"] == trained["wrong_input"]["same_verdict"] == result["checked_on"]
    ex.record(str(folder), result)
    meta = verify(str(folder))[0]
    assert (meta.model.weights, meta.model.sha256) == ("float16", result["keras"]["sha256"])
    assert Recipe.from_bundle(str(folder)).stored_weights == "float16"
    card = (folder / "README.md").read_text()
    assert "its large weights stored as float16" in card and "`model.keras` holds the same rounded weights" in card
    # exported again: nothing left to round, the same two files, and the check against the trained network kept
    again = ex.export(str(folder))
    assert (again["sha256"], again["keras"]["sha256"]) == (result["sha256"], result["keras"]["sha256"])
    assert again["keras"]["stored"] == result["keras"]["stored"] and again["trained"] == trained


@pytest.mark.slow
def test_float16_weights_beyond_their_tolerance_are_refused_and_nothing_is_written(tmp_path, monkeypatch):
    """The stored weights are checked as the float32 graph is: an export whose float16 files move
    an answer beyond FLOAT16_TOLERANCE (here a tolerance no rounding meets) fails, says so, and
    changes nothing in the bundle: model.keras and model.onnx keep their bytes, no partial file."""
    import shutil

    from training import export as ex
    from training.errors import ExportError

    folder = tmp_path / "bundle"
    shutil.copytree(os.path.join(ROOT, "models", "lc25000"), folder)
    before = {n: sha256(folder / n) for n in os.listdir(folder) if os.path.isfile(folder / n)}
    monkeypatch.setattr(ex, "FLOAT16_TOLERANCE", {"probabilities": 1e-12, "features": 1e-12, "maps": 1e-12})
    with pytest.raises(ExportError, match=r"with its weights in float16 and Keras differ by more than the tolerance"
                                          r".*nothing written"):
        ex.export(str(folder), weights="float16")
    assert {n: sha256(folder / n) for n in os.listdir(folder) if os.path.isfile(folder / n)} == before


def test_float16_keras_storage_rounds_large_weights_and_reads_back_as_float32(tmp_path):
    """store_keras_float16: a weight of 4,096 values or more is stored as float16 in the .keras
    file and read back by Keras into a float32 variable, rounded; a small one (a bias) is kept
    exactly; a second pass rounds nothing and keeps the file's bytes."""
    import keras

    from training.export import store_keras_float16

    rng = np.random.default_rng(0)
    model = keras.Sequential([keras.Input((128,)), keras.layers.Dense(64)])
    kernel, bias = rng.normal(size=(128, 64)).astype(np.float32), rng.normal(size=(64,)).astype(np.float32)
    model.layers[0].set_weights([kernel, bias])
    src, dst, again = (str(tmp_path / f"{n}.keras") for n in ("src", "dst", "again"))
    model.save(src)
    assert store_keras_float16(src, dst) == (1, 1)
    loaded = keras.saving.load_model(dst, safe_mode=True)
    k, b = loaded.layers[0].get_weights()
    assert k.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(k, kernel.astype(np.float16).astype(np.float32))
    assert not np.array_equal(k, kernel) and np.array_equal(b, bias)
    assert os.path.getsize(dst) < os.path.getsize(src) - 0.4 * kernel.nbytes
    assert store_keras_float16(dst, again) == (1, 0) and sha256(again) == sha256(dst)


def test_missing_packages_say_what_to_install(monkeypatch):
    from training import export as ex
    from training.errors import ExportError

    monkeypatch.setitem(sys.modules, "tf2onnx", None)  # import tf2onnx -> ImportError
    with pytest.raises(ExportError, match=r"tf2onnx is missing\): pip install -r requirements-web.txt"):
        ex.export(os.path.join(ROOT, "models", "lc25000"))


def test_same_graph_same_bytes():
    """canonical_names: the same graph with its constants under other names and in another
    order (as tf2onnx writes it from one process to the next) serialises to the same bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from training.export import canonical_names

    def graph(names, order):
        consts = {names[0]: np.float32(0), names[1]: np.float32(6), names[2]: np.ones((2,), np.float32)}
        inits = [numpy_helper.from_array(np.asarray(consts[n]), n) for n in order]
        nodes = [helper.make_node("Clip", ["x", names[0], names[1]], ["mid"], name="relu6"),
                 helper.make_node("Add", ["mid", names[2]], ["y"], name="add")]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)
        return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])

    a = canonical_names(graph(["min", "max", "b"], ["min", "max", "b"]))
    b = canonical_names(graph(["q__1", "q__7", "bias"], ["bias", "q__7", "q__1"]))
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    onnx.checker.check_model(a)
    assert [n.name for n in a.graph.node] == ["0/relu6", "1/add"] and a.graph.output[0].name == "y"


def test_made_images_cover_the_odd_kinds():
    from training.export import made_images

    made = made_images(64)
    assert len(made) >= 16 and all(v.shape == (64, 64, 3) and v.dtype == np.float32 for v in made.values())
    assert all(0 <= v.min() and v.max() <= 255 for v in made.values())
    assert made["black"].max() == 0 and made["white"].min() == 255
    assert np.ptp(made["file_grey_png"], axis=2).max() == 0  # grey files decode to equal channels
    assert len({v.tobytes() for v in made.values()}) == len(made)


@pytest.mark.slow
def test_cli_refuses_a_folder_that_is_no_bundle(tmp_path):
    p = subprocess.run([sys.executable, "-m", "training.export", str(tmp_path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, check=False)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith(f"error: refused: {tmp_path}: not a model bundle")
    assert "Traceback" not in p.stderr
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_a_ct_pages_download_is_within_20_mb(exported):
    """What the page fetches for a CT model: model.onnx and the app's own wrong_input.npz."""
    bundle, result, _ = exported
    if bundle.meta.task.modality == "CT":
        assert result["bytes"] + os.path.getsize(os.path.join(bundle.folder, "wrong_input.npz")) <= 20_000_000
