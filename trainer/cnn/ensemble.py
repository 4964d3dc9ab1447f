"""A seed ensemble served through the export contract: several runs of one recipe, their
probabilities averaged, exported as one model that trainer.cnn.predict serves like any other.

    python -m trainer.cnn.ensemble --model=RUN1,RUN2,RUN3 --output=DIR [--data_dir=DATASET]
        [--threshold_policy=P] [--min_sensitivity=S] [--tta|--notta] [--bootstrap=1000]

Writes DIR as a run folder of the ensemble (report.json, report.md, plots/; classes.json for
the diagnosis task) and DIR/export/ (model.keras, saved_model/, serving_config.json,
MODEL_CARD.md: trainer.cnn.export's layout). Serve it with
`python -m trainer.cnn.predict --model=DIR`.

Why this shape: the members' recorded thresholds were each chosen on one member's
probabilities, and the mean of several probabilities is distributed differently (less spread),
so none of them is the ensemble's. The ensemble is scored here exactly as training scores a run
(trainer.cnn.evaluation.evaluate_and_report: validation picks the threshold by the members'
policy, test is measured at it), on the members' own dataset, so the threshold and every
number on the model card are the ensemble's own. Without that dataset there is no threshold to
choose, and the export is refused rather than guessed.

Members must agree on what shapes their inputs and outputs (AGREED_SETTINGS, every exported
member's resize mode, the dataset, and the diagnosis classes); the first disagreement is
refused naming the run and the setting. --model: two or more run folders (model.keras and
train_config.json, as training leaves them). --data_dir: where the members' dataset lives now,
when it moved (the members must still agree on the one they recorded, and it must hold the
records per split their report.json recorded). --threshold_policy / --min_sensitivity / --tta:
default the members' own (report.json), which must then agree.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from absl import flags

from trainer.cnn import tta as tta_lib
from trainer.cnn.constants import (CLASSES_NAME, EXPORT_DIR, KERAS_NAME, REPORT_JSON,
                                   SERVING_CONFIG_NAME, TRAIN_CONFIG_NAME)
from trainer.core import metadata_features, metrics, program

# run settings (train_config.json) every member must share, with the value a config written
# before the setting existed means
AGREED_SETTINGS = {"task": "binary", "image_size": None, "use_metadata": False,
                   "color_constancy": "none", "center_crop": 1.0}


class EnsembleError(ValueError):
    """A one-line reason the ensemble cannot be exported (the CLI prints it and exits 2)."""


def _normal_path(path: str | None) -> str | None:
    """A data_dir as comparable text: local paths absolute, URLs (gs://) as written."""
    if not path:
        return None
    return path.rstrip("/") if "://" in path else os.path.abspath(path)


def read_member(run: str) -> dict[str, Any]:
    """What the ensemble needs from one run folder: {run, keras, config, report, settings,
    resize_mode (its export's, None when not exported), classes and mapping (its classes.json,
    None for a binary run), split_records ({split: records} of the dataset its report.json
    recorded, None when it records none), data_dir, threshold, tta}. EnsembleError naming the
    run for one without image_size or a diagnosis run without classes.json."""
    from trainer.cnn.evaluation import read_json

    keras_path = os.path.join(run, KERAS_NAME)
    if not os.path.isfile(keras_path):
        raise EnsembleError(f"--model: {run} has no {KERAS_NAME} (not a finished run folder)")
    report = read_json(os.path.join(run, REPORT_JSON), None)
    config = read_json(os.path.join(run, TRAIN_CONFIG_NAME), None) or (report or {}).get("config")
    if not config:
        raise EnsembleError(f"--model: {run} records no settings (neither {TRAIN_CONFIG_NAME} "
                            f"nor {REPORT_JSON}'s config), so agreement cannot be checked")
    settings = {k: config.get(k, default) for k, default in AGREED_SETTINGS.items()}
    if not isinstance(settings["image_size"], int) or settings["image_size"] < 1:
        raise EnsembleError(f"--model: {run} records no image_size (got "
                            f"{settings['image_size']!r} in its {TRAIN_CONFIG_NAME} or "
                            f"{REPORT_JSON}'s config): the ensemble's input size is unknown")
    if settings["use_metadata"]:
        try:
            settings["metadata_encoding"] = metadata_features.run_encoding(config)
            settings["metadata_fields"] = list(metadata_features.run_fields(config))
        except ValueError as e:
            raise EnsembleError(f"--model: {run}: {e}") from None
    serving = read_json(os.path.join(run, EXPORT_DIR, SERVING_CONFIG_NAME), {})
    mapping = read_json(os.path.join(run, CLASSES_NAME), None)
    if settings["task"] == "diagnosis" and not (mapping or {}).get("classes"):
        raise EnsembleError(f"--model: {run} trained the diagnosis task but holds no "
                            f"{CLASSES_NAME} with its classes: the ensemble's classes are unknown")
    chosen = (report or {}).get("threshold") or {}
    recorded = ((report or {}).get("data") or {}).get("splits")
    return {"run": os.path.abspath(run), "keras": keras_path, "config": dict(config),
            "report": report, "settings": settings, "resize_mode": serving.get("resize_mode"),
            "classes": (mapping or {}).get("classes"), "mapping": mapping,
            "split_records": {s: int(c.get("records", 0)) for s, c in recorded.items()}
            if recorded else None,
            "data_dir": _normal_path(((report or {}).get("data") or {}).get("data_dir")
                                     or config.get("data_dir")),
            "threshold": chosen.get("threshold"),
            "policy": chosen.get("requested_policy") or chosen.get("policy"),
            "min_sensitivity": chosen.get("min_sensitivity"),
            "tta": None if report is None else bool(report.get("tta", False))}


def check_agreement(members: Sequence[Mapping[str, Any]]) -> None:
    """EnsembleError naming the first member and setting that differs from the first member's:
    AGREED_SETTINGS (and metadata_encoding and metadata_fields for --use_metadata runs), the
    exported resize mode (every exported member's against the first exported one's), the
    diagnosis classes and the dataset."""
    first = members[0]
    exported = [m for m in members if m["resize_mode"]]
    for member in exported[1:]:
        if member["resize_mode"] != exported[0]["resize_mode"]:
            raise EnsembleError(f"--model: {member['run']} was exported with resize_mode="
                                f"{member['resize_mode']!r} but {exported[0]['run']} with "
                                f"{exported[0]['resize_mode']!r}")
    for member in members[1:]:
        pairs = [(name, first["settings"].get(name), member["settings"].get(name))
                 for name in {**first["settings"], **member["settings"]}]
        pairs += [("classes", first["classes"], member["classes"]),
                  ("data_dir", first["data_dir"], member["data_dir"])]
        for name, want, got in pairs:
            if want != got:
                raise EnsembleError(
                    f"--model: {member['run']} has {name}={got!r} but {first['run']} has "
                    f"{want!r}; an ensemble's members must agree on {', '.join(AGREED_SETTINGS)}, "
                    "metadata_encoding, metadata_fields, resize_mode, classes and data_dir")


def check_dataset(members: Sequence[Mapping[str, Any]], data_dir: str,
                  manifest: Mapping[str, Any], split_records: Mapping[str, int]) -> str:
    """The dataset's resize mode, after checking it is the members' dataset: EnsembleError
    naming the run when an exported member was exported with another resize mode, or when a
    member recorded other records per split (split_records: the dataset's, {split: records}
    at the members' image size) than the dataset holds."""
    resize_mode = manifest.get("resize_mode", "squash")
    for member in members:
        if member["resize_mode"] not in (None, resize_mode):
            raise EnsembleError(f"--data_dir={data_dir} has resize_mode {resize_mode!r} but "
                                f"{member['run']} was exported with {member['resize_mode']!r}")
        if member["split_records"] not in (None, dict(split_records)):
            raise EnsembleError(f"--data_dir={data_dir} holds {dict(split_records)} records per "
                                f"split but {member['run']} recorded {member['split_records']}: "
                                "not the members' dataset")
    return resize_mode


def _one(members: Sequence[Mapping[str, Any]], key: str, flag: str, given: Any) -> Any:
    """The flag's value when given, else the value every member recorded; EnsembleError when
    they differ or one recorded none (the flag must then be given)."""
    if given is not None:
        return given
    values = {m["run"]: m[key] for m in members}
    if None in values.values() or len(set(values.values())) > 1:
        raise EnsembleError(f"the members do not record one {key} ({values}; None: no "
                            f"{REPORT_JSON}); pass {flag}")
    return next(iter(values.values()))


def average_model(models: Sequence[Any]):
    """One Keras model with the members' inputs whose output is the mean of their outputs
    (probabilities: one sigmoid unit, or the diagnosis softmax). Members are renamed member_i
    so the nested models have distinct names."""
    import keras

    shapes = {(tuple(tuple(t.shape) for t in m.inputs), tuple(m.outputs[0].shape)) for m in models}
    if len(shapes) != 1:
        raise EnsembleError(f"the members' (input shapes, output shape) differ: {sorted(shapes)}")
    inputs = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype, name=f"input_{i}")
              for i, t in enumerate(models[0].inputs)]
    x = inputs if len(inputs) > 1 else inputs[0]
    outputs = []
    for i, model in enumerate(models):
        model.name = f"member_{i}"
        outputs.append(model(x))
    mean = keras.layers.Average(dtype="float32", name="mean_probability")(outputs)
    return keras.Model(x, mean, name=f"ensemble_of_{len(models)}")


