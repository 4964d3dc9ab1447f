"""Two evaluation-protocol runs side by side: does the candidate recipe beat the baseline on
sources it never trained on, beyond the seed spread?

    python -m benchmarks.compare --baseline=out/protocol/compact64-melanoma \\
        --candidate=out/protocol/compact64-melanoma-sb --output=out/protocol/compare-sb

Both folders come from benchmarks.protocol on the same download with the same engine flags
(so the held-out sources hold the same images). Per held-out source, and averaged over the
sources: each recipe's held-out AUC (mean over its seeds), the difference, its standard error
from the seed spread and a 95% interval from a bootstrap over images paired across every run
of both recipes (trainer.core.metrics.paired_auc_difference). The mean over sources averages
the per-source resampled differences draw by draw. Writes compare.json and compare.md.

Two diagnosis protocol runs (protocol.json "task": "diagnosis", same classes) are compared on
balanced accuracy instead (benchmarks.protocol_diagnosis reads the predictions and scores them;
metrics.paired_difference pairs them the same way); a binary run is not compared with a
diagnosis run, nor diagnosis runs whose classes differ. Two --folds runs (same folds) are
compared on their cross-validated row: every image of the download once, in the pooled test
splits (benchmarks/protocol_folds.py).

--score_class=NAME compares on the AUC of NAME vs the rest (e.g. a seven-diagnosis recipe
against a melanoma-vs-rest one): a diagnosis side is scored by its p_NAME column, its label 1
where the true class is NAME; a binary side as above. The engine flags may then differ (a
--dx_map): instead, both sides must have scored the same image ids per held-out source, and
a binary side's label must be 1 exactly where the diagnosis side's true class is NAME.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Any, Sequence

import numpy as np

from benchmarks import common as bench_common
from benchmarks import protocol, protocol_diagnosis, protocol_folds
from trainer.cnn.constants import PREDICTIONS_CSV as PREDICTIONS
from trainer.core import metrics


def image_ids(output: str) -> list[str]:
    """The image ids of one evaluation's predictions.csv, sorted: the order in which
    protocol.read_scores and protocol_diagnosis.read_predictions return its rows."""
    with open(os.path.join(output, PREDICTIONS), encoding="utf-8", newline="") as f:
        return sorted(r["image_id"] for r in csv.DictReader(f))


def _scores(workdir: str, result: dict, source: str, name: str, split: str | None):
    outputs = protocol.score_outputs(workdir, result, source, name)
    labels, scores, _ = protocol.scores_of_runs(outputs, split)
    return labels, scores


def _flags(result: dict) -> list[str]:
    """A protocol run's trainer flags, and its evaluation flags when it had some."""
    extra = result.get("eval_flags") or []
    return list(result["flags"]) + ([f"(evaluated with {' '.join(extra)})"] if extra else [])


