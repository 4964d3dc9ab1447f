"""The dataset a CNN program reads, found and opened once: its manifest, or one line naming the
flag that points at it. Light (no TensorFlow, no Beam for a local folder), so a mistake is
reported before anything heavy is imported or any output folder is made."""
from __future__ import annotations

import os
from typing import Any

from trainer.core.program import UserError


class DataError(UserError, ValueError):
    """A dataset a flag names is missing or unusable; the message names the flag and path."""


def read_manifest_or_fail(flag: str, data_dir: str) -> dict[str, Any]:
    """The manifest of the dataset folder `flag` names (local or gs://); DataError when absent,
    unreadable or of another schema version."""
    from isicflow import dataset as dataset_lib, fileio

    if not data_dir:
        raise DataError(f"{flag} is empty: give a dataset folder written by "
                        "beam_jobs.preprocess")
    if not fileio.is_url(data_dir) and not os.path.isdir(data_dir):
        raise DataError(f"{flag}={data_dir}: no such folder; give a dataset folder written by "
                        "beam_jobs.preprocess (python -m beam_jobs.preprocess --input=... "
                        "--output=...)")
    try:
        return dataset_lib.read_manifest(data_dir)  # local files are read without Beam
    except FileNotFoundError:
        raise DataError(f"{flag}={data_dir}: no {dataset_lib.MANIFEST_NAME} in it (not a "
                        "finished engine output); give a dataset folder written by "
                        "beam_jobs.preprocess") from None
    except ValueError as e:  # a schema version this code does not read, or bad JSON
        raise DataError(f"{flag}={data_dir}: {e}") from None
