"""The study's DCGAN: exact parameter counts, shapes, one adversarial step, guards."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from trainer.core.report import tile_images
from trainer.gan import models as gan_models
from trainer.gan import training as gan_training


def _gan(image_size=32, conditional=False, label_noise=0.1, label_flip=0.05, optimizer=None):
    generator = gan_models.build_generator(100, image_size, conditional=conditional)
    discriminator = gan_models.build_discriminator(image_size, conditional=conditional)
    gan = gan_models.DCGAN(generator, discriminator, 100, conditional=conditional,
                           label_noise=label_noise, label_flip=label_flip, seed=1)
    make = optimizer or (lambda: keras.optimizers.Adam(1e-3, beta_1=0.5))
    gan.compile(make(), make(), keras.losses.BinaryCrossentropy(from_logits=True))
    return gan


def _count(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


@pytest.fixture
def float32_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_study_parameter_counts_at_128():
    generator = gan_models.build_generator()
    discriminator = gan_models.build_discriminator()
    assert (generator.count_params(), _count(generator.non_trainable_weights)) == (3_421_936, 65_568)
    assert (discriminator.count_params(), _count(discriminator.non_trainable_weights)) == (340_865, 0)
    assert generator.count_params() == 3_421_936
    assert discriminator.count_params() == 340_865
    # The layer sequence the study describes.
    kinds = [type(layer).__name__ for layer in generator.layers[1:]]
    assert kinds == ["Dense", "BatchNormalization", "LeakyReLU", "Reshape", "Conv2DTranspose",
                     "BatchNormalization", "LeakyReLU", "Conv2DTranspose", "Activation"]


def test_shapes_and_output_range_at_128():
    generator = gan_models.build_generator()
    discriminator = gan_models.build_discriminator()
    images = generator(tf.random.normal((2, 100)), training=False)
    assert images.shape == (2, 128, 128, 3) and images.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(images))) <= 1.0
    assert discriminator(images).shape == (2, 1)


def test_smaller_sizes_scale_only_the_first_dense_layer_and_bad_sizes_fail():
    generator = gan_models.build_generator(100, 32)
    assert generator.output_shape == (None, 32, 32, 3)
    assert generator.layers[1].units == 8 * 8 * 32
    with pytest.raises(ValueError, match="multiple of 4"):
        gan_models.build_generator(100, 30)


def test_one_train_step_gives_finite_losses_and_updates_both_networks():
    gan = _gan()
    g_before = [w.numpy().copy() for w in gan.generator.trainable_weights]
    d_before = [w.numpy().copy() for w in gan.discriminator.trainable_weights]
    images = tf.random.uniform((4, 32, 32, 3), -1, 1)
    logs = gan.train_step((images, tf.constant([0.0, 1.0, -1.0, 0.0])))
    for name in ("d_loss", "g_loss", "d_real", "d_fake"):
        assert np.isfinite(float(logs[name])), name
    assert 0.0 < float(logs["d_real"]) < 1.0
    for before, model in ((g_before, gan.generator), (d_before, gan.discriminator)):
        after = [w.numpy() for w in model.trainable_weights]
        assert any(not np.allclose(a, b) for a, b in zip(before, after)), model.name
    assert int(gan.d_optimizer.iterations) == 1 and int(gan.g_optimizer.iterations) == 1


def test_noisy_and_flipped_targets():
    gan = _gan(label_noise=0.1, label_flip=0.0)
    real = gan._targets(1.0, 2000).numpy()
    assert real.min() >= 0.9 and real.max() <= 1.0 and real.std() > 0.01
    flipping = _gan(label_noise=0.0, label_flip=0.3)
    fake = flipping._targets(0.0, 4000).numpy()
    assert set(np.unique(fake)) == {0.0, 1.0}
    assert fake.mean() == pytest.approx(0.3, abs=0.03)
    with pytest.raises(ValueError, match="label_flip"):
        gan_models.DCGAN(gan.generator, gan.discriminator, 100, label_flip=0.7)


def test_conditional_generator_depends_on_the_class_and_trains():
    gan = _gan(conditional=True)
    z = tf.random.normal((3, 100))
    benign = gan.generate(z, tf.zeros(3))
    malignant = gan.generate(z, tf.ones(3))
    assert benign.shape == (3, 32, 32, 3)
    assert not np.allclose(benign.numpy(), malignant.numpy())
    with pytest.raises(ValueError, match="class labels"):
        gan.generate(z)
    logs = gan.train_step((tf.random.uniform((4, 32, 32, 3), -1, 1), tf.constant([0., 1., 1., 0.])))
    assert np.isfinite(float(logs["d_loss"])) and np.isfinite(float(logs["g_loss"]))


def test_mixed_float16_step_uses_loss_scaling_and_keeps_float32_outputs(float32_policy):
    keras.mixed_precision.set_global_policy("mixed_float16")
    gan = _gan(optimizer=lambda: keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3)))
    assert gan.generator.layers[1].compute_dtype == "float16"
    assert gan.generator.output.dtype == "float32"
    assert gan.discriminator.output.dtype == "float32"
    logs = gan.train_step(tf.random.uniform((2, 32, 32, 3), -1, 1))
    assert np.isfinite(float(logs["d_loss"])) and np.isfinite(float(logs["g_loss"]))
    assert float(gan.d_optimizer.dynamic_scale) > 1.0


def test_collapse_guard_needs_patience_consecutive_steps():
    guard = gan_training.CollapseGuard(patience=3, margin=0.02, label_noise=0.0, label_flip=0.0)
    guard.update(1, 0.001, 0.01)
    guard.update(2, 0.001, 0.01)
    guard.update(3, 0.4, 1.0)  # a healthy step resets the count
    guard.update(4, 0.001, 0.01)
    guard.update(5, 0.001, 0.01)
    with pytest.raises(gan_training.DiscriminatorCollapse, match="step 6"):
        guard.update(6, 0.001, 0.01)
    # Flipped labels raise D's optimum on fakes: the threshold follows it.
    flipped = gan_training.CollapseGuard(patience=1, margin=0.02, label_noise=0.0, label_flip=0.1)
    assert flipped.threshold == pytest.approx(0.12)
    gan_training.CollapseGuard(patience=0, margin=0.02, label_noise=0, label_flip=0).update(1, 0, 0)


def test_tile_images_layout():
    images = np.zeros((5, 8, 8, 3), np.uint8)
    grid = tile_images(images, columns=3, pad=2)
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2, 3)
    assert gan_models.to_uint8(np.array([-1.0, 0.0, 1.0])).tolist() == [0, 128, 255]
