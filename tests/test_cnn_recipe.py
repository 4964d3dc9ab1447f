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
from trainer.cnn import cli, recipe, train

cli.define_flags()  # the CNN trainer's flags, as its program defines them
from trainer.core import augmentations, input_pipeline as ip, runtime

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

FLAGS = flags.FLAGS
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


def _image(seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))


# ---------------------------------------------------------------- dermoscopy augmentation

@pytest.mark.parametrize("augmentation, other", [("dermoscopy", "study"),
                                                  ("camera", "dermoscopy")])
def test_an_augmentation_is_seeded_in_range_and_differs_from_the_milder_one(augmentation,
                                                                           other):
    image = _image()
    views = [ip.preprocess_for_train(image, augment=True, seed=[3, i],
                                     augmentation=augmentation).numpy() for i in range(4)]
    assert all(v.shape == (SIZE, SIZE, 3) and v.dtype == np.float32 for v in views)
    assert all(0.0 <= v.min() and v.max() <= 1.0 for v in views)
    np.testing.assert_array_equal(views[2], ip.preprocess_for_train(
        image, augment=True, seed=[3, 2], augmentation=augmentation).numpy())
    assert not np.allclose(views[0], views[1])
    milder = ip.preprocess_for_train(image, augment=True, seed=[3, 0],
                                     augmentation=other).numpy()
    assert not np.allclose(views[0], milder, atol=1e-3)
    plain = ip.preprocess_for_train(image, augment=False, seed=[3, 0],
                                    augmentation=augmentation).numpy()
    np.testing.assert_allclose(plain, image.numpy() / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="'rgb'"):
        ip.preprocess_for_train(image, augment=True, seed=[3, 0], augmentation="rgb")


def test_camera_augmentation_in_a_dataset_map_and_its_blur_needs_a_static_side():
    images = tf.data.Dataset.from_tensors(_image()).repeat(2)
    out = list(images.map(lambda im: ip.preprocess_for_train(
        im, augment=True, seed=[1, 1], augmentation="camera")))
    np.testing.assert_array_equal(out[0].numpy(), out[1].numpy())  # same seed, same image
    unknown_side = tf.function(lambda im: augmentations.camera_augment(im, [1, 1]),
                               input_signature=[tf.TensorSpec([None, None, 3], tf.float32)])
    with pytest.raises(ValueError, match="static size"):
        unknown_side.get_concrete_function()


def test_gaussian_blur_keeps_flat_images_and_the_mean_and_smooths_noise():
    flat = tf.fill((SIZE, SIZE, 3), 0.4)
    np.testing.assert_allclose(augmentations.gaussian_blur(flat, tf.constant(1.5), 5).numpy(),
                               0.4, atol=1e-6)
    noise = tf.image.convert_image_dtype(_image(2), tf.float32)
    same = augmentations.gaussian_blur(noise, tf.constant(0.0), 3).numpy()
    np.testing.assert_allclose(same, noise.numpy(), atol=1e-5)  # sigma 0: nothing blurred
    blurred = augmentations.gaussian_blur(noise, tf.constant(1.5), 5).numpy()
    assert blurred.std() < 0.5 * noise.numpy().std()
    assert abs(blurred.mean() - noise.numpy().mean()) < 0.01


def _lesion_tint_spread(augmentation: str, views: int = 24) -> float:
    """How much the lesion's tint relative to the skin varies over augmented views, after the
    model's shades-of-grey layer: sd over views of log(R/G) of the darkest pixels minus that
    of the brightest. Per-channel gains cancel in it (and in the layer); tone curves do not."""
    from trainer.cnn.color_constancy import ShadesOfGrey

    yy, xx = np.mgrid[:SIZE, :SIZE]
    lesion = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 5) ** 2
    two_tone = np.where(lesion[..., None], [0.35, 0.2, 0.15], [0.85, 0.6, 0.55])
    image = tf.constant(np.round(two_tone * 255), tf.uint8)
    batch = tf.stack([ip.preprocess_for_train(image, augment=True, seed=[5, i],
                                              augmentation=augmentation)
                      for i in range(views)])
    tints = []
    for view in ShadesOfGrey()(batch).numpy().reshape(views, -1, 3):
        order = np.argsort(view.sum(axis=1))
        dark, bright = view[order[:20]].mean(axis=0), view[order[-200:]].mean(axis=0)
        tints.append(np.log(dark[0] / dark[1]) - np.log(bright[0] / bright[1]))
    return float(np.std(tints))


