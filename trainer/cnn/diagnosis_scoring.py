"""External evaluation of a diagnosis model (trainer.cnn --task=diagnosis) on any dataset the
data engine wrote: trainer.cnn.evaluate's diagnosis branch (trainer.cnn.evaluation.evaluate_external
hands a model whose folder carries classes here).

The classes are the model's own: a run folder's classes.json, or an export's serving_config.json
classes and grouped_as_other (the same index trainer.cnn.diagnosis.class_mapping builds, so a
record maps to the class the run's own evaluation gave it). Records whose diagnosis the model's
classes exclude are not scored and are counted apart: unknown/empty diagnoses
(excluded_unknown) and named diagnoses outside the classes of a model without `other`
(excluded_unseen). Records stream through trainer.cnn.diagnosis.make_dataset (the training
evaluation's reading and scaling); the predicted class is the softmax's argmax; per-split
metrics are trainer.cnn.diagnosis.split_metrics (scikit-learn). With TTA (the caller's --tta,
else what the run's report.json or the export's serving_config.json recorded) each image's
class probabilities are the mean over its 8 dihedral views (trainer.cnn.tta). The binary-only
setting (a threshold) is refused, and no bootstrap or calibration is computed: the report has
none of them.

Writes report.json, report.md, predictions.csv (split, image_id, label, predicted as class
names, p_<class> per class) and plots/confusion.png.
"""
from __future__ import annotations

import csv
import datetime
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from trainer.cnn import tta as tta_lib
from trainer.core import metadata_features
from trainer.cnn.constants import (CLASSES_NAME, PLOTS_DIR, PREDICTIONS_CSV, REPORT_JSON,
                                   REPORT_MD, SERVING_CONFIG_NAME)

EXTERNAL_FORMAT = "isicflow.cnn_diagnosis_external_report/1"
# trainer.cnn.evaluate flags that mean something for a benign/malignant model only
BINARY_ONLY_FLAGS = ("threshold",)


class DiagnosisScoringError(ValueError):
    """The model or the dataset cannot be scored (trainer.cnn.evaluate prints it, exits 2)."""


def mapping_of_folder(path: str) -> dict[str, Any] | None:
    """The class mapping a model folder carries: a run folder's classes.json, else an export's
    serving_config.json with task "diagnosis"; None for a benign/malignant model's folder."""
    from trainer.cnn import diagnosis

    mapping = diagnosis.read_mapping(path)
    if mapping is not None:
        return mapping
    config_path = os.path.join(path, SERVING_CONFIG_NAME)
    if not os.path.isfile(config_path):
        return None
    with open(config_path, encoding="utf-8") as f:
        serving = json.load(f)
    if serving.get("task") != "diagnosis":
        return None
    return mapping_from_classes(serving.get("classes"), serving.get("grouped_as_other", []),
                                config_path)


def mapping_from_classes(classes: Sequence[str] | None, grouped: Sequence[str],
                         where: str) -> dict[str, Any]:
    """The mapping of an export's classes and grouped_as_other: each named class its index,
    each grouped diagnosis `other`'s (trainer.cnn.diagnosis.class_mapping's index)."""
    from trainer.cnn import diagnosis

    if not classes or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ValueError(f"{where}: want >= 2 class names under 'classes', got {classes!r}")
    if grouped and diagnosis.OTHER not in classes:
        raise ValueError(f"{where}: grouped_as_other {list(grouped)} without an "
                         f"'{diagnosis.OTHER}' class in {list(classes)}")
    return {"classes": list(classes), "index": diagnosis.class_index(classes, grouped),
            "grouped_as_other": list(grouped), "source": where}


def refuse_binary_options(model_path: str, options: Mapping[str, Any]) -> None:
    """ValueError naming the binary-only settings (BINARY_ONLY_FLAGS) given (not None) in
    options ({flag name: value}) for a diagnosis model."""
    given = [f"--{name}" for name in BINARY_ONLY_FLAGS if options.get(name) is not None]
    if given:
        raise ValueError(f"--model {model_path!r} is a diagnosis model (its class is the "
                         f"softmax's argmax): only benign/malignant models take "
                         f"{', '.join(given)}")


