"""The protocol's cross-validation (--folds): the fold datasets it asks the engine for, and
the out-of-fold row that pools every fold's test predictions, on faked steps (no model is
trained; the fold split itself is tested in test_splits and test_transforms)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from benchmarks import protocol, protocol_folds
from trainer.core import metrics

pytestmark = pytest.mark.eager_steps  # no TensorFlow step runs here (conftest)

CLASSES = ["nevus", "melanoma", "bkl"]
FOLDS, IMAGES = 3, 45  # image i lies in fold i % 3


def _write(folder, rows, report):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report))
    with open(folder / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fake_steps(tmp_path, true, predicted, commands):
    """protocol._run's stand-in: the engine writes a manifest, the trainer a diagnosis run,
    the evaluator of fold k's run predicted[seed] of fold k's images as test and of fold k+1's
    as validation."""
    def fake_run(command, log):
        commands.append(command)
        flag = {w.split("=", 1)[0]: w.split("=", 1)[-1] for w in command[3:]}
        if command[2] == protocol.ENGINE:
            out = tmp_path / flag["--output"]
            out.mkdir(parents=True)
            rows = [{"split": "test", "label": "benign", "diagnosis": "nevus",
                     "source_collection": "a", "count": IMAGES}]
            (out / "manifest.json").write_text(json.dumps(
                {"counts": {"per_split_label_diagnosis_source": rows},
                 "config": {"folds": int(flag.get("--folds", 0)),
                            "fold": int(flag.get("--fold", 0))}}))
        elif command[2] == protocol.TRAINER:
            run_dir = tmp_path / flag["--workdir"]
            run_dir.mkdir(parents=True)
            (run_dir / "report.json").write_text(json.dumps({"task": "diagnosis"}))
            (run_dir / "classes.json").write_text(json.dumps(
                {"classes": CLASSES, "members": {c: [c] for c in CLASSES}}))
        else:
            fold = int(flag["--model"].split("fold_")[1].split("_")[0])
            seed = int(flag["--model"].rsplit("seed_", 1)[1])
            rows = [{"split": split, "image_id": f"ISIC_{i:03d}", "label": CLASSES[true[i]],
                     "predicted": CLASSES[predicted[seed][i]]}
                    for split, f in (("test", fold), ("validation", (fold + 1) % FOLDS))
                    for i in range(IMAGES) if i % FOLDS == f]
            _write(tmp_path / flag["--output"], rows,
                   {"task": "diagnosis", "classes": CLASSES,
                    "excluded_unknown": {"test": 1, "validation": 0},
                    "excluded_unseen": {"test": 0, "validation": 0}})
    return fake_run


def test_folds_train_once_per_fold_and_seed_and_pool_every_image_once(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    true = rng.integers(0, 3, IMAGES)
    predicted = [np.where(rng.random(IMAGES) < 0.7, true, (true + 1) % 3) for _ in range(2)]
    commands = []
    monkeypatch.setattr(protocol, "_run", _fake_steps(tmp_path, true, predicted, commands))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "x.flags").write_text("--epochs=1\n")
    args = ["--input=in", "--base=x.flags", "--workdir=w", "--image_size=64", "--seeds=2",
            "--bootstrap=50", f"--folds={FOLDS}", "--flags=--task=diagnosis"]
    assert protocol.main(args) == 0
    engine = {next(w for w in c if w.startswith("--output=")).split("/")[-1]: c
              for c in commands if c[2] == protocol.ENGINE}
    assert set(engine) == {"all", "fold_0_of_3", "fold_1_of_3", "fold_2_of_3"}
    assert engine["fold_2_of_3"][-2:] == ["--folds=3", "--fold=2"]
    trained = sorted(next(w for w in c if w.startswith("--data_dir=")) + " "
                     + next(w for w in c if w.startswith("--seed=")) for c in commands
                     if c[2] == protocol.TRAINER)
    assert trained == [f"--data_dir=w/data/fold_{k}_of_3 --seed={s}" for k in range(3)
                       for s in range(2)]
    result = json.loads((tmp_path / "w" / "protocol.json").read_text())
    assert result["folds"] == FOLDS
    row = result["rows"][protocol_folds.CROSS_VALIDATED]
    test = row["in_source_test"]
    assert test["cases"] == IMAGES == row["in_source_validation"]["cases"]
    assert test["balanced_accuracy"]["per_seed"] == pytest.approx(
        [balanced_accuracy_score(true, p) for p in predicted])
    assert test["excluded"]["unknown_diagnosis"] == FOLDS  # one per fold, summed
    assert result["rows"]["fold_1_of_3"]["in_source_test"]["cases"] == IMAGES // FOLDS
    table = (tmp_path / "w" / "protocol.md").read_text()
    assert "3-fold cross-validation" in table
    assert "Cross-validated test (3 folds, every image once): confusion matrix" in table
    # a second sitting reuses every run and score
    commands.clear()
    assert protocol.main(args) == 0 and commands == []


def test_out_of_fold_binary_rows_keep_their_own_folds_threshold(tmp_path):
    """Sensitivity of the pooled folds counts each image at its own model's threshold."""
    rng = np.random.default_rng(1)
    outputs, labels, scores, thresholds = [], [], [], []
    for fold, threshold in enumerate((0.1, 0.5, 0.9)):
        y = rng.integers(0, 2, 20)
        p = np.clip(0.4 * y + rng.random(20) * 0.6, 0, 1)
        rows = [{"split": "test", "image_id": f"ISIC_{fold}{i:02d}", "label": str(int(t)),
                 "probability": repr(float(s)), "predicted": str(int(s >= threshold))}
                for i, (t, s) in enumerate(zip(y, p))]
        _write(tmp_path / f"f{fold}", rows, {"threshold": {"threshold": threshold}})
        outputs.append(str(tmp_path / f"f{fold}"))
        labels.append(y), scores.append(p), thresholds.append(np.full(20, threshold))
    protocol_folds.write_out_of_fold(outputs, str(tmp_path / "cv"))
    y, p, t = protocol.read_scores(str(tmp_path / "cv"), "test")
    assert np.array_equal(y, np.concatenate(labels)) and np.allclose(t, np.concatenate(thresholds))
    summary = protocol.pooled([str(tmp_path / "cv")], "test", 20)
    expected = np.mean((p >= t)[y == 1])
    assert summary["sensitivity"]["per_seed"] == pytest.approx([expected])
    for one in (0.1, 0.5, 0.9):  # any one threshold for all would count otherwise
        assert expected != pytest.approx(np.mean((p >= one)[y == 1]))
    with pytest.raises(ValueError, match="per-case thresholds must be 60"):
        metrics.seed_summary(y, [p], [t[:5]], resamples=5)


