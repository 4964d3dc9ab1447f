"""Metadata readers for every real ISIC layout, as pure Python (no Beam, no TF).

    result = read_layout("/data/HAM10000")          # detects the layout
    result = read_layout(root, layout="isic2019", dx_labels=parse_dx_map("bkl:malignant"))

Every image file (`.jpg/.jpeg/.png`, any case, found recursively) and every metadata entry ends
as exactly one record or one rejection: `counters["inputs"] == len(records) + len(rejections)`.
Image bytes are never opened here; the Beam job decodes and hashes them.

Rejection reasons: see `REASONS` in beam_jobs.layouts.assemble. Counters (counted per metadata
entry read, even when that entry is later rejected or its image kept):
  inputs, image_files, metadata_entries        - the totals behind the invariant above
  mask_skipped, hidden_skipped, other_file_skipped, other_json_skipped, linked_folder_skipped
  csv_bom, empty_line, extra_index_column      - CSV clean-up
  id_with_extension, suffix_downsampled, suffix_gray
  empty_age, unknown_age, float_age, invalid_age, empty_sex, unknown_sex, invalid_sex
  unknown_label, float_one_hot, invalid_size, sidecar_name_mismatch, collection_from_folder,
  metadata_without_ground_truth
"""
from __future__ import annotations

import collections
import os
from typing import Mapping, Optional

from beam_jobs.layouts.assemble import REASONS, LayoutResult, assemble
from beam_jobs.layouts.common import Scan, scan_tree
from beam_jobs.layouts.labels import dx_table, parse_dx_map
from beam_jobs.layouts.tables import CSV_READERS, ISIC2019_METADATA, csv_kinds
from beam_jobs.layouts.trees import read_class_folders, read_legacy_json, sidecar_jsons

__all__ = ["LAYOUTS", "REASONS", "LayoutResult", "detect_layout", "read_layout", "parse_dx_map"]

LAYOUTS = ("legacy_json", "isic_cli", "ham10000", "isic2019", "isic2020", "isic2024", "isic2017",
           "class_folders")
_READERS = dict(CSV_READERS, legacy_json=read_legacy_json, class_folders=read_class_folders)


def _class_dirs(scan: Scan) -> list[str]:
    return sorted({os.path.relpath(p, scan.root).split(os.sep)[0] for p in scan.images
                   if os.sep in os.path.relpath(p, scan.root)})


def _describe(scan: Scan, kinds: dict[str, str]) -> str:
    at_top = sum(1 for p in scan.images if os.path.dirname(p) == scan.root)
    csvs = {os.path.basename(p): k or "unrecognised header" for p, k in kinds.items()}
    return (f"{len(scan.images)} image files ({at_top} directly under root), CSVs {csvs}, "
            f"{len(scan.json_files)} JSON files ({len(sidecar_jsons(scan))} named like images), "
            f"folders {scan.top_dirs}")


def _detect(scan: Scan) -> str:
    """Known CSV headers first, then JSON sidecars, then class folders."""
    kinds = csv_kinds(scan)
    found = sorted({"isic2019" if k == ISIC2019_METADATA else k for k in kinds.values() if k})
    if len(found) > 1:
        raise ValueError(f"ambiguous ISIC layout under {scan.root}: CSVs of {found} "
                         f"({ {os.path.basename(p): k for p, k in kinds.items() if k} }); "
                         "pass --layout")
    if found:
        return found[0]
    if sidecar_jsons(scan):
        return "legacy_json"
    if _class_dirs(scan):
        return "class_folders"
    raise ValueError(f"no ISIC layout recognised under {scan.root}: found {_describe(scan, kinds)}")


def detect_layout(root: str) -> str:
    """Name of the layout of `root` (one of LAYOUTS); ValueError naming what was found otherwise."""
    return _detect(scan_tree(root))


def read_layout(root: str, layout: Optional[str] = None,
                dx_labels: Optional[Mapping[str, str]] = None) -> LayoutResult:
    """Read the metadata of `root` in `layout` (detected when None) into records and rejections.

    `dx_labels` is laid over DEFAULT_DX_LABELS (e.g. the result of parse_dx_map).
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    scan = scan_tree(root)
    layout = layout or _detect(scan)
    counters = collections.Counter(scan.counters)
    entries = _READERS[layout](scan, dx_table(dx_labels), counters)
    return assemble(layout, scan, entries, counters)
