"""Train a CNN on a dataset written by the data engine, then evaluate and export it.

    python -m trainer.cnn --flagfile=configs/cnn_base.flags   (trainer/cnn/__main__.py)

Streams the engine's shards, trains (or resumes) the classifier of --task (benign/malignant,
or the diagnosis), then evaluates it on validation and test (report.json, report.md, plots/)
and exports it (export/: model.keras, a SavedModel serving raw image bytes). The shared flags
(--data_dir, --workdir, --image_size, --batch_size, ...) live in trainer.core.flags; the flags
below are the CNN's own. Their rules (trainer.cnn.config.RULES) are checked when flags are
parsed, and the dataset before the run folder is made.

On several hosts (or processes), give every worker the same --workers list and its own
--worker_index (or a TF_CONFIG); worker 0, the chief, writes the run folder (docs/cnn.md).
"""
from __future__ import annotations

import os
from typing import Any, Sequence

from absl import flags, logging

from trainer.cnn import config as config_lib
from trainer.core import augmentations, flags as core_flags, program, runtime

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The CNN trainer's own flags and the rules over them (once per process)."""
    if "architecture" in FLAGS:
        return
    # --- model ---
    flags.DEFINE_enum("architecture", "study", list(config_lib.ARCHITECTURES),
                      "study: the 2020 study's CNN (33.6M parameters at 256px); compact: GAP + "
                      "batch norm (~0.3M), for small data; efficientnet_b0: Keras Applications "
                      "backbone (weights from --weights_path or random); residual: the recipe's "
                      "ResNet-style net (~2.8M, trainer.cnn.models.build_residual_cnn).")
    flags.DEFINE_float("width_multiplier", 1.0, "residual architecture only: scales its widths "
                       "(32, 64, 128, 256), rounded to multiples of 8.")
    flags.DEFINE_enum("color_constancy", "none", list(config_lib.COLOR_CONSTANCY),
                      "none, or shades_of_grey: each image's illuminant made grey (Minkowski "
                      "p=6) by the model's first layer, so every clinic's camera looks alike to "
                      "the net, at training and prediction alike.")
    # --center_crop (trainer.cnn.models.image_input)
    flags.DEFINE_float("center_crop", 1.0, "Fraction in (0, 1] of the image side the model "
                       "looks at: its first layers keep the central box (round(F * "
                       "image_size) px, at least 8) and resize it back (bilinear), so the "
                       "border's clinic cues (vignettes, dermoscope rims) are unseen at "
                       "training, evaluation, prediction and export alike; 1.0 = off.")
    flags.DEFINE_float("dropout", 0.0, "Dropout rate (the study's variants used 0.2).")
    flags.DEFINE_float("l2", 0.0, "L2 kernel penalty on conv and hidden dense layers (the study "
                       "used 0.001).")
    flags.DEFINE_bool("augment", False, "Augment training images: --augmentation says how (the "
                      "study's flips, rot90, colour jitter, zoom by default).")
    flags.DEFINE_enum("augmentation", "study", list(augmentations.AUGMENTATIONS),
                      "What --augment applies: study (flips, rot90, colour jitter, central zoom) "
                      "or dermoscopy (flips, any-angle rotation, resized crop, milder colour) "
                      "or camera (dermoscopy's geometry with more zoom, blur, per-channel gamma, "
                      "contrast and saturation: what differs between clinics' dermoscopes).")
    flags.DEFINE_float("mixup_alpha", 0.0, "Mixup of training batches, Beta(alpha, alpha) weights; "
                       "0 = off. Binary task; soft labels.")
    flags.DEFINE_float("cutmix_alpha", 0.0, "CutMix of training batches, Beta(alpha, alpha) box "
                       "areas; 0 = off. With --mixup_alpha too, each batch takes one of the two.")
    flags.DEFINE_string("weights_path", "", "Local weights file for the efficientnet_b0 backbone "
                        "(e.g. efficientnetb0_notop.h5); never downloaded.")
    flags.DEFINE_string("init_encoder", "", "A `python -m trainer.cnn.pretrain` run folder "
                        "(or its encoder.keras): the net's layers up to its pooled features "
                        "start from that self-supervised encoder instead of random weights "
                        "(compact or residual, the same architecture, width, colour constancy "
                        "and centre crop; trainer.cnn.pretrained_encoder).")
    flags.DEFINE_bool("probe_head", False, "LP-FT: before the first training step, set the "
                      "output layer to a logistic regression fitted on the frozen features of "
                      "the unaugmented train split (with the loss's class weights), then "
                      "fine-tune everything from there (trainer.cnn.probe_head). Needs "
                      "--init_encoder or --weights_path.")
    # --- task ---
    flags.DEFINE_enum("task", "binary", list(config_lib.TASKS),
                      "binary: benign/malignant (the study's task, the default); diagnosis: the "
                      "engine's normalised diagnosis over K classes (trainer.cnn.diagnosis; needs "
                      "--monitor=val_accuracy or val_balanced_accuracy).")
    flags.DEFINE_integer("min_class_records", 20, "Diagnosis task: train diagnoses with fewer "
                         "records are grouped as `other`.")
    flags.DEFINE_bool("use_metadata", False, "Age, sex and anatomic site (encoded with missing "
                      "values explicit, trainer.core.metadata_features) as a second model input "
                      "beside the image; the export serves them as optional inputs.")
    flags.DEFINE_integer("metadata_encoding", config_lib.ENCODING_VERSION, "--use_metadata's "
                         "encoding version (trainer.core.metadata_features): 2 maps HAM10000's "
                         "site names (back, face, acral, unknown, ...) onto ISIC's "
                         "anatom_site_general; 1 compares site text with ISIC's as it is. "
                         "Recorded in the run, whose evaluation and export use it; give 1 to "
                         "resume or reproduce a run trained before version 2.")
    flags.DEFINE_string("metadata_fields", ",".join(config_lib.FIELDS), "--use_metadata's "
                        "fields, a comma list from age,sex,site (default all): the others are "
                        "encoded as missing for every image, so a model can be trained for "
                        "clinics that do not record a field, or a field's effect measured "
                        "(e.g. sex,site without age). Recorded in the run, whose evaluation and "
                        "export use it.")
    # --- generated training images (GAN samples as extra training data) ---
    flags.DEFINE_string("synthetic_data", "", "Dataset folder of GAN samples (`python -m "
                        "trainer.gan.sample --format=tfrecord`) added to the training split; "
                        "validation and test stay real (trainer.core.synthetic_mix).")
    flags.DEFINE_float("synthetic_fraction", 0.0, "Generated images added per real training image, "
                       "per class (0.25 adds a quarter more); needs --synthetic_data.")
    flags.DEFINE_string("synthetic_classes", "benign,malignant", "The classes generated images "
                        "are added to (malignant: only the rare class, so its share grows).")
    # --- training ---
    flags.DEFINE_bool("source_balance", False, "Sample every acquisition source "
                      "(source_collection) of the train split equally, so the largest clinic "
                      "does not set what the model learns; epochs keep their length. The "
                      "diagnosis task's class weights follow the classes' rates in that stream.")
    flags.DEFINE_bool("source_batches", False, "Draw every training batch from "
                      "one acquisition source (a source's share of batches = its share of the "
                      "records, or equal with --source_balance), so batch norm learns to "
                      "normalise by one clinic's statistics, as trainer.cnn.evaluate "
                      "--adapt_batchnorm does at a new clinic; epochs keep their length.")
    flags.DEFINE_enum("source_label_independence", "none",
                      list(config_lib.SOURCE_LABEL_INDEPENDENCE), "Binary task: draw each "
                      "(source, label) group of the train split at w_source x P(label), so "
                      "every clinic shows the pooled benign/malignant mix and recognising the "
                      "clinic tells the net nothing about the label; w_source is the source's "
                      "share of the records (records) or of the rarer class's records "
                      "(rare_class, malignant on HAM10000: every record of that class drawn "
                      "as often as stored, each clinic's others resampled to match). "
                      "trainer.core.source_prior."
                      "independent_group_weights; epochs keep their length."),
    flags.DEFINE_bool("source_logit_adjustment", False, "Binary task: during training add each "
                      "record's source prior log-odds (source_collection's malignant rate "
                      "against the train split's, trainer.core.source_prior) to the model's "
                      "logit, so the net gains nothing by recognising the clinic; validation, "
                      "evaluation and the export use the plain image model (offset 0).")
    flags.DEFINE_float("source_adversary_weight", 0.0, "Binary task: domain-adversarial "
                       "training (DANN) against the acquisition source: during training a "
                       "small head on the penultimate features predicts each record's "
                       "source_collection through a gradient reversal scaled by this weight, "
                       "pushing the features to carry no clinic information "
                       "(trainer.core.source_adversary); 0 = off. Validation, evaluation and "
                       "the export use the plain image model.")
    flags.DEFINE_string("confirmation_weights", "", "How often training draws a record by how "
                        "its diagnosis was confirmed (the record's diagnosis_confirm_type or "
                        "HAM10000 dx_type), e.g. follow_up:0.25 draws nevi followed up by "
                        "serial imaging a quarter as often as the class's other records; every "
                        "class keeps its share, so class weights stay right "
                        "(trainer.core.confirmation_mix); epochs keep their length.")
    flags.DEFINE_enum("class_balance", "none", list(config_lib.CLASS_BALANCE_MODES),
                      "Imbalanced data: class_weights (loss weights n/(2 n_c)) or sampling "
                      "(50/50 batches).")
    flags.DEFINE_enum("optimizer", "rmsprop", list(config_lib.OPTIMIZERS),
                      "rmsprop: the study's; adamw: Adam with decoupled --weight_decay.")
    flags.DEFINE_float("weight_decay", None, "AdamW's decoupled weight decay (unset: "
                       f"{config_lib.DEFAULT_ADAMW_WEIGHT_DECAY}); refused with rmsprop.")
    flags.DEFINE_enum("lr_schedule", "constant", list(config_lib.LR_SCHEDULES),
                      "constant: --learning_rate throughout (the study); cosine: linear warmup "
                      "over --warmup_epochs, then cosine decay to 0 at --epochs.")
    flags.DEFINE_float("warmup_epochs", 0.0, "Cosine schedule: epochs of linear warmup from 0.")
    flags.DEFINE_float("label_smoothing", 0.0, "Binary cross-entropy label smoothing in [0, 1).")
    flags.DEFINE_enum("monitor", "val_accuracy", list(config_lib.MONITORS),
                      "Validation metric choosing the best checkpoint (the study used accuracy; "
                      "val_balanced_accuracy, the ISIC 2018 metric, is the diagnosis task's).")
    flags.DEFINE_integer("early_stopping_patience", 0, "Stop after this many epochs without a "
                         "better --monitor; 0 = never.")
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
    # --- several workers (MultiWorkerMirroredStrategy) ---
    flags.DEFINE_string("workers", "", "host:port of every worker, comma-separated, the same "
                        "list on each (e.g. 10.0.0.1:12345,10.0.0.2:12345); worker 0 is the "
                        "chief. '' = one process, or the cluster of the TF_CONFIG variable "
                        "(never both).")
    flags.DEFINE_integer("worker_index", 0, "This process's place in --workers (0-based).",
                         lower_bound=0)
    config_lib.register_flag_validators()


