"""--confirmation_weights: the factors, the shares, the plan of a split, the streams of both
tasks that draw it, the flag's rules, the refusal of a confirmation no record has, a tiny run."""
import collections
import dataclasses
import json
import re

import numpy as np
import pytest

from tests import shard_fixtures
from trainer.cnn import config as config_lib, diagnosis, train
from trainer.core import confirmation_mix as cm, input_pipeline as ip

SIZE = 32
HISTO, FOLLOW_UP = "histopathology", "serial imaging showing no change"


# ---------------------------------------------------------------- the factors and shares

def test_factors_take_ham_codes_or_the_archives_words():
    assert cm.parse_factors("follow_up:0.25, histo:2") == {FOLLOW_UP: 0.25, HISTO: 2.0}
    assert cm.parse_factors("Histopathology:3") == {"Histopathology": 3.0}  # as given
    assert cm.parse_factors(f"{HISTO}:3") == {HISTO: 3.0}
    assert cm.parse_factors("None:0.5") == {cm.NO_CONFIRMATION: 0.5}  # records without one
    assert cm.parse_factors("") == {}


@pytest.mark.parametrize("text, shown", [
    ("histo", "'histo'"), ("histo:0", "'histo:0'"), ("histo:-1", "'histo:-1'"),
    ("histo:x", "'histo:x'"), ("histo:nan", "'histo:nan'"), ("histo:inf", "'histo:inf'"),
    (":2", "':2'"), ("histo:2,histopathology:3", "names 'histopathology' twice"),
    (",", "holds no CONFIRMATION:FACTOR item")])
def test_malformed_factors_are_refused_with_the_item(text, shown):
    with pytest.raises(ValueError, match=shown):
        cm.parse_factors(text)


def test_shares_move_draws_inside_each_class_and_keep_its_total():
    counts = {(0, FOLLOW_UP): 6, (0, HISTO): 2, (0, ""): 2, (1, HISTO): 4}
    shares = cm.group_shares(counts, {HISTO: 3.0})
    # class 0 weighs 6 + 2*3 + 2 = 14 for its 10 records
    assert shares == pytest.approx({(0, FOLLOW_UP): 10 * 6 / 14, (0, HISTO): 10 * 6 / 14,
                                    (0, ""): 10 * 2 / 14, (1, HISTO): 4.0})
    assert shares[(0, FOLLOW_UP)] + shares[(0, HISTO)] + shares[(0, "")] == pytest.approx(10)
    assert cm.group_shares(counts, {}) == pytest.approx(  # no factor: the plain stream
        {k: float(v) for k, v in counts.items()})


def test_a_confirmation_no_record_has_is_refused_with_those_it_has():
    with pytest.raises(ValueError, match=r"names \['confocal'\], which no training record "
                                         r"has; .*\['histopathology', 'none'\]"):
        cm.group_shares({(0, HISTO): 3, (1, ""): 1}, {"confocal": 2.0})


def test_the_plan_groups_records_by_class_and_confirmation():
    extras = ['{"dx_type":"follow_up"}', '{"dx_type":"histo"}',
              '{"diagnosis_confirm_type":"histopathology"}', "", '{"dx_type":"histo"}',
              '{"diagnosis_confirm_type":"None"}']
    mix = cm.plan(["a", "b", "c", "d", "e", "f"], [0, 0, 1, 0, -1, 0], extras, {HISTO: 2.0})
    assert mix.groups == ((0, ""), (0, HISTO), (0, FOLLOW_UP), (1, HISTO))
    assert dict(mix.image_groups) == {"a": 2, "b": 1, "c": 3, "d": 0, "f": 0}  # e: not in it
    assert mix.records == (2, 1, 1, 1)
    assert mix.shares == pytest.approx((4 * 2 / 5, 4 * 2 / 5, 4 / 5, 1.0))
    summary = mix.summary()
    assert [(g["class"], g["confirmation"], g["records"]) for g in summary] == [
        (0, "none", 2), (0, HISTO, 1), (0, FOLLOW_UP, 1), (1, HISTO, 1)]
    assert sum(g["share"] for g in summary) == pytest.approx(1.0, abs=1e-5)
    assert [g["oversampling"] for g in summary] == pytest.approx([0.8, 1.6, 0.8, 1.0])


