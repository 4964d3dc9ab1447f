"""The from-scratch recipe's input-side levers: dermoscopy augmentation of one image and
mixup/cutmix of one batch. Pure tf ops with stateless random draws, so a (seed, index) pair
always gives the same result (the input pipeline's determinism rule).

Dermoscopy images have no "up": any rotation and both flips are label-preserving, and lesions
are photographed at varied zoom, so a random resized crop stands in for the study's central
zoom. Colour jitter is milder than the study's: colour is diagnostic (blue-white veil,
regression), and a strong hue shift can erase it. "camera" keeps that hue limit but varies
what differs between clinics' dermoscopes rather than between lesions: focus (blur), tone
curve (gamma per channel), contrast, saturation and magnification.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TensorFlow is imported where it runs: AUGMENTATIONS stays a cheap import
    import tensorflow as tf

AUGMENTATIONS = ("study", "dermoscopy", "camera")
CROP_AREA_RANGE = (0.6, 1.0)          # random resized crop: fraction of the image area kept
CROP_LOG_ASPECT_RANGE = (math.log(3 / 4), math.log(4 / 3))
DERMOSCOPY_HUE_DELTA = 0.02           # the study's are 0.04, (0.8, 1.2), 0.1, (0.8, 1.2)
DERMOSCOPY_SATURATION_RANGE = (0.9, 1.1)
DERMOSCOPY_BRIGHTNESS_DELTA = 0.05
DERMOSCOPY_CONTRAST_RANGE = (0.9, 1.1)


def _random_resized_crop(image: tf.Tensor, seeds, area_range=CROP_AREA_RANGE) -> tf.Tensor:
    """A box of area_range of the image's area (aspect 3/4..4/3) resized back to its size;
    seeds: 4 stateless seeds (area, aspect, top, left)."""
    import tensorflow as tf

    size = tf.shape(image)[0]
    area = tf.random.stateless_uniform([], seeds[0], *area_range)
    aspect = tf.exp(tf.random.stateless_uniform([], seeds[1], *CROP_LOG_ASPECT_RANGE))
    height = tf.minimum(1.0, tf.sqrt(area / aspect))  # as fractions of the side
    width = tf.minimum(1.0, tf.sqrt(area * aspect))
    top = tf.random.stateless_uniform([], seeds[2]) * (1.0 - height)
    left = tf.random.stateless_uniform([], seeds[3]) * (1.0 - width)
    box = tf.stack([top, left, top + height, left + width])[None]
    return tf.image.crop_and_resize(image[None], box, [0], tf.stack([size, size]),
                                    method="bilinear")[0]


def rotate(image: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """[S,S,3] float image rotated by `angle` radians about its centre, reflect fill (Keras'
    RandomRotation transform, on one image)."""
    import tensorflow as tf

    side = tf.cast(tf.shape(image)[0], tf.float32) - 1.0
    cos, sin = tf.cos(angle), tf.sin(angle)
    x_offset = (side - (cos * side - sin * side)) / 2.0
    y_offset = (side - (sin * side + cos * side)) / 2.0
    transform = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])[None]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform, output_shape=tf.shape(image)[:2],
        fill_value=0.0, interpolation="BILINEAR", fill_mode="REFLECT")[0]


def _flips_crop_rotation(image: tf.Tensor, seeds, area_range) -> tf.Tensor:
    """The geometry every augmentation here shares: both flips, a random resized crop of
    area_range of the area, a rotation by any angle (reflect fill); seeds[0:7]."""
    import tensorflow as tf

    image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    image = tf.image.stateless_random_flip_up_down(image, seeds[1])
    image = _random_resized_crop(image, seeds[2:6], area_range)
    return rotate(image, tf.random.stateless_uniform([], seeds[6], 0.0, 2.0 * math.pi))


def dermoscopy_augment(image: tf.Tensor, seed) -> tf.Tensor:
    """float [S,S,3] in [0, 1] -> the same shape in [0, 1]: both flips, a random resized crop
    (CROP_AREA_RANGE of the area, aspect 3/4..4/3), a rotation by any angle (reflect fill),
    mild hue/saturation/brightness/contrast jitter. `seed`: int [2], one per image."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=11)
    image = _flips_crop_rotation(image, seeds, CROP_AREA_RANGE)
    image = tf.image.stateless_random_hue(image, DERMOSCOPY_HUE_DELTA, seeds[7])
    image = tf.image.stateless_random_saturation(image, *DERMOSCOPY_SATURATION_RANGE, seeds[8])
    image = tf.image.stateless_random_brightness(image, DERMOSCOPY_BRIGHTNESS_DELTA, seeds[9])
    image = tf.image.stateless_random_contrast(image, *DERMOSCOPY_CONTRAST_RANGE, seeds[10])
    return tf.clip_by_value(image, 0.0, 1.0)


