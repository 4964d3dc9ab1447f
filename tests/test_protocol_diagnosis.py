"""The protocol's diagnosis task: balanced accuracy (mean per-class recall over the classes
present) per held-out source, the paired pooled interval, per-class recall, the summed
confusion matrix and the table, on hand-made predictions (no model is trained)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from benchmarks import protocol, protocol_diagnosis as pd
from trainer.core import metrics

pytestmark = pytest.mark.eager_steps  # one to three steps each: tracing cost more (conftest)

CLASSES = ["nevus", "melanoma", "bkl", "bcc"]
TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
PRED = np.array([0, 0, 0, 1, 1, 0, 2, 2, 1, 3])


def test_balanced_accuracy_by_hand_counts_the_classes_present_without_warning():
    # recalls: nevus 3/4, melanoma 1/2, bkl 2/4; bcc has no true image and does not count
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # bcc predicted but absent: sklearn's warning is muted
        assert pd.balanced_accuracy(TRUE, PRED) == pytest.approx((0.75 + 0.5 + 0.5) / 3)
    assert pd.balanced_accuracy(TRUE, TRUE) == 1.0
    with pytest.raises(ValueError, match=r"in \[0, 4\), found \[7\]"):
        pd.seed_summary(TRUE, [np.r_[PRED[:-1], 7]], CLASSES, resamples=5)
    with pytest.raises(ValueError, match="equal non-empty"):
        pd.seed_summary(TRUE, [PRED[:-1]], CLASSES, resamples=5)


def test_seed_summary_lists_the_classes_counted_and_leaves_the_missing_one_out():
    other = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])  # a perfect seed
    s = pd.seed_summary(TRUE, [PRED, other], CLASSES, resamples=200, seed=3)
    ba = s["balanced_accuracy"]
    assert ba["per_seed"] == pytest.approx([7 / 12, 1.0])
    assert ba["mean"] == pytest.approx((7 / 12 + 1.0) / 2)
    assert ba["sd"] == pytest.approx(np.std([7 / 12, 1.0], ddof=1))
    assert s["classes_counted"] == {"nevus": 4, "melanoma": 2, "bkl": 4}
    assert s["per_class_recall"] == pytest.approx(
        {"nevus": 0.875, "melanoma": 0.75, "bkl": 0.75, "bcc": None})
    assert s["confusion_summed"] == [[7, 1, 0, 0], [1, 3, 0, 0], [0, 1, 6, 1], [0, 0, 0, 0]]
    assert s["cases"] == 10 and s["seeds"] == 2
    with pytest.raises(ValueError, match=">= 2 classes"):
        pd.seed_summary(np.zeros(5, int), [np.zeros(5, int)], CLASSES, resamples=5)


def test_the_pooled_interval_is_paired_across_seeds_and_holds_the_mean():
    rng = np.random.default_rng(0)
    true = rng.integers(0, 4, 500)
    seeds = [np.where(rng.random(500) < 0.7, true, rng.integers(0, 4, 500)) for _ in range(3)]
    s = pd.seed_summary(true, seeds, CLASSES, resamples=300, seed=5)
    low, high = s["balanced_accuracy"]["pooled_ci"]
    assert low < s["balanced_accuracy"]["mean"] < high and high - low < 0.12
    # the same draws of image indices for every seed: the mean over seeds of each draw
    draws, _ = metrics.case_bootstrap(
        true, lambda idx: np.mean([balanced_accuracy_score(true[idx], p[idx]) for p in seeds]),
        resamples=300, seed=5)
    assert [low, high] == pytest.approx(metrics.percentile_interval(draws, 0.95))


def _write_scores(folder, rows, classes=CLASSES, **excluded):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps({"task": "diagnosis", "classes": classes,
                                                    **excluded}))
    lines = ["split,image_id,label,predicted"] + [",".join(r) for r in rows]
    (folder / "predictions.csv").write_text("\n".join(lines) + "\n")


def test_pooled_reads_each_seeds_predictions_by_image_id(tmp_path):
    ids = [f"ISIC_{i:07d}" for i in range(10)]
    for k, predicted in enumerate([PRED, TRUE]):
        rows = [("test", i, CLASSES[t], CLASSES[p]) for i, t, p in zip(ids, TRUE, predicted)]
        _write_scores(tmp_path / f"s{k}", rows[::-1] if k else rows)  # order differs
    _write_scores(tmp_path / "s2", [("validation", "ISIC_9", "nevus", "nevus")]
                  + [("test", i, CLASSES[t], CLASSES[p]) for i, t, p in zip(ids, TRUE, TRUE)],
                  excluded_unknown={"validation": 1, "test": 2},
                  excluded_unseen={"validation": 0, "test": 3})
    s = pd.pooled([str(tmp_path / "s0"), str(tmp_path / "s1")], None, 50)
    assert s["balanced_accuracy"]["per_seed"] == pytest.approx([7 / 12, 1.0])
    assert s["excluded"] == {"unknown_diagnosis": None, "unseen_class": None}  # not recorded
    s2 = pd.pooled([str(tmp_path / "s2")], "test", 20)
    assert s2["cases"] == 10 and s2["excluded"] == {"unknown_diagnosis": 2, "unseen_class": 3}
    assert pd.pooled([str(tmp_path / "s2")], None, 20)["excluded"] == {
        "unknown_diagnosis": 3, "unseen_class": 3}
    with pytest.raises(ValueError, match=f"different images or classes: {tmp_path / 's2'} vs "
                       f"{tmp_path / 's0'}: 11 vs 10 image ids, first differing id ISIC_9"):
        pd.pooled([str(tmp_path / "s0"), str(tmp_path / "s2")], None, 5)
    _write_scores(tmp_path / "s3", [("test", i, CLASSES[t], CLASSES[p])
                                    for i, t, p in zip(ids, TRUE, TRUE)], classes=CLASSES[::-1])
    with pytest.raises(ValueError, match=r"s3 vs .*s0: classes \['bcc', 'bkl', 'melanoma', "
                       r"'nevus'\] vs \['nevus', 'melanoma', 'bkl', 'bcc'\]"):
        pd.pooled([str(tmp_path / "s0"), str(tmp_path / "s3")], None, 5)
    relabelled = TRUE.copy()
    relabelled[4] = 2
    _write_scores(tmp_path / "s4", [("test", i, CLASSES[t], CLASSES[t])
                                    for i, t in zip(ids, relabelled)])
    with pytest.raises(ValueError, match=r"s4 vs .*s0: image ISIC_0000004 labelled bkl vs "
                       r"melanoma \(1 labels differ\)"):
        pd.pooled([str(tmp_path / "s0"), str(tmp_path / "s4")], None, 5)


def test_a_held_out_source_needs_two_known_diagnoses():
    diagnoses = {"a": {"nevus": 50, "melanoma": 5}, "b": {"nevus": 30, "unknown": 4},
                 "c": {"nevus": 0, "bcc": 3, "": 2}}
    sources = {"a": {"benign": 50, "malignant": 5}, "b": {"benign": 34}, "c": {"benign": 5}}
    assert protocol.holdout_plan(sources, "all", diagnoses) == (["a"], {
        "b": "only ['nevus'] images: no balanced accuracy",
        "c": "only ['bcc'] images: no balanced accuracy"})
    manifest = {"counts": {"per_split_label_diagnosis_source": [
        {"split": "train", "label": "benign", "diagnosis": "nevus", "source_collection": "a",
         "count": 5},
        {"split": "test", "label": "benign", "diagnosis": "nevus", "source_collection": "a",
         "count": 2},
        {"split": "test", "label": "malignant", "diagnosis": "bcc", "source_collection": "a",
         "count": 1}]}}
    assert protocol.diagnoses_of(manifest) == {"a": {"nevus": 7, "bcc": 1}}


def test_the_task_comes_from_the_flags_only_to_plan(tmp_path):
    base = tmp_path / "x.flags"
    base.write_text("--epochs=1\n--task=binary\n")
    assert protocol.planned_task(str(base), []) == "binary"
    assert protocol.planned_task(str(base), ["--task=diagnosis"]) == "diagnosis"
    with pytest.raises(protocol.ProtocolError, match="--task=segmentation"):
        protocol.planned_task(str(base), ["--task=segmentation"])
    (tmp_path / "report.json").write_text(json.dumps({"config": {"task": "binary"}}))
    assert protocol.run_task(str(tmp_path)) == "binary"


def test_the_planned_task_reads_flagfiles_as_absl_does(tmp_path, monkeypatch):
    """Comment lines are skipped; a nested --flagfile is followed, relative to the cwd; the
    last value wins."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inner.flags").write_text("# --task=binary\n--task=diagnosis\n")
    (tmp_path / "outer.flags").write_text("--epochs=1\n# --task=binary (a comment)\n"
                                          "  // --task=binary\n--flagfile=configs/inner.flags\n")
    assert protocol.planned_task("outer.flags", []) == "diagnosis"
    (tmp_path / "last.flags").write_text("--flagfile=configs/inner.flags\n--task=binary\n")
    assert protocol.planned_task("last.flags", []) == "binary"
    assert protocol.planned_task("last.flags", ["--flagfile=configs/inner.flags"]) == "diagnosis"
    (tmp_path / "comment_only.flags").write_text("#--task=diagnosis\n")
    assert protocol.planned_task("comment_only.flags", []) == "binary"
    (tmp_path / "loop.flags").write_text("--flagfile=loop.flags\n--task=diagnosis\n")
    assert protocol.planned_task("loop.flags", []) == "diagnosis"  # absl ignores the loop
    (tmp_path / "missing.flags").write_text("--flagfile=nowhere.flags\n")
    with pytest.raises(protocol.ProtocolError, match="nowhere.flags"):
        protocol.planned_task("missing.flags", [])


