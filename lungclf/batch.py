"""Many images at once: the limits, safe .zip reading, the result table and CSV, and the
scan-level answer for the slices of one CT series.

app.py's /predict_batch and /predict_series call `run_batch` and `run_series` with the
uploaded paths and the function that classifies one image (the same one /predict uses, so
every row carries what /predict would answer, wrong-input warning included):

    with Workspace() as ws:                      # a temporary folder, deleted afterwards
        items = expand(paths, ws, Limits.from_env())
        rows = [row(item, predict) for item in items]

Limits (environment variables, read when the app starts; a request past one is refused
whole, with a message naming the setting):

    BATCH_MAX_FILES    files in one request, after opening .zip files (default 500)
    BATCH_MAX_MB       total size in MB, uploads plus what .zip files hold (default 200)
    BATCH_MAX_PIXELS   total pixels over the images, read from their headers (default 500,000,000)
    ZIP_MAX_RATIO      largest uncompressed/compressed size ratio of a .zip member (default 100)

A .zip is read member by member into the temporary folder, under names this module makes
(never the member's own path). Refused, for the whole .zip: member names that are absolute
or climb out with "..", links, encrypted members, archives inside the archive, and zip
bombs: a ratio over ZIP_MAX_RATIO or a total over BATCH_MAX_MB, checked on the headers
before anything is written and again on the bytes while they are written (headers can lie).

Series rule: the scan's probabilities are the mean of the slice probabilities over the
slices that decoded and are not flagged as wrong input; with none left, no scan answer.
Slices are ordered by their DICOM position along the scan axis when every slice has one,
otherwise by file name.

    python -m lungclf.batch FILE_OR_ZIP ...   # show what a request would hold, or why refused
"""

import argparse
import csv
import os
import re
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field

import numpy as np

from lungclf import dicom
from lungclf.preprocess import IMAGE_EXTENSIONS, MAX_PIXELS, ImageError, open_image

