"""Streaming input: images read, decoded and augmented as training asks for them.

Training used to decode every image into one array before the first step, so memory grew
with the data set (15,000 LC25000 tiles at 128 px are 740 MB as uint8; a slide collection
of 500,000 tiles would not fit). Here a tf.data pipeline holds only the file list and a few
batches in flight:

    paths -> [shard] -> [shuffle the paths] -> decode (lungclf.preprocess.load_image, in
    parallel threads) -> [cache decoded images on disk] -> batch -> augment -> prefetch

Decoding goes through the app's own path (`load_image`), so what the model sees in
training is what it sees when served. With `cache=FILE` the decoded images are written to
disk on the first epoch and read back from there afterwards (`tf.data.Dataset.cache`);
the paths are then shuffled once (seeded) before the cache and the decoded images in a
bounded buffer after it, so memory stays flat either way. `shard=(n, i)` keeps every n-th
path from the i-th: each process of a distributed job decodes only its own share.

    from training.stream import Files, training_dataset, logits
    files = Files("../shared/data/lc25000", paths, labels)
    ds = training_dataset(files, size=128, batch_size=32, augment=fn, seed=0)
    z = logits(model, files, size=128)           # evaluation: in file order, streamed

    python -m training.stream DATA_DIR [--size 128] [--batches 20]   # decode rate, memory
"""

import argparse
import os
import resource
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from lungclf.preprocess import ImageError, load_image
from training.errors import DataError, cli_errors

SHUFFLE_IMAGES = 1024  # decoded images in the shuffle buffer after a cache (128 px: 50 MB)


@dataclass
class Files:
    """Image files and their class ids: paths relative to root (as training.data.scan gives)."""

    root: str
    paths: list
    labels: np.ndarray  # int class id per path

    def __post_init__(self):
        self.labels = np.asarray(self.labels, np.int32)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")

    def shard(self, n, i):
        """Every n-th file from the i-th: process i's share of a job of n processes."""
        return Files(self.root, self.paths[i::n], self.labels[i::n])


@dataclass
class Seen:
    """What a pipeline decoded: a count per run, and the paths (to check a shard's share)."""

    paths: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, path, ok):
        with self.lock:
            (self.paths if ok else self.unreadable).append(path)


def _decoder(root, size, seen=None):
    """A tf.data map function: path -> (uint8 image, readable flag), through load_image."""
    import tensorflow as tf

    def decode(path):
        path = path.decode()
        try:
            x = load_image(os.path.join(root, path), size).astype(np.uint8)  # exact: 0..255 floats
            ok = True
        except (ImageError, OSError) as e:
            print(f"skipped unreadable {path}: {e}", flush=True)
            x, ok = np.zeros((size, size, 3), np.uint8), False
        if seen is not None:
            seen.add(path, ok)
        return x, ok

    def fn(path, label):
        x, ok = tf.numpy_function(decode, [path], (tf.uint8, tf.bool), stateful=True)
        x.set_shape((size, size, 3))
        ok.set_shape(())
        return x, label, ok

    return fn


def _readable(x, y, ok):
    return ok


def _image_and_label(x, y, ok):
    return x, y


def _as_float(x, y):
    import tensorflow as tf

    return tf.cast(x, tf.float32), y


