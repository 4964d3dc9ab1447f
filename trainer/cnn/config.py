"""The CNN run's settings (TrainConfig) and the one place their rules live (RULES, check).

The same rules validate the command line (register_flag_validators: a bad combination stops
flag parsing, naming the flags and their values) and a TrainConfig built in Python (check runs
in TrainConfig.__post_init__). check_inputs looks at the data itself (manifest, image size,
files) before a run creates anything. No TensorFlow here, so the program's --help stays fast
and quiet.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import types
from typing import Any, Callable, Mapping

from trainer.core.augmentations import AUGMENTATIONS
from trainer.core.flags import RunConfig
from trainer.core.metadata_features import (
    ENCODING_VERSION, ENCODING_VERSIONS, FIELDS, check_fields, run_encoding, run_fields)
from trainer.core.program import UserError

from trainer.cnn.constants import (  # noqa: F401  (the choices, listed once)
    ARCHITECTURES, CLASS_BALANCE_MODES, COLOR_CONSTANCY, DEFAULT_ADAMW_WEIGHT_DECAY, LR_SCHEDULES,
    MODEL_SETTINGS, MONITORS, OPTIMIZERS, SOURCE_LABEL_INDEPENDENCE, TASKS, TRAIN_CONFIG_NAME)
from trainer.cnn.data import DataError, read_manifest_or_fail


class ConfigError(UserError, ValueError):
    """A setting or combination of settings that cannot run; the message names the flags and
    the values given (a UserError: the program prints it as one line and exits 2)."""


@dataclasses.dataclass
class TrainConfig(RunConfig):
    model: str = "study"
    dropout: float = 0.0
    l2: float = 0.0
    augment: bool = False
    weights_path: str = ""            # efficientnet_b0 backbone weights (local file)
    init_encoder: str = ""            # trainer.cnn.pretrain run folder to start from
    probe_head: bool = False          # output layer from a linear probe first (probe_head)
    class_balance: str = "none"
    source_balance: bool = False      # sample every train source equally
    source_batches: bool = False      # every train batch from one source (batch norm per clinic)
    source_label_independence: str = "none"  # draw (source, label) at w_source x P(label)
    source_logit_adjustment: bool = False  # train with each source's prior log-odds offset
    source_adversary_weight: float = 0.0  # DANN against the source; 0 = off (source_adversary)
    confirmation_weights: str = ""    # draw rate by diagnosis confirmation (confirmation_mix)
    monitor: str = "val_accuracy"
    early_stopping_patience: int = 0  # 0 = off
    verbose: int = 1
    task: str = "binary"              # binary (benign/malignant) or diagnosis (trainer.cnn.tasks)
    min_class_records: int = 20       # diagnosis task: rarer train diagnoses grouped as `other`
    use_metadata: bool = False        # age/sex/site as a second input (metadata_features)
    metadata_encoding: int = ENCODING_VERSION  # its version; the run's readers encode with it
    metadata_fields: str = ",".join(FIELDS)  # the fields used; the others encoded as missing
    synthetic_data: str = ""          # GAN-sampled dataset added to train (synthetic_mix)
    synthetic_fraction: float = 0.0   # generated images per real training image, per class
    synthetic_classes: str = "benign,malignant"  # the classes generated images are added to
    # the from-scratch recipe's levers (trainer.cnn.recipe); each default is the study's
    width_multiplier: float = 1.0     # residual architecture only
    color_constancy: str = "none"     # shades_of_grey: a first layer of the model
    augmentation: str = "study"       # what augment means: study, dermoscopy or camera
    mixup_alpha: float = 0.0          # 0 = off (binary task)
    cutmix_alpha: float = 0.0         # 0 = off (binary task)
    optimizer: str = "rmsprop"
    weight_decay: float | None = None  # adamw only; None = DEFAULT_ADAMW_WEIGHT_DECAY
    lr_schedule: str = "constant"
    warmup_epochs: float = 0.0        # cosine schedule only
    label_smoothing: float = 0.0      # binary task only
    # --center_crop: the model's first layers keep the central box (trainer.cnn.models)
    center_crop: float = 1.0          # fraction of the side kept; 1.0 = off

    FLAG_SOURCES = {"model": ("architecture", str), "verbose": ("keras_verbose", int)}

    def __post_init__(self):
        check(self)


@dataclasses.dataclass(frozen=True)
class Rule:
    """`ok` of a namespace holding `fields` (config field names) must hold, else `message`."""

    fields: tuple[str, ...]
    ok: Callable[[Any], bool]
    message: str


def _one_of(field: str, choices: tuple[str, ...]) -> Rule:
    return Rule((field,), lambda c: getattr(c, field) in choices,
                f"must be one of {', '.join(choices)}")


def _confirmation_factors(c) -> dict[str, float] | None:
    """c.confirmation_weights parsed (trainer.core.confirmation_mix), None when malformed."""
    from trainer.core import confirmation_mix

    try:
        return confirmation_mix.parse_factors(c.confirmation_weights)
    except (ValueError, AttributeError):
        return None


def _metadata_fields(c) -> tuple[str, ...] | None:
    """c.metadata_fields as check_fields' tuple, None when it is not a valid choice."""
    try:
        return check_fields(c.metadata_fields)
    except (ValueError, TypeError):
        return None


