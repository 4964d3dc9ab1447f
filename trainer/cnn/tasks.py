"""What the CNN learns, as one component: the binary task (benign/malignant, the study's) or
the diagnosis task (the engine's normalised diagnosis over K classes, trainer.cnn.diagnosis).
Patient metadata (--use_metadata) is an input option of either, not a task.

A task supplies the pieces that differ: the labelled datasets, the output head, the loss and
metrics, the class weights, what is written after fit, the report and the export. The training
loop (trainer.cnn.train) and the program (trainer.cnn.cli) ask the task instead of branching.
Each task holds the dataset's manifest, read once per run (trainer.cnn.config.check_inputs).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Protocol

import numpy as np

from trainer.cnn.config import TrainConfig
from trainer.cnn.data import DataError


class Task(Protocol):
    name: str
    manifest: Mapping[str, Any]
    confirmation: Any  # --confirmation_weights' ConfirmationMix of train (prepare), or None

    def prepare(self, c: TrainConfig) -> None:
        """Fixes what the run keeps (the diagnosis classes, the confirmation mix); DataError
        when the data cannot give it. Runs before the training loop makes the run folder."""

    def datasets(self, c: TrainConfig, strategy) -> tuple[Any, Any, int, int]:
        """(train, validation, steps per epoch, training images) for fit."""

    def sample_dataset(self, c: TrainConfig):
        """A few training images as augmentation makes them (TensorBoard)."""

    def plain_dataset(self, c: TrainConfig, split: str):
        """(float images in [0, 1], labels) batches of the split once, in order, unaugmented."""

    def head(self, model):
        """The model with this task's output."""

    def compile_args(self, c: TrainConfig) -> dict[str, Any]:
        """loss and metrics for compile."""

    def class_weight(self, c: TrainConfig) -> dict[int, float] | None:
        """Loss weights per class under --class_balance=class_weights, else None."""

    def after_fit(self, c: TrainConfig, fit_model, validation, step: int) -> None:
        """Writes what the run logs once fit is done."""

    def evaluate_and_report(self, model, c: TrainConfig, *, threshold_policy: str,
                            min_sensitivity: float, bootstrap: int, tta: bool) -> dict:
        """Writes report.json, report.md and plots/ into the run folder."""

    def export(self, model, c: TrainConfig, *, tta: bool) -> dict[str, str]:
        """Writes export/ (model.keras, saved_model/, serving_config.json)."""


def _steps(c: TrainConfig, n_train: int, *, infinite: bool = False) -> int:
    steps = math.ceil(n_train / c.batch_size)
    if c.steps_per_epoch:
        steps = c.steps_per_epoch if infinite else min(steps, c.steps_per_epoch)
    return steps


def _common(c: TrainConfig, float_input: bool, manifest: Mapping[str, Any]) -> dict[str, Any]:
    return dict(image_size=c.image_size, batch_size=c.batch_size, cache=c.cache,
                deterministic=c.deterministic, seed=c.seed, as_uint8=not float_input,
                use_metadata=c.use_metadata, metadata_encoding=c.metadata_encoding,
                metadata_fields=c.metadata_fields,
                manifest=manifest)


def float_input(c: TrainConfig) -> bool:
    """Training batches reach the model as float32 (augmented or mixed), not uint8."""
    return c.augment or bool(c.mixup_alpha or c.cutmix_alpha)


def plan_confirmation_mix(c: TrainConfig, manifest: Mapping[str, Any], class_field: str,
                          class_of) -> Any:
    """--confirmation_weights' mix of train (trainer.core.confirmation_mix), None without the
    flag; DataError when train cannot give it (a named confirmation no record has)."""
    if not c.confirmation_weights:
        return None
    from absl import logging

    from trainer.core import confirmation_mix

    try:
        mix = confirmation_mix.plan_for_split(
            c.data_dir, "train", c.image_size,
            confirmation_mix.parse_factors(c.confirmation_weights), class_field, class_of,
            manifest=manifest)
    except ValueError as e:
        raise DataError(f"--confirmation_weights={c.confirmation_weights} with --data_dir="
                        f"{c.data_dir}: {e}") from None
    logging.info("--confirmation_weights: each (class, confirmation) group's records, share "
                 "of the training stream and oversampling: %s", mix.summary())
    return mix


