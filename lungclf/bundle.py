"""The model bundle: the folder that training writes and the app serves.

    model.keras     Keras 3 native format, loadable with safe_mode=True
    classes.json    labels, and a readable name and description per label
    metadata.json   the contract of lungclf/schema.py: schema version, typed preprocessing,
                    task, data and split summary, held-out metrics, calibration, TTA views,
                    library versions, sha256 of model.keras
    wrong_input.npz optional: the wrong-input check's reference arrays (lungclf.wrong_input),
                    read with allow_pickle=False after its sha256 is checked
    recipe.json     optional: the resolved training recipe (training/recipe.py), sha256 checked
    model.onnx      optional: the same network as ONNX (python -m training.export), checked against
                    model.keras at export and by sha256 here; the app serves it with ONNX Runtime
    README.md       the model card (training.card)
    figures/        confusion matrix, training curves, reliability diagram
    examples/       optional: a few images from the bundle's own held-out test split

`resolve` turns a MODEL_REPO entry (a folder, or a Hub repo id with optional @revision)
into a local folder, pulling only the bundle's files of that revision from the Hub (or,
when the Hub cannot be reached, from the cache, saying so); `verify` checks every field
the app reads and the sha256 before anything is loaded; `load` also loads the model in
Keras safe mode and checks its input and output shapes against the metadata. Every
refusal is a BundleError whose one-line message names the bundle and the failed check.

The sha256 catches a damaged or truncated model.keras, not tampering: whoever can replace
model.keras can edit metadata.json too. What you pull is fixed only by a commit sha
(owner/name@<commit>); a Hub tag or branch can be moved.

    python -m lungclf.bundle FOLDER_OR_REPO[@REVISION]   # verify, load and print a summary
    python -m lungclf.bundle --upgrade FOLDER            # rewrite an older metadata.json
"""

import argparse
import hashlib
import json
import logging
import os
from dataclasses import dataclass

from lungclf import import_keras, schema
FILES = ("model.keras", "classes.json", "metadata.json", "README.md")
ALLOW_PATTERNS = ["model.keras", "classes.json", "metadata.json", "README.md", "wrong_input.npz", "recipe.json",
                  "model.onnx", "figures/*", "examples/*"]

log = logging.getLogger("bundle")


class BundleError(RuntimeError):
    """A bundle that cannot be served; the message names the bundle and the failed check."""


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve(spec):
    """A MODEL_REPO entry -> local folder. Folders are used as they are; anything else is
    a Hub repo id, `owner/name` or `owner/name@revision`, pulled with `pull`."""
    spec = spec.strip()
    if os.path.isdir(spec):
        return spec
    if spec.startswith((".", "/", "~")) or os.sep in spec.replace("/", "", 1):
        raise BundleError(f"{spec}: no such bundle folder")
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise BundleError(f"{spec}: not a folder, and not a Hub repo id like owner/name[@revision]")
    try:
        return pull(repo_id, revision or None, spec)
    except BundleError as e:  # a mistyped relative folder looks like a repo id too
        raise BundleError(f"{e}; no folder {os.path.abspath(spec)} on disk either") from None


