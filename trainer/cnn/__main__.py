"""`python -m trainer.cnn --flagfile=configs/cnn_base.flags`: the CNN trainer (trainer.cnn.cli)."""
from trainer.cnn import cli

if __name__ == "__main__":
    cli.run()
