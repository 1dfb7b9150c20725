"""Choosing a recipe by evidence (training/select.py) and the out-of-fold wrong-input threshold."""

import json
import os

import numpy as np
import pytest

from tests.helpers import ROOT
from training.recipe import Recipe


def test_the_interval_is_over_groups_and_the_difference_is_paired():
    """Three rows per group, answered alike: resampling groups gives a wider interval than
    treating the rows as independent; and a prediction set worse on two groups only is
    worse (or equal) on every paired resample."""
    from training.frozen import bootstrap_f1

    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(40), 3)
    y = np.repeat(rng.integers(0, 2, 40), 3)
    good = y.copy()
    good[groups % 7 == 0] = 1 - good[groups % 7 == 0]  # some groups answered wrongly
    worse = good.copy()
    worse[np.isin(groups, [5, 6])] = 1 - y[np.isin(groups, [5, 6])]
    boot = bootstrap_f1(y, [good, worse], groups, reps=300)
    rows = bootstrap_f1(y, [good], np.arange(len(y)), reps=300)
    assert np.ptp(np.percentile(boot[:, 0], [2.5, 97.5])) > 1.3 * np.ptp(np.percentile(rows[:, 0], [2.5, 97.5]))
    assert (boot[:, 0] - boot[:, 1]).min() >= 0


