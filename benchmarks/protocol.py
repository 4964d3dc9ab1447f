"""Evaluation protocol: one CNN config over several seeds, each acquisition source held out in
turn, one table of mean +- sd across seeds and a pooled 95% interval per source.

    python -m benchmarks.protocol --input=../shared/data/ham10000-5984 \\
        --base=configs/cnn_compact.flags --image_size=64 --seeds=3 --workdir=out/protocol/compact

For each held-out source S (every source the download holds, or --holdout_sources), the data
engine writes two datasets from --input: one without S (train, validation, and an in-source
test split) and one of S alone (its images in any split: all of them are scored). For each seed
trainer.cnn trains on the first (--seed=k, --data_dir, --image_size set here, the rest from
--base plus --flags), and trainer.cnn.evaluate scores the model, at the threshold it chose on
its own validation split, on the in-source validation and test splits and on every image of S.

The table gives, per held-out source: images (malignant), in-source validation AUC, held-out
AUC and sensitivity/specificity, each as mean +- sd over seeds with the pooled interval
(trainer.core.metrics.seed_summary: bootstrap over images, paired across seeds), and the gap
between in-source validation and held-out AUC. Runs and datasets already in --workdir are
reused, so the protocol can grow over several sittings; a kept dataset whose manifest records
other settings than this run's engine flags would write (another --dx_map, --train_fraction,
size...) is refused, never silently reused. Writes protocol.json and protocol.md.
--engine_flags go to every engine run (e.g. --dx_map=bcc:benign,akiec:benign for melanoma vs
rest), --train_engine_flags only to those that write training data (e.g. --train_fraction=0.5:
a learning curve's smaller training set, scored on the very held-out images of the full one);
--holdout_sources=none trains on every source and scores its own test split only.
--folds=K cross-validates within the download instead (no source is held out): K engine
datasets (fold k tests, k+1 validates), seeds x K runs, each scored on its validation and test
splits as above, and a "cross-validated" row pooling each seed's folds so that every image is
in test once (benchmarks/protocol_folds.py).
--eval_flags go to every evaluation (e.g. --tta), whose scores then sit in
RUN/protocol-<flags>/ beside the plain ones; with --runs_from=W the models (and datasets) of
another protocol workdir W are scored, nothing is trained, and this workdir holds the table:
an evaluation-time lever measured on the very models of its baseline.

The diagnosis task (--flags="--task=diagnosis ..."): a source needs images of >= 2 known
diagnoses to be held out and, once the runs trained, images of >= 2 of their classes (else it
is skipped with the reason, its in-source rows kept); each run is scored by the same
trainer.cnn.evaluate (its diagnosis branch, per-image class predictions) into the same
folders, and the table gives the held-out images scored and those not (unknown diagnosis,
outside the runs' classes) and balanced multi-class accuracy (benchmarks.protocol_diagnosis)
instead of AUC; the binary-only evaluation flag (--threshold) is refused before anything runs
(--tta applies to both tasks). The task is read from each trained run's report.json (its flags, flagfiles
followed as absl reads them, only to plan the held-out sources before any run exists).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from typing import Any, Sequence

import numpy as np

from beam_jobs.splits import check_folds
from benchmarks import common as bench_common, protocol_diagnosis, protocol_folds
from trainer.cnn import diagnosis
from trainer.cnn.constants import PREDICTIONS_CSV as PREDICTIONS, REPORT_JSON as REPORT
from trainer.core import metrics

ENGINE = "beam_jobs.preprocess"
TRAINER = "trainer.cnn"
EVALUATOR = "trainer.cnn.evaluate"  # both tasks
TASKS = ("binary", "diagnosis")


class ProtocolError(RuntimeError):
    """A step failed: the message names the step and its log."""


def _run(command: list[str], log: str) -> None:
    print("running:", " ".join(command), flush=True)
    with open(log, "w", encoding="utf-8") as f:
        result = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise ProtocolError(f"{command[2]} exited {result.returncode}; see {log}")


def read_json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _counts_per_source(manifest: dict, field: str) -> dict[str, dict[str, int]]:
    """{source: {row[field]: images}} from a manifest's per-split/label/diagnosis/source rows."""
    found: dict[str, dict[str, int]] = {}
    for row in manifest["counts"].get("per_split_label_diagnosis_source", []):
        source = row.get("source_collection") or ""
        if source:
            counts = found.setdefault(source, {})
            value = row.get(field) or ""
            counts[value] = counts.get(value, 0) + int(row["count"])
    return dict(sorted(found.items()))


