"""Streaming input (training/stream.py) on images the tests make: what it decodes, which
files each shard reads, the on-disk cache, unreadable files, streamed evaluation."""

import os

import numpy as np
import pytest

from lungclf.preprocess import load_image
from tests.helpers import make_dataset
from training.data import scan
from training.stream import Files, Seen, decoded, eval_dataset, logits, training_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = make_dataset(str(tmp_path_factory.mktemp("stream")), per_class=6)
    items = scan(root)
    labels = sorted({it.label for it in items})
    return Files(root, [it.path for it in items], [labels.index(it.label) for it in items])


def _images(ds):
    return [(x, int(y)) for x, y in ds.unbatch().as_numpy_iterator()]


def test_streamed_images_are_the_app_preprocessing_in_file_order(files):
    got = _images(eval_dataset(files, 32, batch_size=5))
    assert len(got) == len(files.paths)
    for (x, y), path, label in zip(got, files.paths, files.labels):
        expected = load_image(os.path.join(files.root, path), 32)  # what the app feeds the model
        assert x.dtype == np.float32 and x.shape == (32, 32, 3)
        np.testing.assert_array_equal(x, expected)
        assert y == label


def test_shards_are_disjoint_and_together_read_every_file_once(files):
    seen = [Seen(), Seen()]
    for i in range(2):
        for _ in decoded(files.shard(2, i), 32, seen=seen[i]):
            pass
    a, b = set(seen[0].paths), set(seen[1].paths)
    assert len(seen[0].paths) == len(a) and len(seen[1].paths) == len(b)  # no file read twice
    assert a and b and not a & b
    assert a | b == set(files.paths)


def test_training_dataset_reshuffles_and_sees_every_file_each_epoch(files):
    seen = Seen()
    ds = training_dataset(files, 32, batch_size=4, seed=1, seen=seen)
    epochs = [[float(x.sum()) for x, _ in _images(ds)] for _ in range(2)]
    n = len(files.paths)
    assert sorted(seen.paths) == sorted(files.paths * 2)
    assert sorted(epochs[0]) == sorted(epochs[1]) and len(epochs[0]) == n
    assert epochs[0] != epochs[1]  # a new order each epoch
    in_file_order = [float(x.sum()) for x, _ in _images(eval_dataset(files, 32))]
    assert epochs[0] != in_file_order


def test_cache_serves_decoded_images_after_the_files_are_gone(files, tmp_path):
    root = make_dataset(str(tmp_path / "data"), per_class=3)
    items = scan(root)
    own = Files(root, [it.path for it in items], [0] * len(items))
    ds = eval_dataset(own, 32, cache=str(tmp_path / "cache" / "decoded"))
    first = _images(ds)
    for it in items:
        os.remove(os.path.join(root, it.path))
    second = _images(ds)
    assert len(second) == len(items)
    for (a, _), (b, _) in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_unreadable_file_is_left_out_with_a_message(files, tmp_path, capfd):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    mixed = Files("/", [os.path.join(files.root, p) for p in files.paths[:3]] + [str(bad)], [0, 1, 2, 0])
    seen = Seen()
    got = [int(y) for _, y in decoded(mixed, 32, seen=seen).as_numpy_iterator()]
    assert got == [0, 1, 2]
    assert seen.unreadable == [str(bad)]
    assert "skipped unreadable" in capfd.readouterr().out


def test_streamed_logits_equal_the_forward_pass_on_decoded_arrays(files):
    from lungclf.inference import predict_logits
    from training.model import build

    model = build("compact", 32, 3, width=4)
    x = np.stack([load_image(os.path.join(files.root, p), 32) for p in files.paths])
    z, y = logits(model, files, 32, batch_size=7)
    np.testing.assert_allclose(z, predict_logits(model, x), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(y, files.labels)


@pytest.mark.slow
def test_the_wrong_input_fit_reads_streamed_files_as_it_reads_decoded_images(tiny_bundle, tmp_path):
    import dataclasses

    from lungclf.bundle import load
    from training import steps
    from training.recipe import Recipe
    from training.stream import Rows
    from training.wrong_input import split_features

    decoded_data = steps.prepare_recipe(Recipe.from_bundle(tiny_bundle["out"]))
    streamed_data = dataclasses.replace(decoded_data, x=None)  # as --stream leaves it: files only
    model = load(tiny_bundle["out"]).model
    for split in ("train", "val", "test"):
        f, s, y, ok = split_features(model, decoded_data, split)
        f2, s2, y2, ok2 = split_features(model, streamed_data, split, batch_size=5)  # several batches
        np.testing.assert_allclose(f2, f, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(s2, s, rtol=1e-6, atol=1e-6)
        assert (y2 == y).all() and ok2.all() and len(ok2) == len(ok)
        f3, s3, _, _ = split_features(model, streamed_data, split, batch_size=5, folder=str(tmp_path))
        assert isinstance(f3, Rows) and f3.path == str(tmp_path / f"{split}.f32")  # on disk
        np.testing.assert_array_equal(f3[:], f2)
        np.testing.assert_array_equal(s3, s2)
