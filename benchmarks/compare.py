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
diagnosis run, nor diagnosis runs whose classes differ.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np

from benchmarks import common as bench_common
from benchmarks import protocol, protocol_diagnosis
from trainer.core import metrics


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


def check_same_classes(runs: dict[str, dict], paths: dict[str, str], source: str) -> None:
    """ProtocolError naming both files when the two diagnosis runs held `source` out with
    different classes. Per source: a run's classes may differ between held-out sources (a
    class too rare without one source is grouped as `other`), and that is no mismatch."""
    classes = {name: runs[name]["rows"][source]["heldout"]["classes"] for name in paths}
    if classes["baseline"] != classes["candidate"]:
        raise protocol.ProtocolError(
            f"held out {source}: baseline {paths['baseline']} has the classes "
            f"{classes['baseline']}, candidate {paths['candidate']} {classes['candidate']}: "
            "their balanced accuracies do not measure the same thing")


def _diagnosis_row(outputs: dict[str, list[str]], resamples: int) -> dict[str, Any]:
    """paired_difference of the balanced accuracy of every baseline and candidate run, which
    must hold the same images, labels and classes (ProtocolError naming the runs otherwise)."""
    try:
        _, true, predicted, _ = protocol_diagnosis.predictions_of_runs(
            outputs["baseline"] + outputs["candidate"], None)
        n = len(outputs["baseline"])
        return metrics.paired_difference(true, predicted[:n], predicted[n:],
                                         protocol_diagnosis.balanced_accuracy,
                                         resamples=resamples)
    except ValueError as e:
        raise protocol.ProtocolError(str(e)) from None


def compare(baseline: str, candidate: str, resamples: int = 1000) -> dict[str, Any]:
    """{source: paired difference of the held-out AUC (balanced accuracy for two diagnosis
    runs)}, plus "mean over sources"."""
    paths = {"baseline": baseline, "candidate": candidate}
    runs = {name: protocol.read_json(os.path.join(path, "protocol.json"))
            for name, path in paths.items()}
    task = task_of(runs, paths)
    if runs["baseline"]["engine_flags"] != runs["candidate"]["engine_flags"]:
        raise protocol.ProtocolError(
            f"engine flags differ ({runs['baseline']['engine_flags']} vs "
            f"{runs['candidate']['engine_flags']}): the held-out images are not the same")
    common = [s for s in runs["baseline"]["rows"] if s in runs["candidate"]["rows"]
              and "heldout" in runs["baseline"]["rows"][s]]
    if not common:
        raise protocol.ProtocolError(f"no held-out source scored in both {baseline} and "
                                     f"{candidate}")
    rows: dict[str, Any] = {}
    for source in common:
        if task == "diagnosis":
            check_same_classes(runs, paths, source)
            rows[source] = _diagnosis_row(
                {name: protocol.score_outputs(paths[name], runs[name], source, "heldout")
                 for name in paths}, resamples)
            continue
        labels, base = _scores(baseline, runs["baseline"], source, "heldout", None)
        labels_c, cand = _scores(candidate, runs["candidate"], source, "heldout", None)
        if not np.array_equal(labels, labels_c):
            raise protocol.ProtocolError(f"{source}: the two runs scored different images")
        rows[source] = metrics.paired_auc_difference(labels, base, cand, resamples=resamples)
    rows["mean over sources"] = mean_over_sources(rows)
    for r in rows.values():
        r.pop("bootstrap", None)
    return {"baseline": baseline, "candidate": candidate, "task": task, "metric": METRIC[task],
            "baseline_flags": _flags(runs["baseline"]),
            "candidate_flags": _flags(runs["candidate"]),
            "engine_flags": runs["baseline"]["engine_flags"], "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Baseline `{result['baseline']}` ({' '.join(result['baseline_flags']) or 'base'})"
             f" vs candidate `{result['candidate']}` "
             f"({' '.join(result['candidate_flags']) or 'base'}); held-out "
             f"{result.get('metric', 'AUC')}, mean over "
             "seeds. Difference ± its seed-spread standard error [95% interval, bootstrap over "
             "images paired across all runs].", "",
             "| held out | baseline | candidate | difference | beyond 2 seed s.e. |",
             "|---|---|---|---|---|"] + table_rows(result["rows"])
    return "\n".join(lines) + "\n"


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
    args = p.parse_args(argv)
    try:
        result = compare(args.baseline, args.candidate, args.bootstrap)
    except (protocol.ProtocolError, OSError, KeyError) as e:
        print(f"compare: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    bench_common.write_json_and_table(args.output, "compare", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
