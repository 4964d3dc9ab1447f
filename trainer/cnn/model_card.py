"""The model card: export/MODEL_CARD.md, next to the exported model, from what the run knows.

`build_card` is pure (dicts in, Markdown out): the run's report.json, the dataset's manifest,
the export's serving_config.json and the run's config. The export reads report.json from the
run folder once (`read_report`) and `write_card` writes the card from it into the export folder.
Every number in the card is read from those files, none is typed in here: the generalisation
figures the project measured live in docs/results, which the card points to. An ensemble's card
(serving_config "ensemble", trainer.cnn.ensemble) lists its members and shows only numbers
measured on the ensemble itself (its own report.json), never a member's.
"""
from __future__ import annotations

import collections
import math
import os
from typing import Any, Mapping, Sequence

from trainer.core import report as report_lib

MODEL_CARD_NAME = "MODEL_CARD.md"
SPLITS = ("train", "validation", "test")
METRICS = ("auc", "sensitivity", "specificity", "accuracy")
SUBGROUP_TITLES = {"source_collection": "Source collection", "diagnosis": "Diagnosis",
                   "anatom_site": "Anatomic site", "sex": "Sex", "age_approx": "Age (years)",
                   "fitzpatrick_skin_type": "Fitzpatrick skin type",
                   "diagnosis_confirmation": "How the diagnosis was confirmed"}


_num = report_lib.format_number  # the same cells as the run's report.md


def _interval(interval: Mapping[str, Any] | None) -> str:
    if not interval or interval.get("low") is None or interval.get("high") is None:
        return ""
    low, high = interval["low"], interval["high"]
    if any(isinstance(v, float) and not math.isfinite(v) for v in (low, high)):
        return ""
    return f" [{_num(low)}, {_num(high)}]"


def _source_name(name: str) -> str:
    return name or "(not recorded)"


def _training_data(manifest: Mapping[str, Any] | None, report: Mapping[str, Any],
                   run_config: Mapping[str, Any]) -> list[str]:
    data = report.get("data") or {}
    data_dir = data.get("data_dir") or run_config.get("data_dir") or "(not recorded)"
    lines = ["## Training data", "", f"- Dataset: `{data_dir}` (written by the isicflow data "
             "engine; its `manifest.json` holds every count below)."]
    if manifest:
        engine = manifest.get("config") or {}
        if engine.get("input"):
            lines.append(f"- Engine input: `{engine['input']}`; image types "
                         f"{engine.get('image_types') or 'all'}; label policy "
                         f"{engine.get('label_policy', 'n/a')}; excluded collections "
                         f"{engine.get('exclude_collections') or 'none'}.")
        if engine.get("dx_map"):  # the label is not the download's benign/malignant
            lines.append(f"- **Labels remapped** by the engine (`--dx_map={engine['dx_map']}`): "
                         "\"malignant\" means only the diagnoses still mapped to it (e.g. "
                         "melanoma vs rest), not every malignant lesion.")
    if run_config.get("init_encoder"):  # its images trained the net too, without labels
        lines.append(f"- The net's encoder started from `{run_config['init_encoder']}`, "
                     "pretrained on unlabelled images (`trainer.cnn.pretrain`, SimCLR): its "
                     "`pretrain_summary.json` names them, per split and source.")
    if run_config.get("probe_head"):
        lines.append("- Its output layer started from a logistic regression on the frozen "
                     "features of the train split (`--probe_head`, LP-FT), then the whole net "
                     "was fine-tuned.")
    if run_config.get("image_size"):
        lines.append(f"- Image size {run_config['image_size']} px, resize mode "
                     f"{(manifest or {}).get('resize_mode', 'squash')}.")
    counts = (manifest or {}).get("counts") or {}
    per_split = counts.get("per_split_label") or {
        split: (info.get("counts") or {}) for split, info in (data.get("splits") or {}).items()}
    if per_split:
        labels = sorted({label for c in per_split.values() for label in c})
        lines += ["", "Images per split and label:", "",
                  "| split | " + " | ".join(labels) + " | total |",
                  "|---" * (len(labels) + 2) + "|"]
        for split in [s for s in SPLITS if s in per_split]:
            c = per_split[split]
            lines.append(f"| {split} | " + " | ".join(str(c.get(label, 0)) for label in labels)
                         + f" | {sum(c.values())} |")
    rows = counts.get("per_split_label_diagnosis_source") or []
    if rows:
        by_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        for row in rows:
            source = _source_name(row.get("source_collection", ""))
            by_source[source][row.get("split", "?")] += int(row.get("count", 0))
            by_source[source][f"label:{row.get('label', '?')}"] += int(row.get("count", 0))
        labels = sorted({k[6:] for c in by_source.values() for k in c if k.startswith("label:")})
        lines += ["", "Source collections (the acquisition sources the model was trained and "
                  "evaluated on; manifest `counts.per_split_label_diagnosis_source`):", "",
                  "| source | " + " | ".join(SPLITS) + " | " + " | ".join(labels) + " | total |",
                  "|---" * (len(SPLITS) + len(labels) + 2) + "|"]
        for source, c in sorted(by_source.items(), key=lambda kv: -sum(
                v for k, v in kv[1].items() if not k.startswith("label:"))):
            total = sum(c[s] for s in SPLITS)
            lines.append(f"| {source} | " + " | ".join(str(c[s]) for s in SPLITS) + " | "
                         + " | ".join(str(c[f"label:{lab}"]) for lab in labels)
                         + f" | {total} |")
        diagnoses = collections.Counter()
        for row in rows:
            diagnoses[row.get("diagnosis") or "unknown"] += int(row.get("count", 0))
        lines += ["", "Diagnoses (all splits): " + ", ".join(
            f"{name} {n}" for name, n in diagnoses.most_common()) + "."]
    elif manifest is not None:
        lines += ["", "The manifest records no per-source counts."]
    skin = counts.get("fitzpatrick_skin_type")
    if skin:
        lines += ["", "Fitzpatrick skin type per split: " + "; ".join(
            f"{split} " + ", ".join(f"{t} {n}" for t, n in c.items())
            for split, c in skin.items()) + "."]
    return lines + [""]