def test_evaluations_that_are_not_folds_of_one_cross_validation_are_refused(tmp_path):
    row = {"split": "test", "image_id": "ISIC_1", "label": "nevus", "predicted": "nevus"}
    report = {"task": "diagnosis", "classes": CLASSES}
    _write(tmp_path / "a", [row], report)
    _write(tmp_path / "b", [row], report)
    _write(tmp_path / "c", [{**row, "image_id": "ISIC_2"}], {**report, "classes": CLASSES[:2]})
    with pytest.raises(ValueError, match="ISIC_1 is in the test split of both"):
        protocol_folds.write_out_of_fold([str(tmp_path / "a"), str(tmp_path / "b")],
                                         str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not scored like"):
        protocol_folds.write_out_of_fold([str(tmp_path / "a"), str(tmp_path / "c")],
                                         str(tmp_path / "out"))


def test_folds_replace_held_out_sources(tmp_path):
    base = tmp_path / "flags"
    base.write_text("--epochs=1\n")
    common = [f"--input={tmp_path}", f"--base={base}", f"--workdir={tmp_path}/w"]
    assert protocol.parse_args(common + ["--folds=5"]).holdout_sources == "none"
    assert protocol.parse_args(common).holdout_sources == "all"
    for bad in (["--folds=5", "--holdout_sources=a"], ["--folds=2"]):
        with pytest.raises(SystemExit):
            protocol.parse_args(common + bad)
