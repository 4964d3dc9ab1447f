"""Cross-validation for benchmarks.protocol (--folds=K): every image tested once.

One test split of 599 images holds 6 dermatofibromas and 7 vascular lesions, each a seventh of
HAM10000's balanced accuracy: its interval is ±0.07 wide. With --folds=K the engine writes K
datasets (--folds=K --fold=k: fold k tests, fold k+1 validates, the rest trains; groups whole,
every label and diagnosis spread evenly: beam_jobs.splits.assign_folds), each seed trains once per
fold, and write_out_of_fold gathers one seed's K evaluations into one evaluation folder of the
usual format (trainer.cnn.evaluate's predictions.csv and report.json) where every image of the
download appears once in test, scored by the one model that neither trained on it nor chose its
checkpoint by it, and once in validation. The protocol's readers (seed_summary,
benchmarks.compare) then read it as they read any run: out-of-fold predictions pooled over folds.

A binary fold's rows keep the fold model's own threshold in a `threshold` column (a pooled
out-of-fold set has no one threshold; protocol.read_scores reads it, so sensitivity and
specificity count each image at its own model's threshold); the AUC ranks the pooled scores of
K models, the usual pooled cross-validated AUC.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Sequence

from trainer.cnn.constants import PREDICTIONS_CSV as PREDICTIONS, REPORT_JSON as REPORT

CROSS_VALIDATED = "cross-validated"  # the protocol row (and runs/ folder) of the pooled folds
THRESHOLD_COLUMN = "threshold"  # a binary out-of-fold row's own model's threshold


def fold_name(fold: int, folds: int) -> str:
    """The dataset and row name of one fold: "fold_2_of_5"."""
    return f"fold_{fold}_of_{folds}"


def engine_flags(fold: int, folds: int) -> list[str]:
    """The engine flags that write fold `fold`'s dataset."""
    return [f"--folds={folds}", f"--fold={fold}"]


def table_note(result: dict) -> str:
    """A protocol table's sentence on its fold rows ("" without --folds)."""
    folds = result.get("folds") or 0
    if not folds:
        return ""
    return (f" {folds}-fold cross-validation by patient/lesion: each fold_k_of_{folds} row is one "
            f"fold's runs (its test split about 1/{folds} of the images, the next fold its "
            f"validation); the {CROSS_VALIDATED} row pools every fold's predictions per seed, "
            "so its test and its validation each hold every image once.")


def _read(output: str) -> tuple[dict, list[str], list[dict[str, str]]]:
    with open(os.path.join(output, REPORT), encoding="utf-8") as f:
        report = json.load(f)
    with open(os.path.join(output, PREDICTIONS), encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        return report, list(reader.fieldnames or []), list(reader)


def _sum_per_split(reports: Sequence[dict], key: str) -> dict[str, int] | None:
    """{split: images} summed over the folds' reports; None when a report lacks it."""
    if any(key not in r for r in reports):
        return None
    total: dict[str, int] = {}
    for report in reports:
        for split, n in report[key].items():
            total[split] = total.get(split, 0) + int(n)
    return total


def _check_every_image_once(fold_outputs: Sequence[str],
                            rows: Sequence[Sequence[dict[str, str]]]) -> None:
    """ValueError unless no image is in the same split of two folds, and each fold tested some
    image and validated exactly the next fold's test images: then the folds' test splits
    together hold what their validation splits hold, each image once."""
    seen: dict[tuple[str, str], str] = {}
    for output, fold in zip(fold_outputs, rows):
        for row in fold:
            key = (row["split"], row["image_id"])
            if key in seen:
                raise ValueError(f"image {key[1]} is in the {key[0]} split of both {seen[key]} "
                                 f"and {output}: not folds of one cross-validation")
            seen[key] = output
    ids = [{split: {r["image_id"] for r in fold if r["split"] == split}
            for split in ("test", "validation")} for fold in rows]
    for k, fold in enumerate(ids):
        following = (k + 1) % len(ids)
        if not fold["test"]:
            raise ValueError(f"{fold_outputs[k]} scored no test image: not a cross-validation "
                             "fold")
        differ = sorted(fold["validation"] ^ ids[following]["test"])
        if differ:
            raise ValueError(f"{fold_outputs[k]} validated other images than "
                             f"{fold_outputs[following]} tested ({len(differ)} differ, first "
                             f"{differ[0]}): not the folds of one cross-validation, in order")


def write_out_of_fold(fold_outputs: Sequence[str], output: str) -> None:
    """Writes `output` (predictions.csv, report.json): the rows of one seed's fold evaluations
    (fold_outputs[k]: fold k's), together. ValueError naming the folds when they are not one
    cross-validation in order: an image in the same split of two folds, a fold that tested
    nothing, fold k's validation images other than fold k+1's test images (so an image lost
    from every test split is caught), other classes or columns, a mix of tasks."""
    read = [_read(o) for o in fold_outputs]
    reports = [r for r, _, _ in read]
    task = reports[0].get("task", "binary")
    columns = read[0][1]
    for o, (report, cols, _) in zip(fold_outputs, read):
        if report.get("task", "binary") != task or cols != columns or \
                report.get("classes") != reports[0].get("classes"):
            raise ValueError(f"{o} is not scored like {fold_outputs[0]} (task, classes or "
                             "columns differ): not folds of one cross-validation")
    _check_every_image_once(fold_outputs, [fold_rows for _, _, fold_rows in read])
    rows: list[dict[str, str]] = []
    for report, _, fold_rows in read:
        if task == "diagnosis":
            rows += fold_rows
        else:  # each row keeps its own fold model's threshold
            threshold = repr(float(report["threshold"]["threshold"]))
            rows += [{**row, THRESHOLD_COLUMN: threshold} for row in fold_rows]
    rows.sort(key=lambda r: (r["split"], r["image_id"]))
    merged: dict = {"format": "isicflow.cross_validated_evaluation/1", "task": task,
                    "folds": list(fold_outputs)}
    if task == "diagnosis":
        merged.update(classes=reports[0]["classes"],
                      excluded_unknown=_sum_per_split(reports, "excluded_unknown"),
                      excluded_unseen=_sum_per_split(reports, "excluded_unseen"))
        merged = {k: v for k, v in merged.items() if v is not None}
    else:
        merged["threshold"] = {"threshold": None, "per_fold": [
            r["threshold"]["threshold"] for r in reports],
            "reason": f"each image at its own fold model's threshold ({THRESHOLD_COLUMN} column)"}
    os.makedirs(output, exist_ok=True)
    fields = columns + ([] if task == "diagnosis" else [THRESHOLD_COLUMN])
    with open(os.path.join(output, PREDICTIONS), "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(output, REPORT), "w", encoding="utf-8") as f:
        json.dump(merged, f, indent=2)
