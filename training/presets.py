"""Data-set presets: what suits each data set, in one place.

    python -m training.train --recipe recipes/iq_othnccd.toml      # names preset = "iq-othnccd"
    python -m training.presets            # print the presets

A preset holds the facts of a data set, not how to train on it (that is a recipe's job,
training/recipe.py and recipes/): the modality, the colour handling (CT slices are grey:
the network sees luminance only, so a colour cast or an RGB-vs-grey file format cannot
give the class away), the augmentation that suits the modality, the test-time
augmentation views, readable class names and descriptions, and the data set's citation
and licence for the model card. Without a preset, DEFAULT suits any class-folder data set.

Training writes these facts into the bundle (metadata.json, classes.json, README.md);
the app and evaluation read them from there, never from here.
"""

import argparse
import json

from training.errors import RecipeError

CLASS_NAMES = {
    "lung_aca": "Adenocarcinoma (lung)",
    "lung_n": "Benign lung tissue",
    "lung_scc": "Squamous cell carcinoma (lung)",
    "normal": "Normal",
    "benign": "Benign",
    "malignant": "Malignant",
    "adenocarcinoma": "Adenocarcinoma",
    "large.cell.carcinoma": "Large cell carcinoma",
    "squamous.cell.carcinoma": "Squamous cell carcinoma",
}

CLASS_DESCRIPTIONS = {
    "lung_aca": "H&E-stained tile of lung adenocarcinoma.",
    "lung_n": "H&E-stained tile of benign (non-cancerous) lung tissue.",
    "lung_scc": "H&E-stained tile of lung squamous cell carcinoma.",
    "normal": "CT slice of a case labelled normal (no nodule or tumour).",
    "benign": "CT slice of a case labelled benign (a nodule that is not cancer).",
    "malignant": "CT slice of a case labelled malignant (lung cancer).",
    "adenocarcinoma": "Chest CT slice of a case labelled adenocarcinoma.",
    "large.cell.carcinoma": "Chest CT slice of a case labelled large cell carcinoma.",
    "squamous.cell.carcinoma": "Chest CT slice of a case labelled squamous cell carcinoma.",
}

# Training-time augmentation per modality (see augmenter). Tissue has no up or down, so
# every flip and quarter turn is a new view, and stains vary in hue and saturation; a CT
# slice has an anatomical orientation, so only left-right mirroring, small rotations,
# shifts and zooms, and window-like brightness/contrast changes.
AUGMENTATIONS = {
    "histopathology": {"flip": "horizontal_and_vertical", "rot90": True, "hue": 0.03,
                       "saturation": 0.1, "brightness": 0.08, "contrast": 0.15},
    "CT": {"flip": "horizontal", "rotation": 0.03, "zoom": 0.1, "translation": 0.05,
           "brightness": 0.08, "contrast": 0.15},
    "unspecified": {"flip": "horizontal", "brightness": 0.08, "contrast": 0.1},
}

# Test-time augmentation views per modality (training.evaluate.tta_views): the model's
# probabilities over these views are averaged.
TTA_VIEWS = {
    "histopathology": ["identity", "flip_lr", "flip_ud", "rot90", "rot180", "rot270",
                       "transpose", "transverse"],
    "CT": ["identity", "flip_lr"],
    "unspecified": ["identity", "flip_lr"],
}

PRESETS = {
    "lc25000": {
        "modality": "histopathology",
        "dataset_id": "lc25000",
        "dataset_name": "LC25000 (lung part)",
        "classes": ["lung_aca", "lung_n", "lung_scc"],
        "citation": "Borkowski AA, Bui MM, Thomas LB, Wilson CP, DeLand LA, Mastorides SM. "
        "Lung and Colon Cancer Histopathological Image Dataset (LC25000). "
        "arXiv:1912.12142, 2019.",
        "license": "other",  # research use, citation asked
        "colour_mode": "rgb",
    },
    "iq-othnccd": {
        "modality": "CT",
        "dataset_id": "iq-othnccd",
        "dataset_name": "IQ-OTH/NCCD lung cancer CT",
        "classes": ["benign", "malignant", "normal"],
        "citation": "Al-Yasriy HF, AL-Husieny MS, Mohsen FY, Khalil EA, Hassan ZS. Diagnosis of "
        "lung cancer based on CT scans using CNN. IOP Conf. Ser.: Mater. Sci. Eng. 928 022035, "
        "2020. Kareem HF, AL-Husieny MS, Mohsen FY, Khalil EA, Hassan ZS. Evaluation of SVM "
        "performance in the detection of lung cancer in marked CT scan dataset. Indonesian "
        "Journal of Electrical Engineering and Computer Science 21(3) 1731-1738, 2021. "
        "Alyasriy H, AL-Huseiny M. The IQ-OTH/NCCD lung cancer dataset. Mendeley Data, V1, "
        "2021, doi:10.17632/bhmdr45bh2.1.",
        "license": "cc-by-4.0",
        "colour_mode": "grey",
    },
    "chest-ct": {
        "modality": "CT",
        "dataset_id": "chest-ctscan-images",
        "dataset_name": "Chest CT-scan images (Kaggle)",
        "classes": ["adenocarcinoma", "large.cell.carcinoma", "normal", "squamous.cell.carcinoma"],
        "citation": "Hany M. Chest CT-Scan images Dataset. Kaggle, 2020 "
        "(mohamedhanyyy/chest-ctscan-images), listed as CC0.",
        "license": "cc0-1.0",
        "colour_mode": "grey",
    },
}

