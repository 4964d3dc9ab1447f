"""The CNN trainer's program (`python -m trainer.cnn --flagfile=configs/cnn_base.flags` runs it
through trainer/cnn/__main__.py).

Streams the data engine's shards, trains (or resumes) the benign/malignant classifier, then
evaluates it on validation and test (trainer.cnn.evaluate) and exports it (trainer.cnn.export).
The shared flags (--data_dir, --workdir, --image_size, --batch_size, ...) live in
trainer.core.flags; the flags below are the CNN's own.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import app, flags, logging

from trainer.cnn import evaluate as evaluate_lib
from trainer.cnn import export as export_lib
from trainer.cnn import models, recipe, train
from trainer.core import augmentations, flags as core_flags

# --- model ---
flags.DEFINE_enum("architecture", "study", list(models.MODEL_NAMES),
                  "study: the 2020 study's CNN (33.6M parameters at 256px); compact: GAP + "
                  "batch norm (~0.3M), for small data; efficientnet_b0: Keras Applications "
                  "backbone (weights from --weights_path or random); residual: the recipe's "
                  "ResNet-style net (~2.8M, trainer.cnn.models.build_residual_cnn).")
flags.DEFINE_float("width_multiplier", 1.0, "residual architecture only: scales its widths "
                   "(32, 64, 128, 256), rounded to multiples of 8.")
flags.DEFINE_float("dropout", 0.0, "Dropout rate (the study's variants used 0.2).")
flags.DEFINE_float("l2", 0.0, "L2 kernel penalty on conv and hidden dense layers (the study "
                   "used 0.001).", lower_bound=0.0)
flags.DEFINE_bool("augment", False, "Augment training images: --augmentation says how (the "
                  "study's flips, rot90, colour jitter, zoom by default).")
flags.DEFINE_enum("augmentation", "study", list(augmentations.AUGMENTATIONS),
                  "What --augment applies: study (flips, rot90, colour jitter, central zoom) "
                  "or dermoscopy (flips, any-angle rotation, resized crop, milder colour).")
flags.DEFINE_float("mixup_alpha", 0.0, "Mixup of training batches, Beta(alpha, alpha) weights; "
                   "0 = off. Binary task; soft labels.")
flags.DEFINE_float("cutmix_alpha", 0.0, "CutMix of training batches, Beta(alpha, alpha) box "
                   "areas; 0 = off. With --mixup_alpha too, each batch takes one of the two.")
flags.DEFINE_string("weights_path", "", "Local weights file for the efficientnet_b0 backbone "
                    "(e.g. efficientnetb0_notop.h5); never downloaded.")
# --- task ---
flags.DEFINE_enum("task", "binary", ["binary", "diagnosis"],
                  "binary: benign/malignant (the study's task, the default); diagnosis: the "
                  "engine's normalised diagnosis over K classes (trainer.cnn.diagnosis; needs "
                  "--monitor=val_accuracy).")
flags.DEFINE_integer("min_class_records", 20, "Diagnosis task: train diagnoses with fewer "
                     "records are grouped as `other`.", lower_bound=1)
flags.DEFINE_bool("use_metadata", False, "Age, sex and anatomic site (encoded with missing "
                  "values explicit, trainer.core.metadata_features) as a second model input "
                  "beside the image; the export serves them as optional inputs.")
# --- generated training images (issue #13's augmentation experiment) ---
flags.DEFINE_string("synthetic_data", "", "Dataset folder of GAN samples (`python -m "
                    "trainer.dcgan sample --format=tfrecord`) added to the training split; "
                    "validation and test stay real (trainer.core.synthetic_mix).")
flags.DEFINE_float("synthetic_fraction", 0.0, "Generated images added per real training image, "
                   "per class (0.25 adds a quarter more); needs --synthetic_data.",
                   lower_bound=0.0, upper_bound=10.0)
# --- training ---
flags.DEFINE_enum("class_balance", "none", list(train.CLASS_BALANCE_MODES),
                  "Imbalanced data: class_weights (loss weights n/(2 n_c)) or sampling "
                  "(50/50 batches).")
flags.DEFINE_enum("optimizer", "rmsprop", list(recipe.OPTIMIZERS),
                  "rmsprop: the study's; adamw: Adam with decoupled --weight_decay.")
flags.DEFINE_float("weight_decay", None, "AdamW's decoupled weight decay (unset: "
                   f"{recipe.DEFAULT_ADAMW_WEIGHT_DECAY}); refused with rmsprop.")
flags.DEFINE_enum("lr_schedule", "constant", list(recipe.LR_SCHEDULES),
                  "constant: --learning_rate throughout (the study); cosine: linear warmup "
                  "over --warmup_epochs, then cosine decay to 0 at --epochs.")
flags.DEFINE_float("warmup_epochs", 0.0, "Cosine schedule: epochs of linear warmup from 0.")
flags.DEFINE_float("label_smoothing", 0.0, "Binary cross-entropy label smoothing in [0, 1).")
flags.DEFINE_enum("monitor", "val_accuracy", list(train.MONITORS),
                  "Validation metric choosing the best checkpoint (the study used accuracy).")
flags.DEFINE_integer("early_stopping_patience", 0, "Stop after this many epochs without a "
                     "better --monitor; 0 = never.", lower_bound=0)
flags.DEFINE_enum("keras_verbose", "1", ["0", "1", "2"], "Keras fit verbosity: 1 progress "
                  "bar, 2 one line per epoch (logs), 0 silent.")
# --- after training ---
flags.DEFINE_bool("evaluate", True, "Evaluate on validation and test and write the reports.")
flags.DEFINE_bool("export", True, "Export .keras + SavedModel serving raw image bytes.")
flags.DEFINE_bool("tta", False, "Test-time augmentation (the 8 flips/rot90s averaged, "
                  "trainer.cnn.tta) in the evaluation (so the threshold is chosen on TTA "
                  "probabilities) and in the export's serving_default alike.")
flags.DEFINE_enum("threshold_policy", "max_specificity_at_sensitivity",
                  ["max_specificity_at_sensitivity", "youden", "fixed"],
                  "How the decision threshold is chosen on validation; fixed = the study's 0.5.")
flags.DEFINE_float("min_sensitivity", 0.8, "Sensitivity floor of the default threshold policy.",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the metric intervals.",
                     lower_bound=0)

flags.register_validator("dropout", lambda v: 0.0 <= v < 1.0, message="must be in [0, 1)")
flags.register_validator("width_multiplier", lambda v: 0.0 < v <= 8.0,
                         message="must be in (0, 8]")
flags.register_validator("weight_decay", lambda v: v is None or 0.0 <= v < 1.0,
                         message="must be in [0, 1) (or unset)")
flags.register_validator("warmup_epochs", lambda v: v >= 0, message="must be >= 0")
flags.register_validator("label_smoothing", lambda v: 0.0 <= v < 1.0, message="must be in [0, 1)")
for _name in ("mixup_alpha", "cutmix_alpha"):
    flags.register_validator(_name, lambda v: 0.0 <= v < float("inf"),
                             message="must be >= 0, 0 = off")
flags.register_multi_flags_validator(
    ["architecture", "width_multiplier"],
    lambda v: v["architecture"] == "residual" or v["width_multiplier"] == 1.0,
    message="--width_multiplier applies to --architecture=residual only")
flags.register_multi_flags_validator(
    ["optimizer", "weight_decay"],
    lambda v: v["optimizer"] == "adamw" or not v["weight_decay"],
    message="--weight_decay needs --optimizer=adamw (RMSprop has no decoupled decay)")
flags.register_multi_flags_validator(
    ["lr_schedule", "warmup_epochs", "epochs"],
    lambda v: (v["lr_schedule"] == "cosine" and v["warmup_epochs"] < v["epochs"])
    or (v["lr_schedule"] == "constant" and not v["warmup_epochs"]),
    message="--warmup_epochs needs --lr_schedule=cosine and fewer warmup epochs than --epochs")
flags.register_multi_flags_validator(
    ["task", "label_smoothing"], lambda v: v["task"] == "binary" or not v["label_smoothing"],
    message="--label_smoothing is binary only: Keras' sparse categorical cross-entropy has no "
            "label smoothing")
flags.register_multi_flags_validator(
    ["task", "use_metadata", "class_balance", "mixup_alpha", "cutmix_alpha"],
    lambda v: not (v["mixup_alpha"] or v["cutmix_alpha"])
    or (v["task"] == "binary" and not v["use_metadata"] and v["class_balance"] != "class_weights"),
    message="--mixup_alpha/--cutmix_alpha need --task=binary, no --use_metadata, and "
            "--class_balance=sampling or none (class weights of soft labels are ill-defined)")
flags.register_multi_flags_validator(
    ["jit_compile", "deterministic"], lambda v: not (v["jit_compile"] and v["deterministic"]),
    message="--jit_compile and --deterministic cannot be combined: Keras turns XLA off "
            "under op determinism")
flags.register_multi_flags_validator(
    ["task", "monitor"], lambda v: v["task"] != "diagnosis" or v["monitor"] == "val_accuracy",
    message="--task=diagnosis needs --monitor=val_accuracy (val_auc is the binary task's)")
flags.register_multi_flags_validator(
    ["task", "class_balance"],
    lambda v: v["task"] != "diagnosis" or v["class_balance"] != "sampling",
    message="--class_balance=sampling is binary only; the diagnosis task takes class_weights")
flags.register_multi_flags_validator(
    ["task", "tta"], lambda v: not (v["task"] == "diagnosis" and v["tta"]),
    message="--tta is binary only for now: the diagnosis task's evaluation and export do not "
            "average the 8 views yet")
flags.register_multi_flags_validator(
    ["use_metadata", "tta"], lambda v: not (v["use_metadata"] and v["tta"]),
    message="--use_metadata cannot be combined with --tta yet")
flags.register_multi_flags_validator(
    ["use_metadata", "class_balance"],
    lambda v: not (v["use_metadata"] and v["class_balance"] == "sampling"),
    message="--use_metadata cannot be combined with --class_balance=sampling yet")
flags.register_multi_flags_validator(
    ["synthetic_data", "synthetic_fraction"],
    lambda v: bool(v["synthetic_data"]) or not v["synthetic_fraction"],
    message="--synthetic_fraction needs --synthetic_data (the GAN sampler's TFRecord folder)")
flags.register_multi_flags_validator(
    ["synthetic_data", "task", "use_metadata"],
    lambda v: not v["synthetic_data"] or (v["task"] == "binary" and not v["use_metadata"]),
    message="--synthetic_data is binary only and cannot be combined with --use_metadata "
            "(generated images have no age, sex or site)")
FLAGS = flags.FLAGS


def evaluate_and_export(model, config: train.TrainConfig, *, evaluate: bool = True,
                        export: bool = True, threshold_policy: str =
                        "max_specificity_at_sensitivity", min_sensitivity: float = 0.8,
                        bootstrap: int = 1000, tta: bool = False) -> dict[str, Any]:
    """Runs what follows training; returns {"report": ..., "export": ...} for what ran."""
    from isicflow import dataset as dataset_lib

    done: dict[str, Any] = {}
    if config.task == "diagnosis":
        from trainer.cnn import diagnosis as diagnosis_lib

        if evaluate:
            done["report"] = diagnosis_lib.evaluate_and_report(
                model, config.data_dir, config.workdir, config.image_size,
                dataclasses.asdict(config), batch_size=config.batch_size)
        if export:
            resize_mode = dataset_lib.read_manifest(config.data_dir).get("resize_mode",
                                                                         "squash")
            done["export"] = export_lib.export_diagnosis_model(
                model, config.workdir, config.image_size, resize_mode)
        return done
    if evaluate:
        done["report"] = evaluate_lib.evaluate_and_report(
            model, config.data_dir, config.workdir, config.image_size,
            dataclasses.asdict(config), threshold_policy=threshold_policy,
            min_sensitivity=min_sensitivity, bootstrap=bootstrap, seed=config.seed,
            batch_size=config.batch_size, tta=tta)
    if export:
        resize_mode = dataset_lib.read_manifest(config.data_dir).get("resize_mode", "squash")
        done["export"] = export_lib.export_model(model, config.workdir, config.image_size,
                                                 resize_mode, tta=tta)
    return done


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    config = train.TrainConfig.from_flags()
    result = train.train_cnn(config)
    done = evaluate_and_export(result.model, config, evaluate=FLAGS.evaluate,
                               export=FLAGS.export, threshold_policy=FLAGS.threshold_policy,
                               min_sensitivity=FLAGS.min_sensitivity, bootstrap=FLAGS.bootstrap,
                               tta=FLAGS.tta)
    for name, value in done.items():
        logging.info("%s: %s", name, value.get("export_dir") if name == "export" else
                     "written to " + config.workdir)
    print(f"run folder: {config.workdir}")


def run() -> None:
    core_flags.require_run_folders()
    app.run(main)
