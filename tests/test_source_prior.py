"""Source-prior logit adjustment: the offsets from the manifest, the LogitOffset layer, the
wrapper fit trains, the input pipeline's per-record offsets, the flag's rules and a tiny run."""
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from tests import shard_fixtures
from trainer.cnn import cli, config as config_lib, train
from trainer.core import input_pipeline as ip, source_prior

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

cli.define_flags()  # the CNN trainer's flags, as its program defines them

SIZE = 32


def _manifest(rows):
    return {"counts": {"per_split_label_diagnosis_source": [
        {"split": split, "label": label, "diagnosis": "", "source_collection": source,
         "count": count} for split, label, source, count in rows]}}


def _logit(p):
    return math.log(p / (1 - p))


# ---------------------------------------------------------------- offsets

def test_offsets_are_smoothed_log_prior_odds_against_the_split():
    manifest = _manifest([
        ("train", "benign", "rich", 6), ("train", "malignant", "rich", 4),
        ("train", "benign", "poor", 18), ("train", "malignant", "poor", 0),
        ("train", "benign", "", 2),          # no source: counts in the split, gets no offset
        ("train", "unknown", "rich", 50),    # neither benign nor malignant: ignored
        ("validation", "malignant", "other", 9),  # another split: ignored
    ])
    offsets = source_prior.source_offsets(manifest)
    assert list(offsets) == ["poor", "rich"]
    base = _logit((4 + 1) / (30 + 2))
    assert offsets["rich"] == pytest.approx(_logit(5 / 12) - base)
    assert offsets["poor"] == pytest.approx(_logit(1 / 20) - base)  # finite with 0 malignant
    assert offsets["rich"] > 0 > offsets["poor"]
    # the same rows written as [split, label, diagnosis, source, count] lists (an older
    # manifest) give the same offsets: one reader, isicflow.dataset.count_rows
    as_lists = {"counts": {"per_split_label_diagnosis_source": [
        [r["split"], r["label"], r["diagnosis"], r["source_collection"], r["count"]]
        for r in manifest["counts"]["per_split_label_diagnosis_source"]]}}
    assert source_prior.source_offsets(as_lists) == offsets
    with pytest.raises(ValueError, match="neither a mapping nor a list of 5"):
        source_prior.source_offsets({"counts": {"per_split_label_diagnosis_source": [
            ["train", "benign", "rich", 6]]}})


@pytest.mark.parametrize("scale, offset", [(1, _logit(2 / 12) - _logit(3 / 22)), (1000, 0.0)])
def test_sources_at_the_split_rate_get_the_same_offset_zero_once_counts_are_large(scale,
                                                                                  offset):
    """The +1/+2 smoothing pulls a small source towards 1/2 more than the whole split; with
    many records it fades and a source at the split's rate gets no offset."""
    manifest = _manifest([("train", "benign", "a", 9 * scale), ("train", "malignant", "a", scale),
                          ("train", "benign", "b", 9 * scale), ("train", "malignant", "b", scale)])
    got = source_prior.source_offsets(manifest)
    assert got["a"] == got["b"] == pytest.approx(offset, abs=1e-3)


@pytest.mark.parametrize("rows, shown", [
    ([("train", "benign", "only", 5), ("train", "malignant", "only", 1)], "['only']"),
    ([("train", "benign", "", 5), ("train", "malignant", "", 1)], "none"),
    ([("validation", "benign", "a", 5), ("validation", "benign", "b", 5)], "0 benign/malig"),
])
def test_offsets_refuse_a_split_without_two_sources(rows, shown):
    with pytest.raises(ValueError, match=">= 2 named sources") as error:
        source_prior.source_offsets(_manifest(rows), "train")
    assert shown in str(error.value)


# ---------------------------------------------------------------- the layer and the wrapper

