"""trainer.cnn.probe_head (--probe_head, LP-FT): a logistic regression on frozen features,
folded into the classifier's output layer, and a run that starts from it."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.shard_fixtures import random_images, write_tiny_dataset
from trainer.cnn import cli, config as config_lib, contrastive, diagnosis, models
from trainer.cnn import pretrained_encoder, probe_head

cli.define_flags()
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32


def test_the_probe_ranks_separable_features_perfectly_and_noise_near_chance():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    signal = rng.normal(size=(200, 4)) + y[:, None] * 3.0
    fitted = probe_head.fit_probe(signal[:100], y[:100], c=1.0)
    assert roc_auc_score(y[100:], fitted.predict_proba(signal[100:])[:, 1]) > 0.99
    noise = rng.normal(size=(200, 4))
    fitted = probe_head.fit_probe(noise[:100], y[:100], c=1.0)
    assert abs(roc_auc_score(y[100:], fitted.predict_proba(noise[100:])[:, 1]) - 0.5) < 0.2


def _features(n, classes, seed):
    """Features on unequal scales and offsets, so folding the scaler in is tested."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    x = rng.normal(size=(n, 6)) * [1, 10, 0.1, 3, 1, 5] + [0, 50, -2, 1, 4, 0]
    return x + y[:, None] * [1, 5, 0.05, 0, 2, 1], y


@pytest.mark.parametrize("classes,outputs,activation", [(2, 1, "sigmoid"), (2, 2, "softmax"),
                                                         (4, 4, "softmax")])
def test_the_dense_layer_gives_the_probes_own_probabilities(classes, outputs, activation):
    x, y = _features(120, classes, seed=classes + outputs)
    fitted = probe_head.fit_probe(x, y, class_weight={k: 1.0 + k for k in range(classes)})
    layer = keras.layers.Dense(outputs, activation=activation)
    layer.build((None, x.shape[1]))
    layer.set_weights(list(probe_head.dense_weights(fitted, outputs)))
    got = np.asarray(layer(x.astype(np.float32)))
    expected = fitted.predict_proba(x)
    np.testing.assert_allclose(got, expected[:, 1:] if outputs == 1 else expected, atol=1e-4)


def test_a_class_missing_from_the_features_is_refused_by_name():
    x, y = _features(60, 3, seed=0)
    fitted = probe_head.fit_probe(x, y)
    with pytest.raises(ValueError, match=r"classes \[0, 1, 2\]; the head has 4 output"):
        probe_head.dense_weights(fitted, 4)


def _dataset(images, labels, batch=8):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)


def test_initialise_head_sets_a_compact_nets_output_to_the_fitted_probe():
    """The whole net after the call predicts what the probe on its frozen features predicts;
    the layers below the head are untouched."""
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(40, SIZE, SIZE, 3)).astype(np.float32)
    labels = (images.mean(axis=(1, 2, 3)) > np.median(images.mean(axis=(1, 2, 3)))).astype(int)
    keras.utils.set_random_seed(0)
    model = diagnosis.softmax_head(models.build_model("compact", SIZE), 2)
    below = [w.copy() for layer in model.layers[:-1] for w in layer.get_weights()]
    info = probe_head.initialise_head(model, _dataset(images, labels), {0: 1.0, 1: 2.0})
    assert info["images"] == 40 and info["features"] == model.layers[-1].kernel.shape[0]
    assert info["class_weight"] == {"0": 1.0, "1": 2.0} and 0.5 <= info[
        "train_balanced_accuracy"] <= 1.0
    features, got_labels = probe_head.features_and_labels(model, _dataset(images, labels))
    assert got_labels.tolist() == labels.tolist()
    fitted = probe_head.fit_probe(features, labels, class_weight={0: 1.0, 1: 2.0})
    np.testing.assert_allclose(np.asarray(model(images, training=False)),
                               fitted.predict_proba(features), atol=1e-4)
    after = [w for layer in model.layers[:-1] for w in layer.get_weights()]
    assert len(after) == len(below) and all(np.array_equal(a, b) for a, b in zip(below, after))


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_the_probe_reads_an_efficientnet_backbones_pooled_features(dropout):
    """A nested backbone: the features are the head's input in the model's own graph."""
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(12, SIZE, SIZE, 3)).astype(np.float32)
    labels = np.arange(12) % 2
    keras.utils.set_random_seed(0)
    model = models.build_model("efficientnet_b0", SIZE, dropout)
    info = probe_head.initialise_head(model, _dataset(images, labels), "balanced")
    assert info["features"] == 1280 and info["class_weight"] == "balanced"
    features, _ = probe_head.features_and_labels(model, _dataset(images, labels))
    fitted = probe_head.fit_probe(features, labels)
    np.testing.assert_allclose(np.asarray(model(images, training=False))[:, 0],
                               fitted.predict_proba(features)[:, 1], atol=1e-4)


