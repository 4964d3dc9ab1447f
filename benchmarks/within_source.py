"""How much of a protocol run's in-source AUC is telling sources apart? Per held-out source, the
in-source validation AUC pooled over every training source beside the AUC within each source
alone (mean over seeds), and the held-out AUC.

    python -m benchmarks.within_source --workdir=out/protocol/compact64 \\
        --metadata_csv=../shared/data/ham10000-5984/HAM10000_metadata.csv

When sources differ in their share of malignant lesions and look different (camera, framing),
a model can rank "this source" above "that source" and score a high pooled AUC without ranking
lesions within any source: the pooled figure then overstates what a new clinic will see. The
within-source AUC is the fair in-distribution reference for the held-out AUC. Sources come from
the download's metadata table (image id -> source column); sources with one class in the
validation split have no AUC and are left out. Writes within_source.json and within_source.md
in the workdir. Binary runs only: a diagnosis protocol run is refused.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

from benchmarks import common as bench_common
from benchmarks import protocol


def _predictions(path: str, split: str | None) -> list[dict[str, str]]:
    with open(os.path.join(path, protocol.PREDICTIONS), encoding="utf-8", newline="") as f:
        return [r for r in csv.DictReader(f) if split is None or r["split"] == split]


def auc_within_sources(rows: list[dict[str, str]], source_of: dict[str, str]) -> dict[str, Any]:
    """{"pooled": AUC, "sources": {name: {"auc", "images", "positives"}}} of prediction rows."""
    missing = sorted({r["image_id"] for r in rows} - set(source_of))
    if missing:
        raise protocol.ProtocolError(f"{len(missing)} image ids have no source in the metadata "
                                     f"table, e.g. {missing[:3]}")
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    s = np.array([source_of[r["image_id"]] for r in rows])
    per = {}
    for name in sorted(set(s)):
        m = s == name
        if y[m].min() != y[m].max():
            per[name] = {"auc": float(skm.roc_auc_score(y[m], p[m])), "images": int(m.sum()),
                         "positives": int(y[m].sum())}
    return {"pooled": float(skm.roc_auc_score(y, p)), "sources": per}


def summarise(workdir: str, source_of: dict[str, str]) -> dict[str, Any]:
    path = os.path.join(workdir, "protocol.json")
    run = protocol.read_json(path)
    if run.get("task", "binary") != "binary":
        raise protocol.ProtocolError(f"{path} ran the {run['task']} task: within_source "
                                     "scores the binary task's AUC only")
    rows = {}
    for held in run["rows"]:
        inside = [auc_within_sources(_predictions(s, "validation"), source_of)
                  for s in protocol.score_outputs(workdir, run, held, "in_source")]
        names = sorted(set.intersection(*(set(x["sources"]) for x in inside)))
        within = {n: float(np.mean([x["sources"][n]["auc"] for x in inside])) for n in names}
        row = {"pooled_validation_auc": float(np.mean([x["pooled"] for x in inside])),
               "within_source_validation_auc": within,
               "mean_within_source_auc": float(np.mean(list(within.values()))),
               "positives": {n: inside[0]["sources"][n]["positives"] for n in names}}
        if "heldout" in run["rows"][held]:  # the protocol's own seed mean, not scored again
            row["heldout_auc"] = run["rows"][held]["heldout"]["auc"]["mean"]
        rows[held] = row
    return {"workdir": workdir, "flags": run["flags"], "engine_flags": run["engine_flags"],
            "seeds": run["seeds"], "rows": rows, "fair_gap": fair_gap(rows)}


def fair_gap(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per held-out source S: its AUC within S when S was trained on (the mean over every other
    row whose validation had S: the in-distribution reference for S alone) beside its held-out
    AUC, and gap = reference - held-out. The pooled in-source AUC mixes sources and is not a
    reference for one of them."""
    gaps = {}
    for held, row in rows.items():
        inside = [r["within_source_validation_auc"][held] for other, r in rows.items()
                  if other != held and held in r["within_source_validation_auc"]]
        if "heldout_auc" in row and inside:
            reference = float(np.mean(inside))
            gaps[held] = {"within_source_reference": reference, "runs": len(inside),
                          "heldout_auc": row["heldout_auc"],
                          "gap": reference - row["heldout_auc"]}
    return gaps


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`{result['workdir']}` ({' '.join(result['engine_flags'] + result['flags']) or 'base'}),"
             f" mean over {result['seeds']} seeds. Within-source: the in-source validation AUC "
             "of each training source alone (positives in brackets).", "",
             "| held out | in-source val AUC, pooled | within each training source | mean within "
             "| held-out AUC |", "|---|---|---|---|---|"]
    for held, r in result["rows"].items():
        within = ", ".join(f"{n} {v:.3f} ({r['positives'][n]})"
                           for n, v in r["within_source_validation_auc"].items())
        held_auc = f"{r['heldout_auc']:.3f}" if "heldout_auc" in r else "n/a"
        lines.append(f"| {held} | {r['pooled_validation_auc']:.3f} | {within} | "
                     f"{r['mean_within_source_auc']:.3f} | {held_auc} |")
    if result.get("fair_gap"):
        lines += ["", "Each source against itself: its within-source validation AUC in the rows "
                  "that trained on it (mean over those rows) and its held-out AUC.", "",
                  "| source | within it, trained on (rows) | held out | gap |", "|---|---|---|---|"]
        for name, g in result["fair_gap"].items():
            lines.append(f"| {name} | {g['within_source_reference']:.3f} ({g['runs']}) | "
                         f"{g['heldout_auc']:.3f} | {g['gap']:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.within_source",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a benchmarks.protocol --workdir")
    p.add_argument("--metadata_csv", required=True, help="the download's metadata table")
    p.add_argument("--id_column", default="image_id")
    p.add_argument("--source_column", default="dataset", help="HAM10000's source column")
    args = p.parse_args(argv)
    try:
        table = bench_common.read_table(args.metadata_csv, (args.id_column, args.source_column))
        source_of = {r[args.id_column]: r[args.source_column] for r in table}
        result = summarise(args.workdir, source_of)
    except (protocol.ProtocolError, OSError, KeyError, ValueError) as e:
        print(f"within_source: {e}", file=sys.stderr)
        return 2
    bench_common.write_json_and_table(args.workdir, "within_source", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