# camera_augment: HAM10000's four clinics differ visibly in focus (rosendahl's scans are soft),
# contrast and saturation (vidir_molemax's are vivid) and magnification (vidir_modern's lesions
# are small in the frame). Per-channel gains are not varied: the model's shades-of-grey layer
# would undo them; a per-channel gamma it cannot undo.
CAMERA_CROP_AREA_RANGE = (0.35, 1.0)   # up to 1.7x magnification (dermoscopy: 1.3x)
CAMERA_BLUR_PROBABILITY = 0.5
CAMERA_MAX_BLUR_SIGMA = 0.02           # Gaussian sigma as a fraction of the side (1.3 px at 64)
CAMERA_LOG_GAMMA = 0.25                # per image, exp(U(-x, x)), x = this
CAMERA_LOG_CHANNEL_GAMMA = 0.1         # per channel on top, so the tone curves differ
CAMERA_CONTRAST_RANGE = (0.7, 1.3)
CAMERA_SATURATION_RANGE = (0.7, 1.3)
CAMERA_BRIGHTNESS_DELTA = 0.1


def gaussian_blur(image: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """[S,S,3] float image blurred by a separable Gaussian of `sigma` pixels (a tensor; ~0
    leaves the image as it is), kernel 2*radius+1 wide, reflect padding."""
    import tensorflow as tf

    offsets = tf.range(-radius, radius + 1, dtype=tf.float32)
    weights = tf.exp(-0.5 * tf.square(offsets / tf.maximum(sigma, 1e-3)))
    weights = weights / tf.reduce_sum(weights)
    padded = tf.pad(image, [[radius, radius], [radius, radius], [0, 0]], mode="REFLECT")[None]
    rows = tf.tile(weights[:, None, None, None], [1, 1, 3, 1])   # [k, 1, 3, 1] depthwise
    cols = tf.tile(weights[None, :, None, None], [1, 1, 3, 1])
    blurred = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(blurred, cols, [1, 1, 1, 1], "VALID")[0]


def camera_augment(image: tf.Tensor, seed) -> tf.Tensor:
    """float [S,S,3] in [0, 1] -> the same shape in [0, 1]: dermoscopy_augment's geometry with
    CAMERA_CROP_AREA_RANGE, then with CAMERA_BLUR_PROBABILITY a Gaussian blur of sigma
    U(0, CAMERA_MAX_BLUR_SIGMA) x side, a gamma per channel, and contrast, saturation,
    brightness and dermoscopy's mild hue jitter. `seed`: int [2], one per image. The side must
    be known when the graph is built (it sets the blur kernel)."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=15)
    image = _flips_crop_rotation(image, seeds, CAMERA_CROP_AREA_RANGE)
    side = image.shape[0]
    if side is None:
        raise ValueError("camera_augment needs an image of static size (the blur kernel)")
    radius = max(1, math.ceil(3 * CAMERA_MAX_BLUR_SIGMA * side))
    sigma = tf.random.stateless_uniform([], seeds[7], 0.0, CAMERA_MAX_BLUR_SIGMA * side)
    blur = tf.random.stateless_uniform([], seeds[8]) < CAMERA_BLUR_PROBABILITY
    image = tf.cond(blur, lambda: gaussian_blur(image, sigma, radius), lambda: image)
    log_gamma = (tf.random.stateless_uniform([], seeds[9], -CAMERA_LOG_GAMMA, CAMERA_LOG_GAMMA)
                 + tf.random.stateless_uniform([3], seeds[10], -CAMERA_LOG_CHANNEL_GAMMA,
                                               CAMERA_LOG_CHANNEL_GAMMA))
    image = tf.pow(tf.clip_by_value(image, 1e-6, 1.0), tf.exp(log_gamma))
    image = tf.clip_by_value(tf.image.stateless_random_contrast(
        image, *CAMERA_CONTRAST_RANGE, seeds[11]), 0.0, 1.0)
    image = tf.clip_by_value(tf.image.stateless_random_saturation(
        image, *CAMERA_SATURATION_RANGE, seeds[12]), 0.0, 1.0)
    image = tf.clip_by_value(tf.image.stateless_random_brightness(
        image, CAMERA_BRIGHTNESS_DELTA, seeds[13]), 0.0, 1.0)
    image = tf.image.stateless_random_hue(image, DERMOSCOPY_HUE_DELTA, seeds[14])
    return tf.clip_by_value(image, 0.0, 1.0)


def _beta(shape, alpha: float, seeds) -> tf.Tensor:
    """Beta(alpha, alpha) draws from two stateless gamma draws."""
    import tensorflow as tf

    a = tf.random.stateless_gamma(shape, seeds[0], alpha=alpha)
    b = tf.random.stateless_gamma(shape, seeds[1], alpha=alpha)
    return a / tf.maximum(a + b, 1e-12)


def _cutmix_mask(size: tf.Tensor, lam: tf.Tensor, seeds) -> tuple[tf.Tensor, tf.Tensor]:
    """Per image a box of area ~(1 - lam) (clipped at the border): mask [B,S,S,1], 1 inside
    the box (the partner's pixels), and the kept fraction, the label weight of the image."""
    import tensorflow as tf

    batch = tf.shape(lam)[0]
    s = tf.cast(size, tf.float32)
    cut = s * tf.sqrt(1.0 - lam)
    cy = tf.random.stateless_uniform([batch], seeds[0]) * s
    cx = tf.random.stateless_uniform([batch], seeds[1]) * s
    y0, y1 = tf.clip_by_value(cy - cut / 2, 0, s), tf.clip_by_value(cy + cut / 2, 0, s)
    x0, x1 = tf.clip_by_value(cx - cut / 2, 0, s), tf.clip_by_value(cx + cut / 2, 0, s)
    grid = tf.range(s) + 0.5
    inside_y = (grid[None] >= y0[:, None]) & (grid[None] < y1[:, None])  # [B, S]
    inside_x = (grid[None] >= x0[:, None]) & (grid[None] < x1[:, None])
    mask = tf.cast(inside_y[:, :, None] & inside_x[:, None, :], tf.float32)[..., None]
    kept = 1.0 - tf.reduce_mean(mask, axis=[1, 2, 3])
    return mask, kept


def mix_batch(images: tf.Tensor, labels: tf.Tensor, seed, *, mixup_alpha: float = 0.0,
              cutmix_alpha: float = 0.0) -> tuple[tf.Tensor, tf.Tensor]:
    """Mixup or cutmix of a float batch with a seeded permutation of itself; labels [B] become
    the same convex combination (soft floats). With both alphas > 0 each batch takes one of
    the two, evenly. Per-image mixing weights ~ Beta(alpha, alpha). `seed`: int [2]."""
    import tensorflow as tf

    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mixup_alpha and cutmix_alpha must be >= 0, got {mixup_alpha}, "
                         f"{cutmix_alpha}")
    if not (mixup_alpha or cutmix_alpha):
        return images, labels
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=7)
    batch = tf.shape(images)[0]
    partner = tf.argsort(tf.random.stateless_uniform([batch], seeds[0]))
    other_images, other_labels = tf.gather(images, partner), tf.gather(labels, partner)
    labels = tf.cast(labels, tf.float32)
    other_labels = tf.cast(other_labels, tf.float32)

    def mixup():
        lam = _beta([batch], mixup_alpha, seeds[1:3])
        w = lam[:, None, None, None]
        return images * w + other_images * (1.0 - w), labels * lam + other_labels * (1 - lam)

    def cutmix():
        lam = _beta([batch], cutmix_alpha, seeds[3:5])
        mask, kept = _cutmix_mask(tf.shape(images)[1], lam, seeds[5:7])
        return (images * (1.0 - mask) + other_images * mask,
                labels * kept + other_labels * (1.0 - kept))

    if not cutmix_alpha:
        return mixup()
    if not mixup_alpha:
        return cutmix()
    use_cutmix = tf.random.stateless_uniform([], seeds[0] + 1) < 0.5
    return tf.cond(use_cutmix, cutmix, mixup)


