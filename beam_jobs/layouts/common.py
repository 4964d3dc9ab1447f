"""Shared pieces of the layout readers: the one scan of the tree, id and value cleaning, CSV reading.

Pure Python (no Beam, no TF) and metadata only: image bytes are never opened here, the Beam job
decodes and hashes them.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import os
import re
from typing import Iterable, Optional

from isicflow import fileio
from isicflow.metadata import (EXTRA_VALUE_MAX_BYTES, FITZPATRICK_COLUMN, normalise_fitzpatrick)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Segmentation masks and superpixel maps shipped beside the photos (ISIC 2016-2018 challenges).
MASK_SUFFIXES = ("_segmentation", "_mask", "_superpixels")
# Suffixes that mark a variant of an archive image; the record keeps the archive id without them.
ID_SUFFIXES = {"_downsampled": "suffix_downsampled", "_gray": "suffix_gray"}
MISSING_TEXT = {"", "unknown", "nan", "none", "null", "na", "n/a"}
SEXES = {"male", "female"}


@dataclasses.dataclass
class Scan:
    """One os.walk of the input tree, shared by detection and every reader."""

    root: str
    images: list[str]                     # absolute paths of dataset images, sorted
    json_files: list[str]                 # absolute paths, sorted
    csv_files: list[str]                  # every CSV under root, sorted
    top_csv_files: list[str]              # CSVs directly under root (where layouts put theirs)
    top_dirs: list[str]                   # names of non-hidden folders directly under root, sorted
    counters: collections.Counter
    headers: dict = dataclasses.field(default_factory=dict, repr=False)  # path -> CSV header
    used: dict = dataclasses.field(default_factory=dict, repr=False)  # CSV path -> kind read as
    # CSV path -> the label columns its kind reads, none of which it has (every row unlabelled)
    unlabelled: dict = dataclasses.field(default_factory=dict, repr=False)

    def csv_header(self, path: str) -> list[str]:
        """A CSV's header, read once per scan (detection and every reader ask for it)."""
        if path not in self.headers:
            self.headers[path] = read_csv_header(path)
        return self.headers[path]


def scan_tree(root: str) -> Scan:
    """Walk root once (following folder links, each real folder once) and sort what it holds."""
    if not fileio.isdir(root):
        raise ValueError(f"--input {root!r} is not a directory: pass the folder of the "
                         "download (its images and metadata)")
    root = fileio.canonical(root)
    counters: collections.Counter = collections.Counter()
    images, json_files, csv_files = [], [], []
    seen_dirs, top_dirs = set(), []
    for dirpath, dirnames, filenames in fileio.walk(root):
        real = fileio.real_dir(dirpath)
        if real in seen_dirs:  # a link loop or a second link to the same folder
            dirnames[:] = []
            counters["linked_folder_skipped"] += 1
            continue
        seen_dirs.add(real)
        hidden = [d for d in dirnames if d.startswith(".")]
        counters["hidden_skipped"] += len(hidden)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if dirpath == root:
            top_dirs = list(dirnames)
        for name in filenames:
            path = os.path.join(dirpath, name)
            stem, ext = os.path.splitext(name)
            ext = ext.lower()
            if name.startswith("."):      # e.g. macOS '._ISIC_0000000.jpg' resource forks
                counters["hidden_skipped"] += 1
            elif ext in IMAGE_EXTENSIONS:
                if stem.endswith(MASK_SUFFIXES):
                    counters["mask_skipped"] += 1
                else:
                    images.append(path)
            elif ext == ".json":
                json_files.append(path)
            elif ext == ".csv":
                csv_files.append(path)
            else:
                counters["other_file_skipped"] += 1
    csv_files.sort()
    top_csv = [p for p in csv_files if os.path.dirname(p) == root]
    return Scan(root, sorted(images), sorted(json_files), csv_files, top_csv, top_dirs, counters)


