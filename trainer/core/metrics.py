"""Binary classification metrics, ROC, bootstrap intervals and threshold choice.

Counts, ROC and AUC come from scikit-learn; what it lacks stays here: the rates with a reason
for each undefined one, the percentile bootstrap over cases, and the threshold policies.

Conventions used throughout:
* labels are 0 (benign) / 1 (malignant); scores are the model's probability of malignant;
* a case is predicted malignant when score >= threshold (as sklearn's roc_curve);
* a ratio whose denominator is 0 (e.g. precision with no positive prediction) is NaN, and the
  result names it under "undefined" with the reason, so reports can write null + reason;
* bad input (empty, NaN/inf scores, labels other than 0/1, mismatched lengths) is a ValueError
  with the offending values, raised at the entry of every public function.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

THRESHOLD_POLICIES = ("max_specificity_at_sensitivity", "youden", "fixed")
STUDY_THRESHOLD = 0.5
BOOTSTRAP_METRICS = ("auc", "accuracy", "sensitivity", "specificity")


@dataclasses.dataclass(frozen=True)
class ConfusionCounts:
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def check_inputs(labels, scores, *, need_both_classes: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validated copies: labels int64 in {0,1}, scores float64 finite, same length, non-empty."""
    y = np.asarray(labels).reshape(-1)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.size == 0:
        raise ValueError("no cases: labels are empty")
    if y.size != s.size:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    bad_labels = sorted(set(np.unique(y).tolist()) - {0, 1})
    if bad_labels:
        raise ValueError(f"labels must be 0 or 1, found {bad_labels[:5]}")
    not_finite = np.flatnonzero(~np.isfinite(s))
    if not_finite.size:
        raise ValueError(f"{not_finite.size} score(s) are NaN or infinite, first at index "
                         f"{not_finite[0]}: {s[not_finite[0]]}")
    y = y.astype(np.int64)
    if need_both_classes and len(np.unique(y)) < 2:
        raise ValueError(f"need both classes, but all {y.size} labels are {int(y[0])}")
    return y, s


