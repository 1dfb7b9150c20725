"""Recipes: typed settings read from TOML, kept in every bundle, overridden by flags, and
the committed bundles rebuilt from recipes/ (training/recipe.py, training/train.py)."""

import glob
import json
import os
import re

import pytest

from tests.helpers import ROOT, SHARED_DATA, make_dataset
from training.errors import RecipeError, TrainingError
from training.recipe import Recipe

RECIPES = sorted(glob.glob(os.path.join(ROOT, "recipes", "*.toml")))


def test_a_recipe_file_round_trips_through_its_toml_text(tmp_path):
    recipe = Recipe(name="x", data="../shared/data/chest_ct", preset="chest-ct", method="frozen",
                    arch="lite0", weights="efficientnet-lite0", image_size=224, folds=5, fold_seeds=2,
                    views=["identity", "flip_lr"], C=0.03, notes='Quotes " and\nnew lines survive.',
                    ood_data=["../shared/data/lc25000"])
    path = tmp_path / "r.toml"
    path.write_text(recipe.to_toml("a comment"))
    assert Recipe.from_file(str(path)) == recipe


def test_an_unknown_setting_is_refused_naming_it(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('data = "d"\nimage_sise = 128\n')
    with pytest.raises(RecipeError, match="unknown setting.*image_sise"):
        Recipe.from_file(str(path))


def test_a_recipe_written_with_a_settings_old_name_still_reads(tmp_path):
    """stored_weights was onnx_weights until 2026-12-04: older bundles' recipe.json keep reading."""
    path = tmp_path / "recipe.json"
    path.write_text('{"data": "d", "onnx_weights": "float16"}')
    assert Recipe.from_file(str(path)) == Recipe(data="d", stored_weights="float16")


@pytest.mark.parametrize("text, field", [('image_size = "big"', "image_size"), ('method = "magic"', "method"),
                                         ("views = [1]", "views"), ("seed = true", "seed")])
def test_a_setting_of_the_wrong_kind_is_refused_naming_it(tmp_path, text, field):
    path = tmp_path / "r.toml"
    path.write_text(text + "\n")
    with pytest.raises(RecipeError, match=f"{field}"):
        Recipe.from_file(str(path))


def test_settings_that_cannot_work_together_are_refused():
    with pytest.raises(RecipeError, match="frozen.*needs pretrained weights"):
        Recipe(data="d", method="frozen", folds=5).validate()
    with pytest.raises(RecipeError, match="train_blocks"):
        Recipe(data="d", train_blocks=2).validate()
    with pytest.raises(RecipeError, match="arch 'astra' is for method 'frozen' only"):
        Recipe(data="d", method="finetune", arch="astra", weights="astra-ct").validate()
    assert issubclass(RecipeError, TrainingError) and not issubclass(RecipeError, SystemExit)


def test_flags_override_single_fields_of_a_recipe_file(tmp_path):
    from training.train import parse_args, resolve

    path = tmp_path / "r.toml"
    path.write_text('name = "ct"\ndata = "/data/ct"\nimage_size = 224\nseed = 0\nlr = 0.0005\n')
    groups = tmp_path / "ids.csv"
    recipe, out = resolve(parse_args(["--recipe", str(path), "--seed", "3", "--out", str(tmp_path / "b"),
                                      "--groups", str(groups)]))
    assert (recipe.seed, recipe.image_size, recipe.lr, recipe.name) == (3, 224, 0.0005, "ct")
    assert recipe.groups == os.path.relpath(str(groups), "/data/ct")  # kept relative to the data folder
    assert out == str(tmp_path / "b")


def test_a_recipe_without_data_or_output_is_refused_by_the_cli_in_one_line(tmp_path):
    from training.train import main

    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path / "b")])
    assert str(stop.value.code) == "error: no data folder: give --data DIR or a --recipe that names one"


@pytest.mark.slow
def test_a_bundle_keeps_its_recipe_and_the_recipe_rebuilds_its_split(tiny_bundle, capsys):
    """file -> bundle -> file: the bundle's recipe.json read back is the recipe that made it,
    and a dry run of it prints the split fingerprint the bundle records."""
    from training.train import main

    out = tiny_bundle["out"]
    recipe = Recipe.from_bundle(out)
    assert recipe.data == tiny_bundle["data"] and recipe.image_size == 32 and recipe.width == 8
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert meta["recipe"]["file"] == "recipe.json"
    capsys.readouterr()
    main(["--recipe", os.path.join(out, "recipe.json"), "--out", "unused", "--dry-run"])
    printed = capsys.readouterr().out
    assert f"split fingerprint: {meta['split']['fingerprint']}" in printed


