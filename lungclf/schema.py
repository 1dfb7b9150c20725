"""The bundle contract, written down once: what a bundle's metadata.json and classes.json hold.

Training writes these files and the app reads them back through `parse_metadata` and
`parse_classes`, which check every field the app uses and return typed objects; a field
that is missing or of the wrong kind raises SchemaError naming it, e.g.

    metadata.json: preprocessing.input_size: expected [N, N, 3] with N > 0, got [128, 128]

Fields the app does not read (training history, audit details, notes) are kept as they
are in `Metadata.raw` for the model card. Modelled on timm's `pretrained_cfg` (typed
preprocessing the code reads back) and MONAI bundles' metadata.json (versioned schema,
task, data, licences, library versions).

Versions (the `schema` field):
    lung-classifier-bundle/1   preprocessing described in sentences
    lung-classifier-bundle/2   preprocessing as typed fields (resize and scaling codes);
                               optional `wrong_input` block (WrongInput: the reference
                               file's name, sha256, feature dimension, threshold, quantile,
                               colour range, measured rates; see lungclf/wrong_input.py)
                               and optional `examples` (files in examples/, for the card);
                               optional `recipe` (RecipeFile: recipe.json, the resolved
                               training recipe, checked by sha256), `baseline` and
                               `cross_validation` (figures for the card); optional `onnx`
                               (OnnxFile: model.onnx, the same network for ONNX Runtime in the
                               app and in the browser, checked against model.keras at export)
A /1 file is read as /2 by `migrate`: the one preprocessing /1 could describe is /2's
defaults. `python -m lungclf.bundle --upgrade FOLDER` rewrites a /1 metadata.json as /2.
"""

import math
import re
import types
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Literal, Union, get_args, get_origin, get_type_hints

SCHEMA = "lung-classifier-bundle/2"
OLD_SCHEMAS = ("lung-classifier-bundle/1",)
# The one resize the app implements (lungclf.preprocess.resize): squash to input_size,
# cv2.INTER_AREA when shrinking, cv2.INTER_LINEAR when growing.
RESIZE = "squash-area-down-linear-up"
# The model scales its 0..255 input itself (a Rescaling layer, or a backbone's own
# preprocessing), so the app feeds 0..255 and no client needs to know the scaling.
SCALING = "in-model"
ONNX_OUTPUTS = ("logits", "features", "maps")  # model.onnx's outputs, in this order (training/export.py)
# How model.keras and model.onnx store their large weights: float16 rounds each to 11 bits and
# halves the bytes; both still compute in float32 (training/export.py)
StoredWeights = Literal["float32", "float16"]
VIEWS = ("identity", "flip_lr", "flip_ud", "rot90", "rot180", "rot270", "transpose", "transverse")


class SchemaError(ValueError):
    """A metadata.json or classes.json that breaks the contract; the message names the field."""


@dataclass(frozen=True)
class Preprocessing:
    input_size: tuple[int, int, int]  # height, width, channels: [N, N, 3]
    colour_mode: Literal["rgb", "grey"]  # grey: the model turns its RGB input into luminance
    resize: Literal["squash-area-down-linear-up"] = RESIZE
    scaling: Literal["in-model"] = SCALING
    value_range: tuple[float, float] = (0.0, 255.0)
    dtype: Literal["float32"] = "float32"

    @property
    def size(self):
        return self.input_size[0]


@dataclass(frozen=True)
class Task:
    modality: str  # "histopathology", "CT"
    type: Literal["image-classification"] = "image-classification"


@dataclass(frozen=True)
class ModelInfo:
    architecture: str
    parameters: int
    sha256: str
    file: Literal["model.keras"] = "model.keras"
    bytes: int | None = None
    initial_weights: str = "random"
    width: int | None = None  # first-stage channels of compact/resnet; None where it means nothing
    pretrained: dict | None = None  # starting weights' architecture, package, version, licence, origin
    weights: StoredWeights = "float32"  # float16: the large weights rounded and stored in half the bytes


@dataclass(frozen=True)
class Scores:
    images: int
    accuracy: float
    macro_f1: float
    balanced_accuracy: float | None = None
    ece: float | None = None


@dataclass(frozen=True)
class Metrics:
    test: Scores  # the held-out test split: groups never seen in training or model choice
    val: Scores | None = None
    test_tta: Scores | None = None


@dataclass(frozen=True)
class SplitCount:
    images: int
    groups: int
    per_class: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Split:
    name: str
    counts: dict[str, SplitCount]
    seed: int = 0
    method: str = ""
    fingerprint: str = ""


@dataclass(frozen=True)
class Data:
    dataset_name: str
    dataset_id: str = ""
    citation: str = ""
    license: str = "other"


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    method: str = "temperature scaling on the validation split"


@dataclass(frozen=True)
class TTA:
    views: list[Literal[VIEWS]] = field(default_factory=lambda: ["identity", "flip_lr"])
    temperature: float | None = None


@dataclass(frozen=True)
class Audit:
    warnings: list[str] = field(default_factory=list)
    summary: str = ""


