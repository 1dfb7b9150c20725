"""Inference with a bundle: the traced forward pass, calibration and test-time augmentation.

    from lungclf.bundle import load
    from lungclf.inference import Classifier
    clf = Classifier(load("models/lc25000"))
    clf.classify("tile.jpeg")        # {"Adenocarcinoma (lung)": 0.93, ...}

Every network here ends in one softmax Dense layer over its penultimate features, so the
forward pass returns the logits (features @ kernel + bias) and the features themselves:
calibration divides the logits by the bundle's temperature (never the log of clipped
probabilities), and the wrong-input check reads the features, all from one traced call.
`explain_fn` also returns the class activation maps (lungclf.heatmap) from that same call.
Training and evaluation call `predict_logits`, the app calls `Classifier`: one path.

    clf.analyse("tile.jpeg")         # Answer: probabilities, wrong-input verdict, heatmap
    clf.analyse_many(paths)          # the same Answers for many files, decoded in threads and
                                     # run through the traced graph 32 at a time (lungclf.predict)

The engine: a bundle with a checked model.onnx (python -m training.export) is served by ONNX
Runtime, which runs these small networks at batch size 1 several times faster than TensorFlow
on a CPU (docs/performance.md); a bundle without one, or engine="keras", by the traced Keras
call. Both give the same three arrays (the export fails above 1e-3 of each output's scale).
"""

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from lungclf import heatmap, wrong_input
from lungclf.schema import ONNX_OUTPUTS
from lungclf.preprocess import load_image, read_rgb, resize

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


def explain_fn(model):
    """x (N, S, S, 3) float32 0..255 -> (logits, features, maps (N, h, w, classes)) as one traced
    tf.function: the forward pass plus the class activation map of every class (the feature
    map times the softmax layer's kernel). Raises heatmap.NoHeatmap for a network without
    global average pooling."""
    import tensorflow as tf

    maps_model, kernel, bias = heatmap.cam_head(model)
    size = model.inputs[0].shape[1]

    def explain(x):
        fmap, f = maps_model(x, training=False)
        return tf.matmul(f, kernel) + bias, f, tf.einsum("nhwk,kc->nhwc", fmap, kernel)

    return tf.function(explain, input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])


ENGINES = ("auto", "onnx", "keras")


class EngineError(RuntimeError):
    """engine="onnx" asked of a bundle without model.onnx, or without onnxruntime installed."""


def onnx_fn(path, threads=None):
    """x (N, S, S, 3) float32 0..255 -> [logits, features, maps] as numpy arrays, from the
    bundle's model.onnx on ONNX Runtime's CPU kernels. threads: intra-op threads per call (the
    app uses 1: its worker threads run requests side by side, and one thread per call keeps
    them from spinning against each other on a small CPU); None: ONNX Runtime's default, one
    per core. A session may be called from several threads at once."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    def explain(x):
        return session.run(list(ONNX_OUTPUTS), {"image": np.ascontiguousarray(x, np.float32)})

    return explain


def predict_features(model, x, batch_size=64, forward=None):
    """(logits, penultimate features) of `model` on the array x (N, S, S, 3), in batches
    (`forward`: forward_fn's function, made once by a caller that comes back batch after batch;
    traced, not eager: eager Keras calls took 16.7 GB and 36 s for 128 images of the joined
    chest CT network, where the traced function took 1.9 GB and 14 s)."""
    forward = forward or forward_fn(model)
    logits, feats = [], []
    for i in range(0, len(x), batch_size):
        z, f = forward(x[i:i + batch_size].astype(np.float32))
        logits.append(np.asarray(z))
        feats.append(np.asarray(f))
    return np.concatenate(logits), np.concatenate(feats)


def predict_logits(model, x, batch_size=64, views=None, forward=None):
    """Logits of `model` on the array x (N, S, S, 3), in batches; with `views`, the mean of the
    logits over those test-time augmentation views (traced, as predict_features)."""
    forward = forward or forward_fn(model)
    n_classes = model.outputs[0].shape[-1]
    views = views or ["identity"]
    out = [np.zeros((0, n_classes), np.float32)]
    for i in range(0, len(x), batch_size):
        batch = x[i:i + batch_size].astype(np.float32)
        logits = np.asarray(forward(tta_views(batch, views) if len(views) > 1 else batch)[0])
        out.append(tta_mean(logits, len(views)))
    return np.concatenate(out)


def label_text(label, names):
    """The text a gr.Label shows for a class: its readable name from classes.json, once
    (the class id where it has none). classes.json maps names back to ids."""
    return names.get(label) or label


@dataclass
class Answer:
    """One image's full answer: what the app and every client get (see docs/api.md)."""

    probabilities: dict  # {label text: calibrated probability}
    verdict: wrong_input.Verdict  # the wrong-input check
    cam: np.ndarray | None  # raw class activation map (h, w) of the top class; None: no heatmap
    rgb: np.ndarray  # the image as decoded, at display size (lungclf.heatmap.display_size)


