"""Evaluation of a trained classifier: threshold chosen on validation, applied unchanged to test.

Writes into the run directory (workdir):
  report.json   config, dataset counts, threshold and how it was chosen, per-split metrics with
                bootstrap intervals and ROC points (NaN/inf written as null; reasons under
                "undefined" / "note")
  report.md     the same for people, with the plots embedded
  plots/training_{accuracy,loss,auc}.png   from workdir/history.json, when present
  plots/roc.png, plots/pr.png, plots/confusion.png

External evaluation (python -m trainer.cnn.evaluate) goes through evaluate_external below: the same
split_report, bootstrap, plots and writers, at the threshold the training run recorded, plus
calibration, a per-group breakdown and the per-image predictions CSV. A diagnosis model (a run
folder with classes.json, or an export whose serving config has task "diagnosis") is resolved
and loaded here too, then scored by trainer.cnn.diagnosis_scoring (balanced accuracy, per-class
recall, confusion matrix; no threshold, TTA, bootstrap or breakdown).
"""
from __future__ import annotations

import datetime
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from isicflow.metadata import diagnosis_confirmation
from trainer.cnn import tta as tta_lib
from trainer.core import metadata_features, metrics, report, run_folder

from trainer.cnn.constants import (CLASSES_NAME, EVAL_SPLITS, EXPORT_DIR,  # noqa: F401
                                   EXTERNAL_DIR, KERAS_NAME, PLOTS_DIR, PREDICTIONS_CSV,
                                   REPORT_JSON, REPORT_MD, SERVING_CONFIG_NAME,
                                   TRAIN_CONFIG_NAME)

REPORT_FORMAT = "isicflow.cnn_report/1"


def _check_probabilities(split: str, probs: np.ndarray) -> None:
    bad = np.flatnonzero(~np.isfinite(probs) | (probs < 0) | (probs > 1))
    if bad.size:
        raise ValueError(f"{split}: {bad.size} model output(s) are not probabilities in [0, 1], "
                         f"first {probs[bad[0]]} at case {bad[0]}")


