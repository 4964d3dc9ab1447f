"""Growing a deep generator from a smaller run (--init_generator_from, trainer.gan.grow): which
layers are copied, which are new, what is refused, and a one-step grown run with its record."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests import shard_fixtures
from trainer.gan import grow
from trainer.gan import models as gan_models
from trainer.gan import sampling as gan_sampling
from trainer.gan import training as gan_training

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

REPO = pathlib.Path(__file__).resolve().parents[1]
LATENT, WIDTH = 8, 4


def _generator(size):
    return gan_models.build_deep_generator(LATENT, size, conditional=True, width=WIDTH)


def _arch(size, **overrides):
    return {"latent_dim": LATENT, "image_size": size, "conditional": True, "generator": "deep",
            "width": WIDTH, "ema": True, **overrides}


def _weights(model):
    return {layer.name: layer.get_weights() for layer in model.layers if layer.weights}


# --- the weight transfer -------------------------------------------------------------------

@pytest.mark.parametrize("small,large,new,differs", [
    # 8 -> 16: to_rgb reads 4w channels at 8 px, 2w at 16 px: other shapes, left fresh.
    (8, 16, ["conv_16x16", "bn_16x16"], ["to_rgb"]),
    # 32 -> 64 (as 64 -> 128): the new block is w -> w and to_rgb keeps its shape.
    (32, 64, ["conv_64x64", "bn_64x64"], []),
    (8, 32, ["conv_16x16", "bn_16x16", "conv_32x32", "bn_32x32"], ["to_rgb"])])
def test_shared_layers_are_copied_and_new_blocks_keep_their_initial_weights(small, large, new,
                                                                            differs):
    source, target = _generator(small), _generator(large)
    before = _weights(target)
    record = grow.transfer_weights(source, target)
    assert record["new"] == new and record["shape_differs"] == differs
    sizes = [4 * 2 ** i for i in range(1, int(np.log2(small // 4)) + 1)]  # the source's blocks
    shared = ["label_embedding", "dense_4x4", "bn_4x4"] + [
        f"{kind}_{s}x{s}" for s in sizes for kind in ("conv", "bn")]
    assert record["copied"] == shared + ([] if differs else ["to_rgb"])
    src, after = _weights(source), _weights(target)
    for name in record["copied"]:
        for a, b in zip(src[name], after[name]):
            np.testing.assert_array_equal(a, b)
    for name in new + differs:  # freshly initialised: untouched by the transfer
        for a, b in zip(before[name], after[name]):
            np.testing.assert_array_equal(a, b)
    # The source's trained BN statistics come along, not a fresh BN's zeros and ones.
    source.get_layer("bn_4x4").moving_mean.assign(np.full(16 * 8 * WIDTH, 0.5, np.float32))
    grow.transfer_weights(source, target)
    np.testing.assert_array_equal(target.get_layer("bn_4x4").moving_mean.numpy(), 0.5)
    images = target([tf.random.normal((2, LATENT)), tf.constant([[0], [1]])], training=False)
    assert images.shape == (2, large, large, 3)


def test_check_compatible_counts_the_doublings():
    assert grow.check_compatible(_arch(8), _arch(16)) == 1
    assert grow.check_compatible(_arch(64), _arch(256)) == 2
    assert grow.check_compatible(_arch(8, ema=False), _arch(16)) == 1  # EMA or not: either G


@pytest.mark.parametrize("source,target,names", [
    (_arch(8, latent_dim=16), _arch(16), ["latent_dim (source 16, new run 8)"]),
    (_arch(8, conditional=False), _arch(16), ["conditional (source False, new run True)"]),
    (_arch(8, width=8), _arch(16), ["width (source 8, new run 4)"]),
    (_arch(8, classes=["nevus", "melanoma", "other"]), _arch(16),
     ["classes (source ['nevus', 'melanoma', 'other'], new run None)"]),
    (_arch(32), _arch(16), ["image_size 32", "new run's 16", "power of 2"]),
    (_arch(16), _arch(16), ["image_size 16", "new run's 16"]),
    ({"latent_dim": LATENT, "image_size": 8, "conditional": True}, _arch(16),
     ["source's 'study'", "--gan_architecture=deep"]),
    (_arch(8), {"latent_dim": LATENT, "image_size": 16, "conditional": True},
     ["new run's 'study'"])])
def test_incompatible_sources_are_refused_naming_the_values(source, target, names):
    with pytest.raises(ValueError) as error:
        grow.check_compatible(source, target)
    for name in names:
        assert name in str(error.value)


# --- a grown run ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    images = shard_fixtures.random_images(8, 24, seed=3)
    return shard_fixtures.write_tiny_dataset(tmp_path_factory.mktemp("grow-data"),
                                             {"train": images}, [8, 16])


def _config(data_dir, workdir, size, **overrides):
    values = dict(data_dir=data_dir, workdir=str(workdir), image_size=size, batch_size=4,
                  epochs=1, steps_per_epoch=1, mixed_precision="off", grid_images=4,
                  checkpoint_every=0, collapse_patience=0, seed=5, conditional=True,
                  latent_dim=LATENT, architecture="deep", width=WIDTH, spectral_norm=True,
                  gan_loss="hinge", ema_decay=0.9, label_noise=0.0, label_flip=0.0)
    values.update(overrides)
    return gan_training.GanConfig(**values)


@pytest.fixture(scope="module")
def small_run(data_dir, tmp_path_factory):
    """A one-step 8 px run: its EMA generator differs from its G."""
    workdir = tmp_path_factory.mktemp("small")
    assert gan_training.train_gan(_config(data_dir, workdir, 8))["steps"] == 1
    return workdir


def test_a_fresh_runs_generator_and_ema_start_from_the_sources_ema(data_dir, small_run,
                                                                    tmp_path):
    config = _config(data_dir, tmp_path, 16, init_generator_from=str(small_run))
    gan = gan_training.build_gan(config, "float32")
    record = gan_training.init_generator(gan, config,
                                         gan_training.init_generator_source(config))
    source, _ = gan_sampling.load_generator(str(small_run))  # the EMA weights
    own = gan_models.build_generator_for(_arch(8))
    prefix = tf.train.latest_checkpoint(str(small_run / "checkpoints"))
    tf.train.Checkpoint(generator=own).restore(prefix).expect_partial()
    assert not np.array_equal(own.get_layer("dense_4x4").get_weights()[0],
                              source.get_layer("dense_4x4").get_weights()[0])
    src, live, ema = (_weights(m) for m in (source, gan.generator, gan.ema_generator))
    for name in record["copied"]:
        for a, b, c in zip(src[name], live[name], ema[name]):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(a, c)
    for a, b in zip(live["conv_16x16"], ema["conv_16x16"]):  # EMA = G, new block included
        np.testing.assert_array_equal(a, b)
    assert record["weights"] == "ema_generator" and record["checkpoint"] == prefix
    assert record["source_step"] == 1 and record["source_train_cpu_s"] > 0
    saved = json.loads((tmp_path / "checkpoints" / "init_generator.json").read_text())
    assert saved == json.loads(json.dumps(record))


def test_one_grown_step_records_the_copied_layers_and_a_resume_ignores_the_flag(
        data_dir, small_run, tmp_path):
    run = tmp_path / "grown"
    summary = gan_training.train_gan(_config(data_dir, run, 16,
                                             init_generator_from=str(small_run)))
    assert summary["steps"] == 1
    grown = summary["init_generator"]
    assert grown["copied"] == ["label_embedding", "dense_4x4", "bn_4x4", "conv_8x8", "bn_8x8"]
    assert grown["new"] == ["conv_16x16", "bn_16x16"] and grown["shape_differs"] == ["to_rgb"]
    assert (grown["source_image_size"], grown["image_size"]) == (8, 16)
    record = json.loads((run / "checkpoints" / "init_generator.json").read_text())
    assert record["copied"] == grown["copied"] and record["from"] == str(small_run)
    # gan_config.json is the architecture alone: the resume check and the sampler read it.
    assert json.loads((run / "checkpoints" / "gan_config.json").read_text()) == _arch(16)
    generator, _ = gan_sampling.load_generator(str(run))
    assert generator.output_shape == (None, 16, 16, 3)
    # Resuming: the flag is ignored (even pointing nowhere); the summary keeps the record.
    resumed = gan_training.train_gan(_config(data_dir, run, 16, epochs=2,
                                             init_generator_from=str(tmp_path / "gone")))
    assert resumed["steps"] == 2 and resumed["init_generator"] == record


def test_a_source_that_does_not_fit_is_refused_naming_the_flag(data_dir, small_run, tmp_path):
    config = _config(data_dir, tmp_path, 16, latent_dim=16, init_generator_from=str(small_run))
    with pytest.raises(ValueError, match=r"--init_generator_from=.*latent_dim \(source 8, "
                                         r"new run 16\)"):
        gan_training.init_generator_source(config)
    with pytest.raises(FileNotFoundError, match="gan_config.json"):
        gan_training.init_generator_source(_config(data_dir, tmp_path, 16,
                                                   init_generator_from=str(data_dir)))
    # A source of the same size: nothing to grow; train_gan refuses it before writing.
    same = _config(data_dir, tmp_path / "same", 8, init_generator_from=str(small_run))
    with pytest.raises(ValueError, match="image_size 8 must be smaller than the new run's 8"):
        gan_training.train_gan(same)
    assert not (tmp_path / "same" / "checkpoints").exists()


def test_the_program_refuses_a_source_that_does_not_fit_before_writing(data_dir, small_run,
                                                                       tmp_path):
    workdir = tmp_path / "run"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-m", "trainer.gan", f"--data_dir={data_dir}", f"--workdir={workdir}",
         "--image_size=16", "--conditional", "--gan_architecture=deep", "--gan_width=4",
         "--latent_dim=16", f"--init_generator_from={small_run}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("trainer.gan: ")]
    assert len(line) == 1 and "--init_generator_from=" in line[0]
    assert "latent_dim (source 8, new run 16)" in line[0]
    assert not workdir.exists()


def _config_values(name):
    """(lines, {flag: value}) of configs/<name>."""
    lines = (REPO / "configs" / name).read_text().splitlines()
    return lines, dict(line.lstrip("-").partition("=")[::2] for line in lines
                       if line.startswith("--"))


def test_the_grow_config_is_the_128_recipe_started_from_the_64_run():
    lines, grow_128 = _config_values("gan_grow_128.flags")
    _, recipe_128 = _config_values("gan_recipe_128.flags")
    _, recipe_64 = _config_values("gan_recipe_64.flags")
    assert "python -m trainer.gan --flagfile=configs/gan_grow_128.flags" in lines[1]
    assert lines[2].startswith("# Status:") and "unmeasured" in lines[2]
    assert grow_128.pop("init_generator_from") == recipe_64["workdir"]
    assert grow_128.pop("workdir") not in (recipe_128.pop("workdir"), recipe_64["workdir"])
    assert grow_128 == recipe_128
    for flag in ("latent_dim", "gan_width", "gan_architecture", "conditional"):
        assert grow_128[flag] == recipe_64[flag]
    assert int(grow_128["image_size"]) == 2 * int(recipe_64["image_size"])


def test_the_diagnosis_grow_config_is_the_grow_config_on_diagnosis_classes():
    """configs/gan_diagnosis_grow_128.flags: gan_grow_128 with the diagnosis classes of
    gan_diagnosis_64, grown from that config's run on every real image (its header's command)."""
    lines, grown = _config_values("gan_diagnosis_grow_128.flags")
    _, grow_128 = _config_values("gan_grow_128.flags")
    _, diagnosis_64 = _config_values("gan_diagnosis_64.flags")
    source = grown.pop("init_generator_from")
    assert f"--workdir={source}" in "\n".join(lines[:12])  # the 64 px stage's command
    assert grown.pop("keep_checkpoints") and grown.pop("workdir") != grow_128.pop("workdir")
    for flag in ("gan_classes", "gan_min_class_records"):
        assert grown.pop(flag) == diagnosis_64[flag]
    grow_128.pop("init_generator_from")
    assert grown == grow_128

