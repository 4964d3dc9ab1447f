"""isicflow: shared core of the data engine and the trainers.

From a notebook, a dataset folder written by `python -m beam_jobs.preprocess` is one line:

    import isicflow
    ds = isicflow.load("out/isic", "train", image_size=128)   # a tf.data.Dataset

Kept separate from `proto/` (which holds only .proto sources) because apache-beam imports a
module named `proto` (from proto-plus) that a package of ours must not shadow. Importing
isicflow imports no TensorFlow (the engine's workers encode without it); `load` does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["load"]


def load(data_dir: str, split: str, image_size: int | None = None, *, labels: str = "all",
         as_uint8: bool = False, fields: Sequence[str] | None = None,
         as_supervised: bool = False) -> "tf.data.Dataset":
    """One split of an engine dataset as a tf.data.Dataset, one element per record, unbatched,
    in the order the shards hold them (by image id within a shard): the same parse and decode
    the trainers use (isicflow.reader).

    data_dir: the folder the engine wrote (--output; it holds manifest.json).
    split: "train", "validation" or "test".
    image_size: one of the sizes the engine wrote (--image_size); None when it wrote only one.
    labels: "all" keeps every record (label -1: unknown); "binary" only benign (0) and
        malignant (1), as the CNN trainer reads them.
    as_uint8: images as stored, uint8 [S, S, 3]; by default float32 in [0, 1], as the trainers'
        evaluation sees them (training adds augmentation; see trainer.core.input_pipeline).
    fields: which record fields come with each element (default: all of them:
        isicflow.reader.RECORD_FIELDS, e.g. image_id, diagnosis, patient_id, lesion_id,
        age_approx, sex, anatom_site, source_collection, label_name; the schema is
        proto/isicflow/v1/lesion_example.proto). fitzpatrick_skin_type ("I".."VI") and
        extra_metadata_json (the download's other table columns, one JSON object per record:
        isicflow.metadata.parse_extra_metadata) are "" in a record whose download lacks them.
    as_supervised: (image, label) pairs instead of dicts, e.g. for Keras' fit.

    Each element: {"image": [S, S, 3], "label": int64, <field>: tf.string / int64 / float32}.
    The dataset knows its length (len(ds)) from the manifest. Then batch as you like:
    `ds.batch(32).prefetch(tf.data.AUTOTUNE)`.

    Errors (ValueError, FileNotFoundError), each naming what to change: no manifest.json in
    data_dir, a split not in the three above, an image_size the dataset lacks (the message
    lists the sizes it has), or a split with no records.
    """
    from isicflow import reader

    return reader.load(data_dir, split, image_size, labels=labels, as_uint8=as_uint8,
                       fields=reader.RECORD_FIELDS if fields is None else tuple(fields),
                       as_supervised=as_supervised)