def check_planned(c: TrainConfig, task: Task) -> None:
    """datasets() before prepare() would train the plain mix under --confirmation_weights."""
    if c.confirmation_weights and task.confirmation is None:
        raise RuntimeError(f"--confirmation_weights={c.confirmation_weights}: the {task.name} "
                           f"task's prepare() plans the mix; call it before datasets()")


def _resize_mode(manifest: Mapping[str, Any]) -> str:
    return manifest.get("resize_mode", "squash")


def _min_image_side(c: TrainConfig, manifest: Mapping[str, Any]) -> int:
    """The smallest short side the export serves: export.default_min_side, raised to the
    dataset's own --min_original_size when it had one (the model never saw smaller)."""
    from trainer.cnn import export

    return export.dataset_min_side(c.image_size, manifest)


@dataclasses.dataclass
class BinaryTask:
    """Benign (0) / malignant (1): one sigmoid unit, binary cross-entropy, AUC; the threshold
    chosen on validation (trainer.cnn.evaluation) travels with the export."""

    manifest: Mapping[str, Any]
    name: str = "binary"
    confirmation: Any = None

    def train_counts(self, c: TrainConfig) -> dict[str, int]:
        from isicflow import dataset as dataset_lib

        info = dataset_lib.split_info(dict(self.manifest), c.image_size, "train")
        return {k: int(v) for k, v in info.get("counts", {}).items()}

    def synthetic_mix(self, c: TrainConfig):
        """The generated records --synthetic_data/--synthetic_fraction add to train, or None."""
        from trainer.core import synthetic_mix

        if not c.synthetic_data:
            return None
        return synthetic_mix.plan(c.synthetic_data, self.train_counts(c), c.synthetic_fraction,
                                  c.image_size, classes=c.synthetic_classes.split(","))

    def prepare(self, c: TrainConfig) -> None:
        self.confirmation = plan_confirmation_mix(c, self.manifest, "label", int)

    def source_offsets(self, c: TrainConfig) -> dict[str, float] | None:
        """Under --source_logit_adjustment, {source: offset} of train
        (trainer.core.source_prior); else None. config.check_inputs has already refused a
        train split with fewer than 2 sources, before the run folder."""
        if not c.source_logit_adjustment:
            return None
        from trainer.core import source_prior

        return source_prior.source_offsets(self.manifest, "train")

    def source_names(self, c: TrainConfig) -> list[str] | None:
        """Under --source_adversary_weight > 0, the train split's named sources in the order
        of the source head's classes (input_pipeline.train_sources); else None.
        config.check_inputs has already refused a train split with fewer than 2."""
        if not c.source_adversary_weight:
            return None
        from trainer.core import input_pipeline

        return input_pipeline.train_sources(self.manifest, "train")

    def datasets(self, c: TrainConfig, strategy):
        from trainer.core import input_pipeline

        check_planned(c, self)
        mix = self.synthetic_mix(c)
        counts = self.train_counts(c)
        n_train = counts.get("benign", 0) + counts.get("malignant", 0) + (
            mix.total if mix else 0)
        steps = _steps(c, n_train, infinite=c.class_balance == "sampling" or c.source_balance
                       or c.source_batches or c.source_label_independence != "none"
                       or self.confirmation is not None)
        common = _common(c, float_input(c), self.manifest)
        offsets = self.source_offsets(c)
        names = self.source_names(c)
        groups = None
        if c.source_label_independence != "none":  # check_inputs checked every group exists
            from trainer.core import source_prior

            groups = source_prior.independent_group_weights(
                input_pipeline.binary_source_class_counts(self.manifest, "train"),
                c.source_label_independence)
        train = input_pipeline.make_dataset(
            c.data_dir, "train", training=True, augment=c.augment, repeat=True,
            augmentation=c.augmentation, mixup_alpha=c.mixup_alpha,
            cutmix_alpha=c.cutmix_alpha, balance_classes=c.class_balance == "sampling",
            synthetic=mix, drop_remainder=strategy.num_replicas_in_sync > 1,
            balance_sources=c.source_balance, source_offsets=offsets, source_names=names,
            source_label_weights=groups, one_source_batches=c.source_batches,
            confirmation_mix=self.confirmation, **common)
        validation = input_pipeline.make_dataset(  # the plain image model: offset 0, no source
            c.data_dir, "validation", training=False,
            source_offsets=None if offsets is None else {},
            source_names=None if names is None else (), **common)
        return train, validation, steps, n_train

    def sample_dataset(self, c: TrainConfig):
        from trainer.core import input_pipeline

        return input_pipeline.make_dataset(
            c.data_dir, "train", image_size=c.image_size, batch_size=4, training=True,
            augment=c.augment, seed=c.seed, augmentation=c.augmentation, manifest=self.manifest)

    def plain_dataset(self, c: TrainConfig, split: str):
        from trainer.core import input_pipeline

        return input_pipeline.make_dataset(c.data_dir, split, training=False,
                                           **_common(c, True, self.manifest))

    def head(self, model):
        return model

    def compile_args(self, c: TrainConfig) -> dict[str, Any]:
        import keras

        return {"loss": keras.losses.BinaryCrossentropy(label_smoothing=c.label_smoothing),
                "metrics": [keras.metrics.BinaryAccuracy(name="accuracy"),
                            keras.metrics.AUC(name="auc"),
                            keras.metrics.Precision(name="precision"),
                            keras.metrics.Recall(name="recall")]}

    def class_weight(self, c: TrainConfig) -> dict[int, float] | None:
        if c.class_balance != "class_weights":
            return None
        if c.source_balance:  # the classes arrive at the source-balanced stream's rates
            from trainer.core import input_pipeline

            per_source = input_pipeline.binary_source_class_counts(self.manifest, "train")
            weights = source_balanced_class_weights(per_source, 2)
            if len(weights) < 2:
                raise ValueError(f"class weights need both classes in train; by source "
                                 f"{per_source}")
            return weights
        return class_weights_from_counts(self.train_counts(c))

    def after_fit(self, c: TrainConfig, fit_model, validation, step: int) -> None:
        """The validation precision-recall curve (TensorBoard's PR Curves tab)."""
        labels, probabilities = predict_dataset(fit_model, validation)
        write_pr_curve(os.path.join(c.workdir, "logs", "validation"), labels, probabilities,
                       step=step)

    def evaluate_and_report(self, model, c: TrainConfig, *, threshold_policy: str,
                            min_sensitivity: float, bootstrap: int, tta: bool) -> dict:
        from trainer.cnn import evaluation

        return evaluation.evaluate_and_report(
            model, c.data_dir, c.workdir, c.image_size, dataclasses.asdict(c),
            threshold_policy=threshold_policy, min_sensitivity=min_sensitivity,
            bootstrap=bootstrap, seed=c.seed, batch_size=c.batch_size, tta=tta,
            manifest=self.manifest)

    def export(self, model, c: TrainConfig, *, tta: bool) -> dict[str, str]:
        from trainer.cnn import export

        return export.export_model(model, c.workdir, c.image_size, _resize_mode(self.manifest),
                                   tta=tta, min_image_side=_min_image_side(c, self.manifest),
                                   manifest=dict(self.manifest), run_config=dataclasses.asdict(c))


