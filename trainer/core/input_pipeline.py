"""The tf.data stream from the data engine's shards to (images, labels) batches. No model code.

Order of stages, and why:
  shuffled shard files -> parallel interleave of TFRecord readers (GZIP per the manifest)
  -> shuffle serialized records (cheap: compressed bytes) -> parse with the shared schema and
  decode in a parallel map -> label filter -> [cache decoded uint8 images]
  -> [shuffle decoded images, when cached] -> repeat -> augment + scale in a parallel map
  -> batch -> prefetch.
Augmentation uses stateless random ops seeded by (seed, element index), so a run with
--deterministic and a fixed seed sees the same images in the same order every time.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable, Mapping, Sequence

import tensorflow as tf
from absl import logging

from isicflow import dataset as dataset_lib, reader, schema
from trainer.core import augmentations, confirmation_mix as confirmation_mix_lib, synthetic_mix
from trainer.core.metadata_features import ENCODING_VERSION, FIELDS, check_fields

AUTOTUNE = tf.data.AUTOTUNE
LABEL_MODES = reader.LABEL_MODES
_PARSED_FEATURES = reader.PARSED_FEATURES
_MAX_SHUFFLE_BUFFER = 1024
# Per-record strings make_eval_dataset_with_metadata yields beside each prediction.
# Non-string fields (age_approx) come as strings too (tf.strings.as_string).
METADATA_FIELDS = ("image_id", "diagnosis", "anatom_site", "source_collection", "sex",
                   "age_approx", "fitzpatrick_skin_type", "extra_metadata_json")
# Fields --use_metadata encodes as the model's second input (trainer.core.metadata_features).
METADATA_INPUT_FIELDS = ("age_approx", "sex", "anatom_site")

# The study's augmentations (Keras ImageDataGenerator-style ranges, applied in tf ops).
MAX_HUE_DELTA = 0.04
SATURATION_RANGE = (0.8, 1.2)
MAX_BRIGHTNESS_DELTA = 0.1
CONTRAST_RANGE = (0.8, 1.2)
ZOOM_KEEP_RANGE = (0.8, 1.0)  # central crop keeps this fraction of the side, then resize back


def dataset_size(data_dir: str, split: str, image_size: int, labels: str = "binary", *,
                 manifest: Mapping[str, Any] | None = None) -> int:
    """Records make_dataset yields for one pass (before batching), from the manifest counts."""
    info = dataset_lib.split_info(dataset_lib.manifest_or_read(data_dir, manifest), image_size, split)
    return _count(info, labels)


def class_counts(data_dir: str, split: str, image_size: int, *,
                 manifest: Mapping[str, Any] | None = None) -> dict[str, int]:
    """{label_name: records} of one split, from the manifest (for class weights)."""
    info = dataset_lib.split_info(dataset_lib.manifest_or_read(data_dir, manifest), image_size, split)
    return dict(info.get("counts", {}))


def _count(info: dict, labels: str) -> int:
    return reader.count_records(info, labels)


def preprocess_for_eval(image_uint8: tf.Tensor) -> tf.Tensor:
    """uint8 [..., S, S, 3] -> float32 in [0, 1], nothing else (validation, test, serving)."""
    return tf.image.convert_image_dtype(image_uint8, tf.float32)


def preprocess_for_train(image_uint8: tf.Tensor, *, augment: bool, seed,
                         augmentation: str = "study") -> tf.Tensor:
    """uint8 [S,S,3] -> float32 in [0, 1]; with `augment`, the study's random flips, rot90,
    hue/saturation/brightness/contrast jitter and central-crop zoom, or, with
    augmentation="dermoscopy" or "camera", trainer.core.augmentations' dermoscopy_augment or
    camera_augment. `seed`: int
    shape [2], one per image, so the same (seed, image) always gets the same augmentation."""
    if augmentation not in augmentations.AUGMENTATIONS:
        raise ValueError(f"augmentation {augmentation!r} not in {augmentations.AUGMENTATIONS}")
    image = preprocess_for_eval(image_uint8)
    if not augment:
        return image
    if augmentation == "dermoscopy":
        return augmentations.dermoscopy_augment(image, seed)
    if augmentation == "camera":
        return augmentations.camera_augment(image, seed)
    size = tf.shape(image)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)
    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    image = tf.image.stateless_random_flip_up_down(image, seeds[1])
    quarter_turns = tf.random.stateless_uniform([], seeds[2], 0, 4, dtype=tf.int32)
    image = tf.image.rot90(image, quarter_turns)
    image = tf.image.stateless_random_hue(image, MAX_HUE_DELTA, seeds[3])
    image = tf.image.stateless_random_saturation(image, *SATURATION_RANGE, seeds[4])
    image = tf.image.stateless_random_brightness(image, MAX_BRIGHTNESS_DELTA, seeds[5])
    image = tf.image.stateless_random_contrast(image, *CONTRAST_RANGE, seeds[6])
    keep = tf.random.stateless_uniform([], seeds[7], *ZOOM_KEEP_RANGE)
    crop = tf.maximum(1, tf.cast(tf.round(tf.cast(size, tf.float32) * keep), tf.int32))
    offset = (size - crop) // 2
    image = tf.image.crop_to_bounding_box(image, offset, offset, crop, crop)
    image = tf.image.resize(image, tf.stack([size, size]), method="bilinear")
    return tf.clip_by_value(image, 0.0, 1.0)


def scale_to_range(image01: tf.Tensor, value_range: Sequence[float]) -> tf.Tensor:
    """[0, 1] -> [low, high]: (0, 1) is the study's rescale 1/255, (-1, 1) the DCGAN's tanh."""
    low, high = float(value_range[0]), float(value_range[1])
    if (low, high) == (0.0, 1.0):
        return image01
    return image01 * (high - low) + low


def shard_records(paths: Sequence[str], manifest: dict, *, shuffle_seed: int | None = None,
                  deterministic: bool | None = None) -> tf.data.Dataset:
    """Serialized records of the shard files, read 16 files at a time in parallel; the file
    order shuffled each epoch when shuffle_seed is given."""
    files = tf.data.Dataset.from_tensor_slices(list(paths))
    if shuffle_seed is not None:
        files = files.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    return files.interleave(
        lambda path: tf.data.TFRecordDataset(
            path, compression_type=dataset_lib.compression_type(manifest)),
        cycle_length=min(len(paths), 16), block_length=1, num_parallel_calls=AUTOTUNE,
        deterministic=deterministic)


def source_of(serialized: tf.Tensor) -> tf.Tensor:
    """The record's source_collection, parsed alone (cheap: one bytes feature). Not shared with
    parse_and_decode_with_offset's: this filters raw bytes before the shuffle and the decode,
    while there the field rides in the decode's own parse (measured ~10 us of ~100 a record)."""
    spec = schema.feature_spec(("source_collection",))
    return tf.io.parse_single_example(serialized, spec)["source_collection"]