def select_splits(data_dir: str, image_size: int, splits: Sequence[str],
                  mapping: Mapping[str, Any], manifest: Mapping[str, Any]
                  ) -> tuple[list[str], dict[str, dict[str, int]]]:
    """(splits to score, {"excluded_unknown": {split: records}, "excluded_unseen": {split:
    records}}: the records not scored, of every split scored, and with 'all' of every split
    present). splits: ['all'] (every split holding records of the model's classes) or names,
    each of which must hold some; ValueError naming what each split holds otherwise."""
    from isicflow import dataset as dataset_lib
    from trainer.cnn import diagnosis

    present = [s for s in dataset_lib.SPLITS if s in manifest["datasets"][str(image_size)]]
    counts = {s: diagnosis.split_exclusions(data_dir, s, image_size, mapping, manifest)
              for s in present}
    have = {s: c["kept"] for s, c in counts.items()}
    chosen = [s for s in present if have[s]] if splits == ["all"] else list(dict.fromkeys(splits))
    empty = [s for s in chosen if not have.get(s)]
    if not chosen or empty:
        raise ValueError(f"{data_dir}: split(s) {','.join(empty or splits)} hold no records of "
                         f"the model's classes at {image_size}px (records per split {have}; "
                         f"excluded {counts})")
    counted = present if splits == ["all"] else chosen
    return chosen, {"excluded_unknown": {s: counts[s]["unknown"] for s in counted},
                    "excluded_unseen": {s: counts[s]["unseen"] for s in counted}}


