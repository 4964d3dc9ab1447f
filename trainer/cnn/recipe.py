"""The from-scratch recipe's training-side levers, each off by default (the study's RMSprop at
a constant rate, plain binary cross-entropy): the optimizer (RMSprop or AdamW with decoupled
weight decay), the learning-rate schedule (constant, or linear warmup then cosine decay to 0
over the run), Keras' optimizer EMA of the weights, and the wall-time budget's callback.

Input-side levers (dermoscopy augmentation, mixup/cutmix) live in trainer.core.augmentations.
"""
from __future__ import annotations

import keras

from trainer.cnn.constants import DEFAULT_ADAMW_WEIGHT_DECAY, LR_SCHEDULES, OPTIMIZERS  # noqa: F401
from trainer.core import runtime


def learning_rate(rate: float, schedule: str, total_steps: int, warmup_steps: int = 0):
    """A float (constant) or a CosineDecay: linear warmup from 0 to `rate` over warmup_steps,
    then cosine decay to 0 at total_steps (epochs x steps per epoch, so a resumed run
    continues the same curve from the optimizer's step count)."""
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule {schedule!r} not in {LR_SCHEDULES}")
    if schedule == "constant":
        if warmup_steps:
            raise ValueError(f"warmup needs lr_schedule='cosine', got {warmup_steps} warmup "
                             "steps with a constant rate")
        return float(rate)
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}), got "
                         f"{warmup_steps}")
    if warmup_steps == 0:
        return keras.optimizers.schedules.CosineDecay(float(rate), total_steps, alpha=0.0)
    return keras.optimizers.schedules.CosineDecay(
        0.0, total_steps - warmup_steps, alpha=0.0, warmup_target=float(rate),
        warmup_steps=warmup_steps)


def make_optimizer(name: str, rate, weight_decay: float | None = None,
                   ema_decay: float = 0.0) -> keras.optimizers.Optimizer:
    """RMSprop (the study's; refuses weight decay) or AdamW (weight_decay None = 0.05); with
    ema_decay > 0 Keras keeps an EMA of the weights (use with keras.callbacks.SwapEMAWeights).
    `rate`: a float or a schedule (learning_rate())."""
    if not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    ema = dict(use_ema=True, ema_momentum=ema_decay) if ema_decay else {}
    if name == "rmsprop":
        if weight_decay:
            raise ValueError(f"weight_decay={weight_decay} needs --optimizer=adamw (RMSprop "
                             "would couple it to the gradient scale)")
        return keras.optimizers.RMSprop(rate, **ema)
    if name == "adamw":
        decay = DEFAULT_ADAMW_WEIGHT_DECAY if weight_decay is None else weight_decay
        if decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {decay}")
        return keras.optimizers.AdamW(rate, weight_decay=decay, **ema)
    raise ValueError(f"optimizer {name!r} not in {OPTIMIZERS}")


def current_learning_rate(optimizer) -> float:
    """The rate the next step uses: the optimizer's property evaluates a schedule at its step
    count (and a LossScaleOptimizer forwards to its inner optimizer)."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class StopWhenOutOfTime(keras.callbacks.Callback):
    """Ends training after the epoch during which the --max_train_minutes budget ran out, so
    the epoch's validation, checkpoint and history are complete. A guard: the schedule is
    still sized from --epochs, so a run cut short ends before its learning rate reaches 0."""

    def __init__(self, budget: runtime.TrainingBudget, verbose: int = 1):
        super().__init__()
        self.budget, self.verbose = budget, verbose
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self.budget.exhausted():
            self.model.stop_training = True
            self.stopped_epoch = epoch + 1
            if self.verbose:
                print(f"time budget of {self.budget.minutes} min spent after epoch "
                      f"{epoch + 1} ({self.budget.elapsed_s() / 60:.1f} min); stopping",
                      flush=True)
