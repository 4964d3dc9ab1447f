"""The dataset a CNN program reads, found and opened once: its manifest, or one line naming the
flag that points at it. Light (no TensorFlow, no Beam for a local folder), so a mistake is
reported before anything heavy is imported or any output folder is made."""
from __future__ import annotations

import json
import os
from typing import Any

from trainer.core.program import UserError


class DataError(UserError, ValueError):
    """A dataset a flag names is missing or unusable; the message names the flag and path."""


def read_manifest_or_fail(flag: str, data_dir: str) -> dict[str, Any]:
    """The manifest of the dataset folder `flag` names (local or gs://); DataError when absent."""
    from isicflow import dataset as dataset_lib, fileio, schema

    if not data_dir:
        raise DataError(f"{flag} is empty: give a dataset folder written by "
                        "beam_jobs.preprocess")
    path = fileio.join_path(data_dir, dataset_lib.MANIFEST_NAME)
    if fileio.is_url(data_dir):
        if not fileio.exists(path):
            raise DataError(f"{flag}={data_dir}: no {dataset_lib.MANIFEST_NAME} in it (not a "
                            "finished engine output)")
        return dataset_lib.read_manifest(data_dir)
    # a local folder is read with os: fileio would import Beam (and print its warnings) first
    if not os.path.isfile(path):
        what = "no such folder" if not os.path.isdir(data_dir) else \
            f"no {dataset_lib.MANIFEST_NAME} in it (not a finished engine output)"
        raise DataError(f"{flag}={data_dir}: {what}; give a dataset folder written by "
                        "beam_jobs.preprocess (python -m beam_jobs.preprocess --input=... "
                        "--output=...)")
    with open(path, encoding="utf-8") as f:
        manifest = json.load(f)
    try:
        schema.check_schema_version(manifest.get("schema_version"), where=path)
    except ValueError as e:
        raise DataError(f"{flag}={data_dir}: {e}") from None
    return manifest
