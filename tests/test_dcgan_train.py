"""DCGAN training loop on tiny data: grids, checkpoints, resume, guards, sampling."""
import os
import pathlib
import signal

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from isicflow import schema
from tests import shard_fixtures
from trainer.core import input_pipeline, run_folder
from trainer.gan import models as gan_models
from trainer.gan import sampling as gan_sampling
from trainer.gan import training as gan_training

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    images = shard_fixtures.random_images(10, 40, seed=3,
                                          labels=("benign", "malignant", "unknown"))
    return shard_fixtures.write_tiny_dataset(tmp_path_factory.mktemp("gan-data"),
                                             {"train": images[:7], "validation": images[7:]},
                                             SIZE)


def _config(data_dir, workdir, **overrides):
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=SIZE, batch_size=4,
                  epochs=2, steps_per_epoch=2, mixed_precision="off", grid_images=4,
                  checkpoint_every=0, seed=7)
    values.update(overrides)
    return gan_training.GanConfig(**values)


def _fixed_z(workdir):
    prefix = tf.train.latest_checkpoint(str(pathlib.Path(workdir) / "checkpoints"))
    reader = tf.train.load_checkpoint(prefix)
    return reader.get_tensor("fixed_z/.ATTRIBUTES/VARIABLE_VALUE"), prefix


def test_training_writes_grids_scalars_history_and_checkpoint(data_dir, tmp_path):
    summary = gan_training.train_gan(_config(data_dir, tmp_path))
    assert summary["steps"] == 4 and summary["policy"] == "float32"
    for epoch in (1, 2):
        grid = Image.open(tmp_path / "samples" / f"epoch_{epoch:04d}.png")
        assert grid.size == (2 + 2 * (SIZE + 2), 2 + 2 * (SIZE + 2))  # 4 images, 2x2
    history = run_folder.read_history(str(tmp_path / "history.json"))
    assert [h["epoch"] for h in history] == [1, 2]
    assert history[1]["train_cpu_s"] > history[0]["train_cpu_s"]  # the clock resumed
    for record in history:
        for key in ("d_loss", "g_loss", "d_real", "d_fake", "step_time_s", "input_wait_share",
                    "train_wall_s", "train_cpu_s"):
            assert np.isfinite(record[key]), key
    assert 0 < history[0]["train_cpu_s"] < history[1]["train_cpu_s"]  # cumulative
    tags = set()
    for events in (tmp_path / "logs").glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(value.tag for value in event.summary.value)
    assert {"gan/d_loss", "gan/g_loss", "gan/d_real", "gan/d_fake", "fixed_latent_grid",
            "timing/input_wait_share"} <= tags
    assert summary["last_checkpoint"].endswith("ckpt-4")


@pytest.mark.graph  # the trace a real (traced) run writes
def test_profile_steps_write_a_trace_with_step_markers_the_profile_tab_counts(data_dir,
                                                                              tmp_path):
    from trainer.core import profiling

    gan_training.train_gan(_config(data_dir, tmp_path, epochs=2, steps_per_epoch=2,
                                   profile_steps="2,3"))
    assert list((tmp_path / "logs" / "plugins" / "profile").glob("*/*.xplane.pb"))
    [session] = profiling.sessions(str(tmp_path / "logs"))
    assert [(n, s) for n, s, _ in profiling.step_markers(session)] == [("train", 2),
                                                                      ("train", 3)]
    summary = profiling.step_summary(session)
    assert summary["step_names"] == ["train 2", "train 3"]
    assert summary["step_time_ms"] > 0 and 0 < summary["input_share"] < 1, summary


def test_resume_continues_the_step_counter_with_the_same_latent_batch(data_dir, tmp_path):
    first = gan_training.train_gan(_config(data_dir, tmp_path, epochs=1, steps_per_epoch=3,
                                       checkpoint_every=2))
    assert first["steps"] == 3
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("ckpt-*.index"))
    assert names == ["ckpt-2.index", "ckpt-3.index"]  # every 2 steps, and on exit
    z_before, _ = _fixed_z(tmp_path)
    # Another seed would draw another latent batch: the restored one must win.
    second = gan_training.train_gan(_config(data_dir, tmp_path, epochs=2, steps_per_epoch=3,
                                        seed=99, checkpoint_every=2))
    assert second["steps"] == 6 and second["steps_this_run"] == 3
    z_after, prefix = _fixed_z(tmp_path)
    assert prefix.endswith("ckpt-6")
    np.testing.assert_array_equal(z_before, z_after)
    history = run_folder.read_history(str(tmp_path / "history.json"))
    assert [h["epoch"] for h in history] == [1, 2]


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_interrupted_run_saves_on_exit_and_resumes(data_dir, tmp_path, monkeypatch, how):
    real_end_epoch = gan_training._end_epoch

    def interrupt(*args, **kwargs):
        real_end_epoch(*args, **kwargs)
        if how == "sigterm":  # what kill or a preempted VM sends
            os.kill(os.getpid(), signal.SIGTERM)
        raise KeyboardInterrupt

    monkeypatch.setattr(gan_training, "_end_epoch", interrupt)
    with pytest.raises(gan_training.Terminated if how == "sigterm" else KeyboardInterrupt):
        gan_training.train_gan(_config(data_dir, tmp_path, epochs=3))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")
    monkeypatch.setattr(gan_training, "_end_epoch", real_end_epoch)
    assert gan_training.train_gan(_config(data_dir, tmp_path, epochs=3))["steps"] == 6


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(data_dir, tmp_path,
                                                                 monkeypatch):
    real_step = gan_models.DCGAN.train_step

    def poisoned(self, data):
        logs = real_step(self, data)
        logs["step_d_loss"] = logs["step_d_loss"] * float("nan")
        return logs

    monkeypatch.setattr(gan_models.DCGAN, "train_step", poisoned)
    with pytest.raises(FloatingPointError, match="discriminator loss is nan at step 1"):
        gan_training.train_gan(_config(data_dir, tmp_path))
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) is None


