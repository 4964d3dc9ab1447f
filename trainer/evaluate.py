"""Kept for the documented name: `python -m trainer.evaluate` is `python -m trainer.cnn.evaluate`
(its old --out is the new --output)."""
from __future__ import annotations

import sys
from typing import Sequence

RENAMED = {"out": "output"}


def renamed_argv(argv: Sequence[str]) -> list[str]:
    """argv with each old flag name (--out=X, --out X) written as the new one."""
    out = []
    for arg in argv:
        for old, new in RENAMED.items():
            if arg == f"--{old}" or arg.startswith(f"--{old}="):
                arg = f"--{new}" + arg[len(old) + 2:]
        out.append(arg)
    return out


def run() -> None:
    from trainer.cnn import evaluate

    evaluate.run(renamed_argv(sys.argv))


if __name__ == "__main__":
    run()
