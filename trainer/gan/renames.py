"""The GAN programs' old flag names, for the shims that keep the documented commands working
(`trainer.dcgan sample`, `trainer.gan_eval`): they rewrite argv, then run the new program."""
from __future__ import annotations

from typing import Mapping, Sequence

from absl import flags

# `python -m trainer.dcgan sample ...` -> `python -m trainer.gan.sample ...`
SAMPLE = {"checkpoint": "model", "out": "output", "sample_class": "class"}
# `python -m trainer.gan_eval ...` -> `python -m trainer.gan.evaluate ...`
EVALUATE = {"generator_checkpoint": "model", "real_data_dir": "data_dir", "eval_out": "output",
            "cnn_model": "feature_model", "cnn_value_range": "feature_model_value_range",
            "eval_seed": "seed"}


def rename_flags(argv: Sequence[str], renames: Mapping[str, str]) -> list[str]:
    """argv with each old flag name replaced by its new one (--old=v, --old v, -old=v). Flag
    files are expanded first, so a user's own flag file with the old names works too; one that
    cannot be read is left for the program to report."""
    args = list(argv[1:])
    try:
        args = flags.FlagValues().read_flags_from_files(args, force_gnu=True)
    except flags.Error:
        pass
    renamed = []
    for arg in args:
        dashes = "--" if arg.startswith("--") else "-" if arg.startswith("-") else ""
        name, equals, value = arg[len(dashes):].partition("=")
        if dashes and name in renames:
            arg = f"{dashes}{renames[name]}{equals}{value}"
        renamed.append(arg)
    return [argv[0], *renamed]
