"""Synthetic images, data sets and bundles for the tests, the benchmarks and the soak.

Everything here is drawn from a seed: no real slide or scan, nothing derived from the
data in ../shared/data. A library, not a command:

    from scripts.synthetic import blob_image, make_dataset
    blob_image("red", seed=1).save("red.png")            # a learnable class-coloured texture
    make_dataset("/tmp/data", per_class=20)              # class folders red/ green/ blue/

Images: blob_image (class colour + noise), he_tile (H&E-like tile), tissue (textured
ellipses), tissue_jpeg (JPEG bytes of smooth colour noise, 224 px like an LC25000 tile),
picture (an asymmetric picture of flat colours, so rotation and flips show), halves (two
class colours side by side, so mirroring changes what a model sees) and preset_image
(images shaped like a training preset's data), blob_task (noise, with one red blob in class 1:
where the evidence is, for the heatmap). Data sets: make_dataset, make_preset_dataset.
Bundles: write_bundle (a Keras model plus metadata copied from a real bundle).
"""

import json
import os
import shutil

import numpy as np
from PIL import Image

COLOURS = {"red": (200, 60, 60), "green": (60, 180, 80), "blue": (60, 80, 200)}
PALETTE = {"red": (190, 70, 90), "green": (80, 160, 90), "blue": (70, 90, 190)}


