"""The 2020 study's DCGAN (generator, discriminator) and the keras.Model that trains them.

Default architecture, exactly as the study (at image_size 128):
  Generator: z (100) -> Dense 32768 (no bias) -> BN -> LeakyReLU -> Reshape 32x32x32
             -> Conv2DTranspose 16 (5x5, s2, no bias) -> BN -> LeakyReLU
             -> Conv2DTranspose 3 (5x5, s2, no bias) -> tanh: 3,421,936 params (65,568 BN stats).
  Discriminator: Conv2D 64 (5x5, s2) -> LeakyReLU -> Dropout 0.3 -> Conv2D 128 (5x5, s2)
             -> LeakyReLU -> Dropout 0.3 -> Flatten -> Dense 1 (logit): 340,865 params.
Other image sizes (multiples of 4, for fast tests) keep the layers and scale the first
Dense layer to (size/4)^2 x 32 units. The conditional variant adds a label embedding to the
latent vector (G) and a label plane as a fourth input channel (D).
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

NUM_CLASSES = 2  # benign, malignant
GEN_BASE_FILTERS = 32
LATENT_LABEL_EMBEDDING = 50


def _check_size(image_size: int) -> None:
    if image_size <= 0 or image_size % 4:
        raise ValueError(f"image_size must be a positive multiple of 4 (two stride-2 "
                         f"upsamplings), got {image_size}")


def build_generator(latent_dim: int = 100, image_size: int = 128, *,
                    conditional: bool = False) -> keras.Model:
    """z ~ N(0, 1) (and a class label when conditional) -> image in [-1, 1], float32."""
    _check_size(image_size)
    start = image_size // 4
    z = keras.Input((latent_dim,), name="z")
    inputs, x = [z], z
    if conditional:
        label = keras.Input((1,), dtype="int32", name="label")
        embedded = keras.layers.Flatten()(
            keras.layers.Embedding(NUM_CLASSES, LATENT_LABEL_EMBEDDING)(label))
        inputs, x = [z, label], keras.layers.Concatenate()([z, embedded])
    x = keras.layers.Dense(start * start * GEN_BASE_FILTERS, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.LeakyReLU()(x)
    x = keras.layers.Reshape((start, start, GEN_BASE_FILTERS))(x)
    x = keras.layers.Conv2DTranspose(16, 5, strides=2, padding="same", use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.LeakyReLU()(x)
    x = keras.layers.Conv2DTranspose(3, 5, strides=2, padding="same", use_bias=False)(x)
    # The output stays float32 under mixed precision: images and D's input keep full precision.
    images = keras.layers.Activation("tanh", dtype="float32", name="image")(x)
    return keras.Model(inputs if conditional else z, images, name="generator")


def build_discriminator(image_size: int = 128, *, conditional: bool = False) -> keras.Model:
    """Image in [-1, 1] (and a class label when conditional) -> one real/fake logit, float32."""
    _check_size(image_size)
    image = keras.Input((image_size, image_size, 3), name="image")
    inputs, x = [image], image
    if conditional:
        label = keras.Input((1,), dtype="int32", name="label")
        plane = keras.layers.Embedding(NUM_CLASSES, image_size * image_size)(label)
        plane = keras.layers.Reshape((image_size, image_size, 1))(plane)
        inputs, x = [image, label], keras.layers.Concatenate()([image, plane])
    for filters in (64, 128):
        x = keras.layers.Conv2D(filters, 5, strides=2, padding="same")(x)
        x = keras.layers.LeakyReLU()(x)
        x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Flatten()(x)
    logit = keras.layers.Dense(1, dtype="float32", name="logit")(x)
    return keras.Model(inputs if conditional else image, logit, name="discriminator")


class DCGAN(keras.Model):
    """Adversarial training of a generator against a discriminator, one step = one D and one G
    update (as keras-io's dcgan_overriding_train_step.py), with the study's label tricks."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model, latent_dim: int, *,
                 conditional: bool = False, label_noise: float = 0.0, label_flip: float = 0.0,
                 seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= label_noise < 0.5:
            raise ValueError(f"label_noise must be in [0, 0.5), got {label_noise}")
        if not 0.0 <= label_flip < 0.5:
            raise ValueError(f"label_flip must be in [0, 0.5), got {label_flip}")
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim
        self.conditional = conditional
        self.label_noise = label_noise
        self.label_flip = label_flip
        self.seed_generator = keras.random.SeedGenerator(seed)

    def compile(self, d_optimizer, g_optimizer, loss_fn):
        super().compile()
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer
        self.loss_fn = loss_fn
        # Built now so that checkpoints can restore slot variables before the first step.
        d_optimizer.build(self.discriminator.trainable_variables)
        g_optimizer.build(self.generator.trainable_variables)
        self.d_loss_metric = keras.metrics.Mean(name="d_loss")
        self.g_loss_metric = keras.metrics.Mean(name="g_loss")
        self.d_real_metric = keras.metrics.Mean(name="d_real")  # mean D(x), a probability
        self.d_fake_metric = keras.metrics.Mean(name="d_fake")  # mean D(G(z)), before G's update

    @property
    def metrics(self):
        return [self.d_loss_metric, self.g_loss_metric, self.d_real_metric, self.d_fake_metric]

    def sample_latent(self, batch_size) -> tf.Tensor:
        return keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)

    def generate(self, z, labels=None, training: bool = False) -> tf.Tensor:
        if self.conditional:
            if labels is None:
                raise ValueError("a conditional generator needs class labels "
                                 "(0 benign, 1 malignant)")
            return self.generator([z, tf.reshape(tf.cast(labels, tf.int32), [-1, 1])],
                                  training=training)
        return self.generator(z, training=training)

    def _discriminate(self, images, labels, training: bool = True) -> tf.Tensor:
        if self.conditional:
            return self.discriminator([images, tf.reshape(tf.cast(labels, tf.int32), [-1, 1])],
                                      training=training)
        return self.discriminator(images, training=training)

    def _targets(self, value: float, batch) -> tf.Tensor:
        """Discriminator targets: `value` moved towards 0.5 by up to label_noise, then a
        label_flip share of them swapped (the study's noisy and flipped labels)."""
        shape = (batch, 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator) * self.label_noise
        targets = tf.abs(value - noise)  # 1 -> [1-noise, 1]; 0 -> [0, noise]
        flip = keras.random.uniform(shape, seed=self.seed_generator) < self.label_flip
        return tf.where(flip, 1.0 - targets, targets)

    @staticmethod
    def _scaled(optimizer, loss):
        # LossScaleOptimizer multiplies by its dynamic scale; its apply() unscales the gradients
        # and skips the update when they are not finite. Plain optimizers return the loss as is.
        return optimizer.scale_loss(loss)

    def train_step(self, data):
        real_images, labels = data if isinstance(data, (tuple, list)) else (data, None)
        if self.conditional and labels is None:
            raise ValueError("conditional DCGAN needs (images, labels) batches")
        batch = tf.shape(real_images)[0]

        # 1) Discriminator: real images should score 1, generated ones 0 (with noisy/flipped
        #    targets). The fakes are generated outside the tape: G gets no gradient here.
        fake_images = self.generate(self.sample_latent(batch), labels, training=True)
        real_targets = self._targets(1.0, batch)
        fake_targets = self._targets(0.0, batch)
        with tf.GradientTape() as tape:
            real_logits = self._discriminate(real_images, labels)
            fake_logits = self._discriminate(fake_images, labels)
            d_loss = (self.loss_fn(real_targets, real_logits)
                      + self.loss_fn(fake_targets, fake_logits))
            scaled = self._scaled(self.d_optimizer, d_loss)
        grads = tape.gradient(scaled, self.discriminator.trainable_variables)
        self.d_optimizer.apply(grads, self.discriminator.trainable_variables)

        # 2) Generator: fresh latents, rewarded when D calls its images real (clean targets 1).
        #    Only G's variables are updated, through D's (now fixed) weights.
        z = self.sample_latent(batch)
        with tf.GradientTape() as tape:
            logits = self._discriminate(self.generate(z, labels, training=True), labels)
            g_loss = self.loss_fn(tf.ones_like(logits), logits)
            scaled = self._scaled(self.g_optimizer, g_loss)
        grads = tape.gradient(scaled, self.generator.trainable_variables)
        self.g_optimizer.apply(grads, self.generator.trainable_variables)

        d_real = tf.reduce_mean(tf.sigmoid(real_logits))
        d_fake = tf.reduce_mean(tf.sigmoid(fake_logits))
        self.d_loss_metric.update_state(d_loss)
        self.g_loss_metric.update_state(g_loss)
        self.d_real_metric.update_state(d_real)
        self.d_fake_metric.update_state(d_fake)
        logs = {m.name: m.result() for m in self.metrics}
        # This step's own values (not epoch means), for the NaN and collapse guards.
        logs.update(step_d_loss=d_loss, step_g_loss=g_loss, step_d_fake=d_fake)
        return logs


def to_uint8(images) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8 RGB."""
    array = np.asarray(images, dtype=np.float32)
    return np.clip(np.round((array + 1.0) * 127.5), 0, 255).astype(np.uint8)
