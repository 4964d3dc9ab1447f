"""The evaluation protocol for the diagnosis task (trainer.cnn --task=diagnosis): balanced
multi-class accuracy (mean per-class recall, the ISIC 2018 metric) per held-out source and
in source, as mean +- sd over seeds with a pooled 95% interval, per-class recall and the
confusion matrix summed over seeds. benchmarks.protocol calls these for diagnosis runs.

Balanced accuracy, per-class recall and the confusion matrix are scikit-learn's
(balanced_accuracy_score, recall_score, confusion_matrix). Balanced accuracy counts the classes
present in the scored images: a held-out source lacking a class is scored on the classes it has,
and the summary lists them with their image counts. The pooled interval mirrors
trainer.core.metrics.seed_summary: one bootstrap draw of image indices (metrics.case_bootstrap)
is applied to every seed's predictions, the statistic is the mean over seeds, and each draw's
balanced accuracy counts the classes present in that draw.

Per-image predictions come from trainer.cnn.evaluate (trainer.cnn.diagnosis_scoring;
predictions.csv: split, image_id, label and predicted as class names, one probability column
per class; report.json: classes, and the records not scored: excluded_unknown (no diagnosis)
and excluded_unseen (a diagnosis outside the classes), carried into each pooled row).
benchmarks.compare and benchmarks.ensemble read diagnosis runs through predictions_of_runs
(and read_probabilities) and score them with balanced_accuracy.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score

from benchmarks import common as bench_common, protocol_folds
from trainer.cnn import diagnosis
from trainer.cnn.constants import PREDICTIONS_CSV as PREDICTIONS, REPORT_JSON as REPORT
from trainer.core import metrics


def _check_indices(true: np.ndarray, runs: Sequence[np.ndarray], k: int) -> None:
    """ValueError unless every array is the same non-empty 1-d shape with indices in [0, k)
    (sklearn's confusion_matrix would silently drop the others)."""
    if true.ndim != 1 or not true.size or any(p.shape != true.shape for p in runs):
        raise ValueError(f"need equal non-empty 1-d index arrays, got {true.shape}, "
                         f"{[p.shape for p in runs]}")
    bad = sorted(set(np.unique(np.concatenate([true, *runs])).tolist()) - set(range(k)))
    if bad:
        raise ValueError(f"class indices must be in [0, {k}), found {bad[:5]}")


def balanced_accuracy(true: np.ndarray, predicted: np.ndarray) -> float:
    """sklearn's balanced_accuracy_score: mean recall over the classes present in `true`
    (its warning for a predicted class absent from `true`, usual in a bootstrap draw, muted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(true, predicted))


def seed_summary(true: np.ndarray, predicted_per_seed: Sequence[np.ndarray],
                 classes: Sequence[str], *, resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, Any]:
    """Several seeds' predicted classes of the same images: balanced accuracy per seed, mean,
    sample sd and the paired pooled interval; per-class recall (mean over seeds, None for an
    absent class); the confusion matrix summed over seeds; the classes counted and their
    image counts."""
    k = len(classes)
    y = np.asarray(true, np.int64)
    runs = [np.asarray(p, np.int64) for p in predicted_per_seed]
    if not runs:
        raise ValueError("no seeds")
    _check_indices(y, runs, k)
    support = np.bincount(y, minlength=k)
    if int((support > 0).sum()) < 2:
        raise ValueError(f"need images of >= 2 classes for a balanced accuracy, got "
                         f"{dict(zip(classes, support.tolist()))}")
    ks = list(range(k))
    per_seed = [balanced_accuracy(y, p) for p in runs]
    draws, skipped = metrics.case_bootstrap(
        y, lambda idx: float(np.mean([balanced_accuracy(y[idx], p[idx]) for p in runs])),
        resamples=resamples, seed=seed)
    low, high = metrics.percentile_interval(draws, confidence)
    recall = np.mean([recall_score(y, p, labels=ks, average=None, zero_division=0)
                      for p in runs], axis=0)
    return {"seeds": len(runs), "cases": int(y.size), "resamples": resamples,
            "skipped_single_class": skipped, "confidence": confidence, "classes": list(classes),
            "classes_counted": {c: int(n) for c, n in zip(classes, support) if n},
            "balanced_accuracy": {"per_seed": per_seed, "mean": float(np.mean(per_seed)),
                                  "sd": float(np.std(per_seed, ddof=1)) if len(runs) > 1
                                  else math.nan, "pooled_ci": [low, high]},
            "per_class_recall": {c: (float(r) if n else None)
                                 for c, r, n in zip(classes, recall, support)},
            "confusion_summed": np.sum([confusion_matrix(y, p, labels=ks) for p in runs],
                                       axis=0).tolist()}


def _rows(output: str, split: str | None) -> tuple[list[str], list[dict[str, str]]]:
    """(classes from report.json, predictions.csv rows of `split` (None: every row) sorted by
    image id) of one trainer.cnn.evaluate output of a diagnosis model."""
    with open(os.path.join(output, REPORT), encoding="utf-8") as f:
        classes = list(json.load(f)["classes"])
    with open(os.path.join(output, PREDICTIONS), encoding="utf-8", newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if split is None or r["split"] == split),
                      key=lambda r: r["image_id"])
    return classes, rows


def read_predictions(output: str, split: str | None
                     ) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(image ids sorted, true class indices, predicted class indices, classes) of one
    trainer.cnn.evaluate output of a diagnosis model, keeping `split` only (None: every row)."""
    classes, rows = _rows(output, split)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r[c] for r in rows for c in ("label", "predicted")} - set(index))
    if unknown:
        raise ValueError(f"{output}: classes {unknown} not in its report's {classes}")
    return ([r["image_id"] for r in rows], np.array([index[r["label"]] for r in rows], np.int64),
            np.array([index[r["predicted"]] for r in rows], np.int64), classes)


