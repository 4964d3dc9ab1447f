"""The GAN evaluation's old program name, kept working: `python -m trainer.gan_eval ...` runs
`python -m trainer.gan.evaluate` with the old flag names (--generator_checkpoint,
--real_data_dir, --eval_out, --cnn_model, --cnn_value_range, --eval_seed) renamed to the new
ones (--model, --data_dir, --output, --feature_model, --feature_model_value_range, --seed).
No flags of its own."""
from __future__ import annotations

import sys
from typing import Sequence

# old name -> the name trainer.gan.evaluate takes
EVALUATE = {"generator_checkpoint": "model", "real_data_dir": "data_dir", "eval_out": "output",
            "cnn_model": "feature_model", "cnn_value_range": "feature_model_value_range",
            "eval_seed": "seed"}


def run(argv: Sequence[str] | None = None) -> None:
    from trainer.core import program
    from trainer.gan import evaluate

    evaluate.run(program.rename_flags(list(sys.argv if argv is None else argv), EVALUATE))


if __name__ == "__main__":
    run()