def split_id(raw: str, counters: collections.Counter) -> tuple[str, str]:
    """Clean an id as metadata writes it: returns (canonical id, problem or '').

    '.jpg' endings and the '_downsampled'/'_gray' variant suffixes are removed (and counted), so
    `ISIC_0000000_downsampled.jpg` and `ISIC_0000000` name the same archive image.
    """
    text = (raw or "").strip()
    if not text:
        return "", "empty id"
    if "/" in text or "\\" in text or ".." in text or "\x00" in text:
        return text, f"id {text!r} holds a path separator or '..'"
    stem, ext = os.path.splitext(text)
    if ext.lower() in IMAGE_EXTENSIONS:
        counters["id_with_extension"] += 1
        text = stem
    canonical, _ = strip_suffixes(text, counters)
    if not canonical:
        return "", f"id {raw!r} is empty without its extension/suffix"
    return canonical, ""


def strip_suffixes(stem: str, counters: Optional[collections.Counter] = None) -> tuple[str, list[str]]:
    """'ISIC_1_downsampled' -> ('ISIC_1', ['suffix_downsampled']); counts each suffix found."""
    found = []
    changed = True
    while changed:
        changed = False
        for suffix, counter_name in ID_SUFFIXES.items():
            if stem.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                found.append(counter_name)
                changed = True
    if counters is not None:
        for name in found:
            counters[name] += 1
    return stem, found


