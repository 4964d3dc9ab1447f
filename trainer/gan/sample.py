"""Writes images drawn from a trained GAN to --output: --num PNG files (--num per class when the
GAN is conditional), or, with --format=tfrecord, a dataset in the record schema that
trainer.cnn can add to its training split.

    python -m trainer.gan.sample --model=out/runs/dcgan --num=100 --output=out/synthetic
    python -m trainer.gan.sample --model=out/runs/gan-diagnosis-64 --class=melanoma --num=16 \
        --output=out/melanoma

The sampling itself is trainer.gan.sampling; this module is the program (its flags).
"""
from __future__ import annotations

import sys

from absl import flags

from trainer.core import program
from trainer.gan import inputs

PROG = "trainer.gan.sample"
BOTH = "both"


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    if "class" in flag_values:  # defined already (run() called twice)
        return
    fv = flag_values
    flags.DEFINE_string("model", None, "GAN run folder (trainer.gan's --workdir), its "
                        "checkpoints/ folder or a checkpoint prefix; the latest checkpoint of "
                        "a folder, its EMA weights when the run kept them.", flag_values=fv)
    flags.DEFINE_integer("num", 64, "Images to write (per class when conditional).",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_string("output", None, "Folder the images (or the dataset) are written to.",
                        flag_values=fv)
    flags.DEFINE_enum("format", "png", ["png", "tfrecord"], "png: one file per image; "
                      "tfrecord: a dataset (manifest.json + shards) the input pipeline reads.",
                      flag_values=fv)
    flags.DEFINE_string("class", BOTH, "Class a conditional GAN draws, by name: benign or "
                        "malignant, or for a diagnosis-conditional run one of its classes "
                        "(e.g. melanoma); 'both' = every class. An unconditional GAN takes "
                        "only 'both'.", flag_values=fv)
    flags.DEFINE_integer("seed", 42, "Seed of the latent vectors (the same seed, the same "
                         "images).", lower_bound=0, flag_values=fv)


def main(argv: list[str]) -> None:
    from absl import logging

    values = flags.FLAGS
    wanted = values["class"].value
    _, arch = inputs.generator(values.model)
    if wanted != BOTH and not arch["conditional"]:
        program.fail(f"--class={wanted}: the GAN in --model={values.model} is unconditional "
                     f"(it draws every class at once); leave --class at {BOTH}")
    from trainer.gan import sampling

    names = sampling.class_names(arch)
    if wanted != BOTH and wanted not in names:
        program.fail(f"--class={wanted}: the GAN in --model={values.model} draws the classes "
                     f"{', '.join(names)}; pass one of them, or {BOTH} for every class")
    inputs.folder_to_write("output", values.output, "the folder the generated images go to")

    written = sampling.sample_to_dir(values.model, values.num, values.output,
                                     image_format=values.format,
                                     classes=None if wanted == BOTH else (wanted,),
                                     seed=values.seed)
    logging.info("wrote %d images to %s", written, values.output)


def run(argv: list[str] | None = None) -> None:
    define_flags()
    program.run(main, prog=PROG, doc=__doc__, flag_modules=[__name__], argv=argv)


if __name__ == "__main__":
    from trainer.gan import sample  # the module under its own name: its flags' owner

    sys.exit(sample.run())
