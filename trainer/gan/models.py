"""The 2020 study's DCGAN (generator, discriminator) and the keras.Model that trains them.

Default architecture, exactly as the study (at image_size 128):
  Generator: z (100) -> Dense 32768 (no bias) -> BN -> LeakyReLU -> Reshape 32x32x32
             -> Conv2DTranspose 16 (5x5, s2, no bias) -> BN -> LeakyReLU
             -> Conv2DTranspose 3 (5x5, s2, no bias) -> tanh: 3,421,936 params (65,568 BN stats).
  Discriminator: Conv2D 64 (5x5, s2) -> LeakyReLU -> Dropout 0.3 -> Conv2D 128 (5x5, s2)
             -> LeakyReLU -> Dropout 0.3 -> Flatten -> Dense 1 (logit): 340,865 params.
Other image sizes (multiples of 4, for fast tests) keep the layers and scale the first
Dense layer to (size/4)^2 x 32 units. The conditional variant adds a label embedding to the
latent vector (G) and a label plane as a fourth input channel (D), over num_classes classes
(2, benign/malignant, unless gan_config.json lists "classes": the diagnosis-conditional GAN).

The recipe, each part its own option and off by default:
  build_deep_generator: z (+ label embedding) -> Dense 4x4x8w -> BN -> ReLU, then
             [UpSampling x2 -> Conv 3x3 -> BN -> ReLU] x log2(size/4) -> Conv 3x3 to RGB -> tanh.
  build_deep_discriminator: [Conv 4x4 s2 -> LeakyReLU 0.2] down to 4x4 (optionally spectrally
             normalised), Flatten -> Dense 1, plus a projection term <embed(label), features>
             when conditional.
  diffaugment (trainer.gan.augment): DiffAugment colour/translation/cutout on real and fake
             images alike inside train_step, each op on every image or on a share augment_p of
             them, which ADA's rule may adapt (ada_target).
  r1_gamma:  R1 penalty (Mescheder et al. 2018), gamma/2 * E||grad_x D(augment(x))||^2 on the
             clean real images x, added to D's loss every step (logged apart, as r1).
  gan_loss: 'bce' (the study's, with noisy/flipped targets), 'nonsaturating' or 'hinge'.
  ema_generator: a copy of G whose weights follow G's with decay ema_decay, used for sampling.
"""
from __future__ import annotations

import contextlib
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainer.gan.augment import (check_settings, diff_augment, next_augment_p,
                                 parse_diffaugment)

NUM_CLASSES = 2  # benign, malignant: conditional runs without "classes" in gan_config.json
GEN_BASE_FILTERS = 32
LATENT_LABEL_EMBEDDING = 50
ARCHITECTURES = ("study", "deep")
GAN_LOSSES = ("bce", "nonsaturating", "hinge")


def _check_size(image_size: int) -> None:
    if image_size <= 0 or image_size % 4:
        raise ValueError(f"image_size must be a positive multiple of 4 (two stride-2 "
                         f"upsamplings), got {image_size}")


def _check_classes(num_classes: int) -> None:
    if num_classes < 2:
        raise ValueError(f"a conditional GAN needs at least 2 classes, got {num_classes}")


def num_classes_of(arch: dict) -> int:
    """Classes of a conditional generator's architecture dict (gan_config.json): its "classes"
    list (diagnosis-conditional runs), else benign/malignant."""
    return len(arch["classes"]) if arch.get("classes") else NUM_CLASSES


def _latent_inputs(latent_dim: int, conditional: bool,
                   num_classes: int = NUM_CLASSES) -> tuple[Any, Any]:
    """The generator's inputs (z alone, or [z, class label] when conditional) and what the first
    layer takes: z, or z with the label's embedding concatenated."""
    z = keras.Input((latent_dim,), name="z")
    if not conditional:
        return z, z
    _check_classes(num_classes)
    label = keras.Input((1,), dtype="int32", name="label")
    embedded = keras.layers.Flatten()(
        keras.layers.Embedding(num_classes, LATENT_LABEL_EMBEDDING,
                               name="label_embedding")(label))
    return [z, label], keras.layers.Concatenate()([z, embedded])


