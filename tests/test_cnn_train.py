"""The CNN trainer: flags and configs, training steps, overfitting, resume, precision, devices,
profiler trace, NaN stop, and the command line end to end on real images."""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from absl import flags

from tests import shard_fixtures
from trainer.cnn import cli, train

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

cli.define_flags()  # the CNN trainer's flags, as its program defines them

FLAGS = flags.FLAGS
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO_ROOT / "configs").glob("cnn_*.flags"))
SIZE = 32


@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory, sample_dir):
    """16 real train images (8 benign, 8 malignant), 4 validation, 4 test, at 32 px."""
    return shard_fixtures.write_sample_dataset(
        tmp_path_factory.mktemp("real"), sample_dir, SIZE,
        {"train": 16, "validation": 4, "test": 4})


def _config(data_dir, workdir, **overrides) -> train.TrainConfig:
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=SIZE, batch_size=8,
                  epochs=1, steps_per_epoch=1, seed=0, mixed_precision="off", verbose=0)
    values.update(overrides)
    return train.TrainConfig(**values)


@pytest.fixture(autouse=True)
def restore_process_globals():
    """The dtype policy and op determinism are process-wide; no test may leak them."""
    from tensorflow.python.framework import config as tf_config

    yield
    keras.mixed_precision.set_global_policy("float32")
    tf_config.disable_op_determinism()


@pytest.fixture
def parse_flags(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # nested --flagfile paths are relative to the repo root

    def parse(*argv):
        return FLAGS(["trainer.cnn", *argv])
    yield parse
    FLAGS.unparse_flags()


# ---------------------------------------------------------------- flags and configs

def test_the_configs_cover_the_five_study_variants_compact_and_tiny():
    names = {p.stem for p in CONFIGS}
    assert {"cnn_base", "cnn_dropout", "cnn_l2", "cnn_l2_dropout", "cnn_l2_dropout_aug",
            "cnn_compact", "cnn_tiny"} <= names


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem != "cnn_common"],
                         ids=lambda p: p.stem)
def test_each_config_parses_and_documents_its_launch_command(parse_flags, path):
    assert f"python -m trainer.cnn --flagfile=configs/{path.name}" in path.read_text()
    parse_flags(f"--flagfile=configs/{path.name}")
    config = train.TrainConfig.from_flags()
    assert config.workdir == f"out/runs/{path.stem}" and config.data_dir


def test_nested_flagfile_sets_the_variant(parse_flags):
    parse_flags("--flagfile=configs/cnn_l2_dropout_aug.flags")
    config = train.TrainConfig.from_flags()
    assert (config.model, config.dropout, config.l2, config.augment) == ("study", 0.2, 0.001,
                                                                         True)
    assert (config.image_size, config.batch_size, config.data_dir) == (256, 32, "out/uda1")
    FLAGS.unparse_flags()
    parse_flags("--flagfile=configs/cnn_base.flags", "--epochs=3")  # later flags win
    assert train.TrainConfig.from_flags().epochs == 3 and train.TrainConfig.from_flags().dropout == 0.0


@pytest.mark.parametrize("arg, shown", [
    ("--dropout=1.5", "--dropout=1.5"),
    ("--l2=-1", "-1"),
    ("--architecture=resnet", "resnet"),
    ("--monitor=val_loss", "val_loss"),
    ("--class_balance=oversample", "oversample"),
    ("--batch_size=0", "--batch_size=0"),
])
def test_impossible_cnn_flags_fail_at_parse_with_the_value(parse_flags, arg, shown):
    with pytest.raises(flags.IllegalFlagValueError) as error:
        parse_flags("--data_dir=d", "--workdir=w", arg)
    assert shown in str(error.value)


def test_contradictory_flags_fail_at_parse(parse_flags):
    with pytest.raises(flags.IllegalFlagValueError, match="jit_compile=True, deterministic=True"):
        parse_flags("--data_dir=d", "--workdir=w", "--jit_compile", "--deterministic")


def test_unknown_flag_fails(parse_flags):
    with pytest.raises(flags.UnrecognizedFlagError, match="drop_out"):
        parse_flags("--data_dir=d", "--workdir=w", "--drop_out=0.2")


def test_class_weights_balance_the_loss():
    weights = train.class_weights_from_counts({"benign": 90, "malignant": 10, "unknown": 5})
    assert weights == pytest.approx({0: 100 / 180, 1: 100 / 20})
    assert 90 * weights[0] == pytest.approx(10 * weights[1])
    with pytest.raises(ValueError, match="'malignant': 0"):
        train.class_weights_from_counts({"benign": 4, "malignant": 0})


