"""The data engine's Beam steps: small DoFns around pure functions (filter, decode and resize,
plan the dataset); preprocess.IsicToTFRecords wires them, and writing.WriteShard, together.

Every failure path increments a Metrics counter and goes to a dead-letter output (a
Rejection), never to the floor: read = written + rejected + filtered + duplicates.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import math
import os
import posixpath
import time
import uuid
from typing import Optional

import apache_beam as beam

from beam_jobs import splits, timeline
from beam_jobs.counters import count as _count
from beam_jobs.config import PreprocessConfig
from beam_jobs.spool import SPOOL_DIR, SpoolWriter
from beam_jobs.writing import (INCOMPLETE_DIR, kept_summary, parse_kept_summary,
                               spooled_record)
from isicflow import fileio, image_checks, imaging
from isicflow.fileio import join_path
from isicflow.metadata import UNKNOWN, LesionRecord, Rejection

REJECTED, FILTERED, DUPLICATE = "rejected", "filtered", "duplicate"
KEPT = "kept"  # plan_shards' summary of the images written, for the manifest
NEAR_DUPLICATES = "near_duplicates"  # plan_shards' near-duplicate groups, for the manifest


@dataclasses.dataclass(frozen=True, slots=True)
class ImageKey:
    """One decoded image as the plan sees it: what dedup, near-dedup, balance, splits, shard
    sizes and the manifest's counts need, and where the rest waits. Every image's key reaches
    the one step that plans the dataset (and the runner may hold each in a shuffle), so it is
    kept small: ~270 bytes encoded (to_wire), ~900 as an object. The full record and the
    pixels are in the spool (beam_jobs.spool), read back only by WriteShard."""

    image_id: str
    image_path: str  # named by the rejects of duplicates and balance drops
    group: str       # LesionRecord.group_key: what a split keeps together
    label: str
    sha256: bytes    # digest of the source file's bytes: byte-identical duplicates
    summary: str     # writing.kept_summary: the manifest's counts of it, split left out
    spool_file: str  # name of the bundle's spool file in OUTPUT/.incomplete/spool/
    offset: int      # where its bytes start there: writing.spooled_record, then each encoding
    lengths: tuple[int, ...]  # of those, contiguous: the record, then each of config.image_sizes
    # pack_phash of the decoded image (None: --near_duplicates=off, or a degenerate image kept
    # by --keep_degenerate, which has no picture to compare).
    phash: Optional[bytes] = None

    def shard_item(self, size_index: int) -> tuple:
        """What WriteShard needs to write it at config.image_sizes[size_index], as a plain tuple
        (the runner's coder writes tuples natively): (spool file, record offset, record length,
        encoding offset, encoding length)."""
        start = self.offset + sum(self.lengths[:size_index + 1])
        return (self.spool_file, self.offset, self.lengths[0], start,
                self.lengths[size_index + 1])

    def to_wire(self) -> tuple:
        """Its fields as a plain tuple, which Beam's coder writes natively, for the plan's
        shuffle: ~270 bytes with a perceptual hash, where the dataclass itself is pickled with
        its class's name (~330), and the FnApiRunner (two threads) holds ~10 copies of that
        shuffle at once on its way through gRPC. from_wire turns it back, in the plan step."""
        return tuple(getattr(self, name) for name in ImageKey.__slots__)

    @classmethod
    def from_wire(cls, fields: tuple) -> "ImageKey":
        return cls(*fields)


def pack_phash(phash: image_checks.PerceptualHash) -> bytes:
    """40 bytes (coarse, then fine, big-endian): a third of the NamedTuple of two ints."""
    return (phash.coarse.to_bytes(image_checks.COARSE_BITS // 8, "big")
            + phash.fine.to_bytes(image_checks.FINE_BITS // 8, "big"))


def unpack_phash(packed: bytes) -> image_checks.PerceptualHash:
    cut = image_checks.COARSE_BITS // 8
    return image_checks.PerceptualHash(int.from_bytes(packed[:cut], "big"),
                                       int.from_bytes(packed[cut:], "big"))


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
    """Applies the flag filters; dropped records go to the 'filtered' output (and count as done
    for the progress line, timeline.ProgressCounter in `progress_dir`, when given)."""

    def __init__(self, config: PreprocessConfig, progress_dir: Optional[str] = None):
        self.config = config
        self.progress_dir = progress_dir

    def setup(self):
        self._done = timeline.ProgressCounter(self.progress_dir)

    def finish_bundle(self):
        self._done.flush()

    def process(self, record: LesionRecord):
        why = filter_reason(record, self.config)
        if why is None:
            yield record
            return
        self._done.add()
        _count(why[0])
        yield beam.pvalue.TaggedOutput(FILTERED, Rejection(
            record.image_path, record.image_id, why[0], why[1], kind=FILTERED))


class ProcessImage(beam.DoFn):
    """Read -> hash -> decode once (reduced scale where it pays) -> resize per size -> reject
    degenerate images, perceptual hash -> encode per size; the record and the encoded bytes go
    to this bundle's spool file (beam_jobs.spool), and only a small ImageKey goes downstream.

    The degeneracy test and the perceptual hash (isicflow.image_checks) share one 32x32 luma
    thumbnail, taken from the smallest squash-resized output (box filters from there cost
    ~20 us), or from the decoded image under the other resize modes, whose outputs are
    cropped or padded: no second decode, ~0.1 ms an image (measured in the tests).
    """

    LOG_EVERY = 200

    def __init__(self, config: PreprocessConfig, progress_dir: Optional[str] = None):
        self.config = config
        self.progress_dir = progress_dir  # timeline.ProgressCounter's folder: every record done

    def setup(self):
        self._spool = SpoolWriter(join_path(self.config.output, INCOMPLETE_DIR, SPOOL_DIR))
        # The rate counts from here: the worker's own work, not its start-up.
        self._seen, self._started = 0, time.monotonic()
        self._instance = uuid.uuid4().hex[:8]  # one rate per DoFn instance, whatever thread
        self._clock = timeline.ImageClock()  # --profile_phases: first/last decode, CPU per image
        self._done = timeline.ProgressCounter(self.progress_dir)

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
        self._done.flush()
        if self._seen:
            self._log_rate()

    def teardown(self):
        if hasattr(self, "_spool"):  # setup may have failed before making it
            self._spool.close()
            self._done.flush()

    def process(self, record: LesionRecord):
        self._progress()
        yield from self._process(record)
        self._done.add()  # kept, rejected or filtered: done either way

    def _process(self, record: LesionRecord):
        cfg = self.config
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
        sha256 = hashlib.sha256(data).digest()
        spans = [self._spool.append(spooled_record(record, sha256.hex(), decoded.source_width,
                                                   decoded.source_height))]
        spans += [self._spool.append(imaging.encode_image(resized[size], cfg.image_format,
                                                          cfg.jpeg_quality))
                  for size in cfg.image_sizes]
        _count("images_decoded")
        if decoded.scale_denominator > 1:
            _count("reduced_scale_decodes")
        self._clock.end(clock)
        yield ImageKey(record.image_id, record.image_path, record.group_key, record.label, sha256,
                       kept_summary(record), posixpath.basename(spans[0].path), spans[0].offset,
                       tuple(ref.length for ref in spans),
                       None if phash is None else pack_phash(phash))


@dataclasses.dataclass(frozen=True)
class DatasetPlan:
    """Global decisions that need every decoded image, made from the small ImageKeys (the
    records and encoded pixels wait in spool files until WriteShard reads them)."""

    duplicate_of: dict      # image_id -> the image id kept for the same bytes
    balanced_out: frozenset  # image ids dropped by --balance=undersample
    split_of: dict          # image_id -> split, for every image written
    rank_of: dict           # image_id -> position in its split, ordered by image_id
    shard_counts: dict      # (size, split) -> number of shards
    kept: tuple             # (((split, summary), count), ...) of the images written, sorted
    near_duplicate_of: dict = dataclasses.field(default_factory=dict)  # --near_duplicates=drop:
    #                         image_id -> the smallest id of its near-duplicate group, kept
    near_duplicate_groups: tuple = ()  # (sorted ids, ...) of every near-duplicate group found
    train_fraction_out: frozenset = frozenset()  # train image ids left out by --train_fraction

    @property
    def written(self) -> int:
        return sum(n for _, n in self.kept)


def fold_stratum(summary: str) -> str:
    """What cross-validation folds spread evenly (beam_jobs.splits.assign_folds): the label and
    the diagnosis of an image (its kept_summary), so each of a seven-class metric's rare classes
    is about 1/K in every fold; the fixed split (--split) stratifies by label alone, as before."""
    entry = parse_kept_summary(summary)
    return f"{entry['label']}/{entry['diagnosis']}"


def plan_dataset(images: list[ImageKey], config: PreprocessConfig) -> DatasetPlan:
    """Pure: duplicates (smallest id kept), near-duplicates (grouped, or all but the smallest id
    dropped), balance, group-aware splits, --train_fraction's share of the train groups, ranks,
    shard counts.

    Near-duplicate groups are found among the images left after byte-identical duplicates
    (isicflow.image_checks.near_duplicate_groups), before balancing. With 'group', each group is
    joined with the patient/lesion groups of its members (image_checks.merge_groups), so
    neither a near-duplicate group nor any original group can straddle splits.
    """
    images = sorted(images, key=lambda im: im.image_id)
    first_of_sha: dict[str, str] = {}
    duplicate_of = {}
    for im in images:  # sorted, so the first seen is the smallest id
        if im.sha256 in first_of_sha:
            duplicate_of[im.image_id] = first_of_sha[im.sha256]
        else:
            first_of_sha[im.sha256] = im.image_id
    del first_of_sha
    kept_images = [im for im in images if im.image_id not in duplicate_of]
    near_groups: list = []
    near_duplicate_of: dict = {}
    if config.near_duplicates != "off":
        hashes = {im.image_id: unpack_phash(im.phash) for im in kept_images
                  if im.phash is not None}
        near_groups = image_checks.near_duplicate_groups(hashes)
        del hashes
        if config.near_duplicates == "drop":
            near_duplicate_of = {other: group[0] for group in near_groups for other in group[1:]}
            kept_images = [im for im in kept_images if im.image_id not in near_duplicate_of]
    dropped: frozenset = frozenset()
    if config.balance == "undersample":
        keep = splits.select_balanced(((im.image_id, im.label) for im in kept_images), config.seed)
        dropped = frozenset(im.image_id for im in kept_images if im.image_id not in keep)
        kept_images = [im for im in kept_images if im.image_id in keep]
    group_of = {im.image_id: im.group for im in kept_images}
    if config.near_duplicates == "group":
        group_of = image_checks.merge_groups(group_of, near_groups)
    if config.folds:  # cross-validation: one fold tests, the next validates, the rest train
        fold_of = splits.assign_folds(((group_of[im.image_id], fold_stratum(im.summary))
                                       for im in kept_images), config.folds, config.seed)
        by_group = {group: splits.cross_validation_split(f, config.fold, config.folds)
                    for group, f in fold_of.items()}
    else:
        by_group = splits.assign_splits(((group_of[im.image_id], im.label) for im in kept_images),
                                        config.split_fractions, config.seed)
    split_of = {im.image_id: by_group[group_of[im.image_id]] for im in kept_images}
    left_out: frozenset = frozenset()
    if config.train_fraction < 1.0:  # after the split, so validation and test do not move
        train = [im for im in kept_images if split_of[im.image_id] == "train"]
        keep_groups = splits.subsample_groups(
            ((group_of[im.image_id], im.label) for im in train), config.train_fraction,
            config.seed)
        left_out = frozenset(im.image_id for im in train
                             if group_of[im.image_id] not in keep_groups)
        kept_images = [im for im in kept_images if im.image_id not in left_out]
        for image_id in left_out:
            del split_of[image_id]
    del group_of, by_group
    rank_of, seen = {}, {s: 0 for s in splits.SPLITS}
    totals: dict = {}
    kept: collections.Counter = collections.Counter()
    for im in kept_images:
        split = split_of[im.image_id]
        rank_of[im.image_id] = seen[split]
        seen[split] += 1
        kept[(split, im.summary)] += 1
        for size, nbytes in zip(config.image_sizes, im.lengths[1:]):
            count, total = totals.get((size, split), (0, 0))
            totals[(size, split)] = (count + 1, total + nbytes)
    shard_counts = {key: shard_count(n, b, config) for key, (n, b) in totals.items()}
    return DatasetPlan(duplicate_of, dropped, split_of, rank_of, shard_counts,
                       tuple(sorted(kept.items())), near_duplicate_of,
                       tuple(tuple(g) for g in near_groups), left_out)


def plan_shards(images: list[ImageKey], config: PreprocessConfig):
    """Plans the dataset and emits it: one element per shard, ((size, split, index, count),
    [ImageKey.shard_item of each image, in id order]); every image it does not write to its
    output with the reason (_why_dropped); the kept summary to KEPT; the near-duplicate groups
    to NEAR_DUPLICATES. One step, because the keys are small: no second pass over them is needed."""
    plan = plan_dataset(images, config)
    shards: dict = {}
    for image in sorted(images, key=lambda im: im.image_id):
        image_id = image.image_id
        dropped = _why_dropped(plan, image, config)
        if dropped is not None:
            reason, detail, kind = dropped
            _count(reason)
            yield beam.pvalue.TaggedOutput(kind, Rejection(image.image_path, image_id, reason,
                                                           detail, kind=kind))
            continue
        split, rank = plan.split_of[image_id], plan.rank_of[image_id]
        for i, size in enumerate(config.image_sizes):
            count = plan.shard_counts[(size, split)]
            shards.setdefault((size, split, rank % count, count), []).append(image.shard_item(i))
    for key in sorted(shards):
        yield key, shards.pop(key)
    yield beam.pvalue.TaggedOutput(KEPT, plan.kept)
    yield beam.pvalue.TaggedOutput(NEAR_DUPLICATES, plan.near_duplicate_groups)


def _why_dropped(plan: DatasetPlan, image: ImageKey, config: PreprocessConfig
                 ) -> tuple[str, str, str] | None:
    """(reason, detail, kind) of an image the plan does not write, else None: a byte copy or a
    near copy (DUPLICATE), --balance's or --train_fraction's leftovers (FILTERED)."""
    image_id = image.image_id
    if image_id in plan.duplicate_of:
        return ("duplicate_content", f"same bytes as {plan.duplicate_of[image_id]} (sha256 "
                f"{image.sha256.hex()[:16]})", DUPLICATE)
    if image_id in plan.near_duplicate_of:
        return ("near_duplicate", f"near-identical to {plan.near_duplicate_of[image_id]} "
                "(perceptual hash; --near_duplicates=drop keeps the smallest id)", DUPLICATE)
    if image_id in plan.balanced_out:
        return "filtered_balance", "dropped by --balance=undersample", FILTERED
    if image_id in plan.train_fraction_out:
        return ("filtered_train_fraction", f"in the train split, left out by "
                f"--train_fraction={config.train_fraction} (a seeded share of its "
                "patient/lesion groups per label)", FILTERED)
    return None


def shard_count(records: int, total_bytes: int, config: PreprocessConfig) -> int:
    """Shards for one (size, split): --num_shards, else by target size; never an empty shard."""
    if records == 0:
        return 0
    wanted = config.num_shards or math.ceil(total_bytes / (config.target_shard_mb * 2**20))
    return max(1, min(wanted, records))