def _metrics_table(report: Mapping[str, Any]) -> list[str]:
    splits = report.get("splits") or {}
    if report.get("task") == "diagnosis":
        lines = ["| split | records | balanced accuracy | accuracy |", "|---|---|---|---|"]
        for split, m in splits.items():
            lines.append(f"| {split} | {m.get('n', 'n/a')} | {_num(m.get('balanced_accuracy'))} "
                         f"| {_num(m.get('accuracy'))} |")
        for split, m in splits.items():
            recall = m.get("per_class_recall") or {}
            if recall:
                lines += ["", f"Per-class recall on {split}: " + ", ".join(
                    f"{c} {_num(r)}" for c, r in recall.items()) + "."]
        return lines
    lines = ["| split | cases | malignant | " + " | ".join(METRICS) + " |",
             "|---" * (len(METRICS) + 3) + "|"]
    for split, m in splits.items():
        if not m.get("cases"):
            lines.append(f"| {split} | 0 | | " + " | ".join("n/a" for _ in METRICS) + " |")
            continue
        intervals = (m.get("bootstrap") or {}).get("intervals") or {}
        cells = [_num(m.get(name)) + _interval(intervals.get(name)) for name in METRICS]
        lines.append(f"| {split} | {m['cases']} | {m.get('malignant', 'n/a')} | "
                     + " | ".join(cells) + " |")
    boot = next((m["bootstrap"] for m in splits.values() if m.get("bootstrap")), None)
    if boot:
        lines += ["", f"[low, high]: {int(boot.get('confidence', 0.95) * 100)}% percentile "
                  f"bootstrap interval over cases ({boot.get('resamples')} resamples); "
                  "sensitivity, specificity and accuracy at the threshold below."]
    return lines


def _breakdown(report: Mapping[str, Any]) -> list[str]:
    info = report.get("breakdown") or {}
    fields = info.get("fields") or {}
    lines = ["## Per source and per subgroup", ""]
    if not fields:
        return lines + ["The run's report.json holds no per-group breakdown (a diagnosis run, "
                        "a --use_metadata run, or a run without a test split): per-source and "
                        "per-subgroup quality is unmeasured. `python -m trainer.cnn.evaluate` "
                        "on a dataset gives one.", ""]
    lines += [f"AUC per group on the {info.get('scope', 'scored cases')} ({info.get('cases')} "
              "cases), with its bootstrap interval where the group holds both classes; "
              "sensitivity and specificity at the threshold below. Small groups give wide "
              "intervals.", ""]
    for field, values in fields.items():
        lines += [f"### {SUBGROUP_TITLES.get(field, field)}", ""]
        if values.get("note") or not values.get("groups"):
            lines += [values.get("note", "no groups"), ""]
            continue
        lines += ["| group | cases | malignant | AUC [95% interval] | sensitivity | specificity |",
                  "|---|---|---|---|---|---|"]
        for name, g in values["groups"].items():
            auc = _num(g.get("auc"))
            if auc == "n/a":
                auc += " (one class only)"
            lines.append(f"| {name} | {g.get('cases')} | {g.get('malignant')} | "
                         f"{auc}{_interval(g.get('auc_interval'))} | "
                         f"{_num(g.get('sensitivity'))} | {_num(g.get('specificity'))} |")
        lines.append("")
    return lines


