"""trainer.core.runtime and trainer.core.flags: precision rule, strategy, timing, NaN stop, flags."""
import dataclasses
import itertools
import math

import keras
import pytest
from absl import flags

from trainer.core import flags as common_flags
from trainer.core import runtime

FLAGS = flags.FLAGS


@pytest.fixture
def restore_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("mode, gpus, expected", [
    ("auto", [], "float32"),
    ("auto", [(8, 0)], "mixed_float16"),
    ("auto", [(8, 0), (6, 1)], "float32"),   # one old GPU would run float16 slowly
    ("auto", [(6, 1)], "float32"),
    ("off", [(9, 0)], "float32"),
    ("mixed_bfloat16", [], "mixed_bfloat16"),
    ("mixed_float16", [], "mixed_float16"),
])
def test_precision_rule(mode, gpus, expected):
    assert runtime.resolve_precision_policy(mode, gpus) == expected


def test_configure_mixed_precision_sets_the_keras_policy(restore_policy):
    assert runtime.configure_mixed_precision("mixed_bfloat16") == "mixed_bfloat16"
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    assert runtime.configure_mixed_precision("off") == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"
    with pytest.raises(ValueError, match="'fp8'"):
        runtime.configure_mixed_precision("fp8")


def test_single_device_gets_the_default_strategy():
    import tensorflow as tf
    strategy = runtime.make_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert strategy is tf.distribute.get_strategy()


@pytest.mark.parametrize("text, expected", [("", None), ("  ", None), ("3,5", (3, 5)),
                                            ("4,4", (4, 4))])
def test_profile_steps_parse(text, expected):
    assert runtime.parse_profile_steps(text) == expected


@pytest.mark.parametrize("text", ["5", "5,3", "0,2", "a,b", "1,2,3"])
def test_profile_steps_reject_with_the_value(text):
    with pytest.raises(ValueError, match=repr(text).replace("(", r"\(")):
        runtime.parse_profile_steps(text)


def test_raise_if_not_finite():
    runtime.raise_if_not_finite(0.5, "loss", 3)
    for bad in (math.nan, math.inf):
        with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at step 7"):
            runtime.raise_if_not_finite(bad, "loss", 7)


def test_step_time_meter_with_a_fake_clock():
    ticks = itertools.count()
    now = {"t": 0.0}
    meter = runtime.StepTimeMeter(warmup_steps=1, clock=lambda: now["t"])

    class SlowIterator:
        def __init__(self, wait):
            self.wait = wait

        def __next__(self):
            now["t"] += self.wait
            return next(ticks)

    for wait, compute in [(5.0, 1.0), (0.5, 1.5), (0.5, 1.5)]:  # first step is warm-up
        meter.begin_step()
        meter.next(SlowIterator(wait))
        now["t"] += compute
        meter.end_step(images=32)
    summary = meter.summary()
    assert summary["steps"] == 2
    assert summary["step_time_s"] == pytest.approx(2.0)
    assert summary["input_wait_share"] == pytest.approx(0.25)
    assert summary["images_per_s"] == pytest.approx(16.0)

    with pytest.raises(StopIteration):  # end of data: no step recorded
        meter.next(iter([]))
    assert meter.steps == 3
    meter.reset()
    assert meter.steps == 0 and math.isnan(meter.summary()["step_time_s"])


@pytest.fixture
def parse_flags():
    def parse(*argv):
        return FLAGS(["prog", "--data_dir=d", "--workdir=w", *argv])
    yield parse
    FLAGS.unparse_flags()


def test_common_flags_parse_and_report(parse_flags):
    parse_flags("--batch_size=8", "--profile_steps=2,4", "--mixed_precision=mixed_bfloat16")
    values = dataclasses.asdict(common_flags.RunConfig.from_flags())
    assert values["batch_size"] == 8 and values["profile_steps"] == "2,4"
    assert set(values) == {f.name for f in FLAGS.get_flags_for_module(common_flags)}


@pytest.mark.parametrize("arg, shown", [
    ("--batch_size=0", "--batch_size=0"),
    ("--image_size=-4", "--image_size=-4"),
    ("--epochs=0", "--epochs=0"),
    ("--learning_rate=-0.1", "--learning_rate=-0.1"),
    ("--profile_steps=9,2", "--profile_steps=9,2"),
    ("--mixed_precision=fp16", "fp16"),
    ("--steps_per_epoch=-1", "--steps_per_epoch=-1"),
])
def test_impossible_values_fail_at_parse_with_the_value(parse_flags, arg, shown):
    with pytest.raises(flags.IllegalFlagValueError) as error:
        parse_flags(arg)
    assert shown in str(error.value)


def test_unknown_flag_fails_with_its_name(parse_flags):
    with pytest.raises(flags.UnrecognizedFlagError, match="batchsize"):
        parse_flags("--batchsize=3")


def test_step_marker_is_a_root_train_step_the_profiler_records(tmp_path):
    """Outside a trace the marker costs nothing and is still a context manager; inside one it
    becomes a root step event ("train", step_num, _r) that trainer.core.profiling reads."""
    import tensorflow as tf

    from trainer.core import profiling

    with runtime.step_marker("train", 1):
        pass
    tf.profiler.experimental.start(str(tmp_path))
    try:
        for step in (7, 8):
            with runtime.step_marker("train", step):
                tf.constant(1.0) + 1.0
    finally:
        tf.profiler.experimental.stop()
    [session] = profiling.sessions(str(tmp_path))
    assert [(n, s) for n, s, _ in profiling.step_markers(session)] == [("train", 7), ("train", 8)]


def test_tensorboard_can_start():
    """`make tensorboard`: TensorBoard 2.17 imports pkg_resources, which setuptools 81 dropped;
    setup.py pins setuptools below 81 so the Profile tab stays reachable."""
    import importlib.util
    import subprocess
    import sys
    import os

    assert importlib.util.find_spec("pkg_resources") is not None
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    result = subprocess.run([tensorboard, "--version"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().startswith("2."), result.stderr[-1000:]


def test_training_clock_continues_across_a_resume():
    wall, cpu = iter([10.0, 13.0, 20.0, 21.0]), iter([100.0, 105.0, 200.0, 202.0])
    clock = runtime.TrainingClock(wall_clock=lambda: next(wall), cpu_clock=lambda: next(cpu))
    first = clock.totals()
    assert first == {"train_wall_s": 3.0, "train_cpu_s": 5.0}
    resumed = runtime.TrainingClock.resume(first, wall_clock=lambda: next(wall),
                                           cpu_clock=lambda: next(cpu))
    assert resumed.totals() == {"train_wall_s": 4.0, "train_cpu_s": 7.0}
    assert runtime.TrainingClock.resume(None).totals()["train_cpu_s"] >= 0.0
    # a history written before the clock existed: the totals are unknown, not restarted
    assert runtime.TrainingClock.resume({"epoch": 3}).totals() == {
        "train_wall_s": None, "train_cpu_s": None}
