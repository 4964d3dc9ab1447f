"""Label vocabulary helpers shared by the readers: benign/malignant text, dx codes, 0/1 flags."""
from __future__ import annotations

import collections
import re
from typing import Mapping, Optional

from isicflow.metadata import BENIGN, DEFAULT_DX_LABELS, LABEL_NAMES, MALIGNANT, UNKNOWN

_DX_CODE = re.compile(r"[a-z0-9_]+")


def parse_dx_map(text: str) -> dict[str, str]:
    """'bkl:malignant,unk:unknown' -> DEFAULT_DX_LABELS with those entries replaced (or added).

    Returns the whole table, so the result can be passed straight to read_layout(dx_labels=...).
    """
    table = dict(DEFAULT_DX_LABELS)
    if not text or not text.strip():
        return table
    given: dict[str, str] = {}
    for piece in text.split(","):
        code, sep, label = piece.partition(":")
        code, label = code.strip().lower(), label.strip().lower()
        if not sep or not _DX_CODE.fullmatch(code) or label not in LABEL_NAMES:
            raise ValueError(f"--dx_map piece {piece!r} is not CODE:LABEL with CODE in [a-z0-9_]+ "
                             f"and LABEL in {LABEL_NAMES} (whole value {text!r})")
        if code in given and given[code] != label:
            raise ValueError(f"--dx_map piece {piece!r} contradicts {code}:{given[code]} "
                             f"(value {text!r})")
        given[code] = label
    table.update(given)
    return table


def dx_table(dx_labels: Optional[Mapping[str, str]]) -> dict[str, str]:
    """DEFAULT_DX_LABELS with `dx_labels` laid over it (keys lower-cased, labels checked)."""
    table = dict(DEFAULT_DX_LABELS)
    for code, label in (dx_labels or {}).items():
        if label not in LABEL_NAMES:
            raise ValueError(f"dx_labels[{code!r}] = {label!r} is not one of {LABEL_NAMES}")
        table[code.strip().lower()] = label
    return table


def label_from_text(value, counters: collections.Counter) -> str:
    """'benign'/'malignant' (any case) kept; null, 'indeterminate/benign' and the rest -> unknown."""
    text = str(value).strip().lower() if value is not None else ""
    if text in (BENIGN, MALIGNANT):
        return text
    counters["unknown_label"] += 1
    return UNKNOWN


def label_from_dx(code: str, table: Mapping[str, str], counters: collections.Counter) -> str:
    label = table.get(code.strip().lower(), UNKNOWN)
    if label == UNKNOWN:
        counters["unknown_label"] += 1
    return label


def parse_flags(cells: list[str], counters: collections.Counter) -> Optional[list[int]]:
    """0/1 cells ('1.0' too) -> ints, None if a cell is not 0 or 1; counts float_one_hot per row."""
    values, wrote_float = [], False
    for cell in cells:
        text = (cell or "").strip()
        try:
            number = float(text)
        except ValueError:
            return None
        if number not in (0.0, 1.0):
            return None
        wrote_float = wrote_float or not text.isdigit()
        values.append(int(number))
    if wrote_float:
        counters["float_one_hot"] += 1
    return values
