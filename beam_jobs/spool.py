"""Encoded images wait on disk between decoding and shard writing, not in the runner's memory.

DecodeResizeEncode appends each image's encoded bytes to one spool file per bundle under
OUTPUT/.incomplete/spool/ and passes on only a SpoolRef (path, offset, length). The shuffles
that follow (plan, GroupByShard) then move small elements, so the runner's memory does not
grow with the number of images, and WriteShard reads the bytes back in image-id order. As with
Beam's own file sinks, a retried bundle writes a new file under a fresh name; files nobody
refers to are deleted with the rest of .incomplete/ by Finalize. Spool files go through Beam's
file systems (local, gs://, s3://), whose readers seek cheaply.
"""
from __future__ import annotations

import dataclasses
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from isicflow.manifest import join_path

UNCOMPRESSED = CompressionTypes.UNCOMPRESSED

SPOOL_DIR = "spool"


@dataclasses.dataclass(frozen=True)
class SpoolRef:
    path: str
    offset: int
    length: int


class SpoolWriter:
    """Appends byte strings to one new file, opened at the first append; `close` makes it whole."""

    def __init__(self, directory: str):
        self.directory = directory
        self._file = None
        self._path = ""
        self._offset = 0

    def append(self, data: bytes) -> SpoolRef:
        if self._file is None:
            self._path = join_path(self.directory, f"{uuid.uuid4().hex}.spool")
            self._file = FileSystems.create(self._path, compression_type=UNCOMPRESSED)
            self._offset = 0
        self._file.write(data)
        ref = SpoolRef(self._path, self._offset, len(data))
        self._offset += len(data)
        return ref

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class SpoolReader:
    """Reads SpoolRefs back, keeping each spool file open until `close`."""

    def __init__(self):
        self._files: dict = {}

    def read(self, ref: SpoolRef) -> bytes:
        f = self._files.get(ref.path)
        if f is None:
            f = self._files[ref.path] = FileSystems.open(ref.path, compression_type=UNCOMPRESSED)
        f.seek(ref.offset)
        data = f.read(ref.length)
        if len(data) != ref.length:
            raise IOError(f"spool file {ref.path} is short: wanted {ref.length} bytes at "
                          f"{ref.offset}, got {len(data)}")
        return data

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> "SpoolReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