def _threshold(report: Mapping[str, Any], serving: Mapping[str, Any]) -> list[str]:
    lines = ["## Threshold", ""]
    if serving.get("task") == "diagnosis" or report.get("task") == "diagnosis":
        return lines + ["None: the model outputs a probability per class and the most probable "
                        "class is reported (no threshold is chosen).", ""]
    chosen = report.get("threshold") or {}
    value = serving.get("threshold", chosen.get("threshold"))
    lines.append(f"- Threshold: **{_num(value, 4)}** on P(malignant); at or above it the "
                 "label is malignant.")
    if chosen:
        policy = chosen.get("policy", "n/a")
        lines.append(f"- Chosen on the validation split by policy `{policy}`"
                     + (f" (requested `{chosen['requested_policy']}`)"
                        if chosen.get("requested_policy") else "")
                     + (f", minimum sensitivity {chosen['min_sensitivity']}"
                        if chosen.get("min_sensitivity") is not None else "")
                     + f": {chosen.get('reason', 'reason not recorded')}. It was applied "
                       "unchanged to the test split.")
    else:
        lines.append(f"- Source: {serving.get('threshold_source', 'not recorded')}.")
    if serving.get("ensemble"):
        lines.append(f"- Ensemble: {serving['ensemble'].get('threshold', 'not recorded')}.")
    return lines + [""]


def _ensemble(serving: Mapping[str, Any]) -> list[str]:
    """What the card says of a model that averages several runs (serving_config "ensemble",
    trainer.cnn.ensemble): the members, one line each."""
    members = serving["ensemble"].get("members") or []
    combination = serving["ensemble"].get("combination") or "mean of the members' outputs"
    lines = [f"- An **ensemble of {len(members)} runs**: its output is the {combination}. "
             "Members:"]
    for member in members:
        lines.append(f"  - `{member.get('run')}` (seed {member.get('seed', 'n/a')}, "
                     f"architecture `{member.get('architecture') or 'n/a'}`"
                     + (f", own threshold {_num(member['own_threshold'], 4)}, not used"
                        if member.get("own_threshold") is not None else "") + ")")
    return lines


