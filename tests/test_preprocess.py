"""One preprocessing path: what training feeds the model is what the app feeds it."""

import os

import numpy as np
import pytest
from PIL import Image

from lungclf.preprocess import ImageError, load_image, read_rgb
from tests.helpers import confidences, picture, temperature_scaled
from training.data import load_images, scan

SIZE = 32


def write_variants(folder):
    """The same picture as RGB JPEG, RGBA PNG, grey PNG, 16-bit PNG and EXIF-rotated JPEG."""
    os.makedirs(folder, exist_ok=True)
    a = picture()
    Image.fromarray(a).save(os.path.join(folder, "rgb.jpg"), quality=95)
    rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])
    rgba[:5, :5, 3] = 0  # a transparent corner
    Image.fromarray(rgba, "RGBA").save(os.path.join(folder, "rgba.png"))
    grey = a.mean(axis=2).astype(np.uint8)
    Image.fromarray(grey, "L").save(os.path.join(folder, "grey.png"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(os.path.join(folder, "grey16.png"))
    # Stored turned on its side, with EXIF orientation 6 (rotate 90 CW to display upright).
    im = Image.fromarray(np.rot90(a, k=1).copy())
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(os.path.join(folder, "exif_rotated.jpg"), exif=exif, quality=95)
    return ["rgb.jpg", "rgba.png", "grey.png", "grey16.png", "exif_rotated.jpg"]


def test_exif_orientation_is_applied(tmp_path):
    write_variants(tmp_path)
    upright = read_rgb(str(tmp_path / "rgb.jpg"))
    rotated = read_rgb(str(tmp_path / "exif_rotated.jpg"))
    assert rotated.shape == upright.shape
    assert np.abs(rotated.astype(int) - upright.astype(int)).mean() < 6


def test_sixteen_bit_grey_matches_eight_bit_grey(tmp_path):
    write_variants(tmp_path)
    eight = load_image(str(tmp_path / "grey.png"), SIZE)
    sixteen = load_image(str(tmp_path / "grey16.png"), SIZE)
    assert np.array_equal(eight, sixteen)
    assert eight.shape == (SIZE, SIZE, 3) and np.array_equal(eight[..., 0], eight[..., 2])


def test_alpha_is_composited_over_black(tmp_path):
    write_variants(tmp_path)
    rgb = read_rgb(str(tmp_path / "rgba.png"))
    assert (rgb[:5, :5] == 0).all() and rgb[10:, 10:].any()


def test_bytes_and_path_give_the_same_tensor(tmp_path):
    write_variants(tmp_path)
    path = str(tmp_path / "rgb.jpg")
    assert np.array_equal(load_image(path, SIZE), load_image(open(path, "rb").read(), SIZE))


def _pillow_path(im):
    """to_rgb's pixels as they were made before it copied once: Pillow's exif_transpose and
    convert("RGB") always (the reference for the byte-identical test)."""
    from PIL import ImageOps

    im.load()
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        return np.rint(rgba[:, :, :3] * rgba[:, :, 3:4] / 255.0).astype(np.uint8)
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return None  # not through convert: unchanged by this
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def test_rgb_is_copied_once_with_the_same_bytes_as_pillows_transpose_and_convert(tmp_path):
    """An upright RGB image skips exif_transpose's and convert's copies; every kind (EXIF
    orientations 1 to 8 included) gives the bytes the full Pillow path gives."""
    from lungclf.preprocess import open_image, to_rgb

    names = write_variants(tmp_path)
    a = picture()
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        for ext in ("jpg", "png"):
            name = f"o{orientation}.{ext}"
            Image.fromarray(a[:, 3:]).save(tmp_path / name, exif=exif)
            names.append(name)
    Image.fromarray(a).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "palette.png")
    Image.fromarray(a).convert("CMYK").save(tmp_path / "cmyk.jpg")
    names += ["palette.png", "cmyk.jpg"]
    for name in names:
        got = to_rgb(open_image(str(tmp_path / name)))
        expected = _pillow_path(open_image(str(tmp_path / name)))
        if expected is not None:
            assert got.dtype == np.uint8 and got.shape == expected.shape, name
            assert got.tobytes() == expected.tobytes(), name


def test_plain_jpegs_decode_to_pillows_pixels_at_every_dct_scale(tmp_path):
    """read_rgb decodes whole, unturned RGB and grey JPEGs with OpenCV: the bytes equal
    Pillow's decode (to_rgb) at full size and at the 1/2, 1/4 and 1/8 scales its draft picks,
    baseline and progressive; EXIF-turned and CMYK ones keep Pillow's path."""
    from lungclf.preprocess import _plain_jpeg, open_image, to_rgb

    rng = np.random.default_rng(5)
    a = np.clip(np.kron(rng.integers(0, 256, (30, 40, 3)), np.ones((20, 20, 1))) + rng.normal(0, 20, (600, 800, 3)),
                0, 255).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / "rgb.jpg", quality=90)
    Image.fromarray(a).save(tmp_path / "progressive.jpg", quality=80, progressive=True)
    Image.fromarray(a[:, :, 1]).save(tmp_path / "grey.jpg", quality=90)
    for name in ("rgb.jpg", "progressive.jpg", "grey.jpg"):
        for size in (None, 299, 150, 70, 32):  # full size, 1/2, 1/4, 1/8, 1/8
            path = str(tmp_path / name)
            fast = _plain_jpeg(open_image(path), path, size)
            assert fast is not None, name
            assert fast.tobytes() == to_rgb(open_image(path), size).tobytes(), (name, size)
            assert read_rgb(open(path, "rb").read(), size).tobytes() == fast.tobytes()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "turned.jpg", exif=exif)
    Image.fromarray(a).convert("CMYK").save(tmp_path / "cmyk.jpg")
    for name in ("turned.jpg", "cmyk.jpg"):
        assert _plain_jpeg(open_image(str(tmp_path / name)), str(tmp_path / name), 128) is None


