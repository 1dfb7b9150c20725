"""Inference with a bundle: the traced forward pass, calibration and test-time augmentation.

    from lungclf.bundle import load
    from lungclf.inference import Classifier
    clf = Classifier(load("models/lc25000"))
    clf.classify("tile.jpeg")        # {"Adenocarcinoma (lung) (lung_aca)": 0.93, ...}

Every network here ends in one softmax Dense layer over its penultimate features, so the
forward pass returns the logits (features @ kernel + bias) and the features themselves:
calibration divides the logits by the bundle's temperature (never the log of clipped
probabilities), and the wrong-input check reads the features, all from one traced call.
Training and evaluation call `predict_logits`, the app calls `Classifier`: one path.
"""

import numpy as np

from lungclf.preprocess import load_image

# Test-time augmentation views of a batch (N, H, W, C) of square images.
VIEWS = {
    "identity": lambda a: a,
    "flip_lr": lambda a: a[:, :, ::-1],
    "flip_ud": lambda a: a[:, ::-1],
    "rot90": lambda a: np.rot90(a, 1, axes=(1, 2)),
    "rot180": lambda a: np.rot90(a, 2, axes=(1, 2)),
    "rot270": lambda a: np.rot90(a, 3, axes=(1, 2)),
    "transpose": lambda a: a.transpose(0, 2, 1, 3),
    "transverse": lambda a: np.rot90(a, 2, axes=(1, 2)).transpose(0, 2, 1, 3),
}


class ModelError(ValueError):
    """A network this module cannot split into features and a softmax head."""


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def calibrate(logits, temperature=1.0):
    """Temperature scaling: softmax(logits / T)."""
    return softmax(np.asarray(logits, np.float64) / float(temperature))


def tta_views(x, views):
    """The batch x under each named view, stacked view after view: (len(views) * N, ...)."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise ValueError(f"unknown test-time augmentation views {unknown}; known: {list(VIEWS)}")
    return np.concatenate([np.ascontiguousarray(VIEWS[v](x)) for v in views])


def tta_mean(values, n_views):
    """Average tta_views' stacked rows (logits or features) back to one row per image."""
    return values.reshape(n_views, -1, *values.shape[1:]).mean(axis=0)


def head(model):
    """(features model, kernel, bias): the network up to the input of its last layer, which
    must be a softmax Dense layer, and that layer's weights."""
    import keras

    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense) or last.activation is not keras.activations.softmax:
        raise ModelError(f"the model's last layer must be a softmax Dense layer, not {last.name} "
                         f"({type(last).__name__})")
    features = keras.Model(model.inputs[0], last.input, name="features")
    return features, last.kernel, last.bias


def forward_fn(model, traced=True):
    """x (N, S, S, 3) float32 0..255 -> (logits, features), optionally as a traced tf.function
    with a fixed signature (no Keras call overhead or retracing per request)."""
    import tensorflow as tf

    features, kernel, bias = head(model)
    size = model.inputs[0].shape[1]

    def forward(x):
        f = features(x, training=False)
        return tf.matmul(f, kernel) + bias, f

    if not traced:
        return forward
    return tf.function(forward, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])


def predict_logits(model, x, batch_size=64, views=None, forward=None):
    """Logits of `model` on the array x (N, S, S, 3), in batches; with `views`, the mean of the
    logits over those test-time augmentation views."""
    forward = forward or forward_fn(model, traced=False)
    n_classes = model.outputs[0].shape[-1]
    views = views or ["identity"]
    out = [np.zeros((0, n_classes), np.float32)]
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size].astype(np.float32)
        logits = np.asarray(forward(tta_views(batch, views) if len(views) > 1 else batch)[0])
        out.append(tta_mean(logits, len(views)))
    return np.concatenate(out)


def label_text(label, names):
    """The text a gr.Label shows for a class: readable name with the class id."""
    name = names.get(label, label)
    return label if name == label else f"{name} ({label})"


class Classifier:
    """A bundle ready to answer: the forward pass is traced and warmed up once, here, so a
    request only decodes its image and runs the graph. With tta=True the logits are
    averaged over the bundle's views and calibrated with the temperature fitted for them."""

    def __init__(self, bundle, tta=False):
        self.bundle = bundle
        self.size = bundle.input_size
        meta = bundle.meta
        self.views = meta.tta.views if tta else ["identity"]
        self.temperature = (meta.tta.temperature or meta.calibration.temperature) if tta \
            else meta.calibration.temperature
        self.texts = [label_text(lab, bundle.names) for lab in bundle.labels]
        self.forward = forward_fn(bundle.model)
        self.probabilities(np.zeros((1, self.size, self.size, 3), np.float32))  # trace, warm up

    def probabilities(self, x):
        """Calibrated class probabilities of a batch x (N, S, S, 3), float32 0..255."""
        if len(self.views) > 1:
            x = tta_views(x, self.views)
        logits = self.forward(x)[0].numpy()
        return calibrate(tta_mean(logits, len(self.views)), self.temperature)

    def classify(self, source):
        """Image path or bytes -> {label text: calibrated probability}, with the training
        preprocessing (lungclf.preprocess.load_image); raises ImageError for a bad image."""
        probs = self.probabilities(load_image(source, self.size)[None])[0]
        return dict(zip(self.texts, probs.tolist()))