ARCHIVE_EXTENSIONS = (".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".zst", ".jar")
COLUMNS = ["file", "label", "confidence", "wrong_input", "wrong_input_score", "error"]
SERIES_RULE = ("Scan answer: the mean of the slice probabilities over the slices that are "
               "not flagged as wrong input (slices that cannot be read are left out too).")
CHUNK = 1 << 16


class BatchError(ValueError):
    """A whole request refused (a limit passed); the message is for the user."""


class ArchiveError(ValueError):
    """One .zip refused (unsafe or damaged); its row carries the message, the rest go on."""


def _env_number(name, default):
    value = os.environ.get(name, "").replace("_", "").replace(",", "").strip()
    try:
        return type(default)(value) if value else default
    except ValueError:
        raise SystemExit(f"error: {name}={os.environ[name]!r} is not a number") from None


@dataclass(frozen=True)
class Limits:
    max_files: int = 500
    max_bytes: int = 200 * 1024 * 1024
    max_pixels: int = 500_000_000
    zip_max_ratio: float = 100.0

    @classmethod
    def from_env(cls):
        return cls(_env_number("BATCH_MAX_FILES", cls.max_files),
                   int(_env_number("BATCH_MAX_MB", 200.0) * 1024 * 1024),
                   _env_number("BATCH_MAX_PIXELS", cls.max_pixels),
                   _env_number("ZIP_MAX_RATIO", cls.zip_max_ratio))

    def describe(self):
        return (f"at most {self.max_files} files, {self.max_bytes / 2**20:g} MB and "
                f"{self.max_pixels:,} pixels per request; .zip ratio at most {self.zip_max_ratio:g}")


@dataclass
class Item:
    """One file of a request: the name shown, where its bytes are, or why it was refused."""

    name: str
    path: str | None = None
    error: str | None = None


class Workspace:
    """A temporary folder for one request, deleted (with all it holds) on leaving."""

    def __init__(self):
        self.path = None

    def __enter__(self):
        self.path = tempfile.mkdtemp(prefix="lungclf-batch-")
        return self

    def __exit__(self, *exc):
        shutil.rmtree(self.path, ignore_errors=True)


def display_name(name):
    """A file name fit to show and to put in a CSV cell: printable, no leading formula sign."""
    name = re.sub(r"[\x00-\x1f\x7f]", "?", str(name))[:200]
    return "'" + name if name[:1] in ("=", "+", "-", "@", "\t", "\r") else name


def unsafe_member(info):
    """Why a zip member must not be read, or None when it is fine."""
    name = info.filename
    parts = re.split(r"[\\/]", name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        return "a file name that points outside the archive"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a link"
    if info.flag_bits & 0x1:
        return "an encrypted file"
    if name.lower().endswith(ARCHIVE_EXTENSIONS):
        return "an archive inside the archive"
    return None


def skipped_member(info):
    """Folders, the hidden files an OS adds (__MACOSX/, .DS_Store) and a DICOM export's
    index (DICOMDIR, no image in it): not rows."""
    parts = re.split(r"[\\/]", info.filename)
    return (info.is_dir() or parts[0] == "__MACOSX" or parts[-1].startswith(".")
            or parts[-1].upper() == "DICOMDIR")


def open_zip(path, archive_name, limits, budget):
    """Check a .zip on its headers; returns (ZipFile, members). Raises ArchiveError."""
    try:
        zf = zipfile.ZipFile(path)
        infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError):
        raise ArchiveError("This .zip file is damaged and cannot be opened.") from None
    try:
        members = [i for i in infos if not skipped_member(i)]
        for info in members:
            why = unsafe_member(info)
            if why:
                raise ArchiveError(f"Refused: this .zip holds {why} "
                                   f"({display_name(info.filename)}).")
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > limits.zip_max_ratio:
                raise ArchiveError(f"Refused: a file in this .zip expands {ratio:,.0f} times "
                                   f"(at most {limits.zip_max_ratio:g}, ZIP_MAX_RATIO): a zip bomb?")
        declared = sum(i.file_size for i in members)
        if declared > budget:
            raise BatchError(f"{archive_name} expands to {declared / 2**20:,.1f} MB, more than the "
                             f"{limits.max_bytes / 2**20:g} MB a request may hold (BATCH_MAX_MB).")
    except Exception:
        zf.close()
        raise
    return zf, members


def extract_member(zf, info, dest, limits, budget):
    """Copy one member to dest, counting bytes: stop at its declared size, at the ratio and
    at the request's byte budget, whatever the header said. Returns bytes written."""
    cap = min(info.file_size, budget, int(limits.zip_max_ratio * max(info.compress_size, 1)))
    written = 0
    try:
        with zf.open(info) as src, open(dest, "wb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > cap:
                    raise ArchiveError("Refused: a file in this .zip holds more than its header "
                                       "says or than the limits allow: a zip bomb?")
                out.write(chunk)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        raise ArchiveError("This .zip file is damaged and cannot be read.") from None
    return written


def member_suffix(name):
    ext = os.path.splitext(name)[1].lower()
    return ext if ext in IMAGE_EXTENSIONS else ".bin"


def expand(paths, workspace, limits, names=None):
    """Uploaded files -> Items, .zip files opened into the workspace. Raises BatchError when
    the request passes a limit; a damaged or unsafe .zip becomes one refused Item."""
    names = names or [os.path.basename(p) for p in paths]
    sizes = [os.path.getsize(p) if os.path.isfile(p) else 0 for p in paths]
    used = sum(s for p, s in zip(paths, sizes) if not p.lower().endswith(".zip"))
    if used > limits.max_bytes:
        raise BatchError(f"The files add up to {used / 2**20:,.1f} MB; at most "
                         f"{limits.max_bytes / 2**20:g} MB per request (BATCH_MAX_MB).")
    items = []
    for i, (path, name) in enumerate(zip(paths, names)):
        name = display_name(name)
        if not path.lower().endswith(".zip"):
            items.append(Item(name, path))
            continue
        try:
            zf, members = open_zip(path, name, limits, limits.max_bytes - used)
        except ArchiveError as e:
            items.append(Item(name, error=str(e)))
            continue
        if len(items) + len(members) > limits.max_files:
            zf.close()
            raise BatchError(too_many(len(items) + len(members), limits))
        rows, start = [], used
        try:
            for j, info in enumerate(members):
                dest = os.path.join(workspace.path, f"{i:04d}-{j:05d}{member_suffix(info.filename)}")
                used += extract_member(zf, info, dest, limits, limits.max_bytes - used)
                rows.append(Item(display_name(f"{name}/{info.filename}"), dest))
        except ArchiveError as e:
            rows, used = [Item(name, error=str(e))], start
        finally:
            zf.close()
        items += rows
    if len(items) > limits.max_files:
        raise BatchError(too_many(len(items), limits))
    check_pixels(items, limits)
    return items


def too_many(n, limits):
    return (f"{n} files in one request; at most {limits.max_files} (BATCH_MAX_FILES). "
            "Send them in smaller groups.")


def header_pixels(path):
    """Pixels an image declares in its header (nothing decoded); 0 when it is unreadable or
    over the one-image limit (its row will say why when it is classified)."""
    try:
        if dicom.is_dicom(path):
            _, rows, cols, frames, _, _ = dicom.read_header(path)
            pixels = rows * cols * frames
        else:
            im = open_image(path)
            pixels = im.size[0] * im.size[1]
            im.close()
    except (ImageError, dicom.DicomError, OSError):
        return 0
    return pixels if pixels <= MAX_PIXELS else 0


def check_pixels(items, limits):
    total = sum(header_pixels(it.path) for it in items if it.path)
    if total > limits.max_pixels:
        raise BatchError(f"The images hold {total:,} pixels in all; at most {limits.max_pixels:,} "
                         "per request (BATCH_MAX_PIXELS).")


@dataclass
class Prediction:
    """What classifying one image gives: calibrated probabilities per class (label text ->
    probability), and the wrong-input check's warning (None when it passes) and score."""

    probabilities: dict
    warning: str | None = None
    score: float | None = None

    @property
    def flagged(self):
        return self.warning is not None

    @property
    def label(self):
        return max(self.probabilities, key=self.probabilities.get)


@dataclass
class Row:
    """One line of the table: a file and its answer, or the message that refused it."""

    file: str
    prediction: Prediction | None = None
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def values(self):
        p = self.prediction
        if p is None:
            return [self.file, "", None, "", None, self.error or ""]
        score = None if p.score is None else round(float(p.score), 4)
        return [self.file, p.label, round(float(p.probabilities[p.label]), 4), p.warning or "",
                score, ""]


def predictor(classifier):
    """A lungclf.inference.Classifier -> path -> Prediction, answered as /predict answers:
    the calibrated probabilities and the wrong-input check's warning and score."""
    def predict(path):
        answer = classifier.analyse(path)
        verdict = answer.verdict
        return Prediction(answer.probabilities, verdict.message if verdict.wrong_input else None,
                          verdict.score)

    return predict


def classify(items, predict, progress=None):
    """Rows for Items, in order: predict(path) -> Prediction; an ImageError (or the
    predict function's own user-facing error type) becomes that row's message."""
    rows = []
    for n, item in enumerate(items):
        if progress:
            progress(n, len(items))
        if item.error:
            rows.append(Row(item.name, error=item.error))
            continue
        try:
            rows.append(Row(item.name, predict(item.path)))
        except ImageError as e:
            rows.append(Row(item.name, error=str(e)))
    return rows


def write_csv(rows, path, columns=COLUMNS):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(["" if v is None else v for v in row.values()])
    return path


def order_slices(items):
    """A series' Items in scan order: by DICOM slice position when every readable slice has
    one, otherwise by file name with numbers compared as numbers (slice2 before slice10)."""
    def natural(item):
        return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", item.name)]

    positions = {id(it): dicom.slice_position(it.path) if it.path and dicom.is_dicom(it.path) else None
                 for it in items}
    readable = [it for it in items if it.path]
    if readable and all(positions[id(it)] is not None for it in readable):
        return sorted(readable, key=lambda it: positions[id(it)]) + [it for it in items if not it.path]
    return sorted(items, key=natural)


@dataclass
class ScanAnswer:
    """The scan-level answer: probabilities (None when no slice counts) and the counts."""

    probabilities: dict | None
    used: int
    flagged: int
    unreadable: int

    def text(self):
        total = self.used + self.flagged + self.unreadable
        head = (f"**Scan answer from {self.used} of {total} slices**" if self.probabilities
                else f"**No scan answer**: none of the {total} slices could be used")
        return (f"{head} ({self.flagged} flagged as wrong input, {self.unreadable} unreadable, "
                f"left out). {SERIES_RULE}")


def aggregate(rows):
    """SERIES_RULE applied to a series' rows."""
    kept = [r.prediction for r in rows if r.prediction is not None and not r.prediction.flagged]
    flagged = sum(1 for r in rows if r.prediction is not None and r.prediction.flagged)
    unreadable = sum(1 for r in rows if r.prediction is None)
    if not kept:
        return ScanAnswer(None, 0, flagged, unreadable)
    labels = list(kept[0].probabilities)
    mean = np.mean([[p.probabilities[lab] for lab in labels] for p in kept], axis=0)
    return ScanAnswer(dict(zip(labels, mean.tolist())), len(kept), flagged, unreadable)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="image, DICOM or .zip files")
    args = p.parse_args()
    limits = Limits.from_env()
    print(limits.describe())
    with Workspace() as ws:
        try:
            items = expand(args.files, ws, limits)
        except BatchError as e:
            raise SystemExit(f"refused: {e}")
        for it in items:
            print(f"{it.name}: {it.error or 'to classify'}")


if __name__ == "__main__":
    main()
