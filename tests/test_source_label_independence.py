"""--source_label_independence: the group probabilities, the stream that draws them, the flag's
rules, the refusal of a split it cannot balance, and a tiny run."""
import json
import re

import numpy as np
import pytest
from absl import flags

from tests import shard_fixtures
from trainer.cnn import cli, config as config_lib, train
from trainer.core import input_pipeline as ip, source_prior

cli.define_flags()  # the CNN trainer's flags, as its program defines them

SIZE = 32


# ---------------------------------------------------------------- the probabilities

def test_groups_are_drawn_at_source_share_times_class_share():
    q = source_prior.independent_group_weights({"a": {0: 6, 1: 4}, "b": {0: 9, 1: 1}})
    assert q == pytest.approx({("a", 0): 0.5 * 0.75, ("a", 1): 0.5 * 0.25,
                               ("b", 0): 0.5 * 0.75, ("b", 1): 0.5 * 0.25})
    assert sum(q.values()) == pytest.approx(1.0)


def test_rare_class_weighting_draws_every_rare_record_as_stored():
    """rare_class: sources weighted by their share of class 1 (5 records): a 4/5, b 1/5; each
    malignant record is drawn at 1/n = 1/20 as in the plain stream, and the mix is still the
    pooled one (0.25 malignant) in each source."""
    counts = {"a": {0: 6, 1: 4}, "b": {0: 9, 1: 1}}
    q = source_prior.independent_group_weights(counts, "rare_class")
    assert q == pytest.approx({("a", 0): 0.8 * 0.75, ("a", 1): 0.8 * 0.25,
                               ("b", 0): 0.2 * 0.75, ("b", 1): 0.2 * 0.25})
    draws = {(g["source"], g["class"]): g["oversampling"]
             for g in source_prior.group_draws(counts, "rare_class")}
    assert draws[("a", 1)] == pytest.approx(1.0) and draws[("b", 1)] == pytest.approx(1.0)
    assert draws[("a", 0)] == pytest.approx(2.0)
    assert draws[("b", 0)] == pytest.approx(1 / 3, abs=1e-3)
    with pytest.raises(ValueError, match="source_weight 'images' not in"):
        source_prior.independent_group_weights(counts, "images")


def test_the_flag_lists_the_weightings_the_maths_knows():
    assert config_lib.SOURCE_LABEL_INDEPENDENCE == ("none",) + source_prior.SOURCE_WEIGHTS


def test_the_class_mix_is_the_pooled_one_in_every_source():
    counts = {"molemax": {0: 3000, 1: 12}, "rosendahl": {0: 500, 1: 300}, "dias": {0: 90, 1: 30}}
    q = source_prior.independent_group_weights(counts)
    pooled = 342 / 3932
    for source in counts:
        assert q[(source, 1)] / (q[(source, 0)] + q[(source, 1)]) == pytest.approx(pooled)
    shares = {s: q[(s, 0)] + q[(s, 1)] for s in counts}  # each source keeps its share
    assert shares == pytest.approx({s: sum(c.values()) / 3932 for s, c in counts.items()})


@pytest.mark.parametrize("counts, shown", [
    ({"a": {0: 5, 1: 2}}, r"needs >= 2 named sources with records; got \['a'\]"),
    ({"a": {0: 5}, "b": {0: 3}}, r">= 2 classes; the sources hold only \[0\]"),
    ({"a": {0: 5, 1: 2}, "b": {0: 3, 1: 1}, "": {0: 1}}, "every record in a source; 1 name none"),
    ({"a": {0: 5, 1: 2}, "b": {0: 3, 1: 0}}, r"without a class \[\('b', 1\)\]"),
])
def test_what_cannot_be_made_independent_is_refused_with_the_counts(counts, shown):
    with pytest.raises(ValueError, match=shown):
        source_prior.independent_group_weights(counts)


# ---------------------------------------------------------------- the stream

@pytest.fixture(scope="module")
def skewed_sources(tmp_path_factory):
    """clinic_a (grey 0): 6 benign, 2 malignant; clinic_b (grey 255): 1 benign, 3 malignant."""
    a = shard_fixtures.source_items(8, "clinic_a", 1, SIZE, 0,
                                    ("benign", "benign", "benign", "malignant"))
    b = shard_fixtures.source_items(4, "clinic_b", 2, SIZE, 255,
                                    ("malignant", "malignant", "malignant", "benign"))
    return shard_fixtures.write_tiny_dataset(
        tmp_path_factory.mktemp("skewed"), {"train": a + b, "validation": a[:4]}, SIZE,
        num_shards=2)


def _cells(ds):
    """{(grey level 0/1, label): count} over a dataset of (images, labels) batches."""
    cells: dict[tuple[int, int], int] = {}
    for images, labels in ds:
        levels = np.round(images.numpy().reshape(len(labels), -1).mean(1)).astype(int)
        for level, label in zip(levels, labels.numpy().astype(int)):
            cells[(int(level), int(label))] = cells.get((int(level), int(label)), 0) + 1
    return cells


