"""The dataset contract: what a dataset folder holds, written by the data engine (beam_jobs) and by
the GAN's sampler alike, and read by the trainers.

Layout (paths relative to the dataset root):
  manifest.json, rejects.jsonl, <size>/<split>/<split>-00000-of-000NN.tfrecord[.gz],
  <size>/dataset_info.json and <size>/features.json (uncompressed datasets: see below)
manifest["datasets"][str(size)][split] = {"records": int, "counts": {label_name: int},
    "shards": [{"path": str, "records": int, "bytes": int, "sha256": str}, ...]}
manifest["downloads"] = {folder ('.' = the root): {"layout", "records" (read), "rejections",
    "written"}}; manifest["metadata_files"] = [{"path", "role": layout|side|unused, "kind",
    "header", "why"}, ...]; manifest["counts"]["diagnosis"] (isicflow.diagnosis vocabulary) and
    ["per_download_label"]; when any record has them, ["fitzpatrick_skin_type"] = {split:
    {"I".."VI" or "unknown": int}} and ["extra_metadata_columns"] = {column: records with a value}
    (absent: no record carries a skin type / an extra column).
Records are tf.train.Example (isicflow.schema) in TFRecord framing; inside a shard, in image id
order. fitzpatrick_skin_type and extra_metadata_json (the metadata table's other columns, JSON;
isicflow.metadata.parse_extra_metadata) are optional: left out of a record when empty. Nothing here imports TensorFlow or Beam at import time: the engine's workers use it.

Each size folder also opens in TensorFlow Datasets as it is,
`tfds.builder_from_directory("<root>/<size>").as_dataset(split="train")`: dataset_info.json
(name, version = the record schema's, each split's shard lengths and bytes, and a per-split
file template `<split>/{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}`, which names the existing shards;
tfds's default template would need other file names) and features.json (every record field:
image_encoded an Image of SxSx3 decoded from JPEG/PNG, or raw uint8 bytes; label a 2-class
ClassLabel, -1 = unknown; strings as Text, numbers as Scalar); supervised keys (image_encoded,
label) for as_supervised=True. tfds reads no GZIP shard, so a compressed dataset has neither file.
The manifest stays the one contract: it is written last, and these two files are derived from it.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import posixpath
import struct
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import google_crc32c

from isicflow import fileio, schema
from isicflow.diagnosis import normalise_diagnosis
from isicflow.metadata import (CLASS_NAMES, FITZPATRICK_TYPES, LABEL_INDEX, LesionRecord,
                               Rejection, extra_metadata_json)

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.jsonl"
SPLITS = ("train", "validation", "test")
TFDS_INFO_NAME, TFDS_FEATURES_NAME = "dataset_info.json", "features.json"
TFDS_NAME = "isicflow"


# ---- shard naming ----

def shard_suffix(compression: str) -> str:
    """compression as the manifest says it: '' or 'GZIP'."""
    return ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"


def shard_path(size: int, split: str, index: int, count: int, compression: str = "") -> str:
    """A shard's path relative to the dataset root: <size>/<split>/<split>-0000i-of-0000n.tfrecord"""
    return posixpath.join(str(size), split,
                          f"{split}-{index:05d}-of-{count:05d}{shard_suffix(compression)}")


# ---- records ----

def to_example(record: LesionRecord, encoded: bytes, *, size: int, split: str, image_format: str,
               content_sha256: str, original_height: int, original_width: int) -> bytes:
    """The serialized record of one image at one size."""
    return schema.encode_example({
        "image_id": record.image_id, "image_encoded": encoded,
        "image_format": image_format, "height": size, "width": size, "channels": 3,
        "label": LABEL_INDEX[record.label], "label_name": record.label,
        "diagnosis": record.diagnosis, "patient_id": record.patient_id,
        "lesion_id": record.lesion_id,
        "age_approx": -1.0 if record.age_approx is None else float(record.age_approx),
        "sex": record.sex, "anatom_site": record.anatom_site, "image_type": record.image_type,
        "source_collection": record.source_collection, "split": split,
        "content_sha256": content_sha256, "original_height": original_height,
        "original_width": original_width,
        "fitzpatrick_skin_type": record.fitzpatrick_skin_type,
        "extra_metadata_json": extra_metadata_json(dict(record.extra_metadata)),
    })


