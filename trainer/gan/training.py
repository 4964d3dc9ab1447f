"""The DCGAN training loop: data, models, checkpoints, per-epoch grids, scalars and guards."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import threading

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from trainer.core import input_pipeline, run_folder, runtime
from trainer.core.flags import RunConfig
from trainer.core.report import tile_images
from trainer.gan import augment, grow
from trainer.gan import models as gan_models


GAN_CLASSES = ("binary", "diagnosis")
# In checkpoints/ of a run whose G started from a smaller run's (--init_generator_from).


@dataclasses.dataclass
class GanConfig(RunConfig):
    """Everything one training run needs; built from flags by from_flags(), or directly in tests.
    The shared --learning_rate is not used: each network has its own Adam rate."""

    image_size: int = 128
    batch_size: int = 64
    epochs: int = 100
    latent_dim: int = 100
    gen_learning_rate: float = 1e-4
    disc_learning_rate: float = 1e-4
    beta_1: float = 0.5
    beta_2: float = 0.999
    label_noise: float = 0.1
    label_flip: float = 0.05
    conditional: bool = False
    gan_classes: str = "binary"       # conditional on: binary (benign/malignant) | diagnosis
    min_class_records: int = 300      # diagnosis: rarer train diagnoses grouped as `other`
    class_balance: bool = False       # conditional: every class drawn equally often
    splits: tuple[str, ...] = ("train",)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    grid_images: int = 16
    collapse_patience: int = 500
    collapse_d_fake: float = 0.02
    # The recipe; these defaults are the study's DCGAN.
    architecture: str = "study"       # study | deep
    width: int = 32                   # deep only: G starts at 8*width channels, D at width
    spectral_norm: bool = False       # deep discriminator only
    disc_depth: int = 1               # deep D: convs per resolution (2 = SN-GAN standard CNN)
    diffaugment: tuple[str, ...] = () # DiffAugment ops on real and fake; () = off
    diffaugment_p: float = 1.0        # share of images each op is applied to (ADA: the start)
    ada_target: float = 0.0           # ADA's target for E[sign(D(real))]; 0 = p stays fixed
    r1_gamma: float = 0.0             # R1 penalty weight on real images; 0 = off
    gan_loss: str = "bce"             # bce (study, noisy/flipped targets) | nonsaturating | hinge
    init_generator_from: str = ""     # a smaller deep run whose G a fresh run starts from

    FLAG_SOURCES = {"splits": ("gan_splits", tuple), "architecture": ("gan_architecture", str),
                    "width": ("gan_width", int), "diffaugment": ("diffaugment", tuple),
                    "min_class_records": ("gan_min_class_records", int),
                    "class_balance": ("gan_class_balance", bool)}

    def __post_init__(self):
        if self.gan_classes not in GAN_CLASSES:
            raise ValueError(f"gan_classes must be one of {GAN_CLASSES}, got "
                             f"{self.gan_classes!r}")
        if self.gan_classes == "diagnosis" and not self.conditional:
            raise ValueError("--gan_classes=diagnosis needs --conditional (an unconditional "
                             "GAN draws every diagnosis at once)")
        if self.class_balance and (not self.conditional or len(self.splits) != 1):
            raise ValueError(f"--gan_class_balance needs --conditional and one split in "
                             f"--gan_splits (got conditional={self.conditional}, splits "
                             f"{list(self.splits)}): it balances the classes of one stream")
        if self.min_class_records < 1:
            raise ValueError(f"gan_min_class_records must be >= 1, got {self.min_class_records}")
        if self.architecture not in gan_models.ARCHITECTURES:
            raise ValueError(f"gan_architecture must be one of {gan_models.ARCHITECTURES}, "
                             f"got {self.architecture!r}")
        if self.gan_loss not in gan_models.GAN_LOSSES:
            raise ValueError(f"gan_loss must be one of {gan_models.GAN_LOSSES}, "
                             f"got {self.gan_loss!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = off), got {self.ema_decay}")
        if self.spectral_norm and self.architecture != "deep":
            raise ValueError(f"spectral_norm needs gan_architecture='deep', got "
                             f"{self.architecture!r} (the study's discriminator stays as "
                             "published)")
        if self.disc_depth != 1 and self.architecture != "deep":
            raise ValueError(f"disc_depth needs gan_architecture='deep', got "
                             f"{self.architecture!r}")
        if self.disc_depth < 1:
            raise ValueError(f"disc_depth must be >= 1, got {self.disc_depth}")
        if self.width < 1:
            raise ValueError(f"gan_width must be a positive number of filters, got {self.width}")
        self.diffaugment = augment.parse_diffaugment(self.diffaugment)
        augment.check_settings(self.diffaugment, self.diffaugment_p, self.ada_target)
        if self.r1_gamma < 0:
            raise ValueError(f"r1_gamma must be >= 0 (0 = off), got {self.r1_gamma}")

    def augment_p(self) -> float | None:
        """What DCGAN takes: None for DiffAugment as published (every op on every image)."""
        if self.diffaugment_p == 1.0 and not self.ada_target:
            return None
        return self.diffaugment_p


class DiscriminatorCollapse(RuntimeError):
    """The discriminator rejects every generated image: the generator gets no useful gradient."""


class CollapseGuard:
    """Counts consecutive steps with mean D(G(z)) under a threshold; raises after `patience`.

    Noisy and flipped labels keep D's optimum on fakes above 0 (at the mean fake target), so
    the threshold is that floor plus `margin`.
    """

    def __init__(self, patience: int, margin: float, label_noise: float, label_flip: float):
        self.patience = patience
        floor = label_flip * (1.0 - label_noise / 2) + (1.0 - label_flip) * label_noise / 2
        self.threshold = floor + margin
        self.streak = 0

    def update(self, step: int, d_fake: float, d_loss: float) -> None:
        if not self.patience:
            return
        self.streak = self.streak + 1 if d_fake < self.threshold else 0
        if self.streak >= self.patience:
            raise DiscriminatorCollapse(
                f"discriminator collapse at step {step}: mean D(G(z)) = {d_fake:.4g} (< "
                f"{self.threshold:.4g}) for {self.streak} consecutive steps, D loss {d_loss:.4g}. "
                "The generator no longer learns; lower --disc_learning_rate, raise "
                "--label_noise/--label_flip, or resume from an earlier checkpoint.")


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, a preempted VM) turned into an exception, so the loop saves on exit."""


