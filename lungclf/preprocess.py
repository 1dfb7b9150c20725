"""The one path from an image file to the model's input tensor.

Training (`training.data`) and the app (`app.py`, through lungclf.inference) both call
`load_image`, so what the model sees at serving time is what it saw in training: same
decoders (Pillow's, and OpenCV's for a whole, unturned RGB or grey JPEG: the same pixels,
decoded in about 40% of Pillow's time), same EXIF rotation, same handling of alpha, grey, palette and 16-bit images,
same resize (the bundle schema's preprocessing.resize = "squash-area-down-linear-up").
DICOM files (.dcm, or the DICM marker) go through lungclf.dicom first: Hounsfield units,
a lung window, 8-bit grey; from there the same resize.

    from lungclf.preprocess import load_image
    x = load_image("tile.jpeg", size=128)   # float32, (128, 128, 3), values 0..255

Scaling to the network's range happens inside the model (a Rescaling layer), so the
bundle carries it and no client has to know it.

Run `python -m lungclf.preprocess IMAGE` to print what an image decodes to.
"""

import io
import os
import sys

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Limits checked on the header, before any pixel is decoded.
MAX_PIXELS = 40_000_000  # a 6,300 x 6,300 image; more is refused as a decompression bomb
MIN_SIDE = 16  # smaller than this is no image to classify
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own guard as a second line

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".dcm")
# The only decoders Pillow may pick (its JPEG one also opens camera MPO files). Everything
# else it knows (EPS, which runs Ghostscript, PSD, ICO ...) is refused by the header.
FORMATS = ("JPEG", "PNG", "BMP", "WEBP", "TIFF", "GIF")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
ORIENTATION, TURNED = 0x0112, range(2, 9)  # the EXIF tag, and its values that turn or flip
NOT_AN_IMAGE = ("This file is not an image we can read. Use JPEG, PNG, BMP, WebP, TIFF, GIF "
                "or DICOM.")
TOO_LARGE = f"The image is too large (more than {MAX_PIXELS:,} pixels)."
DAMAGED = "The image file is damaged or truncated and cannot be decoded."


class ImageError(ValueError):
    """An input that is not a usable image; the message is safe to show a user."""


def open_image(source):
    """Open a path or bytes with Pillow and check its header limits, decoding nothing.

    Refused here, from the header alone: empty files, formats outside FORMATS, images over
    MAX_PIXELS (decompression bombs) and images under MIN_SIDE pixels a side."""
    try:
        if isinstance(source, (bytes, bytearray)):
            if not source:
                raise ImageError("The file is empty.")
            im = Image.open(io.BytesIO(source), formats=FORMATS)
        else:
            if os.path.getsize(source) == 0:
                raise ImageError("The file is empty.")
            im = Image.open(source, formats=FORMATS)
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(TOO_LARGE) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ImageError(NOT_AN_IMAGE) from None
    width, height = im.size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"The image is too large ({width:,} x {height:,} pixels; "
            f"at most {MAX_PIXELS:,} pixels)."
        )
    if min(width, height) < MIN_SIDE:
        raise ImageError(
            f"The image is too small ({width} x {height} pixels; "
            f"at least {MIN_SIDE} pixels a side)."
        )
    return im


