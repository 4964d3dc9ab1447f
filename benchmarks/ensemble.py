"""Seed ensembles on sources the CNN never saw: does averaging several seeds' probabilities
beat one seed?

    python -m benchmarks.ensemble --output=out/protocol/ensemble-compact \\
        --workdirs=out/protocol/compact64-melanoma,out/protocol/compact64-melanoma-s345

Each workdir is one benchmarks.protocol run of the same recipe on the same download with the
same engine flags, with its own seeds (e.g. seeds 0-2 and --first_seed=3); the mean of its
seeds' held-out probabilities, image by image, is one ensemble. Per held-out source scored in
every workdir: metrics.paired_auc_difference with the single seeds of every workdir as the
baseline and the ensembles as the candidate (hence >= 2 workdirs: the ensembles' own spread),
and the mean over sources as benchmarks.compare computes it. Uses the stored predictions only:
no model is trained or run. Writes ensemble.json and ensemble.md.

Diagnosis protocol runs (protocol.json "task": "diagnosis"): the ensemble's class is the argmax
of its seeds' mean class probabilities (the p_<class> columns), and the held-out balanced
accuracy (benchmarks.protocol_diagnosis) is compared in place of the AUC
(metrics.paired_difference).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np

from benchmarks import common as bench_common
from benchmarks import compare, protocol, protocol_diagnosis
from trainer.core import metrics


def ensemble_scores(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's probability of each image: the mean of its seeds' probabilities."""
    if not per_seed:
        raise ValueError("an ensemble needs at least one seed's scores")
    return np.mean(np.stack([np.asarray(s, np.float64) for s in per_seed]), axis=0)


def ensemble_classes(per_seed: Sequence[np.ndarray]) -> np.ndarray:
    """The ensemble's class of each image: the argmax of its seeds' mean class probabilities
    ((images, classes) arrays)."""
    return np.argmax(ensemble_scores(per_seed), axis=1)


def _diagnosis_row(outputs: Sequence[Sequence[str]], resamples: int) -> dict[str, Any]:
    """paired_difference of the balanced accuracy: every workdir's single seeds against the
    workdirs' ensembles (outputs: per workdir, its seeds' evaluation folders)."""
    _, true, singles, _ = protocol_diagnosis.predictions_of_runs(
        [o for per_seed in outputs for o in per_seed], None)
    members = [ensemble_classes([protocol_diagnosis.read_probabilities(o, None)
                                 for o in per_seed]) for per_seed in outputs]
    return metrics.paired_difference(true, singles, members,
                                     protocol_diagnosis.balanced_accuracy, resamples=resamples)


def ensembles(workdirs: Sequence[str], resamples: int = 1000) -> dict[str, Any]:
    """{source: paired difference (single seeds, ensembles) of the held-out AUC, or balanced
    accuracy for the diagnosis task} plus "mean over sources"."""
    if len(workdirs) < 2:
        raise protocol.ProtocolError(f"need >= 2 protocol workdirs (one ensemble each) for the "
                                     f"ensembles' spread, got {list(workdirs)}")
    runs = [protocol.read_json(os.path.join(w, "protocol.json")) for w in workdirs]
    tasks = {w: r.get("task", "binary") for w, r in zip(workdirs, runs)}
    if len(set(tasks.values())) > 1:
        raise protocol.ProtocolError(f"the workdirs ran different tasks: {tasks}")
    task = tasks[workdirs[0]]
    engine = {tuple(r["engine_flags"]) for r in runs}
    recipe = {(tuple(r["flags"]), tuple(r.get("eval_flags") or [])) for r in runs}
    if len(engine) > 1 or len(recipe) > 1:
        raise protocol.ProtocolError(
            f"the workdirs must hold one recipe on the same images; engine flags {sorted(engine)}"
            f", trainer and evaluation flags {sorted(recipe)}")
    common = [s for s in runs[0]["rows"]
              if all("heldout" in r["rows"].get(s, {}) for r in runs)]
    if not common:
        raise protocol.ProtocolError(f"no held-out source scored in every one of {workdirs}")
    rows: dict[str, Any] = {}
    for source in common:
        if task == "diagnosis":
            rows[source] = _diagnosis_row([protocol.score_outputs(w, r, source, "heldout")
                                           for w, r in zip(workdirs, runs)], resamples)
            continue
        scored = [protocol.scores_of_runs(protocol.score_outputs(w, r, source, "heldout"), None)
                  for w, r in zip(workdirs, runs)]
        labels = scored[0][0]
        if any(not np.array_equal(labels, s[0]) for s in scored):
            raise protocol.ProtocolError(f"{source}: the workdirs scored different images")
        singles = [scores for _, per_seed, _ in scored for scores in per_seed]
        members = [ensemble_scores(per_seed) for _, per_seed, _ in scored]
        rows[source] = metrics.paired_auc_difference(labels, singles, members,
                                                     resamples=resamples)
    rows["mean over sources"] = compare.mean_over_sources(rows)
    for r in rows.values():
        r.pop("bootstrap", None)
    return {"workdirs": list(workdirs), "task": task, "flags": list(runs[0]["flags"]),
            "engine_flags": list(runs[0]["engine_flags"]),
            "seeds": [list(protocol.seed_list(r)) for r in runs], "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    seeds = "; ".join(", ".join(map(str, s)) for s in result["seeds"])
    how = ("(argmax of the mean class probabilities). Held-out balanced accuracy"
           if result.get("task") == "diagnosis" else "(mean probability). Held-out AUC")
    lines = [f"Recipe {' '.join(result['flags']) or '(base)'}; ensembles of seeds {seeds} "
             f"{how}: single seeds (mean ± sd) against the ensembles "
             "(mean ± sd); difference ± its seed-spread s.e. [95% interval, bootstrap over "
             "images paired across all runs].", "",
             "| held out | single seed | ensemble | difference | beyond 2 seed s.e. |",
             "|---|---|---|---|---|"] + compare.table_rows(result["rows"])
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ensemble",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workdirs", required=True,
                   help="comma-separated benchmarks.protocol workdirs of one recipe")
    p.add_argument("--output", required=True, help="folder for ensemble.json / ensemble.md")
    p.add_argument("--bootstrap", type=int, default=1000, help="image resamples")
    args = p.parse_args(argv)
    try:
        result = ensembles([w for w in args.workdirs.split(",") if w], args.bootstrap)
    except (protocol.ProtocolError, OSError, KeyError, ValueError) as e:
        print(f"ensemble: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    bench_common.write_json_and_table(args.output, "ensemble", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
