"""End to end on real ISIC images: train the DCGAN from its tiny config (the programs), sample,
evaluate, and the programs' refusals of inputs that do not fit a trained run."""
import json
import math
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from tests import shard_fixtures
from trainer.core import run_folder
from trainer.gan import evaluation as gan_eval
from trainer.gan import features as gan_features

REPO = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32


def _cli(*args, returncode=0):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == returncode, result.stderr[-3000:]
    return result


def _refused(prog, *args, names):
    """Exit 2 with one line from the program naming `names`, and no traceback."""
    result = _cli(prog, *args, returncode=2)
    assert "Traceback" not in result.stderr
    mine = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: ")]
    assert len(mine) == 1 and all(name in mine[0] for name in names), result.stderr[-2000:]
    return mine[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, sample_dir):
    root = tmp_path_factory.mktemp("gan-e2e")
    data = shard_fixtures.write_sample_dataset(root / "data", sample_dir, SIZE)
    run = root / "run"
    _cli("trainer.gan", "--flagfile=configs/dcgan_tiny.flags", f"--data_dir={data}",
         f"--workdir={run}", f"--image_size={SIZE}", "--batch_size=4")
    return data, run


def _finite(value):
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_cli_train_sample_and_evaluate_on_real_images(trained, tmp_path):
    data, run = trained
    assert (run / "samples" / "epoch_0002.png").exists()
    history = run_folder.read_history(str(run / "history.json"))
    assert history[-1]["step"] == 4  # tiny config: 2 epochs x 2 steps

    synthetic = tmp_path / "synthetic"
    _cli("trainer.gan.sample", f"--model={run}", "--num=5", f"--output={synthetic}")
    assert len(list(synthetic.glob("dcgan_*.png"))) == 5

    out = tmp_path / "eval"
    _cli("trainer.gan.evaluate", "--flagfile=configs/gan_eval.flags", f"--model={run}",
         f"--data_dir={data}", f"--output={out}", "--num_generated=16",
         "--feature_extractor=pixels")
    report = json.loads((out / "gan_eval.json").read_text())
    assert report["feature_extractor"] == "pixels_16x16"
    assert report["counts"] == {"train": 8, "heldout": 8, "generated": 16}
    for value in (report["fid"], report["kid"]["mean"], report["heldout_floor"]["fid"]):
        assert _finite(value)
    # A 4-step GAN is far from real images: its FID is above held-out real images' FID.
    assert report["fid"] > report["heldout_floor"]["fid"]
    low, high = report["c2st"]["ci95"]
    assert 0.0 <= low <= report["c2st"]["accuracy"] <= high <= 1.0
    memo = report["memorization"]
    assert memo["space"].startswith("pixels") and 0.0 <= memo["share_below"] <= 1.0
    assert memo["heldout_median"] > 0
    assert len(report["pca"]["explained_variance"]) == 2
    assert sum(report["pca"]["explained_variance"]) <= 1.0
    for name in ("pca.png", "real_vs_generated.png", "interpolation.png", "closest_pairs.png"):
        assert Image.open(out / name).size[0] > 0, name
    # Interpolation: 3 rows of 8 images.
    assert Image.open(out / "interpolation.png").size == (2 + 8 * (SIZE + 2),
                                                          2 + 3 * (SIZE + 2))
    assert "pixels_16x16" in (out / "gan_eval.md").read_text()
    cues = report["c2st_by_cue"]
    assert set(cues) == set(gan_eval.c2st_cues())
    for cue in cues.values():
        assert 0.0 <= cue["generated"] <= 1.0 and 0.0 <= cue["heldout_floor"] <= 1.0
    assert "| sharpness |" in (out / "gan_eval.md").read_text()


def test_c2st_by_cue_names_the_statistic_that_differs():
    # Real: textured images of varied colour. "Generated": the same, blurred (no fine texture):
    # sharpness separates them (and colour's per-image std). Then brighter copies: colour does,
    # sharpness does not. Held-out real images of the same kind separate on neither.
    rng = np.random.default_rng(0)
    tint = rng.uniform(40, 140, (240, 1, 1, 3))
    real = np.clip(tint + rng.normal(0, 25, (240, 16, 16, 3)), 0, 255)
    blurred = real.copy()
    for axis in (1, 2):
        blurred = (blurred + np.roll(blurred, 1, axis) + np.roll(blurred, -1, axis)) / 3
    real, blurred = real.astype(np.uint8), blurred.astype(np.uint8)
    describe = gan_eval.cue_features
    cues = gan_eval.c2st_by_cue(describe(real[:120]), describe(blurred[120:]),
                                describe(real[120:]), seed=0)
    assert cues["sharpness"]["generated"] > 0.95
    assert cues["colour"]["generated"] > 0.9  # blurring lowers the RGB std
    assert cues["sharpness"]["heldout_floor"] < 0.7
    assert cues["colour"]["heldout_floor"] < 0.7
    shifted = np.clip(real[120:].astype(int) + 50, 0, 255).astype(np.uint8)  # brighter
    cues = gan_eval.c2st_by_cue(describe(real[:120]), describe(shifted), None, seed=0)
    assert cues["colour"]["generated"] > 0.8
    assert cues["sharpness"]["generated"] < 0.7
    assert cues["layout"]["heldout_floor"] is None