@dataclass(frozen=True)
class WrongInput:
    """The wrong-input check's reference (lungclf/wrong_input.py): arrays in `file`, the rest here."""

    sha256: str  # of `file`, checked before it is read
    feature_dim: int  # D: the penultimate features' length
    threshold: float  # Mahalanobis distance to the nearest class mean above which an image is flagged
    quantile: float  # share of the validation split above the threshold (by construction)
    colour_range: tuple[float, float]  # colourfulness (0..255) outside which an image is flagged
    stats_threshold: float  # Mahalanobis distance of the pixel statistics above which an image is flagged
    file: Literal["wrong_input.npz"] = "wrong_input.npz"
    method: str = ""
    fitted_on: str = "train"
    rates: dict = field(default_factory=dict)  # measured shares flagged, for the card; not read by the app
    known_wrong: list[str] = field(default_factory=list)  # names of the known wrong kinds (the .npz's others)


@dataclass(frozen=True)
class RecipeFile:
    """The resolved training recipe (training/recipe.py) the bundle was made with, as JSON."""

    sha256: str  # of `file`
    method: Literal["finetune", "frozen"] = "finetune"  # frozen: figures are group k-fold, out of fold
    file: Literal["recipe.json"] = "recipe.json"


@dataclass(frozen=True)
class OnnxFile:
    """The bundle's network as ONNX (training/export.py): one input `image`, outputs logits,
    features and maps. The app serves it with ONNX Runtime when it is there; the static page
    runs it in the browser. The export's check (differences from Keras per output, the images,
    the versions) is kept in the raw block for the card. The page reads the wrong-input
    reference from wrong_input.npz, as the app does; exports before 2026-12-03's evening also
    wrote a copy for it (wrong_input.json/.bin, `reference` here), which nothing reads now."""

    sha256: str  # of `file`, checked before it is read
    source_sha256: str  # sha256 of the model.keras it was exported from: must be this bundle's
    opset: int
    relative_difference: dict[str, float]  # per output: largest difference from Keras over its scale
    tolerance: dict[str, float]  # per output: the largest relative difference the export allowed
    probabilities_difference: float | None = None  # largest difference of the calibrated probabilities
    file: Literal["model.onnx"] = "model.onnx"
    weights: StoredWeights = "float32"
    outputs: list[Literal[ONNX_OUTPUTS]] = field(default_factory=lambda: list(ONNX_OUTPUTS))


@dataclass(frozen=True)
class Metadata:
    schema: Literal["lung-classifier-bundle/2"]
    name: str
    task: Task
    preprocessing: Preprocessing
    model: ModelInfo
    classes: list[str]
    data: Data
    split: Split
    metrics: Metrics
    calibration: Calibration = Calibration()
    tta: TTA = TTA()
    audit: Audit = Audit()
    description: str = ""
    wrong_input: WrongInput | None = None
    recipe: RecipeFile | None = None  # bundles made before recipes have none
    onnx: OnnxFile | None = None  # bundles not exported (python -m training.export) have none
    raw: dict = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Classes:
    labels: list[str]
    names: dict[str, str] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)


