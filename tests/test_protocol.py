"""The evaluation protocol's pure parts: sources from a manifest, the held-out plan, the
seed-pooled summary and its table (the runs themselves are trainer.cnn and its evaluation)."""
from __future__ import annotations

import math

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
