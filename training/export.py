"""Export a bundle's network to ONNX for the browser page (web/), checked against Keras.

    python -m training.export models/lc25000     # writes models/lc25000/model.onnx, records the check
                                                 # in its metadata.json (`onnx`), prints it
    python -m training.export BUNDLE --out /tmp/model.onnx --opset 17
    python -m training.export BUNDLE --weights float16   # large weights stored in half the bytes

What for: the static page runs the bundle in the visitor's browser with onnxruntime-web,
so the image never leaves the visitor's computer. It needs what the app's traced call
(lungclf.inference.explain_fn) gives, from one ONNX graph with one input and three outputs:

    image     (batch, S, S, 3) float32 0..255, exactly lungclf.preprocess.load_image's output
    logits    (batch, C)       features @ kernel + bias: the page divides them by the bundle's
                               temperature (calibration.temperature, or tta.temperature for
                               the mean over the tta views) before the softmax
    features  (batch, D)       the penultimate features, for the wrong-input check
    maps      (batch, h, w, C) the class activation maps: the feature map before global
                               average pooling times the softmax layer's kernel (no bias)

Route: Keras 3's own export, `model.export(path, format="onnx")`, which on the TensorFlow
backend converts the model's traced call with tf2onnx (and patches tf2onnx for numpy 2).
Keras exports a model's call, and a bundle's model returns probabilities only, so the
model exported is a functional view of the bundle's own layers, built here: the graph up to
the pooling layer's input (lungclf.heatmap.cam_head), a linear Dense with the softmax layer's
kernel and bias (logits) and a 1x1 Conv2D with its kernel (maps). Its weights are the
bundle's; nothing is retrained. The batch dimension is left free (named "batch"), so the
page can run the test-time augmentation views as one batch. Then ONNX Runtime's basic graph
optimisations, offline (standard operators only: see `to_onnx` for why), and names that make
the same bundle give the same bytes (`canonical_names`). Why not the alternatives: calling
tf2onnx on explain_fn directly is the same converter without Keras's numpy 2 patch; Keras's
JAX-backend export needs jax2onnx, which brings flax, equinox, orbax and more.

The check: ONNX Runtime (CPU) runs the written file, one image at a time as the page does
and all images as one batch, on the bundle's examples/ and on images made here (noise,
flat, gradients, stripes, saturated colours, grey; made files of odd kinds through
lungclf.preprocess), and its outputs are compared with explain_fn's on the same input. A
largest difference, relative to its output's scale, above TOLERANCE fails the export
(ExportError; no file is left at the destination), and `export` returns what metadata.json
will record (opset, differences, tolerance, versions, sha256 and size of model.onnx).

Float16 weights (a recipe's `stored_weights = "float16"`, or --weights float16): the bundle's
model.keras is first rewritten with its large weights stored as float16 (store_keras_float16;
Keras reads them back into float32 variables), and model.onnx exported from it; after the
float32 graph passes that check, its large constants are stored as float16 and read back by
Casts to float32 (`store_float16`): half the bytes in both files, the same float32 arithmetic.
The written file is then checked again, against the rounded Keras network and against the
network as trained (`trained`), with FLOAT16_TOLERANCE and every label and wrong-input
verdict unchanged; metadata.json records the checks (`conversion`: the float32 graph's) and
the rounded model.keras (its `model` block: sha256, bytes, weights). The card's figures were
measured with the float32 network as trained, so the stored weights move them only within
that tolerance. Exporting such a bundle again rounds nothing more and writes the same files.

The page reads the bundle's wrong-input reference from wrong_input.npz itself, the app's own
file (web/app.js reads its stored .npy arrays and checks its sha256 against metadata.json's
`wrong_input.sha256`), so the export writes nothing for it.

Needs requirements-web.txt (tf2onnx, onnx, onnxruntime) besides the app's requirements.
"""

import argparse
import hashlib
import io
import json
import os
import re
import tempfile
import warnings
from typing import get_args

import numpy as np

from lungclf.schema import ONNX_OUTPUTS as OUTPUTS  # the contract names them once
from lungclf.schema import StoredWeights
from training.errors import ExportError, TrainingError, cli_errors