def test_the_diagnosis_table_gives_the_classes_recall_and_confusion():
    s = pd.seed_summary(TRUE, [PRED, TRUE], CLASSES, resamples=50)
    table = protocol.markdown({
        "task": "diagnosis", "base": "configs/x.flags", "flags": ["--task=diagnosis"],
        "image_size": 64, "seeds": 2, "rows": {"a": {"in_source_validation": s,
                                                     "in_source_test": s, "heldout": s}},
        "skipped": {"b": "only ['nevus'] images: no balanced accuracy"}})
    assert f"| a | 10 (?, ?) | nevus 4, melanoma 2, bkl 4 | {pd.cell(s)} |" in table
    assert "| +0.000 |" in table
    assert "| 0.88 (4) | 0.75 (2) | 0.75 (4) | n/a |" in table
    assert "| bkl | 0 | 1 | 6 | 1 |" in table
    assert "| b | skipped: only ['nevus'] images: no balanced accuracy |" in table
    s["excluded"] = {"unknown_diagnosis": 2, "unseen_class": 1}
    table = protocol.markdown({
        "task": "diagnosis", "base": "configs/x.flags", "flags": ["--task=diagnosis"],
        "image_size": 64, "seeds": 2, "rows": {"a": {"in_source_validation": s,
                                                     "in_source_test": s, "heldout": s}},
        "skipped": {}})
    assert "| held out | images scored (excluded: unknown, unseen) |" in table
    assert f"| a | 10 (2, 1) | nevus 4, melanoma 2, bkl 4 | {pd.cell(s)} |" in table