def ensemble_config(members: Sequence[Mapping[str, Any]], data_dir: str) -> dict[str, Any]:
    """The ensemble's "run config" (report.json, model card): each setting the members share,
    as a list of the members' values where they differ (seed, workdir), and the members."""
    keys = list(dict.fromkeys(k for m in members for k in m["config"]))
    config: dict[str, Any] = {}
    for key in keys:
        values = [m["config"].get(key) for m in members]
        config[key] = values[0] if all(v == values[0] for v in values) else values
    for key in ("metadata_encoding", "metadata_fields"):  # lists where image-only runs differ
        config.pop(key, None)
    if members[0]["settings"]["use_metadata"]:  # agreed (check_agreement): what serving encodes
        for key in ("metadata_encoding", "metadata_fields"):
            config[key] = members[0]["settings"][key]
    config["data_dir"] = data_dir
    config["ensemble_members"] = [m["run"] for m in members]
    return config


def ensemble_note(members: Sequence[Mapping[str, Any]], threshold_note: str) -> dict[str, Any]:
    """serving_config.json's "ensemble": the members and how the served threshold was chosen."""
    return {"members": [{"run": m["run"], "seed": m["config"].get("seed"),
                         "architecture": m["config"].get("model"),
                         "own_threshold": m["threshold"]} for m in members],
            "combination": "mean of the members' probabilities (after test-time augmentation "
                           "where it is on)",
            "threshold": threshold_note}


