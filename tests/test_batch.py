"""Many images at once (lungclf.batch and app.py's /predict_batch and /predict_series):
limits, hostile .zip files, the table and CSV, the scan-level answer of a series.

    python -m pytest tests/test_batch.py -q                     # the fast ones
    python -m pytest tests/test_batch.py -m "slow or not slow" -q   # with the running app
"""

import csv
import io
import os
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from lungclf.batch import (ArchiveError, BatchError, Item, Limits, Prediction, Row, Workspace,
                           aggregate, expand, extract_member, order_slices, write_csv)
from tests.make_dicom import bands, ct_slice


def png_bytes(seed, size=40):
    a = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def write(path, data):
    path.write_bytes(data)
    return str(path)


def make_zip(path, members, compression=zipfile.ZIP_DEFLATED):
    """members: {name: bytes}; returns the path as a string."""
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return str(path)


@pytest.fixture
def ws():
    with Workspace() as w:
        yield w


def refused_zip_message(tmp_path, ws, members, limits=Limits(), **kw):
    """Expand one hostile .zip beside a good image: the .zip is one refused row, the image
    goes on, nothing of the .zip is left in the workspace."""
    good = write(tmp_path / "good.png", png_bytes(0))
    bad = make_zip(tmp_path / "bad.zip", members, **kw)
    items = expand([good, bad], ws, limits)
    assert [(it.name, it.path is not None) for it in items] == [("good.png", True), ("bad.zip", False)]
    assert os.listdir(ws.path) == [] or all(os.path.getsize(os.path.join(ws.path, f)) <= 2 ** 20
                                            for f in os.listdir(ws.path))
    return items[1].error


def test_zip_members_become_rows_named_after_the_archive(tmp_path, ws):
    z = make_zip(tmp_path / "tiles.zip", {"a/one.png": png_bytes(1), "two.png": png_bytes(2),
                                          "__MACOSX/._two.png": b"x", "a/.DS_Store": b"x"})
    items = expand([z], ws, Limits())
    assert [it.name for it in items] == ["tiles.zip/a/one.png", "tiles.zip/two.png"]
    assert all(os.path.dirname(it.path) == ws.path for it in items)
    with open(items[0].path, "rb") as f:
        assert f.read() == png_bytes(1)


def test_workspace_is_deleted_afterwards(tmp_path):
    z = make_zip(tmp_path / "tiles.zip", {"one.png": png_bytes(1)})
    with Workspace() as w:
        expand([z], w, Limits())
        assert os.listdir(w.path)
    assert not os.path.exists(w.path)


def test_zip_bomb_by_ratio_is_refused_from_the_header(tmp_path, ws):
    message = refused_zip_message(tmp_path, ws, {"zeros.png": bytes(5 * 2 ** 20)})
    assert "expands" in message and "ZIP_MAX_RATIO" in message


def test_zip_bigger_than_the_request_allows_is_refused_whole(tmp_path, ws):
    data = np.random.default_rng(0).bytes(2 ** 20)  # incompressible: the ratio is fine
    z = make_zip(tmp_path / "big.zip", {f"{i}.png": data for i in range(3)})
    with pytest.raises(BatchError, match=r"big.zip expands to 3.0 MB.*BATCH_MAX_MB"):
        expand([z], ws, Limits(max_bytes=2 * 2 ** 20))


def lie_about_size(path, declared):
    """Rewrite the uncompressed size of a one-member zip in both of its headers."""
    data = bytearray(open(path, "rb").read())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, local + 22, declared)
    struct.pack_into("<I", data, central + 24, declared)
    open(path, "wb").write(bytes(data))


def test_zip_bomb_whose_headers_lie_is_refused_while_extracting(tmp_path, ws):
    good = write(tmp_path / "good.png", png_bytes(0))
    bad = make_zip(tmp_path / "liar.zip", {"zeros.png": bytes(3 * 2 ** 20)})
    lie_about_size(bad, 100)
    with zipfile.ZipFile(bad) as zf:  # the headers now pass the ratio check
        info = zf.infolist()[0]
        assert info.file_size / info.compress_size < Limits().zip_max_ratio
    items = expand([good, bad], ws, Limits())
    assert items[1].path is None and "damaged" in items[1].error
    assert sum(os.path.getsize(os.path.join(ws.path, f)) for f in os.listdir(ws.path)) <= 100


def test_extraction_stops_at_the_byte_budget_whatever_the_header_says(tmp_path, ws):
    z = make_zip(tmp_path / "a.zip", {"noise.png": np.random.default_rng(0).bytes(300_000)})
    with zipfile.ZipFile(z) as zf:
        with pytest.raises(ArchiveError, match="zip bomb"):
            extract_member(zf, zf.infolist()[0], os.path.join(ws.path, "x"), Limits(), 100_000)
    assert os.path.getsize(os.path.join(ws.path, "x")) <= 100_000


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/etc/evil.png",
                                  "C:/evil.png", "a\\..\\..\\evil.png"])
def test_member_name_that_climbs_out_is_refused(tmp_path, ws, name):
    message = refused_zip_message(tmp_path, ws, {"ok.png": png_bytes(1), name: png_bytes(2)})
    assert "points outside the archive" in message
    assert not os.path.exists(os.path.join(os.path.dirname(ws.path), "evil.png"))


@pytest.mark.parametrize("inner", ["inner.zip", "slices.tar.gz", "x.7z"])
def test_archive_inside_the_archive_is_refused(tmp_path, ws, inner):
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as zf:
        zf.writestr("one.png", png_bytes(1))
    message = refused_zip_message(tmp_path, ws, {"ok.png": png_bytes(1), inner: nested.getvalue()})
    assert "archive inside the archive" in message


