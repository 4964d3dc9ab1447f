"""Self-supervised pretraining of a CNN's encoder on unlabelled images (SimCLR: Chen et al.,
"A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020): the
loss, the model and the stream of view pairs (the program is trainer.cnn.pretrain).

Why: a from-scratch net on a few thousand labelled images learns what tells the labels apart
in its training clinics, clinic cues included. Images without labels are far easier to come
by (every download, a new clinic's archive); contrastive pretraining learns from them which
images show the same lesion under a change of crop, rotation and colour, so the classifier can
start from features that ignore the camera.

The encoder is the classifier itself up to its global average pooling (`gap`, the compact and
residual nets), with the same layer names; trainer.cnn.pretrained_encoder owns the run folder
it is saved in and copies it into a classifier.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from isicflow import dataset as dataset_lib, reader
from trainer.cnn import models
from trainer.cnn.pretrained_encoder import (  # noqa: F401  (the run folder's contract)
    ARCHITECTURES, ENCODER_LAYER, ENCODER_NAME, SUMMARY_NAME, PretrainError)
from trainer.core import augmentations, input_pipeline

# Decoded images the shuffle holds beside the cache: every image up to this many (a second copy
# of a 25,000-image archive at 256 px would be ~5 GB), a window of the cached order beyond.
MAX_SHUFFLE_BUFFER = 8192
PROJECTION_WIDTH = 128
PROJECTION_DIM = 64


def nt_xent_loss(z1: tf.Tensor, z2: tf.Tensor, temperature: float) -> tuple[tf.Tensor, tf.Tensor]:
    """(loss, pair accuracy) of SimCLR's normalised temperature-scaled cross-entropy.

    With the 2N projections z = [z1; z2] scaled to unit length, s_ij = z_i . z_j / T, and
    p(i) the other view of image i (i <-> i + N):
        loss = -1/(2N) sum_i log( exp(s_i,p(i)) / sum_{k != i} exp(s_ik) ),
    a 2N-way softmax per view whose right answer is its pair. Pair accuracy: the share of
    views whose most similar other view is their pair (1/(2N - 1) at chance)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z = tf.math.l2_normalize(tf.cast(tf.concat([z1, z2], axis=0), tf.float32), axis=1)
    n = tf.shape(z1)[0]
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    logits = logits - tf.eye(2 * n) * 1e9  # a view is never its own pair
    pairs = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], axis=0)
    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(pairs, logits))
    hits = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), pairs), tf.float32)
    return loss, tf.reduce_mean(hits)


def build_encoder(architecture: str, image_size: int, width_multiplier: float = 1.0,
                  color_constancy: str = "none", center_crop: float = 1.0) -> keras.Model:
    """The classifier of trainer.cnn.models (no dropout) cut at its pooled features: float
    [B, S, S, 3] in [0, 1] -> [B, F]."""
    if architecture not in ARCHITECTURES:
        raise PretrainError(f"--architecture={architecture}: pretraining needs a net with a "
                            f"'{ENCODER_LAYER}' layer, one of {', '.join(ARCHITECTURES)}")
    classifier = models.build_model(architecture, image_size, dropout=0.0,
                                    width_multiplier=width_multiplier,
                                    color_constancy=color_constancy, center_crop=center_crop)
    return keras.Model(classifier.inputs, classifier.get_layer(ENCODER_LAYER).output,
                       name=f"{architecture}_encoder")


def build_projector(features: int) -> keras.Model:
    """SimCLR's projection head, used in pretraining only: Dense + BN + ReLU, then Dense."""
    inputs = keras.Input((features,), name="features")
    x = keras.layers.Dense(PROJECTION_WIDTH, use_bias=False, name="projection_dense1")(inputs)
    x = keras.layers.BatchNormalization(name="projection_bn")(x)
    x = keras.layers.ReLU(name="projection_relu")(x)
    outputs = keras.layers.Dense(PROJECTION_DIM, name="projection_dense2")(x)
    return keras.Model(inputs, outputs, name="projector")


