"""Encoded images and their records wait on disk between decoding and shard writing, not in the
runner's memory.

DecodeResizeEncode appends each image's full record and its encodings to one spool file per
bundle under OUTPUT/.incomplete/spool/ and passes on only a small transforms.ImageKey (the
file's name and offsets). The shuffles that follow (the plan, the shards' reshuffle) then move
small elements, and WriteShard reads the bytes back in image-id order, a bounded batch at a
time (read_each), each batch with read_all: file by file and front to back, as object stores
stream best. As with Beam's own file sinks, a retried bundle writes a new file under a fresh
name; files nobody refers to are deleted with the rest of .incomplete/ by Finalize.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import Iterable, Iterator

from isicflow import fileio
from isicflow.fileio import join_path

SPOOL_DIR = "spool"
# read_each's memory: a shard's slices are read this much at a time. Each batch opens every spool
# file it touches (up to one per image), cheap on a local disk but a request on an object store,
# where fewer, larger batches pay: 64 MB, still below a default shard (150 MB).
READ_BATCH_BYTES = 4 * 2**20
REMOTE_READ_BATCH_BYTES = 64 * 2**20


def read_batch_bytes(path: str) -> int:
    """read_each's batch for spool files under `path` (a local folder or a URL)."""
    return REMOTE_READ_BATCH_BYTES if fileio.is_url(path) else READ_BATCH_BYTES


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
            self._file = fileio.open_write(self._path)
            self._offset = 0
        self._file.write(data)
        ref = SpoolRef(self._path, self._offset, len(data))
        self._offset += len(data)
        return ref

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def read_all(refs) -> dict:
    """{ref: bytes} for many slices, reading each spool file once, front to back (an object
    store's reader refetches its buffer on every backward or far seek)."""
    by_path: dict = {}
    for ref in refs:
        by_path.setdefault(ref.path, set()).add(ref)
    out = {}
    for path in sorted(by_path):
        with fileio.open_read(path) as f:
            position = 0
            for ref in sorted(by_path[path], key=lambda r: r.offset):
                if ref.offset != position:
                    f.seek(ref.offset)
                data = f.read(ref.length)
                if len(data) != ref.length:
                    raise IOError(f"spool file {path} is short: wanted {ref.length} bytes at "
                                  f"{ref.offset}, got {len(data)}")
                out[ref] = data
                position = ref.offset + ref.length
    return out


def read_each(items: Iterable[tuple[SpoolRef, ...]],
              batch_bytes: int = READ_BATCH_BYTES) -> Iterator[tuple[bytes, ...]]:
    """For each item (a tuple of refs), its slices' bytes, in the items' order. Reads with
    read_all a batch of items of up to batch_bytes at a time, so memory is bounded by the batch
    and not by the shard (a 150 MB shard would otherwise be held whole, once per writer)."""
    batch: list = []
    size = 0
    for item in items:
        batch.append(item)
        size += sum(ref.length for ref in item)
        if size >= batch_bytes:
            yield from _read_batch(batch)
            batch, size = [], 0
    yield from _read_batch(batch)


def _read_batch(batch: list) -> Iterator[tuple[bytes, ...]]:
    data = read_all(ref for item in batch for ref in item)
    for item in batch:
        yield tuple(data[ref] for ref in item)
