"""The data engine's Beam steps: small DoFns around pure functions (filter, decode and resize,
plan the dataset); preprocess.IsicToTFRecords wires them, and writing.WriteShard, together.

Every failure path increments a Metrics counter and goes to a dead-letter output (a
Rejection), never to the floor: read = written + rejected + filtered + duplicates.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
import uuid
from typing import Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs import splits, timeline
from beam_jobs.config import PreprocessConfig
from beam_jobs.spool import SPOOL_DIR, SpoolRef, SpoolWriter
from beam_jobs.writing import INCOMPLETE_DIR
from isicflow import fileio, image_checks, imaging
from isicflow.dataset import kept_entry
from isicflow.fileio import join_path
from isicflow.metadata import UNKNOWN, LesionRecord, Rejection

NAMESPACE = "isicflow"
REJECTED, FILTERED, DUPLICATE = "rejected", "filtered", "duplicate"
KEPT = "kept"  # plan_shards' summary of the images written, for the manifest
NEAR_DUPLICATES = "near_duplicates"  # plan_shards' near-duplicate groups, for the manifest


@dataclasses.dataclass(frozen=True)
class ProcessedImage:
    """A decoded image without its pixels: metadata, and where each size's encoding is spooled."""

    record: LesionRecord
    sha256: str
    source_width: int
    source_height: int
    encoded: dict[int, SpoolRef]
    # Perceptual hash of the decoded image (None: --near_duplicates=off, or a degenerate image
    # kept by --keep_degenerate, which has no picture to compare).
    phash: Optional[image_checks.PerceptualHash] = None


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


class ProcessImage(beam.DoFn):
    """Read -> hash -> decode once (reduced scale where it pays) -> resize per size -> reject
    degenerate images, perceptual hash -> encode per size; the encoded bytes go to this
    bundle's spool file (beam_jobs.spool), not downstream.

    The degeneracy test and the perceptual hash (isicflow.image_checks) share one 32x32 luma
    thumbnail, taken from the smallest squash-resized output (box filters from there cost
    ~20 us), or from the decoded image under the other resize modes, whose outputs are
    cropped or padded: no second decode, ~0.1 ms an image (measured in the tests).
    """

    LOG_EVERY = 200

    def __init__(self, config: PreprocessConfig):
        self.config = config

    def setup(self):
        self._spool = SpoolWriter(join_path(self.config.output, INCOMPLETE_DIR, SPOOL_DIR))
        self._decoded = Metrics.counter(NAMESPACE, "images_decoded")
        self._reduced = Metrics.counter(NAMESPACE, "reduced_scale_decodes")
        # The rate counts from here: the worker's own work, not its start-up.
        self._seen, self._started = 0, time.monotonic()
        self._instance = uuid.uuid4().hex[:8]  # one rate per DoFn instance, whatever thread
        self._clock = timeline.ImageClock()  # --profile_phases: first/last decode, CPU per image

    def _reject(self, record: LesionRecord, reason: str, detail: str, kind: str = REJECTED):
        _count(reason)
        return beam.pvalue.TaggedOutput(kind, Rejection(record.image_path, record.image_id,
                                                        reason, detail, kind=kind))

    def _log_rate(self) -> None:
        rate = self._seen / max(time.monotonic() - self._started, 1e-9)
        logging.info("ProcessImage[pid %d instance %s]: %d images in this worker, %.1f images/s",
                     os.getpid(), self._instance, self._seen, rate)

    def _progress(self) -> None:
        self._seen += 1
        if self._seen % self.LOG_EVERY == 0:
            self._log_rate()

    def finish_bundle(self):
        self._spool.close()  # every SpoolRef this bundle emitted is now readable
        if self._seen:
            self._log_rate()

    def teardown(self):
        if hasattr(self, "_spool"):  # setup may have failed before making it
            self._spool.close()

    def process(self, record: LesionRecord):
        cfg = self.config
        self._progress()
        clock = self._clock.begin()
        try:
            data = fileio.read_bytes(record.image_path)  # as stored, whatever its name
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
        resized = {size: imaging.resize_pil(decoded.image, size, cfg.resize_mode)
                   for size in cfg.image_sizes}
        luma = image_checks.luma_thumbnail(
            image_checks.thumbnail_source(decoded.image, resized, cfg.resize_mode))
        degenerate = image_checks.degeneracy(luma)
        if degenerate is not None:
            test, score = degenerate
            if not cfg.keep_degenerate:
                yield self._reject(record, "degenerate_image", image_checks.degenerate_detail(
                    test, score, hint="--keep_degenerate keeps it"))
                return
            _count("degenerate_kept")
        phash = None
        if cfg.near_duplicates != "off" and degenerate is None:
            phash = image_checks.perceptual_hash(luma)
        encoded = {size: self._spool.append(
                       imaging.encode_image(resized[size], cfg.image_format, cfg.jpeg_quality))
                   for size in cfg.image_sizes}
        self._decoded.inc()
        if decoded.scale_denominator > 1:
            self._reduced.inc()
        self._clock.end(clock)
        yield ProcessedImage(record, hashlib.sha256(data).hexdigest(),
                             decoded.source_width, decoded.source_height, encoded, phash)


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
    """Global decisions that need every decoded image, made from the light ProcessedImages (the
    encoded pixels wait in spool files until WriteShard reads them)."""

    duplicate_of: dict      # image_id -> the image id kept for the same bytes
    balanced_out: frozenset  # image ids dropped by --balance=undersample
    split_of: dict          # image_id -> split, for every image written
    rank_of: dict           # image_id -> position in its split, ordered by image_id
    shard_counts: dict      # (size, split) -> number of shards
    kept: tuple             # ({split, label, diagnosis, source}, ...) of every image written
    near_duplicate_of: dict = dataclasses.field(default_factory=dict)  # --near_duplicates=drop:
    #                         image_id -> the smallest id of its near-duplicate group, kept
    near_duplicate_groups: tuple = ()  # (sorted ids, ...) of every near-duplicate group found


