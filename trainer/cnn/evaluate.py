"""Evaluation of a trained classifier: threshold chosen on validation, applied unchanged to test.

Writes into the run directory (workdir):
  report.json   config, dataset counts, threshold and how it was chosen, per-split metrics with
                bootstrap intervals and ROC points (NaN/inf written as null; reasons under
                "undefined" / "note")
  report.md     the same for people, with the plots embedded
  plots/training_{accuracy,loss,auc}.png   from workdir/history.json, when present
  plots/roc.png, plots/confusion.png
"""
from __future__ import annotations

import datetime
import math
import os
from typing import Any, Mapping

import numpy as np
from absl import logging

from trainer.core import metrics, report, run_folder

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"
EVAL_SPLITS = ("validation", "test")
REPORT_FORMAT = "isicflow.cnn_report/1"


def predict_split(model, data_dir: str, split: str, image_size: int,
                  batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [N], probabilities float64 [N]) of one split, in manifest order, unaugmented."""
    from trainer.core import input_pipeline

    ds = input_pipeline.make_dataset(data_dir, split, image_size=image_size, batch_size=batch_size,
                                     training=False, deterministic=True)
    labels, probabilities = [], []
    for images, batch_labels in ds:
        out = np.asarray(model.predict_on_batch(images), dtype=np.float64)
        if out.ndim != 2 or out.shape[1] != 1 or out.shape[0] != images.shape[0]:
            raise ValueError(f"model output must be [batch, 1] probabilities, got shape {out.shape}")
        probabilities.append(out[:, 0])
        labels.append(np.asarray(batch_labels).astype(np.int64))
    if not labels:
        return np.zeros([0], np.int64), np.zeros([0], np.float64)
    labels_arr, probs = np.concatenate(labels), np.concatenate(probabilities)
    bad = np.flatnonzero(~np.isfinite(probs) | (probs < 0) | (probs > 1))
    if bad.size:
        raise ValueError(f"{split}: {bad.size} model output(s) are not probabilities in [0, 1], "
                         f"first {probs[bad[0]]} at case {bad[0]}")
    return labels_arr, probs


def choose_threshold(labels: np.ndarray, scores: np.ndarray, policy: str,
                     min_sensitivity: float) -> dict[str, Any]:
    """metrics.select_threshold on validation; falls back to the study's 0.5, saying why, when
    validation cannot support the policy (empty or a single class)."""
    if policy != "fixed" and (labels.size == 0 or len(np.unique(labels)) < 2):
        why = "is empty" if labels.size == 0 else f"holds one class only ({int(labels[0])})"
        logging.warning("validation %s: threshold policy %s impossible, using 0.5", why, policy)
        return {"policy": "fixed", "requested_policy": policy, "threshold": metrics.STUDY_THRESHOLD,
                "reason": f"validation {why}, so {policy!r} cannot be applied; fell back to the "
                          "study's fixed 0.5"}
    return metrics.select_threshold(labels, scores, policy, min_sensitivity=min_sensitivity)


def split_report(labels: np.ndarray, scores: np.ndarray, threshold: float, *,
                 bootstrap: int, seed: int) -> dict[str, Any]:
    """Metrics at the threshold, bootstrap intervals and ROC points; nulls carry a reason."""
    if labels.size == 0:
        return {"cases": 0, "note": "no benign/malignant cases in this split; nothing evaluated"}
    result = metrics.classification_metrics(labels, scores, threshold)
    both_classes = len(np.unique(labels)) == 2
    if both_classes and bootstrap > 0:
        result["bootstrap"] = metrics.bootstrap_intervals(labels, scores, threshold,
                                                          resamples=bootstrap, seed=seed)
    else:
        result["bootstrap_note"] = ("bootstrap disabled (0 resamples)" if both_classes
                                    else "one class only: no ROC and no bootstrap interval")
    if both_classes:
        result["roc"] = metrics.roc_curve_points(labels, scores)
    if threshold != metrics.STUDY_THRESHOLD:  # for comparison with the 2020 study's numbers
        at_study = metrics.classification_metrics(labels, scores, metrics.STUDY_THRESHOLD)
        result["at_study_threshold"] = {k: at_study[k] for k in (
            "threshold", "confusion", "accuracy", "precision", "sensitivity", "specificity",
            "f1", "undefined")}
    return result


def dataset_counts(data_dir: str, image_size: int) -> dict[str, Any]:
    from isicflow import dataset as dataset_lib

    manifest = dataset_lib.read_manifest(data_dir)
    splits = {}
    for split in dataset_lib.SPLITS:
        try:
            info = dataset_lib.split_info(manifest, image_size, split)
        except ValueError as e:
            splits[split] = {"records": 0, "note": str(e)}
            continue
        splits[split] = {"records": int(info.get("records", 0)), "counts": dict(info.get("counts", {}))}
    return {"data_dir": os.path.abspath(data_dir), "image_size": image_size,
            "schema_version": manifest.get("schema_version"), "splits": splits}


def write_plots(workdir: str, splits: Mapping[str, Any], threshold: float) -> dict[str, str]:
    """All plots under workdir/plots; returns {name: path relative to workdir}."""
    plot_dir = os.path.join(workdir, PLOTS_DIR)
    os.makedirs(plot_dir, exist_ok=True)
    paths: dict[str, str] = {}
    history = run_folder.read_history(os.path.join(workdir, run_folder.HISTORY_NAME))
    if history:
        paths.update(report.plot_training_curves(run_folder.history_columns(history), plot_dir))
    curves = {s: {**v["roc"], "auc": v["auc"]} for s, v in splits.items() if "roc" in v}
    if curves:
        points = {s: (1.0 - splits[s]["specificity"], splits[s]["sensitivity"]) for s in curves}
        paths["roc"] = report.plot_roc_curves(curves, os.path.join(plot_dir, "roc.png"), points)
    confusions = {s: v["confusion"] for s, v in splits.items() if v.get("cases")}
    if confusions:
        paths["confusion"] = report.plot_confusion_matrices(
            confusions, os.path.join(plot_dir, "confusion.png"), threshold)
    return {name: os.path.relpath(path, workdir) for name, path in paths.items()}


def _check_all_finite_or_explained(payload: Any, where: str = "report") -> None:
    """Guard: a NaN may only appear where 'undefined' names it (metrics) or in ROC's inf."""
    if isinstance(payload, Mapping):
        undefined = payload.get("undefined", {})
        for key, value in payload.items():
            if isinstance(value, float) and not math.isfinite(value) and key not in undefined:
                raise ValueError(f"{where}.{key} is {value} with no reason recorded")
            if key != "roc":
                _check_all_finite_or_explained(value, f"{where}.{key}")


