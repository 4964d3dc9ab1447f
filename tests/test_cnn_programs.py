"""The CNN's programs as a user runs them: --help lists each program's own flags with their
defaults (exit 0, nothing on stderr), and each mistake is one line on stderr naming the flag or
path, exit 2, no traceback and no folder left behind."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests import shard_fixtures
from trainer import evaluate as evaluate_shim
from trainer.core import program

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZE = 32
# TensorFlow's C++ runtime logs while it loads (e.g. "Unable to register cuDNN factory" on a
# machine with CUDA libraries but no GPU): the runtime's, not the program's.
TF_RUNTIME_LOG = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ")


def _run(program, *args, timeout=120):
    """As a user runs it: no TF_CPP_MIN_LOG_LEVEL set (the tests' conftest sets one)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-m", program, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, sample_dir):
    """Real images at 32 px only: 8 train, 4 validation, 4 test."""
    return shard_fixtures.write_sample_dataset(tmp_path_factory.mktemp("data"), sample_dir, SIZE)


@pytest.mark.parametrize("program, shown", [
    ("trainer.cnn", ["--architecture=study", "--task=binary", "--tta=false",
                     "--data_dir=None", "--epochs=10", "--image_size=256"]),
    ("trainer.cnn.evaluate", ["--model=None", "--splits=all", "--output=None",
                              "--bootstrap=1000"]),
    ("trainer.cnn.predict", ["--model=None", "--image=", "--threshold=None",
                             "--batch_size=16", "--output=None"]),
    ("trainer.cnn.visualize", ["--model=None", "--image=None", "--output=None"]),
    ("trainer.evaluate", ["--model=None", "--output=None"]),
])
def test_help_lists_the_programs_own_flags_with_defaults(program, shown):
    done = _run(program, "--help")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no warning, no log line before the help
    assert done.stdout.startswith("usage: python -m ")
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  --")]
    for flag in shown:
        assert flag in listed, (flag, done.stdout)
    assert "--helpfull" in done.stdout and "--tpu" not in done.stdout


def _assert_user_error(done, *words):
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and not TF_RUNTIME_LOG.match(line)]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_training_refuses_bad_inputs_before_making_the_run_folder(dataset, tmp_path):
    workdir = tmp_path / "run"
    weights = tmp_path / "none.h5"
    (tmp_path / "a_file").write_text("")
    cases = [
        ([f"--workdir={workdir}"], ["trainer.cnn: ", "--data_dir"]),
        ([f"--data_dir={tmp_path / 'nowhere'}", f"--workdir={workdir}"],
         ["--data_dir=", "no such folder"]),
        ([f"--data_dir={tmp_path}", f"--workdir={workdir}"], ["--data_dir=", "no manifest.json"]),
        ([f"--data_dir={dataset}", f"--workdir={workdir}", "--image_size=256"],
         ["--image_size=256", "[32]"]),
        ([f"--data_dir={dataset}", f"--workdir={workdir}", f"--image_size={SIZE}",
          "--architecture=efficientnet_b0", f"--weights_path={weights}"],
         ["--weights_path=", "no such file"]),
        ([f"--data_dir={dataset}", f"--workdir={workdir}", f"--image_size={SIZE}", "--tta",
          "--use_metadata"], ["--tta"]),
        ([f"--data_dir={dataset}", f"--workdir={workdir}", f"--image_size={SIZE}",
          f"--cache={tmp_path / 'none' / 'cache'}"], ["--cache=", "no folder"]),
        ([f"--data_dir={dataset}", f"--workdir={tmp_path / 'a_file'}",
          f"--image_size={SIZE}"], ["--workdir=", "is a file"]),
        ([f"--data_dir={dataset}", f"--workdir={workdir}", f"--image_size={SIZE}",
          "--task=diagnosis", "--min_class_records=100000"],
         ["--min_class_records=100000", "at least 2 classes"]),
        ([f"--data_dir={dataset}", f"--workdir={workdir}", "extra"], ["unexpected arguments"]),
        ([f"--data_dir={dataset}", f"--workdir={workdir}", "--drop_out=0.2"], ["drop_out"]),
    ]
    for args, words in cases:
        _assert_user_error(_run("trainer.cnn", *args), *words)
        assert not workdir.exists(), args
    # a run folder resumes only with the model it was started with
    workdir.mkdir()
    (workdir / "train_config.json").write_text('{"model": "compact", "image_size": 32}')
    _assert_user_error(_run("trainer.cnn", f"--data_dir={dataset}", f"--workdir={workdir}",
                            f"--image_size={SIZE}", "--architecture=study"),
                       "--architecture=study (the run has compact)")
    assert sorted(p.name for p in workdir.iterdir()) == ["train_config.json"]  # untouched


def test_evaluate_refuses_bad_inputs_with_one_line(dataset, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.keras").write_bytes(b"not a keras file")
    (model / "report.json").write_text('{"threshold": {"threshold": 0.5}}')
    output = tmp_path / "out"
    cases = [
        ([f"--data_dir={dataset}"], ["--model"]),
        ([f"--model={tmp_path / 'nope'}", f"--data_dir={dataset}"], ["--model", "no such folder"]),
        ([f"--model={model}", f"--data_dir={dataset}", "--splits=tset"], ["--splits", "tset"]),
        ([f"--model={model}", f"--data_dir={dataset}"], ["--model", "cannot be loaded"]),
        ([f"--model={model}", f"--data_dir={tmp_path}"], ["--data_dir", "no manifest.json"]),
        ([f"--model={model}", f"--data_dir={dataset}", "--threshold=2"], ["--threshold=2"]),
    ]
    for args, words in cases:
        _assert_user_error(_run("trainer.cnn.evaluate", f"--output={output}", *args), *words)
        assert not output.exists(), args
    # the old name forwards, its --out being the new --output
    _assert_user_error(_run("trainer.evaluate", f"--model={tmp_path / 'nope'}",
                            f"--data_dir={dataset}", "--out", str(output)), "no such folder")
    assert not output.exists()


def test_the_old_evaluate_name_maps_out_to_output():
    assert program.rename_flags(["p", "--out=a", "--out", "b", "--outside=c"],
                                 evaluate_shim.RENAMED) == [
        "p", "--output=a", "--output", "b", "--outside=c"]


def test_predict_and_visualize_refuse_bad_inputs_with_one_line(tmp_path, sample_dir):
    lesion = next(sample_dir.glob("*.jpg"))
    image = tmp_path / "lesion.jpg"
    image.write_bytes(b"not an image")
    _assert_user_error(_run("trainer.cnn.predict", f"--model={tmp_path}"), "--image")
    _assert_user_error(_run("trainer.cnn.predict", f"--model={tmp_path}", f"--image={image}"),
                       "--model=", "neither an export dir")
    _assert_user_error(_run("trainer.cnn.predict", f"--model={tmp_path}", str(image)),
                       "unexpected arguments")
    output = tmp_path / "vis"
    for args, words in [
        ([f"--model={tmp_path}", f"--image={tmp_path / 'none.jpg'}"], ["--image=", "no such file"]),
        ([f"--model={tmp_path}", f"--image={image}"], ["--image=", "not a readable"]),
        ([f"--model={tmp_path / 'none.keras'}", f"--image={lesion}"], ["--model=", "no such"]),
        ([f"--model={tmp_path}", f"--image={lesion}"], ["--model=", "no model.keras"]),
    ]:
        _assert_user_error(_run("trainer.cnn.visualize", f"--output={output}", *args), *words)
        assert not output.exists()