def test_camera_varies_what_the_models_colour_constancy_cannot_undo(monkeypatch):
    assert _lesion_tint_spread("camera") > 2 * _lesion_tint_spread("dermoscopy")
    # saturation dominates that spread; with it, contrast, brightness, the shared gamma and
    # hue held still, the per-channel gamma alone must move the tint (a per-channel gain
    # would not: it cancels in the measure, as in the layer)
    for name, still in (("CAMERA_SATURATION_RANGE", (1.0, 1.0001)), ("CAMERA_LOG_GAMMA", 0.0),
                        ("CAMERA_CONTRAST_RANGE", (1.0, 1.0001)), ("DERMOSCOPY_HUE_DELTA", 0.0),
                        ("CAMERA_BRIGHTNESS_DELTA", 0.0)):
        monkeypatch.setattr(augmentations, name, still)
    channel_gamma = _lesion_tint_spread("camera")
    monkeypatch.setattr(augmentations, "CAMERA_LOG_CHANNEL_GAMMA", 0.0)
    assert channel_gamma > 3 * _lesion_tint_spread("camera")


def test_rotation_by_a_quarter_turn_matches_rot90():
    image = tf.image.convert_image_dtype(_image(1), tf.float32)
    turned = augmentations.rotate(image, tf.constant(math.pi / 2)).numpy()
    # a quarter turn about the centre moves every pixel onto the grid: no interpolation,
    # no fill, so it equals rot90 (one of the two directions, by the transform's convention)
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


# ---------------------------------------------------------------- optimizer and schedule

def test_cosine_schedule_warms_up_linearly_then_decays_to_zero():
    schedule = recipe.learning_rate(1e-3, "cosine", total_steps=100, warmup_steps=10)
    rates = [float(schedule(step)) for step in (0, 5, 10, 55, 100)]
    assert rates[0] == pytest.approx(0.0) and rates[1] == pytest.approx(5e-4)
    assert rates[2] == pytest.approx(1e-3) and rates[3] == pytest.approx(5e-4, rel=1e-3)
    assert rates[4] == pytest.approx(0.0, abs=1e-9)
    assert recipe.learning_rate(1e-3, "constant", 100) == 1e-3
    with pytest.raises(ValueError, match="got 100"):
        recipe.learning_rate(1e-3, "cosine", total_steps=100, warmup_steps=100)


def test_optimizers_default_to_the_study_and_refuse_decay_with_rmsprop():
    study = recipe.make_optimizer("rmsprop", 1e-3)
    assert isinstance(study, keras.optimizers.RMSprop) and not study.use_ema
    adamw = recipe.make_optimizer("adamw", 1e-3, ema_decay=0.99)
    assert isinstance(adamw, keras.optimizers.AdamW)
    assert adamw.weight_decay == recipe.DEFAULT_ADAMW_WEIGHT_DECAY and adamw.use_ema
    assert adamw.ema_momentum == 0.99
    with pytest.raises(ValueError, match="weight_decay=0.01 needs --optimizer=adamw"):
        recipe.make_optimizer("rmsprop", 1e-3, weight_decay=0.01)
    with pytest.raises(ValueError, match="'sgd'"):
        recipe.make_optimizer("sgd", 1e-3)


# ---------------------------------------------------------------- flags

@pytest.fixture
def parse_flags(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)

    def parse(*argv):
        return FLAGS(["trainer.cnn", *argv])
    yield parse
    FLAGS.unparse_flags()


