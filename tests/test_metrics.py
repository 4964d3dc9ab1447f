"""trainer.core.metrics against scikit-learn, on a hand-derived case, and on degenerate inputs."""
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from trainer.core import metrics

# Hand-made validation set. Sorted by score (m = malignant, b = benign):
#   0.9m 0.8m 0.75b 0.7m 0.6b 0.5m 0.4m 0.3b 0.2b 0.1b
# threshold: 0.9 0.8 0.75 0.7 0.6 0.5 0.4 0.3 0.2 0.1
# sens:       .2  .4  .4  .6  .6  .8 1.0 1.0 1.0 1.0
# spec:      1.0 1.0  .8  .8  .6  .6  .6  .4  .2  .0
HAND_LABELS = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
HAND_SCORES = [0.1, 0.2, 0.3, 0.6, 0.75, 0.4, 0.5, 0.7, 0.8, 0.9]


@pytest.fixture
def random_case():
    rng = np.random.default_rng(1234)
    labels = rng.integers(0, 2, size=300)
    # Rounded scores so that ties occur, which is where hand-written AUC code usually errs.
    scores = np.round(np.clip(0.35 * labels + rng.normal(0.4, 0.2, size=300), 0, 1), 2)
    return labels, scores


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.62])
def test_threshold_metrics_equal_sklearn(random_case, threshold):
    labels, scores = random_case
    predicted = (scores >= threshold).astype(int)
    got = metrics.classification_metrics(labels, scores, threshold)
    tn, fp, fn, tp = skm.confusion_matrix(labels, predicted).ravel()
    assert got["confusion"] == {"tp": tp, "fp": fp, "tn": tn, "fn": fn}
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, predicted))
    assert got["error_rate"] == pytest.approx(1 - skm.accuracy_score(labels, predicted))
    assert got["precision"] == pytest.approx(skm.precision_score(labels, predicted))
    assert got["sensitivity"] == pytest.approx(skm.recall_score(labels, predicted))
    assert got["specificity"] == pytest.approx(skm.recall_score(labels, predicted, pos_label=0))
    assert got["f1"] == pytest.approx(skm.f1_score(labels, predicted))
    assert got["undefined"] == {}


