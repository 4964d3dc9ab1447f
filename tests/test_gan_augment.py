"""Lighter and adaptive DiffAugment (a share p of images per op, ADA's rule for p) and the R1
penalty: the levers for the recipe's discriminator, which sits at chance under full DiffAugment."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_gan_models import float32_policy  # noqa: F401  (fixture)
from tests.test_gan_recipe import _config, data_dir  # noqa: F401  (fixture)
from trainer.core import run_folder
from trainer.gan import augment
from trainer.gan import models as gan_models
from trainer.gan import training as gan_training

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)


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


def test_probability_one_is_the_published_policy_and_gradients_pass_the_augmentation():
    x = tf.Variable(tf.random.stateless_uniform((8, 16, 16, 3), (0, 1), -1.0, 1.0))
    policy = "color,translation,cutout"

    def grad(p):
        with tf.GradientTape() as tape:
            y = augment.diff_augment(x, policy, seed=keras.random.SeedGenerator(2), p=p)
            total = tf.reduce_sum(y * y)
        return y, tape.gradient(total, x)

    published, g_published = grad(None)
    # p=None draws exactly what the ops drawn one after another with the same seed do.
    seed = keras.random.SeedGenerator(2)
    by_hand = x
    for op in policy.split(","):
        by_hand = augment.diff_augment(by_hand, op, seed=seed)
    np.testing.assert_allclose(published.numpy(), by_hand.numpy(), rtol=0, atol=1e-6)
    # The gradient through the augmented branch is not the identity's (2x).
    _, g_clean = grad(0.0)
    np.testing.assert_allclose(g_clean.numpy(), 2 * x.numpy(), rtol=1e-6)
    assert not np.allclose(g_published.numpy(), g_clean.numpy())
    assert float(tf.reduce_sum(tf.abs(g_published))) > 0


def test_ops_run_once_each_in_diffaugment_order_however_typed():
    assert augment.parse_diffaugment("cutout,color,cutout") == ("color", "cutout")
    assert augment.parse_diffaugment(["translation", " color"]) == ("color", "translation")


def test_ada_rule_moves_p_towards_the_target_and_stays_in_range():
    step = 32 / augment.ADJUST_IMAGES
    overfit = tf.constant([[3.0]] * 32)            # every real scored real: r = 1 > 0.6
    blind = tf.constant([[1.0], [-1.0]] * 16)      # D at chance: r = 0 < 0.6
    assert float(augment.next_augment_p(0.5, overfit, 0.6, 32)) == pytest.approx(0.5 + step)
    assert float(augment.next_augment_p(0.5, blind, 0.6, 32)) == pytest.approx(0.5 - step)
    assert float(augment.next_augment_p(0.0, blind, 0.6, 32)) == 0.0
    assert float(augment.next_augment_p(1.0, overfit, 0.6, 32)) == 1.0


class _LinearD(keras.Model):
    """logit = <w, x>: d logit / dx = w for every image, so R1 = ||w||^2 and its gradient with
    respect to w is 2w."""

    def __init__(self, w):
        super().__init__()
        self.w = self.add_weight(shape=w.shape, initializer=keras.initializers.Constant(w))

    def call(self, inputs, training=False):
        images = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
        return tf.reduce_sum(images * self.w, axis=[1, 2, 3])[:, None]


def test_r1_penalty_is_gamma_half_squared_input_gradient_and_trains_d():
    w = (tf.random.stateless_normal((1, 8, 8, 3), (4, 2)) * 0.1).numpy()
    reals = tf.random.stateless_uniform((4, 8, 8, 3), (1, 1), -1.0, 1.0)
    lr, gamma = 0.5, 10.0
    generator = gan_models.build_deep_generator(8, 8, width=2)  # shared: the same fakes

    def one_step(gamma):
        gan = gan_models.DCGAN(generator, _LinearD(w), 8, gan_loss="hinge", r1_gamma=gamma,
                               seed=3)
        gan.compile(keras.optimizers.SGD(lr), keras.optimizers.SGD(0.0), None)
        logs = gan.train_step(reals)
        return logs, gan.discriminator.w.numpy()

    (plain, w_plain), (penalised, w_penalised) = one_step(0.0), one_step(gamma)
    assert "r1" not in plain
    assert float(penalised["r1"]) == pytest.approx(float(np.sum(w * w)), rel=1e-4)
    # d_loss stays the adversarial loss; the penalty's gradient gamma/2 * 2w reaches D's weight.
    assert float(penalised["step_d_loss"]) == pytest.approx(float(plain["step_d_loss"]),
                                                            rel=1e-6)
    np.testing.assert_allclose(w_plain - w_penalised, lr * gamma * w, rtol=1e-3, atol=1e-7)


def test_r1_under_mixed_float16_matches_float32(float32_policy):  # noqa: F811
    reals = tf.random.stateless_uniform((4, 16, 16, 3), (1, 2), -1.0, 1.0)

    def r1(policy):
        keras.mixed_precision.set_global_policy(policy)
        keras.utils.set_random_seed(0)
        discriminator = gan_models.build_deep_discriminator(16, width=4)
        gan = gan_models.DCGAN(gan_models.build_deep_generator(8, 16, width=2), discriminator,
                               8, gan_loss="hinge", r1_gamma=1.0, seed=3)
        d_opt = keras.optimizers.SGD(0.0)
        if policy == "mixed_float16":
            d_opt = keras.optimizers.LossScaleOptimizer(d_opt)
        gan.compile(d_opt, keras.optimizers.SGD(0.0), None)
        return float(gan.train_step(reals)["r1"])

    want, got = r1("float32"), r1("mixed_float16")
    assert want > 0 and got == pytest.approx(want, rel=0.05)


@pytest.mark.graph  # R1's nested tape, ADA's p update and DiffAugment as a real run traces them
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
    # One value per epoch in history.json; the checkpoint holds p, so a resume needs ADA on.
    history = run_folder.read_history(str(run / "history.json"))
    assert [sorted(set(e) & {"augment_p", "r1"}) for e in history] == [["augment_p", "r1"]]
    arch = json.loads((run / "checkpoints" / "gan_config.json").read_text())
    assert arch["ada_target"] == 0.6
    with pytest.raises(ValueError, match="'ada_target': 0.6"):
        gan_training.train_gan(_config(data_dir, run, epochs=2, steps_per_epoch=3))


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
