"""The CNN training loop: Keras fit with the study's optimizer and loss, plus what a run needs.

Workdir layout:  checkpoints/best.weights.h5 (best by --monitor), checkpoints/backup/ (resume
state, BackupAndRestore), logs/ (TensorBoard: scalars, learning rate, samples, PR curve,
profiler trace under logs/train/plugins/profile), history.json (one entry per epoch, kept
across resumes), model.keras (the best model), train_summary.json.

On several workers (a cluster, MultiWorkerMirroredStrategy) every worker runs this same loop in
step; each reads its own train shard files; only the chief writes the workdir. The others
read it (resume state, history) and write into a temporary folder removed at the end, as TF's
multi-worker guide recommends: every worker saves, so saving stays in step across them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Sequence

import keras
import numpy as np
import tensorflow as tf

from trainer.cnn import config as config_lib, models, pretrained_encoder, probe_head, recipe, tasks
from trainer.cnn.config import TrainConfig  # noqa: F401  (train.TrainConfig, as before)
from trainer.cnn.data import DataError
from trainer.cnn.tasks import class_weights_from_counts  # noqa: F401  (tests use it from here)
from trainer.core import input_pipeline, run_folder, runtime, source_adversary, source_prior



@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    history: list[dict[str, Any]]     # every epoch of the run, including resumed ones
    summary: dict[str, Any]
    chief: bool = True                # False: a worker that trained in step and writes nothing


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


def fit_on_several_workers(model: keras.Model, strategy) -> list[keras.layers.Layer]:
    """Readies `model` for fit on several workers; returns the batch norm layers it set to
    synchronized (set them back after fit, so the saved model is as on one worker).

    Batch norm computes its batch statistics over the global batch (synchronized=True):
    otherwise each worker's moving mean and variance follow its own data and the workers
    end with different weights; with it a step is the one-process step of the global batch.

    And it mends the two places where Keras 3.15's fit fails under MultiWorkerMirroredStrategy
    (private TensorFlowTrainer code, no public hook; checked against keras 3.15.1):
    _maybe_symbolic_build averages the first (x, y) batch with strategy.reduce, which the
    strategy refuses for a pair (ValueError: PerReplica ... to a Tensor), so the model is
    built from one replica's part (shapes are all a build needs); and reduce_per_replica
    averages the scalar logs with axis=0 (ValueError: Invalid reduction dimension 0), so they
    are averaged over every replica of every worker with axis=None, which also gives each
    worker the same logs for its callbacks' decisions."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(local, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build
    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(
                strategy):
            return keras.tree.map_structure(
                lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica
    norms = [layer for layer in model._flatten_layers()
             if isinstance(layer, keras.layers.BatchNormalization) and not layer.synchronized]
    for layer in norms:
        layer.synchronized = True
    return norms


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

    def __init__(self, path: str, read_from: str | None = None):
        """read_from: where the epochs done so far are (a non-chief worker reads the chief's
        history and writes its own copy elsewhere); default `path`."""
        super().__init__()
        self.path = path
        self.entries = run_folder.read_history(read_from or path)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{k: _to_float(v) for k, v in (logs or {}).items()}}
        self.entries = [e for e in self.entries if e["epoch"] < epoch + 1] + [row]
        run_folder.write_history(self.path, self.entries)


class WorkerBackupAndRestore(keras.callbacks.BackupAndRestore):
    """BackupAndRestore that restores from `backup_dir` and saves into `save_dir`: on a
    non-chief worker the chief's backup (shared storage) is read and its own, identical one
    written to a temporary folder; on the chief both are the same folder."""

    def __init__(self, backup_dir: str, save_dir: str, **kwargs):
        super().__init__(backup_dir, **kwargs)
        self.save_dir = save_dir

    def _save_model(self):
        if self.save_dir == self.backup_dir:
            return super()._save_model()
        saver = keras.callbacks.BackupAndRestore(self.save_dir, delete_checkpoint=False)
        saver.set_model(self.model)
        saver._current_epoch, saver._last_batch_seen = self._current_epoch, self._last_batch_seen
        saver._save_model()


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