def sources_of(manifest: dict) -> dict[str, dict[str, int]]:
    """{source: {label: images}} from a manifest's per-split/label/diagnosis/source counts."""
    return _counts_per_source(manifest, "label")


def diagnoses_of(manifest: dict) -> dict[str, dict[str, int]]:
    """{source: {diagnosis: images}} from the manifest's per-split/label/diagnosis/source rows."""
    return _counts_per_source(manifest, "diagnosis")


def flag_words(words: Sequence[str]) -> list[str]:
    """The flags as absl reads them (FlagValues.read_flags_from_files: each --flagfile=F
    replaced by F's lines, nested files followed, comments skipped, a circular one ignored).
    ProtocolError for a flagfile that cannot be opened."""
    from absl import flags as absl_flags

    try:
        return absl_flags.FlagValues().read_flags_from_files(["protocol", *words],
                                                             force_gnu=True)[1:]
    except absl_flags.Error as e:
        raise ProtocolError(f"{' '.join(words)}: {e}") from None


def planned_task(base: str, flags: Sequence[str]) -> str:
    """The --task the runs will train with: the last one in the flagfile (and the flagfiles
    it names) then --flags ("binary", trainer.cnn's default, when none). Only for planning
    before a run exists."""
    words = flag_words([f"--flagfile={base}", *flags])
    tasks = [w.split("=", 1)[1] for w in words if w.lstrip("-").startswith("task=")
             and w.startswith("-")]
    task = tasks[-1] if tasks else "binary"
    if task not in TASKS:
        raise ProtocolError(f"--task={task}: the protocol scores {list(TASKS)}")
    return task


def run_task(run: str) -> str:
    """The task a trained run recorded in its report.json ("task", else its config's)."""
    report = read_json(os.path.join(run, REPORT))
    return report.get("task") or report.get("config", {}).get("task", "binary")


def refuse_binary_eval_flags(eval_flags: Sequence[str]) -> None:
    """ProtocolError before anything runs for an evaluation flag a diagnosis model refuses
    (trainer.cnn.diagnosis_scoring.BINARY_ONLY_FLAGS)."""
    from trainer.cnn.diagnosis_scoring import BINARY_ONLY_FLAGS

    names = [f.lstrip("-").split("=", 1)[0] for f in eval_flags]
    refused = [f for f, n in zip(eval_flags, names) if n in BINARY_ONLY_FLAGS]
    if refused:
        raise ProtocolError(f"--eval_flags: {refused} apply to benign/malignant models only; "
                            "the diagnosis task's predicted class is the softmax's argmax")


def holdout_plan(sources: dict[str, dict[str, int]], wanted: str,
                 diagnoses: dict[str, dict[str, int]] | None = None) -> tuple[list[str], dict]:
    """(held-out sources, {source: why skipped}). A source needs both labels to have an AUC;
    with diagnoses ({source: {diagnosis: images}}, the diagnosis task) >= 2 known diagnoses
    for a balanced accuracy instead."""
    if wanted == "none":
        return [], {}
    names = list(sources) if wanted == "all" else [s.strip() for s in wanted.split(",") if s]
    unknown = [n for n in names if n not in sources]
    if unknown:
        raise ProtocolError(f"--holdout_sources: {unknown} not in the download; its sources "
                            f"are {sorted(sources)}")
    if diagnoses is not None:
        skipped = protocol_diagnosis.enough_classes({n: diagnoses.get(n, {}) for n in names})
    else:
        skipped = {n: f"only {sorted(sources[n])} images: no AUC" for n in names
                   if min(sources[n].get("benign", 0), sources[n].get("malignant", 0)) == 0}
    return [n for n in names if n not in skipped], skipped