def label_of(serialized: tf.Tensor) -> tf.Tensor:
    """The record's int64 label, parsed alone (as source_of), to filter before the decode."""
    return tf.io.parse_single_example(serialized, schema.feature_spec(("label",)))["label"]


def train_sources(manifest: Mapping[str, Any], split: str) -> list[str]:
    """The named sources holding benign or malignant records of the split, sorted (from the
    manifest's per_split_label_diagnosis_source counts)."""
    counts = dataset_lib.records_per_source(manifest, split, labelled_record)
    return sorted(s for s in counts if s)


BINARY_LABELS = ("benign", "malignant")  # the binary task's classes 0 and 1


def labelled_record(row: Mapping[str, Any]) -> bool:
    """Whether a manifest count row (dataset_lib.count_rows) is of the binary task."""
    return row["label"] in BINARY_LABELS


def binary_source_class_counts(manifest: Mapping[str, Any],
                               split: str) -> dict[str, dict[int, int]]:
    """{source_collection: {0: benign, 1: malignant records}} of one split (manifest rows;
    "" for records without a source)."""
    return dataset_lib.class_counts_per_source(
        manifest, split, lambda row: BINARY_LABELS.index(row["label"])
        if labelled_record(row) else -1)


def worker_files(paths: Sequence[str], index: int, workers: int) -> list[str]:
    """The shard files worker `index` of `workers` reads under file sharding (shard_by_file):
    the list dealt round-robin in manifest order, before any per-epoch shuffle, so each file
    is read by exactly one worker. ValueError when there are fewer files than workers (a
    worker would have none)."""
    if not 0 <= index < workers:
        raise ValueError(f"worker index {index} not in 0..{workers - 1}")
    if len(paths) < workers:
        raise ValueError(f"{len(paths)} shard file(s) for {workers} workers; each worker "
                         "reads whole files, so a split needs at least one per worker")
    return list(paths[index::workers])