def mean_over_sources(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The mean of per-source metrics.paired_difference results: each recipe's mean metric and the
    difference averaged over the sources, the seed s.e. of that average (sqrt(sum se_s^2) / S)
    and its interval from the per-source resampled differences averaged draw by draw."""
    draws = min(r["bootstrap"].size for r in rows.values())
    mean_draws = np.mean([r["bootstrap"][:draws] for r in rows.values()], axis=0)
    mean = {k: float(np.mean([r[k]["mean"] for r in rows.values()]))
            for k in ("baseline", "candidate")}
    difference = mean["candidate"] - mean["baseline"]
    se = float(np.sqrt(np.sum([r["seed_se"] ** 2 for r in rows.values()])) / len(rows))
    return {"baseline": {"mean": mean["baseline"]}, "candidate": {"mean": mean["candidate"]},
            "difference": difference, "seed_se": se,
            "pooled_ci": list(metrics.percentile_interval(mean_draws, 0.95)),
            "beyond_seed_spread": bool(abs(difference) > 2 * se)}


METRIC = {"binary": "AUC", "diagnosis": "balanced accuracy"}


def task_of(runs: dict[str, dict], paths: dict[str, str]) -> str:
    """The task both protocol.json files (`runs`, read from `paths`) record ("binary" when
    written before the task was); ProtocolError naming both files when they differ."""
    tasks = {name: r.get("task", "binary") for name, r in runs.items()}
    if tasks["baseline"] != tasks["candidate"]:
        raise protocol.ProtocolError(
            f"baseline {paths['baseline']} ran the {tasks['baseline']} task, candidate "
            f"{paths['candidate']} the {tasks['candidate']} task: no common metric")
    return tasks["baseline"]


def scored_part(row: dict[str, Any]) -> tuple[str, str | None, str]:
    """What compare pairs in one protocol row: (evaluation folder, split, summary key): every
    image of a held-out source, or the pooled test split of a --folds run's cross-validated
    row (protocol_folds: every image of the download once)."""
    if row.get("folds"):
        return "in_source", "test", "in_source_test"
    return "heldout", None, "heldout"


def comparable(row: dict[str, Any]) -> bool:
    """A row compare can pair: a held-out source scored, or the cross-validated row."""
    return "heldout" in row or bool(row.get("folds"))


def check_same_classes(runs: dict[str, dict], paths: dict[str, str], source: str) -> None:
    """ProtocolError naming both files when the two diagnosis runs held `source` out with
    different classes. Per source: a run's classes may differ between held-out sources (a
    class too rare without one source is grouped as `other`), and that is no mismatch."""
    key = scored_part(runs["baseline"]["rows"][source])[2]
    classes = {name: runs[name]["rows"][source][key]["classes"] for name in paths}
    if classes["baseline"] != classes["candidate"]:
        raise protocol.ProtocolError(
            f"held out {source}: baseline {paths['baseline']} has the classes "
            f"{classes['baseline']}, candidate {paths['candidate']} {classes['candidate']}: "
            "their balanced accuracies do not measure the same thing")


def _diagnosis_row(outputs: dict[str, list[str]], resamples: int,
                   split: str | None = None) -> dict[str, Any]:
    """paired_difference of the balanced accuracy of every baseline and candidate run (their
    `split`, None: every row), which must hold the same images, labels and classes
    (ProtocolError naming the runs otherwise)."""
    try:
        _, true, predicted, _ = protocol_diagnosis.predictions_of_runs(
            outputs["baseline"] + outputs["candidate"], split)
        n = len(outputs["baseline"])
        return metrics.paired_difference(true, predicted[:n], predicted[n:],
                                         protocol_diagnosis.balanced_accuracy,
                                         resamples=resamples)
    except ValueError as e:
        raise protocol.ProtocolError(str(e)) from None


def one_vs_rest_side(outputs: Sequence[str], task: str, score_class: str
                     ) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """(image ids sorted, labels, scores per run) of one side's held-out runs as a binary
    ranking of `score_class`: a diagnosis side's p_<score_class> column and true class ==
    score_class, a binary side's probability and label (protocol.scores_of_runs).
    ProtocolError naming the runs when they scored other images, or the classes a diagnosis
    side has when score_class is not one of them."""
    if task != "diagnosis":
        labels, scores, _ = protocol.scores_of_runs(outputs, None)
        ids = [image_ids(o) for o in outputs]
        if any(i != ids[0] for i in ids):
            raise protocol.ProtocolError(f"runs scored different images: {list(outputs)}")
        return ids[0], labels, scores
    try:
        ids, true, _, classes = protocol_diagnosis.predictions_of_runs(outputs, None)
        if score_class not in classes:
            raise protocol.ProtocolError(
                f"{outputs[0]}: no class {score_class!r} to score, its classes are {classes}")
        k = classes.index(score_class)
        scores = [protocol_diagnosis.read_probabilities(o, None)[:, k] for o in outputs]
    except ValueError as e:
        raise protocol.ProtocolError(str(e)) from None
    return ids, (true == k).astype(np.int64), scores


def check_same_images(sides: dict[str, tuple[list[str], np.ndarray, list[np.ndarray]]],
                      paths: dict[str, str], source: str, score_class: str) -> None:
    """ProtocolError naming the held-out source and both folders unless both sides (from
    one_vs_rest_side) scored the same image ids with the same labels image by image (a
    binary side's label must be score_class vs the rest, not e.g. malignant vs benign)."""
    (ids_b, labels_b, _), (ids_c, labels_c, _) = sides["baseline"], sides["candidate"]
    where = (f"held out {source}: baseline {paths['baseline']} vs candidate "
             f"{paths['candidate']}")
    if ids_b != ids_c:
        only_b, only_c = sorted(set(ids_b) - set(ids_c)), sorted(set(ids_c) - set(ids_b))
        raise protocol.ProtocolError(
            f"{where}: {len(ids_b)} vs {len(ids_c)} image ids; {len(only_b)} only in the "
            f"baseline (e.g. {only_b[:3]}), {len(only_c)} only in the candidate "
            f"(e.g. {only_c[:3]}): not the same images")
    if not np.array_equal(labels_b, labels_c):
        pos_b = int(np.sum((labels_b == 1) & (labels_c == 0)))
        pos_c = int(np.sum((labels_b == 0) & (labels_c == 1)))
        first = ids_b[int(np.flatnonzero(labels_b != labels_c)[0])]
        raise protocol.ProtocolError(
            f"{where}: {pos_b + pos_c} of {len(ids_b)} images labelled otherwise ({pos_b} "
            f"positive only in the baseline, {pos_c} only in the candidate; first {first}): "
            f"a side's label is not {score_class} vs the rest")


def _one_vs_rest_row(runs: dict[str, dict], paths: dict[str, str], source: str,
                     score_class: str, resamples: int) -> dict[str, Any]:
    """paired_auc_difference of score_class vs the rest on one held-out source."""
    sides = {name: one_vs_rest_side(
        protocol.score_outputs(paths[name], runs[name], source, "heldout"),
        runs[name].get("task", "binary"), score_class) for name in paths}
    check_same_images(sides, paths, source, score_class)
    try:
        return metrics.paired_auc_difference(sides["baseline"][1], sides["baseline"][2],
                                             sides["candidate"][2], resamples=resamples)
    except ValueError as e:
        raise protocol.ProtocolError(f"held out {source}: {e}") from None


def compare(baseline: str, candidate: str, resamples: int = 1000,
            score_class: str | None = None) -> dict[str, Any]:
    """{source: paired difference of the held-out AUC (balanced accuracy for two diagnosis
    runs; with score_class the AUC of score_class vs the rest, whatever each side's task)},
    plus "mean over sources"."""
    paths = {"baseline": baseline, "candidate": candidate}
    runs = {name: protocol.read_json(os.path.join(path, "protocol.json"))
            for name, path in paths.items()}
    tasks = {name: r.get("task", "binary") for name, r in runs.items()}
    if score_class is None:
        task = task_of(runs, paths)
        if runs["baseline"]["engine_flags"] != runs["candidate"]["engine_flags"]:
            raise protocol.ProtocolError(
                f"engine flags differ ({runs['baseline']['engine_flags']} vs "
                f"{runs['candidate']['engine_flags']}): the held-out images are not the same")
    elif "diagnosis" not in tasks.values():
        raise protocol.ProtocolError(
            f"--score_class={score_class}: baseline {baseline} and candidate {candidate} both "
            "ran the binary task, no diagnosis side to score one vs the rest")
    else:
        task = "binary"  # both sides scored as a binary ranking of score_class
    common = [s for s in runs["baseline"]["rows"] if s in runs["candidate"]["rows"]
              and (comparable(runs["baseline"]["rows"][s]) if score_class is None else
                   "heldout" in runs["baseline"]["rows"][s]
                   and "heldout" in runs["candidate"]["rows"][s])]
    if not common:
        raise protocol.ProtocolError(f"no held-out source scored in both {baseline} and "
                                     f"{candidate}")
    rows: dict[str, Any] = {}
    for source in common:
        if score_class is not None:
            rows[source] = _one_vs_rest_row(runs, paths, source, score_class, resamples)
            continue
        name, split, _ = scored_part(runs["baseline"]["rows"][source])
        if task == "diagnosis":
            check_same_classes(runs, paths, source)
            rows[source] = _diagnosis_row(
                {side: protocol.score_outputs(paths[side], runs[side], source, name)
                 for side in paths}, resamples, split)
            continue
        labels, base = _scores(baseline, runs["baseline"], source, name, split)
        labels_c, cand = _scores(candidate, runs["candidate"], source, name, split)
        if not np.array_equal(labels, labels_c):
            raise protocol.ProtocolError(f"{source}: the two runs scored different images")
        rows[source] = metrics.paired_auc_difference(labels, base, cand, resamples=resamples)
    rows["mean over sources"] = mean_over_sources(rows)
    for r in rows.values():
        r.pop("bootstrap", None)
    result = {"baseline": baseline, "candidate": candidate, "task": task,
              "metric": METRIC[task], "baseline_flags": _flags(runs["baseline"]),
              "candidate_flags": _flags(runs["candidate"]),
              "engine_flags": runs["baseline"]["engine_flags"], "rows": rows}
    if score_class is not None:
        result.update(score_class=score_class, tasks=tasks,
                      candidate_engine_flags=runs["candidate"]["engine_flags"])
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Baseline `{result['baseline']}` ({' '.join(result['baseline_flags']) or 'base'})"
             f" vs candidate `{result['candidate']}` "
             f"({' '.join(result['candidate_flags']) or 'base'}); held-out "
             f"{result.get('metric', 'AUC')}, mean over "
             "seeds. Difference ± its seed-spread standard error [95% interval, bootstrap over "
             "images paired across all runs]." + _score_class_note(result)
             + (f" The {protocol_folds.CROSS_VALIDATED} row is in source: every image of the "
                "download once, in its folds' pooled test splits."
                if protocol_folds.CROSS_VALIDATED in result["rows"] else ""), "",
             "| held out | baseline | candidate | difference | beyond 2 seed s.e. |",
             "|---|---|---|---|---|"] + table_rows(result["rows"])
    return "\n".join(lines) + "\n"