def test_the_plan_refuses_one_image_in_two_groups_and_a_split_without_the_task():
    with pytest.raises(ValueError, match="image_id 'a' is on two records"):
        cm.plan(["a", "a"], [0, 0], ["", ""], {})  # even in one group: drawn by its id
    with pytest.raises(ValueError, match="no record of the task"):
        cm.plan(["a"], [-1], [""], {})
    with pytest.raises(ValueError, match="one of each per record"):
        cm.plan(["a"], [0, 1], [""], {})


# ---------------------------------------------------------------- the streams

LEVELS = {0: "follow-up nevus", 64: "keratosis, no confirmation", 128: "excised nevus",
          192: "unknown diagnosis: never drawn", 255: "melanoma"}


@pytest.fixture(scope="module")
def confirmed(tmp_path_factory):
    """train: 6 follow-up nevi (grey 0), 2 keratoses without a confirmation (64), 2 excised
    nevi (128), 4 melanomas (255, excised), 2 excised lesions of unknown diagnosis and label
    (192, in neither task); flat images, so the grey level tells the group."""
    def items(n, level, label, dx, dx_type=None):
        extra = {"diagnosis": dx}
        if dx_type:
            extra["extra_metadata_json"] = json.dumps({"dx_type": dx_type})
        return [(np.full((SIZE, SIZE, 3), level, np.uint8), label, extra) for _ in range(n)]

    train_items = (items(6, 0, "benign", "nevus", "follow_up")
                   + items(2, 64, "benign", "seborrheic keratosis")
                   + items(2, 128, "benign", "nevus", "histo")
                   + items(4, 255, "malignant", "melanoma", "histo")
                   + items(2, 192, "unknown", "", "histo"))
    return shard_fixtures.write_tiny_dataset(
        tmp_path_factory.mktemp("confirmed"), {"train": train_items,
                                               "validation": train_items[::2]}, SIZE)


def _levels(ds) -> dict[int, int]:
    """{grey level of LEVELS: images} over (images, labels) batches."""
    seen: dict[int, int] = {}
    for images, _ in ds:
        for mean in images.numpy().reshape(len(images), -1).mean(1) * 255:
            level = min(LEVELS, key=lambda v: abs(v - mean))
            seen[level] = seen.get(level, 0) + 1
    return seen


def _binary_plan(data_dir, text):
    return cm.plan_for_split(data_dir, "train", SIZE, cm.parse_factors(text), "label", int)


def test_the_binary_stream_draws_each_group_at_its_share(confirmed):
    mix = _binary_plan(confirmed, "histo:3")
    ds = ip.make_dataset(confirmed, "train", image_size=SIZE, batch_size=40, training=True,
                         seed=5, confirmation_mix=mix)
    seen = _levels(ds.take(100))  # 4,000 draws: 0.05 is >= 6 sd of any share
    expected = {0: 10 * 6 / 14, 64: 10 * 2 / 14, 128: 10 * 6 / 14, 255: 4.0, 192: 0}
    for level, share in expected.items():
        assert abs(seen.get(level, 0) / 4000 - share / 14) < 0.05, (seen, expected)
    plain = _levels(ip.make_dataset(confirmed, "train", image_size=SIZE, batch_size=14,
                                    training=True, seed=5))
    assert plain == {0: 6, 64: 2, 128: 2, 255: 4}  # without: each record once