def decoded(files, size, *, shuffle=False, seed=0, cache=None, seen=None):
    """Dataset of (uint8 image, label), one file at a time, decoded in parallel threads.

    Unreadable files are skipped with a printed line. `cache`: a file prefix for decoded
    images on disk (tf.data.Dataset.cache); shuffling then reorders decoded images in a
    buffer of SHUFFLE_IMAGES after the cache instead of the paths before it."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((list(files.paths), files.labels))
    if shuffle and not cache:
        ds = ds.shuffle(len(files.paths), seed=seed, reshuffle_each_iteration=True)
    elif shuffle:  # a fixed order into the cache, reshuffled in a bounded buffer after it
        ds = ds.shuffle(len(files.paths), seed=seed, reshuffle_each_iteration=False)
    ds = ds.map(_decoder(files.root, size, seen), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.filter(_readable).map(_image_and_label)
    if cache:
        os.makedirs(os.path.dirname(os.path.abspath(cache)), exist_ok=True)
        ds = ds.cache(cache)
        if shuffle:
            ds = ds.shuffle(SHUFFLE_IMAGES, seed=seed, reshuffle_each_iteration=True)
    return ds


def training_dataset(files, size, batch_size, *, augment=None, seed=0, cache=None, repeat=False,
                     drop_remainder=False, seen=None):
    """Shuffled, decoded, batched and augmented (x float32 0..255, y) for model.fit.

    `augment`: a map function on batches (training.presets.augmenter). `repeat`: endless,
    for a fixed steps_per_epoch (a distributed job, where every process must take the same
    number of steps)."""
    import tensorflow as tf

    ds = decoded(files, size, shuffle=True, seed=seed, cache=cache, seen=seen)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(augment or _as_float, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(files, size, batch_size=64, *, cache=None, repeat=False, drop_remainder=False):
    """(x float32 0..255, y) in file order, batched, for validation and evaluation."""
    import tensorflow as tf

    ds = decoded(files, size, cache=cache)
    if repeat:
        ds = ds.repeat()
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).map(_as_float)
    return ds.prefetch(tf.data.AUTOTUNE)


def read_batches(files, size, batch_size=64):
    """(x uint8 (n, size, size, 3), labels, readable flags) batches of `files` in file order,
    decoded in parallel threads; an unreadable file stays in its batch as zeros, flagged
    False, so rows keep their files' order."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((list(files.paths), files.labels))
    ds = ds.map(_decoder(files.root, size), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    yield from ds.batch(batch_size).prefetch(2).as_numpy_iterator()


def logits(model, files, size, views=None, batch_size=64):
    """(logits, labels) of `model` on `files`, streamed in file order (unreadable files are
    left out, so the labels come back too); with `views`, averaged over those test-time
    augmentation views (lungclf.inference: the app's forward pass)."""
    from lungclf.inference import forward_fn, predict_logits

    forward = forward_fn(model)
    n_classes = model.outputs[0].shape[-1]
    out, ys = [np.zeros((0, n_classes), np.float32)], [np.zeros(0, np.int32)]
    for x, y in eval_dataset(files, size, batch_size).as_numpy_iterator():
        out.append(predict_logits(model, x, batch_size=batch_size, views=views, forward=forward))
        ys.append(y)
    return np.concatenate(out), np.concatenate(ys)


def files(prepared, name):
    """The Files of split `name` ("train", "val", "test") of a training.datatypes.Prepared."""
    keep = prepared.split == name
    return Files(prepared.data_dir, [p for p, k in zip(prepared.paths, keep) if k], prepared.y[keep])


def fit_datasets(prepared, config, shard=(1, 0), cache=None, seen=None):
    """(train dataset, val dataset, extra model.fit arguments) for training.steps.fit, streamed.

    `shard=(n, i)`: process i of n reads only its share, in batches of batch_size / n, and
    every process takes the same number of steps (its share repeated as needed: a step is
    a collective). `cache`: a folder for the decoded images (one file per split and share)."""
    import math

    from training import presets

    n, i = shard
    train, val = files(prepared, "train"), files(prepared, "val")
    if len(train.paths) < n or len(val.paths) < n:
        raise DataError(f"{len(train.paths)} training and {len(val.paths)} validation images cannot be "
                        f"shared among {n} processes")
    size, batch, val_batch = config.image_size, config.batch_size // n, max(1, 64 // n)
    spread = n > 1
    train_ds = training_dataset(train.shard(n, i), size, batch, seed=config.seed + i,
                                # one augmentation seed for all: its state is a (replicated) model-side variable
                                augment=presets.augmenter(config.augmentation, config.seed),
                                cache=cache and os.path.join(cache, f"train-{i}-of-{n}"),
                                repeat=spread, drop_remainder=spread, seen=seen)
    val_ds = eval_dataset(val.shard(n, i), size, val_batch, cache=cache and os.path.join(cache, f"val-{i}-of-{n}"),
                          repeat=spread, drop_remainder=spread)
    extra = {}
    if spread:
        extra = {"steps_per_epoch": math.ceil(len(train.paths) / (batch * n)),
                 "validation_steps": math.ceil(len(val.paths) / (val_batch * n))}
    return train_ds, val_ds, extra


class Rows:
    """(n, *tail) records in a file, read and written with pread/pwrite a block at a time:
    a memory-flat stand-in for a memmap. What is read belongs to the caller until dropped;
    nothing stays mapped (a memmap's touched pages count as the process's resident memory,
    and stay, for as long as it is open). Slicing gives a (writable) array; an int array
    of indices gives those rows."""

    def __init__(self, path, dtype, shape, offset=0, create=False, fill=None):
        self.path, self.dtype, self.shape, self.offset = path, np.dtype(dtype), tuple(shape), offset
        self.tail = self.shape[1:]
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.tail, dtype=np.int64))
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT if create else os.O_RDONLY)
        if create and fill is not None:
            block = np.full((max(1, (1 << 24) // max(1, self.row_bytes)), *self.tail), fill, self.dtype)
            for start in range(0, len(self), len(block)):
                self.write(start, block[:len(self) - start])

    @classmethod
    def npy(cls, path):
        """The rows of an .npy file (np.save, or np.lib.format.open_memmap)."""
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            offset = f.tell()
        if fortran:
            raise ValueError(f"{path}: Fortran-ordered arrays are not read by rows")
        return cls(path, dtype, shape, offset)

    def __len__(self):
        return self.shape[0]

    def read(self, start, stop):
        out = np.empty((max(0, stop - start), *self.tail), self.dtype)
        if out.nbytes:
            got = os.preadv(self.fd, [memoryview(out).cast("B")], self.offset + start * self.row_bytes)
            if got != out.nbytes:
                raise OSError(f"{self.path}: short read ({got} of {out.nbytes} bytes)")
        return out

    def write(self, start, rows):
        data = np.ascontiguousarray(rows, self.dtype)
        os.pwrite(self.fd, memoryview(data).cast("B"), self.offset + start * self.row_bytes)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError("Rows are read in steps of 1")
            return self.read(start, stop)
        if np.isscalar(key):
            return self.read(int(key), int(key) + 1)[0]
        wanted, back = np.unique(np.asarray(key, np.int64), return_inverse=True)
        return np.stack([self.read(i, i + 1)[0] for i in wanted])[back] if len(wanted) else \
            np.zeros((0, *self.tail), self.dtype)

    def __setitem__(self, key, rows):
        start, stop, _ = key.indices(len(self))
        self.write(start, np.broadcast_to(rows, (stop - start, *self.tail)))

    def close(self):
        if getattr(self, "fd", None) is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = close


def peak_rss_mb():
    """This process's peak resident memory so far, in MB (Linux reports ru_maxrss in KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    from training.data import scan

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="data folder: DIR/<class>/* or DIR/{train,valid,test}/<class>/*")
    p.add_argument("--size", type=int, default=128, help="input side in pixels (default 128)")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--batches", type=int, default=0, help="stop after this many batches (default: all)")
    p.add_argument("--cache", help="file prefix to cache decoded images on disk")
    args = p.parse_args(argv)
    with cli_errors():
        items = scan(args.data)
        labels = sorted({it.label for it in items})
        files = Files(args.data, [it.path for it in items], [labels.index(it.label) for it in items])
        t0, n = time.time(), 0
        for i, (x, _) in enumerate(training_dataset(files, args.size, args.batch_size, cache=args.cache)):
            n += len(x)
            if args.batches and i + 1 >= args.batches:
                break
        dt = time.time() - t0
        print(f"{n} images in {dt:.1f} s: {n / dt:.0f} images/s; peak memory {peak_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