def build_generator(latent_dim: int = 100, image_size: int = 128, *,
                    conditional: bool = False, num_classes: int = NUM_CLASSES) -> keras.Model:
    """z ~ N(0, 1) (and a class label when conditional) -> image in [-1, 1], float32."""
    _check_size(image_size)
    start = image_size // 4
    inputs, x = _latent_inputs(latent_dim, conditional, num_classes)
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
    return keras.Model(inputs, images, name="generator")


def build_discriminator(image_size: int = 128, *, conditional: bool = False,
                        num_classes: int = NUM_CLASSES) -> keras.Model:
    """Image in [-1, 1] (and a class label when conditional) -> one real/fake logit, float32."""
    _check_size(image_size)
    image = keras.Input((image_size, image_size, 3), name="image")
    inputs, x = [image], image
    if conditional:
        _check_classes(num_classes)
        label = keras.Input((1,), dtype="int32", name="label")
        plane = keras.layers.Embedding(num_classes, image_size * image_size)(label)
        plane = keras.layers.Reshape((image_size, image_size, 1))(plane)
        inputs, x = [image, label], keras.layers.Concatenate()([image, plane])
    for filters in (64, 128):
        x = keras.layers.Conv2D(filters, 5, strides=2, padding="same")(x)
        x = keras.layers.LeakyReLU()(x)
        x = keras.layers.Dropout(0.3)(x)
    x = keras.layers.Flatten()(x)
    logit = keras.layers.Dense(1, dtype="float32", name="logit")(x)
    return keras.Model(inputs if conditional else image, logit, name="discriminator")


def _check_deep_size(image_size: int) -> int:
    """Number of x2 upsamplings from 4x4; the size must be 4 * 2^k with k >= 1."""
    blocks = int(round(np.log2(image_size / 4))) if image_size >= 8 else 0
    if blocks < 1 or 4 * 2 ** blocks != image_size:
        raise ValueError(f"the deep GAN needs image_size = 4 * 2^k (8, 16, 32, 64, 128, ...), "
                         f"got {image_size}")
    return blocks


def _check_width(width: int) -> None:
    if width < 1:
        raise ValueError(f"gan_width must be a positive number of filters, got {width}")


