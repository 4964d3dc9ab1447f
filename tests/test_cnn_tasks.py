"""The CNN's structure: one rule table for flags and configs alike, the task component, and
library modules that import each other without a circle."""
import ast
import pathlib

import pytest
from absl import flags

from trainer.cnn import cli, config, tasks

cli.define_flags()  # the CNN trainer's flags, as its program defines them

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
BASE = dict(data_dir="d", workdir="w")

# (config fields, the same on the command line): each breaks exactly one rule
VIOLATIONS = [
    (dict(model="compact", width_multiplier=2.0), ["--architecture=compact",
                                                   "--width_multiplier=2"]),
    (dict(weight_decay=0.05), ["--weight_decay=0.05"]),
    (dict(warmup_epochs=2.0), ["--warmup_epochs=2"]),
    (dict(task="diagnosis", label_smoothing=0.1), ["--task=diagnosis", "--label_smoothing=0.1"]),
    (dict(mixup_alpha=0.2, class_balance="class_weights"),
     ["--mixup_alpha=0.2", "--class_balance=class_weights"]),
    (dict(jit_compile=True, deterministic=True), ["--jit_compile", "--deterministic"]),
    (dict(task="diagnosis", monitor="val_auc"), ["--task=diagnosis", "--monitor=val_auc"]),
    (dict(task="diagnosis", class_balance="sampling"),
     ["--task=diagnosis", "--class_balance=sampling"]),
    (dict(use_metadata=True, class_balance="sampling"),
     ["--use_metadata", "--class_balance=sampling"]),
    (dict(synthetic_fraction=0.5), ["--synthetic_fraction=0.5"]),
    (dict(synthetic_data="s", use_metadata=True), ["--synthetic_data=s", "--use_metadata"]),
    (dict(dropout=1.5), ["--dropout=1.5"]),
    (dict(min_class_records=0), ["--min_class_records=0"]),
]


@pytest.mark.parametrize("fields, argv", VIOLATIONS, ids=lambda v: str(v)[:40])
def test_flags_and_config_refuse_with_the_same_rule(fields, argv):
    with pytest.raises(config.ConfigError) as from_config:
        config.TrainConfig(**BASE, **fields)
    try:
        with pytest.raises(flags.IllegalFlagValueError) as from_flags:
            flags.FLAGS(["trainer.cnn", "--data_dir=d", "--workdir=w", *argv])
    finally:
        flags.FLAGS.unparse_flags()
    broken = [rule for rule in config.RULES if rule.message in str(from_config.value)
              and all(f"--{config.flag_name(f)}=" in str(from_config.value) for f in rule.fields)]
    assert len(broken) == 1, str(from_config.value)
    assert broken[0].message in str(from_flags.value)
    for field in broken[0].fields:  # both messages name each flag of the rule
        assert config.flag_name(field) in str(from_flags.value)


def test_a_config_error_is_a_user_error_and_a_value_error():
    from trainer.core import program

    with pytest.raises(program.UserError):
        config.TrainConfig(**BASE, optimizer="sgd")
    with pytest.raises(ValueError, match="--optimizer=sgd: must be one of rmsprop, adamw"):
        config.TrainConfig(**BASE, optimizer="sgd")


def test_after_training_settings_are_checked_with_the_config():
    for task in ("binary", "diagnosis"):  # TTA scores either task's images
        config.check(config.TrainConfig(**BASE, task=task), tta=True)
    c = config.TrainConfig(**BASE, task="diagnosis", use_metadata=True)
    config.check(c)
    with pytest.raises(config.ConfigError, match="--use_metadata=True, --tta=True"):
        config.check(c, tta=True)


def test_each_task_is_chosen_by_the_config():
    manifest = {"datasets": {"32": {"train": {"counts": {"benign": 6, "malignant": 2}}}}}
    binary = tasks.for_config(config.TrainConfig(**BASE, image_size=32), manifest)
    assert isinstance(binary, tasks.BinaryTask) and binary.manifest is manifest
    c = config.TrainConfig(**BASE, image_size=32, class_balance="class_weights")
    assert binary.class_weight(c) == pytest.approx({0: 8 / 12, 1: 8 / 4})
    assert binary.class_weight(config.TrainConfig(**BASE, image_size=32)) is None
    diagnosis = tasks.for_config(config.TrainConfig(**BASE, task="diagnosis"), manifest)
    assert isinstance(diagnosis, tasks.DiagnosisTask)
    diagnosis.mapping = {"classes": ["nevus", "other"], "train_counts": {"nevus": 6, "other": 2}}
    assert diagnosis.class_weight(config.TrainConfig(**BASE, task="diagnosis",
                                                     class_balance="class_weights")) == \
        pytest.approx({0: 8 / 12, 1: 8 / 4})


def _imports(path: pathlib.Path) -> set:
    """trainer.cnn modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "trainer.cnn":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer.cnn."):
            found.add(node.module.split(".")[2])
    return found


def test_the_cnn_modules_import_each_other_without_a_circle():
    folder = REPO_ROOT / "trainer" / "cnn"
    graph = {p.stem: _imports(p) - {p.stem} for p in folder.glob("*.py")}
    libraries = {name for name in graph if name not in ("__main__", "__init__")}
    state: dict = {}

    def visit(name, path):
        if state.get(name) == "open":
            raise AssertionError("import circle: " + " -> ".join(path + [name]))
        if state.get(name) == "done":
            return
        state[name] = "open"
        for dep in graph.get(name, ()):
            visit(dep, path + [name])
        state[name] = "done"

    for name in sorted(libraries):
        visit(name, [])
    assert not (graph["constants"] or graph["data"])  # the leaves
