"""How much of a protocol run's in-source score is telling sources apart? Per held-out source,
the in-source validation score pooled over every training source beside the score within each
source alone (mean over seeds), and the held-out score. The score is the run's task's metric
(protocol.json's "task"): AUC for the binary task, balanced accuracy for the diagnosis task.

    python -m benchmarks.within_source --workdir=out/protocol/compact64-allsets
    python -m benchmarks.within_source --workdir=out/protocol/compact64 \\
        --metadata_csv=../shared/data/ham10000-5984/HAM10000_metadata.csv

When sources differ in their share of malignant lesions and look different (camera, framing),
a model can rank "this source" above "that source" and score a high pooled AUC without ranking
lesions within any source: the pooled figure then overstates what a new clinic will see. The
within-source AUC is the fair in-distribution reference for the held-out AUC. The same holds for
the diagnosis task, whose sources differ in their mix of diagnoses: a model that predicts each
source's commonest diagnosis scores a pooled balanced accuracy above what it scores within any
source. Within a source, balanced accuracy counts the classes present in its validation rows
(benchmarks.protocol_diagnosis reads the predictions and scores them). Sources come from
--metadata_csv (image id -> source column) when given, else from the source_collection of the
records the engine wrote for the protocol's in-source datasets (so a root of several downloads,
whose folder-named sources are in no table, is scored too); sources with one class in the
validation split have no AUC (nor balanced accuracy) and are left out. Writes within_source.json and
within_source.md in --output (default: the workdir); the output's keys name the metric
("metric": "auc" or "balanced_accuracy").

The groups need not be sources: --source_column=dx_type (HAM10000; the ISIC archive's
diagnosis_confirm_type) scores within how each diagnosis was confirmed, and
--heldout_within_groups splits each held-out source's score the same way. Excised lesions
(histopathology) are the hard ones; a clinic that sends only those scores low for that reason,
which the pooled in-source figure (mostly follow-up images) hides:

    python -m benchmarks.within_source --workdir=out/protocol/levers64-e20-melanoma \
        --metadata_csv=../shared/data/ham10000-5984/HAM10000_metadata.csv \
        --source_column=dx_type --heldout_within_groups --output=out/protocol/by-dx-type
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Any, Sequence

import numpy as np
from sklearn import metrics as skm

import isicflow
from benchmarks import common as bench_common
from benchmarks import protocol, protocol_diagnosis

# per task: the metric (its key in protocol.json's rows and in this output, and its name in the
# table) and the per-source detail given in brackets
METRICS = {"binary": ("auc", "AUC", "positives"),
           "diagnosis": ("balanced_accuracy", "balanced accuracy", "classes_counted")}


def _predictions(path: str, split: str | None) -> list[dict[str, str]]:
    with open(os.path.join(path, protocol.PREDICTIONS), encoding="utf-8", newline="") as f:
        return [r for r in csv.DictReader(f) if split is None or r["split"] == split]


def _sources(ids: Sequence[str], source_of: dict[str, str]) -> np.ndarray:
    """The source of each image id; ProtocolError naming ids source_of lacks."""
    missing = sorted(set(ids) - set(source_of))
    if missing:
        raise protocol.ProtocolError(f"{len(missing)} image ids have no source (in --metadata_csv"
                                     f"'s table, else in the protocol's in-source records), "
                                     f"e.g. {missing[:3]}")
    return np.array([source_of[i] for i in ids])


def in_source_data(workdir: str, run: dict[str, Any], held: str) -> str:
    """The dataset one row of a protocol.json (`run`) trained and scored its in-source splits
    on, in the workdir that trained (runs_from, else this one)."""
    return protocol.dataset_folder(run.get("runs_from") or workdir, "without", held)


def sources_from_records(data_dirs: Sequence[str], image_size: int | None
                         ) -> dict[str, str]:
    """{image_id: source_collection} of the validation records of the engine's datasets (read
    by isicflow.load, which imports TensorFlow when called); records naming no source are left
    out, so their ids fail in _sources. ProtocolError for a folder that holds no readable
    dataset, or an id two datasets give different sources."""
    source_of: dict[str, str] = {}
    for data_dir in dict.fromkeys(data_dirs):
        try:
            records = isicflow.load(data_dir, "validation", image_size,
                                    fields=("image_id", "source_collection"))
            pairs = [(r["image_id"].decode(), r["source_collection"].decode())
                     for r in records.as_numpy_iterator()]
        except (OSError, ValueError) as e:
            raise protocol.ProtocolError(f"the protocol's in-source dataset {data_dir} cannot "
                                         f"give the sources ({e}); pass --metadata_csv") from e
        for image_id, source in pairs:
            if source and source_of.setdefault(image_id, source) != source:
                raise protocol.ProtocolError(f"image {image_id} is {source_of[image_id]!r} in "
                                             f"one in-source dataset and {source!r} in {data_dir}")
    return source_of


def auc_within_sources(rows: list[dict[str, str]], source_of: dict[str, str]) -> dict[str, Any]:
    """{"pooled": AUC, "sources": {name: {"auc", "images", "positives"}}} of prediction rows."""
    s = _sources([r["image_id"] for r in rows], source_of)
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    per = {}
    for name in sorted(set(s)):
        m = s == name
        if y[m].min() != y[m].max():
            per[name] = {"auc": float(skm.roc_auc_score(y[m], p[m])), "images": int(m.sum()),
                         "positives": int(y[m].sum())}
    return {"pooled": float(skm.roc_auc_score(y, p)), "sources": per}


def _recall_of_present_classes(true: np.ndarray, predicted: np.ndarray,
                                classes: Sequence[str]) -> dict[str, float]:
    """{class: sklearn's recall} for the classes present in `true` (class indices)."""
    present = sorted(set(true.tolist()))
    recall = skm.recall_score(true, predicted, labels=present, average=None, zero_division=0)
    return {classes[i]: float(r) for i, r in zip(present, recall)}


def balanced_accuracy_within_sources(ids: Sequence[str], true: np.ndarray, predicted: np.ndarray,
                                     classes: Sequence[str], source_of: dict[str, str]
                                     ) -> dict[str, Any]:
    """{"pooled": balanced accuracy, "sources": {name: {"balanced_accuracy", "images",
    "classes_counted": {class: images}, "recall": {class: recall}}}} of a diagnosis
    evaluation's predicted classes (protocol_diagnosis.read_predictions); each counts the
    classes present in its images."""
    s = _sources(ids, source_of)
    per = {}
    for name in sorted(set(s)):
        m = s == name
        support = np.bincount(true[m], minlength=len(classes))
        if (support > 0).sum() >= 2:
            per[name] = {"balanced_accuracy": protocol_diagnosis.balanced_accuracy(true[m],
                                                                                 predicted[m]),
                         "images": int(m.sum()),
                         "classes_counted": {c: int(n) for c, n in zip(classes, support) if n},
                         "recall": _recall_of_present_classes(true[m], predicted[m], classes)}
    return {"pooled": protocol_diagnosis.balanced_accuracy(true, predicted), "sources": per}


def within_sources(task: str, output: str, source_of: dict[str, str],
                   split: str | None = "validation") -> dict[str, Any]:
    """One evaluation's rows of `split` (None: every row, as a held-out source is scored)
    scored pooled and per source by the task's metric."""
    if task == "diagnosis":
        return balanced_accuracy_within_sources(
            *protocol_diagnosis.read_predictions(output, split), source_of)
    return auc_within_sources(_predictions(output, split), source_of)


def _groups_every_seed_scored(scored: Sequence[dict[str, Any]]) -> list[str]:
    """A group with one class in some seed's rows has no score there: left out."""
    return sorted(set.intersection(*(set(x["sources"]) for x in scored)))


def mean_over_seeds(scored: Sequence[dict[str, Any]], metric: str) -> dict[str, float]:
    """{group: mean metric} over several seeds' within_sources, for the groups every seed
    scored."""
    return {n: float(np.mean([x["sources"][n][metric] for x in scored]))
            for n in _groups_every_seed_scored(scored)}


def mean_recall_over_seeds(scored: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{group: {class: mean recall}} over several seeds' diagnosis within_sources, for the
    groups every seed scored and the classes each of those holds."""
    return {n: {c: float(np.mean([x["sources"][n]["recall"][c] for x in scored]))
                for c in scored[0]["sources"][n]["recall"]}
            for n in _groups_every_seed_scored(scored)}


def summarise(workdir: str, source_of: dict[str, str] | None = None,
              heldout_within_groups: bool = False, column: str = "") -> dict[str, Any]:
    """source_of: image id -> source (a metadata table); None reads it from the records of the
    in-source datasets the protocol's rows were scored on (sources_from_records). With
    heldout_within_groups, each held-out source's images are scored within each group of
    source_of too (for a column other than the source, e.g. how each diagnosis was confirmed:
    the held-out score of one kind of image beside the in-source score of the same kind);
    column: the name of source_of's column when it is not the source (the table says so)."""
    run = protocol.read_json(os.path.join(workdir, "protocol.json"))
    task = run.get("task", "binary")
    if task not in METRICS:
        raise protocol.ProtocolError(f"{workdir}/protocol.json ran the {task} task: "
                                     f"within_source scores {sorted(METRICS)}")
    if source_of is None:
        source_of = sources_from_records([in_source_data(workdir, run, held)
                                          for held in run["rows"]], run.get("image_size"))
    metric, _, detail = METRICS[task]
    rows = {}
    for held in run["rows"]:
        inside = [within_sources(task, s, source_of)
                  for s in protocol.score_outputs(workdir, run, held, "in_source")]
        within = mean_over_seeds(inside, metric)
        names = list(within)
        row = {f"pooled_validation_{metric}": float(np.mean([x["pooled"] for x in inside])),
               f"within_source_validation_{metric}": within,
               f"mean_within_source_{metric}": float(np.mean(list(within.values()))),
               detail: {n: inside[0]["sources"][n][detail] for n in names}}
        if "heldout" in run["rows"][held]:  # the protocol's own seed mean, not scored again
            row[f"heldout_{metric}"] = run["rows"][held]["heldout"][metric]["mean"]
            if heldout_within_groups:
                outside = [within_sources(task, s, source_of, split=None)
                           for s in protocol.score_outputs(workdir, run, held, "heldout")]
                row[f"heldout_within_{metric}"] = mean_over_seeds(outside, metric)
                if task == "diagnosis":  # which classes a group loses, on each side
                    row["validation_recall_within"] = mean_recall_over_seeds(inside)
                    row["heldout_recall_within"] = mean_recall_over_seeds(outside)
        rows[held] = row
    result = {"workdir": workdir, "task": task, "metric": metric, "flags": run["flags"],
              "engine_flags": run["engine_flags"], "seeds": run["seeds"], "rows": rows,
              "fair_gap": fair_gap(rows, metric)}
    if column:
        result["group_column"] = column
    if heldout_within_groups:
        result["heldout_within_groups"] = True
    return result


def fair_gap(rows: dict[str, dict[str, Any]], metric: str = "auc"
             ) -> dict[str, dict[str, Any]]:
    """Per held-out source S: its score within S when S was trained on (the mean over every
    other row whose validation had S: the in-distribution reference for S alone) beside its
    held-out score, and gap = reference - held-out. The pooled in-source score mixes sources
    and is not a reference for one of them. metric: the rows' key suffix (METRICS)."""
    gaps = {}
    within, heldout = f"within_source_validation_{metric}", f"heldout_{metric}"
    for held, row in rows.items():
        inside = [r[within][held] for other, r in rows.items()
                  if other != held and held in r[within]]
        if heldout in row and inside:
            reference = float(np.mean(inside))
            gaps[held] = {"within_source_reference": reference, "runs": len(inside),
                          heldout: row[heldout], "gap": reference - row[heldout]}
    return gaps


def _bracket(detail: str, value: Any) -> str:
    """Positives (binary) or the number of classes present (diagnosis) of one source."""
    return str(value) if detail == "positives" else f"{len(value)} classes"


def markdown(result: dict[str, Any]) -> str:
    metric, name, detail = METRICS[result.get("task", "binary")]
    bracket = "positives" if detail == "positives" else "classes present"
    column, held_split = result.get("group_column"), result.get("heldout_within_groups")
    groups = f"each {column} value" if column else "each training source"
    lines = [f"`{result['workdir']}` ({' '.join(result['engine_flags'] + result['flags']) or 'base'}),"
             f" mean over {result['seeds']} seeds. Within-source: the in-source validation {name} "
             f"of {groups} alone ({bracket} in brackets).", "",
             f"| held out | in-source val {name}, pooled | within {groups} | mean "
             f"within | held-out {name} |" + (f" held out, within {groups} |" if held_split
                                              else ""),
             "|---|---|---|---|---|" + ("---|" if held_split else "")]
    for held, r in result["rows"].items():
        within = ", ".join(f"{n} {v:.3f} ({_bracket(detail, r[detail][n])})"
                           for n, v in r[f"within_source_validation_{metric}"].items())
        held_score = f"{r[f'heldout_{metric}']:.3f}" if f"heldout_{metric}" in r else "n/a"
        held_within = ", ".join(f"{n} {v:.3f}" for n, v in
                                r.get(f"heldout_within_{metric}", {}).items()) or "n/a"
        lines.append(f"| {held} | {r[f'pooled_validation_{metric}']:.3f} | {within} | "
                     f"{r[f'mean_within_source_{metric}']:.3f} | {held_score} |"
                     + (f" {held_within} |" if held_split else ""))
    recall_rows = [(held, group, r["validation_recall_within"][group], recall)
                   for held, r in result["rows"].items()
                   for group, recall in r.get("heldout_recall_within", {}).items()
                   if group in r["validation_recall_within"]]
    if recall_rows:
        lines += ["", f"Per-class recall within {groups}: in the training sources' validation "
                  "split → on the held-out source (mean over seeds; classes both sides hold).",
                  "", "| held out | group | recall, in source → held out |", "|---|---|---|"]
        for held, group, inside, outside in recall_rows:
            cells = ", ".join(f"{c} {inside[c]:.2f} → {outside[c]:.2f}"
                              for c in outside if c in inside)
            lines.append(f"| {held} | {group} | {cells} |")
    if result.get("fair_gap"):
        lines += ["", f"Each source against itself: its within-source validation {name} in the "
                  f"rows that trained on it (mean over those rows) and its held-out {name}.", "",
                  "| source | within it, trained on (rows) | held out | gap |", "|---|---|---|---|"]
        for source, g in result["fair_gap"].items():
            lines.append(f"| {source} | {g['within_source_reference']:.3f} ({g['runs']}) | "
                         f"{g[f'heldout_{metric}']:.3f} | {g['gap']:+.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.within_source",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a benchmarks.protocol --workdir")
    p.add_argument("--metadata_csv", default="",
                   help="a download's metadata table giving each image's source (wins when "
                        "given); default: the protocol's in-source records (source_collection)")
    p.add_argument("--id_column", default="image_id")
    p.add_argument("--source_column", default="dataset", help="the table's column that groups "
                   "the images: HAM10000's source column by default; another column (e.g. "
                   "dx_type, how each diagnosis was confirmed) scores within its values instead")
    p.add_argument("--heldout_within_groups", action="store_true",
                   help="also score each held-out source's images within each value of "
                        "--source_column (needs --metadata_csv; for a column other than the "
                        "source: one kind of image held out beside the same kind in source)")
    p.add_argument("--output", default="", help="where to write (default: --workdir)")
    args = p.parse_args(argv)
    if args.heldout_within_groups and not args.metadata_csv:
        p.error("--heldout_within_groups needs --metadata_csv (the column to group by)")
    try:
        source_of = None
        if args.metadata_csv:
            table = bench_common.read_table(args.metadata_csv,
                                            (args.id_column, args.source_column))
            source_of = {r[args.id_column]: r[args.source_column] for r in table}
        # the default column is HAM10000's source; any other groups by something else
        column = args.source_column if (args.metadata_csv and args.source_column
                                        != p.get_default("source_column")) else ""
        result = summarise(args.workdir, source_of, args.heldout_within_groups, column)
    except (protocol.ProtocolError, OSError, KeyError, ValueError) as e:
        print(f"within_source: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.output or args.workdir, exist_ok=True)
    bench_common.write_json_and_table(args.output or args.workdir, "within_source", result,
                                      markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
