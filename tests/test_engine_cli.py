"""The engine's command line as a user meets it: --help with every flag's default and no warning
before it; a typo or a stray word refused (exit 2, one line naming the nearest flag) instead of a
run with the defaults; Beam's own options passed through; every user error one line, exit 2,
nothing left behind."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest

from beam_jobs import config as engine_config, preprocess
from beam_jobs.layouts import read_layout
from isicflow.metadata import UNKNOWN
from tests import layout_builders as lb
from tests.conftest import REPO_ROOT

ACRAL = REPO_ROOT.parent / "shared" / "data" / "isic-acral-666"


def engine(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "beam_jobs.preprocess", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("preprocess: error: "), err
    return err[0]


def test_help_lists_every_flag_with_its_default_and_nothing_before_it():
    done = engine("--help")
    assert done.returncode == 0
    assert done.stderr == ""  # no FutureWarning, no "apitools not found"
    assert done.stdout.startswith("usage: python -m beam_jobs.preprocess")
    parser = engine_config.build_arg_parser()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in done.stdout, option
    for default in ("(default: 256,128)", "(default: dermoscopic)", "(default: SONIC)",
                    "(default: benign_malignant)", "(default: group)", "(default: 70,20,10)",
                    "(default: squash)", "(default: jpeg)", "(default: 95)", "(default: 150.0)",
                    "(default: 0)"):
        assert default in " ".join(done.stdout.split()), default


def test_a_typo_is_refused_naming_the_flag_and_writes_nothing(tmp_path):
    """Before: Beam logged 'Discarding unparseable args', exit 0, and the 256 and 128 px
    datasets of the defaults were written."""
    done = engine("--image-size=64", f"--output={tmp_path / 'out'}")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "preprocess: error: unknown argument --image-size=64; did you mean --image_size? "
        "(python -m beam_jobs.preprocess --help lists the flags)"]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("arg,needle", [
    ("--runnr=DirectRunner", "unknown argument --runnr=DirectRunner; did you mean --runner?"),
    ("--imagesize=32", "did you mean --image_size?"),
    ("stray", "unknown argument stray: not an engine flag nor a Beam pipeline option"),
    ("--image=32", "unknown argument --image=32"),  # no abbreviation of --image_size & co.
    ("--direct_num_workers=two", "--direct_num_workers: invalid int value: 'two'"),
    ("--direct_running_mode=fast", "--direct_running_mode: invalid choice: 'fast'"),
])
def test_unknown_arguments_and_bad_beam_values_are_one_line(tmp_path, capsys, arg, needle):
    with pytest.raises(SystemExit) as stop:
        preprocess.run([f"--output={tmp_path / 'out'}", "--image_size=32", arg])
    assert stop.value.code == 2
    assert needle in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_beam_pipeline_options_pass_through(tmp_path):
    beam = ["--runner=DirectRunner", "--direct_num_workers=2",
            "--direct_running_mode=multi_processing", f"--temp_location={tmp_path}",
            "--setup_file=./setup.py", "--project", "my-project"]
    config, beam_args = engine_config.parse_config([f"--output={tmp_path}", "--image_size=32",
                                                    *beam])
    assert beam_args == beam and config.image_sizes == (32,)


@pytest.mark.parametrize("make_output,needle", [
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file", "is a file; name a folder"),
    (lambda tmp: (tmp / "file").write_text("x") and tmp / "file" / "sub", "cannot create it"),
])
def test_an_unusable_output_is_one_line(tmp_path, capsys, sample_dir, make_output, needle):
    output = make_output(tmp_path)
    assert preprocess.main([f"--input={sample_dir}", f"--output={output}",
                            "--image_size=32"]) == 2
    line = one_error_line(capsys)
    assert f"--output {str(output)!r}" in line and needle in line


@pytest.mark.parametrize("args,start", [
    (["--runner=NoSuchRunner"], "--runner=NoSuchRunner: Unexpected pipeline runner"),
    (["--dx_map=bad"], "--dx_map piece 'bad' is not CODE:LABEL"),  # not blamed on --input
    (["--metadata_csv=/no/such.csv", "--id_column=a", "--label_column=b"],
     "--metadata_csv=/no/such.csv: no such file; pass the CSV"),
])
def test_flag_errors_found_at_start_name_the_flag(tmp_path, capsys, sample_dir, args, start):
    assert preprocess.main([f"--input={sample_dir}", f"--output={tmp_path / 'out'}",
                            "--image_size=32", *args]) == 2
    assert one_error_line(capsys).startswith(f"preprocess: error: {start}")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,needle", [
    (["--output="], "--output is empty: name the dataset folder to create"),
    (["--output=x", "--layout=bogus"], "argument --layout: invalid choice: 'bogus'"),
])
def test_flag_values_refused_by_the_parser(capsys, args, needle):
    with pytest.raises(SystemExit) as stop:
        preprocess.run(args)
    assert stop.value.code == 2 and needle in one_error_line(capsys)


def test_a_refused_runner_leaves_no_output_folder(tmp_path, capsys, sample_dir):
    assert preprocess.main([f"--input={sample_dir}", f"--output={tmp_path / 'out'}",
                            "--image_size=32", "--streaming"]) == 2
    assert "the data engine is a batch job: drop --streaming" in one_error_line(capsys)
    assert not (tmp_path / "out").exists()


def without_label_columns(root, drop=("benign_malignant", "diagnosis")):
    """The builder's isic-cli metadata.csv with the label-bearing columns removed."""
    path = root / "metadata.csv"
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    keep = [i for i, name in enumerate(rows[0]) if name not in drop]
    lb.write_csv(path, [rows[0][i] for i in keep], [[r[i] for i in keep] for r in rows[1:]])
    return path


def test_isic_cli_table_without_a_label_column_says_so(tmp_path, capsys, sample_dir):
    """Before: accepted, every image 'filtered_label', exit 3 without naming the column."""
    images = lb.sample_images(sample_dir, every=60, include_null_diagnosis=False)
    table = without_label_columns(lb.build_isic_cli(tmp_path / "src", images))
    args = [f"--input={tmp_path / 'src'}", "--image_size=32"]
    assert preprocess.main(args + [f"--output={tmp_path / 'out'}"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"preprocess: error: {table}: read as isic_cli but has no label "
                           "column (looked for benign_malignant or diagnosis_1)")
    assert "--label_policy=all" in line and "--metadata_csv=PATH" in line
    assert not (tmp_path / "out").exists()
    # the layout itself records it, whatever the policy; --label_policy=all keeps the images
    entry, = read_layout(str(tmp_path / "src")).metadata_files
    assert entry["label_columns_missing"] == ["benign_malignant", "diagnosis_1"]
    assert "no label column (looked for benign_malignant, diagnosis_1)" in entry["why"]
    manifest = preprocess.run(args + [f"--output={tmp_path / 'all'}", "--label_policy=all",
                                      "--keep_degenerate"])
    assert manifest["totals"]["written"] == len(images)
    assert manifest["metadata_files"][0]["label_columns_missing"] == [
        "benign_malignant", "diagnosis_1"]


def test_acral_table_labels_from_diagnosis_1():
    """isic-acral-666 has diagnosis_1..3 and no benign_malignant: still labelled, no warning."""
    result = read_layout(str(ACRAL))
    assert result.layout == "isic_cli"
    assert all(r.label != UNKNOWN for r in result.records[:50])
    assert not any(e.get("label_columns_missing") for e in result.metadata_files)