def _engine(args: argparse.Namespace, output: str, exclude: Sequence[str],
            training: bool, extra: Sequence[str] = ()) -> str:
    """The engine's dataset at `output` (kept when its manifest exists): --engine_flags, and
    --train_engine_flags when it is training data, then `extra` (a fold's). A kept dataset whose
    manifest records other settings than this call's flags would write (check_kept_dataset) is
    refused."""
    flags = [*args.engine_flags.split(), *(args.train_engine_flags.split() if training else []),
             *extra]
    command = ["--runner=DirectRunner", "--direct_num_workers=2",
               "--direct_running_mode=multi_threading", f"--input={args.input}",
               f"--output={output}", f"--image_size={args.image_size}",
               f"--exclude_collections={','.join(['SONIC', *exclude])}", "--overwrite", *flags]
    if os.path.exists(os.path.join(output, "manifest.json")):
        check_kept_dataset(output, command)
    else:
        os.makedirs(os.path.dirname(output), exist_ok=True)
        _run([sys.executable, "-m", ENGINE, *command], f"{output}.log")
    return output


KEPT_DATASET_FREE = ("input", "output", "overwrite")  # may be spelled another way, or run-only


def check_kept_dataset(output: str, engine_args: Sequence[str]) -> None:
    """A dataset the protocol reuses must be what these engine arguments would write: every
    setting its manifest records (its "config", but the input's spelling) equal to the engine's
    own parse of the arguments; ProtocolError naming each difference otherwise (e.g. a
    learning-curve point whose dataset is the full set, or another --dx_map)."""
    from beam_jobs import config as engine_config

    wanted = json.loads(json.dumps(engine_config.parse_config(list(engine_args))[0]
                                   .to_json_dict()))
    written = read_json(os.path.join(output, "manifest.json")).get("config", {})
    differ = {k: (written[k], wanted[k]) for k in sorted(written)
              if k in wanted and k not in KEPT_DATASET_FREE and written[k] != wanted[k]}
    if differ:
        raise ProtocolError(f"{output} was written with other engine settings than this run's "
                            "flags ask for (written, asked): " + "; ".join(
                                f"{k} {a!r}, {b!r}" for k, (a, b) in differ.items())
                            + ": use another --workdir or remove that dataset")


def scores_folder(eval_flags: Sequence[str]) -> str:
    """A run's sub-folder for the protocol's scores: "protocol", or "protocol-<flags>" when
    the evaluation took flags (e.g. ["--tta"] -> "protocol-tta"), so both can sit side by side."""
    slug = "_".join("".join(c if c.isalnum() else "-" for c in f.lstrip("-")) for f in eval_flags)
    return "protocol" + (f"-{slug}" if slug else "")


def score_outputs(workdir: str, result: dict, source: str, name: str) -> list[str]:
    """The evaluation folders of every seed of one row of a protocol.json (`result`): name is
    "in_source" or "heldout"; runs from result["runs_from"] when it scored another's models."""
    root = result.get("runs_from") or workdir
    folder = result.get("scores_folder", "protocol")
    return [os.path.join(root, "runs", source, f"seed_{k}", folder, name)
            for k in seed_list(result)]


def seed_list(result: dict) -> range:
    """The training seeds of a protocol.json's result: `seeds` of them from first_seed (0 in
    tables written before --first_seed existed)."""
    first = result.get("first_seed", 0)
    return range(first, first + result["seeds"])