def test_default_extractor_is_the_named_random_conv_net_and_cnn_features_work(trained,
                                                                              tmp_path):
    data, run = trained
    report = gan_eval.evaluate(str(run), data, str(tmp_path / "eval"), num_generated=8,
                               memorization_space="features")
    assert report["feature_extractor"].startswith("random_conv_v1")
    assert report["feature_dim"] == 2 * sum(gan_features.RANDOM_CONV_FILTERS)
    assert report["memorization"]["space"] == report["feature_extractor"]
    assert _finite(report["c2st"]["accuracy"])

    inputs = keras.Input((24, 24, 3))
    hidden = keras.layers.Dense(5, name="penultimate")(keras.layers.Flatten()(inputs))
    hidden = keras.layers.Dropout(0.5)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    path = tmp_path / "cnn.keras"
    model.save(path)
    extract, name = gan_features.make_extractor("auto", feature_model=str(path))
    assert name == "cnn_penultimate(cnn.keras:penultimate@24px)"
    features = extract(np.zeros((3, SIZE, SIZE, 3), np.uint8))
    assert features.shape == (3, 5)


def test_inception_never_downloads(tmp_path):
    with pytest.raises(ValueError, match="needs --inception_weights"):
        gan_features.make_extractor("inception")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        gan_features.make_extractor("inception", inception_weights=str(tmp_path / "none.h5"))


def test_curve_scores_every_kept_checkpoint_against_training_time(trained, tmp_path):
    import csv

    _, run = trained
    out = tmp_path / "curve"
    _cli("trainer.gan.curve", f"--model={run}", f"--data_dir={trained[0]}",
         f"--output={out}", "--num_generated=8")
    rows = list(csv.DictReader((out / "curve.csv").open()))
    kept = sorted(int(p.name.split("-")[1].split(".")[0])
                  for p in (run / "checkpoints").glob("ckpt-*.index"))
    assert [int(r["step"]) for r in rows] == kept
    for row in rows:
        assert float(row["train_cpu_s"]) > 0 and 0.0 <= float(row["c2st"]) <= 1.0
        assert float(row["c2st_low"]) <= float(row["c2st"]) <= float(row["c2st_high"])
        assert math.isfinite(float(row["fid"]))
        assert all(0.0 <= float(row[f"c2st_{cue}"]) <= 1.0 for cue in gan_eval.c2st_cues())
        assert row["augment_p"] == ""  # no ADA in this run
    assert (out / "curve.png").stat().st_size > 0


def test_derived_cpu_time_for_runs_older_than_the_clock():
    from trainer.gan import curve

    history = [{"step": 10, "train_cpu_s": 5.0, "train_wall_s": 3.0}, {"step": 20}]
    assert curve.training_time(history, 10) == {"train_cpu_s": 5.0, "train_wall_s": 3.0,
                                                "cpu_source": "measured"}
    assert curve.training_time(history, 20)["cpu_source"] == ""
    assert curve.training_time(history, 20, 0.5) == {"train_cpu_s": 10.0, "train_wall_s": None,
                                                     "cpu_source": "derived"}
    assert curve.parse_rates(["out/runs/a/=0.67"], ["out/runs/a", "b"]) == {"a": 0.67}
    with pytest.raises(ValueError, match="'c', not one of"):
        curve.parse_rates(["c=1"], ["a", "b"])
    with pytest.raises(ValueError, match="RUN=SECONDS"):
        curve.parse_rates(["a=fast"], ["a"])
    with pytest.raises(ValueError, match="must be > 0"):
        curve.parse_rates(["a=0"], ["a"])


