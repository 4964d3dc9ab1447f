"""Reading the manifest the data engine writes last; the trainers' entry to a dataset.

Layout written by beam_jobs.preprocess (paths relative to the dataset root):
  manifest.json, rejects.jsonl, <size>/<split>/<split>-00000-of-000NN.tfrecord[.gz]
manifest["datasets"][str(size)][split] = {"records": int, "counts": {label_name: int},
    "shards": [{"path": str, "records": int, "bytes": int, "sha256": str}, ...]}
manifest["downloads"] = {folder ('.' = the root): {"layout", "records" (read), "rejections",
    "written"}}; manifest["metadata_files"] = [{"path", "role": layout|side|unused, "kind",
    "header", "why"}, ...]; manifest["counts"]["diagnosis"] (isicflow.diagnosis vocabulary) and
    ["per_download_label"].
"""
from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from isicflow.schema import check_schema_version

MANIFEST_NAME = "manifest.json"
REJECTS_NAME = "rejects.jsonl"
SPLITS = ("train", "validation", "test")


def join_path(root: str, *parts: str) -> str:
    """Joins paths of local folders and of URLs (gs://, s3://) alike."""
    return posixpath.join(root.rstrip("/"), *parts) if "://" in root else os.path.join(root, *parts)


def read_manifest(data_dir: str) -> dict[str, Any]:
    """Loads DATA_DIR/manifest.json and checks its schema version; clear error when absent."""
    import tensorflow as tf

    path = join_path(data_dir, MANIFEST_NAME)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(
            f"no {MANIFEST_NAME} in {data_dir!r}: not a finished beam_jobs.preprocess output "
            "(a run that was killed midway writes none)")
    with tf.io.gfile.GFile(path, "r") as f:
        manifest = json.load(f)
    check_schema_version(manifest.get("schema_version"), where=path)
    return manifest


def split_info(manifest: dict[str, Any], size: int, split: str) -> dict[str, Any]:
    datasets = manifest.get("datasets", {})
    if str(size) not in datasets:
        raise ValueError(f"image size {size} not in dataset; it has sizes {sorted(datasets)}")
    if split not in datasets[str(size)]:
        raise ValueError(f"split {split!r} not in dataset; it has {sorted(datasets[str(size)])}")
    return datasets[str(size)][split]


def shard_paths(manifest: dict[str, Any], data_dir: str, size: int, split: str) -> list[str]:
    """Absolute shard paths of one (size, split), in manifest order (sorted by name)."""
    return [join_path(data_dir, s["path"]) for s in split_info(manifest, size, split)["shards"]]


def compression_type(manifest: dict[str, Any]) -> str:
    """'' or 'GZIP', as tf.data.TFRecordDataset takes it."""
    return manifest.get("compression", "") or ""