OPSET = 17  # onnxruntime-web runs it on WebAssembly and WebGPU; the graph needs nothing newer
FILE = "model.onnx"
# The largest difference allowed between ONNX Runtime and Keras (explain_fn), per output, on
# images 0..255, each divided by a scale (see `compare`):
#   logits    divided by the smallest temperature the page divides them by, so this is the
#             difference in the calibrated logits the softmax reads. A difference e there moves a
#             probability by at most e / 2 (2 p (1 - p) <= 1/2), so 1e-3 keeps this step within
#             5e-4: half of the page's target (probabilities within 1e-3 of the app's), the rest
#             left to the browser's WebAssembly kernels.
#   features  divided by their largest absolute value on the same images (at least 1): the
#             wrong-input check is a distance between feature vectors, and only an error relative
#             to their size moves it (the distance's own difference is reported beside it).
#   maps      divided likewise: the page normalises a map by its maximum and colours it in 256
#             steps, so 1e-3 stays under one colour step (1/255).
# Measured on the three committed bundles (TF 2.21 with oneDNN against ORT 1.32's CPU kernels,
# x86-64): at most 1.6e-4 (logits), 6.1e-6 (features) and 8.9e-6 (maps), so 1e-3 leaves a margin
# of 6x or more for other processors; a conversion error (a wrong layout, a dropped layer, a
# wrong constant) gives differences of order 1.
TOLERANCE = {"logits": 1e-3, "features": 1e-3, "maps": 1e-3}
REQUIREMENTS = "pip install -r requirements-web.txt"
# stored_weights = "float16" (a recipe's field, or --weights): the constants of at least
# FLOAT16_MIN_VALUES values are stored as float16 (store_float16), half the bytes. The float32
# graph is first held to TOLERANCE (the conversion); the written one to FLOAT16_TOLERANCE, with
# every label and wrong-input verdict of the check images the same. float16 keeps 11 bits (5e-4
# relative per weight); over a network's depth that moves outputs by about 1e-2 of their scale.
# Measured on chest CT's Lite0 over all 748 slices of its data set: the calibrated probabilities
# by 0.005 at most (logits 0.020 of the temperature), features 0.004, maps 0.013 of their scale,
# no label or verdict changed. On the check's made-up images the logits move further (0.12 of
# the temperature on noise, whose logits are large) while the probabilities, saturated there,
# move 0.005: so the probabilities are bounded, what a visitor reads, not the logits.
WEIGHTS = get_args(StoredWeights)  # ("float32", "float16"), as the contract names them
FLOAT16_MIN_VALUES = 4096
FLOAT16_TOLERANCE = {"probabilities": 0.02, "features": 0.02, "maps": 0.02}

def _need_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as e:
        raise ExportError(f"the ONNX export needs tf2onnx, onnx and onnxruntime ({e.name} is missing): "
                          f"{REQUIREMENTS}") from None


def versions():
    """The libraries the export and its check ran with."""
    import keras
    import onnx
    import onnxruntime
    import tensorflow as tf
    import tf2onnx

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "tf2onnx": tf2onnx.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def web_model(model):
    """The Keras model image -> {"logits", "features", "maps"}, from the bundle model's own layers
    (see the module's docstring); raises ExportError for a network without a softmax head on
    global average pooling."""
    import keras

    from lungclf import heatmap

    try:
        maps_model, kernel, bias = heatmap.cam_head(model)
    except heatmap.NoHeatmap as e:
        raise ExportError(f"cannot export the heatmap: {e}") from None
    kernel, bias = np.asarray(kernel), np.asarray(bias)
    image = maps_model.inputs[0]
    fmap, features = maps_model(image)
    dense = keras.layers.Dense(kernel.shape[1], name="logits")
    conv = keras.layers.Conv2D(kernel.shape[1], 1, use_bias=False, name="maps")
    logits, maps = dense(features), conv(fmap)
    dense.set_weights([kernel, bias])
    conv.set_weights([kernel[None, None]])
    web = keras.Model(image, {"logits": logits, "features": features, "maps": maps}, name="web")
    size = image.shape[1]
    web(np.zeros((1, size, size, 3), np.float32))  # Keras exports only a model that was called
    return web


