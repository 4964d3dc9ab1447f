"""The GAN's programs as a user meets them: --help (own flags with defaults, exit 0, nothing
else on the screen), the old names that keep working, and inputs refused in one line with exit 2
before any folder is made. None of these trains: they stay fast."""
import os
import pathlib
import subprocess
import sys

import pytest

from tests import shard_fixtures

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _refused(prog, *args, names, runs=None):
    """Exit 2, one line on stderr from the program (`runs`: the one an old name runs) naming
    `names`, no traceback."""
    result = _run(prog, *args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    mine = [line for line in result.stderr.splitlines() if line.startswith(f"{runs or prog}: ")]
    assert len(mine) == 1 and all(name in mine[0] for name in names), result.stderr[-2000:]
    return mine[0]


@pytest.mark.parametrize("command,prog,shown", [
    (["trainer.gan"], "trainer.gan",
     ["--data_dir=None", "--workdir=None", "--image_size=128", "--batch_size=64",
      "--latent_dim=100", "--gan_architecture=study", "--checkpoint_every=500"]),
    (["trainer.gan.sample"], "trainer.gan.sample",
     ["--model=None", "--num=64", "--output=None", "--format=png", "--class=both",
      "--seed=42"]),
    (["trainer.gan.evaluate"], "trainer.gan.evaluate",
     ["--model=None", "--data_dir=None", "--output=None", "--feature_model=",
      "--feature_extractor=auto", "--num_generated=200", "--seed=0",
      "--heldout_splits=validation,test"]),
    (["trainer.gan.curve"], "trainer.gan.curve",
     ["--model=None", "--data_dir=None", "--output=None", "--cpu_s_per_step=",
      "--feature_model=", "--seed=0"]),
    # the old names: the same programs
    (["trainer.dcgan"], "trainer.gan", ["--latent_dim=100", "--image_size=128"]),
    (["trainer.dcgan", "sample"], "trainer.gan.sample", ["--model=None", "--class=both"]),
    (["trainer.gan_eval"], "trainer.gan.evaluate", ["--model=None", "--output=None"]),
])
def test_help_lists_the_programs_own_flags_with_defaults(command, prog, shown):
    result = _run(*command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr == ""  # no warning before (or after) the help
    assert result.stdout.startswith(f"usage: python -m {prog} ")
    lines = result.stdout.splitlines()
    for flag in shown:
        assert any(line.startswith(f"  {flag}  ") for line in lines), (flag, result.stdout)
    assert not any(line.startswith(("  --checkpoint=", "  --out=", "  --eval_out=",
                                    "  --runs=", "  --real_data_dir=")) for line in lines)


def test_training_needs_a_dataset_with_the_asked_size(tmp_path):
    workdir = tmp_path / "run"
    _refused("trainer.gan", f"--workdir={workdir}", names=("--data_dir is required",))
    _refused("trainer.gan", f"--workdir={workdir}", f"--data_dir={tmp_path / 'none'}",
             names=("--data_dir=", "no such folder"))
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused("trainer.gan", f"--workdir={workdir}", f"--data_dir={empty}",
             names=("--data_dir=", "manifest.json"))
    data = shard_fixtures.write_tiny_dataset(
        tmp_path / "data", {"train": shard_fixtures.random_images(4, 16, labels=("unknown",))},
        16)
    line = _refused("trainer.gan", f"--workdir={workdir}", f"--data_dir={data}",
                    "--image_size=64", names=("--data_dir=", "[16] px", "64 px", "--image_size"))
    assert "--image_size=64" in line  # the engine's flag that would make them
    _refused("trainer.gan", f"--workdir={workdir}", f"--data_dir={data}", "--image_size=16",
             "--gan_splits=train,validation", names=("'validation'", "--data_dir"))
    _refused("trainer.gan", f"--workdir={workdir}", f"--data_dir={data}", "--image_size=16",
             "--conditional", names=("benign/malignant", "'train'"))
    _refused("trainer.gan", f"--workdir={workdir}", f"--data_dir={data}", "--image_size=16",
             "--learning_rate=0.1", names=("--learning_rate", "--gen_learning_rate"))
    _refused("trainer.gan", f"--workdir={workdir}", f"--data_dir={data}", "--image_size=16",
             "stray", names=("['stray']",))
    # A flag combination GanConfig refuses: one line, not a traceback.
    _refused("trainer.gan", f"--workdir={workdir}", f"--data_dir={data}", "--image_size=16",
             "--spectral_norm", names=("spectral_norm needs gan_architecture='deep'",))
    assert not workdir.exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    _refused("trainer.gan", f"--workdir={a_file}", f"--data_dir={data}", "--image_size=16",
             names=("--workdir=", "is a file"))


def test_a_model_that_is_not_a_gan_run_is_refused(tmp_path):
    not_gan = tmp_path / "cnn-run"
    (not_gan / "checkpoints").mkdir(parents=True)
    out = tmp_path / "out"
    for prog in ("trainer.gan.sample", "trainer.gan.evaluate", "trainer.gan.curve"):
        data = [] if prog == "trainer.gan.sample" else [f"--data_dir={tmp_path}"]
        _refused(prog, f"--model={not_gan}", *data, f"--output={out}",
                 names=("--model=", "not a GAN run", "gan_config.json"))
        _refused(prog, f"--model={tmp_path / 'none'}", f"--output={out}",
                 names=("--model=", "no such folder"))
    assert not out.exists()


def test_the_old_evaluation_name_maps_its_old_flags(tmp_path):
    # --generator_checkpoint/--real_data_dir/--eval_out are --model/--data_dir/--output now.
    line = _refused("trainer.gan_eval", f"--generator_checkpoint={tmp_path / 'none'}",
                    f"--real_data_dir={tmp_path}", f"--eval_out={tmp_path / 'eval'}",
                    "--eval_seed=3", names=("--model=",), runs="trainer.gan.evaluate")
    assert line.startswith("trainer.gan.evaluate: --model=")
    assert not (tmp_path / "eval").exists()


def test_rename_flags_maps_old_names_in_every_form_and_in_flag_files(tmp_path):
    from trainer import dcgan, gan_eval
    from trainer.core.program import rename_flags

    flagfile = tmp_path / "old.flags"
    flagfile.write_text("--generator_checkpoint=run\n--num_generated=16\n")
    argv = ["prog", f"--flagfile={flagfile}", "--real_data_dir", "data", "-eval_out=out",
            "--eval_seed=1", "--cnn_value_range=-1,1", "--output_extra=x"]
    assert rename_flags(argv, gan_eval.EVALUATE) == [
        "prog", "--model=run", "--num_generated=16", "--data_dir", "data", "-output=out",
        "--seed=1", "--feature_model_value_range=-1,1", "--output_extra=x"]
    # An unreadable flag file is left for the program to report.
    missing = ["prog", f"--flagfile={tmp_path / 'none.flags'}", "--out=o"]
    assert rename_flags(missing, dcgan.SAMPLE) == [
        "prog", f"--flagfile={tmp_path / 'none.flags'}", "--output=o"]


def test_importing_the_programs_defines_no_flag():
    code = ("import trainer.gan.sample, trainer.gan.evaluate, trainer.gan.curve, "
            "trainer.gan.evaluation, trainer.dcgan, trainer.gan_eval\n"
            "from absl import flags\n"
            "assert not {'model', 'output', 'num', 'class', 'latent_dim', 'seed'} & "
            "set(flags.FLAGS), sorted(flags.FLAGS)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
