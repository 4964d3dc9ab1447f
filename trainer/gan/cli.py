"""Trains a GAN (the 2020 study's DCGAN by default; the deep/SN/ADA/R1/EMA recipe by flags) on a
dataset written by beam_jobs.preprocess, in a run folder (--workdir) that the same command
resumes: checkpoints/, samples/epoch_XXXX.png, logs/ (TensorBoard) and history.json.

    python -m trainer.gan --flagfile=configs/dcgan.flags

Training is a plain loop around DCGAN.train_step (trainer.gan.training), which keeps step
timing, input-wait share, checkpoints every N steps and the NaN/collapse guards in one place.
"""
from __future__ import annotations

import json
import os

from absl import flags

from trainer.core import flags as core_flags  # noqa: F401  (the trainers' shared flags)
from trainer.core import program
from trainer.gan import inputs

PROG = "trainer.gan"
# The study's batch 64 at 128x128 for the shared flags (GanConfig's defaults, which a test
# holds equal): set by run() only, so the CNN trainer keeps its own defaults in one process.
STUDY_DEFAULTS = {"image_size": 128, "batch_size": 64, "epochs": 100}


def define_flags() -> None:
    if "latent_dim" in flags.FLAGS:  # defined already (run() called twice)
        return
    flags.DEFINE_integer("latent_dim", 100, "Length of the generator's N(0, 1) input vector.")
    flags.DEFINE_float("gen_learning_rate", 1e-4, "Adam learning rate of the generator.")
    flags.DEFINE_float("disc_learning_rate", 1e-4, "Adam learning rate of the discriminator.")
    flags.DEFINE_float("beta_1", 0.5, "Adam beta_1 for both networks (0.5 as Radford et al.).")
    flags.DEFINE_float("beta_2", 0.999, "Adam beta_2 for both networks.")
    flags.DEFINE_float("label_noise", 0.1, "Discriminator targets move towards 0.5 by up to "
                       "this much (uniform): 1 -> [1-x, 1], 0 -> [0, x].", lower_bound=0.0,
                       upper_bound=0.49)
    flags.DEFINE_float("label_flip", 0.05, "Share of the discriminator's targets swapped "
                       "(real <-> fake) each step.", lower_bound=0.0, upper_bound=0.49)
    flags.DEFINE_bool("conditional", False, "Class-conditional GAN on --gan_classes; trains "
                      "on records of those classes only.")
    flags.DEFINE_enum("gan_classes", "binary", ["binary", "diagnosis"], "With --conditional: "
                      "binary = benign/malignant; diagnosis = the normalised diagnosis, classes "
                      "fixed from train and saved in checkpoints/classes.json.")
    flags.DEFINE_integer("gan_min_class_records", 300, "--gan_classes=diagnosis: train "
                         "diagnoses with fewer records are grouped as `other` (the CNN's "
                         "--min_class_records rule); on HAM10000's 4,188 train images at 64 px "
                         "300 gives nevus, benign_keratosis, melanoma, other.", lower_bound=1)
    flags.DEFINE_bool("gan_class_balance", False, "With --conditional: real batches draw every "
                      "class equally often (one repeated stream per class), so each class, "
                      "its rare ones too, gets an equal share of G's and D's updates (fake "
                      "labels follow the real batch's). One split only.")
    flags.DEFINE_list("gan_splits", ["train"], "Dataset splits to train on, e.g. "
                      "train,validation.")
    flags.DEFINE_integer("checkpoint_every", 500, "Save a checkpoint every N steps (and always "
                         "on exit); 0 = only on exit.", lower_bound=0)
    flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept on disk.", lower_bound=1)
    flags.DEFINE_integer("grid_images", 16, "Size of the fixed latent batch drawn every epoch.",
                         lower_bound=1)
    flags.DEFINE_integer("collapse_patience", 500, "Stop when the discriminator rejects every "
                         "generated image (D(G(z)) below the threshold) for this many "
                         "consecutive steps; 0 = never.", lower_bound=0)
    flags.DEFINE_float("collapse_d_fake", 0.02, "Collapse threshold on mean D(G(z)), added to "
                       "the floor that label_noise/label_flip put under D(G(z)).",
                       lower_bound=0.0)
    # --- the recipe; each default keeps the study's DCGAN ---
    flags.DEFINE_enum("gan_architecture", "study", ["study", "deep"], "study: the 2020 study's "
                      "DCGAN; deep: upsampling generator from 4x4 with BatchNorm and a stride-2 "
                      "conv discriminator down to 4x4 (image_size 4*2^k).")
    flags.DEFINE_integer("gan_width", 32, "deep only: G starts at 8x this many channels "
                         "(halving per block, floor 1x), D starts at 1x (doubling, cap 8x).",
                         lower_bound=1)
    flags.DEFINE_integer("disc_depth", 1, "deep only: discriminator convs per resolution; 1 = "
                         "one stride-2 4x4 conv, 2 = a stride-1 3x3 conv before each (SN-GAN's "
                         "standard CNN).", lower_bound=1)
    flags.DEFINE_bool("spectral_norm", False, "deep only: spectral normalisation on every "
                      "discriminator conv/dense layer.")
    flags.DEFINE_list("diffaugment", [], "DiffAugment ops applied to real and fake images in "
                      "train_step: any of color,translation,cutout; empty = off.")
    flags.DEFINE_float("diffaugment_p", 1.0, "Probability that each --diffaugment op is "
                       "applied to an image (1 = every image, DiffAugment as published); with "
                       "--ada_target, where p starts (ADA starts at 0: pass --diffaugment_p=0).",
                       lower_bound=0.0, upper_bound=1.0)
    flags.DEFINE_float("ada_target", 0.0, "ADA (Karras et al. 2020): adapt --diffaugment_p "
                       "every step so that E[sign(D(real))] tracks this value (0.6 in ADA; "
                       "below 1); 0 = p fixed. Recorded in gan_config.json: a resume must keep "
                       "it.", lower_bound=0.0)
    flags.DEFINE_float("r1_gamma", 0.0, "R1 penalty weight: gamma/2 * E||grad_x D(x)||^2 on "
                       "the (augmented) real images; 0 = off.", lower_bound=0.0)
    flags.DEFINE_enum("gan_loss", "bce", ["bce", "nonsaturating", "hinge"], "bce: the study's "
                      "cross-entropy with noisy/flipped targets; nonsaturating (softplus) and "
                      "hinge ignore --label_noise/--label_flip.")
    flags.DEFINE_string("init_generator_from", "", "deep only: a fresh run's generator starts "
                        "from this smaller run's (its folder; EMA weights if it kept them): "
                        "every layer of the same shape is copied, the new upsampling blocks "
                        "and D start fresh (trainer.gan.grow). Same latent_dim, width and "
                        "classes, image_size smaller by a power of 2. Ignored on resume.")


