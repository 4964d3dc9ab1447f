"""File access for the layout readers: local paths through os, URLs (gs://, s3://, ram://)
through TensorFlow's file systems, so an archive in a bucket reads like a local folder."""
from __future__ import annotations

import io
import os
from typing import Iterator


def is_url(path: str) -> bool:
    return "://" in path


def walk(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """Top-down walk; prune by editing dirnames in place, as with os.walk."""
    if not is_url(root):
        yield from os.walk(root, followlinks=True)
        return
    import tensorflow as tf

    for dirpath, dirnames, filenames in tf.io.gfile.walk(root):
        yield dirpath.rstrip("/"), dirnames, filenames


def isdir(path: str) -> bool:
    if not is_url(path):
        return os.path.isdir(path)
    import tensorflow as tf

    return tf.io.gfile.isdir(path)


def canonical(path: str) -> str:
    """Absolute local path, or the URL without a trailing slash."""
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def real_dir(path: str) -> str:
    """What a folder link points to (local); URLs have no links."""
    return path if is_url(path) else os.path.realpath(path)


def read_bytes(path: str, limit: int = -1) -> bytes:
    if not is_url(path):
        with open(path, "rb") as handle:
            return handle.read(limit)
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "rb") as handle:
        return handle.read(limit)


def open_text(path: str, encoding: str = "utf-8-sig", newline: str | None = None):
    """A text handle; URLs are read whole (metadata files are small)."""
    if not is_url(path):
        return open(path, encoding=encoding, newline=newline)
    return io.TextIOWrapper(io.BytesIO(read_bytes(path)), encoding=encoding, newline=newline)
