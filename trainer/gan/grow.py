"""Growing a deep generator: a new run at 2^k times the size starts from a smaller run's G.

Why: the recipe reaches good quality at 64 px within the CPU budget but not at 128 px from
scratch. Progressive growing (Karras et al. 2018, "Progressive Growing of GANs") trains the low
resolutions first and adds layers for the higher ones; this is its simplified form, without the
fade-in: the new run's G takes every layer of the smaller G whose shapes match, and its new
upsampling block(s) start freshly initialised.

What is copied (trainer.gan.models.build_deep_generator names its layers by resolution): the
label embedding, dense_4x4 and bn_4x4, each shared block (conv_8x8, bn_8x8, ... up to the
smaller size; BatchNorm's moving statistics too) and to_rgb, whose input has w channels at 64 px
and up (at smaller sizes more, so there it is left fresh and recorded as such). What is not:
the new blocks (conv_128x128, bn_128x128 from 64 px), and the discriminator, which starts fresh:
its blocks' channel counts shift by one resolution (w at the new input size, doubling inwards),
so none of its convolutions has a counterpart of the same shape.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # checking architectures needs no TensorFlow
    import keras

# The grown run's record of its source (checkpoints/RECORD_NAME): which checkpoint, its step
# and training CPU seconds, which layers were copied. Written by trainer.gan.training, read by
# trainer.gan.curve.
RECORD_NAME = "init_generator.json"


def _generator_kind(arch: dict) -> str:
    return arch.get("generator", "study")


def check_compatible(source: dict, target: dict) -> int:
    """How many x2 upsamplings `target` adds to `source` (both architecture dicts as
    gan_config.json holds them); ValueError naming the values that differ otherwise."""
    kinds = {"source": _generator_kind(source), "target": _generator_kind(target)}
    if set(kinds.values()) != {"deep"}:
        raise ValueError(f"growing needs the deep generator on both sides (--gan_architecture="
                         f"deep), got the source's {kinds['source']!r} and the new run's "
                         f"{kinds['target']!r}")
    # "classes": a diagnosis-conditional run's class names (absent: benign/malignant).
    differ = {key: (source.get(key), target.get(key))
              for key in ("latent_dim", "width", "conditional", "classes")
              if source.get(key) != target.get(key)}
    if differ:
        raise ValueError("the source generator differs from the new run's in "
                         + ", ".join(f"{key} (source {a!r}, new run {b!r})"
                                     for key, (a, b) in differ.items()))
    small, large = source["image_size"], target["image_size"]
    ratio = large // small if large > small and large % small == 0 else 0
    if ratio < 2 or ratio & (ratio - 1):
        raise ValueError(f"the source generator's image_size {small} must be smaller than the "
                         f"new run's {large} by a power of 2")
    return int(np.log2(ratio))


def transfer_weights(source: keras.Model, target: keras.Model) -> dict[str, list[str]]:
    """Sets each layer of `target` that has weights from `source`'s layer of the same name
    where the class and every weight's shape match; the others keep their initial weights.

    Returns the layer names, in `target`'s order: "copied", "new" (no layer of that name in
    `source`) and "shape_differs" (one with other shapes, left fresh). Pure apart from the
    weights it sets."""
    by_name = {layer.name: layer for layer in source.layers if layer.weights}
    record: dict[str, list[str]] = {"copied": [], "new": [], "shape_differs": []}
    for layer in target.layers:
        if not layer.weights:
            continue
        match = by_name.get(layer.name)
        if match is None:
            record["new"].append(layer.name)
            continue
        weights = match.get_weights()
        if type(match) is not type(layer) or [w.shape for w in weights] != [
                tuple(w.shape) for w in layer.weights]:
            record["shape_differs"].append(layer.name)
            continue
        layer.set_weights(weights)
        record["copied"].append(layer.name)
    return record