def to_onnx(model, path, opset=OPSET, source_sha256=None):
    """Write the bundle model's web view (web_model) to path as ONNX; returns the path.

    Keras's export (tf2onnx) writes the graph in TensorFlow's NHWC layout with a Transpose
    around each convolution, which tf2onnx's own transpose optimiser then removes; on a network
    with a scalar Add after a transpose (the CT models' grey conversion before the rescaling)
    that optimiser fails (tf2onnx 1.17.0: `max() arg is an empty sequence`) and 102 Transposes
    stay. So the graph then goes through ONNX Runtime's BASIC graph optimisations, offline:
    only standard ONNX operators in, standard operators out (transposes cancelled, constants
    folded, batch norm folded into the convolutions, MatMul + Add into Gemm), portable to any
    runtime, unlike the extended levels' fused kernels. The browser would do the same at every
    page load; done here, it is done once and checked."""
    import logging

    import onnx
    import onnxruntime as ort

    _need_onnx()
    web = web_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "keras.onnx")
        quiet = logging.getLogger("tf2onnx.optimizer")  # its failed transpose pass, see above
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings():  # Keras's numpy 2 patch of tf2onnx touches np.object
                warnings.simplefilter("ignore", FutureWarning)
                web.export(raw, format="onnx", opset_version=opset, verbose=False)
        except Exception as e:  # noqa: BLE001 - any converter failure: one line, not a traceback
            reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            raise ExportError(f"Keras's ONNX export failed: {reason}") from None
        finally:
            quiet.setLevel(level)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = os.path.join(tmp, "basic.onnx")
        ort.InferenceSession(raw, options, providers=["CPUExecutionProvider"])
        proto = onnx.load(options.optimized_model_filepath)
    outputs = [o.name for o in proto.graph.output]
    if sorted(outputs) != sorted(OUTPUTS) or len(proto.graph.input) != 1:
        raise ExportError(f"the exported graph has inputs {[i.name for i in proto.graph.input]} and "
                          f"outputs {outputs}; expected one input and {list(OUTPUTS)}")
    domains = {n.domain for n in proto.graph.node}
    if domains - {"", "ai.onnx"}:
        raise ExportError(f"the optimised graph uses operators outside standard ONNX: {sorted(domains)}")
    # ONNX Runtime declares every domain it knows; keep the one the graph uses.
    used = [o for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    del proto.opset_import[:]
    proto.opset_import.extend(used)
    for value in list(proto.graph.input) + list(proto.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = "batch"  # tf2onnx names a free dimension unk__N
    proto.doc_string = ("image (batch, S, S, 3) float32 0..255 -> logits (batch, C), features (batch, D), "
                        "maps (batch, h, w, C); exported by python -m training.export")
    del proto.metadata_props[:]
    if source_sha256:
        entry = proto.metadata_props.add()
        entry.key, entry.value = "model.keras sha256", source_sha256
    canonical_names(proto)
    onnx.checker.check_model(proto, full_check=True)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString(deterministic=True))
    return path


def canonical_names(proto):
    """Name the graph's constants by their content and its intermediate tensors by their order,
    in place, so the same bundle exports to the same bytes (and sha256): tf2onnx shares equal
    constants under whichever name Python's per-process string hashing meets first, and lists
    them in that order, and numbers the nodes it adds and the graph's doc string with counters
    of the process. Nodes are named by their place and their Keras layer's name (tf2onnx's
    counters dropped); the graph's inputs and outputs keep their names; nothing that is
    computed changes."""
    from onnx import AttributeProto, TensorProto, numpy_helper

    graph = proto.graph
    if any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return proto  # subgraphs (If, Loop) name outer tensors too; these networks have none
    keep = {v.name for v in list(graph.input) + list(graph.output)}
    names = {}
    for t in graph.initializer:
        a = numpy_helper.to_array(t)
        digest = hashlib.sha256(f"{t.data_type} {list(t.dims)} ".encode() + a.tobytes()).hexdigest()
        names[t.name] = f"const_{digest[:16]}"
    count = 0
    for node in graph.node:
        for out in node.output:
            if out and out not in keep and out not in names:
                names[out] = f"t{count}"
                count += 1
    for node in graph.node:
        node.input[:] = [names.get(i, i) for i in node.input]
        node.output[:] = [names.get(o, o) for o in node.output]
    unique = {}
    for t in graph.initializer:
        t.name = names[t.name]
        unique.setdefault(t.name, TensorProto.FromString(t.SerializeToString()))
    del graph.initializer[:]
    graph.initializer.extend(unique[k] for k in sorted(unique))
    del graph.value_info[:]  # shapes of intermediates, by their old names; runtimes infer them
    for i, node in enumerate(graph.node):
        node.name = f"{i}/{re.sub(r'__[0-9]+', '', node.name) or node.op_type}"
    graph.doc_string = ""  # "converted from __inference___call___<process counter>"
    return proto


def store_float16(path, min_values=FLOAT16_MIN_VALUES):
    """Rewrite the ONNX file at path with every float32 constant of at least min_values values
    stored as float16, each read back by a Cast to float32 before the graph's first node; the
    computation stays float32 (runtimes fold the Casts once, when they load the file: the
    forward pass costs what it did). Smaller constants (biases, the depthwise kernels of
    narrow layers) stay float32: on chest CT's Lite0 they are 1% of the bytes, and storing
    them too moved the logits four times as far. Returns the number of constants stored."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load(path)
    graph = proto.graph
    keep, casts, stored = [], [], 0
    for t in graph.initializer:
        a = numpy_helper.to_array(t)
        if t.data_type != TensorProto.FLOAT or a.size < min_values:
            keep.append(t)
            continue
        keep.append(numpy_helper.from_array(a.astype(np.float16), f"{t.name}_float16"))
        casts.append(helper.make_node("Cast", [f"{t.name}_float16"], [t.name], name=f"float16/{t.name}",
                                      to=TensorProto.FLOAT))
        stored += 1
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(proto, full_check=True)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString(deterministic=True))
    return stored


def store_keras_float16(src, dst, min_values=FLOAT16_MIN_VALUES):
    """Write a copy of the Keras file src to dst with every float32 weight of at least
    min_values values stored as float16 (in the .keras zip's model.weights.h5; the config and
    the smaller weights as they are). Keras reads them back into its float32 variables, so the
    network computes in float32 on weights rounded to 11 bits, the same rule as store_float16's
    for model.onnx: half the bytes. Returns (weights stored as float16, of them rounded now: 0
    when src was written by this function already, and dst then has src's bytes)."""
    import zipfile

    import h5py

    stored = rounded = 0
    with zipfile.ZipFile(src) as z:
        entries = [(info, z.read(info.filename)) for info in z.infolist()]
    weights = io.BytesIO()
    with h5py.File(io.BytesIO(dict((i.filename, b) for i, b in entries)["model.weights.h5"]), "r") as fi, \
            h5py.File(weights, "w", track_order=False) as fo:
        fo.attrs.update(fi.attrs)

        def copy(name, obj):
            nonlocal stored, rounded
            if isinstance(obj, h5py.Group):
                fo.require_group(name).attrs.update(obj.attrs)
                return
            a = obj[()]
            if a.dtype in (np.float32, np.float16) and a.size >= min_values:
                stored += 1
                rounded += a.dtype == np.float32
                a = a.astype(np.float16)
            fo.create_dataset(name, data=a).attrs.update(obj.attrs)

        fi.visititems(copy)
    if not rounded:  # the same weights: keep the file's bytes (and sha256)
        import shutil

        shutil.copyfile(src, dst)
        return stored, rounded
    with zipfile.ZipFile(dst, "w") as z:
        for info, data in entries:
            z.writestr(info, weights.getvalue() if info.filename == "model.weights.h5" else data)
    return stored, rounded


# ---------------------------------------------------------------- the images it is checked on

def made_images(size, seed=0):
    """{name: (size, size, 3) float32 0..255}: inputs far from the examples, made here, so the check
    also covers what a visitor may drop on the page: noise (colour, grey, blurred), flat (black, white, grey, a colour),
    gradients, stripes at the pixel scale, saturated colours, and made files of odd kinds
    (grey, RGBA, 16-bit grey, palette PNG, a large JPEG, a small one) decoded by
    lungclf.preprocess like any upload."""
    import cv2
    from PIL import Image

    from lungclf.preprocess import load_image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1)
    out = {
        "noise": rng.uniform(0, 255, (size, size, 3)),
        "noise_grey": np.repeat(rng.uniform(0, 255, (size, size, 1)), 3, axis=2),
        "noise_blurred": cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 3),
        "black": np.zeros((size, size, 3)),
        "white": np.full((size, size, 3), 255.0),
        "grey": np.full((size, size, 3), 128.0),
        "flat_colour": np.broadcast_to(rng.uniform(0, 255, 3), (size, size, 3)),
        "gradient": np.stack([255 * xx, 255 * yy, 255 * (1 - xx)], axis=2),
        "stripes": np.repeat(((np.arange(size) % 2) * 255.0)[None, :, None], size, axis=0).repeat(3, axis=2),
        "saturated": np.stack([(xx > 0.5) * 255.0, (yy > 0.5) * 255.0, ((xx + yy) % 0.5 > 0.25) * 255.0], axis=2),
    }
    disk = np.hypot(xx - 0.5, yy - 0.5) < 0.4
    scan = (disk * rng.normal(140, 40, (size, size))).clip(0, 255)
    files = {
        "file_grey_png": ("PNG", Image.fromarray(scan.astype(np.uint8), "L")),
        "file_rgba_png": ("PNG", Image.fromarray(np.dstack([rng.integers(0, 256, (size, size, 3)),
                                                            (disk * 255)]).astype(np.uint8), "RGBA")),
        "file_16bit_png": ("PNG", Image.fromarray((scan * 257).astype(np.uint16))),
        "file_palette_png": ("PNG", Image.fromarray(rng.integers(0, 256, (size, size, 3)).astype(np.uint8))
                             .convert("P", palette=Image.ADAPTIVE, colors=16)),
        "file_large_jpeg": ("JPEG", Image.fromarray(cv2.resize(rng.integers(0, 256, (64, 64, 3)).astype(np.uint8),
                                                               (4 * size, 3 * size)))),
        "file_small_jpeg": ("JPEG", Image.fromarray(rng.integers(0, 256, (40, 56, 3)).astype(np.uint8))),
    }
    for name, (fmt, im) in files.items():
        buf = io.BytesIO()
        im.save(buf, fmt)
        out[name] = load_image(buf.getvalue(), size)
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