def test_resume_with_another_architecture_fails_clearly(data_dir, tmp_path):
    gan_training.train_gan(_config(data_dir, tmp_path, epochs=1, steps_per_epoch=1))
    with pytest.raises(ValueError, match="latent_dim"):
        gan_training.train_gan(_config(data_dir, tmp_path, epochs=1, steps_per_epoch=1,
                                   latent_dim=64))


def test_sampling_png_and_schema_tfrecords_of_a_conditional_run(data_dir, tmp_path):
    run = tmp_path / "run"
    summary = gan_training.train_gan(_config(data_dir, run, conditional=True, epochs=1,
                                         steps_per_epoch=0, splits=("train", "validation")))
    # Conditional: benign/malignant only, both splits: 5 + 2 labelled images -> 1 batch of 4.
    assert summary["steps_per_epoch"] == 1
    pngs = tmp_path / "png"
    assert gan_sampling.sample_to_dir(str(run), 3, str(pngs), classes=("malignant",)) == 3
    files = sorted(pngs.glob("dcgan_malignant_*.png"))
    assert len(files) == 3 and Image.open(files[0]).size == (SIZE, SIZE)

    records = tmp_path / "records"
    assert gan_sampling.sample_to_dir(str(run), 3, str(records), image_format="tfrecord") == 6
    batches = list(input_pipeline.make_dataset(str(records), "train", image_size=SIZE,
                                               batch_size=10, training=False))
    assert batches[0][0].shape == (6, SIZE, SIZE, 3)
    assert sorted(batches[0][1].numpy().tolist()) == [0, 0, 0, 1, 1, 1]
    shard = next(records.glob(f"{SIZE}/train/*.tfrecord"))
    first = schema.decode_example_py(next(iter(tf.data.TFRecordDataset(str(shard)))).numpy())
    assert first["image_type"] == "synthetic" and first["source_collection"] == "isicflow-dcgan"
    with pytest.raises(ValueError, match="unknown class"):
        gan_sampling.sample_to_dir(str(run), 1, str(tmp_path / "x"), classes=("nevus",))


def test_sampling_from_a_folder_without_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        gan_sampling.sample_to_dir(str(tmp_path), 1, str(tmp_path / "out"))


@pytest.mark.parametrize("config", ["dcgan.flags", "dcgan_tiny.flags"])
def test_config_files_name_only_defined_flags(config):
    from trainer.gan import cli

    cli.define_flags()  # the training program's own flags; trainer.core.flags' on import
    defined = set(flags.FLAGS)
    lines = (REPO / "configs" / config).read_text().splitlines()
    names = [line.split("=")[0].lstrip("-") for line in lines if line.startswith("--")]
    assert names, f"{config} sets no flags"
    unknown = [n for n in names if n not in defined and n.removeprefix("no") not in defined]
    assert not unknown, f"{config} names undefined flags {unknown}"
    assert f"python -m trainer.gan --flagfile=configs/{config}" in lines[1]


def test_evaluation_config_parses_with_the_evaluation_programs_flags():
    from trainer.gan import evaluate

    own = flags.FlagValues()  # the program's flags alone, apart from the trainers' shared ones
    evaluate.define_flags(own)
    own(["trainer.gan.evaluate", f"--flagfile={REPO / 'configs' / 'gan_eval.flags'}"])
    assert (own.model, own.data_dir, own.output) == ("out/runs/dcgan", "out/uda1",
                                                     "out/runs/dcgan/eval")
    assert own.heldout_splits == ["validation", "test"] and own.seed == 0
    text = (REPO / "configs" / "gan_eval.flags").read_text()
    assert "python -m trainer.gan.evaluate --flagfile=configs/gan_eval.flags" in text


def test_the_study_defaults_the_program_sets_are_gan_configs():
    from trainer.gan import cli

    config = gan_training.GanConfig(data_dir="d", workdir="w")
    assert cli.STUDY_DEFAULTS == {name: getattr(config, name) for name in cli.STUDY_DEFAULTS}


def test_a_used_up_time_budget_stops_after_the_epoch_and_saves(data_dir, tmp_path):
    summary = gan_training.train_gan(_config(data_dir, tmp_path, epochs=3, steps_per_epoch=2,
                                             max_train_minutes=1e-6))
    assert summary["stopped_by_time_budget_after_epoch"] == 1 and summary["steps"] == 2
    assert summary["last_checkpoint"].endswith("ckpt-2")
    assert [h["epoch"] for h in run_folder.read_history(str(tmp_path / "history.json"))] == [1]
