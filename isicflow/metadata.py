"""The one internal record every ISIC layout is read into, and the label vocabulary."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

BENIGN, MALIGNANT, UNKNOWN = "benign", "malignant", "unknown"
LABEL_NAMES = (BENIGN, MALIGNANT, UNKNOWN)
LABEL_INDEX = {BENIGN: 0, MALIGNANT: 1, UNKNOWN: -1}
# The classes a model predicts, in label-index order (unknown is never a target).
CLASS_NAMES = (BENIGN, MALIGNANT)

# ISIC/HAM10000 diagnosis codes -> benign/malignant. One table; --dx_map overrides entries.
DEFAULT_DX_LABELS: dict[str, str] = {
    "mel": MALIGNANT, "bcc": MALIGNANT, "akiec": MALIGNANT, "scc": MALIGNANT,
    "nv": BENIGN, "bkl": BENIGN, "df": BENIGN, "vasc": BENIGN,
    "ak": MALIGNANT,  # ISIC 2019 writes akiec as AK
    "unk": UNKNOWN,
}


@dataclasses.dataclass(frozen=True)
class LesionRecord:
    """Metadata of one source image, whatever layout it came from."""

    image_id: str
    image_path: str                       # absolute path or URL (gs://, s3://) of the source file
    label: str = UNKNOWN                  # one of LABEL_NAMES
    diagnosis: str = ""
    patient_id: str = ""
    lesion_id: str = ""
    age_approx: Optional[float] = None
    sex: str = ""
    anatom_site: str = ""
    image_type: str = ""                  # "" when the layout does not say
    source_collection: str = ""
    attribution: str = ""
    license: str = ""
    original_width: Optional[int] = None  # as published metadata states, before any resize
    original_height: Optional[int] = None
    download: str = ""                    # folder of its download under --input ('.' = the root)

    def __post_init__(self) -> None:
        if self.label not in LABEL_NAMES:
            raise ValueError(f"{self.image_id}: label {self.label!r} not in {LABEL_NAMES}")

    def to_json(self) -> str:
        """One line of JSON; from_json gives back an equal record."""
        return json.dumps(vars(self), sort_keys=True)  # flat fields: no deep copy needed

    @classmethod
    def from_json(cls, line: str) -> "LesionRecord":
        return cls(**json.loads(line))

    @property
    def group_key(self) -> str:
        """What a split keeps together: patient, else lesion, else the image itself."""
        if self.patient_id:
            return f"patient:{self.patient_id}"
        if self.lesion_id:
            return f"lesion:{self.lesion_id}"
        return f"image:{self.image_id}"


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An input the job dropped, with a machine-readable reason; one line of rejects.jsonl."""

    path: str
    image_id: str
    reason: str
    detail: str = ""
    kind: str = "rejected"  # rejected (bad input) | filtered (by a flag) | duplicate

    def to_json_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_json_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "Rejection":
        return cls(**json.loads(line))