def _mixing(c) -> bool:
    return bool(c.mixup_alpha or c.cutmix_alpha)


RULES: tuple[Rule, ...] = (
    # one setting
    _one_of("model", ARCHITECTURES), _one_of("task", TASKS), _one_of("monitor", MONITORS),
    _one_of("class_balance", CLASS_BALANCE_MODES), _one_of("optimizer", OPTIMIZERS),
    _one_of("source_label_independence", SOURCE_LABEL_INDEPENDENCE),
    _one_of("lr_schedule", LR_SCHEDULES), _one_of("augmentation", AUGMENTATIONS),
    _one_of("color_constancy", COLOR_CONSTANCY),
    Rule(("dropout",), lambda c: 0.0 <= c.dropout < 1.0, "must be in [0, 1)"),
    Rule(("l2",), lambda c: c.l2 >= 0.0, "must be >= 0"),
    Rule(("width_multiplier",), lambda c: 0.0 < c.width_multiplier <= 8.0,
         "must be in (0, 8]"),
    Rule(("weight_decay",), lambda c: c.weight_decay is None or 0.0 <= c.weight_decay < 1.0,
         "must be in [0, 1) (or unset)"),
    Rule(("warmup_epochs",), lambda c: c.warmup_epochs >= 0, "must be >= 0"),
    Rule(("label_smoothing",), lambda c: 0.0 <= c.label_smoothing < 1.0, "must be in [0, 1)"),
    Rule(("mixup_alpha",), lambda c: 0.0 <= c.mixup_alpha < math.inf, "must be >= 0, 0 = off"),
    Rule(("cutmix_alpha",), lambda c: 0.0 <= c.cutmix_alpha < math.inf,
         "must be >= 0, 0 = off"),
    Rule(("min_class_records",), lambda c: c.min_class_records >= 1, "must be >= 1"),
    Rule(("metadata_encoding",), lambda c: c.metadata_encoding in ENCODING_VERSIONS,
         f"must be one of {', '.join(map(str, ENCODING_VERSIONS))} "
         "(trainer.core.metadata_features)"),
    Rule(("metadata_fields",), lambda c: _metadata_fields(c) is not None,
         f"must be a comma list of distinct fields from {', '.join(FIELDS)} "
         "(trainer.core.metadata_features.FIELDS)"),
    Rule(("early_stopping_patience",), lambda c: c.early_stopping_patience >= 0,
         "must be >= 0, 0 = never"),
    Rule(("synthetic_fraction",), lambda c: 0.0 <= c.synthetic_fraction <= 10.0,
         "must be in [0, 10]"),
    # --center_crop (the same bounds as trainer.cnn.models.center_crop_size, which has TF)
    Rule(("center_crop", "image_size"),
         lambda c: 0.0 < c.center_crop <= 1.0 and round(c.center_crop * c.image_size) >= 8,
         "must be in (0, 1] and keep a central box of at least 8 px (round(center_crop * "
         "image_size) >= 8)"),
    # combinations
    Rule(("model", "width_multiplier"),
         lambda c: c.model == "residual" or c.width_multiplier == 1.0,
         "--width_multiplier applies to --architecture=residual only"),
    Rule(("optimizer", "weight_decay"), lambda c: c.optimizer == "adamw" or not c.weight_decay,
         "--weight_decay needs --optimizer=adamw (RMSprop has no decoupled decay)"),
    Rule(("lr_schedule", "warmup_epochs", "epochs"),
         lambda c: not c.warmup_epochs or (c.lr_schedule == "cosine"
                                           and c.warmup_epochs < c.epochs),
         "--warmup_epochs needs --lr_schedule=cosine and fewer warmup epochs than --epochs"),
    Rule(("task", "label_smoothing"), lambda c: c.task == "binary" or not c.label_smoothing,
         "--label_smoothing is binary only: Keras' sparse categorical cross-entropy has no "
         "label smoothing"),
    Rule(("task", "use_metadata", "class_balance", "mixup_alpha", "cutmix_alpha"),
         lambda c: not _mixing(c) or (c.task == "binary" and not c.use_metadata
                                      and c.class_balance != "class_weights"),
         "--mixup_alpha/--cutmix_alpha need --task=binary, no --use_metadata, and "
         "--class_balance=sampling or none (class weights of soft labels are ill-defined)"),
    Rule(("jit_compile", "deterministic"), lambda c: not (c.jit_compile and c.deterministic),
         "Keras turns XLA off under op determinism, so jit_compile=True with "
         "deterministic=True cannot run; drop one of the two"),
    Rule(("task", "monitor"),
         lambda c: c.monitor in (("val_accuracy", "val_balanced_accuracy")
                                 if c.task == "diagnosis" else ("val_accuracy", "val_auc")),
         "--task=diagnosis needs --monitor=val_accuracy or val_balanced_accuracy (val_auc is "
         "the binary task's); val_balanced_accuracy is the diagnosis task's"),
    Rule(("task", "class_balance"),
         lambda c: c.task != "diagnosis" or c.class_balance != "sampling",
         "--class_balance=sampling is binary only; the diagnosis task takes class_weights"),
    Rule(("source_balance", "class_balance", "synthetic_data"),
         lambda c: not c.source_balance or (c.class_balance != "sampling"
                                            and not c.synthetic_data),
         "--source_balance needs no --class_balance=sampling and no --synthetic_data (it "
         "samples each source's own records)"),
    Rule(("source_batches", "class_balance", "synthetic_data", "source_label_independence"),
         lambda c: not c.source_batches or (
             c.class_balance != "sampling" and not c.synthetic_data
             and c.source_label_independence == "none"),
         "--source_batches needs no --class_balance=sampling, no --synthetic_data and no "
         "--source_label_independence (each batch is drawn from one source's own real "
         "records)"),
    Rule(("source_label_independence", "task", "source_balance", "class_balance",
          "synthetic_data", "source_logit_adjustment"),
         lambda c: c.source_label_independence == "none" or (
             c.task == "binary" and not c.source_balance and c.class_balance != "sampling"
             and not c.synthetic_data and not c.source_logit_adjustment),
         "--source_label_independence needs --task=binary, no --source_balance, no "
         "--class_balance=sampling, no --synthetic_data (it samples each (source, label) "
         "group of the real records itself) and no --source_logit_adjustment (its offsets "
         "are the stored base rates, which this stream no longer shows)"),
    Rule(("confirmation_weights",), lambda c: _confirmation_factors(c) is not None,
         "want CONFIRMATION:FACTOR[,...], each confirmation named once, with finite factors "
         "> 0, e.g. follow_up:0.25 (HAM10000's dx_type codes or the archive's "
         "diagnosis_confirm_type words)"),
    Rule(("confirmation_weights", "source_balance", "source_batches", "class_balance",
          "source_label_independence", "synthetic_data", "source_logit_adjustment"),
         lambda c: not c.confirmation_weights or not (
             c.source_balance or c.source_batches or c.class_balance == "sampling"
             or c.source_label_independence != "none" or c.synthetic_data
             or c.source_logit_adjustment),
         "--confirmation_weights draws each (class, confirmation) group of the real training "
         "records itself: it needs no --source_balance, --source_batches, "
         "--class_balance=sampling, --source_label_independence or --synthetic_data, and no "
         "--source_logit_adjustment (its offsets are each clinic's stored base rate, which "
         "this stream changes where a confirmation is one clinic's)"),
    Rule(("source_logit_adjustment", "task", "use_metadata", "mixup_alpha", "cutmix_alpha",
          "synthetic_data"),
         lambda c: not c.source_logit_adjustment or (
             c.task == "binary" and not c.use_metadata and not _mixing(c)
             and not c.synthetic_data),
         "--source_logit_adjustment needs --task=binary, no --use_metadata, no "
         "--mixup_alpha/--cutmix_alpha and no --synthetic_data (the offset rides beside the "
         "image of each real record, by its source)"),
    Rule(("weights_path", "model"), lambda c: not c.weights_path or c.model == "efficientnet_b0",
         "--weights_path holds efficientnet_b0's backbone weights; the other architectures "
         "have no such file to load (--init_encoder starts the compact or residual net)"),
    Rule(("probe_head", "init_encoder", "weights_path", "use_metadata"),
         lambda c: not c.probe_head or ((c.init_encoder or c.weights_path)
                                        and not c.use_metadata),
         "--probe_head fits the output layer on pretrained features: it needs --init_encoder "
         "or --weights_path, and no --use_metadata (the probe reads image features only)"),
    Rule(("probe_head", "source_balance", "source_label_independence", "synthetic_data",
          "source_logit_adjustment"),
         lambda c: not c.probe_head or not (
             c.source_balance or c.source_label_independence != "none" or c.synthetic_data
             or c.source_logit_adjustment),
         "--probe_head fits the output layer on the plain train split's records and class "
         "rates: it needs no --source_balance, --source_label_independence, --synthetic_data "
         "or --source_logit_adjustment (each trains on other rates or inputs)"),
    # --source_adversary_weight (domain-adversarial training, trainer.core.source_adversary)
    Rule(("source_adversary_weight",), lambda c: 0.0 <= c.source_adversary_weight < math.inf,
         "must be >= 0, 0 = off"),
    Rule(("source_adversary_weight", "task", "use_metadata", "mixup_alpha", "cutmix_alpha",
          "synthetic_data", "source_logit_adjustment"),
         lambda c: not c.source_adversary_weight or (
             c.task == "binary" and not c.use_metadata and not _mixing(c)
             and not c.synthetic_data and not c.source_logit_adjustment),
         "--source_adversary_weight > 0 needs --task=binary, no --use_metadata, no "
         "--mixup_alpha/--cutmix_alpha, no --synthetic_data (the source index rides beside "
         "the image of each real record) and no --source_logit_adjustment (one source input "
         "to fit at a time)"),
    Rule(("use_metadata", "metadata_fields"),
         lambda c: c.use_metadata or _metadata_fields(c) in (None, FIELDS),
         "--metadata_fields chooses --use_metadata's fields; without --use_metadata it would "
         "do nothing"),
    Rule(("use_metadata", "class_balance"),
         lambda c: not (c.use_metadata and c.class_balance == "sampling"),
         "--use_metadata cannot be combined with --class_balance=sampling yet"),
    Rule(("synthetic_classes",),
         lambda c: bool(c.synthetic_classes) and set(c.synthetic_classes.split(","))
         <= {"benign", "malignant"}, "must be benign, malignant or benign,malignant"),
    Rule(("synthetic_data", "synthetic_fraction"),
         lambda c: bool(c.synthetic_data) or not c.synthetic_fraction,
         "--synthetic_fraction needs --synthetic_data (the GAN sampler's TFRecord folder)"),
    Rule(("synthetic_data", "task", "use_metadata"),
         lambda c: not c.synthetic_data or (c.task == "binary" and not c.use_metadata),
         "--synthetic_data is binary only and cannot be combined with --use_metadata "
         "(generated images have no age, sex or site)"),
    # what follows training (the program's --tta; not a TrainConfig field)
    Rule(("use_metadata", "tta"), lambda c: not (c.use_metadata and c.tta),
         "--use_metadata cannot be combined with --tta yet"),
)


