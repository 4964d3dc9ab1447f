"""Report writers for a run directory: Markdown, PNG plots and image grids (the JSON writer
is trainer.core.run_folder.write_json).

Plots use matplotlib's object API (Figure + Agg canvas), never pyplot, so no global backend
state and no display is needed.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Iterable, Mapping

import numpy as np

from trainer.core.run_folder import to_jsonable

SPLIT_ORDER = ("train", "validation", "test", "all")  # "train"/"all": external evaluation only
# (history key, title) pairs plotted train vs validation, as the 2020 study's figures.
CURVE_METRICS = (("accuracy", "Accuracy"), ("loss", "Loss"), ("auc", "ROC AUC"))


def figure(width: float = 5.0, height: float = 4.0):
    """A matplotlib Figure without pyplot: no global state, no GUI backend, nothing to close."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_training_curves(history: Mapping[str, list[float]], out_dir: str) -> dict[str, str]:
    """One PNG per metric found in history (accuracy, loss, auc): train vs validation by epoch.

    history: {metric: [value per epoch]} as keras History.history; an optional "epoch" list
    (history.json holds one, 1-based) gives the x axis; NaN values leave gaps.
    """
    paths = {}
    epoch_axis = history.get("epoch")
    for key, title in CURVE_METRICS:
        series = [(name, history[name]) for name in (key, f"val_{key}") if history.get(name)]
        if not series:
            continue
        fig = figure()
        ax = fig.add_subplot()
        for name, values in series:
            epochs = epoch_axis if epoch_axis and len(epoch_axis) == len(values) \
                else np.arange(1, len(values) + 1)
            ax.plot(epochs, values, marker="o", markersize=3,
                    label="validation" if name.startswith("val_") else "training")
        ax.set_xlabel("epoch")
        ax.set_ylabel(title.lower())
        ax.set_title(f"Training and validation {title.lower()}")
        ax.grid(alpha=0.3)
        ax.legend()
        path = os.path.join(out_dir, f"training_{key}.png")
        fig.savefig(path, bbox_inches="tight")
        paths[f"training_{key}"] = path
    return paths


