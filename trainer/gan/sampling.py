"""Generated images out of a DCGAN checkpoint: as PNG files, or as a dataset in the record schema.

The TFRecord output is a dataset folder like beam_jobs.preprocess writes (manifest.json +
<size>/train/*.tfrecord), so it can be read by input_pipeline.make_dataset or mixed into a
training set. Records say image_type "synthetic" and source_collection "isicflow-dcgan".
"""
from __future__ import annotations

import hashlib
import json
import os

import keras
import numpy as np
import tensorflow as tf

from isicflow import imaging, manifest as manifest_lib, metadata, schema
from trainer.core.run_folder import GAN_CONFIG_NAME
from trainer.gan import models as gan_models

SYNTHETIC_IMAGE_TYPE = "synthetic"
SOURCE_COLLECTION = "isicflow-dcgan"
CLASS_NAMES = (metadata.BENIGN, metadata.MALIGNANT)
_BATCH = 64


def resolve_checkpoint(path: str) -> tuple[str, dict]:
    """A run folder, its checkpoints/ folder or a checkpoint prefix -> (prefix, architecture)."""
    if os.path.isdir(path):
        folder = os.path.join(path, "checkpoints") if os.path.isdir(
            os.path.join(path, "checkpoints")) else path
        prefix = tf.train.latest_checkpoint(folder)
        if prefix is None:
            raise FileNotFoundError(f"no checkpoint in {folder!r}")
    else:
        prefix, folder = path, os.path.dirname(path)
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(f"{path!r} is neither a folder nor a checkpoint prefix "
                                    f"(no {prefix}.index)")
    config_path = os.path.join(folder, GAN_CONFIG_NAME)
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} missing: cannot tell the generator's "
                                "architecture (was this checkpoint written by trainer.dcgan?)")
    with open(config_path, encoding="utf-8") as f:
        return prefix, json.load(f)


def load_generator(path: str) -> tuple[keras.Model, dict]:
    """Rebuilds the generator of a checkpoint and restores its weights (float32)."""
    prefix, arch = resolve_checkpoint(path)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # whatever policy trained it
    try:
        generator = gan_models.build_generator(arch["latent_dim"], arch["image_size"],
                                               conditional=arch["conditional"])
    finally:
        keras.mixed_precision.set_global_policy(previous)
    tf.train.Checkpoint(generator=generator).restore(prefix).expect_partial() \
        .assert_existing_objects_matched()
    return generator, arch


def generate(generator, arch: dict, num: int, *, label: int | None = None,
             seed: int = 0) -> np.ndarray:
    """num uint8 images from N(0, 1) latents drawn with `seed` (and class `label`)."""
    if arch["conditional"] and label is None:
        raise ValueError("a conditional generator needs a class: 0 benign or 1 malignant")
    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, num, _BATCH):
        n = min(_BATCH, num - start)
        z = rng.standard_normal((n, arch["latent_dim"])).astype(np.float32)
        inputs = [z, np.full((n, 1), label, np.int32)] if arch["conditional"] else z
        out.append(gan_models.to_uint8(generator(inputs, training=False)))
    return np.concatenate(out)


def _record(image_id: str, png: bytes, size: int, label: int) -> bytes:
    name = CLASS_NAMES[label] if label >= 0 else metadata.UNKNOWN
    return schema.encode_example({
        "image_id": image_id, "image_encoded": png, "image_format": "png",
        "height": size, "width": size, "channels": 3, "label": label, "label_name": name,
        "diagnosis": "", "patient_id": "", "lesion_id": "", "age_approx": -1.0, "sex": "",
        "anatom_site": "", "image_type": SYNTHETIC_IMAGE_TYPE,
        "source_collection": SOURCE_COLLECTION, "split": "train",
        "content_sha256": hashlib.sha256(png).hexdigest(),
        "original_height": size, "original_width": size})


def _write_dataset(out: str, size: int, items: list[tuple[str, bytes, int]],
                   checkpoint: str) -> dict:
    shard_rel = f"{size}/train/train-00000-of-00001.tfrecord"
    shard = os.path.join(out, shard_rel)
    os.makedirs(os.path.dirname(shard), exist_ok=True)
    with tf.io.TFRecordWriter(shard) as writer:
        for image_id, png, label in items:
            writer.write(_record(image_id, png, size, label))
    with open(shard, "rb") as f:
        data = f.read()
    counts: dict[str, int] = {}
    for _, _, label in items:
        name = CLASS_NAMES[label] if label >= 0 else metadata.UNKNOWN
        counts[name] = counts.get(name, 0) + 1
    empty = {"records": 0, "counts": {}, "shards": []}
    manifest = {
        "schema_version": schema.SCHEMA_VERSION, "synthetic": True, "layout": "isicflow-dcgan",
        "image_sizes": [size], "image_format": "png", "compression": "",
        "generator_checkpoint": os.path.abspath(checkpoint),
        "datasets": {str(size): {
            "train": {"records": len(items), "counts": counts,
                      "shards": [{"path": shard_rel, "records": len(items), "bytes": len(data),
                                  "sha256": hashlib.sha256(data).hexdigest()}]},
            "validation": dict(empty), "test": dict(empty)}},
    }
    with open(os.path.join(out, manifest_lib.MANIFEST_NAME), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


def sample_to_dir(checkpoint: str, num: int, out: str, *, image_format: str = "png",
                  classes: tuple[str, ...] | None = None, seed: int = 0) -> int:
    """Writes num images (num per class when conditional) to `out`; returns how many."""
    if num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    if image_format not in ("png", "tfrecord"):
        raise ValueError(f"format {image_format!r} not in ('png', 'tfrecord')")
    generator, arch = load_generator(checkpoint)
    if arch["conditional"]:
        wanted = classes or CLASS_NAMES
        unknown = set(wanted) - set(CLASS_NAMES)
        if unknown:
            raise ValueError(f"unknown class(es) {sorted(unknown)}; choose from {CLASS_NAMES}")
        labels = [CLASS_NAMES.index(c) for c in wanted]
    else:
        labels = [-1]
    items: list[tuple[str, bytes, int]] = []
    os.makedirs(out, exist_ok=True)
    for label in labels:
        images = generate(generator, arch, num, label=None if label < 0 else label,
                          seed=seed + 1000 * (label + 1))
        prefix = "dcgan" if label < 0 else f"dcgan_{CLASS_NAMES[label]}"
        for i, image in enumerate(images):
            png = imaging.encode_image(image, "png")
            image_id = f"{prefix}_{i:06d}"
            items.append((image_id, png, label))
            if image_format == "png":
                with open(os.path.join(out, image_id + ".png"), "wb") as f:
                    f.write(png)
    if image_format == "tfrecord":
        _write_dataset(out, arch["image_size"], items, checkpoint)
    return len(items)