def _masked_crc32c(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord_frame(record: bytes) -> bytes:
    """One TFRecord: length (uint64 LE), its masked CRC-32C, the bytes, their masked CRC-32C.

    The format tf.io.TFRecordWriter writes (tests/test_transforms.py compares the bytes). Kept by
    hand: no installed library but TensorFlow frames TFRecords, and workers must not import it.
    """
    header = struct.pack("<Q", len(record))
    return header + _masked_crc32c(header) + record + _masked_crc32c(record)


class HashingWriter:
    """Passes bytes on to a writer, counting and hashing them: a shard's size and sha256 come
    from what was written, without reading the file back (a full download on GCS)."""

    def __init__(self, raw):
        self.raw, self.size, self.digest = raw, 0, hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def write_shard(path: str, examples: Iterable[bytes], compression: str = "") -> tuple[int, str]:
    """Writes serialized records to one TFRecord file; returns its (bytes, sha256) as stored."""
    with fileio.open_write(path) as raw:
        stored = HashingWriter(raw)
        out = fileio.gzip_writer(stored) if compression == "GZIP" else stored
        for example in examples:
            out.write(tfrecord_frame(example))
        if out is not stored:
            out.close()  # writes the gzip trailer; raw is closed by the with
    return stored.size, stored.digest.hexdigest()


# ---- the manifest ----

def kept_entry(record: LesionRecord, split: str) -> dict:
    """What the manifest counts of one written image (diagnosis in isicflow.diagnosis's
    vocabulary, so counts mean the same across layouts)."""
    return {"split": split, "label": record.label,
            "diagnosis": normalise_diagnosis(record.diagnosis),
            "source": record.source_collection, "download": record.download,
            "fitzpatrick": record.fitzpatrick_skin_type,
            "extra_columns": [k for k, _ in record.extra_metadata]}


def summarize_counts(kept: Iterable[dict]) -> dict:
    """Counts per split x label, and per split x label x diagnosis x source collection."""
    by_label = {s: collections.Counter() for s in SPLITS}
    detail = collections.Counter()
    per_download: dict = collections.defaultdict(collections.Counter)
    diagnoses = collections.Counter()
    skin = {s: collections.Counter() for s in SPLITS}
    extra_columns = collections.Counter()
    for k in kept:
        by_label[k["split"]][k["label"]] += 1
        detail[(k["split"], k["label"], k["diagnosis"], k["source"])] += 1
        per_download[k.get("download", ".")][k["label"]] += 1
        diagnoses[k["diagnosis"]] += 1
        skin[k["split"]][k.get("fitzpatrick") or "unknown"] += 1
        extra_columns.update(k.get("extra_columns", ()))
    subgroups = {}
    if any(set(c) - {"unknown"} for c in skin.values()):  # else as before these existed
        order = {t: i for i, t in enumerate(FITZPATRICK_TYPES + ("unknown",))}
        subgroups["fitzpatrick_skin_type"] = {
            s: dict(sorted(c.items(), key=lambda kv: order[kv[0]])) for s, c in skin.items()}
    if extra_columns:
        subgroups["extra_metadata_columns"] = dict(sorted(extra_columns.items()))
    return {**subgroups,
        # records written per download folder ('.' = the root) and label
        "per_download_label": {d: dict(sorted(c.items())) for d, c in sorted(per_download.items())},
        # records written per diagnosis, in isicflow.diagnosis's vocabulary
        "diagnosis": dict(sorted(diagnoses.items())),
        "per_split_label": {s: dict(sorted(c.items())) for s, c in by_label.items()},
        "per_split_label_diagnosis_source": [
            {"split": s, "label": lab, "diagnosis": dx, "source_collection": src, "count": n}
            for (s, lab, dx, src), n in sorted(detail.items())],
    }


def build_manifest(*, layout: str, image_sizes: Sequence[int], image_format: str,
                   resize_mode: str, compression: str, synthetic: bool, run_config: dict,
                   shards: list[dict], rejections: list[Rejection], kept: list[dict],
                   inputs_read: int, layout_counters: dict,
                   layout_info: Optional[dict] = None,
                   near_duplicates: Optional[dict] = None) -> dict:
    """Pure: the manifest as a dict, checking that every input is accounted for.

    shards: {"size", "split", "path", "records", "bytes", "sha256"} each; kept: kept_entry each;
    layout_info: what the layout reader found ({"downloads": {folder: {...}}, "metadata_files":
    [...]}), added as the manifest's "downloads" and "metadata_files"; near_duplicates: the
    near-duplicate check's {"max_distance": {...}, "groups": [[id, ...], ...]}, added as
    "near_duplicate_groups" and a "near_duplicates" summary (writers that run no check omit it).
    """
    totals = collections.Counter(r.kind for r in rejections)
    written = len(kept)
    accounted = written + totals["rejected"] + totals["filtered"] + totals["duplicate"]
    if accounted != inputs_read:
        raise RuntimeError(f"bookkeeping bug: read {inputs_read} inputs but accounted for "
                           f"{accounted} (written {written}, {dict(totals)})")
    counts = summarize_counts(kept)
    datasets: dict = {}
    for size in image_sizes:
        datasets[str(size)] = {}
        for split in SPLITS:
            mine = sorted((s for s in shards if s["size"] == size and s["split"] == split),
                          key=lambda s: s["path"])
            datasets[str(size)][split] = {
                "records": sum(s["records"] for s in mine),
                "counts": counts["per_split_label"][split],
                "shards": [{k: s[k] for k in ("path", "records", "bytes", "sha256")} for s in mine],
            }
    reasons = collections.Counter((r.kind, r.reason) for r in rejections)
    manifest = {
        "schema_version": schema.SCHEMA_VERSION,
        "synthetic": synthetic,
        "layout": layout,
        "image_sizes": list(image_sizes),
        "image_format": image_format,
        "resize_mode": resize_mode,
        "compression": compression,
        "config": run_config,
        "totals": {"read": inputs_read, "written": written, "rejected": totals["rejected"],
                   "filtered": totals["filtered"], "duplicates": totals["duplicate"]},
        "reasons": {f"{kind}:{reason}": n for (kind, reason), n in sorted(reasons.items())},
        "layout_counters": dict(sorted(layout_counters.items())),
        "counts": counts,
        "datasets": datasets,
    }
    if layout_info is not None:
        written_per = counts["per_download_label"]
        manifest["downloads"] = {
            d: dict(info, written=sum(written_per.get(d, {}).values()))
            for d, info in sorted(layout_info.get("downloads", {}).items())}
        manifest["metadata_files"] = list(layout_info.get("metadata_files", []))
    if near_duplicates is not None:
        groups = near_duplicates["groups"]
        manifest["near_duplicate_groups"] = groups
        manifest["near_duplicates"] = {"groups": len(groups),
                                       "images": sum(len(g) for g in groups),
                                       "max_distance": near_duplicates["max_distance"]}
    return manifest


def manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8")


def rejects_bytes(rejections: Iterable[Rejection]) -> bytes:
    ordered = sorted(rejections, key=lambda r: (r.image_id, r.path, r.reason))
    return "".join(r.to_json() + "\n" for r in ordered).encode("utf-8")


def read_manifest(data_dir: str) -> dict[str, Any]:
    """Loads DATA_DIR/manifest.json and checks its schema version; clear error when absent."""
    path = fileio.join_path(data_dir, MANIFEST_NAME)
    if not fileio.exists(path):
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {data_dir!r}: not a finished beam_jobs.preprocess output "
            "(a run that was killed midway writes none)")
    manifest = json.loads(fileio.read_bytes(path).decode("utf-8"))
    schema.check_schema_version(manifest.get("schema_version"), where=path)
    return manifest