def predict_split(model, data_dir: str, split: str, image_size: int,
                  batch_size: int = 32, tta: bool = False, use_metadata: bool = False,
                  manifest: Mapping[str, Any] | None = None,
                  metadata_encoding: int = metadata_features.ENCODING_VERSION,
                  metadata_fields: Sequence[str] = metadata_features.FIELDS
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(labels int64 [N], probabilities float64 [N]) of one split, in manifest order, unaugmented
    (with `tta`, the mean over the 8 dihedral views, trainer.cnn.tta). use_metadata: the model
    takes (images, metadata features by the run's metadata_encoding and metadata_fields)
    (--use_metadata; no TTA)."""
    from trainer.core import input_pipeline

    tta_lib.check_inputs(tta, use_metadata)
    ds = input_pipeline.make_dataset(data_dir, split, image_size=image_size, batch_size=batch_size,
                                     training=False, deterministic=True,
                                     use_metadata=use_metadata, manifest=manifest,
                                     metadata_encoding=metadata_encoding,
                                     metadata_fields=metadata_fields)
    labels, probabilities = [], []
    for images, batch_labels in ds:
        probabilities.append(tta_lib.predict_on_batch(model, images, tta))
        labels.append(np.asarray(batch_labels).astype(np.int64))
    if not labels:
        return np.zeros([0], np.int64), np.zeros([0], np.float64)
    labels_arr, probs = np.concatenate(labels), np.concatenate(probabilities)
    _check_probabilities(split, probs)
    return labels_arr, probs


def predict_split_with_metadata(model, data_dir: str, split: str, image_size: int,
                                batch_size: int = 32, tta: bool = False,
                                manifest: Mapping[str, Any] | None = None,
                                metadata_encoding: int = metadata_features.ENCODING_VERSION,
                                metadata_fields: Sequence[str] = metadata_features.FIELDS
                                ) -> dict[str, np.ndarray]:
    """One split's benign/malignant records scored with their metadata: {"label" int64,
    "probability" float64, str arrays per input_pipeline.METADATA_FIELDS, and CONFIRMATION
    (isicflow.metadata.diagnosis_confirmation of the record's extras)}, same
    preprocessing as predict_split (the input pipeline's evaluation path). A model with two
    inputs (--use_metadata) gets each record's metadata features too, by the run's
    metadata_encoding and metadata_fields (no TTA)."""
    from trainer.core import input_pipeline

    ds = input_pipeline.make_eval_dataset_with_metadata(data_dir, split, image_size=image_size,
                                                        batch_size=batch_size, manifest=manifest,
                                                        metadata_input=len(model.inputs) > 1,
                                                        metadata_encoding=metadata_encoding,
                                                        metadata_fields=metadata_fields)
    columns: dict[str, list] = {"label": [], "probability": []}
    columns.update({name: [] for name in input_pipeline.METADATA_FIELDS})
    for x, batch_labels, meta in ds:
        columns["probability"].append(tta_lib.predict_on_batch(model, x, tta))
        columns["label"].append(np.asarray(batch_labels).astype(np.int64))
        for name in input_pipeline.METADATA_FIELDS:
            columns[name].append(np.array([v.decode("utf-8") for v in meta[name].numpy()],
                                          dtype=object))
    out = {name: (np.concatenate(values) if values else np.zeros([0]))
           for name, values in columns.items()}
    out[CONFIRMATION] = np.array([diagnosis_confirmation(v) for v in out["extra_metadata_json"]],
                                 dtype=object)
    _check_probabilities(split, out["probability"])
    return out


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


def dataset_counts(data_dir: str, image_size: int,
                   manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    from isicflow import dataset as dataset_lib

    manifest = dataset_lib.manifest_or_read(data_dir, manifest)
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


def write_plots(workdir: str, splits: Mapping[str, Any], threshold: float,
                predictions: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
                calibration: Mapping[str, Any] | None = None) -> dict[str, str]:
    """All plots under workdir/plots; returns {name: path relative to workdir}.

    predictions {split: (labels, scores)} adds the precision-recall plot (splits with both
    classes); calibration {split: metrics.expected_calibration_error} the reliability diagram.
    """
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
    pr = {s: {"labels": y, "scores": p} for s, (y, p) in (predictions or {}).items()
          if y.size and len(np.unique(y)) == 2}
    if pr:
        paths["pr"] = report.plot_pr_curves(pr, os.path.join(plot_dir, "pr.png"))
    if calibration:
        paths["reliability"] = report.plot_reliability_diagram(
            calibration, os.path.join(plot_dir, "reliability.png"))
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
                        batch_size: int | None = None, tta: bool = False,
                        manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Predicts validation and test, picks the threshold on validation, writes the reports.
    manifest: the dataset's, when the caller has read it.

    tta: every probability is the mean over the 8 dihedral views (trainer.cnn.tta), so the
    threshold is chosen on the probabilities a TTA export serves; recorded as report["tta"].

    Returns the report dict (as written to report.json, but with NaN where JSON has null).
    """
    if threshold_policy not in metrics.THRESHOLD_POLICIES:
        raise ValueError(f"threshold policy {threshold_policy!r} not in {metrics.THRESHOLD_POLICIES}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap resamples must be >= 0, got {bootstrap}")
    from isicflow import dataset as dataset_lib, reader

    manifest = dataset_lib.manifest_or_read(data_dir, manifest)
    os.makedirs(workdir, exist_ok=True)
    batch_size = int(batch_size or config.get("batch_size") or 32)
    data = dataset_counts(data_dir, image_size, manifest)
    predictions, test_columns = {}, None
    use_metadata = bool(config.get("use_metadata", False))
    encoding = metadata_features.run_encoding(config)  # the run's: as it was trained
    fields = metadata_features.run_fields(config)
    for split in EVAL_SPLITS:
        if reader.count_records(dataset_lib.split_info(manifest, image_size, split),
                                "binary") == 0:
            predictions[split] = (np.zeros([0], np.int64), np.zeros([0]))
        elif split == "test" and not use_metadata:  # with its records' groups, for breakdown
            test_columns = predict_split_with_metadata(model, data_dir, split, image_size,
                                                       batch_size, tta, manifest)
            predictions[split] = (test_columns["label"], test_columns["probability"])
        else:
            predictions[split] = predict_split(model, data_dir, split, image_size, batch_size, tta,
                                               use_metadata, manifest=manifest,
                                               metadata_encoding=encoding, metadata_fields=fields)
        logging.info("evaluate: %d %s cases predicted", predictions[split][0].size, split)
    threshold = choose_threshold(*predictions["validation"], threshold_policy, min_sensitivity)
    splits = {split: split_report(*predictions[split], threshold["threshold"], bootstrap=bootstrap,
                                  seed=seed) for split in EVAL_SPLITS}
    result = {
        "format": REPORT_FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "config": dict(config), "tta": bool(tta), "data": data, "threshold": threshold,
        "splits": splits,
    }
    if test_columns is not None:  # per source and patient subgroup, with AUC intervals
        result["breakdown"] = breakdown(
            test_columns, threshold["threshold"], fields_=BREAKDOWN_FIELDS + SUBGROUP_FIELDS,
            bootstrap=bootstrap, seed=seed, scope="test split")
    result["plots"] = write_plots(workdir, splits, threshold["threshold"], predictions)
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
    path = os.path.join(workdir, REPORT_JSON)
    if not os.path.exists(path):
        return run_threshold(None, workdir, default)
    with open(path, encoding="utf-8") as f:
        return threshold_of(json.load(f), path)


def run_threshold(report: Mapping[str, Any] | None, workdir: str,
                  default: float = metrics.STUDY_THRESHOLD) -> tuple[float, str]:
    """(threshold, where it came from) of workdir's report.json already read (None: the run has
    none, so the default), for a caller that also uses the report for something else."""
    if report is None:
        return float(default), f"default {default} (no {REPORT_JSON} in {workdir})"
    return threshold_of(report, os.path.join(workdir, REPORT_JSON))


def threshold_of(report: Mapping[str, Any], path: str) -> tuple[float, str]:
    """(threshold, where it came from) of a report.json already read from `path`."""
    value = report.get("threshold", {}).get("threshold")
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{path}: threshold.threshold must be a number in [0, 1], got {value!r}")
    return float(value), f"{path} (policy {report['threshold'].get('policy')})"


# ---- external evaluation: a trained model on any dataset the engine wrote ----

EXTERNAL_FORMAT = "isicflow.cnn_external_report/1"
PREDICTIONS_COLUMNS = ("split", "image_id", "label", "probability", "predicted")
CONFIRMATION = "diagnosis_confirmation"  # derived from the record's extras, not a record field
BREAKDOWN_FIELDS = ("source_collection", "diagnosis", "anatom_site", CONFIRMATION)
# Patient subgroups the training report breaks its test split down by as well (a field no
# record holds gets a note); age_approx in bands (AGE_BANDS).
SUBGROUP_FIELDS = ("sex", "age_approx", "fitzpatrick_skin_type")
AGE_BANDS = ((0, 30, "<30"), (30, 50, "30-49"), (50, 70, "50-69"), (70, 1000, ">=70"))
MISSING_GROUP = "(missing)"


def read_json(path: str, missing: Any = FileNotFoundError) -> Any:
    """A JSON file's content; `missing` when there is no such file (default: the error)."""
    if missing is not FileNotFoundError and not os.path.isfile(path):
        return missing
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class EvaluationError(ValueError):
    """A one-line reason external evaluation cannot run (the CLI prints it and exits 2)."""


def resolve_model(path: str, threshold_override: float | None = None) -> dict[str, Any]:
    """What --model points at: a run folder (model.keras + report.json's threshold, else its
    export's serving_config.json) or an export folder (model.keras + serving_config.json).

    Returns {"path", "kind", "task", "keras", "threshold": {threshold, policy, reason, source},
    "tta" (the export's setting, or the run's report.json "tta"), "image_size" (export only),
    "metadata_encoding" and "metadata_fields" (what a --use_metadata model was trained with:
    report.json's config, else the run's train_config.json, else the serving config's metadata;
    none recorded = version 1 and all fields, metadata_features),
    "mapping" (a diagnosis model's classes, trainer.cnn.diagnosis_scoring; else None)}.
    The threshold is the one the training run chose on its own validation split; a folder
    recording none is an error (never a threshold re-chosen on the scored data) unless
    threshold_override gives one explicitly. A diagnosis model has none (threshold None) and
    refuses threshold_override; its tta is recorded as a binary model's.
    """
    if not os.path.isdir(path):
        raise EvaluationError(f"--model {path!r}: no such folder (want a run folder or an export folder)")
    keras_path = os.path.join(path, KERAS_NAME)
    if not os.path.isfile(keras_path):
        raise EvaluationError(f"--model {path!r}: no {KERAS_NAME} in it (not a finished "
                              "run folder nor an export folder)")
    config_path = os.path.join(path, SERVING_CONFIG_NAME)
    report_path = os.path.join(path, REPORT_JSON)
    kind = "export" if os.path.isfile(config_path) else "run"
    from trainer.cnn import diagnosis_scoring

    try:
        mapping = diagnosis_scoring.mapping_of_folder(path)
        if mapping is not None:
            diagnosis_scoring.refuse_binary_options(
                path, {"threshold": threshold_override})
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    # Each file read once: the run's report.json, and the serving config (the export's own, or
    # the run's export/ one as the threshold's fallback).
    report = read_json(report_path, None) if kind == "run" else None
    config_file = config_path if kind == "export" else os.path.join(
        path, EXPORT_DIR, SERVING_CONFIG_NAME)
    serving = read_json(config_file, {})
    if mapping is not None:
        threshold = None
    elif threshold_override is not None:
        threshold = {"threshold": float(threshold_override), "policy": "given",
                     "reason": "given on the command line (--threshold)", "source": "--threshold"}
    elif report is not None:
        recorded = report.get("threshold", {})
        value, source = threshold_of(report, report_path)
        threshold = {"threshold": value, "policy": recorded.get("policy", "unknown"),
                     "reason": recorded.get("reason", "recorded by training"), "source": source}
    else:
        if not serving:
            raise EvaluationError(f"--model {path!r}: no threshold recorded (neither {REPORT_JSON} "
                                  f"nor {SERVING_CONFIG_NAME}); pass --threshold")
        value = serving.get("threshold")
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise EvaluationError(f"{config_file}: threshold must be a number in [0, 1], got {value!r}")
        threshold = {"threshold": float(value), "policy": "recorded",
                     "reason": f"as exported ({serving.get('threshold_source', 'source not recorded')})",
                     "source": config_file}
    if kind == "run":  # what training evaluated with (a report written before TTA: none)
        tta = bool((report or {}).get("tta", False))
    else:
        tta = bool(serving.get("tta", False))
    # The settings the model was trained with: a run's report.json config, else the run's own
    # train_config.json (a run trained with --evaluate=false has no report), else the export's.
    run_config = None
    if kind == "run":
        run_config = (report or {}).get("config")
        if run_config is None:
            run_config = read_json(os.path.join(path, TRAIN_CONFIG_NAME), None)
    recorded = run_config if run_config is not None else serving.get("metadata") or {}
    try:
        encoding = metadata_features.run_encoding(recorded)
        fields = list(metadata_features.run_fields(recorded))
    except ValueError as e:
        raise EvaluationError(f"--model {path!r}: {e}") from None
    return {"path": os.path.abspath(path), "kind": kind, "keras": keras_path, "threshold": threshold,
            "tta": tta, "task": "binary" if mapping is None else "diagnosis", "mapping": mapping,
            "image_size": serving.get("image_size") if kind == "export" else None,
            "metadata_encoding": encoding, "metadata_fields": fields}


def split_names(splits: str) -> list[str]:
    """--splits as a list of split names ('all' stays ['all']); EvaluationError for others."""
    from isicflow import dataset as dataset_lib

    if splits.strip() == "all":
        return ["all"]
    chosen = [s.strip() for s in splits.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in dataset_lib.SPLITS]
    if not chosen or unknown:
        raise EvaluationError(f"--splits {splits!r}: want 'all' or a comma list of "
                              f"{','.join(dataset_lib.SPLITS)}")
    return chosen


def read_dataset_manifest(data_dir: str) -> dict[str, Any]:
    """--data_dir's manifest (local or gs://); EvaluationError naming the flag when absent."""
    from trainer.cnn import data

    try:
        return data.read_manifest_or_fail("--data_dir", data_dir)
    except data.DataError as e:
        raise EvaluationError(str(e)) from None


def check_image_size(data_dir: str, image_size: int, manifest: Mapping[str, Any]) -> None:
    """EvaluationError naming the sizes the dataset has when it lacks image_size."""
    if str(image_size) not in manifest.get("datasets", {}):
        sizes = sorted(int(k) for k in manifest.get("datasets", {}))
        raise EvaluationError(f"{data_dir}: no {image_size}px images (the model's input size); "
                              f"the dataset has sizes {sizes}")


def select_splits(data_dir: str, image_size: int, splits: str,
                  manifest: Mapping[str, Any] | None = None) -> list[str]:
    """'all' -> every split holding benign/malignant records at image_size; else the named ones,
    each of which must hold some. Errors name what the dataset has."""
    from isicflow import dataset as dataset_lib, reader

    if manifest is None:
        manifest = read_dataset_manifest(data_dir)
    check_image_size(data_dir, image_size, manifest)
    have = {s: reader.count_records(dataset_lib.split_info(manifest, image_size, s), "binary")
            for s in dataset_lib.SPLITS if s in manifest["datasets"][str(image_size)]}
    if splits.strip() == "all":
        chosen = [s for s in dataset_lib.SPLITS if have.get(s)]
        if not chosen:
            raise EvaluationError(f"{data_dir}: no split holds benign/malignant records at "
                                  f"{image_size}px (records per split {have})")
        return chosen
    chosen = split_names(splits)
    empty = [s for s in chosen if not have.get(s)]
    if empty:
        raise EvaluationError(f"{data_dir}: selected split(s) {','.join(empty)} hold no "
                              f"benign/malignant records at {image_size}px (records per split {have})")
    return list(dict.fromkeys(chosen))


def _age_band(value: str) -> str:
    """An age_approx string (the record's float; -1 = unknown) as its AGE_BANDS name."""
    try:
        age = float(value)
    except ValueError:
        return ""
    return next((name for low, high, name in AGE_BANDS if low <= age < high), "")


def breakdown(columns: Mapping[str, np.ndarray], threshold: float, *,
              fields_: tuple[str, ...] = BREAKDOWN_FIELDS, bootstrap: int = 0, seed: int = 0,
              scope: str = "all scored cases (every selected split)") -> dict[str, Any]:
    """Per group of each of `fields_` (diagnosis normalised with
    isicflow.diagnosis.normalise_diagnosis, as the manifest counts it; age_approx in AGE_BANDS):
    metrics.group_metrics, plus with bootstrap > 0 the AUC's percentile interval
    ("auc_interval": {low, high}, metrics.bootstrap_intervals) where both classes are present.
    Empty values form the group MISSING_GROUP; a field empty on every record gets a note."""
    from isicflow.diagnosis import normalise_diagnosis

    labels, scores = columns["label"], columns["probability"]
    fields: dict[str, Any] = {}
    for field in fields_:
        raw = [str(v).strip() for v in columns[field]]
        if field == "age_approx":
            raw = [_age_band(v) for v in raw]
        if not any(raw):
            fields[field] = {"note": f"no record holds {field}; no breakdown"}
            continue
        if field == "diagnosis":
            values = [normalise_diagnosis(v) for v in raw]
        else:
            values = [v or MISSING_GROUP for v in raw]
        values_arr = np.array(values, dtype=object)
        names = sorted(set(values), key=lambda v: (-values.count(v), v))
        groups = {}
        for name in names:
            y, p = labels[values_arr == name], scores[values_arr == name]
            groups[name] = metrics.group_metrics(y, p, threshold)
            if bootstrap > 0 and len(np.unique(y)) == 2:
                groups[name]["auc_interval"] = metrics.auc_interval(
                    y, p, resamples=bootstrap, seed=seed)
        fields[field] = {"groups": groups}
        if field == "diagnosis":
            fields[field]["vocabulary"] = "isicflow.diagnosis.normalise_diagnosis"
        if field == "age_approx":
            fields[field]["bands"] = [name for _, _, name in AGE_BANDS]
    return {"scope": scope, "cases": int(labels.size), "fields": fields}


def write_predictions_csv(path: str, per_split: Mapping[str, Mapping[str, np.ndarray]],
                          threshold: float) -> str:
    """One row per scored image: split, image_id, label (0/1), probability, predicted (0/1)."""
    import csv

    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTIONS_COLUMNS)
        for split, cols in per_split.items():
            for image_id, label, p in zip(cols["image_id"], cols["label"], cols["probability"]):
                writer.writerow([split, image_id, int(label), repr(float(p)), int(p >= threshold)])
    os.replace(tmp, path)
    return path


def evaluate_external(model_path: str, data_dir: str, *, splits: str = "all",
                      out: str | None = None, tta: bool | None = None, batch_size: int = 32,
                      image_size: int | None = None, bootstrap: int = 1000, seed: int = 0,
                      threshold: float | None = None,
                      calibration_bins: int = metrics.CALIBRATION_BINS,
                      adapt_batchnorm: int = 0) -> dict[str, Any]:
    """Scores a trained model on another dataset at its recorded threshold; writes into `out`
    (default <model>/external/<dataset folder name>): report.json, report.md, predictions.csv,
    plots/{roc,pr,confusion,reliability}.png. Returns the report dict. EvaluationError (a
    ValueError) for a missing model, a dataset without manifest, a missing size, empty splits.
    A diagnosis model goes to trainer.cnn.diagnosis_scoring.evaluate_external, which writes
    report.json, report.md, predictions.csv (its own columns and metrics) and only
    plots/confusion.png (no roc, pr or reliability plot); a threshold given for one is an
    EvaluationError. adapt_batchnorm=N >= 2: every image is scored by a copy of the model whose
    batch-norm statistics were re-estimated on the other scored images (N folds by image id,
    trainer.cnn.adapt_batchnorm), recorded as report["adapt_batchnorm"]; 0 scores as trained.
    """
    if bootstrap < 0 or batch_size < 1 or calibration_bins < 1:
        raise EvaluationError(f"need bootstrap >= 0, batch_size >= 1, calibration bins >= 1; got "
                              f"{bootstrap}, {batch_size}, {calibration_bins}")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise EvaluationError(f"--threshold must be in [0, 1], got {threshold}")
    if adapt_batchnorm == 1 or adapt_batchnorm < 0:
        raise EvaluationError(f"--adapt_batchnorm must be 0 (off) or >= 2 folds, got "
                              f"{adapt_batchnorm}")
    split_names(splits)  # a typo is refused before the model is loaded
    model_info = resolve_model(model_path, threshold)
    manifest = read_dataset_manifest(data_dir)
    from trainer.cnn.models import load_keras_model

    def load():
        try:
            return load_keras_model(model_info["keras"])
        except Exception as e:  # Keras raises many kinds for a file it cannot read
            raise EvaluationError(f"--model {model_path!r}: {model_info['keras']} cannot be "
                                  f"loaded ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None

    model = load()
    if adapt_batchnorm:
        from trainer.cnn import adapt_batchnorm as adapt

        if not adapt.batchnorm_layers(model):
            raise EvaluationError(f"--adapt_batchnorm: --model {model_path!r} has no "
                                  "batch-norm layer, nothing to adapt")
    model_size = int(model.inputs[0].shape[1])
    image_size = int(image_size or model_size)
    if image_size != model_size:
        raise EvaluationError(f"--image_size {image_size} differs from the model's input size {model_size}")
    dataset_name = os.path.basename(os.path.normpath(os.path.abspath(data_dir)))
    out = out or os.path.join(model_path, EXTERNAL_DIR, dataset_name)
    use_tta = model_info["tta"] if tta is None else bool(tta)
    try:
        tta_lib.check_inputs(use_tta, len(model.inputs) > 1)
    except ValueError as e:
        raise EvaluationError(f"--model {model_path!r}: {e}") from None
    if model_info["task"] == "diagnosis":
        from trainer.cnn import diagnosis_scoring

        check_image_size(data_dir, image_size, manifest)
        try:
            return diagnosis_scoring.evaluate_external(
                model, model_info, data_dir, manifest, splits=split_names(splits), out=out,
                image_size=image_size, batch_size=batch_size, tta=use_tta,
                adapt=(load, adapt_batchnorm, seed) if adapt_batchnorm else None)
        except diagnosis_scoring.DiagnosisScoringError as e:
            raise EvaluationError(str(e)) from None
    if len(model.inputs) > 2 or model.outputs[0].shape[-1] != 1:
        raise EvaluationError(f"--model {model_path!r}: this one has a diagnosis head without "
                              f"its classes ({CLASSES_NAME} in a run folder, 'classes' in an "
                              f"export's {SERVING_CONFIG_NAME}) or other inputs; a "
                              "benign/malignant model takes the image, or the image and "
                              "--use_metadata's features")
    chosen = select_splits(data_dir, image_size, splits, manifest)
    t = model_info["threshold"]["threshold"]
    os.makedirs(out, exist_ok=True)

    encoding = model_info["metadata_encoding"]
    fields = model_info.get("metadata_fields", metadata_features.FIELDS)

    def score(scoring_model) -> dict[str, dict[str, np.ndarray]]:
        return {split: predict_split_with_metadata(scoring_model, data_dir, split, image_size,
                                                   batch_size, use_tta, manifest, encoding,
                                                   fields) for split in chosen}

    adaptation = None
    if adapt_batchnorm:
        def batches():  # the scored records' model inputs and image ids, split after split
            from trainer.core import input_pipeline

            for split in chosen:
                for x, _, meta in input_pipeline.make_eval_dataset_with_metadata(
                        data_dir, split, image_size=image_size, batch_size=batch_size,
                        manifest=manifest, metadata_input=len(model.inputs) > 1,
                        metadata_encoding=encoding, metadata_fields=fields):
                    yield x, [v.decode("utf-8") for v in meta["image_id"].numpy()]

        try:
            per_split, adaptation = adapt.score_cross_fitted(load, batches, score,
                                                             adapt_batchnorm, seed, image_size)
        except adapt.AdaptationError as e:
            raise EvaluationError(str(e)) from None
    else:
        per_split = score(model)
    for split, cols in per_split.items():
        logging.info("external: %d %s cases predicted", cols["label"].size, split)
    pairs = {split: (cols["label"], cols["probability"]) for split, cols in per_split.items()}
    pooled = {name: np.concatenate([cols[name] for cols in per_split.values()])
              for name in next(iter(per_split.values()))}
    if len(chosen) > 1:
        pairs["all"] = (pooled["label"], pooled["probability"])
    split_reports = {s: split_report(y, p, t, bootstrap=bootstrap, seed=seed)
                     for s, (y, p) in pairs.items()}
    calibration = {s: metrics.expected_calibration_error(y, p, calibration_bins)
                   for s, (y, p) in pairs.items()}
    result = {
        "format": EXTERNAL_FORMAT, "external": True,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "config": {"model": model_info["path"], "data_dir": os.path.abspath(data_dir),
                   "splits": chosen, "tta": use_tta, "batch_size": batch_size,
                   "image_size": image_size, "bootstrap": bootstrap, "seed": seed,
                   "calibration_bins": calibration_bins, "adapt_batchnorm": adapt_batchnorm,
                   **({"metadata_encoding": model_info["metadata_encoding"],
                       "metadata_fields": list(model_info.get("metadata_fields",
                                                              metadata_features.FIELDS))}
                      if len(model.inputs) > 1 else {})},
        "model": {k: model_info[k] for k in ("path", "kind", "keras")},
        "tta": use_tta, **({"adapt_batchnorm": adaptation} if adaptation else {}),
        "data": dataset_counts(data_dir, image_size, manifest),
        "threshold": model_info["threshold"],
        "splits": split_reports, "calibration": calibration,
        "breakdown": breakdown(pooled, t),
        "predictions_csv": PREDICTIONS_CSV,
    }
    write_predictions_csv(os.path.join(out, PREDICTIONS_CSV), per_split, t)
    result["plots"] = write_plots(out, split_reports, t, pairs, calibration)
    _check_all_finite_or_explained({k: v for k, v in result.items() if k != "config"})
    run_folder.write_json(os.path.join(out, REPORT_JSON), result)
    report.write_markdown(os.path.join(out, REPORT_MD), result)
    result["out"] = out
    return result