def flag_name(field: str) -> str:
    return TrainConfig.FLAG_SOURCES.get(field, (field, None))[0]


def check(config: TrainConfig, **more: Any) -> None:
    """Every rule whose fields config (plus `more`, e.g. tta=True) holds; ConfigError names
    the flags and their values."""
    values = {**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}, **more}
    namespace = types.SimpleNamespace(**values)
    for rule in RULES:
        if all(field in values for field in rule.fields) and not rule.ok(namespace):
            given = ", ".join(f"--{flag_name(f)}={values[f]}" for f in rule.fields)
            raise ConfigError(f"{given}: {rule.message}")


def register_flag_validators() -> None:
    """Each rule as an absl validator over its flags (a single flag: `flag --name=value: why`;
    several: `flags a=1, b=2: why`), so the command line is refused before any work."""
    from absl import flags

    converters = {field: convert for field, (_, convert) in TrainConfig.FLAG_SOURCES.items()}

    def namespace(values: Mapping[str, Any], fields) -> types.SimpleNamespace:
        return types.SimpleNamespace(**{
            f: converters.get(f, lambda v: v)(values[flag_name(f)]) for f in fields})

    for rule in RULES:
        names = [flag_name(f) for f in rule.fields]
        if len(names) == 1:
            flags.register_validator(
                names[0], lambda v, r=rule: r.ok(types.SimpleNamespace(**{r.fields[0]: v})),
                message=rule.message)
        else:
            flags.register_multi_flags_validator(
                names, lambda v, r=rule: r.ok(namespace(v, r.fields)), message=rule.message)