def _datasets(c: TrainConfig, strategy, task: tasks.Task | None = None):
    """(train, validation, steps per epoch, training images) of c's task."""
    return (task or tasks.for_config(c)).datasets(c, strategy)


def with_uint8_input(model: keras.Model, image_size: int) -> keras.Model:
    """The model behind a Rescaling(1/255) that takes the stored uint8 pixels: the same values
    as the input pipeline's float conversion (x * 1/255), computed on the device. Shares its
    weights with `model`, which stays the float [0, 1] model that is evaluated and exported."""
    if len(model.inputs) > 1:  # (image, metadata) under --use_metadata
        image = keras.Input((image_size, image_size, 3), dtype="uint8", name="image_uint8")
        others = [keras.Input(tuple(t.shape[1:]), dtype=t.dtype, name=f"input_{i + 1}")
                  for i, t in enumerate(model.inputs[1:])]
        out = model([keras.layers.Rescaling(1.0 / 255)(image), *others])
        return keras.Model([image, *others], out, name="uint8_" + model.name)
    return keras.Sequential([keras.Input((image_size, image_size, 3), dtype="uint8"),
                             keras.layers.Rescaling(1.0 / 255), model], name="uint8_" + model.name)


def backup_dir(workdir: str) -> str:
    """Where BackupAndRestore keeps a run's resume state (a run resumes when it holds one)."""
    return os.path.join(workdir, "checkpoints", "backup")


