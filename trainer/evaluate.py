"""Kept for the documented name: `python -m trainer.evaluate` is `python -m trainer.cnn.evaluate`
(its old --out is the new --output)."""
from __future__ import annotations

import sys

RENAMED = {"out": "output"}


def run() -> None:
    from trainer.cnn import evaluate
    from trainer.core import program

    evaluate.run(program.rename_flags(sys.argv, RENAMED))


if __name__ == "__main__":
    run()
