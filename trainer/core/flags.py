"""Flags every trainer shares, defined exactly once (the trainer.cnn and trainer.gan training programs import this),
and RunConfig, the config base both trainers' configs extend, built from flags one way.

absl refuses a flag defined twice in one process, so no other module may define these names.
Validators run when flags are parsed, so an impossible value stops the run before any work,
with the flag and its value in the message.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

from absl import flags

from trainer.core import runtime

# --- data and run folder ---
flags.DEFINE_string("data_dir", None, "Dataset folder written by beam_jobs.preprocess "
                    "(holds manifest.json and <size>/<split>/*.tfrecord).")
flags.DEFINE_string("workdir", None, "Run folder: checkpoints/, logs/ (TensorBoard), "
                    "history.json, reports, exported models. Re-running resumes from it.")
flags.DEFINE_integer("image_size", 256, "Square image side in pixels; must be one of the "
                     "sizes in the dataset's manifest.")

# --- schedule ---
flags.DEFINE_integer("batch_size", 32, "Global batch size (split across replicas).")
flags.DEFINE_integer("epochs", 10, "Number of epochs.")
flags.DEFINE_integer("steps_per_epoch", 0, "Cap on steps per epoch; 0 = one pass over the "
                     "training split.")
flags.DEFINE_float("learning_rate", 1e-3, "Optimizer learning rate.")
flags.DEFINE_integer("seed", 42, "Seed for weights, shuffling and augmentation.")
flags.DEFINE_float("max_train_minutes", 0.0, "Wall-time budget for training (CNN and GAN): stop at the end "
                   "of the epoch in which it runs out (a guard; size --epochs to fit, the "
                   "schedule follows --epochs). 0 = no budget.")

flags.DEFINE_float("ema_decay", 0.0, "Exponential moving average of the weights; 0 = off. "
                   "CNN: Keras optimizer EMA, validated, checkpointed and exported (e.g. "
                   "0.99). GAN: an EMA copy of G, saved in checkpoints and used for grids "
                   "and sampling (e.g. 0.999).")

# --- input pipeline ---
flags.DEFINE_string("cache", "", "'' (no cache), 'memory', or a file path prefix for "
                    "tf.data's file cache of decoded images.")
flags.DEFINE_bool("deterministic", False, "Deterministic input order and op determinism for "
                  "reproducible runs (slower).")

# --- performance ---
flags.DEFINE_enum("mixed_precision", "auto", list(runtime.MIXED_PRECISION_MODES),
                  "Dtype policy. auto: mixed_float16 on a GPU of compute capability >= 7, "
                  "else float32.")
flags.DEFINE_bool("jit_compile", False, "Compile the train step with XLA.")
flags.DEFINE_string("profile_steps", "", "'START,END' (1-based steps, inclusive) to write a "
                    "profiler trace to <workdir>/logs; '' for none.")

def _valid_profile_steps(text: str) -> bool:
    try:
        runtime.parse_profile_steps(text)
    except ValueError:
        return False
    return True


def _register_validators() -> None:
    positive = {"image_size": "must be a positive number of pixels",
                "batch_size": "must be a positive number of images",
                "epochs": "must be at least 1"}
    for name, why in positive.items():
        flags.register_validator(name, lambda v: v is not None and v > 0, message=why)
    flags.register_validator("steps_per_epoch", lambda v: v >= 0,
                             message="must be 0 (full pass) or a positive step count")
    flags.register_validator("learning_rate", lambda v: v > 0 and v == v and v < float("inf"),
                             message="must be a positive finite number")
    flags.register_validator("seed", lambda v: v >= 0, message="must be a non-negative integer")
    flags.register_validator("ema_decay", lambda v: 0.0 <= v < 1.0,
                             message="must be in [0, 1), 0 = off")
    flags.register_validator("max_train_minutes", lambda v: v >= 0 and v < float("inf"),
                             message="must be 0 (no budget) or a positive number of minutes")
    flags.register_validator("profile_steps", _valid_profile_steps,
                             message="must be 'START,END' with 1 <= START <= END, or ''")
    flags.register_validator("cache", lambda v: v == v.strip(),
                             message="must be '', 'memory' or a file path (no surrounding "
                                     "spaces)")


_register_validators()


def require_run_folders() -> None:
    """Makes --data_dir and --workdir mandatory; call from a trainer's program before app.run."""
    flags.mark_flags_as_required(["data_dir", "workdir"])


@dataclasses.dataclass
class RunConfig:
    """The shared flags' fields; trainer.cnn.train.TrainConfig and trainer.gan.training.GanConfig
    extend it with their own (and may give the shared fields other defaults)."""

    data_dir: str
    workdir: str
    image_size: int = 256
    batch_size: int = 32
    epochs: int = 10
    steps_per_epoch: int = 0          # 0 = one pass over the training data
    learning_rate: float = 1e-3
    seed: int = 42
    max_train_minutes: float = 0.0    # 0 = no wall-time budget
    ema_decay: float = 0.0            # 0 = off; what is averaged is each trainer's own
    cache: str = ""
    deterministic: bool = False
    mixed_precision: str = "auto"
    jit_compile: bool = False
    profile_steps: str = ""

    # field -> (flag name, conversion) where a field is not simply the flag of its own name
    FLAG_SOURCES: ClassVar[Mapping[str, tuple[str, Callable[[Any], Any]]]] = {}

    @classmethod
    def from_flags(cls):
        """Every field from its flag (FLAG_SOURCES names the exceptions); flags must be parsed."""
        values = {}
        for field in dataclasses.fields(cls):
            name, convert = cls.FLAG_SOURCES.get(field.name, (field.name, lambda v: v))
            values[field.name] = convert(flags.FLAGS[name].value)
        return cls(**values)
