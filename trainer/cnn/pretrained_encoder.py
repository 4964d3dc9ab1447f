"""The pretrained encoder's run folder (written by `python -m trainer.cnn.pretrain`, read by
`python -m trainer.cnn --init_encoder=RUN`): its file names, the settings a classifier must
share with it, and the one copy of its weights into a classifier.

    RUN/encoder.keras          the classifier's layers up to its pooled features (`gap`)
    RUN/pretrain_summary.json  {"config": {architecture, width_multiplier, color_constancy,
                               center_crop, image_size, ...}, "images": ..., ...}
    RUN/history.json           per epoch: loss, pair_accuracy, learning_rate (run_folder)
    RUN/image_ids.txt          the image_id of every record it learned from, sorted

The weights go across by layer name, so a classifier of another architecture or width is
refused, naming the layers that differ. No TensorFlow at import (the trainer's config checks
read the summary before any model exists).
"""
from __future__ import annotations

import json
import os
from typing import Any, Mapping, Sequence

from trainer.core.program import UserError

ENCODER_NAME = "encoder.keras"
SUMMARY_NAME = "pretrain_summary.json"
IMAGE_IDS_NAME = "image_ids.txt"         # every image the encoder learned from, one id a line
EVALUATION_SPLITS = ("validation", "test")
ENCODER_LAYER = "gap"                    # the classifier layer whose output is the encoder's
ARCHITECTURES = ("compact", "residual")  # the classifiers that have it
# The settings a classifier must share with its encoder (its layers' shapes and what its
# first layers do to the image); image_size may differ (the convolutions do not depend on it).
MATCHING_SETTINGS = ("architecture", "width_multiplier", "color_constancy", "center_crop")


class PretrainError(UserError, ValueError):
    """The encoder cannot be built, read or copied; the message names the path or layers (a
    UserError: the programs print it as one line and exit 2)."""


def encoder_path(path: str) -> str:
    """A pretraining run folder or its encoder file -> the encoder file (PretrainError if
    missing)."""
    file = os.path.join(path, ENCODER_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise PretrainError(f"--init_encoder={path}: no {ENCODER_NAME} there; give a "
                            "`python -m trainer.cnn.pretrain` run folder or its encoder file")
    return file


def read_summary(path: str) -> dict[str, Any]:
    """The pretraining summary beside the encoder (PretrainError if missing or unreadable)."""
    file = os.path.join(os.path.dirname(encoder_path(path)), SUMMARY_NAME)
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise PretrainError(f"--init_encoder={path}: cannot read {file} ({e}); the encoder's "
                            "settings are unknown") from None


def setting_differences(summary: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """'name: encoder X, classifier Y' for each MATCHING_SETTINGS value that differs between
    the summary's config and `settings` (the classifier's, by the same names)."""
    out = []
    for name in MATCHING_SETTINGS:
        mine, theirs = summary.get("config", {}).get(name), settings.get(name)
        if isinstance(mine, (int, float)) and isinstance(theirs, (int, float)):
            same = float(mine) == float(theirs)
        else:
            same = mine == theirs
        if not same:
            out.append(f"{name}: encoder {mine!r}, classifier {theirs!r}")
    return out


def write_image_ids(folder: str, ids) -> str:
    """IMAGE_IDS_NAME in `folder`: the ids, sorted and unique, one a line."""
    path = os.path.join(folder, IMAGE_IDS_NAME)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{i}\n" for i in sorted(set(ids)))
    return path


def read_image_ids(path: str) -> set[str] | None:
    """The ids the encoder at `path` learned from; None for a run that did not record them."""
    file = os.path.join(os.path.dirname(encoder_path(path)), IMAGE_IDS_NAME)
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        return {line.strip() for line in f if line.strip()}


def images_seen(pretrained: set[str], evaluated: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """{split: how many of its image ids the encoder learned from}, splits with none left out:
    images that shaped the encoder are not unseen images, whichever folder they came from."""
    return {split: n for split, ids in evaluated.items()
            if (n := sum(1 for i in ids if i in pretrained))}


def overlap_note(seen: Mapping[str, int] | None) -> str | None:
    """What a run starting from the encoder should say of images_seen's count (None: the
    pretraining did not record its images), or None when it saw none of them."""
    if seen is None:
        return ("the pretraining run did not record its images: whether it saw this run's "
                "validation and test images is unknown")
    if not seen:
        return None
    return ("the encoder learned (without labels) from "
            + ", ".join(f"{n} {split}" for split, n in seen.items())
            + " images of this run: their scores are not those of unseen images")


def load_encoder_weights(model: Any, path: str) -> dict[str, int]:
    """Copies every weighted layer of the encoder at `path` into the same-named layer of
    `model` (in place); returns {"layers": ..., "parameters": ...} copied. PretrainError,
    naming the layers, when one is missing from `model` or has other weight shapes (another
    architecture or width), so nothing is half-copied."""
    from trainer.cnn import models

    encoder = models.load_keras_model(encoder_path(path))
    plan, problems = [], []
    for layer in encoder.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        try:
            target = model.get_layer(layer.name)
        except ValueError:
            problems.append(f"{layer.name} (not in the classifier)")
            continue
        theirs = [w.shape for w in target.get_weights()]
        if theirs != [w.shape for w in weights]:
            problems.append(f"{layer.name} (encoder {[w.shape for w in weights]}, classifier "
                            f"{theirs})")
            continue
        plan.append((target, weights))
    if problems or not plan:
        raise PretrainError(f"--init_encoder={path}: the encoder does not fit the classifier "
                            f"{model.name!r}: " + ("; ".join(problems[:6]) or "no weighted layer")
                            + (f" and {len(problems) - 6} more" if len(problems) > 6 else ""))
    for target, weights in plan:
        target.set_weights(weights)
    return {"layers": len(plan),
            "parameters": int(sum(w.size for _, ws in plan for w in ws))}
