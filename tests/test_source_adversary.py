"""Domain-adversarial training against the source: the gradient reversal, the fit wrapper and
its shared weights, the input pipeline's per-record source index, the flag's rules and a tiny
run through the real trainer."""
import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tests import shard_fixtures
from trainer.cnn import cli, config as config_lib, models, train
from trainer.core import input_pipeline as ip, source_adversary

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

cli.define_flags()  # the CNN trainer's flags, as its program defines them

SIZE = 32


# ---------------------------------------------------------------- the gradient reversal

@pytest.mark.parametrize("weight", [0.0, 0.25, 3.0])
def test_gradient_reversal_is_the_identity_forward_and_minus_weight_backward(weight):
    x = tf.constant([[1.5, -2.0, 0.0], [4.0, 0.5, -7.25]])
    upstream = tf.constant([[1.0, 2.0, -3.0], [0.5, -0.25, 8.0]])
    layer = source_adversary.GradientReversal(weight)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(y * upstream)  # d loss / d y = upstream
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), -weight * upstream.numpy())


def test_gradient_reversal_refuses_a_negative_weight_and_round_trips_its_config():
    with pytest.raises(ValueError, match="-0.5"):
        source_adversary.GradientReversal(-0.5)
    layer = source_adversary.GradientReversal(0.3)
    assert source_adversary.GradientReversal.from_config(layer.get_config()).weight == 0.3


# ---------------------------------------------------------------- the wrapper

def _tiny_model():
    image = keras.Input((4, 4, 3))
    features = keras.layers.Dense(5, activation="relu", name="features")(
        keras.layers.Flatten()(image))
    out = keras.layers.Dense(1, activation="sigmoid", name="probability")(features)
    return keras.Model(image, out, name="tiny")


def _batch(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, 4, 4, 3)).astype(np.float32),
            np.array([0, 1, 2] * (n // 3), np.int32), np.array([0, 1] * (n // 2), np.float32))


def test_the_wrapper_shares_the_weights_and_keeps_the_plain_output():
    model = _tiny_model()
    wrapped = source_adversary.with_source_head(model, 3, 0.5)
    plain = model.trainable_weights
    assert all(any(w is v for v in wrapped.trainable_weights) for w in plain)
    assert len(wrapped.trainable_weights) == len(plain) + 4  # the head's two Dense
    x, sources, _ = _batch()
    np.testing.assert_array_equal(wrapped([x, sources]), model(x))
    assert tuple(model.outputs[0].shape) == (None, 1) and len(model.inputs) == 1


def test_one_train_step_moves_the_plain_model_and_adds_the_source_loss():
    keras.utils.set_random_seed(0)
    model = _tiny_model()
    wrapped = source_adversary.with_source_head(model, 3, 1.0)
    wrapped.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    x, sources, y = _batch()
    before = [w.numpy().copy() for w in model.weights]
    task_loss = float(keras.losses.binary_crossentropy(y[:, None], model(x)).numpy().mean())
    head = source_adversary.source_head(wrapped)
    source_loss = float(keras.losses.sparse_categorical_crossentropy(
        sources, head.source_logits(source_adversary.penultimate_model(model)(x)[1]),
        from_logits=True).numpy().mean())
    logs = wrapped.train_on_batch([x, sources], y, return_dict=True)
    assert logs["loss"] == pytest.approx(task_loss + source_loss, rel=1e-5)
    assert logs["source_loss"] == pytest.approx(source_loss, rel=1e-5)
    assert all(not np.array_equal(a, w.numpy()) for a, w in zip(before, model.weights))
    assert tuple(model(x).shape) == (6, 1)
    # outside training no source loss, and the index is never read
    evaluated = wrapped.evaluate([x, np.full(6, -1, np.int32)], y, verbose=0, return_dict=True)
    plain = float(keras.losses.binary_crossentropy(y[:, None], model(x)).numpy().mean())
    assert evaluated["loss"] == pytest.approx(plain, rel=1e-5)


def test_the_reversal_pushes_the_features_against_the_head():
    """Weight 0 leaves the trunk unmoved by the source loss; with weight L its gradient into
    the trunk is -L times the one a plain (unreversed) head would send."""
    keras.utils.set_random_seed(1)
    model = _tiny_model()
    x, sources, _ = _batch()
    trunk = source_adversary.penultimate_model(model)
    kernel = model.get_layer("features").kernel
    grads = {}
    for weight in (0.0, 1.0, 2.0):
        wrapped = source_adversary.with_source_head(model, 3, weight)
        head = source_adversary.source_head(wrapped)
        if weight == 0.0:
            reference = head  # the same head weights for every weight
        else:
            head.set_weights(reference.get_weights())
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                sources, head.source_logits(trunk(x)[1]), from_logits=True))
        grads[weight] = tape.gradient(loss, kernel).numpy()
    assert not np.any(grads[0.0])
    assert np.any(grads[1.0])
    np.testing.assert_allclose(grads[2.0], 2.0 * grads[1.0], rtol=1e-5)