def read_probabilities(output: str, split: str | None) -> np.ndarray:
    """(images, classes) probabilities of one diagnosis evaluation (its p_<class> columns), the
    rows in read_predictions' order; ValueError naming the output when a column is missing."""
    classes, rows = _rows(output, split)
    missing = [f"p_{c}" for c in classes if rows and f"p_{c}" not in rows[0]]
    if missing:
        raise ValueError(f"{output}: {PREDICTIONS} lacks the columns {missing}")
    return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows], np.float64
                    ).reshape(len(rows), len(classes))


def excluded_counts(output: str, split: str | None) -> dict[str, int | None]:
    """The images of `split` (None: every split) one evaluation did not score, from its
    report.json: {"unknown_diagnosis": n, "unseen_class": n (a named diagnosis outside the
    classes); None where the report does not record it (written before it was counted apart,
    when unknown_diagnosis holds both)}."""
    with open(os.path.join(output, REPORT), encoding="utf-8") as f:
        report = json.load(f)

    def total(key: str) -> int | None:
        per_split = report.get(key)
        if per_split is None:
            return None
        return int(sum(per_split.values()) if split is None else per_split.get(split, 0))

    return {"unknown_diagnosis": total("excluded_unknown"),
            "unseen_class": total("excluded_unseen")}


def _difference(first: tuple, other: tuple) -> str:
    """What differs between two read_predictions results, as "other's vs first's" ("" when
    nothing that matters): the classes, the count of image ids and the first differing id,
    or the first image labelled otherwise."""
    (ids, true, _, classes), (ids2, true2, _, classes2) = first, other
    if classes2 != classes:
        return f"classes {classes2} vs {classes}"
    differing = sorted(set(ids) ^ set(ids2))
    if differing:
        return f"{len(ids2)} vs {len(ids)} image ids, first differing id {differing[0]}"
    wrong = np.flatnonzero(true != true2)
    if wrong.size:
        i = int(wrong[0])
        return (f"image {ids[i]} labelled {classes[true2[i]]} vs {classes[true[i]]} "
                f"({wrong.size} labels differ)")
    return ""


def predictions_of_runs(outputs: Sequence[str], split: str | None
                        ) -> tuple[list[str], np.ndarray, list[np.ndarray], list[str]]:
    """(image ids, true class indices, predicted class indices per run, classes) of runs that
    scored the same images with the same labels and classes; ValueError naming the first run
    that differs from the first one, and what differs, otherwise."""
    read = [read_predictions(o, split) for o in outputs]
    for output, r in zip(outputs[1:], read[1:]):
        why = _difference(read[0], r)
        if why:
            raise ValueError(f"runs scored different images or classes: {output} vs "
                             f"{outputs[0]}: {why}")
    ids, true, _, classes = read[0]
    return ids, true, [r[2] for r in read], classes


def pooled(outputs: Sequence[str], split: str | None, resamples: int) -> dict[str, Any]:
    """seed_summary over the runs' predictions of the same images (predictions_of_runs), with
    the images the first run's evaluation left out ("excluded": excluded_counts)."""
    _, true, predicted, classes = predictions_of_runs(outputs, split)
    return {**seed_summary(true, predicted, classes, resamples=resamples),
            "excluded": excluded_counts(outputs[0], split)}


