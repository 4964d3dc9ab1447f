"""Self-supervised pretraining (trainer.cnn.contrastive, trainer.cnn.pretrain) and a classifier
starting from its encoder (--init_encoder, trainer.cnn.pretrained_encoder)."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.shard_fixtures import random_images, write_sample_dataset, write_tiny_dataset
from trainer.cnn import cli, config as config_lib, contrastive, models, pretrained_encoder
from trainer.core import augmentations

cli.define_flags()
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


def _reference_nt_xent(z1, z2, temperature):
    """The loss written out view by view, in float64."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, total = len(z1), 0.0
    for i in range(2 * n):
        pair = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        logits = np.array([z[i] @ z[k] / temperature for k in others])
        total -= z[i] @ z[pair] / temperature - np.log(np.exp(logits).sum())
    return total / (2 * n)


def test_nt_xent_matches_the_formula_view_by_view():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    loss, _ = contrastive.nt_xent_loss(tf.constant(z1), tf.constant(z2), 0.3)
    assert float(loss) == pytest.approx(_reference_nt_xent(z1, z2, 0.3), rel=1e-5)


def test_nt_xent_rewards_views_that_find_their_pair():
    rng = np.random.default_rng(1)
    z1 = rng.normal(size=(8, 16)).astype(np.float32)
    aligned, aligned_accuracy = contrastive.nt_xent_loss(z1, z1 + 0.01, 0.2)
    shuffled, shuffled_accuracy = contrastive.nt_xent_loss(z1, z1[::-1] + 0.01, 0.2)
    assert float(aligned_accuracy) == 1.0 and float(shuffled_accuracy) < 0.5
    assert float(aligned) < float(shuffled)
    with pytest.raises(ValueError, match="temperature"):
        contrastive.nt_xent_loss(z1, z1, 0.0)


def test_contrastive_views_are_seeded_in_range_and_differ():
    image = tf.constant(np.random.default_rng(2).random((SIZE, SIZE, 3)), tf.float32)
    first = augmentations.contrastive_augment(image, tf.constant([0, 1]))
    again = augmentations.contrastive_augment(image, tf.constant([0, 1]))
    other = augmentations.contrastive_augment(image, tf.constant([0, 2]))
    assert first.shape == (SIZE, SIZE, 3)
    assert 0.0 <= float(tf.reduce_min(first)) and float(tf.reduce_max(first)) <= 1.0
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert np.abs(first.numpy() - other.numpy()).mean() > 0.01


def test_view_pairs_read_every_split_labelled_or_not(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", {
        "train": random_images(6, 40, seed=0, labels=("benign", "unknown")),
        "validation": random_images(3, 40, seed=1), "test": random_images(3, 40, seed=2)}, SIZE)
    every = ("train", "validation", "test")
    stream, images = contrastive.view_pairs(data, SIZE, batch_size=4, seed=0, splits=every)
    assert images == 12  # the unknown-label records count too
    view1, view2 = next(iter(stream))
    assert view1.shape == view2.shape == (4, SIZE, SIZE, 3)
    assert not np.allclose(view1.numpy(), view2.numpy())
    again, _ = contrastive.view_pairs(data, SIZE, batch_size=4, seed=0, splits=every)
    other, _ = contrastive.view_pairs(data, SIZE, batch_size=4, seed=1, splits=every)
    np.testing.assert_array_equal(next(iter(again))[0].numpy(), view1.numpy())  # seeded
    assert not np.allclose(next(iter(other))[0].numpy(), view1.numpy())
    _, train_only = contrastive.view_pairs(data, SIZE, batch_size=2, seed=0)  # the default
    assert train_only == 6
    with pytest.raises(contrastive.PretrainError, match="fewer than two batches of 8"):
        contrastive.view_pairs(data, SIZE, batch_size=8, seed=0, splits=every)
    with pytest.raises(contrastive.PretrainError, match="engine writes the splits train"):
        contrastive.view_pairs(data, SIZE, batch_size=2, seed=0, splits=["train", "vaildation"])
    with pytest.raises(contrastive.PretrainError, match=r"holds sizes \[32\]"):
        contrastive.view_pairs(data, 64, batch_size=2, seed=0)