def plan_dataset(images: list[ProcessedImage], config: PreprocessConfig) -> DatasetPlan:
    """Pure: duplicates (smallest id kept), near-duplicates (grouped, or all but the smallest id
    dropped), balance, group-aware splits, ranks, shard counts.

    Near-duplicate groups are found among the images left after byte-identical duplicates
    (isicflow.image_checks.near_duplicate_groups), before balancing. With 'group', each group is
    joined with the patient/lesion groups of its members (image_checks.merge_groups), so
    neither a near-duplicate group nor any original group can straddle splits.
    """
    images = sorted(images, key=lambda im: im.record.image_id)
    first_of_sha: dict[str, str] = {}
    duplicate_of = {}
    for im in images:  # sorted, so the first seen is the smallest id
        if im.sha256 in first_of_sha:
            duplicate_of[im.record.image_id] = first_of_sha[im.sha256]
        else:
            first_of_sha[im.sha256] = im.record.image_id
    records = [im.record for im in images if im.record.image_id not in duplicate_of]
    near_groups: list = []
    near_duplicate_of: dict = {}
    if config.near_duplicates != "off":
        hashes = {im.record.image_id: im.phash for im in images
                  if im.phash is not None and im.record.image_id not in duplicate_of}
        near_groups = image_checks.near_duplicate_groups(hashes)
        if config.near_duplicates == "drop":
            near_duplicate_of = {other: group[0] for group in near_groups for other in group[1:]}
            records = [r for r in records if r.image_id not in near_duplicate_of]
    encoded_bytes = {im.record.image_id: {size: ref.length for size, ref in im.encoded.items()}
                     for im in images}
    dropped: frozenset = frozenset()
    if config.balance == "undersample":
        keep = splits.select_balanced(((r.image_id, r.label) for r in records), config.seed)
        dropped = frozenset(r.image_id for r in records if r.image_id not in keep)
        records = [r for r in records if r.image_id in keep]
    group_of = {r.image_id: r.group_key for r in records}
    if config.near_duplicates == "group":
        group_of = image_checks.merge_groups(group_of, near_groups)
    by_group = splits.assign_splits(((group_of[r.image_id], r.label) for r in records),
                                    config.split_fractions, config.seed)
    split_of = {r.image_id: by_group[group_of[r.image_id]] for r in records}
    rank_of, seen = {}, {s: 0 for s in splits.SPLITS}
    totals: dict = {}
    for r in records:
        split = split_of[r.image_id]
        rank_of[r.image_id] = seen[split]
        seen[split] += 1
        for size, nbytes in encoded_bytes[r.image_id].items():
            count, total = totals.get((size, split), (0, 0))
            totals[(size, split)] = (count + 1, total + nbytes)
    shard_counts = {key: shard_count(n, b, config) for key, (n, b) in totals.items()}
    kept = tuple(kept_entry(r, split_of[r.image_id]) for r in records)
    return DatasetPlan(duplicate_of, dropped, split_of, rank_of, shard_counts, kept,
                       near_duplicate_of, tuple(tuple(g) for g in near_groups))


def plan_shards(images: list[ProcessedImage], config: PreprocessConfig):
    """Plans the dataset and emits it: one element per shard, ((size, split, index, count),
    [images in id order]); duplicates, near-duplicates dropped and balance drops to their
    outputs; the kept summary to KEPT; the near-duplicate groups to NEAR_DUPLICATES. One step,
    because the images are light: no second pass over them is needed."""
    plan = plan_dataset(images, config)
    shards: dict = {}
    for image in sorted(images, key=lambda im: im.record.image_id):
        r = image.record
        if r.image_id in plan.duplicate_of:
            _count("duplicate_content")
            yield beam.pvalue.TaggedOutput(DUPLICATE, Rejection(
                r.image_path, r.image_id, "duplicate_content",
                f"same bytes as {plan.duplicate_of[r.image_id]} (sha256 {image.sha256[:16]})",
                kind=DUPLICATE))
            continue
        if r.image_id in plan.near_duplicate_of:
            _count("near_duplicate")
            yield beam.pvalue.TaggedOutput(DUPLICATE, Rejection(
                r.image_path, r.image_id, "near_duplicate",
                f"near-identical to {plan.near_duplicate_of[r.image_id]} (perceptual hash; "
                "--near_duplicates=drop keeps the smallest id)", kind=DUPLICATE))
            continue
        if r.image_id in plan.balanced_out:
            _count("filtered_balance")
            yield beam.pvalue.TaggedOutput(FILTERED, Rejection(
                r.image_path, r.image_id, "filtered_balance", "dropped by --balance=undersample",
                kind=FILTERED))
            continue
        split, rank = plan.split_of[r.image_id], plan.rank_of[r.image_id]
        for size in config.image_sizes:
            count = plan.shard_counts[(size, split)]
            shards.setdefault((size, split, rank % count, count), []).append(image)
    for key in sorted(shards):
        yield key, shards[key]
    yield beam.pvalue.TaggedOutput(KEPT, plan.kept)
    yield beam.pvalue.TaggedOutput(NEAR_DUPLICATES, plan.near_duplicate_groups)


def shard_count(records: int, total_bytes: int, config: PreprocessConfig) -> int:
    """Shards for one (size, split): --num_shards, else by target size; never an empty shard."""
    if records == 0:
        return 0
    wanted = config.num_shards or math.ceil(total_bytes / (config.target_shard_mb * 2**20))
    return max(1, min(wanted, records))
