"""The from-scratch CNN recipe's levers: dermoscopy augmentation, mixup/cutmix, optimizer and
schedule, label smoothing, EMA, the time budget, the flags and the recipe configs."""
import json
import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tests import shard_fixtures
from trainer.cnn import cli, recipe, train  # noqa: F401  (cli defines the CNN's flags)
from trainer.core import augmentations, input_pipeline as ip, runtime

FLAGS = flags.FLAGS
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


# ---------------------------------------------------------------- dermoscopy augmentation

def test_dermoscopy_augmentation_is_seeded_in_range_and_differs_from_the_study():
    image = _image()
    derm = [ip.preprocess_for_train(image, augment=True, seed=[3, i],
                                    augmentation="dermoscopy").numpy() for i in range(4)]
    assert all(d.shape == (SIZE, SIZE, 3) and d.dtype == np.float32 for d in derm)
    assert all(0.0 <= d.min() and d.max() <= 1.0 for d in derm)
    np.testing.assert_array_equal(derm[2], ip.preprocess_for_train(
        image, augment=True, seed=[3, 2], augmentation="dermoscopy").numpy())
    assert not np.allclose(derm[0], derm[1])
    study = ip.preprocess_for_train(image, augment=True, seed=[3, 0]).numpy()
    assert not np.allclose(derm[0], study, atol=1e-3)
    plain = ip.preprocess_for_train(image, augment=False, seed=[3, 0],
                                    augmentation="dermoscopy").numpy()
    np.testing.assert_allclose(plain, image.numpy() / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="'rgb'"):
        ip.preprocess_for_train(image, augment=True, seed=[3, 0], augmentation="rgb")


def test_rotation_by_a_quarter_turn_matches_rot90():
    image = tf.image.convert_image_dtype(_image(1), tf.float32)
    turned = augmentations.rotate(image, tf.constant(math.pi / 2)).numpy()
    # ImageProjectiveTransform maps output to input coordinates: +90 degrees = rot90 k=-1... or
    # k=1 depending on the axis convention; one of them must match exactly.
    assert any(np.allclose(turned, tf.image.rot90(image, k).numpy(), atol=1e-5) for k in (1, 3))


# ---------------------------------------------------------------- mixup / cutmix

def _batch(n=8):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.random((n, SIZE, SIZE, 3)).astype(np.float32))
    labels = tf.constant((np.arange(n) % 2).astype(np.float32))
    return images, labels


def _is_mix_of(mixed, label, own, own_label, images, labels) -> bool:
    """Is `mixed` w * own + (1 - w) * images[j] (one w, mixup) or own with a region of
    images[j] (cutmix), for some j, with label w * own_label + (1 - w) * labels[j] and w the
    image's own share?"""
    for other, other_label in zip(images, labels):
        d = own - other
        if not np.abs(d).max():
            continue
        w = float(np.sum((mixed - other) * d) / np.sum(d * d))  # mixup weight, least squares
        if np.allclose(mixed, other + w * d, atol=1e-4) and -1e-4 <= w <= 1 + 1e-4:
            if np.isclose(label, w * own_label + (1 - w) * other_label, atol=1e-4):
                return True
        from_own = np.all(np.isclose(mixed, own), axis=-1)
        from_other = np.all(np.isclose(mixed, other), axis=-1)
        if np.all(from_own | from_other):  # cutmix: every pixel from one of the two
            share = from_own.mean()
            if np.isclose(label, share * own_label + (1 - share) * other_label, atol=1e-4):
                return True
    return np.allclose(mixed, own) and np.isclose(label, own_label)  # its own partner


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_mixed_images_and_labels_are_convex_combinations(kind):
    images, labels = _batch()
    alphas = {"mixup": dict(mixup_alpha=0.4), "cutmix": dict(cutmix_alpha=1.0),
              "both": dict(mixup_alpha=0.4, cutmix_alpha=1.0)}[kind]
    mixed, soft = augmentations.mix_batch(images, labels, [5, 0], **alphas)
    mixed2, soft2 = augmentations.mix_batch(images, labels, [5, 0], **alphas)
    np.testing.assert_array_equal(mixed, mixed2)
    np.testing.assert_array_equal(soft, soft2)
    x, y, m, s = images.numpy(), labels.numpy(), mixed.numpy(), soft.numpy()
    assert m.shape == x.shape and s.shape == y.shape and s.dtype == np.float32
    assert ((0 <= s) & (s <= 1)).all() and not np.isin(s, [0.0, 1.0]).all()
    for i in range(len(x)):
        assert _is_mix_of(m[i], s[i], x[i], y[i], x, y), i
    assert (m.min() >= 0) and (m.max() <= 1)


def test_mixup_label_matches_the_image_weight():
    images = tf.stack([tf.zeros((SIZE, SIZE, 3)), tf.ones((SIZE, SIZE, 3))])
    labels = tf.constant([0.0, 1.0])
    for kwargs in (dict(mixup_alpha=0.4), dict(cutmix_alpha=1.0)):
        mixed, soft = augmentations.mix_batch(images, labels, [1, 2], **kwargs)
        # image 0 is black, 1 white, labels 0/1: the mean pixel is the label exactly
        np.testing.assert_allclose(mixed.numpy().mean(axis=(1, 2, 3)), soft.numpy(), atol=1e-5)


def test_mixing_in_the_pipeline_is_seeded_and_training_only(tmp_path):
    data = shard_fixtures.write_tiny_dataset(
        tmp_path / "d", {"train": shard_fixtures.random_images(8, 40, seed=1),
                         "validation": shard_fixtures.random_images(4, 40, seed=3)}, SIZE)

    def labels(seed):
        ds = ip.make_dataset(data, "train", image_size=SIZE, batch_size=4, training=True,
                             augment=True, augmentation="dermoscopy", deterministic=True,
                             seed=seed, mixup_alpha=0.4, cutmix_alpha=1.0)
        return np.concatenate([y.numpy() for _, y in ds])
    first = labels(1)
    np.testing.assert_array_equal(first, labels(1))
    assert not np.isin(first, [0.0, 1.0]).all()
    with pytest.raises(ValueError, match="mixup_alpha=0.4"):
        ip.make_dataset(data, "validation", image_size=SIZE, batch_size=4, training=False,
                        mixup_alpha=0.4)


# ---------------------------------------------------------------- time budget

def test_budget_rule_and_meter_with_an_injected_clock():
    assert not runtime.budget_exhausted(0.0, 59.0, 1.0)
    assert runtime.budget_exhausted(0.0, 60.0, 1.0)
    assert not runtime.budget_exhausted(0.0, 1e9, 0.0)  # 0 = no budget
    with pytest.raises(ValueError, match="-1"):
        runtime.budget_exhausted(0.0, 1.0, -1)
    now = [100.0]
    budget = runtime.TrainingBudget(0.5, clock=lambda: now[0])
    assert not budget.exhausted()
    now[0] += 30
    assert budget.exhausted() and budget.elapsed_s() == 30
