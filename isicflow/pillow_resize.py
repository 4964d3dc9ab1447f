"""Pillow's antialiased bilinear resize, rebuilt from TensorFlow ops, bit for bit.

The data engine resizes with Pillow (`Image.resize(..., Image.BILINEAR)`: a triangle filter
widened by the downscale factor, i.e. antialiased, in 22-bit fixed point). An exported model
must resize served images in-graph, and no TensorFlow op computes Pillow's result, so this
module re-implements Pillow's algorithm (libImaging/Resample.c: precompute_coeffs,
normalize_coeffs_8bpc, the horizontal then the vertical 8-bit pass) with the same float64
coefficient arithmetic, summed in the same order, and exact integer sums. tests/test_imaging.py checks it equals Pillow on every shape it tries.
"""
from __future__ import annotations

PRECISION_BITS = 32 - 8 - 2  # Pillow's, for 8-bit images


def fixed_point_coeffs(in_size, out_size):
    """Per output pixel: first input pixel (int32 [out]) and fixed-point weights ([out, ksize])."""
    import tensorflow as tf

    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    filterscale = tf.maximum(scale, 1.0)
    support = filterscale  # the bilinear filter's support is 1.0
    ksize = tf.cast(tf.math.ceil(support), tf.int32) * 2 + 1
    center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale
    inverse = 1.0 / filterscale
    # C's (int) cast truncates toward zero, as tf.cast does.
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    count = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size) - first
    taps = tf.range(ksize)
    t = (tf.cast(taps[None, :] + first[:, None], tf.float64) - center[:, None] + 0.5) * inverse
    weights = tf.where(tf.abs(t) < 1.0, 1.0 - tf.abs(t), 0.0)
    weights = tf.where(taps[None, :] < count[:, None], weights, 0.0)
    # The normalizing sum, left to right as Pillow adds it (a different order could differ
    # in the last bit and so, rarely, in a fixed-point weight).
    total = tf.foldl(lambda acc, column: acc + column, tf.transpose(weights),
                     initializer=tf.zeros_like(center))
    weights = tf.where(tf.not_equal(total, 0.0)[:, None], weights / total[:, None], weights)
    scaled = weights * float(1 << PRECISION_BITS)
    fixed = tf.where(weights < 0.0, tf.cast(-0.5 + scaled, tf.int32),
                     tf.cast(0.5 + scaled, tf.int32))
    return first, fixed


def _resample_axis(image, out_size, axis: int):
    """One 8-bit pass along axis 0 (vertical) or 1 (horizontal) of an int32 HxWxC image."""
    import tensorflow as tf

    in_size = tf.shape(image)[axis]
    first, fixed = fixed_point_coeffs(in_size, out_size)
    out_shape = tf.tensor_scatter_nd_update(tf.shape(image), [[axis]], [out_size])
    weight_shape = [-1, 1, 1] if axis == 0 else [1, -1, 1]

    def add_tap(tap, acc):
        source = tf.gather(image, tf.minimum(first + tap, in_size - 1), axis=axis)
        return tap + 1, acc + source * tf.reshape(fixed[:, tap], weight_shape)

    start = tf.fill(out_shape, tf.constant(1 << (PRECISION_BITS - 1), tf.int32))
    _, acc = tf.while_loop(lambda tap, _: tap < tf.shape(fixed)[1], add_tap,
                           [tf.constant(0), start])
    return tf.clip_by_value(tf.bitwise.right_shift(acc, PRECISION_BITS), 0, 255)


def resize_bilinear(image, height, width):
    """uint8 HxWxC -> uint8 height x width x C, equal to Pillow's resize(..., BILINEAR)."""
    import tensorflow as tf

    pixels = tf.cast(image, tf.int32)
    shape = tf.shape(pixels)

    # Pillow skips a pass whose size does not change; so do we (its result would be equal).
    def horizontal(x):
        return tf.cond(tf.not_equal(shape[1], width), lambda: _resample_axis(x, width, 1),
                       lambda: x)

    def vertical(x):
        return tf.cond(tf.not_equal(shape[0], height), lambda: _resample_axis(x, height, 0),
                       lambda: x)

    # Image.resize shrinks images over 100x taller than wide vertically first; else
    # ImagingResample goes horizontal, then vertical.
    tall_first = tf.logical_and(shape[0] > shape[1] * 100, height < shape[0])
    pixels = tf.cond(tall_first, lambda: horizontal(vertical(pixels)),
                     lambda: vertical(horizontal(pixels)))
    return tf.cast(pixels, tf.uint8)