def build_card(*, report: Mapping[str, Any] | None, manifest: Mapping[str, Any] | None,
               serving_config: Mapping[str, Any], run_config: Mapping[str, Any] | None = None
               ) -> str:
    """The model card as Markdown. Pure: report = the run's report.json (None: not evaluated),
    manifest = the dataset's manifest (None: unknown), serving_config = the export's
    serving_config.json, run_config = the run's config (report["config"] when None)."""
    report = report or {}
    run_config = dict(run_config or report.get("config") or {})
    diagnosis = serving_config.get("task") == "diagnosis"
    task = ("diagnosis over the classes " + ", ".join(serving_config.get("classes", []))
            if diagnosis else "benign / malignant (P(malignant) and a label at a threshold)")
    arch = run_config.get("architecture") or run_config.get("model") or "n/a"
    size = serving_config.get("image_size", run_config.get("image_size", "n/a"))
    sources = sorted({_source_name(r.get("source_collection", "")) for r in
                      ((manifest or {}).get("counts") or {}).get(
                          "per_split_label_diagnosis_source", [])})
    ensemble = bool(serving_config.get("ensemble"))
    kind = (f"seed ensemble of {len(serving_config['ensemble'].get('members') or [])} runs, "
            if ensemble else "")
    lines = [f"# Model card: isicflow CNN, {kind}{('diagnosis' if diagnosis else 'binary')} task",
             "", f"- Task: {task}.",
             f"- Architecture `{arch}`, input {size}x{size} RGB, trained from scratch "
             f"(seed {run_config.get('seed', 'n/a')}, epochs {run_config.get('epochs', 'n/a')}); "
             f"test-time augmentation {'on' if serving_config.get('tta') else 'off'}.",
             *(_ensemble(serving_config) if ensemble else []),
             f"- Files: `model.keras`, `saved_model/`, `serving_config.json` (this folder).",
             "", "## Intended use", "",
             "**Not for clinical use.** This model is a research and teaching artefact of the "
             "isicflow project. It is not a medical device, has not been validated "
             "prospectively or by clinicians, and must not be used to diagnose, triage, "
             "reassure or decide on treatment or biopsy.",
             "",
             "Intended: studying how a from-scratch CNN behaves on dermoscopic images of a "
             "single skin lesion like those it was trained on (below), and comparing training "
             "recipes. Input: one dermoscopic image (JPEG or PNG, upright). Output: "
             + ("a probability per class." if diagnosis else
                "P(malignant) and a benign/malignant label at the threshold below."), ""]
    lines += _training_data(manifest, report, run_config)
    lines += ["## Validation and test metrics", ""]
    if report.get("splits"):
        lines += (["Measured on the ensemble itself (its averaged output), not taken from any "
                   "member.", ""] if ensemble else []) + _metrics_table(report) + [""]
    elif ensemble:
        lines += ["Not evaluated: the ensemble was not scored, and no member's numbers are "
                  "its own.", ""]
    else:
        lines += ["Not evaluated: the run folder holds no report.json.", ""]
    lines += _breakdown(report)
    lines += _threshold(report, serving_config)
    min_side = serving_config.get("min_image_side")
    lines += ["## Known failure modes and limits", "",
              "- **Trained on the listed sources only**"
              + (f" ({', '.join(sources)})" if sources else "")
              + ": performance on images from other clinics, cameras and populations is "
                "unknown. When a whole source is held out of training, the project measured "
                "AUC to drop sharply on it (see docs/results): expect this model to be worse on "
                "data from elsewhere than the numbers above.",
              "- **Lesions that were excised are harder than the figures above suggest** when "
              "the test split is mostly follow-up or consensus images: on HAM10000 the "
              "project's nets rank melanomas at AUC ~0.92 over all images and ~0.74 over "
              "histopathology-confirmed ones (docs/results/cnn-ham-confirmation.md). See "
              "\"How the diagnosis was confirmed\" above where the data records it.",
              "- **Images the data engine rejects are refused**, not scored: "
              "`trainer.cnn.predict` answers `rejected: <reason>` for a file that is not a JPEG "
              "or PNG, is corrupt or has too many pixels, a degenerate image (no picture: "
              "constant rows, columns or colour)"
              + (f", or an image whose short side is below {min_side} px" if min_side else "")
              + ". The SavedModel alone runs no checks.",
              "- **Dermoscopic images only**: clinical close-ups, overview photographs and "
              "total-body tiles are outside what it saw; it will still output a probability "
              "for them, which means nothing.",
              ("- Metrics come from one scoring of the ensemble on splits of the members' "
               "dataset; intervals are over cases, not over seeds or member choices."
               if ensemble else
               "- Metrics come from one training run (one seed) on splits of the same dataset; "
               "intervals are over cases, not over seeds."),
              "- Groups with few cases or one class have wide or undefined intervals; a "
              "subgroup absent from the table was not recorded in the data.",
              "- EXIF orientation is not applied by the SavedModel: send upright images.", ""]
    return "\n".join(lines)


def read_report(workdir: str) -> dict[str, Any] | None:
    """workdir/report.json, None where the run was not evaluated. The export reads it once and
    hands it to its threshold and to write_card, so the card and the served threshold agree."""
    import json

    from trainer.cnn.constants import REPORT_JSON

    path = os.path.join(workdir, REPORT_JSON)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_card(export_dir: str, report: Mapping[str, Any] | None,
               serving_config: Mapping[str, Any],
               manifest: Mapping[str, Any] | None = None,
               run_config: Mapping[str, Any] | None = None) -> str:
    """Writes export_dir/MODEL_CARD.md from the run's report (read_report; None: not
    evaluated), the manifest and the serving config; returns its path."""
    text = build_card(report=report, manifest=manifest, serving_config=serving_config,
                      run_config=run_config)
    path = os.path.join(export_dir, MODEL_CARD_NAME)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def sections(text: str) -> Sequence[str]:
    """The card's '## ' section titles, in order (for tests and checks)."""
    return [line[3:].strip() for line in text.splitlines() if line.startswith("## ")]