def image_stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def parse_age(value, counters: collections.Counter) -> Optional[float]:
    """Ages as ISIC writes them: 55, '55', '55.0', '', 'unknown', null -> float or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        counters["empty_age"] += 1
        return None
    if isinstance(value, bool):
        counters["invalid_age"] += 1
        return None
    if isinstance(value, (int, float)):
        age = float(value)
    else:
        text = value.strip()
        if text.lower() in MISSING_TEXT:
            counters["unknown_age"] += 1
            return None
        try:
            age = float(text)
        except ValueError:
            counters["invalid_age"] += 1
            return None
        if not re.fullmatch(r"[+-]?\d+", text):
            counters["float_age"] += 1
    if not 0 <= age <= 130 or age != age:
        counters["invalid_age"] += 1
        return None
    return age


def parse_sex(value, counters: collections.Counter) -> str:
    """male/female (any case) kept; null or '' -> empty_sex; 'unknown' -> unknown_sex; else invalid."""
    if value is None or not str(value).strip():
        counters["empty_sex"] += 1
        return ""
    text = str(value).strip().lower()
    if text in SEXES:
        return text
    counters["unknown_sex" if text in MISSING_TEXT else "invalid_sex"] += 1
    return ""


def clean_text(value) -> str:
    """Free-text fields: None, 'unknown', 'NaN' and blanks become ''."""
    if value is None:
        return ""
    text = str(value).strip()
    return "" if text.lower() in MISSING_TEXT else text


# A row's other columns (read_csv(extras=True)): ((column, value), ...) under this key, which no
# header name can be (names are stripped).
EXTRA_KEY = "\x00extra"
# Columns a reader takes into LesionRecord fields that no record field stores (the archive's
# contributor and license): kept among the extras too, since for an isic-cli export the
# attribution is the one column naming where an image comes from.
ALSO_EXTRA = frozenset({"attribution", "copyright_license"})


def parse_fitzpatrick(value, counters: collections.Counter) -> str:
    """isicflow.metadata.normalise_fitzpatrick, counting what it cannot read (written as '')."""
    text = normalise_fitzpatrick(value)
    if text is None:
        counters["invalid_fitzpatrick_skin_type"] += 1
        return ""
    return text


def extra_cells(cells: list[str], picks: list[tuple[int, str]],
                 counters: collections.Counter) -> tuple:
    """(column, cleaned value) of the extra columns that have a value of at most
    EXTRA_VALUE_MAX_BYTES (longer ones are counted and left out)."""
    out = []
    for i, name in picks:
        value = clean_text(cells[i]) if i < len(cells) else ""
        if not value:
            continue
        if len(value.encode("utf-8")) > EXTRA_VALUE_MAX_BYTES:
            counters["extra_value_too_long"] += 1
            continue
        out.append((name, value))
    return tuple(out)


@dataclasses.dataclass
class CsvTable:
    """A metadata CSV cleaned of BOM, blank lines and unnamed index columns."""

    path: str
    columns: list[str]                    # lower-cased, index columns removed
    rows: list[tuple[int, dict, str]]     # (line number, {column: cell}, problem or '')


def _index_columns(header: list[str]) -> list[int]:
    return [i for i, name in enumerate(header)
            if not name.strip() or re.fullmatch(r"unnamed: ?\d+", name.strip().lower())]


def _open_text(path: str):
    """Text handle that drops a UTF-8 BOM; returns (handle, had_bom)."""
    bom = fileio.read_bytes(path, 3) == b"\xef\xbb\xbf"
    return fileio.open_text(path, encoding="utf-8-sig", newline=""), bom


def _cell_rows(path: str, handle):
    """csv rows of an open file, turning decoding and csv errors into ValueErrors naming the file."""
    reader = csv.reader(handle)
    try:
        for cells in reader:
            yield reader.line_num, cells
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not UTF-8 text after line {reader.line_num} ({error})") from error
    except csv.Error as error:
        raise ValueError(f"{path}: line {reader.line_num}: {error}") from error


def read_csv_header(path: str) -> list[str]:
    """The lower-cased column names of a CSV, without unnamed index columns (reads one line)."""
    handle, _ = _open_text(path)
    with handle:
        for _, cells in _cell_rows(path, handle):
            if any(cell.strip() for cell in cells):
                drop = set(_index_columns(cells))
                return [c.strip().lower() for i, c in enumerate(cells) if i not in drop]
    return []


def read_csv(path: str, counters: collections.Counter, keep: Optional[set] = None,
             extras: bool = False) -> CsvTable:
    """Stream a metadata CSV with the csv module (quoted commas), counting what it cleans.

    Only the `keep` columns (all when None) are held per row, so a 400,000-row, 55-column
    ISIC 2024 file costs a few columns of memory, not all of them. With `extras` (and a `keep`
    set), a fitzpatrick_skin_type column is kept too, and every other column (and ALSO_EXTRA)
    is held as one tuple of its non-empty cells under row[EXTRA_KEY].
    """
    if extras and keep is not None:
        keep = set(keep) | {FITZPATRICK_COLUMN}
    extra_picks: list[tuple[int, str]] = []
    handle, bom = _open_text(path)
    if bom:
        counters["csv_bom"] += 1
    header: Optional[list[str]] = None
    width = 0
    picks: list[tuple[int, str]] = []
    rows = []
    with handle:
        for line, cells in _cell_rows(path, handle):
            if not any(cell.strip() for cell in cells):
                counters["empty_line"] += 1
                continue
            if header is None:
                drop = set(_index_columns(cells))
                counters["extra_index_column"] += len(drop)
                width = len(cells)
                header = [c.strip().lower() for i, c in enumerate(cells) if i not in drop]
                duplicated = sorted(n for n, k in collections.Counter(header).items() if k > 1)
                if duplicated:
                    raise ValueError(f"{path}: header repeats column(s) {duplicated}")
                picks = [(i, c.strip().lower()) for i, c in enumerate(cells)
                         if i not in drop and (keep is None or c.strip().lower() in keep)]
                if extras and keep is not None:
                    extra_picks = [(i, c.strip().lower()) for i, c in enumerate(cells)
                                   if i not in drop and c.strip().lower() != FITZPATRICK_COLUMN
                                   and (c.strip().lower() not in keep
                                        or c.strip().lower() in ALSO_EXTRA)]
                continue
            problem = "" if len(cells) == width else f"{len(cells)} cells where the header has {width}"
            row = {name: cells[i] for i, name in picks if i < len(cells)}
            if extra_picks and not problem:
                row[EXTRA_KEY] = extra_cells(cells, extra_picks, counters)
            rows.append((line, row, problem))
    if header is None:
        raise ValueError(f"{path}: empty CSV (no header line)")
    return CsvTable(path, header, rows)


def require_columns(table: CsvTable, needed: Iterable[str]) -> None:
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{table.path}: missing column(s) {missing}; header has {table.columns}")
