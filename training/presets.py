"""What we know about the data sets: readable class names, modality, citations.

One place for these facts; training writes them into the bundle, the card and the app
read them from there. Unknown labels get a readable name made from the folder name.
"""

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

PRESETS = {
    "lc25000": {
        "modality": "histopathology",
        "dataset_id": "lc25000",
        "dataset_name": "LC25000 (lung part)",
        "citation": "Borkowski AA, Bui MM, Thomas LB, Wilson CP, DeLand LA, Mastorides SM. "
        "Lung and Colon Cancer Histopathological Image Dataset (LC25000). "
        "arXiv:1912.12142, 2019.",
        "license": "other",  # research use, citation asked
        "image_size": 128,
    },
    "iq-othnccd": {
        "modality": "CT",
        "dataset_id": "iq-othnccd",
        "dataset_name": "IQ-OTH/NCCD lung cancer CT",
        "citation": "Al-Yasriy HF et al. 2020; Kareem HF et al. 2021; "
        "Mendeley Data doi:10.17632/bhmdr45bh2",
        "license": "cc-by-4.0",
        "image_size": 128,
    },
    "chest-ct": {
        "modality": "CT",
        "dataset_id": "chest-ctscan-images",
        "dataset_name": "Chest CT-scan images (Kaggle)",
        "citation": "Chest CT-scan images dataset, Kaggle (mohamedhanyyy/chest-ctscan-images)",
        "license": "cc0-1.0",
        "image_size": 128,
    },
}

DEFAULT = {
    "modality": "unspecified",
    "dataset_id": "custom",
    "dataset_name": "user data",
    "citation": "",
    "license": "other",
    "image_size": 128,
}


def class_name(label):
    """Human-readable name for a class folder name."""
    return CLASS_NAMES.get(label, label.replace("_", " ").replace(".", " ").strip().capitalize())


def preset(name):
    return {**DEFAULT, **(PRESETS[name] if name else {})}