def test_the_diagnosis_stream_draws_each_group_at_its_share(confirmed):
    mapping = diagnosis.build_mapping(confirmed, SIZE, min_records=3)  # keratoses: other
    assert mapping["classes"] == ["nevus", "melanoma", diagnosis.OTHER]
    mix = cm.plan_for_split(confirmed, "train", SIZE, {FOLLOW_UP: 0.5}, "diagnosis",
                            lambda raw: diagnosis.class_of(mapping, raw))
    assert mix.groups == ((0, HISTO), (0, FOLLOW_UP), (1, HISTO), (2, cm.NO_CONFIRMATION))
    ds = diagnosis.make_dataset(confirmed, "train", mapping, image_size=SIZE, batch_size=40,
                                training=True, seed=5, confirmation_mix=mix)
    seen = _levels(ds.take(100))
    expected = {0: 8 * 3 / 5, 128: 8 * 2 / 5, 64: 2.0, 255: 4.0, 192: 0}  # nevi weigh 6*.5 + 2
    for level, share in expected.items():
        assert abs(seen.get(level, 0) / 4000 - share / 14) < 0.05, (seen, expected)


@pytest.mark.parametrize("options, shown", [
    ({"training": False}, "training=True (got False)"),
    ({"balance_classes": True}, "balance_classes True"),
    ({"balance_sources": True}, "balance_sources True"),
    ({"one_source_batches": True}, "one_source_batches True"),
    ({"source_label_weights": {("test", 0): 1.0}}, "source_label_weights True"),
    ({"source_offsets": {}}, "source_offsets True"),
    ({"labels": "all"}, "labels='binary' (got 'all')")])
def test_the_stream_refuses_what_it_cannot_combine(confirmed, options, shown):
    values = {"training": True, **options}
    with pytest.raises(ValueError, match=f"confirmation_mix needs .*{re.escape(shown)}"):
        ip.make_dataset(confirmed, "train", image_size=SIZE, batch_size=2,
                        confirmation_mix=_binary_plan(confirmed, "histo:2"), **values)


@pytest.mark.parametrize("options, shown", [
    ({"training": False}, "training=True (got False)"),
    ({"balance_classes": True}, "balance_classes True")])
def test_the_diagnosis_stream_refuses_what_it_cannot_combine(confirmed, options, shown):
    mapping = diagnosis.build_mapping(confirmed, SIZE, min_records=1)
    mix = cm.plan_for_split(confirmed, "train", SIZE, {}, "diagnosis",
                            lambda raw: diagnosis.class_of(mapping, raw))
    with pytest.raises(ValueError, match=f"confirmation_mix needs .*{re.escape(shown)}"):
        diagnosis.make_dataset(confirmed, "train", mapping, image_size=SIZE, batch_size=2,
                               **{"training": True, **options}, confirmation_mix=mix)


def test_the_plan_reads_its_columns_in_one_pass_as_each_alone(confirmed):
    from isicflow import reader

    fields = ("image_id", "diagnosis", "label", "extra_metadata_json")
    columns = reader.field_columns(confirmed, "train", SIZE, fields)
    rows = collections.Counter(  # row by row, the fixture's records: the columns line up
        (dx, label, json.loads(extra or "{}").get("dx_type", "none"))
        for dx, label, extra in zip(columns["diagnosis"], columns["label"],
                                    columns["extra_metadata_json"]))
    assert rows == {("nevus", "0", "follow_up"): 6, ("seborrheic keratosis", "0", "none"): 2,
                    ("nevus", "0", "histo"): 2, ("melanoma", "1", "histo"): 4,
                    ("", "-1", "histo"): 2}
    assert len(set(columns["image_id"])) == 16
    assert columns["label"] == reader.field_values(confirmed, "train", SIZE, "label")
    assert reader.field_columns(confirmed, "test", SIZE, fields) == {f: [] for f in fields}
    with pytest.raises(ValueError, match=r"\['pixels'\] not record fields"):
        reader.field_columns(confirmed, "train", SIZE, ("image_id", "pixels"))


# ---------------------------------------------------------------- the flag and a tiny run

@pytest.mark.parametrize("overrides", [
    {"source_balance": True}, {"source_batches": True}, {"class_balance": "sampling"},
    {"source_label_independence": "records"}, {"synthetic_data": "s"},
    {"source_logit_adjustment": True}])
def test_the_flag_refuses_another_mix(overrides):
    train.TrainConfig(data_dir="d", workdir="w", **overrides)  # each setting alone is valid
    with pytest.raises(config_lib.ConfigError, match="--confirmation_weights draws each"):
        train.TrainConfig(data_dir="d", workdir="w", confirmation_weights="histo:2",
                          **overrides)