def test_new_flags_default_to_the_study(parse_flags):
    parse_flags("--flagfile=configs/cnn_compact.flags")
    c = train.TrainConfig.from_flags()
    assert (c.optimizer, c.weight_decay, c.lr_schedule, c.warmup_epochs) == ("rmsprop", None,
                                                                           "constant", 0.0)
    assert (c.label_smoothing, c.augmentation, c.mixup_alpha, c.cutmix_alpha, c.ema_decay,
            c.max_train_minutes, c.width_multiplier) == (0.0, "study", 0.0, 0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("args, shown", [
    (["--label_smoothing=1.0"], "--label_smoothing=1.0"),
    (["--ema_decay=1"], "--ema_decay=1"),
    (["--mixup_alpha=-0.2"], "-0.2"),
    (["--max_train_minutes=-5"], "-5"),
    (["--augmentation=imagenet"], "imagenet"),
    (["--optimizer=sgd"], "sgd"),
    (["--weight_decay=0.05"], "optimizer=adamw"),
    (["--warmup_epochs=2"], "lr_schedule=cosine"),
    (["--lr_schedule=cosine", "--warmup_epochs=10", "--epochs=10"], "warmup_epochs"),
    (["--width_multiplier=2"], "architecture=residual"),
    (["--mixup_alpha=0.2", "--class_balance=class_weights"], "class weights"),
    (["--cutmix_alpha=1", "--task=diagnosis"], "task=binary"),
    (["--label_smoothing=0.1", "--task=diagnosis"], "binary only"),
    (["--source_balance", "--class_balance=sampling"], "--source_balance needs"),
    (["--source_balance", "--synthetic_data=s"], "--source_balance needs"),
    (["--source_batches", "--class_balance=sampling"], "--source_batches needs"),
    (["--source_batches", "--synthetic_data=s"], "--source_batches needs"),
    (["--source_batches", "--source_label_independence=records"], "--source_batches needs"),
    (["--monitor=val_balanced_accuracy"], "diagnosis task's"),
    (["--synthetic_classes=melanoma"], "must be benign, malignant"),
])
def test_recipe_flags_fail_at_parse_with_the_value(parse_flags, args, shown):
    with pytest.raises(flags.IllegalFlagValueError) as error:
        parse_flags("--data_dir=d", "--workdir=w", *args)
    assert shown in str(error.value)


@pytest.mark.parametrize("name", ["cnn_recipe", "cnn_recipe_tiny"])
def test_recipe_configs_parse_with_every_lever_on(parse_flags, name):
    path = REPO_ROOT / "configs" / f"{name}.flags"
    assert f"python -m trainer.cnn --flagfile=configs/{name}.flags" in path.read_text()
    parse_flags(f"--flagfile=configs/{name}.flags")
    c = train.TrainConfig.from_flags()
    assert (c.model, c.optimizer, c.lr_schedule, c.augmentation) == ("residual", "adamw",
                                                                   "cosine", "dermoscopy")
    assert c.augment and c.label_smoothing == 0.1 and 0 < c.ema_decay < 1
    assert c.warmup_epochs > 0 and c.monitor == "val_auc" and c.max_train_minutes > 0


# ---------------------------------------------------------------- training with the levers

@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory, sample_dir):
    """16 real train images (8 benign, 8 malignant), 4 validation, 4 test, at 32 px."""
    return shard_fixtures.write_sample_dataset(
        tmp_path_factory.mktemp("real"), sample_dir, SIZE,
        {"train": 16, "validation": 4, "test": 4})


@pytest.fixture(autouse=True)
def restore_process_globals():
    from tensorflow.python.framework import config as tf_config

    yield
    keras.mixed_precision.set_global_policy("float32")
    tf_config.disable_op_determinism()


def _config(data_dir, workdir, **overrides) -> train.TrainConfig:
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=SIZE, batch_size=8,
                  epochs=1, steps_per_epoch=1, seed=0, mixed_precision="off", verbose=0)
    values.update(overrides)
    return train.TrainConfig(**values)


