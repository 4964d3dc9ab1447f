"""The GAN's old program name, kept working: `python -m trainer.dcgan --flagfile=...` runs
`python -m trainer.gan` (training), and `python -m trainer.dcgan sample --checkpoint=RUN
--out=DIR [--sample_class=...]` runs `python -m trainer.gan.sample` with those flags renamed
(--model, --output, --class). No flags of its own."""
from __future__ import annotations

import sys
from typing import Sequence

SUBCOMMAND = "sample"
SAMPLE = {"checkpoint": "model", "out": "output", "sample_class": "class"}  # old -> new


def run(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if argv[1:2] == [SUBCOMMAND]:  # `trainer.dcgan sample ...`, as documented
        from trainer.core import program
        from trainer.gan import sample

        rest = list(argv)
        rest.remove(SUBCOMMAND)
        sample.run(program.rename_flags(rest, SAMPLE))
    else:
        from trainer.gan import cli

        cli.run(argv)


if __name__ == "__main__":
    run()
