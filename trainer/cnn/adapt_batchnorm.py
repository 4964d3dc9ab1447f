"""A trained CNN adapted to a new clinic without its labels: every batch-norm layer's moving
mean and variance re-estimated on that clinic's own images (AdaBN: Li et al., "Adaptive Batch
Normalization for practical domain adaptation", Pattern Recognition 2018). Nothing else changes:
the convolutions, the head and the threshold stay as training left them.

Why: a net trained on three clinics normalises a fourth clinic's activations by the three's
statistics; a camera or colour shift moves those statistics, and re-estimating them is the one
change a clinic can make with unlabelled images it already has.

Cross-fitted, so no image is scored with statistics it helped estimate: image i falls in fold
crc32(image_id) mod N (fixed by its id, not by read order); copy k of the model takes its
statistics from the scored images outside fold k (a seeded sample of at most MAX_IMAGES, fewer
at large sizes: max_images_for; every copy's sample drawn in one pass) and scores fold k.
Images of one lesion can fall in different folds; only unlabelled statistics cross between
them.

The statistics are the mean over batches of ADAPT_BATCH shuffled images of each layer's batch
mean and variance, forward passes in training mode (each layer normalised by its batch, as in
training) with every dropout rate set to 0, so later layers see the earlier layers' adapted
outputs. With test-time augmentation they still come from the unrotated images (a flip or
quarter turn leaves the first layers' per-channel statistics unchanged).

Measured on HAM10000 with each clinic held out: docs/results/cnn-ham-adapt-batchnorm.md.
"""
from __future__ import annotations

import zlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

MAX_IMAGES = 2048   # adaptation images per copy; beyond that a seeded reservoir sample
MAX_BYTES = 1 << 30  # and at most 1 GiB of float32 images (fewer images at large sizes)
MIN_IMAGES = 16     # fewer and the statistics are mostly one batch's noise: refused
ADAPT_BATCH = 128   # images per forward pass while the statistics are estimated


class AdaptationError(ValueError):
    """Adaptation cannot run: the message names the model, the fold or the image counts."""


def fold_of(image_ids: Sequence[str], folds: int) -> np.ndarray:
    """int64 [N]: crc32(image_id) mod folds, the fold each image is scored in."""
    if folds < 2:
        raise AdaptationError(f"cross-fitting needs >= 2 folds, got {folds}")
    return np.array([zlib.crc32(str(i).encode("utf-8")) % folds for i in image_ids], np.int64)


def _layers(model) -> list:
    """Every layer of the model, nested models' layers included (EfficientNet's backbone)."""
    return list(model._flatten_layers(include_self=False))


