"""The run folder (--workdir) toolkit every trainer shares: file names, the one atomic JSON
writer, and the one history.json format with its one reader.

history.json is columnar, as Keras' History.history: {"epoch": [1, 2, ...], metric: [value per
epoch], ...}, "epoch" first, then the other keys sorted; a value that is missing or not finite
is null. The CNN (after every Keras epoch), the DCGAN loop, resume and early stopping, and the
training-curve plots all go through write_history / read_history.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping

import numpy as np

HISTORY_NAME = "history.json"
GAN_CONFIG_NAME = "gan_config.json"  # in checkpoints/: the DCGAN's architecture, for the sampler


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN and +-inf -> None (the reason lives beside it);
    anything else JSON cannot hold (paths, ...) -> its str()."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_jsonable(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)  # paths and the like, as a record of what was used


def write_json(path: str, payload: Mapping[str, Any]) -> str:
    """Strict JSON (allow_nan=False), written to a temp file then renamed: never half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(payload), f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def write_history(path: str, entries: Iterable[Mapping[str, Any]]) -> str:
    """One dict per epoch (each with "epoch") -> history.json, columnar, atomically."""
    return write_json(path, history_columns(entries))  # NaN -> null


def read_history(path: str) -> list[dict[str, Any]]:
    """history.json -> one dict per epoch (null values left out); [] when there is none yet.

    Every value must be a list of numbers or nulls, all as long as "epoch"."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        columns = json.load(f)
    if not isinstance(columns, dict):
        raise ValueError(f"{path}: history must be a JSON object of metric -> list, got "
                         f"{type(columns).__name__}")
    for key, values in columns.items():
        if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) or v is None for v in values):
            raise ValueError(f"{path}: history[{key!r}] must be a list of numbers, got "
                             f"{values!r:.80}")
    epochs = columns.get("epoch", [])
    return [{k: v[i] for k, v in columns.items() if i < len(v) and v[i] is not None}
            for i in range(len(epochs))]


def history_columns(entries: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Per-epoch dicts -> {metric: [value per epoch]}, NaN where an epoch lacks the value."""
    entries = list(entries)
    keys = sorted({k for e in entries for k in e}, key=lambda k: (k != "epoch", k))
    return {k: [e.get(k, math.nan) for e in entries] for k in keys}