def shard_by_file(ds: tf.data.Dataset) -> tf.data.Dataset:
    """ds, split between the workers of a multi-worker strategy by whole shard files
    (tf.data's FILE auto-sharding: worker_files says which), never by records, so no worker
    reads a file it then throws most of away. Outside a cluster it changes nothing."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.FILE
    return ds.with_options(options)


def augment_and_batch(ds: tf.data.Dataset, *, augment_seed: int | None, batch_size: int,
                      drop_remainder: bool, as_uint8: bool = False,
                      value_range: Sequence[float] = (0.0, 1.0),
                      label_dtype: tf.DType | None = None, augmentation: str = "study",
                      mix_seed: int | None = None, mixup_alpha: float = 0.0,
                      cutmix_alpha: float = 0.0) -> tf.data.Dataset:
    """(uint8 image, label) elements -> batches: augmented per image (seeded by augment_seed and
    the element index, counted after any repeat so epochs differ) and scaled to value_range;
    or, without augmentation, batched as uint8 first (4x fewer bytes than float32) and then
    scaled a whole batch at a time (the same values, less CPU), or left uint8 (as_uint8).
    Labels are cast to label_dtype (None: as they are). augmentation: the augmentation's
    name (preprocess_for_train). With mix_seed and a mixup/cutmix alpha, each batch is then
    mixed (augmentations.mix_batch, seeded by mix_seed and the batch index; soft labels)."""
    def cast(label):
        return label if label_dtype is None else tf.cast(label, label_dtype)

    mixing = mix_seed is not None and (mixup_alpha or cutmix_alpha)
    if mixing and as_uint8:
        raise ValueError("mixup/cutmix needs float images: as_uint8 must be False")
    if mixing:
        batched = augment_and_batch(ds, augment_seed=augment_seed, batch_size=batch_size,
                                    drop_remainder=drop_remainder, value_range=value_range,
                                    label_dtype=label_dtype, augmentation=augmentation)
        batched = tf.data.Dataset.zip((batched, tf.data.Dataset.counter()))

        def mix(pair, index):
            images, labels = pair
            if isinstance(images, (tuple, list)):
                raise ValueError("mixup/cutmix does not support a metadata input")
            return augmentations.mix_batch(
                images, labels, tf.stack([tf.constant(mix_seed, tf.int64), index]),
                mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)

        return batched.map(mix, num_parallel_calls=AUTOTUNE)

    if augment_seed is not None:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter()))

        def augment_one(pair, index):
            image, label = pair
            image = on_image(image, lambda im: scale_to_range(preprocess_for_train(
                im, augment=True, seed=tf.stack([tf.constant(augment_seed, tf.int64), index]),
                augmentation=augmentation),
                value_range))
            return image, cast(label)

        ds = ds.map(augment_one, num_parallel_calls=AUTOTUNE)
        return ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=AUTOTUNE)
    if as_uint8:
        return ds.map(lambda images, labels: (images, cast(labels)), num_parallel_calls=AUTOTUNE)
    return ds.map(lambda images, labels: (
        on_image(images, lambda im: scale_to_range(preprocess_for_eval(im), value_range)),
        cast(labels)), num_parallel_calls=AUTOTUNE)


def sample_streams(streams: Sequence[tf.data.Dataset], shares: Sequence[float],
                   seed: int) -> tf.data.Dataset:
    """Each element drawn from streams[i] with probability shares[i] / sum(shares), seeded: the
    one mixer of every balanced stream (classes, sources, (source, label) groups) and of
    one-source batches. The streams are repeated, so the mix is infinite: give fit a
    steps_per_epoch. Negative shares, or none above zero, are an error (TensorFlow would
    drop them or yield nothing)."""
    total = float(sum(shares))
    if len(streams) != len(shares) or not shares or min(shares) < 0 or total <= 0:
        raise ValueError(f"sample_streams needs one non-negative share per stream with a "
                         f"positive sum; got {len(streams)} streams, shares {list(shares)}")
    return tf.data.Dataset.sample_from_datasets(
        list(streams), weights=[float(share) / total for share in shares], seed=seed,
        stop_on_empty_dataset=True)


def group_mix(groups: Sequence[Any], shares: Sequence[float], *, seed: int,
              stream: Callable[[int, Any], tf.data.Dataset],
              each: Callable[[tf.data.Dataset, int], tf.data.Dataset] | None = None
              ) -> tf.data.Dataset:
    """One repeated stream per group of records, drawn at shares (sample_streams, seed + 2):
    both tasks' --source_balance and --source_batches (a group is a source),
    --source_label_independence ((source, label)) and --confirmation_weights (an index into
    the ConfirmationMix's groups). Group i's records are stream(seed + 11 i, group), passed
    through each(ds, seed + 11 i) when given (one-source batches: batched whole there, so that
    a batch is one source's). The per-group seeds live here, so every mix draws alike."""
    streams = []
    for i, group in enumerate(groups):
        group_seed = seed + 11 * i
        ds = stream(group_seed, group).repeat()
        streams.append(ds if each is None else each(ds, group_seed))
    return sample_streams(streams, shares, seed + 2)


def finish(ds: tf.data.Dataset, deterministic: bool) -> tf.data.Dataset:
    """The last step of make_dataset's streams (both tasks): prefetched, with the element
    order fixed (deterministic) or left to whichever parallel call finishes first."""
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return ds.prefetch(AUTOTUNE).with_options(options)


def _digest(manifest: dict) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]


# The record decoding lives in isicflow.reader (shared with isicflow.load); this name stays
# importable for the code that used it (trainer.cnn.diagnosis).
decode_record = _decode_record = reader.decode_record


def parse_and_decode(serialized: tf.Tensor, image_size: int):
    """One record -> (uint8 [S,S,3] image, int64 label) through the shared schema and decode
    (isicflow.reader, as isicflow.load reads it)."""
    record = reader.parse_record(serialized, image_size, fields=())
    return record["image"], record["label"]


def parse_and_decode_with_metadata(serialized: tf.Tensor, image_size: int,
                                   metadata_encoding: int = ENCODING_VERSION,
                                   metadata_fields: Sequence[str] = FIELDS):
    """--use_metadata: one record -> ((uint8 image, float32 [16] metadata features), label);
    the features by trainer.core.metadata_features.encode (its version metadata_encoding and
    its metadata_fields, the run's), missing values explicit."""
    from trainer.core import metadata_features

    record = tf.io.parse_single_example(
        serialized, schema.feature_spec(_PARSED_FEATURES + METADATA_INPUT_FIELDS))
    return ((_decode_record(record, image_size),
             metadata_features.encode_record(record, metadata_encoding, metadata_fields)),
            record["label"])


def offset_lookup(source_offsets: Mapping[str, float]) -> Callable[[tf.Tensor], tf.Tensor]:
    """source_collection (tf.string) -> its float32 offset (trainer.core.source_prior); 0.0
    for a source the mapping lacks, so an empty mapping gives every record 0 (validation;
    a lookup table cannot be empty, so that one is a constant)."""
    if not source_offsets:
        return lambda source: tf.constant(0.0, tf.float32)
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(source_offsets), tf.string),
        tf.constant([float(v) for v in source_offsets.values()], tf.float32)),
        default_value=0.0)
    return table.lookup


