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
