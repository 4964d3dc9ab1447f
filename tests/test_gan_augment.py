"""Lighter and adaptive DiffAugment (a share p of images per op, ADA's rule for p) and the R1
penalty: the levers for the recipe's discriminator, which sits at chance under full DiffAugment."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_gan_recipe import _config, data_dir  # noqa: F401  (fixture)
from trainer.core import run_folder
from trainer.gan import augment
from trainer.gan import models as gan_models
from trainer.gan import training as gan_training


def _ones(n=64, size=16):
    return tf.ones((n, size, size, 3))


@pytest.mark.parametrize("p,share", [(0.0, 0.0), (1.0, 1.0), (0.5, 0.5)])
def test_probability_sets_the_share_of_images_an_op_touches(p, share):
    cut = augment.diff_augment(_ones(), "cutout", seed=keras.random.SeedGenerator(1), p=p)
    touched = (tf.reduce_min(cut, axis=[1, 2, 3]) < 1.0).numpy()
    if share in (0.0, 1.0):
        assert touched.mean() == share
    else:  # 64 Bernoulli(0.5) draws: well inside [0.25, 0.75]
        assert 0.25 < touched.mean() < 0.75
    # p as a variable (what ADA adapts) works the same, and p=0 is the identity.
    same = augment.diff_augment(_ones(), "cutout", seed=keras.random.SeedGenerator(1),
                                p=tf.Variable(p))
    np.testing.assert_array_equal(same.numpy(), cut.numpy())
    if p == 0.0:
        np.testing.assert_array_equal(cut.numpy(), _ones().numpy())


def test_probability_keeps_gradients_to_the_images():
    x = tf.Variable(tf.random.stateless_uniform((8, 16, 16, 3), (0, 1), -1.0, 1.0))
    with tf.GradientTape() as tape:
        y = augment.diff_augment(x, "color,translation,cutout",
                                 seed=keras.random.SeedGenerator(2), p=0.5)
        total = tf.reduce_sum(y * y)
    assert float(tf.reduce_sum(tf.abs(tape.gradient(total, x)))) > 0


def test_ada_rule_moves_p_towards_the_target_and_stays_in_range():
    step = 32 / augment.ADJUST_IMAGES
    overfit = tf.constant([[3.0]] * 32)            # every real scored real: r = 1 > 0.6
    blind = tf.constant([[1.0], [-1.0]] * 16)      # D at chance: r = 0 < 0.6
    assert float(augment.next_augment_p(0.5, overfit, 0.6, 32)) == pytest.approx(0.5 + step)
    assert float(augment.next_augment_p(0.5, blind, 0.6, 32)) == pytest.approx(0.5 - step)
    assert float(augment.next_augment_p(0.0, blind, 0.6, 32)) == 0.0
    assert float(augment.next_augment_p(1.0, overfit, 0.6, 32)) == 1.0


class _LinearD(keras.Model):
    """logit = <w, x>: d logit / dx = w for every image, so R1 = ||w||^2 exactly."""

    def __init__(self, w):
        super().__init__()
        self.w = tf.Variable(w)

    def call(self, inputs, training=False):
        images = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        return tf.reduce_sum(images * self.w, axis=[1, 2, 3])[:, None]


def test_r1_penalty_adds_gamma_half_squared_input_gradient_to_d_loss():
    w = tf.random.stateless_normal((1, 8, 8, 3), (4, 2)) * 0.1
    generator = gan_models.build_deep_generator(8, 8, width=2)

    def d_loss(gamma):
        gan = gan_models.DCGAN(generator, _LinearD(w), 8, gan_loss="hinge", r1_gamma=gamma,
                               seed=3)
        gan.compile(keras.optimizers.SGD(0.0), keras.optimizers.SGD(0.0), None)
        logs = gan.train_step(tf.random.stateless_uniform((4, 8, 8, 3), (1, 1), -1.0, 1.0))
        return logs

    plain, penalised = d_loss(0.0), d_loss(10.0)
    want = float(tf.reduce_sum(w * w))
    assert "r1" not in plain and float(penalised["r1"]) == pytest.approx(want, rel=1e-4)
    assert float(penalised["step_d_loss"]) == pytest.approx(
        float(plain["step_d_loss"]) + 5.0 * want, rel=1e-4)


def test_adaptive_run_records_p_and_r1_and_resumes_p(data_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    config = _config(data_dir, run, steps_per_epoch=3, diffaugment_p=0.5, ada_target=0.6,
                     r1_gamma=1.0)
    summary = gan_training.train_gan(config)
    record = summary["last_epoch"]
    assert np.isfinite(record["r1"]) and record["r1"] >= 0
    # Each of the three steps of batch 4 moves p by 4/ADJUST_IMAGES up or down.
    moves = (record["augment_p"] - 0.5) / (4 / augment.ADJUST_IMAGES)
    assert round(moves) in (-3, -1, 1, 3) and moves == pytest.approx(round(moves), abs=1e-3)
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run / "checkpoints")))
    saved = [k for k in reader.get_variable_to_shape_map() if k.startswith("augment_p")]
    assert saved
    gan = gan_training.build_gan(_config(data_dir, run, epochs=2, steps_per_epoch=3,
                                         diffaugment_p=0.5, ada_target=0.6, r1_gamma=1.0),
                                 "float32")
    gan_training.make_checkpoint(gan, 4, 7).restore(
        tf.train.latest_checkpoint(str(run / "checkpoints"))).assert_existing_objects_matched()
    assert float(gan.augment_p) == pytest.approx(record["augment_p"])
    history = run_folder.read_history(str(run / "history.json"))
    assert history[-1]["augment_p"] == record["augment_p"] and history[-1]["r1"] == record["r1"]


def test_fixed_full_diffaugment_keeps_the_published_behaviour(data_dir, tmp_path):  # noqa: F811
    gan = gan_training.build_gan(_config(data_dir, tmp_path), "float32")
    assert gan.augment_p is None and gan.r1_metric is None
    assert not hasattr(gan_training.make_checkpoint(gan, 4, 7), "augment_p")


@pytest.mark.parametrize("overrides,match", [
    (dict(diffaugment_p=1.5), "diffaugment_p must be a probability"),
    (dict(ada_target=1.0), "ada_target must be in"),
    (dict(r1_gamma=-1.0), "r1_gamma must be >= 0"),
    (dict(diffaugment=(), diffaugment_p=0.5), "need --diffaugment ops"),
    (dict(diffaugment=(), ada_target=0.6), "need --diffaugment ops")])
def test_bad_augmentation_settings_are_refused_by_name(data_dir, tmp_path, overrides,  # noqa
                                                        match):
    with pytest.raises(ValueError, match=match):
        _config(data_dir, tmp_path, **overrides)