# ---------------------------------------------------------------- training

def _event_tags(log_dir: pathlib.Path) -> set:
    import tensorflow as tf

    tags = set()
    for events in log_dir.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_one_training_step_writes_the_run_folder(real_dataset, tmp_path):
    result = train.train_cnn(_config(real_dataset, tmp_path, class_balance="class_weights"))
    assert len(result.history) == 1
    epoch = result.history[0]
    assert np.isfinite(epoch["loss"]) and np.isfinite(epoch["val_loss"])
    assert 0 <= epoch["input_wait_share"] <= 1 and epoch["step_time_s"] > 0
    assert epoch["learning_rate"] == pytest.approx(1e-3)
    for name in ("model.keras", "history.json", "train_summary.json",
                 "checkpoints/best.weights.h5", "checkpoints/backup"):
        assert (tmp_path / name).exists(), name
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["epoch"] == [1] and history["val_accuracy"] == [epoch["val_accuracy"]]
    tags = _event_tags(tmp_path / "logs")
    assert {"epoch_loss", "epoch_learning_rate", "epoch_input_wait_share",
            "validation_pr_curve/pr_curves", "train_samples"} <= tags
    reloaded = keras.models.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(0).random((2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(reloaded(x), result.model(x), atol=1e-6)


def test_the_compact_cnn_overfits_a_tiny_real_batch(real_dataset, tmp_path):
    """16 real images, the same batch every step: the training loss must collapse."""
    result = train.train_cnn(_config(real_dataset, tmp_path, batch_size=16,
                                 epochs=8, learning_rate=3e-4, model="compact",
                                 deterministic=True))
    losses = [e["loss"] for e in result.history]
    assert losses[-1] < 0.3 * losses[0], losses
    assert result.history[-1]["accuracy"] == 1.0


class _Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("simulated kill during epoch 2")


class _CountEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch + 1)


def test_an_interrupted_run_resumes_and_does_three_epochs_in_all(real_dataset, tmp_path):
    config = _config(real_dataset, tmp_path, epochs=3)
    with pytest.raises(KeyboardInterrupt):
        train.train_cnn(config, extra_callbacks=[_Interrupt()])
    assert json.loads((tmp_path / "history.json").read_text())["epoch"] == [1]
    counter = _CountEpochs()
    result = train.train_cnn(config, extra_callbacks=[counter])
    assert counter.epochs == [2, 3]
    assert [e["epoch"] for e in result.history] == [1, 2, 3]
    assert result.summary["epochs_done"] == 3
    again = _CountEpochs()  # a finished run started again trains nothing more
    train.train_cnn(config, extra_callbacks=[again])
    assert again.epochs == []


def test_mixed_bfloat16_trains_with_float32_output(real_dataset, tmp_path):
    result = train.train_cnn(_config(real_dataset, tmp_path, mixed_precision="mixed_bfloat16"))
    assert result.summary["policy"] == "mixed_bfloat16"
    assert result.model.get_layer("conv1").compute_dtype == "bfloat16"
    out = result.model(np.zeros((1, SIZE, SIZE, 3), np.float32))
    assert out.dtype.name == "float32" and np.isfinite(result.history[0]["loss"])


@pytest.mark.graph  # the loss-scaled step (a stateful tf.cond) as a GPU run traces it
def test_mixed_float16_scales_the_loss(real_dataset, tmp_path):
    result = train.train_cnn(_config(real_dataset, tmp_path, mixed_precision="mixed_float16"))
    assert isinstance(result.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert result.model.get_layer("conv1").compute_dtype == "float16"
    assert result.model.get_layer("probability").compute_dtype == "float32"
    assert np.isfinite(result.history[0]["loss"])


@pytest.mark.graph  # the trace a real (traced) run writes
def test_profile_steps_write_a_trace_the_profile_tab_reads_with_step_times(real_dataset,
                                                                           tmp_path):
    """#14: without root step markers XProf's Overview and Input Pipeline Analyzer showed
    0.0 ms and 'No step time measured'. Read the trace with the converter the plugin serves
    from, over an epoch boundary (steps 2-3 of 2 epochs of 2 steps)."""
    from trainer.core import profiling

    result = train.train_cnn(_config(real_dataset, tmp_path, steps_per_epoch=2, epochs=2,
                                     profile_steps="2,3"))
    traces = list((tmp_path / "logs").rglob("*.xplane.pb"))
    assert traces and all(t.stat().st_size > 0 for t in traces)
    [session] = profiling.sessions(str(tmp_path / "logs"))
    markers = profiling.step_markers(session)
    assert [(name, step) for name, step, _ in markers] == [("train", 2), ("train", 3)]
    assert all(ms > 0 for _, _, ms in markers)
    for tool in ("overview_page", "input_pipeline_analyzer"):
        summary = profiling.step_summary(session, tool)
        assert summary["step_names"] == ["train 2", "train 3"], tool
        assert summary["step_time_ms"] > 0, summary
        assert 0 < summary["input_share"] < 1, summary
        assert "No step time measured" not in summary["input_conclusion"], summary
        assert "input-bound" in summary["input_conclusion"], summary
    # The page's step time is our step: the markers span what StepTimeMeter times.
    ours = 1000 * np.mean([e["step_time_s"] for e in result.history])
    assert summary["step_time_ms"] == pytest.approx(ours, rel=0.5)


def test_a_diverging_run_stops_with_a_clear_error(real_dataset, tmp_path):
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at step"):
        train.train_cnn(_config(real_dataset, tmp_path, learning_rate=1e30, epochs=3,
                            steps_per_epoch=2, batch_size=16))


def test_balanced_sampling_trains(real_dataset, tmp_path):
    result = train.train_cnn(_config(real_dataset, tmp_path, class_balance="sampling",
                                 steps_per_epoch=2))
    assert np.isfinite(result.history[0]["loss"])


_TWO_DEVICES = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from trainer.cnn import train
    result = train.train_cnn(train.TrainConfig(
        data_dir=sys.argv[1], workdir=sys.argv[2], image_size=32, batch_size=8, epochs=1,
        steps_per_epoch=2, mixed_precision="off", verbose=0))
    print(json.dumps({"replicas": result.summary["replicas"],
                      "loss": result.history[0]["loss"]}))
""")


def test_two_logical_devices_train_with_a_mirrored_strategy(real_dataset, tmp_path):
    done = subprocess.run([sys.executable, "-c", _TWO_DEVICES, real_dataset, str(tmp_path)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2 and np.isfinite(result["loss"])


def test_command_line_trains_evaluates_and_exports(real_dataset, tmp_path):
    workdir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "trainer.cnn", f"--data_dir={real_dataset}",
         f"--workdir={workdir}", "--image_size=32", "--architecture=compact", "--epochs=1",
         "--steps_per_epoch=1",
         "--batch_size=8", "--bootstrap=50", "--keras_verbose=2", "--mixed_precision=off"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "input wait" in done.stdout and "training summary" in done.stdout
    history = json.loads((workdir / "history.json").read_text())
    assert history["epoch"] == [1]
    assert (workdir / "report.json").exists() and (workdir / "export").is_dir()

    bad = subprocess.run([sys.executable, "-m", "trainer.cnn", f"--data_dir={real_dataset}",
                          f"--workdir={workdir}", "--dropout=2"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert bad.returncode != 0 and "--dropout=2" in bad.stderr


@pytest.mark.graph  # XLA compiles only a traced step
def test_jit_compile_trains(real_dataset, tmp_path):
    result = train.train_cnn(_config(real_dataset, tmp_path, jit_compile=True, steps_per_epoch=2))
    assert np.isfinite(result.history[0]["loss"]) and result.model.jit_compile
    with pytest.raises(ValueError, match="jit_compile=True with deterministic=True"):
        train.train_cnn(_config(real_dataset, tmp_path, jit_compile=True, deterministic=True))


def test_early_stopping_patience_continues_after_a_resume(tmp_path):
    """The interrupted run had val_auc 0.5, 0.7, 0.6, 0.65: best 0.7 two epochs ago. With
    patience 3, one more epoch without improvement stops training, as it would have without
    the interruption (plain EarlyStopping would start counting from zero again)."""
    history = train.HistoryFile(str(tmp_path / "history.json"))
    history.entries = [{"epoch": i + 1, "val_auc": v} for i, v in enumerate([0.5, 0.7, 0.6, 0.65])]
    stopper = train.ResumableEarlyStopping(history, monitor="val_auc", mode="max", patience=3)

    class _Model:
        stop_training = False

    stopper.set_model(_Model())
    stopper.on_train_begin()
    assert (stopper.best, stopper.best_epoch, stopper.wait) == (0.7, 1, 2)
    stopper.on_epoch_end(4, {"val_auc": 0.69})
    assert stopper.model.stop_training and stopper.stopped_epoch == 4
    fresh = train.ResumableEarlyStopping(train.HistoryFile(str(tmp_path / "none.json")),
                                         monitor="val_auc", mode="max", patience=3)
    fresh.set_model(_Model())
    fresh.on_train_begin()  # no history: the plain behaviour
    assert (fresh.best, fresh.wait) == (None, 0)