def batchnorm_layers(model) -> list:
    import keras

    return [layer for layer in _layers(model)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _stack(rows: Sequence[Any]) -> Any:
    if isinstance(rows[0], tuple):
        return tuple(np.stack(parts) for parts in zip(*rows))
    return np.stack(rows)


def sample_by_fold(batches: Iterable[tuple[Any, Sequence[str]]], folds: int,
                   limit: int = MAX_IMAGES, seed: int = 0) -> tuple[list[list[Any]], list[int]]:
    """(samples, eligible): samples[k] a uniform sample of at most `limit` single images from
    outside fold k (fold_of) and eligible[k] how many there were, all `folds` samples drawn in
    one pass over the (batch, image_ids) pairs (reservoir sampling, sample k seeded seed + k:
    memory bounded by folds x limit images whatever the dataset's size). Rows are copied, so a
    kept image does not hold its whole decoded batch in memory."""
    rngs = [np.random.default_rng(seed + k) for k in range(folds)]
    samples: list[list[Any]] = [[] for _ in range(folds)]
    eligible = [0] * folds
    for x, ids in batches:
        x = tuple(np.asarray(p) for p in x) if isinstance(x, (tuple, list)) else np.asarray(x)
        for i, fold in enumerate(fold_of(ids, folds)):
            row = None  # copied only once a sample keeps it (most are not, past `limit`)
            for k in range(folds):
                if k == fold:
                    continue
                j = (len(samples[k]) if len(samples[k]) < limit
                     else int(rngs[k].integers(0, eligible[k] + 1)))
                eligible[k] += 1
                if j >= limit:
                    continue
                if row is None:
                    row = (tuple(np.array(part[i]) for part in x) if isinstance(x, tuple)
                           else np.array(x[i]))
                if j == len(samples[k]):
                    samples[k].append(row)
                else:
                    samples[k][j] = row
    return samples, eligible


def recalibrate(model, images: Sequence[Any], batch_size: int = ADAPT_BATCH, seed: int = 0) -> int:
    """Sets each batch-norm layer's moving mean and variance of `model` (in place) to the
    image-weighted mean of its batch statistics over `images` (single images, shuffled with
    `seed` into batches of batch_size); every dropout rate is set to 0 first, so the model is
    for scoring only afterwards. Returns the number of images. AdaptationError for a model
    without batch norm or no images."""
    import keras

    norms = batchnorm_layers(model)
    if not norms:
        raise AdaptationError(f"model {model.name!r} has no batch-norm layer: nothing to adapt")
    if not images:
        raise AdaptationError("no images to estimate the batch-norm statistics from")
    for layer in _layers(model):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0  # stochastic depth too (a Dropout with a noise shape)
    for layer in norms:
        layer.trainable = True  # a frozen batch norm ignores training=True
    order = np.random.default_rng(seed).permutation(len(images))
    seen = 0
    for start in range(0, len(order), batch_size):
        batch = _stack([images[i] for i in order[start:start + batch_size]])
        n = len(order[start:start + batch_size])
        for layer in norms:
            layer.momentum = seen / (seen + n)  # running mean weighted by images
        model(batch, training=True)
        seen += n
    return seen


def adapted_copies(load_model: Callable[[], Any],
                   batches: Callable[[], Iterable[tuple[Any, Sequence[str]]]], folds: int,
                   seed: int = 0, min_images: int = MIN_IMAGES,
                   max_images: int = MAX_IMAGES) -> tuple[list[Any], list[int]]:
    """(copies, images each was adapted on): copy k (a fresh load_model()) recalibrated on at
    most max_images of the images of batches() (an iterator of (batch, image_ids)) outside
    fold k, every copy's sample drawn in one pass. AdaptationError when a copy would see fewer
    than min_images."""
    samples, eligible = sample_by_fold(batches(), folds, limit=max_images, seed=seed)
    for k, count in enumerate(eligible):
        if count < min_images:
            raise AdaptationError(f"--adapt_batchnorm={folds}: the copy scoring fold {k} would "
                                  f"estimate its statistics from {count} images (outside "
                                  f"fold {k}); it needs >= {min_images}: score more images or "
                                  "use fewer folds")
    copies, counts = [], []
    for k in range(folds):
        model = load_model()
        counts.append(recalibrate(model, samples[k], seed=seed + k))
        samples[k] = []  # this copy's sample is freed before the next copy is adapted
        copies.append(model)
    return copies, counts


def crossfit(per_copy: Sequence[Mapping[str, Any]], folds: int) -> dict[str, Any]:
    """One split's prediction columns ({"image_id": ..., other columns row-aligned}) from the
    copy whose fold each image falls in: row i from per_copy[fold_of(image_id_i)]. Every copy
    must have scored the same images in the same order (AdaptationError otherwise)."""
    ids = [str(i) for i in per_copy[0]["image_id"]]
    for k, columns in enumerate(per_copy[1:], start=1):
        if [str(i) for i in columns["image_id"]] != ids:
            raise AdaptationError(f"copy {k} scored other images or another order than copy 0")
    fold = fold_of(ids, folds) if ids else np.zeros([0], np.int64)
    out: dict[str, Any] = {}
    for name, column in per_copy[0].items():
        if isinstance(column, list):
            out[name] = [per_copy[int(f)][name][i] for i, f in enumerate(fold)]
        else:
            stacked = np.stack([np.asarray(c[name]) for c in per_copy])  # [folds, N, ...]
            out[name] = stacked[fold, np.arange(len(ids))] if ids else np.asarray(column)
    return out


def max_images_for(image_size: int, folds: int = 1) -> int:
    """Images per copy: MAX_IMAGES, or fewer where the folds' samples (held together while they
    are drawn) would pass MAX_BYTES of float32 images (>= MIN_IMAGES). One fold: 2,048 up to
    209 px, 1,783 at 224 px, 1,365 at 256 px, 341 at 512 px; two folds: 2,048 up to 147 px,
    891 at 224 px."""
    per_image = image_size * image_size * 3 * 4 * max(1, folds)
    return max(MIN_IMAGES, min(MAX_IMAGES, MAX_BYTES // per_image))


def score_cross_fitted(load_model: Callable[[], Any],
                       batches: Callable[[], Iterable[tuple[Any, Sequence[str]]]],
                       score: Callable[[Any], Mapping[str, Mapping[str, Any]]], folds: int,
                       seed: int, image_size: int) -> tuple[dict[str, dict[str, Any]], dict]:
    """(per-split prediction columns, the report's summary) of the whole scheme: `folds`
    copies adapted (adapted_copies, at most max_images_for(image_size, folds) images each),
    every copy's score(copy) -> {split: columns} (one pass over the data per copy), then each
    split cross-fitted (crossfit). The one caller-side step for both tasks; AdaptationError as
    adapted_copies and crossfit raise it."""
    copies, counts = adapted_copies(load_model, batches, folds, seed,
                                    max_images=max_images_for(image_size, folds))
    scored = [score(copy) for copy in copies]
    per_split = {split: crossfit([one[split] for one in scored], folds) for split in scored[0]}
    return per_split, summary(folds, counts, seed)


def summary(folds: int, counts: Sequence[int], seed: int) -> dict[str, Any]:
    """What the report records about the adaptation (report.json "adapt_batchnorm")."""
    return {"method": "batch-norm statistics re-estimated on the scored images, unlabelled "
                      "(AdaBN), cross-fitted: each image scored by a copy adapted on the other "
                      "folds", "folds": folds, "fold_rule": "crc32(image_id) mod folds",
            "sentence": f"Adapted without labels: each image scored by one of {folds} copies "
                        "of the model whose batch-norm statistics were re-estimated on the "
                        "other scored images (not its own fold): "
                        + ", ".join(str(int(c)) for c in counts) + " images per copy.",
            "images_per_copy": [int(c) for c in counts],
            "batch_size": ADAPT_BATCH, "seed": seed}