def evaluate_and_report(model, data_dir: str, workdir: str, image_size: int, config: dict,
                        threshold_policy: str = "max_specificity_at_sensitivity",
                        min_sensitivity: float = 0.8, bootstrap: int = 1000, seed: int = 0,
                        batch_size: int | None = None) -> dict[str, Any]:
    """Predicts validation and test, picks the threshold on validation, writes the reports.

    Returns the report dict (as written to report.json, but with NaN where JSON has null).
    """
    if threshold_policy not in metrics.THRESHOLD_POLICIES:
        raise ValueError(f"threshold policy {threshold_policy!r} not in {metrics.THRESHOLD_POLICIES}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap resamples must be >= 0, got {bootstrap}")
    from trainer.core import input_pipeline

    os.makedirs(workdir, exist_ok=True)
    batch_size = int(batch_size or config.get("batch_size") or 32)
    data = dataset_counts(data_dir, image_size)
    predictions = {}
    for split in EVAL_SPLITS:
        if input_pipeline.dataset_size(data_dir, split, image_size) == 0:
            predictions[split] = (np.zeros([0], np.int64), np.zeros([0]))
        else:
            predictions[split] = predict_split(model, data_dir, split, image_size, batch_size)
        logging.info("evaluate: %d %s cases predicted", predictions[split][0].size, split)
    threshold = choose_threshold(*predictions["validation"], threshold_policy, min_sensitivity)
    splits = {split: split_report(*predictions[split], threshold["threshold"], bootstrap=bootstrap,
                                  seed=seed) for split in EVAL_SPLITS}
    result = {
        "format": REPORT_FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "config": dict(config), "data": data, "threshold": threshold, "splits": splits,
    }
    result["plots"] = write_plots(workdir, splits, threshold["threshold"])
    _check_all_finite_or_explained({k: v for k, v in result.items() if k != "config"})
    run_folder.write_json(os.path.join(workdir, REPORT_JSON), result)
    report.write_markdown(os.path.join(workdir, REPORT_MD), result)
    for split, values in splits.items():
        if values.get("cases"):
            logging.info("%s at threshold %.4f: auc %.4f accuracy %.4f sensitivity %.4f "
                         "specificity %.4f", split, threshold["threshold"], values["auc"],
                         values["accuracy"], values["sensitivity"], values["specificity"])
    return result


def read_threshold(workdir: str, default: float = metrics.STUDY_THRESHOLD) -> tuple[float, str]:
    """(threshold, where it came from) from workdir/report.json, else the default."""
    import json

    path = os.path.join(workdir, REPORT_JSON)
    if not os.path.exists(path):
        return float(default), f"default {default} (no {REPORT_JSON} in {workdir})"
    with open(path, encoding="utf-8") as f:
        saved = json.load(f)
    value = saved.get("threshold", {}).get("threshold")
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: threshold.threshold must be a number in [0, 1], got {value!r}")
    return float(value), f"{path} (policy {saved['threshold'].get('policy')})"