# Self-supervised pretraining's views (trainer.cnn.contrastive): SimCLR's recipe (Chen et al.
# 2020) at dermoscopy's scale. Stronger than dermoscopy_augment on purpose: two views of one
# lesion must be told apart from every other lesion whatever the camera's colour, so the
# features learn shape and texture, not the clinic's white balance.
CONTRASTIVE_CROP_AREA_RANGE = (0.3, 1.0)   # SimCLR's 0.08 would often crop the lesion away
CONTRASTIVE_JITTER_PROBABILITY = 0.8       # SimCLR's colour jitter, at strength 0.5
CONTRASTIVE_BRIGHTNESS_DELTA = 0.2
CONTRASTIVE_CONTRAST_RANGE = (0.6, 1.4)
CONTRASTIVE_SATURATION_RANGE = (0.6, 1.4)
CONTRASTIVE_HUE_DELTA = 0.05
CONTRASTIVE_GRAYSCALE_PROBABILITY = 0.2


def contrastive_augment(image: tf.Tensor, seed) -> tf.Tensor:
    """float [S,S,3] in [0, 1] -> one contrastive view, same shape, in [0, 1]: both flips, a
    random resized crop (CONTRASTIVE_CROP_AREA_RANGE of the area), a rotation by any angle
    (reflect fill), then with probability 0.8 brightness/contrast/saturation/hue jitter and
    with probability 0.2 grey. `seed`: int [2], one per view."""
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=13)
    image = _flips_crop_rotation(image, seeds, CONTRASTIVE_CROP_AREA_RANGE)
    # each step clipped to [0, 1] before the next, as SimCLR's colour jitter does (the hue step
    # goes through HSV, which assumes it)
    jittered = tf.clip_by_value(tf.image.stateless_random_brightness(
        image, CONTRASTIVE_BRIGHTNESS_DELTA, seeds[7]), 0.0, 1.0)
    jittered = tf.clip_by_value(tf.image.stateless_random_contrast(
        jittered, *CONTRASTIVE_CONTRAST_RANGE, seeds[8]), 0.0, 1.0)
    jittered = tf.clip_by_value(tf.image.stateless_random_saturation(
        jittered, *CONTRASTIVE_SATURATION_RANGE, seeds[9]), 0.0, 1.0)
    jittered = tf.image.stateless_random_hue(jittered, CONTRASTIVE_HUE_DELTA, seeds[10])
    jitter = tf.random.stateless_uniform([], seeds[11]) < CONTRASTIVE_JITTER_PROBABILITY
    image = tf.where(jitter, tf.clip_by_value(jittered, 0.0, 1.0), image)
    grey = tf.random.stateless_uniform([], seeds[12]) < CONTRASTIVE_GRAYSCALE_PROBABILITY
    image = tf.where(grey, tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image)), image)
    return tf.clip_by_value(image, 0.0, 1.0)
