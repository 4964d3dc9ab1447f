"""Readers of the CSV layouts: isic-cli export, HAM10000, ISIC 2020 and 2024 (2017/2019: onehot.py).

Each reader turns the CSV rows into Entries; `assemble` pairs them with image files found anywhere
under the root (so HAM10000's two part folders, 2020's `train/` or `jpeg/train/` all work).
"""
from __future__ import annotations

import collections
import re
from typing import Callable, Mapping, Optional

from isicflow.metadata import BENIGN, MALIGNANT

from beam_jobs.layouts.assemble import (CONFLICTING_LABELS, INVALID_LABEL, MALFORMED_METADATA,
                                        Entry)
from beam_jobs.layouts.common import (EXTRA_KEY, FITZPATRICK_COLUMN, CsvTable, Scan, _cell_rows,
                                      _open_text, clean_text, parse_age, parse_fitzpatrick,
                                      parse_sex, read_csv, require_columns)
from beam_jobs.layouts.labels import label_from_dx, label_from_text, parse_flags

ONE_HOT_ID = "image"
# The optional side files of isic2019 / isic2017 (age, sex): not layouts on their own.
ISIC2019_METADATA, ISIC2017_METADATA = "isic2019_metadata", "isic2017_metadata"
# The columns each reader uses; only these are held in memory per row.
ISIC_CLI_COLUMNS = {"isic_id", "attribution", "copyright_license", "benign_malignant", "diagnosis",
                    "diagnosis_1", "diagnosis_2", "diagnosis_3", "diagnosis_4", "diagnosis_5",
                    "patient_id", "lesion_id", "age_approx", "sex", "anatom_site_general",
                    "image_type", "pixels_x", "pixels_y"}
HAM_COLUMNS = {"lesion_id", "image_id", "dx", "age", "sex", "localization", "dataset"}
ISIC2020_COLUMNS = {"image_name", "patient_id", "lesion_id", "sex", "age_approx", "diagnosis",
                    "anatom_site_general_challenge", "anatom_site_general", "benign_malignant",
                    "target"}
ISIC2024_COLUMNS = {"isic_id", "target", "patient_id", "lesion_id", "age_approx", "sex",
                    "anatom_site_general", "image_type", "attribution", "copyright_license",
                    "iddx_2", "iddx_3", "iddx_4", "iddx_5"}
# The columns a table's label comes from, per kind: a table that is recognised by its other
# columns but has none of these yields no label at all (Scan.unlabelled records it).
LABEL_COLUMNS = {"isic_cli": ("benign_malignant", "diagnosis_1"),
                 "isic2020": ("benign_malignant", "target"), "isic2024": ("target",)}


def classify_csv(columns: list[str]) -> str:
    """Which layout a CSV header (lower-cased) belongs to; '' when none."""
    have = set(columns)
    # ISIC 2017 Part 3, also republished copies that keep only the melanoma column.
    if {"image_id", "melanoma"} <= have and have <= {"image_id", "melanoma", "seborrheic_keratosis"}:
        return "isic2017"
    if is_isic2016_row(columns):
        return "isic2016"
    if {"image_id", "age_approximate"} <= have:
        return ISIC2017_METADATA
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


ISIC2016_VALUES = {"benign", "malignant", "0", "1", "0.0", "1.0"}


def is_isic2016_row(cells: list[str]) -> bool:
    """ISIC 2016 Part 3 has no header: its first line is already `ISIC_0000000,benign` (or 0.0)."""
    return (len(cells) == 2 and re.fullmatch(r"isic_\d+(\.jpe?g)?", cells[0].strip().lower()) is not None
            and cells[1].strip().lower() in ISIC2016_VALUES)


def csv_kinds(scan: Scan, anywhere: bool = False) -> dict[str, str]:
    """Each top-level CSV (every CSV if `anywhere`) -> the layout its header belongs to, or ''."""
    paths = scan.csv_files if anywhere else scan.top_csv_files
    return {path: classify_csv(scan.csv_header(path)) for path in paths}


def tables_of(scan: Scan, kind: str, counters: collections.Counter, keep: Optional[set],
              required: bool = True, anywhere: bool = False) -> list[CsvTable]:
    """The CSVs whose header is of `kind`, read; if required and none, ValueError naming the CSVs.

    Columns beyond `keep` come with each row as its extras (subgroup_fields)."""
    kinds = csv_kinds(scan, anywhere)
    paths = [p for p, k in kinds.items() if k == kind]
    if required and not paths:
        raise ValueError(f"no {kind} metadata CSV directly under {scan.root}; CSVs there: "
                         f"{ {p: k or 'unrecognised' for p, k in kinds.items()} }")
    scan.used.update((p, kind) for p in paths)
    return [read_csv(p, counters, keep, extras=True) for p in paths]


def subgroup_fields(row: dict, counters) -> dict:
    """The LesionRecord fields a table row gives whatever its layout: fitzpatrick_skin_type from
    a column of that name, extra_metadata from the columns the layout does not read (only the
    fields that have a value, so a table without them gives the records it gave before)."""
    fields = {}
    if FITZPATRICK_COLUMN in row:
        skin = parse_fitzpatrick(row[FITZPATRICK_COLUMN], counters)
        if skin:
            fields["fitzpatrick_skin_type"] = skin
    if row.get(EXTRA_KEY):
        fields["extra_metadata"] = row[EXTRA_KEY]
    return fields


def age_of(row: dict, column: str, counters) -> Optional[float]:
    return parse_age(row[column], counters) if column in row else None


def sex_of(row: dict, counters) -> str:
    return parse_sex(row["sex"], counters) if "sex" in row else ""


