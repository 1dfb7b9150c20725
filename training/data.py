"""Find the labelled images in a folder and decode them for training.

Two layouts are understood:

    DIR/<class>/*                     class folders
    DIR/{train,valid,test}/<class>/*  a published split (`val`, `validation` work too)

Unreadable files are listed and skipped, never silently.

    python -m training.data DIR       # print what was found, per class and split
"""

import argparse
import os
from dataclasses import dataclass

import numpy as np

from lungclf.preprocess import IMAGE_EXTENSIONS, ImageError, load_image
from training.errors import DataError, cli_errors

SPLIT_NAMES = {"train": "train", "valid": "val", "val": "val", "validation": "val", "test": "test"}


@dataclass
class Item:
    """One image file: path relative to the data folder, its label and published split."""

    path: str
    label: str
    published_split: str | None = None


def _class_dirs(root):
    return sorted(
        d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
    )


def scan(root):
    """List the image files under root as Items (sorted, so the order is reproducible);
    DataError when root is no folder or holds no images."""
    if not os.path.isdir(root):
        raise DataError(f"No such data folder: {root}")
    top = _class_dirs(root)
    published = [d for d in top if d.lower() in SPLIT_NAMES]
    if published and len(published) == len(top):
        parts = [(os.path.join(d, c), c, SPLIT_NAMES[d.lower()])
                 for d in published for c in _class_dirs(os.path.join(root, d))]
    else:
        parts = [(c, c, None) for c in top]
    items = []
    for rel_dir, label, split in parts:
        for dirpath, _, files in os.walk(os.path.join(root, rel_dir)):
            for name in sorted(files):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    items.append(Item(rel.replace(os.sep, "/"), label, split))
    items.sort(key=lambda it: it.path)
    if not items:
        raise DataError(
            f"No images found in {root}. Expected DIR/<class>/* or DIR/train/<class>/* "
            f"with files ending in {', '.join(IMAGE_EXTENSIONS)}."
        )
    return items


def load_images(root, items, size, progress=True):
    """Decode items with the one preprocessing path -> (uint8 array N x S x S x 3, kept, bad).

    Images are kept as uint8 to save memory; `load_image` gives float32 0..255 and the
    cast back is exact. `bad` lists (path, reason) for files that could not be decoded.
    """
    from keras.utils import Progbar

    bar = Progbar(len(items), unit_name="image") if progress else None
    arrays, kept, bad = [], [], []
    for i, it in enumerate(items):
        try:
            arrays.append(load_image(os.path.join(root, it.path), size).astype(np.uint8))
            kept.append(it)
        except ImageError as e:
            bad.append((it.path, str(e)))
        if bar and ((i + 1) % 50 == 0 or i + 1 == len(items)):
            bar.update(i + 1)
    x = np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.uint8)
    return x, kept, bad


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="data folder (class folders or train/valid/test/<class>)")
    args = p.parse_args()
    with cli_errors():
        items = scan(args.data)
    from collections import Counter

    counts = Counter((it.published_split or "-", it.label) for it in items)
    for (split, label), n in sorted(counts.items()):
        print(f"{split:6s} {label:30s} {n}")
    print(f"{len(items)} images")


if __name__ == "__main__":
    main()
