"""Quality against training time: every kept checkpoint of one or more GAN runs, scored with
trainer.gan.evaluate's metrics on one fixed feature extractor, one real set and one latent seed,
written to --output as curve.json, curve.csv and curve.png (C2ST and FID against CPU minutes).

    python -m trainer.gan.curve --model=out/runs/gan-recipe-64,out/runs/dcgan-64 \\
        --data_dir=out/real --output=out/gan-curve

It takes trainer.gan.evaluate's data, feature and output flags (--data_dir, --output,
--num_generated, --feature_extractor and its weights or model, --seed, --max_real,
--classifier), with --model a list of run folders.

curve.csv holds run, step, train_cpu_s, train_wall_s, FID, KID, C2ST with its 95% interval,
memorization share, the C2ST on each of the evaluation's cues: colour, sharpness, layout, and
the DiffAugment probability where a run sets one. With --classifier (diagnosis-conditional
runs), each checkpoint's class agreement too (trainer.gan.evaluation.class_agreement: a
classifier trained on real images labels --num_generated images of each class):
class_agreement is its balanced accuracy on them, class_agreement_real the same classifier's on
the held-out real images of those classes (the reference), class_agreement_by_class each
class's share called that class ("nevus=0.82;melanoma=0.41;..."); curve.png gains a panel.
Training time comes from the run's history.json (train_cpu_s, train_wall_s of the epoch that
ended at or after the checkpoint's step); a run written before the trainer kept those has
them empty, and its x axis falls back to steps. A run grown from a smaller one
(--init_generator_from) counts the smaller run's training CPU too (source_cpu_s, from
checkpoints/init_generator.json): its CPU minutes are what the 128 px result cost in all.
"""
from __future__ import annotations

import csv
import json
import os
import sys
from typing import Sequence

import numpy as np
from absl import flags, logging

from trainer.core import program
from trainer.gan import evaluate, evaluation, grow, inputs

PROG = "trainer.gan.curve"

FIELDS = ("run", "step", "train_cpu_s", "train_wall_s", "fid", "kid", "c2st", "c2st_low",
          "c2st_high", "memorized_share", "c2st_colour", "c2st_sharpness", "c2st_layout",
          "cpu_source", "augment_p", "source_cpu_s", "class_agreement",
          "class_agreement_real", "class_agreement_by_class")


def checkpoint_steps(run: str) -> list[tuple[int, str]]:
    """(step, prefix) of every checkpoint a run kept, oldest first."""
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(os.path.join(run, "checkpoints"))
    if state is None:
        raise FileNotFoundError(f"{run}: no checkpoints/ with a checkpoint index")
    prefixes = list(state.all_model_checkpoint_paths)
    return sorted((int(p.rsplit("-", 1)[1]), p) for p in prefixes)


def entry_at_step(history: Sequence[dict], step: int) -> dict:
    """Pure rule: the first epoch entry that ended at or after `step` ({} if none did)."""
    return next((entry for entry in history if entry.get("step", -1) >= step), {})


def time_at_step(history: Sequence[dict], step: int) -> dict[str, float | None]:
    """Training time of the epoch entry that holds `step` (entry_at_step)."""
    entry = entry_at_step(history, step)
    return {k: entry.get(k) for k in ("train_cpu_s", "train_wall_s")}


def with_source_cpu(times: dict, init_record: dict | None) -> dict:
    """Pure rule: a grown run's training CPU = its own + its source run's (init_generator.json's
    source_train_cpu_s); source_cpu_s says how much of it was the source's. A grown run whose
    source CPU is unknown gets no CPU time rather than an understated one."""
    if not init_record:
        return {**times, "source_cpu_s": None}
    source = init_record.get("source_train_cpu_s")
    own = times.get("train_cpu_s")
    total = own + source if own is not None and source is not None else None
    return {**times, "train_cpu_s": total, "source_cpu_s": source}