MAPPING = {"classes": CLASSES[:3], "grouped_as_other": [],  # trainer.cnn.diagnosis's
           "index": {"nevus": 0, "melanoma": 1, "benign_keratosis": 2}}


def _fake_steps(tmp_path, rng, true, commands, mapping=MAPPING):
    """A stand-in for protocol._run: the engine writes a manifest (sources a, b: nevus and bkl,
    c: nevus), the trainer a diagnosis run with `mapping` as its classes.json, the evaluator
    predictions of `true`'s images ("b" held out, "a" in source)."""
    def fake_run(command, log):
        commands.append(command)
        flag = {w.split("=", 1)[0]: w.split("=", 1)[-1] for w in command[3:]}
        if command[2] == protocol.ENGINE:
            out = tmp_path / flag["--output"]
            out.mkdir(parents=True)
            rows = [{"split": "test", "label": "benign", "diagnosis": d, "source_collection": s,
                     "count": 9} for s in ("a", "b", "c") for d in ("nevus", "bkl")[:1 + (s < "c")]]
            (out / "manifest.json").write_text(json.dumps(
                {"counts": {"per_split_label_diagnosis_source": rows},
                 "config": {"train_fraction": float(flag.get("--train_fraction", 1.0))}}))
        elif command[2] == protocol.TRAINER:
            run_dir = tmp_path / flag["--workdir"]
            run_dir.mkdir(parents=True)
            (run_dir / "report.json").write_text(json.dumps({"task": "diagnosis"}))
            (run_dir / "classes.json").write_text(json.dumps(mapping))
        else:
            assert command[2] == protocol.EVALUATOR == "trainer.cnn.evaluate"
            source = "b" if flag["--splits"] == "all" else "a"  # b: the held-out images
            split = "test" if flag["--splits"] == "all" else None
            rows = [(sp, f"ISIC_{i}", CLASSES[t], CLASSES[(t + (rng.random() < 0.3)) % 3])
                    for sp in ([split] if split else ["validation", "test"])
                    for i, t in enumerate(true[source])]
            _write_scores(tmp_path / flag["--output"], rows,
                          excluded_unknown={"test": 2}, excluded_unseen={"test": 1})
    return fake_run