def _score_class_note(result: dict[str, Any]) -> str:
    """With --score_class: which side was a diagnosis run scored as p(NAME) one vs the rest."""
    name = result.get("score_class")
    if name is None:
        return ""
    sides = [side for side, task in result["tasks"].items() if task == "diagnosis"]
    return (f" The diagnosis {' and '.join(sides)} {'was' if len(sides) == 1 else 'were'} "
            f"scored as p({name}) one-vs-rest (label 1 where the true class is {name}): the "
            f"AUC of {name} vs the rest on the same images.")


def table_rows(rows: dict[str, dict[str, Any]]) -> list[str]:
    """One Markdown row per source: baseline, candidate, difference, beyond the spread."""
    lines = []
    for source, r in rows.items():
        def cell(k: str) -> str:
            sd = r[k].get("sd")
            return f"{r[k]['mean']:.3f}" + (f" ± {sd:.3f}" if sd is not None else "")
        lines.append(f"| {source} | {cell('baseline')} | {cell('candidate')} | "
                     f"{r['difference']:+.3f} ± {r['seed_se']:.3f} [{r['pooled_ci'][0]:+.3f}, "
                     f"{r['pooled_ci'][1]:+.3f}] | {'yes' if r['beyond_seed_spread'] else 'no'} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--baseline", required=True, help="benchmarks.protocol --workdir")
    p.add_argument("--candidate", required=True, help="benchmarks.protocol --workdir")
    p.add_argument("--output", required=True, help="folder for compare.json / compare.md")
    p.add_argument("--bootstrap", type=int, default=1000, help="image resamples")
    p.add_argument("--score_class", default=None,
                   help="score diagnosis runs as p(NAME) vs the rest, on the AUC, so they "
                   "compare with a NAME-vs-rest binary run (e.g. melanoma)")
    args = p.parse_args(argv)
    try:
        result = compare(args.baseline, args.candidate, args.bootstrap, args.score_class)
    except (protocol.ProtocolError, OSError, KeyError) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    bench_common.write_json_and_table(args.output, "compare", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