def check_resume(config: TrainConfig) -> None:
    """A run folder resumes only with the model it was started with (its train_config.json);
    ConfigError naming each flag that differs, before Keras fails to restore the weights."""
    path = os.path.join(config.workdir, TRAIN_CONFIG_NAME)
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        started = json.load(f)
    changed = [f"--{flag_name(k)}={getattr(config, k)} (the run has {started[k]})"
               for k in MODEL_SETTINGS if k in started and started[k] != getattr(config, k)]
    if config.use_metadata and started.get("use_metadata") \
            and run_encoding(started) != config.metadata_encoding:  # no key: version 1
        changed.append(f"--metadata_encoding={config.metadata_encoding} (the run has "
                       f"{run_encoding(started)})")
    if config.use_metadata and started.get("use_metadata") \
            and run_fields(started) != check_fields(config.metadata_fields):  # no key: all
        changed.append(f"--metadata_fields={config.metadata_fields} (the run has "
                       f"{','.join(run_fields(started))})")
    if changed:
        raise ConfigError(f"--workdir={config.workdir} was started with another model: "
                          f"{', '.join(changed)}; resume with its settings or use a new "
                          "--workdir")


def _in_task(config: TrainConfig) -> Callable[[Mapping[str, Any]], bool]:
    """Whether a manifest count row is a record of the run's task (a known diagnosis, or a
    benign/malignant label)."""
    from trainer.cnn.diagnosis import is_unknown
    from trainer.core.input_pipeline import labelled_record

    if config.task == "diagnosis":
        return lambda row: not is_unknown(row["diagnosis"])
    return labelled_record


