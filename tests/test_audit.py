"""The data audit and the group split, on made-up images with known problems planted.

One data set (class folders) holds: byte-identical copies, a tile turned by 90 degrees and
mirrored, a tile turned by 12 degrees and cropped, a tile re-encoded as a smaller JPEG, a
tile copied into another class, and a class whose images all have another size (a shortcut).
A second data set has a train/valid/test layout with one copy planted across the split.
"""

import csv
import itertools
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.helpers import PALETTE, tissue
from training import audit
from training.split import assign, split_by_group

def turned_and_cropped(im, degrees):
    """What LC25000's augmentation did: rotate a little, crop the middle, resize back."""
    w, h = im.size
    return im.rotate(degrees, resample=Image.BICUBIC).crop((14, 14, w - 14, h - 14)).resize((w, h), Image.BICUBIC)


PER_CLASS = 12


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    for colour in PALETTE:
        os.makedirs(root / colour)
        for i in range(PER_CLASS):
            im = tissue(colour, seed=list(PALETTE).index(colour) * 100 + i)
            if colour == "blue":
                im = im.resize((160, 112))  # the size shortcut: only blue images are 160 x 112
            im.save(root / colour / f"{colour}_{i:02d}.png")
    red = root / "red"
    shutil.copy(red / "red_00.png", red / "red_00_copy.png")
    tile = Image.open(red / "red_01.png")
    tile.transpose(Image.ROTATE_90).save(red / "red_01_turned.png")
    tile.transpose(Image.FLIP_LEFT_RIGHT).save(red / "red_01_mirrored.png")
    turned_and_cropped(Image.open(red / "red_02.png"), 12).save(red / "red_02_rotated12.png")
    Image.open(red / "red_03.png").resize((100, 100), Image.LANCZOS).save(red / "red_03_small.jpg", quality=80)
    Image.open(red / "red_04.png").transpose(Image.ROTATE_270).save(root / "green" / "green_from_red_04.png")
    out = tmp_path_factory.mktemp("audit_out")
    report = audit.main([str(root), "--out", str(out), "--quiet"])
    return {"root": str(root), "out": str(out), "report": report}


def group_containing(groups, path):
    return next((set(g) for g in groups if path in g), set())


def test_byte_identical_copies_are_exact_duplicates(planted):
    assert planted["report"]["exact_duplicate_groups"] == [["red/red_00.png", "red/red_00_copy.png"]]


def test_turned_mirrored_rotated_and_reencoded_copies_are_near_duplicates(planted):
    near = planted["report"]["near_duplicate_groups"]
    assert group_containing(near, "red/red_01.png") == {"red/red_01.png", "red/red_01_turned.png",
                                                        "red/red_01_mirrored.png"}
    assert group_containing(near, "red/red_02.png") == {"red/red_02.png", "red/red_02_rotated12.png"}
    assert group_containing(near, "red/red_03.png") == {"red/red_03.png", "red/red_03_small.jpg"}


def test_copy_under_another_label_is_a_cross_class_group(planted):
    assert planted["report"]["cross_class_groups"] == [["green/green_from_red_04.png", "red/red_04.png"]]


def test_distinct_images_are_not_grouped(planted):
    report = planted["report"]
    # the 5 planted groups: red_00 (exact), red_01, red_02, red_03 and red_04 (near), no other
    assert len(report["exact_duplicate_groups"]) + len(report["near_duplicate_groups"]) == 5
    assert report["groups"] == 3 * PER_CLASS  # every extra file joined its original, nothing more


def test_size_shortcut_is_reported(planted):
    cues = {c["cue"]: c for c in planted["report"]["shortcut_cues"]}
    assert cues["width"]["warning"] and cues["width"]["accuracy"] > cues["width"]["chance"] + 0.2
    assert {"value": 160, "class": "blue", "images": PER_CLASS} in cues["width"]["give_aways"]
    assert not cues["colour mode"]["warning"]
    assert any("shortcut: width" in w for w in planted["report"]["warnings"])