def test_initialise_head_refuses_a_model_without_a_dense_output():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Activation("sigmoid")(
        keras.layers.Dense(1)(inputs)))
    with pytest.raises(ValueError, match="sets a Dense output layer; .* ends with Activation"):
        probe_head.initialise_head(model, _dataset(np.zeros((4, 4), np.float32),
                                                   np.array([0, 1, 0, 1])), None)


def test_probe_head_needs_pretrained_features_and_no_metadata(tmp_path):
    base = dict(data_dir=str(tmp_path), workdir=str(tmp_path / "w"), image_size=SIZE,
                model="compact", probe_head=True)
    with pytest.raises(config_lib.ConfigError, match="needs --init_encoder or --weights_path"):
        config_lib.TrainConfig(**base)
    with pytest.raises(config_lib.ConfigError, match="no --use_metadata"):
        config_lib.TrainConfig(**base, init_encoder=str(tmp_path), use_metadata=True)
    with pytest.raises(config_lib.ConfigError, match="no --source_balance"):
        config_lib.TrainConfig(**base, init_encoder=str(tmp_path), source_balance=True)
    with pytest.raises(config_lib.ConfigError, match="holds efficientnet_b0's backbone"):
        config_lib.TrainConfig(**base, weights_path="w.h5")  # compact: nothing to load
    config_lib.TrainConfig(**base, init_encoder=str(tmp_path))  # accepted
    config_lib.TrainConfig(**{**base, "model": "efficientnet_b0"}, weights_path="w.h5")


def _save_encoder(folder):
    """A random compact encoder in a pretraining run folder (what load_encoder_weights reads)."""
    keras.utils.set_random_seed(0)
    os.makedirs(folder, exist_ok=True)
    contrastive.build_encoder("compact", SIZE).save(
        os.path.join(folder, pretrained_encoder.ENCODER_NAME))
    with open(os.path.join(folder, pretrained_encoder.SUMMARY_NAME), "w") as f:
        json.dump({"config": {"architecture": "compact", "width_multiplier": 1.0,
                              "color_constancy": "none", "center_crop": 1.0}}, f)


@pytest.mark.parametrize("task", ["binary", "diagnosis"])
def test_a_run_starts_from_the_probe_as_a_user_would(tmp_path, task):
    def items(n, seed):  # nevus and melanoma in turn, both tasks' labels
        return [(image, "malignant" if i % 2 else "benign",
                 {"diagnosis": "melanoma" if i % 2 else "nevus"})
                for i, (image, _) in enumerate(random_images(n, 40, seed=seed))]

    data = write_tiny_dataset(tmp_path / "data", {"train": items(8, 0),
                                                  "validation": items(4, 1),
                                                  "test": items(4, 2)}, SIZE)
    _save_encoder(tmp_path / "encoder")
    done = subprocess.run(
        [sys.executable, "-m", "trainer.cnn", f"--data_dir={data}",
         f"--workdir={tmp_path / 'cnn'}", "--architecture=compact", f"--image_size={SIZE}",
         "--epochs=1", f"--init_encoder={tmp_path / 'encoder'}", "--probe_head",
         "--export=false", "--bootstrap=10", "--keras_verbose=0", f"--task={task}",
         "--class_balance=class_weights", "--min_class_records=1"]
        + (["--monitor=val_balanced_accuracy"] if task == "diagnosis" else []),
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "cnn" / "train_summary.json").read_text())
    probed = summary["probe_head"]
    assert probed["images"] == 8 and probed["class_weight"] and probed["c"] == probe_head.PROBE_C
    config = json.loads((tmp_path / "cnn" / config_lib.TRAIN_CONFIG_NAME).read_text())
    assert config["probe_head"] is True
    record = tmp_path / "cnn" / "checkpoints" / probe_head.RECORD_NAME
    assert json.loads(record.read_text()) == probed
    # Run again (the run folder's backup resumes it): the head is not refitted, the record
    # stays in the summary.
    record.write_text(json.dumps({**probed, "marker": "from the first start"}))
    again = subprocess.run(done.args, cwd=REPO_ROOT, capture_output=True,
                           text=True, timeout=240)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((tmp_path / "cnn" / "train_summary.json").read_text())
    assert summary["probe_head"]["marker"] == "from the first start"
