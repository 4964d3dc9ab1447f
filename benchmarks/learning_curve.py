"""A learning curve on sources the CNN never saw: what does each doubling of the labelled
training set buy on a new clinic?

    python -m benchmarks.learning_curve --output=out/protocol/learning-curve \\
        --workdirs=out/protocol/levers64-e20-melanoma,out/protocol/levers64-e20-melanoma-train50

Each workdir is one benchmarks.protocol run (binary task) of one recipe on one download, its
training sets cut by the engine's --train_fraction (--train_engine_flags; none: the whole
set), so that every workdir scored the same held-out images (same --engine_flags, and the same
image ids, checked). Per held-out source scored in every workdir: the training images of each
point (the train split of its without_<source> dataset), the held-out and in-source validation
AUC as mean +- sd over its seeds, and the slope of held-out AUC on log2(training images), a
least-squares line through every run, with a 95% interval from a bootstrap over the held-out
images (metrics.case_bootstrap: one index set per draw for every run of every point, paired).
The slope is the held-out AUC that one doubling of labelled data buys. From it, the doublings
that would reach --target from the largest set: a straight line in log n, which learning
curves bend below as they flatten, so a lower bound on the data needed. The mean over sources
averages the per-source slopes draw by draw. Writes learning_curve.json and learning_curve.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks import common as bench_common, compare, protocol
from trainer.core import metrics


def log2_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of y on x (x = log2 of the training images of each run)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or np.ptp(x) == 0:
        raise ValueError(f"a slope needs runs at >= 2 training-set sizes, got x {x.tolist()}")
    return float(np.polyfit(x, y, 1)[0])


def doublings_to(target: float, at_largest: float, slope: float) -> float:
    """Doublings of the largest training set that a straight line in log2(n) of this slope
    needs to reach `target` (0 when it is reached; inf when the slope is <= 0)."""
    if at_largest >= target:
        return 0.0
    return (target - at_largest) / slope if slope > 0 else math.inf


def finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a target no straight line reaches is None ("never")."""
    return value if math.isfinite(value) else None


def training_set(workdir: str, source: str) -> tuple[int, float]:
    """(train records, the engine's --train_fraction) of a protocol workdir's without_<source>
    dataset, as its manifest records them (every size holds the same records; the first listed
    is read; a manifest from before --train_fraction wrote the whole split: 1.0)."""
    manifest = protocol.read_json(os.path.join(
        protocol.dataset_folder(workdir, "without", source), "manifest.json"))
    first = next(iter(manifest["datasets"].values()))
    return (int(first["train"]["records"]),
            float(manifest.get("config", {}).get("train_fraction", 1.0)))


def source_curve(points: Sequence[dict[str, Any]], source: str, resamples: int,
                 target: float) -> dict[str, Any]:
    """One held-out source's curve: per point its training images and AUCs, and the slope with
    its bootstrap interval (the draws kept under "bootstrap" for the mean over sources)."""
    labels, runs, x, rows = None, [], [], []
    ids = None
    for point in points:
        outputs = protocol.score_outputs(point["workdir"], point["result"], source, "heldout")
        y, scores, _ = protocol.scores_of_runs(outputs, None)
        point_ids = compare.image_ids(outputs[0])
        if ids is None:
            labels, ids = y, point_ids
        elif point_ids != ids or not np.array_equal(y, labels):
            raise protocol.ProtocolError(f"{source}: {point['workdir']} scored other held-out "
                                         f"images than {points[0]['workdir']}")
        n, fraction = training_set(point["workdir"], source)
        aucs = [float(roc_auc_score(y, s)) for s in scores]
        val = point["result"]["rows"][source]["in_source_validation"]["auc"]
        rows.append({"workdir": point["workdir"], "train_fraction": fraction,
                     "train_images": n, "heldout_auc": {"per_seed": aucs,
                                                       "mean": float(np.mean(aucs)),
                                                       "sd": float(np.std(aucs, ddof=1))
                                                       if len(aucs) > 1 else 0.0},
                     "in_source_validation_auc": {"mean": val["mean"], "sd": val["sd"]}})
        runs += scores
        x += [math.log2(n)] * len(scores)
    x_arr = np.asarray(x)

    def slope_of(idx: np.ndarray) -> float:
        return log2_slope(x_arr, [roc_auc_score(labels[idx], s[idx]) for s in runs])

    slope = slope_of(np.arange(labels.size))
    draws, skipped = metrics.case_bootstrap(labels, slope_of, resamples=resamples, seed=0)
    largest = max(rows, key=lambda r: r["train_images"])
    need = finite_or_none(doublings_to(target, largest["heldout_auc"]["mean"], slope))
    return {"cases": int(labels.size), "positives": int(labels.sum()), "points": rows,
            "slope_per_doubling": slope,
            "slope_ci": list(metrics.percentile_interval(draws, 0.95)),
            "target": target, "doublings_to_target": need,
            "bootstrap": np.asarray(draws, np.float64), "skipped_draws": skipped}