def test_every_lever_together_trains_and_logs_the_scheduled_rate(real_dataset, tmp_path):
    c = _config(real_dataset, tmp_path, model="residual", width_multiplier=0.25, dropout=0.2,
                optimizer="adamw", lr_schedule="cosine", warmup_epochs=1, epochs=3,
                steps_per_epoch=2, label_smoothing=0.1, augment=True,
                augmentation="dermoscopy", mixup_alpha=0.2, cutmix_alpha=1.0,
                class_balance="sampling", ema_decay=0.9, monitor="val_auc")
    result = train.train_cnn(c)
    rates = [e["learning_rate"] for e in result.history]
    # steps 2, 4, 6 of 6: warmup ends at step 2, then cosine to 0 at step 6
    assert rates == pytest.approx([1e-3, 5e-4, 0.0], abs=1e-7)
    assert all(e["epoch_time_s"] > 0 and np.isfinite(e["loss"]) for e in result.history)
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["cpu_time_s_this_run"] > 0 and summary["wall_time_s_this_run"] > 0
    assert summary["stopped_by_time_budget_after_epoch"] is None


def _weights(path, model):
    model.load_weights(path)
    return [w.copy() for w in model.get_weights()]


def test_ema_weights_are_validated_and_checkpointed(real_dataset, tmp_path):
    """The best checkpoint differs from the raw weights the backup saved at the same epoch
    end, and reproduces the epoch's val_loss: validation and checkpoint both used the EMA."""
    c = _config(real_dataset, tmp_path, model="compact", augment=True, steps_per_epoch=3,
                ema_decay=0.5, learning_rate=0.01)
    result = train.train_cnn(c)
    best = _weights(tmp_path / "checkpoints/best.weights.h5", result.model)
    # the backup keeps the raw training weights (for a resume); the best checkpoint the EMA
    raw = _weights(next((tmp_path / "checkpoints/backup").glob("*.weights.h5")),
                   result.model)
    assert any(not np.allclose(a, b) for a, b in zip(best, raw))
    result.model.set_weights(best)
    val = ip.make_dataset(real_dataset, "validation", image_size=SIZE, batch_size=8,
                          training=False)
    result.model.compile(loss="binary_crossentropy")
    val_loss = result.model.evaluate(val, verbose=0, return_dict=True)["loss"]
    assert val_loss == pytest.approx(result.history[0]["val_loss"], rel=1e-4)


def test_time_budget_stops_after_the_epoch_it_ran_out(real_dataset, tmp_path):
    result = train.train_cnn(_config(real_dataset, tmp_path, epochs=3, max_train_minutes=1e-6))
    assert len(result.history) == 1
    assert result.summary["stopped_by_time_budget_after_epoch"] == 1


@pytest.mark.slow  # ~60 s; its config is parsed by test_cnn_train, its levers trained
# together in-process by test_every_lever_together_..., the command line by test_cnn_train
def test_the_tiny_recipe_config_trains_through_the_command_line(real_dataset, tmp_path):
    workdir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "trainer.cnn", "--flagfile=configs/cnn_recipe_tiny.flags",
         f"--data_dir={real_dataset}", f"--workdir={workdir}", f"--image_size={SIZE}",
         "--epochs=2", "--steps_per_epoch=1", "--batch_size=8", "--bootstrap=20"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    history = json.loads((workdir / "history.json").read_text())
    assert history["epoch"] == [1, 2]
    assert (workdir / "report.json").exists() and (workdir / "export").is_dir()


