"""Readers of the challenge ground truths written as 0/1 flags: ISIC 2019 (and 2018) and ISIC 2017.

Both come with an optional side file of age/sex per image, merged by id:
  2019: `ISIC_2019_Training_Metadata.csv` (`image,age_approx,anatom_site_general,lesion_id,sex`)
  2017: `ISIC-2017_Training_Data/ISIC-2017_Training_Data_metadata.csv` (`image_id,age_approximate,sex`)
"""
from __future__ import annotations

import collections
from typing import Callable, Mapping, Optional

from isicflow.metadata import BENIGN, MALIGNANT, UNKNOWN

from beam_jobs.layouts.assemble import INVALID_LABEL, MALFORMED_METADATA, Entry
from beam_jobs.layouts.common import CsvTable, Scan, split_id
from beam_jobs.layouts.labels import label_from_dx, label_from_text, parse_flags
from beam_jobs.layouts.tables import (ISIC2017_METADATA, ISIC2019_METADATA, ONE_HOT_ID, age_of,
                                      rows_of, sex_of, subgroup_fields, tables_of, text_of)

SideFields = Callable[[dict, collections.Counter], dict]


def _key(raw_id: str) -> str:
    return split_id(raw_id, collections.Counter())[0]


class SideRows:
    """The side file's rows by id: the first row of an id is merged, every other row stays an entry."""

    def __init__(self, tables: list[CsvTable], id_column: str, fields: SideFields):
        self.fields = fields
        self.by_id: dict[str, tuple[Entry, dict]] = {}
        self.spare: list[tuple[Entry, Optional[dict]]] = []
        for table in tables:
            for entry, row in rows_of(table, id_column):
                key = _key(entry.raw_id)
                if row is None or not key or key in self.by_id:
                    self.spare.append((entry, row))
                else:
                    self.by_id[key] = (entry, row)

    def merge_into(self, entry: Entry, counters) -> None:
        found = self.by_id.pop(_key(entry.raw_id), None)
        if found is not None:
            entry.fields.update(self.fields(found[1], counters))
            entry.where += f" (+ {found[0].describe()})"

    def leftover_entries(self, had_truth: bool, counters) -> list[Entry]:
        """Side rows no ground-truth row took: entries with label unknown (so nothing vanishes)."""
        entries = []
        for entry, row in list(self.by_id.values()) + self.spare:
            if row is not None:
                if had_truth:
                    counters["metadata_without_ground_truth"] += 1
                entry.fields = dict(label=label_from_text(None, counters),
                                    **self.fields(row, counters))
            entries.append(entry)
        return entries

    def __bool__(self) -> bool:
        return bool(self.by_id or self.spare)


def _side_2019(row: dict, counters) -> dict:
    return dict(age_approx=age_of(row, "age_approx", counters), sex=sex_of(row, counters),
                anatom_site=text_of(row, "anatom_site_general"), lesion_id=text_of(row, "lesion_id"),
                **subgroup_fields(row, counters))


def _side_2017(row: dict, counters) -> dict:
    return dict(age_approx=age_of(row, "age_approximate", counters), sex=sex_of(row, counters),
                **subgroup_fields(row, counters))


def read_isic2019(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """One-hot rows (label from the hot column via the dx table) merged with the metadata file.

    A row with zero or several ones is invalid_label. Metadata rows without a ground-truth row
    (e.g. the test set's metadata alone) become entries with label unknown.
    """
    side = SideRows(tables_of(scan, ISIC2019_METADATA, counters,
                              {ONE_HOT_ID, "age_approx", "sex", "anatom_site_general", "lesion_id"},
                              required=False), ONE_HOT_ID, _side_2019)
    truth = tables_of(scan, "isic2019", counters, None, required=not side)
    entries = []
    for table in truth:
        flag_columns = [c for c in table.columns  # the test file adds *_weight columns
                        if c != ONE_HOT_ID and not c.endswith("_weight")]
        for entry, row in rows_of(table, ONE_HOT_ID):
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
                side.merge_into(entry, counters)
            entries.append(entry)
    return entries + side.leftover_entries(bool(truth), counters)


def read_isic2017(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """melanoma=1 -> malignant 'melanoma'; seborrheic_keratosis=1 -> benign; neither -> benign 'nevus'.

    A ground truth holding only `image_id,melanoma` (a republished copy) reads too: 0 -> benign.

    The age/sex file sits inside the image folder in the published archive, so it is looked for
    anywhere under the root.
    """
    side = SideRows(tables_of(scan, ISIC2017_METADATA, counters,
                              {"image_id", "age_approximate", "sex"}, required=False,
                              anywhere=True), "image_id", _side_2017)
    truth = tables_of(scan, "isic2017", counters, {"image_id", "melanoma", "seborrheic_keratosis"},
                      required=not side)
    entries = []
    for table in truth:
        for entry, row in rows_of(table, "image_id"):
            if row is not None:
                # Republished copies often keep only the melanoma column: then a 0 is 'nevus
                # or seborrheic keratosis', benign either way (diagnosis left empty).
                has_sk = "seborrheic_keratosis" in table.columns
                sk = row.get("seborrheic_keratosis", "0")
                flags = parse_flags([row["melanoma"], sk], counters)
                label, diagnosis = UNKNOWN, ""
                if flags is None:
                    entry.problem = (MALFORMED_METADATA, "melanoma/seborrheic_keratosis not 0 or 1: "
                                     f"{row['melanoma']!r}, {sk!r}")
                elif flags == [1, 1]:
                    entry.problem = (INVALID_LABEL, "both melanoma and seborrheic_keratosis are 1")
                elif flags[0]:
                    label, diagnosis = MALIGNANT, "melanoma"
                else:
                    label = BENIGN
                    diagnosis = ("seborrheic_keratosis" if flags[1] else "nevus") if has_sk else ""
                entry.fields = dict(label=label, diagnosis=diagnosis)
                side.merge_into(entry, counters)
            entries.append(entry)
    return entries + side.leftover_entries(bool(truth), counters)