def test_time_at_step_takes_the_epoch_that_ended_at_or_after_the_checkpoint():
    from trainer.gan import curve

    history = [{"step": 10, "train_cpu_s": 5.0, "train_wall_s": 3.0},
               {"step": 20, "train_cpu_s": 9.0, "train_wall_s": 5.0}]
    assert curve.time_at_step(history, 10) == {"train_cpu_s": 5.0, "train_wall_s": 3.0}
    assert curve.time_at_step(history, 15) == {"train_cpu_s": 9.0, "train_wall_s": 5.0}
    assert curve.time_at_step(history, 25) == {"train_cpu_s": None, "train_wall_s": None}
    assert curve.time_at_step([{"step": 10}], 5) == {"train_cpu_s": None, "train_wall_s": None}
    # An ADA run's augmentation probability comes from the same epoch entry.
    assert curve.entry_at_step([{"step": 10, "augment_p": 0.3}, {"step": 20}], 5) == {
        "step": 10, "augment_p": 0.3}
    assert curve.entry_at_step(history, 25) == {}




def test_a_grown_run_counts_its_source_runs_cpu():
    from trainer.gan import curve

    times = {"train_cpu_s": 100.0, "train_wall_s": 80.0}
    assert curve.with_source_cpu(times, None) == {**times, "source_cpu_s": None}
    grown = curve.with_source_cpu(times, {"source_step": 500, "source_train_cpu_s": 40.0})
    assert grown["train_cpu_s"] == 140.0 and grown["source_cpu_s"] == 40.0
    assert curve.with_source_cpu(times, {"source_train_cpu_s": None})["train_cpu_s"] is None

def test_one_untimed_checkpoint_is_left_off_the_cpu_axis_not_the_whole_curve():
    """A stopped run's last checkpoint after its last finished epoch has no CPU time: that row
    alone is not drawn; only a run with no CPU time at all puts every run on a steps axis."""
    from trainer.gan import curve

    rows = [{"run": "a", "step": 10, "train_cpu_s": 5.0}, {"run": "a", "step": 15,
                                                           "train_cpu_s": None},
            {"run": "b", "step": 10, "train_cpu_s": 7.0}]
    timed, drawn = curve.plot_rows(rows)
    assert timed and [r["step"] for r in drawn["a"]] == [10] and len(drawn["b"]) == 1
    timed, drawn = curve.plot_rows(rows + [{"run": "old", "step": 4, "train_cpu_s": None}])
    assert not timed and [r["step"] for r in drawn["a"]] == [10, 15] and len(drawn["old"]) == 1


@pytest.mark.slow  # ~16 s, two TensorFlow processes: the renamed command's alias only
def test_the_old_sample_command_writes_what_the_new_one_does(trained, tmp_path):
    """`trainer.dcgan sample --checkpoint --out` still works: its flags renamed, its seed kept."""
    _, run = trained
    old, new = tmp_path / "old", tmp_path / "new"
    _cli("trainer.dcgan", "sample", f"--checkpoint={run}", "--num=3", f"--out={old}")
    _cli("trainer.gan.sample", f"--model={run}", "--num=3", f"--output={new}")
    names = sorted(p.name for p in old.glob("*.png"))
    assert len(names) == 3 and names == sorted(p.name for p in new.glob("*.png"))
    assert all((old / n).read_bytes() == (new / n).read_bytes() for n in names)


def test_inputs_that_do_not_fit_the_trained_run_are_refused_before_any_output(trained,
                                                                              tmp_path):
    data, run = trained
    out = tmp_path / "out"
    # The GAN makes 32 px images: a dataset without them is refused, naming both flags' sizes.
    other = shard_fixtures.write_tiny_dataset(
        tmp_path / "other", {"train": shard_fixtures.random_images(4, 16)}, 16)
    line = _refused("trainer.gan.evaluate", f"--model={run}", f"--data_dir={other}",
                    f"--output={out}", names=("--data_dir", "[16]", "32 px"))
    assert "--model" in line
    # Another split name, or a class asked of an unconditional GAN.
    _refused("trainer.gan.sample", f"--model={run}", "--class=benign", f"--output={out}",
             names=("--class=benign", "unconditional"))
    _refused("trainer.gan.curve", f"--model={run}", f"--data_dir={other}", f"--output={out}",
             names=("--data_dir", "32 px"))
    assert not out.exists()
    # Resuming with another architecture: refused, and the run folder left as it was.
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    _refused("trainer.gan", "--flagfile=configs/dcgan_tiny.flags", f"--data_dir={data}",
             f"--workdir={run}", f"--image_size={SIZE}", "--latent_dim=64",
             names=("--workdir", "latent_dim"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
