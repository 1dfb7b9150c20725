"""The wrong-input check: does an image look like the images the model was trained on?

A classifier always answers with one of its classes, and these models are most confident
on exactly the images they know nothing about (a photo, noise, a CT slice sent to the
tissue model). Two checks, cheapest first, both fitted on the bundle's TRAINING split:

    colour    the image's colourfulness (mean over pixels of max(R,G,B) - min(R,G,B), on the
              model's input) outside the range of the training images: a grey image for a
              model of coloured H&E tiles, a coloured one for a model of grey CT slices
    pixels    eight pixel statistics (mean and spread of each channel, colourfulness, edge
              strength) far from those of the training images (Mahalanobis distance above
              the largest seen in training, plus a quarter): flat images, smooth gradients,
              text on a plain background
    features  the Mahalanobis distance of the network's penultimate features to the
              nearest class mean, with one shared covariance (class-conditional Gaussians,
              Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
              samples"); flagged above a threshold set on the VALIDATION split so that a
              chosen share of in-distribution images (default 5%) would be flagged; and,
              where training was shown images of known wrong kinds (a recipe's
              known_wrong_data: another CT data set, say), an image whose features are nearer
              to such a kind's mean than to every class mean (a linear discriminant between
              the model's classes and those kinds, with the same shared covariance)

The reference is plain arrays in BUNDLE/wrong_input.npz, read with allow_pickle=False:

    means      (classes, D)  float64  class means of the training features
    precision  (D(D+1)/2,)   float    inverse of the shared (shrinkage) covariance,
                             symmetric, so its upper triangle only, row after row ((i, j) for
                             j >= i); float32 where that moves no distance beyond a 1e-5 share of
                             the threshold, float16 in a bundle that stores its weights so
                             where that moves none beyond a 2e-3 share, else float64
                             (precision_dtype); read as (D, D) float64.
                             Bundles written before 2026-12-03 hold the full (D, D) float64.
    stats_mean (8,)          float64  mean pixel statistics of the training images
    stats_precision (8, 8)   float64  inverse of their (shrinkage) covariance
    others     (K, D)        float64  optional: the mean features of each known wrong kind, in
                             the order of the metadata's `known_wrong` names

and numbers in metadata.json's `wrong_input` block (lungclf.schema.WrongInput): file,
sha256, feature dimension, threshold, quantile, colour range and the measured rates.
Fitting (training/wrong_input.py) uses scikit-learn's Ledoit-Wolf shrinkage; serving is
NumPy and OpenCV (already the app's, for decoding) only.

    from lungclf.wrong_input import Reference
    ref = Reference.load("models/lc25000/wrong_input.npz", meta.wrong_input, 3, "histopathology")
    ref.check(x, features)   # -> a Verdict per image
"""

import io
import os
from dataclasses import asdict, dataclass
from functools import cached_property

import cv2
import numpy as np

FILE = "wrong_input.npz"
ARRAYS = ("means", "precision", "stats_mean", "stats_precision")
OPTIONAL = ("others",)  # written only when the reference has known wrong kinds
# A precision stored in float32 (here and on the page) may move a feature distance by at most
# this share of the threshold, and no verdict; otherwise it is stored in float64.
ROUNDING_TOLERANCE = 1e-5
# A bundle whose weights are stored in float16 (a recipe's stored_weights) may store its
# precision in float16 too, when that moves no distance by more than this share of the
# threshold and no verdict: the rounded weights move the distances about that far themselves
# (chest CT's Lite0: 0.004 of the threshold).
FLOAT16_ROUNDING_TOLERANCE = 2e-3
N_STATS = 8
# What each modality's images are called in the warning a visitor reads.
KINDS = {"histopathology": "histopathology tiles", "CT": "CT slices"}


class ReferenceError(ValueError):
    """A wrong_input.npz that cannot be used; the message names the failed check."""


