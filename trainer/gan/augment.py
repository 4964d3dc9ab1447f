"""Differentiable augmentation for the GAN's discriminator: DiffAugment's ops (Zhao et al. 2020)
applied to real and fake images alike, each op to a share p of the images, and ADA's rule
(Karras et al. 2020) that adapts p to how much the discriminator overfits.

Why p matters here: with every op on every image (p = 1, DiffAugment as published) the recipe's
discriminator on ~700 real images sits at chance (hinge loss ~2) and stops teaching G. With
p < 1 each image is clean with probability 1 - p per op, so the augmented real distribution still
determines the clean one (ADA's non-leaking argument) and D sees enough clean pixels to learn.

The adaptive rule (next_augment_p): r = E[sign(D(real))] over a batch is ~0 for a D at chance
and ~1 for a D that separates every training image. Every step p moves by
sign(r - target) * batch / ADJUST_IMAGES, clipped to [0, 1]: up when D overfits, down when it
is blind. ADA uses target 0.6 and lets p cross [0, 1] in 500k images over 25M-image runs; our
runs see ~300k images, so p may cross [0, 1] in ADJUST_IMAGES = 100k.
"""
from __future__ import annotations

import keras
import tensorflow as tf

DIFFAUGMENT_OPS = ("color", "translation", "cutout")
ADJUST_IMAGES = 100_000


def parse_diffaugment(policy) -> tuple[str, ...]:
    """'color,translation,cutout' (or a sequence; '' = off) -> validated op names, in order."""
    names = [p.strip() for p in (policy.split(",") if isinstance(policy, str) else policy)]
    names = tuple(n for n in names if n)
    unknown = [n for n in names if n not in DIFFAUGMENT_OPS]
    if unknown:
        raise ValueError(f"diffaugment: unknown op(s) {unknown} in {policy!r}; choose from "
                         f"{DIFFAUGMENT_OPS} (comma-separated, '' = off)")
    # Each op once, in DiffAugment's order (colour, translation, cutout), however typed.
    return tuple(op for op in DIFFAUGMENT_OPS if op in names)


def check_settings(ops, p: float | None, ada_target: float) -> None:
    """The one rule for p and ADA's target (GanConfig checks flags with it, DCGAN its args)."""
    if p is not None and not 0.0 <= p <= 1.0:
        raise ValueError(f"diffaugment_p must be a probability in [0, 1], got {p}")
    if not 0.0 <= ada_target < 1.0:
        raise ValueError(f"ada_target must be in [0, 1) (0 = fixed p), got {ada_target}")
    if (p not in (None, 1.0) or ada_target) and not ops:
        raise ValueError(f"diffaugment_p={p} / ada_target={ada_target} need --diffaugment ops "
                         "to apply")


def _uniform(shape, seed):
    return keras.random.uniform(shape, seed=seed)


def _color(x, seed):
    batch = tf.shape(x)[0]
    x = x + (_uniform((batch, 1, 1, 1), seed) - 0.5)  # brightness
    mean = tf.reduce_mean(x, axis=3, keepdims=True)
    x = (x - mean) * (_uniform((batch, 1, 1, 1), seed) * 2.0) + mean  # saturation
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    return (x - mean) * (_uniform((batch, 1, 1, 1), seed) + 0.5) + mean  # contrast


def _translation(x, seed):
    """Shift by up to 1/8 of the side, zero padding."""
    batch, height, width = tf.shape(x)[0], x.shape[1], x.shape[2]
    sy, sx = max(1, int(height * 0.125 + 0.5)), max(1, int(width * 0.125 + 0.5))
    ty = keras.random.randint((batch, 1), -sy, sy + 1, dtype="int32", seed=seed)
    tx = keras.random.randint((batch, 1), -sx, sx + 1, dtype="int32", seed=seed)
    padded = tf.pad(x, [[0, 0], [sy, sy], [sx, sx], [0, 0]])
    rows = tf.range(height)[None, :] + sy - ty
    cols = tf.range(width)[None, :] + sx - tx
    x = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1)


def _cutout(x, seed):
    """One zeroed square of half the side per image."""
    batch, height, width = tf.shape(x)[0], x.shape[1], x.shape[2]
    ch, cw = int(height * 0.5 + 0.5), int(width * 0.5 + 0.5)
    cy = keras.random.randint((batch, 1, 1), 0, height + (1 - ch % 2), dtype="int32", seed=seed)
    cx = keras.random.randint((batch, 1, 1), 0, width + (1 - cw % 2), dtype="int32", seed=seed)
    ys = tf.range(height)[None, :, None] - (cy - ch // 2)
    xs = tf.range(width)[None, None, :] - (cx - cw // 2)
    inside = (ys >= 0) & (ys < ch) & (xs >= 0) & (xs < cw)
    return x * tf.cast(~inside, x.dtype)[..., None]


_OPS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(images, policy, seed=None, p=None):
    """DiffAugment on a batch in [-1, 1], differentiable w.r.t. the images. p=None applies every
    op to every image (DiffAugment as published); a probability (float or scalar tensor) applies
    each op to each image independently with that probability. Empty policy: images unchanged."""
    ops = parse_diffaugment(policy)
    x = images
    for name in ops:
        augmented = _OPS[name](x, seed)
        if p is None:
            x = augmented
        else:
            chosen = _uniform((tf.shape(x)[0], 1, 1, 1), seed) < tf.cast(p, tf.float32)
            x = tf.where(chosen, augmented, x)
    return x


def next_augment_p(p, real_logits, target: float, batch_images) -> tf.Tensor:
    """ADA's step: p + sign(E[sign(D(real))] - target) * batch / ADJUST_IMAGES, in [0, 1]."""
    overfit = tf.reduce_mean(tf.sign(tf.cast(real_logits, tf.float32)))
    step = tf.sign(overfit - target) * tf.cast(batch_images, tf.float32) / ADJUST_IMAGES
    return tf.clip_by_value(tf.cast(p, tf.float32) + step, 0.0, 1.0)
