"""Readers of the CSV layouts: isic-cli export, HAM10000, ISIC 2017, 2019, 2020 and 2024.

Each reader turns the CSV rows into Entries; `assemble` pairs them with image files found anywhere
under the root (so HAM10000's two part folders, 2020's `train/` or `jpeg/train/` all work).
"""
from __future__ import annotations

import collections
from typing import Mapping, Optional

from isicflow.metadata import BENIGN, MALIGNANT, UNKNOWN

from beam_jobs.layouts.assemble import (CONFLICTING_LABELS, INVALID_LABEL, MALFORMED_METADATA,
                                        Entry)
from beam_jobs.layouts.common import (CsvTable, Scan, clean_text, parse_age, parse_sex,
                                      read_csv, read_csv_header, require_columns, split_id)
from beam_jobs.layouts.labels import label_from_dx, label_from_text, parse_flags

ONE_HOT_ID = "image"
ISIC2019_METADATA = "isic2019_metadata"  # the optional side file of isic2019, not a layout alone
# The columns each reader uses; only these are held in memory per row.
ISIC_CLI_COLUMNS = {"isic_id", "attribution", "copyright_license", "benign_malignant", "diagnosis",
                    "diagnosis_1", "diagnosis_2", "diagnosis_3", "diagnosis_4", "diagnosis_5",
                    "patient_id", "lesion_id", "age_approx", "sex", "anatom_site_general",
                    "image_type", "pixels_x", "pixels_y"}
HAM_COLUMNS = {"lesion_id", "image_id", "dx", "age", "sex", "localization", "dataset"}
ISIC2019_SIDE_COLUMNS = {ONE_HOT_ID, "age_approx", "sex", "anatom_site_general", "lesion_id"}
ISIC2020_COLUMNS = {"image_name", "patient_id", "lesion_id", "sex", "age_approx", "diagnosis",
                    "anatom_site_general_challenge", "anatom_site_general", "benign_malignant",
                    "target"}
ISIC2024_COLUMNS = {"isic_id", "target", "patient_id", "lesion_id", "age_approx", "sex",
                    "anatom_site_general", "image_type", "attribution", "copyright_license",
                    "iddx_2", "iddx_3", "iddx_4", "iddx_5"}


def classify_csv(columns: list[str]) -> str:
    """Which layout a CSV header (lower-cased) belongs to; '' when none."""
    have = set(columns)
    if {"image_id", "melanoma", "seborrheic_keratosis"} <= have:
        return "isic2017"
    if {"lesion_id", "image_id", "dx"} <= have:
        return "ham10000"
    if ONE_HOT_ID in have and {"mel", "nv"} <= have:  # also ISIC 2018 task 3 (HAM10000 one-hot)
        return "isic2019"
    if ONE_HOT_ID in have and have & {"age_approx", "sex", "anatom_site_general", "lesion_id"}:
        return ISIC2019_METADATA
    # patient_id keeps Kaggle's sample_submission.csv (image_name/isic_id, target = 0) out.
    if {"image_name", "patient_id"} <= have:
        return "isic2020"
    if columns[:3] == ["isic_id", "attribution", "copyright_license"]:
        return "isic_cli"
    if {"isic_id", "patient_id"} <= have:
        return "isic2024"
    return ""


def csv_kinds(scan: Scan) -> dict[str, str]:
    """Each top-level CSV -> the layout its header belongs to ('' when unknown)."""
    return {path: classify_csv(read_csv_header(path)) for path in scan.top_csv_files}


def _tables(scan: Scan, kind: str, counters: collections.Counter, keep: Optional[set],
            required: bool = True) -> list[CsvTable]:
    kinds = csv_kinds(scan)
    paths = [p for p, k in kinds.items() if k == kind]
    if required and not paths:
        raise ValueError(f"no {kind} metadata CSV directly under {scan.root}; CSVs there: "
                         f"{ {p: k or 'unrecognised' for p, k in kinds.items()} }")
    return [read_csv(p, counters, keep) for p in paths]


def _age(row: dict, column: str, counters) -> Optional[float]:
    return parse_age(row[column], counters) if column in row else None


def _sex(row: dict, counters) -> str:
    return parse_sex(row["sex"], counters) if "sex" in row else ""


def _text(row: dict, *columns: str) -> str:
    """The first of `columns` present with a value."""
    for column in columns:
        value = clean_text(row.get(column))
        if value:
            return value
    return ""