def training_time(history: Sequence[dict], step: int, cpu_s_per_step: float | None = None
                  ) -> dict[str, float | str | None]:
    """time_at_step, with train_cpu_s = step x cpu_s_per_step when a rate is given (a run whose
    history predates the clock), and where the CPU figure came from."""
    times = time_at_step(history, step)
    if cpu_s_per_step is not None:
        return {**times, "train_cpu_s": step * cpu_s_per_step, "cpu_source": "derived"}
    return {**times, "cpu_source": "measured" if times["train_cpu_s"] is not None else ""}


def augment_p_at(prefix: str, history: Sequence[dict], step: int) -> float | None:
    """An ADA run's augmentation probability in the checkpoint itself; else (a fixed p < 1)
    the history's value for the epoch holding the step; None without either."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    key = "augment_p/.ATTRIBUTES/VARIABLE_VALUE"
    if reader.has_tensor(key):
        return float(reader.get_tensor(key))
    return entry_at_step(history, step).get("augment_p")


def parse_rates(pairs: Sequence[str], runs: Sequence[str]) -> dict[str, float]:
    """['RUN=0.67', ...] -> {run folder name: seconds}; RUN must name one of --model."""
    names = {os.path.basename(os.path.normpath(r)) for r in runs}
    rates = {}
    for pair in pairs:
        run, _, value = pair.partition("=")
        run = os.path.basename(os.path.normpath(run))
        if run not in names:
            raise ValueError(f"--cpu_s_per_step names {run!r}, not one of --model "
                             f"{sorted(names)}")
        try:
            rates[run] = float(value)
        except ValueError:
            raise ValueError(f"--cpu_s_per_step {pair!r}: want RUN=SECONDS, e.g. "
                             "run=0.67") from None
        if rates[run] <= 0:
            raise ValueError(f"--cpu_s_per_step {pair!r}: seconds must be > 0")
    return rates


def agreement_columns(report: dict, classes: Sequence[str]) -> dict:
    """class_agreement's report -> the curve's three class_agreement columns."""
    recall = report["generated"]["per_class_recall"]
    return {"class_agreement": report["generated"]["balanced_accuracy"],
            "class_agreement_real": (report.get("heldout_real") or {}).get("balanced_accuracy"),
            "class_agreement_by_class": ";".join(
                f"{c}={recall[c]:.3f}" for c in classes if recall.get(c) is not None)}


def score_runs(runs: Sequence[str], data_dir: str, *, num_generated: int = 400,
               max_real: int = 5000, seed: int = 0, extractor: str = "random_conv",
               cpu_s_per_step: dict[str, float] | None = None, classifier: str = "",
               **extractor_options) -> list[dict]:
    """One row per kept checkpoint of each run (FIELDS); extractor and its options as
    trainer.gan.features.make_extractor takes them; cpu_s_per_step as training_time takes it,
    by run folder name; classifier (every run diagnosis-conditional, with its classes) adds the
    class agreement columns."""
    from trainer.core import run_folder
    from trainer.gan import features, sampling

    rows, reals, extractors = [], {}, {}
    classify = (features.classifier_probabilities(evaluation.classifier_classes(classifier)[0])[0]
                if classifier else None)
    real_by_class: dict[tuple, tuple] = {}  # (size, classes) -> held-out (images, class index)
    for run in runs:
        history = run_folder.read_history(os.path.join(run, run_folder.HISTORY_NAME))
        init_path = os.path.join(run, "checkpoints", grow.RECORD_NAME)
        init_record = None
        if os.path.exists(init_path):
            with open(init_path, encoding="utf-8") as f:
                init_record = json.load(f)
        for step, prefix in checkpoint_steps(run):
            generator, arch = sampling.load_generator(prefix)
            size = arch["image_size"]
            if size not in reals:  # one real set and one extractor per image size
                train = evaluation.load_real(data_dir, ["train"], size, max_real)
                heldout = evaluation.load_real(data_dir, ["validation", "test"], size,
                                               max_real)
                extract, _ = features.make_extractor(extractor, seed=seed, **extractor_options)
                reals[size] = (train, extract(train), heldout, extract(heldout),
                               evaluation.cue_features(train))
                extractors[size] = extract
            train, f_train, heldout, f_held, train_cues = reals[size]
            shares = evaluation.class_shares(  # a diagnosis run: drawn in train's class shares
                sampling.read_class_mapping(prefix) if arch.get("classes") else None)
            generated = evaluation.generate_set(generator, arch, num_generated, seed, shares)
            f_gen = extractors[size](generated)
            metrics = evaluation.distribution_metrics(f_train, f_gen, seed)
            memorized, _, _ = evaluation.memorization_check(
                (generated, f_gen), (heldout, f_held), (train, f_train), "pixels", "")
            cues = evaluation.c2st_by_cue(train_cues, evaluation.cue_features(generated), None,
                                        seed)
            c2st = metrics["c2st"]
            name = os.path.basename(os.path.normpath(run))
            agreement = {}
            if classify is not None:
                mapping = sampling.read_class_mapping(prefix)
                key = (size, tuple(mapping["classes"]))
                if key not in real_by_class:
                    real_by_class[key] = evaluation.load_real_by_class(
                        data_dir, ["validation", "test"], size, mapping, max_real)
                # evaluate's rule on the run's train counts (a mapping that predates them:
                # every class drawn)
                counts = mapping.get("train_counts") or {c: evaluation.MIN_CLASS_TRAIN
                                                         for c in mapping["classes"]}
                by_class = evaluation.generate_by_class(generator, arch, evaluation.scored_draws(
                    [counts.get(c, 0) for c in mapping["classes"]], num_generated), seed)
                agreement = agreement_columns(evaluation.class_agreement(
                    classify, mapping["classes"], by_class, num_generated, real_by_class[key]),
                    mapping["classes"])
            rows.append({"run": name, "step": step,
                         **with_source_cpu(training_time(
                             history, step, (cpu_s_per_step or {}).get(name)), init_record),
                         "fid": metrics["fid"],
                         "kid": metrics["kid"]["mean"], "c2st": c2st["accuracy"],
                         "c2st_low": c2st["ci95"][0], "c2st_high": c2st["ci95"][1],
                         "memorized_share": memorized["share_below"],
                         **{f"c2st_{cue}": v["generated"] for cue, v in cues.items()},
                         "augment_p": augment_p_at(prefix, history, step), **agreement})
            logging.info("%s step %d: FID %.3f, C2ST %.3f", rows[-1]["run"], step,
                         rows[-1]["fid"], rows[-1]["c2st"])
    return rows


def plot_rows(rows: Sequence[dict]) -> tuple[bool, dict[str, list[dict]]]:
    """Pure rule for the curve's one x axis: CPU minutes when every run has at least one row
    with a CPU time (then rows without one, e.g. a checkpoint written after the last finished
    epoch of a stopped run, are left off and counted in the legend), else steps for every row
    (a run written before the trainer kept training time). Returns (timed, {run: rows})."""
    runs = list(dict.fromkeys(r["run"] for r in rows))
    timed = bool(runs) and all(any(r["run"] == run and r["train_cpu_s"] is not None
                                   for r in rows) for run in runs)
    return timed, {run: [r for r in rows if r["run"] == run
                         and (not timed or r["train_cpu_s"] is not None)] for run in runs}


def save_curve(rows: Sequence[dict], path: str) -> None:
    """C2ST (with its interval) and FID against training CPU minutes (steps where any run
    lacks them)."""
    from trainer.core.report import figure

    agreement = any(r.get("class_agreement") is not None for r in rows)
    fig = figure(15 if agreement else 10, 4)
    axes = fig.subplots(1, 3 if agreement else 2)
    ax_c2st, ax_fid = axes[0], axes[1]
    timed, drawn = plot_rows(rows)
    xlabel = "training CPU minutes" if timed else "training steps"
    for run, mine in drawn.items():
        left = sum(r["run"] == run for r in rows) - len(mine)
        label = run + (" (CPU: steps x rate)" if any(r.get("cpu_source") == "derived"
                                                       for r in mine) else "") + (
            f" ({left} checkpoint(s) without a CPU time not drawn)" if left else "")
        x = [r["train_cpu_s"] / 60 if timed else r["step"] for r in mine]
        ax_c2st.errorbar(x, [r["c2st"] for r in mine], yerr=np.array(
            [[r["c2st"] - r["c2st_low"] for r in mine], [r["c2st_high"] - r["c2st"]
                                                         for r in mine]]), marker="o",
            capsize=3, label=label)
        ax_fid.plot(x, [r["fid"] for r in mine], marker="o", label=label)
        if agreement:
            line = axes[2].plot(x, [r.get("class_agreement") for r in mine], marker="o",
                                label=label)[0]
            real = [r.get("class_agreement_real") for r in mine]
            if real and real[0] is not None:
                axes[2].axhline(real[0], ls=":", c=line.get_color(), lw=1)
    if agreement:
        axes[2].set(xlabel=xlabel, ylim=(0.0, 1.02),
                    ylabel="class agreement (balanced; dotted: real images)")
    ax_c2st.axhline(0.85, ls="--", c="grey", lw=1)
    ax_c2st.set(xlabel=xlabel, ylabel="C2ST accuracy (0.5 = indistinguishable)",
                ylim=(0.45, 1.02))
    ax_fid.set(xlabel=xlabel, ylabel="FID", yscale="log")
    ax_c2st.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def define_flags() -> None:
    if "cpu_s_per_step" in flags.FLAGS:  # defined already (run() called twice)
        return
    evaluate.define_common_flags()
    flags.DEFINE_list("model", None, "GAN run folders (trainer.gan's --workdir: each with "
                      "checkpoints/ and history.json).")
    flags.DEFINE_list("cpu_s_per_step", [], "RUN=SECONDS pairs: for a run whose history "
                      "predates train_cpu_s (or lost part of it), training CPU = step x this "
                      "measured rate; curve.csv marks those rows cpu_source=derived.")


def main(argv: list[str]) -> None:
    values = flags.FLAGS
    inputs.required("model", values.model, "a comma list of GAN run folders")
    sizes = {inputs.generator(run)[1]["image_size"] for run in values.model}
    for size in sorted(sizes):
        inputs.dataset(values.data_dir, size, ["train"], minimum=4,
                       size_from="the size a GAN in --model makes")
    inputs.folder_to_write("output", values.output, "the folder curve.json/csv/png go to")
    evaluate.check_features(values)
    rates = inputs.checked("cpu_s_per_step", parse_rates, values.cpu_s_per_step, values.model)
    if values.classifier:  # every run conditional on the classifier's classes, up front
        for run in values.model:
            inputs.checked("classifier", evaluation.check_classifier, values.classifier,
                           inputs.generator(run)[1])
    from trainer.core import run_folder

    rows = score_runs(values.model, values.data_dir, num_generated=values.num_generated,
                      cpu_s_per_step=rates, max_real=values.max_real, seed=values.seed,
                      extractor=values.feature_extractor,
                      inception_weights=values.inception_weights,
                      feature_model=values.feature_model,
                      feature_model_range=tuple(float(v)
                                                for v in values.feature_model_value_range),
                      classifier=values.classifier)
    out = values.output
    os.makedirs(out, exist_ok=True)
    run_folder.write_json(os.path.join(out, "curve.json"), {"rows": rows})
    with open(os.path.join(out, "curve.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    save_curve(rows, os.path.join(out, "curve.png"))
    print(f"curve of {len(rows)} checkpoints in {out}")


def run(argv: list[str] | None = None) -> None:
    define_flags()
    program.run(main, prog=PROG, doc=__doc__, flag_modules=[__name__, evaluate.__name__],
                argv=argv)


if __name__ == "__main__":
    from trainer.gan import curve  # the module under its own name: its flags' owner

    sys.exit(curve.run())