def learning_curve(workdirs: Sequence[str], resamples: int = 1000,
                   target: float = 0.88) -> dict[str, Any]:
    """{source: source_curve} for every held-out source all workdirs scored, and the mean
    over sources of the slope; ProtocolError for workdirs that cannot form one curve."""
    if len(workdirs) < 2:
        raise protocol.ProtocolError(f"a learning curve needs >= 2 protocol workdirs, got "
                                     f"{list(workdirs)}")
    points = []
    for workdir in workdirs:
        result = protocol.read_json(os.path.join(workdir, "protocol.json"))
        if result.get("task", "binary") != "binary":
            raise protocol.ProtocolError(f"{workdir}: a {result['task']} protocol run; the "
                                         "learning curve reads held-out AUC (binary task)")
        points.append({"workdir": workdir, "result": result})
    engine = {tuple(p["result"]["engine_flags"]) for p in points}
    if len(engine) > 1:
        raise protocol.ProtocolError(f"engine flags differ between workdirs ({sorted(engine)}): "
                                     "the held-out images are not the same")
    sources = [s for s in points[0]["result"]["rows"]
               if all("heldout" in p["result"]["rows"].get(s, {}) for p in points)]
    if not sources:
        raise protocol.ProtocolError(f"no held-out source scored in every workdir {workdirs}")
    rows = {s: source_curve(points, s, resamples, target) for s in sources}
    draws = min(r["bootstrap"].size for r in rows.values())
    mean_slope = float(np.mean([r["slope_per_doubling"] for r in rows.values()]))
    at_largest = float(np.mean([max(r["points"], key=lambda p: p["train_images"])
                                ["heldout_auc"]["mean"] for r in rows.values()]))
    mean = {"slope_per_doubling": mean_slope,
            "slope_ci": list(metrics.percentile_interval(
                np.mean([r["bootstrap"][:draws] for r in rows.values()], axis=0), 0.95)),
            "heldout_auc_at_largest": at_largest,
            "doublings_to_target": finite_or_none(doublings_to(target, at_largest, mean_slope))}
    for r in rows.values():
        r.pop("bootstrap")
    return {"workdirs": list(workdirs), "flags": points[0]["result"]["flags"],
            "engine_flags": points[0]["result"]["engine_flags"], "target": target,
            "rows": rows, "mean over sources": mean}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Held-out AUC against the labelled training set (engine "
             f"`{' '.join(result['engine_flags']) or 'defaults'}`); each cell mean ± sd over "
             "seeds. Slope: held-out AUC per doubling of the training images, least squares "
             "over every run, [95% interval, bootstrap over held-out images]; doublings to "
             f"{result['target']:g}: along that straight line from the largest set (a lower "
             "bound: learning curves flatten).", "",
             "| held out | share | training images | held-out AUC | in-source val AUC |",
             "|---|---|---|---|---|"]
    for source, row in result["rows"].items():
        for point in sorted(row["points"], key=lambda p: p["train_images"]):
            held, val = point["heldout_auc"], point["in_source_validation_auc"]
            lines.append(f"| {source} | {point['train_fraction']:g} | {point['train_images']:,} "
                         f"| {held['mean']:.3f} ± {held['sd']:.3f} | "
                         f"{val['mean']:.3f} ± {val['sd']:.3f} |")
    lines += ["", "| held out | slope per doubling [95%] | doublings to target |",
              "|---|---|---|"]
    for source, row in [*result["rows"].items(), ("mean over sources",
                                                   result["mean over sources"])]:
        low, high = row["slope_ci"]
        need = row["doublings_to_target"]
        lines.append(f"| {source} | {row['slope_per_doubling']:+.4f} [{low:+.4f}, {high:+.4f}] "
                     f"| {'never (slope <= 0)' if need is None else f'{need:.1f}'} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.learning_curve",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workdirs", required=True, help="comma list of benchmarks.protocol "
                   "workdirs, one per training-set size")
    p.add_argument("--output", required=True, help="folder for learning_curve.json/.md")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap draws")
    p.add_argument("--target", type=float, default=0.88, help="held-out AUC to extrapolate to")
    args = p.parse_args(argv)
    workdirs = [w for w in args.workdirs.split(",") if w]
    missing = [w for w in workdirs if not os.path.isfile(os.path.join(w, "protocol.json"))]
    if missing:
        p.error(f"--workdirs: no protocol.json in {missing} (finished benchmarks.protocol runs)")
    try:
        result = learning_curve(workdirs, args.resamples, args.target)
    except (protocol.ProtocolError, ValueError) as e:
        print(f"learning_curve: {e}", file=sys.stderr)
        return 1
    os.makedirs(args.output, exist_ok=True)
    bench_common.write_json_and_table(args.output, "learning_curve", result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