def text_of(row: dict, *columns: str) -> str:
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


def rows_of(table: CsvTable, id_column: str):
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


def _read_rows(scan: Scan, kind: str, counters, columns, id_column: str,
               fill: Callable[[Entry, dict], None]) -> list[Entry]:
    """One Entry per row of every `kind` table in the scan; fill(entry, row) sets a well-formed
    row's fields or problem (malformed rows come back from rows_of already finished)."""
    entries = []
    for table in tables_of(scan, kind, counters, columns):
        label_columns = LABEL_COLUMNS.get(kind, ())
        if label_columns and not set(label_columns) & set(table.columns):
            scan.unlabelled[table.path] = label_columns
        for entry, row in rows_of(table, id_column):
            if row is not None:
                fill(entry, row)
                entry.fields.update(subgroup_fields(row, counters))
            entries.append(entry)
    return entries


def _person_fields(row: dict, counters, *site_columns: str) -> dict:
    """Patient, lesion, age, sex and site, as the archive-derived tables name them."""
    return dict(patient_id=text_of(row, "patient_id"), lesion_id=text_of(row, "lesion_id"),
                age_approx=age_of(row, "age_approx", counters), sex=sex_of(row, counters),
                anatom_site=text_of(row, *site_columns, "anatom_site_general"))


def _archive_fields(row: dict, counters) -> dict:
    """_person_fields plus the archive export's image type, attribution and license."""
    return dict(_person_fields(row, counters), image_type=text_of(row, "image_type"),
                attribution=text_of(row, "attribution"), license=text_of(row, "copyright_license"))


def read_isic_cli(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    def fill(entry: Entry, row: dict) -> None:
        label_cell = row.get("benign_malignant", row.get("diagnosis_1"))
        entry.fields = dict(
            label=label_from_text(label_cell, counters),
            diagnosis=text_of(row, "diagnosis", "diagnosis_5", "diagnosis_4", "diagnosis_3",
                            "diagnosis_2"),
            **_archive_fields(row, counters),
            original_width=_int(row, "pixels_x", counters),
            original_height=_int(row, "pixels_y", counters))

    return _read_rows(scan, "isic_cli", counters, ISIC_CLI_COLUMNS, "isic_id", fill)


def read_ham10000(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    def fill(entry: Entry, row: dict) -> None:
        code = clean_text(row["dx"]).lower()
        entry.fields = dict(
            label=label_from_dx(code, dx, counters), diagnosis=code,
            lesion_id=text_of(row, "lesion_id"), age_approx=age_of(row, "age", counters),
            sex=sex_of(row, counters), anatom_site=text_of(row, "localization"),
            source_collection=text_of(row, "dataset"))

    return _read_rows(scan, "ham10000", counters, HAM_COLUMNS, "image_id", fill)


def read_isic2020(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """Label from benign_malignant, else target; the two disagreeing is conflicting_labels."""
    def fill(entry: Entry, row: dict) -> None:
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
            label=label, diagnosis=text_of(row, "diagnosis"),
            **_person_fields(row, counters, "anatom_site_general_challenge"))

    return _read_rows(scan, "isic2020", counters, ISIC2020_COLUMNS, "image_name", fill)


def read_isic2024(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """SLICE-3D: label from `target` when the file has it (training file), else unknown."""
    def fill(entry: Entry, row: dict) -> None:
        label, problem = _target_label(row.get("target", ""), counters)
        if problem:
            entry.problem = (INVALID_LABEL, problem)
        if not label:
            label = label_from_text(None, counters)
        entry.fields = dict(
            label=label, diagnosis=text_of(row, "iddx_5", "iddx_4", "iddx_3", "iddx_2"),
            **_archive_fields(row, counters))

    return _read_rows(scan, "isic2024", counters, ISIC2024_COLUMNS, "isic_id", fill)


def read_isic2016(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """ISBI 2016 Part 3: no header line, `ISIC_0000000,benign` (training) or `,0.0` (test)."""
    kinds = csv_kinds(scan)
    paths = [p for p, k in kinds.items() if k == "isic2016"]
    if not paths:
        raise ValueError(f"no isic2016 ground-truth CSV (no header, lines 'ISIC_0000000,benign') "
                         f"directly under {scan.root}; CSVs there: "
                         f"{ {p: k or 'unrecognised' for p, k in kinds.items()} }")
    entries = []
    for path in paths:
        scan.used[path] = "isic2016"
        handle, bom = _open_text(path)
        if bom:
            counters["csv_bom"] += 1
        with handle:
            for line, cells in _cell_rows(path, handle):
                if not any(cell.strip() for cell in cells):
                    counters["empty_line"] += 1
                    continue
                entry = Entry(raw_id=cells[0], source=path, where=f"line {line}")
                value = cells[1].strip().lower() if len(cells) == 2 else ""
                if len(cells) != 2:
                    entry.problem = (MALFORMED_METADATA, f"{len(cells)} cells where 2 are expected")
                elif value not in ISIC2016_VALUES:
                    entry.problem = (INVALID_LABEL, f"{cells[1]!r} is not benign/malignant/0/1")
                    entry.fields = dict(label=label_from_text(None, counters))
                else:
                    malignant = value in ("malignant", "1", "1.0")
                    entry.fields = dict(label=MALIGNANT if malignant else BENIGN)
                entries.append(entry)
    return entries


CSV_READERS = {"isic2016": read_isic2016, "isic_cli": read_isic_cli, "ham10000": read_ham10000, "isic2020": read_isic2020,
               "isic2024": read_isic2024}