def source_index_lookup(source_names: Sequence[str]) -> Callable[[tf.Tensor], tf.Tensor]:
    """source_collection (tf.string) -> its int32 index in source_names (--source_adversary_
    weight, trainer.core.source_adversary). A record whose source is not in the list stops
    the stream with an InvalidArgumentError naming it (never a silent index). An empty list
    gives every record -1, never read (validation: the source head is training only)."""
    if not source_names:
        return lambda source: tf.constant(-1, tf.int32)
    names = list(source_names)
    if len(set(names)) != len(names) or not all(names):
        raise ValueError(f"source_names must be distinct and non-empty, got {names}")
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(names, tf.string), tf.range(len(names), dtype=tf.int32)), default_value=-1)

    def lookup(source: tf.Tensor) -> tf.Tensor:
        index = table.lookup(source)
        known = tf.debugging.Assert(index >= 0, [
            "record with source_collection", source, f"not among the training sources {names}"])
        with tf.control_dependencies([known]):
            return tf.identity(index)

    return lookup


def parse_and_decode_with_offset(serialized: tf.Tensor, image_size: int,
                                 lookup: Callable[[tf.Tensor], tf.Tensor]):
    """--source_logit_adjustment: one record -> ((uint8 image, float32 offset of its
    source_collection), label); --source_adversary_weight: the same with the int32 index of
    its source (source_index_lookup) in the offset's place."""
    record = reader.parse_record(serialized, image_size, fields=("source_collection",))
    return (record["image"], lookup(record["source_collection"])), record["label"]