def _kind(tp):
    """A type's name as an error message says it."""
    origin = get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin is dict or tp is dict:
        return "an object"
    if is_dataclass(tp):
        return "an object"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _parse(tp, value, path):
    """Check `value` against the annotation `tp`; return it converted (dataclasses, tuples)."""
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _parse(inner, value, path)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected an object, got {value!r:.60}")
        hints = get_type_hints(tp)
        out = {}
        for f in fields(tp):
            if f.name == "raw":
                continue
            where = f"{path}.{f.name}" if path else f.name
            if f.name in value:
                out[f.name] = _parse(hints[f.name], value[f.name], where)
            elif f.default is MISSING and f.default_factory is MISSING:
                raise SchemaError(f"{where}: missing (expected {_kind(hints[f.name])})")
        return tp(**out)
    if origin is Literal:
        if value not in args:
            raise SchemaError(f"{path}: expected {_kind(tp)}, got {value!r:.60}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise SchemaError(f"{path}: expected a list of {len(args)}, got {value!r:.60}")
        return tuple(_parse(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, list):
            raise SchemaError(f"{path}: expected a list, got {value!r:.60}")
        return [_parse(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"{path}: expected an object, got {value!r:.60}")
        if not args:
            return value
        return {str(k): _parse(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SchemaError(f"{path}: expected a number, got {value!r:.60}")
        return float(value)
    if tp in (int, str, bool):
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise SchemaError(f"{path}: expected {_kind(tp)}, got {value!r:.60}")
        return value
    raise TypeError(f"schema: no rule for {tp} at {path}")  # a bug in this file, not in a bundle


def _require(ok, path, expected, got):
    if not ok:
        raise SchemaError(f"{path}: expected {expected}, got {got!r:.60}")


def migrate(meta):
    """A metadata dict of an older schema, as the current one (a new dict); current ones as they are."""
    version = meta.get("schema") if isinstance(meta, dict) else None
    if version == SCHEMA:
        return meta
    if version not in OLD_SCHEMAS:
        raise SchemaError(f"schema: expected {SCHEMA!r} (or the older {', '.join(map(repr, OLD_SCHEMAS))}), "
                          f"got {version!r}")
    # /1 described its preprocessing in sentences; the one it could describe is /2's defaults.
    old = meta.get("preprocessing")
    _require(isinstance(old, dict), "preprocessing", "an object", old)
    _require("INTER_AREA" in str(old.get("resize", "")), "preprocessing.resize",
             "the /1 text naming cv2.INTER_AREA", old.get("resize"))
    _require("Rescaling(1/255)" in str(old.get("scaling", "")) or "itself" in str(old.get("scaling", "")),
             "preprocessing.scaling", "scaling inside the model", old.get("scaling"))
    new = dict(meta, schema=SCHEMA)
    new["preprocessing"] = asdict(Preprocessing(tuple(old.get("input_size") or ()),
                                                old.get("colour_mode", "rgb")))
    new["preprocessing"]["input_size"] = list(old.get("input_size") or [])
    return new


def parse_metadata(meta):
    """metadata.json (a dict, any known schema version) -> Metadata, checked in full."""
    if not isinstance(meta, dict):
        raise SchemaError(f"expected a JSON object, got {type(meta).__name__}")
    meta = migrate(meta)
    m = _parse(Metadata, meta, "")
    size = m.preprocessing.input_size
    _require(size[0] == size[1] and size[0] > 0 and size[2] == 3, "preprocessing.input_size",
             "[N, N, 3] with N > 0", list(size))
    _require(re.fullmatch(r"[0-9a-f]{64}", m.model.sha256), "model.sha256", "64 hex digits", m.model.sha256)
    _require(len(m.classes) >= 2 and len(set(m.classes)) == len(m.classes), "classes",
             "two or more distinct labels", m.classes)
    _require(m.calibration.temperature > 0, "calibration.temperature", "a number > 0", m.calibration.temperature)
    _require(m.tta.temperature is None or m.tta.temperature > 0, "tta.temperature", "a number > 0",
             m.tta.temperature)
    _require(m.tta.views and m.tta.views[0] == "identity", "tta.views", "a list starting with 'identity'",
             m.tta.views)
    w = m.wrong_input
    if w is not None:
        _require(re.fullmatch(r"[0-9a-f]{64}", w.sha256), "wrong_input.sha256", "64 hex digits", w.sha256)
        _require(w.feature_dim > 0, "wrong_input.feature_dim", "an integer > 0", w.feature_dim)
        _require(w.threshold > 0, "wrong_input.threshold", "a number > 0", w.threshold)
        _require(w.stats_threshold > 0, "wrong_input.stats_threshold", "a number > 0", w.stats_threshold)
        _require(0 < w.quantile < 1, "wrong_input.quantile", "a number in (0, 1)", w.quantile)
        _require(0 <= w.colour_range[0] <= w.colour_range[1], "wrong_input.colour_range",
                 "[low, high] with 0 <= low <= high", list(w.colour_range))
    if m.recipe is not None:
        _require(re.fullmatch(r"[0-9a-f]{64}", m.recipe.sha256), "recipe.sha256", "64 hex digits", m.recipe.sha256)
    o = m.onnx
    if o is not None:
        _require(re.fullmatch(r"[0-9a-f]{64}", o.sha256), "onnx.sha256", "64 hex digits", o.sha256)
        _require(o.source_sha256 == m.model.sha256, "onnx.source_sha256",
                 f"model.sha256 ({m.model.sha256[:12]}...: exported from this bundle's model.keras)",
                 o.source_sha256)
        _require(sorted(o.outputs) == sorted(ONNX_OUTPUTS), "onnx.outputs", list(ONNX_OUTPUTS), o.outputs)
        # float32: every output within its tolerance; float16: what training/export.py bounds
        # instead (the probabilities, the features, the maps)
        got = o.relative_difference | ({} if o.probabilities_difference is None
                                       else {"probabilities": o.probabilities_difference})
        bounded = o.relative_difference if o.weights == "float32" else o.tolerance
        over = {k: got.get(k) for k in bounded if not got.get(k, float("nan")) <= o.tolerance.get(k, 0.0)}
        _require(not over, "onnx.relative_difference", "differences within onnx.tolerance", over)
    _require("test" in m.split.counts, "split.counts", "an object with a 'test' entry", list(m.split.counts))
    for name in ("accuracy", "macro_f1"):
        v = getattr(m.metrics.test, name)
        _require(0 <= v <= 1, f"metrics.test.{name}", "a number in [0, 1]", v)
    return Metadata(**{f.name: getattr(m, f.name) for f in fields(Metadata) if f.name != "raw"}, raw=meta)


def parse_classes(classes, metadata):
    """classes.json (a dict) -> Classes, checked against the metadata's class list."""
    c = _parse(Classes, classes, "")
    _require(c.labels == metadata.classes, "labels", f"the labels of metadata.json {metadata.classes}",
             c.labels)
    return c


def preprocessing(size, colour_mode):
    """The preprocessing block training writes into metadata.json."""
    p = asdict(Preprocessing((size, size, 3), colour_mode))
    return p | {"input_size": list(p["input_size"]), "value_range": list(p["value_range"])}
