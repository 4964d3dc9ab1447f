"""Readers of the layouts that live in the file tree itself: legacy JSON sidecars and class folders."""
from __future__ import annotations

import collections
import concurrent.futures
import json
import os
from typing import Mapping, Optional

from isicflow.metadata import BENIGN, MALIGNANT, UNKNOWN

from isicflow import fileio
from beam_jobs.layouts.assemble import CONFLICTING_LABELS, INVALID_ID, MALFORMED_METADATA, Entry
from beam_jobs.layouts.common import (Scan, clean_text, extra_cells, image_stem, parse_age,
                                      parse_fitzpatrick, parse_sex, strip_suffixes)
from beam_jobs.layouts.labels import label_from_text


SIDECAR_READERS = 16  # concurrent sidecar reads from a URL (each waits on the network)


def sidecar_jsons(scan: Scan) -> list[str]:
    """JSON files that are image sidecars: named ISIC_*, or named like an image in their folder."""
    image_keys = {(os.path.dirname(p), strip_suffixes(image_stem(p))[0]) for p in scan.images}
    return [p for p in scan.json_files
            if image_stem(p).startswith("ISIC_")
            or (os.path.dirname(p), strip_suffixes(image_stem(p))[0]) in image_keys]


def _dimension(value, counters) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return int(value)
    counters["invalid_size"] += 1
    return None


def _sidecar_entry(path: str, root: str, counters) -> Entry:
    """One legacy sidecar -> Entry; the id is the file name, which is what pairs it with its image."""
    entry = Entry(raw_id=image_stem(path), source=path, image_dir=os.path.dirname(path))
    try:
        with fileio.open_text(path, encoding="utf-8-sig") as handle:
            data = json.load(handle)
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        entry.problem = (MALFORMED_METADATA, f"unparsable JSON: {error}")
        return entry
    meta = data.get("meta") if isinstance(data, dict) else None
    meta = {} if meta is None else meta
    clinical = meta.get("clinical") or {} if isinstance(meta, dict) else None
    acquisition = meta.get("acquisition") or {} if isinstance(meta, dict) else None
    if not all(isinstance(part, dict) for part in (data, clinical, acquisition)):
        entry.problem = (MALFORMED_METADATA,
                         "JSON is not an object with meta.clinical/meta.acquisition objects")
        return entry
    name = data.get("name")
    if name is not None and str(name) != entry.raw_id:
        counters["sidecar_name_mismatch"] += 1
        if any(bad in str(name) for bad in ("/", "\\", "..")):
            entry.problem = (INVALID_ID, f"sidecar name {name!r} holds a path separator or '..'")
            return entry
    dataset = data.get("dataset") if isinstance(data.get("dataset"), dict) else {}
    collection = clean_text(dataset.get("name"))
    if not collection and os.path.dirname(path) != root:
        collection = os.path.basename(os.path.dirname(path))
        counters["collection_from_folder"] += 1
    entry.fields = dict(
        label=label_from_text(clinical.get("benign_malignant"), counters),
        diagnosis=clean_text(clinical.get("diagnosis")),
        patient_id=clean_text(clinical.get("patient_id")),
        lesion_id=clean_text(clinical.get("lesion_id")),
        age_approx=parse_age(clinical.get("age_approx"), counters),
        sex=parse_sex(clinical.get("sex"), counters),
        anatom_site=clean_text(clinical.get("anatom_site_general")),
        image_type=clean_text(acquisition.get("image_type")),
        source_collection=collection,
        attribution=clean_text(data.get("attribution") or dataset.get("attribution")),
        license=clean_text(data.get("copyright_license") or dataset.get("license")),
        original_width=_dimension(acquisition.get("pixelsX"), counters),
        original_height=_dimension(acquisition.get("pixelsY"), counters))
    if "fitzpatrick_skin_type" in clinical:
        skin = parse_fitzpatrick(clinical["fitzpatrick_skin_type"], counters)
        if skin:
            entry.fields["fitzpatrick_skin_type"] = skin
    confirmed = clinical.get("diagnosis_confirm_type")
    # the one extra a sidecar gives (no table here), under the tables' length rule: a subgroup
    # for evaluation (isicflow.metadata.diagnosis_confirmation)
    extra = () if confirmed is None else extra_cells(
        [str(confirmed)], [(0, "diagnosis_confirm_type")], counters)
    if extra:
        entry.fields["extra_metadata"] = extra
    return entry