def check_images(folder, size):
    """(names, x (N, size, size, 3) float32): the bundle's examples/, then made_images."""
    from lungclf.preprocess import IMAGE_EXTENSIONS, load_image

    examples = os.path.join(folder, "examples")
    names = sorted(f for f in os.listdir(examples) if f.lower().endswith(IMAGE_EXTENSIONS)) \
        if os.path.isdir(examples) else []
    images = [load_image(os.path.join(examples, f), size) for f in names]
    made = made_images(size)
    return ["examples/" + f for f in names] + list(made), np.stack(images + list(made.values()))


# ---------------------------------------------------------------- the check

def compare(bundle, path, names=None, x=None):
    """ONNX Runtime (CPU) on the file at path, one image at a time and all as one batch, against
    explain_fn on the same images (by default check_images). Returns {"images",
    "largest_difference" (absolute, per output), "scale" (the smallest temperature for logits;
    the largest absolute value, at least 1, for features and maps), "relative_difference"
    (largest / scale: what TOLERANCE bounds), "probabilities" (largest difference of the
    calibrated probabilities), "same_label" (images with the same top class), "wrong_input"
    (largest difference of the feature distance, and images with the same verdict by it),
    "worst" (the output nearest its tolerance and the image where it is largest)}."""
    import onnxruntime as ort

    from lungclf.inference import calibrate, explain_fn

    if x is None:
        names, x = check_images(bundle.folder, bundle.input_size)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the same sums in the same order however many cores
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    order = [o.name for o in session.get_outputs()]

    def run(batch):
        return dict(zip(order, session.run(None, {name: batch})))

    keras_out = dict(zip(OUTPUTS, (t.numpy() for t in explain_fn(bundle.model)(x))))
    one = [run(x[i:i + 1]) for i in range(len(x))]
    ort_one = {k: np.concatenate([o[k] for o in one]) for k in OUTPUTS}
    ort_all = run(x)
    largest, scale, relative = {}, {}, {}
    temperatures = [bundle.temperature] + ([bundle.meta.tta.temperature] if bundle.meta.tta.temperature else [])
    for k in OUTPUTS:
        ref = keras_out[k].astype(np.float64)
        largest[k] = max(float(np.abs(ort_one[k] - ref).max()), float(np.abs(ort_all[k] - ref).max()))
        scale[k] = min(temperatures) if k == "logits" else max(1.0, float(np.abs(ref).max()))
        relative[k] = largest[k] / scale[k]
    t = bundle.temperature
    p_keras, p_onnx = calibrate(keras_out["logits"], t), calibrate(ort_one["logits"], t)
    result = {
        "images": len(x),
        "largest_difference": largest,
        "scale": scale,
        "relative_difference": relative,
        "probabilities": float(np.abs(p_keras - p_onnx).max()),
        "same_label": int((p_keras.argmax(1) == p_onnx.argmax(1)).sum()),
    }
    reference = getattr(bundle, "reference", None)
    if reference is not None:
        d_keras, d_onnx = reference.distances(keras_out["features"]), reference.distances(ort_one["features"])
        result["wrong_input"] = {"largest_distance_difference": float(np.abs(d_keras - d_onnx).max()),
                                 "threshold": float(reference.threshold),
                                 "same_verdict": int(((d_keras > reference.threshold)
                                                      == (d_onnx > reference.threshold)).sum())}
    worst = max(OUTPUTS, key=lambda k: relative[k] / TOLERANCE[k])
    result["worst"] = {"output": worst, "image": names[int(np.abs(ort_one[worst] - keras_out[worst]).reshape(
        len(x), -1).max(1).argmax())] if names else None}
    return result