def write_predictions_csv(path: str, per_split: Mapping[str, Mapping[str, Any]],
                          classes: Sequence[str]) -> str:
    """One row per scored image: split, image_id, label, predicted (class names), p_<class>."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["split", "image_id", "label", "predicted", *(f"p_{c}" for c in classes)])
        for split, cols in per_split.items():
            for image_id, y, p in zip(cols["image_id"], cols["label"], cols["probabilities"]):
                writer.writerow([split, image_id, classes[int(y)], classes[int(p.argmax())],
                                 *map(repr, map(float, p))])
    os.replace(tmp, path)
    return path


def check_outputs(model, model_info: Mapping[str, Any]) -> None:
    """ValueError unless the model outputs one probability per class of its mapping."""
    classes = model_info["mapping"]["classes"]
    k = int(model.outputs[0].shape[-1])
    if k != len(classes):
        raise ValueError(f"--model {model_info['path']!r}: the model outputs {k} values, its "
                         f"{CLASSES_NAME} or serving config names {len(classes)} classes "
                         f"{classes}")


def evaluate_external(model, model_info: Mapping[str, Any], data_dir: str,
                      manifest: Mapping[str, Any], *, splits: Sequence[str], out: str,
                      image_size: int, batch_size: int = 32, tta: bool = False,
                      adapt: tuple[Callable[[], Any], int, int] | None = None) -> dict[str, Any]:
    """Scores the diagnosis model (check_outputs) on the splits select_splits chooses from
    `splits` (with several, a pooled 'all' row is added), counting the records not scored.
    Writes the report, predictions and confusion plot into `out`. DiagnosisScoringError for
    a model whose outputs are not its classes or splits without records of them. adapt:
    (load a fresh copy of the model, folds, seed): each image scored by the copy whose
    batch-norm statistics came from the other folds (trainer.cnn.adapt_batchnorm)."""
    from trainer.cnn import diagnosis
    from trainer.core import run_folder

    mapping, classes = model_info["mapping"], model_info["mapping"]["classes"]
    try:
        check_outputs(model, model_info)
        chosen, excluded = select_splits(data_dir, image_size, splits, mapping, manifest)
    except ValueError as e:
        raise DiagnosisScoringError(str(e)) from None
    use_metadata = len(model.inputs) > 1  # TTA with metadata: the caller refuses it first
    fields = list(model_info.get("metadata_fields", metadata_features.FIELDS))  # the run's

    def score(scoring_model) -> dict[str, dict[str, Any]]:
        return {s: diagnosis.predict_split_columns(
            scoring_model, data_dir, s, image_size, mapping, batch_size, use_metadata, manifest,
            model_info["metadata_encoding"], fields, tta) for s in chosen}

    adaptation = None
    if adapt:
        from trainer.cnn import adapt_batchnorm

        load, folds, seed = adapt

        def batches():  # the scored records' model inputs and image ids, split after split
            for s in chosen:
                for images, (_, image_id) in diagnosis.make_dataset(
                        data_dir, s, mapping, image_size=image_size, batch_size=batch_size,
                        training=False, deterministic=True, use_metadata=use_metadata,
                        manifest=manifest, metadata_encoding=model_info["metadata_encoding"],
                        image_ids=True, metadata_fields=fields):
                    yield images, [v.decode("utf-8") for v in image_id.numpy()]

        try:
            per_split, adaptation = adapt_batchnorm.score_cross_fitted(
                load, batches, score, folds, seed, image_size)
        except adapt_batchnorm.AdaptationError as e:
            raise DiagnosisScoringError(str(e)) from None
    else:
        per_split = score(model)
    pairs = {s: (c["label"], c["probabilities"]) for s, c in per_split.items()}
    if len(chosen) > 1:
        pairs["all"] = (np.concatenate([c["label"] for c in per_split.values()]),
                        np.concatenate([c["probabilities"] for c in per_split.values()]))
    metrics = {s: diagnosis.split_metrics(y, p, classes) for s, (y, p) in pairs.items()}
    os.makedirs(os.path.join(out, PLOTS_DIR), exist_ok=True)
    write_predictions_csv(os.path.join(out, PREDICTIONS_CSV), per_split, classes)
    plot = diagnosis.plot_confusion(metrics, classes, os.path.join(out, PLOTS_DIR, "confusion.png"))
    result = {
        "format": EXTERNAL_FORMAT, "external": True, "task": "diagnosis",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC"),
        "config": {"model": model_info["path"], "data_dir": os.path.abspath(data_dir),
                   "splits": chosen, "tta": bool(tta), "batch_size": batch_size,
                   "image_size": image_size, "adapt_batchnorm": adapt[1] if adapt else 0,
                   **({"metadata_encoding": model_info["metadata_encoding"],
                       "metadata_fields": fields} if use_metadata else {})},
        "model": {key: model_info[key] for key in ("path", "kind", "keras")},
        "tta": bool(tta), **({"adapt_batchnorm": adaptation} if adaptation else {}),
        "classes": classes, "grouped_as_other": mapping.get("grouped_as_other", []),
        "excluded_unknown": dict(excluded["excluded_unknown"]),
        "excluded_unseen": dict(excluded["excluded_unseen"]), "splits": metrics,
        "plots": {"confusion": os.path.relpath(plot, out)}, "predictions_csv": PREDICTIONS_CSV}
    run_folder.write_json(os.path.join(out, REPORT_JSON), result)
    lines = ["# Diagnosis model on another dataset", "",
             f"Model `{model_info['path']}`; data `{os.path.abspath(data_dir)}`, "
             f"{image_size} px.", "",
             *([adaptation["sentence"], ""] if adaptation else []),
             *([tta_lib.REPORT_LINE, ""] if tta else []),
             "Classes: " + ", ".join(classes), "",
             "Excluded (unknown diagnosis): " + ", ".join(
                 f"{s} {n}" for s, n in excluded["excluded_unknown"].items()), "",
             "Excluded (a diagnosis outside the model's classes, no `other`): " + ", ".join(
                 f"{s} {n}" for s, n in excluded["excluded_unseen"].items()), "",
             *diagnosis.split_lines(metrics, classes),
             f"![confusion matrices]({result['plots']['confusion']})", ""]
    with open(os.path.join(out, REPORT_MD), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return {**result, "out": out}