def test_auc_and_roc_equal_sklearn(random_case):
    labels, scores = random_case
    assert metrics.classification_metrics(labels, scores, 0.5)["auc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    fpr, tpr, thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    roc = metrics.roc_curve_points(labels, scores)
    np.testing.assert_allclose(roc["fpr"], fpr)
    np.testing.assert_allclose(roc["tpr"], tpr)
    np.testing.assert_allclose(roc["thresholds"][1:], thr[1:])
    assert roc["thresholds"][0] == math.inf


def test_threshold_selection_on_hand_made_case():
    chosen = metrics.select_threshold(HAND_LABELS, HAND_SCORES)
    # Sensitivity >= 0.8 at 0.5, 0.4, ...; both 0.5 and 0.4 give specificity 0.6 -> highest: 0.5.
    assert chosen["threshold"] == 0.5
    assert (chosen["sensitivity"], chosen["specificity"]) == (0.8, 0.6)
    stricter_spec = metrics.select_threshold(HAND_LABELS, HAND_SCORES, min_sensitivity=0.6)
    assert stricter_spec["threshold"] == 0.7  # sens 0.6, spec 0.8
    youden = metrics.select_threshold(HAND_LABELS, HAND_SCORES, "youden")
    assert youden["threshold"] == 0.4 and youden["youden_j"] == pytest.approx(0.6)
    fixed = metrics.select_threshold(HAND_LABELS, HAND_SCORES, "fixed")
    assert fixed["threshold"] == 0.5 and "study" in fixed["reason"]
    everything = metrics.select_threshold(HAND_LABELS, HAND_SCORES, min_sensitivity=1.0)
    assert everything["threshold"] == 0.4 and everything["specificity"] == 0.6


def test_hand_made_counts_at_chosen_threshold():
    got = metrics.classification_metrics(HAND_LABELS, HAND_SCORES, 0.5)
    assert got["confusion"] == {"tp": 4, "fp": 2, "tn": 3, "fn": 1}
    assert got["auc"] == pytest.approx(20 / 25)  # 20 of the 25 (m, b) pairs ordered correctly


def test_bootstrap_interval_contains_estimate_and_narrows():
    rng = np.random.default_rng(7)

    def sample(n):
        labels = rng.integers(0, 2, size=n)
        return labels, np.clip(0.3 * labels + rng.normal(0.35, 0.2, size=n), 0, 1)

    widths = []
    for n in (60, 2000):
        labels, scores = sample(n)
        boot = metrics.bootstrap_intervals(labels, scores, 0.5, resamples=300, seed=0)
        point = metrics.classification_metrics(labels, scores, 0.5)
        for name in metrics.BOOTSTRAP_METRICS:
            interval = boot["intervals"][name]
            assert interval["low"] <= point[name] <= interval["high"], (n, name, interval, point[name])
        assert boot["kept"] + boot["skipped_single_class"] == 300
        widths.append(boot["intervals"]["auc"]["high"] - boot["intervals"]["auc"]["low"])
    assert widths[1] < widths[0] / 3  # ~sqrt(2000 / 60) = 5.8 times narrower


def test_bootstrap_is_seeded_and_counts_single_class_resamples():
    labels, scores = [0, 0, 1], [0.2, 0.4, 0.9]
    first = metrics.bootstrap_intervals(labels, scores, 0.5, resamples=200, seed=3)
    again = metrics.bootstrap_intervals(labels, scores, 0.5, resamples=200, seed=3)
    assert first == again
    # P(a resample of 3 holds one class) = (2/3)^3 + (1/3)^3 = 1/3 -> about 67 of 200.
    assert 35 < first["skipped_single_class"] < 100


@pytest.mark.parametrize("labels, scores, message", [
    ([], [], "empty"),
    ([0, 1], [0.2], "differ in length"),
    ([0, 1, 1], [0.2, float("nan"), 0.3], "NaN or infinite, first at index 1"),
    ([0, 2], [0.2, 0.3], "must be 0 or 1"),
])
def test_bad_inputs_raise_clear_errors(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        metrics.classification_metrics(labels, scores, 0.5)


def test_single_class_gives_nan_auc_with_reason_or_error():
    got = metrics.classification_metrics([1, 1, 1], [0.2, 0.7, 0.9], 0.5)
    assert math.isnan(got["auc"]) and "one class" in got["undefined"]["auc"]
    assert math.isnan(got["specificity"]) and "no benign" in got["undefined"]["specificity"]
    assert got["sensitivity"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="need both classes"):
        metrics.roc_curve_points([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="need both classes"):
        metrics.select_threshold([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="need both classes"):
        metrics.bootstrap_intervals([1, 1], [0.1, 0.2], 0.5)


def test_no_positive_prediction_leaves_precision_undefined():
    got = metrics.classification_metrics([0, 1], [0.2, 0.3], 0.9)
    assert math.isnan(got["precision"]) and "tp + fp = 0" in got["undefined"]["precision"]
    assert got["f1"] == 0.0 and got["sensitivity"] == 0.0


def test_bad_policy_and_threshold_values():
    with pytest.raises(ValueError, match="policy 'best'"):
        metrics.select_threshold(HAND_LABELS, HAND_SCORES, "best")
    with pytest.raises(ValueError, match="min_sensitivity must be in"):
        metrics.select_threshold(HAND_LABELS, HAND_SCORES, min_sensitivity=1.5)
    with pytest.raises(ValueError, match="finite number"):
        metrics.confusion_counts(HAND_LABELS, HAND_SCORES, float("nan"))


def test_auc_interval_is_the_full_bootstrap_auc_interval_with_the_same_draws():
    rng = np.random.default_rng(5)
    labels = (rng.random(80) < 0.3).astype(int)
    scores = rng.random(80) + 0.3 * labels
    full = metrics.bootstrap_intervals(labels, scores, 0.5, resamples=200, seed=9)
    alone = metrics.auc_interval(labels, scores, resamples=200, seed=9)
    assert alone == full["intervals"]["auc"]
    assert 0.5 < alone["low"] < alone["high"] <= 1.0


def test_both_intervals_say_why_when_every_draw_held_one_class():
    # Two cases: seed 4's three draws each repeat one case, so no draw has an AUC.
    alone = metrics.auc_interval([0, 1], [0.2, 0.7], resamples=3, seed=4)
    full = metrics.bootstrap_intervals([0, 1], [0.2, 0.7], 0.5, resamples=3, seed=4)
    reason = "all 3 resamples held a single class"
    for entry in [alone] + [full["intervals"][m] for m in metrics.BOOTSTRAP_METRICS]:
        assert math.isnan(entry["low"]) and math.isnan(entry["high"])
        assert entry["undefined"] == {"low": reason, "high": reason}
    assert full["kept"] == 0 and full["skipped_single_class"] == 3