def test_the_wrapper_refuses_what_it_cannot_read():
    image, meta = keras.Input((4, 4, 3)), keras.Input((2,))
    two = keras.Model([image, meta], keras.layers.Dense(1, name="probability")(meta))
    with pytest.raises(ValueError, match="image-only model"):
        source_adversary.with_source_head(two, 3, 1.0)
    headless = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                                 keras.layers.Dense(1, name="out")], name="headless")
    with pytest.raises(ValueError, match="no 'probability' layer"):
        source_adversary.with_source_head(headless, 3, 1.0)
    with pytest.raises(ValueError, match="got 1"):
        source_adversary.with_source_head(_tiny_model(), 1, 1.0)


@pytest.mark.parametrize("name", ["compact", "study", "residual"])
def test_every_architecture_gives_its_pooled_features(name):
    model = models.build_model(name, SIZE, 0.2)
    trunk = source_adversary.penultimate_model(model)
    assert len(trunk.outputs[1].shape) == 2  # [B, features]: the vector the unit reads


# ---------------------------------------------------------------- the input pipeline

def _items(n, source, seed, level=None, labels=("benign", "malignant")):
    return shard_fixtures.source_items(n, source, seed, SIZE, level, labels)


@pytest.mark.parametrize("options", [
    {}, {"augment": True}, {"as_uint8": True, "cache": "memory"},
    {"balance_classes": True}, {"balance_sources": True}])
def test_each_record_carries_its_sources_index(two_sources, options):
    ds = ip.make_dataset(two_sources, "train", image_size=SIZE, batch_size=5, training=True,
                         seed=1, source_names=["clinic_a", "clinic_b"], **options)
    if options.get("balance_classes") or options.get("balance_sources"):
        ds = ds.take(6)  # infinite streams
    top = 255.0 if options.get("as_uint8") else 1.0
    assert next(iter(ds))[0][1].dtype == tf.int32
    assert shard_fixtures.extras_by_level(ds, int) == {0.0: {0}, top: {1}}
    swapped = ip.make_dataset(two_sources, "train", image_size=SIZE, batch_size=10,
                              training=False, source_names=["clinic_b", "clinic_a"])
    assert shard_fixtures.extras_by_level(swapped, int) == {0.0: {1}, 1.0: {0}}


def test_the_train_sources_are_the_manifests(two_sources):
    manifest = ip.dataset_lib.read_manifest(two_sources)
    assert ip.train_sources(manifest, "train") == ["clinic_a", "clinic_b"]


def test_an_empty_list_gives_minus_one_and_an_unknown_source_is_an_error(two_sources):
    ds = ip.make_dataset(two_sources, "validation", image_size=SIZE, batch_size=3,
                         training=False, source_names=())
    assert all(np.all(i.numpy() == -1) for (_, i), _ in ds)
    assert sum(int(i.shape[0]) for (_, i), _ in ds) == 4
    unknown = ip.make_dataset(two_sources, "train", image_size=SIZE, batch_size=10,
                              training=False, source_names=["clinic_a", "elsewhere"])
    with pytest.raises(tf.errors.InvalidArgumentError, match="clinic_b") as error:
        list(unknown)
    assert "elsewhere" in str(error.value)
    with pytest.raises(ValueError, match="distinct"):
        ip.source_index_lookup(["a", "a"])


@pytest.mark.parametrize("options", [{"use_metadata": True}, {"mixup_alpha": 0.2},
                                     {"source_offsets": {"clinic_a": 1.0}}])
def test_the_pipeline_refuses_an_index_it_cannot_carry(two_sources, options):
    with pytest.raises(ValueError, match=r"source_names \['clinic_a'\] cannot be combined"):
        ip.make_dataset(two_sources, "train", image_size=SIZE, batch_size=2, training=True,
                        source_names=["clinic_a"], **options)


# ---------------------------------------------------------------- the flag and a run

@pytest.mark.parametrize("overrides, shown", [
    ({"task": "diagnosis"}, "--task=diagnosis"), ({"use_metadata": True}, "--use_metadata=True"),
    ({"mixup_alpha": 0.2}, "--mixup_alpha=0.2"), ({"cutmix_alpha": 1.0}, "--cutmix_alpha=1.0"),
    ({"synthetic_data": "g", "synthetic_fraction": 0.5}, "--synthetic_data=g"),
    ({"source_logit_adjustment": True}, "--source_logit_adjustment=True")])