class ContrastiveModel(keras.Model):
    """Encoder + projector trained on pairs of views (view1, view2) of the same images with
    nt_xent_loss; fit/evaluate log `loss` and `pair_accuracy`."""

    def __init__(self, encoder: keras.Model, projector: keras.Model, temperature: float,
                 **kwargs):
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.encoder, self.projector, self.temperature = encoder, projector, float(temperature)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy_tracker = keras.metrics.Mean(name="pair_accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy_tracker]

    def call(self, images, training=False):
        return self.projector(self.encoder(images, training=training), training=training)

    def _loss(self, views, training: bool):
        view1, view2 = views[0], views[1]  # train_on_batch(v1, v2) adds a sample weight
        z = self(tf.concat([view1, view2], axis=0), training=training)
        z1, z2 = tf.split(z, 2, axis=0)
        return nt_xent_loss(z1, z2, self.temperature)

    def train_step(self, views):
        with tf.GradientTape() as tape:
            loss, accuracy = self._loss(views, training=True)
        variables = self.encoder.trainable_variables + self.projector.trainable_variables
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._track(loss, accuracy)

    def test_step(self, views):
        return self._track(*self._loss(views, training=False))

    def _track(self, loss, accuracy):
        self.loss_tracker.update_state(loss)
        self.accuracy_tracker.update_state(accuracy)
        return {m.name: m.result() for m in self.metrics}


def pretraining_splits(manifest: Mapping[str, Any], image_size: int,
                       splits: Sequence[str] = ("train",)) -> dict[str, int]:
    """{split: records} of the splits to learn from (every record, labelled or not); an empty
    split is left out. PretrainError for a split name the engine does not write, a size or a
    split the dataset lacks, or no record at all."""
    unknown = [s for s in splits if s not in dataset_lib.SPLITS]
    sizes = sorted(int(s) for s in manifest.get("datasets", {}))
    if unknown or image_size not in sizes:
        raise PretrainError(f"splits {list(splits)} at {image_size}px: the dataset holds sizes "
                            f"{sizes} and the engine writes the splits "
                            f"{', '.join(dataset_lib.SPLITS)}")
    counts = {}
    for split in splits:
        try:
            info = dataset_lib.split_info(dict(manifest), image_size, split)
        except ValueError as e:
            raise PretrainError(str(e)) from None
        if reader.count_records(info, "all"):
            counts[split] = reader.count_records(info, "all")
    if not counts:
        raise PretrainError(f"no records at {image_size}px in splits {list(splits)}")
    return counts


def view_pairs(data_dir: str, image_size: int, batch_size: int, seed: int,
               splits: Sequence[str] = ("train",),
               manifest: Mapping[str, Any] | None = None) -> tuple[tf.data.Dataset, int]:
    """(an endless stream of (view1, view2) float batches, images per pass): every record of
    the splits decoded once and cached in memory (uint8), shuffled each pass (seeded; within
    a window of MAX_SHUFFLE_BUFFER images on larger sets), each
    image's two views by augmentations.contrastive_augment seeded by (seed, element index),
    so a run sees the same views in the same order."""
    manifest = dataset_lib.manifest_or_read(data_dir, manifest)
    counts = pretraining_splits(manifest, image_size, splits)
    if sum(counts.values()) < 2 * batch_size:
        raise PretrainError(f"{data_dir}: {sum(counts.values())} images at {image_size}px, "
                            f"fewer than two batches of {batch_size}; use a smaller "
                            "--batch_size or more images")
    paths = [p for split in counts for p in dataset_lib.shard_paths(manifest, data_dir,
                                                                     image_size, split)]
    records = input_pipeline.shard_records(paths, manifest, deterministic=True)
    images = records.map(lambda s: reader.parse_record(s, image_size, fields=())["image"],
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
    total = sum(counts.values())

    def two_views(index, image):
        image = input_pipeline.preprocess_for_eval(image)
        first = tf.stack([tf.constant(seed, tf.int64), 2 * index])
        second = tf.stack([tf.constant(seed, tf.int64), 2 * index + 1])
        return (augmentations.contrastive_augment(image, first),
                augmentations.contrastive_augment(image, second))

    stream = (images.shuffle(min(total, MAX_SHUFFLE_BUFFER), seed=seed,
                             reshuffle_each_iteration=True).repeat()
              .enumerate().map(two_views, num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=True)
              .batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE))
    return stream, total