def test_a_truncated_jpeg_is_refused_as_damaged(tmp_path):
    """OpenCV would fill the missing rows in grey; the file does not end in the JPEG end
    marker, so Pillow's decoder reads it, and refuses it."""
    Image.fromarray(picture()).save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    with pytest.raises(ImageError, match="damaged or truncated"):
        read_rgb(data[:len(data) * 2 // 3], SIZE)


@pytest.mark.skipif(not os.path.isdir(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")),
                    reason="needs ../shared/data (the real images)")
def test_the_shared_data_sets_jpegs_decode_as_pillow_decodes_them():
    """Every 7th JPEG of the three data sets, at the committed models' input sizes: OpenCV's
    pixels are Pillow's."""
    import glob

    from lungclf.preprocess import _plain_jpeg, open_image, to_rgb

    root = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
    paths = sorted(glob.glob(os.path.join(root, "**", "*.jp*g"), recursive=True))[::7]
    assert paths
    for path in paths:
        for size in (128, 224):
            fast = _plain_jpeg(open_image(path), path, size)
            assert fast is not None and fast.tobytes() == to_rgb(open_image(path), size).tobytes(), (path, size)


@pytest.mark.parametrize("content, message", [(b"", "empty"), (b"hello, not an image", "not an image"),
                                              (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image")])
def test_unreadable_input_raises_a_clear_image_error(content, message):
    with pytest.raises(ImageError, match=message):
        load_image(content, SIZE)


def test_training_loader_lists_unreadable_files_instead_of_hiding_them(tmp_path):
    write_variants(tmp_path / "a")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG broken")
    items = [it for it in scan(str(tmp_path)) if it.label == "a"]
    x, kept, bad = load_images(str(tmp_path), items, SIZE, progress=False)
    assert [p for p, _ in bad] == ["a/broken.png"]
    assert len(kept) == len(x) == 5


@pytest.mark.slow
def test_app_through_gradio_sees_the_tensor_training_sees(tmp_path, tiny_bundle, tiny_server):
    """Upload each variant to the running app; its answer equals the model's answer on the
    tensor that training's loader makes for the same file."""
    import keras
    from gradio_client import Client, handle_file

    names = write_variants(tmp_path / "x")
    items = scan(str(tmp_path))
    x, kept, _ = load_images(str(tmp_path), items, SIZE, progress=False)
    model = keras.saving.load_model(os.path.join(tiny_bundle["out"], "model.keras"), safe_mode=True)
    temperature = tiny_bundle["meta"]["calibration"]["temperature"]
    expected = temperature_scaled(model(x.astype(np.float32), training=False), temperature)
    labels = tiny_bundle["meta"]["classes"]
    client = Client(tiny_server.url, verbose=False)
    for it, probs in zip(kept, expected):
        got = client.predict(handle_file(os.path.join(tmp_path, it.path)), api_name="/predict")[0]
        by_label = confidences(got)
        # The app serves model.onnx, model.keras's float32 copy (within 1e-5 here), so equal
        # tensors give answers within 1e-4, not equal to the fifth decimal. The pixels themselves
        # are compared in test_exif_orientation_is_applied and the tests above: the tiny model
        # tells colours apart, and may answer a turned picture as it does the upright one.
        np.testing.assert_allclose([by_label[lab] for lab in labels], probs, atol=1e-4, err_msg=it.path)
    assert sorted(os.path.basename(it.path) for it in kept) == sorted(names)
