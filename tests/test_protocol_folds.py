"""The protocol's cross-validation (--folds): the fold datasets it asks the engine for, and
the out-of-fold row that pools every fold's test predictions, on faked steps (no model is
trained; the fold split itself is tested in test_splits and test_transforms)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from benchmarks import compare, protocol, protocol_folds
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
    assert set(engine) == {"fold_0_of_3", "fold_1_of_3", "fold_2_of_3"}  # no data/all
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
    # a recipe right on every image, compared on the cross-validated row
    monkeypatch.setattr(protocol, "_run", _fake_steps(tmp_path, true, [true, true], commands))
    assert protocol.main([a.replace("--workdir=w", "--workdir=w2") for a in args]) == 0
    assert compare.main(["--baseline=w", "--candidate=w2", "--output=c", "--bootstrap=50"]) == 0
    rows = json.loads((tmp_path / "c" / "compare.json").read_text())["rows"]
    assert rows[protocol_folds.CROSS_VALIDATED]["difference"] == pytest.approx(
        1.0 - np.mean(test["balanced_accuracy"]["per_seed"]))
    assert "every image of the download once" in (tmp_path / "c" / "compare.md").read_text()


def _binary_folds(tmp_path, labels, scores, thresholds, drop=None):
    """Three binary fold evaluations of images ISIC_000.. (image i in fold i % 3): fold k tests
    its own images at thresholds[k] and validates fold k+1's; `drop` leaves one image out of
    its fold's test split (a fold dataset written from another download, say)."""
    outputs = []
    for fold, threshold in enumerate(thresholds):
        rows = [{"split": split, "image_id": f"ISIC_{i:03d}", "label": str(int(labels[i])),
                 "probability": repr(float(scores[i])),
                 "predicted": str(int(scores[i] >= threshold))}
                for i in range(labels.size) for split, f in (("test", fold),
                                                             ("validation", (fold + 1) % 3))
                if i % 3 == f and (i, split) != (drop, "test")]
        _write(tmp_path / f"f{fold}", rows, {"threshold": {"threshold": threshold}})
        outputs.append(str(tmp_path / f"f{fold}"))
    return outputs


def test_out_of_fold_binary_rows_keep_their_own_folds_threshold(tmp_path):
    """Sensitivity of the pooled folds counts each image at its own model's threshold."""
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 60)
    scores = np.clip(0.4 * labels + rng.random(60) * 0.6, 0, 1)
    thresholds = (0.1, 0.5, 0.9)
    protocol_folds.write_out_of_fold(_binary_folds(tmp_path, labels, scores, thresholds),
                                     str(tmp_path / "cv"))
    y, p, t = protocol.read_scores(str(tmp_path / "cv"), "test")  # sorted by image id
    own = np.array([thresholds[i % 3] for i in range(60)])
    assert np.array_equal(y, labels) and np.allclose(p, scores) and np.allclose(t, own)
    summary = protocol.pooled([str(tmp_path / "cv")], "test", 20)
    expected = np.mean((scores >= own)[labels == 1])
    assert summary["sensitivity"]["per_seed"] == pytest.approx([expected])
    for one in thresholds:  # any one threshold for all would count otherwise
        assert expected != pytest.approx(np.mean((scores >= one)[labels == 1]))
    with pytest.raises(ValueError, match="per-case thresholds must be 60"):
        metrics.seed_summary(y, [p], [t[:5]], resamples=5)


def test_an_image_missing_from_a_folds_test_split_is_refused(tmp_path):
    labels = np.arange(30) % 2
    outputs = _binary_folds(tmp_path, labels, labels * 0.5 + 0.2, (0.5, 0.5, 0.5), drop=7)
    with pytest.raises(ValueError, match="f0 validated other images than .*f1 tested "
                                         r"\(1 differ, first ISIC_007\)"):
        protocol_folds.write_out_of_fold(outputs, str(tmp_path / "cv"))


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
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "protocol.json").write_text(json.dumps({"folds": 5}))
    assert protocol.parse_args(common + ["--folds=5", f"--runs_from={tmp_path}/cv"]).folds == 5
    for bad in (["--folds=5", "--holdout_sources=a"], ["--folds=2"],
                [f"--runs_from={tmp_path}/cv"], ["--folds=3", f"--runs_from={tmp_path}/cv"]):
        with pytest.raises(SystemExit):
            protocol.parse_args(common + bad)
