"""DICOM in: one CT slice (a .dcm file) -> the 8-bit grey picture the PNG-trained models see.

lungclf.preprocess calls `read_rgb` for any file that is DICOM (a .dcm name, or the "DICM"
marker at byte 128), so training and the app read DICOM through the one preprocessing path:

    stored values --(RescaleSlope, RescaleIntercept)--> Hounsfield units
                  --(window: from the header, else the lung window)--> 0..255 grey

The window is the header's (WindowCenter / WindowWidth; of several, the one whose
explanation names the lung, else the first). A file without one gets the standard lung
window, center -600 HU, width 1500 HU (LUNG_WINDOW). The window is applied as DICOM's
linear VOI function (PS3.3 C.11.2.1.2). MONOCHROME1 (inverted grey) is turned the right
way round; colour DICOM (RGB, e.g. a scanned slide) is taken as it is, without windowing.

Patient data: nothing but the pixel data, its geometry (rows, columns, samples, bits,
frames, ImagePositionPatient, ImageOrientationPatient) and the rescale and window values
is read from the dataset, and none of it is logged or returned. Error messages name the
problem, never a tag value (the transfer syntax name is a format, not patient data).

Limits are checked on the header, before any pixel is decoded: at most MAX_PIXELS pixels
(lungclf.preprocess), one frame. Compressed pixel data is decoded where a handler is
installed (pydicom: RLE Lossless; Pillow: JPEG Baseline/Extended; pylibjpeg-openjpeg:
JPEG 2000); others (JPEG Lossless, JPEG-LS) are refused with a message naming the format.

    python -m lungclf.dicom FILE.dcm ...   # print the window used and the picture's size
"""

import argparse
import io
import os

import numpy as np

LUNG_WINDOW = (-600.0, 1500.0)  # center, width in HU: the standard lung window
MAX_FRAMES = 1


class DicomError(ValueError):
    """A DICOM file we cannot use; the message is safe to show (no tag values in it)."""


