"""Does the patient metadata mean the same in every clinic? Per acquisition source of a
download's metadata table: how well age alone ranks the positive diagnosis (AUC), the positives'
and the others' mean age, and the share of each anatomic site.

    python -m benchmarks.metadata_prior --output=out/metadata-prior \\
        --metadata_csv=../shared/data/ham10000-5984/HAM10000_metadata.csv

Why: `--use_metadata` helps on three HAM10000 sources held out and hurts on vidir_molemax
(docs/results/cnn-ham-holdout-levers.md). A model with metadata learns from its training
clinics how age and site relate to melanoma; where a clinic's patients relate otherwise (age
AUC below 0.5) or its sites are coded differently, that prior ranks its lesions wrongly. No
model is involved: this reads the table alone. Rows without an age are left out of the age
figures and counted. Writes metadata_prior.json and metadata_prior.md.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

from benchmarks import common as bench_common


def age_prior(rows: Sequence[dict[str, str]], *, source: str, label: str, positive: set[str],
              age: str) -> dict[str, dict[str, Any]]:
    """{source: {images, positives, no_age, age_auc, age_positive, age_other}}: age_auc is the
    AUC of age as the score for label in `positive` (None with one class); ages are means."""
    out: dict[str, dict[str, Any]] = {}
    for name in sorted({r[source] for r in rows}):
        mine = [r for r in rows if r[source] == name]
        aged = [r for r in mine if r[age].strip()]
        y = np.array([r[label] in positive for r in aged])
        a = np.array([float(r[age]) for r in aged])
        both = y.size and 0 < y.sum() < y.size
        out[name] = {"images": len(mine), "positives": int(sum(r[label] in positive
                                                              for r in mine)),
                     "no_age": len(mine) - len(aged),
                     "age_auc": float(skm.roc_auc_score(y, a)) if both else None,
                     "age_positive": float(a[y].mean()) if y.any() else None,
                     "age_other": float(a[~y].mean()) if (~y).any() else None}
    return out


def site_shares(rows: Sequence[dict[str, str]], *, source: str, site: str
                ) -> dict[str, dict[str, float]]:
    """{site: {source: share of that source's images}}: the coding of sites per clinic."""
    counts = collections.Counter((r[site], r[source]) for r in rows)
    totals = collections.Counter(r[source] for r in rows)
    return {s: {name: counts[(s, name)] / totals[name] for name in sorted(totals)}
            for s in sorted({r[site] for r in rows})}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"`{result['metadata_csv']}`: positive = {result['label']} in "
             f"{sorted(result['positive'])}; source = {result['source_column']}.", "",
             "| source | images (positives) | AUC of age alone | mean age, positives / others |"
             " no age |", "|---|---|---|---|---|"]
    for name, r in result["age"].items():
        auc = f"{r['age_auc']:.3f}" if r["age_auc"] is not None else "n/a"
        ages = " / ".join(f"{v:.1f}" if v is not None else "n/a"
                          for v in (r["age_positive"], r["age_other"]))
        lines.append(f"| {name} | {r['images']} ({r['positives']}) | {auc} | {ages} | "
                     f"{r['no_age']} |")
    names = list(result["age"])
    lines += ["", "| site | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for s, shares in result["sites"].items():
        lines.append(f"| {s or '(empty)'} | " + " | ".join(f"{shares[n]:.2f}" for n in names)
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.metadata_prior",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--metadata_csv", required=True, help="the download's metadata table")
    p.add_argument("--output", required=True, help="folder for metadata_prior.json / .md")
    p.add_argument("--source_column", default="dataset", help="HAM10000's source column")
    p.add_argument("--label_column", default="dx")
    p.add_argument("--positive", default="mel", help="comma list of positive label values")
    p.add_argument("--age_column", default="age")
    p.add_argument("--site_column", default="localization")
    args = p.parse_args(argv)
    columns = {args.source_column, args.label_column, args.age_column, args.site_column}
    try:
        rows = bench_common.read_table(args.metadata_csv, columns)
        positive = {v for v in args.positive.split(",") if v}
        found = {r[args.label_column] for r in rows}
        if not positive & found:
            raise ValueError(f"--positive={args.positive}: no row has it in "
                             f"{args.label_column!r} (values: {sorted(found)})")
        result = {"metadata_csv": args.metadata_csv, "source_column": args.source_column,
                  "label": args.label_column, "positive": sorted(positive),
                  "age": age_prior(rows, source=args.source_column, label=args.label_column,
                                   positive=positive, age=args.age_column),
                  "sites": site_shares(rows, source=args.source_column,
                                       site=args.site_column)}
    except (OSError, ValueError) as e:
        print(f"metadata_prior: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    bench_common.write_json_and_table(args.output, "metadata_prior", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
