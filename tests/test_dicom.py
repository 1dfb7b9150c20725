"""DICOM in (lungclf.dicom through lungclf.preprocess): Hounsfield units, the lung window,
compressed pixel data, and the files that must be refused, all made here with pydicom.

    python -m pytest tests/test_dicom.py -q
"""

import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, JPEGLossless, RLELossless

from lungclf import dicom
from lungclf.preprocess import ImageError, load_image, read_rgb
from tests.make_dicom import SECRET, bands, ct_slice

# Band values at the lower edge, the center and the upper edge of a window, and the grey
# each must give: DICOM's linear window puts the center at 127.5 + 0.5 * 255 / (width - 1).
LUNG_EDGES = [-1350, -600, 150]  # center -600, width 1500
MEDIASTINUM_EDGES = [-160, 40, 240]  # center 40, width 400
EXPECTED_GREY = [0, 128, 255]


def band_greys(rgb):
    """The grey of the middle column of each of three bands."""
    assert np.array_equal(rgb[:, :, 0], rgb[:, :, 2])  # grey: three equal channels
    size = rgb.shape[1]
    return [int(rgb[rgb.shape[0] // 2, (2 * i + 1) * size // 6, 0]) for i in range(3)]


def test_slice_without_header_window_gets_the_standard_lung_window(tmp_path):
    path = ct_slice(tmp_path / "a.dcm", bands(LUNG_EDGES))
    assert band_greys(read_rgb(str(path))) == EXPECTED_GREY


def test_slice_with_a_header_window_uses_it(tmp_path):
    path = ct_slice(tmp_path / "a.dcm", bands(MEDIASTINUM_EDGES), window=(40, 400))
    assert band_greys(read_rgb(str(path))) == EXPECTED_GREY


def test_of_several_header_windows_the_one_named_lung_is_used(tmp_path):
    path = ct_slice(tmp_path / "a.dcm", bands(LUNG_EDGES), window=([40, -600], [400, 1500]),
                    explanation=["MEDIASTINUM", "LUNG"])
    assert band_greys(read_rgb(str(path))) == EXPECTED_GREY


def test_rescale_slope_and_intercept_give_hounsfield_units(tmp_path):
    hu = bands(LUNG_EDGES)
    plain = ct_slice(tmp_path / "plain.dcm", hu, intercept=-1024, slope=1)
    scaled = ct_slice(tmp_path / "scaled.dcm", hu, intercept=-1000, slope=2)
    assert not np.array_equal(pydicom.dcmread(plain).pixel_array, pydicom.dcmread(scaled).pixel_array)
    assert band_greys(read_rgb(str(scaled))) == EXPECTED_GREY


def test_monochrome1_is_shown_with_high_values_bright(tmp_path):
    path = ct_slice(tmp_path / "a.dcm", bands(LUNG_EDGES), photometric="MONOCHROME1")
    assert band_greys(read_rgb(str(path))) == [255, 127, 0]


def test_dicom_gives_the_model_the_same_input_as_a_png_of_the_same_grey(tmp_path):
    # Window center 128, width 256 maps HU 0..255 onto grey 0..255 one to one.
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 56)).astype(np.uint8)
    dcm = ct_slice(tmp_path / "slice.dcm", grey.astype(float), intercept=0, window=(128, 256))
    png = tmp_path / "slice.png"
    Image.fromarray(grey).save(png)
    assert np.array_equal(load_image(str(dcm), 32), load_image(str(png), 32))
    with open(dcm, "rb") as f:  # bytes, as an upload may arrive, are recognised by the marker
        assert np.array_equal(load_image(f.read(), 32), load_image(str(png), 32))


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_slice_reads_like_the_uncompressed_one(tmp_path, syntax):
    hu = np.random.default_rng(1).uniform(-1100, 300, (48, 48))
    plain = ct_slice(tmp_path / "plain.dcm", hu)
    packed = ct_slice(tmp_path / "packed.dcm", hu, compress=syntax)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(read_rgb(str(packed)), read_rgb(str(plain)))


def test_compression_without_a_decoder_is_refused_naming_the_format(tmp_path):
    path = ct_slice(tmp_path / "a.dcm", bands(LUNG_EDGES))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xc3" + bytes(64)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageError, match="compressed as JPEG Lossless.*cannot decode"):
        read_rgb(str(path))


def refusal(source):
    with pytest.raises(ImageError) as e:
        read_rgb(source)
    message = str(e.value)
    assert SECRET not in message and "\n" not in message
    return message


def test_truncated_file_is_refused_as_damaged(tmp_path):
    path = ct_slice(tmp_path / "a.dcm", bands(LUNG_EDGES))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - 2000])
    assert "damaged" in refusal(str(path))


def test_file_with_the_dicom_marker_and_garbage_after_it_is_refused(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(bytes(128) + b"DICM" + np.random.default_rng(2).bytes(300))
    assert refusal(str(path)).startswith("This DICOM file")


def test_empty_dcm_file_is_refused(tmp_path):
    path = tmp_path / "empty.dcm"
    path.write_bytes(b"")
    assert refusal(str(path)) == "The file is empty."


def test_huge_declared_size_is_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = ct_slice(tmp_path / "huge.dcm", bands(LUNG_EDGES), rows=60000, cols=60000)

    def no_decoding(*a, **k):
        raise AssertionError("pixel data decoded")

    monkeypatch.setattr(dicom, "pixels", no_decoding)
    assert "too large (60,000 x 60,000 pixels" in refusal(str(path))


def test_multiframe_file_is_refused_with_a_message(tmp_path):
    hu = np.concatenate([bands(LUNG_EDGES)] * 2)  # two frames' worth of pixels
    path = ct_slice(tmp_path / "multi.dcm", hu, rows=48, cols=48)
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 2
    ds.save_as(path, enforce_file_format=True)
    assert "2 frames" in refusal(str(path))


def test_slice_position_is_read_along_the_scan_axis(tmp_path):
    path = ct_slice(tmp_path / "a.dcm", bands(LUNG_EDGES), position=-127.5)
    assert dicom.slice_position(str(path)) == -127.5
    assert dicom.slice_position(str(ct_slice(tmp_path / "b.dcm", bands(LUNG_EDGES)))) is None


def test_training_lists_and_decodes_dicom_files(tmp_path):
    from training.data import load_images, scan

    for label, values in (("dark", [-1350] * 3), ("bright", [150] * 3)):
        os.makedirs(tmp_path / label)
        ct_slice(tmp_path / label / "s1.dcm", bands(values))
        Image.fromarray(np.full((40, 40), 0 if label == "dark" else 255, np.uint8)).save(
            tmp_path / label / "s2.png")
    items = scan(str(tmp_path))
    assert sorted(it.path for it in items) == ["bright/s1.dcm", "bright/s2.png", "dark/s1.dcm",
                                               "dark/s2.png"]
    x, kept, bad = load_images(str(tmp_path), items, 16, progress=False)
    assert bad == []
    means = {it.path: float(x[i].mean()) for i, it in enumerate(kept)}
    assert means == {"bright/s1.dcm": 255.0, "bright/s2.png": 255.0, "dark/s1.dcm": 0.0,
                     "dark/s2.png": 0.0}