def is_dicom(source):
    """True for a path ending in .dcm/.dicom or for a path or bytes with the DICM marker."""
    if isinstance(source, (bytes, bytearray)):
        return bytes(source[128:132]) == b"DICM"
    if str(source).lower().endswith((".dcm", ".dicom")):
        return True
    try:
        with open(source, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_header(source):
    """Parse a DICOM file (path or bytes) without decoding its pixels; raises DicomError."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not source or (not isinstance(source, (bytes, bytearray)) and os.path.getsize(source) == 0):
        raise DicomError("The file is empty.")
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    named_dcm = not isinstance(source, (bytes, bytearray)) and str(source).lower().endswith(
        (".dcm", ".dicom"))
    try:
        # force=True only for a file named .dcm: some writers leave out the 128-byte preamble.
        ds = pydicom.dcmread(fp, force=named_dcm)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError,
            OverflowError, IndexError, NotImplementedError):
        raise DicomError("This DICOM file is damaged or is not DICOM and cannot be read.") from None
    if "PixelData" not in ds:
        raise DicomError("This DICOM file holds no image (no pixel data).")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise DicomError("This DICOM file is damaged: its image size is missing or unreadable.") from None
    return ds, rows, cols, frames, samples, bits


def check_header(rows, cols, frames, samples, bits):
    """Refuse, from the header alone, what we would not decode: huge, multi-frame, odd."""
    from lungclf.preprocess import MAX_PIXELS, MIN_SIDE

    if rows * cols * frames > MAX_PIXELS:
        raise DicomError(f"The DICOM image is too large ({cols:,} x {rows:,} pixels x {frames} "
                         f"frames; at most {MAX_PIXELS:,} pixels).")
    if min(rows, cols) < MIN_SIDE:
        raise DicomError(f"The DICOM image is too small ({cols} x {rows} pixels; at least "
                         f"{MIN_SIDE} pixels a side).")
    if frames > MAX_FRAMES:
        raise DicomError(f"This DICOM file holds {frames} frames; send a series as one file "
                         "per slice.")
    if samples not in (1, 3) or bits not in (8, 16, 32):
        raise DicomError(f"DICOM images with {samples} samples of {bits} bits per pixel are not "
                         "supported.")


def pixels(ds):
    """The stored pixel values, decoded; a clear message when no decoder is installed."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return ds.pixel_array
    except (NotImplementedError, RuntimeError) as e:
        name = getattr(syntax, "name", None) or "an unknown transfer syntax"
        if "plugin" in str(e).lower() or "decod" in str(e).lower() or isinstance(e, NotImplementedError):
            raise DicomError(f"This DICOM file is compressed as {name}, which this server cannot "
                             "decode. Send it uncompressed, RLE or JPEG 2000.") from None
        raise DicomError("This DICOM file's pixel data is damaged and cannot be decoded.") from None
    except Exception:
        raise DicomError("This DICOM file's pixel data is damaged and cannot be decoded.") from None


def _numbers(value):
    """A DICOM decimal value (single or multi-valued) -> list of floats ([] if unreadable)."""
    from pydicom.multival import MultiValue

    try:
        return [float(v) for v in (value if isinstance(value, (MultiValue, list, tuple)) else [value])
                if v is not None and v != ""]
    except (TypeError, ValueError):
        return []


def window_of(ds):
    """(center, width) in HU: the header's lung window, else its first, else LUNG_WINDOW."""
    centers, widths = _numbers(ds.get("WindowCenter")), _numbers(ds.get("WindowWidth"))
    pairs = [(c, w) for c, w in zip(centers, widths) if w >= 1]
    if not pairs:
        return LUNG_WINDOW
    from pydicom.multival import MultiValue

    explanation = ds.get("WindowCenterWidthExplanation") or ""
    names = [str(e).lower() for e in (explanation if isinstance(explanation, MultiValue)
                                      else [explanation])]
    for (c, w), name in zip(pairs, names):
        if "lung" in name:
            return c, w
    return pairs[0]


def hounsfield(ds, stored):
    """Stored values -> HU (or the modality's unit): value * RescaleSlope + RescaleIntercept."""
    slope = (_numbers(ds.get("RescaleSlope")) or [1.0])[0]
    intercept = (_numbers(ds.get("RescaleIntercept")) or [0.0])[0]
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def apply_window(hu, center, width):
    """DICOM's linear VOI function to 0..255 uint8 (PS3.3 C.11.2.1.2.1)."""
    y = ((hu - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0
    return np.rint(np.clip(y, 0.0, 255.0)).astype(np.uint8)


def read_rgb(source):
    """A DICOM file (path or bytes) -> (H, W, 3) uint8: windowed grey repeated in 3 channels,
    or the stored colour. Raises DicomError with a message safe to show."""
    ds, rows, cols, frames, samples, bits = read_header(source)
    check_header(rows, cols, frames, samples, bits)
    stored = pixels(ds)
    if stored.shape[:2] != (rows, cols):
        raise DicomError("This DICOM file's pixel data does not match its declared size.")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if samples == 3:  # colour (pydicom turns YBR into RGB): taken as it is, no window
        a = stored.astype(np.float32)
        if bits > 8:
            a = a / max(float(a.max(initial=0)), 1.0) * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    grey = apply_window(hounsfield(ds, stored), *window_of(ds))
    if photometric == "MONOCHROME1":  # high values shown dark: turn it the usual way round
        grey = 255 - grey
    return np.repeat(grey[:, :, None], 3, axis=2)


def slice_position(source):
    """Where a slice lies along its scan's axis (ImagePositionPatient projected on the slice
    normal from ImageOrientationPatient), for ordering a series; None when not recorded.
    Reads the header only."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source,
                             stop_before_pixels=True, force=True)
        position = np.array(_numbers(ds.get("ImagePositionPatient")), np.float64)
        orientation = np.array(_numbers(ds.get("ImageOrientationPatient")), np.float64)
    except Exception:
        return None
    if position.shape != (3,):
        return None
    if orientation.shape == (6,):
        return float(np.dot(position, np.cross(orientation[:3], orientation[3:])))
    return float(position[2])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help=".dcm files")
    args = p.parse_args()
    for path in args.files:
        try:
            ds, rows, cols, frames, samples, bits = read_header(path)
            rgb = read_rgb(path)
        except DicomError as e:
            print(f"{os.path.basename(path)}: refused: {e}")
            continue
        c, w = window_of(ds)
        print(f"{os.path.basename(path)}: {cols}x{rows}, {bits} bits, window center {c:g} "
              f"width {w:g} -> {rgb.shape} grey mean {rgb.mean():.1f}")


if __name__ == "__main__":
    main()