def heldout_skip_reason(run: str, heldout: str) -> str | None:
    """Why the held-out dataset cannot be scored by a diagnosis run, whose classes.json is
    known only once it trained (protocol_diagnosis.heldout_skip_reason); None when it can."""
    mapping = diagnosis.read_mapping(run)
    if mapping is None:
        raise ProtocolError(f"{run} trained the diagnosis task but holds no classes.json")
    counts: dict[str, int] = {}
    for per_source in diagnoses_of(read_json(os.path.join(heldout, "manifest.json"))).values():
        for name, n in per_source.items():
            counts[name] = counts.get(name, 0) + n
    return protocol_diagnosis.heldout_skip_reason(mapping, counts)


def _train_and_score(args, run: str, seed: int, data: str, heldout: str | None,
                     task: str) -> str | None:
    """Trains (unless done) and scores one seed; returns why its held-out source is skipped
    (a diagnosis run whose classes see < 2 of its diagnoses), else None."""
    if not os.path.exists(os.path.join(run, REPORT)):
        if args.runs_from:
            raise ProtocolError(f"--runs_from={args.runs_from}: {run} holds no trained run "
                                f"({REPORT}); run the protocol there first")
        os.makedirs(os.path.dirname(run), exist_ok=True)
        _run([sys.executable, "-m", TRAINER, f"--flagfile={args.base}", f"--data_dir={data}",
              f"--workdir={run}", f"--seed={seed}", f"--image_size={args.image_size}",
              "--export=false", "--keras_verbose=2", *args.flags.split()], f"{run}.log")
    if run_task(run) != task:
        raise ProtocolError(f"{run} trained the {run_task(run)} task, the protocol's flags say "
                            f"{task}: use another --workdir")
    skip = heldout_skip_reason(run, heldout) if heldout and task == "diagnosis" else None
    scored = [("in_source", data, "validation,test")]
    if heldout and not skip:
        scored.append(("heldout", heldout, "all"))
    eval_flags = args.eval_flags.split()
    for name, data_dir, splits in scored:
        output = os.path.join(run, scores_folder(eval_flags), name)
        if not os.path.exists(os.path.join(output, PREDICTIONS)):
            os.makedirs(os.path.dirname(output), exist_ok=True)
            _run([sys.executable, "-m", EVALUATOR, f"--model={run}",
                  f"--data_dir={data_dir}", f"--splits={splits}", f"--output={output}",
                  "--bootstrap=0", *eval_flags], f"{output}.log")
    return skip


def read_scores(output: str, split: str | None
                ) -> tuple[np.ndarray, np.ndarray, float | np.ndarray]:
    """(labels, probabilities) of one evaluation's predictions.csv sorted by image id, keeping
    `split` only (None: every row), and the threshold the model recorded (per image where the
    rows carry their own: cross-validated folds, protocol_folds)."""
    with open(os.path.join(output, PREDICTIONS), encoding="utf-8", newline="") as f:
        rows = sorted((r for r in csv.DictReader(f) if split is None or r["split"] == split),
                      key=lambda r: r["image_id"])
    if rows and protocol_folds.THRESHOLD_COLUMN in rows[0]:
        threshold: float | np.ndarray = np.array(
            [float(r[protocol_folds.THRESHOLD_COLUMN]) for r in rows])
    else:
        threshold = float(read_json(os.path.join(output, REPORT))["threshold"]["threshold"])
    return (np.array([int(r["label"]) for r in rows]),
            np.array([float(r["probability"]) for r in rows]), threshold)


def scores_of_runs(outputs: Sequence[str], split: str | None
                   ) -> tuple[np.ndarray, list[np.ndarray], list[float | np.ndarray]]:
    """(labels, scores per run, threshold per run) of runs that scored the same images (same
    ids in the same order); ProtocolError naming the runs otherwise."""
    scored = [read_scores(o, split) for o in outputs]
    labels = scored[0][0]
    if any(not np.array_equal(labels, s[0]) for s in scored):
        raise ProtocolError(f"runs scored different images: {outputs}")
    return labels, [s[1] for s in scored], [s[2] for s in scored]


