"""benchmarks.within_source on diagnosis protocol runs: the in-source validation balanced
accuracy pooled and within each training source, on hand-written protocol.json and
predictions.csv (no model is trained); the binary task's output keeps its keys."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from benchmarks import protocol, within_source

CLASSES = ["nevus", "melanoma", "bkl"]
# source a: nevus and melanoma, b: bkl and melanoma, c: nevus only (no balanced accuracy)
TRUE = {"a": [0] * 6 + [1] * 4, "b": [2] * 6 + [1] * 4, "c": [0] * 5}
SOURCE_GUESS = {"a": 0, "b": 2, "c": 0}  # each source's commonest diagnosis


def _ids(source: str) -> list[str]:
    return [f"{source}{i:02d}" for i in range(len(TRUE[source]))]


def _source_of() -> dict[str, str]:
    return {i: s for s in TRUE for i in _ids(s)}


def _rows(sources, perfect: bool) -> list[tuple[str, str, str, str]]:
    """Validation rows of `sources`: the true class, or each source's commonest diagnosis."""
    return [("validation", i, CLASSES[t], CLASSES[t if perfect else SOURCE_GUESS[s]])
            for s in sources for i, t in zip(_ids(s), TRUE[s])]


def _write_scores(folder, rows) -> None:
    """What trainer.cnn.evaluate writes for a diagnosis run (the columns read here)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"task": "diagnosis", "classes": CLASSES}))
    lines = ["split,image_id,label,predicted"] + [",".join(r) for r in rows]
    lines.append("test,zz_test_only,melanoma,nevus")  # another split: not read
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_a_model_that_only_tells_sources_apart_is_at_chance_within_each_source():
    """Predicting each source's commonest diagnosis: nevus and bkl are always right pooled
    (each lives in one source), melanoma never, so the pooled balanced accuracy is 2/3 while
    within a or b it is 1/2, a constant guess over two classes; c has one class: left out."""
    rows = _rows("abc", perfect=False)
    ids = [r[1] for r in rows]
    true = np.array([CLASSES.index(r[2]) for r in rows])
    predicted = np.array([CLASSES.index(r[3]) for r in rows])
    result = within_source.balanced_accuracy_within_sources(ids, true, predicted, CLASSES,
                                                            _source_of())
    assert result["pooled"] == pytest.approx(2 / 3)
    assert result["pooled"] == pytest.approx(balanced_accuracy_score(true, predicted))
    assert {n: s["balanced_accuracy"] for n, s in result["sources"].items()} == {"a": 0.5,
                                                                                 "b": 0.5}
    assert result["sources"]["a"]["classes_counted"] == {"nevus": 6, "melanoma": 4}
    assert result["sources"]["b"] == {"balanced_accuracy": 0.5, "images": 10,
                                      "classes_counted": {"melanoma": 4, "bkl": 6},
                                      "recall": {"melanoma": 0.0, "bkl": 1.0}}
    with pytest.raises(protocol.ProtocolError, match=r"1 image ids have no source.*'zz'"):
        within_source.balanced_accuracy_within_sources(ids + ["zz"], np.r_[true, 0],
                                                       np.r_[predicted, 0], CLASSES,
                                                       _source_of())


def _diagnosis_workdir(tmp_path):
    """Sources a and b held out, two seeds each; row a validates on b and c, row b on a and c.
    Row a: seed 0 perfect, seed 1 guesses by source; row b: the other way round."""
    workdir = tmp_path / "w"
    for held, others, heldout in (("a", "bc", 0.40), ("b", "ac", 0.35)):
        for k, perfect in enumerate((held == "a", held == "b")):
            _write_scores(workdir / "runs" / held / f"seed_{k}" / "protocol" / "in_source",
                          _rows(others, perfect))
    summary = {"balanced_accuracy": {"mean": None}}
    rows = {s: {"in_source_validation": summary,
                "heldout": {"balanced_accuracy": {"mean": b}}} for s, b in (("a", 0.40),
                                                                            ("b", 0.35))}
    (workdir / "protocol.json").write_text(json.dumps({
        "task": "diagnosis", "flags": ["--task=diagnosis"], "engine_flags": [], "seeds": 2,
        "first_seed": 0, "scores_folder": "protocol", "runs_from": "", "rows": rows}))
    metadata = tmp_path / "meta.csv"
    metadata.write_text("image_id,dataset\n" + "".join(f"{i},{s}\n"
                                                       for i, s in _source_of().items()))
    return workdir, metadata


def test_a_diagnosis_protocol_run_is_scored_by_balanced_accuracy_not_refused(tmp_path):
    workdir, metadata = _diagnosis_workdir(tmp_path)
    out = tmp_path / "elsewhere"
    assert within_source.main([f"--workdir={workdir}", f"--metadata_csv={metadata}",
                               f"--output={out}"]) == 0
    assert not (workdir / "within_source.json").exists()  # --output, not the workdir
    result = json.loads((out / "within_source.json").read_text())
    assert result["task"] == "diagnosis" and result["metric"] == "balanced_accuracy"
    a = result["rows"]["a"]
    # pooled over b and c: seed 0 perfect (1), seed 1 by source (nevus 1, bkl 1, melanoma 0)
    assert a["pooled_validation_balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert a["within_source_validation_balanced_accuracy"] == {"b": pytest.approx(0.75)}
    assert a["mean_within_source_balanced_accuracy"] == pytest.approx(0.75)
    assert a["classes_counted"] == {"b": {"melanoma": 4, "bkl": 6}}  # c: one class, left out
    assert a["heldout_balanced_accuracy"] == 0.40
    assert not any("auc" in key for key in a)
    # each source against itself: a within a when trained on (row b) 0.75, held out 0.40
    assert result["fair_gap"] == {
        "a": {"within_source_reference": pytest.approx(0.75), "runs": 1,
              "heldout_balanced_accuracy": 0.40, "gap": pytest.approx(0.35)},
        "b": {"within_source_reference": pytest.approx(0.75), "runs": 1,
              "heldout_balanced_accuracy": 0.35, "gap": pytest.approx(0.40)}}
    table = (out / "within_source.md").read_text()
    assert ("| held out | in-source val balanced accuracy, pooled | within each training "
            "source | mean within | held-out balanced accuracy |") in table
    assert "| a | 0.833 | b 0.750 (2 classes) | 0.750 | 0.400 |" in table
    assert "| b | 0.750 (1) | 0.350 | +0.400 |" in table


def test_an_unknown_task_is_refused_by_name(tmp_path, capsys):
    workdir, metadata = _diagnosis_workdir(tmp_path)
    meta = json.loads((workdir / "protocol.json").read_text())
    (workdir / "protocol.json").write_text(json.dumps({**meta, "task": "segmentation"}))
    assert within_source.main([f"--workdir={workdir}", f"--metadata_csv={metadata}"]) == 2
    assert (f"{workdir}/protocol.json ran the segmentation task: within_source scores "
            "['binary', 'diagnosis']") in capsys.readouterr().err


def test_the_binary_output_keeps_its_auc_keys_and_numbers(tmp_path):
    """A binary workdir (no "task": written before the diagnosis task) whose scores only tell
    sources apart: pooled AUC high, 0.5 within each source, the same keys and table as before
    the diagnosis task was added, plus "metric"."""
    workdir, source_of = tmp_path / "w", {}
    lines = ["image_id,split,label,probability"]
    for source, positives, score in (("a", 9, 0.9), ("b", 1, 0.1)):
        for i in range(10):
            source_of[f"{source}{i}"] = source
            lines.append(f"{source}{i},validation,{int(i < positives)},{score}")
    for k in range(2):
        folder = workdir / "runs" / "c" / f"seed_{k}" / "protocol" / "in_source"
        folder.mkdir(parents=True)
        (folder / "predictions.csv").write_text("\n".join(lines) + "\n")
    (workdir / "protocol.json").write_text(json.dumps({
        "flags": [], "engine_flags": [], "seeds": 2,
        "rows": {"c": {"heldout": {"auc": {"mean": 0.6}}}}}))
    result = within_source.summarise(str(workdir), source_of)
    assert result["metric"] == "auc"
    assert result["rows"]["c"] == {"pooled_validation_auc": pytest.approx(0.9),
                                   "within_source_validation_auc": {"a": 0.5, "b": 0.5},
                                   "mean_within_source_auc": 0.5,
                                   "positives": {"a": 9, "b": 1}, "heldout_auc": 0.6}
    assert result["fair_gap"] == {}  # a and b were never held out
    table = within_source.markdown(result)
    assert ("| held out | in-source val AUC, pooled | within each training source | mean "
            "within | held-out AUC |") in table
    assert "| c | 0.900 | a 0.500 (9), b 0.500 (1) | 0.500 | 0.600 |" in table


def test_heldout_images_are_scored_within_each_group_of_another_column(tmp_path, capsys):
    """Grouped by how each diagnosis was confirmed, not by source: held-out source c's images
    are scored within each confirmation type, beside the in-source rows of the same type.
    c's excised lesions are ranked at random and its follow-up ones perfectly: pooled, c's AUC
    sits between the two, and only the split shows which kind of image the model fails on."""
    workdir = tmp_path / "w"
    confirmed, in_source, heldout = {}, ["image_id,split,label,probability"], \
        ["image_id,split,label,probability"]
    for i in range(8):  # in source: both kinds ranked perfectly
        for kind in ("histo", "follow_up"):
            confirmed[f"in_{kind}{i}"] = kind
            in_source.append(f"in_{kind}{i},validation,{int(i < 4)},{0.2 + 0.6 * (i < 4)}")
    histo_scores = [0.3, 0.7, 0.45, 0.6, 0.4, 0.5]   # labels 1,1,1,0,0,0 below: 4 of 9 pairs
    for i, score in enumerate(histo_scores):
        confirmed[f"c_histo{i}"] = "histo"
        heldout.append(f"c_histo{i},test,{int(i < 3)},{score}")
    for i in range(6):
        confirmed[f"c_follow_up{i}"] = "follow_up"
        heldout.append(f"c_follow_up{i},train,{int(i < 2)},{0.9 if i < 2 else 0.1}")
    # seed 1 ranks c's follow-up images backwards: 0 there, so the seeds' mean is 0.5
    backwards = [line.replace(",0.9", ",0.05") if "c_follow_up" in line else line
                 for line in heldout]
    for k in range(2):
        run = workdir / "runs" / "c" / f"seed_{k}" / "protocol"
        for name, lines in (("in_source", in_source), ("heldout", backwards if k else heldout)):
            (run / name).mkdir(parents=True)
            (run / name / "predictions.csv").write_text("\n".join(lines) + "\n")
    (workdir / "protocol.json").write_text(json.dumps({
        "flags": [], "engine_flags": [], "seeds": 2,
        "rows": {"c": {"heldout": {"auc": {"mean": 0.7}}}}}))
    result = within_source.summarise(str(workdir), confirmed, heldout_within_groups=True,
                                     column="dx_type")
    row = result["rows"]["c"]
    assert row["within_source_validation_auc"] == {"follow_up": 1.0, "histo": 1.0}
    assert row["heldout_within_auc"] == {"follow_up": 0.5, "histo": pytest.approx(4 / 9)}
    assert 4 / 9 == pytest.approx(roc_auc_score([1, 1, 1, 0, 0, 0], histo_scores))
    assert result["heldout_within_groups"] and result["group_column"] == "dx_type"
    table = within_source.markdown(result)
    assert "| within each dx_type value | mean within | held-out AUC | held out, within each " \
        "dx_type value |" in table
    assert "| 0.700 | follow_up 0.500, histo 0.444 |" in table
    in_source_only = within_source.summarise(str(workdir), confirmed, column="dx_type")
    assert "heldout_within_auc" not in in_source_only["rows"]["c"]
    assert "| within each dx_type value | mean within | held-out AUC |\n" in \
        within_source.markdown(in_source_only)
    with pytest.raises(SystemExit):
        within_source.main([f"--workdir={workdir}", "--heldout_within_groups"])
    assert "--heldout_within_groups needs --metadata_csv" in capsys.readouterr().err


def test_diagnosis_recall_within_each_group_in_source_and_held_out(tmp_path):
    """Grouped by another column (kind x: even ids, y: odd): per-class recall of the training
    sources' validation rows against the held-out source's rows, mean over seeds, equal to
    sklearn's recall on each subset."""
    from sklearn.metrics import recall_score

    workdir, _ = _diagnosis_workdir(tmp_path)
    kind_of = {i: "xy"[int(i[1:]) % 2] for i in _source_of()} | {"zz_test_only": "z"}
    held_rows = {0: _rows("a", perfect=True), 1: [(s, i, t, "nevus")
                                                  for s, i, t, _ in _rows("a", True)]}
    for k, rows in held_rows.items():
        _write_scores(workdir / "runs" / "a" / f"seed_{k}" / "protocol" / "heldout", rows)
        _write_scores(workdir / "runs" / "b" / f"seed_{k}" / "protocol" / "heldout",
                      _rows("b", perfect=True))
    result = within_source.summarise(str(workdir), kind_of, heldout_within_groups=True,
                                     column="kind")
    row = result["rows"]["a"]

    def expected(rows_per_seed, kind, cls):
        recalls = []
        for rows in rows_per_seed:
            picked = [r for r in rows if r[0] == "validation" and kind_of[r[1]] == kind]
            true = [r[2] == cls for r in picked]
            recalls.append(recall_score(true, [r[3] == cls for r in picked]))
        return pytest.approx(np.mean(recalls))
    assert row["heldout_recall_within"]["x"] == {
        "nevus": expected(held_rows.values(), "x", "nevus"),
        "melanoma": expected(held_rows.values(), "x", "melanoma")}
    assert row["heldout_recall_within"]["x"]["melanoma"] == 0.5  # seed 0 all, seed 1 none
    inside = [_rows("bc", perfect=True), _rows("bc", perfect=False)]
    assert row["validation_recall_within"]["y"]["melanoma"] == expected(inside, "y", "melanoma")
    table = within_source.markdown(result)
    assert "| held out | group | recall, in source → held out |" in table
    assert "| a | x | nevus 1.00 → 1.00, melanoma 0.50 → 0.50 |" in table
