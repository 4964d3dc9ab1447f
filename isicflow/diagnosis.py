"""One diagnosis vocabulary across every ISIC layout, so the manifest's diagnosis counts mean the
same thing whether a record came from a legacy sidecar, a HAM10000 dx code, a one-hot column, or
today's archive `diagnosis_1..5` hierarchy.

    normalise_diagnosis("mel") == normalise_diagnosis("Melanoma Invasive") == "melanoma"

Records keep the diagnosis text their metadata wrote (LesionRecord.diagnosis, the TFRecord's
`diagnosis`); the manifest counts `normalise_diagnosis` of it. Pure Python.
"""
from __future__ import annotations

import re

DIAGNOSES = ("nevus", "melanoma", "seborrheic_keratosis", "basal_cell_carcinoma",
             "actinic_keratosis", "squamous_cell_carcinoma", "dermatofibroma", "vascular_lesion",
             "benign_keratosis", "lentigo", "other", "unknown")

# Exact codes and one-hot column names (HAM10000 dx, ISIC 2018/2019 columns, ISIC 2017 flags).
_CODES = {
    "mel": "melanoma", "nv": "nevus", "bcc": "basal_cell_carcinoma", "ak": "actinic_keratosis",
    "akiec": "actinic_keratosis", "bkl": "benign_keratosis", "df": "dermatofibroma",
    "vasc": "vascular_lesion", "scc": "squamous_cell_carcinoma", "unk": "unknown",
    "sk": "seborrheic_keratosis",
}
# Words that say nothing about the diagnosis (diagnosis_1 of the archive's hierarchy).
_NO_DIAGNOSIS = {"", "benign", "malignant", "indeterminate", "unknown", "nan", "none", "null",
                 "na", "n/a"}
# Free text (legacy strings, diagnosis_2..5, ISIC 2024 iddx): first matching rule wins, so the
# specific rules come before the broad ones ("not melanocytic nevus" before "nevus").
_RULES = (
    (r"melanoma", "melanoma"),
    (r"basal cell", "basal_cell_carcinoma"),
    (r"squamous cell|bowen|keratoacanthoma", "squamous_cell_carcinoma"),
    (r"actinic|solar keratosis|intraepithelial carcinoma", "actinic_keratosis"),
    (r"seborrh?eic", "seborrheic_keratosis"),
    (r"lichen planus.like|lichenoid keratosis|pigmented benign keratosis|benign keratosis",
     "benign_keratosis"),
    (r"lentigo|melanotic macule|flat melanotic|ink.spot", "lentigo"),
    (r"dermatofibroma", "dermatofibroma"),
    (r"vascular|angioma|angiokeratoma|pyogenic granuloma|hemorrhage|haemorrhage", "vascular_lesion"),
    (r"nev(us|i)|naev(us|i)|benign melanocytic", "nevus"),
)
_COMPILED = tuple((re.compile(pattern), name) for pattern, name in _RULES)


def _one(text) -> str:
    """One text -> a DIAGNOSES name, or '' when it says nothing about the diagnosis."""
    value = re.sub(r"[\s_]+", " ", str(text or "")).strip().lower()
    if value in _NO_DIAGNOSIS:
        return ""
    if value.replace(" ", "_") in DIAGNOSES:
        return value.replace(" ", "_")
    if value in _CODES:
        return _CODES[value]
    for pattern, name in _COMPILED:
        if pattern.search(value):
            return name
    return "other"


def normalise_diagnosis(*texts) -> str:
    """The first of `texts` (most specific first) that names a diagnosis, normalised.

    'unknown' when none does (empty, 'Indeterminate', 'unk'); 'other' for a named diagnosis
    outside the vocabulary (e.g. 'Atypical melanocytic neoplasm', 'cafe-au-lait macule').
    """
    for text in texts:
        name = _one(text)
        if name:
            return name
    return "unknown"
