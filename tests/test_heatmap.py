"""The heatmap (class activation map, lungclf/heatmap.py) is faithful and passes sanity checks.

    python -m pytest tests/test_heatmap.py -m "slow or not slow" -q

Fast: the map decomposes each network's own logits (mean over positions + bias = the
logit the model's softmax reads), for all three networks including the nested MobileNetV3
backbone; the overlay's opacity ends. Slow: on a synthetic task where the class is set by
one bright blob, the map peaks on the blob; and the model-randomisation check of Adebayo
et al. (2018, "Sanity checks for saliency maps"): with the last layers' weights
randomised, the map no longer resembles the trained one (low Spearman rank correlation).
"""

import numpy as np
import pytest
from lungclf.heatmap import overlay
from lungclf.inference import explain_fn


def blob_task(n, size=64, seed=0):
    """Images of colour noise (a texture everywhere, so any filter responds everywhere);
    class 1 has one bright red blob at a random place, class 0 none.
    Returns (x float32 0..255, y, blob centres (row, col) or None)."""
    import cv2

    rng = np.random.default_rng(seed)
    x = np.stack([cv2.GaussianBlur(a, (0, 0), 1.0)
                  for a in rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32)])
    y = np.arange(n) % 2
    yy, xx = np.mgrid[:size, :size]
    centres = []
    for i in range(n):
        if y[i]:
            cy, cx = rng.uniform(10, size - 10, 2)
            x[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 6 ** 2] = (230, 30, 30)
            centres.append((cy, cx))
        else:
            centres.append(None)
    return x, y, centres


def peak(cam, size):
    """(row, col) in image pixels of the centre of the map's highest cell."""
    r, c = np.unravel_index(np.argmax(cam), cam.shape)
    step = size / cam.shape[0]
    return (r + 0.5) * step, (c + 0.5) * step


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


@pytest.mark.slow
def test_map_of_the_blob_class_peaks_on_the_blob(blob_model):
    x, y, centres = blob_task(60, seed=1)
    logits, _, maps = (t.numpy() for t in explain_fn(blob_model)(x))
    assert (logits.argmax(1) == y).mean() >= 0.9, "the blob task should be learned"
    hits = [np.hypot(*np.subtract(peak(maps[i, :, :, 1], 64), centres[i])) <= 16
            for i in range(len(x)) if y[i]]
    assert np.mean(hits) >= 0.9


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
