"""`python -m trainer.gan --flagfile=configs/dcgan.flags`: trains a GAN (trainer.gan.cli)."""
from trainer.gan import cli

if __name__ == "__main__":
    cli.run()