def test_link_in_the_archive_is_refused(tmp_path, ws):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo("passwd.png")
        info.external_attr = (0o120777 << 16)  # a symbolic link
        zf.writestr(info, "/etc/passwd")
    items = expand([write(tmp_path / "good.png", png_bytes(0)), str(path)], ws, Limits())
    assert "a link" in items[1].error


def test_damaged_zip_is_one_refused_row(tmp_path, ws):
    bad = write(tmp_path / "broken.zip", b"PK\x03\x04" + bytes(200))
    items = expand([write(tmp_path / "good.png", png_bytes(0)), bad], ws, Limits())
    assert items[1].error == "This .zip file is damaged and cannot be opened."


def test_too_many_files_are_refused_naming_the_setting(tmp_path, ws):
    paths = [write(tmp_path / f"{i}.png", png_bytes(i)) for i in range(4)]
    with pytest.raises(BatchError, match=r"^4 files in one request; at most 3 \(BATCH_MAX_FILES\)"):
        expand(paths, ws, Limits(max_files=3))
    z = make_zip(tmp_path / "many.zip", {f"{i}.png": png_bytes(i) for i in range(3)})
    with pytest.raises(BatchError, match="4 files"):
        expand([paths[0], z], ws, Limits(max_files=3))


def test_total_size_past_the_limit_is_refused(tmp_path, ws):
    paths = [write(tmp_path / f"{i}.png", png_bytes(i, size=200)) for i in range(3)]
    total = sum(os.path.getsize(p) for p in paths)
    with pytest.raises(BatchError, match=r"BATCH_MAX_MB"):
        expand(paths, ws, Limits(max_bytes=total - 1))
    assert len(expand(paths, ws, Limits(max_bytes=total))) == 3


def test_total_pixels_past_the_limit_are_refused_from_the_headers(tmp_path, ws):
    png = write(tmp_path / "a.png", png_bytes(0, size=40))  # 1,600 pixels
    dcm = str(ct_slice(tmp_path / "b.dcm", bands([0, 0, 0], size=30)))  # 900 pixels
    with pytest.raises(BatchError, match=r"2,500 pixels in all; at most 2,499 .*BATCH_MAX_PIXELS"):
        expand([png, dcm], ws, Limits(max_pixels=2499))
    assert len(expand([png, dcm], ws, Limits(max_pixels=2500))) == 2


def test_limits_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("BATCH_MAX_FILES", "7")
    monkeypatch.setenv("BATCH_MAX_MB", "1.5")
    monkeypatch.setenv("BATCH_MAX_PIXELS", "1_000")
    monkeypatch.setenv("ZIP_MAX_RATIO", "20")
    assert Limits.from_env() == Limits(7, 1_572_864, 1000, 20.0)
    monkeypatch.setenv("BATCH_MAX_FILES", "many")
    with pytest.raises(SystemExit, match="BATCH_MAX_FILES='many' is not a number"):
        Limits.from_env()


def test_csv_holds_the_table_and_defuses_formula_file_names(tmp_path):
    rows = [Row("=HYPERLINK(x).png", Prediction({"a": 0.25, "b": 0.75}, "Looks unlike", 12.5)),
            Row("ok.png", Prediction({"a": 0.9, "b": 0.1})),
            Row("bad.txt", error="This file is not an image we can read.")]
    rows[0].file = __import__("lungclf.batch").batch.display_name(rows[0].file)
    path = write_csv(rows, tmp_path / "out.csv")
    with open(path, newline="") as f:
        back = list(csv.reader(f))
    assert back == [["file", "label", "confidence", "wrong_input", "wrong_input_score", "error"],
                    ["'=HYPERLINK(x).png", "b", "0.75", "Looks unlike", "12.5", ""],
                    ["ok.png", "a", "0.9", "", "", ""],
                    ["bad.txt", "", "", "", "", "This file is not an image we can read."]]


def test_scan_answer_is_the_mean_over_slices_not_flagged():
    rows = [Row("1", Prediction({"a": 0.8, "b": 0.2})),
            Row("2", Prediction({"a": 0.4, "b": 0.6})),
            Row("3", Prediction({"a": 0.0, "b": 1.0}, warning="wrong input", score=99.0)),
            Row("4", error="damaged")]
    answer = aggregate(rows)
    assert answer.probabilities == pytest.approx({"a": 0.6, "b": 0.4})
    assert (answer.used, answer.flagged, answer.unreadable) == (2, 1, 1)
    assert "from 2 of 4 slices" in answer.text()


def test_scan_with_every_slice_flagged_gets_no_answer():
    answer = aggregate([Row("1", Prediction({"a": 1.0}, warning="wrong input", score=50.0))])
    assert answer.probabilities is None and answer.text().startswith("**No scan answer**")


def test_slices_are_ordered_by_dicom_position_else_by_name_with_numbers(tmp_path):
    paths = {z: str(ct_slice(tmp_path / f"s{i}.dcm", bands([0, 0, 0]), position=z))
             for i, z in enumerate([30.0, -10.0, 10.0])}
    items = [Item(os.path.basename(p), p) for p in paths.values()]
    assert [it.path for it in order_slices(items)] == [paths[-10.0], paths[10.0], paths[30.0]]
    named = [Item(n, write(tmp_path / n, png_bytes(0))) for n in ["slice10.png", "slice2.png",
                                                                 "slice1.png"]]
    assert [it.name for it in order_slices(named)] == ["slice1.png", "slice2.png", "slice10.png"]