@contextlib.contextmanager
def _sigterm_raises():
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def handler(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def diagnosis_mapping(config) -> dict | None:
    """The classes of a diagnosis-conditional run (None otherwise): the run's own
    checkpoints/classes.json when it resumes, else fixed from the train split by the CNN
    diagnosis task's rule (trainer.cnn.diagnosis: train diagnoses with >= min_class_records
    records, rarer named ones grouped as `other`, unknown excluded). Raises ValueError naming
    --data_dir when a split to train on holds none of the classes."""
    if config.gan_classes != "diagnosis":
        return None
    from trainer.cnn import diagnosis

    mapping = diagnosis.read_mapping(os.path.join(config.workdir, "checkpoints"))
    if mapping is None:
        try:
            mapping = diagnosis.build_mapping(config.data_dir, config.image_size,
                                              config.min_class_records)
        except ValueError as e:  # fewer than 2 classes
            raise ValueError(f"--data_dir={config.data_dir} with --gan_min_class_records="
                             f"{config.min_class_records}: {e}") from None
    for split in config.splits:
        kept, excluded = diagnosis.split_records(config.data_dir, split, config.image_size,
                                                 mapping)
        if not kept:
            raise ValueError(f"--data_dir={config.data_dir}: split {split!r} holds no record of "
                             f"the classes {mapping['classes']} at {config.image_size}px "
                             f"({excluded} of unknown diagnosis)")
    return mapping


def check_class_balance(config, mapping: dict | None = None) -> None:
    """--gan_class_balance draws every class of the run: ValueError naming --data_dir, the
    split and the records per class when the split to train on lacks one (before any TF
    work, so the program says so in one line)."""
    if not config.class_balance:
        return
    split = config.splits[0]
    if mapping is not None:
        from trainer.cnn import diagnosis

        counts = diagnosis.records_per_class(
            diagnosis.raw_diagnosis_counts(config.data_dir, split, config.image_size), mapping)
    else:
        counts = input_pipeline.class_counts(config.data_dir, split, config.image_size)
        counts = {name: int(counts.get(name, 0)) for name in ("benign", "malignant")}
    if not all(counts.values()):
        raise ValueError(f"--gan_class_balance with --data_dir={config.data_dir}: split "
                         f"{split!r} holds no record of {[k for k, n in counts.items() if not n]} "
                         f"at {config.image_size}px (records per class {counts})")


def make_gan_dataset(config, mapping: dict | None = None) -> tuple[tf.data.Dataset, int]:
    """Infinite (images in [-1, 1], labels) batches of the chosen splits, and steps per epoch.

    Unconditional: every record (labels='all', unknown = -1). Conditional: benign/malignant
    only, or with `mapping` (diagnosis_mapping) the diagnosis class index of every record of a
    known diagnosis; with class_balance each class drawn equally often (an epoch is still as
    many images as the split holds).
    """
    labels = "binary" if config.conditional else "all"
    common = dict(image_size=config.image_size, batch_size=config.batch_size, training=True,
                  cache=config.cache, deterministic=config.deterministic, seed=config.seed,
                  balance_classes=config.class_balance)
    if mapping is not None:
        from trainer.cnn import diagnosis

        records = sum(diagnosis.split_records(config.data_dir, s, config.image_size, mapping)[0]
                      for s in config.splits)

        def make(split, **kwargs):  # the diagnosis stream gives [0, 1]: the GAN's is [-1, 1]
            ds = diagnosis.make_dataset(config.data_dir, split, mapping, **common, **kwargs)
            return ds.map(lambda images, y: (images * 2.0 - 1.0, y))
    else:
        common.update(labels=labels, value_range=(-1.0, 1.0))
        records = sum(input_pipeline.dataset_size(config.data_dir, s, config.image_size, labels)
                      for s in config.splits)

        def make(split, **kwargs):
            return input_pipeline.make_dataset(config.data_dir, split, **common, **kwargs)
    if len(config.splits) == 1:
        dataset = make(config.splits[0], repeat=True, drop_remainder=True)
    else:  # one stream over several splits, re-batched so no batch is short
        parts = [make(s).unbatch() for s in config.splits]
        dataset = parts[0]
        for part in parts[1:]:
            dataset = dataset.concatenate(part)
        dataset = dataset.repeat().batch(config.batch_size, drop_remainder=True)
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    steps = config.steps_per_epoch or max(1, records // config.batch_size)
    return dataset, steps


def build_gan(config, policy: str, mapping: dict | None = None) -> gan_models.DCGAN:
    arch = architecture(config, mapping)
    classes = gan_models.num_classes_of(arch)
    generator = gan_models.build_generator_for(arch)
    if config.architecture == "deep":
        discriminator = gan_models.build_deep_discriminator(
            config.image_size, conditional=config.conditional,
            spectral_norm=config.spectral_norm, width=config.width, depth=config.disc_depth,
            num_classes=classes)
    else:
        discriminator = gan_models.build_discriminator(config.image_size,
                                                       conditional=config.conditional,
                                                       num_classes=classes)
    ema_generator = gan_models.build_generator_for(arch) if config.ema_decay else None
    gan = gan_models.DCGAN(generator, discriminator, config.latent_dim,
                           conditional=config.conditional, label_noise=config.label_noise,
                           label_flip=config.label_flip, seed=config.seed,
                           gan_loss=config.gan_loss, diffaugment=config.diffaugment,
                           ema_generator=ema_generator, ema_decay=config.ema_decay,
                           augment_p=config.augment_p(), ada_target=config.ada_target,
                           r1_gamma=config.r1_gamma)

    def adam(rate: float):
        optimizer = keras.optimizers.Adam(rate, beta_1=config.beta_1, beta_2=config.beta_2)
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    gan.compile(d_optimizer=adam(config.disc_learning_rate),
                g_optimizer=adam(config.gen_learning_rate),
                loss_fn=keras.losses.BinaryCrossentropy(from_logits=True))
    return gan


def architecture(config, mapping: dict | None = None) -> dict:
    """What the sampler needs to rebuild G. The study's run keeps its original three keys;
    a recipe run adds the generator kind, its width and whether EMA weights are saved; a
    diagnosis-conditional run (mapping: diagnosis_mapping) its class names, in label order."""
    arch = {"latent_dim": config.latent_dim, "image_size": config.image_size,
            "conditional": bool(config.conditional)}
    if mapping is not None:
        arch["classes"] = list(mapping["classes"])
    if getattr(config, "architecture", "study") != "study":
        arch.update(generator=config.architecture, width=config.width)
    if getattr(config, "ema_decay", 0.0):
        arch["ema"] = True
    if getattr(config, "disc_depth", 1) != 1:  # not the sampler's; resuming checks it
        arch["disc_depth"] = config.disc_depth
    if getattr(config, "ada_target", 0.0):  # the checkpoint holds p: resuming checks it too
        arch["ada_target"] = config.ada_target
    return arch


def make_checkpoint(gan: gan_models.DCGAN, grid_images: int, seed: int,
                    num_classes: int = gan_models.NUM_CLASSES) -> tf.train.Checkpoint:
    """Both nets, both optimizers, the step counter, the RNG state and the fixed latent batch
    (its labels cycle through the classes)."""
    rng = np.random.default_rng(seed)
    fixed_z = rng.standard_normal((grid_images, gan.latent_dim)).astype(np.float32)
    fixed_labels = (np.arange(grid_images) % num_classes).astype(np.int32)
    extra = {"ema_generator": gan.ema_generator} if gan.ema_generator is not None else {}
    if gan.ada_target:  # the adapted augmentation probability resumes where it was
        extra["augment_p"] = gan.augment_p
    return tf.train.Checkpoint(
        **extra, generator=gan.generator, discriminator=gan.discriminator,
        g_optimizer=gan.g_optimizer, d_optimizer=gan.d_optimizer,
        step=tf.Variable(0, dtype=tf.int64, trainable=False),
        fixed_z=tf.Variable(fixed_z, trainable=False),
        fixed_labels=tf.Variable(fixed_labels, trainable=False),
        seed_state=gan.seed_generator.state)


def check_resume_architecture(config, mapping: dict | None = None) -> None:
    """A workdir that already holds a GAN resumes only with the same architecture; the training
    program calls this before it writes anything, train_gan again before it restores."""
    path = os.path.join(config.workdir, "checkpoints", run_folder.GAN_CONFIG_NAME)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            found = json.load(f)
        wanted = architecture(config, mapping)
        if found != wanted:
            raise ValueError(f"workdir holds a GAN with {found}, but the flags ask for {wanted}; "
                             "use another --workdir or the same architecture flags")


def _resumes(config) -> bool:
    return tf.train.latest_checkpoint(os.path.join(config.workdir, "checkpoints")) is not None


def init_generator_source(config, mapping: dict | None = None) -> tuple[str, dict] | None:
    """--init_generator_from as a fresh run takes it: (checkpoint prefix, architecture) once the
    source is a GAN run whose G the new one can grow from (grow.check_compatible); None without
    the flag, or when the run resumes (then its own checkpoint wins). The training program
    calls this before it writes anything, train_gan again before it copies."""
    if not config.init_generator_from or _resumes(config):
        return None
    from trainer.gan import sampling

    prefix, source = sampling.resolve_checkpoint(config.init_generator_from)
    try:
        grow.check_compatible(source, architecture(config, mapping))
    except ValueError as e:
        raise ValueError(f"--init_generator_from={config.init_generator_from}: {e}") from None
    return prefix, source


def _source_progress(prefix: str) -> dict:
    """The source checkpoint's step and, where its run's history has that step, the training
    CPU seconds it took: what the grown run's own clock leaves out."""
    step = int(tf.train.load_checkpoint(prefix).get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))
    workdir = os.path.dirname(os.path.dirname(os.path.abspath(prefix)))
    history = run_folder.read_history(os.path.join(workdir, run_folder.HISTORY_NAME))
    cpu = [e.get("train_cpu_s") for e in history if e.get("step") == step]
    return {"source_step": step, "source_train_cpu_s": cpu[0] if cpu else None}


def init_generator(gan: gan_models.DCGAN, config, source: tuple[str, dict]) -> dict:
    """Starts a fresh run's G (and its EMA) from the generator of `source` (what
    init_generator_source returned): its EMA weights when it kept them, as the sampler loads
    them. Writes and returns the record of which layers were copied and which are new
    (checkpoints/init_generator.json)."""
    from trainer.gan import sampling

    prefix, source_arch = source
    generator, _ = sampling.load_generator(prefix)
    layers = grow.transfer_weights(generator, gan.generator)
    gan.restart_ema()
    record = {"from": os.path.abspath(config.init_generator_from),
              "checkpoint": os.path.abspath(prefix),
              "weights": "ema_generator" if source_arch.get("ema") else "generator",
              **_source_progress(prefix), "source_image_size": source_arch["image_size"],
              "image_size": config.image_size, **layers}
    ckpt_dir = os.path.join(config.workdir, "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    run_folder.write_json(os.path.join(ckpt_dir, grow.RECORD_NAME), record)
    logging.info("generator grown from %s (%s, %d px -> %d px): copied %s; new %s%s", prefix,
                 record["weights"], record["source_image_size"], record["image_size"],
                 ", ".join(layers["copied"]), ", ".join(layers["new"]) or "none",
                 "; other shapes, left fresh: " + ", ".join(layers["shape_differs"])
                 if layers["shape_differs"] else "")
    return record


def save_grid(gan: gan_models.DCGAN, checkpoint: tf.train.Checkpoint, path: str) -> np.ndarray:
    """Draws the fixed latent batch (inference mode, EMA weights when kept) into one PNG grid;
    returns the grid."""
    images = gan.generate_for_sampling(checkpoint.fixed_z, checkpoint.fixed_labels)
    grid = tile_images(gan_models.to_uint8(images))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(grid).save(path)
    return grid


def train_gan(config: GanConfig) -> dict:
    """Trains (or resumes) a DCGAN in config.workdir; returns the run summary."""
    policy = runtime.configure_mixed_precision(config.mixed_precision)
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    mapping = diagnosis_mapping(config)
    if mapping is not None:  # which diagnoses share the `other` class is a choice to see
        print(f"classes {mapping['classes']}; grouped as other (< {mapping['min_records']} train "
              f"records): {mapping['grouped_as_other'] or 'none'}", flush=True)
    dataset, steps_per_epoch = make_gan_dataset(config, mapping)
    gan = build_gan(config, policy, mapping)
    arch = architecture(config, mapping)
    checkpoint = make_checkpoint(gan, config.grid_images, config.seed,
                                 gan_models.num_classes_of(arch))
    ckpt_dir = os.path.join(config.workdir, "checkpoints")
    manager = tf.train.CheckpointManager(checkpoint, ckpt_dir, config.keep_checkpoints)
    config_path = os.path.join(ckpt_dir, run_folder.GAN_CONFIG_NAME)
    check_resume_architecture(config, mapping)
    source = init_generator_source(config, mapping)  # refused before anything is written
    if manager.latest_checkpoint:
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        logging.info("resumed from %s at step %d", manager.latest_checkpoint,
                     int(checkpoint.step))
        if gan.ada_target:  # --diffaugment_p only sets where a new run starts
            logging.info("ADA resumes at augment_p %.4f", float(gan.augment_p))
        if config.init_generator_from:
            logging.info("--init_generator_from=%s ignored: the run resumes from its own "
                         "checkpoint", config.init_generator_from)
    os.makedirs(ckpt_dir, exist_ok=True)
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(arch, f, sort_keys=True)
    init_path = os.path.join(ckpt_dir, grow.RECORD_NAME)
    if source is not None:  # a fresh run with --init_generator_from
        grown = init_generator(gan, config, source)
    elif os.path.exists(init_path):  # a resumed grown run still says where G started
        with open(init_path, encoding="utf-8") as f:
            grown = json.load(f)
    else:
        grown = None
    if mapping is not None:  # beside gan_config.json: sample and evaluate read the same classes
        from trainer.cnn import diagnosis

        diagnosis.write_mapping(ckpt_dir, mapping)

    train_step = tf.function(gan.train_step, jit_compile=config.jit_compile,
                             reduce_retracing=True)
    logdir = os.path.join(config.workdir, "logs")
    writer = tf.summary.create_file_writer(logdir)
    history_path = os.path.join(config.workdir, run_folder.HISTORY_NAME)
    history = run_folder.read_history(history_path)
    profile = runtime.parse_profile_steps(config.profile_steps)
    guard = CollapseGuard(config.collapse_patience, config.collapse_d_fake,
                          config.label_noise, config.label_flip)
    meter = runtime.StepTimeMeter()
    iterator = iter(dataset)
    step = int(checkpoint.step)
    saved_at, profiling, first_step = step, False, step
    # Training time so far, kept across resumes: curves of quality against time read it.
    clock = runtime.TrainingClock.resume(history[-1] if history else None)
    # This run's wall time (the summary's wall_s), against --max_train_minutes if set.
    budget, stopped_after = runtime.TrainingBudget(config.max_train_minutes), None
    with _sigterm_raises():  # kill/preemption: save a checkpoint like Ctrl-C does
        try:
            for epoch in range(step // steps_per_epoch, config.epochs):
                for metric in gan.metrics:
                    metric.reset_state()
                meter.reset()
                while step < (epoch + 1) * steps_per_epoch:
                    if profile and step + 1 == profile[0]:
                        tf.profiler.experimental.start(logdir)
                        profiling = True
                    # The step marker makes the step visible to TensorBoard's Profile tab.
                    with runtime.step_marker("train", step + 1):
                        meter.begin_step()
                        batch = meter.next(iterator)
                        # float() waits for the step to finish, so the step time is honest.
                        logs = {k: float(v) for k, v in train_step(batch).items()}
                        meter.end_step(config.batch_size)
                    step += 1
                    checkpoint.step.assign(step)
                    if profiling and step >= profile[1]:
                        tf.profiler.experimental.stop()
                        profiling = False
                    runtime.raise_if_not_finite(logs["step_d_loss"], "discriminator loss", step)
                    runtime.raise_if_not_finite(logs["step_g_loss"], "generator loss", step)
                    guard.update(step, logs["step_d_fake"], logs["step_d_loss"])
                    if config.checkpoint_every and step % config.checkpoint_every == 0:
                        manager.save(checkpoint_number=step)
                        saved_at = step
                record = _end_epoch(gan, checkpoint, config.workdir, writer, epoch + 1, step,
                                    logs, {**meter.summary(), **clock.totals()})
                history.append(record)
                run_folder.write_history(history_path, history)
                if budget.exhausted():  # --max_train_minutes: this run's wall time
                    stopped_after = epoch + 1
                    logging.info("time budget of %.1f min used up: stopping after epoch %d",
                                 config.max_train_minutes, stopped_after)
                    break
        except (FloatingPointError, DiscriminatorCollapse):
            saved_at = step  # the weights are broken or useless: keep the last good checkpoint
            raise
        finally:
            if profiling:
                tf.profiler.experimental.stop()
            if step > saved_at:  # on normal exit, Ctrl-C and SIGTERM
                manager.save(checkpoint_number=step)
            writer.flush()
    return {"policy": policy, "steps": step, "steps_this_run": step - first_step,
            "steps_per_epoch": steps_per_epoch, "epochs": config.epochs,
            "wall_s": round(budget.elapsed_s(), 2),
            "stopped_by_time_budget_after_epoch": stopped_after,
            "last_checkpoint": manager.latest_checkpoint,
            "init_generator": grown,
            "last_epoch": history[-1] if history else None}


def _end_epoch(gan, checkpoint, workdir: str, writer, epoch: int, step: int, logs: dict,
               timing: dict) -> dict:
    """Grid PNG, TensorBoard scalars and image, one log line; returns the history record."""
    grid = save_grid(gan, checkpoint, os.path.join(workdir, "samples", f"epoch_{epoch:04d}.png"))
    scalars = [k for k in ("d_loss", "g_loss", "d_real", "d_fake", "r1", "augment_p")
               if k in logs]  # r1 and augment_p only when the run uses them
    record = {"epoch": epoch, "step": step, **{k: logs[k] for k in scalars}, **timing}
    with writer.as_default(step=step):
        for name in scalars:
            tf.summary.scalar(f"gan/{name}", logs[name])
        for name in ("step_time_s", "input_wait_share", "images_per_s", "train_cpu_s"):
            if timing.get(name) is not None:  # train_cpu_s is unknown after some resumes
                tf.summary.scalar(f"timing/{name}", timing[name])
        tf.summary.image("fixed_latent_grid", grid[None], max_outputs=1)
    logging.info("epoch %d step %d: D loss %.4f, G loss %.4f, D(x) %.3f, D(G(z)) %.3f, "
                 "%.3f s/step, input wait %.1f%%%s", epoch, step, logs["d_loss"], logs["g_loss"],
                 logs["d_real"], logs["d_fake"], timing["step_time_s"],
                 100 * timing["input_wait_share"],
                 "".join(f", {k} {logs[k]:.4g}" for k in ("r1", "augment_p") if k in logs))
    return record