def pixel_stats(x):
    """Eight statistics per image of a batch (N, H, W, 3) 0..255 -> (N, 8) float64: mean and
    standard deviation of R, G and B, colourfulness (colourfulness()), and mean edge strength
    (absolute differences of neighbouring pixels' luminance (R + G + B) / 3, down plus across).

    OpenCV's one-pass kernels, image by image, summing in float64: for the integer pixel
    values of decoded images (uint8, or float32 holding them) every sum is exact. About a
    quarter of the time of NumPy over the batch's strided channels (0.12 ms an image of 128 px
    against 0.50)."""
    x = np.asarray(x)
    if x.dtype not in (np.uint8, np.float32):
        x = x.astype(np.float32)
    n, h, w = x.shape[:3]
    wide = cv2.CV_16U if x.dtype == np.uint8 else cv2.CV_32F  # R + G + B without overflow
    out = np.empty((n, N_STATS))
    for i, im in enumerate(x):
        im = np.ascontiguousarray(im)
        mean, std = cv2.meanStdDev(im)
        r, g, b = cv2.split(im)
        spread = cv2.subtract(cv2.max(cv2.max(r, g), b), cv2.min(cv2.min(r, g), b))
        grey3 = cv2.add(cv2.add(r, g, dtype=wide), b, dtype=wide)
        down = cv2.sumElems(cv2.absdiff(grey3[1:], grey3[:-1]))[0] / ((h - 1) * w)
        across = cv2.sumElems(cv2.absdiff(grey3[:, 1:], grey3[:, :-1]))[0] / (h * (w - 1))
        out[i, :3], out[i, 3:6] = mean[:, 0], std[:, 0]
        out[i, 6] = cv2.sumElems(spread)[0] / (h * w)
        out[i, 7] = (down + across) / 3
    return out


def colourfulness(x):
    """Mean over pixels of max(R, G, B) - min(R, G, B) of a batch (N, H, W, 3), 0..255 -> (N,).
    0 for a grey image; H&E tiles are pink and purple, well above it."""
    return pixel_stats(x)[:, 6]


def mahalanobis(v, mean, precision):
    d = np.asarray(v, np.float64) - mean
    return np.sqrt(np.maximum(((d @ precision) * d).sum(axis=-1), 0.0))


def kind_of(modality):
    return KINDS.get(modality, f"{modality} images")