def _callbacks(c: TrainConfig, meter, history_file, sample_batch, budget=None,
               out_dir: str | None = None) -> list:
    """out_dir: where this worker writes (c.workdir, or a non-chief worker's temporary
    folder); the resume state is always read from c.workdir."""
    checkpoints = os.path.join(out_dir or c.workdir, "checkpoints")
    logs = os.path.join(out_dir or c.workdir, "logs")
    best_so_far = [e[c.monitor] for e in history_file.entries if c.monitor in e]
    profile = runtime.parse_profile_steps(c.profile_steps) or 0
    callbacks = [
        WorkerBackupAndRestore(backup_dir(c.workdir), backup_dir(out_dir or c.workdir),
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


def weights_digest(model: keras.Model) -> str:
    """sha256 of a model's weights (values in order): equal on every worker of a cluster that
    stayed in step, and equal again in a run that restores them."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()


def check_workers(c: TrainConfig, manifest: dict[str, Any], index: int, workers: int
                  ) -> list[str]:
    """The train shard files this worker reads (input_pipeline.worker_files); a UserError
    before anything starts when several workers cannot share the run as set."""
    from isicflow import dataset as dataset_lib

    if workers > 1 and c.probe_head:
        raise config_lib.ConfigError(
            f"--probe_head with {workers} workers: each would fit its own head, and nothing "
            "makes them equal; fit it on one worker's run, or train without it")
    if workers > 1 and c.confirmation_weights:
        raise config_lib.ConfigError(
            f"--confirmation_weights={c.confirmation_weights} with {workers} workers: the "
            "shares are planned over the whole train split, but each worker reads its own "
            "shard files, where a small group (HAM10000's ~30 confocal images) can be missing "
            "and end that worker's stream; train it on one machine")
    if workers > 1 and c.max_train_minutes:
        raise config_lib.ConfigError(
            f"--max_train_minutes={c.max_train_minutes} with {workers} workers: each worker's "
            "clock could stop it after another epoch, leaving the others waiting; size "
            "--epochs instead")
    paths = dataset_lib.shard_paths(manifest, c.data_dir, c.image_size, "train")
    try:
        files = input_pipeline.worker_files(paths, index, workers)
    except ValueError:
        raise DataError(f"--data_dir={c.data_dir}: the train split at {c.image_size}px has "
                        f"{len(paths)} shard file(s) for {workers} workers, and each worker "
                        f"reads whole files; rerun beam_jobs.preprocess with --num_shards="
                        f"{workers} or more (a multiple of {workers})") from None
    return files


def train_cnn(c: TrainConfig, extra_callbacks: Sequence[keras.callbacks.Callback] = (),
              manifest: dict[str, Any] | None = None, cluster: dict | None = None
              ) -> TrainResult:
    """Trains (or resumes) one run; returns the best model by c.monitor and the history.
    The settings were checked when c was built; the data is checked here, before the run
    folder is made (config.check_inputs). cluster: runtime.cluster_config's dict to train
    as one worker of several (None: this process alone)."""
    if manifest is None:
        manifest = config_lib.check_inputs(c)
    index, workers = runtime.worker_position(cluster)
    files = check_workers(c, manifest, index, workers) if workers > 1 else []
    strategy = runtime.make_strategy(cluster)  # first: a cluster's must precede any TF work
    chief = bool(strategy.extended.should_checkpoint)
    out_dir = c.workdir if chief else tempfile.mkdtemp(prefix=f"isicflow-worker{index}-")
    try:
        if workers > 1 and c.verbose:
            print(f"worker {index} of {workers}{' (chief)' if chief else ''} reads "
                  f"{len(files)} train shard file(s): "
                  f"{', '.join(os.path.basename(f) for f in files)}", flush=True)
        return _train(c, extra_callbacks, manifest, strategy, out_dir, (index, workers))
    finally:
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)


def _train(c: TrainConfig, extra_callbacks, manifest, strategy, out_dir: str,
           position: tuple[int, int]) -> TrainResult:
    """train_cnn's loop, writing into out_dir (the workdir, or a non-chief's scratch folder)."""
    index, workers = position
    chief = out_dir == c.workdir
    task = tasks.for_config(c, manifest)
    task.prepare(c if chief else dataclasses.replace(c, workdir=out_dir))
    os.makedirs(out_dir, exist_ok=True)
    started = os.path.join(c.workdir, config_lib.TRAIN_CONFIG_NAME)
    if chief and not os.path.exists(started):  # what a resume must keep (check_resume)
        run_folder.write_json(started, dataclasses.asdict(c))
    keras.utils.set_random_seed(c.seed)
    if c.deterministic:
        tf.config.experimental.enable_op_determinism()
    policy = runtime.configure_mixed_precision(c.mixed_precision)
    train_ds, val_ds, steps, n_train = task.datasets(c, strategy)
    offsets = task.source_offsets(c) if c.source_logit_adjustment else None  # binary only
    sources = task.source_names(c) if c.source_adversary_weight else None  # binary only
    groups = (source_prior.group_draws(
        input_pipeline.binary_source_class_counts(task.manifest, "train"),
        c.source_label_independence)
              if c.source_label_independence != "none" else None)  # binary only
    if workers > 1:
        train_ds = input_pipeline.shard_by_file(train_ds)
    with strategy.scope():
        model = models.build_model(c.model, c.image_size, c.dropout, c.l2,
                                   c.weights_path or None, c.width_multiplier,
                                   c.color_constancy, center_crop=c.center_crop)
        initialised = _init_encoder(model, c, manifest) if c.init_encoder else None
        if c.use_metadata:
            from trainer.core import metadata_features

            model = metadata_features.with_metadata_input(model)
        model = task.head(model)
        # --source_logit_adjustment: fit sees (image, source offset); `model` stays the plain
        # image model (offset 0) that is saved, evaluated and exported.
        fitted = source_prior.with_source_offset(model) if offsets is not None else model
        # --source_adversary_weight: fit sees (image, source index) and adds the source head's
        # loss through a gradient reversal; `model` again stays the plain image model.
        if sources is not None:
            fitted = source_adversary.with_source_head(model, len(sources),
                                                       c.source_adversary_weight)
        # Without augmentation the batches stay uint8 until the device (see make_dataset);
        # `model` itself keeps float [0, 1] inputs for evaluation, export and users.
        fit_model = fitted if tasks.float_input(c) else with_uint8_input(fitted, c.image_size)
        rate = recipe.learning_rate(c.learning_rate, c.lr_schedule, c.epochs * steps,
                                    round(c.warmup_epochs * steps))
        for compiled in {id(m): m for m in (model, fit_model)}.values():
            optimizer = recipe.make_optimizer(c.optimizer, rate, c.weight_decay, c.ema_decay)
            compiled.compile(optimizer=optimizer, **task.compile_args(c),
                             jit_compile=c.jit_compile)
    probed = _probe_head(model, c, task) if c.probe_head else None
    meter = runtime.StepTimeMeter(warmup_steps=1)
    install_step_timer(fit_model, meter)
    synchronized = fit_on_several_workers(fit_model, strategy) if workers > 1 else []
    history_file = HistoryFile(os.path.join(out_dir, run_folder.HISTORY_NAME),
                               read_from=os.path.join(c.workdir, run_folder.HISTORY_NAME))
    sample_x, sample_y = next(iter(task.sample_dataset(c)))
    sample_x = sample_x[0] if isinstance(sample_x, (tuple, list)) else sample_x
    sample_batch = (sample_x.numpy(), sample_y.numpy())
    class_weight = task.class_weight(c)
    if c.verbose:
        print(f"model {c.model}: {model.count_params():,} parameters, policy {policy}, "
              f"{strategy.num_replicas_in_sync} replica(s), {n_train} training images, "
              f"{steps} steps/epoch, class weights {class_weight}", flush=True)
        if initialised is not None:
            print(f"encoder from {c.init_encoder}: {initialised['layers']} layers, "
                  f"{initialised['parameters']:,} parameters", flush=True)
            note = pretrained_encoder.overlap_note(initialised["evaluation_images_seen"])
            if note:
                print(f"note: {note}", flush=True)
        if probed is not None:
            print(f"output layer from a linear probe on {probed['images']} train images' "
                  f"frozen features (balanced accuracy {probed['train_balanced_accuracy']:.3f} "
                  "on them)", flush=True)
        if offsets is not None:
            print("source logit offsets (training only): " + ", ".join(
                f"{name} {value:+.3f}" for name, value in offsets.items()), flush=True)
        if groups is not None:
            print("source-label independence, each (source, class) drawn x times as often as "
                  "stored: " + ", ".join(f"{g['source']}/{g['class']} x{g['oversampling']:.2f}"
                                         for g in groups), flush=True)
        if sources is not None:
            print(f"source adversary (training only, weight {c.source_adversary_weight}) over "
                  f"{len(sources)} sources: {', '.join(sources)}", flush=True)
    clock = runtime.TrainingClock()
    budget = runtime.TrainingBudget(c.max_train_minutes) if c.max_train_minutes else None
    callbacks = _callbacks(c, meter, history_file, sample_batch, budget, out_dir)
    fit_model.fit(train_ds, validation_data=val_ds, epochs=c.epochs, steps_per_epoch=steps,
                  class_weight=class_weight, verbose=c.verbose, shuffle=False,
                  callbacks=callbacks + list(extra_callbacks))
    trained = clock.totals()
    for layer in synchronized:
        layer.synchronized = False
    digest = weights_digest(fit_model)
    if workers > 1:
        print(f"worker {index} of {workers}: trained weights sha256 {digest}", flush=True)
    if not chief:  # the chief writes what follows; this worker's part is done
        return TrainResult(model, history_file.entries, {"worker": index, "workers": workers,
                                                         "weights_sha256": digest}, chief=False)
    stopped = [cb.stopped_epoch for cb in callbacks
               if isinstance(cb, recipe.StopWhenOutOfTime) and cb.stopped_epoch]
    best = os.path.join(c.workdir, "checkpoints", "best.weights.h5")
    if os.path.exists(best):
        fit_model.load_weights(best)  # shares its weights with `model`
    model.save(os.path.join(c.workdir, "model.keras"))
    if workers > 1:  # evaluate and export on this process alone: the model outside the cluster
        model = models.load_keras_model(os.path.join(c.workdir, "model.keras"))
    task.after_fit(c, fit_model, val_ds, step=len(history_file.entries))  # fit_model's input
    summary = _final_summary(c, model, history_file.entries, policy, strategy,
                             trained["train_wall_s"])
    summary.update(cpu_time_s_this_run=round(trained["train_cpu_s"], 2), weights_sha256=digest,
                   workers=workers,
                   stopped_by_time_budget_after_epoch=stopped[0] if stopped else None)
    if initialised is not None:
        summary["init_encoder"] = {"path": c.init_encoder, **initialised}
    if probed is not None:
        summary["probe_head"] = probed
    if offsets is not None:
        summary["source_logit_offsets"] = offsets
    if groups is not None:
        summary["source_label_independence"] = groups
    if task.confirmation is not None:
        summary["confirmation_weights"] = task.confirmation.summary()
    if sources is not None:
        summary["source_adversary"] = {"weight": c.source_adversary_weight, "sources": sources}
    run_folder.write_json(os.path.join(c.workdir, "train_summary.json"), summary)  # NaN -> null
    if c.verbose:
        print("training summary: " + json.dumps(summary), flush=True)
    return TrainResult(model, history_file.entries, summary)


def _init_encoder(model: keras.Model, c: TrainConfig, manifest: dict[str, Any]
                  ) -> dict[str, Any]:
    """--init_encoder: the pretrained encoder's weights copied into `model`; what was copied,
    and how many images of each of this run's evaluation splits the encoder learned from
    (without labels; None when the pretraining run did not record its images)."""
    from isicflow import reader

    copied = pretrained_encoder.load_encoder_weights(model, c.init_encoder)
    pretrained = pretrained_encoder.read_image_ids(c.init_encoder)
    seen = None if pretrained is None else pretrained_encoder.images_seen(pretrained, {
        split: reader.field_values(c.data_dir, split, c.image_size, "image_id", manifest)
        for split in pretrained_encoder.EVALUATION_SPLITS})
    return {**copied, "evaluation_images_seen": seen}


def _probe_head(model: keras.Model, c: TrainConfig, task) -> dict[str, Any]:
    """--probe_head: on a fresh run, the output layer fitted on the train split's frozen
    features (trainer.cnn.probe_head) as the loss weighs the classes (class weights; balanced
    under --class_balance=sampling, whose batches are half of each) and recorded in the run
    folder; on a resume, that record (fit restores the weights, the head's too)."""
    record = os.path.join(c.workdir, "checkpoints", probe_head.RECORD_NAME)
    backup = backup_dir(c.workdir)
    if os.path.isdir(backup) and os.listdir(backup) and os.path.exists(record):
        with open(record, encoding="utf-8") as f:
            return json.load(f)
    weights = "balanced" if c.class_balance == "sampling" else task.class_weight(c)
    probed = probe_head.initialise_head(model, task.plain_dataset(c, "train"), weights)
    os.makedirs(os.path.dirname(record), exist_ok=True)
    run_folder.write_json(record, probed)
    return probed


def _final_summary(c, model, entries, policy, strategy, wall) -> dict[str, Any]:
    scored = [e for e in entries if c.monitor in e]
    best = max(scored, key=lambda e: e[c.monitor]) if scored else {}
    last = entries[-1] if entries else {}
    return {"model": c.model, "parameters": int(model.count_params()), "policy": policy,
            "replicas": int(strategy.num_replicas_in_sync), "epochs_done": len(entries),
            "best_epoch": best.get("epoch"), "monitor": c.monitor,
            f"best_{c.monitor}": best.get(c.monitor), "last_epoch": last,
            "wall_time_s_this_run": round(wall, 2)}
