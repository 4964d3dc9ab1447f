"""The evaluation protocol's pure parts: sources from a manifest, the held-out plan, the
seed-pooled summary and its table (the runs themselves are trainer.cnn and its evaluation)."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from benchmarks import protocol
from trainer.core import metrics

MANIFEST = {"counts": {"per_split_label_diagnosis_source": [
    {"split": "train", "label": "benign", "diagnosis": "nevus", "source_collection": "a",
     "count": 50},
    {"split": "test", "label": "malignant", "diagnosis": "melanoma", "source_collection": "a",
     "count": 5},
    {"split": "train", "label": "benign", "diagnosis": "nevus", "source_collection": "b",
     "count": 30},
    {"split": "train", "label": "benign", "diagnosis": "nevus", "source_collection": "",
     "count": 7},
]}}


def test_sources_are_counted_per_label_across_splits():
    assert protocol.sources_of(MANIFEST) == {"a": {"benign": 50, "malignant": 5},
                                             "b": {"benign": 30}}


def test_holdout_plan_skips_a_source_without_both_labels_and_refuses_unknown_names():
    sources = protocol.sources_of(MANIFEST)
    assert protocol.holdout_plan(sources, "all") == (["a"], {"b": "only ['benign'] images: no AUC"})
    assert protocol.holdout_plan(sources, "none") == ([], {})
    assert protocol.holdout_plan(sources, "a") == (["a"], {})
    with pytest.raises(protocol.ProtocolError, match=r"\['c'\] not in the download"):
        protocol.holdout_plan(sources, "a,c")


def test_seed_summary_mean_sd_and_a_pooled_interval_that_holds_the_mean():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    scores = [np.clip(0.35 * labels + rng.random(400) * 0.7, 0, 1) for _ in range(3)]
    summary = metrics.seed_summary(labels, scores, [0.5, 0.5, 0.5], resamples=300, seed=1)
    auc = summary["auc"]
    expected = [metrics.classification_metrics(labels, s, 0.5)["auc"] for s in scores]
    assert auc["per_seed"] == pytest.approx(expected)
    assert auc["mean"] == pytest.approx(np.mean(expected))
    assert auc["sd"] == pytest.approx(np.std(expected, ddof=1))
    low, high = auc["pooled_ci"]
    assert low < auc["mean"] < high and high - low < 0.15
    sens = summary["sensitivity"]["per_seed"][0]
    assert sens == pytest.approx(np.mean(scores[0][labels == 1] >= 0.5))
    assert summary["cases"] == 400 and summary["seeds"] == 3


def test_seed_summary_of_one_seed_has_no_spread_and_checks_its_inputs():
    labels = np.array([0, 1, 0, 1, 1, 0])
    one = metrics.seed_summary(labels, [labels * 0.8 + 0.1], [0.5], resamples=50)
    assert one["auc"]["mean"] == 1.0 and math.isnan(one["auc"]["sd"])
    with pytest.raises(ValueError, match="one threshold per seed"):
        metrics.seed_summary(labels, [labels * 1.0, labels * 1.0], [0.5], resamples=5)
    with pytest.raises(ValueError):
        metrics.seed_summary(np.zeros(6), [labels * 1.0], [0.5], resamples=5)


def test_markdown_has_a_row_per_source_and_says_why_one_was_skipped():
    cell = {"mean": 0.8, "sd": 0.01, "pooled_ci": [0.75, 0.85]}
    summary = {"auc": cell, "sensitivity": cell, "specificity": cell, "cases": 55,
               "positives": 5}
    table = protocol.markdown({
        "base": "configs/x.flags", "flags": [], "image_size": 64, "seeds": 3,
        "rows": {"a": {"in_source_validation": summary, "in_source_test": summary,
                       "heldout": {**summary, "auc": {**cell, "mean": 0.7}}}},
        "skipped": {"b": "only ['benign'] images: no AUC"}})
    assert "| a | 55 (5) | 0.800 ± 0.010 [0.750, 0.850]" in table
    assert "| +0.100 |" in table
    assert "| b | skipped: only ['benign'] images: no AUC |" in table


def test_paired_difference_sees_a_real_gain_and_no_gain_in_noise():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(300), np.ones(100)]
    weak = [labels * 0.3 + rng.normal(0, 1, labels.size) for _ in range(3)]
    strong = [labels * 1.5 + rng.normal(0, 1, labels.size) for _ in range(3)]
    gain = metrics.paired_auc_difference(labels, weak, strong, resamples=200)
    assert gain["difference"] > 0.2 and gain["pooled_ci"][0] > 0 and gain["beyond_seed_spread"]
    assert gain["difference"] == pytest.approx(gain["candidate"]["mean"]
                                               - gain["baseline"]["mean"])
    same = metrics.paired_auc_difference(labels, weak, weak[::-1], resamples=200)
    assert same["difference"] == pytest.approx(0.0, abs=1e-12)
    assert not same["beyond_seed_spread"] and same["pooled_ci"][0] <= 0 <= same["pooled_ci"][1]
    with pytest.raises(ValueError, match=">= 2 seeds"):
        metrics.paired_auc_difference(labels, weak[:1], strong, resamples=10)


def _fake_protocol(root, flags, scores_per_source, engine_flags=(), first_seed=0):
    """A benchmarks.protocol workdir: protocol.json and each seed's held-out predictions."""
    rows = {}
    for source, (labels, per_seed) in scores_per_source.items():
        rows[source] = {"heldout": {}}
        for k, scores in enumerate(per_seed, start=first_seed):
            out = root / "runs" / source / f"seed_{k}" / "protocol" / "heldout"
            out.mkdir(parents=True)
            lines = ["image_id,split,label,probability"] + [
                f"ISIC_{i:07d},test,{int(y)},{p:.6f}" for i, (y, p) in enumerate(zip(labels,
                                                                                     scores))]
            (out / "predictions.csv").write_text("\n".join(lines) + "\n")
            (out / "report.json").write_text(json.dumps({"threshold": {"threshold": 0.5}}))
    (root / "protocol.json").write_text(json.dumps({
        "flags": list(flags), "engine_flags": list(engine_flags), "seeds": len(per_seed),
        "first_seed": first_seed, "rows": rows}))
    return str(root)