def pull(repo_id, revision=None, spec=None):
    """Download only the bundle's files of one revision of a Hub model repo; returns the
    snapshot folder in the Hugging Face cache (HF_HUB_CACHE).

    The Hub (HF_ENDPOINT) is asked once, with a timeout (HF_HUB_ETAG_TIMEOUT, 10 s), which
    commit the revision is. When it cannot be reached, the cached snapshot of that same
    revision is used and the log says so; without one this fails at once, no retries.
    Private repos need HF_TOKEN (or `hf auth login`)."""
    from httpx2 import TransportError
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, IncompleteSnapshotError,
                                        LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RemoteEntryNotFoundError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    spec = spec or (f"{repo_id}@{revision}" if revision else repo_id)
    rev = revision or constants.DEFAULT_REVISION
    try:
        HfApi().repo_info(repo_id, revision=revision, timeout=constants.HF_HUB_ETAG_TIMEOUT)
        return snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS)
    except GatedRepoError:
        raise BundleError(f"{spec}: gated model repo on {constants.ENDPOINT}; set HF_TOKEN to a token "
                          "with access") from None
    except RepositoryNotFoundError:
        raise BundleError(f"{spec}: model repo {repo_id} not found on {constants.ENDPOINT} (if it is "
                          "private, set HF_TOKEN to a token that can read it)") from None
    except RevisionNotFoundError:
        raise BundleError(f"{spec}: revision {rev!r} not found in {repo_id} (a branch, tag or "
                          "commit id)") from None
    except RemoteEntryNotFoundError:
        raise BundleError(f"{spec}: a file of the bundle listed in {repo_id}@{rev} cannot be "
                          "downloaded") from None
    except (TransportError, OfflineModeIsEnabled, HfHubHTTPError) as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, HfHubHTTPError) and status is not None and status < 500:
            raise BundleError(f"{spec}: the Hub at {constants.ENDPOINT} refused the request "
                              f"(HTTP {status}); check HF_TOKEN") from None
        reason = "HF_HUB_OFFLINE is set" if isinstance(e, OfflineModeIsEnabled) else (
            f"HTTP {status}" if status else type(e).__name__)
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW_PATTERNS,
                                   local_files_only=True)
    except IncompleteSnapshotError as e:  # e.g. figures missing: verify() names what matters
        folder = e.snapshot_path
    except LocalEntryNotFoundError:
        raise BundleError(f"{spec}: the Hub at {constants.ENDPOINT} cannot be reached ({reason}) and "
                          f"no cached snapshot of revision {rev!r} is in HF_HUB_CACHE") from None
    log.warning("%s: the Hub at %s cannot be reached (%s); using the cached snapshot of %s@%s "
                "(commit %s)", spec, constants.ENDPOINT, reason, repo_id, rev, os.path.basename(folder))
    return folder


@dataclass
class Bundle:
    """A verified, loaded bundle: the Keras model and its typed metadata and classes."""

    name: str
    folder: str
    model: object
    meta: schema.Metadata
    classes: schema.Classes
    reference: object = None  # lungclf.wrong_input.Reference, when the bundle has one

    @property
    def labels(self):
        return self.classes.labels

    @property
    def names(self):
        return self.classes.names

    @property
    def metadata(self):
        """metadata.json as a dict (in the current schema), for the card and reports."""
        return self.meta.raw

    @property
    def input_size(self):
        return self.meta.preprocessing.size

    @property
    def temperature(self):
        return self.meta.calibration.temperature

    @property
    def onnx_path(self):
        """The verified model.onnx, or None for a bundle without one."""
        return None if self.meta.onnx is None else os.path.join(self.folder, self.meta.onnx.file)


def _read_json(folder, name, spec):
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BundleError(f"{spec}: {name} is unreadable ({type(e).__name__})") from None


INCOMPLETE = "INCOMPLETE"  # training writes a bundle with this file in it and removes it last


