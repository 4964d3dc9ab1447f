"""The GAN recipe of issue #13: deep G / spectrally normalised D, DiffAugment, hinge and
non-saturating losses, EMA of G (checkpointed, used for sampling), its flags and configs."""
import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tests import shard_fixtures
from trainer.gan import augment as gan_augment
from trainer.gan import models as gan_models
from trainer.gan import sampling as gan_sampling
from trainer.gan import training as gan_training

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
RECIPE = dict(architecture="deep", width=4, spectral_norm=True,
              diffaugment=("color", "translation", "cutout"), gan_loss="hinge",
              ema_decay=0.9, label_noise=0.0, label_flip=0.0, latent_dim=16)


def _count(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


# --- models -------------------------------------------------------------------------------

@pytest.mark.parametrize("size,conditional,g_params,d_params", [
    (64, False, 938_851, 694_722), (64, True, 1_143_751, 702_914),
    (128, False, 948_195, 1_743_810), (128, True, 1_153_095, 1_752_002)])
def test_deep_parameter_counts_and_shapes(size, conditional, g_params, d_params):
    generator = gan_models.build_deep_generator(128, size, conditional=conditional)
    discriminator = gan_models.build_deep_discriminator(size, conditional=conditional)
    assert (generator.count_params(), discriminator.count_params()) == (g_params, d_params)
    z = tf.random.normal((2, 128))
    labels = tf.constant([[0], [1]])
    images = generator([z, labels] if conditional else z, training=False)
    assert images.shape == (2, size, size, 3) and images.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(images))) <= 1.0
    logits = discriminator([images, labels] if conditional else images, training=True)
    assert logits.shape == (2, 1) and logits.dtype == tf.float32
    # Every conv/dense of D is spectrally normalised; G upsamples 4x4 -> size.
    assert sum(isinstance(layer, keras.layers.SpectralNormalization)
               for layer in discriminator.layers) == int(np.log2(size // 4)) + 1
    assert sum(isinstance(layer, keras.layers.UpSampling2D)
               for layer in generator.layers) == int(np.log2(size // 4))


def test_deeper_discriminator_adds_a_stride_one_conv_per_resolution():
    # depth 2 (SN-GAN's standard CNN): 3x3 stride-1 then 4x4 stride-2 at each of 4 resolutions.
    discriminator = gan_models.build_deep_discriminator(64, conditional=True, depth=2)
    assert discriminator.count_params() == 1_794_786
    convs = [layer.layer for layer in discriminator.layers
             if isinstance(layer, keras.layers.SpectralNormalization)
             and isinstance(layer.layer, keras.layers.Conv2D)]
    assert [(c.kernel_size, c.strides, c.filters) for c in convs] == [
        ((3, 3), (1, 1), f) if i % 2 == 0 else ((4, 4), (2, 2), f)
        for i, f in enumerate((32, 32, 64, 64, 128, 128, 256, 256))]
    logits = discriminator([tf.zeros((2, 64, 64, 3)), tf.constant([[0], [1]])], training=True)
    assert logits.shape == (2, 1)
    with pytest.raises(ValueError, match="got 0"):
        gan_models.build_deep_discriminator(64, depth=0)


def test_deep_sizes_must_be_powers_of_two_times_four():
    with pytest.raises(ValueError, match="got 48"):
        gan_models.build_deep_generator(16, 48)
    with pytest.raises(ValueError, match="got 4"):
        gan_models.build_deep_discriminator(4)


# --- DiffAugment --------------------------------------------------------------------------

def _images(n=4, size=32, seed=0):
    return tf.random.stateless_uniform((n, size, size, 3), (seed, 1), -1.0, 1.0)


def test_diffaugment_empty_policy_is_the_identity():
    x = _images()
    for policy in ("", (), []):
        assert gan_augment.diff_augment(x, policy) is x


@pytest.mark.parametrize("policy", ["color", "translation", "cutout",
                                    "color,translation,cutout"])
def test_diffaugment_shapes_ranges_and_gradients(policy):
    x = tf.Variable(_images())
    seed = keras.random.SeedGenerator(3)
    with tf.GradientTape() as tape:
        y = gan_augment.diff_augment(x, policy, seed=seed)
        total = tf.reduce_sum(y * y)
    assert y.shape == x.shape and y.dtype == tf.float32
    assert bool(tf.reduce_all(tf.math.is_finite(y)))
    # Colour: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5] keep |y| under 6;
    # translation and cutout only move or zero pixels.
    bound = 6.0 if "color" in policy else 1.0
    assert float(tf.reduce_max(tf.abs(y))) <= bound
    grad = tape.gradient(total, x)
    assert grad is not None and float(tf.reduce_sum(tf.abs(grad))) > 0


def test_cutout_zeroes_a_quarter_and_translation_pads_with_zeros():
    x = tf.ones((8, 32, 32, 3))
    cut = gan_augment.diff_augment(x, "cutout", seed=keras.random.SeedGenerator(0))
    zero_share = 1.0 - tf.reduce_mean(cut, axis=[1, 2, 3]).numpy()
    assert np.all(zero_share > 0) and np.all(zero_share <= 0.25 + 1e-6)
    moved = gan_augment.diff_augment(x, "translation", seed=keras.random.SeedGenerator(0))
    assert set(np.unique(moved.numpy()).tolist()) <= {0.0, 1.0}
    assert float(tf.reduce_min(tf.reduce_mean(moved, axis=[1, 2, 3]))) >= (28 / 32) ** 2 - 1e-6


def test_unknown_diffaugment_op_is_named():
    with pytest.raises(ValueError, match="'flip'"):
        gan_augment.diff_augment(_images(), "color,flip")


# --- losses -------------------------------------------------------------------------------

def test_hinge_and_nonsaturating_losses_on_toy_logits():
    real = tf.constant([[2.0], [0.5]])
    fake = tf.constant([[-2.0], [0.0]])
    # hinge D: mean(relu(1 - r)) + mean(relu(1 + f)) = (0 + 0.5)/2 + (0 + 1)/2
    assert float(gan_models.discriminator_loss("hinge", real, fake)) == pytest.approx(0.75)
    assert float(gan_models.generator_loss("hinge", fake)) == pytest.approx(1.0)
    sp = lambda v: np.log1p(np.exp(v))  # noqa: E731
    want_d = (sp(-2.0) + sp(-0.5)) / 2 + (sp(-2.0) + sp(0.0)) / 2
    assert float(gan_models.discriminator_loss("nonsaturating", real, fake)) == pytest.approx(
        want_d, rel=1e-5)
    assert float(gan_models.generator_loss("nonsaturating", fake)) == pytest.approx(
        (sp(2.0) + sp(0.0)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="'wgan'"):
        gan_models.generator_loss("wgan", fake)


# --- one step, checkpoints, sampling ------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    images = shard_fixtures.random_images(10, 40, seed=5, labels=("benign", "malignant"))
    return shard_fixtures.write_tiny_dataset(tmp_path_factory.mktemp("recipe-data"),
                                             {"train": images[:8], "validation": images[8:]},
                                             SIZE)


def _config(data_dir, workdir, **overrides):
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=SIZE, batch_size=4,
                  epochs=1, steps_per_epoch=1, mixed_precision="off", grid_images=4,
                  checkpoint_every=0, collapse_patience=0, seed=7, conditional=True, **RECIPE)
    values.update(overrides)
    return gan_training.GanConfig(**values)


def _snapshot(model):
    return [np.array(w) for w in model.weights]


def _changed(before, model):
    return any(not np.array_equal(b, np.array(w)) for b, w in zip(before, model.weights))


@pytest.mark.parametrize("loss", ["hinge", "nonsaturating"])
def test_one_recipe_step_updates_g_d_and_ema(data_dir, tmp_path, loss):
    config = _config(data_dir, tmp_path, gan_loss=loss)
    gan = gan_training.build_gan(config, "float32")
    dataset, _ = gan_training.make_gan_dataset(config)
    batch = next(iter(dataset))
    g, d, ema = (_snapshot(m) for m in (gan.generator, gan.discriminator, gan.ema_generator))
    for a, b in zip(g, ema):
        np.testing.assert_array_equal(a, b)  # EMA starts as a copy of G
    logs = gan.train_step(batch)
    assert np.isfinite(float(logs["step_d_loss"])) and np.isfinite(float(logs["step_g_loss"]))
    assert _changed(g, gan.generator) and _changed(d, gan.discriminator)
    assert _changed(ema, gan.ema_generator)
    # EMA moved only a tenth of the way (decay 0.9): it differs from G now.
    live = gan.generator.trainable_weights[0].numpy()
    kept = gan.ema_generator.trainable_weights[0].numpy()
    np.testing.assert_allclose(kept, 0.9 * g[0] + 0.1 * live, rtol=1e-5, atol=1e-6)


def test_recipe_resume_keeps_ema_and_sampling_uses_ema(data_dir, tmp_path):
    run = tmp_path / "run"
    gan_training.train_gan(_config(data_dir, run, steps_per_epoch=2))
    arch = json.loads((run / "checkpoints" / "gan_config.json").read_text())
    assert arch == {"latent_dim": 16, "image_size": SIZE, "conditional": True,
                    "generator": "deep", "width": 4, "ema": True}
    prefix = tf.train.latest_checkpoint(str(run / "checkpoints"))
    reader = tf.train.load_checkpoint(prefix)
    ema_keys = [k for k in reader.get_variable_to_shape_map() if k.startswith("ema_generator/")]
    assert ema_keys

    # Resume: the EMA weights are restored, not re-copied from G.
    config = _config(data_dir, run, epochs=2, steps_per_epoch=2)
    gan = gan_training.build_gan(config, "float32")
    checkpoint = gan_training.make_checkpoint(gan, 4, 7)
    checkpoint.restore(prefix).assert_existing_objects_matched()
    ema_saved = gan.ema_generator.trainable_weights[0].numpy()
    g_saved = gan.generator.trainable_weights[0].numpy()
    assert not np.array_equal(ema_saved, g_saved)
    assert gan_training.train_gan(config)["steps"] == 4

    # Sampling loads the EMA weights, not G's.
    generator, loaded_arch = gan_sampling.load_generator(str(run))
    assert loaded_arch["ema"] is True
    prefix = tf.train.latest_checkpoint(str(run / "checkpoints"))
    own, ema = (gan_models.build_generator_for(loaded_arch) for _ in range(2))
    tf.train.Checkpoint(generator=own).restore(prefix).expect_partial()
    tf.train.Checkpoint(ema_generator=ema).restore(prefix).expect_partial()
    for loaded, want in zip(generator.weights, ema.weights):
        np.testing.assert_array_equal(loaded.numpy(), want.numpy())
    assert not np.array_equal(generator.trainable_weights[0].numpy(),
                              own.trainable_weights[0].numpy())
    written = gan_sampling.sample_to_dir(str(run), 2, str(tmp_path / "png"))
    assert written == 4  # 2 per class


def test_study_config_keeps_its_architecture_file_and_checkpoint(data_dir, tmp_path):
    config = gan_training.GanConfig(data_dir=data_dir, workdir=str(tmp_path))
    assert gan_training.architecture(config) == {"latent_dim": 100, "image_size": 128,
                                                 "conditional": False}
    gan = gan_training.build_gan(gan_training.GanConfig(
        data_dir=data_dir, workdir=str(tmp_path), image_size=SIZE), "float32")
    assert gan.ema_generator is None and gan.diffaugment == () and gan.gan_loss == "bce"
    assert not hasattr(gan_training.make_checkpoint(gan, 4, 0), "ema_generator")


@pytest.mark.parametrize("field,value,match", [
    ("architecture", "resnet", "'resnet'"), ("gan_loss", "wgan", "'wgan'"),
    ("ema_decay", 1.0, "1.0"), ("diffaugment", ("color", "flip"), "'flip'"),
    ("width", 0, "got 0")])
def test_recipe_config_rejects_bad_values_by_name(data_dir, tmp_path, field, value, match):
    with pytest.raises(ValueError, match=match):
        _config(data_dir, tmp_path, **{field: value})


def test_spectral_norm_needs_the_deep_architecture(data_dir, tmp_path):
    with pytest.raises(ValueError, match="spectral_norm needs gan_architecture='deep'"):
        gan_training.GanConfig(data_dir=data_dir, workdir=str(tmp_path), spectral_norm=True)


def test_disc_depth_needs_the_deep_architecture(data_dir, tmp_path):
    with pytest.raises(ValueError, match="disc_depth needs gan_architecture='deep'"):
        gan_training.GanConfig(data_dir=data_dir, workdir=str(tmp_path), disc_depth=2)


def test_resume_with_another_discriminator_depth_is_refused(data_dir, tmp_path):
    run = tmp_path / "run"
    gan_training.train_gan(_config(data_dir, run, disc_depth=2))
    arch = json.loads((run / "checkpoints" / "gan_config.json").read_text())
    assert arch["disc_depth"] == 2
    with pytest.raises(ValueError, match="'disc_depth': 2"):
        gan_training.train_gan(_config(data_dir, run, epochs=2))


@pytest.mark.parametrize("config", ["gan_recipe_64.flags", "gan_recipe_128.flags",
                                    "gan_recipe_tiny.flags", "gan_diagnosis_64.flags",
                                    "gan_diagnosis_grow_128.flags"])
def test_recipe_config_files_parse_into_a_gan_config(config):
    from trainer.gan import cli

    cli.define_flags()
    defined = set(flags.FLAGS)
    lines = (REPO / "configs" / config).read_text().splitlines()
    assert lines[1].startswith("# Launch:") and lines[2].startswith("# Status:")
    assert f"python -m trainer.gan --flagfile=configs/{config}" in lines[1]
    args = [line for line in lines if line.startswith("--")]
    names = [a.split("=")[0].lstrip("-") for a in args]
    unknown = [n for n in names if n not in defined and n.removeprefix("no") not in defined]
    assert not unknown, f"{config} names undefined flags {unknown}"
    values = dict(a.lstrip("-").split("=", 1) for a in args if "=" in a)
    assert values["gan_architecture"] == "deep" and values["gan_loss"] in ("hinge",
                                                                           "nonsaturating")
    assert gan_augment.parse_diffaugment(values["diffaugment"]) == gan_augment.DIFFAUGMENT_OPS
    assert "--spectral_norm" in args and "--conditional" in args
    assert 0 < float(values["ema_decay"]) < 1
