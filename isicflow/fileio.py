"""The one route to files, for the data engine, its launcher and the dataset writer alike.

Bytes (read, write, exists, rename, delete) go through Beam's file systems: they cover local
paths and gs:// (s3:// with apache-beam[aws]) and need no TensorFlow, so the pipeline's workers
never import it (seconds and hundreds of MB per worker process). Folders (walk, list, make,
test) are local paths through os; Beam's file systems have none, so URLs use TensorFlow's.
Schemes only TensorFlow knows (s3:// through tensorflow-io, ram:// in tests) go through
tf.io.gfile for everything, imported only then. Beam itself is imported on first use, and
never to read or test a local file, so the trainers never import it.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import os
import posixpath
from typing import BinaryIO, Iterator


def is_url(path: str) -> bool:
    return "://" in path


def join_path(root: str, *parts: str) -> str:
    """Joins paths of local folders and of URLs (gs://, s3://) alike."""
    return posixpath.join(root.rstrip("/"), *parts) if is_url(root) else os.path.join(root, *parts)


def canonical(path: str) -> str:
    """Absolute local path, or the URL without a trailing slash."""
    return path.rstrip("/") if is_url(path) else os.path.abspath(path)


def real_dir(path: str) -> str:
    """What a folder link points to (local); URLs have no links."""
    return path if is_url(path) else os.path.realpath(path)


def _filesystems():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def _beam_knows(path: str) -> bool:
    try:
        filesystem = _filesystems().get_filesystem(path)
    except ValueError:
        return False
    if filesystem.scheme() == "s3":  # Beam's S3 needs apache-beam[aws]; else tensorflow-io's
        return importlib.util.find_spec("boto3") is not None
    return True


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _raw():
    from apache_beam.io.filesystem import CompressionTypes

    return CompressionTypes.UNCOMPRESSED


# ---- bytes ----

def open_read(path: str) -> BinaryIO:
    """A binary reader (seekable for local files) of the bytes as stored."""
    if not is_url(path):  # local: no Beam import (seconds, and its warnings) in the trainers
        return open(path, "rb")
    if _beam_knows(path):
        return _filesystems().open(path, compression_type=_raw())
    return _gfile().GFile(path, "rb")


def open_write(path: str) -> BinaryIO:
    """A binary writer of a new file, parent folders created as needed."""
    if _beam_knows(path):
        return _filesystems().create(path, compression_type=_raw())  # creates local parents
    _gfile().makedirs(posixpath.dirname(path))
    return _gfile().GFile(path, "wb")


def write_bytes(path: str, data: bytes) -> None:
    with open_write(path) as f:
        f.write(data)


def read_bytes(path: str, limit: int = -1) -> bytes:
    """The file's bytes, or its first `limit` bytes."""
    with open_read(path) as f:
        return f.read(limit)


def open_text(path: str, encoding: str = "utf-8-sig", newline: str | None = None):
    """A text handle; URLs are read whole (metadata files are small)."""
    if not is_url(path):
        return open(path, encoding=encoding, newline=newline)
    return io.TextIOWrapper(io.BytesIO(read_bytes(path)), encoding=encoding, newline=newline)


def gzip_writer(raw: BinaryIO) -> gzip.GzipFile:
    """GZIP over a raw writer; no name or time in the header, so two runs write equal bytes."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(path)
    if _beam_knows(path):
        return _filesystems().exists(path)
    return _gfile().exists(path)


def rename(source: str, destination: str) -> None:
    """Moves one file, replacing the destination and creating its folder."""
    if _beam_knows(source):
        filesystems = _filesystems()
        parent = posixpath.dirname(destination)
        if parent and not filesystems.exists(parent):
            filesystems.mkdirs(parent)  # a no-op on object stores
        filesystems.rename([source], [destination])  # replaces (POSIX rename; copy on GCS)
        return
    _gfile().makedirs(posixpath.dirname(destination))
    _gfile().rename(source, destination, overwrite=True)


def remove(path: str) -> None:
    """Deletes one file."""
    if _beam_knows(path):
        _filesystems().delete([path])
    else:
        _gfile().remove(path)


def delete_tree(path: str) -> None:
    """Deletes a folder and everything under it, if it exists."""
    if _beam_knows(path):
        from apache_beam.io.localfilesystem import LocalFileSystem

        filesystems = _filesystems()
        if isinstance(filesystems.get_filesystem(path), LocalFileSystem):
            if filesystems.exists(path):
                filesystems.delete([path])  # the folder and its contents
            return
        # Object stores have no folders: a path ending in "/" deletes the prefix in batches.
        if filesystems.match([path.rstrip("/") + "/**"])[0].metadata_list:
            filesystems.delete([path.rstrip("/") + "/"])
        return
    if _gfile().exists(path):
        _gfile().rmtree(path)


# ---- folders: os for local paths (no TensorFlow), TensorFlow's file systems for URLs ----

def isdir(path: str) -> bool:
    return _gfile().isdir(path) if is_url(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
    """Names in a folder (sub-folders of a URL may end in "/")."""
    return _gfile().listdir(path) if is_url(path) else os.listdir(path)


def makedirs(path: str) -> None:
    if is_url(path):
        _gfile().makedirs(path)
    else:
        os.makedirs(path, exist_ok=True)


def walk(root: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """Top-down walk; prune by editing dirnames in place, as with os.walk."""
    if not is_url(root):
        yield from os.walk(root, followlinks=True)
        return
    for dirpath, dirnames, filenames in _gfile().walk(root):
        yield dirpath.rstrip("/"), dirnames, filenames