def test_the_flag_refuses_what_it_cannot_combine(overrides, shown):
    with pytest.raises(config_lib.ConfigError, match="--source_adversary_weight > 0 needs") as e:
        train.TrainConfig(data_dir="d", workdir="w", source_adversary_weight=0.3, **overrides)
    assert shown in str(e.value) and "--source_adversary_weight=0.3" in str(e.value)


@pytest.mark.parametrize("weight", [-0.1, float("nan")])
def test_the_flag_refuses_a_negative_weight(weight):
    with pytest.raises(config_lib.ConfigError, match=f"--source_adversary_weight={weight}: "
                                                     "must be >= 0"):
        train.TrainConfig(data_dir="d", workdir="w", source_adversary_weight=weight)


def test_the_command_line_refuses_it_at_parse():
    try:
        with pytest.raises(flags.IllegalFlagValueError, match="--source_adversary_weight"):
            flags.FLAGS(["trainer.cnn", "--data_dir=d", "--workdir=w",
                         "--source_adversary_weight=0.5", "--use_metadata"])
    finally:
        flags.FLAGS.unparse_flags()
    try:
        with pytest.raises(flags.IllegalFlagValueError, match="must be >= 0"):
            flags.FLAGS(["trainer.cnn", "--data_dir=d", "--workdir=w",
                         "--source_adversary_weight=-1"])
    finally:
        flags.FLAGS.unparse_flags()


def _config(data_dir, workdir, **overrides):
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=SIZE, batch_size=4,
                  epochs=1, steps_per_epoch=2, seed=0, mixed_precision="off", verbose=0,
                  model="compact", source_adversary_weight=0.5)
    values.update(overrides)
    return train.TrainConfig(**values)


def test_one_source_in_train_is_refused_before_the_run_folder(tmp_path):
    data = shard_fixtures.write_tiny_dataset(
        tmp_path / "data", {"train": _items(4, "clinic_a", 1),
                            "validation": _items(2, "clinic_a", 2)}, SIZE)
    with pytest.raises(config_lib.DataError,
                       match=r"--source_adversary_weight=0.5 .*1 source\(s\) \['clinic_a'\]"):
        train.train_cnn(_config(data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_train_records_without_a_source_are_refused_before_the_run_folder(tmp_path):
    data = shard_fixtures.write_tiny_dataset(
        tmp_path / "data", {"train": _items(4, "clinic_a", 1) + _items(2, "clinic_b", 2)
                            + _items(3, "", 3), "validation": _items(2, "clinic_a", 4)}, SIZE)
    with pytest.raises(config_lib.DataError, match=r"\['clinic_a', 'clinic_b'\] "
                                                   r"\(source_collection\) and 3 name none"):
        train.train_cnn(_config(data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# augment=False: uint8 input to fit, and the custom train step traced as a real run traces it
# (the module's other tests run it eagerly); True: float input.
@pytest.mark.parametrize("augment", [pytest.param(False, marks=pytest.mark.graph), True])
def test_a_tiny_run_trains_with_the_adversary_and_saves_the_plain_model(two_sources, tmp_path,
                                                                        augment):
    result = train.train_cnn(_config(two_sources, tmp_path, augment=augment,
                                     class_balance="class_weights"))
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    assert np.isfinite(result.history[0]["val_loss"]) and "val_auc" in result.history[0]
    assert np.isfinite(result.history[0]["source_loss"])
    assert 0.0 <= result.history[0]["source_accuracy"] <= 1.0
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["source_adversary"] == {"weight": 0.5, "sources": ["clinic_a", "clinic_b"]}
    saved = keras.models.load_model(tmp_path / "model.keras")
    assert len(saved.inputs) == 1 and tuple(saved.inputs[0].shape) == (None, SIZE, SIZE, 3)
    assert not any(isinstance(layer, (source_adversary.SourceAdversary,
                                      source_adversary.GradientReversal))
                   for layer in saved._flatten_layers())
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(saved(x), result.model(x), atol=1e-6)


def test_the_adversary_changes_the_loss_and_nothing_without_the_flag(two_sources, tmp_path):
    """The same seed, data order and initial weights: the source loss is added to the
    training loss; without the flag the summary records no adversary."""
    runs = {w: train.train_cnn(_config(two_sources, tmp_path / str(w), deterministic=True,
                                       steps_per_epoch=1, source_adversary_weight=w))
            for w in (0.0, 0.5)}
    assert runs[0.5].history[0]["loss"] > runs[0.0].history[0]["loss"] + 0.3  # + ~ln 2
    assert "source_adversary" not in json.loads(
        (tmp_path / "0.0" / "train_summary.json").read_text())
