"""Writes tiny datasets in the exact layout of beam_jobs.preprocess, for trainer tests.

Records go through the shared schema encoder and the shared resize, so what the trainers read
here is what they read from the real job, only smaller. Other test files import these helpers.
"""
from __future__ import annotations

import collections
import hashlib
import json
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from isicflow import dataset, imaging, metadata, schema
from isicflow.diagnosis import normalise_diagnosis

RESIZE_MODE = "squash"


def _sizes(size: int | Sequence[int]) -> tuple[int, ...]:
    return imaging.parse_sizes([size] if isinstance(size, int) else list(size))


def _record(image_id: str, pixels: np.ndarray, label_name: str, split: str, size: int,
            image_format: str, extra: Mapping | None = None) -> bytes:
    resized = np.asarray(imaging.resize_image(pixels, size, RESIZE_MODE))
    return schema.encode_example({**{
        "image_id": image_id,
        "image_encoded": imaging.encode_image(resized, image_format),
        "image_format": image_format, "height": size, "width": size, "channels": 3,
        "label": metadata.LABEL_INDEX[label_name], "label_name": label_name,
        "diagnosis": "", "patient_id": "", "lesion_id": "", "age_approx": -1.0, "sex": "",
        "anatom_site": "", "image_type": "dermoscopic", "source_collection": "test",
        "split": split, "content_sha256": hashlib.sha256(pixels.tobytes()).hexdigest(),
        "original_height": int(pixels.shape[0]), "original_width": int(pixels.shape[1]),
    }, **(extra or {})})


def _write_tfrecord(path: pathlib.Path, records: Iterable[bytes], gzip_compress: bool) -> None:
    """TFRecord framing written by TensorFlow itself, so length and CRCs are exact."""
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip_compress else "")
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for record in records:
            writer.write(record)