def test_the_folded_head_gives_the_logistic_regressions_logits():
    """fit_head folds the standardisation into the Dense kernel and bias: features @ W + b
    ranks the classes as scikit-learn's pipeline does."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from training.frozen import fit_head

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    f = rng.normal(0, 1, (90, 16)) * rng.uniform(0.1, 10, 16) + y[:, None] * rng.normal(0, 1, 16) + 5
    W, b = fit_head(f[None], y, np.arange(90), C=0.5)
    ref = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000, class_weight="balanced"))
    ref.fit(f, y)
    np.testing.assert_allclose(f @ W + b, ref.decision_function(f), rtol=1e-3, atol=1e-3)


def test_cached_features_are_read_back_row_by_row_as_saved(tmp_path):
    """read_rows (the baseline's reader, which keeps memory flat) gives exactly the rows of
    the saved array, whichever blocks they fall in, and nothing for no rows."""
    from training.frozen import read_rows

    a = np.random.default_rng(3).normal(size=(1000, 7)).astype(np.float32)
    np.save(tmp_path / "f.npy", a)
    rows = np.sort(np.random.default_rng(4).choice(1000, 137, replace=False))
    np.testing.assert_array_equal(read_rows(tmp_path / "f.npy", rows, chunk=64), a[rows])
    np.testing.assert_array_equal(read_rows(tmp_path / "f.npy", [0, 63, 64, 999], chunk=64), a[[0, 63, 64, 999]])
    assert read_rows(tmp_path / "f.npy", np.array([], int)).shape == (0, 7)


def test_the_threshold_comes_from_out_of_fold_distances_not_in_sample_ones():
    """In-sample distances are small (the reference saw those images); new groups lie
    further out. Set from out-of-fold distances, the limit flags about 5% of new images;
    set from in-sample ones it would flag far more."""
    from training.wrong_input import fit, set_threshold

    rng = np.random.default_rng(2)
    n, d = 200, 32
    y = rng.integers(0, 2, n)
    feats = rng.normal(0, 1, (n, d)) + y[:, None]
    stats = np.tile(np.array([120, 110, 130, 30, 28, 32, 15, 9.0]), (n, 1)) + rng.normal(0, 1, (n, 8))
    ref, _ = fit(feats, y, stats, 2)
    in_sample = ref.distances(feats)
    oof = in_sample * 1.6  # what images the reference did not see look like
    set_threshold(ref, stats, feats, 0.05, distances=oof)
    new = rng.normal(0, 1, (n, d)) + y[:, None]
    assert (oof > ref.threshold).mean() <= 0.05
    assert ref.threshold > in_sample.max()
    set_threshold(ref, stats, feats, 0.05)
    assert ref.threshold < np.quantile(oof, 0.95)  # in-sample: a lower limit, more false warnings
    assert new.shape == feats.shape


def sides_dataset(root, per_class=16):
    """Two classes that differ only in which side is red: a mirrored image is the other class."""
    import os

    from tests.helpers import halves

    for label, (left, right) in {"red_left": ("red", "blue"), "red_right": ("blue", "red")}.items():
        os.makedirs(os.path.join(root, label))
        for i in range(per_class):
            halves(left, right, seed=100 * len(label) + i).save(os.path.join(root, label, f"{i}.png"))
    return root


@pytest.mark.slow
@pytest.mark.train
def test_the_selection_picks_the_better_of_two_recipes(tmp_path):
    """On made-up images whose class is which side is red, mirrored copies as extra training
    rows (views identity + flip_lr) teach the head that both sides are one class; the
    selection scores both candidates beside the baseline on the same folds and writes the
    better (images as they are) as a recipe file."""
    from training.select import BASELINE_LABEL, choose, select

    data = sides_dataset(str(tmp_path / "data"))
    candidates = tmp_path / "candidates.toml"
    candidates.write_text(f"""
[base]
data = "{data}"
method = "frozen"
arch = "lite0"
weights = "efficientnet-lite0"
image_size = 64
blocks = 5
folds = 3
fold_seeds = 2

[[candidate]]
label = "as they are"

[[candidate]]
label = "mirrored rows too"
views = ["identity", "flip_lr"]
""")
    out = tmp_path / "winner.toml"
    rows = select(str(candidates), str(out), log=lambda *a: None)
    by = {r["label"]: r for r in rows}
    assert set(by) == {"as they are", "mirrored rows too", BASELINE_LABEL}
    assert by["as they are"]["pooled_macro_f1"] > by["mirrored rows too"]["pooled_macro_f1"] + 0.2
    assert all(r["folds"] == 10 for r in rows)  # never fewer than 5 folds x 2 seeds
    winner = Recipe.from_file(str(out))
    assert winner.views == ["identity"] and "training.select" in winner.notes
    assert winner.replace(notes="") == Recipe.from_dict(choose(rows)["recipe"]).replace(notes="")


@pytest.mark.slow
@pytest.mark.train
def test_the_baseline_beside_a_training_is_fitted_on_a_bounded_sample(tmp_path, monkeypatch):
    """baseline_on_split reads its features from the cache file and fits on at most max_fit
    training images (seeded), recording how many; unbounded, it fits on all of them."""
    import os
    from types import SimpleNamespace

    from training.steps import baseline_on_split

    monkeypatch.setenv("LUNGCLF_CACHE", str(tmp_path / "cache"))
    data = sides_dataset(str(tmp_path / "data"), per_class=10)
    paths = [f"{c}/{i}.png" for c in ("red_left", "red_right") for i in range(10)]
    split = np.array(["train", "train", "train", "val", "test"] * 4)
    prepared = SimpleNamespace(data_dir=data, paths=paths, y=[0] * 10 + [1] * 10, split=split,
                               report={"fingerprint": "sides"})
    config = SimpleNamespace(colour_mode="rgb", seed=0)
    every = baseline_on_split(prepared, config)
    bounded = baseline_on_split(prepared, config, max_fit=6)
    assert (every["fit_images"], every["train_val_images"]) == (16, 16)
    assert (bounded["fit_images"], bounded["train_val_images"]) == (6, 16)
    assert all(0 <= r["macro_f1"] <= 1 and r["backbone"].startswith("efficientnet-lite0") for r in (every, bounded))
    assert len(os.listdir(tmp_path / "cache")) == 2  # one features file and its pixel statistics, computed once


def test_a_candidate_wins_only_when_it_beats_the_baseline_by_more_than_the_interval():
    from training.select import BASELINE_LABEL, choose

    def row(label, f1, lo):
        return {"label": label, "pooled_macro_f1": f1, "minus_baseline": {"interval95": [lo, lo + 0.1]}}

    base = row(BASELINE_LABEL, 0.80, 0.0)
    assert choose([row("a", 0.83, -0.01), base, row("b", 0.79, 0.001)])["label"] == "b"
    assert choose([row("a", 0.83, -0.01), base])["label"] == BASELINE_LABEL


def test_a_candidate_over_the_page_budget_is_not_chosen():
    from training.select import BASELINE_LABEL, choose

    def row(label, f1, lo, within=True):
        return {"label": label, "pooled_macro_f1": f1, "minus_baseline": {"interval95": [lo, lo + 0.1]},
                "within_budget": within}

    base = row(BASELINE_LABEL, 0.80, 0.0)
    assert choose([row("big", 0.86, 0.02, within=False), row("small", 0.83, 0.01), base])["label"] == "small"
    assert choose([row("big", 0.86, 0.02, within=False), base])["label"] == BASELINE_LABEL


@pytest.mark.parametrize("name", ["chest_ct", "iq_othnccd"])
def test_the_page_and_bundle_estimates_are_what_the_committed_bundles_weigh(name):
    """The budget's estimates (model.onnx and model.keras at 2 or 4 bytes a parameter, the
    reference's upper triangle at 2 or 4 bytes a value, 1 MB for the rest) against the
    committed CT bundles' files (both store their large weights as float16). The estimate
    counts the precision in float16 with them; where the fit kept float32 (IQ-OTH/NCCD's
    precision reaches 4e5, beyond float16's 65,504) the files hold 2 bytes a value more."""
    from training.recipe import Recipe
    from training.select import sizes

    folder = os.path.join(ROOT, "models", name)
    recipe = Recipe.from_bundle(folder)
    with open(os.path.join(folder, "metadata.json")) as f:
        meta = json.load(f)
    params, page, bundle = sizes(recipe, len(meta["classes"]))
    with np.load(os.path.join(folder, "wrong_input.npz")) as z:
        kept = z["precision"].size * (z["precision"].dtype.itemsize - 2) / 1e6  # beyond float16's 2 bytes
    page, bundle = page + kept, bundle + kept

    page_files = sum(os.path.getsize(os.path.join(folder, n)) for n in ("model.onnx", "wrong_input.npz")) / 1e6
    every_file = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(folder) for n in names) / 1e6
    assert params == meta["model"]["parameters"]
    assert abs(page - page_files) <= 0.02 * page and abs(bundle - every_file) <= 0.03 * bundle


def test_the_bundle_budget_leaves_out_a_candidate_whose_bundle_is_too_big():
    """A candidate is left out of the choice when its page or its bundle passes the budget: chest
    CT's joined Lite0 + Astra network stored in float32 (page 30.2 MB, bundle 56) or with only
    model.onnx in float16 (page 18.4, bundle 44); in float16 throughout (15.3 / 28.3) it fits."""
    from training.select import budget_text, within

    budget = {"max_page_mb": 20, "max_bundle_mb": 30}
    assert within(budget, 15.3, 28.3) and not within(budget, 18.4, 44.0) and not within(budget, 30.2, 28.0)
    assert within({}, 100, 100)
    assert budget_text(budget) == "the page 20 MB, the bundle 30 MB"


def test_a_finetune_state_ignores_settings_that_do_not_change_the_fit():
    """A fine-tuned candidate's finished folds stay valid when only its name, notes, wrong-input
    settings or the weights' storage change, and not when a fitting setting does."""
    from training.recipe import Recipe
    from training.select import fold_key

    r = Recipe(data="d", epochs=12)
    same = r.replace(name="x", notes="why", stored_weights="float16", ood_data=["o"], wrong_input_quantile=0.1, examples=0)
    assert fold_key(same) == fold_key(r)
    assert fold_key(r.replace(lr=1e-4)) != fold_key(r) != fold_key(r.replace(image_size=160))


def test_an_unknown_or_malformed_budget_in_a_candidates_file_is_refused(tmp_path):
    from training.errors import RecipeError
    from training.select import read_candidates

    path = tmp_path / "c.toml"
    path.write_text('max_page_md = 20\n[base]\nname = "x"\ndata = "d"\n')
    with pytest.raises(RecipeError, match="unknown setting.*max_page_md.*max_page_mb"):
        read_candidates(str(path))
    path.write_text('max_page_mb = "20"\n[base]\nname = "x"\ndata = "d"\n')
    with pytest.raises(RecipeError, match="max_page_mb, max_bundle_mb must be a positive number of MB"):
        read_candidates(str(path))
