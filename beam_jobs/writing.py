"""Shard writing and the final step that makes a dataset visible: rejects, then the manifest.

Shards go to OUTPUT/.incomplete/ first, beside the spool files (beam_jobs.spool) they are made
from. Only Finalize moves them into place, deletes the rest of .incomplete/ and writes
manifest.json, last, so a run killed midway leaves no manifest and no file that looks complete.
Records inside a shard are sorted by image id, so two runs write byte-identical files.
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import posixpath
import struct
from typing import Iterable

import apache_beam as beam
import google_crc32c
from apache_beam.metrics import Metrics

from beam_jobs import fileio, spool
from beam_jobs.config import PreprocessConfig
from beam_jobs.splits import SPLIT_NAMES
from isicflow import image_checks, schema
from isicflow.manifest import MANIFEST_NAME, REJECTS_NAME, join_path as join
from isicflow.metadata import LABEL_INDEX, Rejection

INCOMPLETE_DIR = ".incomplete"


class _HashingWriter:
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


def _masked_crc32c(data: bytes) -> bytes:
    crc = google_crc32c.value(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def tfrecord_frame(record: bytes) -> bytes:
    """One TFRecord: length (uint64 LE), its masked CRC-32C, the bytes, their masked CRC-32C.

    The format tf.io.TFRecordWriter writes (tests/test_transforms.py compares the bytes); done
    here so the pipeline's workers need no TensorFlow.
    """
    header = struct.pack("<Q", len(record))
    return header + _masked_crc32c(header) + record + _masked_crc32c(record)


def to_example(image, encoded: bytes, size: int, split: str, image_format: str) -> bytes:
    """The serialized record of one image (a transforms.ProcessedImage) at one size."""
    r = image.record
    return schema.encode_example({
        "image_id": r.image_id, "image_encoded": encoded,
        "image_format": image_format, "height": size, "width": size, "channels": 3,
        "label": LABEL_INDEX[r.label], "label_name": r.label, "diagnosis": r.diagnosis,
        "patient_id": r.patient_id, "lesion_id": r.lesion_id,
        "age_approx": -1.0 if r.age_approx is None else float(r.age_approx),
        "sex": r.sex, "anatom_site": r.anatom_site, "image_type": r.image_type,
        "source_collection": r.source_collection, "split": split,
        "content_sha256": image.sha256, "original_height": image.source_height,
        "original_width": image.source_width,
    })


class WriteShard(beam.DoFn):
    """One shard: ((size, split, index, count), [ProcessedImage]), written in id order with each
    image's pixels read back from its spool file."""

    def __init__(self, config: PreprocessConfig):
        self.config = config

    def process(self, element):
        (size, split, index, count), images = element
        images = sorted(images, key=lambda im: im.record.image_id)
        rel = posixpath.join(str(size), split,
                             f"{split}-{index:05d}-of-{count:05d}{self.config.shard_suffix}")
        tmp = join(self.config.output, INCOMPLETE_DIR, rel)
        encoded = spool.read_all([image.encoded[size] for image in images])
        with fileio.open_write(tmp) as raw:
            stored = _HashingWriter(raw)
            out = fileio.gzip_writer(stored) if self.config.compression == "gzip" else stored
            for image in images:
                example = to_example(image, encoded[image.encoded[size]], size, split,
                                     self.config.image_format)
                out.write(tfrecord_frame(example))
            if out is not stored:
                out.close()  # writes the gzip trailer; raw is closed by the with
        nbytes, sha = stored.size, stored.digest.hexdigest()
        Metrics.counter("isicflow", "shards_written").inc()
        Metrics.counter("isicflow", "records_written").inc(len(images))
        yield {"size": size, "split": split, "path": rel, "records": len(images),
               "bytes": nbytes, "sha256": sha}


def summarize_counts(kept: Iterable[dict]) -> dict:
    """Counts per split x label, and per split x label x diagnosis x source collection."""
    by_label = {s: collections.Counter() for s in SPLIT_NAMES}
    detail = collections.Counter()
    for k in kept:
        by_label[k["split"]][k["label"]] += 1
        detail[(k["split"], k["label"], k["diagnosis"], k["source"])] += 1
    return {
        "per_split_label": {s: dict(sorted(c.items())) for s, c in by_label.items()},
        "per_split_label_diagnosis_source": [
            {"split": s, "label": lab, "diagnosis": dx, "source_collection": src, "count": n}
            for (s, lab, dx, src), n in sorted(detail.items())],
    }