def blob_image(colour, seed, size=48):
    """A learnable test image: noisy texture around a class colour (COLOURS)."""
    rng = np.random.default_rng(seed)
    a = np.array(COLOURS[colour], np.float32) + rng.normal(0, 25, (size, size, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def blob_task(n, size=64, seed=0):
    """Images of colour noise (a texture everywhere, so any filter responds everywhere);
    class 1 (every other image) has one bright red blob of radius 6 at a random place,
    class 0 none. Returns (x float32 0..255 (n, size, size, 3), y, blob centres (row, col)
    or None)."""
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


def halves(left, right, seed, size=64):
    """blob_image(left) on the left half and blob_image(right) on the right half."""
    parts = [np.asarray(blob_image(c, seed, size))[:, : size // 2] for c in (left, right)]
    return Image.fromarray(np.concatenate(parts, axis=1))


def he_tile(seed, size=256):
    """A histology-like image (pink stroma, purple nuclei): what the browser test drops on
    the page and the README screenshot shows."""
    rng = np.random.default_rng(seed)
    a = np.empty((size, size, 3), np.float32)
    a[:] = (232, 170, 200)
    a += rng.normal(0, 12, a.shape)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(size // 4):
        (cy, cx), r = rng.uniform(0, size, 2), rng.uniform(3, 9)
        nucleus = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        a[nucleus] = np.array((95, 55, 140)) + rng.normal(0, 10, (nucleus.sum(), 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def tissue(colour, seed, size=128):
    """A textured tile: overlapping ellipses in shades of a class colour (PALETTE)."""
    import cv2

    rng = np.random.default_rng(seed)
    a = np.full((size, size, 3), 235, np.uint8)
    base = np.array(PALETTE[colour])
    for _ in range(45):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(3, 14, 2))
        shade = np.clip(base * rng.uniform(0.4, 1.2) + rng.normal(0, 20, 3), 0, 255)
        cv2.ellipse(a, centre, axes, float(rng.uniform(0, 180)), 0, 360, tuple(float(v) for v in shade), -1)
    a = cv2.GaussianBlur(a, (0, 0), 0.8)
    return Image.fromarray(np.clip(a + rng.normal(0, 4, a.shape), 0, 255).astype(np.uint8))


def tissue_jpeg(seed, side=224):
    """JPEG bytes of pink-purple smooth colour noise, a different picture for every seed:
    about the size of an LC25000 tile file."""
    import cv2

    rng = np.random.default_rng(seed)
    a = cv2.GaussianBlur(rng.integers(0, 256, (side, side, 3), np.uint8), (0, 0), 2)
    a = np.clip(a.astype(np.float32) * [1.0, 0.6, 1.0] + [40, 0, 60], 0, 255).astype(np.uint8)
    return cv2.imencode(".jpg", a[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def picture(h=60, w=40):
    """An asymmetric RGB array of a few flat colours (a palette holds it exactly): a red
    top-left block and a green bottom-right block on blue, so turns and flips show."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:] = (90, 140, 200)
    a[: h // 3, : w // 2] = (230, 30, 30)
    a[h // 2:, w // 2:] = (30, 200, 60)
    return a


def grey_picture(h=60, w=40):
    """picture() as 8-bit grey (the mean of its channels)."""
    return picture(h, w).mean(axis=2).astype(np.uint8)


def make_dataset(root, per_class=16, layout="folders", duplicates=0):
    """Write blob_image data: class folders red/ green/ blue/, or train/valid/test/<class>
    when layout="split"; `duplicates` byte-identical copies of image 0 are added per class."""
    for ci, colour in enumerate(COLOURS):
        for i in range(per_class):
            split = ("train", "valid", "test")[i % 3] if layout == "split" else ""
            folder = os.path.join(root, split, colour)
            os.makedirs(folder, exist_ok=True)
            blob_image(colour, seed=ci * 1000 + i).save(os.path.join(folder, f"{colour}_{i}.png"))
        sub = "train" if layout == "split" else ""  # image 0 of each class is in train
        for d in range(duplicates):
            shutil.copy(os.path.join(root, sub, colour, f"{colour}_0.png"),
                        os.path.join(root, sub, colour, f"{colour}_copy{d}.png"))
    return root


# What each training preset's made-up data looks like.
PRESET_KINDS = {"lc25000": "tile", "iq-othnccd": "grey-slice", "chest-ct": "rgba-slice"}


def preset_image(kind, class_index, seed):
    """A learnable image of a PRESET_KINDS kind: the class sets a tile's stain or the size
    of a slice's bright blob (grey 64 x 72 slices, or RGBA slices of varying size)."""
    rng = np.random.default_rng(seed)
    if kind == "tile":
        stains = np.array([(200, 120, 170), (230, 190, 210), (140, 70, 150)], np.float32)
        a = stains[class_index] + rng.normal(0, 18, (64, 64, 3))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    h, w = (64, 72) if kind == "grey-slice" else rng.integers(56, 96, size=2)
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h / 2 + rng.integers(-6, 7), w / 2 + rng.integers(-6, 7)
    r = min(h, w) * (0.12 + 0.09 * class_index)
    a = 40 + 170 * (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r) + rng.normal(0, 12, (h, w))
    grey = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L")
    return grey if kind == "grey-slice" else grey.convert("RGBA")


def make_preset_dataset(root, name, layout, per_class=12):
    """preset_image data under training preset `name`'s class names; layout "folders" or
    "split" (train/valid/test/<class>)."""
    from training import presets

    kind = PRESET_KINDS[name]
    ext = ".png" if kind == "rgba-slice" else ".jpg"
    for ci, label in enumerate(presets.PRESETS[name]["classes"]):
        for i in range(per_class):
            split = ("train", "train", "valid", "test")[i % 4] if layout == "split" else ""
            folder = os.path.join(root, split, label)
            os.makedirs(folder, exist_ok=True)
            preset_image(kind, ci, seed=ci * 1000 + i).save(os.path.join(folder, f"{label}_{i}{ext}"))
    return root


def write_bundle(folder, model, template, name, architecture="custom", **changes):
    """A bundle made of `model` (a Keras model) and `template`'s classes, card and metadata
    (a real bundle), with the name, the preprocessing input size, the model fields and
    sha256, and any other top-level metadata `changes` replaced. Returns the folder."""
    from lungclf.bundle import sha256, write_json
    from lungclf.schema import migrate, preprocessing

    os.makedirs(folder, exist_ok=True)
    meta = migrate(json.load(open(os.path.join(template, "metadata.json"))))  # as the current schema
    for key in ("wrong_input", "examples", "measured", "recipe", "baseline", "cross_validation", "series", "onnx"):
        # the template network's, not this model's
        meta.pop(key, None)
    path = os.path.join(folder, "model.keras")
    model.save(path)
    colour_mode = meta["preprocessing"]["colour_mode"]
    meta.update(name=name, preprocessing=preprocessing(model.inputs[0].shape[1], colour_mode), **changes)
    meta["model"] = {"architecture": architecture, "width": None,
                     "parameters": int(model.count_params()), "file": "model.keras",
                     "sha256": sha256(path), "bytes": os.path.getsize(path)}
    write_json(os.path.join(folder, "metadata.json"), meta)
    for f in ("classes.json", "README.md"):
        shutil.copy(os.path.join(template, f), os.path.join(folder, f))
    return folder