@pytest.mark.parametrize("text", ["histo", "  ", ",", "histo:2,histopathology:3", "histo:inf",
                                  "histo:0"])
def test_a_malformed_flag_is_refused_at_the_config(text):
    with pytest.raises(config_lib.ConfigError, match=f"--confirmation_weights={re.escape(text)}: "
                                                     "want CONFIRMATION:FACTOR.*named once"):
        train.TrainConfig(data_dir="d", workdir="w", confirmation_weights=text)


def test_datasets_before_prepare_are_refused(confirmed, tmp_path):
    from trainer.cnn import tasks

    c = _config(confirmed, tmp_path / "run", confirmation_weights="histo:2")
    task = tasks.for_config(c)
    with pytest.raises(RuntimeError, match="prepare\\(\\) plans the mix"):
        task.datasets(c, None)
    task.prepare(c)
    assert task.confirmation is not None


def _config(data_dir, workdir, **overrides):
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=SIZE, batch_size=4,
                  epochs=1, steps_per_epoch=2, seed=0, mixed_precision="off", verbose=0,
                  model="compact", class_balance="class_weights")
    values.update(overrides)
    return train.TrainConfig(**values)


def test_several_workers_are_refused_before_anything_starts(confirmed):
    from isicflow import dataset as dataset_lib

    c = _config(confirmed, "unused", confirmation_weights="histo:2")
    manifest = dataset_lib.read_manifest(confirmed)
    assert train.check_workers(dataclasses.replace(c, confirmation_weights=""), manifest, 0, 2)
    with pytest.raises(config_lib.ConfigError, match="histo:2 with 2 workers"):
        train.check_workers(c, manifest, 0, 2)


def test_a_confirmation_train_lacks_is_refused_before_the_run_folder(confirmed, tmp_path):
    with pytest.raises(config_lib.DataError, match=r"--confirmation_weights=confocal:2 .*"
                                                   r"names \['confocal microscopy"):
        train.train_cnn(_config(confirmed, tmp_path / "run", confirmation_weights="confocal:2"))
    assert not (tmp_path / "run").exists()


@pytest.mark.eager_steps  # two steps: tracing them cost more than running them (conftest)
@pytest.mark.parametrize("task", ["binary", "diagnosis"])
def test_a_tiny_run_trains_on_the_mix_and_logs_it(confirmed, tmp_path, task):
    extra = {"task": task, "min_class_records": 1, "monitor": "val_accuracy"}
    result = train.train_cnn(_config(confirmed, tmp_path, confirmation_weights="histo:3",
                                     augment=True, **extra))
    assert len(result.history) == 1 and np.isfinite(result.history[0]["loss"])
    assert json.loads((tmp_path / "train_config.json").read_text())[
        "confirmation_weights"] == "histo:3"
    logged = {(g["class"], g["confirmation"]): g for g in json.loads(
        (tmp_path / "train_summary.json").read_text())["confirmation_weights"]}
    assert sum(g["share"] for g in logged.values()) == pytest.approx(1.0, abs=1e-5)
    if task == "binary":  # excised nevi weigh 2*3 of benign's 14, drawn for its 10 of 14
        nevus, melanoma = 0, 1
        assert logged[(nevus, HISTO)]["share"] == pytest.approx(10 * 6 / 14 / 14, abs=1e-5)
    else:  # 2*3 of the nevi's 12, drawn for their 8 of 14
        index = diagnosis.read_mapping(str(tmp_path))["index"]
        nevus, melanoma = index["nevus"], index["melanoma"]
        assert logged[(nevus, HISTO)]["share"] == pytest.approx(8 * 6 / 12 / 14, abs=1e-5)
    assert logged[(nevus, HISTO)]["records"] == 2
    assert logged[(nevus, HISTO)]["oversampling"] > 1
    assert logged[(melanoma, HISTO)]["oversampling"] == 1.0  # every melanoma excised: as stored
