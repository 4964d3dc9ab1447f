"""benchmarks.compare --score_class: a diagnosis protocol run scored as p(NAME) one-vs-rest
against a NAME-vs-rest binary run on the held-out AUC, on hand-written protocol folders (no
model is trained); refusals when the two sides scored other images or other labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmarks import compare, protocol

CLASSES = ["nevus", "melanoma", "bkl", "bcc"]
IDS = [f"ISIC_{i:07d}" for i in range(16)]
TRUE = np.repeat(np.arange(4), 4)  # four images of each class
MELANOMA = (TRUE == 1).astype(int)
SOURCES = ("a", "b")


def _protocol_json(workdir, task, engine_flags, seeds=2):
    rows = {s: {"in_source_validation": {}, "heldout": {"classes": CLASSES}} for s in SOURCES}
    (workdir / "protocol.json").write_text(json.dumps({
        "task": task, "flags": [f"--task={task}"], "engine_flags": engine_flags,
        "eval_flags": [], "seeds": seeds, "first_seed": 0, "scores_folder": "protocol",
        "runs_from": "", "rows": rows}))


def _heldout(workdir, source, k):
    folder = workdir / "runs" / source / f"seed_{k}" / "protocol" / "heldout"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _diagnosis(tmp_path, name, seed, classes=CLASSES, keep=slice(None)):
    """A diagnosis workdir, two seeds per source; returns (path, {source: [p_melanoma-like
    column of `classes`' second class per seed]}) (images `keep` only)."""
    rng = np.random.default_rng(seed)
    workdir, column = tmp_path / name, {}
    for source in SOURCES:
        column[source] = []
        for k in range(2):
            p = rng.random((TRUE.size, len(classes)))
            p[np.arange(TRUE.size), TRUE] += 0.4
            p /= p.sum(axis=1, keepdims=True)
            ids, true, p = np.array(IDS)[keep], TRUE[keep], p[keep]
            column[source].append(p[:, 1])
            folder = _heldout(workdir, source, k)
            (folder / "report.json").write_text(json.dumps({"task": "diagnosis",
                                                            "classes": classes}))
            lines = ["split,image_id,label,predicted," + ",".join(f"p_{c}" for c in classes)]
            lines += [",".join(["all", i, classes[t], classes[int(q.argmax())], *map(str, q)])
                      for i, t, q in zip(ids, true, p)]
            (folder / "predictions.csv").write_text("\n".join(lines) + "\n")
    _protocol_json(workdir, "diagnosis", [])
    return str(workdir), column


def _binary(tmp_path, name, seed, labels=MELANOMA):
    """A binary workdir (written with a --dx_map), two seeds per source, its rows in reverse
    id order; returns (path, {source: [probabilities per seed, in id order]})."""
    rng = np.random.default_rng(seed)
    workdir, scores = tmp_path / name, {}
    for source in SOURCES:
        scores[source] = [np.clip(0.3 * labels + rng.random(labels.size), 0, 1)
                          for _ in range(2)]
        for k, s in enumerate(scores[source]):
            folder = _heldout(workdir, source, k)
            rows = [f"{i},all,{y},{p:.6f}" for i, y, p in zip(IDS, labels, s)][::-1]
            (folder / "predictions.csv").write_text(
                "\n".join(["image_id,split,label,probability", *rows]) + "\n")
            (folder / "report.json").write_text(json.dumps({"threshold": {"threshold": 0.5}}))
            scores[source][k] = np.round(s, 6)
    _protocol_json(workdir, "binary", ["--dx_map=bcc:benign,akiec:benign"])
    return str(workdir), scores


def test_a_diagnosis_candidate_ranks_melanoma_against_a_binary_baseline(tmp_path):
    base, pb = _binary(tmp_path, "binary", seed=0)
    cand, pc = _diagnosis(tmp_path, "diagnosis", seed=1)
    result = compare.compare(base, cand, resamples=100, score_class="melanoma")
    assert result["metric"] == "AUC" and result["score_class"] == "melanoma"
    assert result["tasks"] == {"baseline": "binary", "candidate": "diagnosis"}
    for source in SOURCES:
        row = result["rows"][source]
        base_auc = [roc_auc_score(MELANOMA, s) for s in pb[source]]
        cand_auc = [roc_auc_score(MELANOMA, p) for p in pc[source]]
        assert row["baseline"]["per_seed"] == pytest.approx(base_auc)
        assert row["candidate"]["per_seed"] == pytest.approx(cand_auc)
        assert row["difference"] == pytest.approx(np.mean(cand_auc) - np.mean(base_auc))
        assert row["cases"] == 16 and row["positives"] == 4
    assert result["rows"]["mean over sources"]["difference"] == pytest.approx(
        np.mean([result["rows"][s]["difference"] for s in SOURCES]))
    swapped = compare.compare(cand, base, resamples=100, score_class="melanoma")
    assert swapped["rows"]["a"]["difference"] == pytest.approx(
        -result["rows"]["a"]["difference"])
    table = compare.markdown(result)
    assert "The diagnosis candidate was scored as p(melanoma) one-vs-rest" in table
    assert "held-out AUC" in table and "| mean over sources |" in table


def test_the_cli_writes_compare_json_or_returns_2_with_the_reason(tmp_path, capsys):
    base, _ = _binary(tmp_path, "binary", seed=0)
    cand, _ = _diagnosis(tmp_path, "diagnosis", seed=1)
    out = tmp_path / "out"
    assert compare.main([f"--baseline={base}", f"--candidate={cand}", f"--output={out}",
                         "--bootstrap=20", "--score_class=melanoma"]) == 0
    written = json.loads((out / "compare.json").read_text())
    assert written["score_class"] == "melanoma" and set(written["rows"]) == {
        "a", "b", "mean over sources"}
    assert "p(melanoma) one-vs-rest" in (out / "compare.md").read_text()
    # without --score_class the task mix is refused as before
    assert compare.main([f"--baseline={base}", f"--candidate={cand}",
                         f"--output={tmp_path / 'x'}"]) == 2
    assert "ran the binary task" in capsys.readouterr().err
    assert compare.main([f"--baseline={base}", f"--candidate={cand}",
                         f"--output={tmp_path / 'y'}", "--score_class=dermatofibroma"]) == 2
    err = capsys.readouterr().err
    assert f"no class 'dermatofibroma' to score, its classes are {CLASSES}" in err
    assert not (tmp_path / "y").exists()


def test_a_diagnosis_side_that_excluded_images_is_refused_naming_them(tmp_path):
    base, _ = _binary(tmp_path, "binary", seed=0)
    cand, _ = _diagnosis(tmp_path, "diagnosis", seed=1, keep=slice(2, None))
    with pytest.raises(protocol.ProtocolError, match=(
            rf"held out a: baseline {base} vs candidate {cand}: 16 vs 14 image ids; 2 only in "
            r"the baseline \(e.g. \['ISIC_0000000', 'ISIC_0000001'\]\), 0 only in the "
            r"candidate")):
        compare.compare(base, cand, resamples=5, score_class="melanoma")


def test_a_binary_side_labelled_malignant_vs_benign_is_refused(tmp_path):
    malignant = np.isin(TRUE, [1, 3]).astype(int)  # melanoma and bcc
    base, _ = _binary(tmp_path, "binary", seed=0, labels=malignant)
    cand, _ = _diagnosis(tmp_path, "diagnosis", seed=1)
    with pytest.raises(protocol.ProtocolError, match=(
            r"held out a: .*: 4 of 16 images labelled otherwise \(4 positive only in the "
            r"baseline, 0 only in the candidate; first ISIC_0000012\): a side's label is not "
            r"melanoma vs the rest")):
        compare.compare(base, cand, resamples=5, score_class="melanoma")


def test_score_class_needs_a_diagnosis_side_that_has_the_class(tmp_path):
    one, _ = _binary(tmp_path, "one", seed=0)
    two, _ = _binary(tmp_path, "two", seed=1)
    with pytest.raises(protocol.ProtocolError, match="both ran the binary task, no diagnosis"):
        compare.compare(one, two, score_class="melanoma")
    other = ["nevus", "mel", "bkl", "bcc"]
    diagnosis, _ = _diagnosis(tmp_path, "diagnosis", seed=2, classes=other)
    with pytest.raises(protocol.ProtocolError, match=(
            r"heldout: no class 'melanoma' to score, its classes are \['nevus', 'mel', 'bkl', "
            r"'bcc'\]")):
        compare.compare(one, diagnosis, resamples=5, score_class="melanoma")


def test_two_diagnosis_runs_compare_on_the_auc_of_the_class(tmp_path):
    base, pb = _diagnosis(tmp_path, "base", seed=3)
    cand, pc = _diagnosis(tmp_path, "cand", seed=4)
    result = compare.compare(base, cand, resamples=20, score_class="melanoma")
    expected = (np.mean([roc_auc_score(MELANOMA, p) for p in pc["b"]])
                - np.mean([roc_auc_score(MELANOMA, p) for p in pb["b"]]))
    assert result["rows"]["b"]["difference"] == pytest.approx(expected)
    assert "The diagnosis baseline and candidate were scored" in compare.markdown(result)
