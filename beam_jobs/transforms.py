"""The data engine's Beam steps: small DoFns around the pure functions, and one PTransform.

Every failure path increments a Metrics counter and goes to a dead-letter output (a
Rejection), never to the floor: read = written + rejected + filtered + duplicates.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import time
from typing import Iterable, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from beam_jobs import splits
from beam_jobs.config import PreprocessConfig
from isicflow import imaging, schema
from isicflow.metadata import LABEL_INDEX, UNKNOWN, LesionRecord, Rejection

NAMESPACE = "isicflow"
REJECTED, FILTERED, DUPLICATE = "rejected", "filtered", "duplicate"


@dataclasses.dataclass(frozen=True)
class ProcessedImage:
    record: LesionRecord
    sha256: str
    source_width: int
    source_height: int
    encoded: dict  # {size: bytes}


@dataclasses.dataclass(frozen=True)
class PlannedImage:
    image_id: str
    group_key: str
    label: str


def _count(name: str, n: int = 1) -> None:
    Metrics.counter(NAMESPACE, name).inc(n)


def filter_reason(record: LesionRecord, config: PreprocessConfig) -> Optional[tuple[str, str]]:
    """Why a flag drops this record, as (reason, detail); None keeps it. Pure."""
    image_type = record.image_type.strip().lower()
    if config.image_types and image_type and image_type not in config.image_types:
        return "filtered_image_type", record.image_type
    if record.source_collection and record.source_collection.upper() in config.exclude_collections:
        return "filtered_collection", record.source_collection
    if config.label_policy == "benign_malignant" and record.label == UNKNOWN:
        return "filtered_label", f"label {record.label!r} under --label_policy=benign_malignant"
    short = min(record.original_width or 0, record.original_height or 0)
    if config.min_original_size and record.original_width and record.original_height \
            and short < config.min_original_size:
        return "filtered_too_small", f"original short side {short} < {config.min_original_size}"
    return None


class FilterRecords(beam.DoFn):
    """Applies the flag filters; dropped records go to the 'filtered' output."""

    def __init__(self, config: PreprocessConfig):
        self.config = config

    def process(self, record: LesionRecord):
        why = filter_reason(record, self.config)
        if why is None:
            yield record
            return
        _count(why[0])
        yield beam.pvalue.TaggedOutput(FILTERED, Rejection(
            record.image_path, record.image_id, why[0], why[1], kind=FILTERED))


def read_bytes(path: str) -> bytes:
    with FileSystems.open(path) as f:  # local, gs://, s3:// alike
        return f.read()


class ProcessImage(beam.DoFn):
    """Read -> hash -> decode once (reduced scale where it pays) -> resize and encode per size."""

    LOG_EVERY = 200

    def __init__(self, config: PreprocessConfig):
        self.config = config

    def setup(self):
        self._seen, self._started = 0, time.monotonic()
        self._resizers = {size: imaging.compiled_resizer(size, self.config.resize_mode)
                          for size in self.config.image_sizes}

    def _reject(self, record: LesionRecord, reason: str, detail: str, kind: str = REJECTED):
        _count(reason)
        return beam.pvalue.TaggedOutput(kind, Rejection(record.image_path, record.image_id,
                                                        reason, detail, kind=kind))

    def _progress(self) -> None:
        self._seen += 1
        if self._seen % self.LOG_EVERY == 0:
            rate = self._seen / max(time.monotonic() - self._started, 1e-9)
            logging.info("ProcessImage: %d images in this worker, %.1f images/s", self._seen, rate)

    def process(self, record: LesionRecord):
        cfg = self.config
        self._progress()
        try:
            data = read_bytes(record.image_path)
        except Exception as e:  # missing file, permissions, network: recorded, job goes on
            yield self._reject(record, "unreadable_file", f"{type(e).__name__}: {e}")
            return
        target = max(cfg.image_sizes) if cfg.reduced_decode else None
        try:
            decoded = imaging.decode_image(data, target=target, mode=cfg.resize_mode,
                                           max_pixels=cfg.max_pixels)
        except imaging.ImageRejected as e:
            yield self._reject(record, e.reason, e.detail)
            return
        short = min(record.original_width or decoded.source_width,
                    record.original_height or decoded.source_height)
        if cfg.min_original_size and short < cfg.min_original_size:
            yield self._reject(record, "filtered_too_small",
                               f"original short side {short} < {cfg.min_original_size}", FILTERED)
            return
        encoded = {}
        for size in cfg.image_sizes:
            pixels = self._resizers[size](decoded.pixels).numpy()
            encoded[size] = imaging.encode_image(pixels, cfg.image_format, cfg.jpeg_quality)
        _count("images_decoded")
        if decoded.scale_denominator > 1:
            _count("reduced_scale_decodes")
        yield ProcessedImage(record, hashlib.sha256(data).hexdigest(),
                             decoded.source_width, decoded.source_height, encoded)


def keep_first_of_duplicates(item: tuple[str, Iterable[ProcessedImage]]):
    """Byte-identical images: keep the smallest image id, record the others as duplicates."""
    _, images = item
    ordered = sorted(images, key=lambda p: p.record.image_id)
    yield ordered[0]
    for dup in ordered[1:]:
        _count("duplicate_content")
        yield beam.pvalue.TaggedOutput(DUPLICATE, Rejection(
            dup.record.image_path, dup.record.image_id, "duplicate_content",
            f"same bytes as {ordered[0].record.image_id} (sha256 {dup.sha256[:16]})",
            kind=DUPLICATE))


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
    """Global decisions that need every kept image: balance, split and rank within split."""

    split_of: dict          # image_id -> split
    rank_of: dict           # image_id -> position in its split, ordered by image_id
    balanced_out: frozenset  # image ids dropped by --balance=undersample


def plan_dataset(items: list[PlannedImage], config: PreprocessConfig) -> DatasetPlan:
    """Pure: decides balance and splits from (id, group, label) of every kept image."""
    items = sorted(items, key=lambda p: p.image_id)
    dropped: frozenset = frozenset()
    if config.balance == "undersample":
        keep = splits.select_balanced(((p.image_id, p.label) for p in items), config.seed)
        dropped = frozenset(p.image_id for p in items if p.image_id not in keep)
        items = [p for p in items if p.image_id in keep]
    by_group = splits.assign_splits(((p.group_key, p.label) for p in items),
                                    config.split_fractions, config.seed)
    split_of = {p.image_id: by_group[p.group_key] for p in items}
    rank_of, seen = {}, {s: 0 for s in splits.SPLIT_NAMES}
    for p in items:  # already sorted by image_id
        rank_of[p.image_id] = seen[split_of[p.image_id]]
        seen[split_of[p.image_id]] += 1
    return DatasetPlan(split_of, rank_of, dropped)


def shard_count(records: int, total_bytes: int, config: PreprocessConfig) -> int:
    """Shards for one (size, split): --num_shards, else by target size; never an empty shard."""
    if records == 0:
        return 0
    wanted = config.num_shards or math.ceil(total_bytes / (config.target_shard_mb * 2**20))
    return max(1, min(wanted, records))


def to_example(image: ProcessedImage, size: int, split: str, image_format: str) -> bytes:
    r = image.record
    return schema.encode_example({
        "image_id": r.image_id, "image_encoded": image.encoded[size],
        "image_format": image_format, "height": size, "width": size, "channels": 3,
        "label": LABEL_INDEX[r.label], "label_name": r.label, "diagnosis": r.diagnosis,
        "patient_id": r.patient_id, "lesion_id": r.lesion_id,
        "age_approx": -1.0 if r.age_approx is None else float(r.age_approx),
        "sex": r.sex, "anatom_site": r.anatom_site, "image_type": r.image_type,
        "source_collection": r.source_collection, "split": split,
        "content_sha256": image.sha256, "original_height": image.source_height,
        "original_width": image.source_width,
    })