def manifest_or_read(data_dir: str, manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest a caller already read (a program reads it once per run), else read now."""
    return dict(manifest) if manifest is not None else read_manifest(data_dir)


def split_info(manifest: dict[str, Any], size: int, split: str) -> dict[str, Any]:
    datasets = manifest.get("datasets", {})
    if str(size) not in datasets:
        raise ValueError(f"image size {size} not in dataset; it has sizes {sorted(datasets)}")
    if split not in datasets[str(size)]:
        raise ValueError(f"split {split!r} not in dataset; it has {sorted(datasets[str(size)])}")
    return datasets[str(size)][split]


COUNT_ROW_FIELDS = ("split", "label", "diagnosis", "source_collection", "count")


def count_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The manifest's counts.per_split_label_diagnosis_source rows (summarize_counts) as dicts
    of COUNT_ROW_FIELDS, count an int; a row written as a [split, label, diagnosis, source,
    count] list reads the same. [] when the manifest has none."""
    rows = (manifest.get("counts") or {}).get("per_split_label_diagnosis_source") or []
    out = []
    for row in rows:
        if not isinstance(row, Mapping) and len(row) != len(COUNT_ROW_FIELDS):
            raise ValueError(f"a manifest count row {row!r} is neither a mapping nor a list of "
                             f"{len(COUNT_ROW_FIELDS)} ({', '.join(COUNT_ROW_FIELDS)})")
        row = dict(row) if isinstance(row, Mapping) else dict(zip(COUNT_ROW_FIELDS, row))
        out.append({**{k: row.get(k) or "" for k in COUNT_ROW_FIELDS[:4]},
                    "count": int(row.get("count") or 0)})
    return out


def class_counts_per_source(manifest: Mapping[str, Any], split: str,
                            class_of: Callable[[Mapping[str, Any]], int]
                            ) -> dict[str, dict[int, int]]:
    """{source_collection: {class: records}} of one split's count rows, each row's class given
    by class_of(row) (< 0 leaves the row out); "" holds the records that name no source."""
    out: dict[str, dict[int, int]] = {}
    for row in count_rows(manifest):
        index = class_of(row) if row["split"] == split and row["count"] > 0 else -1
        if index >= 0:
            cell = out.setdefault(row["source_collection"], {})
            cell[index] = cell.get(index, 0) + row["count"]
    return out


def records_per_source(manifest: Mapping[str, Any], split: str,
                       keep: Callable[[Mapping[str, Any]], bool] = lambda row: True
                       ) -> dict[str, int]:
    """{source_collection: records} of one split's count rows that `keep` accepts; "" holds
    the records that name no source. Readers that balance or predict the source use it to
    refuse a split whose records would otherwise be left out unseen."""
    per_source = class_counts_per_source(manifest, split, lambda row: 0 if keep(row) else -1)
    return {source: sum(cells.values()) for source, cells in per_source.items()}


def shard_paths(manifest: dict[str, Any], data_dir: str, size: int, split: str) -> list[str]:
    """Absolute shard paths of one (size, split), in manifest order (sorted by name)."""
    return [fileio.join_path(data_dir, s["path"])
            for s in split_info(manifest, size, split)["shards"]]


def compression_type(manifest: dict[str, Any]) -> str:
    """'' or 'GZIP', as tf.data.TFRecordDataset takes it."""
    return manifest.get("compression", "") or ""


# ---- TensorFlow Datasets metadata (tfds.builder_from_directory) ----

_TFDS = "tensorflow_datasets.core.features."


def _tfds_feature(name: str, kind: str, size: int, image_format: str) -> dict:
    """One record field as tfds's features.json describes it (FeatureConnector.to_json)."""
    if name == "image_encoded" and image_format == "raw":  # uint8 bytes, as decode_raw reads
        return {"pythonClassName": _TFDS + "tensor_feature.Tensor", "tensor": {
            "shape": {"dimensions": [str(size), str(size), "3"]}, "dtype": "uint8",
            "encoding": "bytes"}}
    if name == "image_encoded":
        return {"pythonClassName": _TFDS + "image_feature.Image", "image": {
            "shape": {"dimensions": [str(size), str(size), "3"]}, "dtype": "uint8",
            "encodingFormat": image_format}}
    if name == "label":
        return {"pythonClassName": _TFDS + "class_label_feature.ClassLabel",
                "classLabel": {"numClasses": str(len(CLASS_NAMES))}}  # unknown is -1
    if kind == "bytes":
        return {"pythonClassName": _TFDS + "text_feature.Text", "text": {}}
    return {"pythonClassName": _TFDS + "scalar.Scalar", "tensor": {
        "shape": {}, "dtype": "int64" if kind == "int64" else "float32", "encoding": "none"}}


def tfds_features(size: int, image_format: str) -> dict:
    """features.json of one size folder: every schema field, under its own name, but the optional
    ones (schema.OPTIONAL_FEATURES): tfds parses each listed feature without a default, so a
    record lacking one would fail; isicflow.load reads them."""
    return {"pythonClassName": _TFDS + "features_dict.FeaturesDict", "featuresDict": {
        "features": {name: _tfds_feature(name, kind, size, image_format)
                     for name, kind in schema.FEATURE_KINDS.items()
                     if name not in schema.OPTIONAL_FEATURES}}}


def tfds_dataset_info(manifest: dict[str, Any], size: int) -> dict:
    """dataset_info.json of one size folder, from the manifest: the splits that hold records,
    each with its shards' lengths and bytes and a template naming the engine's shard files."""
    splits = []
    per_split = manifest["datasets"][str(size)]
    for split in SPLITS:  # in this order whatever the manifest's key order
        info = per_split.get(split, {"shards": []})
        if not info["shards"]:
            continue
        splits.append({"name": split, "filepathTemplate": f"{split}/{{SPLIT}}-{{SHARD_X_OF_Y}}."
                                                          "{FILEFORMAT}",
                       "shardLengths": [str(s["records"]) for s in info["shards"]],
                       "numBytes": str(sum(s["bytes"] for s in info["shards"]))})
    return {"name": TFDS_NAME, "version": f"{schema.SCHEMA_VERSION}.0.0",
            "description": "ISIC dermoscopy records written by isicflow (beam_jobs.preprocess); "
                           "label 0 benign, 1 malignant, -1 unknown.",
            "fileFormat": "tfrecord", "splits": splits,
            "supervisedKeys": {"tuple": {"items": [{"featureKey": "image_encoded"},
                                                   {"featureKey": "label"}]}}}


def write_tfds_metadata(output: str, manifest: dict[str, Any]) -> list[str]:
    """Writes dataset_info.json and features.json into every size folder of an uncompressed
    dataset (tfds reads no GZIP shard); returns the paths written."""
    if compression_type(manifest):
        return []
    written = []
    for size in manifest["image_sizes"]:
        for name, content in ((TFDS_FEATURES_NAME, tfds_features(size, manifest["image_format"])),
                              (TFDS_INFO_NAME, tfds_dataset_info(manifest, size))):
            path = fileio.join_path(output, str(size), name)
            fileio.write_bytes(path, (json.dumps(content, indent=1, sort_keys=True) + "\n")
                               .encode("utf-8"))
            written.append(path)
    return written


# ---- a whole dataset without Beam (the GAN's sampler) ----

@dataclasses.dataclass(frozen=True)
class DatasetImage:
    """One image for write_dataset: its metadata, its encoded bytes at the dataset's size."""

    record: LesionRecord
    encoded: bytes
    split: str = "train"


def write_dataset(output: str, images: Iterable[DatasetImage], *, image_size: int,
                  image_format: str, layout: str, synthetic: bool = False,
                  compression: str = "", records_per_shard: int = 1000,
                  run_config: Mapping[str, Any] | None = None) -> dict:
    """Writes a dataset folder as the engine does (shards, rejects.jsonl, then manifest.json,
    last) from images already encoded at image_size; returns the manifest.

    Per split, images go round-robin in id order to ceil(n / records_per_shard) shards, each
    written in id order. Original sizes default to image_size; content_sha256 is the encoded bytes'.
    """
    by_split: dict[str, list[DatasetImage]] = {s: [] for s in SPLITS}
    seen = set()
    for image in images:
        if image.split not in by_split:
            raise ValueError(f"split {image.split!r} not in {SPLITS}")
        if image.record.image_id in seen:
            raise ValueError(f"image id {image.record.image_id!r} given twice")
        seen.add(image.record.image_id)
        by_split[image.split].append(image)
    shards, kept = [], []
    for split, mine in by_split.items():
        mine.sort(key=lambda im: im.record.image_id)
        count = -(-len(mine) // records_per_shard)
        for index in range(count):
            part = mine[index::count]
            rel = shard_path(image_size, split, index, count, compression)
            nbytes, sha = write_shard(fileio.join_path(output, rel), (to_example(
                im.record, im.encoded, size=image_size, split=split, image_format=image_format,
                content_sha256=hashlib.sha256(im.encoded).hexdigest(),
                original_height=im.record.original_height or image_size,
                original_width=im.record.original_width or image_size) for im in part),
                compression)
            shards.append({"size": image_size, "split": split, "path": rel,
                           "records": len(part), "bytes": nbytes, "sha256": sha})
        kept += [kept_entry(im.record, split) for im in mine]
    manifest = build_manifest(
        layout=layout, image_sizes=[image_size], image_format=image_format, resize_mode="",
        compression=compression, synthetic=synthetic, run_config=dict(run_config or {}),
        shards=shards, rejections=[], kept=kept, inputs_read=len(kept), layout_counters={})
    write_tfds_metadata(output, manifest)
    fileio.write_bytes(fileio.join_path(output, REJECTS_NAME), rejects_bytes([]))
    fileio.write_bytes(fileio.join_path(output, MANIFEST_NAME), manifest_bytes(manifest))
    return manifest