def test_compare_two_protocol_runs_per_source_and_on_average(tmp_path, capsys):
    from benchmarks import compare

    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(60), np.ones(40)]
    noise = lambda: rng.uniform(0, 1, labels.size)  # noqa: E731
    base = _fake_protocol(tmp_path / "a", [], {s: (labels, [noise() for _ in range(3)])
                                               for s in ("north", "south")})
    cand = _fake_protocol(tmp_path / "b", ["--source_balance"], {
        s: (labels, [0.5 * labels + noise() for _ in range(3)]) for s in ("north", "south")})
    assert compare.main([f"--baseline={base}", f"--candidate={cand}",
                         f"--output={tmp_path / 'out'}", "--bootstrap=100"]) == 0
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert set(result["rows"]) == {"north", "south", "mean over sources"}
    mean = result["rows"]["mean over sources"]
    assert mean["difference"] == pytest.approx(np.mean(
        [result["rows"][s]["difference"] for s in ("north", "south")]))
    assert mean["difference"] > 0.1 and mean["pooled_ci"][0] > 0
    assert "| mean over sources |" in (tmp_path / "out" / "compare.md").read_text()
    other = _fake_protocol(tmp_path / "c", [], {"north": (labels, [noise(), noise()])},
                           engine_flags=["--dx_map=bcc:benign"])
    assert compare.main([f"--baseline={base}", f"--candidate={other}",
                         f"--output={tmp_path / 'x'}"]) == 2
    assert "engine flags differ" in capsys.readouterr().err


def test_within_source_auc_exposes_a_model_that_only_tells_sources_apart():
    """Source a: 90% malignant, b: 10%; the score says only which source an image is from, so
    the pooled AUC is high and the AUC within either source is 0.5."""
    from benchmarks import within_source

    rows, source_of = [], {}
    for source, positives, score in (("a", 90, 0.9), ("b", 10, 0.1)):
        for i in range(100):
            image_id = f"{source}{i}"
            source_of[image_id] = source
            rows.append({"image_id": image_id, "label": str(int(i < positives)),
                         "probability": str(score)})
    result = within_source.auc_within_sources(rows, source_of)
    assert result["pooled"] > 0.85
    assert {n: s["auc"] for n, s in result["sources"].items()} == {"a": 0.5, "b": 0.5}
    assert result["sources"]["a"]["positives"] == 90
    with pytest.raises(protocol.ProtocolError, match="no source"):
        within_source.auc_within_sources(rows + [{"image_id": "zz", "label": "1",
                                                  "probability": "0.5"}], source_of)