def _save_unit_square(fig, ax, path: str, xlabel: str, ylabel: str, title: str,
                      legend: str) -> str:
    """Labels, [0, 1] limits, grid and legend of a rate-against-rate plot; saves it to path."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.02)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend)
    fig.savefig(path, bbox_inches="tight")
    return path


def plot_roc_curves(curves: Mapping[str, Mapping[str, Any]], path: str,
                    operating_points: Mapping[str, tuple[float, float]] | None = None) -> str:
    """ROC curves of several splits on one axis; curves[split] = {fpr, tpr, auc}."""
    fig = figure(5.0, 5.0)
    ax = fig.add_subplot()
    for split, curve in curves.items():
        ax.plot(curve["fpr"], curve["tpr"], label=f"{split} (AUC {curve['auc']:.3f})")
        if operating_points and split in operating_points:
            fpr, tpr = operating_points[split]
            ax.plot([fpr], [tpr], marker="o", color=ax.lines[-1].get_color())
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="chance")
    return _save_unit_square(fig, ax, path, "1 - specificity (false positive rate)",
                             "sensitivity (true positive rate)",
                             "ROC curve (dot: chosen threshold)", "lower right")


def plot_confusion_matrices(confusions: Mapping[str, Mapping[str, int]], path: str,
                            threshold: float) -> str:
    """Side-by-side 2x2 count matrices (rows: true class, columns: predicted), one per split."""
    fig = figure(4.2 * len(confusions), 4.0)
    for i, (split, c) in enumerate(confusions.items(), start=1):
        ax = fig.add_subplot(1, len(confusions), i)
        matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(matrix, cmap="Blues", vmin=0)
        for (row, col), count in np.ndenumerate(matrix):
            ax.text(col, row, str(count), ha="center", va="center",
                    color="white" if count > matrix.max() / 2 else "black", fontsize=14)
        ax.set_xticks([0, 1], ["benign", "malignant"])
        ax.set_yticks([0, 1], ["benign", "malignant"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{split} (threshold {threshold:.3f})")
    fig.savefig(path, bbox_inches="tight")
    return path


def plot_pr_curves(curves: Mapping[str, Mapping[str, Any]], path: str) -> str:
    """Precision-recall curves of several splits; curves[split] = {labels, scores} (raw arrays,
    through sklearn.metrics.precision_recall_curve); the legend gives average precision."""
    from sklearn import metrics as skm

    fig = figure(5.0, 5.0)
    ax = fig.add_subplot()
    for split, curve in curves.items():
        precision, recall, _ = skm.precision_recall_curve(curve["labels"], curve["scores"])
        ap = skm.average_precision_score(curve["labels"], curve["scores"])
        ax.step(recall, precision, where="post", label=f"{split} (AP {ap:.3f})")
        prevalence = float(np.mean(curve["labels"]))
        ax.axhline(prevalence, linestyle=":", linewidth=0.8, color=ax.lines[-1].get_color())
    return _save_unit_square(fig, ax, path, "recall (sensitivity)", "precision",
                             "Precision-recall (dotted: prevalence)", "lower left")


def plot_reliability_diagram(calibration: Mapping[str, Mapping[str, Any]], path: str) -> str:
    """Reliability diagram: per split, the fraction malignant against the mean predicted
    probability of each non-empty bin (trainer.core.metrics.expected_calibration_error)."""
    fig = figure(5.0, 5.0)
    ax = fig.add_subplot()
    for split, cal in calibration.items():
        kept = [b for b in cal["per_bin"] if b["cases"]]
        ax.plot([b["mean_probability"] for b in kept], [b["fraction_malignant"] for b in kept],
                marker="o", label=f"{split} (ECE {cal['ece']:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="perfect")
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("fraction malignant (bin)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.02)
    bins = next(iter(calibration.values()))["bins"] if calibration else 0
    ax.set_title(f"Reliability diagram ({bins} equal-width bins)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.savefig(path, bbox_inches="tight")
    return path


def format_number(value: Any, digits: int = 3) -> str:
    """A report cell: floats to `digits` places, None/NaN/inf as n/a, anything else as str."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _metric_rows(splits: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    rows = []
    for name in names:
        cells = []
        for split in splits.values():
            cell = format_number(split.get(name))
            interval = split.get("bootstrap", {}).get("intervals", {}).get(name)
            if interval and interval.get("low") is not None and cell != "n/a":
                cell += f" [{format_number(interval['low'])}, {format_number(interval['high'])}]"
            cells.append(cell)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def render_markdown(report: Mapping[str, Any]) -> str:
    """Human-readable report.md from the (already JSON-able) report dict."""
    splits = {s: report["splits"][s] for s in SPLIT_ORDER if s in report.get("splits", {})}
    evaluated = {s: v for s, v in splits.items() if v.get("cases")}
    t = report["threshold"]
    title = "# External evaluation report" if report.get("external") else "# Evaluation report"
    lines = [title, "", f"Created {report.get('created_utc', '')}.", ""]
    if report.get("external"):
        model = report.get("model", {})
        lines += [f"Model `{model.get('path', '')}` ({model.get('kind', '')}) scored on "
                  f"`{report.get('data', {}).get('data_dir', '')}`.", ""]
        if report.get("adapt_batchnorm"):  # trainer.cnn.adapt_batchnorm.summary
            lines += [report["adapt_batchnorm"]["sentence"], ""]
    lines += [
             "## Threshold", "",
             f"Threshold **{format_number(t['threshold'], 4)}**, policy `{t['policy']}`: {t['reason']}. "
             + (f"Taken from {t.get('source')}; not re-tuned on the data scored here."
                if report.get("external") else "Chosen on validation, applied unchanged to test.")
             + " A case is called malignant when its probability is >= the threshold."
             + (" Test-time augmentation: the 8 flips/rot90s averaged." if report.get("tta") else ""),
             "", "## Data", "",
             "| split | records | evaluated | benign | malignant |", "|---|---|---|---|---|"]
    for split, info in report.get("data", {}).get("splits", {}).items():
        counts = info.get("counts", {})
        evaluated_cases = report["splits"].get(split, {}).get("cases", "not evaluated")
        lines.append(f"| {split} | {info.get('records', 'n/a')} | {evaluated_cases} | "
                     f"{counts.get('benign', 'n/a')} | {counts.get('malignant', 'n/a')} |")
    lines += ["", "## Metrics", ""]
    if evaluated:
        boot = next(iter(evaluated.values())).get("bootstrap", {})
        lines += [f"Brackets: bootstrap {int(100 * boot.get('confidence', 0.95))}% interval over cases "
                  f"({boot.get('resamples', 0)} resamples, seed {boot.get('seed', '')}; resamples "
                  "with a single class skipped, counted below).", "",
                  "The threshold comes from the training run's validation split, so every split "
                  "here is scored at a threshold it did not choose." if report.get("external") else
                  "Validation chose the threshold, so its threshold metrics are optimistic; "
                  "test is the honest estimate.", "",
                  "| metric | " + " | ".join(evaluated) + " |", "|---|" + "---|" * len(evaluated)]
        lines += _metric_rows(evaluated, ("auc", "accuracy", "error_rate", "precision",
                                          "sensitivity", "specificity", "f1"))
        for name in ("tp", "fp", "tn", "fn"):
            lines.append(f"| {name} | " + " | ".join(str(v["confusion"][name]) for v in evaluated.values()) + " |")
        if all("at_study_threshold" in v for v in evaluated.values()):
            for name in ("accuracy", "sensitivity", "specificity"):
                lines.append(f"| {name} at the study's 0.5 | " + " | ".join(
                    format_number(v["at_study_threshold"][name]) for v in evaluated.values()) + " |")
        lines.append("| bootstrap resamples skipped | " + " | ".join(
            str(v.get("bootstrap", {}).get("skipped_single_class", "n/a")) for v in evaluated.values()) + " |")
    notes = [f"- {split}: {reason}" for split, v in splits.items() if v.get("note") for reason in [v["note"]]]
    notes += [f"- {split} {name}: undefined, {reason}" for split, v in splits.items()
              for name, reason in v.get("undefined", {}).items()]
    if notes:
        lines += ["", "Not available:", ""] + notes
    calibration = report.get("calibration", {})
    if calibration:
        cal_bins = next(iter(calibration.values()))
        lines += ["", "## Calibration", "",
                  f"Expected calibration error over {cal_bins['bins']} equal-width probability "
                  "bins (sum over bins of the bin's share of cases times |mean probability - "
                  "fraction malignant|; 0 is perfect).", "",
                  "| split | cases | ECE |", "|---|---|---|"]
        lines += [f"| {split} | {c['cases']} | {format_number(c['ece'])} |" for split, c in calibration.items()]
    breakdown = report.get("breakdown", {})
    if breakdown:
        lines += ["", "## Breakdown", "",
                  f"Over {breakdown.get('scope', 'all scored cases')}, at the threshold above. "
                  "AUC needs both classes in a group.", ""]
        for field, info in breakdown.get("fields", {}).items():
            lines += [f"### {field}", ""]
            if info.get("note"):
                lines += [info["note"], ""]
                continue
            lines += ["| group | cases | malignant | AUC | sensitivity | specificity |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {name} | {g['cases']} | {g['malignant']} | {auc_with_interval(g)} | "
                      f"{format_number(g.get('sensitivity'))} | {format_number(g.get('specificity'))} |"
                      for name, g in info["groups"].items()]
            lines.append("")
    if report.get("predictions_csv"):
        lines += ["", f"Per-image predictions: `{report['predictions_csv']}`."]
    plots = report.get("plots", {})
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({path})" for name, path in plots.items()]
    lines += ["", "## Config", "", "```json", json.dumps(report.get("config", {}), indent=2, sort_keys=True),
              "```", ""]
    return "\n".join(lines)


def auc_with_interval(group: Mapping[str, Any]) -> str:
    """A breakdown group's AUC, with its bootstrap interval "[low, high]" when it has one."""
    text = format_number(group.get("auc"))
    interval = group.get("auc_interval") or {}
    if interval.get("low") is not None and interval.get("high") is not None:
        text += f" [{format_number(interval['low'])}, {format_number(interval['high'])}]"
    return text


def write_markdown(path: str, report: Mapping[str, Any]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_markdown(to_jsonable(report)))
    return path


def tile_images(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """N x H x W x 3 uint8 -> one grid image (rows of `columns`), white padding between."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"need a non-empty N x H x W x C batch, got shape {images.shape}")
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = image
    return grid
