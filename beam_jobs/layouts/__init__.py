"""Metadata readers for every real ISIC layout, as pure Python (no Beam, no TF).

    result = read_layout("/data/HAM10000")          # detects the layout
    result = read_layout(root, layout="isic2019", dx_labels=parse_dx_map("bkl:malignant"))

Every image file (`.jpg/.jpeg/.png`, any case, found recursively) and every metadata entry ends
as exactly one record or one rejection: `counters["inputs"] == len(records) + len(rejections)`.
Image bytes are never opened here; the Beam job decodes and hashes them.

Rejection reasons: `REASONS` (beam_jobs.layouts.assemble). Counters: `COUNTERS` below; they are
counted per metadata entry read, even when that entry is later rejected or its image kept.
"""
from __future__ import annotations

import collections
import os
from typing import Mapping, Optional

from beam_jobs.layouts.assemble import REASONS, LayoutResult, assemble
from beam_jobs.layouts.common import Scan, scan_tree
from beam_jobs.layouts.labels import dx_table, parse_dx_map
from beam_jobs.layouts.onehot import read_isic2017, read_isic2019
from beam_jobs.layouts.tables import CSV_READERS, ISIC2017_METADATA, ISIC2019_METADATA, csv_kinds
from beam_jobs.layouts.trees import read_class_folders, read_legacy_json, sidecar_jsons

__all__ = ["LAYOUTS", "REASONS", "COUNTERS", "LayoutResult", "detect_layout", "read_layout",
           "parse_dx_map"]

LAYOUTS = ("legacy_json", "isic_cli", "ham10000", "isic2019", "isic2020", "isic2024", "isic2017",
           "class_folders")
COUNTERS = {
    "inputs": "image files + metadata entries that found no image file (= records + rejections)",
    "image_files": "dataset image files found (.jpg/.jpeg/.png, any case, masks excluded)",
    "metadata_entries": "CSV rows / JSON sidecars read (a 2019/2017 side row merged into its "
                        "ground-truth row is not counted again)",
    "mask_skipped": "*_segmentation / *_mask / *_superpixels images skipped",
    "hidden_skipped": "hidden files and folders (e.g. macOS '._' files) skipped",
    "other_file_skipped": "files that are neither images, JSON nor CSV (ATTRIBUTION.txt ...)",
    "other_json_skipped": "JSON files that are no image's sidecar",
    "linked_folder_skipped": "folders reached a second time through a link",
    "csv_bom": "CSVs starting with a UTF-8 byte-order mark",
    "empty_line": "blank CSV lines skipped",
    "extra_index_column": "unnamed index columns ('' or 'Unnamed: N') dropped",
    "id_with_extension": "ids written with .jpg/.jpeg/.png",
    "suffix_downsampled": "ids or file names ending in _downsampled",
    "suffix_gray": "ids or file names ending in _gray",
    "empty_age": "age cell empty or null", "unknown_age": "age written 'unknown' (or NaN)",
    "float_age": "age written as a float string ('55.0')",
    "invalid_age": "age not a number in 0..130 (kept as None)",
    "empty_sex": "sex empty or null", "unknown_sex": "sex written 'unknown'",
    "invalid_sex": "sex other than male/female/unknown (kept as '')",
    "unknown_label": "entries whose label is unknown: null, 'indeterminate', dx code unk or not "
                     "in the table, no target, unknown class folder",
    "float_one_hot": "rows whose 0/1 flags are written as floats ('1.0')",
    "invalid_size": "pixelsX/pixelsY (pixels_x/pixels_y) not a positive number",
    "sidecar_name_mismatch": "sidecar whose 'name' differs from its file name (file name wins)",
    "collection_from_folder": "legacy source collection taken from the parent folder's name",
    "metadata_without_ground_truth": "2019/2017 side-file rows with no ground-truth row "
                                     "(kept, label unknown)",
}
_READERS = dict(CSV_READERS, isic2019=read_isic2019, isic2017=read_isic2017,
                legacy_json=read_legacy_json, class_folders=read_class_folders)
_SIDE_FILE_OF = {ISIC2019_METADATA: "isic2019", ISIC2017_METADATA: "isic2017"}


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
    found = sorted({_SIDE_FILE_OF.get(k, k) for k in kinds.values() if k})
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