def build_manifest(config: PreprocessConfig, layout: str, shards: list[dict],
                   rejections: list[Rejection], kept: list[dict], inputs_read: int,
                   layout_counters: dict, near_duplicate_groups=()) -> dict:
    """Pure: the manifest as a dict, checking that every input is accounted for.

    near_duplicate_groups: the sorted groups of image ids plan_dataset found perceptually
    near-identical (with --near_duplicates=drop, all but each group's first were dropped).
    """
    totals = collections.Counter(r.kind for r in rejections)
    written = len(kept)
    accounted = written + totals["rejected"] + totals["filtered"] + totals["duplicate"]
    if accounted != inputs_read:
        raise RuntimeError(f"bookkeeping bug: read {inputs_read} inputs but accounted for "
                           f"{accounted} (written {written}, {dict(totals)})")
    counts = summarize_counts(kept)
    datasets: dict = {}
    for size in config.image_sizes:
        datasets[str(size)] = {}
        for split in SPLIT_NAMES:
            mine = sorted((s for s in shards if s["size"] == size and s["split"] == split),
                          key=lambda s: s["path"])
            datasets[str(size)][split] = {
                "records": sum(s["records"] for s in mine),
                "counts": counts["per_split_label"][split],
                "shards": [{k: s[k] for k in ("path", "records", "bytes", "sha256")} for s in mine],
            }
    reasons = collections.Counter((r.kind, r.reason) for r in rejections)
    run_config = {k: v for k, v in config.to_json_dict().items() if k not in ("output", "overwrite")}
    return {
        "schema_version": schema.SCHEMA_VERSION,
        "synthetic": config.synthetic,
        "layout": layout,
        "image_sizes": list(config.image_sizes),
        "image_format": config.image_format,
        "resize_mode": config.resize_mode,
        "compression": config.tf_compression,
        "config": run_config,
        "totals": {"read": inputs_read, "written": written, "rejected": totals["rejected"],
                   "filtered": totals["filtered"], "duplicates": totals["duplicate"]},
        "reasons": {f"{kind}:{reason}": n for (kind, reason), n in sorted(reasons.items())},
        "layout_counters": dict(sorted(layout_counters.items())),
        "counts": counts,
        "datasets": datasets,
        "near_duplicate_groups": [list(g) for g in sorted(near_duplicate_groups)],
        "near_duplicates": {
            "groups": len(near_duplicate_groups),
            "images": sum(len(g) for g in near_duplicate_groups),
            "max_distance": {"coarse_bits": image_checks.COARSE_MAX_DISTANCE,
                             "fine_bits": image_checks.FINE_MAX_DISTANCE}},
    }


def finalize(_, config: PreprocessConfig, layout: str, inputs_read: int, layout_counters: dict,
             shards: list[dict], rejections: list[Rejection], kept: tuple,
             near_duplicate_groups: tuple = ()) -> dict:
    """Moves shards into place, writes rejects.jsonl, then manifest.json; returns the manifest."""
    manifest = build_manifest(config, layout, shards, list(rejections), list(kept),
                              inputs_read, layout_counters, near_duplicate_groups)
    for shard in shards:
        source, final = join(config.output, INCOMPLETE_DIR, shard["path"]), join(config.output,
                                                                                 shard["path"])
        if not fileio.exists(source) and fileio.exists(final):
            continue  # moved by an earlier attempt of this step (runners retry failed bundles)
        fileio.rename(source, final)
    fileio.delete_tree(join(config.output, INCOMPLETE_DIR))
    ordered = sorted(rejections, key=lambda r: (r.image_id, r.path, r.reason))
    fileio.write_bytes(join(config.output, REJECTS_NAME),
                       "".join(r.to_json() + "\n" for r in ordered).encode("utf-8"))
    fileio.write_bytes(join(config.output, MANIFEST_NAME),
                       (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode("utf-8"))
    logging.info("wrote %s", join(config.output, MANIFEST_NAME))
    return manifest