def to_rgb(im, size=None):
    """Decode a Pillow image to an (H, W, 3) uint8 RGB array.

    With `size`, a large JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling),
    never below size x size: the same picture for the model at a fraction of the time and
    memory of a full decode. The pixels are copied once, into the array (Pillow's own
    exif_transpose and convert each copy an image they leave unchanged)."""
    try:
        im.seek(0)  # first frame of an animated GIF or multi-page TIFF
        if size and im.format in ("JPEG", "MPO"):
            im.draft(None, (size, size))
        im.load()
    except Image.DecompressionBombError:
        raise ImageError(TOO_LARGE) from None
    except Exception:
        raise ImageError(DAMAGED) from None
    try:
        if im.getexif().get(ORIENTATION, 1) in TURNED:  # otherwise exif_transpose only copies
            im = ImageOps.exif_transpose(im)
    except Exception:
        pass  # a damaged EXIF block: the pixels are fine, keep them as stored
    try:
        if im.mode in SIXTEEN_BIT:
            a = np.rint(np.asarray(im, dtype=np.float32) / 257.0)  # 16-bit range to 8-bit
            return np.repeat(np.clip(a, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        if im.mode in ("I", "F"):  # 32-bit int or float grey: 16-bit range if it exceeds 8 bits
            a = np.asarray(im, dtype=np.float32)
            if a.max(initial=0) > 255:
                a = a / 257.0
            return np.repeat(np.clip(np.rint(a), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
            alpha = rgba[:, :, 3:4] / 255.0
            return np.rint(rgba[:, :, :3] * alpha).astype(np.uint8)  # over black
        if im.mode == "RGB":  # as it is: convert("RGB") would only copy it
            return np.asarray(im, dtype=np.uint8)
        return np.asarray(im.convert("RGB"), dtype=np.uint8)  # L, 1, P, CMYK, YCbCr, LAB
    except Exception:
        raise ImageError(f"Images in colour mode {im.mode} are not supported. "
                         "Save it as an RGB or grey JPEG or PNG.") from None


def read_rgb(source, size=None):
    """Path or bytes -> (H, W, 3) uint8 RGB, with every check; raises ImageError.
    `size` (the model's input side) lets large JPEGs decode at a reduced scale. DICOM is
    windowed to 8-bit grey by lungclf.dicom."""
    from lungclf import dicom

    if dicom.is_dicom(source):
        try:
            return dicom.read_rgb(source)
        except dicom.DicomError as e:
            raise ImageError(str(e)) from None
    im = open_image(source)
    try:
        rgb = _plain_jpeg(im, source, size)
        return rgb if rgb is not None else to_rgb(im, size)
    finally:
        im.close()


# OpenCV's DCT-scaled decodes; their "colour" bit means BGR, so it is swapped for RGB's.
REDUCED = {a: (flag & ~cv2.IMREAD_COLOR) | cv2.IMREAD_COLOR_RGB for a, flag in
           ((2, cv2.IMREAD_REDUCED_COLOR_2), (4, cv2.IMREAD_REDUCED_COLOR_4), (8, cv2.IMREAD_REDUCED_COLOR_8))}


def _plain_jpeg(im, source, size):
    """A whole, unturned RGB or grey JPEG (the common case) decoded by OpenCV's libjpeg-turbo,
    which gives the same pixels as Pillow's decoder at the same DCT scale (tests/
    test_preprocess.py checks both on the shared data) in about 40% of its time (0.25 against
    0.6 ms a 224 px tile; scripts/benchmark_decode.py); None for anything else, which to_rgb
    decodes. Whole: the data ends with the EOI marker, since
    OpenCV fills a truncated JPEG in grey where Pillow refuses it."""
    if im.format != "JPEG" or im.mode not in ("RGB", "L"):
        return None
    try:
        if im.getexif().get(ORIENTATION, 1) != 1:
            return None
    except Exception:
        return None
    if isinstance(source, (bytes, bytearray)):
        data = source
    else:
        with open(source, "rb") as f:
            data = f.read()
    if not data.endswith(b"\xff\xd9"):
        return None
    flags = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
    if size:  # the scale Pillow's draft picks: the largest of 8, 4, 2 that leaves size x size
        scale = min(im.size[0] // size, im.size[1] // size)
        a = next((a for a in (8, 4, 2) if scale >= a), 1)
        if a > 1:
            flags = REDUCED[a] | cv2.IMREAD_IGNORE_ORIENTATION
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags)  # None if it fails: to_rgb says why


def resize(rgb, size):
    """Squash an RGB array to (size, size) the one way training and serving both use."""
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    shrinking = h * w > size * size
    method = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=method)


def load_image(source, size):
    """Path or bytes -> model input: float32 (size, size, 3), values 0..255."""
    return resize(read_rgb(source, size), size).astype(np.float32)


if __name__ == "__main__":
    for path in sys.argv[1:] or ["--help"]:
        if path in ("-h", "--help"):
            print(__doc__)
            break
        im = open_image(path)
        x = load_image(path, 128)
        print(f"{path}: {im.format} {im.mode} {im.size} -> {x.shape} mean {x.mean():.1f}")