def test_scores_folder_keeps_evaluation_flags_apart_from_the_plain_scores():
    assert protocol.scores_folder([]) == "protocol"
    assert protocol.scores_folder(["--tta"]) == "protocol-tta"
    assert protocol.scores_folder(["--tta", "--batch_size=8"]) == "protocol-tta_batch-size-8"


def test_an_evaluation_lever_is_compared_on_the_baselines_own_models(tmp_path):
    """--runs_from: the candidate's protocol.json points at the baseline's runs, its scores in
    protocol-tta/; compare must read those, not the plain ones (which would give 0)."""
    from benchmarks import compare

    rng = np.random.default_rng(2)
    labels = np.r_[np.zeros(60), np.ones(40)]
    base = _fake_protocol(tmp_path / "a", [], {"north": (labels, [rng.uniform(0, 1, 100)
                                                                   for _ in range(3)])})
    for k in range(3):
        plain = tmp_path / "a" / "runs" / "north" / f"seed_{k}" / "protocol" / "heldout"
        tta = plain.parent.parent / "protocol-tta" / "heldout"
        tta.mkdir(parents=True)
        rows = (plain / "predictions.csv").read_text().splitlines()
        better = [rows[0]] + [f"{i},{sp},{y},{min(1.0, float(p) + 0.6 * int(y)):.6f}"
                              for i, sp, y, p in (r.split(",") for r in rows[1:])]
        (tta / "predictions.csv").write_text("\n".join(better) + "\n")
        (tta / "report.json").write_text((plain / "report.json").read_text())
    cand = tmp_path / "b"
    cand.mkdir()
    meta = json.loads((tmp_path / "a" / "protocol.json").read_text())
    meta.update(eval_flags=["--tta"], scores_folder="protocol-tta", runs_from=str(base))
    (cand / "protocol.json").write_text(json.dumps(meta))
    assert compare.main([f"--baseline={base}", f"--candidate={cand}",
                         f"--output={tmp_path / 'out'}", "--bootstrap=100"]) == 0
    result = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert result["rows"]["north"]["difference"] > 0.1
    assert result["candidate_flags"] == ["(evaluated with --tta)"]


def test_runs_from_must_be_another_finished_protocol_workdir(tmp_path):
    base = tmp_path / "flags"
    base.write_text("--epochs=1\n")
    with pytest.raises(SystemExit):
        protocol.parse_args([f"--input={tmp_path}", f"--base={base}", f"--workdir={tmp_path}/w",
                             f"--runs_from={tmp_path}/absent"])
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "protocol.json").write_text("{}")
    with pytest.raises(SystemExit):
        protocol.parse_args([f"--input={tmp_path}", f"--base={base}", f"--workdir={tmp_path}/w",
                             f"--runs_from={tmp_path}/w"])


def test_fair_gap_sets_each_held_out_source_against_itself_when_trained_on():
    from benchmarks import within_source

    rows = {"a": {"within_source_validation_auc": {"b": 0.80, "c": 0.70}, "heldout_auc": 0.60},
            "b": {"within_source_validation_auc": {"a": 0.75, "c": 0.72}, "heldout_auc": 0.70},
            "c": {"within_source_validation_auc": {"a": 0.65}}}
    gaps = within_source.fair_gap(rows)
    assert set(gaps) == {"a", "b"}  # c has no held-out AUC
    assert gaps["a"]["within_source_reference"] == pytest.approx(0.70)  # from rows b and c
    assert gaps["a"]["runs"] == 2 and gaps["a"]["gap"] == pytest.approx(0.10)
    assert gaps["b"]["within_source_reference"] == pytest.approx(0.80)  # row a only
    assert gaps["b"]["gap"] == pytest.approx(0.10)


