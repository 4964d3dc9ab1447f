"""Checks of what a GAN program reads, done before it writes anything: each failure is one
program.UserError that names the flag and says what would fix it (exit 2, no traceback).

The library functions below them raise FileNotFoundError/ValueError with the path in the message;
these checks add the flag, so the programs share one wording.
"""
from __future__ import annotations

import os
from typing import Sequence

from isicflow import fileio
from trainer.core import program

_GAN_RUN = ("pass a GAN run folder (the --workdir of python -m trainer.gan), its checkpoints/ "
            "folder or a checkpoint prefix")
_DATASET = "a dataset folder written by beam_jobs.preprocess (it holds manifest.json)"


def required(flag: str, value, what: str) -> None:
    if not value:
        program.fail(f"--{flag} is required: {what}")


def folder_to_write(flag: str, path: str, what: str) -> None:
    """--workdir/--output: given, and not a file (a folder, or nothing yet)."""
    required(flag, path, what)
    if os.path.exists(path) and not os.path.isdir(path):
        program.fail(f"--{flag}={path} is a file: pass a folder ({what})")


def generator(model: str, flag: str = "model") -> tuple[str, dict]:
    """--model as the sampler reads it -> (checkpoint prefix, architecture of gan_config.json)."""
    required(flag, model, _GAN_RUN)
    local = not fileio.is_url(model)  # a gs:// prefix is for TensorFlow to find
    if local and not os.path.exists(model) and not os.path.exists(model + ".index"):
        program.fail(f"--{flag}={model}: no such folder or checkpoint; {_GAN_RUN}")
    from trainer.gan import sampling

    try:
        return sampling.resolve_checkpoint(model)
    except FileNotFoundError as e:
        program.fail(f"--{flag}={model} is not a GAN run: {e}; {_GAN_RUN}")


def dataset(data_dir: str, image_size: int, splits: Sequence[str], *, labels: str = "all",
            size_from: str = "--image_size", minimum: int = 1, flag: str = "data_dir") -> dict:
    """The manifest of --data_dir, once it is known to hold `image_size` px images and at least
    `minimum` records (of `labels`: 'all', or 'binary' = benign/malignant) in each split."""
    required(flag, data_dir, _DATASET)
    from isicflow import dataset as dataset_lib

    if not fileio.is_url(data_dir) and not os.path.isdir(data_dir):
        program.fail(f"--{flag}={data_dir}: no such folder; pass {_DATASET}")

    try:
        manifest = dataset_lib.read_manifest(data_dir)
    except FileNotFoundError as e:
        program.fail(f"--{flag}={data_dir}: {e}")
    sizes = manifest.get("datasets", {})
    if str(image_size) not in sizes:
        program.fail(f"--{flag}={data_dir} holds images at {sorted(int(s) for s in sizes)} "
                     f"px, not at {image_size} px ({size_from}): use one of those sizes, or run "
                     f"beam_jobs.preprocess with --image_size={image_size}")
    for split in splits:
        info = sizes[str(image_size)].get(split)
        if info is None:
            program.fail(f"--{flag}={data_dir} has no {split!r} split at {image_size} px; it "
                         f"has {sorted(sizes[str(image_size)])}")
        counts = info.get("counts", {})
        records = int(info.get("records", 0)) if labels == "all" else (
            int(counts.get("benign", 0)) + int(counts.get("malignant", 0)))
        if records < minimum:
            kind = "" if labels == "all" else " benign/malignant"
            program.fail(f"--{flag}={data_dir}: split {split!r} at {image_size} px has "
                         f"{records}{kind} images, fewer than the {minimum} needed")
    return manifest


def checked(flag: str | None, check, *args, **kwargs):
    """check(*args, **kwargs), its ValueError or FileNotFoundError a UserError naming --flag
    (None: the message names the flags already)."""
    try:
        return check(*args, **kwargs)
    except (ValueError, FileNotFoundError) as e:
        message = str(e)
        named = flag is None or message.startswith("--")
        program.fail(message if named else f"--{flag}: {message}")

