"""--synthetic_data/--synthetic_fraction: generated images added to the training split only, in
the class ratio of the real split, streamed through the same pipeline; bad inputs fail loud."""
import json
import pathlib

import numpy as np
import pytest
from absl import flags

from tests import shard_fixtures
from trainer.cnn import cli, train

cli.define_flags()  # the CNN trainer's flags, as its program defines them
from trainer.core import input_pipeline, synthetic_mix

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

SIZE = 16
SYNTHETIC_VALUE = 7  # every generated pixel; no real (random) image is constant


def _constant(n: int, label: str):
    return [(np.full((SIZE, SIZE, 3), SYNTHETIC_VALUE, np.uint8), label) for _ in range(n)]


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory):
    """8 train (6 benign, 2 malignant), 2 validation, 2 test random images."""
    train_images = shard_fixtures.random_images(6, SIZE, 1, ("benign",)) + \
        shard_fixtures.random_images(2, SIZE, 2, ("malignant",))
    return shard_fixtures.write_tiny_dataset(
        tmp_path_factory.mktemp("real"), {
            "train": train_images, "validation": shard_fixtures.random_images(2, SIZE, 3),
            "test": shard_fixtures.random_images(2, SIZE, 4)}, SIZE, image_format="png")


def _synthetic_dir(root, benign: int, malignant: int, synthetic: bool = True) -> str:
    out = shard_fixtures.write_tiny_dataset(
        root, {"train": _constant(benign, "benign") + _constant(malignant, "malignant")},
        SIZE, image_format="png")
    manifest_path = pathlib.Path(out) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["synthetic"] = synthetic
    manifest_path.write_text(json.dumps(manifest))
    return out


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return _synthetic_dir(tmp_path_factory.mktemp("synthetic"), benign=4, malignant=4)


def test_added_counts_keep_the_class_ratio():
    assert synthetic_mix.added_counts({"benign": 6, "malignant": 2}, 0.5) == {
        "benign": 3, "malignant": 1}
    assert synthetic_mix.added_counts({"benign": 558, "malignant": 178}, 0.25) == {
        "benign": 140, "malignant": 44}
    assert synthetic_mix.added_counts({"benign": 6, "malignant": 2}, 0.0) == {
        "benign": 0, "malignant": 0}
    with pytest.raises(ValueError, match="-0.5"):
        synthetic_mix.added_counts({"benign": 6}, -0.5)
    with pytest.raises(ValueError, match="nan"):
        synthetic_mix.added_counts({"benign": 6}, float("nan"))


def test_the_training_stream_holds_the_real_and_the_added_images(real_dir, synthetic_dir):
    mix = synthetic_mix.plan(synthetic_dir, {"benign": 6, "malignant": 2}, 0.5, SIZE)
    assert mix.counts == {"benign": 3, "malignant": 1} and mix.total == 4
    ds = input_pipeline.make_dataset(real_dir, "train", image_size=SIZE, batch_size=64,
                                     training=True, synthetic=mix, as_uint8=True)
    images, labels = next(iter(ds))
    images, labels = images.numpy(), labels.numpy()
    generated = (images == SYNTHETIC_VALUE).all(axis=(1, 2, 3))
    assert len(labels) == 12 and generated.sum() == 4
    assert sorted(labels[generated].tolist()) == [0.0, 0.0, 0.0, 1.0]
    assert sorted(labels[~generated].tolist()) == [0.0] * 6 + [1.0] * 2


def test_validation_never_takes_generated_images(real_dir, synthetic_dir):
    mix = synthetic_mix.plan(synthetic_dir, {"benign": 6, "malignant": 2}, 0.5, SIZE)
    with pytest.raises(ValueError, match="training split only"):
        input_pipeline.make_dataset(real_dir, "validation", image_size=SIZE, batch_size=4,
                                    training=False, synthetic=mix)


def test_fraction_zero_adds_nothing(synthetic_dir):
    assert synthetic_mix.plan(synthetic_dir, {"benign": 6, "malignant": 2}, 0.0, SIZE) is None


def test_too_few_generated_images_names_the_shortfall_and_the_fix(synthetic_dir):
    with pytest.raises(ValueError, match=r"benign: need 12, has 4.*--num=12"):
        synthetic_mix.plan(synthetic_dir, {"benign": 6, "malignant": 2}, 2.0, SIZE)


def test_a_real_dataset_is_refused_as_synthetic_data(real_dir):
    with pytest.raises(ValueError, match="not a generated dataset"):
        synthetic_mix.plan(real_dir, {"benign": 6, "malignant": 2}, 0.5, SIZE)


def test_a_missing_folder_names_the_gan_sampler_that_writes_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no generated dataset.*trainer\.gan\.sample"):
        synthetic_mix.plan(str(tmp_path / "absent"), {"benign": 6, "malignant": 2}, 0.5, SIZE)


def test_another_image_size_is_refused_with_both_sizes(synthetic_dir):
    with pytest.raises(ValueError, match=r"size\(s\) \['16'\].*32px"):
        synthetic_mix.plan(synthetic_dir, {"benign": 6, "malignant": 2}, 0.5, 32)


def test_one_training_epoch_counts_the_added_images(real_dir, synthetic_dir, tmp_path):
    config = train.TrainConfig(data_dir=real_dir, workdir=str(tmp_path / "run"), image_size=SIZE,
                               batch_size=4, epochs=1, seed=0, mixed_precision="off",
                               verbose=0, synthetic_data=synthetic_dir,
                               synthetic_fraction=0.5)
    result = train.train_cnn(config)
    assert result.history[0]["epoch"] == 1
    _, _, steps, n_train = train._datasets(config, _OneReplica())
    assert (n_train, steps) == (12, 3)


class _OneReplica:
    num_replicas_in_sync = 1


@pytest.mark.parametrize("argv, message", [
    (["--synthetic_fraction=0.5"], "needs --synthetic_data"),
    (["--synthetic_data=s", "--task=diagnosis"], "binary only"),
    (["--synthetic_data=s", "--use_metadata"], "binary only"),
    (["--synthetic_data=s", "--synthetic_fraction=11"], "11"),
])
def test_impossible_synthetic_flags_fail_at_parse(argv, message):
    try:
        with pytest.raises(flags.IllegalFlagValueError, match=message):
            flags.FLAGS(["trainer.cnn", "--data_dir=d", "--workdir=w", *argv])
    finally:
        flags.FLAGS.unparse_flags()


def test_only_the_rare_class_can_be_added(real_dir, synthetic_dir):
    """--synthetic_classes=malignant: generated malignant images only, and a benign-free
    sample folder is then enough (no benign shortfall reported)."""
    assert synthetic_mix.added_counts({"benign": 6, "malignant": 2}, 2.0, ["malignant"]) == {
        "benign": 0, "malignant": 4}
    mix = synthetic_mix.plan(synthetic_dir, {"benign": 6, "malignant": 2}, 1.0, SIZE,
                             classes=["malignant"])
    assert mix.counts == {"benign": 0, "malignant": 2} and mix.total == 2
    ds = input_pipeline.make_dataset(real_dir, "train", image_size=SIZE, batch_size=64,
                                     training=True, synthetic=mix, as_uint8=True)
    images, labels = (t.numpy() for t in next(iter(ds)))
    generated = (images == SYNTHETIC_VALUE).all(axis=(1, 2, 3))
    assert labels[generated].tolist() == [1.0, 1.0] and len(labels) == 10
    with pytest.raises(ValueError, match="each must be one of"):
        synthetic_mix.added_counts({"benign": 6}, 1.0, ["melanoma"])