def test_ema_and_the_schedule_work_under_loss_scaling(real_dataset, tmp_path):
    """mixed_float16 wraps the optimizer in a LossScaleOptimizer: SwapEMAWeights finds the
    inner optimizer's EMA, and the logged rate follows the schedule at the applied steps.
    Float16 steps that overflow at the loss scale are skipped and not counted, and how many
    of the first steps overflow varies from run to run (seen: 2 or 3 of 4), so the test
    asks for a rate on the schedule's grid, never rising, and at least one applied step in 6
    (the scale halves at each overflow)."""
    result = train.train_cnn(_config(real_dataset, tmp_path, model="compact", augment=True,
                                     mixed_precision="mixed_float16", optimizer="adamw",
                                     lr_schedule="cosine", epochs=3, steps_per_epoch=2,
                                     ema_decay=0.9))  # augment: result.model is fit's model
    assert isinstance(result.model.optimizer, keras.optimizers.LossScaleOptimizer)
    optimizer = result.model.optimizer.inner_optimizer
    assert optimizer.use_ema
    rates = [e["learning_rate"] for e in result.history]  # read through the LossScaleOptimizer
    grid = [1e-3 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(7)]  # 3 epochs x 2
    assert all(min(abs(r - g) for g in grid) < 1e-7 for r in rates), rates
    assert rates == sorted(rates, reverse=True) and rates[-1] < grid[0] - 1e-7, rates
    # at most 2 steps applied per epoch: never below the schedule at 2, 4, 6 steps
    assert all(r >= grid[2 * (i + 1)] - 1e-7 for i, r in enumerate(rates)), rates
    assert all(np.isfinite(e["val_loss"]) for e in result.history)


def _clinic_items(n: int, source: str, seed: int) -> list:
    """n random labelled 40 px images of one source_collection."""
    return [(px, label, {"source_collection": source})
            for px, label in shard_fixtures.random_images(n, 40, seed=seed)]


def test_source_balance_trains_on_a_two_source_split(tmp_path):
    """--source_balance: one epoch of steps from the per-source streams, the run recorded."""
    data = shard_fixtures.write_tiny_dataset(
        tmp_path / "data", {"train": _clinic_items(8, "clinic_a", 1)
                            + _clinic_items(2, "clinic_b", 2),
                            "validation": _clinic_items(4, "clinic_a", 3)}, SIZE)
    result = train.train_cnn(_config(data, tmp_path / "run", source_balance=True, epochs=2,
                                     steps_per_epoch=2, class_balance="class_weights"))
    assert len(result.history) == 2 and all(np.isfinite(e["loss"]) for e in result.history)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["source_balance"] is True


def test_source_batches_trains_on_a_two_source_split_and_refuses_one_source(tmp_path,
                                                                          monkeypatch):
    """--source_batches: epochs of one-source batches, recorded; a split whose records name
    one source is refused before anything is written."""
    data = shard_fixtures.write_tiny_dataset(
        tmp_path / "data", {"train": _clinic_items(8, "clinic_a", 1)
                            + _clinic_items(3, "clinic_b", 2),
                            "validation": _clinic_items(4, "clinic_a", 3)}, SIZE)
    asked = []
    make_dataset = ip.make_dataset

    def spy(data_dir, split, **kwargs):
        asked.append((split, kwargs.get("one_source_batches", False)))
        return make_dataset(data_dir, split, **kwargs)

    monkeypatch.setattr(ip, "make_dataset", spy)
    result = train.train_cnn(_config(data, tmp_path / "run", source_batches=True, epochs=2,
                                     class_balance="class_weights"))
    assert len(result.history) == 2 and all(np.isfinite(e["loss"]) for e in result.history)
    assert ("train", True) in asked and ("validation", True) not in asked
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["source_batches"] is True
    one = shard_fixtures.write_tiny_dataset(
        tmp_path / "one", {"train": _clinic_items(8, "clinic_a", 1),
                           "validation": _clinic_items(4, "clinic_a", 3)}, SIZE)
    with pytest.raises(ValueError,
                       match=r"--source_batches .* name 1 source\(s\) \['clinic_a'\]"):
        train.train_cnn(_config(one, tmp_path / "refused", source_batches=True))
    assert not (tmp_path / "refused").exists()
