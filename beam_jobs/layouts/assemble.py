"""Pairs metadata entries with image files; each file and entry ends as a record or a rejection."""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Optional

from isicflow.metadata import LesionRecord, Rejection

from beam_jobs.layouts.common import Scan, image_stem, split_id, strip_suffixes

# Reason codes of the metadata-level rejections (the Beam job adds its own for image bytes).
MALFORMED_METADATA = "malformed_metadata"  # unparsable JSON sidecar or CSV row, flag not 0/1
MISSING_IMAGE = "missing_image"            # a metadata entry whose image file is not under root
MISSING_METADATA = "missing_metadata"      # an image file no metadata entry (or class folder) names
DUPLICATE_ID = "duplicate_id"              # a second metadata entry for an id: the first is kept
DUPLICATE_FILE = "duplicate_file"          # a second image file for an id already given a file
INVALID_ID = "invalid_id"                  # empty id, or one holding a path separator or '..'
INVALID_LABEL = "invalid_label"            # one-hot row with zero or several ones, and the like
CONFLICTING_LABELS = "conflicting_labels"  # one id in two class folders / two downloads with
                                           # different labels; label != target
DUPLICATE_CONTENT = "duplicate_content"    # same id, label and bytes in two downloads (kind
                                           # 'duplicate'): the first download's copy is kept
REASONS = (MALFORMED_METADATA, MISSING_IMAGE, MISSING_METADATA, DUPLICATE_ID, DUPLICATE_FILE,
           INVALID_ID, INVALID_LABEL, CONFLICTING_LABELS, DUPLICATE_CONTENT)


@dataclasses.dataclass
class LayoutResult:
    """What one layout reader made of an input tree.

    `counters["inputs"] == len(records) + len(rejections)`: each image file and each metadata
    entry that found no image file is one input.
    """

    layout: str
    records: list[LesionRecord]
    rejections: list[Rejection]
    counters: dict[str, int]
    # download folder (relative to root, '.' = root) -> {"layout", "records", "rejections"}
    downloads: dict = dataclasses.field(default_factory=dict)
    # every CSV / non-sidecar JSON under root: {"path", "role": layout|side|unused, "kind",
    # "header", "why"} (read_layout.describe_metadata_files)
    metadata_files: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Entry:
    """One metadata entry (CSV row, JSON sidecar, or class-folder image) before pairing."""

    raw_id: str
    source: str                              # absolute path of the metadata file (or image)
    where: str = ""                          # e.g. 'line 7'
    fields: dict = dataclasses.field(default_factory=dict)  # LesionRecord fields but id/path
    problem: Optional[tuple[str, str]] = None  # (reason, detail): reject even if the image is found
    image_dir: str = ""                      # look for the image only in this folder (sidecars)
    image_path: str = ""                     # set when the entry *is* an image (class folders)

    def describe(self) -> str:
        return f"{self.source} {self.where}".strip()


def index_images(images: list[str]) -> dict[str, list[str]]:
    """Canonical id (variant suffixes removed) -> image paths carrying it."""
    index: dict[str, list[str]] = collections.defaultdict(list)
    for path in images:
        index[strip_suffixes(image_stem(path))[0]].append(path)
    return index


def _choose(candidates: list[str], claimed: set, raw_stem: str, canonical: str, image_dir: str) -> str:
    """The unclaimed file for an id: exact name first, then the plain id, then a variant."""
    free = [p for p in candidates
            if p not in claimed and (not image_dir or os.path.dirname(p) == image_dir)]
    if not free:
        return ""
    return min(free, key=lambda p: (image_stem(p) != raw_stem, image_stem(p) != canonical, p))


def assemble(layout: str, scan: Scan, entries: list[Entry],
             counters: collections.Counter) -> LayoutResult:
    """Turn entries into records and rejections; leftover image files become rejections too."""
    index = index_images(scan.images)
    claimed: set[str] = set()
    first_seen: dict[str, str] = {}
    taken_by: dict[str, str] = {}
    records: list[LesionRecord] = []
    rejections: list[Rejection] = []
    unmatched_entries = 0
    counters["metadata_entries"] += sum(1 for e in entries if not e.image_path)

    def reject(path: str, image_id: str, reason: str, detail: str) -> None:
        rejections.append(Rejection(path=path, image_id=image_id, reason=reason, detail=detail))

    for entry in entries:
        canonical, id_problem = split_id(entry.raw_id, counters)
        if id_problem:
            if entry.image_path:
                claimed.add(entry.image_path)
            else:
                unmatched_entries += 1
            reject(entry.image_path or entry.source, entry.raw_id.strip(), INVALID_ID,
                   f"{entry.describe()}: {id_problem}")
            continue
        raw_stem = os.path.splitext(entry.raw_id.strip())[0]
        id_suffixes = set(strip_suffixes(raw_stem)[1])
        path = entry.image_path or _choose(index.get(canonical, []), claimed, raw_stem, canonical,
                                           entry.image_dir)
        if path:
            claimed.add(path)
            for name in set(strip_suffixes(image_stem(path))[1]) - id_suffixes:
                counters[name] += 1
            taken_by.setdefault(canonical, path)
        else:
            unmatched_entries += 1
        if entry.problem and entry.image_path:   # class-folder conflicts: every copy goes
            reject(path, canonical, *entry.problem)
            continue
        if canonical in first_seen:
            reason = DUPLICATE_FILE if entry.image_path else DUPLICATE_ID
            reject(path or entry.source, canonical, reason,
                   f"{entry.describe()}: id {canonical} already read from {first_seen[canonical]}")
            continue
        if path:  # an entry without its image does not take the id from a later one that has it
            first_seen[canonical] = entry.describe()
        if entry.problem:
            reject(path or entry.source, canonical, entry.problem[0],
                   f"{entry.describe()}: {entry.problem[1]}")
        elif not path:
            reject(entry.source, canonical, MISSING_IMAGE,
                   f"{entry.describe()}: no image file for id {canonical} under {scan.root}")
        else:
            records.append(LesionRecord(image_id=canonical, image_path=path, **entry.fields))

    for path in scan.images:
        if path in claimed:
            continue
        canonical = strip_suffixes(image_stem(path))[0]
        if canonical in taken_by:
            reject(path, canonical, DUPLICATE_FILE,
                   f"id {canonical} already given {taken_by[canonical]}")
        else:
            reject(path, canonical, MISSING_METADATA, f"no metadata entry for id {canonical}")

    counters["image_files"] += len(scan.images)
    counters["inputs"] += len(scan.images) + unmatched_entries
    records.sort(key=lambda r: r.image_id)
    rejections.sort(key=lambda r: (r.image_id, r.path, r.reason))
    totals = ("inputs", "image_files", "metadata_entries")
    kept = {k: v for k, v in sorted(counters.items()) if v or k in totals}
    return LayoutResult(layout, records, rejections, kept)