def test_a_diagnosis_protocol_trains_with_the_same_command_and_scores_every_source(
        tmp_path, monkeypatch):
    """The engine, trainer and scorer are faked: what the protocol asks of them and how it
    pools what they wrote."""
    rng = np.random.default_rng(1)
    true = {"a": rng.integers(0, 3, 40), "b": rng.integers(0, 3, 30)}
    commands = []
    fake_run = _fake_steps(tmp_path, rng, true, commands)

    monkeypatch.setattr(protocol, "_run", fake_run)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "x.flags").write_text("--epochs=1\n")
    flags = "--task=diagnosis --monitor=val_balanced_accuracy"
    assert protocol.main(["--input=in", "--base=x.flags", "--workdir=w", "--image_size=64",
                          "--seeds=2", "--bootstrap=50", "--holdout_sources=a,c",
                          f"--flags={flags}"]) == 0
    result = json.loads((tmp_path / "w" / "protocol.json").read_text())
    assert result["task"] == "diagnosis" and list(result["rows"]) == ["a"]
    assert result["skipped"] == {"c": "only ['nevus'] images: no balanced accuracy"}
    assert result["rows"]["a"]["heldout"]["cases"] == 30  # every image of the held-out source
    assert result["rows"]["a"]["heldout"]["excluded"] == {"unknown_diagnosis": 2,
                                                          "unseen_class": 1}
    assert "| a | 30 (2, 1) |" in (tmp_path / "w" / "protocol.md").read_text()
    assert result["rows"]["a"]["in_source_test"]["cases"] == 40
    trained = [c for c in commands if c[2] == protocol.TRAINER]
    assert trained[1][3:] == ["--flagfile=x.flags", "--data_dir=w/data/without_a",
                              "--workdir=w/runs/a/seed_1", "--seed=1", "--image_size=64",
                              "--export=false", "--keras_verbose=2", *flags.split()]
    assert "balanced accuracy" in (tmp_path / "w" / "protocol.md").read_text()
    # a second sitting reuses the runs and scores: nothing runs again
    commands.clear()
    assert protocol.main(["--input=in", "--base=x.flags", "--workdir=w", "--image_size=64",
                          "--seeds=2", "--bootstrap=50", "--holdout_sources=a",
                          f"--flags={flags}"]) == 0
    assert commands == []
    assert commands == []


def test_train_engine_flags_reach_the_training_datasets_only(tmp_path, monkeypatch, capsys):
    """A learning curve's smaller training sets are scored on the very held-out images of the
    full one: --train_engine_flags go to without_<source>, never to only_<source> or to the
    all dataset that only plans the held-out sources."""
    rng = np.random.default_rng(3)
    true = {"a": rng.integers(0, 3, 40), "b": rng.integers(0, 3, 30)}
    commands = []
    monkeypatch.setattr(protocol, "_run", _fake_steps(tmp_path, rng, true, commands))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "x.flags").write_text("--epochs=1\n")
    assert protocol.main(["--input=in", "--base=x.flags", "--workdir=w", "--image_size=64",
                          "--seeds=1", "--bootstrap=20", "--holdout_sources=a",
                          "--flags=--task=diagnosis", "--engine_flags=--dx_map=bcc:benign",
                          "--train_engine_flags=--train_fraction=0.5"]) == 0
    engine = {next(w for w in c if w.startswith("--output=")).split("/")[-1]: c
              for c in commands if c[2] == protocol.ENGINE}
    assert set(engine) == {"all", "without_a", "only_a"}
    for name, command in engine.items():
        assert "--dx_map=bcc:benign" in command
        assert ("--train_fraction=0.5" in command) == (name == "without_a"), name
    result = json.loads((tmp_path / "w" / "protocol.json").read_text())
    assert result["train_engine_flags"] == ["--train_fraction=0.5"]
    assert "engine `--dx_map=bcc:benign` (training data also: `--train_fraction=0.5`)" in (tmp_path / "w" / "protocol.md").read_text()
    # the same workdir again: its datasets are kept; asked for another share, refused
    args = ["--input=in", "--base=x.flags", "--workdir=w", "--image_size=64", "--seeds=1",
            "--bootstrap=20", "--holdout_sources=a", "--flags=--task=diagnosis"]
    before = len(commands)
    assert protocol.main(args + ["--train_engine_flags=--train_fraction=0.5"]) == 0
    assert not [c for c in commands[before:] if c[2] == protocol.ENGINE]
    assert protocol.main(args + ["--train_engine_flags=--train_fraction=0.25"]) == 1
    assert ("w/data/without_a was written with other engine settings than this run's flags "
            "ask for (written, asked): train_fraction 0.5, 0.25" in capsys.readouterr().err)


