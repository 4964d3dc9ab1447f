"""`python -m trainer.gan_eval --flagfile=configs/gan_eval.flags`: the DCGAN evaluation program,
kept under its documented name; the flags and the evaluation live in trainer.gan.evaluate."""
import sys

from trainer.gan.evaluate import run

if __name__ == "__main__":
    sys.exit(run())