DEFAULT = {
    "modality": "unspecified",
    "dataset_id": "custom",
    "dataset_name": "user data",
    "classes": [],
    "citation": "",
    "license": "other",
    "colour_mode": "rgb",
}


def class_name(label):
    """Human-readable name for a class folder name."""
    return CLASS_NAMES.get(label, label.replace("_", " ").replace(".", " ").strip().capitalize())


def class_description(label):
    """One sentence on what a class is, or "" for a class we know nothing about."""
    return CLASS_DESCRIPTIONS.get(label, "")


def preset(name):
    """The settings of a preset (None: DEFAULT), with its augmentation and TTA views."""
    if name and name not in PRESETS:
        raise RecipeError(f"Unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
    p = {**DEFAULT, **(PRESETS[name] if name else {})}
    p["augmentation"] = AUGMENTATIONS[p["modality"]]
    p["tta_views"] = TTA_VIEWS[p["modality"]]
    return p


def augmenter(spec, seed=0):
    """A function for tf.data `.map` on batches (x float32 0..255, y) that applies `spec`
    (an AUGMENTATIONS entry) with Keras preprocessing layers, plus random quarter turns
    per image when spec["rot90"]."""
    import keras
    import tensorflow as tf

    L = keras.layers
    steps = [L.RandomFlip(spec["flip"], seed=seed)] if spec.get("flip") else []
    if spec.get("rotation"):
        steps.append(L.RandomRotation(spec["rotation"], fill_mode="constant", seed=seed + 1))
    if spec.get("zoom"):
        steps.append(L.RandomZoom(spec["zoom"], fill_mode="constant", seed=seed + 2))
    if spec.get("translation"):
        t = spec["translation"]
        steps.append(L.RandomTranslation(t, t, fill_mode="constant", seed=seed + 3))
    if spec.get("hue"):
        steps.append(L.RandomHue(spec["hue"], value_range=(0, 255), seed=seed + 4))
    if spec.get("saturation"):
        s = spec["saturation"]
        steps.append(L.RandomSaturation((0.5 - s / 2, 0.5 + s / 2), value_range=(0, 255), seed=seed + 5))
    if spec.get("brightness"):
        steps.append(L.RandomBrightness(spec["brightness"], value_range=(0, 255), seed=seed + 6))
    if spec.get("contrast"):
        steps.append(L.RandomContrast(spec["contrast"], value_range=(0, 255), seed=seed + 7))
    quarter_turns = bool(spec.get("rot90"))

    def turn(img):
        return tf.image.rot90(img, tf.random.uniform([], 0, 4, dtype=tf.int32))

    def aug(x, y):
        x = tf.cast(x, tf.float32)
        if quarter_turns:
            x = tf.map_fn(turn, x)
        for step in steps:  # layer by layer, not a keras.Sequential: a Keras preprocessing layer
            x = step(x, training=True)  # runs on TensorFlow inside tf.data whatever the backend (JAX too)
        return tf.clip_by_value(x, 0.0, 255.0), y

    return aug


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", nargs="?", choices=sorted(PRESETS), help="one preset (default: all)")
    args = p.parse_args()
    for name in [args.name] if args.name else [None, *sorted(PRESETS)]:
        print(f"--preset {name}" if name else "without a preset:")
        print(json.dumps(preset(name), indent=2))


if __name__ == "__main__":
    main()