def pooled(outputs: Sequence[str], split: str | None, resamples: int,
           task: str = "binary") -> dict[str, Any]:
    """seed_summary over the runs' scores of the same images (the diagnosis task's:
    protocol_diagnosis.pooled)."""
    if task == "diagnosis":
        try:
            return protocol_diagnosis.pooled(outputs, split, resamples)
        except ValueError as e:
            raise ProtocolError(str(e)) from None
    labels, scores, thresholds = scores_of_runs(outputs, split)
    return metrics.seed_summary(labels, scores, thresholds, resamples=resamples)


def _cell(summary: dict, metric: str) -> str:
    m = summary[metric]
    return f"{m['mean']:.3f} ± {m['sd']:.3f} [{m['pooled_ci'][0]:.3f}, {m['pooled_ci'][1]:.3f}]"


def markdown(result: dict) -> str:
    seeds = ", ".join(map(str, seed_list(result)))
    if result.get("task") == "diagnosis":
        return protocol_diagnosis.markdown(result, seeds)
    lines = [f"Base `{result['base']}` {' '.join(result['flags'])}, {result['image_size']} px, "
             f"{bench_common.engine_note(result)}seeds {seeds}. Each cell: mean ± sd over seeds "
             "[pooled 95% interval, bootstrap over images paired across seeds]; sensitivity/specificity at each "
             "run's validation-chosen threshold." + protocol_folds.table_note(result), "",
             "| held out | images (malignant) | in-source val AUC | in-source test AUC | "
             "held-out AUC | gap (val - held-out) | held-out sens | held-out spec |",
             "|---|---|---|---|---|---|---|---|"]
    for source, row in result["rows"].items():
        held = row.get("heldout")
        gap = (f"{row['in_source_validation']['auc']['mean'] - held['auc']['mean']:+.3f}"
               if held else "n/a")
        size = f"{held['cases']} ({held['positives']})" if held else "n/a"
        lines.append(f"| {source} | {size} | {_cell(row['in_source_validation'], 'auc')} | "
                     f"{_cell(row['in_source_test'], 'auc')} | "
                     f"{_cell(held, 'auc') if held else 'n/a'} | {gap} | "
                     f"{_cell(held, 'sensitivity') if held else 'n/a'} | "
                     f"{_cell(held, 'specificity') if held else 'n/a'} |")
    for source, why in result["skipped"].items():
        lines.append(f"| {source} | skipped: {why} |  |  |  |  |  |  |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.protocol",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, help="raw download with a source column (HAM10000's "
                   "`dataset`, written as source_collection), or a root of several downloads, "
                   "each of which names no source a source of its own (docs/engine.md)")
    p.add_argument("--base", required=True, help="trainer.cnn flagfile every run uses")
    p.add_argument("--workdir", required=True, help="datasets, runs and the table")
    p.add_argument("--image_size", type=int, default=128, help="engine output and trainer input")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per held-out source: "
                   "first_seed .. first_seed+N-1")
    p.add_argument("--first_seed", type=int, default=0, help="the first training seed; fresh "
                   "seeds (e.g. 3) confirm a recipe chosen on the scores of seeds 0..N-1")
    p.add_argument("--holdout_sources", default="", help="'all' (the default without --folds), "
                   "'none' or a comma list")
    p.add_argument("--folds", type=int, default=0, help="K >= 3: group-aware cross-validation "
                   "within the download instead of held-out sources (engine --folds=K "
                   "--fold=k, seeds x K runs); its row pools every fold's test predictions")
    p.add_argument("--flags", default="", help="trainer.cnn flags added after --base")
    p.add_argument("--engine_flags", default="", help="flags added to every engine run")
    p.add_argument("--train_engine_flags", default="", help="flags added to the engine runs "
                   "that write training data only (without_<source>; all with "
                   "--holdout_sources=none), never to a held-out source's: e.g. "
                   "--train_fraction=0.5 for a learning curve scored on the same held-out images")
    p.add_argument("--bootstrap", type=int, default=1000, help="resamples of the pooled interval")
    p.add_argument("--eval_flags", default="", help="trainer.cnn.evaluate flags (e.g. --tta); "
                   "scores go to RUN/protocol-<flags>/")
    p.add_argument("--runs_from", default="", help="score the trained runs and datasets of this "
                   "protocol workdir instead of training (an evaluation-time lever)")
    args = p.parse_args(argv)
    if not os.path.isdir(args.input):
        p.error(f"--input={args.input}: no such folder")
    if not os.path.isfile(args.base):
        p.error(f"--base={args.base}: no such flag file (e.g. configs/cnn_compact.flags)")
    if args.runs_from and not os.path.isfile(os.path.join(args.runs_from, "protocol.json")):
        p.error(f"--runs_from={args.runs_from}: no protocol.json there (a finished "
                "benchmarks.protocol workdir)")
    if args.runs_from and os.path.abspath(args.runs_from) == os.path.abspath(args.workdir):
        p.error("--runs_from must be another workdir: this one's table would be overwritten")
    ran = read_json(os.path.join(args.runs_from, "protocol.json")).get("folds", 0) \
        if args.runs_from else args.folds
    if ran != args.folds:
        p.error(f"--runs_from={args.runs_from} ran --folds={ran}, this call --folds="
                f"{args.folds}: score its runs with the folds they trained on")
    if args.folds and args.holdout_sources not in ("", "none"):
        p.error(f"--folds={args.folds} tests within the download: it takes no "
                f"--holdout_sources={args.holdout_sources}")
    if args.folds:
        try:
            check_folds(args.folds, 0)
        except ValueError as e:
            p.error(str(e))
    args.holdout_sources = args.holdout_sources or ("none" if args.folds else "all")
    if args.seeds < 1 or args.bootstrap < 1 or args.first_seed < 0:
        p.error(f"--seeds and --bootstrap must be >= 1 and --first_seed >= 0, got "
                f"{args.seeds}, {args.bootstrap}, {args.first_seed}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return run(args)
    except ProtocolError as e:
        print(f"protocol: {e}", file=sys.stderr)
        return 1


NO_HOLDOUT = "(none)"  # the one row of --holdout_sources=none


def dataset_folder(workdir: str, kind: str, source: str = "") -> str:
    """Where a protocol workdir keeps the engine's datasets: data/all (every source, also the
    NO_HOLDOUT row's training data), data/without_<source> (kind "without"),
    data/only_<source> (kind "only") and data/fold_<k>_of_<K> (kind "fold", source the fold's
    name); one rule for this module and its readers."""
    name = ("all" if kind == "all" or source == NO_HOLDOUT else
            source if kind == "fold" else f"{kind}_{source}")
    return os.path.join(workdir, "data", name)


def cross_validated(args: argparse.Namespace, trained: str, fold_names: Sequence[str],
                    folder: str, task: str) -> dict[str, Any]:
    """The protocol row of --folds: per seed, its folds' evaluations gathered into
    runs/cross-validated/seed_<k>/ (protocol_folds.write_out_of_fold), then pooled like any
    row's runs: every image once in test and once in validation."""
    merged = []
    for k in seed_list({"first_seed": args.first_seed, "seeds": args.seeds}):
        fold_outputs = [os.path.join(trained, "runs", name, f"seed_{k}", folder, "in_source")
                        for name in fold_names]
        output = os.path.join(trained, "runs", protocol_folds.CROSS_VALIDATED, f"seed_{k}",
                              folder, "in_source")
        try:
            protocol_folds.write_out_of_fold(fold_outputs, output)
        except ValueError as e:
            raise ProtocolError(str(e)) from None
        merged.append(output)
    return {"folds": len(fold_names),
            "in_source_validation": pooled(merged, "validation", args.bootstrap, task),
            "in_source_test": pooled(merged, "test", args.bootstrap, task)}


def run(args: argparse.Namespace) -> int:
    task = planned_task(args.base, args.flags.split())
    if task == "diagnosis":  # before any engine run: a refusal costs nothing
        refuse_binary_eval_flags(args.eval_flags.split())
    os.makedirs(args.workdir, exist_ok=True)  # with --runs_from nothing else creates it
    trained = args.runs_from or args.workdir
    if args.folds:  # every fold holds every image: fold 0's manifest plans as data/all would
        names = [protocol_folds.fold_name(k, args.folds) for k in range(args.folds)]
        plan = {name: (_engine(args, dataset_folder(trained, "fold", name), [], training=True,
                               extra=protocol_folds.engine_flags(k, args.folds)), None)
                for k, name in enumerate(names)}
        everything = plan[names[0]][0]
    else:
        everything = _engine(args, dataset_folder(trained, "all"), [],
                             training=args.holdout_sources == "none")
    manifest = read_json(os.path.join(everything, "manifest.json"))
    sources = sources_of(manifest)
    heldout, skipped = holdout_plan(sources, args.holdout_sources,
                                    diagnoses_of(manifest) if task == "diagnosis" else None)
    if not args.folds:
        plan = {s: (_engine(args, dataset_folder(trained, "without", s), [s], training=True),
                    _engine(args, dataset_folder(trained, "only", s),
                            [o for o in sources if o != s], training=False)) for s in heldout}
        if not heldout:
            plan = {NO_HOLDOUT: (everything, None)}
    rows = {}
    for source, (train_data, heldout_data) in plan.items():
        seeds = seed_list({"first_seed": args.first_seed, "seeds": args.seeds})
        runs = [os.path.join(trained, "runs", source, f"seed_{k}") for k in seeds]
        why = [_train_and_score(args, run, k, train_data, heldout_data, task)
               for k, run in zip(seeds, runs)]
        if any(why):  # the runs' classes merge or drop what the source holds
            skipped[source] = next(w for w in why if w)
            heldout_data = None
        folder = scores_folder(args.eval_flags.split())
        scored = lambda name: [os.path.join(r, folder, name) for r in runs]  # noqa: E731
        rows[source] = {"in_source_validation": pooled(scored("in_source"), "validation",
                                                       args.bootstrap, task),
                        "in_source_test": pooled(scored("in_source"), "test", args.bootstrap,
                                                 task)}
        if heldout_data:
            rows[source]["heldout"] = pooled(scored("heldout"), None, args.bootstrap, task)
        headline = (protocol_diagnosis.cell if task == "diagnosis"
                    else lambda summary: _cell(summary, "auc"))
        print(f"{source}: {headline(rows[source]['in_source_validation'])} in source, "
              + (f"{headline(rows[source]['heldout'])} held out" if heldout_data else ""),
              flush=True)
    if args.folds:
        rows[protocol_folds.CROSS_VALIDATED] = cross_validated(args, trained, list(plan), folder,
                                                               task)
    result = {"base": args.base, "flags": args.flags.split(), "engine_flags":
              args.engine_flags.split(), "train_engine_flags": args.train_engine_flags.split(),
              "image_size": args.image_size, "seeds": args.seeds, "folds": args.folds,
              "first_seed": args.first_seed, "task": task,
              "sources": sources, "skipped": skipped, "rows": rows,
              "eval_flags": args.eval_flags.split(), "scores_folder": folder,
              "runs_from": os.path.abspath(args.runs_from) if args.runs_from else ""}
    bench_common.write_json_and_table(args.workdir, "protocol", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