@dataclasses.dataclass
class DiagnosisTask:
    """The normalised diagnosis over the classes fixed from train (<workdir>/classes.json): a
    float32 softmax head, sparse categorical cross-entropy, accuracy; balanced accuracy and
    the confusion matrix in the report."""

    manifest: Mapping[str, Any]
    mapping: dict[str, Any] | None = None
    name: str = "diagnosis"
    records: dict[str, int] = dataclasses.field(default_factory=dict)  # in the task, per split
    confirmation: Any = None

    def prepare(self, c: TrainConfig) -> None:
        """The classes, fixed once from train; a resumed run keeps its own."""
        from trainer.cnn import diagnosis

        self.mapping = diagnosis.read_mapping(c.workdir)
        if self.mapping is None:
            try:
                self.mapping = diagnosis.build_mapping(c.data_dir, c.image_size,
                                                       c.min_class_records, self.manifest)
            except ValueError as e:  # fewer than 2 classes
                raise DataError(f"--data_dir={c.data_dir} with --min_class_records="
                                f"{c.min_class_records}: {e}") from None
        for split in ("train", "validation"):
            self.records[split], excluded = diagnosis.split_records(
                c.data_dir, split, c.image_size, self.mapping, manifest=self.manifest)
            if not self.records[split]:
                raise DataError(f"--data_dir={c.data_dir}: the {split} split holds no record "
                                f"of the classes {self.mapping['classes']} at {c.image_size}px "
                                f"({excluded} of unknown diagnosis)")
        self.confirmation = plan_confirmation_mix(
            c, self.manifest, "diagnosis", lambda raw: diagnosis.class_of(self.mapping, raw))
        diagnosis.write_mapping(c.workdir, self.mapping)  # makes the run folder

    def _dataset(self, c: TrainConfig, split: str, **kwargs):
        from trainer.cnn import diagnosis

        kwargs.setdefault("manifest", self.manifest)
        return diagnosis.make_dataset(c.data_dir, split, self.mapping, **kwargs)

    def datasets(self, c: TrainConfig, strategy):
        from trainer.cnn import diagnosis

        check_planned(c, self)
        n_train = self.records.get("train")
        if n_train is None:
            n_train, _ = diagnosis.split_records(c.data_dir, "train", c.image_size, self.mapping,
                                                 manifest=self.manifest)
        common = _common(c, c.augment, self.manifest)
        train = self._dataset(c, "train", training=True, augment=c.augment, repeat=True,
                              augmentation=c.augmentation,
                              drop_remainder=strategy.num_replicas_in_sync > 1,
                              balance_sources=c.source_balance,
                              one_source_batches=c.source_batches,
                              confirmation_mix=self.confirmation, **common)
        validation = self._dataset(c, "validation", training=False, **common)
        return train, validation, _steps(c, n_train, infinite=c.source_balance
                                         or c.source_batches
                                         or self.confirmation is not None), n_train

    def sample_dataset(self, c: TrainConfig):
        return self._dataset(c, "train", image_size=c.image_size, batch_size=4, training=True,
                             augment=c.augment, seed=c.seed, augmentation=c.augmentation)

    def plain_dataset(self, c: TrainConfig, split: str):
        return self._dataset(c, split, training=False, **_common(c, True, self.manifest))

    def head(self, model):
        from trainer.cnn import diagnosis

        return diagnosis.softmax_head(model, len(self.mapping["classes"]))

    def compile_args(self, c: TrainConfig) -> dict[str, Any]:
        import keras

        from trainer.cnn import diagnosis

        return {"loss": keras.losses.SparseCategoricalCrossentropy(),
                "metrics": [keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
                            diagnosis.balanced_accuracy_metric(len(self.mapping["classes"]))]}

    def class_weight(self, c: TrainConfig) -> dict[int, float] | None:
        from trainer.cnn import diagnosis

        if c.class_balance != "class_weights":
            return None
        if c.source_balance:  # the classes arrive at the source-balanced stream's rates
            return source_balanced_class_weights(
                diagnosis.source_class_counts(self.manifest, "train", self.mapping),
                len(self.mapping["classes"]))
        return diagnosis.class_weights(self.mapping)

    def after_fit(self, c: TrainConfig, fit_model, validation, step: int) -> None:
        pass  # the PR curve is the binary task's

    def evaluate_and_report(self, model, c: TrainConfig, *, threshold_policy: str,
                            min_sensitivity: float, bootstrap: int, tta: bool) -> dict:
        from trainer.cnn import diagnosis

        return diagnosis.evaluate_and_report(model, c.data_dir, c.workdir, c.image_size,
                                             dataclasses.asdict(c), batch_size=c.batch_size,
                                             manifest=self.manifest, tta=tta)

    def export(self, model, c: TrainConfig, *, tta: bool) -> dict[str, str]:
        from trainer.cnn import export

        return export.export_diagnosis_model(model, c.workdir, c.image_size,
                                             _resize_mode(self.manifest),
                                             min_image_side=_min_image_side(c, self.manifest),
                                             manifest=dict(self.manifest),
                                             run_config=dataclasses.asdict(c), tta=tta)


