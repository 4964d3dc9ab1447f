"""Generated images out of a DCGAN checkpoint: as PNG files, or as a dataset in the record schema.

The TFRecord output is a dataset folder like beam_jobs.preprocess writes (manifest.json +
<size>/train/*.tfrecord), so it can be read by input_pipeline.make_dataset or mixed into a
training set. Records say image_type "synthetic" and source_collection "isicflow-dcgan".
"""
from __future__ import annotations

import json
import os

import numpy as np

from isicflow import dataset, imaging
from isicflow.diagnosis import normalise_diagnosis
from isicflow.metadata import CLASS_NAMES, DEFAULT_DX_LABELS, UNKNOWN, LesionRecord
from trainer.core.run_folder import GAN_CONFIG_NAME
SYNTHETIC_IMAGE_TYPE = "synthetic"
SOURCE_COLLECTION = "isicflow-dcgan"
_BATCH = 64
# A diagnosis class's benign/malignant label, from the engine's dx table ('other': unknown).
_DIAGNOSIS_LABELS = {normalise_diagnosis(code): label for code, label in DEFAULT_DX_LABELS.items()}


def class_names(arch: dict) -> tuple[str, ...]:
    """The class names of a conditional generator, in label order: gan_config.json's "classes"
    (diagnosis-conditional runs), else benign/malignant (every run from before them)."""
    return tuple(arch.get("classes") or CLASS_NAMES)


def read_class_mapping(path: str) -> dict | None:
    """The classes.json a diagnosis-conditional run saved beside gan_config.json (None without
    one); `path` as resolve_checkpoint takes it."""
    from trainer.cnn import diagnosis

    folder = os.path.dirname(resolve_checkpoint(path)[0])
    return diagnosis.read_mapping(folder)


def resolve_checkpoint(path: str) -> tuple[str, dict]:
    """A run folder, its checkpoints/ folder or a checkpoint prefix -> (prefix, architecture).
    A folder without the GAN's gan_config.json is refused before TensorFlow is imported."""
    is_folder = os.path.isdir(path)
    if is_folder:
        folder = os.path.join(path, "checkpoints") if os.path.isdir(
            os.path.join(path, "checkpoints")) else path
    else:
        folder = os.path.dirname(path)
    config_path = os.path.join(folder, GAN_CONFIG_NAME)
    if is_folder and not os.path.exists(config_path):
        raise FileNotFoundError(f"no checkpoint of trainer.gan in {folder!r} (it has no "
                                f"{GAN_CONFIG_NAME})")
    import tensorflow as tf

    if is_folder:
        prefix = tf.train.latest_checkpoint(folder)
        if prefix is None:
            raise FileNotFoundError(f"no checkpoint in {folder!r}")
    else:
        prefix = path
        if not tf.io.gfile.exists(prefix + ".index"):
            raise FileNotFoundError(f"{path!r} is neither a folder nor a checkpoint prefix "
                                    f"(no {prefix}.index)")
    if not os.path.exists(config_path):
        raise FileNotFoundError(f"{config_path} missing: cannot tell the generator's "
                                "architecture (was this checkpoint written by trainer.gan?)")
    with open(config_path, encoding="utf-8") as f:
        return prefix, json.load(f)


def load_generator(path: str) -> tuple[keras.Model, dict]:
    """Rebuilds the generator of a checkpoint and restores its weights (float32): the EMA
    weights when the run kept them (gan_config.json says "ema": true), else G's own."""
    import keras
    import tensorflow as tf

    from trainer.gan import models as gan_models

    prefix, arch = resolve_checkpoint(path)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # whatever policy trained it
    try:
        generator = gan_models.build_generator_for(arch)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    name = "ema_generator" if arch.get("ema") else "generator"
    tf.train.Checkpoint(**{name: generator}).restore(prefix).expect_partial() \
        .assert_existing_objects_matched()
    return generator, arch


def generate(generator, arch: dict, num: int, *, label: int | None = None,
             seed: int = 0) -> np.ndarray:
    """num uint8 images from N(0, 1) latents drawn with `seed` (and class `label`)."""
    if arch["conditional"] and label is None:
        raise ValueError(f"a conditional generator needs a class index, one of "
                         f"{dict(enumerate(class_names(arch)))}")
    from trainer.gan import models as gan_models

    rng = np.random.default_rng(seed)
    out = []
    for start in range(0, num, _BATCH):
        n = min(_BATCH, num - start)
        z = rng.standard_normal((n, arch["latent_dim"])).astype(np.float32)
        inputs = [z, np.full((n, 1), label, np.int32)] if arch["conditional"] else z
        out.append(gan_models.to_uint8(generator(inputs, training=False)))
    return np.concatenate(out)


def _record_labels(arch: dict, label: int) -> dict:
    """LesionRecord's label (and diagnosis, for a diagnosis class) of a generated image."""
    if label < 0:
        return {"label": UNKNOWN}
    name = class_names(arch)[label]
    if not arch.get("classes"):
        return {"label": name}
    return {"label": _DIAGNOSIS_LABELS.get(name, UNKNOWN), "diagnosis": name}


def _write_dataset(out: str, arch: dict, items: list[tuple[str, bytes, int]],
                   checkpoint: str) -> dict:
    """The samples as a dataset folder, through the same contract the data engine writes."""
    images = [dataset.DatasetImage(LesionRecord(
        image_id=image_id, image_path="", **_record_labels(arch, label),
        image_type=SYNTHETIC_IMAGE_TYPE, source_collection=SOURCE_COLLECTION), png)
        for image_id, png, label in items]
    size = arch["image_size"]
    return dataset.write_dataset(out, images, image_size=size, image_format="png",
                                 layout=SOURCE_COLLECTION, synthetic=True,
                                 run_config={"generator_checkpoint": os.path.abspath(checkpoint)})


def sample_to_dir(checkpoint: str, num: int, out: str, *, image_format: str = "png",
                  classes: tuple[str, ...] | None = None, seed: int = 0) -> int:
    """Writes num images (num per class when conditional) to `out`; returns how many."""
    if num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    if image_format not in ("png", "tfrecord"):
        raise ValueError(f"format {image_format!r} not in ('png', 'tfrecord')")
    generator, arch = load_generator(checkpoint)
    names = class_names(arch)
    if arch["conditional"]:
        wanted = classes or names
        unknown = set(wanted) - set(names)
        if unknown:
            raise ValueError(f"unknown class(es) {sorted(unknown)}; choose from {names}")
        labels = [names.index(c) for c in wanted]
    else:
        labels = [-1]
    items: list[tuple[str, bytes, int]] = []
    os.makedirs(out, exist_ok=True)
    for label in labels:
        images = generate(generator, arch, num, label=None if label < 0 else label,
                          seed=seed + 1000 * (label + 1))
        prefix = "dcgan" if label < 0 else f"dcgan_{names[label]}"
        for i, image in enumerate(images):
            png = imaging.encode_image(image, "png")
            image_id = f"{prefix}_{i:06d}"
            items.append((image_id, png, label))
            if image_format == "png":
                with open(os.path.join(out, image_id + ".png"), "wb") as f:
                    f.write(png)
    if image_format == "tfrecord":
        _write_dataset(out, arch, items, checkpoint)
    return len(items)
