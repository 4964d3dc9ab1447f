"""benchmarks.compare and ensemble on diagnosis protocol runs: balanced accuracy
paired over the images every run scored, refusals naming both files, on hand-written
protocol.json and predictions.csv (no model is trained)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from benchmarks import compare, ensemble, protocol, protocol_diagnosis as pd
from trainer.core import metrics

CLASSES = ["nevus", "melanoma", "bkl"]
IDS = [f"ISIC_{i:07d}" for i in range(12)]
TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2])


def _noisy(rng, accuracy: float) -> np.ndarray:
    """Class probabilities whose argmax is the true class with about `accuracy`."""
    right = rng.random(TRUE.size) < accuracy
    top = np.where(right, TRUE, (TRUE + rng.integers(1, 3, TRUE.size)) % 3)
    p = rng.random((TRUE.size, 3)) * 0.3
    p[np.arange(TRUE.size), top] += 1.0
    return p / p.sum(axis=1, keepdims=True)


def _write_run(folder, probabilities, classes=CLASSES, ids=IDS, true=TRUE):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"task": "diagnosis", "classes": classes}))
    lines = ["split,image_id,label,predicted," + ",".join(f"p_{c}" for c in classes)]
    lines += [",".join(["all", i, classes[t], classes[int(p.argmax())], *map(str, p)])
              for i, t, p in zip(ids, true, probabilities)]
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n")


def _workdir(tmp_path, name, accuracy, seed, sources=("a", "b"), classes=CLASSES,
             first_seed=0, task="diagnosis"):
    """A diagnosis protocol workdir with two seeds per held-out source; returns (path,
    {source: [probabilities per seed]})."""
    rng = np.random.default_rng(seed)
    workdir, probabilities = tmp_path / name, {}
    for source in sources:
        probabilities[source] = [_noisy(rng, accuracy) for _ in range(2)]
        for k, p in enumerate(probabilities[source], start=first_seed):
            _write_run(workdir / "runs" / source / f"seed_{k}" / "protocol" / "heldout", p,
                       classes)
    summary = {"classes": classes}
    (workdir / "protocol.json").write_text(json.dumps({
        "task": task, "flags": ["--task=diagnosis"], "engine_flags": [], "eval_flags": [],
        "seeds": 2, "first_seed": first_seed, "scores_folder": "protocol", "runs_from": "",
        "rows": {s: {"in_source_validation": summary, "heldout": summary} for s in sources}}))
    return str(workdir), probabilities


def _ba(probabilities) -> float:
    return balanced_accuracy_score(TRUE, probabilities.argmax(axis=1))


def test_paired_difference_with_the_auc_is_paired_auc_difference():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 80)
    base = [y + rng.normal(0, 1.0, 80) for _ in range(3)]
    cand = [y + rng.normal(0, 0.5, 80) for _ in range(2)]
    general = metrics.paired_difference(y, base, cand, roc_auc_score, resamples=50, seed=4)
    auc = metrics.paired_auc_difference(y, base, cand, resamples=50, seed=4)
    assert auc["positives"] == int(y.sum())
    assert np.array_equal(general.pop("bootstrap"), auc.pop("bootstrap"))
    assert general == {k: v for k, v in auc.items() if k != "positives"}
    with pytest.raises(ValueError, match=r">= 2 seeds per recipe.*1 baseline"):
        metrics.paired_difference(y, base[:1], cand, roc_auc_score)
    with pytest.raises(ValueError, match=r"runs of as many cases: labels \(80,\), runs \[\(79,\)"):
        metrics.paired_difference(y, [base[0][:79], base[1]], cand, roc_auc_score)


def test_compare_two_diagnosis_runs_on_balanced_accuracy_paired_over_images(tmp_path):
    base, pb = _workdir(tmp_path, "base", 0.5, seed=0)
    cand, pc = _workdir(tmp_path, "cand", 0.9, seed=1)
    result = compare.compare(base, cand, resamples=200)
    assert result["task"] == "diagnosis" and result["metric"] == "balanced accuracy"
    for source in ("a", "b"):
        row = result["rows"][source]
        assert row["baseline"]["per_seed"] == pytest.approx([_ba(p) for p in pb[source]])
        assert row["candidate"]["per_seed"] == pytest.approx([_ba(p) for p in pc[source]])
        expected = np.mean([_ba(p) for p in pc[source]]) - np.mean([_ba(p) for p in pb[source]])
        assert row["difference"] == pytest.approx(expected)
        # one draw of image indices for all four runs, as case_bootstrap gives it
        runs = [[p.argmax(axis=1) for p in probs] for probs in (pb[source], pc[source])]
        draws, _ = metrics.case_bootstrap(TRUE, lambda idx: np.mean(
            [pd.balanced_accuracy(TRUE[idx], r[idx]) for r in runs[1]]) - np.mean(
            [pd.balanced_accuracy(TRUE[idx], r[idx]) for r in runs[0]]),
            resamples=200, seed=0)
        assert row["pooled_ci"] == pytest.approx(list(metrics.percentile_interval(draws, 0.95)))
    mean = result["rows"]["mean over sources"]
    assert mean["difference"] == pytest.approx(
        np.mean([result["rows"][s]["difference"] for s in ("a", "b")]))
    assert mean["difference"] > 0 and "bootstrap" not in mean
    out = tmp_path / "out"
    assert compare.main([f"--baseline={base}", f"--candidate={cand}", f"--output={out}",
                         "--bootstrap=20"]) == 0
    table = (out / "compare.md").read_text()
    assert "held-out balanced accuracy, mean over seeds" in table
    assert "| mean over sources |" in table


def test_compare_refuses_a_task_mix_or_other_classes_naming_both_files(tmp_path, capsys):
    base, _ = _workdir(tmp_path, "base", 0.5, seed=0)
    binary, _ = _workdir(tmp_path, "binary", 0.5, seed=1, task="binary")
    with pytest.raises(protocol.ProtocolError, match=f"baseline {base} ran the diagnosis task, "
                       f"candidate {binary} the binary task"):
        compare.compare(base, binary)
    other = CLASSES[::-1]
    renamed, _ = _workdir(tmp_path, "renamed", 0.5, seed=2, classes=other)
    assert compare.main([f"--baseline={base}", f"--candidate={renamed}",
                         f"--output={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert (f"held out a: baseline {base} has the classes {CLASSES}, candidate {renamed} "
            f"{other}") in err


def test_compare_refuses_diagnosis_runs_that_scored_other_images(tmp_path):
    base, _ = _workdir(tmp_path, "base", 0.5, seed=0)
    cand, pc = _workdir(tmp_path, "cand", 0.9, seed=1)
    short = tmp_path / "cand" / "runs" / "b" / "seed_1" / "protocol" / "heldout"
    _write_run(short, pc["b"][1][:-1], ids=IDS[:-1], true=TRUE[:-1])
    with pytest.raises(protocol.ProtocolError, match=f"different images or classes: {short} vs "
                       r".*: 11 vs 12 image ids, first differing id ISIC_0000011"):
        compare.compare(base, cand, resamples=5)


def test_a_diagnosis_ensemble_takes_the_argmax_of_mean_class_probabilities(tmp_path):
    first = np.array([[0.6, 0.4, 0.0], [0.1, 0.2, 0.7]])
    second = np.array([[0.0, 0.9, 0.1], [0.1, 0.6, 0.3]])
    assert ensemble.ensemble_classes([first, second]).tolist() == [1, 2]
    one, p1 = _workdir(tmp_path, "one", 0.6, seed=0)
    two, p2 = _workdir(tmp_path, "two", 0.6, seed=1, first_seed=2)
    result = ensemble.ensembles([one, two], resamples=50)
    assert result["task"] == "diagnosis"
    for source in ("a", "b"):
        row = result["rows"][source]
        assert row["baseline"]["per_seed"] == pytest.approx(
            [_ba(p) for p in p1[source] + p2[source]])
        assert row["candidate"]["per_seed"] == pytest.approx(
            [balanced_accuracy_score(TRUE, np.mean(p[source], axis=0).argmax(axis=1))
             for p in (p1, p2)])
    assert "Held-out balanced accuracy" in ensemble.markdown(result)
    binary, _ = _workdir(tmp_path, "binary", 0.6, seed=3, task="binary")
    with pytest.raises(protocol.ProtocolError, match="different tasks"):
        ensemble.ensembles([one, binary])


def test_read_probabilities_names_a_missing_column(tmp_path):
    _write_run(tmp_path / "r", np.eye(3)[TRUE])
    assert pd.read_probabilities(str(tmp_path / "r"), None).argmax(axis=1).tolist() == \
        TRUE.tolist()
    text = (tmp_path / "r" / "predictions.csv").read_text().replace("p_bkl", "p_other")
    (tmp_path / "r" / "predictions.csv").write_text(text)
    with pytest.raises(ValueError, match=r"lacks the columns \['p_bkl'\]"):
        pd.read_probabilities(str(tmp_path / "r"), None)