def heldout_skip_reason(mapping: Mapping[str, Any], diagnoses: Mapping[str, int]
                        ) -> str | None:
    """Why a held-out source cannot be scored by runs with these classes (their classes.json:
    trainer.cnn.diagnosis.class_of), None when it can: its images must fall in >= 2 of the
    runs' classes (a diagnosis the runs merged into `other` or dropped counts as theirs).
    diagnoses: {diagnosis: images} of the held-out dataset."""
    classes = list(mapping["classes"])
    counted: dict[str, int] = {}
    dropped = 0
    for name, n in diagnoses.items():
        k = diagnosis.class_of(mapping, name)
        if k < 0:
            dropped += int(n)
        elif n:
            counted[classes[k]] = counted.get(classes[k], 0) + int(n)
    if len(counted) >= 2:
        return None
    return (f"its images fall in {counted or 'none'} of the runs' classes {classes} "
            f"({dropped} outside them): no balanced accuracy")


def enough_classes(diagnoses: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
    """{source: why skipped} for sources with images of fewer than 2 known diagnoses (no
    balanced accuracy); diagnoses: {source: {normalised diagnosis: images}}."""
    skipped = {}
    for source, counts in diagnoses.items():
        known = sorted(d for d, n in counts.items() if n and not diagnosis.is_unknown(d))
        if len(known) < 2:
            skipped[source] = f"only {known} images: no balanced accuracy"
    return skipped


def cell(summary: Mapping[str, Any]) -> str:
    m = summary["balanced_accuracy"]
    return f"{m['mean']:.3f} ± {m['sd']:.3f} [{m['pooled_ci'][0]:.3f}, {m['pooled_ci'][1]:.3f}]"


def _recall_cell(summary: Mapping[str, Any], c: str) -> str:
    r = summary["per_class_recall"][c]
    return "n/a" if r is None else f"{r:.2f} ({summary['classes_counted'][c]})"


def _images_cell(summary: Mapping[str, Any]) -> str:
    """Images scored (excluded: unknown diagnosis, unseen class; ? where not recorded)."""
    excluded = summary.get("excluded") or {}
    counts = [excluded.get(k) for k in ("unknown_diagnosis", "unseen_class")]
    return f"{summary['cases']} ({', '.join('?' if n is None else str(n) for n in counts)})"


def markdown(result: Mapping[str, Any], seeds: str) -> str:
    """The diagnosis table: balanced accuracy per held-out source and in source, then per-class
    recall (images) and the summed confusion matrix of every held-out source."""
    lines = [f"Base `{result['base']}` {' '.join(result['flags'])}, {result['image_size']} px, "
             f"{bench_common.engine_note(result)}seeds {seeds}, diagnosis task. Each cell: "
             "balanced accuracy (mean per-class recall over the classes present) mean ± sd "
             "over seeds [pooled 95% interval, bootstrap over images paired across seeds]. "
             "Images: the held-out images scored "
             "(and those not scored: unknown diagnosis, a diagnosis outside the runs' "
             "classes)." + protocol_folds.table_note(result), "",
             "| held out | images scored (excluded: unknown, unseen) | classes counted | "
             "in-source val | in-source test | "
             "held out | gap (val - held-out) |", "|---|---|---|---|---|---|---|"]
    for source, row in result["rows"].items():
        held, val = row.get("heldout"), row["in_source_validation"]
        gap = (f"{val['balanced_accuracy']['mean'] - held['balanced_accuracy']['mean']:+.3f}"
               if held else "n/a")
        counted = ", ".join(f"{c} {n}" for c, n in held["classes_counted"].items()) if held \
            else "n/a"
        lines.append(f"| {source} | {_images_cell(held) if held else 'n/a'} | {counted} | "
                     f"{cell(val)} | {cell(row['in_source_test'])} | "
                     f"{cell(held) if held else 'n/a'} | {gap} |")
    for source, why in result["skipped"].items():
        lines.append(f"| {source} | skipped: {why} |  |  |  |  |  |")
    for source, row in result["rows"].items():
        held = row.get("heldout") or (row["in_source_test"] if row.get("folds") else None)
        if not held:
            continue
        classes = held["classes"]
        title = f"Held out {source}" if row.get("heldout") else (
            f"Cross-validated test ({row['folds']} folds, every image once)")
        lines += ["", f"{title}: per-class recall, mean over seeds (images)", "",
                  "| " + " | ".join(classes) + " |", "|" + "---|" * len(classes),
                  "| " + " | ".join(_recall_cell(held, c) for c in classes) + " |", "",
                  f"{title}: confusion matrix summed over {held['seeds']} seeds "
                  "(rows true, columns predicted)", "",
                  "| true \\ predicted | " + " | ".join(classes) + " |",
                  "|---|" + "---|" * len(classes)]
        lines += [f"| {c} | " + " | ".join(map(str, counts)) + " |"
                  for c, counts in zip(classes, held["confusion_summed"])]
    return "\n".join(lines) + "\n"
