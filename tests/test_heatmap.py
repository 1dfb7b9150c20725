"""The heatmap (class activation map, lungclf/heatmap.py) is faithful and passes sanity checks.

    python -m pytest tests/test_heatmap.py -m "slow or not slow" -q

Fast: the map decomposes each network's own logits (mean over positions + bias = the
logit the model's softmax reads), for all three networks including the nested MobileNetV3
backbone; the overlay's opacity ends; in a network whose evidence is known (redness per
cell, hand-set) the map points at every red blob. Slow: the model-randomisation check of
Adebayo et al. (2018, "Sanity checks for saliency maps"): with the last layers' weights
randomised, a trained network's map no longer resembles its trained one (low Spearman rank
correlation).

Not asserted: that a *trained* network's map points at the blob. It does for some trainings
and not others (compact network, 64 px, a 4 x 4 map: pointing game 0.27 to 0.97 over 8
seeds, the blob's cell hotter than 66% to 94% of the others; `python
scripts/heatmap_pointing.py`), and an earlier version of this file asserted it for one seed
that happened to pass.
"""

import numpy as np
import pytest
from lungclf.heatmap import overlay
from lungclf.inference import explain_fn
from scripts.synthetic import blob_task


@pytest.mark.parametrize("arch", ["compact", "resnet", "mobilenet"])
def test_map_mean_plus_bias_is_the_models_own_logit(arch):
    import keras

    from training.model import build

    keras.utils.set_random_seed(1)
    model = build(arch, 64, 3, width=8)
    x = np.random.default_rng(2).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    logits, feats, maps = (t.numpy() for t in explain_fn(model)(x))
    bias = model.layers[-1].bias.numpy()
    from_maps = maps.mean(axis=(1, 2)) + bias
    probs = np.exp(from_maps - from_maps.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    assert np.allclose(probs, model(x, training=False).numpy(), atol=1e-5)
    assert np.allclose(from_maps, logits, atol=1e-4)


def test_overlay_at_opacity_zero_is_the_image_and_at_one_the_map():
    rgb = np.full((40, 30, 3), 77, np.uint8)
    cam = np.array([[0.0, 1.0], [0.0, 0.0]])
    assert (overlay(rgb, cam, 0.0) == 77).all()
    full = overlay(rgb, cam, 1.0)
    assert full.shape == (40, 30, 3)
    assert full[0, -1, 0] > 100 and full[0, -1, 2] < 60  # hot corner: red in JET
    assert full[-1, 0, 2] > 100 and full[-1, 0, 0] < 60  # cold corner: blue


@pytest.fixture(scope="module")
def blob_model():
    import keras

    from training.model import build

    keras.utils.set_random_seed(0)
    x, y, _ = blob_task(600, seed=0)
    model = build("compact", 64, 2, width=8)  # 64 px: a 4 x 4 map, each cell 16 px
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    return model


def test_map_peaks_where_the_evidence_is_in_a_network_whose_evidence_is_known():
    """A network that adds each cell's redness to class 1 (hand-set, nothing trained): its
    class-1 map must point at every red blob. A trained network's map is only as local as
    what it learned (scripts/heatmap_pointing.py measures that; see the module docstring)."""
    from scripts.heatmap_pointing import held_out, local_evidence_model, scores

    x, centres = held_out()
    pointing, rank = scores(local_evidence_model(), x, centres)
    assert pointing == 1.0 and rank >= 0.95


@pytest.mark.slow
@pytest.mark.train  # scipy
def test_map_changes_when_the_last_layers_are_randomised(blob_model):
    import keras
    from scipy.stats import spearmanr

    x, y, _ = blob_task(40, seed=2)
    x = x[y == 1]
    trained = explain_fn(blob_model)(x)[2].numpy()[..., 1]
    randomised = keras.models.clone_model(blob_model)
    randomised.set_weights(blob_model.get_weights())
    keras.utils.set_random_seed(3)
    # Cascading randomisation from the top: the softmax layer and the last two conv stages.
    convs = [layer for layer in randomised.layers if isinstance(layer, keras.layers.Conv2D)]
    for layer in [randomised.layers[-1], *convs[-4:]]:
        layer.set_weights([np.random.default_rng(4).normal(0, np.std(w) + 1e-3, w.shape).astype(np.float32)
                           for w in layer.get_weights()])
    after = explain_fn(randomised)(x)[2].numpy()[..., 1]
    rho = [spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(trained, after)]
    assert np.nanmean(np.abs(rho)) < 0.4
    same = [spearmanr(a.ravel(), a.ravel()).statistic for a in trained]
    assert np.allclose(same, 1.0)  # the measure itself can see agreement
