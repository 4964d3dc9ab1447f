"""The CNN training loop: Keras fit with the study's optimizer and loss, plus what a run needs.

Workdir layout:  checkpoints/best.weights.h5 (best by --monitor), checkpoints/backup/ (resume
state, BackupAndRestore), logs/ (TensorBoard: scalars, learning rate, samples, PR curve,
profiler trace under logs/train/plugins/profile), history.json (one entry per epoch, kept
across resumes), model.keras (the best model), train_summary.json.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from trainer.cnn import diagnosis as diagnosis_lib
from trainer.cnn import config as config_lib, models, recipe
from trainer.cnn.config import CLASS_BALANCE_MODES, MONITORS, TrainConfig  # noqa: F401
from trainer.core import input_pipeline, run_folder, runtime, synthetic_mix



@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    history: list[dict[str, Any]]     # every epoch of the run, including resumed ones
    summary: dict[str, Any]


def class_weights_from_counts(counts: dict[str, int]) -> dict[int, float]:
    """Weights n / (2 n_c): each class contributes half the loss, as if balanced."""
    benign, malignant = int(counts.get("benign", 0)), int(counts.get("malignant", 0))
    if benign == 0 or malignant == 0:
        raise ValueError(f"class weights need both classes in train, counts are {counts}")
    total = benign + malignant
    return {0: total / (2 * benign), 1: total / (2 * malignant)}


def _batch_images(batch) -> int:
    x = batch[0]
    if isinstance(x, (tuple, list)):  # (images, metadata) under --use_metadata
        x = x[0]
    if hasattr(x, "values"):  # PerReplica under a multi-device strategy
        return sum(int(v.shape[0]) for v in x.values)
    return int(x.shape[0])


def install_step_timer(model: keras.Model, meter: runtime.StepTimeMeter) -> None:
    """Makes fit take each batch in Python (timed as input wait) before the compiled step.

    Keras 3's fit calls model.train_function(iterator); given a list instead of an iterator it
    runs the same compiled one-step function on each element, so only the fetch moves out of
    the graph. Reading the loss back each step syncs the device (the progress bar does too)
    and lets the run stop at the first NaN/inf. Call after compile().

    Each step, fetch included, runs inside a profiler step marker (runtime.step_marker) whose
    number is the optimizer's global step, 1-based and continuing across epochs and resumes:
    without it TensorBoard's Profile tab finds no steps (Keras 3 emits none it recognises).
    """
    model.make_train_function(force=True)
    compiled_step = model.train_function
    done = []  # steps finished before this call; read once, after a resume has restored them

    def timed_train_function(iterator):
        if not done:
            done.append(int(model.optimizer.iterations.numpy()))
        step = done[0] + 1
        with runtime.step_marker("train", step):
            meter.begin_step()
            batch = meter.next(iterator)  # StopIteration (end of data) counts no step
            logs = compiled_step([batch])
            loss = float(logs["loss"])  # waits for the step: the marker spans all of it
        done[0] = step
        if not np.isfinite(loss):
            runtime.raise_if_not_finite(loss, "training loss", step)
        meter.end_step(_batch_images(batch))
        return logs

    model.train_function = timed_train_function


class StepTimeLogger(keras.callbacks.Callback):
    """Adds step time, input-wait share, images/s and the learning rate to each epoch's logs
    (so they reach history.json and TensorBoard) and prints them."""

    def __init__(self, meter: runtime.StepTimeMeter, verbose: int = 1):
        super().__init__()
        self.meter, self.verbose = meter, verbose
        self._epoch_started = time.perf_counter()

    def on_train_begin(self, logs=None):
        self.meter.warmup_steps = 1  # the run's first step traces and compiles

    def on_epoch_begin(self, epoch, logs=None):
        self.meter.reset()
        self._epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        summary = self.meter.summary()
        self.meter.warmup_steps = 0  # only the run's first step is warm-up
        logs.update({"step_time_s": summary["step_time_s"],
                     "input_wait_share": summary["input_wait_share"],
                     "images_per_s": summary["images_per_s"],
                     "epoch_time_s": time.perf_counter() - self._epoch_started,
                     "learning_rate": recipe.current_learning_rate(self.model.optimizer)})
        if self.verbose:
            print(f"epoch {epoch + 1}: step {summary['step_time_s'] * 1000:.1f} ms, input wait "
                  f"{summary['input_wait_share']:.1%}, {summary['images_per_s']:.1f} images/s "
                  f"(over {summary['steps']} steps)", flush=True)


class HistoryFile(keras.callbacks.Callback):
    """Writes history.json (trainer.core.run_folder's format) after every epoch; a resumed run
    keeps the epochs already done."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.entries = run_folder.read_history(path)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: _to_float(v) for k, v in (logs or {}).items()}}
        self.entries = [e for e in self.entries if e["epoch"] < epoch + 1] + [row]
        run_folder.write_history(self.path, self.entries)


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose count survives a resume: on_train_begin replays the monitored values
    history.json already holds, so best and wait continue where the interrupted run left them
    instead of patience starting over."""

    def __init__(self, history_file: HistoryFile, **kwargs):
        super().__init__(**kwargs)
        self.history_file = history_file

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.monitor_op is None:
            self._set_monitor_op()
        for epoch, entry in enumerate(self.history_file.entries):
            current = entry.get(self.monitor)
            if current is None or epoch < self.start_from_epoch:
                continue
            self.wait += 1
            if self._is_improvement(current, self.best):
                self.best, self.best_epoch, self.wait = current, epoch, 0


class SampleImages(keras.callbacks.Callback):
    """A few training images as the model sees them (after augmentation), once per run."""

    def __init__(self, log_dir: str, images: np.ndarray, labels: np.ndarray):
        super().__init__()
        self.log_dir, self.images, self.labels = log_dir, images, labels

    def on_train_begin(self, logs=None):
        with tf.summary.create_file_writer(self.log_dir).as_default():
            tf.summary.image("train_samples", np.clip(self.images, 0, 1), step=0,
                             max_outputs=len(self.images),
                             description=f"labels {self.labels.astype(int).tolist()}")


def _to_float(value) -> float:
    return float(keras.ops.convert_to_numpy(value))


def _mixing(c: TrainConfig) -> bool:
    return bool(c.mixup_alpha or c.cutmix_alpha)


def _float_input(c: TrainConfig) -> bool:
    """Training batches reach the model as float32 (augmented or mixed), not uint8."""
    return c.augment or _mixing(c)


def _datasets(c: TrainConfig, strategy, mapping=None):
    if mapping is not None:
        n_train, _ = diagnosis_lib.split_records(c.data_dir, "train", c.image_size, mapping)
        steps = math.ceil(n_train / c.batch_size)
        if c.steps_per_epoch:
            steps = min(steps, c.steps_per_epoch)
        common = dict(image_size=c.image_size, batch_size=c.batch_size, cache=c.cache,
                      deterministic=c.deterministic, seed=c.seed, as_uint8=not c.augment,
                      use_metadata=c.use_metadata)
        train = diagnosis_lib.make_dataset(
            c.data_dir, "train", mapping, training=True, augment=c.augment, repeat=True,
            augmentation=c.augmentation,
            drop_remainder=strategy.num_replicas_in_sync > 1, **common)
        validation = diagnosis_lib.make_dataset(c.data_dir, "validation", mapping,
                                                training=False, **common)
        return train, validation, steps, n_train
    mix = synthetic_mix_for(c)
    n_train = input_pipeline.dataset_size(c.data_dir, "train", c.image_size) + (
        mix.total if mix else 0)
    steps = math.ceil(n_train / c.batch_size)
    if c.steps_per_epoch:
        steps = min(steps, c.steps_per_epoch) if c.class_balance != "sampling" \
            else c.steps_per_epoch
    common = dict(image_size=c.image_size, batch_size=c.batch_size, cache=c.cache,
                  deterministic=c.deterministic, seed=c.seed, as_uint8=not _float_input(c),
                  use_metadata=c.use_metadata)
    train = input_pipeline.make_dataset(
        c.data_dir, "train", training=True, augment=c.augment, repeat=True,
        augmentation=c.augmentation, mixup_alpha=c.mixup_alpha, cutmix_alpha=c.cutmix_alpha,
        balance_classes=c.class_balance == "sampling", synthetic=mix,
        drop_remainder=strategy.num_replicas_in_sync > 1, **common)
    validation = input_pipeline.make_dataset(c.data_dir, "validation", training=False, **common)
    return train, validation, steps, n_train


def synthetic_mix_for(c: TrainConfig) -> synthetic_mix.SyntheticMix | None:
    """The generated records --synthetic_data/--synthetic_fraction add to train, or None."""
    if not c.synthetic_data:
        return None
    return synthetic_mix.plan(c.synthetic_data, input_pipeline.class_counts(
        c.data_dir, "train", c.image_size), c.synthetic_fraction, c.image_size)


def with_uint8_input(model: keras.Model, image_size: int) -> keras.Model:
    """The model behind a Rescaling(1/255) that takes the stored uint8 pixels: the same values
    as the input pipeline's float conversion (x * 1/255), computed on the device. Shares its
    weights with `model`, which stays the float [0, 1] model that is evaluated and exported."""
    if len(model.inputs) > 1:  # (image, metadata) under --use_metadata
        image = keras.Input((image_size, image_size, 3), dtype="uint8", name="image_uint8")
        others = [keras.Input(tuple(t.shape[1:]), name=f"input_{i + 1}")
                  for i, t in enumerate(model.inputs[1:])]
        out = model([keras.layers.Rescaling(1.0 / 255)(image), *others])
        return keras.Model([image, *others], out, name="uint8_" + model.name)
    return keras.Sequential([keras.Input((image_size, image_size, 3), dtype="uint8"),
                             keras.layers.Rescaling(1.0 / 255), model], name="uint8_" + model.name)


def _callbacks(c: TrainConfig, meter, history_file, sample_batch, budget=None) -> list:
    checkpoints = os.path.join(c.workdir, "checkpoints")
    logs = os.path.join(c.workdir, "logs")
    best_so_far = [e[c.monitor] for e in history_file.entries if c.monitor in e]
    profile = runtime.parse_profile_steps(c.profile_steps) or 0
    callbacks = [
        keras.callbacks.BackupAndRestore(os.path.join(checkpoints, "backup"),
                                         delete_checkpoint=False),
    ]
    if c.ema_decay:
        # After the backup has saved the training weights (resume needs them) and before the
        # checkpoint: validation (on_test_begin), the best checkpoint, the logs and the
        # weights fit leaves in the model are the EMA's; each epoch_begin swaps back.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks += [
        StepTimeLogger(meter, c.verbose),
        keras.callbacks.ModelCheckpoint(
            os.path.join(checkpoints, "best.weights.h5"), monitor=c.monitor, mode="max",
            save_best_only=True, save_weights_only=True,
            initial_value_threshold=max(best_so_far) if best_so_far else None),
        keras.callbacks.TensorBoard(logs, profile_batch=profile, write_graph=False),
        SampleImages(os.path.join(logs, "samples"), *sample_batch),
        history_file,
    ]
    if c.early_stopping_patience:
        callbacks.append(ResumableEarlyStopping(
            history_file, monitor=c.monitor, mode="max", patience=c.early_stopping_patience))
    if budget is not None:
        callbacks.append(recipe.StopWhenOutOfTime(budget, c.verbose))
    return callbacks


def write_pr_curve(log_dir: str, labels: np.ndarray, probabilities: np.ndarray,
                   step: int) -> None:
    """Validation precision-recall curve for TensorBoard's PR Curves tab."""
    from tensorboard.plugins.pr_curve import summary as pr_summary

    pb = pr_summary.pb("validation_pr_curve", labels=labels.astype(bool),
                       predictions=probabilities.astype(np.float32), num_thresholds=101)
    with tf.summary.create_file_writer(log_dir).as_default():
        tf.summary.experimental.write_raw_pb(pb.SerializeToString(), step=step)


def predict_dataset(model: keras.Model, dataset: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    labels, probabilities = [], []
    for x, y in dataset:
        probabilities.append(np.asarray(model(x, training=False), np.float32).reshape(-1))
        labels.append(y.numpy())
    return np.concatenate(labels), np.concatenate(probabilities)


def train_cnn(c: TrainConfig, extra_callbacks: Sequence[keras.callbacks.Callback] = (),
              manifest: dict[str, Any] | None = None) -> TrainResult:
    """Trains (or resumes) one run; returns the best model by c.monitor and the history.
    The settings were checked when c was built; the data is checked here, before the run
    folder is made (config.check_inputs)."""
    if manifest is None:
        manifest = config_lib.check_inputs(c)
    os.makedirs(c.workdir, exist_ok=True)
    keras.utils.set_random_seed(c.seed)
    if c.deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = runtime.configure_mixed_precision(c.mixed_precision)
    strategy = runtime.make_strategy()
    mapping = None
    if c.task == "diagnosis":  # classes fixed once, from train; a resumed run keeps its own
        mapping = diagnosis_lib.read_mapping(c.workdir) or diagnosis_lib.build_mapping(
            c.data_dir, c.image_size, c.min_class_records)
        diagnosis_lib.write_mapping(c.workdir, mapping)
    train_ds, val_ds, steps, n_train = _datasets(c, strategy, mapping)
    with strategy.scope():
        model = models.build_model(c.model, c.image_size, c.dropout, c.l2,
                                   c.weights_path or None, c.width_multiplier)
        if c.use_metadata:
            from trainer.core import metadata_features

            model = metadata_features.with_metadata_input(model)
        if mapping is not None:
            model = diagnosis_lib.softmax_head(model, len(mapping["classes"]))
        # Without augmentation the batches stay uint8 until the device (see make_dataset);
        # `model` itself keeps float [0, 1] inputs for evaluation, export and users.
        fit_model = model if _float_input(c) else with_uint8_input(model, c.image_size)
        rate = recipe.learning_rate(c.learning_rate, c.lr_schedule, c.epochs * steps,
                                    round(c.warmup_epochs * steps))
        for compiled in {id(m): m for m in (model, fit_model)}.values():
            optimizer = recipe.make_optimizer(c.optimizer, rate, c.weight_decay, c.ema_decay)
            if mapping is not None:
                compiled.compile(optimizer=optimizer,
                                 loss=keras.losses.SparseCategoricalCrossentropy(),
                                 metrics=[keras.metrics.SparseCategoricalAccuracy(
                                     name="accuracy")],
                                 jit_compile=c.jit_compile)
                continue
            compiled.compile(optimizer=optimizer,
                             loss=keras.losses.BinaryCrossentropy(
                                 label_smoothing=c.label_smoothing),
                             metrics=[keras.metrics.BinaryAccuracy(name="accuracy"),
                                      keras.metrics.AUC(name="auc"),
                                      keras.metrics.Precision(name="precision"),
                                      keras.metrics.Recall(name="recall")],
                             jit_compile=c.jit_compile)
    meter = runtime.StepTimeMeter(warmup_steps=1)
    install_step_timer(fit_model, meter)
    history_file = HistoryFile(os.path.join(c.workdir, run_folder.HISTORY_NAME))
    if mapping is not None:
        sample_x, sample_y = next(iter(diagnosis_lib.make_dataset(
            c.data_dir, "train", mapping, image_size=c.image_size, batch_size=4, training=True,
            augment=c.augment, seed=c.seed, augmentation=c.augmentation)))
    else:
        sample_x, sample_y = next(iter(input_pipeline.make_dataset(
            c.data_dir, "train", image_size=c.image_size, batch_size=4, training=True,
            augment=c.augment, seed=c.seed, augmentation=c.augmentation)))
    sample_x = sample_x[0] if isinstance(sample_x, (tuple, list)) else sample_x
    sample_batch = (sample_x.numpy(), sample_y.numpy())
    class_weight = None
    if c.class_balance == "class_weights" and mapping is not None:
        class_weight = diagnosis_lib.class_weights(mapping)
    elif c.class_balance == "class_weights":
        class_weight = class_weights_from_counts(
            input_pipeline.class_counts(c.data_dir, "train", c.image_size))
    if c.verbose:
        print(f"model {c.model}: {model.count_params():,} parameters, policy {policy}, "
              f"{strategy.num_replicas_in_sync} replica(s), {n_train} training images, "
              f"{steps} steps/epoch, class weights {class_weight}", flush=True)
    clock = runtime.TrainingClock()
    budget = runtime.TrainingBudget(c.max_train_minutes) if c.max_train_minutes else None
    callbacks = _callbacks(c, meter, history_file, sample_batch, budget)
    fit_model.fit(train_ds, validation_data=val_ds, epochs=c.epochs, steps_per_epoch=steps,
                  class_weight=class_weight, verbose=c.verbose, shuffle=False,
                  callbacks=callbacks + list(extra_callbacks))
    trained = clock.totals()
    stopped = [cb.stopped_epoch for cb in callbacks
               if isinstance(cb, recipe.StopWhenOutOfTime) and cb.stopped_epoch]
    best = os.path.join(c.workdir, "checkpoints", "best.weights.h5")
    if os.path.exists(best):
        fit_model.load_weights(best)  # shares its weights with `model`
    model.save(os.path.join(c.workdir, "model.keras"))
    if mapping is None:  # the PR curve is the binary task's
        val_labels, val_probs = predict_dataset(fit_model, val_ds)  # matches fit_model's input
        write_pr_curve(os.path.join(c.workdir, "logs", "validation"), val_labels, val_probs,
                       step=len(history_file.entries))
    summary = _final_summary(c, model, history_file.entries, policy, strategy,
                             trained["train_wall_s"])
    summary.update(cpu_time_s_this_run=round(trained["train_cpu_s"], 2),
                   stopped_by_time_budget_after_epoch=stopped[0] if stopped else None)
    run_folder.write_json(os.path.join(c.workdir, "train_summary.json"), summary)  # NaN -> null
    if c.verbose:
        print("training summary: " + json.dumps(summary), flush=True)
    return TrainResult(model, history_file.entries, summary)


def _final_summary(c, model, entries, policy, strategy, wall) -> dict[str, Any]:
    scored = [e for e in entries if c.monitor in e]
    best = max(scored, key=lambda e: e[c.monitor]) if scored else {}
    last = entries[-1] if entries else {}
    return {"model": c.model, "parameters": int(model.count_params()), "policy": policy,
            "replicas": int(strategy.num_replicas_in_sync), "epochs_done": len(entries),
            "best_epoch": best.get("epoch"), "monitor": c.monitor,
            f"best_{c.monitor}": best.get(c.monitor), "last_epoch": last,
            "wall_time_s_this_run": round(wall, 2)}