def test_logit_offset_moves_the_logit_and_is_the_identity_at_zero():
    p = np.array([[0.0], [0.02], [0.3], [0.5], [0.97], [1.0]], np.float32)
    o = np.array([1.5, -2.0, 0.7, -0.3, 2.5, -4.0], np.float32)
    got = source_prior.LogitOffset()([p, o]).numpy()
    inner = p[1:-1, 0].astype(np.float64)
    want = 1 / (1 + np.exp(-(np.log(inner / (1 - inner)) + o[1:-1])))
    np.testing.assert_allclose(got[1:-1, 0], want, rtol=1e-5)
    assert got[0, 0] == 0.0 and got[-1, 0] == 1.0  # no log of 0, no NaN
    np.testing.assert_array_equal(source_prior.LogitOffset()([p, np.zeros((6, 1))]).numpy(), p)


def _tiny_model():
    return keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(),
                             keras.layers.Dense(1, activation="sigmoid")], name="tiny")


def test_the_wrapper_shares_the_weights_and_refuses_two_inputs():
    model = _tiny_model()
    wrapped = source_prior.with_source_offset(model)
    assert len(wrapped.inputs) == 2 and len(wrapped.trainable_weights) == 2
    assert all(a is b for a, b in zip(wrapped.trainable_weights, model.trainable_weights))
    x = np.random.default_rng(0).random((3, 4, 4, 3)).astype(np.float32)
    np.testing.assert_array_equal(wrapped([x, np.zeros(3, np.float32)]), model(x))
    assert not np.allclose(wrapped([x, np.ones(3, np.float32)]), model(x))
    image, meta = keras.Input((4, 4, 3)), keras.Input((2,))
    two = keras.Model([image, meta], keras.layers.Dense(1)(meta))
    with pytest.raises(ValueError, match="image-only model"):
        source_prior.with_source_offset(two)


# ---------------------------------------------------------------- the input pipeline

def _items(n, source, seed, level=None, labels=("benign", "malignant")):
    return shard_fixtures.source_items(n, source, seed, SIZE, level, labels)


@pytest.mark.parametrize("options", [
    {}, {"augment": True}, {"as_uint8": True, "cache": "memory"},
    {"balance_classes": True}, {"balance_sources": True}])
def test_each_record_carries_its_sources_offset(two_sources, options):
    offsets = {"clinic_a": -0.5, "clinic_b": 1.25}
    ds = ip.make_dataset(two_sources, "train", image_size=SIZE, batch_size=5, training=True,
                         seed=1, source_offsets=offsets, **options)
    if options.get("balance_classes") or options.get("balance_sources"):
        ds = ds.take(6)  # infinite streams
    top = 255.0 if options.get("as_uint8") else 1.0
    seen = shard_fixtures.extras_by_level(ds)
    assert seen == {0.0: {-0.5}, top: {1.25}}, seen


def test_an_empty_mapping_gives_every_record_zero(two_sources):
    ds = ip.make_dataset(two_sources, "validation", image_size=SIZE, batch_size=3,
                         training=False, source_offsets={})
    batches = list(ds)  # an evaluation stream may yield its short batch first (parallel batch)
    assert sorted(int(o.shape[0]) for (_, o), _ in batches) == [1, 3]
    assert all(o.dtype == tf.float32 and o.shape == y.shape for (_, o), y in batches)
    assert all(np.all(o.numpy() == 0.0) for (_, o), _ in ds)
    unknown = ip.make_dataset(two_sources, "train", image_size=SIZE, batch_size=10,
                              training=False, source_offsets={"elsewhere": 3.0})
    assert np.all(next(iter(unknown))[0][1].numpy() == 0.0)


@pytest.mark.parametrize("options", [{"use_metadata": True}, {"mixup_alpha": 0.2},
                                     {"cutmix_alpha": 1.0}])
def test_the_pipeline_refuses_offsets_it_cannot_carry(two_sources, options):
    with pytest.raises(ValueError, match="source_offsets .* cannot be combined"):
        ip.make_dataset(two_sources, "train", image_size=SIZE, batch_size=2, training=True,
                        source_offsets={"clinic_a": 1.0}, **options)