def read_legacy_json(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """ISIC archive gallery download: `ISIC_x.jpg` beside `ISIC_x.json`, flat or nested.

    A sidecar pairs only with an image in its own folder, so two collections' copies of one id
    never swap metadata.

    The source collection is the sidecar's `dataset.name`; when the sidecar lacks it and the
    sidecar sits in a subfolder of the root (the gallery's `ISIC-images/<collection>/` nesting),
    the name of that folder; in a flat folder, ''.
    """
    sidecars = sidecar_jsons(scan)
    if not sidecars:
        raise ValueError(f"no legacy_json sidecars (ISIC_*.json, or a .json named like an image) "
                         f"under {scan.root}; found {len(scan.images)} image files, "
                         f"{len(scan.json_files)} other JSON files, CSVs "
                         f"{[os.path.basename(p) for p in scan.csv_files][:5]}")
    counters["other_json_skipped"] += len(scan.json_files) - len(sidecars)

    def read_one(path: str) -> tuple[Entry, collections.Counter]:
        own = collections.Counter()  # per sidecar, so threads never share a counter
        return _sidecar_entry(path, scan.root, own), own

    # One small read per image: on gs:// or s3:// each is a network round trip, so read many at
    # once there; on a local disk threads only contend for the GIL (~15% slower).
    if fileio.is_url(scan.root):
        with concurrent.futures.ThreadPoolExecutor(SIDECAR_READERS) as pool:
            results = list(pool.map(read_one, sidecars))  # in order: deterministic
    else:
        results = [read_one(path) for path in sidecars]
    for _, own in results:
        counters.update(own)
    return [entry for entry, _ in results]


def class_of_folder(folder: str, dx: Mapping[str, str]) -> tuple[str, str]:
    """Folder name -> (label, diagnosis): benign/malignant, a dx code of the table, else unknown."""
    name = folder.strip().lower()
    if name in (BENIGN, MALIGNANT):
        return name, ""
    if name in dx:
        return dx[name], name
    return UNKNOWN, ""


def read_class_folders(scan: Scan, dx: Mapping[str, str], counters) -> list[Entry]:
    """`<root>/<class>/**/*.jpg`: the label is the top folder's name; files right under root have none.

    An id found in two different class folders is rejected in every folder (conflicting_labels):
    nothing says which label is right.
    """
    placed = []
    folders_of_id: dict[str, set] = collections.defaultdict(set)
    for path in scan.images:
        parts = os.path.relpath(path, scan.root).split(os.sep)
        if len(parts) < 2:
            continue  # left unclaimed: assemble reports missing_metadata
        canonical = strip_suffixes(image_stem(path))[0]
        folders_of_id[canonical].add(parts[0])
        placed.append((path, parts[0], canonical))
    if not placed:
        raise ValueError(f"no class folders under {scan.root}: no image file in a folder below "
                         f"it ({len(scan.images)} image files directly under it)")
    entries = []
    for path, folder, canonical in placed:
        label, diagnosis = class_of_folder(folder, dx)
        if label == UNKNOWN:
            counters["unknown_label"] += 1
        entry = Entry(raw_id=image_stem(path), source=path, image_path=path,
                      fields=dict(label=label, diagnosis=diagnosis))
        if len(folders_of_id[canonical]) > 1:
            entry.problem = (CONFLICTING_LABELS, f"id {canonical} is in class folders "
                                                 f"{sorted(folders_of_id[canonical])}")
        entries.append(entry)
    return entries