def test_a_folder_of_one_kind_is_grouped_with_no_shortcut_to_report(planted, tmp_path):
    """A recipe's known_wrong_data folder has one label: the audit still groups its copies,
    and a property shared by every image predicts nothing."""
    from training.data import Item

    blue = os.path.join(planted["root"], "blue")
    shutil.copy(os.path.join(blue, "blue_00.png"), tmp_path / "copy.png")
    shutil.copytree(blue, tmp_path / "kind")
    shutil.copy(tmp_path / "copy.png", tmp_path / "kind" / "blue_00_copy.png")
    paths = sorted(os.listdir(tmp_path / "kind"))
    report = audit.run(str(tmp_path / "kind"), [Item(p, "kind") for p in paths], progress=False)
    assert not any(w.startswith("shortcut") for w in report["warnings"])
    group = dict(zip((it["path"] for it in report["items"]), report["group"]))
    assert group["blue_00.png"] == group["blue_00_copy.png"] and len(set(group.values())) == PER_CLASS


def test_outputs_are_written_with_the_promised_keys(planted):
    out = planted["out"]
    with open(os.path.join(out, "audit.json")) as f:
        data = json.load(f)
    for key in ("exact_duplicate_groups", "near_duplicate_groups", "cross_class_groups",
                "cross_split_groups", "shortcut_cues"):
        assert key in data
    text = open(os.path.join(out, "audit.md")).read()
    assert text.index("Label conflicts") < text.index("Shortcut cues") < text.index("## Counts")
    assert "green/green_from_red_04.png" in text
    assert os.listdir(os.path.join(out, "figures"))


def read_split(out):
    with open(os.path.join(out, "split.csv")) as f:
        return list(csv.DictReader(f))


