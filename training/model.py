"""The networks, built with plain Keras 3 layers (no Lambda, so bundles load in safe mode).

    compact  the default: four conv stages with batch norm, global average pooling,
             dropout and a softmax head; about 0.3M parameters, a ~1 MB file
    seed     the seed projects' design (3 conv + Flatten + Dense 256/128), kept only as
             the speed and size anchor for scripts/benchmark_serving.py

Inputs are float32 images with values 0..255 (see training.preprocess); the model scales
them itself.
"""

import keras
from keras import layers

ARCHITECTURES = ("compact", "seed")


def _conv_bn(x, filters, kernel=3, strides=1):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=0.9)(x)  # small data sets: few steps per epoch
    return layers.ReLU()(x)


def compact(input_size, n_classes, width=32, dropout=0.3):
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = _conv_bn(x, width, strides=2)
    for i, mult in enumerate((1, 2, 4, 8)):
        x = _conv_bn(x, width * mult)
        x = _conv_bn(x, width * mult)
        if i < 3:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="compact")


def seed(input_size, n_classes):
    """The anchor: the seed projects' Conv 32-5x5/64/128 + Flatten + Dense design."""
    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
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
    return keras.Model(inputs, outputs, name="seed")


def build(name, input_size, n_classes, width=32):
    if name == "compact":
        return compact(input_size, n_classes, width=width)
    if name == "seed":
        return seed(input_size, n_classes)
    raise SystemExit(f"Unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
