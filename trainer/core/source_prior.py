"""Source-prior logit adjustment (logit adjustment, Menon et al. 2021, conditioned on the
acquisition source) for the binary task.

On HAM10000 the sources' malignant rates differ by two orders of magnitude, so a net can score
well by recognising the source and answering its base rate. During training the model's logit
gets a fixed, non-learned offset: its source's log prior odds relative to the whole split. The
base rate then comes for free from the offset, and the image model gains nothing by encoding
it. At validation, evaluation and export the offset is 0: the deployed model is the plain
image model, which with_source_offset wraps only for fit.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import keras

from isicflow import dataset as dataset_lib
from trainer.core.input_pipeline import labelled_record, train_sources


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


def source_offsets(manifest: Mapping[str, Any], split: str = "train") -> dict[str, float]:
    """{source_collection: offset} for every named source of `split`, from the manifest's
    per_split_label_diagnosis_source counts (benign and malignant records only).

    With m_s malignant of n_s records in source s, and m of n in the whole split (records
    without a source included):
        p_s = (m_s + 1) / (n_s + 2),   p = (m + 1) / (n + 2)       (Laplace smoothing)
        offset_s = logit(p_s) - logit(p),   logit(q) = log(q / (1 - q))
    so a source richer in melanoma than the split gets a positive offset, and one with no
    malignant record a finite negative one. ValueError when the split holds fewer than two
    named sources (nothing to adjust between) or no such rows at all.
    """
    rows = [r for r in dataset_lib.count_rows(manifest)
            if r["split"] == split and labelled_record(r)]
    sources = train_sources(manifest, split)
    if not rows or len(sources) < 2:
        raise ValueError(f"source-prior offsets need >= 2 named sources with benign/malignant "
                         f"records in split {split!r}; the manifest's counts give "
                         f"{sources or 'none'} ({len(rows)} benign/malignant rows)")
    malignant = sum(r["count"] for r in rows if r["label"] == "malignant")
    total = sum(r["count"] for r in rows)
    base = _logit((malignant + 1) / (total + 2))
    offsets = {}
    for source in sources:
        own = [r for r in rows if r["source_collection"] == source]
        m_s = sum(r["count"] for r in own if r["label"] == "malignant")
        n_s = sum(r["count"] for r in own)
        offsets[source] = _logit((m_s + 1) / (n_s + 2)) - base
    return offsets


SOURCE_WEIGHTS = ("records", "rare_class")  # how independent_group_weights weighs a source


def independent_group_weights(per_source: Mapping[str, Mapping[int, int]],
                              source_weight: str = "records") -> dict[tuple[str, int], float]:
    """{(source, class): sampling probability} for --source_label_independence: each group of
    the train split drawn as if the class did not depend on the source.

    With n_sy records of class y in source s, n_s = sum_y n_sy, n_y = sum_s n_sy, n = sum n_sy
    (named sources only), the stream draws group (s, y) with probability
        q_sy = w_s (n_y / n),   so q(y | s) = n_y / n in every source,
    and recognising the clinic tells the net nothing about the label. The classes keep their
    pooled shares; w_s, the source's share of the draws, is
      records:    w_s = n_s / n      each source keeps its share of the images; a rare class's
                                     records in a source poor in it are drawn many times over
                                     (vidir_molemax's ~12 training melanomas on HAM10000:
                                     ~9-15x), those of a rich source fewer times (~0.3-0.6x);
      rare_class: w_s = n_sr / n_r   r the class with fewest records: every record of r is
                                     drawn at 1/n, exactly as stored, and each source's other
                                     classes are resampled to the pooled mix (a source poor in
                                     r gives few of its common records, one rich in r repeats
                                     them).
    ValueError when fewer than two named sources or classes hold records, a source lacks a
    class (its q_sy could never be drawn) or records name no source, with the counts.
    per_source: {source: {class index: n}} ("" for records without a source)."""
    if source_weight not in SOURCE_WEIGHTS:
        raise ValueError(f"source_weight {source_weight!r} not in {SOURCE_WEIGHTS}")
    named = {s: {int(k): int(v) for k, v in c.items() if v} for s, c in per_source.items()
             if s and sum(c.values())}
    unnamed = sum(per_source.get("", {}).values())
    classes = sorted({k for counts in named.values() for k in counts})
    if len(named) < 2:
        raise ValueError(f"source-label independence needs >= 2 named sources with records; "
                         f"got {sorted(named)} ({dict(per_source)})")
    if len(classes) < 2:
        raise ValueError(f"source-label independence needs >= 2 classes; the sources hold "
                         f"only {classes} ({dict(per_source)})")
    if unnamed:
        raise ValueError(f"source-label independence needs every record in a source; "
                         f"{unnamed} name none ({dict(per_source)})")
    missing = [(s, k) for s, counts in sorted(named.items()) for k in classes if k not in counts]
    if missing:
        raise ValueError(f"source-label independence: source(s) without a class "
                         f"{missing} (counts {named}); each (source, class) group must hold a "
                         "record to be drawn at its share. Leave that source out of train, "
                         "or drop the flag")
    n = sum(sum(c.values()) for c in named.values())
    n_y = {k: sum(c[k] for c in named.values()) for k in classes}
    if source_weight == "records":
        w = {s: sum(c.values()) / n for s, c in named.items()}
    else:
        rare = min(classes, key=lambda k: (n_y[k], k))
        w = {s: c[rare] / n_y[rare] for s, c in named.items()}
    return {(s, k): w[s] * n_y[k] / n for s in sorted(named) for k in classes}


def group_draws(per_source: Mapping[str, Mapping[int, int]],
                source_weight: str = "records") -> list[dict[str, Any]]:
    """What --source_label_independence does to each (source, class) group, for the run's
    summary and log: its records n_sy, its draw probability q_sy (independent_group_weights)
    and its oversampling q_sy / (n_sy / n), how many times as often as stored it is drawn
    (> 1: the group repeats within an epoch)."""
    q = independent_group_weights(per_source, source_weight)
    n = sum(int(per_source[s].get(k, 0)) for s, k in q)
    return [{"source": s, "class": k, "records": int(per_source[s][k]),
             "probability": round(p, 6), "oversampling": round(p * n / per_source[s][k], 3)}
            for (s, k), p in q.items()]


@keras.saving.register_keras_serializable(package="isicflow")
class LogitOffset(keras.layers.Layer):
    """(p, offset) -> sigmoid(logit(p) + offset), p a sigmoid probability [B, 1], offset [B]
    or [B, 1]. Computed as p e^o / (p e^o + 1 - p) in float32, which stays exact at p = 0 or 1
    (no clipping, no log of 0); where the offset is 0 it returns p itself, bit for bit."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")  # under a mixed policy too: no autocast down
        super().__init__(**kwargs)

    def call(self, inputs):
        p, offset = inputs
        p = keras.ops.cast(p, "float32")
        offset = keras.ops.reshape(keras.ops.cast(offset, "float32"), (-1, 1))
        scaled = p * keras.ops.exp(offset)
        adjusted = scaled / (scaled + (1.0 - p))
        return keras.ops.where(keras.ops.equal(offset, 0.0), p, adjusted)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


def with_source_offset(model: keras.Model) -> keras.Model:
    """Model([image, offset], LogitOffset()([model(image), offset])) for fit: shares every
    weight with `model` (LogitOffset has none), so `model` stays the plain image model that is
    saved, evaluated and exported. ValueError for a model with more than one input."""
    if len(model.inputs) != 1:
        raise ValueError(f"with_source_offset needs an image-only model; {model.name} has "
                         f"{len(model.inputs)} inputs {[tuple(t.shape) for t in model.inputs]}")
    image = keras.Input(tuple(model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype,
                        name="image")
    offset = keras.Input((), dtype="float32", name="source_offset")
    out = LogitOffset(name="source_logit_offset")([model(image), offset])
    return keras.Model([image, offset], out, name="source_offset_" + model.name)