def test_split_csv_lists_every_image_and_no_group_crosses_it(planted):
    rows = read_split(planted["out"])
    assert len(rows) == planted["report"]["images"] == 3 * PER_CLASS + 6
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    sides = {}
    for r in rows:
        sides.setdefault(r["group"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())


def test_split_is_reproducible_by_seed():
    labels = [i % 3 for i in range(300)]
    groups = [i // 4 for i in range(300)]
    assert split_by_group(labels, groups, seed=1) == split_by_group(labels, groups, seed=1)
    assert split_by_group(labels, groups, seed=1) != split_by_group(labels, groups, seed=2)


def test_split_sizes_are_near_the_asked_fractions():
    labels = [i % 3 for i in range(600)]
    groups = [i // 3 for i in range(600)]
    splits = split_by_group(labels, groups, val_fraction=0.15, test_fraction=0.15, seed=0)
    for name, want in (("val", 0.15), ("test", 0.15)):
        assert abs(splits.count(name) / len(splits) - want) < 0.03


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """train/valid/test layout; one training tile's mirror image planted in test."""
    root = tmp_path_factory.mktemp("published")
    for colour in PALETTE:
        for i in range(9):
            side = ("train", "train", "train", "train", "train", "valid", "valid", "test", "test")[i]
            os.makedirs(root / side / colour, exist_ok=True)
            tissue(colour, seed=7000 + list(PALETTE).index(colour) * 100 + i).save(root / side / colour / f"{i}.png")
    Image.open(root / "train" / "red" / "0.png").transpose(Image.FLIP_TOP_BOTTOM).save(root / "test" / "red" / "leak.png")
    return str(root)


def test_published_split_with_a_planted_leak_is_detected_and_resplit(published, tmp_path):
    report = audit.main([published, "--out", str(tmp_path), "--quiet"])
    assert report["cross_split_groups"] == [["test/red/leak.png", "train/red/0.png"]]
    rows = {r["path"]: r for r in read_split(str(tmp_path))}
    assert rows["test/red/leak.png"]["split"] == rows["train/red/0.png"]["split"]
    info = json.load(open(tmp_path / "audit.json"))["split"]
    assert "replaced" in info["method"] and info["published_leaks"] == {"groups": 1, "images": 2}


def test_keep_published_split_keeps_it_and_says_so_loudly(published, tmp_path, capsys):
    audit.main([published, "--out", str(tmp_path), "--quiet", "--keep-published-split"])
    rows = {r["path"]: r for r in read_split(str(tmp_path))}
    assert rows["test/red/leak.png"]["split"] == "test" and rows["train/red/0.png"]["split"] == "train"
    assert rows["valid/red/5.png"]["split"] == "val"
    assert "KEPT A LEAKING PUBLISHED SPLIT" in capsys.readouterr().out
    assert "KEPT A LEAKING PUBLISHED SPLIT" in open(tmp_path / "audit.md").read()


def test_a_published_split_that_does_not_leak_is_kept():
    labels = ["a", "b"] * 6
    published = ["train"] * 8 + ["val", "val", "test", "test"]
    splits, info = assign(labels, list(range(12)), published)
    assert splits == published and info["method"] == "published split" and "warning" not in info


def test_tile_group_agreement_counts_pairs():
    from scripts.check_tile_groups import agreement

    a = agreement(["x", "x", "x", "y"], ["t", "t", "u", "u"])
    assert a["pairs_predicted"] == 3 and a["pairs_reference"] == 2 and a["pairs_both"] == 1
    assert a["precision"] == pytest.approx(1 / 3) and a["recall"] == pytest.approx(1 / 2)


@pytest.mark.train
def test_training_stops_on_label_conflicts_and_names_the_files(planted, tmp_path):
    from training.train import main

    with pytest.raises(SystemExit) as stop:
        main(["--data", planted["root"], "--out", str(tmp_path / "bundle"), "--verbose", "0"])
    message = str(stop.value.code)
    assert "more than one label" in message and "green/green_from_red_04.png" in message
    assert "--drop-conflicts" in message
    assert not os.path.exists(tmp_path / "bundle" / "model.keras")


@pytest.mark.slow
@pytest.mark.train
def test_kept_leaking_split_and_group_folds_are_recorded_in_the_bundle(published, tmp_path):
    from huggingface_hub import ModelCard

    from training.train import main

    out = str(tmp_path / "bundle")
    meta = main(["--data", published, "--out", out, "--keep-published-split", "--folds", "2",
                 "--image-size", "32", "--width", "8", "--epochs", "1", "--batch-size", "8", "--verbose", "0"])
    assert meta["split"]["published_leaks"] == {"groups": 1, "images": 2}
    assert "KEPT A LEAKING PUBLISHED SPLIT" in meta["split"]["warning"]
    assert meta["audit"]["cross_split_groups"] == 1
    assert len(meta["split"]["fingerprint"]) == 64
    cv = meta["cross_validation"]
    assert cv["folds"] == 2 and len(cv["accuracy"]["folds"]) == 2 and sum(cv["test_images"]) == 28
    card = ModelCard.load(os.path.join(out, "README.md")).text
    assert "WARNING: KEPT A LEAKING PUBLISHED SPLIT" in card and "Cross-validation by group, 2 folds" in card


# A group file (--groups): patient or scan ids, joined with what the audit finds.

@pytest.fixture(scope="module")
def with_group_file(tmp_path_factory):
    """Two classes of distinct tiles, one mirrored copy, and a group file that puts three
    distinct red tiles (one of them the mirrored copy's original) in one 'patient'."""
    root = tmp_path_factory.mktemp("grouped")
    for colour in ("red", "blue"):
        os.makedirs(root / colour)
        for i in range(8):
            tissue(colour, seed=9000 + list(PALETTE).index(colour) * 100 + i).save(root / colour / f"{i}.png")
    Image.open(root / "red" / "2.png").transpose(Image.FLIP_LEFT_RIGHT).save(root / "red" / "2_mirrored.png")
    groups = root.parent / "patients.csv"
    groups.write_text("path,group\nred/0.png,patient-a\n./red/1.png,patient-a\nred/2.png,patient-a\n"
                      "blue/0.png,patient-b\nblue/missing.png,patient-b\n")
    out = tmp_path_factory.mktemp("grouped_out")
    report = audit.main([str(root), "--out", str(out), "--quiet", "--groups", str(groups)])
    return {"root": str(root), "out": str(out), "report": report, "groups": str(groups)}


def test_group_file_joins_its_groups_with_the_audits(with_group_file):
    rows = {r["path"]: r for r in read_split(with_group_file["out"])}
    joined = {"red/0.png", "red/1.png", "red/2.png", "red/2_mirrored.png"}  # file + the audit's copy
    assert len({rows[p]["group"] for p in joined}) == 1
    assert len({rows[p]["split"] for p in joined}) == 1
    assert rows["red/3.png"]["group"] not in {rows[p]["group"] for p in joined}
    assert with_group_file["report"]["groups"] == 17 - 3  # 17 images; 3 joins by file and audit


def test_group_file_use_is_recorded_with_its_hash_and_merges(with_group_file):
    import hashlib

    data = json.load(open(os.path.join(with_group_file["out"], "audit.json")))
    gf = data["group_file"]
    assert gf["sha256"] == hashlib.sha256(open(with_group_file["groups"], "rb").read()).hexdigest()
    assert gf["groups"] == 2 and gf["groups_merged"] == 2  # red/1 and the red/2 pair joined red/0
    assert "patients.csv" in open(os.path.join(with_group_file["out"], "audit.md")).read()
    assert audit.summary(with_group_file["report"])["group_file"]["sha256"] == gf["sha256"]


def test_group_file_paths_not_in_the_data_are_reported(with_group_file):
    gf = with_group_file["report"]["group_file"]
    assert gf["paths_unknown"] == 1 and gf["unknown_examples"] == ["blue/missing.png"]
    assert any("blue/missing.png" in w for w in with_group_file["report"]["warnings"])


def test_group_file_without_a_path_group_header_is_refused_in_one_line(with_group_file, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,patient\nred/0.png,a\n")
    with pytest.raises(SystemExit) as stop:
        audit.main([with_group_file["root"], "--out", str(tmp_path / "o"), "--quiet", "--groups", str(bad)])
    assert "expected a CSV with the header 'path,group'" in str(stop.value.code)
    assert "\n" not in str(stop.value.code)


def smooth_slice(seed, shift=0, size=128):
    """A CT-like slice with little texture: a blurred body outline, placed, sized and turned
    per 'patient', with three dark regions."""
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size), np.float32)
    c = size // 2
    body = (int(rng.integers(35, 60)), int(rng.integers(25, 50)))
    centre = (c + shift + int(rng.integers(-12, 12)), c + int(rng.integers(-12, 12)))
    cv2.ellipse(a, centre, body, float(rng.uniform(-30, 30)), 0, 360, 180, -1)
    for _ in range(3):
        cv2.ellipse(a, (int(rng.integers(30, 98)) + shift, int(rng.integers(30, 98))),
                    (int(rng.integers(6, 20)), int(rng.integers(6, 25))), float(rng.uniform(0, 180)),
                    0, 360, float(rng.uniform(0, 90)), -1)
    a = cv2.GaussianBlur(a, (0, 0), 4)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_near_identical_low_texture_slices_are_joined_by_their_thumbnails(tmp_path):
    for label in ("a", "b"):
        os.makedirs(tmp_path / label)
        for i in range(4):
            smooth_slice(100 * (label == "b") + i).save(tmp_path / label / f"{i}.png")
    Image.fromarray(np.clip(np.asarray(smooth_slice(0, shift=1), np.float32) * 1.05 + 3, 0, 255)
                    .astype(np.uint8)).save(tmp_path / "a" / "0_next.png")
    first, second = (audit.describe(str(tmp_path / "a" / f)) for f in ("0.png", "0_next.png"))
    inliers, _ = audit.near_copy(first, second)
    assert inliers < audit.MIN_INLIERS  # too smooth for keypoints: only the thumbnails can join them
    report = audit.run(str(tmp_path), progress=False)
    assert [sorted(g) for g in report["near_duplicate_groups"]] == [["a/0.png", "a/0_next.png"]]


def _store(described, folder):
    os.makedirs(folder)
    store = audit.Store(str(folder))
    for d in described:
        store.add(d)
    return store.close()


def test_a_zoomed_in_copy_is_its_originals_first_keypoint_candidate(tmp_path):
    """A 2x zoom changes the colour histogram and the layout thumbnail; keypoint votes still
    name the original first among tiles of the same colour."""
    tiles = [tissue("red", seed=500 + i, size=224) for i in range(12)]
    zoomed = tiles[0].crop((56, 56, 168, 168)).resize((224, 224), Image.BICUBIC).transpose(Image.FLIP_LEFT_RIGHT)
    for i, im in enumerate(tiles + [zoomed]):
        im.save(tmp_path / f"{i:02d}.png")
    described = [audit.describe(str(tmp_path / f"{i:02d}.png")) for i in range(13)]
    firsts = dict(audit._vote_top_k(_store(described, tmp_path / "work"), 1).tolist())
    assert firsts[12] == 0
    inliers, agreement = audit.near_copy(described[0], described[12])
    assert inliers >= audit.MIN_INLIERS and agreement >= audit.MIN_DETAIL_AGREEMENT


def test_a_group_file_with_path_and_one_other_column_groups_by_that_column(tmp_path):
    """LC25000's published clusters come as path,tile_group: read as they are, no copy needed."""
    groups_file = tmp_path / "tiles.csv"
    groups_file.write_text("path,tile_group\na/1.png,t1\na/2.png,t1\nb/3.png,t2\n")
    groups, info = audit.read_group_file(str(groups_file), {"a/1.png", "a/2.png", "b/3.png"})
    assert sorted(groups) == [["a/1.png", "a/2.png"], ["b/3.png"]] and info["groups"] == 2


# ---------------------------------------------------------------- the audit on disk, shard by shard

def _findings(report):
    keys = ("exact_duplicate_groups", "near_duplicate_groups", "cross_class_groups", "cross_split_groups")
    return {k: report[k] for k in keys} | {"group": report["group"], "fingerprint": report["fingerprint"],
                                           "shortcut_cues": report["shortcut_cues"]}


def test_the_audit_in_shards_finds_what_one_index_over_every_image_finds(planted, tmp_path):
    """Several small indexes (each asked by every image, each keypoint's nearest kept on disk
    between them) give the groups of one index over all of them: the audit of a set larger
    than one shard finds what it found in memory."""
    sharded = audit.run(planted["root"], progress=False, shard=7, work=str(tmp_path))
    assert _findings(sharded) == _findings(planted["report"])
    assert os.listdir(tmp_path) == []  # the work folder is left empty


def _joined(groups):
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iq_othnccd"])
def test_a_real_data_set_audited_in_shards_has_the_in_memory_findings(name, tmp_path):
    """On a real data set (847 CT slices, a minute on 2 cores), one index over every image
    (the default holds them all, as the audit held everything in memory before: audit.json
    and split.csv are those of the in-memory audit on all three data sets, docs/scale.md)
    against indexes of 200 images each: the colour and layout searches in shards find the
    same groups, image for image; the keypoint votes in lists (k-means cells, each its own
    kd-tree, so other approximate neighbours) join no image that one index keeps apart, and
    may miss a borderline link: the group count within 1% (or one), the tolerance the
    committed recipes' test allows between CPUs."""
    from tests.helpers import SHARED_DATA

    data = os.path.join(SHARED_DATA, name)
    if not os.path.isdir(data):
        pytest.skip(f"{data} is not here (the shared data folder)")
    whole = audit.run(data, progress=False)
    assert whole["images"] <= audit.SHARD
    votes = audit._vote_top_k
    try:  # the colour and layout indexes in shards, the votes in one index
        audit._vote_top_k = lambda store, k, shard=None, work=None: votes(store, k, audit.SHARD, work)
        shards = audit.run(data, progress=False, shard=200, work=str(tmp_path))
    finally:
        audit._vote_top_k = votes
    assert _findings(shards) == _findings(whole)
    lists = audit.run(data, progress=False, shard=200, work=str(tmp_path))
    for key in ("exact_duplicate_groups", "near_duplicate_groups", "cross_class_groups", "cross_split_groups"):
        assert _joined(lists[key]) <= _joined(whole[key]), key
    assert abs(lists["groups"] - whole["groups"]) <= max(1, 0.01 * whole["groups"])
