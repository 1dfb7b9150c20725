"""How well the heatmap points at the evidence, on a task where the evidence is known.

    python scripts/heatmap_pointing.py                  # 8 training seeds, about 4 minutes
    python scripts/heatmap_pointing.py --seeds 3 --json pointing.json

The task (scripts/synthetic.blob_task): colour-noise images, class 1 with one red blob of
radius 6 somewhere, class 0 without. For each seed a compact network (the from-scratch
`--arch compact`, width 8, 64 px, so a 4 x 4 map of 16 px cells) is trained on 600 images,
then for 30 held-out class-1 images the class-1 map (lungclf.inference.explain_fn, what the
app shows) is scored two ways:

    pointing   the share of images whose hottest cell's centre lies within 16 px (one
               cell) of the blob's centre (the "pointing game", Zhang et al. 2016)
    rank       the mean over images of the share of the other cells colder than the
               blob's cell (0.5 is chance, 1 is always the hottest)

The first line is a network whose map is known (local_evidence_model: redness averaged per
cell, hand-set weights): it must point at every blob, so a failure there is a bug in the
map, not in the network. Read the trained networks' lines as what a from-scratch network's
heatmap can be trusted for.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from scripts.synthetic import blob_task  # noqa: E402

CELL = 16  # pixels per map cell at 64 px


def local_evidence_model(size=64, cell=CELL):
    """A network whose class-1 map is the redness (R - (G + B) / 2, negative parts cut) of
    each cell x cell square: 1 x 1 convolution, average pooling, global average pooling, and
    a softmax layer that adds redness to class 1 and takes it from class 0. Nothing trained."""
    import keras

    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    redness = keras.layers.Conv2D(1, 1, activation="relu", name="redness")
    x = keras.layers.AveragePooling2D(cell)(redness(x))
    head = keras.layers.Dense(2, activation="softmax", name="head")
    model = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(x)))
    redness.set_weights([np.array([1.0, -0.5, -0.5], np.float32).reshape(1, 1, 3, 1), np.zeros(1, np.float32)])
    head.set_weights([np.array([[-4.0, 4.0]], np.float32), np.zeros(2, np.float32)])
    return model


def trained_model(seed, size=64, n=600, epochs=12):
    """The compact network trained on blob_task(n, seed=seed)."""
    import keras

    from training.model import build

    keras.utils.set_random_seed(seed)
    x, y, _ = blob_task(n, size=size, seed=seed)
    model = build("compact", size, 2, width=8)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0)
    return model


def scores(model, x, centres, size=64):
    """(pointing, rank) of the class-1 maps of images x (N, S, S, 3) with blobs at centres."""
    from lungclf.inference import explain_fn

    maps = explain_fn(model)(x.astype(np.float32))[2].numpy()[..., 1]
    step = size / maps.shape[1]
    hits, ranks = [], []
    for m, (cy, cx) in zip(maps, centres):
        r, c = np.unravel_index(np.argmax(m), m.shape)
        hits.append(np.hypot((r + 0.5) * step - cy, (c + 0.5) * step - cx) <= step)
        blob = m[int(cy // step), int(cx // step)]
        ranks.append((m < blob).sum() / (m.size - 1))
    return float(np.mean(hits)), float(np.mean(ranks))


def held_out(n=60, size=64, seed=999):
    """The class-1 images (and their blob centres) of a blob_task drawn from `seed`."""
    x, y, centres = blob_task(n, size=size, seed=seed)
    return x[y == 1], [c for c in centres if c is not None]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=8, help="training seeds 0 .. N-1 (default 8)")
    p.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = p.parse_args(argv)
    x, centres = held_out()
    rows = [{"network": "hand-set local evidence", "seed": None,
             **dict(zip(("pointing", "rank"), scores(local_evidence_model(), x, centres)))}]
    print(f"{'network':28s} {'seed':>4s} {'pointing':>8s} {'rank':>5s}")
    print(f"{rows[0]['network']:28s} {'-':>4s} {rows[0]['pointing']:8.2f} {rows[0]['rank']:5.2f}", flush=True)
    for seed in range(args.seeds):
        pointing, rank = scores(trained_model(seed), x, centres)
        rows.append({"network": "compact, trained", "seed": seed, "pointing": pointing, "rank": rank})
        print(f"{'compact, trained':28s} {seed:4d} {pointing:8.2f} {rank:5.2f}", flush=True)
    trained = rows[1:]
    if trained:
        summary = []
        for key in ("pointing", "rank"):
            v = [r[key] for r in trained]
            summary.append(f"{key} {np.median(v):.2f} (range {min(v):.2f}-{max(v):.2f})")
        print(f"trained, median of {len(trained)}: {', '.join(summary)}; chance 0.5")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