TASKS = {"binary": BinaryTask, "diagnosis": DiagnosisTask}


def for_config(c: TrainConfig, manifest: Mapping[str, Any] | None = None) -> Task:
    """The task of c.task over c.data_dir (its manifest read here unless given)."""
    if manifest is None:
        from isicflow import dataset as dataset_lib

        manifest = dataset_lib.read_manifest(c.data_dir)
    return TASKS[c.task](manifest)


def class_weights_from_counts(counts: Mapping[str, int]) -> dict[int, float]:
    """Weights n / (2 n_c): each class contributes half the loss, as if balanced."""
    benign, malignant = int(counts.get("benign", 0)), int(counts.get("malignant", 0))
    if benign == 0 or malignant == 0:
        raise ValueError(f"class weights need both classes in train, counts are {dict(counts)}")
    total = benign + malignant
    return {0: total / (2 * benign), 1: total / (2 * malignant)}


def source_balanced_class_weights(per_source: Mapping[str, Mapping[int, int]],
                                  num_classes: int) -> dict[int, float]:
    """Class weights for a stream that samples each named source equally (--source_balance).

    Each source is drawn with probability 1/S, so class c arrives at the rate
        q_c = (1/S) sum_s n_sc / n_s
    (n_sc: the source's records of class c, n_s: all its records in the task), not at its
    pooled share; the weights are w_c = 1 / (K q_c), the pooled n / (K n_c) with q_c in place
    of n_c / n, so each class carries the same expected weight under that stream. A class no
    source holds gets no weight (it never arrives). per_source: {source: {class index: n}},
    "" (records without a source, never drawn) left out."""
    named = {s: c for s, c in per_source.items() if s and sum(c.values())}
    if not named:
        raise ValueError(f"no named source holds records of the task: {dict(per_source)}")
    rate: dict[int, float] = {}
    for counts in named.values():
        total = sum(counts.values())
        for index, n in counts.items():
            rate[int(index)] = rate.get(int(index), 0.0) + n / total / len(named)
    return {i: 1.0 / (num_classes * q) for i, q in sorted(rate.items()) if q > 0}


def write_pr_curve(log_dir: str, labels: np.ndarray, probabilities: np.ndarray,
                   step: int) -> None:
    """Validation precision-recall curve for TensorBoard's PR Curves tab."""
    import tensorflow as tf
    from tensorboard.plugins.pr_curve import summary as pr_summary

    pb = pr_summary.pb("validation_pr_curve", labels=labels.astype(bool),
                       predictions=probabilities.astype(np.float32), num_thresholds=101)
    with tf.summary.create_file_writer(log_dir).as_default():
        tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=step)


def predict_dataset(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """(labels, P(malignant)) of a binary dataset, in its order."""
    labels, probabilities = [], []
    for x, y in dataset:
        probabilities.append(np.asarray(model(x, training=False), np.float32).reshape(-1))
        labels.append(y.numpy())
    return np.concatenate(labels), np.concatenate(probabilities)