def build_deep_generator(latent_dim: int = 128, image_size: int = 64, *,
                         conditional: bool = False, width: int = 32,
                         num_classes: int = NUM_CLASSES) -> keras.Model:
    """The recipe's generator: upsampling from 4x4 with BatchNorm; channels 8w halving to w."""
    blocks = _check_deep_size(image_size)
    _check_width(width)
    inputs, x = _latent_inputs(latent_dim, conditional, num_classes)
    filters = 8 * width
    # Layers with weights are named by the resolution they draw (trainer.gan.grow pairs a
    # smaller run's layers with these by name); checkpoints track layers by position, not name.
    x = keras.layers.Dense(4 * 4 * filters, use_bias=False, name="dense_4x4")(x)
    x = keras.layers.BatchNormalization(name="bn_4x4")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Reshape((4, 4, filters))(x)
    for i in range(1, blocks + 1):
        filters = max(width, filters // 2)
        size = 4 * 2 ** i
        x = keras.layers.UpSampling2D(2)(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                name=f"conv_{size}x{size}")(x)
        x = keras.layers.BatchNormalization(name=f"bn_{size}x{size}")(x)
        x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(3, 3, padding="same", name="to_rgb")(x)
    images = keras.layers.Activation("tanh", dtype="float32", name="image")(x)
    return keras.Model(inputs, images, name="generator")


def build_deep_discriminator(image_size: int = 64, *, conditional: bool = False,
                             spectral_norm: bool = True, width: int = 32,
                             depth: int = 1, num_classes: int = NUM_CLASSES) -> keras.Model:
    """The recipe's discriminator: stride-2 convs to 4x4 (channels w doubling to 8w), optional
    spectral normalisation on every conv/dense, projection conditioning (Miyato & Koyama).

    depth = convs per resolution: 1 is one stride-2 4x4 conv; 2 puts a stride-1 3x3 conv before
    each (SN-GAN's "standard CNN" discriminator). A D of depth 1 under spectral normalisation and
    full DiffAugment sits at chance (hinge loss ~2) against the deep G on out/real."""
    blocks = _check_deep_size(image_size)
    _check_width(width)
    if depth < 1:
        raise ValueError(f"discriminator depth must be >= 1 conv per resolution, got {depth}")

    def sn(layer):
        return keras.layers.SpectralNormalization(layer) if spectral_norm else layer

    image = keras.Input((image_size, image_size, 3), name="image")
    x = image
    for i in range(blocks):
        filters = min(8 * width, width * 2 ** i)
        for _ in range(depth - 1):
            x = sn(keras.layers.Conv2D(filters, 3, padding="same"))(x)
            x = keras.layers.LeakyReLU(0.2)(x)
        x = sn(keras.layers.Conv2D(filters, 4, strides=2, padding="same"))(x)
        x = keras.layers.LeakyReLU(0.2)(x)
    features = keras.layers.Flatten()(x)
    logit = sn(keras.layers.Dense(1))(features)
    if conditional:
        _check_classes(num_classes)
        label = keras.Input((1,), dtype="int32", name="label")
        embedded = keras.layers.Flatten()(
            keras.layers.Embedding(num_classes, int(features.shape[-1]))(label))
        projection = keras.layers.Dot(axes=1)([features, embedded])
        logit = keras.layers.Add()([logit, projection])
    logit = keras.layers.Activation("linear", dtype="float32", name="logit")(logit)
    return keras.Model([image, label] if conditional else image, logit, name="discriminator")


def build_generator_for(arch: dict) -> keras.Model:
    """The generator an architecture dict (gan_config.json) describes."""
    classes = num_classes_of(arch)
    if arch.get("generator", "study") == "deep":
        return build_deep_generator(arch["latent_dim"], arch["image_size"],
                                    conditional=arch["conditional"], width=arch["width"],
                                    num_classes=classes)
    return build_generator(arch["latent_dim"], arch["image_size"],
                           conditional=arch["conditional"], num_classes=classes)


def discriminator_loss(kind: str, real_logits, fake_logits) -> tf.Tensor:
    """Recipe losses without label tricks: non-saturating (softplus) or hinge."""
    real_logits = tf.cast(real_logits, tf.float32)
    fake_logits = tf.cast(fake_logits, tf.float32)
    if kind == "nonsaturating":
        return tf.reduce_mean(tf.nn.softplus(-real_logits)) + tf.reduce_mean(
            tf.nn.softplus(fake_logits))
    if kind == "hinge":
        return tf.reduce_mean(tf.nn.relu(1.0 - real_logits)) + tf.reduce_mean(
            tf.nn.relu(1.0 + fake_logits))
    raise ValueError(f"gan_loss {kind!r} not in {GAN_LOSSES[1:]} (bce uses the study's loss_fn)")


def generator_loss(kind: str, fake_logits) -> tf.Tensor:
    fake_logits = tf.cast(fake_logits, tf.float32)
    if kind == "nonsaturating":
        return tf.reduce_mean(tf.nn.softplus(-fake_logits))
    if kind == "hinge":
        return -tf.reduce_mean(fake_logits)
    raise ValueError(f"gan_loss {kind!r} not in {GAN_LOSSES[1:]} (bce uses the study's loss_fn)")


class DCGAN(keras.Model):
    """Adversarial training of a generator against a discriminator, one step = one D and one G
    update (as keras-io's dcgan_overriding_train_step.py), with the study's label tricks."""

    def __init__(self, generator: keras.Model, discriminator: keras.Model, latent_dim: int, *,
                 conditional: bool = False, label_noise: float = 0.0, label_flip: float = 0.0,
                 seed: int = 0, gan_loss: str = "bce", diffaugment=(),
                 ema_generator: keras.Model | None = None, ema_decay: float = 0.0,
                 augment_p: float | None = None, ada_target: float = 0.0, r1_gamma: float = 0.0,
                 **kwargs):
        super().__init__(**kwargs)
        if gan_loss not in GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {GAN_LOSSES}, got {gan_loss!r}")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {ema_decay}")
        if (ema_generator is None) != (ema_decay == 0.0):
            raise ValueError(f"ema_decay {ema_decay} needs an ema_generator (and 0 none)")
        self.gan_loss = gan_loss
        self.diffaugment = parse_diffaugment(diffaugment)
        check_settings(self.diffaugment, augment_p, ada_target)
        if r1_gamma < 0:
            raise ValueError(f"r1_gamma must be >= 0 (0 = off), got {r1_gamma}")
        # None: every op on every image (DiffAugment as published, the recipe's default).
        # Otherwise a variable: ADA adapts it in train_step and checkpoints keep it.
        self.augment_p = None
        if augment_p is not None or ada_target:
            self.augment_p = tf.Variable(1.0 if augment_p is None else float(augment_p),
                                         trainable=False, dtype=tf.float32, name="augment_p")
        self.ada_target = float(ada_target)
        self.r1_gamma = float(r1_gamma)
        self.ema_generator = ema_generator
        self.ema_decay = ema_decay
        self.generator = generator
        self.restart_ema()
        if not 0.0 <= label_noise < 0.5:
            raise ValueError(f"label_noise must be in [0, 0.5), got {label_noise}")
        if not 0.0 <= label_flip < 0.5:
            raise ValueError(f"label_flip must be in [0, 0.5), got {label_flip}")
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
        self.r1_metric = keras.metrics.Mean(name="r1") if self.r1_gamma else None

    @property
    def metrics(self):
        extra = [self.r1_metric] if self.r1_metric is not None else []
        return [self.d_loss_metric, self.g_loss_metric, self.d_real_metric, self.d_fake_metric,
                *extra]

    def restart_ema(self) -> None:
        """The EMA generator becomes an exact copy of G: at the start of a run, and after G's
        weights were set from elsewhere (trainer.gan.grow), so that the average starts there."""
        if self.ema_generator is not None:
            self.ema_generator.set_weights(self.generator.get_weights())

    def sample_latent(self, batch_size) -> tf.Tensor:
        return keras.random.normal((batch_size, self.latent_dim), seed=self.seed_generator)

    def generate(self, z, labels=None, training: bool = False) -> tf.Tensor:
        if self.conditional:
            if labels is None:
                raise ValueError("a conditional generator needs class labels (class indices)")
            return self.generator([z, tf.reshape(tf.cast(labels, tf.int32), [-1, 1])],
                                  training=training)
        return self.generator(z, training=training)

    def sampling_generator(self) -> keras.Model:
        """The generator to draw samples with: the EMA copy when there is one."""
        return self.ema_generator if self.ema_generator is not None else self.generator

    def generate_for_sampling(self, z, labels=None) -> tf.Tensor:
        generator = self.sampling_generator()
        if self.conditional:
            if labels is None:
                raise ValueError("a conditional generator needs class labels (class indices)")
            return generator([z, tf.reshape(tf.cast(labels, tf.int32), [-1, 1])],
                             training=False)
        return generator(z, training=False)

    def update_ema(self) -> None:
        """EMA of G's trainable weights; BatchNorm statistics (non-trainable) are copied."""
        decay = self.ema_decay
        for ema, live in zip(self.ema_generator.trainable_weights,
                             self.generator.trainable_weights):
            ema.assign(decay * ema + (1.0 - decay) * live)
        for ema, live in zip(self.ema_generator.non_trainable_weights,
                             self.generator.non_trainable_weights):
            ema.assign(live)

    def _augment(self, images):
        return diff_augment(images, self.diffaugment, seed=self.seed_generator,
                            p=self.augment_p)

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
        # R1's input gradient is scaled like the loss, so float16 gradients do not underflow.
        r1_scale = tf.cast(self._scaled(self.d_optimizer, tf.constant(1.0)), tf.float32)
        with tf.GradientTape() as tape:
            # R1 differentiates D(augment(x)) w.r.t. the clean reals x (as StyleGAN2-ADA) in an
            # inner tape, which the outer tape differentiates again; no inner tape without R1.
            input_tape = tf.GradientTape(watch_accessed_variables=False) if self.r1_gamma \
                else contextlib.nullcontext()
            with input_tape:
                if self.r1_gamma:
                    input_tape.watch(real_images)
                # The same DiffAugment policy on real and fake; draws in the order of old runs.
                seen_real = self._augment(real_images) if self.diffaugment else real_images
                real_logits = self._discriminate(seen_real, labels)
                real_total = tf.reduce_sum(tf.cast(real_logits, tf.float32)) * r1_scale
            seen_fake = self._augment(fake_images) if self.diffaugment else fake_images
            if self.gan_loss == "bce":
                real_targets = self._targets(1.0, batch)
                fake_targets = self._targets(0.0, batch)
            fake_logits = self._discriminate(seen_fake, labels)
            if self.gan_loss == "bce":
                d_loss = (self.loss_fn(real_targets, real_logits)
                          + self.loss_fn(fake_targets, fake_logits))
            else:
                d_loss = discriminator_loss(self.gan_loss, real_logits, fake_logits)
            total = d_loss  # d_loss stays the adversarial loss alone (logged, guarded)
            if self.r1_gamma:
                input_grads = tf.cast(input_tape.gradient(real_total, real_images),
                                      tf.float32) / r1_scale
                r1 = tf.reduce_mean(tf.reduce_sum(tf.square(input_grads), axis=[1, 2, 3]))
                total = d_loss + 0.5 * self.r1_gamma * r1
            scaled = self._scaled(self.d_optimizer, total)
        grads = tape.gradient(scaled, self.discriminator.trainable_variables)
        self.d_optimizer.apply(grads, self.discriminator.trainable_variables)

        # 2) Generator: fresh latents, rewarded when D calls its images real (clean targets 1).
        #    Only G's variables are updated, through D's (now fixed) weights.
        z = self.sample_latent(batch)
        with tf.GradientTape() as tape:
            generated = self.generate(z, labels, training=True)
            if self.diffaugment:  # gradients flow back through the augmentation to G
                generated = self._augment(generated)
            logits = self._discriminate(generated, labels)
            if self.gan_loss == "bce":
                g_loss = self.loss_fn(tf.ones_like(logits), logits)
            else:
                g_loss = generator_loss(self.gan_loss, logits)
            scaled = self._scaled(self.g_optimizer, g_loss)
        grads = tape.gradient(scaled, self.generator.trainable_variables)
        self.g_optimizer.apply(grads, self.generator.trainable_variables)
        if self.ema_generator is not None:
            self.update_ema()

        d_real = tf.reduce_mean(tf.sigmoid(real_logits))
        d_fake = tf.reduce_mean(tf.sigmoid(fake_logits))
        self.d_loss_metric.update_state(d_loss)
        self.g_loss_metric.update_state(g_loss)
        self.d_real_metric.update_state(d_real)
        self.d_fake_metric.update_state(d_fake)
        if self.r1_gamma:
            self.r1_metric.update_state(r1)
        if self.ada_target:  # ADA: more augmentation when D overfits the reals, less when blind
            self.augment_p.assign(next_augment_p(self.augment_p, real_logits, self.ada_target,
                                                 batch))
        logs = {m.name: m.result() for m in self.metrics}
        if self.augment_p is not None:
            logs["augment_p"] = tf.identity(self.augment_p)
        # This step's own values (not epoch means), for the NaN and collapse guards.
        logs.update(step_d_loss=d_loss, step_g_loss=g_loss, step_d_fake=d_fake)
        return logs


def to_uint8(images) -> np.ndarray:
    """Generator output in [-1, 1] -> uint8 RGB."""
    array = np.asarray(images, dtype=np.float32)
    return np.clip(np.round((array + 1.0) * 127.5), 0, 255).astype(np.uint8)