def cluster_from_flags() -> dict | None:
    """The cluster --workers/--worker_index or the TF_CONFIG variable give
    (runtime.cluster_config), or None for one process; a UserError (one line, exit 2) when
    they are wrong or both set."""
    try:
        return runtime.cluster_config(FLAGS.workers, FLAGS.worker_index,
                                      os.environ.get("TF_CONFIG"))
    except ValueError as e:
        program.fail(str(e))


def evaluate_and_export(model, config: config_lib.TrainConfig, *, evaluate: bool = True,
                        export: bool = True, threshold_policy: str =
                        "max_specificity_at_sensitivity", min_sensitivity: float = 0.8,
                        bootstrap: int = 1000, tta: bool = False,
                        manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs what follows training (the task's report and export); returns {"report": ...,
    "export": ...} for what ran. manifest: the dataset's, when the caller has read it."""
    from trainer.cnn import tasks

    config_lib.check(config, tta=tta)
    task = tasks.for_config(config, manifest)
    done: dict[str, Any] = {}
    if evaluate:
        done["report"] = task.evaluate_and_report(
            model, config, threshold_policy=threshold_policy, min_sensitivity=min_sensitivity,
            bootstrap=bootstrap, tta=tta)
    if export:
        done["export"] = task.export(model, config, tta=tta)
    return done


def main(argv: Sequence[str]) -> None:
    del argv  # program.run refuses stray words
    config = config_lib.TrainConfig.from_flags()  # the flags' rules held at parse time
    cluster = cluster_from_flags()  # --workers/--worker_index or TF_CONFIG
    manifest = config_lib.check_inputs(config)  # before the run folder exists
    from trainer.cnn import train

    result = train.train_cnn(config, manifest=manifest, cluster=cluster)
    if not result.chief:  # the chief evaluates, exports and writes the run folder
        print(f"worker {result.summary['worker']}: done; the chief writes {config.workdir}")
        return
    done = evaluate_and_export(result.model, config, evaluate=FLAGS.evaluate,
                               export=FLAGS.export, threshold_policy=FLAGS.threshold_policy,
                               min_sensitivity=FLAGS.min_sensitivity, bootstrap=FLAGS.bootstrap,
                               tta=FLAGS.tta, manifest=manifest)
    for name, value in done.items():
        logging.info("%s: %s", name, value.get("export_dir") if name == "export" else
                     "written to " + config.workdir)
    print(f"run folder: {config.workdir}")


def run(argv: Sequence[str] | None = None) -> None:
    define_flags()
    core_flags.require_run_folders()
    program.run(main, prog="trainer.cnn", doc=__doc__, argv=argv,
                flag_modules=[__name__, "trainer.core.flags"])
