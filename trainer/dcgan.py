"""The GAN's old program name, kept working: `python -m trainer.dcgan --flagfile=...` runs
`python -m trainer.gan` (training), and `python -m trainer.dcgan sample --checkpoint=RUN
--out=DIR [--sample_class=...]` runs `python -m trainer.gan.sample` with those flags renamed
(--model, --output, --class). No flags of its own."""
from __future__ import annotations

import sys
from typing import Sequence

SUBCOMMAND = "sample"


def run(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    if SUBCOMMAND in argv[1:]:
        from trainer.gan import renames, sample

        rest = list(argv)
        rest.remove(SUBCOMMAND)
        sample.run(renames.rename_flags(rest, renames.SAMPLE))
    else:
        from trainer.gan import cli

        cli.run(argv)


if __name__ == "__main__":
    run()
