"""Every program a user runs: --help lists its own flags with their defaults (exit 0, nothing on
stderr), the console scripts point at real functions, and a user's mistake is one line, exit 2."""
from __future__ import annotations

import ast
import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

# program -> flags its --help must list (a sample: the ones a newcomer reaches for first)
PROGRAMS = {
    "beam_jobs.preprocess": ("--input", "--output", "--image_size"),
    "trainer.cnn": ("--data_dir", "--workdir", "--architecture", "--epochs"),
    "trainer.cnn.evaluate": ("--model", "--data_dir", "--output"),
    "trainer.cnn.predict": ("--model", "--image"),
    "trainer.cnn.visualize": ("--model", "--image", "--output"),
    "trainer.cnn.pretrain": ("--data_dir", "--workdir", "--temperature", "--pretrain_splits",
                             "--architecture", "--lr_schedule"),
    "trainer.gan": ("--data_dir", "--workdir", "--latent_dim", "--epochs"),
    "trainer.gan.sample": ("--model", "--num", "--output"),
    "trainer.gan.evaluate": ("--model", "--data_dir", "--output"),
    "trainer.gan.curve": ("--model", "--data_dir"),
    "trainer.profile": ("--workdir",),
    # kept under their earlier names, forwarding to the programs above
    "trainer.dcgan": ("--data_dir", "--workdir"),
    "trainer.gan_eval": ("--model", "--data_dir"),
    "trainer.evaluate": ("--model", "--data_dir"),
    "benchmarks.bench_input": ("--input", "--workdir"),
    "benchmarks.bench_preprocess": ("--input", "--workdir"),
    "benchmarks.ablation": ("--workdir", "--base"),
    "benchmarks.protocol": ("--input", "--base", "--workdir", "--seeds"),
    "benchmarks.linear_probe": ("--encoders", "--train_data", "--heldout_data"),
}


def _run(args: list[str], cwd: pathlib.Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "default"}  # a warning would show, not hide
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=180)


@pytest.mark.parametrize("module", sorted(PROGRAMS))
def test_help_lists_own_flags_with_defaults(module):
    result = _run(["-m", module, "--help"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.strip() == "", f"{module} --help wrote to stderr:\n{result.stderr}"
    for flag in PROGRAMS[module]:
        # absl programs: "--name=DEFAULT  help"; argparse ones: "--name NAME ... (default: X)"
        assert re.search(rf"^\s+{re.escape(flag)}\b", result.stdout, re.M), (
            f"{module} --help does not list {flag}:\n{result.stdout}")
    assert "default" in result.stdout.lower() or re.search(r"^\s+--\w+=", result.stdout, re.M)


def _console_scripts() -> list[str]:
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return [element.value for element in value.elts]
    raise AssertionError("setup.py declares no console_scripts")


def test_console_scripts_point_at_callables():
    scripts = _console_scripts()
    assert len(scripts) >= 10
    for entry in scripts:
        name, target = (part.strip() for part in entry.split("="))
        module, function = target.split(":")
        assert name.startswith("isicflow-"), entry
        assert callable(getattr(importlib.import_module(module), function)), entry


def test_every_program_can_share_one_process():
    """Programs define their flags when run, never on import: a notebook or one pytest worker
    may import them all (absl refuses a flag defined twice)."""
    modules = [m for m in PROGRAMS if not m.startswith("benchmarks")]
    modules += ["trainer.cnn.cli", "trainer.gan.cli"]
    result = _run(["-c", "import importlib\nfor m in %r: importlib.import_module(m)" % modules])
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("args, names", [
    (["-m", "trainer.cnn.evaluate", "--data_dir=/nonexistent/ds"], "--model"),
    (["-m", "trainer.cnn", "--workdir=/tmp/never", "--image_size=64"], "--data_dir"),
    (["-m", "trainer.gan.sample", "--output=/tmp/never"], "--model"),
    (["-m", "trainer.profile", "--workdir=/nonexistent/run"], "--workdir"),
    (["-m", "trainer.cnn.predict", "--model=/nonexistent/model", "--image=x.jpg"], "--model"),
])
def test_a_missing_or_wrong_input_is_one_line_and_exit_2(args, names, tmp_path):
    result = _run(args, cwd=REPO)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert names in lines[0], lines[0]
    assert not pathlib.Path("/tmp/never").exists()