def _check_threshold(threshold: float) -> float:
    if not isinstance(threshold, (int, float, np.floating)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return float(threshold)


def _case_thresholds(threshold, cases: int) -> float | np.ndarray:
    """A seed's threshold: one number, or one per case (out-of-fold predictions pooled over
    cross-validation folds, each case judged at its own fold model's threshold)."""
    if np.ndim(threshold) == 0:
        return _check_threshold(threshold)
    t = np.asarray(threshold, np.float64)
    if t.shape != (cases,) or not np.all(np.isfinite(t)):
        raise ValueError(f"per-case thresholds must be {cases} finite numbers, got shape "
                         f"{t.shape}")
    return t


def confusion_counts(labels, scores, threshold: float) -> ConfusionCounts:
    y, s = check_inputs(labels, scores)
    predicted = (s >= _check_threshold(threshold)).astype(np.int64)
    tn, fp, fn, tp = skm.confusion_matrix(y, predicted, labels=[0, 1]).ravel()
    return ConfusionCounts(tp=int(tp), fp=int(fp), tn=int(tn), fn=int(fn))


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def rates_from_counts(c: ConfusionCounts) -> dict[str, Any]:
    """accuracy, error_rate, precision, sensitivity, specificity, f1, plus 'undefined' reasons."""
    precision = _ratio(c.tp, c.tp + c.fp)
    sensitivity = _ratio(c.tp, c.tp + c.fn)
    rates = {
        "accuracy": _ratio(c.tp + c.tn, c.total),
        "error_rate": _ratio(c.fp + c.fn, c.total),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(c.tn, c.tn + c.fp),
        "f1": _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
    }
    reasons = {
        "precision": "no case predicted malignant (tp + fp = 0)",
        "sensitivity": "no malignant case (tp + fn = 0)",
        "specificity": "no benign case (tn + fp = 0)",
        "f1": "no malignant case and none predicted (2tp + fp + fn = 0)",
        "accuracy": "no cases", "error_rate": "no cases",
    }
    rates["undefined"] = {k: reasons[k] for k, v in rates.items() if isinstance(v, float) and math.isnan(v)}
    return rates


def roc_curve_points(labels, scores) -> dict[str, list[float]]:
    """Every ROC point (no point dropped): fpr, tpr and the threshold (>=) giving it.

    The first point (0, 0) has threshold +inf (written as None in JSON by the report writer).
    """
    y, s = check_inputs(labels, scores, need_both_classes=True)
    fpr, tpr, thresholds = skm.roc_curve(y, s, drop_intermediate=False)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def _add_auc(result: dict[str, Any], y: np.ndarray, s: np.ndarray) -> None:
    """result["auc"], or NaN plus the reason in result["undefined"] when one class is absent."""
    if len(np.unique(y)) == 2:
        result["auc"] = float(skm.roc_auc_score(y, s))
    else:
        result["auc"] = math.nan
        result["undefined"]["auc"] = f"only one class present (all labels {int(y[0])})"


def classification_metrics(labels, scores, threshold: float) -> dict[str, Any]:
    """All threshold metrics plus AUC (NaN + reason when only one class is present)."""
    y, s = check_inputs(labels, scores)
    counts = confusion_counts(y, s, threshold)
    result = {"threshold": float(threshold), "cases": int(y.size), "malignant": int(y.sum()),
              "benign": int(y.size - y.sum()), "confusion": counts.as_dict()}
    result.update(rates_from_counts(counts))
    _add_auc(result, y, s)
    return result


def case_bootstrap(y: np.ndarray, statistic, *, resamples: int, seed: int) -> tuple[list, int]:
    """statistic(idx) for `resamples` draws of case indices with replacement, and how many
    draws were skipped. One index set per draw, so whatever the statistic scores (one model,
    every seed, two recipes) is resampled paired. A draw holding a single class has no AUC
    (nor sensitivity or specificity): it is skipped and counted."""
    rng = np.random.default_rng(seed)
    kept, skipped = [], 0
    for _ in range(resamples):
        idx = rng.integers(0, y.size, size=y.size)
        if y[idx].min() == y[idx].max():
            skipped += 1
            continue
        kept.append(statistic(idx))
    return kept, skipped


def percentile_interval(values, confidence: float) -> tuple[float, float]:
    """The central `confidence` percentile interval of values; (nan, nan) when there are none."""
    if not len(values):
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def _draws_interval(draws, confidence: float, resamples: int) -> dict[str, Any]:
    """{"low", "high"} of the kept draws; one owner of the nan + reason entry both bootstrap
    intervals write when every resample held a single class."""
    low, high = percentile_interval(draws, confidence)
    if len(draws):
        return {"low": low, "high": high}
    reason = f"all {resamples} resamples held a single class"
    return {"low": low, "high": high, "undefined": {"low": reason, "high": reason}}


def bootstrap_intervals(labels, scores, threshold: float, *, resamples: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap over cases for AUC, accuracy, sensitivity and specificity.

    A resample holding a single class has no AUC (nor sensitivity or specificity), so it is
    skipped and counted in 'skipped_single_class'; intervals come from the kept ones.
    """
    y, s = check_inputs(labels, scores, need_both_classes=True)
    threshold = _check_threshold(threshold)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    predicted = s >= threshold

    def statistic(idx: np.ndarray) -> dict[str, float]:
        yb, sb, pb = y[idx], s[idx], predicted[idx]
        return {"auc": float(skm.roc_auc_score(yb, sb)),
                "accuracy": float(np.mean(pb == (yb == 1))),
                "sensitivity": float(np.mean(pb[yb == 1])),
                "specificity": float(np.mean(~pb[yb == 0]))}

    draws, skipped = case_bootstrap(y, statistic, resamples=resamples, seed=seed)
    kept = resamples - skipped
    intervals: dict[str, Any] = {}
    for metric in BOOTSTRAP_METRICS:
        intervals[metric] = _draws_interval([d[metric] for d in draws], confidence, resamples)
    return {"confidence": confidence, "resamples": resamples, "kept": kept,
            "skipped_single_class": skipped, "seed": seed, "threshold": threshold,
            "intervals": intervals}


def auc_interval(labels, scores, *, resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, Any]:
    """bootstrap_intervals' AUC interval alone, the same draws (a subgroup table shows only
    it): {"low", "high"}, nan with the reason under "undefined" when every draw held one class."""
    y, s = check_inputs(labels, scores, need_both_classes=True)
    draws, _ = case_bootstrap(y, lambda idx: float(skm.roc_auc_score(y[idx], s[idx])),
                              resamples=resamples, seed=seed)
    return _draws_interval(draws, confidence, resamples)


def _operating_points(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, sensitivity, specificity) with each distinct score as threshold."""
    roc = roc_curve_points(y, s)
    thresholds = np.asarray(roc["thresholds"][1:])
    sensitivity = np.asarray(roc["tpr"][1:])
    specificity = 1.0 - np.asarray(roc["fpr"][1:])
    return thresholds, sensitivity, specificity


def select_threshold(labels, scores, policy: str = "max_specificity_at_sensitivity", *,
                     min_sensitivity: float = 0.8, fixed_threshold: float = STUDY_THRESHOLD) -> dict[str, Any]:
    """Chooses the decision threshold on validation data; the result says how and why.

    * max_specificity_at_sensitivity: among thresholds (each distinct score) whose sensitivity
      is >= min_sensitivity, the one with the highest specificity; ties -> the highest
      threshold. Some threshold always qualifies: the lowest validation score classifies every
      case malignant (sensitivity 1), so no fallback is needed.
    * youden: maximizes sensitivity + specificity - 1; ties -> the highest threshold.
    * fixed: fixed_threshold (the study's 0.5), whatever the data.
    """
    if policy not in THRESHOLD_POLICIES:
        raise ValueError(f"threshold policy {policy!r} not in {THRESHOLD_POLICIES}")
    if policy == "fixed":
        threshold = _check_threshold(fixed_threshold)
        check_inputs(labels, scores)
        return {"policy": policy, "threshold": threshold,
                "reason": f"fixed threshold {threshold} (the 2020 study's rule)"}
    if not 0.0 <= min_sensitivity <= 1.0:
        raise ValueError(f"min_sensitivity must be in [0, 1], got {min_sensitivity}")
    y, s = check_inputs(labels, scores, need_both_classes=True)
    thresholds, sens, spec = _operating_points(y, s)  # thresholds descending: argmax -> highest
    if policy == "youden":
        i = int(np.argmax(sens + spec - 1.0))
        return {"policy": policy, "threshold": float(thresholds[i]), "sensitivity": float(sens[i]),
                "specificity": float(spec[i]), "youden_j": float(sens[i] + spec[i] - 1.0),
                "reason": "maximizes sensitivity + specificity - 1 on validation"}
    eligible = sens >= min_sensitivity - 1e-12
    if not eligible.any():  # impossible for min_sensitivity <= 1 (see docstring); fail loudly
        raise AssertionError(f"no threshold reaches sensitivity {min_sensitivity}: {sens.tolist()}")
    i = int(np.argmax(np.where(eligible, spec, -1.0)))
    return {"policy": policy, "threshold": float(thresholds[i]), "min_sensitivity": min_sensitivity,
            "sensitivity": float(sens[i]), "specificity": float(spec[i]),
            "reason": (f"highest specificity among thresholds with sensitivity >= "
                       f"{min_sensitivity} on validation")}


CALIBRATION_BINS = 10


def expected_calibration_error(labels, scores, bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Expected calibration error over `bins` equal-width bins of the predicted probability.

    Bin b holds the cases with score in (b/bins, (b+1)/bins] (the first bin also holds 0.0),
    exactly as sklearn.calibration.calibration_curve(strategy="uniform") bins them;
    ECE = sum_b (n_b / N) * |mean score in b - fraction malignant in b|, empty bins adding 0.
    Returns {"ece", "bins", "cases", "per_bin": [{low, high, cases, mean_probability,
    fraction_malignant}, ...]} (empty bins have null means). In [0, 1].
    """
    y, s = check_inputs(labels, scores)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if s.min() < 0.0 or s.max() > 1.0:
        raise ValueError(f"scores must be probabilities in [0, 1], got [{s.min()}, {s.max()}]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges[1:-1], s, side="left"), 0, bins - 1)
    per_bin, ece = [], 0.0
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        mean_p = float(s[members].mean()) if n else math.nan
        frac = float(y[members].mean()) if n else math.nan
        if n:
            ece += n / y.size * abs(mean_p - frac)
        entry = {"low": float(edges[b]), "high": float(edges[b + 1]), "cases": n,
                 "mean_probability": mean_p, "fraction_malignant": frac}
        if not n:
            entry["undefined"] = {"mean_probability": "empty bin", "fraction_malignant": "empty bin"}
        per_bin.append(entry)
    return {"ece": float(ece), "bins": bins, "binning": "equal-width", "cases": int(y.size),
            "per_bin": per_bin}


def group_metrics(labels, scores, threshold: float) -> dict[str, Any]:
    """A subgroup's n, positives, AUC (null + reason unless both classes), sensitivity and
    specificity at the threshold (null + reason where a class is absent)."""
    y, s = check_inputs(labels, scores)
    rates = rates_from_counts(confusion_counts(y, s, threshold))
    result = {"cases": int(y.size), "malignant": int(y.sum()),
              "sensitivity": rates["sensitivity"], "specificity": rates["specificity"],
              "undefined": {k: v for k, v in rates["undefined"].items()
                            if k in ("sensitivity", "specificity")}}
    _add_auc(result, y, s)
    return result


def seed_summary(labels, scores_per_seed, thresholds, *, resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, Any]:
    """Several training seeds scored on the same cases: per metric, the seeds' mean and sample
    standard deviation, and a pooled interval from a bootstrap over cases paired across seeds.

    Each resample draws one set of case indices and applies it to every seed's scores; the
    statistic is the mean over seeds of the metric (AUC, or sensitivity/specificity at each
    seed's own threshold: one number, or one per case for cross-validated predictions). Its
    percentile interval is the uncertainty from which cases were scored, for the seed-averaged
    model; the standard deviation is the seed-to-seed spread.
    Resamples holding a single class are skipped and counted, as in bootstrap_intervals.
    """
    runs = [check_inputs(labels, s, need_both_classes=True)[1] for s in scores_per_seed]
    y, _ = check_inputs(labels, runs[0], need_both_classes=True)
    if len(runs) != len(thresholds) or not runs:
        raise ValueError(f"need one threshold per seed: {len(runs)} seeds, {len(thresholds)} "
                         "thresholds")
    predicted = [s >= _case_thresholds(t, s.size) for s, t in zip(runs, thresholds)]

    def metric_values(idx: np.ndarray) -> dict[str, list[float]]:
        yb = y[idx]
        return {"auc": [float(skm.roc_auc_score(yb, s[idx])) for s in runs],
                "sensitivity": [float(np.mean(p[idx][yb == 1])) for p in predicted],
                "specificity": [float(np.mean(~p[idx][yb == 0])) for p in predicted]}

    per_seed = metric_values(np.arange(y.size))
    draws, skipped = case_bootstrap(
        y, lambda idx: {m: float(np.mean(v)) for m, v in metric_values(idx).items()},
        resamples=resamples, seed=seed)
    result: dict[str, Any] = {"seeds": len(runs), "cases": int(y.size),
                              "positives": int(y.sum()), "resamples": resamples,
                              "skipped_single_class": skipped, "confidence": confidence}
    for metric, values in per_seed.items():
        low, high = percentile_interval([d[metric] for d in draws], confidence)
        result[metric] = {"per_seed": values, "mean": float(np.mean(values)),
                          "sd": float(np.std(values, ddof=1)) if len(values) > 1 else math.nan,
                          "pooled_ci": [low, high]}
    return result


def paired_difference(labels: np.ndarray, baseline_per_seed, candidate_per_seed, metric, *,
                      resamples: int = 1000, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """Two recipes, several seeds each, scored on the same cases by metric(labels, run) (a
    run: whatever the metric reads per case, indexed like labels): is the candidate better?

    difference = mean over the candidate's seeds of the metric - mean over the baseline's.
    seed_se = sqrt(sd_b^2 / n_b + sd_c^2 / n_c), the standard error of that difference from
    the seed-to-seed spread alone (sample sd, ddof=1). pooled_ci: percentile interval of the
    difference over a bootstrap of cases (case_bootstrap), one index set per resample applied
    to every run of both recipes (the case-sampling uncertainty, paired). A gain is "beyond the
    seed spread" when |difference| > 2 seed_se, and beyond case sampling when pooled_ci
    excludes 0. `bootstrap` (the resampled differences) is returned for averaging over several
    sources. Inputs are the caller's to validate (paired_auc_difference does for AUC).
    """
    y = np.asarray(labels)
    base, cand = list(baseline_per_seed), list(candidate_per_seed)
    if len(base) < 2 or len(cand) < 2:
        raise ValueError(f"need >= 2 seeds per recipe for a seed spread, got {len(base)} "
                         f"baseline and {len(cand)} candidate")
    bad = [np.shape(r) for r in base + cand if np.shape(r)[:1] != y.shape[:1]]
    if y.ndim != 1 or not y.size or bad:
        raise ValueError(f"need non-empty 1-d labels and runs of as many cases: labels "
                         f"{y.shape}, runs {bad}")

    def difference(idx: np.ndarray) -> float:
        return (float(np.mean([metric(y[idx], r[idx]) for r in cand]))
                - float(np.mean([metric(y[idx], r[idx]) for r in base])))

    per_base = [float(metric(y, r)) for r in base]
    per_cand = [float(metric(y, r)) for r in cand]
    draws, _ = case_bootstrap(y, difference, resamples=resamples, seed=seed)
    low, high = percentile_interval(draws, confidence)
    se = math.sqrt(np.var(per_base, ddof=1) / len(base) + np.var(per_cand, ddof=1) / len(cand))
    d = float(np.mean(per_cand) - np.mean(per_base))
    return {"cases": int(y.size),
            "baseline": {"per_seed": per_base, "mean": float(np.mean(per_base)),
                         "sd": float(np.std(per_base, ddof=1))},
            "candidate": {"per_seed": per_cand, "mean": float(np.mean(per_cand)),
                          "sd": float(np.std(per_cand, ddof=1))},
            "difference": d, "seed_se": se, "pooled_ci": [low, high],
            "beyond_seed_spread": bool(abs(d) > 2 * se),
            "bootstrap": np.asarray(draws, np.float64)}


def paired_auc_difference(labels, baseline_per_seed, candidate_per_seed, *,
                          resamples: int = 1000, seed: int = 0,
                          confidence: float = 0.95) -> dict[str, Any]:
    """paired_difference of the AUC, on validated binary labels and scores, with the count of
    positive cases."""
    base = [check_inputs(labels, s, need_both_classes=True)[1] for s in baseline_per_seed]
    cand = [check_inputs(labels, s, need_both_classes=True)[1] for s in candidate_per_seed]
    if len(base) < 2 or len(cand) < 2:
        raise ValueError(f"need >= 2 seeds per recipe for a seed spread, got {len(base)} "
                         f"baseline and {len(cand)} candidate")
    y, _ = check_inputs(labels, base[0], need_both_classes=True)
    result = paired_difference(y, base, cand, lambda yb, sb: skm.roc_auc_score(yb, sb),
                               resamples=resamples, seed=seed, confidence=confidence)
    return {"cases": result.pop("cases"), "positives": int(y.sum()), **result}
