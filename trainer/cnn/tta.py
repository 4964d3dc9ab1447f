"""Test-time augmentation: the 8 dihedral views of each image, the model's outputs averaged.

One definition for every place that scores images, for both tasks (trainer.cnn.evaluation and
trainer.cnn.diagnosis, hence the trainer.cnn.evaluate program; the exported SavedModel's
serving signatures, hence trainer.cnn.predict), so served probabilities equal evaluated ones.
The views are rot90 by k = 0..3 quarter turns of the image and of its left-right mirror;
together they are the symmetry group of the square (flip up-down and the transposes are among
them). The views of a batch are stacked into ONE model call of 8x the batch, view-major, and the
8 outputs of each image are averaged (arithmetic mean): P(malignant) [B] for the binary task,
the class probabilities [B, K] for the diagnosis task (a mean of softmaxes still sums to 1).
"""
from __future__ import annotations

VIEWS = 8
REPORT_LINE = ("Scored with test-time augmentation: each image's probabilities are the mean over "
               "its 8 flips/rot90s.")
NOT_WITH_METADATA = ("test-time augmentation is not supported for a --use_metadata model (its "
                     "age, sex and site have no views to average)")


def check_inputs(tta: bool, use_metadata: bool) -> None:
    """ValueError (NOT_WITH_METADATA) for TTA asked of a model that also takes metadata: the
    one refusal every scoring and export path makes."""
    if tta and use_metadata:
        raise ValueError(NOT_WITH_METADATA)


def dihedral_views(images):
    """float/uint8 [B,S,S,C] -> [8B,S,S,C]: view v of image i at row v*B + i (v = flip*4 + k)."""
    import tensorflow as tf

    images = tf.convert_to_tensor(images)
    mirrored = tf.image.flip_left_right(images)
    return tf.concat([tf.image.rot90(base, k) for base in (images, mirrored) for k in range(4)],
                     axis=0)


def average_views(outputs):
    """[8B, K] view-major outputs -> [B, K] means over the views (the inverse layout of the
    above)."""
    import tensorflow as tf

    out = tf.convert_to_tensor(outputs)
    return tf.reduce_mean(tf.reshape(out, [VIEWS, -1, out.shape[-1]]), axis=0)


def class_probabilities(model, images, tta: bool):
    """Graph-friendly: the model's outputs float32 [B, K] of a [B,S,S,3] batch in the model's
    input range, averaged over the 8 dihedral views when `tta` (inside the exported serve
    functions, and eagerly by the diagnosis evaluation)."""
    import tensorflow as tf

    if not tta:
        return tf.cast(model(images, training=False), tf.float32)
    return average_views(tf.cast(model(dihedral_views(images), training=False), tf.float32))


def predict_on_batch(model, images, tta: bool):
    """Eager scoring of a binary model (evaluate): P(malignant) numpy float64 [B]; the same
    views and mean as class_probabilities.
    images may be (images, metadata) for a --use_metadata model, without TTA (ValueError)."""
    import numpy as np

    check_inputs(tta, isinstance(images, (tuple, list)))
    if not tta:
        out = np.asarray(model.predict_on_batch(images), dtype=np.float64)
        rows = images[0] if isinstance(images, (tuple, list)) else images
        _check_output(out, int(rows.shape[0]))
        return out[:, 0]
    out = np.asarray(model.predict_on_batch(dihedral_views(images)), dtype=np.float32)
    _check_output(out, VIEWS * int(images.shape[0]))
    return np.asarray(average_views(out), dtype=np.float64)[:, 0]


def _check_output(out, rows: int) -> None:
    if out.ndim != 2 or out.shape[1] != 1 or out.shape[0] != rows:
        raise ValueError(f"model output must be [batch, 1] probabilities, got shape {out.shape}")