@dataclass
class Verdict:
    """One image's answer, as the API and the page show it (see docs/api.md)."""

    wrong_input: bool
    check: str  # which check flagged it: "colour", "pixels" or "features"; "none": no reference
    score: float | None  # distance to the nearest class mean
    threshold: float | None
    colourfulness: float | None
    message: str  # empty when not flagged

    def as_dict(self):
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class Reference:
    means: np.ndarray  # (C, D)
    precision: np.ndarray  # (D, D)
    stats_mean: np.ndarray  # (8,)
    stats_precision: np.ndarray  # (8, 8)
    threshold: float = float("inf")
    stats_threshold: float = float("inf")
    colour_range: tuple[float, float] = (0.0, 255.0)
    modality: str = ""
    quantile: float = 0.05
    others: np.ndarray | None = None  # (K, D): mean features of the known wrong kinds, or None
    other_names: tuple[str, ...] = ()  # what each is called in a warning ("iq_othnccd")

    @property
    def feature_dim(self):
        return self.means.shape[1]

    @cached_property
    def _whitened(self):
        """What distances() needs, once: the centre g (the mean of the class means), W with
        P = W W' (Cholesky), and each class mean whitened, (m - g) W; None when P is not
        numerically positive definite (then the direct formula is used)."""
        centre = self.means.mean(axis=0)
        try:
            w = np.linalg.cholesky(np.asarray(self.precision, np.float64))
        except np.linalg.LinAlgError:
            return None
        return centre, w, (self._all_means - centre) @ w

    @property
    def _all_means(self):
        """The class means, then the known wrong kinds' means: (C + K, D)."""
        return self.means if self.others is None else np.concatenate([self.means, self.others])

    def distances(self, features):
        """Mahalanobis distance of each row of features (N, D) to its nearest class mean -> (N,)."""
        return self.nearest(features)[0]

    def nearest(self, features):
        """(distance to the nearest class mean, index of the nearest known wrong kind when it is
        nearer still, else -1), each (N,). The distances:

        Whitened: with P = W W', (f - m)' P (f - m) = |(f - g) W - (m - g) W|^2, so each image
        costs one D x D product for all classes instead of one per class (for the CT models'
        D = 1280, about 0.3 ms instead of 0.7-9 ms on a small CPU), with no cancellation of
        large terms: the same distances as the direct formula to about 1e-12 of their value."""
        f = np.asarray(features, np.float64)
        whitened = self._whitened
        if whitened is None:
            d = f[:, None, :] - self._all_means[None]  # (N, C + K, D)
            sq = ((d @ self.precision) * d).sum(axis=-1)
        else:
            centre, w, mw = whitened
            z = (f - centre) @ w  # (N, D)
            sq = ((z[:, None, :] - mw[None]) ** 2).sum(axis=-1)  # (N, C + K)
        c = len(self.means)
        near = sq[:, :c].min(axis=1)
        other = np.full(len(f), -1)
        if sq.shape[1] > c:
            nearer = sq[:, c:].min(axis=1) < near
            other[nearer] = sq[nearer, c:].argmin(axis=1)
        return np.sqrt(np.maximum(near, 0.0)), other

    def colour_ok(self, colour):
        lo, hi = self.colour_range
        return (colour >= lo) & (colour <= hi)

    def stats_distances(self, x):
        return mahalanobis(pixel_stats(x), self.stats_mean, self.stats_precision)

    def flags(self, x, features):
        """(flagged by colour, by pixel statistics, by features, distances, colourfulness), each
        (N,); by features: beyond the threshold, or nearer to a known wrong kind."""
        return self.flags_of(pixel_stats(x), features)

    def flags_of(self, stats, features):
        """flags() from the images' pixel statistics (N, 8) instead of the images."""
        return self._flags(stats, features)[:5]

    def _flags(self, stats, features):
        colour = stats[:, 6]
        dist, other = self.nearest(features)
        by_pixels = mahalanobis(stats, self.stats_mean, self.stats_precision) > self.stats_threshold
        return ~self.colour_ok(colour), by_pixels, (dist > self.threshold) | (other >= 0), dist, colour, other

    def check(self, x, features):
        """A Verdict per image of the batch x (N, S, S, 3) 0..255 with its features (N, D)."""
        by_colour, by_pixels, by_features, dist, colour, other = self._flags(pixel_stats(x), features)
        kind = kind_of(self.modality)
        lo, _ = self.colour_range
        out = []
        for c, p, f, d, col, o in zip(by_colour, by_pixels, by_features, dist, colour, other):
            check, why = "features", ""
            if c:
                check = "colour"
                why = (f"It is {'a grey' if col < lo else 'a coloured'} image; the {kind} it was "
                       f"trained on are {'coloured' if col < lo else 'grey'}.")
            elif p:
                check = "pixels"
                why = (f"Its brightness, colours and edges are unlike those of any {kind[:-1]} the "
                       "model was trained on.")
            elif o >= 0:
                why = (f"What the network sees in it is nearer to the {self.other_names[o]} images it was "
                       "shown as wrong input than to anything it learned.")
            elif f:
                why = (f"What the network sees in it is far from everything it learned: distance "
                       f"{d:.1f}, where {self.threshold:.1f} is the limit (set so that "
                       f"{1 - self.quantile:.0%} of the validation images pass).")
            message = (f"This does not look like the {kind} this model was trained on; its answer "
                       f"is not reliable. {why}") if why else ""
            out.append(Verdict(bool(c or p or f), check, float(d), float(self.threshold), float(col),
                               message))
        return out

    # ---------------------------------------------------------------- files

    def arrays(self, precision_dtype="float64"):
        """The arrays as written: float64, the precision's upper triangle in precision_dtype."""
        out = {a: np.asarray(getattr(self, a), np.float64) for a in ARRAYS}
        out["precision"] = out["precision"][np.triu_indices(self.feature_dim)].astype(precision_dtype)
        if self.others is not None:
            out["others"] = np.asarray(self.others, np.float64)
        return out

    def rounded(self, precision_dtype):
        """This reference as it reads back when saved with its precision in precision_dtype."""
        p = self.arrays(precision_dtype)["precision"]
        return Reference(self.means, unpack_upper(p, self.feature_dim), self.stats_mean, self.stats_precision,
                         self.threshold, self.stats_threshold, self.colour_range, self.modality, self.quantile,
                         self.others, self.other_names)

    def precision_dtype(self, features, float16=False):
        """How to store the precision: float16 (only when asked) or float32 when that moves no
        distance of features (N, D) by more than FLOAT16_ROUNDING_TOLERANCE or
        ROUNDING_TOLERANCE of the threshold, changes no verdict and keeps the precision
        positive definite; else float64."""
        d, o = self.nearest(features)
        for dtype, tolerance in [("float16", FLOAT16_ROUNDING_TOLERANCE)] * float16 + [("float32", ROUNDING_TOLERANCE)]:
            with np.errstate(over="ignore", invalid="ignore"):  # float16 ends at 65,504: then inf, refused
                rounded = self.rounded(dtype)
            if not np.isfinite(rounded.precision).all() or rounded._whitened is None:
                continue
            d2, o2 = rounded.nearest(features)
            same = ((d > self.threshold) == (d2 > self.threshold)).all() and (o == o2).all()
            if same and np.abs(d - d2).max() <= tolerance * self.threshold:
                return dtype
        return "float64"

    def save(self, path, precision_dtype="float64"):
        """Write the arrays to path (.npz, no pickle); returns its bytes' sha256."""
        import hashlib

        buf = io.BytesIO()
        np.savez(buf, **self.arrays(precision_dtype))
        with open(path, "wb") as f:
            f.write(buf.getvalue())
        return hashlib.sha256(buf.getvalue()).hexdigest()

    @classmethod
    def load(cls, path, spec, n_classes, modality=""):
        """Read path (an .npz of plain arrays, allow_pickle=False) and check it against the
        metadata's wrong_input block `spec` (lungclf.schema.WrongInput); ReferenceError if not."""
        name = os.path.basename(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [a for a in ARRAYS if a not in z.files]
                if missing:
                    raise ReferenceError(f"{name}: missing array(s) {', '.join(missing)}")
                arrays = {a: z[a] for a in ARRAYS + OPTIONAL if a in z.files}
        except ReferenceError:
            raise
        except ValueError as e:  # object arrays need pickle, which is refused
            raise ReferenceError(f"{name}: not plain numeric arrays ({str(e).splitlines()[0][:120]})") from None
        except (OSError, EOFError) as e:
            raise ReferenceError(f"{name}: unreadable ({type(e).__name__})") from None
        d, m = spec.feature_dim, N_STATS
        shapes = {"means": (n_classes, d), "precision": (d * (d + 1) // 2,), "stats_mean": (m,),
                  "stats_precision": (m, m)}
        if arrays["precision"].shape == (d, d):  # the full matrix, as written before 2026-12-03
            shapes["precision"] = (d, d)
        names = tuple(spec.known_wrong)
        if names or "others" in arrays:
            shapes["others"] = (len(names), d)  # one mean per name in the metadata
            if "others" not in arrays:
                raise ReferenceError(f"{name}: missing array others (the metadata names {len(names)} known wrong kinds)")
        for a, shape in shapes.items():
            got = arrays[a]
            if got.dtype.kind != "f" or got.shape != shape:
                raise ReferenceError(f"{name}: {a} should be a float array of shape {list(shape)}, "
                                     f"got {got.dtype} {list(got.shape)}")
            if not np.isfinite(got).all():
                raise ReferenceError(f"{name}: {a} holds NaN or infinite values")
        if arrays["precision"].ndim == 1:
            arrays["precision"] = unpack_upper(arrays["precision"], d)
        return cls(*(arrays[a].astype(np.float64) for a in ARRAYS), threshold=spec.threshold,
                   stats_threshold=spec.stats_threshold, colour_range=tuple(spec.colour_range),
                   modality=modality, quantile=spec.quantile,
                   others=arrays["others"].astype(np.float64) if names else None, other_names=names)


def unpack_upper(upper, d):
    """The symmetric (D, D) float64 matrix whose upper triangle, row after row, is upper."""
    full = np.zeros((d, d), np.float64)
    full[np.triu_indices(d)] = upper
    return full + np.triu(full, 1).T


NO_CHECK = ("This model has no wrong-input check: it answers for any image, so its label means "
            "nothing for an image unlike its training images.")


def no_check(x):
    """Verdicts for a bundle without a reference (trained elsewhere, or an older schema):
    nothing flagged, and its message says there is no check."""
    return [Verdict(False, "none", None, None, float(c), NO_CHECK) for c in colourfulness(x)]
