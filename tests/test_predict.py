"""Prediction over an archive (lungclf/predict.py, `python -m lungclf.predict`): every row is
the app's answer, a bad file is a row with its message, an interrupted run resumes with only
the rest, both table formats carry the run's record, and two Dask workers give the rows of
one process.

    python -m pytest tests/test_predict.py -q                        # the fast ones
    python -m pytest tests/test_predict.py -m "slow or not slow" -q  # with the committed model

The slow tests classify one folder of made-up images (H&E-like tiles, grey pictures the
wrong-input check flags, a text file and an empty file posing as images) with the committed
LC25000 bundle, loaded once for the module.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from lungclf.predict import Parts, PredictError, find_images, main, predict, read_output, write_output
from tests.helpers import COMMITTED_MODEL, ROOT, grey_picture, he_tile

LABELS = ["lung_aca", "lung_n", "lung_scc"]


def make_archive(folder):
    """40 files in two slide folders (33 tiles, 5 grey pictures, a text file and an empty
    file named as images), and two files that are not images by name: 40 paths, sorted."""
    for slide in ("slide1", "slide2/deeper"):
        os.makedirs(folder / slide)
    for i in range(33):
        name = folder / ("slide1" if i % 2 else "slide2/deeper") / f"tile{i:02d}.{'jpg' if i % 3 else 'png'}"
        he_tile(i, size=160).save(name)
    for i in range(5):
        Image.fromarray(grey_picture(100 + i, 90)).save(folder / "slide1" / f"grey{i}.png")
    (folder / "slide1" / "notes.png").write_text("not an image")
    (folder / "slide2" / "empty.jpg").write_bytes(b"")
    (folder / "slide1" / "notes.txt").write_text("no image extension: not listed")
    (folder / "slide1" / ".hidden.png").write_text("hidden: not listed")
    return str(folder)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return make_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def classifier():
    """The committed bundle as the app serves it (TTA off, the app's default)."""
    from lungclf.bundle import load
    from lungclf.inference import Classifier

    return Classifier(load(COMMITTED_MODEL))


@pytest.fixture(scope="module")
def table(archive, classifier, tmp_path_factory):
    """One uninterrupted run over the archive into a .parquet: (rows, record)."""
    out = str(tmp_path_factory.mktemp("run") / "predictions.parquet")
    predict(COMMITTED_MODEL, archive, out, chunk=8, progress=False, classifier=classifier)
    return read_output(out)


def assert_same_rows(got, expected):
    """The same rows, image for image: every value equal, floats to 1e-12 of their size (the
    feature distance is a BLAS product whose last bit can depend on how many images shared
    its batch)."""
    assert [r["path"] for r in got] == [r["path"] for r in expected]
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float) and isinstance(b[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-12, abs=0), (a["path"], key)
            else:
                assert a[key] == b[key], (a["path"], key)


def by_path(rows):
    return {os.path.basename(r["path"]): r for r in rows}


# ---------------------------------------------------------------- fast: no model

def test_a_folder_is_searched_recursively_for_image_files_in_sorted_order(tmp_path):
    paths = find_images(make_archive(tmp_path))
    assert len(paths) == 40 and paths == sorted(paths)
    assert all(os.path.isabs(p) for p in paths)
    assert not any(p.endswith(("notes.txt", ".hidden.png")) for p in paths)


def test_a_list_names_files_relative_to_its_folder_once_each_skipping_comments(tmp_path):
    (tmp_path / "list.txt").write_text("# tiles\na.png\n\nsub/b.jpg\na.png\n/elsewhere/c.tif\n")
    assert find_images(str(tmp_path / "list.txt")) == [str(tmp_path / "a.png"), str(tmp_path / "sub" / "b.jpg"),
                                                       "/elsewhere/c.tif"]


def test_parts_of_another_bundle_or_options_are_refused_not_mixed(tmp_path):
    Parts(str(tmp_path / "p.csv")).start({"model_sha256": "aaa", "tta": False, "heatmaps": None})
    with pytest.raises(PredictError, match="another run"):
        Parts(str(tmp_path / "p.csv")).start({"model_sha256": "bbb", "tta": False, "heatmaps": None})


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_a_table_reads_back_as_written_with_its_record(tmp_path, ext):
    rows = [{"path": "/a/x.png", "label": "Benign lung tissue", "label_id": "lung_n", "confidence": 0.1 + 0.2,
             "p_lung_aca": 1e-300, "p_lung_n": 0.1 + 0.2, "p_lung_scc": 2 / 3, "wrong_input": False,
             "check": "features", "score": 3.25, "threshold": 11.5, "message": None, "error": None,
             "heatmap": None},
            {**dict.fromkeys(["label", "label_id", "confidence", "p_lung_aca", "p_lung_n", "p_lung_scc",
                              "wrong_input", "check", "score", "threshold", "message", "heatmap"]),
             "path": "/a/y, \"quoted\".png", "error": "The file is empty."}]
    record = {"bundle": {"model_sha256": "d0fd"}, "versions": {"numpy": np.__version__}}
    out = str(tmp_path / f"t.{ext}")
    write_output(rows, out, LABELS, record)
    assert read_output(out) == (rows, record)


def test_the_command_says_error_in_one_line_for_a_missing_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([COMMITTED_MODEL, str(tmp_path / "nothing"), "--out", str(tmp_path / "p.csv")])
    assert str(e.value) == f"error: {tmp_path / 'nothing'}: no such folder or file"


def test_the_command_refuses_an_output_that_is_neither_parquet_nor_csv(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: .*must end in \.parquet or \.csv$"):
        main([COMMITTED_MODEL, str(tmp_path), "--out", str(tmp_path / "p.xlsx")])


# ---------------------------------------------------------------- slow: the committed model

@pytest.mark.slow
def test_every_row_is_the_apps_answer_for_that_file(table, classifier):
    from lungclf.preprocess import ImageError

    rows, _ = table
    assert len(rows) == 40
    for row in rows:
        try:
            answer = classifier.analyse(row["path"])  # what app.py's /predict computes
        except ImageError:
            assert row["error"]
            continue
        probs = answer.probabilities
        assert row["label"] == max(probs, key=probs.get)
        assert row["confidence"] == pytest.approx(max(probs.values()), abs=1e-6)
        assert [row[f"p_{lab}"] for lab in LABELS] == pytest.approx(list(probs.values()), abs=1e-6)
        assert (row["wrong_input"], row["check"]) == (answer.verdict.wrong_input, answer.verdict.check)
        assert row["score"] == pytest.approx(answer.verdict.score, abs=1e-4)
        assert row["message"] == (answer.verdict.message or None)
        assert row["error"] is None


@pytest.mark.slow
def test_the_label_is_the_readable_class_name_and_label_id_the_class(table):
    rows, _ = table
    names = json.load(open(os.path.join(COMMITTED_MODEL, "classes.json")))["names"]
    answered = [r for r in rows if r["error"] is None]
    assert answered and all(r["label"] == names[r["label_id"]] for r in answered)


@pytest.mark.slow
def test_grey_pictures_are_flagged_as_wrong_input_with_the_message(table):
    grey = [r for name, r in by_path(table[0]).items() if name.startswith("grey")]
    assert len(grey) == 5
    assert all(r["wrong_input"] and r["check"] == "colour" and "grey image" in r["message"] for r in grey)


@pytest.mark.slow
def test_a_file_that_cannot_be_read_gets_a_row_with_its_message(table):
    rows = by_path(table[0])
    assert rows["notes.png"]["error"] == ("This file is not an image we can read. Use JPEG, PNG, BMP, WebP, "
                                          "TIFF, GIF or DICOM.")
    assert rows["empty.jpg"]["error"] == "The file is empty."
    assert rows["notes.png"]["label"] is None and rows["notes.png"]["wrong_input"] is None


@pytest.mark.slow
def test_a_listed_file_that_does_not_exist_gets_a_row_saying_so(tmp_path, archive, classifier):
    (tmp_path / "list.txt").write_text(f"{archive}/slide1/tile01.jpg\ngone.png\n")
    out = str(tmp_path / "p.csv")
    predict(COMMITTED_MODEL, str(tmp_path / "list.txt"), out, progress=False, classifier=classifier)
    rows = by_path(read_output(out)[0])
    assert rows["gone.png"]["error"] == "No such file."
    assert rows["tile01.jpg"]["label"] and rows["tile01.jpg"]["error"] is None


@pytest.mark.slow
@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_the_table_records_the_bundles_digest_and_the_software_versions(tmp_path, archive, classifier, table, ext):
    import tensorflow as tf

    from lungclf.bundle import sha256

    out = str(tmp_path / f"predictions.{ext}")
    predict(COMMITTED_MODEL, archive, out, progress=False, classifier=classifier)
    rows, record = read_output(out)
    assert_same_rows(rows, table[0])
    assert record["bundle"] == {"name": "lc25000", "spec": COMMITTED_MODEL, "revision": None,
                                "model_sha256": sha256(os.path.join(COMMITTED_MODEL, "model.keras"))}
    assert record["versions"]["tensorflow"] == tf.__version__
    assert {"python", "keras", "numpy", "pillow", "opencv", "lungclf"} <= set(record["versions"])
    assert record["summary"]["images"] == 40 and record["summary"]["errors"] == 2
    assert not os.path.exists(out + ".parts")  # merged, then removed
    assert os.path.exists(out + ".json") == (ext == "csv")  # a CSV's record beside it


@pytest.mark.slow
def test_an_interrupted_run_resumes_with_only_the_rest(tmp_path, archive, classifier, table, monkeypatch):
    import lungclf.predict

    out = str(tmp_path / "predictions.parquet")
    made, row_of = [], lungclf.predict.row_of

    def interrupted_after_nine(*args, **kw):
        if len(made) == 9:
            raise KeyboardInterrupt  # as Ctrl-C during the tenth image
        made.append(row_of(*args, **kw))
        return made[-1]

    monkeypatch.setattr(lungclf.predict, "row_of", interrupted_after_nine)
    with pytest.raises(KeyboardInterrupt):
        predict(COMMITTED_MODEL, archive, out, chunk=4, progress=False, classifier=classifier)
    monkeypatch.setattr(lungclf.predict, "row_of", row_of)
    assert not os.path.exists(out)
    assert sum(len(json.load(open(os.path.join(out + ".parts", f)))["rows"])
               for f in os.listdir(out + ".parts") if f.startswith("part-")) == 9  # 2 whole chunks, 1 at the stop

    asked, analyse_many = [], classifier.analyse_many

    def recorded(paths, *args, **kw):
        asked.extend(paths)
        return analyse_many(paths, *args, **kw)

    monkeypatch.setattr(classifier, "analyse_many", recorded)
    summary = predict(COMMITTED_MODEL, archive, out, chunk=4, progress=False, classifier=classifier)
    assert (summary["done_before"], summary["classified"]) == (9, 31)
    assert asked == find_images(archive)[9:]
    assert_same_rows(read_output(out)[0], table[0])


@pytest.mark.slow
def test_heatmaps_are_the_pictures_the_app_returns(tmp_path, archive, classifier):
    from lungclf.heatmap import overlay

    out, pictures = str(tmp_path / "p.csv"), tmp_path / "heatmaps"
    predict(COMMITTED_MODEL, os.path.join(archive, "slide1"), out, heatmaps=str(pictures), progress=False,
            classifier=classifier)
    rows = by_path(read_output(out)[0])
    row = rows["tile01.jpg"]
    assert row["heatmap"] == str(pictures / "tile01.jpg.png")
    answer = classifier.analyse(row["path"])
    expected = overlay(answer.rgb, answer.cam, 0.5)  # app.py's OPACITY
    saved = np.asarray(Image.open(row["heatmap"]))
    assert saved.shape == expected.shape and np.abs(saved.astype(int) - expected).max() <= 1
    assert rows["notes.png"]["heatmap"] is None


@pytest.mark.slow
def test_two_local_dask_workers_give_the_rows_of_one_process(tmp_path, archive, table):
    """The command as a person runs it: progress on stderr, each worker loads the bundle once."""
    out = str(tmp_path / "predictions.csv")
    run = subprocess.run([sys.executable, "-m", "lungclf.predict", COMMITTED_MODEL, archive, "--out", out,
                          "--workers", "2", "--chunk", "8"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "classifying: 100%" in run.stderr
    assert f"{out}: 40 images (0 done before, 40 now" in run.stderr
    rows, record = read_output(out)
    assert_same_rows(rows, table[0])  # image for image
    assert record["engine"]["name"] == "dask.distributed" and record["engine"]["workers"] == 2
    assert sorted(record["engine"]["processes"].values()) == [1, 1]  # two processes, one load each


@pytest.mark.slow
def test_the_benchmark_measures_predict_against_the_forward_pass(tmp_path):
    run = subprocess.run([sys.executable, "scripts/benchmark_predict.py", "--quick", "--json", str(tmp_path / "b.json")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    figures = json.load(open(tmp_path / "b.json"))
    assert figures["images"] == 96 and figures["forward_images_per_s"] > 0 and figures["predict_images_per_s"] > 0
    assert figures["predict_over_forward"] > 0 and len(figures["load_before"]) == 3
    assert figures["engine"] in ("onnx", "keras")  # the forward pass timed on predict's own engine


@pytest.mark.slow
def test_with_tta_the_rows_are_the_apps_answers_with_TTA_on(tmp_path, archive):
    from lungclf.bundle import load
    from lungclf.inference import Classifier

    app = Classifier(load(COMMITTED_MODEL), tta=True)  # app.py with TTA=1
    out = str(tmp_path / "p.csv")
    predict(COMMITTED_MODEL, os.path.join(archive, "slide2"), out, tta=True, progress=False, classifier=app)
    rows, record = read_output(out)
    assert record["options"]["tta"] is True
    for row in [r for r in rows if r["error"] is None]:
        probs = app.analyse(row["path"]).probabilities
        assert [row[f"p_{lab}"] for lab in LABELS] == pytest.approx(list(probs.values()), abs=1e-6)
