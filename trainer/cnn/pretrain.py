"""Pretrain a CNN's encoder on a dataset's images without their labels (SimCLR,
trainer.cnn.contrastive), for `python -m trainer.cnn --init_encoder=RUN` to start from.

    python -m trainer.cnn.pretrain --data_dir=DATASET --workdir=RUN --architecture=compact \
        --image_size=64 --epochs=150 --batch_size=256 --optimizer=adamw --learning_rate=1e-3 \
        --lr_schedule=cosine --warmup_epochs=10 [--temperature=0.2] [--weight_decay=0.05] \
        [--pretrain_splits=train] [--seed=42] [--deterministic]

Every record of --pretrain_splits is used, labelled or not (labels are never read), so a
download with no labels at all can pretrain. --architecture, --width_multiplier,
--color_constancy and --center_crop are trainer.cnn's and must match the classifier that
loads the encoder (it refuses another); --optimizer, --weight_decay, --lr_schedule and
--warmup_epochs mean what they mean there (their defaults are the study's RMSprop at a
constant rate; the launch line above gives AdamW + cosine). Writes encoder.keras (the
classifier's layers up to its pooled features), pretrain_summary.json (settings, images per
split and source, time, last loss and pair accuracy) and history.json (per epoch: loss,
pair_accuracy, learning rate). A new run folder each time: pretraining does not resume.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

from absl import flags

from trainer.cnn import cli
from trainer.core import flags as core_flags, program, run_folder  # noqa: F401  (shared flags)

FLAGS = flags.FLAGS
# trainer.cnn's own flags that pretraining reads; any other given is refused, not ignored.
CNN_FLAGS_USED = ("architecture", "width_multiplier", "color_constancy", "center_crop",
                  "optimizer", "weight_decay", "lr_schedule", "warmup_epochs")
# What --help lists after this program's own flags: the shared and trainer.cnn flags it reads.
HELP_FLAGS = ("data_dir", "workdir", "image_size", "batch_size", "epochs", "learning_rate",
              "seed", "deterministic", *CNN_FLAGS_USED)


def define_flags() -> None:
    cli.define_flags()
    if "temperature" in FLAGS:
        return
    flags.DEFINE_float("temperature", 0.2, "Softmax temperature of the contrastive loss "
                       "(trainer.cnn.contrastive.nt_xent_loss); smaller weighs the hardest "
                       "other images more.", lower_bound=1e-3)
    flags.DEFINE_list("pretrain_splits", ["train"], "The dataset's splits whose images are "
                      "learned from (every record, labels unread). Add validation,test only "
                      "for a dataset the classifier will not be evaluated on: images that "
                      "shaped the encoder are not unseen images.")


def _refuse_unused_flags() -> None:
    """A trainer.cnn or shared flag pretraining does not read is refused, not ignored."""
    given = [flag.name for module in ("trainer.cnn.cli", "trainer.core.flags")
             for flag in FLAGS.get_flags_for_module(module)
             if flag.present and flag.name not in HELP_FLAGS]
    if given:
        program.fail("pretraining does not use --" + ", --".join(sorted(set(given)))
                     + f"; of trainer.cnn's flags it reads --{', --'.join(HELP_FLAGS)}")


def main(argv: Sequence[str]) -> None:
    del argv
    _refuse_unused_flags()
    from trainer.cnn import config as config_lib
    from trainer.cnn.data import read_manifest_or_fail

    manifest = read_manifest_or_fail("--data_dir", FLAGS.data_dir)
    if os.path.exists(FLAGS.workdir) and os.listdir(FLAGS.workdir):
        program.fail(f"--workdir={FLAGS.workdir} is not empty: pretraining does not resume; "
                     "give a new folder")
    if FLAGS.epochs < 1 or FLAGS.batch_size < 2:
        program.fail(f"--epochs={FLAGS.epochs} and --batch_size={FLAGS.batch_size} must be "
                     ">= 1 and >= 2")
    import keras

    from isicflow import dataset as dataset_lib, reader
    from trainer.cnn import contrastive, pretrained_encoder, recipe
    from trainer.core import runtime

    try:
        stream, images = contrastive.view_pairs(FLAGS.data_dir, FLAGS.image_size,
                                                FLAGS.batch_size, FLAGS.seed,
                                                FLAGS.pretrain_splits, manifest)
        keras.utils.set_random_seed(FLAGS.seed)
        if FLAGS.deterministic:
            import tensorflow as tf

            tf.config.experimental.enable_op_determinism()
        encoder = contrastive.build_encoder(FLAGS.architecture, FLAGS.image_size,
                                            FLAGS.width_multiplier, FLAGS.color_constancy,
                                            FLAGS.center_crop)
    except (contrastive.PretrainError, ValueError) as e:
        program.fail(str(e))
    steps = images // FLAGS.batch_size
    model = contrastive.ContrastiveModel(encoder,
                                         contrastive.build_projector(encoder.output.shape[-1]),
                                         FLAGS.temperature, name="contrastive")
    rate = recipe.learning_rate(FLAGS.learning_rate, FLAGS.lr_schedule, FLAGS.epochs * steps,
                                round(FLAGS.warmup_epochs * steps))
    model.compile(optimizer=recipe.make_optimizer(FLAGS.optimizer, rate, FLAGS.weight_decay))
    os.makedirs(FLAGS.workdir, exist_ok=True)
    entries: list[dict] = []
    clock = runtime.TrainingClock()

    def record(epoch, logs):
        loss = float(logs["loss"])
        runtime.raise_if_not_finite(loss, "contrastive loss", (epoch + 1) * steps)
        entries.append({"epoch": epoch + 1, "loss": loss,
                        "pair_accuracy": float(logs["pair_accuracy"]),
                        "learning_rate": recipe.current_learning_rate(model.optimizer),
                        **clock.totals()})
        run_folder.write_history(os.path.join(FLAGS.workdir, run_folder.HISTORY_NAME), entries)

    print(f"pretraining the {FLAGS.architecture} encoder ({encoder.count_params():,} "
          f"parameters) on {images} images of {FLAGS.data_dir} ({steps} steps of "
          f"{FLAGS.batch_size} pairs an epoch, {FLAGS.epochs} epochs)", flush=True)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        model.fit(stream, epochs=FLAGS.epochs, steps_per_epoch=steps, verbose=2,
                  shuffle=False, callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=record)])
    except FloatingPointError as e:
        program.fail(f"{str(e).split(';')[0]}; stopped. Lower --learning_rate or raise "
                     "--temperature")
    encoder.save(os.path.join(FLAGS.workdir, contrastive.ENCODER_NAME))
    counts = contrastive.pretraining_splits(manifest, FLAGS.image_size, FLAGS.pretrain_splits)
    pretrained_encoder.write_image_ids(FLAGS.workdir, [
        i for split in counts
        for i in reader.field_values(FLAGS.data_dir, split, FLAGS.image_size, "image_id",
                                     manifest)])
    per_source = {split: dataset_lib.records_per_source(manifest, split) for split in counts}
    summary = {
        "config": {"architecture": FLAGS.architecture,
                   "width_multiplier": FLAGS.width_multiplier,
                   "color_constancy": FLAGS.color_constancy, "center_crop": FLAGS.center_crop,
                   "image_size": FLAGS.image_size, "epochs": FLAGS.epochs,
                   "batch_size": FLAGS.batch_size, "learning_rate": FLAGS.learning_rate,
                   "optimizer": FLAGS.optimizer,
                   "weight_decay": (config_lib.DEFAULT_ADAMW_WEIGHT_DECAY
                                    if FLAGS.weight_decay is None and FLAGS.optimizer == "adamw"
                                    else FLAGS.weight_decay),
                   "lr_schedule": FLAGS.lr_schedule, "warmup_epochs": FLAGS.warmup_epochs, "temperature": FLAGS.temperature,
                   "seed": FLAGS.seed, "data_dir": FLAGS.data_dir,
                   "splits": list(counts)},
        "method": "SimCLR (NT-Xent) on two contrastive_augment views per image",
        "images": images, "images_per_split": counts, "images_per_split_and_source": per_source,
        "encoder_parameters": int(encoder.count_params()), "started": started,
        "last_epoch": entries[-1] if entries else None}
    run_folder.write_json(os.path.join(FLAGS.workdir, contrastive.SUMMARY_NAME), summary)
    print(f"encoder: {os.path.join(FLAGS.workdir, contrastive.ENCODER_NAME)} (loss "
          f"{entries[-1]['loss']:.3f}, pair accuracy {entries[-1]['pair_accuracy']:.3f})")


def run(argv: Sequence[str] | None = None) -> None:
    define_flags()
    core_flags.require_run_folders()
    program.run(main, prog="trainer.cnn.pretrain", doc=__doc__, argv=argv,
                flag_modules=[__name__], help_flags=HELP_FLAGS)


if __name__ == "__main__":
    run()
