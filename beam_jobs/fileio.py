"""The data engine's file access: Beam's file systems, else TensorFlow's, behind one interface.

Beam's FileSystems cover local paths and gs:// (s3:// with apache-beam[aws]) and need no
TensorFlow, so the pipeline's workers never import it (~3 s and ~0.5 GB per worker process).
Schemes only TensorFlow knows (s3:// through tensorflow-io, ram:// in tests) go through
tf.io.gfile, imported only then.
"""
from __future__ import annotations

import gzip
import importlib.util
import posixpath
from typing import BinaryIO

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

_RAW = CompressionTypes.UNCOMPRESSED


def _beam_knows(path: str) -> bool:
    try:
        filesystem = FileSystems.get_filesystem(path)
    except ValueError:
        return False
    if filesystem.scheme() == "s3":  # Beam's S3 needs apache-beam[aws]; else tensorflow-io's
        return importlib.util.find_spec("boto3") is not None
    return True


def open_read(path: str) -> BinaryIO:
    """A binary reader (seekable for local files) of the bytes as stored."""
    if _beam_knows(path):
        return FileSystems.open(path, compression_type=_RAW)
    import tensorflow as tf

    return tf.io.gfile.GFile(path, "rb")


def open_write(path: str) -> BinaryIO:
    """A binary writer of a new file, parent folders created as needed."""
    if _beam_knows(path):
        return FileSystems.create(path, compression_type=_RAW)  # creates local parents
    import tensorflow as tf

    tf.io.gfile.makedirs(posixpath.dirname(path))
    return tf.io.gfile.GFile(path, "wb")


def write_bytes(path: str, data: bytes) -> None:
    with open_write(path) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def gzip_writer(raw: BinaryIO) -> gzip.GzipFile:
    """GZIP over a raw writer; no name or time in the header, so two runs write equal bytes."""
    return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)


def exists(path: str) -> bool:
    if _beam_knows(path):
        return FileSystems.exists(path)
    import tensorflow as tf

    return tf.io.gfile.exists(path)


def rename(source: str, destination: str) -> None:
    """Moves one file, replacing the destination and creating its folder."""
    if _beam_knows(source):
        parent = posixpath.dirname(destination)
        if parent and not FileSystems.exists(parent):
            FileSystems.mkdirs(parent)  # a no-op on object stores
        FileSystems.rename([source], [destination])  # replaces (POSIX rename; copy on GCS)
        return
    import tensorflow as tf

    tf.io.gfile.makedirs(posixpath.dirname(destination))
    tf.io.gfile.rename(source, destination, overwrite=True)


def delete_tree(path: str) -> None:
    """Deletes a folder and everything under it, if it exists."""
    if _beam_knows(path):
        if isinstance(FileSystems.get_filesystem(path), LocalFileSystem):
            if FileSystems.exists(path):
                FileSystems.delete([path])  # the folder and its contents
            return
        # Object stores have no folders: a path ending in "/" deletes the prefix in batches.
        if FileSystems.match([path.rstrip("/") + "/**"])[0].metadata_list:
            FileSystems.delete([path.rstrip("/") + "/"])
        return
    import tensorflow as tf

    if tf.io.gfile.exists(path):
        tf.io.gfile.rmtree(path)
