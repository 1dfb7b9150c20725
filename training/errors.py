"""The errors training's library functions raise; only a CLI turns them into an exit status.

Each carries a one-line message written for the person who ran the command, e.g.

    DataError: No such data folder: ../shared/data/lc2500

    python -m training.train ...   ->  prints "error: <message>" and exits with status 1

Catch `TrainingError` to handle any of them; `cli_errors` is the one place that turns them
into an exit (used by every `main` under training/).
"""

import contextlib


class TrainingError(Exception):
    """Something the user can fix: a bad option, recipe, data folder or weights file."""


class RecipeError(TrainingError):
    """A recipe file or override that is not a valid recipe (the message names the field)."""


class DataError(TrainingError):
    """The images, labels or group file cannot make a training set as asked."""


class ModelError(TrainingError):
    """A network, its options or its weights do not fit together."""


class SplitMismatch(TrainingError):
    """A split recomputed from the data is not the one a bundle records."""


class WorkerError(TrainingError):
    """A distributed worker failed, or the workers disagree."""


class ExportError(TrainingError):
    """A bundle's ONNX export failed, or its outputs differ from Keras's beyond the tolerance."""


@contextlib.contextmanager
def cli_errors():
    """`with cli_errors(): ...` in a CLI's main: a TrainingError ends the process with status 1
    and its message on stderr ("error: ..."), no traceback."""
    try:
        yield
    except TrainingError as e:
        raise SystemExit(f"error: {e}") from None