def test_one_contrastive_step_is_finite_and_moves_the_encoder():
    keras.utils.set_random_seed(0)
    encoder = contrastive.build_encoder("compact", SIZE)
    model = contrastive.ContrastiveModel(encoder, contrastive.build_projector(
        encoder.output.shape[-1]), temperature=0.2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    views = tf.random.stateless_uniform((2, 6, SIZE, SIZE, 3), seed=[0, 1])
    before = [w.copy() for w in encoder.get_weights()]
    logs = model.train_on_batch(views[0], views[1], return_dict=True)
    assert np.isfinite(logs["loss"]) and 0.0 <= logs["pair_accuracy"] <= 1.0
    assert any(not np.array_equal(b, a) for b, a in zip(before, encoder.get_weights()))
    with pytest.raises(contrastive.PretrainError, match="compact, residual"):
        contrastive.build_encoder("study", SIZE)


def _save_encoder(folder, architecture="compact", **settings):
    keras.utils.set_random_seed(3)
    os.makedirs(folder, exist_ok=True)
    encoder = contrastive.build_encoder(architecture, SIZE, **settings)
    rng = np.random.default_rng(4)  # moving statistics too, so a copy that skipped them shows
    encoder.set_weights([np.abs(rng.normal(size=w.shape)).astype(w.dtype) + 0.1
                         for w in encoder.get_weights()])
    encoder.save(os.path.join(folder, pretrained_encoder.ENCODER_NAME))
    config = {"architecture": architecture, "width_multiplier": 1.0,
              "color_constancy": "none", "center_crop": 1.0, **settings}
    with open(os.path.join(folder, pretrained_encoder.SUMMARY_NAME), "w") as f:
        json.dump({"config": config}, f)
    return encoder


def test_a_classifier_starts_from_every_encoder_weight_and_refuses_another_net(tmp_path):
    encoder = _save_encoder(tmp_path / "run")
    classifier = models.build_model("compact", SIZE, dropout=0.2)
    copied = pretrained_encoder.load_encoder_weights(classifier, str(tmp_path / "run"))
    assert copied["parameters"] == encoder.count_params()
    assert copied["parameters"] == classifier.count_params() - 129  # all but the sigmoid unit
    for layer in encoder.layers:
        for mine, theirs in zip(layer.get_weights(),
                                classifier.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(mine, theirs)
    other = models.build_model("residual", SIZE)
    with pytest.raises(pretrained_encoder.PretrainError, match="stem_conv .*encoder"):
        pretrained_encoder.load_encoder_weights(other, str(tmp_path / "run"))
    with pytest.raises(pretrained_encoder.PretrainError, match="no encoder.keras"):
        pretrained_encoder.load_encoder_weights(classifier, str(tmp_path))


def test_the_trainer_refuses_an_encoder_pretrained_with_other_settings(tmp_path):
    _save_encoder(tmp_path / "run")
    base = dict(data_dir=str(tmp_path), workdir=str(tmp_path / "w"), image_size=SIZE,
                model="compact", init_encoder=str(tmp_path / "run"))
    config_lib.check_init_encoder(config_lib.TrainConfig(**base))  # the same settings pass
    with pytest.raises(config_lib.DataError, match="color_constancy: encoder 'none', "
                                                   "classifier 'shades_of_grey'"):
        config_lib.check_init_encoder(config_lib.TrainConfig(
            **base, color_constancy="shades_of_grey"))
    with pytest.raises(config_lib.DataError, match="architecture: encoder 'compact', "
                                                   "classifier 'residual'"):
        config_lib.check_init_encoder(config_lib.TrainConfig(**{**base, "model": "residual"}))
    with pytest.raises(config_lib.DataError, match="no encoder.keras"):
        config_lib.check_init_encoder(config_lib.TrainConfig(**{**base,
                                                                "init_encoder": str(tmp_path)}))


def _run(*args, timeout=240):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_pretrain_then_train_from_the_encoder_as_a_user_would(tmp_path, sample_dir):
    data = write_sample_dataset(tmp_path / "data", sample_dir, SIZE)
    run = tmp_path / "pretrain"
    done = _run("trainer.cnn.pretrain", f"--data_dir={data}", f"--workdir={run}",
                "--architecture=compact", f"--image_size={SIZE}", "--epochs=2",
                "--batch_size=4", "--optimizer=adamw", "--lr_schedule=cosine",
                "--warmup_epochs=1")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((run / pretrained_encoder.SUMMARY_NAME).read_text())
    assert summary["images"] == 8 and summary["config"]["splits"] == ["train"]
    history = json.loads((run / "history.json").read_text())
    assert history["epoch"] == [1, 2] and all(np.isfinite(history["loss"]))
    trained = _run("trainer.cnn", f"--data_dir={data}", f"--workdir={tmp_path / 'cnn'}",
                   "--architecture=compact", f"--image_size={SIZE}", "--epochs=1",
                   f"--init_encoder={run}", "--export=false", "--bootstrap=10",
                   "--keras_verbose=0")
    assert trained.returncode == 0, trained.stderr[-2000:]
    train_summary = json.loads((tmp_path / "cnn" / "train_summary.json").read_text())
    assert train_summary["init_encoder"]["layers"] == 18
    assert train_summary["init_encoder"]["evaluation_images_seen"] == {}  # train only
    ids = (run / pretrained_encoder.IMAGE_IDS_NAME).read_text().split()
    assert len(ids) == 8 and ids == sorted(ids)
    refused = _run("trainer.cnn.pretrain", f"--data_dir={data}", f"--workdir={run}",
                   "--architecture=compact", f"--image_size={SIZE}", "--task=diagnosis")
    assert refused.returncode == 2 and "does not use --task;" in refused.stderr
    again = _run("trainer.cnn.pretrain", f"--data_dir={data}", f"--workdir={run}",
                 "--architecture=compact", f"--image_size={SIZE}")
    assert again.returncode == 2 and "not empty" in again.stderr


def test_images_seen_counts_evaluation_images_the_encoder_learned_from(tmp_path):
    """Whatever folder the pretraining read: the overlap is by image id."""
    from isicflow import reader

    data = write_tiny_dataset(tmp_path / "data", {
        "train": random_images(4, 40, seed=0), "validation": random_images(3, 40, seed=1),
        "test": random_images(2, 40, seed=2)}, SIZE)
    evaluated = {split: reader.field_values(data, split, SIZE, "image_id")
                 for split in pretrained_encoder.EVALUATION_SPLITS}
    assert sorted(evaluated["validation"]) == ["validation_0000", "validation_0001",
                                               "validation_0002"]  # in shard order
    assert reader.field_values(data, "validation", 64, "image_id") == []  # no such size
    run = tmp_path / "run"
    _save_encoder(run)
    assert pretrained_encoder.read_image_ids(str(run)) is None  # not recorded: unknown
    pretrained_encoder.write_image_ids(str(run), ["train_0001", "validation_0002",
                                                  "test_0000", "test_0001", "test_0000"])
    pretrained = pretrained_encoder.read_image_ids(str(run))
    assert pretrained_encoder.images_seen(pretrained, evaluated) == {"validation": 1, "test": 2}
    assert pretrained_encoder.images_seen({"train_0001"}, evaluated) == {}