def _int(row: dict, column: str, counters) -> Optional[int]:
    text = (row.get(column) or "").strip()
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        counters["invalid_size"] += 1
        return None


def _rows(table: CsvTable, id_column: str):
    """(entry shell, row) per row; malformed rows come back as finished entries with row None."""
    require_columns(table, [id_column])
    for line, row, problem in table.rows:
        entry = Entry(raw_id=row.get(id_column, ""), source=table.path, where=f"line {line}")
        if problem:
            entry.problem = (MALFORMED_METADATA, problem)
            yield entry, None
        else:
            yield entry, row


def _target_label(text: str, counters) -> tuple[str, str]:
    """(label or '', problem) from a 0/1 target cell; '' target -> ('', '')."""
    if not (text or "").strip():
        return "", ""
    flags = parse_flags([text], counters)
    if flags is None:
        return "", f"target {text!r} is not 0 or 1"
    return (MALIGNANT if flags[0] else BENIGN), ""


def read_isic_cli(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    entries = []
    for table in _tables(scan, "isic_cli", counters, ISIC_CLI_COLUMNS):
        for entry, row in _rows(table, "isic_id"):
            if row is not None:
                label_cell = row.get("benign_malignant", row.get("diagnosis_1"))
                entry.fields = dict(
                    label=label_from_text(label_cell, counters),
                    diagnosis=_text(row, "diagnosis", "diagnosis_5", "diagnosis_4", "diagnosis_3",
                                    "diagnosis_2"),
                    patient_id=_text(row, "patient_id"), lesion_id=_text(row, "lesion_id"),
                    age_approx=_age(row, "age_approx", counters), sex=_sex(row, counters),
                    anatom_site=_text(row, "anatom_site_general"), image_type=_text(row, "image_type"),
                    attribution=_text(row, "attribution"), license=_text(row, "copyright_license"),
                    original_width=_int(row, "pixels_x", counters),
                    original_height=_int(row, "pixels_y", counters))
            entries.append(entry)
    return entries


def read_ham10000(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    entries = []
    for table in _tables(scan, "ham10000", counters, HAM_COLUMNS):
        for entry, row in _rows(table, "image_id"):
            if row is not None:
                code = clean_text(row["dx"]).lower()
                entry.fields = dict(
                    label=label_from_dx(code, dx, counters), diagnosis=code,
                    lesion_id=_text(row, "lesion_id"), age_approx=_age(row, "age", counters),
                    sex=_sex(row, counters), anatom_site=_text(row, "localization"),
                    source_collection=_text(row, "dataset"))
            entries.append(entry)
    return entries


def read_isic2019(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """Ground-truth rows merged with the first metadata row of the same id.

    Metadata rows with no ground-truth row (e.g. the test set's metadata alone) become entries
    with label unknown (`metadata_without_ground_truth`); repeated metadata rows are entries too,
    so they end as duplicate_id rejections rather than vanish.
    """
    side_rows: dict[str, tuple[Entry, dict]] = {}
    spare: list[tuple[Entry, Optional[dict]]] = []
    for table in _tables(scan, ISIC2019_METADATA, counters, ISIC2019_SIDE_COLUMNS, required=False):
        for entry, row in _rows(table, ONE_HOT_ID):
            key = split_id(entry.raw_id, collections.Counter())[0]
            if row is None or not key or key in side_rows:
                spare.append((entry, row))
            else:
                side_rows[key] = (entry, row)
    truth_tables = _tables(scan, "isic2019", counters, None, required=not side_rows and not spare)
    entries = []
    for table in truth_tables:
        flag_columns = [c for c in table.columns  # the test file adds *_weight columns
                        if c != ONE_HOT_ID and not c.endswith("_weight")]
        for entry, row in _rows(table, ONE_HOT_ID):
            if row is not None:
                flags = parse_flags([row[c] for c in flag_columns], counters)
                label, diagnosis = UNKNOWN, ""
                if flags is None:
                    entry.problem = (MALFORMED_METADATA, "one-hot cells not all 0 or 1: "
                                     f"{[row[c] for c in flag_columns]}")
                elif sum(flags) != 1:
                    hot = [c.upper() for c, f in zip(flag_columns, flags) if f]
                    entry.problem = (INVALID_LABEL, f"one-hot row has {sum(flags)} ones {hot}")
                else:
                    diagnosis = flag_columns[flags.index(1)]
                    label = label_from_dx(diagnosis, dx, counters)
                entry.fields = dict(label=label, diagnosis=diagnosis)
                side = side_rows.pop(split_id(entry.raw_id, collections.Counter())[0], None)
                if side is not None:
                    entry.fields.update(_isic2019_side_fields(side[1], counters))
                    entry.where += f" (+ {side[0].describe()})"
            entries.append(entry)
    for entry, row in list(side_rows.values()) + spare:
        if row is not None:
            if truth_tables:
                counters["metadata_without_ground_truth"] += 1
            entry.fields = dict(label=label_from_text(None, counters),
                                **_isic2019_side_fields(row, counters))
        entries.append(entry)
    return entries


def _isic2019_side_fields(row: dict, counters) -> dict:
    return dict(age_approx=_age(row, "age_approx", counters), sex=_sex(row, counters),
                anatom_site=_text(row, "anatom_site_general"), lesion_id=_text(row, "lesion_id"))


def read_isic2020(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """Label from benign_malignant, else target; the two disagreeing is a conflicting_labels rejection."""
    entries = []
    for table in _tables(scan, "isic2020", counters, ISIC2020_COLUMNS):
        for entry, row in _rows(table, "image_name"):
            if row is not None:
                from_target, problem = _target_label(row.get("target", ""), counters)
                text = clean_text(row.get("benign_malignant")).lower()
                from_text = text if text in (BENIGN, MALIGNANT) else ""
                if problem:
                    entry.problem = (INVALID_LABEL, problem)
                elif from_text and from_target and from_text != from_target:
                    entry.problem = (CONFLICTING_LABELS, f"benign_malignant {text!r} but target "
                                                         f"{row['target'].strip()!r}")
                label = from_text or from_target
                if not label:
                    label = label_from_text(None, counters)
                entry.fields = dict(
                    label=label, diagnosis=_text(row, "diagnosis"),
                    patient_id=_text(row, "patient_id"), lesion_id=_text(row, "lesion_id"),
                    age_approx=_age(row, "age_approx", counters), sex=_sex(row, counters),
                    anatom_site=_text(row, "anatom_site_general_challenge", "anatom_site_general"))
            entries.append(entry)
    return entries


def read_isic2024(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """SLICE-3D: label from `target` when the file has it (training file), else unknown."""
    entries = []
    for table in _tables(scan, "isic2024", counters, ISIC2024_COLUMNS):
        for entry, row in _rows(table, "isic_id"):
            if row is not None:
                label, problem = _target_label(row.get("target", ""), counters)
                if problem:
                    entry.problem = (INVALID_LABEL, problem)
                if not label:
                    label = label_from_text(None, counters)
                entry.fields = dict(
                    label=label, diagnosis=_text(row, "iddx_5", "iddx_4", "iddx_3", "iddx_2"),
                    patient_id=_text(row, "patient_id"), lesion_id=_text(row, "lesion_id"),
                    age_approx=_age(row, "age_approx", counters), sex=_sex(row, counters),
                    anatom_site=_text(row, "anatom_site_general"), image_type=_text(row, "image_type"),
                    attribution=_text(row, "attribution"), license=_text(row, "copyright_license"))
            entries.append(entry)
    return entries


def read_isic2017(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """melanoma=1 -> malignant 'melanoma'; seborrheic_keratosis=1 -> benign; neither -> benign 'nevus'."""
    entries = []
    for table in _tables(scan, "isic2017", counters, {"image_id", "melanoma", "seborrheic_keratosis"}):
        for entry, row in _rows(table, "image_id"):
            if row is not None:
                flags = parse_flags([row["melanoma"], row["seborrheic_keratosis"]], counters)
                label, diagnosis = UNKNOWN, ""
                if flags is None:
                    entry.problem = (MALFORMED_METADATA, "melanoma/seborrheic_keratosis not 0 or 1: "
                                     f"{row['melanoma']!r}, {row['seborrheic_keratosis']!r}")
                elif flags == [1, 1]:
                    entry.problem = (INVALID_LABEL, "both melanoma and seborrheic_keratosis are 1")
                elif flags[0]:
                    label, diagnosis = MALIGNANT, "melanoma"
                else:
                    label = BENIGN
                    diagnosis = "seborrheic_keratosis" if flags[1] else "nevus"
                entry.fields = dict(label=label, diagnosis=diagnosis)
            entries.append(entry)
    return entries


CSV_READERS = {
    "isic_cli": read_isic_cli, "ham10000": read_ham10000, "isic2019": read_isic2019,
    "isic2020": read_isic2020, "isic2024": read_isic2024, "isic2017": read_isic2017,
}
