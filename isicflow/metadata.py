"""The one internal record every ISIC layout is read into, and the label vocabulary."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Mapping, Optional

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


# Fitzpatrick skin types as the ISIC archive writes them (record field fitzpatrick_skin_type).
FITZPATRICK_TYPES = ("I", "II", "III", "IV", "V", "VI")
FITZPATRICK_COLUMN = "fitzpatrick_skin_type"
_FITZPATRICK_PREFIX = re.compile(r"^(fitzpatrick|skin|type|fst|[\s_:-])+", re.IGNORECASE)


def normalise_fitzpatrick(value) -> Optional[str]:
    """'I'..'VI' in any case and spacing, 1..6 (also '3.0', 'type 3', 'FST III') -> the numeral;
    empty or missing -> ''; anything else -> None (the caller counts it and writes '')."""
    if value is None:
        return ""
    text = str(value).strip()
    if text.lower() in {"", "unknown", "nan", "none", "null", "na", "n/a"}:
        return ""
    text = _FITZPATRICK_PREFIX.sub("", text).strip().upper()
    if text in FITZPATRICK_TYPES:
        return text
    if re.fullmatch(r"[1-6](\.0+)?", text):
        return FITZPATRICK_TYPES[int(float(text)) - 1]
    return None


# The other columns of an image's metadata table (record field extra_metadata_json): a cell over
# this many UTF-8 bytes is left out (free text, not a subgroup), as are empty cells.
EXTRA_VALUE_MAX_BYTES = 1024


def extra_metadata_json(extra: Mapping[str, str]) -> str:
    """The record's extra_metadata_json: keys sorted, compact, UTF-8 as is; '' when empty."""
    if not extra:
        return ""
    return json.dumps(dict(extra), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def parse_extra_metadata(text) -> dict[str, str]:
    """A record's extra_metadata_json (str, bytes, or a scalar string tensor's .numpy()) -> dict."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    return json.loads(text) if text else {}


# How a diagnosis was confirmed: the ISIC archive's diagnosis_confirm_type, HAM10000's dx_type
# (extras of the record), given in the archive's words. Excised lesions (histopathology) are the
# hard ones: on HAM10000 the in-source melanoma AUC is 0.92 over all images and 0.74 over those,
# and a clinic that sends only excised lesions scores the lower figure
# (docs/results/cnn-ham-confirmation.md).
CONFIRMATION_COLUMNS = ("diagnosis_confirm_type", "dx_type")
CONFIRMATION_WORDS = {"histo": "histopathology", "follow_up": "serial imaging showing no change",
                      "consensus": "single image expert consensus",
                      "confocal": "confocal microscopy with consensus dermoscopy"}


def diagnosis_confirmation(extra_metadata) -> str:
    """How a record's diagnosis was confirmed, from its extra_metadata_json (text or the parsed
    dict): the first of CONFIRMATION_COLUMNS it holds, HAM10000's codes in the archive's words
    (CONFIRMATION_WORDS; other values as given); '' when it holds none."""
    extra = extra_metadata if isinstance(extra_metadata, Mapping) else \
        parse_extra_metadata(extra_metadata)
    for column in CONFIRMATION_COLUMNS:
        value = str(extra.get(column) or "").strip()
        if value:
            return CONFIRMATION_WORDS.get(value.lower(), value)
    return ""


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
    fitzpatrick_skin_type: str = ""       # one of FITZPATRICK_TYPES, or ""
    # The table's other columns: ((column, value), ...), sorted by column (a dict is accepted).
    extra_metadata: tuple = ()

    def __post_init__(self) -> None:
        if self.label not in LABEL_NAMES:
            raise ValueError(f"{self.image_id}: label {self.label!r} not in {LABEL_NAMES}")
        if self.fitzpatrick_skin_type not in FITZPATRICK_TYPES + ("",):
            raise ValueError(f"{self.image_id}: fitzpatrick_skin_type "
                             f"{self.fitzpatrick_skin_type!r} not in {FITZPATRICK_TYPES}")
        extra = self.extra_metadata
        pairs = extra.items() if isinstance(extra, Mapping) else extra
        # frozen: hashable and equal however it was given (JSON gives back lists)
        object.__setattr__(self, "extra_metadata",
                           tuple(sorted((str(k), str(v)) for k, v in pairs)))

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
