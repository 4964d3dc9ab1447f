"""Reading a dataset folder (isicflow.dataset) with TensorFlow: the one parse and decode of a
record, shared by `isicflow.load` (notebooks, tools) and the trainers' input pipeline
(trainer.core.input_pipeline), so both see the same pixels and labels.

This module imports TensorFlow; nothing the data engine's workers import imports it.
"""
from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from isicflow import dataset as dataset_lib, imaging, schema

# What every reader parses: the pixels, how they are stored, and the label.
PARSED_FEATURES = ("image_encoded", "image_format", "height", "width", "label")
# Every field of a record but its encoded pixels (those come back decoded, as "image"). The
# optional ones (fitzpatrick_skin_type, extra_metadata_json) parse as "" where a record lacks
# them (schema.feature_spec), so datasets written before they existed read alike.
RECORD_FIELDS = tuple(name for name in schema.FEATURE_NAMES if name != "image_encoded")
# binary: benign (0) and malignant (1) records only; all: every record, -1 for unknown.
LABEL_MODES = ("binary", "all")


def decode_record(record, image_size: int) -> tf.Tensor:
    """A parsed record's pixels (any stored format) -> uint8 [S, S, 3]."""
    image = imaging.decode_stored_image(record["image_encoded"], record["image_format"],
                                        tf.cast(record["height"], tf.int32),
                                        tf.cast(record["width"], tf.int32))
    return tf.ensure_shape(image, [image_size, image_size, 3])


def parse_record(serialized: tf.Tensor, image_size: int,
                 fields: Sequence[str] = RECORD_FIELDS) -> dict:
    """One serialized record -> {"image": uint8 [S, S, 3], "label": int64, field: value, ...}."""
    unknown = set(fields) - set(RECORD_FIELDS)
    if unknown:
        raise ValueError(f"fields {sorted(unknown)} are not record fields; choose from "
                         f"{RECORD_FIELDS}")
    names = tuple(dict.fromkeys(PARSED_FEATURES + tuple(fields)))
    record = tf.io.parse_single_example(serialized, schema.feature_spec(names))
    out = {"image": decode_record(record, image_size), "label": record["label"]}
    out.update({name: record[name] for name in fields if name != "label"})
    return out


def field_values(data_dir: str, split: str, image_size: int, field: str,
                 manifest: dict | None = None) -> list[str]:
    """One string field (e.g. image_id) of every record of a split, in shard order, parsed
    alone (no image decoded); [] for a split the dataset lacks at that size."""
    return field_columns(data_dir, split, image_size, (field,), manifest)[field]


def field_columns(data_dir: str, split: str, image_size: int, fields: Sequence[str],
                  manifest: dict | None = None) -> dict[str, list[str]]:
    """{field: its value in every record of the split, as text, in shard order} for several
    fields read in one pass (no image decoded); empty lists for a split the dataset lacks."""
    unknown = [field for field in fields if field not in RECORD_FIELDS]
    if unknown:
        raise ValueError(f"{unknown} not record fields; choose from {RECORD_FIELDS}")
    manifest = dataset_lib.manifest_or_read(data_dir, manifest)
    columns: dict[str, list[str]] = {field: [] for field in fields}
    if split not in manifest.get("datasets", {}).get(str(image_size), {}):
        return columns
    paths = dataset_lib.shard_paths(manifest, data_dir, image_size, split)
    if not paths:
        return columns
    spec = schema.feature_spec(tuple(fields))
    records = tf.data.TFRecordDataset(paths,
                                      compression_type=dataset_lib.compression_type(manifest))
    for batch in records.map(lambda s: tf.io.parse_single_example(s, spec)).batch(
            4096).as_numpy_iterator():
        for field in fields:
            columns[field].extend(v.decode("utf-8") if isinstance(v, bytes) else str(v)
                                  for v in batch[field])
    return columns


def count_records(info: dict, labels: str) -> int:
    """Records one pass over a split yields (a split_info entry of the manifest): every record,
    or (binary) its benign and malignant ones."""
    if labels not in LABEL_MODES:
        raise ValueError(f"labels {labels!r} not in {LABEL_MODES}")
    if labels == "all":
        return int(info["records"])
    counts = info.get("counts", {})
    return int(counts.get("benign", 0)) + int(counts.get("malignant", 0))


def no_records(data_dir: str, split: str, size: int, labels: str, info: dict) -> ValueError:
    """The error for a split with nothing to read."""
    return ValueError(f"{data_dir}: split {split!r} at {size}px has no "
                      f"{'benign/malignant ' if labels == 'binary' else ''}records "
                      f"(manifest counts {info.get('counts')})")


def resolve_size(manifest: dict, data_dir: str, image_size: int | None) -> int:
    """image_size, checked against the sizes the dataset holds; None: its only size."""
    sizes = sorted((int(s) for s in manifest.get("datasets", {})), reverse=True)
    if image_size is None and len(sizes) == 1:
        return sizes[0]
    if image_size is None or int(image_size) not in sizes:
        given = "no image_size given" if image_size is None else f"image_size={image_size}"
        raise ValueError(f"{given}, but {data_dir} holds sizes {sizes}: pass image_size=one of "
                         "them (or write that size with python -m beam_jobs.preprocess "
                         "--image_size=...)")
    return int(image_size)


def load(data_dir: str, split: str, image_size: int | None = None, *, labels: str = "all",
         as_uint8: bool = False, fields: Sequence[str] = RECORD_FIELDS,
         as_supervised: bool = False) -> tf.data.Dataset:
    """isicflow.load: see its docstring (isicflow/__init__.py)."""
    if split not in dataset_lib.SPLITS:
        raise ValueError(f"split {split!r} is not one of {dataset_lib.SPLITS}")
    manifest = dataset_lib.read_manifest(data_dir)
    size = resolve_size(manifest, data_dir, image_size)
    info = dataset_lib.split_info(manifest, size, split)
    paths = dataset_lib.shard_paths(manifest, data_dir, size, split)
    expected = count_records(info, labels)
    if not paths or expected == 0:
        raise no_records(data_dir, split, size, labels, info)
    ds = tf.data.TFRecordDataset(paths, compression_type=dataset_lib.compression_type(manifest))
    ds = ds.map(lambda s: parse_record(s, size, () if as_supervised else fields),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if labels == "binary":
        ds = ds.filter(lambda element: element["label"] >= 0)
    ds = ds.apply(tf.data.experimental.assert_cardinality(expected))

    def finish(element: dict):
        if not as_uint8:  # as the trainers' evaluation sees it: float32 in [0, 1]
            element = dict(element, image=tf.image.convert_image_dtype(element["image"],
                                                                       tf.float32))
        return (element["image"], element["label"]) if as_supervised else element

    return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
