"""Ablation runner: one trainer.cnn run per variant, one table of what each lever is worth.

    python -m benchmarks.ablation --workdir=out/ablation --base=configs/cnn_recipe.flags \\
        --variant="recipe=" --variant="compact=--architecture=compact" ...

Each variant is NAME=FLAGS (FLAGS appended to the base flagfile, so they win), given with
--variant or one per line of --variants_file (blank lines and # comments skipped); e.g.
configs/ablation_recipe.txt holds the recipe's levers. Runs go one
after another (timings are only comparable on a machine that does nothing else), each a fresh
process, in WORKDIR/NAME; a variant whose report.json exists is not run again, so the table can
grow over several sittings (and over several bases: ablation.json keeps every row the workdir
has seen). Evaluation and TTA follow the flags; the export is skipped.

Per variant the table gives validation and test AUC with their bootstrap 95% intervals and
sensitivity/specificity at the validation-chosen threshold (from report.json), epochs run and
the best one, training wall minutes and process CPU minutes (train_summary.json), the mean
epoch time and the input wait share (history.json). Writes ablation.md and ablation.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Sequence

from benchmarks import common as bench_common
from trainer.core import run_folder


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'NAME=--a=1 --b' -> ('NAME', ['--a=1', '--b']); the flags may be empty."""
    name, sep, flags = text.partition("=")
    name = name.strip()
    if not sep or not name or "/" in name:
        raise ValueError(f"variant {text!r} is not NAME=FLAGS (NAME a plain folder name)")
    return name, flags.split()


def _json(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def summarize(run: str) -> dict[str, Any]:
    """The table row of one finished run folder."""
    report = _json(os.path.join(run, "report.json"))
    summary = _json(os.path.join(run, "train_summary.json"))
    history = run_folder.read_history(os.path.join(run, run_folder.HISTORY_NAME))
    row: dict[str, Any] = {"epochs": summary.get("epochs_done"),
                           "best_epoch": summary.get("best_epoch"),
                           "train_wall_min": _minutes(summary.get("wall_time_s_this_run")),
                           "train_cpu_min": _minutes(summary.get("cpu_time_s_this_run")),
                           "tta": report.get("tta")}
    for split in ("validation", "test"):
        values = report["splits"][split]
        interval = values.get("bootstrap", {}).get("intervals", {}).get("auc", {})
        row[split] = {"auc": values.get("auc"),
                      "auc_ci95": [interval.get("low"), interval.get("high")],
                      "sensitivity": values.get("sensitivity"),
                      "specificity": values.get("specificity"), "cases": values.get("cases")}
    epoch_times = [e["epoch_time_s"] for e in history if e.get("epoch_time_s") is not None]
    waits = [e["input_wait_share"] for e in history if e.get("input_wait_share") is not None]
    row["epoch_s"] = sum(epoch_times) / len(epoch_times) if epoch_times else None
    row["input_wait_share"] = max(waits) if waits else None
    return row


def _minutes(seconds) -> float | None:
    return None if seconds is None else seconds / 60.0


def _fmt(value, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _auc(values: dict) -> str:
    ci = values.get("auc_ci95") or [None, None]
    return f"{_fmt(values.get('auc'))} [{_fmt(ci[0])}, {_fmt(ci[1])}]"


def markdown(rows: dict[str, dict]) -> str:
    """The table: one row per variant (its base flagfile and flags in the second column)."""
    lines = ["Each run: its base flagfile plus its flags. AUC with bootstrap 95% interval; "
             "sensitivity/specificity at the threshold chosen on validation.", "",
             "| variant | base + flags | val AUC | test AUC | test sens/spec | epochs (best) | "
             "train min wall / CPU | s/epoch | max input wait |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        test = row["test"]
        base = os.path.basename(row.get("base", ""))
        lines.append(
            f"| {name} | `{' '.join([base, *row.get('flags', [])]).strip()}` | "
            f"{_auc(row['validation'])} "
            f"| {_auc(test)} | {_fmt(test.get('sensitivity'), '.2f')}/"
            f"{_fmt(test.get('specificity'), '.2f')} | {row['epochs']} ({row['best_epoch']}) | "
            f"{_fmt(row['train_wall_min'], '.1f')} / {_fmt(row['train_cpu_min'], '.1f')} | "
            f"{_fmt(row['epoch_s'], '.1f')} | {_fmt(row['input_wait_share'], '.1%')} |")
    return "\n".join(lines) + "\n"


def run_variant(base: str, workdir: str, name: str, flags: Sequence[str]) -> float:
    """Trains one variant in a fresh process; returns its wall seconds."""
    command = [sys.executable, "-m", "trainer.cnn", f"--flagfile={base}",
               f"--workdir={os.path.join(workdir, name)}", "--export=false",
               "--keras_verbose=2", *flags]
    print("running:", " ".join(command), flush=True)
    started = time.perf_counter()
    with open(os.path.join(workdir, f"{name}.log"), "w", encoding="utf-8") as log:
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise RuntimeError(f"variant {name!r} failed with exit {result.returncode}; see "
                           f"{os.path.join(workdir, name + '.log')}")
    return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ablation",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--workdir", required=True, help="one run folder per variant, and the "
                        "table (ablation.md / .json); variants already there are not re-run")
    parser.add_argument("--base", required=True, help="trainer.cnn flagfile every variant uses")
    parser.add_argument("--variant", action="append", default=[], help="NAME=FLAGS")
    parser.add_argument("--variants_file", help="one NAME=FLAGS per line")
    parser.add_argument("--flags", default="", help="flags added to every variant, before "
                        "its own (e.g. --image_size=64 --epochs=40)")
    args = parser.parse_args(argv)
    lines = list(args.variant)
    if args.variants_file:
        with open(args.variants_file, encoding="utf-8") as f:
            lines += [line.strip() for line in f
                      if line.strip() and not line.lstrip().startswith("#")]
    if not lines:
        parser.error("no variants: give --variant NAME=FLAGS or --variants_file")
    variants = {name: args.flags.split() + flags
                for name, flags in map(parse_variant, lines)}
    os.makedirs(args.workdir, exist_ok=True)
    saved = os.path.join(args.workdir, "ablation.json")
    # Rows of earlier invocations in this workdir (other bases, say) stay in the table.
    rows = _json(saved)["rows"] if os.path.exists(saved) else {}
    for name, flags in variants.items():
        if not os.path.exists(os.path.join(args.workdir, name, "report.json")):
            if not os.path.isfile(args.base):  # only a run to make needs the flag file
                parser.error(f"--base={args.base}: no such flag file; pass a trainer.cnn "
                             "flagfile such as configs/cnn_recipe.flags")
            run_variant(args.base, args.workdir, name, flags)
        rows[name] = {**summarize(os.path.join(args.workdir, name)), "base": args.base,
                      "flags": flags}
        print(f"{name}: val AUC {_auc(rows[name]['validation'])}", flush=True)
    bench_common.write_json_and_table(args.workdir, "ablation", {"rows": rows}, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