def on_image(x, fn):
    """fn applied to the image of an element's input: x itself, or x[0] of (image, metadata)."""
    if isinstance(x, (tuple, list)):
        return (fn(x[0]),) + tuple(x[1:])
    return fn(x)


def make_eval_dataset_with_metadata(data_dir: str, split: str, *, image_size: int,
                                    batch_size: int, labels: str = "binary",
                                    manifest: Mapping[str, Any] | None = None,
                                    metadata_input: bool = False,
                                    metadata_encoding: int = ENCODING_VERSION,
                                    metadata_fields: Sequence[str] = FIELDS
                                    ) -> tf.data.Dataset:
    """Read-only accessor for scoring: (images float32 [B,S,S,3] in [0, 1], labels float32 [B],
    {field: tf.string [B]} for METADATA_FIELDS), in a deterministic order. metadata_input: the
    first item is (images, metadata float32 [B, 16]) instead, the input of a --use_metadata model
    (the features parse_and_decode_with_metadata gives training, by the run's
    metadata_encoding and metadata_fields).

    The same parse, decode, label filter and evaluation scaling (preprocess_for_eval) as
    make_dataset(training=False); only the metadata strings are parsed besides. make_dataset,
    which training uses, is untouched by it.
    """
    _check_args(split, image_size, batch_size, labels, (0.0, 1.0), "")
    manifest = dataset_lib.manifest_or_read(data_dir, manifest)
    info = dataset_lib.split_info(manifest, image_size, split)
    paths = dataset_lib.shard_paths(manifest, data_dir, image_size, split)
    if not paths or _count(info, labels) == 0:
        raise ValueError(f"{data_dir}: split {split!r} at {image_size}px has no records to "
                         f"score (manifest counts {info.get('counts')})")
    spec = schema.feature_spec(_PARSED_FEATURES + METADATA_FIELDS)

    def parse(serialized):
        record = tf.io.parse_single_example(serialized, spec)
        image = _decode_record(record, image_size)
        if metadata_input:
            from trainer.core import metadata_features

            image = (image, metadata_features.encode_record(record, metadata_encoding,
                                                            metadata_fields))
        return (image, record["label"],
                {name: record[name] if record[name].dtype == tf.string
                 else tf.strings.as_string(record[name]) for name in METADATA_FIELDS})

    ds = tf.data.TFRecordDataset(paths, compression_type=dataset_lib.compression_type(manifest),
                                 num_parallel_reads=min(len(paths), 16))  # deterministic order
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    if labels == "binary":
        ds = ds.filter(lambda image, label, meta: label >= 0)
    ds = ds.batch(batch_size).map(
        lambda images, label, meta: (on_image(images, preprocess_for_eval),
                                     tf.cast(label, tf.float32), meta),
        num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


def _check_args(split, image_size, batch_size, labels, value_range, cache) -> None:
    if split not in dataset_lib.SPLITS:
        raise ValueError(f"split {split!r} not in {dataset_lib.SPLITS}")
    if image_size <= 0 or batch_size <= 0:
        raise ValueError(f"need positive image_size and batch_size, got {image_size}, "
                         f"{batch_size}")
    if labels not in LABEL_MODES:
        raise ValueError(f"labels {labels!r} not in {LABEL_MODES}")
    if len(value_range) != 2 or not float(value_range[0]) < float(value_range[1]):
        raise ValueError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    if cache != cache.strip():
        raise ValueError(f"cache must be '', 'memory' or a file path, got {cache!r}")


def make_dataset(data_dir: str, split: str, *, image_size: int, batch_size: int,
                 training: bool, augment: bool = False, labels: str = "binary",
                 value_range: tuple[float, float] = (0.0, 1.0), cache: str = "",
                 deterministic: bool = False, seed: int = 0, repeat: bool = False,
                 drop_remainder: bool = False, balance_classes: bool = False,
                 as_uint8: bool = False, use_metadata: bool = False,
                 metadata_encoding: int = ENCODING_VERSION,
                 metadata_fields: Sequence[str] = FIELDS,
                 augmentation: str = "study", mixup_alpha: float = 0.0,
                 cutmix_alpha: float = 0.0,
                 synthetic: synthetic_mix.SyntheticMix | None = None,
                 manifest: Mapping[str, Any] | None = None,
                 balance_sources: bool = False,
                 source_offsets: Mapping[str, float] | None = None,
                 source_names: Sequence[str] | None = None,
                 source_label_weights: Mapping[tuple[str, int], float] | None = None,
                 one_source_batches: bool = False,
                 confirmation_mix: confirmation_mix_lib.ConfirmationMix | None = None
                 ) -> tf.data.Dataset:
    """Streams one split as (images float32 [B,S,S,3] in value_range, labels float32 [B]).

    augmentation: which augmentation `augment` means (augmentations.AUGMENTATIONS).
    mixup_alpha / cutmix_alpha (training, binary labels, no metadata, float images): each
    augmented batch mixed with a seeded permutation of itself; labels become soft floats.

    labels='binary' keeps benign (0) and malignant (1) records; 'all' keeps every record, with
    label -1 for unknown. training=True shuffles files and records (seeded) and, with `augment`,
    augments; validation/test (training=False) are never augmented. balance_classes (training,
    binary only) samples benign and malignant 50/50 from two repeated streams: the result is
    infinite, so give fit a steps_per_epoch. balance_sources (training, binary only) samples
    every acquisition source of the split (source_collection, train_sources) with equal
    probability, one repeated stream each, also infinite: a clinic with most of the images
    no longer sets what the model learns. source_label_weights ({(source, label): probability},
    training, binary only; trainer.core.source_prior.independent_group_weights) likewise draws
    one repeated stream per (source, label) group at its probability: infinite.
    one_source_batches (training, binary only): every batch holds one source's records (full
    batches, one repeated stream per source, a batch's source drawn at the source's share of
    the split, or equally with balance_sources): batch norm then normalises each batch by one
    clinic's statistics, as it will at a new clinic adapted without labels
    (trainer.cnn.adapt_batchnorm). Infinite.
    confirmation_mix (training, binary only; trainer.core.confirmation_mix.plan_for_split
    of this split): one repeated stream per (class, diagnosis confirmation) group at the mix's
    shares: infinite.
    as_uint8 (no augmentation, value_range (0, 1)) yields the uint8 batches as stored, for a
    model that rescales them itself (train.with_uint8_input): 4x fewer bytes to the device and
    no float conversion on the input threads.
    use_metadata: the input becomes (images, metadata float32 [B, 16]), the features computed
    in the parse step (parse_and_decode_with_metadata) by encoding version metadata_encoding
    and metadata_fields (the run's: metadata_features.run_encoding, run_fields); labels
    unchanged.
    synthetic (training only): generated records added to the split before the shuffle
    (trainer.core.synthetic_mix); they count in the epoch's length.
    source_offsets ({source_collection: offset}, trainer.core.source_prior): the input becomes
    (images, offsets float32 [B]), each record's offset looked up by its source (0.0 for a
    source not in the mapping; {} gives 0 everywhere, as validation uses); labels unchanged.
    Not with use_metadata, mixup/cutmix or synthetic records (these have no source).
    source_names (the train split's sources, trainer.core.source_adversary): likewise the input
    becomes (images, int32 [B] index of each record's source in the list); a source not in it
    is an error when the stream reaches it; () gives -1 everywhere (validation). Same limits
    as source_offsets, and not both.
    manifest: the dataset's manifest when the caller has read it already (else read here).
    """
    if as_uint8 and ((training and augment) or tuple(map(float, value_range)) != (0.0, 1.0)):
        raise ValueError("as_uint8 needs augment=False (or training=False) and value_range (0, 1)")
    _check_args(split, image_size, batch_size, labels, value_range, cache)
    metadata_fields = check_fields(metadata_fields)
    mixing = bool(mixup_alpha or cutmix_alpha)
    if mixing and (not training or labels != "binary" or use_metadata or as_uint8):
        raise ValueError(f"mixup_alpha={mixup_alpha}/cutmix_alpha={cutmix_alpha} need "
                         "training=True, labels='binary', no metadata and float images")
    if source_offsets is not None and (use_metadata or mixing or synthetic is not None):
        raise ValueError(f"source_offsets ({len(source_offsets)} sources) cannot be combined "
                         f"with use_metadata={use_metadata}, mixup_alpha={mixup_alpha}/"
                         f"cutmix_alpha={cutmix_alpha} or synthetic records "
                         f"({synthetic is not None}): the offset rides beside the image alone, "
                         "per record, and generated records have no source")
    if source_names is not None and (use_metadata or mixing or synthetic is not None
                                     or source_offsets is not None):
        raise ValueError(f"source_names {list(source_names)} cannot be combined with "
                         f"use_metadata={use_metadata}, mixup_alpha={mixup_alpha}/"
                         f"cutmix_alpha={cutmix_alpha}, synthetic records "
                         f"({synthetic is not None}) or source_offsets ({source_offsets}): the "
                         "index rides beside the image alone, per record, and generated "
                         "records have no source")
    lookup = offset_lookup(source_offsets) if source_offsets is not None else None
    if source_names is not None:
        lookup = source_index_lookup(source_names)
    manifest = dataset_lib.manifest_or_read(data_dir, manifest)
    info = dataset_lib.split_info(manifest, image_size, split)
    paths = dataset_lib.shard_paths(manifest, data_dir, image_size, split)
    expected = _count(info, labels)
    added = synthetic.total if synthetic is not None else 0
    if synthetic is not None and (not training or use_metadata or labels != "binary"):
        raise ValueError("synthetic records are added to a binary training split only, "
                         "without metadata (generated images have no age, sex or site)")
    if not paths or expected == 0:
        raise reader.no_records(data_dir, split, image_size, labels, info)
    if balance_sources and (not training or labels != "binary" or balance_classes
                            or synthetic is not None):
        raise ValueError("balance_sources needs training=True, labels='binary', no "
                         "balance_classes and no synthetic records")
    if source_label_weights is not None and (
            not training or labels != "binary" or balance_classes or balance_sources
            or synthetic is not None or not source_label_weights):
        raise ValueError(f"source_label_weights ({len(source_label_weights)} groups; none is "
                         f"an error) need training=True (got {training}), labels='binary' "
                         f"(got {labels!r}), no balance_classes (got {balance_classes}) or "
                         f"balance_sources (got {balance_sources}) and no synthetic records "
                         f"(got {synthetic is not None})")
    if one_source_batches and (not training or labels != "binary" or balance_classes
                               or synthetic is not None or source_label_weights is not None):
        raise ValueError(f"one_source_batches needs training=True (got {training}), "
                         f"labels='binary' (got {labels!r}), no balance_classes (got "
                         f"{balance_classes}), no synthetic records (got "
                         f"{synthetic is not None}) and no source_label_weights (got "
                         f"{source_label_weights is not None})")
    if confirmation_mix is not None and (
            not training or labels != "binary" or balance_classes or balance_sources
            or source_label_weights is not None or one_source_batches
            or synthetic is not None or source_offsets is not None):
        raise ValueError(f"confirmation_mix needs training=True (got {training}), "
                         f"labels='binary' (got {labels!r}) and no other mix: balance_classes "
                         f"{balance_classes}, balance_sources {balance_sources}, "
                         f"source_label_weights {source_label_weights is not None}, "
                         f"one_source_batches {one_source_batches}, synthetic records "
                         f"{synthetic is not None}, source_offsets {source_offsets is not None}")
    if balance_classes and (not training or labels != "binary"):
        raise ValueError("balance_classes needs training=True and labels='binary'")
    counts = info.get("counts", {})
    if balance_classes and not (counts.get("benign", 0) and counts.get("malignant", 0)):
        raise ValueError(f"balance_classes needs both classes in {split!r}; counts {counts}")

    group_of = (confirmation_mix_lib.group_lookup(confirmation_mix)
                if confirmation_mix is not None else None)

    def stream(label_filter=None, stream_seed=seed, source=None,
               group=None) -> tf.data.Dataset:
        records = shard_records(paths, manifest, shuffle_seed=stream_seed if training else None)
        if source is not None:
            records = records.filter(lambda s: tf.equal(source_of(s), source))
        if group is not None:
            records = records.filter(lambda s: tf.equal(group_of(s), group))
        if synthetic is not None:
            records = records.concatenate(synthetic_mix.records(synthetic))
        if label_filter is not None:  # before the decode: a class's stream decodes only its own
            records = records.filter(lambda s: tf.equal(label_of(s), label_filter))
        buffer = max(1, min(int(info["records"]) + added, _MAX_SHUFFLE_BUFFER))
        if training and not cache:
            records = records.shuffle(buffer, seed=stream_seed + 1, reshuffle_each_iteration=True)
        if lookup is not None:
            ds = records.map(lambda s: parse_and_decode_with_offset(s, image_size, lookup),
                             num_parallel_calls=AUTOTUNE)
        elif use_metadata:
            ds = records.map(lambda s: parse_and_decode_with_metadata(
                s, image_size, metadata_encoding, metadata_fields),
                             num_parallel_calls=AUTOTUNE)
        else:
            ds = records.map(lambda s: parse_and_decode(s, image_size),
                             num_parallel_calls=AUTOTUNE)
        if labels == "binary":
            ds = ds.filter(lambda image, label: label >= 0)
        if label_filter is None and source is None and group is None:  # the manifest's
            # count, checked: Keras then knows the epoch length
            ds = ds.apply(tf.data.experimental.assert_cardinality(expected + added))
        if cache == "memory":
            ds = ds.cache()
        elif cache:  # named after the manifest too, so another dataset never reuses it
            suffix = "" if label_filter is None else f"-class{label_filter}"
            suffix += "" if source is None else f"-source{_digest(source)}"
            if group is not None:  # a group's records: by the mix's groups
                suffix += f"-confirmation{_digest(confirmation_mix.groups)}-{group}"
            if synthetic is not None:  # another mix is another cache
                suffix += f"-synthetic{_digest(dataclasses.asdict(synthetic))}"
            if source_offsets is not None:  # other offsets (or none) are another cache
                suffix += f"-offsets{_digest(dict(source_offsets))}"
            if source_names is not None:  # another source list (or none) is another cache
                suffix += f"-sources{_digest(list(source_names))}"
            if use_metadata:  # another element structure, and each encoding its own features
                suffix += f"-metadata{metadata_encoding}"
                if metadata_fields != FIELDS:  # fields left out: other features
                    suffix += f"-fields{'-'.join(metadata_fields)}"
            ds = ds.cache(f"{cache}-{image_size}-{split}{suffix}-{_digest(manifest)}")
        if training and cache:
            ds = ds.shuffle(buffer, seed=stream_seed + 1, reshuffle_each_iteration=True)
        return ds

    def batched(ds: tf.data.Dataset, augment_seed: int | None, drop: bool,
                offset: int = 0) -> tf.data.Dataset:
        return augment_and_batch(ds, augment_seed=augment_seed, batch_size=batch_size,
                                 drop_remainder=drop, as_uint8=as_uint8, value_range=value_range,
                                 label_dtype=tf.float32, augmentation=augmentation,
                                 mix_seed=seed + 3 + offset if mixing else None,
                                 mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha)

    if one_source_batches or balance_sources:  # one repeated stream per source
        flag = "one_source_batches" if one_source_batches else "balance_sources"
        sources = train_sources(manifest, split)
        if len(sources) < 2:
            raise ValueError(f"{flag} needs >= 2 sources in {split!r} of {data_dir}; "
                             f"it holds {sources or 'no source_collection'}")
    if one_source_batches:
        per_source = dataset_lib.records_per_source(manifest, split, labelled_record)
        small = {name: per_source[name] for name in sources if per_source[name] < batch_size}
        if small:
            logging.warning("one_source_batches: %s hold fewer records than a batch of %d: "
                            "their batches repeat images", small, batch_size)
        return finish(group_mix(
            sources, [1.0 if balance_sources else float(per_source[name]) for name in sources],
            seed=seed, stream=lambda stream_seed, name: stream(None, stream_seed, name),
            each=lambda ds, source_seed: batched(
                ds, source_seed if training and augment else None, True, source_seed - seed)),
            deterministic)
    if balance_classes:
        ds = sample_streams([stream(0, seed).repeat(), stream(1, seed + 7).repeat()],
                            [1.0, 1.0], seed + 2)
    elif balance_sources:
        ds = group_mix(sources, [1.0] * len(sources), seed=seed,
                       stream=lambda stream_seed, name: stream(None, stream_seed, name))
    elif confirmation_mix is not None:
        ds = group_mix(range(len(confirmation_mix.groups)), confirmation_mix.shares, seed=seed,
                       stream=lambda stream_seed, i: stream(None, stream_seed, group=i))
    elif source_label_weights is not None:
        groups = sorted(source_label_weights)
        ds = group_mix(groups, [float(source_label_weights[g]) for g in groups], seed=seed,
                       stream=lambda stream_seed, g: stream(g[1], stream_seed, g[0]))
    else:
        ds = stream()
        if repeat:
            ds = ds.repeat()
    return finish(batched(ds, seed if training and augment else None, drop_remainder),
                  deterministic)