def write_tiny_dataset(root, images_by_split: Mapping[str, Sequence[tuple[np.ndarray, str]]],
                       size: int | Sequence[int], image_format: str = "jpeg",
                       compression: str = "", num_shards: int = 2,
                       schema_version: int | None = None) -> str:
    """Writes ROOT/manifest.json and ROOT/<size>/<split>/<split>-0000i-of-0000n.tfrecord[.gz].

    images_by_split: {"train": [(uint8 HxWx3, "benign"|"malignant"|"unknown"), ...], ...};
    an item may carry a third element, {schema field: value} overriding the record's defaults
    (e.g. {"diagnosis": "nevus", "age_approx": 45.0});
    each image is resized (squash, the shared resize) to every size. Records are dealt
    round-robin over `num_shards` shards per split. Returns ROOT as a string.
    """
    if compression not in ("", "GZIP"):
        raise ValueError(f"compression {compression!r} not in ('', 'GZIP')")
    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sizes = _sizes(size)
    datasets: dict[str, dict] = {}
    for size in sizes:
        datasets[str(size)] = {}
        for split, items in images_by_split.items():
            if split not in dataset.SPLITS:
                raise ValueError(f"split {split!r} not in {dataset.SPLITS}")
            records = [_record(f"{split}_{i:04d}", np.asarray(item[0], np.uint8), item[1], split,
                               size, image_format, item[2] if len(item) > 2 else None)
                       for i, item in enumerate(items)]
            n = max(1, min(num_shards, len(records)))
            folder = root / str(size) / split
            folder.mkdir(parents=True, exist_ok=True)
            shards = []
            for k in range(n):
                name = f"{split}-{k:05d}-of-{n:05d}.tfrecord" + (".gz" if compression else "")
                path = folder / name
                _write_tfrecord(path, records[k::n], bool(compression))
                data = path.read_bytes()
                shards.append({"path": f"{size}/{split}/{name}", "records": len(records[k::n]),
                               "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
            counts = {name: sum(1 for item in items if item[1] == name)
                      for name in metadata.LABEL_NAMES}
            datasets[str(size)][split] = {"records": len(records), "counts": counts,
                                          "shards": shards}
    detail = collections.Counter(  # as the engine counts: diagnoses in isicflow's vocabulary
        (split, item[1], normalise_diagnosis((item[2] if len(item) > 2 else {}).get("diagnosis",
                                                                                   "")),
         (item[2] if len(item) > 2 else {}).get("source_collection", ""))
        for split, items in images_by_split.items() for item in items)
    manifest = {
        "schema_version": schema.SCHEMA_VERSION if schema_version is None else schema_version,
        "image_format": image_format, "resize_mode": RESIZE_MODE, "compression": compression,
        "image_sizes": list(sizes), "datasets": datasets,
        "counts": {"per_split_label_diagnosis_source": [
            {"split": sp, "label": lab, "diagnosis": dx, "source_collection": src, "count": n}
            for (sp, lab, dx, src), n in sorted(detail.items())]},
    }
    (root / dataset.MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    (root / dataset.REJECTS_NAME).write_text("")
    return str(root)


def random_images(n: int, side: int, seed: int = 0,
                  labels: Sequence[str] = ("benign", "malignant")) -> list[tuple[np.ndarray, str]]:
    """n random uint8 images, labels cycling through `labels`."""
    rng = np.random.default_rng(seed)
    return [(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), labels[i % len(labels)])
            for i in range(n)]



def source_items(n: int, source: str, seed: int, size: int, level: int | None = None,
                 labels: Sequence[str] = ("benign", "malignant")) -> list[tuple]:
    """n (pixels, label, {"source_collection": source}) items for write_tiny_dataset; with
    `level`, flat grey size x size images, so the pixels alone tell the source."""
    images = random_images(n, 40, seed=seed, labels=labels)
    if level is not None:
        images = [(np.full((size, size, 3), level, np.uint8), label) for _, label in images]
    return [(px, label, {"source_collection": source}) for px, label in images]


def write_two_source_dataset(root, size: int) -> str:
    """train: 6 of clinic_a (grey 0, half malignant), 4 of clinic_b (grey 255, all malignant);
    validation: 4 of clinic_a; test: 2 of clinic_b (the source-aware trainers' fixture)."""
    return write_tiny_dataset(
        root, {"train": source_items(6, "clinic_a", 1, size, level=0)
               + source_items(4, "clinic_b", 2, size, level=255, labels=("malignant",)),
               "validation": source_items(4, "clinic_a", 3, size),
               "test": source_items(2, "clinic_b", 4, size)}, size)

def load_sample_images(sample_dir, n: int, offset: int = 0) -> list[tuple[np.ndarray, str]]:
    """n real images from the isic-uda1 sample, alternating benign/malignant where possible,
    decoded with the shared decoder. `offset` skips that many of each class first."""
    by_label: dict[str, list[pathlib.Path]] = {"benign": [], "malignant": []}
    for sidecar in sorted(pathlib.Path(sample_dir).glob("ISIC_*.json")):
        label = json.loads(sidecar.read_text())["meta"]["clinical"].get("benign_malignant")
        if label in by_label:
            by_label[label].append(sidecar.with_suffix(".jpg"))
    picked: list[tuple[pathlib.Path, str]] = []
    for i in range(n):
        label = ("benign", "malignant")[i % 2]
        pool = by_label[label]
        index = offset + i // 2
        if index >= len(pool):
            raise ValueError(f"sample has only {len(pool)} {label} images, asked for {index + 1}")
        picked.append((pool[index], label))
    return [(imaging.decode_image(path.read_bytes()).pixels, label) for path, label in picked]


def write_sample_dataset(root, sample_dir, size: int | Sequence[int],
                         n_per_split: Mapping[str, int] | None = None,
                         image_format: str = "jpeg", compression: str = "",
                         num_shards: int = 2) -> str:
    """A tiny dataset of REAL ISIC images (default 8 train, 4 validation, 4 test), both classes
    in every split, no image in two splits."""
    n_per_split = n_per_split or {"train": 8, "validation": 4, "test": 4}
    images_by_split, used = {}, 0
    for split, n in n_per_split.items():
        images_by_split[split] = load_sample_images(sample_dir, n, offset=used)
        used += (n + 1) // 2
    return write_tiny_dataset(root, images_by_split, size, image_format, compression, num_shards)


def extras_by_level(ds, cast=float) -> dict[float, set]:
    """{grey level of an image: the set of per-record extras seen with it} over a dataset of
    ((images, extras), labels) batches: with write_two_source_dataset's flat grey clinics,
    which value each source's records carried (a source offset, a source index)."""
    seen: dict[float, set] = {}
    for (images, extras), _ in ds:
        for level, extra in zip(np.round(images.numpy().reshape(len(extras), -1).mean(1)),
                                extras.numpy()):
            seen.setdefault(float(level), set()).add(cast(extra))
    return seen