def export(folder, out=None, opset=OPSET, tolerance=None, weights=None):
    """Export the bundle at folder to out (default folder/model.onnx) and check it; returns the
    dict for metadata.json. weights: "float32" or "float16"; None: the bundle recipe's
    stored_weights (float32 for a bundle without a recipe). With float16, the bundle's own
    model.keras is rounded too (store_keras_float16; not when out is elsewhere), the ONNX file
    exported from it, and both checked against the trained network (`trained`); the result's
    "keras" block says what record() writes into metadata.json's model block. Raises
    ExportError when ONNX Runtime and Keras differ by more than the tolerance, or float16
    weights change a label or a verdict (no file is then written or changed), or when the
    export itself fails."""
    from dataclasses import replace

    import keras

    from lungclf.bundle import BundleError, load, sha256
    from training.recipe import Recipe, RecipeError

    tolerance = {**TOLERANCE, **(tolerance or {})}
    _need_onnx()
    try:
        bundle = load(folder)
    except BundleError as e:
        raise TrainingError(f"refused: {e}") from None
    if weights is None:
        try:
            weights = Recipe.from_bundle(bundle.folder).stored_weights
        except RecipeError:
            weights = "float32"
    if weights not in WEIGHTS:
        raise ExportError(f"weights must be one of {', '.join(WEIGHTS)}, not {weights!r}")
    out = out or os.path.join(bundle.folder, FILE)
    keras_path = os.path.join(bundle.folder, "model.keras")
    own = os.path.abspath(out) == os.path.abspath(os.path.join(bundle.folder, FILE))
    tmp, keras_tmp = f"{out}.partial", os.path.join(bundle.folder, "model.partial.keras")  # Keras reads .keras only
    conversion, trained, keras_block = None, None, None
    source = bundle  # the Keras network the ONNX file is exported from and checked against
    try:
        if weights == "float16" and own:
            stored, rounded = store_keras_float16(keras_path, keras_tmp)
            keras_block = {"weights": "float16", "sha256": sha256(keras_tmp), "bytes": os.path.getsize(keras_tmp),
                           "stored": stored}
            if rounded:  # else an earlier export stored them: the same file
                source = replace(bundle, model=keras.saving.load_model(keras_tmp, safe_mode=True))
        to_onnx(source.model, tmp, opset, keras_block["sha256"] if keras_block else bundle.meta.model.sha256)
        names, x = check_images(bundle.folder, bundle.input_size)
        check = compare(source, tmp, names, x)
        _within(check, tolerance, folder)
        if weights == "float16":
            # the conversion is held to the float32 tolerance above; then the stored weights,
            # against model.keras as written and against the network as trained
            conversion = {k: check[k] for k in ("largest_difference", "relative_difference")} | {"tolerance": tolerance}
            store_float16(tmp)
            check = compare(source, tmp, names, x)
            tolerance = {**FLOAT16_TOLERANCE}
            _within(check, tolerance, folder, "with its weights in float16 ")
            against = compare(bundle, tmp, names, x) if source is not bundle else check
            _within(against, tolerance, folder, "with its weights in float16 ", "the network as trained")
            same = against.get("wrong_input", {}).get("same_verdict", against["images"])
            if against["same_label"] < against["images"] or same < against["images"]:
                raise ExportError(f"{folder}: float16 weights change {against['images'] - against['same_label']} "
                                  f"label(s) and {against['images'] - same} wrong-input verdict(s) of "
                                  f"{against['images']} images; nothing written (keep stored_weights = \"float32\")")
            trained = {"relative_difference": against["relative_difference"],
                       "probabilities_difference": against["probabilities"], "same_label": against["same_label"],
                       **({"wrong_input": against["wrong_input"]} if "wrong_input" in against else {})}
            if source is bundle and bundle.meta.model.weights == "float16":
                # model.keras was rounded by an earlier export: that export's check, if the file is the same
                before = bundle.meta.raw.get("onnx") or {}
                trained = before.get("trained") if before.get("sha256") == sha256(tmp) else None
        os.replace(tmp, out)
        if keras_block:
            os.replace(keras_tmp, keras_path)
    finally:
        for path in (tmp, keras_tmp):
            if os.path.exists(path):
                os.remove(path)
    return {
        "file": os.path.basename(out),
        "sha256": sha256(out),
        "bytes": os.path.getsize(out),
        "opset": opset,
        "weights": weights,
        "inputs": {"image": ["batch", bundle.input_size, bundle.input_size, 3]},
        "outputs": list(OUTPUTS),
        "source_sha256": keras_block["sha256"] if keras_block else bundle.meta.model.sha256,
        "checked_on": check["images"],
        "largest_difference": check["largest_difference"],
        "scale": check["scale"],
        "relative_difference": check["relative_difference"],
        "tolerance": tolerance,
        **({"conversion": conversion} if conversion else {}),
        **({"trained": trained} if trained else {}),
        "probabilities_difference": check["probabilities"],
        "same_label": check["same_label"],
        **({"wrong_input": check["wrong_input"]} if "wrong_input" in check else {}),
        **({"keras": keras_block} if keras_block else {}),
        "versions": versions(),
    }


