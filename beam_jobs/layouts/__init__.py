"""Metadata readers for every real ISIC layout, as pure Python (no Beam, no TF).

    result = read_layout("/data/HAM10000")          # detects the layout
    result = read_layout(root, layout="isic2019", dx_labels=parse_dx_map("bkl:malignant"))

Every image file (`.jpg/.jpeg/.png`, any case, found recursively) and every metadata entry ends
as exactly one record or one rejection: `counters["inputs"] == len(records) + len(rejections)`.
Image bytes are never opened here; the Beam job decodes and hashes them.

A root without a metadata table of its own but with folders that each hold one (several
`isic-cli` downloads, a HAM10000 folder, ...) reads as the union of those downloads (layout
DOWNLOADS); each record's `download` names its folder, and is its source_collection where
none of its download's metadata names one (sources_from_downloads). `--metadata_csv`
(CustomTable) reads any images-plus-table dataset. `LayoutResult.metadata_files` says what
became of every CSV/JSON, and names the label columns a table read as a layout lacks entirely
("label_columns_missing").

Every table layout (and --metadata_csv) reads a `fitzpatrick_skin_type` column into that record
field, and keeps each column it does not read otherwise (plus attribution and copyright_license,
which no record field holds) in the record's extra_metadata_json; legacy JSON sidecars give
meta.clinical.fitzpatrick_skin_type and, as the one extra, meta.clinical.diagnosis_confirm_type.

Rejection reasons: `REASONS` (beam_jobs.layouts.assemble). Counters: `COUNTERS` below; they are
counted per metadata entry read, even when that entry is later rejected or its image kept.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from typing import Mapping, Optional

from isicflow import fileio
from isicflow.metadata import UNKNOWN, LesionRecord, Rejection

from beam_jobs.layouts.assemble import (CONFLICTING_LABELS, DUPLICATE_CONTENT, DUPLICATE_ID,
                                        MISSING_METADATA, REASONS, LayoutResult, assemble)
from beam_jobs.layouts.common import Scan, image_stem, scan_tree, strip_suffixes
from beam_jobs.layouts.custom import LAYOUT as CUSTOM_LAYOUT, CustomTable, read_custom
from beam_jobs.layouts.labels import dx_table, parse_dx_map
from beam_jobs.layouts.onehot import read_isic2017, read_isic2019
from beam_jobs.layouts.tables import (CSV_READERS, ISIC2017_METADATA, ISIC2019_METADATA,
                                      classify_csv, csv_kinds)
from beam_jobs.layouts.trees import read_class_folders, read_legacy_json, sidecar_jsons

__all__ = ["LAYOUTS", "DOWNLOADS", "REASONS", "COUNTERS", "LayoutResult", "CustomTable",
           "detect_layout", "read_layout", "parse_dx_map"]

LAYOUTS = ("legacy_json", "isic_cli", "ham10000", "isic2019", "isic2020", "isic2024", "isic2017",
           "isic2016", "class_folders")
# A root holding several downloads (each a folder with its own metadata table) reads as this.
DOWNLOADS = "downloads"
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
    "invalid_fitzpatrick_skin_type": "fitzpatrick_skin_type neither I..VI nor 1..6 (written '')",
    "extra_value_too_long": "cells of a table's other columns over 1 KiB, left out of the "
                            "record's extra_metadata_json",
    "sidecar_name_mismatch": "sidecar whose 'name' differs from its file name (file name wins)",
    "collection_from_folder": "legacy source collection taken from the parent folder's name",
    "source_from_download": "records of a several-download root given their download folder's "
                            "name as source collection (no record of that download names one)",
    "metadata_without_ground_truth": "2019/2017 side-file rows with no ground-truth row "
                                     "(kept, label unknown)",
    "outside_downloads": "image files of a several-download root in no download's folder",
}
_READERS = dict(CSV_READERS, isic2019=read_isic2019, isic2017=read_isic2017,
                legacy_json=read_legacy_json, class_folders=read_class_folders)
_SIDE_FILE_OF = {ISIC2019_METADATA: "isic2019", ISIC2017_METADATA: "isic2017"}


def _class_dirs(scan: Scan) -> list[str]:
    return sorted({os.path.relpath(p, scan.root).split(os.sep)[0] for p in scan.images
                   if os.sep in os.path.relpath(p, scan.root)})


def _describe(scan: Scan, kinds: dict[str, str]) -> str:
    at_top = sum(1 for p in scan.images if os.path.dirname(p) == scan.root)
    csvs = {os.path.basename(p): k or f"unrecognised header {','.join(scan.csv_header(p))}"
            for p, k in kinds.items()}
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
    hint = ("; for another images-plus-table dataset pass --metadata_csv=PATH --id_column=NAME "
            "--label_column=NAME" if any(not k for k in kinds.values()) else "")
    raise ValueError(f"no ISIC layout recognised under {scan.root}: found "
                     f"{_describe(scan, kinds)}{hint}")


def _rel(path: str, root: str) -> str:
    """path relative to root, '/'-separated ('.' for root itself); works for URLs too."""
    if path == root:
        return "."
    return path[len(root):].lstrip("/\\").replace(os.sep, "/") if path.startswith(root) else path


def download_folders(scan: Scan) -> list[str]:
    """Folders below root each holding its own recognised metadata table, when root holds none.

    [] when root itself has a recognised CSV (a single download, read as before) or no folder
    below it has one. Only the shallowest such folders count: a table deeper inside a download
    (the ISIC 2017 age/sex file in the image folder) belongs to that download. Beside such
    folders, a top folder holding legacy JSON sidecars (a gallery download) is one as well.
    """
    if any(csv_kinds(scan).values()):
        return []
    folders = sorted({os.path.dirname(p) for p, k in csv_kinds(scan, anywhere=True).items() if k})
    if folders:  # beside table downloads, a top folder of legacy sidecars is a download too
        sidecars = sidecar_jsons(scan)
        folders += [top for top in (fileio.join_path(scan.root, d) for d in scan.top_dirs)
                    if not any(f == top or _inside(f, top) or _inside(top, f) for f in folders)
                    and any(_inside(p, top) for p in sidecars)]
    return sorted(f for f in folders if not any(_inside(f, o) for o in folders if o != f))


def _inside(path: str, folder: str) -> bool:
    """path is below folder (local separators or URL slashes)."""
    return (path.startswith(folder.rstrip("/\\") + os.sep) or
            path.startswith(folder.rstrip("/") + "/"))


def detect_layout(root: str) -> str:
    """Name of the layout of `root` (one of LAYOUTS, or DOWNLOADS when it holds several
    downloads); ValueError naming what was found otherwise."""
    scan = scan_tree(root)
    return DOWNLOADS if download_folders(scan) else _detect(scan)


def sources_from_downloads(records: list[LesionRecord]) -> tuple[list[LesionRecord], int]:
    """The merged records of a several-download root, each download that names no source
    collection for any of its records given its folder as one; (records, records filled).

    Legacy JSON without a `dataset`, an isic-cli export and full-res archive images name no
    acquisition source, so a root of several downloads was evaluated as one '(missing)' source,
    and the trainer's --source_balance / --source_adversary_weight refuse records without one;
    the folder a user keeps a download in is the best source they have. A download that names a
    source for some of its records (HAM10000's `dataset` column with an empty cell) is left as it
    is: its unnamed records stay unnamed, and are refused by name, rather than become a made-up
    source of a few images beside its real ones. Runs after the merge, so dropped copies of an
    id are not counted.
    """
    named = {r.download for r in records if r.source_collection}
    filled = [r if r.download in named else dataclasses.replace(r, source_collection=r.download)
              for r in records]
    return filled, sum(1 for r in records if r.download not in named)


def _read_one(scan: Scan, layout: str, dx: dict, custom: Optional[CustomTable] = None,
              download: str = ".") -> LayoutResult:
    counters = collections.Counter(scan.counters)
    if custom is not None:
        entries = read_custom(scan, custom, dx, counters)
    else:
        entries = _READERS[layout](scan, dx, counters)
    result = assemble(layout, scan, entries, counters)
    result.records = [dataclasses.replace(r, download=download) for r in result.records]
    result.downloads = {download: {"layout": layout, "records": len(result.records),
                                   "rejections": len(result.rejections)}}
    return result


def _sha256(path: str) -> str:
    return hashlib.sha256(fileio.read_bytes(path)).hexdigest()


def _union(scan: Scan, folders: list[str], dx: dict) -> tuple[LayoutResult, list[Scan]]:
    """Each download read on its own, in sorted folder order, then merged by id.

    The same id in several downloads: known labels differ -> every copy is rejected
    (conflicting_labels); otherwise the first download's copy with a known label (else the first)
    is kept, and each other copy is a duplicate (duplicate_content) when its bytes are the same,
    a rejection (duplicate_id) when they differ. Images in no download's folder are missing_metadata.
    """
    counters: collections.Counter = collections.Counter()
    outside_scan = collections.Counter(scan.counters)
    parts, scans = [], []
    for folder in folders:
        sub = scan_tree(folder)
        rel = _rel(sub.root, scan.root)
        try:
            layout = _detect(sub)
        except ValueError as error:
            raise ValueError(f"download {rel}/: {error}") from error
        part = _read_one(sub, layout, dx, download=rel)
        outside_scan.subtract(sub.counters)
        counters.update(part.counters)
        parts.append((rel, layout, part))
        scans.append(sub)
    counters.update({k: v for k, v in outside_scan.items() if v > 0})
    rejections: list[Rejection] = []
    by_id: dict[str, list] = collections.defaultdict(list)
    for rel, layout, part in parts:
        rejections.extend(part.rejections)
        for record in part.records:
            by_id[record.image_id].append(record)
    records = []
    for image_id, copies in by_id.items():
        if len(copies) == 1:
            records.append(copies[0])
            continue
        where = ", ".join(f"{c.download}/ ({c.label})" for c in copies)
        # A copy with a label beats one without (e.g. a test-set download beside the training
        # one); the download order decides among the rest (sorted is stable).
        copies.sort(key=lambda c: c.label == UNKNOWN)
        if len({c.label for c in copies} - {UNKNOWN}) > 1:
            rejections.extend(Rejection(c.image_path, image_id, CONFLICTING_LABELS,
                                        f"id {image_id} has different labels in downloads {where}")
                              for c in copies)
            continue
        kept, kept_sha = copies[0], _sha256(copies[0].image_path)
        records.append(kept)
        for copy in copies[1:]:
            if _sha256(copy.image_path) == kept_sha:
                rejections.append(Rejection(copy.image_path, image_id, DUPLICATE_CONTENT,
                                            f"same id and bytes as {kept.image_path} "
                                            f"(download {kept.download}/)", kind="duplicate"))
            else:
                rejections.append(Rejection(copy.image_path, image_id, DUPLICATE_ID,
                                            f"id also in download {kept.download}/ (kept) with "
                                            "other bytes and the same label"))
    inside = tuple(f.rstrip("/") + "/" for f in folders) + tuple(
        f.rstrip(os.sep) + os.sep for f in folders)
    for path in scan.images:
        if not path.startswith(inside):
            counters["outside_downloads"] += 1
            counters["inputs"] += 1
            counters["image_files"] += 1
            rejections.append(Rejection(path, strip_suffixes(image_stem(path))[0], MISSING_METADATA,
                                        "image in no download's folder (downloads: "
                                        f"{[_rel(f, scan.root) for f in folders]})"))
    records, filled = sources_from_downloads(records)
    if filled:
        counters["source_from_download"] += filled
    records.sort(key=lambda r: r.image_id)
    rejections.sort(key=lambda r: (r.image_id, r.path, r.reason))
    downloads = {rel: dict(part.downloads[rel], records=sum(1 for r in records
                                                             if r.download == rel))
                 for rel, _, part in parts}
    result = LayoutResult(DOWNLOADS, records, rejections, dict(sorted(counters.items())))
    result.downloads = downloads
    return result, scans


def describe_metadata_files(scan: Scan, result: LayoutResult, scans: list[Scan]) -> list[dict]:
    """Every CSV under root and every JSON that is no sidecar read: what it was read as, or why not.

    Sidecar JSONs are summed up per folder (one entry with a count), not listed one by one.
    """
    used: dict = dict(scan.used)
    unlabelled: dict = dict(scan.unlabelled)
    for sub in scans:
        used.update(sub.used)
        unlabelled.update(sub.unlabelled)
    side_kinds = set(_SIDE_FILE_OF)
    out = []
    for path in sorted(set(used) - set(scan.csv_files)):  # a --metadata_csv outside the root
        out.append({"path": path, "role": "layout", "kind": used[path],
                    "header": scan.csv_header(path)[:40], "why": f"read as {used[path]}"})
    for path in scan.csv_files:
        try:
            header = scan.csv_header(path)
        except ValueError as error:
            out.append({"path": _rel(path, scan.root), "role": "unused", "kind": "",
                        "header": None, "why": f"unreadable: {error}"})
            continue
        kind = classify_csv(header)
        if path in used:
            role = "side" if used[path] in side_kinds else "layout"
            why = f"read as {used[path]}"
        else:
            role = "unused"
            why = (f"a {kind} table, not read (layout read: {result.layout})" if kind
                   else "unrecognised header (no known ISIC layout has these columns)")
        entry = {"path": _rel(path, scan.root), "role": role, "kind": used.get(path, kind),
                 "header": header[:40], "why": why}
        if path in unlabelled:
            entry["why"] += f"; no label column (looked for {', '.join(unlabelled[path])})"
            entry["label_columns_missing"] = list(unlabelled[path])
        out.append(entry)
    sidecars = set(sidecar_jsons(scan))
    read_json = result.layout == "legacy_json" or any(
        d.get("layout") == "legacy_json" for d in result.downloads.values())
    per_folder = collections.Counter(os.path.dirname(p) for p in sidecars)
    for folder, n in sorted(per_folder.items()):
        rel = _rel(folder, scan.root)
        out.append({"path": f"{rel}/*.json", "role": "layout" if read_json else "unused",
                    "kind": "legacy_json", "header": None, "count": n,
                    "why": "image sidecars read" if read_json else
                           f"image sidecars, not read (layout read: {result.layout})"})
    for path in scan.json_files:
        if path not in sidecars:
            out.append({"path": _rel(path, scan.root), "role": "unused", "kind": "",
                        "header": None, "why": "JSON named like no image (not a sidecar)"})
    return out


def read_layout(root: str, layout: Optional[str] = None,
                dx_labels: Optional[Mapping[str, str]] = None,
                custom: Optional[CustomTable] = None) -> LayoutResult:
    """Read the metadata of `root` in `layout` (detected when None) into records and rejections.

    `dx_labels` is laid over DEFAULT_DX_LABELS (e.g. the result of parse_dx_map). `custom` (the
    --metadata_csv escape hatch) reads that table instead of any layout. A root holding several
    downloads (download_folders) reads as their union (layout DOWNLOADS), unless `layout` is
    forced. The result's `metadata_files` says what became of every CSV/JSON under root.
    """
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {LAYOUTS}")
    scan = scan_tree(root)
    dx = dx_table(dx_labels)
    scans: list[Scan] = []
    if custom is not None:
        result = _read_one(scan, CUSTOM_LAYOUT, dx, custom)
    elif layout is not None:
        try:
            result = _read_one(scan, layout, dx)
        except ValueError as error:
            folders = download_folders(scan)
            if not folders:
                raise
            found = ", ".join(f"{_rel(f, scan.root)}/ ({_detect(scan_tree(f))})" for f in folders)
            raise ValueError(f"--layout={layout} does not fit: {error}; the root holds downloads "
                             f"{found}: drop --layout to read them all") from error
    else:
        folders = download_folders(scan)
        if folders:
            result, scans = _union(scan, folders, dx)
        else:
            result = _read_one(scan, _detect(scan), dx)
    result.metadata_files = describe_metadata_files(scan, result, scans)
    return result
