"""Evaluates a trained GAN against the real images it learned from: FID and KID on a named
feature extractor (with held-out real images as the floor), a classifier two-sample test with
its 95% interval, a memorization check, and the PCA, real-vs-generated, interpolation and
closest-pair figures, written to --output (gan_eval.json, gan_eval.md, *.png).

    python -m trainer.gan.evaluate --flagfile=configs/gan_eval.flags
    python -m trainer.gan.evaluate --model=out/runs/dcgan --data_dir=out/uda1 \\
        --output=out/runs/dcgan/eval
    python -m trainer.gan.evaluate --flagfile=configs/gan_eval.flags \\
        --model=out/runs/gan-grow-128-diag --data_dir=out/real --output=out/eval-128 \\
        --classifier=out/runs/cnn-diag4-real-64    # a diagnosis-conditional GAN's classes

The evaluation itself is trainer.gan.evaluation; this module is the program (its flags).
"""
from __future__ import annotations

import sys

from absl import flags

from isicflow.dataset import SPLITS
from trainer.core import program
from trainer.gan import features, inputs

PROG = "trainer.gan.evaluate"


def _valid_range(values: list[str]) -> bool:
    try:
        low, high = (float(v) for v in values)
    except ValueError:
        return False
    return low < high


def define_common_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The flags this program shares with trainer.gan.curve: real data, features, output."""
    fv = flag_values
    flags.DEFINE_string("data_dir", None, "Dataset folder (manifest.json) the GAN trained on, "
                        "holding images at the GAN's size.", flag_values=fv)
    flags.DEFINE_string("output", None, "Folder the report and figures are written to.",
                        flag_values=fv)
    flags.DEFINE_integer("num_generated", 200, "Generated images to evaluate (split evenly "
                         "between classes when conditional; a diagnosis-conditional run's "
                         "overall set in the train split's class shares, and this many of each "
                         "class for its per-class scores).", lower_bound=4, flag_values=fv)
    flags.DEFINE_integer("max_real", 5000, "Cap on real images loaded per role.",
                         lower_bound=4, flag_values=fv)
    flags.DEFINE_enum("feature_extractor", "auto", ["auto", *features.EXTRACTORS], "auto: "
                      "inception if --inception_weights, else cnn if --feature_model, else "
                      "random_conv (trainer/gan/features.py).", flag_values=fv)
    flags.DEFINE_string("inception_weights", "", "Local InceptionV3 no-top weights file "
                        "(FID/KID comparable with papers); never downloaded.", flag_values=fv)
    flags.DEFINE_string("feature_model", "", "A trained classifier (.keras, e.g. trainer.cnn's "
                        "export) whose penultimate layer gives the features.", flag_values=fv)
    flags.DEFINE_list("feature_model_value_range", ["0", "1"], "LOW,HIGH: the input range "
                      "--feature_model was trained on.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed for latents, subsets and the C2ST split.",
                         lower_bound=0, flag_values=fv)
    flags.DEFINE_string("classifier", "", "A diagnosis-conditional GAN: a trainer.cnn "
                        "--task=diagnosis run or export folder with the GAN's classes (trained "
                        "with --min_class_records as the GAN's --gan_min_class_records), which "
                        "labels each class's generated images: does a generated melanoma look "
                        "like a melanoma (the report's class agreement; the curve's per "
                        "checkpoint)?", flag_values=fv)
    flags.register_validator("feature_model_value_range", _valid_range,
                             message="must be two numbers LOW,HIGH with LOW < HIGH",
                             flag_values=flag_values)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if "memorization_space" in flag_values:  # defined already (run() called twice)
        return
    define_common_flags(flag_values)
    flags.DEFINE_string("model", None, "GAN run folder (trainer.gan's --workdir), its "
                        "checkpoints/ folder or a checkpoint prefix.", flag_values=flag_values)
    flags.DEFINE_enum("train_split", "train", SPLITS, "Split the GAN trained on (the reference "
                      "set, and the images memorization is checked against).",
                      flag_values=flag_values)
    flags.DEFINE_list("heldout_splits", ["validation", "test"], "Real images the GAN never "
                      "saw (a split the dataset lacks adds none).", flag_values=flag_values)
    flags.register_validator("heldout_splits", lambda v: set(v) <= set(SPLITS),
                             message=f"splits must be among {','.join(SPLITS)}",
                             flag_values=flag_values)
    flags.DEFINE_enum("memorization_space", "pixels", ["pixels", "features"], "Nearest-"
                      "neighbour space: pixels (32x32, RMS distance in [0, 1] units) or the "
                      "extractor's features.", flag_values=flag_values)


def check_features(values: flags.FlagValues) -> None:
    """The extractor's inputs exist (before any image is loaded or written)."""
    inputs.checked("feature_extractor", features.check_extractor, values.feature_extractor,
                   inception_weights=values.inception_weights,
                   feature_model=values.feature_model)


def main(argv: list[str]) -> None:
    from absl import logging

    values = flags.FLAGS
    _, arch = inputs.generator(values.model)
    inputs.dataset(values.data_dir, arch["image_size"], [values.train_split], minimum=4,
                   size_from="the size the GAN in --model makes")
    inputs.folder_to_write("output", values.output, "the folder the report and figures go to")
    check_features(values)
    from trainer.gan import evaluation

    if values.classifier:
        inputs.checked("classifier", evaluation.check_classifier, values.classifier, arch)

    report = evaluation.evaluate(
        values.model, values.data_dir, values.output, num_generated=values.num_generated,
        max_real=values.max_real, train_split=values.train_split,
        heldout_splits=values.heldout_splits, feature_extractor=values.feature_extractor,
        inception_weights=values.inception_weights, feature_model=values.feature_model,
        feature_model_range=values.feature_model_value_range,
        memorization_space=values.memorization_space, seed=values.seed,
        classifier=values.classifier)
    logging.info("report in %s: FID %.3f, KID %.4f, C2ST %.3f (%s)", values.output,
                 report["fid"], report["kid"]["mean"], report["c2st"]["accuracy"],
                 report["feature_extractor"])


def run(argv: list[str] | None = None) -> None:
    define_flags()
    program.run(main, prog=PROG, doc=__doc__, flag_modules=[__name__], argv=argv)


if __name__ == "__main__":
    from trainer.gan import evaluate  # the module under its own name: its flags' owner

    sys.exit(evaluate.run())