def _within(check, tolerance, folder, what="", keras="Keras"):
    """Raise ExportError when a difference compare() measured passes its tolerance (NaN fails
    too): per output relative to its scale, "probabilities" as they are."""
    got = check["relative_difference"] | {"probabilities": check["probabilities"]}
    over = {k: got[k] for k in tolerance if not got[k] <= tolerance[k]}
    if over:
        raise ExportError(
            f"{folder}: ONNX Runtime {what}and {keras} differ by more than the tolerance on "
            + ", ".join(f"{k} ({v:.3g}" + (f" of their scale {check['scale'][k]:.3g}" if k in OUTPUTS else "")
                        + f", > {tolerance[k]:g})" for k, v in over.items())
            + f", worst on {check['worst']['image']}; nothing written")


def record(folder, result):
    """Write export()'s result into folder/metadata.json as its `onnx` block (lungclf.schema.OnnxFile),
    which makes the app serve model.onnx and the bundle's verify check its sha256; a rounded
    model.keras (its "keras" block) into the `model` block; the weights it stored into
    recipe.json's stored_weights (rewritten in today's names); and re-render the card; returns
    the metadata written."""
    from lungclf.bundle import BundleError, verify, write_json

    from training.recipe import Recipe

    path = os.path.join(folder, "metadata.json")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    result = dict(result)
    keras = result.pop("keras", None)
    meta["onnx"] = result
    if keras:
        meta["model"].update(sha256=keras["sha256"], bytes=keras["bytes"], weights=keras["weights"])
    if meta.get("recipe"):  # the recipe as exported (--weights overrides its stored_weights)
        recipe = Recipe.from_bundle(folder)
        meta["recipe"] = recipe.replace(stored_weights=result.get("weights", "float32")).write(folder)
    write_json(path, meta)
    try:
        verify(folder)
    except BundleError as e:
        raise ExportError(f"{folder}: metadata.json refused after recording the export: {e}") from None
    from training.card import write

    write(folder)  # the card's line on the served file
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", help="bundle folder (or Hub repo id[@revision])")
    p.add_argument("--out", help=f"where to write the ONNX file (default BUNDLE/{FILE})")
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    p.add_argument("--weights", choices=WEIGHTS,
                   help="store the large weights as float16 (half the bytes) or float32 (default: the "
                        "bundle recipe's stored_weights, else float32)")
    args = p.parse_args(argv)
    with cli_errors():
        result = export(args.bundle, args.out, args.opset, weights=args.weights)
        if args.out is None:
            record(args.bundle, result)
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