def set_study_defaults() -> None:
    for name, value in STUDY_DEFAULTS.items():
        flags.FLAGS.set_default(name, value)


def main(argv: list[str]) -> None:
    values = flags.FLAGS
    if os.environ.get("TF_CONFIG", "").strip():  # a cluster scheduler's: refused, not ignored
        program.fail(f"TF_CONFIG={os.environ['TF_CONFIG']}: the GAN trains in one process only "
                     "(its own training step runs without a tf.distribute strategy); unset it")
    inputs.folder_to_write("workdir", values.workdir, "the run folder to create, or to resume")
    if values["learning_rate"].present:  # a shared flag the GAN has no use for
        program.fail("--learning_rate is the CNN's: the GAN takes --gen_learning_rate and "
                     "--disc_learning_rate")
    binary = values.conditional and values.gan_classes == "binary"
    inputs.dataset(values.data_dir, values.image_size, values.gan_splits,
                   labels="binary" if binary else "all")
    from trainer.gan import training  # TensorFlow: only once the inputs are known to be good

    config = inputs.checked(None, training.GanConfig.from_flags)
    mapping = inputs.checked(None, training.diagnosis_mapping, config)
    inputs.checked(None, training.check_class_balance, config, mapping)
    inputs.checked("workdir", training.check_resume_architecture, config, mapping)
    inputs.checked("init_generator_from", training.init_generator_source, config, mapping)
    summary = training.train_gan(config)
    print(json.dumps(summary, indent=1, sort_keys=True))


def run(argv: list[str] | None = None) -> None:
    define_flags()
    set_study_defaults()
    program.run(main, prog=PROG, doc=__doc__, flag_modules=[__name__, core_flags.__name__],
                argv=argv)