def test_fresh_seeds_confirm_a_recipe_against_the_baselines_first_seeds(tmp_path):
    """--first_seed=3: the candidate's runs are seed_3..seed_5, and compare reads those (not
    seed_0..2, which do not exist there)."""
    from benchmarks import compare

    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(60), np.ones(40)]
    base = _fake_protocol(tmp_path / "a", [], {"north": (labels, [rng.uniform(0, 1, 100)
                                                                   for _ in range(3)])})
    cand = _fake_protocol(tmp_path / "b", ["--use_metadata"], {"north": (
        labels, [0.8 * labels + rng.uniform(0, 1, 100) for _ in range(3)])}, first_seed=3)
    assert sorted(os.listdir(tmp_path / "b" / "runs" / "north")) == ["seed_3", "seed_4",
                                                                       "seed_5"]
    assert [os.path.basename(os.path.dirname(os.path.dirname(p))) for p in
            protocol.score_outputs(cand, json.loads((tmp_path / "b" / "protocol.json")
                                                    .read_text()), "north", "heldout")] == [
        "seed_3", "seed_4", "seed_5"]
    assert compare.main([f"--baseline={base}", f"--candidate={cand}",
                         f"--output={tmp_path / 'out'}", "--bootstrap=100"]) == 0
    assert json.loads((tmp_path / "out" / "compare.json").read_text()
                      )["rows"]["north"]["difference"] > 0.2


def test_first_seed_is_written_and_a_negative_one_refused(tmp_path):
    base = tmp_path / "flags"
    base.write_text("--epochs=1\n")
    args = protocol.parse_args([f"--input={tmp_path}", f"--base={base}", f"--workdir={tmp_path}/w",
                                "--first_seed=3", "--seeds=2"])
    assert list(protocol.seed_list({"first_seed": args.first_seed, "seeds": args.seeds})) == [3, 4]
    assert list(protocol.seed_list({"seeds": 3})) == [0, 1, 2]  # tables from before the flag
    with pytest.raises(SystemExit):
        protocol.parse_args([f"--input={tmp_path}", f"--base={base}", f"--workdir={tmp_path}/w",
                             "--first_seed=-1"])


def test_a_seed_ensemble_averages_probabilities_and_beats_its_noisy_members(tmp_path, capsys):
    """Each seed = the signal plus its own noise; the mean of three has a third of the noise
    variance, so the ensembles' held-out AUC must exceed the single seeds' on every source."""
    from benchmarks import ensemble

    assert ensemble.ensemble_scores([np.array([0.2, 0.8]), np.array([0.4, 0.6])]) == \
        pytest.approx([0.3, 0.7])
    rng = np.random.default_rng(3)
    labels = np.r_[np.zeros(150), np.ones(100)]
    seeds = lambda: [0.4 * labels + rng.uniform(0, 1, labels.size) for _ in range(3)]  # noqa: E731
    first = _fake_protocol(tmp_path / "s012", ["--x"], {s: (labels, seeds())
                                                        for s in ("north", "south")})
    second = _fake_protocol(tmp_path / "s345", ["--x"], {s: (labels, seeds())
                                                         for s in ("north", "south")},
                            first_seed=3)
    assert ensemble.main([f"--workdirs={first},{second}", f"--output={tmp_path / 'out'}",
                          "--bootstrap=100"]) == 0
    result = json.loads((tmp_path / "out" / "ensemble.json").read_text())
    assert result["seeds"] == [[0, 1, 2], [3, 4, 5]]
    for source in ("north", "south"):
        row = result["rows"][source]
        assert len(row["baseline"]["per_seed"]) == 6 and len(row["candidate"]["per_seed"]) == 2
        assert row["difference"] > 0.02 and row["pooled_ci"][0] > 0
    assert "| mean over sources |" in (tmp_path / "out" / "ensemble.md").read_text()
    other = _fake_protocol(tmp_path / "other", ["--y"], {"north": (labels, seeds())})
    assert ensemble.main([f"--workdirs={first},{other}", f"--output={tmp_path / 'x'}"]) == 2
    assert ensemble.main([f"--workdirs={first}", f"--output={tmp_path / 'x'}"]) == 2
    err = capsys.readouterr().err
    assert "one recipe on the same images" in err and "need >= 2 protocol workdirs" in err