def test_the_pipeline_refuses_offsets_with_synthetic_records(two_sources):
    from trainer.core import synthetic_mix

    mix = synthetic_mix.SyntheticMix(data_dir="unused", counts={"malignant": 1}, paths=(),
                                     compression="")
    with pytest.raises(ValueError, match="generated records have no source"):
        ip.make_dataset(two_sources, "train", image_size=SIZE, batch_size=2, training=True,
                        source_offsets={"clinic_a": 1.0}, synthetic=mix)


# ---------------------------------------------------------------- the flag and a run

@pytest.mark.parametrize("overrides, shown", [
    ({"task": "diagnosis"}, "--task=diagnosis"), ({"use_metadata": True}, "--use_metadata=True"),
    ({"mixup_alpha": 0.2}, "--mixup_alpha=0.2"),
    ({"synthetic_data": "g", "synthetic_fraction": 0.5}, "--synthetic_data=g")])
def test_the_flag_refuses_what_it_cannot_adjust(overrides, shown):
    with pytest.raises(config_lib.ConfigError, match="--source_logit_adjustment needs") as e:
        train.TrainConfig(data_dir="d", workdir="w", source_logit_adjustment=True, **overrides)
    assert shown in str(e.value)


def test_the_command_line_refuses_it_at_parse():
    try:
        with pytest.raises(flags.IllegalFlagValueError, match="--source_logit_adjustment"):
            flags.FLAGS(["trainer.cnn", "--data_dir=d", "--workdir=w",
                         "--source_logit_adjustment", "--use_metadata"])
    finally:
        flags.FLAGS.unparse_flags()


def _config(data_dir, workdir, **overrides):
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=SIZE, batch_size=4,
                  epochs=1, steps_per_epoch=2, seed=0, mixed_precision="off", verbose=0,
                  model="compact", source_logit_adjustment=True)
    values.update(overrides)
    return train.TrainConfig(**values)


def test_one_source_in_train_is_refused_before_the_run_folder(tmp_path):
    data = shard_fixtures.write_tiny_dataset(
        tmp_path / "data", {"train": _items(4, "clinic_a", 1),
                            "validation": _items(2, "clinic_a", 2)}, SIZE)
    with pytest.raises(config_lib.DataError, match="--source_logit_adjustment .*'clinic_a'"):
        train.train_cnn(_config(data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# augment=False: uint8 input to fit, and the custom train step traced as a real run traces it
# (the module's other tests run it eagerly); True: float input.
@pytest.mark.parametrize("augment", [pytest.param(False, marks=pytest.mark.graph), True])
def test_a_tiny_run_trains_with_offsets_and_saves_the_plain_model(two_sources, tmp_path,
                                                                  augment):
    result = train.train_cnn(_config(two_sources, tmp_path, augment=augment))
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    assert np.isfinite(result.history[0]["val_loss"])
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    manifest = ip.dataset_lib.read_manifest(two_sources)
    assert summary["source_logit_offsets"] == pytest.approx(
        source_prior.source_offsets(manifest))
    assert summary["source_logit_offsets"] == pytest.approx(
        {"clinic_a": _logit(4 / 8) - _logit(8 / 12), "clinic_b": _logit(5 / 6) - _logit(8 / 12)})
    saved = keras.models.load_model(tmp_path / "model.keras")
    assert len(saved.inputs) == 1 and tuple(saved.inputs[0].shape) == (None, SIZE, SIZE, 3)
    assert not any(isinstance(layer, source_prior.LogitOffset) for layer in saved.layers)
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(saved(x), result.model(x), atol=1e-6)
    assert (tmp_path / "checkpoints" / "best.weights.h5").exists()


def test_the_offsets_change_what_fit_sees_and_nothing_without_the_flag(two_sources, tmp_path):
    """The same seed, data order and initial weights: only the offsets differ, and so does the
    training loss; without the flag the summary records none."""
    runs = {flag: train.train_cnn(_config(two_sources, tmp_path / str(flag), deterministic=True,
                                          steps_per_epoch=1, source_logit_adjustment=flag))
            for flag in (False, True)}
    assert runs[False].history[0]["loss"] != pytest.approx(runs[True].history[0]["loss"])
    assert "source_logit_offsets" not in json.loads(
        (tmp_path / "False" / "train_summary.json").read_text())
