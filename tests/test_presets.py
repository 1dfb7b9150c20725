"""Data-set presets: what each one sets, and that each trains end to end in both layouts.

The end-to-end tests make small images shaped like each data set (RGB JPEG tissue tiles
for LC25000, grey JPEG slices for IQ-OTH/NCCD, RGBA PNG slices of mixed sizes for the
chest CT set) under the preset's own class names, in class folders and in a published
train/valid/test split, and train on them with the real training command.
"""

import json
import os

import numpy as np
import pytest

from tests.helpers import make_preset_dataset
from training import presets

# Fast: what the presets say.

@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_every_preset_names_and_describes_its_classes_and_cites_its_data(name):
    p = presets.preset(name)
    assert p["classes"] and p["citation"] and p["license"] and p["dataset_name"]
    for label in p["classes"]:
        assert presets.class_name(label) != label
        assert presets.class_description(label).endswith(".")


def test_ct_presets_are_grey_and_histopathology_keeps_colour():
    assert presets.preset("iq-othnccd")["colour_mode"] == "grey"
    assert presets.preset("chest-ct")["colour_mode"] == "grey"
    assert presets.preset("lc25000")["colour_mode"] == "rgb"


def test_augmentation_suits_the_modality():
    tissue, ct = presets.preset("lc25000"), presets.preset("chest-ct")
    assert tissue["augmentation"]["flip"] == "horizontal_and_vertical" and tissue["augmentation"]["rot90"]
    assert ct["augmentation"]["flip"] == "horizontal"  # a slice has a head and a foot end
    assert "hue" not in ct["augmentation"] and "rot90" not in ct["augmentation"]
    assert len(tissue["tta_views"]) == 8 and ct["tta_views"] == ["identity", "flip_lr"]


def test_without_a_preset_the_defaults_suit_any_class_folder_data_set():
    p = presets.preset(None)
    assert (p["modality"], p["colour_mode"]) == ("unspecified", "rgb")
    assert p["classes"] == [] and presets.class_name("my_class.two") == "My class two"
    assert presets.class_description("my_class") == ""


def test_an_unknown_preset_is_refused_with_the_choices():
    from training.errors import RecipeError

    with pytest.raises(RecipeError, match="chest-ct, iq-othnccd, lc25000"):
        presets.preset("lc2500")


def test_ct_augmentation_never_adds_colour_and_stays_in_range():
    grey = np.repeat(np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 1)), 3, axis=3).astype(np.float32)
    out, _ = presets.augmenter(presets.preset("iq-othnccd")["augmentation"], seed=1)(grey, np.zeros(4))
    out = np.asarray(out)
    assert out.shape == grey.shape and out.min() >= 0 and out.max() <= 255
    assert np.abs(out[..., 0] - out[..., 1]).max() < 1e-3 and np.abs(out[..., 1] - out[..., 2]).max() < 1e-3
    assert not np.allclose(out, grey)  # it did change the images


def test_tissue_augmentation_changes_colour_and_orientation():
    tiles = np.random.default_rng(0).uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    out, _ = presets.augmenter(presets.preset("lc25000")["augmentation"], seed=1)(tiles, np.zeros(8))
    out = np.asarray(out)
    assert out.shape == tiles.shape and out.min() >= 0 and out.max() <= 255
    assert np.abs(out - tiles).mean() > 5


# Slow: each preset end to end, both layouts.

@pytest.mark.slow
@pytest.mark.train
@pytest.mark.parametrize("layout", ["folders", "split"])
@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_preset_trains_end_to_end(name, layout, tmp_path):
    from lungclf.bundle import load
    from training.train import main

    data = make_preset_dataset(str(tmp_path / "data"), name, layout)
    out = str(tmp_path / "bundle")
    meta = main(["--data", data, "--out", out, "--preset", name, "--image-size", "32", "--width", "8",
                 "--epochs", "2", "--batch-size", "8", "--verbose", "0"])
    p = presets.preset(name)
    b = load(out)
    assert b.labels == p["classes"] and b.input_size == 32
    assert meta["task"]["modality"] == p["modality"] and meta["preset"] == name
    assert meta["preprocessing"]["colour_mode"] == p["colour_mode"]
    assert meta["model"]["architecture"] == "compact" and meta["tta"]["views"] == p["tta_views"]
    assert meta["training"]["augmentation"] == p["augmentation"]
    assert sum(c["images"] for c in meta["split"]["counts"].values()) == len(p["classes"]) * 12
    classes = json.load(open(os.path.join(out, "classes.json")))
    assert classes["descriptions"] == {lab: presets.class_description(lab) for lab in p["classes"]}
    card = open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert p["citation"][:60] in card and p["dataset_name"] in card


@pytest.mark.slow
@pytest.mark.train
def test_a_grey_preset_model_sees_only_luminance(tmp_path):
    """A colour cast or an RGB-vs-grey file cannot change what a CT model answers."""
    from lungclf.bundle import load
    from training.train import main

    data = make_preset_dataset(str(tmp_path / "data"), "iq-othnccd", "folders")
    out = str(tmp_path / "bundle")
    main(["--data", data, "--out", out, "--preset", "iq-othnccd", "--image-size", "32",
          "--width", "8", "--epochs", "1", "--batch-size", "8", "--verbose", "0"])
    model = load(out).model
    rgb = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype(np.float32)
    luma = (rgb @ np.array([0.299, 0.587, 0.114], np.float32))[..., None].repeat(3, axis=3)
    np.testing.assert_allclose(np.asarray(model(rgb)), np.asarray(model(luma)), atol=1e-5)
