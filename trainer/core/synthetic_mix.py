"""Generated images added to a training split (`--synthetic_data=DIR --synthetic_fraction=F`).

DIR is a dataset folder the GAN sampler wrote (`python -m trainer.gan.sample --format=tfrecord`,
manifest.json + <size>/train/*.tfrecord, records of the shared schema), so the generated images
stream through the same parse, decode, augmentation and batching as the real ones; validation
and test stay real only.

How many: F is generated images per real training image, per class, so the class ratio of the
training split is kept and the only change is more (generated) images:
    added[c] = round(F * real[c])   for c in benign, malignant
(or only for the classes of --synthetic_classes, e.g. the rare malignant one).
Which: the first added[c] records of class c in DIR's shard order (the sampler writes them in
id order, one latent seed per class), so a run is reproducible and a larger F adds images to
a smaller F's set. A DIR with too few images of a class is an error naming the command that
samples more; nothing is silently left short.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import tensorflow as tf

from isicflow import dataset as dataset_lib, fileio, schema
from isicflow.metadata import CLASS_NAMES

MAX_FRACTION = 10.0


@dataclasses.dataclass(frozen=True)
class SyntheticMix:
    """Generated records to add to one training split: `counts[c]` of class c, from the train
    shards `paths` of data_dir (read once, by plan)."""

    data_dir: str
    counts: Mapping[str, int]
    paths: tuple[str, ...]
    compression: str

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def added_counts(real_counts: Mapping[str, int], fraction: float,
                 classes: Sequence[str] = CLASS_NAMES) -> dict[str, int]:
    """Pure rule: generated images to add per class, round(fraction * real count), for the
    classes given (the others get none: e.g. only the rare malignant class)."""
    if not 0.0 <= fraction <= MAX_FRACTION or fraction != fraction:
        raise ValueError(f"synthetic_fraction must be in [0, {MAX_FRACTION}], got {fraction}")
    unknown = sorted(set(classes) - set(CLASS_NAMES))
    if unknown or not classes:
        raise ValueError(f"synthetic classes {list(classes)}: each must be one of {CLASS_NAMES}")
    return {c: int(round(fraction * int(real_counts.get(c, 0)))) if c in classes else 0
            for c in CLASS_NAMES}


def plan(synthetic_dir: str, real_counts: Mapping[str, int], fraction: float,
         image_size: int, classes: Sequence[str] = CLASS_NAMES) -> SyntheticMix | None:
    """Checks DIR against the real split and returns what to add (None when nothing is).

    Fails fast, with the offending values, when DIR is not a synthetic dataset, lacks
    image_size, or holds fewer images of a class than the fraction asks for.
    """
    wanted = added_counts(real_counts, fraction, classes)
    if not synthetic_dir or sum(wanted.values()) == 0:
        return None
    if not fileio.exists(fileio.join_path(synthetic_dir, dataset_lib.MANIFEST_NAME)):
        raise FileNotFoundError(f"--synthetic_data={synthetic_dir}: no generated dataset there; "
                                "write one with `python -m trainer.gan.sample --format=tfrecord "
                                f"--output={synthetic_dir} ...`")
    manifest = dataset_lib.read_manifest(synthetic_dir)
    if not manifest.get("synthetic"):
        raise ValueError(f"{synthetic_dir}: not a generated dataset (its manifest says "
                         "synthetic=false); --synthetic_data takes the GAN sampler's "
                         "`trainer.gan.sample --format=tfrecord` output")
    sizes = sorted(manifest.get("datasets", {}))
    if str(image_size) not in sizes:
        raise ValueError(f"{synthetic_dir}: generated at size(s) {sizes}, but the CNN trains at "
                         f"{image_size}px; sample from a GAN trained at {image_size}")
    have = dataset_lib.split_info(manifest, image_size, "train").get("counts", {})
    short = {c: (n, int(have.get(c, 0))) for c, n in wanted.items() if int(have.get(c, 0)) < n}
    if short:
        detail = ", ".join(f"{c}: need {n}, has {h}" for c, (n, h) in short.items())
        raise ValueError(f"{synthetic_dir}: too few generated images for synthetic_fraction="
                         f"{fraction} ({detail}); sample more with `python -m trainer.gan.sample "
                         f"--format=tfrecord --num={max(n for n, _ in short.values())}`")
    return SyntheticMix(synthetic_dir, wanted,
                        tuple(dataset_lib.shard_paths(manifest, synthetic_dir, image_size, "train")),
                        dataset_lib.compression_type(manifest))


def records(mix: SyntheticMix) -> tf.data.Dataset:
    """Serialized records of the mix, in DIR's shard order: the first counts[c] of each class."""
    label_spec = schema.feature_spec(("label",))
    parts = []
    for label, name in enumerate(CLASS_NAMES):
        if not mix.counts.get(name):
            continue
        # one reader, in file order: deterministic
        part = tf.data.TFRecordDataset(list(mix.paths), compression_type=mix.compression)
        part = part.filter(lambda s, want=label: tf.equal(
            tf.io.parse_single_example(s, label_spec)["label"], want))
        parts.append(part.take(mix.counts[name]))
    out = parts[0]
    for part in parts[1:]:
        out = out.concatenate(part)
    return out