def export_ensemble(runs: Sequence[str], output: str, *, data_dir: str | None = None,
                    threshold_policy: str | None = None, min_sensitivity: float | None = None,
                    tta: bool | None = None, bootstrap: int = 1000, batch_size: int = 32
                    ) -> dict[str, str]:
    """Checks the members agree, scores their average on their dataset as training scores a
    run (report.json in `output`), exports it into output/export/; returns the export's paths."""
    from trainer.cnn import evaluation, export
    from trainer.cnn.models import load_keras_model

    if len(runs) < 2:
        raise EnsembleError(f"--model: an ensemble needs two or more runs, got {list(runs)} "
                            "(one run is exported by its own training, RUN/export/)")
    if len({os.path.abspath(r) for r in runs}) != len(runs):
        raise EnsembleError(f"--model: a run is listed twice in {list(runs)}")
    out = os.path.abspath(output)
    if out in {os.path.abspath(r) for r in runs} or os.path.isfile(
            os.path.join(out, TRAIN_CONFIG_NAME)):
        raise EnsembleError(f"--output={output} is a training run folder; give a new folder")
    members = [read_member(r) for r in runs]
    check_agreement(members)
    task, image_size = members[0]["settings"]["task"], int(members[0]["settings"]["image_size"])
    data_dir = _normal_path(data_dir) or members[0]["data_dir"]
    if not data_dir:
        raise EnsembleError("the members record no dataset (data_dir): the ensemble's "
                            "threshold is chosen on their validation split; pass --data_dir")
    try:
        manifest = evaluation.read_dataset_manifest(data_dir)
    except evaluation.EvaluationError as e:
        raise EnsembleError(f"the ensemble's threshold and quality are measured on the "
                            f"members' dataset, which cannot be read ({e}); pass --data_dir "
                            "where it lives now") from None
    counts = evaluation.dataset_counts(data_dir, image_size, manifest)["splits"]
    resize_mode = check_dataset(members, data_dir, manifest,
                                {s: c["records"] for s, c in counts.items()})
    if task == "binary":
        threshold_policy = _one(members, "policy", "--threshold_policy", threshold_policy)
        if threshold_policy not in metrics.THRESHOLD_POLICIES:
            raise EnsembleError(f"threshold policy {threshold_policy!r} not in "
                                f"{metrics.THRESHOLD_POLICIES}")
        if threshold_policy == "max_specificity_at_sensitivity":
            min_sensitivity = _one(members, "min_sensitivity", "--min_sensitivity",
                                   min_sensitivity)
    tta = bool(_one(members, "tta", "--tta", tta))
    try:
        tta_lib.check_inputs(tta, bool(members[0]["settings"]["use_metadata"]))
    except ValueError as e:
        raise EnsembleError(f"--tta: {e}") from None
    models = [load_keras_model(m["keras"]) for m in members]
    model = average_model(models)
    config = ensemble_config(members, data_dir)
    os.makedirs(out, exist_ok=True)
    common = dict(min_image_side=export.dataset_min_side(image_size, manifest),
                  manifest=dict(manifest), run_config=config)
    if task == "diagnosis":
        from trainer.cnn import diagnosis

        diagnosis.write_mapping(out, members[0]["mapping"])
        diagnosis.evaluate_and_report(model, data_dir, out, image_size, config,
                                      batch_size=batch_size, manifest=manifest, tta=tta)
        note = ensemble_note(members, "none: the most probable class of the mean is served")
        return export.export_diagnosis_model(model, out, image_size, resize_mode,
                                             ensemble=note, tta=tta, **common)
    evaluation.evaluate_and_report(model, data_dir, out, image_size, config,
                                   threshold_policy=threshold_policy,
                                   min_sensitivity=0.8 if min_sensitivity is None
                                   else float(min_sensitivity),
                                   bootstrap=bootstrap, batch_size=batch_size, tta=tta,
                                   manifest=manifest)
    note = ensemble_note(members, (
        f"chosen on the validation split of {data_dir} from the ensemble's own (averaged) "
        f"probabilities by policy {threshold_policy!r}, as training chooses a run's "
        f"(trainer.cnn.evaluation.evaluate_and_report, {os.path.join(out, REPORT_JSON)}); the "
        "members' own thresholds are not used"))
    return export.export_model(model, out, image_size, resize_mode, tta=tta, ensemble=note,
                               **common)


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_list("model", [], "Two or more run folders (model.keras + train_config.json), "
                      "comma-separated: the ensemble's members.")
    flags.DEFINE_string("output", None, "Folder for the ensemble: its report.json and export/.")
    flags.DEFINE_string("data_dir", None, "The members' dataset, where it lives now (default: "
                        "the one they recorded).")
    flags.DEFINE_enum("threshold_policy", None, list(metrics.THRESHOLD_POLICIES),
                      "How the threshold is chosen on validation (default: the members').")
    flags.DEFINE_float("min_sensitivity", None, "Sensitivity floor of "
                       "max_specificity_at_sensitivity (default: the members').",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_bool("tta", None, "Test-time augmentation (default: as the members were "
                      "evaluated).")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the metric intervals.",
                         lower_bound=0)
    flags.DEFINE_integer("batch_size", 32, "Images per model call.", lower_bound=1)
    flags.mark_flags_as_required(["output"])


def main(argv: Sequence[str]) -> int:
    del argv  # program.run refuses stray words
    try:
        paths = export_ensemble(FLAGS.model, FLAGS.output, data_dir=FLAGS.data_dir,
                                threshold_policy=FLAGS.threshold_policy,
                                min_sensitivity=FLAGS.min_sensitivity, tta=FLAGS.tta,
                                bootstrap=FLAGS.bootstrap, batch_size=FLAGS.batch_size)
    except (EnsembleError, FileNotFoundError) as e:
        program.fail(str(e))
    print(f"ensemble of {len(FLAGS.model)} runs exported: {paths['export_dir']} "
          f"(serve: python -m trainer.cnn.predict --model={FLAGS.output} --image=...)")
    return 0


def run(argv: Sequence[str] | None = None, prog: str = "trainer.cnn.ensemble") -> None:
    define_flags()
    program.run(main, prog=prog, doc=__doc__, argv=argv, flag_modules=[__name__])


if __name__ == "__main__":
    run()