def _check_named_sources(manifest: Mapping[str, Any], config: TrainConfig, flag: str,
                         in_task: Callable[[Mapping[str, Any]], bool], need: str) -> None:
    """DataError unless the train split's records in the task name >= 2 sources
    (source_collection) and every one names a source (dataset_lib.records_per_source)."""
    from isicflow import dataset as dataset_lib

    if not dataset_lib.count_rows(manifest):
        raise DataError(f"{flag} with --data_dir={config.data_dir}: its manifest has no "
                        "per-source counts (counts.per_split_label_diagnosis_source); rewrite "
                        "the dataset with beam_jobs.preprocess")
    counts = dataset_lib.records_per_source(manifest, "train", in_task)
    named = sorted(s for s in counts if s)
    unnamed = counts.get("", 0)
    if len(named) < 2 or unnamed:
        raise DataError(f"{flag} with --data_dir={config.data_dir}: the train split's records "
                        f"of the {config.task} task name {len(named)} source(s) {named} "
                        f"(source_collection) and {unnamed} name none; {need}")


def check_inputs(config: TrainConfig) -> dict[str, Any]:
    """The data a run reads exists and fits the settings; returns the manifest (read once).
    Run before anything is created, so a mistake leaves no run folder behind."""
    from isicflow import dataset as dataset_lib

    manifest = read_manifest_or_fail("--data_dir", config.data_dir)
    sizes = sorted(int(s) for s in manifest.get("datasets", {}))
    if str(config.image_size) not in manifest.get("datasets", {}):
        raise DataError(f"--image_size={config.image_size}: {config.data_dir} holds sizes "
                        f"{sizes}; pass one of them (or rerun beam_jobs.preprocess with "
                        f"--image_size={config.image_size})")
    for split in ("train", "validation"):
        if split not in manifest["datasets"][str(config.image_size)]:
            raise DataError(f"--data_dir={config.data_dir}: no {split} split at "
                            f"{config.image_size}px (it has "
                            f"{sorted(manifest['datasets'][str(config.image_size)])})")
    if config.task == "binary":
        for split in ("train", "validation"):
            counts = dataset_lib.split_info(manifest, config.image_size, split).get("counts", {})
            if not int(counts.get("benign", 0)) + int(counts.get("malignant", 0)):
                raise DataError(f"--data_dir={config.data_dir}: the {split} split holds no "
                                f"benign/malignant records at {config.image_size}px (counts "
                                f"{dict(counts)}); the binary task needs some")
        counts = dataset_lib.split_info(manifest, config.image_size, "train").get("counts", {})
        if config.class_balance != "none" and not (int(counts.get("benign", 0))
                                                   and int(counts.get("malignant", 0))):
            raise DataError(f"--class_balance={config.class_balance} needs both classes in "
                            f"train; {config.data_dir} has {dict(counts)} at "
                            f"{config.image_size}px")
    if config.source_logit_adjustment:  # the offsets need >= 2 sources in train
        from trainer.core import source_prior

        try:
            source_prior.source_offsets(manifest, "train")
        except ValueError as e:
            raise DataError(f"--source_logit_adjustment with --data_dir={config.data_dir}: "
                            f"{e}") from None
    if config.source_balance:  # one stream per named source: >= 2, and no record left out
        _check_named_sources(manifest, config, "--source_balance", _in_task(config),
                             "balancing needs >= 2 and every record in one, or those records "
                             "would never be drawn")
    if config.source_batches:  # one stream per named source, as --source_balance
        _check_named_sources(manifest, config, "--source_batches", _in_task(config),
                             "one-source batches need >= 2 and every record in one, or those "
                             "records would never be drawn")
    if config.source_label_independence != "none":  # every (source, label) group holds one
        from trainer.core import source_prior
        from trainer.core.input_pipeline import binary_source_class_counts, labelled_record

        _check_named_sources(manifest, config, "--source_label_independence="
                             f"{config.source_label_independence}", labelled_record,
                             "it needs >= 2 and every record in one, or those records would "
                             "never be drawn")
        try:
            source_prior.independent_group_weights(
                binary_source_class_counts(manifest, "train"), config.source_label_independence)
        except ValueError as e:
            raise DataError(f"--source_label_independence={config.source_label_independence} "
                            f"with --data_dir={config.data_dir}: {e}") from None
    if config.source_adversary_weight:  # the source head needs >= 2 classes in train
        from trainer.core.input_pipeline import labelled_record

        _check_named_sources(manifest, config,
                             f"--source_adversary_weight={config.source_adversary_weight}",
                             labelled_record, "the source head needs >= 2 and a target for "
                             "every record (one without stops the run mid-epoch)")
    if os.path.exists(config.workdir) and not os.path.isdir(config.workdir):
        raise DataError(f"--workdir={config.workdir} is a file; give a run folder (new, or one "
                        "to resume)")
    check_resume(config)
    cache_dir = os.path.dirname(os.path.abspath(config.cache))
    if config.cache not in ("", "memory") and "://" not in config.cache \
            and not os.path.isdir(cache_dir):
        raise DataError(f"--cache={config.cache}: no folder {cache_dir} for the cache files; "
                        "make it, or use --cache=memory or --cache=''")
    if config.weights_path and not os.path.isfile(config.weights_path):
        raise DataError(f"--weights_path={config.weights_path}: no such file (a local "
                        "efficientnet_b0 weights file; never downloaded)")
    if config.init_encoder:
        check_init_encoder(config)
    if config.synthetic_data:
        read_manifest_or_fail("--synthetic_data", config.synthetic_data)
    return manifest


def check_init_encoder(config: TrainConfig) -> None:
    """--init_encoder names a pretraining run whose encoder fits this run's net: the same
    architecture, width and first layers (trainer.cnn.pretrained_encoder); DataError naming
    every difference otherwise."""
    from trainer.cnn import pretrained_encoder

    try:
        summary = pretrained_encoder.read_summary(config.init_encoder)
    except pretrained_encoder.PretrainError as e:
        raise DataError(str(e)) from None
    settings = {"architecture": config.model, "width_multiplier": config.width_multiplier,
                "color_constancy": config.color_constancy, "center_crop": config.center_crop}
    differences = pretrained_encoder.setting_differences(summary, settings)
    if differences:
        raise DataError(f"--init_encoder={config.init_encoder} was pretrained with other "
                        f"settings than this run's: {'; '.join(differences)}")