def test_binary_only_eval_flags_are_refused_before_the_engine_runs(tmp_path, monkeypatch,
                                                                    capsys):
    commands = []
    monkeypatch.setattr(protocol, "_run", lambda command, log: commands.append(command))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "x.flags").write_text("--epochs=1\n")
    for refused in ("--threshold=0.3", "--threshold"):
        assert protocol.main(["--input=in", "--base=x.flags", "--workdir=w",
                              "--flags=--task=diagnosis", f"--eval_flags={refused}"]) == 1
        assert f"--eval_flags: ['{refused}'] apply to benign/malignant models only" in \
            capsys.readouterr().err
    assert commands == []  # not even the engine's download preprocessing
    assert not (tmp_path / "w" / "data").exists()


def test_a_source_the_runs_classes_cannot_tell_apart_is_skipped_after_training(
        tmp_path, monkeypatch):
    """Held-out a holds nevus and bkl; the runs' classes have no benign_keratosis and no
    `other`, so only nevus counts: a is skipped with the reason, not an error after training."""
    rng = np.random.default_rng(2)
    true = {"a": rng.integers(0, 2, 40), "b": rng.integers(0, 2, 30)}
    commands = []
    mapping = {"classes": ["nevus", "melanoma"], "grouped_as_other": [],
               "index": {"nevus": 0, "melanoma": 1}}
    monkeypatch.setattr(protocol, "_run", _fake_steps(tmp_path, rng, true, commands, mapping))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    (tmp_path / "x.flags").write_text("--epochs=1\n")
    assert protocol.main(["--input=in", "--base=x.flags", "--workdir=w", "--image_size=64",
                          "--seeds=2", "--bootstrap=20", "--holdout_sources=a",
                          "--flags=--task=diagnosis"]) == 0
    result = json.loads((tmp_path / "w" / "protocol.json").read_text())
    why = ("its images fall in {'nevus': 27} of the runs' classes ['nevus', 'melanoma'] "
           "(18 outside them): no balanced accuracy")  # the fake's manifest: a, b, c
    assert result["skipped"] == {"a": why}
    assert "heldout" not in result["rows"]["a"] and result["rows"]["a"]["in_source_test"]
    assert not [c for c in commands if "--splits=all" in c]  # the held-out set is not scored
    assert f"| a | skipped: {why} |" in (tmp_path / "w" / "protocol.md").read_text()


def test_the_protocol_reads_what_trainer_cnn_evaluate_writes_for_a_diagnosis_run(tmp_path):
    """trainer.cnn.evaluate on a one-step diagnosis run: read_predictions gets one row per image
    with a known diagnosis, classes as the run's, and the run's own balanced accuracy."""
    from tests import shard_fixtures
    from trainer.cnn import cli, evaluation, train

    texts = {"train": ["nevus"] * 6 + ["melanoma"] * 5 + ["bcc"] * 3 + ["unknown"],
             "validation": ["nevus", "nevus", "mel", "melanoma", "bcc", ""],
             "test": ["nevus", "melanoma", "bcc", "bcc"]}
    data = shard_fixtures.write_tiny_dataset(tmp_path / "data", {
        split: [(img, "malignant" if "mel" in t else "benign", {"diagnosis": t})
                for (img, _), t in zip(shard_fixtures.random_images(len(ts), 48, seed=i), ts)]
        for i, (split, ts) in enumerate(texts.items())}, 32)
    run = tmp_path / "run"
    config = train.TrainConfig(data_dir=data, workdir=str(run), image_size=32, batch_size=8,
                               epochs=1, steps_per_epoch=1, seed=0, mixed_precision="off",
                               verbose=0, model="compact", task="diagnosis",
                               min_class_records=3)
    cli.evaluate_and_export(train.train_cnn(config).model, config, bootstrap=0, export=False)
    own = json.loads((run / "report.json").read_text())["splits"]
    out = tmp_path / "scores"
    evaluation.evaluate_external(str(run), data, splits="validation,test", out=str(out))
    for split in ("validation", "test"):
        ids, true, predicted, classes = pd.read_predictions(str(out), split)
        assert classes == ["nevus", "melanoma", "basal_cell_carcinoma"]
        assert len(set(ids)) == len(ids) == {"validation": 5, "test": 4}[split]
        assert np.bincount(true, minlength=3).tolist() == [
            sum(row) for row in own[split]["confusion_matrix"]]
        assert pd.balanced_accuracy(true, predicted) == pytest.approx(
            own[split]["balanced_accuracy"])