class Classifier:
    """A bundle ready to answer: the engine (ONNX Runtime for a bundle with model.onnx, else
    the traced Keras call; see the module's docstring) is made and warmed up once, here, so a
    request only decodes its image and runs the network. With tta=True the logits are
    averaged over the bundle's views and calibrated with the temperature fitted for them;
    the wrong-input check and the heatmap read the identity view (as they were fitted).
    `forward` and `explain` stay the traced Keras functions (traced on first use) for callers
    that compare with Keras; `run` is what answers use."""

    def __init__(self, bundle, tta=False, engine="auto", threads=None):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        self.bundle = bundle
        self.size = bundle.input_size
        meta = bundle.meta
        self.views = meta.tta.views if tta else ["identity"]
        self.temperature = (meta.tta.temperature or meta.calibration.temperature) if tta \
            else meta.calibration.temperature
        self.texts = [label_text(lab, bundle.names) for lab in bundle.labels]
        self.reference = getattr(bundle, "reference", None)
        self.forward = forward_fn(bundle.model)
        try:
            self.explain = explain_fn(bundle.model)
        except heatmap.NoHeatmap:
            self.explain = None  # e.g. the benchmark's anchor network: answers without a heatmap
        self.engine, self._onnx = self._engine(engine, threads)
        self.run(np.zeros((1, self.size, self.size, 3), np.float32))  # trace or load, warm up

    def _engine(self, engine, threads):
        path = getattr(self.bundle, "onnx_path", None)
        if engine == "keras" or (engine == "auto" and path is None):
            return "keras", None
        if path is None:
            raise EngineError(f"{self.bundle.name}: engine 'onnx' asked, but the bundle has no model.onnx "
                              f"(python -m training.export {self.bundle.folder} writes one)")
        try:
            return "onnx", onnx_fn(path, threads)
        except ImportError:
            if engine == "onnx":
                raise EngineError("engine 'onnx' needs onnxruntime: pip install -r requirements.txt") from None
            return "keras", None  # the bundle still answers, by TensorFlow

    def run(self, x, maps=True):
        """The network on a batch x (N, S, S, 3) float32 0..255 -> (logits, features, maps or
        None) as numpy arrays; maps=False may skip the maps (None for a network without them)."""
        if self._onnx is not None:
            logits, feats, cams = self._onnx(x)
            return logits, feats, cams if maps else None
        if maps and self.explain is not None:
            return tuple(t.numpy() for t in self.explain(x))
        logits, feats = self.forward(x)
        return logits.numpy(), feats.numpy(), None

    def probabilities(self, x):
        """Calibrated class probabilities of a batch x (N, S, S, 3), float32 0..255."""
        if len(self.views) > 1:
            x = tta_views(x, self.views)
        logits = self.run(x, maps=False)[0]
        return calibrate(tta_mean(logits, len(self.views)), self.temperature)

    def classify(self, source):
        """Image path or bytes -> {label text: calibrated probability}, with the training
        preprocessing (lungclf.preprocess.load_image); raises ImageError for a bad image."""
        probs = self.probabilities(load_image(source, self.size)[None])[0]
        return dict(zip(self.texts, probs.tolist()))

    def analyse(self, source):
        """Image path or bytes -> Answer: calibrated probabilities, the wrong-input verdict
        and the heatmap of the top class, from one traced call; raises ImageError."""
        rgb = read_rgb(source, self.size)
        pixels = resize(rgb, self.size)[None]  # uint8: the check's statistics, exact and faster
        x = pixels.astype(np.float32)
        batch = tta_views(x, self.views) if len(self.views) > 1 else x
        logits, feats, maps = self.run(batch)
        probs = calibrate(tta_mean(logits, len(self.views)), self.temperature)[0]
        top = int(probs.argmax())
        if self.reference is not None:
            verdict = self.reference.check(pixels, feats[:1])[0]
        else:
            verdict = wrong_input.no_check(pixels)[0]
        return Answer(dict(zip(self.texts, probs.tolist())), verdict,
                      None if maps is None else maps[0, :, :, top], heatmap.for_display(rgb))

    def _decode(self, source):
        """Image path or bytes -> (decoded rgb, resized (S, S, 3) uint8); raises ImageError."""
        rgb = read_rgb(source, self.size)
        return rgb, resize(rgb, self.size)

    def analyse_many(self, sources, batch_size=32, threads=None, heatmaps=True):
        """Answers for many images, in order: what `analyse` gives each one, from batches of
        `batch_size` images through the same traced graph. Three stages overlap: `threads`
        threads decode (default: one per two cores, which keeps ahead of the network for
        tiles) two batches ahead, one thread runs the network, and this one calibrates and
        checks the batch before. Where `analyse` would raise for an image (ImageError for a
        bad file), that exception is yielded in its place, so one bad file does not end the
        rest. heatmaps=False skips the class activation maps (Answer.cam is None): the plain
        forward pass, a little cheaper.

            for source, answer in zip(paths, clf.analyse_many(paths)): ...
        """
        sources = list(sources)
        batches = [sources[i:i + batch_size] for i in range(0, len(sources), batch_size)]
        threads = threads or max(1, (os.cpu_count() or 1) // 2)
        with ThreadPoolExecutor(threads) as decoders, ThreadPoolExecutor(1) as network:
            decoding, running = deque(), deque()

            def run_next():  # the oldest decoding batch into the network
                decoded = []
                for f in decoding.popleft():
                    try:
                        decoded.append(f.result())
                    except Exception as e:  # the file's own failure: yielded in its place
                        decoded.append(e)
                good = [d for d in decoded if not isinstance(d, Exception)]
                running.append((decoded, network.submit(self._forward_many, good, heatmaps) if good else None))

            for batch in batches:
                decoding.append([decoders.submit(self._decode, s) for s in batch])
                if len(decoding) > 2:
                    run_next()
                if len(running) > 1:
                    yield from self._answers(*running.popleft())
            while decoding:
                run_next()
            while running:
                yield from self._answers(*running.popleft())

    def _forward_many(self, decoded, heatmaps):
        """The network on decoded images [(rgb, resized)]: (pixels (N, S, S, 3) uint8, logits,
        features, maps or None); the check's statistics are exact, and faster, on the uint8."""
        pixels = np.stack([xi for _, xi in decoded])
        x = pixels.astype(np.float32)  # as load_image's, batched
        batch = tta_views(x, self.views) if len(self.views) > 1 else x
        logits, feats, maps = self.run(batch, maps=heatmaps)
        return pixels, logits, feats, maps

    def _answers(self, decoded, forwarded):
        """Answers of one batch (decoded images or their exceptions) from its network future:
        analyse's steps after the forward pass, on the batch."""
        if forwarded is None:
            return decoded  # every file of the batch failed
        x, logits, feats, maps = forwarded.result()
        probs = calibrate(tta_mean(logits, len(self.views)), self.temperature)
        n = len(x)
        verdicts = self.reference.check(x, feats[:n]) if self.reference is not None else wrong_input.no_check(x)
        good = [d for d in decoded if not isinstance(d, Exception)]
        answers = []
        for i, ((rgb, _), p, verdict) in enumerate(zip(good, probs, verdicts)):
            cam = None if maps is None else maps[i, :, :, int(p.argmax())]
            answers.append(Answer(dict(zip(self.texts, p.tolist())), verdict, cam, heatmap.for_display(rgb)))
        answers = iter(answers)
        return [d if isinstance(d, Exception) else next(answers) for d in decoded]