def verify(folder, spec=None):
    """Check a bundle folder without loading the model: files, every metadata field the app
    reads (lungclf.schema), classes, sha256 of model.keras (and of the reference, recipe and
    ONNX model it names). Returns (Metadata, Classes)."""
    spec = spec or folder
    if os.path.exists(os.path.join(folder, INCOMPLETE)):
        raise BundleError(f"{spec}: training did not finish writing this bundle (it holds the file "
                          f"{INCOMPLETE}; its wrong-input check or other parts may be missing)")
    missing = [f for f in FILES if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise BundleError(f"{spec}: not a model bundle, missing {', '.join(missing)}")
    try:
        raw = _read_json(folder, "metadata.json", spec)
        old = raw.get("schema") if isinstance(raw, dict) else None
        meta = schema.parse_metadata(raw)
    except schema.SchemaError as e:
        raise BundleError(f"{spec}: metadata.json: {e}") from None
    if old != schema.SCHEMA:
        log.warning("%s: metadata.json is schema %s, read as %s (python -m lungclf.bundle --upgrade "
                    "FOLDER rewrites it)", spec, old, schema.SCHEMA)
    try:
        classes = schema.parse_classes(_read_json(folder, "classes.json", spec), meta)
    except schema.SchemaError as e:
        raise BundleError(f"{spec}: classes.json: {e}") from None
    actual = sha256(os.path.join(folder, "model.keras"))
    if actual != meta.model.sha256:
        raise BundleError(
            f"{spec}: sha256 of model.keras does not match metadata.json "
            f"(expected {meta.model.sha256[:12]}..., got {actual[:12]}...); refusing to load it"
        )
    w = meta.wrong_input
    if w is not None:
        path = os.path.join(folder, w.file)
        if not os.path.isfile(path):
            raise BundleError(f"{spec}: metadata.json names a wrong-input reference {w.file}, which is missing")
        actual = sha256(path)
        if actual != w.sha256:
            raise BundleError(f"{spec}: sha256 of {w.file} does not match metadata.json (expected "
                              f"{w.sha256[:12]}..., got {actual[:12]}...); refusing to load it")
    for what, part in (("a recipe", meta.recipe), ("an ONNX model", meta.onnx)):
        if part is None:
            continue
        path = os.path.join(folder, part.file)
        if not os.path.isfile(path):
            raise BundleError(f"{spec}: metadata.json names {what} {part.file}, which is missing")
        if sha256(path) != part.sha256:
            raise BundleError(f"{spec}: sha256 of {part.file} does not match metadata.json; refusing to load it")
    return meta, classes


def load_reference(folder, meta, spec):
    """The verified bundle's wrong-input reference (lungclf.wrong_input.Reference), or None."""
    from lungclf.wrong_input import Reference, ReferenceError

    if meta.wrong_input is None:
        return None
    try:
        return Reference.load(os.path.join(folder, meta.wrong_input.file), meta.wrong_input,
                              len(meta.classes), meta.task.modality)
    except ReferenceError as e:
        raise BundleError(f"{spec}: {e}") from None


def check_model(model, meta, spec):
    """The model's input and output shapes against the metadata: one image input of
    preprocessing.input_size, one output with a value per class."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise BundleError(f"{spec}: model.keras: expected one input and one output, got "
                          f"{len(model.inputs)} and {len(model.outputs)}")
    want = tuple(meta.preprocessing.input_size)
    got = tuple(model.inputs[0].shape[1:])
    if got != want:
        raise BundleError(f"{spec}: model.keras: input shape {list(got)} does not match "
                          f"metadata.json preprocessing.input_size {list(want)}")
    n_out = tuple(model.outputs[0].shape[1:])
    if n_out != (len(meta.classes),):
        raise BundleError(f"{spec}: model.keras: output shape {list(n_out)} does not match the "
                          f"{len(meta.classes)} classes of classes.json")


def load(spec):
    """Resolve, verify and load one bundle; the model loads with safe_mode=True."""
    folder = resolve(spec)
    meta, classes = verify(folder, spec)
    keras = import_keras()

    try:
        model = keras.saving.load_model(os.path.join(folder, "model.keras"), safe_mode=True,
                                        compile=False)
    except Exception as e:  # Lambda layers, unknown classes, a damaged zip ...
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        raise BundleError(f"{spec}: model.keras refused by Keras safe mode loading: {reason}") from None
    check_model(model, meta, spec)
    reference = load_reference(folder, meta, spec)
    if reference is not None:
        from lungclf.inference import ModelError, head

        try:
            dim = head(model)[1].shape[0]
        except ModelError as e:
            raise BundleError(f"{spec}: model.keras: {e}; the wrong-input check needs it") from None
        if dim != reference.feature_dim:
            raise BundleError(f"{spec}: {meta.wrong_input.file}: feature dimension {reference.feature_dim} "
                              f"does not match the model's {dim}")
    return Bundle(meta.name or os.path.basename(os.path.normpath(spec)), folder, model, meta, classes,
                  reference)


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def upgrade(folder):
    """Rewrite FOLDER/metadata.json in the current schema (lungclf.schema.migrate)."""
    path = os.path.join(folder, "metadata.json")
    raw = _read_json(folder, "metadata.json", folder)
    try:
        new = schema.migrate(raw)
        schema.parse_metadata(new)
    except schema.SchemaError as e:
        raise BundleError(f"{folder}: metadata.json: {e}") from None
    write_json(path, new)
    return raw.get("schema"), new["schema"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="bundle folder or Hub repo id[@revision]")
    p.add_argument("--upgrade", action="store_true",
                   help="rewrite the folder's metadata.json in the current schema, then verify it")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.upgrade:
            print("metadata.json: %s -> %s" % upgrade(args.spec))
        b = load(args.spec)
    except BundleError as e:
        raise SystemExit(f"refused: {e}")
    t = b.meta.metrics.test
    print(f"{b.name}: {len(b.labels)} classes {b.labels}, input {b.input_size}px "
          f"{b.meta.preprocessing.colour_mode}, held-out accuracy {t.accuracy:.4f}, "
          f"macro-F1 {t.macro_f1:.4f} on {t.images} images")


if __name__ == "__main__":
    main()