@pytest.mark.slow
@pytest.mark.train
def test_a_frozen_recipe_writes_a_cross_validated_bundle_that_serves(tmp_path):
    """method = "frozen": group k-fold figures with an interval and the baseline beside them,
    the head refitted on all but the examples' groups, a bundle the app's loader accepts."""
    from lungclf.bundle import load
    from training.train import main

    data = make_dataset(str(tmp_path / "data"), per_class=12)
    out = str(tmp_path / "bundle")
    meta = main(["--data", data, "--out", out, "--method", "frozen", "--weights", "efficientnet-lite0",
                 "--arch", "lite0", "--image-size", "32", "--folds", "3", "--fold-seeds", "2",
                 "--examples", "3", "--verbose", "0"])
    e = meta["cross_validation"]["estimate"]
    assert e["folds"] == 6 and e["interval95"][0] <= e["pooled_macro_f1"] <= e["interval95"][1]
    assert "baseline" in e and "minus_baseline" in e
    assert meta["metrics"]["test"]["images"] == 36  # every image, out of fold
    assert meta["split"]["counts"]["test"]["images"] == 3  # the examples' groups, held out of the fit
    assert len(meta["examples"]) == 3
    bundle = load(out)
    assert bundle.meta.wrong_input is not None and Recipe.from_bundle(out).method == "frozen"
    assert "Cross-validated macro-F1" in open(os.path.join(out, "README.md"), encoding="utf-8").read()


@pytest.mark.slow
@pytest.mark.train
def test_a_frozen_recipe_learns_its_known_wrong_kinds_and_measures_them_out_of_fold(tmp_path):
    """known_wrong_data: the folder's mean joins the check's reference (the .npz's `others`,
    named in the metadata), and its images are measured by its own groups, out of fold."""
    from lungclf.bundle import load
    from scripts.synthetic import preset_image
    from training.train import main

    data = make_dataset(str(tmp_path / "data"), per_class=12)
    kind = tmp_path / "tiles" / "tile"
    kind.mkdir(parents=True)
    for i in range(15):
        preset_image("tile", i % 3, seed=100 + i).save(kind / f"t{i}.png")
    out = str(tmp_path / "bundle")
    meta = main(["--data", data, "--out", out, "--method", "frozen", "--weights", "efficientnet-lite0",
                 "--arch", "lite0", "--image-size", "32", "--folds", "3", "--fold-seeds", "1",
                 "--examples", "3", "--known-wrong-data", str(tmp_path / "tiles"), "--verbose", "0"])
    w = meta["wrong_input"]
    assert w["known_wrong"] == ["tiles"]
    measured = w["rates"]["wrong_inputs"]["tiles (known wrong kind, out of fold by group)"]
    assert measured["images"] == 15 and measured["folds"] == 3 and measured["flagged"] >= 0.9
    assert w["rates"]["out_of_fold"]["flagged"] <= 0.15  # the threshold counts the kind's flags too
    ref = load(out).reference
    assert ref.other_names == ("tiles",) and ref.others.shape == (1, ref.feature_dim)
    assert Recipe.from_bundle(out).known_wrong_data == [str(tmp_path / "tiles")]


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_each_committed_bundle_keeps_the_recipe_file_that_made_it(path):
    name = os.path.splitext(os.path.basename(path))[0]
    assert Recipe.from_file(path) == Recipe.from_bundle(os.path.join(ROOT, "models", name))


@pytest.mark.slow
@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_a_dry_run_of_each_committed_recipe_gives_its_bundles_split(path, capsys):
    from training.train import main

    recipe = Recipe.from_file(path)
    if not os.path.isdir(recipe.data_dir()):
        pytest.skip(f"{recipe.data_dir()} is not here (../shared/data)")
    name = os.path.splitext(os.path.basename(path))[0]
    meta = json.load(open(os.path.join(ROOT, "models", name, "metadata.json")))
    main(["--recipe", path, "--dry-run"])
    out = capsys.readouterr().out
    if f"split fingerprint: {meta['split']['fingerprint']}" in out:
        return
    # The audit's SIFT keypoints come from OpenCV's CPU-specific code paths, so on another CPU
    # one borderline near-copy pair can join or split a group (chest CT: 346 groups against the
    # bundle's 345), which changes the fingerprint. Every split must still hold exactly the
    # bundle's images of every class, with its group count within 1%.
    for split, counts in meta["split"]["counts"].items():
        found = re.search(rf"^{split} +(\d+) images in +(\d+) groups (\{{.*\}})$", out, re.M)  # the dry run's line
        images, groups, per_class = int(found[1]), int(found[2]), json.loads(found[3].replace("'", '"'))
        assert images == counts["images"] and per_class == counts["per_class"], found[0]
        assert abs(groups - counts["groups"]) <= max(1, 0.01 * counts["groups"]), found[0]


def test_the_shared_data_is_where_the_recipes_say():
    """The committed recipes name ../shared/data relative to the repository."""
    for path in RECIPES:
        assert os.path.normpath(Recipe.from_file(path).data_dir()).startswith(os.path.normpath(SHARED_DATA))