@pytest.mark.parametrize("weighting", source_prior.SOURCE_WEIGHTS)
def test_the_stream_draws_each_group_at_its_probability(skewed_sources, weighting):
    manifest = ip.dataset_lib.read_manifest(skewed_sources)
    q = source_prior.independent_group_weights(ip.binary_source_class_counts(manifest, "train"),
                                               weighting)
    w = {"records": (8 / 12, 4 / 12), "rare_class": (2 / 5, 3 / 5)}[weighting]
    assert q == pytest.approx({("clinic_a", 0): w[0] * 7 / 12, ("clinic_a", 1): w[0] * 5 / 12,
                               ("clinic_b", 0): w[1] * 7 / 12, ("clinic_b", 1): w[1] * 5 / 12})
    ds = ip.make_dataset(skewed_sources, "train", image_size=SIZE, batch_size=40, training=True,
                         seed=5, source_label_weights=q, augment=True)
    # 4,000 draws of an infinite stream: the draw order follows TensorFlow's global seed, which
    # earlier tests in the process set, so the bound must hold for any draw (0.05 is >= 6 sd)
    cells = _cells(ds.take(100))
    assert sum(cells.values()) == 4000
    level = {"clinic_a": 0, "clinic_b": 1}
    for (source, label), p in q.items():
        assert abs(cells.get((level[source], label), 0) / 4000 - p) < 0.05, (cells, q)
    malignant_rate = [cells[(s, 1)] / (cells[(s, 0)] + cells[(s, 1)]) for s in (0, 1)]
    assert np.allclose(malignant_rate, 5 / 12, atol=0.07), malignant_rate
    plain = _cells(ip.make_dataset(skewed_sources, "train", image_size=SIZE, batch_size=12,
                                   training=True, seed=5))
    assert plain == {(0, 0): 6, (0, 1): 2, (1, 0): 1, (1, 1): 3}  # without: 0.25 against 0.75


@pytest.mark.parametrize("options, shown", [
    ({"training": False}, "training=True (got False)"),
    ({"balance_sources": True}, "balance_sources (got True)"),
    ({"balance_classes": True}, "balance_classes (got True)"),
    ({"labels": "all"}, "labels='binary' (got 'all')")])
def test_the_stream_refuses_what_it_cannot_combine(skewed_sources, options, shown):
    values = {"training": True, **options}
    with pytest.raises(ValueError, match=f"source_label_weights .*{re.escape(shown)}"):
        ip.make_dataset(skewed_sources, "train", image_size=SIZE, batch_size=2,
                        source_label_weights={("clinic_a", 0): 0.5, ("clinic_b", 1): 0.5},
                        **values)


def test_the_stream_refuses_no_groups_and_generated_records(skewed_sources):
    from trainer.core import synthetic_mix

    with pytest.raises(ValueError, match=r"source_label_weights \(0 groups; none is an error"):
        ip.make_dataset(skewed_sources, "train", image_size=SIZE, batch_size=2, training=True,
                        source_label_weights={})
    mix = synthetic_mix.SyntheticMix(data_dir="unused", counts={"malignant": 1}, paths=(),
                                     compression="")
    with pytest.raises(ValueError, match=r"no synthetic records \(got True\)"):
        ip.make_dataset(skewed_sources, "train", image_size=SIZE, batch_size=2, training=True,
                        source_label_weights={("clinic_a", 0): 1.0}, synthetic=mix)


# ---------------------------------------------------------------- the flag and a run

@pytest.mark.parametrize("overrides", [
    {"task": "diagnosis", "monitor": "val_accuracy"}, {"source_balance": True},
    {"class_balance": "sampling"}, {"synthetic_data": "g", "synthetic_fraction": 0.5},
    {"source_logit_adjustment": True}])
def test_the_flag_refuses_what_it_cannot_combine(overrides):
    train.TrainConfig(data_dir="d", workdir="w", **overrides)  # each setting alone is valid
    train.TrainConfig(data_dir="d", workdir="w", source_label_independence="records",
                      class_balance="class_weights")  # and the flag alone
    with pytest.raises(config_lib.ConfigError, match="--source_label_independence needs"):
        train.TrainConfig(data_dir="d", workdir="w", source_label_independence="rare_class",
                          **overrides)


def test_an_unknown_weighting_is_refused_with_the_choices():
    with pytest.raises(config_lib.ConfigError,
                       match="--source_label_independence=yes: must be one of none, records"):
        train.TrainConfig(data_dir="d", workdir="w", source_label_independence="yes")


def test_the_command_line_refuses_it_at_parse():
    try:
        with pytest.raises(flags.IllegalFlagValueError, match="--source_label_independence"):
            flags.FLAGS(["trainer.cnn", "--data_dir=d", "--workdir=w",
                         "--source_label_independence=records", "--source_balance"])
    finally:
        flags.FLAGS.unparse_flags()


def _config(data_dir, workdir, **overrides):
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=SIZE, batch_size=4,
                  epochs=1, steps_per_epoch=2, seed=0, mixed_precision="off", verbose=0,
                  model="compact", source_label_independence="records")
    values.update(overrides)
    return train.TrainConfig(**values)


def test_a_source_without_one_class_is_refused_before_the_run_folder(two_sources, tmp_path):
    """write_two_source_dataset's clinic_b holds only malignant images in train."""
    with pytest.raises(config_lib.DataError,
                       match=r"--source_label_independence=records .*\('clinic_b', 0\)"):
        train.train_cnn(_config(two_sources, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.eager_steps  # two steps: tracing them cost more than running them (conftest)
def test_a_tiny_run_trains_on_the_independent_stream(skewed_sources, tmp_path):
    result = train.train_cnn(_config(skewed_sources, tmp_path, class_balance="class_weights",
                                     augment=True))
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["source_label_independence"] == "records"
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    draws = {(g["source"], g["class"]): g for g in summary["source_label_independence"]}
    assert {k: g["records"] for k, g in draws.items()} == {
        ("clinic_a", 0): 6, ("clinic_a", 1): 2, ("clinic_b", 0): 1, ("clinic_b", 1): 3}
    # clinic_b's one benign image: drawn 4/12 * 7/12 of the time against 1/12 stored
    assert draws[("clinic_b", 0)]["oversampling"] == pytest.approx(4 * 7 / 12, abs=1e-3)
    assert draws[("clinic_a", 0)]["oversampling"] == pytest.approx(8 * 7 / 12 / 6, abs=1e-3)
