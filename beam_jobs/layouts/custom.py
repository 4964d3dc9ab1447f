"""The escape hatch for any images-plus-table dataset that is no known ISIC layout:

    --metadata_csv=labels.csv --id_column=file --label_column=class
        [--malignant_values=1,melanoma,mel] [--benign_values=0,nevus,nv]
        [--patient_column=...] [--lesion_column=...] [--diagnosis_column=...]

Images are looked for anywhere under --input, named `<id>.jpg/.jpeg/.png`. A label cell in
`malignant_values` is malignant, one in `benign_values` benign (both compared lower-cased); an
empty, 'unknown' or 'indeterminate' cell is unknown; with no `benign_values` given, every other
value is benign, otherwise every other value is unknown (counted as unknown_label).
A fitzpatrick_skin_type column is read as that field, and every column no flag names (nor
age_approx/age/sex) is kept in the record's extra_metadata_json.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

from isicflow.metadata import BENIGN, MALIGNANT, UNKNOWN

from beam_jobs.layouts.assemble import Entry
from beam_jobs.layouts.common import MISSING_TEXT, Scan, clean_text, read_csv, read_csv_header
from beam_jobs.layouts.tables import age_of, rows_of, sex_of, subgroup_fields, text_of

LAYOUT = "metadata_csv"
DEFAULT_MALIGNANT_VALUES = ("1", "1.0", "malignant", "melanoma", "mel", "true", "yes")
_NO_LABEL = MISSING_TEXT | {"indeterminate"}


@dataclasses.dataclass(frozen=True)
class CustomTable:
    """What --metadata_csv and its column flags say."""

    path: str
    id_column: str
    label_column: str
    malignant_values: tuple[str, ...] = DEFAULT_MALIGNANT_VALUES
    benign_values: tuple[str, ...] = ()
    patient_column: str = ""
    lesion_column: str = ""
    diagnosis_column: str = ""

    def columns(self) -> dict[str, str]:
        """flag name -> column name, for the columns given."""
        named = {"--id_column": self.id_column, "--label_column": self.label_column,
                 "--patient_column": self.patient_column, "--lesion_column": self.lesion_column,
                 "--diagnosis_column": self.diagnosis_column}
        return {flag: column.strip().lower() for flag, column in named.items() if column}

    def check(self) -> list[str]:
        """Reads the header; ValueError naming the absent columns and those the file has."""
        header = read_csv_header(self.path)
        missing = {flag: column for flag, column in self.columns().items() if column not in header}
        if missing:
            given = ", ".join(f"{flag}={column}" for flag, column in missing.items())
            raise ValueError(f"{self.path}: no column {given}; the file has columns {header}")
        return header

    def label_of(self, cell, counters) -> str:
        value = clean_text(cell).lower()
        if value in {v.lower() for v in self.malignant_values}:
            return MALIGNANT
        if value and value not in _NO_LABEL and (
                not self.benign_values or value in {v.lower() for v in self.benign_values}):
            return BENIGN
        counters["unknown_label"] += 1
        return UNKNOWN


def read_custom(scan: Scan, table: CustomTable, dx: Mapping[str, str], counters) -> list[Entry]:
    cols = table.columns()
    data = read_csv(table.path, counters, set(cols.values()) | {"age_approx", "age", "sex"},
                    extras=True)
    scan.used[table.path] = LAYOUT
    entries = []
    for entry, row in rows_of(data, cols["--id_column"]):
        if row is not None:
            entry.fields = dict(
                label=table.label_of(row.get(cols["--label_column"]), counters),
                diagnosis=text_of(row, cols.get("--diagnosis_column", "")),
                patient_id=text_of(row, cols.get("--patient_column", "")),
                lesion_id=text_of(row, cols.get("--lesion_column", "")),
                age_approx=age_of(row, "age_approx", counters) if "age_approx" in row
                else age_of(row, "age", counters),
                sex=sex_of(row, counters), **subgroup_fields(row, counters))
        entries.append(entry)
    return entries
