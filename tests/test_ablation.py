"""benchmarks.ablation: variant parsing, the row read back from a run folder, the table, and
that a finished variant is not trained again."""
import json

import pytest

from benchmarks import ablation
from trainer.core import run_folder


def test_parse_variant():
    assert ablation.parse_variant("recipe=") == ("recipe", [])
    assert ablation.parse_variant("no_ema=--ema_decay=0 --epochs=3") == (
        "no_ema", ["--ema_decay=0", "--epochs=3"])
    for bad in ("recipe", "=--a", "a/b=--x"):
        with pytest.raises(ValueError, match="NAME=FLAGS"):
            ablation.parse_variant(bad)


def _fake_run(folder, val_auc=0.8):
    folder.mkdir(parents=True)
    split = {"auc": val_auc, "cases": 10, "sensitivity": 0.8, "specificity": 0.6,
             "bootstrap": {"intervals": {"auc": {"low": val_auc - 0.1, "high": val_auc + 0.05}}}}
    (folder / "report.json").write_text(json.dumps(
        {"tta": False, "splits": {"validation": split, "test": {**split, "auc": 0.7}}}))
    (folder / "train_summary.json").write_text(json.dumps(
        {"epochs_done": 3, "best_epoch": 2, "wall_time_s_this_run": 120.0,
         "cpu_time_s_this_run": 230.0}))
    run_folder.write_history(str(folder / run_folder.HISTORY_NAME), [
        {"epoch": e, "epoch_time_s": 10.0 * e, "input_wait_share": 0.01 * e} for e in (1, 2, 3)])


def test_summarize_reads_the_run_folder(tmp_path):
    _fake_run(tmp_path / "run")
    row = ablation.summarize(str(tmp_path / "run"))
    assert row["validation"]["auc"] == 0.8
    assert row["validation"]["auc_ci95"] == pytest.approx([0.7, 0.85])
    assert row["test"]["auc"] == 0.7
    assert (row["epochs"], row["best_epoch"]) == (3, 2)
    assert row["train_wall_min"] == 2.0 and row["train_cpu_min"] == pytest.approx(230 / 60)
    assert row["epoch_s"] == 20.0 and row["input_wait_share"] == pytest.approx(0.03)
    table = ablation.markdown({"recipe": {**row, "base": "configs/x.flags", "flags": []}})
    assert "| recipe | `x.flags` | 0.800 [0.700, 0.850] | 0.700 [0.700, 0.850] |" in table


def test_a_finished_variant_is_not_trained_again(tmp_path, monkeypatch):
    _fake_run(tmp_path / "done")
    monkeypatch.setattr(ablation, "run_variant", lambda *a: pytest.fail("ran again"))
    assert ablation.main(["--workdir", str(tmp_path), "--base", "configs/x.flags",
                          "--variant", "done=--epochs=1"]) == 0
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["rows"]["done"]["flags"] == ["--epochs=1"]
    assert "| done | `x.flags --epochs=1` |" in (tmp_path / "ablation.md").read_text()
    _fake_run(tmp_path / "other")  # another base later: both rows in the table
    ablation.main(["--workdir", str(tmp_path), "--base", "configs/y.flags",
                   "--variant", "other="])
    table = (tmp_path / "ablation.md").read_text()
    assert "| done | `x.flags --epochs=1` |" in table and "| other | `y.flags` |" in table


def test_a_failing_variant_stops_with_its_log(tmp_path):
    with pytest.raises(RuntimeError, match="bad.log"):
        ablation.run_variant("configs/does-not-exist.flags", str(tmp_path), "bad", [])


def test_the_shipped_variants_file_parses_and_adds_the_common_flags(tmp_path, monkeypatch):
    ran = {}

    def fake_run(base, workdir, name, flags):
        ran[name] = flags
        _fake_run(tmp_path / name)
    monkeypatch.setattr(ablation, "run_variant", fake_run)
    ablation.main(["--workdir", str(tmp_path), "--base", "configs/cnn_recipe.flags",
                   "--variants_file", "configs/ablation_recipe.txt", "--flags=--epochs=2"])
    assert ran["recipe"] == ["--epochs=2"] and ran["no_ema"] == ["--epochs=2", "--ema_decay=0"]
    assert len(ran) >= 10


def test_no_variants_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit):
        ablation.main(["--workdir", str(tmp_path), "--base", "b.flags"])
