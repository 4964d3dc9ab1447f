"""DCGAN trainer and sampler: `python -m trainer.dcgan --flagfile=configs/dcgan.flags` trains;
`python -m trainer.dcgan sample --checkpoint=RUN --num=N --out=DIR [--format=png|tfrecord]`
writes N generated images (N per class when conditional).

Training is a plain loop around DCGAN.train_step (one tf.function), which keeps step timing,
input-wait share, checkpoints every N steps and the NaN/collapse guards in one readable place.
A run folder (--workdir) holds checkpoints/ (both nets, both optimizers, the step counter and
the fixed latent batch), samples/epoch_XXXX.png, logs/ (TensorBoard) and history.json;
running the same command again resumes from the last checkpoint with the same latent batch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys

from absl import app, flags, logging

from trainer.core import flags as core_flags  # noqa: F401  (defines data_dir, workdir, ...)
from trainer.gan import augment, training

_TRAIN = "training (python -m trainer.dcgan --flagfile=...)"
flags.DEFINE_integer("latent_dim", 100, "Length of the generator's N(0, 1) input vector.")
flags.DEFINE_float("gen_learning_rate", 1e-4, "Adam learning rate of the generator.")
flags.DEFINE_float("disc_learning_rate", 1e-4, "Adam learning rate of the discriminator.")
flags.DEFINE_float("beta_1", 0.5, "Adam beta_1 for both networks (0.5 as Radford et al.).")
flags.DEFINE_float("beta_2", 0.999, "Adam beta_2 for both networks.")
flags.DEFINE_float("label_noise", 0.1, "Discriminator targets move towards 0.5 by up to this "
                   "much (uniform): 1 -> [1-x, 1], 0 -> [0, x].", lower_bound=0.0, upper_bound=0.49)
flags.DEFINE_float("label_flip", 0.05, "Share of the discriminator's targets swapped "
                   "(real <-> fake) each step.", lower_bound=0.0, upper_bound=0.49)
flags.DEFINE_bool("conditional", False, "Class-conditional GAN (benign/malignant); trains on "
                  "records with a known label only.")
flags.DEFINE_list("gan_splits", ["train"], "Dataset splits to train on, e.g. train,validation.")
flags.DEFINE_integer("checkpoint_every", 500, "Save a checkpoint every N steps (and always on "
                     "exit); 0 = only on exit.", lower_bound=0)
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept on disk.", lower_bound=1)
flags.DEFINE_integer("grid_images", 16, "Size of the fixed latent batch drawn every epoch.",
                     lower_bound=1)
flags.DEFINE_integer("collapse_patience", 500, "Stop when the discriminator rejects every "
                     "generated image (D(G(z)) below the threshold) for this many consecutive "
                     "steps; 0 = never.", lower_bound=0)
flags.DEFINE_float("collapse_d_fake", 0.02, "Collapse threshold on mean D(G(z)), added to the "
                   "floor that label_noise/label_flip put under D(G(z)).", lower_bound=0.0)
# --- the recipe (issue #13); each default keeps the study's DCGAN ---
flags.DEFINE_enum("gan_architecture", "study", ["study", "deep"], "study: the 2020 study's "
                  "DCGAN; deep: upsampling generator from 4x4 with BatchNorm and a stride-2 "
                  "conv discriminator down to 4x4 (image_size 4*2^k).")
flags.DEFINE_integer("gan_width", 32, "deep only: G starts at 8x this many channels (halving "
                     "per block, floor 1x), D starts at 1x (doubling, cap 8x).", lower_bound=1)
flags.DEFINE_integer("disc_depth", 1, "deep only: discriminator convs per resolution; 1 = one "
                     "stride-2 4x4 conv, 2 = a stride-1 3x3 conv before each (SN-GAN's "
                     "standard CNN).", lower_bound=1)
flags.DEFINE_bool("spectral_norm", False, "deep only: spectral normalisation on every "
                  "discriminator conv/dense layer.")
flags.DEFINE_list("diffaugment", [], "DiffAugment ops applied to real and fake images in "
                  "train_step: any of color,translation,cutout; empty = off.")
flags.DEFINE_float("diffaugment_p", 1.0, "Probability that each --diffaugment op is applied to "
                   "an image (1 = every image, DiffAugment as published); with --ada_target, "
                   "where p starts (ADA starts at 0: pass --diffaugment_p=0).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float("ada_target", 0.0, "ADA (Karras et al. 2020): adapt --diffaugment_p every "
                   "step so that E[sign(D(real))] tracks this value (0.6 in ADA; below 1); "
                   "0 = p fixed. Recorded in gan_config.json: a resume must keep it.",
                   lower_bound=0.0)
flags.DEFINE_float("r1_gamma", 0.0, "R1 penalty weight: gamma/2 * E||grad_x D(x)||^2 on the "
                   "(augmented) real images; 0 = off.", lower_bound=0.0)
flags.DEFINE_enum("gan_loss", "bce", ["bce", "nonsaturating", "hinge"], "bce: the study's "
                  "cross-entropy with noisy/flipped targets; nonsaturating (softplus) and hinge "
                  "ignore --label_noise/--label_flip.")
flags.register_validator("diffaugment", lambda v: all(o in augment.DIFFAUGMENT_OPS for o in v),
                         message="ops must be among color,translation,cutout (empty = off)")
FLAGS = flags.FLAGS

# The study's batch 64 at 128x128: GanConfig's defaults for the shared flags.
STUDY_DEFAULTS = {f.name: f.default for f in dataclasses.fields(training.GanConfig)
                  if f.name in ("batch_size", "image_size", "epochs")}


def main(argv: list[str]) -> None:
    if len(argv) > 2 or (len(argv) == 2 and argv[1] != "sample"):
        raise app.UsageError(f"unknown arguments {argv[1:]}; the only subcommand is 'sample'")
    if len(argv) == 2:
        if not FLAGS.checkpoint or not FLAGS.out:
            raise app.UsageError("sample needs --checkpoint and --out")
        from trainer.gan import sampling
        classes = None if FLAGS.sample_class == "both" else (FLAGS.sample_class,)
        written = sampling.sample_to_dir(FLAGS.checkpoint, FLAGS.num, FLAGS.out,
                                         image_format=FLAGS.format, classes=classes,
                                         seed=FLAGS.seed)
        logging.info("wrote %d images to %s", written, FLAGS.out)
        return
    if not FLAGS.data_dir or not FLAGS.workdir:
        raise app.UsageError(f"{_TRAIN} needs --data_dir and --workdir")
    summary = training.train_gan(training.GanConfig.from_flags())
    print(json.dumps(summary, indent=1, sort_keys=True))


def _set_study_defaults() -> None:
    """The study's batch 64 at 128x128, set here so other trainers keep their own defaults."""
    for name, value in STUDY_DEFAULTS.items():
        FLAGS.set_default(name, value)


def _define_sample_flags() -> None:
    """Only when run as a program: generic names (--out, --num) would clash on import with
    other tools' flags (trainer.cnn.visualize defines --out the same way)."""
    flags.DEFINE_string("checkpoint", None, "sample: run folder, checkpoints folder or "
                        "checkpoint prefix (latest checkpoint of a folder).")
    flags.DEFINE_integer("num", 64, "sample: images to write (per class when conditional).",
                         lower_bound=1)
    flags.DEFINE_string("out", None, "sample: output folder.")
    flags.DEFINE_enum("format", "png", ["png", "tfrecord"], "sample: PNG files, or TFRecords "
                      "in the record schema with a manifest (a dataset make_dataset can read).")
    flags.DEFINE_enum("sample_class", "both", ["both", "benign", "malignant"], "sample: "
                      "class(es) to generate with a conditional generator.")


def run() -> None:
    _define_sample_flags()
    _set_study_defaults()
    app.run(main)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(run())
