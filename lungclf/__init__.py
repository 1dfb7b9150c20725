"""lungclf: what serving a lung image classifier needs, shared by app.py and training/.

    preprocess.py   the one path from an image file to the model's input
    schema.py       the bundle contract: metadata.json and classes.json, typed and checked
    bundle.py       resolve (folder or Hub repo), verify, load a model bundle
    inference.py    the traced forward pass (with the heatmap in the same call), calibration,
                    test-time augmentation; Classifier: what the app does per image
    wrong_input.py  the wrong-input check (colour, pixel statistics, feature distance)
    heatmap.py      the class activation map and its picture over the image
    batch.py        many files or a .zip in one request, with their limits; a scan's answer
    dicom.py        DICOM slices to the same 8-bit grey input the PNG-trained models see
    predict.py      the app's answer over an archive of any size into a table, resumable, on
                    one machine or a Dask cluster (python -m lungclf.predict)

It needs numpy, Pillow, opencv, keras/tensorflow, pydicom and (for Hub bundles) huggingface_hub,
nothing that only training uses (no scikit-learn, no matplotlib).
"""

import os

# TensorFlow's start-up chatter (oneDNN and CPU-feature lines) would fill the log before the
# app's own lines; errors still show. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_keras():
    """`import keras` (TensorFlow backend) with TensorFlow's C++ start-up lines, which it writes
    to stderr before its own logging is set up (so TF_CPP_MIN_LOG_LEVEL cannot hide them),
    kept out of the log. An import error still raises, with its traceback."""
    import sys

    if "tensorflow" not in sys.modules:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    import keras

    return keras
